"""``lpemu bench``: the speed suite. Every number is printed as a ratio against a baseline
measured in the same run (medians of several repeats).

1. matrix instruction vs numpy float32 matmul on the same int8-valued operands, dense and with
   90% zeros in the skip-enabled operand;
2. one training step of a 784-500-500-10 MLP (batch 10, QBP uniform dither, lazy update) on the
   emulator vs the same step in float32 numpy (``programs.host.float_ref.train_step``),
   timed in interleaved rounds; the ratio is the median of the per-round ratios;
3. one epoch of 60,000 samples of that network on synthetic MNIST-shaped data: wall time and peak
   resident memory (measured in a child process);
4. the cycle model for the (256,784,500) layer on a 32x32 array vs SCALE-Sim's wall time (skipped
   when SCALE-Sim's venv from ``benchmarks/scalesim_compare.py`` is absent);
5. start-up: ``lpemu run`` of a 10-instruction program with a warm numba cache;
6. a small training run with ``NUMBA_DISABLE_JIT=1`` vs with numba, to show what compiling buys
   (and that values and counters are identical);
7. each convolution/pooling instruction on LeNet's shapes at batch 64 vs the equivalent float32
   numpy operation (``programs/bench/conv.py``).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TINY_PROGRAM = """; 10 instructions: scalar work, one small GEMM, a requantize, halt
    li r1, 0
    li r2, 64
    li r3, 4
    eset e1, 0
    eset e2, 2
    gemm r1, r1, r2, r3, r3, r3
    li r4, 128
    li r5, 16
    rq r4, r1, r5, e2, e1, rnd=nearest, dt=i8
    halt
"""


def _median(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    from programs.bench.gemm import median_time

    return median_time(fn, repeats, warmup)


# ----------------------------------------------------------------------------- 1. gemm
def bench_gemm(quick: bool) -> list[dict[str, Any]]:
    from programs.bench.gemm import SHAPES, measure

    repeats = 3 if quick else 7
    out = []
    for shape in SHAPES:
        for zf in (0.0, 0.9):
            r = measure(shape, repeats, zero_fraction=zf)
            out.append(r)
    return out


# ----------------------------------------------------------------------------- 2. training step
def mlp_spec():
    from programs.compiler.spec import ModelSpec, with_overrides

    return with_overrides(ModelSpec(), layers=[784, 500, 500, 10], batch_size=10, epochs=1,
                          name="mlp-784-500-500-10")


def mnist_like(n_train: int, n_test: int = 100, seed: int = 0):
    """Synthetic MNIST-shaped data: 784 features in [0, 16], 10 classes."""
    from programs.host.datasets import synthetic

    return synthetic(classes=10, features=784, per_class_train=n_train // 10,
                     per_class_test=max(n_test // 10, 1), seed=seed)


def bench_step(quick: bool) -> dict[str, Any]:
    """Per-step wall time of the chip (streamed and weights-resident) and of the float32 step.
    The three are timed in interleaved rounds (one epoch of each per round) and the ratio is the
    median of the per-round ratios: this machine's speed drifts over minutes, and it moves the
    small-matrix float32 baseline far more than the emulator, so only measurements taken
    seconds apart are compared. The spread of the per-round ratios is reported too."""
    import dataclasses

    from emulator.config import Config
    from programs.host.driver import ChipTrainer
    from programs.host.float_ref import train_step

    steps = 10 if quick else 30
    spec = mlp_spec()
    data = mnist_like(steps * spec.batch_size)
    tr = ChipTrainer(spec, Config(), data)
    # the same step with a scratchpad large enough to keep all weights resident (no streaming)
    big = Config()
    big = dataclasses.replace(big, memory=dataclasses.replace(big.memory,
                                                             scratchpad_bytes=4 << 20))
    tr_res = ChipTrainer(spec, big, data)
    weights = tr.float_init()
    x = data.x_train.astype(np.float32) * np.float32(2.0**tr.spec.input_exponent)
    y = data.y_train
    b = spec.batch_size

    def float_epoch() -> None:
        for i in range(0, steps * b, b):
            train_step(weights, x[i : i + b], y[i : i + b], spec.lr_at(0))

    def per_step(epoch: Callable[[], object], n: int) -> float:
        t0 = time.perf_counter()
        epoch()
        return (time.perf_counter() - t0) / n

    for epoch in (tr.train_epoch, tr_res.train_epoch, float_epoch):
        epoch()  # warm-up: numba, BLAS threads, page faults, first DRAM loads
    rounds = [(per_step(tr.train_epoch, tr.nb_train), per_step(tr_res.train_epoch, tr_res.nb_train),
               per_step(float_epoch, steps)) for _ in range(3 if quick else 9)]
    chip, chip_res, flt = (statistics.median(col) for col in zip(*rounds, strict=True))
    ratios = [c / f for c, _, f in rounds]
    return {"chip_step_s": chip, "float32_step_s": flt,
            "float32_step_range_s": [min(r[2] for r in rounds), max(r[2] for r in rounds)],
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "chip_step_resident_s": chip_res,
            "ratio_resident": statistics.median(cr / f for _, cr, f in rounds),
            "instructions_per_step": tr.m.steps // ((len(rounds) + 1) * tr.nb_train)}


# ----------------------------------------------------------------------------- 3. epoch
def epoch_child(samples: int) -> None:
    """Run in a child process: one epoch of ``samples`` samples; prints JSON."""
    from emulator.config import Config
    from programs.host.driver import ChipTrainer

    t0 = time.perf_counter()
    spec = mlp_spec()
    data = mnist_like(samples)
    tr = ChipTrainer(spec, Config(), data)
    t1 = time.perf_counter()
    st = tr.train_epoch()
    t2 = time.perf_counter()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"samples": samples, "setup_s": t1 - t0, "epoch_s": t2 - t1,
                      "peak_rss_mib": rss_kib / 1024, "train_accuracy": st.train_accuracy,
                      "sparsity": st.mean_sparsity}))


def bench_epoch(quick: bool) -> dict[str, Any]:
    samples = 6000 if quick else 60000
    res = subprocess.run([sys.executable, "-m", "programs.bench.suite", "--epoch-child",
                          str(samples)], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("epoch benchmark failed:\n" + res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 4. SCALE-Sim
def _scalesim_module():
    """``benchmarks/scalesim_compare.py`` of the checkout lpemu runs from (not installed: it
    manages SCALE-Sim's own venv), or None outside a checkout."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "scalesim_compare.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("lpemu_scalesim_compare", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def bench_scalesim() -> dict[str, Any] | None:
    sc = _scalesim_module()
    if sc is None:
        return None
    venv_dir = Path(os.environ.get("LPEMU_SCALESIM_VENV", sc.default_venv()))
    py = venv_dir / "bin" / "python"
    if not py.exists():
        return None
    orig = (sc.SHAPES, sc.QUICK_SHAPES, sc.ARRAYS)
    try:
        sc.QUICK_SHAPES, sc.ARRAYS = [(256, 784, 500)], [(32, 32)]
        res = sc.compare(quick=True, venv_path=venv_dir, reps=5, progress=False)
    finally:
        sc.SHAPES, sc.QUICK_SHAPES, sc.ARRAYS = orig
    if res is None:
        return None
    ws = [r for r in res["cases"] if r["dataflow"] == "ws"][0]
    return {"scalesim_s": ws["scalesim_wall_s"], "lpemu_model_s": ws["lpemu_model_wall_s"],
            "lpemu_run_s": ws["lpemu_run_wall_s"], "cycles_agree": ws["agree"],
            "ratio_model": ws["scalesim_wall_s"] / ws["lpemu_model_wall_s"],
            "ratio_run": ws["scalesim_wall_s"] / ws["lpemu_run_wall_s"]}


# ----------------------------------------------------------------------------- 5. start-up
def bench_startup(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "tiny.s"
        prog.write_text(TINY_PROGRAM)
        cmd = [sys.executable, "-m", "programs.cli", "run", str(prog), "-q"]

        def once() -> None:
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

        t_run = _median(once, 3 if quick else 5, warmup=1)  # the warm-up fills numba's cache
        t_py = _median(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
                       3 if quick else 5)
    return {"lpemu_run_s": t_run, "python_startup_s": t_py}


# ----------------------------------------------------------------------------- 6. JIT off
JIT_CHILD = """
import json, sys, time
from emulator.config import Config
from programs.host.datasets import digits, Dataset
from programs.host.driver import ChipTrainer
from programs.compiler.spec import ModelSpec, with_overrides
d = digits(0)
n = int(sys.argv[1])
small = Dataset("digits-small", d.x_train[:n], d.y_train[:n], d.x_test[:50], d.y_test[:50], 10)
tr = ChipTrainer(with_overrides(ModelSpec(), epochs=1), Config(), small)
t0 = time.perf_counter()
tr.train_epoch()
t1 = time.perf_counter()
print(json.dumps({"s": t1 - t0, "digest": tr.m.digest(),
                  "counters": int(tr.m.counts.sum() % (1 << 62))}))
"""


def bench_jit_off(quick: bool) -> dict[str, Any]:
    n = 100 if quick else 300
    out = {}
    for mode in ("on", "off"):
        env = dict(os.environ)
        if mode == "off":
            env["NUMBA_DISABLE_JIT"] = "1"
        runs = []
        for _ in range(2 if quick else 3):
            res = subprocess.run([sys.executable, "-c", JIT_CHILD, str(n)], cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        out[mode] = {"s": statistics.median(r["s"] for r in runs), "digest": runs[0]["digest"],
                     "counters": runs[0]["counters"]}
    return {"samples": n, "jit_s": out["on"]["s"], "nojit_s": out["off"]["s"],
            "ratio": out["off"]["s"] / out["on"]["s"],
            "identical": out["on"]["digest"] == out["off"]["digest"]
            and out["on"]["counters"] == out["off"]["counters"]}


# ----------------------------------------------------------------------------- driver
def run_suite(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    from rich.console import Console

    con = Console(stderr=True, quiet=not progress)
    res: dict[str, Any] = {"quick": quick}
    parts = [("gemm", lambda: bench_gemm(quick)), ("training_step", lambda: bench_step(quick)),
             ("epoch", lambda: bench_epoch(quick)), ("scalesim", bench_scalesim),
             ("startup", lambda: bench_startup(quick)), ("jit_off", lambda: bench_jit_off(quick)),
             ("conv", lambda: bench_conv(quick))]
    for name, fn in parts:
        with con.status(f"bench: {name} ..."):
            t0 = time.perf_counter()
            res[name] = fn()
            con.log(f"{name} done in {time.perf_counter() - t0:.1f} s")
    return res


def print_suite(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 110))
    t = Table(title="lpemu bench" + (" (quick)" if res["quick"] else "")
              + ": ratios against baselines measured in this run")
    for c in ("measurement", "lpemu", "baseline", "ratio", "target"):
        t.add_column(c, justify="left" if c == "measurement" else "right")
    for r in res["gemm"]:
        shape = "x".join(map(str, r["shape"]))
        kind = "90% zeros, skipped" if r["zero_fraction"] else "dense"
        big = tuple(r["shape"]) != (10, 784, 500)
        t.add_row(f"gemm {shape} {kind} (vs numpy f32 matmul)",
                  f"{1e3 * r['emulator_s']:.2f} ms", f"{1e3 * r['numpy_f32_s']:.2f} ms",
                  f"{r['ratio']:.2f}x throughput", ">= 0.5" if big else "")
    s = res["training_step"]
    lo, hi = s["ratio_range"]
    t.add_row("training step 784-500-500-10, batch 10 (vs float32 numpy step; per-round "
              "ratios from min to max in brackets)",
              f"{1e3 * s['chip_step_s']:.2f} ms", f"{1e3 * s['float32_step_s']:.2f} ms",
              f"{s['ratio']:.1f}x slower [{lo:.1f}-{hi:.1f}]", "<= 3x")
    t.add_row("  same, 4 MiB scratchpad (weights resident, no streaming DMA)",
              f"{1e3 * s['chip_step_resident_s']:.2f} ms", f"{1e3 * s['float32_step_s']:.2f} ms",
              f"{s['ratio_resident']:.1f}x slower", "")
    e = res["epoch"]
    t.add_row(f"epoch of {e['samples']:,} samples (wall)", f"{e['epoch_s']:.1f} s", "",
              "", "<= 180 s" if e["samples"] == 60000 else "")
    t.add_row("  peak resident memory", f"{e['peak_rss_mib']:.0f} MiB", "", "", "<= 1024 MiB")
    sc = res["scalesim"]
    if sc is None:
        t.add_row("cycle model vs SCALE-Sim (256,784,500) on 32x32", "skipped", "", "",
                  "run benchmarks/scalesim_compare.py once")
    else:
        t.add_row("cycle model (256,784,500) 32x32 vs SCALE-Sim wall",
                  f"{1e6 * sc['lpemu_model_s']:.1f} us", f"{sc['scalesim_s']:.2f} s",
                  f"{sc['ratio_model']:,.0f}x faster", "cycles agree" if sc["cycles_agree"]
                  else "CYCLES DIFFER")
        t.add_row("  full gemm with values vs SCALE-Sim wall",
                  f"{1e3 * sc['lpemu_run_s']:.2f} ms", f"{sc['scalesim_s']:.2f} s",
                  f"{sc['ratio_run']:,.0f}x faster", "")
    st = res["startup"]
    t.add_row("lpemu run, 10 instructions, warm cache (vs bare python)",
              f"{st['lpemu_run_s']:.2f} s", f"{st['python_startup_s']:.2f} s",
              f"{st['lpemu_run_s'] / st['python_startup_s']:.1f}x", "<= 2 s")
    j = res["jit_off"]
    t.add_row(f"digits training, {j['samples']} samples, NUMBA_DISABLE_JIT=1 (vs numba)",
              f"{j['nojit_s']:.2f} s", f"{j['jit_s']:.2f} s", f"{j['ratio']:.1f}x slower",
              "identical values" if j["identical"] else "VALUES DIFFER")
    for row in conv_rows(res.get("conv") or []):
        t.add_row(*row)
    con.print(t)


# ----------------------------------------------------------------------------- 7. conv and pooling
def bench_conv(quick: bool) -> list[dict[str, Any]]:
    from programs.bench.conv import bench_conv as run

    return run(quick)


def conv_rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    from programs.bench.conv import rows

    return rows(results) if results else []


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="lpemu bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--epoch-child", type=int, metavar="SAMPLES", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.epoch_child:
        epoch_child(args.epoch_child)
        return 0
    res = run_suite(args.quick)
    print_suite(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
