"""``lpemu bench``: the speed suite. Every figure comes with its target and a pass/fail verdict,
and every timed figure with a noise estimate: the spread (max - min) / median of its repeats,
each repeat an interleaved round of the measurement and its baseline.

    lpemu bench [--quick] [--json OUT] [--check] [--hogs N] [--only NAME,...]

A figure whose spread exceeds ``NOISE_MAX`` is measured again (up to ``RETRIES`` times) and
the calmest attempt is kept; if it stays noisy the row is marked ``noisy`` and a warning is
printed: on a busy machine a ratio may be off by that spread. The header reports how many
other tasks were runnable when the suite started. ``--check`` exits 1 when a figure misses
its target (2 for bad usage), so CI or a script can gate on it; ``--json`` writes every
figure with its samples for a history.

Baselines run under the same thread policy as the emulator (emulator/threads.py): the float32
matmul and the float32 training step use as many BLAS threads as the emulator's own operation
of that size would, so a ratio compares like with like on an idle or a busy machine.

Figures:

1. ``gemm`` instruction vs numpy float32 matmul of the same int8-valued operands (already
   float32): 256x784x500 and 1024^3 (target >= 1.0: the emulator's time includes every
   operand conversion), 10x784x500 and 90%-sparse variants for information;
2. one training step of a 784-500-500-10 MLP (QBP uniform dither, lazy update) vs the same
   step in float32 numpy: batch 10 (target <= 1.5), the same with all weights resident,
   batch 100; a CNN step when the compiler has convolutions;
3. firmware: scalar instructions per second in the compiled interpreter (target >= 20 M/s),
   seconds until the default budget stops ``top: jmp top`` (target <= 10 s), decoded bytes
   per instruction (target <= 64), and ``lpemu run`` of a 10^6-instruction program;
4. one epoch of 60,000 samples (wall, peak memory) in a child process;
5. the cycle model vs SCALE-Sim (when ``benchmarks/scalesim_compare.py`` has set it up);
6. start-up: ``lpemu run`` of a 10-instruction program, warm numba cache (target <= 0.5 s);
7. a small training run with ``NUMBA_DISABLE_JIT=1``: identical values, and how much slower;
8. each convolution/pooling instruction on LeNet's shapes at batch 64 vs the equivalent float32
   numpy operation (``programs/bench/conv.py``; information);
9. with ``--hogs N``: the training step with N CPU-bound processes running, against the same
   step without them, compared with the slowdown of a plain single-threaded loop in the same
   rounds, which is what fair sharing gives one busy task on this machine with whatever else
   runs on it (target: at most 1.25x the loop's slowdown; on an idle 2-CPU machine with three
   hogs the loop's is 2x);
10. LeNet (``programs/bench/lenet.py``, 001's network on ``configs/lenet_chip.yaml``): the
    training step at batch 64 vs the float32 numpy step of the same network under the same
    thread policy (the CNN step beside the MLP's in 2; target <= 3, main's), and one
    60,000-sample epoch in a child process (targets <= 120 s and <= 2 GiB).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NOISE_MAX = 0.25  # spread/median above this: measured again, then flagged
RETRIES = 2

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

SCALAR_LOOP = """; a firmware-style loop of scalar, exponent and branch instructions
    li r1, 0
    li r2, {n}
loop:
    addi r1, r1, 1
    add r3, r3, r1
    xor r4, r3, r1
    eaddi e1, e1, 0
    blt r1, r2, loop
    halt
"""


# ----------------------------------------------------------------------------- figures
@dataclass
class Figure:
    """One measured figure. ``samples`` are the per-round values (ratios or times); ``value``
    is their median. ``target`` is like ``"<= 1.5"`` or ``">= 20"`` (empty: information)."""

    name: str
    value: float | None
    unit: str
    target: str = ""
    samples: list[float] = field(default_factory=list)
    detail: str = ""
    retries: int = 0
    note: str = ""

    @property
    def noise(self) -> float | None:
        """Spread of the samples, (max - min) / median; None with fewer than 2."""
        s = [x for x in self.samples if x is not None and math.isfinite(x)]
        if len(s) < 2:
            return None
        med = statistics.median(s)
        return (max(s) - min(s)) / abs(med) if med else None

    @property
    def noisy(self) -> bool:
        n = self.noise
        return n is not None and n > NOISE_MAX

    @property
    def passed(self) -> bool | None:
        """The verdict against the target (None: no target or nothing measured)."""
        return meets(self.value, self.target)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(noise=self.noise, noisy=self.noisy, passed=self.passed)
        return d


def meets(value: float | None, target: str) -> bool | None:
    """``value`` against ``"<= x"`` / ``">= x"`` (None when either is missing)."""
    if value is None or not target:
        return None
    op, _, x = target.partition(" ")
    bound = float(x)
    if op == "<=":
        return value <= bound
    if op == ">=":
        return value >= bound
    raise ValueError(f"bad target {target!r}")


def steady(measure: Callable[[], Figure], retries: int = RETRIES) -> Figure:
    """``measure()`` again while its spread exceeds NOISE_MAX (at most ``retries`` times);
    the calmest attempt is kept, its retry count recorded."""
    best = measure()
    tries = 0
    while best.noisy and tries < retries:
        tries += 1
        again = measure()
        if (again.noise or 0.0) < (best.noise or 0.0):
            best = again
    best.retries = tries
    if best.noisy:
        best.note = (best.note + "; " if best.note else "") + \
            f"noisy: spread {100 * (best.noise or 0):.0f}% after {tries} retries"
    return best


def ratio_rounds(emu: Callable[[], object], base: Callable[[], object], rounds: int,
                 warmup: int = 1) -> tuple[list[float], list[float], list[float]]:
    """Interleaved rounds of ``emu`` and ``base``: (emulator seconds, baseline seconds,
    baseline / emulator per round)."""
    for _ in range(warmup):
        emu()
        base()
    te, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        emu()
        t1 = time.perf_counter()
        base()
        t2 = time.perf_counter()
        te.append(t1 - t0)
        tb.append(t2 - t1)
    return te, tb, [b / e for e, b in zip(te, tb, strict=True)]


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _range(xs: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"[{min(xs) * scale:{fmt}}-{max(xs) * scale:{fmt}}]"


# ----------------------------------------------------------------------------- 1. gemm
def bench_gemm(quick: bool) -> list[Figure]:
    from emulator.threads import POLICY
    from programs.bench.gemm import gemm_case, rerun

    rounds = 5 if quick else 9
    out = []
    cases = [((256, 784, 500), 0.0, ">= 1.0"), ((1024, 1024, 1024), 0.0, ">= 1.0"),
             ((10, 784, 500), 0.0, ""), ((256, 784, 500), 0.9, ""),
             ((1024, 1024, 1024), 0.9, "")]
    for shape, zf, target in cases:
        mach, af, bf, check = gemm_case(shape, zf)
        m, k, n = shape

        def base(af=af, bf=bf, macs=m * k * n) -> None:
            POLICY.use(POLICY.for_work(macs))  # the emulator's thread count for this size
            np.matmul(af, bf)

        def measure(mach=mach, base=base, shape=shape, zf=zf, target=target) -> Figure:
            te, tb, rs = ratio_rounds(lambda: rerun(mach), base, rounds)
            POLICY.restore()
            kind = "90% zeros, skipped" if zf else "dense"
            return Figure(f"gemm {'x'.join(map(str, shape))} {kind} / f32 matmul",
                          _median(rs), "x throughput", target, rs,
                          f"{1e3 * _median(te):.2f} ms vs {1e3 * _median(tb):.2f} ms, "
                          f"ratio {_range(rs)}")

        fig = steady(measure)
        check()  # a benchmark of wrong values is useless
        out.append(fig)
    return out


# ----------------------------------------------------------------------------- 2. training step
def mlp_spec(batch: int = 10):
    from programs.compiler.spec import ModelSpec, with_overrides

    return with_overrides(ModelSpec(), layers=[784, 500, 500, 10], batch_size=batch, epochs=1,
                          name="mlp-784-500-500-10")


def mnist_like(n_train: int, n_test: int = 100, seed: int = 0):
    """Synthetic MNIST-shaped data: 784 features in [0, 16], 10 classes."""
    from programs.host.datasets import synthetic

    return synthetic(classes=10, features=784, per_class_train=n_train // 10,
                     per_class_test=max(n_test // 10, 1), seed=seed)


def step_timers(batch: int, steps: int, resident: bool = False):
    """(chip epoch, float32 epoch, steps per epoch, trainer) for the 784-500-500-10 step."""
    import dataclasses

    from emulator.config import Config
    from emulator.threads import POLICY
    from programs.host.driver import ChipTrainer
    from programs.host.float_ref import FloatNet, train_step

    spec = mlp_spec(batch)
    data = mnist_like(steps * batch)
    cfg = Config()
    if resident:  # a scratchpad large enough to keep all weights resident (no streaming)
        cfg = dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory,
                                                                  scratchpad_bytes=4 << 20))
    tr = ChipTrainer(spec, cfg, data)
    s0 = tr.m.steps
    tr.train_epoch()  # warm-up; also counts the instructions of a step
    tr.per_step = (tr.m.steps - s0) // tr.nb_train  # type: ignore[attr-defined]
    weights = tr.float_init()
    fnet = FloatNet(spec.net())
    x = data.x_train.astype(np.float32) * np.float32(2.0**tr.spec.input_exponent)
    y = data.y_train

    def float_epoch() -> None:
        for i in range(0, steps * batch, batch):
            train_step(fnet, weights, x[i : i + batch], y[i : i + batch], spec.lr_at(0))
        POLICY.restore()

    return tr.train_epoch, float_epoch, tr.nb_train, tr


def bench_step(quick: bool) -> list[Figure]:
    """Per-step time of the chip against the float32 step, in interleaved rounds (one epoch
    of each per round); the ratio is the median of the per-round ratios."""
    rounds = 5 if quick else 9
    out = []
    for name, batch, steps, resident, target in (
            ("training step 784-500-500-10, batch 10", 10, 10 if quick else 30, False, "<= 1.5"),
            ("  same, weights resident (4 MiB scratchpad)", 10, 10 if quick else 30, True, ""),
            ("  same, batch 100", 100, 3 if quick else 10, False, "")):
        chip, flt, n, tr = step_timers(batch, steps, resident)

        def measure(chip=chip, flt=flt, n=n, name=name, target=target) -> Figure:
            te, tb, rs = ratio_rounds(chip, flt, rounds)
            ratios = [1 / r for r in rs]  # chip time / float time
            return Figure(name + " / float32 step", _median(ratios), "x time", target, ratios,
                          f"{1e3 * _median(te) / n:.2f} ms vs {1e3 * _median(tb) / n:.2f} ms "
                          f"per step, ratio {_range(ratios)}")

        fig = steady(measure)
        fig.detail += f", {tr.per_step:,} instructions/step"
        out.append(fig)
    out.append(bench_cnn_step(quick))
    return out


def bench_cnn_step(quick: bool) -> Figure:
    """LeNet's training step at batch 64 (programs/bench/lenet.py) against its float32 step,
    in interleaved rounds like the MLP's."""
    from programs.bench.lenet import lenet_step_timers

    chip, flt, n, tr = lenet_step_timers(4 if quick else 10)
    per_step = tr.m.steps // n  # after the one warm-up epoch

    def measure() -> Figure:
        te, tb, rs = ratio_rounds(chip, flt, 3 if quick else 7, warmup=0)
        ratios = [1 / r for r in rs]
        return Figure("  same, CNN step (LeNet, batch 64) / float32 step", _median(ratios),
                      "x time", "<= 3", ratios, f"{1e3 * _median(te) / n:.1f} ms vs "
                      f"{1e3 * _median(tb) / n:.1f} ms per step, ratio {_range(ratios)}")

    fig = steady(measure)
    fig.detail += f", {per_step:,} instructions/step"
    return fig


# ----------------------------------------------------------------------------- 3. firmware
def bench_firmware(quick: bool) -> list[Figure]:
    import tracemalloc

    from emulator.config import Config, config_from_dict
    from emulator.errors import BudgetExceeded
    from emulator.machine import Machine
    from isa.asm import assemble

    out = []
    n_iter = 2_000_000 if quick else 6_000_000
    prog = assemble(SCALAR_LOOP.format(n=n_iter), "loop.s")

    def measure() -> Figure:
        rates = []
        for _ in range(3 if quick else 5):
            m = Machine(Config(), prog)
            t0 = time.perf_counter()
            m.run()
            rates.append(m.steps / (time.perf_counter() - t0) / 1e6)
        return Figure("scalar firmware (addi/add/xor/eaddi/blt loop)", _median(rates),
                      "M instr/s", ">= 20", rates, f"{_range(rates, fmt='.1f')} M/s")

    Machine(Config(), assemble(SCALAR_LOOP.format(n=10), "warm.s")).run()  # compile/load
    out.append(steady(measure))

    def runaway() -> Figure:
        m = Machine(Config(), assemble("top: jmp top\n", "top.s"))
        t0 = time.perf_counter()
        try:
            m.run()
            what = "halted?"
        except BudgetExceeded as e:
            what = e.message
        dt = time.perf_counter() - t0
        return Figure("`top: jmp top` stopped by the default budget", dt, "s", "<= 10", [dt],
                      f"{what} ({m.steps:,} steps)")

    out.append(runaway())

    n = 100_000
    body = "\n".join(("li r1, 5", "addi r2, r1, 3", "vrelu r3, r4, r5", "eaddi e1, e1, 0")
                     * (n // 4)) + "\nhalt\n"
    big = assemble(body, "big.s")
    small = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 1024}})
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    m = Machine(small, big)
    own = tracemalloc.get_traced_memory()[0] - before - m.counts.nbytes - m.dram.nbytes \
        - m.spad.nbytes - m.acc.nbytes
    tracemalloc.stop()
    out.append(Figure("decoded program", own / len(big), "bytes/instr", "<= 64",
                      [own / len(big)], f"{len(big):,} instructions; the counter matrix adds "
                      f"{m.counts.nbytes // len(big)} bytes per pc"))
    out.append(bench_big_run(quick))
    return out


BIG_RUN_CHILD = """
import json, resource, subprocess, sys, time
from isa.asm import assemble
from isa.encoding import Program, write_program
n, path = int(sys.argv[1]), sys.argv[2]
unit = assemble("li r1, 5\\naddi r2, r1, 3\\nvrelu r3, r4, r5\\neaddi e1, e1, 0\\n", "u.s")
halt = assemble("halt\\n", "h.s")
write_program(Program(unit.words * (n // 4) + halt.words), path)
t0 = time.perf_counter()
res = subprocess.run([sys.executable, "-m", "programs.cli", "run", path, "-q"])
t = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"s": t, "rss_mib": rss, "rc": res.returncode}))
"""


def bench_big_run(quick: bool) -> Figure:
    n = 200_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-c", BIG_RUN_CHILD, str(n), f"{tmp}/big.bin"],
                             cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        return Figure(f"lpemu run, {n:,}-instruction program", None, "s",
                      note="failed: " + res.stderr[-300:])
    d = json.loads(res.stdout.strip().splitlines()[-1])
    return Figure(f"lpemu run of a {n:,}-instruction binary (load, decode, run)", d["s"], "s", "",
                  [d["s"]], f"peak {d['rss_mib']:.0f} MiB, exit {d['rc']}")


# ----------------------------------------------------------------------------- 4. epoch
def epoch_child(samples: int) -> None:
    """Run in a child process: one epoch of ``samples`` samples; prints JSON."""
    from emulator.config import Config
    from programs.bench.epoch import epoch_child as run

    run(lambda: (mlp_spec(), Config(), mnist_like(samples)), samples,
        lambda st, tr: {"sparsity": st.mean_sparsity})


def bench_epoch(quick: bool) -> list[Figure]:
    samples = 6000 if quick else 60000
    res = subprocess.run([sys.executable, "-m", "programs.bench.suite", "--epoch-child",
                          str(samples)], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("epoch benchmark failed:\n" + res.stderr[-3000:])
    e = json.loads(res.stdout.strip().splitlines()[-1])
    return [Figure(f"epoch of {samples:,} samples (wall)", e["epoch_s"], "s",
                   "<= 180" if samples == 60000 else "", [e["epoch_s"]],
                   f"setup {e['setup_s']:.1f} s"),
            Figure("  peak resident memory", e["peak_rss_mib"], "MiB", "<= 1024",
                   [e["peak_rss_mib"]])]


# ----------------------------------------------------------------------------- 5. SCALE-Sim
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


def bench_scalesim(quick: bool) -> list[Figure]:
    name = "cycle model (256,784,500) on 32x32 vs SCALE-Sim (wall)"
    sc = _scalesim_module()
    if sc is None:
        return [Figure(name, None, "", note="skipped: not a checkout")]
    venv_dir = Path(os.environ.get("LPEMU_SCALESIM_VENV", sc.default_venv()))
    if not (venv_dir / "bin" / "python").exists():
        return [Figure(name, None, "", note="skipped: run benchmarks/scalesim_compare.py once")]
    orig = (sc.SHAPES, sc.QUICK_SHAPES, sc.ARRAYS)
    try:
        sc.QUICK_SHAPES, sc.ARRAYS = [(256, 784, 500)], [(32, 32)]
        res = sc.compare(quick=True, venv_path=venv_dir, reps=5, progress=False)
    finally:
        sc.SHAPES, sc.QUICK_SHAPES, sc.ARRAYS = orig
    if res is None:
        return [Figure(name, None, "", note="skipped: SCALE-Sim did not run")]
    ws = [r for r in res["cases"] if r["dataflow"] == "ws"][0]
    agree = "cycles agree" if ws["agree"] else "CYCLES DIFFER"
    return [Figure(name, ws["scalesim_wall_s"] / ws["lpemu_model_wall_s"], "x faster", "",
                   [], f"{1e6 * ws['lpemu_model_wall_s']:.1f} us vs "
                   f"{ws['scalesim_wall_s']:.2f} s; {agree}"),
            Figure("  full gemm with values vs SCALE-Sim (wall)",
                   ws["scalesim_wall_s"] / ws["lpemu_run_wall_s"], "x faster", "", [],
                   f"{1e3 * ws['lpemu_run_wall_s']:.2f} ms")]


# ----------------------------------------------------------------------------- 6. start-up
def bench_startup(quick: bool) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "tiny.s"
        prog.write_text(TINY_PROGRAM)
        cmd = [sys.executable, "-m", "programs.cli", "run", str(prog), "-q"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # fills numba's cache

        def measure() -> Figure:
            t_run, t_py = [], []
            for _ in range(3 if quick else 5):
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
                t1 = time.perf_counter()
                subprocess.run([sys.executable, "-c", "pass"], check=True)
                t_run.append(t1 - t0)
                t_py.append(time.perf_counter() - t1)
            return Figure("lpemu run, 10 instructions, warm cache", _median(t_run), "s",
                          "<= 0.5", t_run, f"{_range(t_run)} s; bare python "
                          f"{_median(t_py):.2f} s")

        return [steady(measure)]


# ----------------------------------------------------------------------------- 7. JIT off
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


def bench_jit_off(quick: bool) -> list[Figure]:
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
        out[mode] = {"s": [r["s"] for r in runs], "digest": runs[0]["digest"],
                     "counters": runs[0]["counters"]}
    same = out["on"]["digest"] == out["off"]["digest"] and \
        out["on"]["counters"] == out["off"]["counters"]
    ratio = _median(out["off"]["s"]) / _median(out["on"]["s"])
    return [Figure(f"digits training, {n} samples, NUMBA_DISABLE_JIT=1 / numba", ratio,
                   "x time", "", [], f"{_median(out['off']['s']):.2f} s vs "
                   f"{_median(out['on']['s']):.2f} s; " + ("identical values and counters"
                                                           if same else "VALUES DIFFER"),
                   note="" if same else "JIT on and off disagree")]


# ----------------------------------------------------------------------------- 9. CPU hogs
def start_hogs(n: int) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes (a busy loop each), like ``yes > /dev/null``."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _busy_loop() -> float:
    """Seconds of a fixed single-threaded pure-Python loop: how much CPU one busy task gets."""
    t0 = time.perf_counter()
    s = 0
    for i in range(1_000_000):
        s += i
    return time.perf_counter() - t0


def bench_hogs(n: int, quick: bool) -> list[Figure]:
    """The training step with and without ``n`` CPU hogs, against a plain single-threaded
    loop measured in the same rounds: on a machine that other work shares too, the loop's
    slowdown is what fair sharing gives one busy task, and the step should do no worse."""
    from emulator.threads import cpus

    chip, flt, steps, _ = step_timers(10, 10 if quick else 30)
    rounds = 5 if quick else 9
    chip()
    flt()
    t: dict[str, list[float]] = {k: [] for k in ("idle", "busy", "ref_idle", "ref_busy",
                                                 "f_idle", "f_busy")}
    hogs: list[subprocess.Popen] = []
    try:
        for _ in range(rounds):  # alternate: without hogs, then with them
            for state in ("idle", "busy"):
                if state == "busy":
                    hogs = start_hogs(n)
                    time.sleep(0.3)
                t0 = time.perf_counter()
                chip()
                t[state].append((time.perf_counter() - t0) / steps)
                t0 = time.perf_counter()
                flt()
                t["f_" + state].append((time.perf_counter() - t0) / steps)
                t["ref_" + state].append(_busy_loop())
                for h in hogs:
                    h.kill()
                    h.wait()
                hogs = []
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    slow = [b / i for b, i in zip(t["busy"], t["idle"], strict=True)]
    ref = [b / i for b, i in zip(t["ref_busy"], t["ref_idle"], strict=True)]
    flt_slow = [b / i for b, i in zip(t["f_busy"], t["f_idle"], strict=True)]
    rel = [s / r for s, r in zip(slow, ref, strict=True)]
    fair = (n + 1) / cpus() if n + 1 > cpus() else 1.0
    return [Figure(f"training step with {n} CPU hogs: slowdown / a busy loop's", _median(rel),
                   "x", "<= 1.25", rel,
                   f"step {1e3 * _median(t['busy']):.2f} ms vs {1e3 * _median(t['idle']):.2f} "
                   f"ms ({_median(slow):.2f}x); a single-threaded loop slows "
                   f"{_median(ref):.2f}x, the float32 step {_median(flt_slow):.2f}x; on an "
                   f"otherwise idle machine fair sharing of {cpus()} CPUs gives {fair:.2f}x")]


# ----------------------------------------------------------------------------- 10. LeNet epoch
def bench_lenet_epoch(quick: bool) -> list[Figure]:
    from programs.bench.lenet import bench_lenet_epoch as run

    e = run(quick)
    return [Figure(f"LeNet epoch of {e['samples']:,} samples (wall)", e["epoch_s"], "s",
                   "<= 120" if e["samples"] == 60000 else "", [e["epoch_s"]],
                   f"setup {e['setup_s']:.1f} s"),
            Figure("  peak resident memory", e["peak_rss_mib"], "MiB", "<= 2048",
                   [e["peak_rss_mib"]])]


# ----------------------------------------------------------------------------- driver
PARTS: dict[str, Callable[[bool], list[Figure]]] = {
    "gemm": bench_gemm, "step": bench_step, "firmware": bench_firmware, "epoch": bench_epoch,
    "scalesim": bench_scalesim, "startup": bench_startup, "jit_off": bench_jit_off,
    "conv": lambda quick: bench_conv(quick), "lenet_epoch": bench_lenet_epoch,
}


def machine_state() -> dict[str, Any]:
    """What the machine was doing when the suite started (for reading the results)."""
    from emulator.threads import POLICY, cpus

    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not Unix
        load = (float("nan"),) * 3
    return {"cpus": cpus(), "others_runnable": POLICY._busy_others(),
            "loadavg": [round(x, 2) for x in load], "max_threads": POLICY.max_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_suite(quick: bool = False, progress: bool = True, only: list[str] | None = None,
              hogs: int = 0) -> dict[str, Any]:
    from rich.console import Console

    from emulator import vnni

    con = Console(stderr=True, quiet=not progress)
    res: dict[str, Any] = {"quick": quick, "state": machine_state(), "vnni": vnni.AVAILABLE,
                           "parts": {}}
    if res["state"]["others_runnable"] > 0:
        con.log(f"warning: {res['state']['others_runnable']} other tasks were runnable at the "
                f"start (load {res['state']['loadavg']}): timings will be noisy")
    parts = list(PARTS.items())
    if hogs:
        parts.append(("hogs", lambda q: bench_hogs(hogs, q)))
    for name, fn in parts:
        if only and name not in only:
            continue
        with con.status(f"bench: {name} ..."):
            t0 = time.perf_counter()
            figs = fn(quick)
            con.log(f"{name} done in {time.perf_counter() - t0:.1f} s")
        res["parts"][name] = [f.to_dict() for f in figs]
    return res


def figures(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for part in res["parts"].values() for f in part]


def misses(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Figures with a target that they did not meet."""
    return [f for f in figures(res) if f["passed"] is False]


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:,.{digits}f} {unit}".strip()


def print_suite(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 140))
    st = res["state"]
    t = Table(title="lpemu bench" + (" (quick)" if res["quick"] else "") +
              f": {st['cpus']} CPUs, {st['others_runnable']} other runnable tasks, load "
              f"{st['loadavg'][0]}, VNNI {'on' if res.get('vnni') else 'off'}")
    for c in ("figure", "value", "target", "result", "noise", "details"):
        t.add_column(c, justify="left" if c in ("figure", "details") else "right",
                     overflow="fold")
    for f in figures(res):
        verdict = {True: "[green]pass[/]", False: "[red]MISS[/]", None: ""}[f["passed"]]
        noise = "" if f["noise"] is None else f"{100 * f['noise']:.0f}%" + \
            (" noisy" if f["noisy"] else "")
        detail = f["detail"] + (f" ({f['note']})" if f["note"] else "")
        t.add_row(f["name"], _fmt(f["value"], f["unit"]), f["target"], verdict, noise, detail)
    con.print(t)
    bad = misses(res)
    noisy = [f for f in figures(res) if f["noisy"]]
    if noisy:
        con.print(f"[yellow]warning:[/] {len(noisy)} figure(s) stayed noisy after retries: the "
                  "machine is busy; compare ratios, not times, and rerun when it is idle")
    con.print(f"{sum(f['passed'] is True for f in figures(res))} targets met, {len(bad)} missed")


# ----------------------------------------------------------------------------- 8. conv and pooling
def bench_conv(quick: bool) -> list[Figure]:
    """programs/bench/conv.py's cases as figures: emulator time / float32 time (no target)."""
    from programs.bench.conv import bench_conv as run

    out = []
    for r in run(quick):
        lo, hi = r["ratio_range"]
        out.append(Figure(f"{r['name']} / float32 numpy", r["ratio"], "x time", "",
                          [lo, r["ratio"], hi], f"{1e3 * r['emulator_s']:.2f} ms vs "
                          f"{1e3 * r['numpy_f32_s']:.2f} ms, ratio [{lo:.2f}-{hi:.2f}]"))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="lpemu bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--json", metavar="OUT", help="write every figure and sample as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if a figure misses its target")
    ap.add_argument("--only", metavar="PARTS", help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--hogs", type=int, default=0, metavar="N",
                    help="also time the training step with N CPU-bound processes running")
    ap.add_argument("--epoch-child", type=int, metavar="SAMPLES", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.epoch_child:
        epoch_child(args.epoch_child)
        return 0
    only = args.only.split(",") if args.only else None
    res = run_suite(args.quick, only=only, hogs=args.hogs)
    print_suite(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 1 if args.check and misses(res) else 0


if __name__ == "__main__":
    sys.exit(main())
