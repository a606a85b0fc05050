"""The QBP step unit (``vqstep``) and meProp's selection (``vtopk``): each checked against an
independent computation written here (exact fractions and integer predicates for vqstep, a
lexicographic sort for vtopk), on the fast kernels and the reference, at the edges (zero and
infinite steps, exponents at the ends of the 32-bit range, budgets on either side of the block
maximum, ties, INT8 -128), with exact counters, faults, count-only mode and the JIT off
(:func:`fast_vs_reference` runs again in a ``NUMBA_DISABLE_JIT=1`` child)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from emulator import kernels, reference
from emulator.config import config_from_dict
from emulator.counters import IDX
from emulator.countonly import CountOnlyMachine
from emulator.errors import CountOnlyError, ExecutionError
from emulator.machine import Machine
from isa import assemble

ROOT = Path(__file__).resolve().parents[1]
CFG = config_from_dict({"memory": {"dram_bytes": 1 << 16, "scratchpad_bytes": 1 << 16},
                        "accumulator": {"entries": 1 << 12}})
EMIN, EMAX = -(1 << 31), (1 << 31) - 1
ZERO, INF = (0, EMIN, 0), (1 << 15, EMAX, 1 << 31)


# ------------------------------------------------------------------------------ oracles
def encode_oracle(d2: Fraction | None, sqrt: bool) -> tuple[int, int, int]:
    """(M, E, Rm) of D (``sqrt=False``: D = d2; ``True``: D = sqrt(d2)) from the defining
    predicates 2**E <= D < 2**(E+1) and M <= D 2**(15-E) < M + 1, by exact comparisons
    (squared when D is a square root), without any integer square root; None is +inf."""
    if d2 is None:
        return INF
    if d2 <= 0:
        return ZERO
    p = 2 if sqrt else 1

    def below(v: Fraction) -> bool:  # v <= D for v >= 0
        return v**p <= d2

    e = 0
    while not below(Fraction(2) ** e):
        e -= 1
    while below(Fraction(2) ** (e + 1)):
        e += 1
    if e <= EMIN:
        return ZERO
    if e >= EMAX:
        return INF
    m = 1 << 15  # the largest m with m 2**(e-15) <= D, bit by bit
    for bit in range(14, -1, -1):
        if below((m | 1 << bit) * Fraction(2) ** (e - 15)):
            m |= 1 << bit
    return m, e, round(Fraction(1 << 46, m) + Fraction(1, 10**9))  # ties up: never a tie


def asum_oracle(block, mask, c, ea, ec, amax=False):
    mags = [abs(int(v)) for i, v in enumerate(block) if mask is None or mask[i] != 0]
    x = max(mags, default=0) if amax else sum(mags)
    return encode_oracle(Fraction(x * c) * Fraction(2) ** (ea + ec), sqrt=False)


def var_oracle(block, n, c, ea, eb, ec):
    """D = min_j 2 sqrt((C - S_j) / N_j) over the rows with N_j > 0, in exact fractions: the
    encoding of sqrt(4 Q), Q the minimum."""
    qs = []
    for j, row in enumerate(block):
        if n[j] <= 0:
            continue
        s = max(int(v) for v in row) if len(row) else 0
        qs.append((c * Fraction(2) ** ec - s * Fraction(2) ** ea) / (int(n[j]) * Fraction(2) ** eb))
    if not qs:
        return INF
    return encode_oracle(4 * min(qs), sqrt=True)


def topk_oracle(x: np.ndarray, k: int, col: bool) -> np.ndarray:
    """Keep, per vector, the positions of the k smallest (-|v|, p) pairs: numpy lexsort."""
    a = np.asarray(x, dtype=np.int64)
    v = a.T if col else a
    out = np.zeros_like(v)
    for i, row in enumerate(v):
        order = np.lexsort((np.arange(row.size), -np.abs(row)))
        keep = order[:k]
        out[i, keep] = row[keep]
    return out.T if col else out


# ------------------------------------------------------------------------------ datapaths
def _cases(seed: int):
    rng = np.random.default_rng(seed)
    for t in range(120):
        rows, cols = int(rng.integers(0, 7)), int(rng.integers(0, 7))
        big = t % 3 == 0
        blk = (rng.integers(-(2**31), 2**31, (rows, cols)) if big
               else rng.integers(-60, 60, (rows, cols)))
        n = rng.integers(-3, 2**31 if big else 40, rows)
        c = int(rng.integers(0, 2**62 if big else 5000))
        ea = int(rng.integers(-40, 40))
        ec = ea + int(rng.choice([0, 1, -1, 17, -17, 256, -256]))
        eb = int(rng.integers(-40, 40))
        mask = rng.integers(-1, 2, rows * cols).astype(np.int8)
        yield blk, n, c, ea, eb, ec, mask


def fast_vs_reference() -> list:
    """Results of both datapaths on random inputs; raises on a difference."""
    out = []
    for blk, n, c, ea, eb, ec, mask in _cases(1):
        for mode, aux in ((0, mask), (0, None), (1, n), (2, mask), (2, None)):
            b = blk if mode == 1 else blk.ravel()
            f = kernels.vqstep(mode, b, aux, c, ea, eb, ec)
            r = reference.vqstep(mode, b, aux, c, ea, eb, ec)
            assert f == r, (mode, f, r)
            out.append(f)
        x = blk.astype(np.int16) if blk.size and abs(blk).max() < 2**15 else \
            (blk % 256 - 128).astype(np.int8)
        for k in (0, 1, 2, 3, 9):
            for col in (False, True):
                f, r = kernels.topk(x, k, col), reference.topk(x, k, col)
                assert f.tolist() == r.tolist() and f.dtype == x.dtype
                out.append(f.tolist())
    return out


def test_vqstep_against_exact_fractions():
    for blk, n, c, ea, eb, ec, mask in _cases(2):
        if abs(ec - ea) > 64 or max(abs(ea), abs(eb), abs(ec)) > 30:
            continue  # keep the oracle's fractions small
        for kind in ("asum-mask", "asum", "var", "amax", "amax-mask"):
            if kind == "var":
                want = var_oracle(blk, n, c, ea, eb, ec)
                args = (1, blk, n)
            else:
                m = mask if kind.endswith("-mask") else None
                amax = kind.startswith("amax")
                want = asum_oracle(blk.ravel(), m, c, ea, ec, amax)
                args = (2 if amax else 0, blk.ravel(), m)
            for dp in (kernels, reference):
                assert dp.vqstep(*args, c, ea, eb, ec) == want, (kind, dp.__name__)


def test_vqstep_edges():
    blk = np.array([[5, 9, -3], [100, 2, 7]])
    n = np.array([4, 1])
    for dp in (kernels, reference):
        # budget exactly at a row maximum: that row gives Q = 0, the zero step
        assert dp.vqstep(1, blk, n, 100, 0, 0, 0) == ZERO
        # budget below a maximum: a negative Q is the zero step too
        assert dp.vqstep(1, blk, n, 50, 0, 0, 0) == ZERO
        # no row with N > 0: unconstrained, the infinite step
        assert dp.vqstep(1, blk, np.array([0, -2]), 7, 0, 0, 0) == INF
        # no columns: S_j = 0, D = 2 sqrt(C / max N) = 2 sqrt(64 / 4) = 8
        assert dp.vqstep(1, np.zeros((2, 0), np.int64), n, 64, 0, 0, 0) == (1 << 15, 3,
                                                                            1 << 31)
        # exact powers of two and the largest significand
        assert dp.vqstep(0, np.array([3, -1]), None, 1, 0, 0, 0) == (1 << 15, 2, 1 << 31)
        assert dp.vqstep(0, np.array([65535]), None, 1, -15, 0, 0) == (65535, 0, 1073758208)
        # exponents past the 32-bit range: the zero and infinite encodings, no fault
        assert dp.vqstep(0, np.array([1]), None, 1, EMIN, -5, 0) == ZERO
        assert dp.vqstep(0, np.array([1]), None, 1, EMAX, 5, 0) == INF
        assert dp.vqstep(0, np.array([1]), None, 1, EMAX - 1, 0, 0) == (1 << 15, EMAX - 1,
                                                                        1 << 31)
        assert dp.vqstep(0, np.array([0, 0]), None, 12345, 0, 0, 0) == ZERO
        # amax: the largest magnitude (-128 beats 127); no entry at all: zero
        assert dp.vqstep(2, np.array([127, -128, 5]), None, 1, 0, 0, 0) == (1 << 15, 7, 1 << 31)
        assert dp.vqstep(2, np.array([9]), np.array([0], np.int8), 1, 0, 0, 0) == ZERO
        # the two rows tie in Q: either gives the same step
        assert dp.vqstep(1, np.array([[0], [0]]), np.array([2, 2]), 8, 0, 0, 0) == \
            (1 << 15, 2, 1 << 31)


def test_vqstep_reciprocal_is_round_half_up():
    for m in (1 << 15, (1 << 15) + 1, 40000, 52429, (1 << 16) - 1):
        rm = reference.qstep_finish(m, 0)[2]
        assert abs(Fraction(1 << 46, m) - rm) <= Fraction(1, 2)
        assert (1 << 30) < rm <= (1 << 31)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_vtopk_against_lexsort(dtype):
    rng = np.random.default_rng(3)
    lo, hi = (-128, 128) if dtype is np.int8 else (-32768, 32768)
    for _ in range(60):
        r, c = int(rng.integers(0, 9)), int(rng.integers(0, 12))
        # small ranges make ties common; the extremes test |-128| = 128 > 127
        pools = [np.array([lo, lo + 1, -1, 0, 1, hi - 1]), np.arange(-3, 4), np.arange(lo, hi)]
        pool = pools[int(rng.integers(0, 3))]
        x = rng.choice(pool, (r, c)).astype(dtype)
        for k in (0, 1, 2, 5, 20):
            for col in (False, True):
                want = topk_oracle(x, k, col)
                for dp in (kernels, reference):
                    assert dp.topk(x, k, col).tolist() == want.tolist()
    x = np.array([[-128, 127, 0, -127]], np.int8)
    assert kernels.topk(x, 1, False).tolist() == [[-128, 0, 0, 0]]
    assert kernels.topk(np.array([[3, -3, 3]], np.int8), 2, False).tolist() == [[3, -3, 0]]


def test_fast_and_reference_agree_and_jit_off():
    here = fast_vs_reference()
    code = ("import sys, json; sys.path.insert(0, 'tests'); import test_qbp_isa as t; "
            "print(json.dumps(t.fast_vs_reference()))")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    import json

    assert json.loads(out.stdout) == json.loads(json.dumps(here))


# ------------------------------------------------------------------------------ instructions
def _machine(src: str, datapath: str = "fast") -> Machine:
    return Machine(CFG, assemble(src, "q.s"), datapath=datapath)


VAR_SRC = """
    li r1, 0          # block at acc[0]: 2 rows x 3
    li r2, 64         # N at acc[64]
    li r3, 2
    li r4, 3
    li r5, 80         # C = 80 at 2**e3
    eset e1, -2       # block exponent
    eset e2, 1        # N exponent
    eset e3, 0
    vqstep r10, r11, r1, r2, r3, r4, r5, e4, e1, e2, e3, mode=var
    halt
"""


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_vqstep_instruction_values_and_counters(datapath):
    m = _machine(VAR_SRC, datapath)
    m.acc[0:6] = [12, 40, -8, 100, 4, 0]
    m.acc[64:66] = [3, 5]
    m.run()
    # Q = min((80 - 40/4) / (3*2), (80 - 100/4) / (5*2)) = min(70/6, 55/10) = 5.5; D = 2 sqrt(5.5)
    want = encode_oracle(4 * Fraction(55, 10), sqrt=True)
    assert (m.r[10], m.e[4], m.r[11]) == want
    assert 2 * math.sqrt(5.5) - want[0] * 2.0 ** (want[1] - 15) < 2.0 ** (want[1] - 15)
    pc = 8
    # defaults: 16 lanes, ALU latency 1: 1 + ceil(6/16) + 32 + 32 ceil(2/16) + 16
    assert m.counts[pc, IDX["cycles"]] == 1 + 1 + 32 + 32 + 16
    assert m.counts[pc, IDX["acc_rd_bytes"]] == (6 + 2) * 4
    assert m.counts[pc, IDX["alu_ops"]] == 6 + 2 + 1
    assert m.counts[pc, IDX["alu_passes"]] == 6 + 32 + 32 * 2 + 16


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_vqstep_asum_mask_and_combine(datapath):
    src = """
    li r1, 0
    li r2, 128        # mask at scratchpad 128
    li r3, 1
    li r4, 4
    li r5, 3          # c = 3 at 2**-4
    eset e1, 0
    eset e3, -4
    vqstep r10, r11, r1, r2, r3, r4, r5, e4, e1, e0, e3, mode=asum, mask=1
    li r12, 40000
    eset e5, -3       # a smaller step already held: 40000 * 2**-18
    vqstep r12, r13, r1, r2, r3, r4, r5, e5, e1, e0, e3, mode=asum, mask=1, combine=min
    eset e6, 20       # a larger one: the new step wins
    li r14, 40000
    vqstep r14, r15, r1, r2, r3, r4, r5, e6, e1, e0, e3, mode=asum, mask=1, combine=min
    li r16, 40000     # max: the larger, here the one held
    eset e7, 20
    vqstep r16, r17, r1, r2, r3, r4, r5, e7, e1, e0, e3, mode=amax, mask=1, combine=max
    halt
    """
    m = _machine(src, datapath)
    m.acc[0:4] = [-7, 100, 9, -2]
    m.spad[128:132] = [1, 0, 255, 3]  # INT8 mask: 1, 0, -1, 3 -> entries 0, 2, 3 count
    m.run()
    want = asum_oracle([-7, 100, 9, -2], [1, 0, -1, 3], 3, 0, -4)  # 18 * 3 / 16
    assert (m.r[10], m.e[4], m.r[11]) == want
    assert (m.r[12], m.e[5], m.r[13]) == encode_oracle(Fraction(40000, 2**18), sqrt=False)
    assert (m.r[14], m.e[6], m.r[15]) == want
    assert (m.r[16], m.e[7], m.r[17]) == encode_oracle(Fraction(40000 * 2**5), sqrt=False)
    assert m.counts[7, IDX["spad_rd_bytes"]] == 4 and m.counts[7, IDX["cycles"]] == 1 + 1 + 32


@pytest.mark.parametrize("src, what", [
    ("li r5, -1\nvqstep r10, r11, r0, r0, r0, r0, r5, e4, e1, e2, e3\n", "negative"),
    ("li r10, -1\nvqstep r10, r11, r0, r0, r0, r0, r0, e4, e1, e2, e3, combine=max\n",
     "negative"),
    ("eset e1, 300\nvqstep r10, r11, r0, r0, r0, r0, r0, e4, e1, e2, e3, mode=var\n",
     "differ by more than 256"),
    ("li r3, 5000\nli r4, 1\nvqstep r10, r11, r0, r0, r3, r4, r0, e4, e1, e2, e3\n",
     "accumulator access"),
    ("li r3, -1\nvtopk r0, r0, r0, r0, r3\n", "must be >= 0"),
])
def test_faults_change_nothing(src, what):
    m = _machine("li r11, 77\n" + src + "halt\n")
    with pytest.raises(ExecutionError, match=what):
        m.run()
    assert m.r[11] == 77 and m.r[10] in (0, -1) and m.e[4] == 0


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_vtopk_instruction_in_place_columns_and_counters(datapath):
    src = "li r1, 0\nli r2, 3\nli r3, 4\nli r4, 2\nvtopk r1, r1, r2, r3, r4, dt=i16, col=1\nhalt\n"
    m = _machine(src, datapath)
    x = np.array([[5, -9, 0, 1], [-5, 2, 0, -1], [7, 9, 0, 1]], np.int16)
    m.sp_elems(0, 12, 2)[...] = x.ravel()
    m.run()  # in place: the block is read completely before anything is written
    assert m.sp_elems(0, 12, 2).reshape(3, 4).tolist() == topk_oracle(x, 2, True).tolist()
    # 1 + (8*2 + 1) * ceil(12 / 16)
    assert m.counts[4, IDX["cycles"]] == 18 and m.counts[4, IDX["alu_passes"]] == 17 * 12


def test_count_only_equals_a_full_run_and_refuses_data_dependent_constants():
    full = _machine(VAR_SRC)
    full.run()
    co = CountOnlyMachine(CFG, assemble(VAR_SRC, "q.s"))
    co.run()
    assert (co.counts == full.counts).all()
    # the constant from data (the sticky flags): refused, naming the instruction
    src = VAR_SRC.replace("li r5, 80", "flags r5")
    with pytest.raises(CountOnlyError, match="vqstep"):
        CountOnlyMachine(CFG, assemble(src, "q.s")).run()
