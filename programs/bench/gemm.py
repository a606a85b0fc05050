"""Matrix-instruction throughput against numpy float32 matmul, measured in the same run.

    python -m programs.bench.gemm [--repeats N] [--json OUT]

For each INT8 GEMM shape (M, K, N) the emulator runs one ``gemm`` instruction over scratchpad
operands (values, skip counts, overflow handling, operand conversion and counters included);
the baseline is ``numpy.matmul`` of the same int8-valued matrices already held as float32,
on as many BLAS threads as the emulator's thread policy gives an operation of that size
(emulator/threads.py). The printed ratio is baseline time / emulator time, i.e. the
emulator's throughput as a fraction of BLAS (higher is better). Medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from emulator.config import Config
from emulator.machine import Machine
from isa.asm import assemble

SHAPES = ((256, 784, 500), (10, 784, 500), (1024, 1024, 1024))


def bench_config(m: int, k: int, n: int) -> Config:
    base = Config()
    sp = max(base.memory.scratchpad_bytes, m * k + k * n)
    return dataclasses.replace(
        base,
        memory=dataclasses.replace(base.memory, dram_bytes=1 << 16, scratchpad_bytes=sp),
        accumulator=dataclasses.replace(base.accumulator, entries=max(m * n, 1)),
    )


def gemm_machine(a: np.ndarray, b: np.ndarray, skip_b: bool = False) -> Machine:
    m, k = a.shape
    n = b.shape[1]
    src = f"""
        li r1, 0
        li r2, {m * k}
        li r3, 0
        li r4, {m}
        li r5, {k}
        li r6, {n}
        gemm r3, r1, r2, r4, r5, r6, sb={int(skip_b)}
        halt
    """
    mach = Machine(bench_config(m, k, n), assemble(src, "bench.s"))
    mach.spad[: m * k] = a.view(np.uint8).ravel()
    mach.spad[m * k : m * k + k * n] = b.view(np.uint8).ravel()
    return mach


def rerun(mach: Machine) -> None:
    mach.pc, mach.halted = 0, False
    mach.run()


def gemm_case(shape: tuple[int, int, int], zero_fraction: float = 0.0):
    """(machine, A as float32, B as float32, check) for random int8 operands; ``check()``
    asserts the machine's last result is the exact product."""
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    if zero_fraction:
        b[rng.random(b.shape) < zero_fraction] = 0
    mach = gemm_machine(a, b, skip_b=zero_fraction > 0)

    def check() -> None:
        got = mach.acc[: m * n].reshape(m, n)
        assert np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64))

    return mach, a.astype(np.float32), b.astype(np.float32), check


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(shape: tuple[int, int, int], repeats: int, zero_fraction: float = 0.0) -> dict:
    from emulator.threads import POLICY

    m, k, n = shape
    mach, af, bf, check = gemm_case(shape, zero_fraction)
    te, tb = [], []
    rerun(mach)
    for _ in range(repeats):  # interleaved rounds
        t0 = time.perf_counter()
        rerun(mach)
        t1 = time.perf_counter()
        POLICY.use(POLICY.for_work(m * k * n))
        np.matmul(af, bf)
        te.append(t1 - t0)
        tb.append(time.perf_counter() - t1)
    POLICY.restore()
    check()
    t_emu, t_np = statistics.median(te), statistics.median(tb)
    macs = m * k * n
    return {"shape": list(shape), "zero_fraction": zero_fraction, "emulator_s": t_emu,
            "numpy_f32_s": t_np, "emulator_gmacs": macs / t_emu / 1e9,
            "numpy_gmacs": macs / t_np / 1e9, "ratio": t_np / t_emu}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="write results as JSON")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    results = [measure(s, args.repeats) for s in SHAPES]
    t = Table(title="gemm instruction vs numpy float32 matmul (same run, same threads)")
    for c in ("M,K,N", "emulator ms", "numpy ms", "emulator GMAC/s", "numpy GMAC/s", "ratio"):
        t.add_column(c, justify="right")
    for r in results:
        t.add_row("x".join(map(str, r["shape"])), f"{1e3 * r['emulator_s']:.2f}",
                  f"{1e3 * r['numpy_f32_s']:.2f}", f"{r['emulator_gmacs']:.1f}",
                  f"{r['numpy_gmacs']:.1f}", f"{r['ratio']:.2f}")
    Console().print(t)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
