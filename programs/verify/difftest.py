"""Differential testing: random valid programs run on the reference model, the fast datapath,
and the fast datapath with ``NUMBA_DISABLE_JIT=1`` (in a child process); the final state digest,
every counter and any fault must agree.

    python -m programs.verify.difftest [--count N] [--seed S] [--no-jit-leg] [--out DIR]

A mismatch is reported with its seed and the first diverging instruction (found by stepping
both machines one instruction at a time), then shrunk by dropping program chunks while the
mismatch persists; the small case is written to ``tests/regressions/<seed>.s`` (``--out``),
where ``tests/test_differential.py`` replays it on every datapath.

Programs are built from one generator per mnemonic (``GENERATORS``; a test checks every
instruction of the table has one) with edge operands (-128, -1, 0, 1, 127, accumulator limits,
shift 0 and maximum, exponents anywhere in 32 bits: requantizer shifts past every internal
width, ``WIDE_SHIFTS``), INT16 operands at odd addresses, aliased source and destination
ranges, bounded loops and forward branches, the compiler's lazy-update sequence (which the fast
machine runs fused, emulator/fusion.py), scalar-only loops long enough to meet a budget, and
convolution/pooling instructions over random small image geometries (empty, odd, strided,
padded, now and then invalid), over randomly drawn small hardware configs (array shape and
dataflow, skip granularity, accumulator width and overflow mode, DMA overlap, step and cycle
budgets). The fast legs run scalar, branch, exponent, DMA and vector instructions in the
compiled interpreter (emulator/scalar.py; ``scalar_mode``), the reference by their handlers.
The kernels are loaded at import, so the fast legs run every operation on them, however small
(a process that has not loaded them runs small operations on the reference datapath:
emulator/tiering.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emulator import kernels  # noqa: F401 - the fast legs test the kernels, not the cold tier
from emulator.config import Config, config_from_dict
from emulator.errors import BudgetExceeded
from emulator.machine import Machine
from isa import assemble
from isa.encoding import decode
from isa.errors import LpemuError

DRAM = 1 << 16
SPAD = 1 << 14
ACC = 4096
EDGE8 = [-128, -127, -1, 0, 1, 126, 127]
EDGE16 = [-32768, -32767, -257, -256, -128, -1, 0, 1, 127, 255, 256, 32767]
EDGE64 = [0, 1, -1, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1, 12345, -7]
ROUND = ["nearest", "trunc", "uniform", "triangular"]


@dataclass
class Gen:
    """Builds one program: a list of chunks, each a list of assembly lines."""

    rng: random.Random
    chunks: list[list[str]] = field(default_factory=list)
    labels: int = 0

    # ---------------------------------------------------------------- operand helpers
    def li(self, reg: int, value: int) -> list[str]:
        value = ((value + (1 << 63)) % (1 << 64)) - (1 << 63)
        lo = value & 0xFFFFFFFF
        lo_s = lo - (1 << 32) if lo >> 31 else lo
        hi = (value >> 32) & 0xFFFFFFFF
        out = [f"li r{reg}, {lo_s}"]
        if ((lo_s & ((1 << 64) - 1)) >> 32) != hi:
            out.append(f"lih r{reg}, {hi}")
        return out

    def pick(self, *opts):
        return self.rng.choice(opts)

    def n_elems(self) -> int:
        return self.pick(0, 1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 64)

    def addr(self, nbytes: int, align: int = 1) -> int:
        """A scratchpad address with room for ``nbytes``; INT16 operands (``align`` 2) land
        on an odd address one time in four (INT16 elements have no alignment rule)."""
        a = self.rng.randrange(0, SPAD - max(nbytes, 1) - 64)
        return a - a % align + (align > 1 and self.rng.random() < 0.25)

    def region_pair(self, nbytes: int, elem: int) -> tuple[int, int]:
        """Two scratchpad ranges: disjoint, identical, or overlapping at an offset."""
        a = self.addr(2 * nbytes + 64, elem)
        kind = self.rng.random()
        if kind < 0.2:
            return a, a
        if kind < 0.35:
            return a, a + elem * self.rng.randrange(1, 4)
        return a, self.addr(nbytes, elem)

    def dt(self) -> tuple[str, int]:
        return self.pick(("i8", 1), ("i16", 2))

    def emit(self, *lines: str) -> None:
        self.chunks.append(list(lines))

    def label(self, stem: str) -> str:
        self.labels += 1
        return f"{stem}{self.labels}"


# ---------------------------------------------------------------- generators per mnemonic
def _scalar3(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        a, b = x.rng.choice(EDGE64), x.rng.choice(EDGE64 + [3, 63, 64, 65])
        x.emit(*x.li(10, a), *x.li(11, b), f"{op} r12, r10, r11")
    return g


def _branch(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        lab = x.label("fwd")
        a = x.rng.choice([-1, 0, 1, 5])
        b = x.rng.choice([-1, 0, 1, 5])
        x.emit(*x.li(10, a), *x.li(11, b), f"{op} r10, r11, {lab}", "addi r13, r13, 1",
               f"{lab}:")
    return g


def _vec3(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        dt, b = x.dt()
        n = x.n_elems()
        a, d = x.region_pair(n * b, b)
        bb = x.pick(a, x.addr(n * b, b))
        x.emit(*x.li(1, d), *x.li(2, a), *x.li(3, bb), *x.li(4, n),
               f"{op} r1, r2, r3, r4, dt={dt}")
    return g


def _vshift(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        dt, b = x.dt()
        n = x.n_elems()
        a, d = x.region_pair(n * b, b)
        s = x.pick(0, 1, 3, 7, 8, 15, 16, 17, 40)
        x.emit(*x.li(1, d), *x.li(2, a), *x.li(3, s), *x.li(4, n),
               f"{op} r1, r2, r3, r4, dt={dt}")
    return g


def _vunary(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        dt, b = x.dt()
        n = x.n_elems()
        a, d = x.region_pair(n * b, b)
        x.emit(*x.li(1, d), *x.li(2, a), *x.li(4, n), f"{op} r1, r2, r4, dt={dt}")
    return g


def g_gemm(x: Gen) -> None:
    m, k, n = (x.pick(0, 1, 2, 3, 5, 8, 9, 13) for _ in range(3))
    da, ea = x.dt()
    db, eb = x.dt()
    a = x.addr(m * k * ea, 1)
    b = x.addr(k * n * eb, 1)
    c = x.rng.randrange(0, ACC - m * n)
    flags = ", ".join(f"{f}={x.rng.randrange(2)}" for f in ("acc", "ta", "tb", "sa", "sb"))
    x.emit(*x.li(1, c), *x.li(2, a), *x.li(3, b), *x.li(4, m), *x.li(5, k), *x.li(6, n),
           f"gemm r1, r2, r3, r4, r5, r6, {flags}, da={da}, db={db}")


def _exps(x: Gen, lo: int, hi: int) -> tuple[list[str], int]:
    """eset e1 (input) and e2 (output) with e2 - e1 in [lo, hi]."""
    e1 = x.rng.randrange(-10, 11)
    s = x.pick(lo, hi, x.rng.randrange(lo, hi + 1))
    return [f"eset e1, {e1}", f"eset e2, {e1 + s}"], s


E32 = (-(1 << 31), (1 << 31) - 1)
# requantizer shifts at and past every internal width: 31-bit sums, 62/63-bit products, the
# 64-bit draw, the fold bounds, and the extremes of a 32-bit exponent difference
WIDE_SHIFTS = [-(1 << 32) + 1, -(1 << 31), -70, -64, -63, -17, -16, -9, -8, 31, 32, 33, 62, 63,
               64, 65, 126, 127, 128, 129, 1000, (1 << 31), (1 << 32) - 1]


def _eset_any(x: Gen, ereg: int, value: int) -> list[str]:
    """Set an exponent register to any 32-bit value (eset takes 16 bits; else via r16)."""
    if -(1 << 15) <= value < (1 << 15):
        return [f"eset e{ereg}, {value}"]
    return [*x.li(16, value), f"esetr e{ereg}, r16"]


def _exp_pair(x: Gen, ein: int, eout: int, s: int) -> list[str]:
    """e[eout] - e[ein] = s, both within 32 bits, placed at random where that allows."""
    lo, hi = max(E32[0], E32[0] - s), min(E32[1], E32[1] - s)
    e_in = x.pick(lo, hi, max(lo, min(hi, x.rng.randrange(-12, 13))))
    return _eset_any(x, ein, e_in) + _eset_any(x, eout, e_in + s)


def _wide_exps(x: Gen) -> list[str]:
    """e1 (input), e2 (output) with a shift from WIDE_SHIFTS."""
    return _exp_pair(x, 1, 2, x.pick(*WIDE_SHIFTS))


def g_rq(x: Gen, mul: bool = False) -> None:
    n = x.n_elems()
    dt, b = x.dt()
    racc = x.rng.randrange(0, ACC - n)
    pick = x.rng.random()
    lines = _wide_exps(x) if pick < 0.3 else (_exps(x, -31, 31) if pick < 0.45
                                              else _exps(x, 0, 16))[0]
    rnd = x.pick(*ROUND)
    relu = x.rng.randrange(2)
    d = x.addr(n * b, b)
    if mul:
        m = x.pick(-32768, -3, -1, 0, 1, 2, 77, 32767)
        x.emit(*lines, *x.li(1, d), *x.li(2, racc), *x.li(3, n), *x.li(5, m),
               f"rqm r1, r2, r3, r5, e2, e1, rnd={rnd}, dt={dt}, relu={relu}")
    else:
        x.emit(*lines, *x.li(1, d), *x.li(2, racc), *x.li(3, n),
               f"rq r1, r2, r3, e2, e1, rnd={rnd}, dt={dt}, relu={relu}")


def g_vcvt(x: Gen) -> None:
    n = x.n_elems()
    sdt, sb = x.dt()
    ddt, db = x.dt()
    a = x.addr(n * sb, sb)
    d = x.pick(a, x.addr(n * db, db))
    lines = _wide_exps(x) if x.rng.random() < 0.3 else _exps(x, -8, 16)[0]
    x.emit(*lines, *x.li(1, d), *x.li(2, a), *x.li(3, n),
           f"vcvt r1, r2, r3, e2, e1, rnd={x.pick(*ROUND)}, sdt={sdt}, ddt={ddt}, "
           f"relu={x.rng.randrange(2)}")


def g_vsel(x: Gen) -> None:
    dt, b = x.dt()
    n = x.n_elems()
    m, a, bb, d = (x.addr(n * b, b) for _ in range(4))
    d = x.pick(d, a, m)
    x.emit(*x.li(1, d), *x.li(2, m), *x.li(3, a), *x.li(5, bb), *x.li(4, n),
           f"vsel r1, r2, r3, r5, r4, dt={dt}")


def _rows_cols(x: Gen) -> tuple[int, int]:
    return x.pick(0, 1, 2, 3, 5), x.pick(0, 1, 2, 4, 7, 16)


def g_vrmax(x: Gen) -> None:
    dt, b = x.dt()
    r, c = _rows_cols(x)
    a, d = x.region_pair(r * c * b, b)
    x.emit(*x.li(1, d), *x.li(2, a), *x.li(3, r), *x.li(4, c), f"vrmax r1, r2, r3, r4, dt={dt}")


def g_vrsum(x: Gen) -> None:
    dt, b = x.dt()
    r, c = _rows_cols(x)
    a = x.addr(r * c * b, b)
    racc = x.rng.randrange(0, ACC - r)
    x.emit(*x.li(1, racc), *x.li(2, a), *x.li(3, r), *x.li(4, c),
           f"vrsum r1, r2, r3, r4, dt={dt}")


def g_vtoacc(x: Gen) -> None:
    dt, b = x.dt()
    n = x.n_elems()
    racc = x.rng.randrange(0, ACC - n)
    x.emit(*x.li(1, racc), *x.li(2, x.addr(n * b, b)), *x.li(3, n),
           f"vtoacc r1, r2, r3, dt={dt}, acc={x.rng.randrange(2)}")


def g_vsubrow(x: Gen) -> None:
    dt, b = x.dt()
    r, c = _rows_cols(x)
    a, d = x.region_pair(r * c * b, b)
    rb = x.addr(r * b, b)
    x.emit(*x.li(1, d), *x.li(2, a), *x.li(3, rb), *x.li(4, r), *x.li(5, c),
           f"vsubrow r1, r2, r3, r4, r5, dt={dt}")


def g_vexp(x: Gen) -> None:
    n = x.n_elems()
    a, d = x.region_pair(2 * n, 2)
    e = x.pick(-24, -16, -8, -3, 0, 5, 8, -25, -26, 9, 10, *E32)
    x.emit(*_eset_any(x, 3, e), *x.li(1, d), *x.li(2, a), *x.li(3, n), "vexp r1, r2, r3, e3")


def g_vnormrow(x: Gen) -> None:
    dt, b = x.dt()
    r, c = _rows_cols(x)
    a = x.addr(2 * r * c, 2)
    d = x.pick(a, x.addr(r * c * b, b))
    racc = x.rng.randrange(0, ACC - r)
    f = x.pick(0, 7, 14, 15, 30, -1, -17, -18, 31, 46, 47, 48, -E32[1], -E32[0])
    x.emit(*_eset_any(x, 4, -f), *x.li(1, d), *x.li(2, a), *x.li(3, racc), *x.li(4, r), *x.li(5, c),
           f"vnormrow r1, r2, r3, r4, r5, e4, dt={dt}")


def g_vlazy(x: Gen) -> None:
    n = x.n_elems()
    t = x.addr(n, 1)
    a = x.pick(x.addr(2 * n, 2), t)
    s = x.pick(0, 1, 7, 8, 15, 16, 17, 40, (1 << 32) - 1) if x.rng.random() < 0.97 else -1
    x.emit(*_exp_pair(x, 6, 5, s), *x.li(1, t), *x.li(2, a), *x.li(3, n),
           "vlazy r1, r2, r3, e5, e6")


def g_vrsqrt(x: Gen) -> None:
    n = x.n_elems()
    a, d = x.region_pair(2 * n, 2)
    if x.rng.random() < 0.2:  # K = -e[ein] - 2 e[eout] far past both fold bounds
        e_out, e_in = x.pick(*E32), x.pick(*E32)
    else:
        k = x.pick(-4, -3, -2, 0, 1, 14, 28, 29, 30, 31, 44, 45, 46, 47)
        e_out = x.rng.randrange(-20, 21)
        e_in = -k - 2 * e_out
    x.emit(*_eset_any(x, 7, e_out), *_eset_any(x, 8, e_in), *x.li(1, d), *x.li(2, a),
           *x.li(3, n), "vrsqrt r1, r2, r3, e7, e8")


def g_vqstep(x: Gen) -> None:
    rows, cols = x.pick(0, 1, 2, 3, 5, 9), x.pick(0, 1, 2, 4, 7, 16)
    mode = x.pick("asum", "var", "amax")
    var = mode == "var"
    ra = x.rng.randrange(0, ACC - rows * cols)
    rb = x.rng.randrange(0, ACC - rows) if var else x.addr(rows * cols, 1)
    c = x.pick(0, 1, 3, 1000, (1 << 31) - 1, 1 << 40, (1 << 63) - 1) if x.rng.random() < 0.97 \
        else -1
    ea = x.pick(-30, -8, 0, 5, x.rng.randrange(-40, 41), *E32)
    d = x.pick(0, 3, -7, 40, -64, 256, -256) if x.rng.random() < 0.95 else x.pick(257, -300)
    ec = max(E32[0], min(E32[1], ea + d)) if var else x.pick(-30, 0, 12, *E32)
    eb = x.pick(-20, 0, 7, *E32)
    m0 = x.pick(0, 1, 1 << 15, 50000, (1 << 16) - 1, 1 << 20) if x.rng.random() < 0.97 else -5
    e0 = x.pick(-20, 0, 3, *E32)
    flags = f"mode={mode}, mask={x.rng.randrange(2)}, combine={x.pick('none', 'min', 'max')}"
    x.emit(*_eset_any(x, 3, ea), *_eset_any(x, 4, eb), *_eset_any(x, 5, ec), *_eset_any(x, 6, e0),
           *x.li(14, m0), *x.li(1, ra), *x.li(2, rb), *x.li(3, rows), *x.li(4, cols), *x.li(5, c),
           f"vqstep r14, r15, r1, r2, r3, r4, r5, e6, e3, e4, e5, {flags}")


def g_vtopk(x: Gen) -> None:
    dt, b = x.dt()
    rows, cols = x.pick(0, 1, 2, 3, 5, 8), x.pick(0, 1, 2, 4, 7, 10)
    a, d = x.region_pair(rows * cols * b, b)
    k = x.pick(0, 1, 2, 3, 5, 100)
    x.emit(*x.li(1, d), *x.li(2, a), *x.li(3, rows), *x.li(4, cols), *x.li(5, k),
           f"vtopk r1, r2, r3, r4, r5, dt={dt}, col={x.rng.randrange(2)}")


def g_vwmul(x: Gen) -> None:
    n = x.n_elems()
    da, ea = x.dt()
    db, eb = x.dt()
    a = x.addr(n * ea, ea)
    b = x.pick(a, x.addr(n * eb, eb))
    racc = x.rng.randrange(0, ACC - n)
    x.emit(*x.li(1, racc), *x.li(2, a), *x.li(3, b), *x.li(4, n),
           f"vwmul r1, r2, r3, r4, da={da}, db={db}, acc={x.rng.randrange(2)}")


def g_update(x: Gen) -> None:
    """The compiler's lazy-update tail (``rqm``; ``vsub``; ``vlazy``), which the fast machine
    runs fused (emulator/fusion.py): its wiring, with aliased and out-of-range operands, edge
    shifts and rounding modes that must make the fused handler fall back."""
    def rare(good, *bad):  # a bad or edge operand one time in ten
        return x.pick(*bad) if x.rng.random() < 0.1 else good

    n = x.n_elems()
    lines, _ = _exps(x, rare(1, -2, 0), 20)
    rnd = rare(x.pick("nearest", "trunc"), "uniform")
    u = x.addr(2 * n, 2)
    res = rare(x.addr(2 * n, 2), u, u + 2 * x.rng.randrange(1, 3))
    t = rare(x.addr(n, 1), res, res + 1, u + 1, SPAD - n // 2)
    racc = rare(x.rng.randrange(0, ACC - n), ACC - n // 2)
    mul = x.pick(-32768, -3, -1, 1, 2, 77, 32767, 2**31 - 1)
    s = rare(x.pick(0, 1, 7, 8, 15), 16)
    e = x.rng.randrange(-8, 8)
    x.emit(*lines, f"eset e5, {e}", f"eset e6, {e - s}", *x.li(1, u), *x.li(2, racc),
           *x.li(3, n), *x.li(5, mul), *x.li(6, res), *x.li(7, t),
           f"rqm r1, r2, r3, r5, e2, e1, rnd={rnd}, dt=i16, relu={x.rng.randrange(2)}",
           "vsub r6, r6, r1, r3, dt=i16", "vlazy r7, r6, r3, e5, e6")


def g_efit(x: Gen) -> None:
    n = x.n_elems()
    racc = x.rng.randrange(0, ACC - n)
    dt, _ = x.dt()
    x.emit("eset e1, 0", *x.li(2, racc), *x.li(3, n), f"efit e7, r2, r3, e1, dt={dt}")


def _dma(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        rows, nbytes = x.pick(0, 1, 2, 3, 5), x.pick(0, 1, 3, 8, 16, 33)
        dstride = nbytes + x.pick(0, 0, 1, 7)
        sstride = nbytes + x.pick(0, 0, 2, 5)
        dram = x.rng.randrange(0, DRAM - rows * dstride - 64)
        sp = x.addr(rows * sstride + 64)
        if x.rng.random() < 0.06:  # a fault: overlapping rows, a negative or outside operand
            edge = x.rng.randrange(5)
            if edge == 0:
                dstride = sstride = max(nbytes - 1, 0)
            elif edge == 1:
                rows = x.pick(-1, 2**40, 2**63 - 1)
            elif edge == 2:
                dram = x.pick(DRAM - nbytes + 1, -1, 2**62)
            elif edge == 3:
                sp = x.pick(SPAD - 2, -(2**63))
            else:
                dstride = x.pick(-1, 2**61)
        regs = (1, 2) if op == "dmald" else (2, 1)
        x.emit(*x.li(1, sp), *x.li(2, dram), *x.li(3, rows), *x.li(4, nbytes),
               *x.li(5, dstride), *x.li(6, sstride),
               f"{op} r{regs[0]}, r{regs[1]}, r3, r4, r5, r6")
    return g


def _dma_acc(op: str) -> Callable[[Gen], None]:
    def g(x: Gen) -> None:
        rows, cols = x.pick(0, 1, 2, 3), x.pick(0, 1, 2, 5)
        stride = 4 * cols + x.pick(0, 4, 12)
        dram = x.rng.randrange(0, DRAM - rows * stride - 64)
        racc = x.rng.randrange(0, ACC - rows * cols)
        regs = (1, 2) if op == "dmaldacc" else (2, 1)
        x.emit(*x.li(1, racc), *x.li(2, dram), *x.li(3, rows), *x.li(4, cols), *x.li(5, stride),
               f"{op} r{regs[0]}, r{regs[1]}, r3, r4, r5")
    return g


def g_scalar_mem(op: str) -> Callable[[Gen], None]:
    """ldw/stw, now and then at an address outside DRAM (the fault's pc and message must be
    the same whichever path runs it) or from a base register near the int64 limits."""
    def g(x: Gen) -> None:
        base = x.rng.randrange(0, DRAM - 8)
        if x.rng.random() < 0.05:
            base = x.pick(DRAM - 2, DRAM, -1, -(2**24), 2**62, -(2**63), 2**63 - 1)
        imm = x.pick(0, 4, -4, 2**23 - 1, -(2**23)) if x.rng.random() < 0.05 else 4
        x.emit(*x.li(2, base), *x.li(14, x.rng.choice(EDGE64)), f"{op} r14, r2, {imm}")
    return g


def g_accrd(x: Gen) -> None:
    addr = x.rng.randrange(ACC) if x.rng.random() < 0.95 else x.pick(ACC, -1, 2**40, 2**63 - 1)
    x.emit(*x.li(2, addr), "accrd r14, r2")


def g_exp(x: Gen) -> None:
    """Exponent arithmetic up to and past the 32-bit range (which faults)."""
    v = x.rng.randrange(-30, 30)
    if x.rng.random() < 0.2:  # at and past the edges (half of these fault)
        v = x.pick(2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**40)
    imm = x.pick(-1, 0, 1, 32767, -32768)
    x.emit(*x.li(2, v), "esetr e8, r2", f"eaddi e9, e8, {imm}", "eadd e10, e9, e8")


def g_spin(x: Gen) -> None:
    """A scalar-only loop long enough to meet the step or cycle budget mid-stretch, or a
    loop whose body ends in a fall-through to a coarse instruction."""
    lab = x.label("spin")
    count = 40000 if x.rng.random() < 0.1 else x.pick(3, 50, 2000)
    x.emit(*x.li(21, count), "li r22, 0", f"{lab}:", "addi r22, r22, 3", "mul r23, r22, r22",
           "srl r24, r23, r22", "addi r21, r21, -1", f"bne r21, r0, {lab}")


def g_loop(x: Gen) -> None:
    """A short counted loop around one or two random (non-control) instructions."""
    lab = x.label("loop")
    body: list[str] = []
    for _ in range(x.rng.randrange(1, 3)):
        sub = Gen(x.rng, labels=x.labels)
        name = x.rng.choice(BODY_OPS)
        GENERATORS[name](sub)
        x.labels = sub.labels
        for ch in sub.chunks:
            body += ch
    x.emit(*x.li(20, x.rng.randrange(1, 4)), f"{lab}:", *body, "addi r20, r20, -1",
           f"bne r20, r0, {lab}")


# ---------------------------------------------------------------- conv and pooling
def _geometry(x: Gen, pool: bool = False) -> tuple[list[str], dict[str, int]]:
    """li r4..r7 with a random small image geometry (rsz, rhw, rkw, rpf): usually valid, with
    empty dimensions, odd sizes, strides 1-3 and padding; one time in 12 a bad one (a window
    larger than the padded input, a zero window or stride, a register outside [0, 2**32)).
    ``pool``: mostly windows that reach into the input (max pooling faults otherwise)."""
    while True:
        g = {"n": x.pick(0, 1, 1, 2, 3), "c": x.pick(0, 1, 2, 3, 5), "h": x.pick(0, 1, 2, 3, 5, 6),
             "w": x.pick(1, 2, 3, 4, 7), "kh": x.pick(1, 2, 3), "kw": x.pick(1, 2, 3),
             "sh": x.pick(1, 1, 2, 3), "sw": x.pick(1, 2), "ph": x.pick(0, 0, 1, 2),
             "pw": x.pick(0, 1), "f": x.pick(0, 1, 2, 3, 5)}
        in_pad = g["kh"] <= g["ph"] or g["kw"] <= g["pw"]
        if g["h"] + 2 * g["ph"] >= g["kh"] and g["w"] + 2 * g["pw"] >= g["kw"] and not (
                pool and in_pad and x.rng.random() < 0.9):
            break
    regs = [g["n"] | g["c"] << 16, g["h"] | g["w"] << 16,
            g["kh"] | g["kw"] << 8 | g["sh"] << 16 | g["sw"] << 24,
            g["ph"] | g["pw"] << 8 | g["f"] << 16]
    if x.rng.random() < 1 / 12:
        i = x.rng.randrange(4)
        regs[i] = x.pick(-1, 1 << 32, regs[i] & ~0xFF, regs[i] | 0x70)
    lines = [ln for i, v in enumerate(regs) for ln in x.li(4 + i, v)]
    oh = (g["h"] + 2 * g["ph"] - g["kh"]) // g["sh"] + 1
    ow = (g["w"] + 2 * g["pw"] - g["kw"]) // g["sw"] + 1
    g.update(oh=oh, ow=ow, m=g["n"] * oh * ow, k=g["kh"] * g["kw"] * g["c"],
             inputs=g["n"] * g["h"] * g["w"] * g["c"])
    return lines, g


def _acc_addr(x: Gen, n: int) -> int:
    """An accumulator address for n entries; one time in 20 one that runs off the end."""
    return ACC - n // 2 - 1 if n and x.rng.random() < 0.05 else x.rng.randrange(0, ACC - n + 1)


def g_conv(x: Gen) -> None:
    lines, g = _geometry(x)
    mode = x.pick("fwd", "wgrad", "dgrad")
    da, ea = x.dt()
    db, eb = x.dt()
    if mode == "dgrad":
        na, nb, nout = g["m"] * g["f"], g["k"] * g["f"], g["inputs"]
    else:
        na, nb = g["inputs"], (g["k"] if mode == "fwd" else g["m"]) * g["f"]
        nout = (g["m"] if mode == "fwd" else g["k"]) * g["f"]
    flags = ", ".join(f"{f}={x.rng.randrange(2)}" for f in ("acc", "sa", "sb"))
    x.emit(*lines, *x.li(1, _acc_addr(x, nout)), *x.li(2, x.addr(na * ea)),
           *x.li(3, x.addr(nb * eb)),
           f"conv r1, r2, r3, r4, r5, r6, r7, mode={mode}, {flags}, da={da}, db={db}")


def g_vmaxpool(x: Gen) -> None:
    lines, g = _geometry(x, pool=True)
    dt, b = x.dt()
    a, d = x.region_pair(max(g["inputs"], g["m"] * g["c"]) * b, b)
    ri = x.pick(x.addr(g["m"] * g["c"]), d, a)
    x.emit(*lines, *x.li(1, d), *x.li(2, a), *x.li(3, ri),
           f"vmaxpool r1, r2, r3, r4, r5, r6, r7, dt={dt}, idx={x.rng.randrange(2)}")


def g_vsumpool(x: Gen) -> None:
    lines, g = _geometry(x)
    dt, b = x.dt()
    x.emit(*lines, *x.li(1, _acc_addr(x, g["m"] * g["c"])), *x.li(2, x.addr(g["inputs"] * b)),
           f"vsumpool r1, r2, r4, r5, r6, r7, dt={dt}")


def g_vunpool(x: Gen) -> None:
    """Usually the indices of a vmaxpool on the same geometry (so mode=max has valid ones);
    otherwise whatever the scratchpad holds (which mostly faults)."""
    lines, g = _geometry(x, pool=True)
    dt, b = x.dt()
    mc = g["m"] * g["c"]
    ri, dy = x.addr(mc), x.addr(mc * b)
    pool = []
    if x.rng.random() < 0.8:
        pool = [*x.li(1, x.addr(mc * b)), *x.li(2, x.addr(g["inputs"] * b)), *x.li(3, ri),
                f"vmaxpool r1, r2, r3, r4, r5, r6, r7, dt={dt}, idx=1"]
    x.emit(*lines, *pool, *x.li(3, ri), *x.li(1, _acc_addr(x, g["inputs"])), *x.li(2, dy),
           f"vunpool r1, r2, r3, r4, r5, r6, r7, mode={x.pick('max', 'sum')}, "
           f"acc={x.rng.randrange(2)}, dt={dt}")


def g_vbias(x: Gen) -> None:
    dt, b = x.dt()
    rows, cols = _rows_cols(x)
    s = x.pick(-16, -1, 0, 1, 2, 7, 15, 16, *WIDE_SHIFTS)  # any shift: e9 = e8 - s
    x.emit(*_exp_pair(x, 9, 8, s), *x.li(1, _acc_addr(x, rows * cols)),
           *x.li(2, x.addr(cols * b)), *x.li(3, rows), *x.li(4, cols),
           f"vbias r1, r2, r3, r4, e8, e9, dt={dt}")


CONV_GENERATORS: dict[str, Callable[[Gen], None]] = {
    "conv": g_conv, "vmaxpool": g_vmaxpool, "vsumpool": g_vsumpool, "vunpool": g_vunpool,
    "vbias": g_vbias,
}


GENERATORS: dict[str, Callable[[Gen], None]] = {
    "nop": lambda x: x.emit("nop"),
    "halt": lambda x: None,  # every program ends with one
    "li": lambda x: x.emit(*x.li(12, x.rng.choice(EDGE64))),
    "lih": lambda x: x.emit(f"li r12, {x.rng.choice([-1, 0, 5])}",
                            f"lih r12, {x.rng.choice([0, 1, 2**31, 2**32 - 1])}"),
    "addi": lambda x: x.emit(*x.li(10, x.rng.choice(EDGE64)),
                             f"addi r12, r10, {x.rng.choice([-(2**31), -1, 0, 1, 2**31 - 1])}"),
    **{op: _scalar3(op) for op in ("add", "sub", "mul", "and", "or", "xor", "sll", "sra", "srl",
                                   "slt")},
    **{op: _branch(op) for op in ("beq", "bne", "blt", "bge")},
    "jmp": lambda x: (lambda lab: x.emit(f"jmp {lab}", "addi r13, r13, 1", f"{lab}:"))(
        x.label("j")),
    "flags": lambda x: x.emit("flags r14"),
    "clrflags": lambda x: x.emit("clrflags"),
    "accrd": g_accrd,
    "ldw": g_scalar_mem("ldw"),
    "stw": g_scalar_mem("stw"),
    "eset": lambda x: x.emit(f"eset e8, {x.rng.randrange(-40, 40)}"),
    "eadd": lambda x: x.emit("eset e9, 3", "eset e10, -5", "eadd e8, e9, e10"),
    "eaddi": lambda x: x.emit("eset e9, 3", f"eaddi e8, e9, {x.rng.randrange(-20, 20)}"),
    "emv": lambda x: x.emit("emv r14, e8"),
    "esetr": g_exp,
    "efit": g_efit,
    "rngseed": lambda x: x.emit(*x.li(2, x.rng.choice(EDGE64)), "rngseed r2"),
    "rngctr": lambda x: x.emit(*x.li(2, x.rng.choice(EDGE64)), "rngctr r2"),
    "rngrd": lambda x: x.emit(f"rngrd r14, sel={x.pick('seed', 'counter')}"),
    "dmald": _dma("dmald"),
    "dmast": _dma("dmast"),
    "dmaldacc": _dma_acc("dmaldacc"),
    "dmastacc": _dma_acc("dmastacc"),
    "gemm": g_gemm,
    "rq": g_rq,
    "rqm": lambda x: g_rq(x, mul=True),
    "vcvt": g_vcvt,
    **{op: _vec3(op) for op in ("vadd", "vsub", "vmul", "vmin", "vmax", "vcmpgt")},
    **{op: _vshift(op) for op in ("vsra", "vsll")},
    **{op: _vunary(op) for op in ("vrelu", "vrelumask")},
    "vsel": g_vsel,
    "vrmax": g_vrmax,
    "vrsum": g_vrsum,
    "vtoacc": g_vtoacc,
    "vsubrow": g_vsubrow,
    "vexp": g_vexp,
    "vnormrow": g_vnormrow,
    "vlazy": g_vlazy,
    "vrsqrt": g_vrsqrt,
    "vwmul": g_vwmul,
    "vqstep": g_vqstep,
    "vtopk": g_vtopk,
}
GENERATORS.update(CONV_GENERATORS)
BODY_OPS = [m for m in GENERATORS if m not in ("halt", "beq", "bne", "blt", "bge", "jmp")]


def random_config(rng: random.Random) -> dict[str, Any]:
    r, c = rng.choice([(4, 4), (8, 8), (4, 8), (2, 3)])
    return {
        "array": {"rows": r, "cols": c,
                  "dataflow": rng.choice(["weight_stationary", "output_stationary",
                                          "input_stationary"]),
                  "skip": rng.choice(["none", "element", "row"])},
        "accumulator": {"bits": rng.choice([16, 24, 32]),
                        "overflow": rng.choice(["saturate", "wrap"]), "entries": ACC},
        "memory": {"dram_bytes": DRAM, "scratchpad_bytes": SPAD},
        "dma": {"bytes_per_cycle": rng.choice([4, 16]), "latency_cycles": rng.choice([0, 5]),
                "overlap": rng.random() < 0.3},
        "alu": {"lanes": rng.choice([4, 16]), "latency_cycles": 1},
        "budget": {"max_steps": 700 if rng.random() < 0.1 else 20000,
                   "max_cycles": rng.choice([3000, 40000]) if rng.random() < 0.1 else 10**15},
    }


@dataclass
class Case:
    seed: int
    config: dict[str, Any]
    chunks: list[list[str]]
    init_seed: int

    def source(self, chunks: list[list[str]] | None = None) -> str:
        lines = [ln for ch in (self.chunks if chunks is None else chunks) for ln in ch]
        return "\n".join(lines + ["halt"]) + "\n"


def make_case(seed: int, length: int | None = None) -> Case:
    rng = random.Random(seed)
    g = Gen(rng)
    names = [m for m in GENERATORS if m != "halt"]
    for _ in range(length or rng.randrange(8, 30)):
        pick = rng.random()
        if pick < 0.08:
            g_loop(g)
        elif pick < 0.16:
            g_update(g)
        elif pick < 0.19:
            g_spin(g)
        else:
            GENERATORS[rng.choice(names)](g)
    return Case(seed, random_config(rng), g.chunks, rng.randrange(2**32))


def initial_memory(m: Machine, init_seed: int) -> None:
    """Random memory contents, rich in zeros and edge values."""
    r = np.random.default_rng(init_seed)
    spad = r.integers(0, 256, m.spad.size, dtype=np.uint8)
    spad[r.random(m.spad.size) < 0.3] = 0
    edges = np.array([0x80, 0x7F, 0xFF, 0x00, 0x01], dtype=np.uint8)
    pick = r.random(m.spad.size) < 0.1
    spad[pick] = r.choice(edges, int(pick.sum()))
    m.spad[:] = spad
    m.dram[:8192] = r.integers(0, 256, 8192, dtype=np.uint8)
    lo, hi = m.cfg.acc_min, m.cfg.acc_max
    acc = r.integers(lo, hi + 1, m.acc.size, dtype=np.int64)
    acc[r.random(m.acc.size) < 0.3] = 0
    acc[r.random(m.acc.size) < 0.05] = hi
    acc[r.random(m.acc.size) < 0.05] = lo
    m.acc[:] = acc


def scalar_mode(case: Case, datapath: str) -> str:
    """How a leg runs scalar, branch and exponent instructions: the reference by their Python
    handlers; the fast datapath always in the compiled interpreter (even seeds) or as users
    run it, compiled for hot stretches (odd seeds). The JIT-off leg runs the interpreter's
    source as Python on even seeds."""
    if datapath == "reference":
        return "python"
    return "compiled" if case.seed % 2 == 0 else "auto"


def execute(case: Case, datapath: str, chunks: list[list[str]] | None = None,
            cfg: Config | None = None) -> dict[str, Any]:
    """Run a case; the outcome is the state digest, a hash of all counters, and any fault."""
    cfg = cfg or config_from_dict(case.config)
    m = Machine(cfg, assemble(case.source(chunks), f"diff{case.seed}.s"), datapath=datapath,
                scalar=scalar_mode(case, datapath))
    initial_memory(m, case.init_seed)
    fault = None
    try:
        m.run()
    except LpemuError as e:
        fault = [type(e).__name__, getattr(e, "pc", None), str(e)]
    return {"digest": m.digest(), "counts": hashlib.sha256(m.counts.tobytes()).hexdigest(),
            "fault": fault}


def trace(case: Case, datapath: str, chunks: list[list[str]] | None = None) -> list[list[Any]]:
    """Run a case one instruction at a time: per step ``[pc, state digest, counter hash,
    fault]`` (the fault, if any, ends the trace)."""
    cfg = config_from_dict(case.config)
    m = Machine(cfg, assemble(case.source(chunks), "diff.s"), datapath=datapath,
                scalar=scalar_mode(case, datapath))
    initial_memory(m, case.init_seed)
    out: list[list[Any]] = []
    while True:
        pc, before = m.pc, m.steps
        fault = None
        try:  # one instruction, within what is left of the whole run's budgets
            m.run(max_steps=min(1, cfg.budget.max_steps - m.steps),
                  max_cycles=cfg.budget.max_cycles - m.cycles)
        except LpemuError as e:
            # the one-step budget stops every call that executed its instruction: not a fault
            if not (isinstance(e, BudgetExceeded) and m.steps == before + 1):
                fault = [type(e).__name__, str(e)]
        out.append([pc, m.digest(), hashlib.sha256(m.counts.tobytes()).hexdigest(), fault])
        if m.halted or fault is not None:
            return out


class JitOff:
    """The fast datapath with ``NUMBA_DISABLE_JIT=1``: numba reads the flag at import, so this
    leg runs in a child process of its own, answering one JSON request line with one JSON line.
    Use as a context manager."""

    def __init__(self) -> None:
        env = dict(os.environ, NUMBA_DISABLE_JIT="1")
        self._err = tempfile.TemporaryFile(mode="w+")  # a file, so the child never blocks on it
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "programs.verify.difftest", "--serve"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)

    def _ask(self, op: str, case: Case, chunks: list[list[str]] | None) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        req = {"op": op, "case": dataclasses.asdict(case), "chunks": chunks}
        try:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self._err.seek(0)
            raise RuntimeError("JIT-off worker died:\n" + self._err.read()[-3000:])
        ans = json.loads(line)
        if not ans["jit_disabled"]:
            raise RuntimeError("the JIT-off worker is running with numba's JIT enabled")
        return ans["result"]

    def execute(self, case: Case, chunks: list[list[str]] | None = None) -> dict[str, Any]:
        return self._ask("execute", case, chunks)

    def trace(self, case: Case, chunks: list[list[str]] | None = None) -> list[list[Any]]:
        return self._ask("trace", case, chunks)

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait()
        self._err.close()

    def __enter__(self) -> JitOff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve() -> None:
    """The JIT-off child: answer requests from :class:`JitOff` until stdin closes."""
    import numba

    for line in sys.stdin:
        req = json.loads(line)
        case = Case(**req["case"])
        fn = execute if req["op"] == "execute" else trace
        res = fn(case, "fast", req["chunks"])
        print(json.dumps({"jit_disabled": bool(numba.config.DISABLE_JIT), "result": res}),
              flush=True)


LEGS = ("reference", "fast", "jit-off")


def outcome(case: Case, leg: str, chunks: list[list[str]] | None = None,
            jit: JitOff | None = None) -> dict[str, Any]:
    """The outcome of a case on one leg (``jit-off`` needs a running :class:`JitOff`)."""
    if leg == "jit-off":
        assert jit is not None, "the jit-off leg needs a JitOff worker"
        return jit.execute(case, chunks)
    return execute(case, leg, chunks)


def trace_on(case: Case, leg: str, chunks: list[list[str]] | None = None,
             jit: JitOff | None = None) -> list[list[Any]]:
    """:func:`trace` on one leg (``jit-off`` needs a running :class:`JitOff`)."""
    if leg == "jit-off":
        assert jit is not None, "the jit-off leg needs a JitOff worker"
        return jit.trace(case, chunks)
    return trace(case, leg, chunks)


def first_divergence(case: Case, chunks: list[list[str]] | None = None,
                     legs: tuple[str, str] = ("reference", "fast"),
                     jit: JitOff | None = None) -> dict[str, Any]:
    """Run both legs one instruction at a time; the first step after which they differ (state
    digest, counters or fault), with its pc and instruction text."""
    from isa.asm import format_instruction

    traces = [trace_on(case, leg, chunks, jit) for leg in legs]
    prog = assemble(case.source(chunks), "diff.s")
    names = {pc: n for n, pc in prog.labels.items()}
    a, b = traces
    for step in range(max(len(a), len(b))):
        x = a[step] if step < len(a) else None
        y = b[step] if step < len(b) else None
        if x != y:
            pc = (x or y)[0]  # type: ignore[index]
            ins, ops = decode(prog.words[pc])
            return {"step": step, "pc": pc, "text": format_instruction(ins, ops, names),
                    f"{legs[0]}_fault": x[3] if x else None,
                    f"{legs[1]}_fault": y[3] if y else None}
    return {"step": None}


def mismatch(case: Case, chunks: list[list[str]] | None = None,
             legs: tuple[str, str] = ("reference", "fast"), jit: JitOff | None = None) -> bool:
    return outcome(case, legs[0], chunks, jit) != outcome(case, legs[1], chunks, jit)


def shrink(case: Case, legs: tuple[str, str] = ("reference", "fast"),
           jit: JitOff | None = None) -> list[list[str]]:
    """Greedily drop chunks (and loop bodies' chunks) while the two legs still differ."""
    chunks = list(case.chunks)
    changed = True
    while changed:
        changed = False
        for i in range(len(chunks) - 1, -1, -1):
            trial = chunks[:i] + chunks[i + 1 :]
            try:
                bad = mismatch(case, trial, legs, jit)
            except LpemuError:  # e.g. a label lost with its chunk
                bad = False
            if bad:
                chunks = trial
                changed = True
    return chunks


def regression_text(case: Case, chunks: list[list[str]], note: str) -> str:
    head = [f"; lpemu differential regression, seed {case.seed}: {note}",
            f"; config: {json.dumps(case.config, sort_keys=True)}",
            f"; init_seed: {case.init_seed}"]
    return "\n".join(head) + "\n" + case.source(chunks)


def parse_regression(text: str) -> Case:
    cfg, init, seed = None, None, 0
    for line in text.splitlines():
        if line.startswith("; config: "):
            cfg = json.loads(line[len("; config: "):])
        elif line.startswith("; init_seed: "):
            init = int(line[len("; init_seed: "):])
        elif line.startswith("; lpemu differential regression, seed "):
            seed = int(line.split("seed ")[1].split(":")[0])
    if cfg is None or init is None:
        raise ValueError("not a differential regression file")
    body = [ln for ln in text.splitlines() if not ln.startswith(";")]
    if body and body[-1].strip() == "halt":
        body = body[:-1]
    return Case(seed, cfg, [body], init)


# ---------------------------------------------------------------- driver
def _report(case: Case, legs: tuple[str, str], jit: JitOff | None,
            out: Path | None) -> dict[str, Any]:
    """A mismatch between two legs: its first diverging instruction, shrunk to a small case
    that is written to ``out/<seed>.s`` as a regression test."""
    div = first_divergence(case, legs=legs, jit=jit)
    small = shrink(case, legs, jit)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{case.seed}.s").write_text(regression_text(
            case, small, f"{legs[1]} differs from {legs[0]} at {div}"))
    return {"seed": case.seed, "legs": list(legs), "first_divergence": div,
            "shrunk_instructions": sum(len(c) for c in small)}


def campaign(count: int, seed0: int = 0, jit_leg: bool = True, out: Path | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``count`` programs (seeds ``seed0 ..``) on the reference and fast legs, then on the
    JIT-off leg; returns counts and any mismatches. ``progress`` is called with the number of
    programs done (counting up to ``2 * count`` with the JIT-off leg)."""
    fast: dict[int, dict[str, Any]] = {}
    mismatches: list[dict[str, Any]] = []
    covered: set[str] = set()
    t0 = time.perf_counter()
    for i, s in enumerate(range(seed0, seed0 + count)):
        case = make_case(s)
        for ln in case.source().splitlines():
            word = ln.strip().split(" ")[0]
            if word and not word.endswith(":"):
                covered.add(word)
        fast[s] = execute(case, "fast")
        if execute(case, "reference") != fast[s]:
            mismatches.append(_report(case, ("reference", "fast"), None, out))
        if progress:
            progress(i + 1)
    if jit_leg:
        with JitOff() as jit:
            for i, s in enumerate(range(seed0, seed0 + count)):
                case = make_case(s)
                if jit.execute(case) != fast[s]:
                    mismatches.append(_report(case, ("fast", "jit-off"), jit, out))
                if progress:
                    progress(count + i + 1)
    return {"programs": count, "legs": list(LEGS if jit_leg else LEGS[:2]),
            "mismatches": mismatches, "seconds": time.perf_counter() - t0,
            "covered": sorted(covered)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m programs.verify.difftest",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--no-jit-leg", action="store_true", help="skip the NUMBA_DISABLE_JIT leg")
    ap.add_argument("--out", type=Path, default=Path("tests/regressions"),
                    help="where shrunk mismatches are written")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve()
        return 0
    from rich.progress import Progress

    with Progress() as prog:
        legs = "reference/fast" + ("" if args.no_jit_leg else ", then JIT off")
        task = prog.add_task(f"differential programs ({legs})",
                             total=args.count * (1 if args.no_jit_leg else 2))
        res = campaign(args.count, args.seed, not args.no_jit_leg, args.out,
                       lambda i: prog.update(task, completed=i))
    print(json.dumps({k: v for k, v in res.items() if k != "covered"}, indent=1))
    return 1 if res["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
