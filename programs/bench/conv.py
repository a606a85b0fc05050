"""Convolution and pooling instructions against the equivalent float32 numpy operations, measured
in the same run, on LeNet's layer shapes at batch 64 (conv 20@5x5 on 1x28x28, max-pool 2,
conv 50@5x5, max-pool 2; NHWC).

    python -m programs.bench.conv [--repeats N] [--json OUT]

Each case runs one instruction (values, counters, skip counts and overflow handling included)
over scratchpad operands; its baseline is what a float32 numpy LeNet step does for the same
operation: im2col by a strided view and a reshape copy, then matmul (the weight gradient reuses
the forward's im2col, as the chip does when X is unchanged; the forward runs without it);
col2im by one strided add per window position; pooling by strided slices, with the mask its
backward pass needs. The baseline runs on as many BLAS threads as the emulator's
thread policy gives an operation of its size (emulator/threads.py). The ratio is emulator
time / float32 time (the emulator's slowdown; lower is better). Medians over the repeats; the
machine may be shared, so the spread of the per-repeat ratios is reported too. Every result is
checked against an int64 computation first (a benchmark of wrong values is useless).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from emulator import kernels
from emulator.config import Config
from emulator.geometry import Geometry, pack, padded, window_view
from emulator.machine import Machine
from emulator.threads import POLICY
from isa.asm import assemble

BATCH = 64
# (name, geometry of the layer) for LeNet at batch 64
CONV1 = Geometry(n=BATCH, c=1, h=28, w=28, kh=5, kw=5, sh=1, sw=1, ph=0, pw=0, f=20)
CONV2 = Geometry(n=BATCH, c=20, h=12, w=12, kh=5, kw=5, sh=1, sw=1, ph=0, pw=0, f=50)
POOL1 = Geometry(n=BATCH, c=20, h=24, w=24, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, f=0)
POOL2 = Geometry(n=BATCH, c=50, h=8, w=8, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, f=0)
A_AT, B_AT, I_AT = 0, 1 << 22, 3 << 21  # scratchpad: X or dZ, W or dZ, indices


def _config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        memory=dataclasses.replace(base.memory, dram_bytes=1 << 16, scratchpad_bytes=8 << 20),
        accumulator=dataclasses.replace(base.accumulator, entries=1 << 21),
    )


def _machine(instr: str, g: Geometry, a: np.ndarray, b: np.ndarray | None = None,
             idx: np.ndarray | None = None) -> Machine:
    regs = "".join(f"li r{4 + i}, {v}\n" for i, v in enumerate(pack(g)))
    src = f"li r1, 0\nli r2, {A_AT}\nli r3, {B_AT}\nli r8, {I_AT}\n{regs}{instr}\nhalt\n"
    m = Machine(_config(), assemble(src, "bench_conv.s"))
    m.spad[A_AT : A_AT + a.nbytes] = a.view(np.uint8).ravel()
    if b is not None:
        m.spad[B_AT : B_AT + b.nbytes] = b.view(np.uint8).ravel()
    if idx is not None:
        m.spad[I_AT : I_AT + idx.nbytes] = idx.ravel()
    return m


def _rerun(m: Machine) -> None:
    m.pc, m.halted = 0, False
    m.run()


# ----------------------------------------------------------------------------- float32 baselines
def f32_im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    return window_view(padded(x, g, np.float32), g).reshape(g.m, g.k)


def f32_col2im(p: np.ndarray, g: Geometry) -> np.ndarray:
    dx = np.zeros(g.padded, np.float32)
    p6 = p.reshape(g.n, g.oh, g.ow, g.kh, g.kw, g.c)
    for kh in range(g.kh):
        for kw in range(g.kw):
            dx[:, kh : kh + g.sh * g.oh : g.sh, kw : kw + g.sw * g.ow : g.sw] += p6[:, :, :, kh, kw]
    return dx[:, g.ph : g.ph + g.h, g.pw : g.pw + g.w]


def f32_pool_slices(x: np.ndarray, g: Geometry) -> list[np.ndarray]:
    """The KH KW strided (N, OH, OW, C) slices of a non-overlapping pooling, scan order."""
    x4 = x.reshape(g.n, g.h, g.w, g.c)
    return [x4[:, kh : kh + g.sh * g.oh : g.sh, kw : kw + g.sw * g.ow : g.sw]
            for kh in range(g.kh) for kw in range(g.kw)]


def f32_maxpool(x: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling and the mask its backward pass needs (where x equals its window's max)."""
    sl = f32_pool_slices(x, g)
    y = sl[0].copy()
    for v in sl[1:]:
        np.maximum(y, v, out=y)
    up = np.repeat(np.repeat(y, g.kh, axis=1), g.kw, axis=2)
    return y, x.reshape(g.n, g.h, g.w, g.c) == up


def f32_unpool(dy: np.ndarray, mask: np.ndarray, g: Geometry) -> np.ndarray:
    d = dy.reshape(g.n, g.oh, g.ow, g.c)
    return np.repeat(np.repeat(d, g.kh, axis=1), g.kw, axis=2) * mask


# ----------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    name: str
    macs: int  # logical MACs (0 for vector-unit cases)
    machine: Machine
    baseline: Callable[[], object]
    check: Callable[[Machine], bool]
    # before each emulator run: forget cached im2col results (a forward pass sees a new batch)
    fresh: bool = False


def _cases(rng: np.random.Generator) -> list[Case]:
    def i8(*shape: int, zeros: float = 0.0) -> np.ndarray:
        v = rng.integers(-128, 128, shape, dtype=np.int8)
        if zeros:
            v[rng.random(shape) < zeros] = 0
        return v

    out = []
    for name, g in (("conv1", CONV1), ("conv2", CONV2)):
        x, w = i8(g.n, g.h, g.w, g.c), i8(g.k, g.f)
        dz = i8(g.m, g.f, zeros=0.9)  # QBP gradients are ~90% zeros
        xf, wf, dzf = x.astype(np.float32), w.astype(np.float32), dz.astype(np.float32)
        colf = f32_im2col(xf, g)
        col = colf.astype(np.int64)
        fwd = col @ w.astype(np.int64)
        out.append(Case(
            f"conv fwd {name} {g.m}x{g.k}x{g.f}", g.m * g.k * g.f,
            _machine("conv r1, r2, r3, r4, r5, r6, r7", g, x, w),
            lambda xf=xf, wf=wf, g=g: f32_im2col(xf, g) @ wf,
            lambda m, fwd=fwd: np.array_equal(m.acc[: fwd.size], fwd.ravel()), fresh=True))
        wg = col.T @ dz.astype(np.int64)
        # the float32 step reuses its forward im2col; the chip reuses it when X is unchanged
        out.append(Case(
            f"conv wgrad {name} {g.k}x{g.m}x{g.f} (90% zero dZ, sb=1)", g.m * g.k * g.f,
            _machine("conv r1, r2, r3, r4, r5, r6, r7, mode=wgrad, sb=1", g, x, dz),
            lambda colf=colf, dzf=dzf: colf.T @ dzf,
            lambda m, wg=wg: np.array_equal(m.acc[: wg.size], wg.ravel())))
        if name == "conv2":  # LeNet needs no input gradient of its first layer
            p = dz.astype(np.int64) @ w.astype(np.int64).T
            dx = np.zeros(g.padded, np.int64)
            p6 = p.reshape(g.n, g.oh, g.ow, g.kh, g.kw, g.c)
            for kh in range(g.kh):
                for kw in range(g.kw):
                    dx[:, kh : kh + g.oh, kw : kw + g.ow] += p6[:, :, :, kh, kw]
            out.append(Case(
                f"conv dgrad {name} {g.m}x{g.f}x{g.k} (90% zero dZ, sa=1)", g.m * g.k * g.f,
                _machine("conv r1, r2, r3, r4, r5, r6, r7, mode=dgrad, sa=1", g, dz, w),
                lambda dzf=dzf, wf=wf, g=g: f32_col2im(dzf @ wf.T, g),
                lambda m, dx=dx: np.array_equal(m.acc[: dx.size], dx.ravel())))
    for name, g in (("pool1", POOL1), ("pool2", POOL2)):
        x = i8(g.n, g.h, g.w, g.c)
        dy = i8(g.m, g.c, zeros=0.5)
        xf, dyf = x.astype(np.float32), dy.astype(np.float32)
        win = np.stack(f32_pool_slices(x, g), axis=-1)  # (N, OH, OW, C, KH KW)
        ymax, imax = win.max(-1).ravel(), win.argmax(-1).astype(np.uint8).ravel()
        sums = win.astype(np.int64).sum(-1).ravel()
        out.append(Case(
            f"vmaxpool {name} idx=1 [{g.n},{g.h},{g.w},{g.c}]", 0,
            _machine("vmaxpool r2, r2, r8, r4, r5, r6, r7, idx=1", g, x),
            lambda xf=xf, g=g: f32_maxpool(xf, g),
            lambda m, y=ymax, i=imax: np.array_equal(m.sp_elems(A_AT, y.size, 1), y)
            and np.array_equal(m.spad[I_AT : I_AT + i.size], i)))
        out.append(Case(
            f"vsumpool {name} [{g.n},{g.h},{g.w},{g.c}]", 0,
            _machine("vsumpool r1, r2, r4, r5, r6, r7", g, x),
            lambda xf=xf, g=g: sum(f32_pool_slices(xf, g)),
            lambda m, s=sums: np.array_equal(m.acc[: s.size], s)))
        mask = f32_maxpool(xf, g)[1]
        d = np.zeros(win.shape, np.int64)
        np.put_along_axis(d, imax.reshape(*win.shape[:4], 1).astype(np.int64),
                          dy.astype(np.int64).reshape(*win.shape[:4], 1), axis=-1)
        dx = d.reshape(g.n, g.oh, g.ow, g.c, g.kh, g.kw).transpose(0, 1, 4, 2, 5, 3).ravel()
        out.append(Case(
            f"vunpool max {name} [{g.n},{g.oh},{g.ow},{g.c}]", 0,
            _machine("vunpool r1, r2, r8, r4, r5, r6, r7, mode=max", g, dy, idx=imax),
            lambda dyf=dyf, mask=mask, g=g: f32_unpool(dyf, mask, g),
            lambda m, dx=dx: np.array_equal(m.acc[: dx.size], dx)))
    for name, rows, cols in (("conv1", CONV1.m, 20), ("conv2", CONV2.m, 50)):
        b = i8(cols)
        bf = b.astype(np.float32)
        accf = rng.standard_normal((rows, cols)).astype(np.float32)
        m = _machine(f"eset e1, 0\neset e2, 0\nli r9, {rows}\nli r10, {cols}\n"
                     "vbias r1, r3, r9, r10, e1, e2", CONV1, b, b)

        def bias_f32(accf=accf, bf=bf) -> None:
            accf += bf

        out.append(Case(f"vbias {name} {rows}x{cols}", 0, m, bias_f32, lambda m: True))
    return out


def run(repeats: int = 7) -> list[dict[str, Any]]:
    """Every case: emulator and float32 medians, interleaved per repeat, and their ratio."""
    rng = np.random.default_rng(0)
    results = []
    for c in _cases(rng):
        _rerun(c.machine)
        if not c.check(c.machine):
            raise AssertionError(f"{c.name}: wrong values")
        c.baseline()
        emu, flt = [], []
        for _ in range(repeats):  # interleaved, so drift of the shared machine hits both
            if c.fresh:
                kernels.clear_caches()
            t0 = time.perf_counter()
            _rerun(c.machine)
            t1 = time.perf_counter()
            POLICY.use(POLICY.for_work(c.macs))  # the emulator's BLAS threads for this size
            c.baseline()
            POLICY.restore()
            t2 = time.perf_counter()
            emu.append(t1 - t0)
            flt.append(t2 - t1)
        ratios = [e / f for e, f in zip(emu, flt, strict=True)]
        results.append({
            "name": c.name, "macs": c.macs, "emulator_s": statistics.median(emu),
            "numpy_f32_s": statistics.median(flt), "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
        })
    return results


def bench_conv(quick: bool) -> list[dict[str, Any]]:
    """The ``lpemu bench`` entry point (programs/bench/suite.py)."""
    return run(3 if quick else 9)


def rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(measurement, lpemu, baseline, ratio, target) table rows for ``lpemu bench``."""
    out = []
    for r in results:
        lo, hi = r["ratio_range"]
        out.append((f"{r['name']} (time vs float32 numpy)", f"{1e3 * r['emulator_s']:.2f} ms",
                    f"{1e3 * r['numpy_f32_s']:.2f} ms", f"{r['ratio']:.2f}x [{lo:.2f}-{hi:.2f}]",
                    ""))
    emu = sum(r["emulator_s"] for r in results)
    flt = sum(r["numpy_f32_s"] for r in results)
    out.append(("  all conv/pool/bias cases above (sum of medians)", f"{1e3 * emu:.1f} ms",
                f"{1e3 * flt:.1f} ms", f"{emu / flt:.2f}x", "a small multiple"))
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", help="write results as JSON")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    results = run(args.repeats)
    t = Table(title="conv/pool instructions vs float32 numpy (same run, medians; ratio = lpemu "
              "time / float32 time, per-repeat range in brackets)")
    for col in ("measurement", "lpemu", "float32", "ratio"):
        t.add_column(col, justify="left" if col == "measurement" else "right")
    for row in rows(results):
        t.add_row(*row[:4])
    Console(width=120).print(t)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
