"""Exponent ranges without faults: the requantizer at every shift an exponent difference can
produce (rq, rqm, vcvt), vlazy, vexp and vnormrow beyond their former ranges, and the two
instructions Adam needs (vrsqrt, vwmul). Each is checked against an independent computation
written here (exact fractions, decimal or integer predicates), on the fast kernels and the
reference, exhaustively where the domain is small, at the edges (shifts 31, 32, 33, 62, 63, 64,
65, 127, 128 and 2**32 - 1) and with the JIT off (:func:`fast_vs_reference_checks` runs again
in a ``NUMBA_DISABLE_JIT=1`` child process)."""

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
from emulator.errors import ExecutionError
from emulator.machine import FLAG_ACC_OVERFLOW, FLAG_ALU_SATURATION, FLAG_RQ_SATURATION, Machine
from emulator.reference import ROUND_NEAREST, ROUND_TRIANGULAR, ROUND_TRUNC, ROUND_UNIFORM
from emulator.rng import draw_ref
from isa import assemble

ROOT = Path(__file__).resolve().parents[1]
MODES = (ROUND_NEAREST, ROUND_TRUNC, ROUND_UNIFORM, ROUND_TRIANGULAR)
NAMES = ("nearest", "trunc", "uniform", "triangular")
M64 = (1 << 64) - 1
HUGE = (1 << 32) - 1  # the largest |e[eout] - e[ein]|
SHIFTS = ([-HUGE, -(1 << 31), -1000, -65, -64, -63, -17, -16, -15, -9, -8, -7, -1, 0]
          + list(range(1, 35)) + [47, 61, 62, 63, 64, 65, 66, 100, 126, 127, 128, 129, 1000,
                                  1 << 31, HUGE])
CHECK_SHIFTS = [-HUGE, -65, -64, -63, -16, -15, -8, -7, -1, 0, 1, 2, 7, 8, 15, 16, 30, 31, 32,
                33, 40, 61, 62, 63, 64, 65, 100, 127, 128, 129, HUGE]
# sources: accumulator edges and the extreme rqm products (|a| <= 2**62)
P62 = 1 << 62
EDGE_SRC = [0, 1, -1, 2, -2, 3, 127, -128, 255, 32767, -32768, 2**31 - 1, -(2**31),
            (1 << 32) + 5, -(1 << 40) - 3, P62, P62 - 1, -P62 + (1 << 31), (1 << 61) + 1,
            -(1 << 61) - 1, (1 << 63) // 3, -((1 << 62) // 3)]


# ------------------------------------------------------------------------------ oracle
def oracle_round(a: int, s: int, mode: int, z: int, width: int = 64) -> int:
    """The documented rounding in exact fractions, without any clamp (s up to a few
    thousand): independent of the reference's shifts and of the kernels' 64-bit splits."""
    if s <= 0:
        return a * 2**-s
    q = Fraction(a, 2**s)
    if mode == ROUND_NEAREST:
        return math.floor(q + Fraction(1, 2))
    if mode == ROUND_TRUNC:
        return math.floor(q)
    if mode == ROUND_TRIANGULAR and s < width:
        t = min(s, width - 1 - s)
        u, v, b = z % 2**s, (z >> s) % 2**t, (z >> (s + t)) % 2
        return math.floor(q + Fraction(u + (v + b) * 2**(s - t) - 2 ** (s - 1), 2**s))
    if s > width:
        a = math.floor(Fraction(a, 2 ** (s - width)) + Fraction(1, 2))
        s = width
    return math.floor(Fraction(a + z % 2**s, 2**s))


def sat(v: int, bits: int) -> tuple[int, bool]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    c = min(max(v, lo), hi)
    return c, c != v


def oracle_requant(src: list[int], s: int, mode: int, bits: int, relu: bool, seed: int,
                   counter: int) -> tuple[list[int], int]:
    """rq/rqm/vcvt per the docs: one draw per element (counter + i) for dither and s > 0."""
    s = max(-5000, min(s, 5000))  # see test_oracle_results_stop_changing_past_the_fold
    out, nsat = [], 0
    for i, a in enumerate(src):
        z = draw_ref(seed, (counter + i) & M64) if mode >= 2 and s > 0 else 0
        y = oracle_round(a, s, mode, z)
        y = max(y, 0) if relu else y
        c, st = sat(y, bits)
        out.append(c)
        nsat += st
    return out, nsat


def test_oracle_results_stop_changing_past_the_fold():
    """The fold bounds (isa.conventions.RQ_SHIFT_FOLD): for every |a| <= 2**62 and draw, the
    result at s = 128 (-64) is the result at every larger (smaller) s the oracle can reach,
    and nearest/trunc stop changing from 64/63 on. (Past a few thousand bits it is the same
    algebra: |a| / 2**s only gets smaller.)"""
    zs = [0, 1, M64, M64 - 1, 1 << 63, (1 << 63) - 1, 0x5555555555555555, draw_ref(3, 4)]
    for a in EDGE_SRC:
        for mode in MODES:
            for z in zs:
                top = oracle_round(a, 128, mode, z)
                assert top == (-1 if mode == ROUND_TRUNC and a < 0 else 0)
                for s in (129, 200, 1000, 5000):
                    assert oracle_round(a, s, mode, z) == top
                if mode == ROUND_NEAREST:
                    assert oracle_round(a, 64, mode, z) == 0
                if mode == ROUND_TRUNC:
                    assert oracle_round(a, 63, mode, z) == (-1 if a < 0 else 0)
                for bits in (8, 16):
                    low = sat(oracle_round(a, -64, mode, z), bits)
                    for s in (-65, -100, -5000):
                        assert sat(oracle_round(a, s, mode, z), bits) == low


# ------------------------------------------------------------------------------ the reference
def test_reference_round_shift_equals_the_oracle_and_the_documented_python():
    """emulator.reference.round_shift, the oracle above and the Python block printed in
    docs/isa.md (executed as written) agree on edge sources, shifts and draws."""
    doc = (ROOT / "docs" / "isa.md").read_text()
    block = doc.split("def round_shift(")[1].split("```")[0]
    ns: dict = {}
    exec("def round_shift(" + block, ns)  # noqa: S102 - the documented definition itself
    doc_round = ns["round_shift"]
    zs = [0, 1, M64, 1 << 63, (1 << 63) - 1, (1 << 32) - 1, 1 << 32, draw_ref(1, 2),
          draw_ref(9, 9)]
    for a in EDGE_SRC:
        for s in [x for x in SHIFTS if abs(x) <= 1000]:
            for mode in MODES:
                for z in zs:
                    want = oracle_round(a, s, mode, z)
                    assert reference.round_shift(a, s, mode, z) == want, (a, s, mode, z)
                    assert doc_round(a, s, NAMES[mode], z) == want, (a, s, mode, z)


@pytest.mark.parametrize("width", [5, 6])
def test_dither_exactly_unbiased_by_enumerating_every_draw(width):
    """The draw-width-generic definition (the machine's width is 64) with every one of the
    2**width draws: uniform is exactly unbiased for s <= width with P(up) = (a mod 2**s) /
    2**s; triangular is exactly unbiased for s < width (v narrowed to width - 1 - s bits once
    2s + 1 > width) and equals uniform from s = width on; past the width both are the
    nearest rounding by s - width bits dithered exactly, so E[y] = round(a / 2**(s-width)) /
    2**width and |bias| <= 2**-(width+1)."""
    zs = range(1 << width)
    for s in range(1, width + 5):
        span = 1 << (s if s <= width else s - width + 1)  # two periods of what matters
        for a in list(range(-span, span)) + [12345, -54321, 2**62, -(2**62) + 1]:
            uni = [reference.round_shift(a, s, ROUND_UNIFORM, z, width) for z in zs]
            tri = [reference.round_shift(a, s, ROUND_TRIANGULAR, z, width) for z in zs]
            assert uni == [oracle_round(a, s, ROUND_UNIFORM, z, width) for z in zs]
            assert tri == [oracle_round(a, s, ROUND_TRIANGULAR, z, width) for z in zs]
            mean_u, mean_t = Fraction(sum(uni), len(zs)), Fraction(sum(tri), len(zs))
            if s <= width:
                assert mean_u == Fraction(a, 2**s)
                assert sum(y == (a >> s) + 1 for y in uni) * 2**s == (a % 2**s) * len(zs)
                assert set(uni) <= {a >> s, (a >> s) + 1}
            else:
                near = math.floor(Fraction(a, 2 ** (s - width)) + Fraction(1, 2))
                assert mean_u == Fraction(near, 2**width)
                assert abs(mean_u - Fraction(a, 2**s)) <= Fraction(1, 2 ** (width + 1))
            if s < width:
                assert mean_t == Fraction(a, 2**s)
                assert max(tri) - min(tri) <= 2
            else:
                assert tri == uni


def test_triangular_uses_2s_plus_1_bits_then_all_64():
    """Which draw bits each mode reads: flipping a bit above the documented ones never
    changes a result (at the machine's 64-bit width)."""
    rng = np.random.default_rng(1)
    for s in (1, 5, 31, 32, 40, 62, 63, 64, 70):
        used_u = min(s, 64)
        used_t = 2 * s + 1 if s <= 31 else 64
        for _ in range(30):
            a = int(rng.integers(-(1 << 62), 1 << 62))
            z = int(rng.integers(0, 1 << 63)) * 2 + int(rng.integers(0, 2))
            for bit in range(used_u, 64):
                assert reference.round_shift(a, s, ROUND_UNIFORM, z ^ (1 << bit)) == \
                    reference.round_shift(a, s, ROUND_UNIFORM, z)
            for bit in range(used_t, 64):
                assert reference.round_shift(a, s, ROUND_TRIANGULAR, z ^ (1 << bit)) == \
                    reference.round_shift(a, s, ROUND_TRIANGULAR, z)


# ------------------------------------------------------------------------------ the kernels
def _thresholds(a: int, s: int, mode: int) -> list[int]:
    """Draws on both sides of every point where the result can change, for one source: the
    carry threshold of u (and of u given the v, b parts for triangular), plus extremes."""
    zs = {0, 1, M64, M64 - 1, 1 << 63, (1 << 63) - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA}
    s = min(s, 5000)
    if s >= 64:
        a2 = a if s == 64 else math.floor(Fraction(a, 2 ** (s - 64)) + Fraction(1, 2))
        t = (-a2) % (1 << 64)  # z >= t carries
        zs |= {t, t - 1, t + 1}
        return sorted(z & M64 for z in zs)
    mask = (1 << s) - 1
    if mode == ROUND_TRIANGULAR:
        t = min(s, 63 - s)
        for v in {0, 1, (1 << t) - 1, (1 << t) >> 1}:
            for b in (0, 1):
                x = a + (v + b) * 2 ** (s - t) - 2 ** (s - 1)
                thr = (-x) % (1 << s)  # u >= thr carries once more
                for u in {thr, thr - 1, thr + 1, 0, mask}:
                    zs.add((u & mask) | (v << s) | (b << (s + t)))
    else:
        thr = (-a) % (1 << s)
        for u in {thr, thr - 1, thr + 1, 0, mask}:
            for hi in (0, M64 ^ mask):
                zs.add((u & mask) | hi)
    return sorted(z & M64 for z in zs)


def test_kernel_element_function_at_every_carry_threshold():
    """kernels.round_shift_draws (the compiled rounding of rq/rqm/vcvt) against the oracle
    with draws chosen on both sides of each carry threshold, for every mode at the wide
    shifts where it splits p into 64-bit parts."""
    for s in (1, 2, 7, 31, 32, 33, 40, 61, 62, 63, 64, 65, 100, 126, 127, 128, 1000, HUGE):
        for mode in MODES:
            ps, zs, want = [], [], []
            for a in EDGE_SRC:
                for z in _thresholds(a, s, mode):
                    ps.append(a)
                    zs.append(z)
                    want.append(oracle_round(a, min(s, 5000), mode, z))
            got = kernels.round_shift_draws(np.array(ps, np.int64), s, mode,
                                            np.array(zs, np.uint64))
            assert got.tolist() == want, (s, mode)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_kernel_element_function_every_draw_bit_pattern(s):
    """Small shifts: every pattern of the 2s + 1 low draw bits (with the high bits clear and
    set), every residue of the source: the compiled rounding equals the reference."""
    n = 1 << (2 * s + 1)
    low = np.arange(n, dtype=np.uint64)
    zs = np.concatenate([low, low | np.uint64(M64 ^ (n - 1))])
    for mode in (ROUND_UNIFORM, ROUND_TRIANGULAR):
        for a in range(-3 * (1 << s), 3 * (1 << s)):
            got = kernels.round_shift_draws(np.full(zs.size, a, np.int64), s, mode, zs)
            # the reference equals the oracle and the documented Python (tests above)
            assert got.tolist() == [reference.round_shift(a, s, mode, int(z)) for z in zs]


def fast_vs_reference_checks() -> None:
    """Fast kernels == reference == independent computation on the edges of every new range;
    run in-process and, by test_jit_off, with ``NUMBA_DISABLE_JIT=1``."""
    rng = np.random.default_rng(7)
    acc = np.array([v for v in EDGE_SRC if abs(v) < 2**31] + [2**31 - 1, -(2**31)]
                   + rng.integers(-(2**31), 2**31, 20).tolist(), np.int64)
    for shift in CHECK_SHIFTS:
        for mode in MODES:
            for mul in (1, -(2**31)) if shift % 2 else (-3, 2**31 - 1, -(2**31)):
                for bits, relu in ((8, False), (16, True)):
                    seed, counter = 0xDEADBEEF, (M64 - 5) if mode == 3 else 1000
                    f, nf = kernels.requant(acc, shift, mode, bits, relu, seed, counter, mul)
                    r, nr = reference.requant(acc, shift, mode, bits, relu, seed, counter, mul)
                    assert f.tolist() == r.tolist() and nf == nr, (shift, mode, mul)
                    if mul in (1, -(2**31)):
                        want = oracle_requant((acc * mul).tolist(), shift, mode, bits, relu,
                                              seed, counter)
                        assert (r.tolist(), nr) == want, (shift, mode, mul)
                    out = np.zeros(acc.size, np.int8 if bits == 8 else np.int16)
                    assert kernels.requant_into(out, acc, shift, mode, bits, relu, seed,
                                                counter, mul) == nr
                    assert out.tolist() == r.tolist()
    x16 = np.arange(-32768, 32768, 7, dtype=np.int16)
    for e in (-HUGE, -100, -26, -25, -24, 8, 9, 10, 100, HUGE):
        assert kernels.exp_q14(x16, e).tolist() == reference.exp_q14(x16, e).tolist()
    p = np.array([[-32768, -1, 0, 1, 32767, 300], [5, -5, 32767, -32768, 0, 1]], np.int16)
    sums = np.array([1, 2**31 - 1], np.int32)
    for f in (-HUGE, -65, -18, -17, -16, -1, 0, 15, 31, 46, 47, 48, 100, HUGE):
        for bits in (8, 16):
            fv, fn = kernels.norm_rows(p, sums, f, bits)
            rv, rn = reference.norm_rows(p, sums, f, bits)
            assert fv.tolist() == rv.tolist() and fn == rn, (f, bits)
    xs = np.arange(-32768, 32768, 1, dtype=np.int16)
    for k in (-HUGE, -4, -3, -2, 0, 29, 30, 44, 45, 46, 47, HUGE):
        fv, fn = kernels.rsqrt_q(xs[k % 7 :: 7], k)
        rv, rn = reference.rsqrt_q(xs[k % 7 :: 7], k)
        assert fv.tolist() == rv.tolist() and fn == rn, k
    theta = np.repeat(np.array([-128, -1, 0, 1, 127], np.int8), 6)
    res = np.tile(np.array([-32768, -129, -1, 0, 128, 32767], np.int16), 5)
    for s in (0, 1, 8, 15, 16, 17, 40, HUGE):
        outs = []
        for dp in (kernels, reference):
            t, a = theta.copy(), res.copy()
            n = dp.lazy_update_into(t, a, s)
            outs.append((t.tolist(), a.tolist(), n))
        assert outs[0] == outs[1], s
    a16 = np.array([-32768, -1, 0, 1, 32767, 181, -181], np.int16)
    for bits, wrap in ((32, False), (24, True), (16, False)):
        for accumulate in (False, True):
            outs = []
            for dp in (kernels, reference):
                d = np.array([2**15 - 1, -(2**15), 0, 3, -3, 2**15 - 1, 7], np.int32)
                n = dp.wmul_into(d, a16, a16[::-1].copy(), accumulate, bits, wrap)
                outs.append((d.tolist(), n))
            assert outs[0] == outs[1], (bits, wrap, accumulate)


def test_fast_kernels_equal_reference_and_oracle_at_every_new_edge():
    fast_vs_reference_checks()


def test_jit_off():
    """The same checks with numba's JIT disabled (the kernels run as Python on numpy
    scalars), in a child process because numba reads the flag at import."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("already running with the JIT off")
    code = ("import sys; sys.path.insert(0, 'tests'); import numba; "
            "assert numba.config.DISABLE_JIT; import test_numeric_edges as t; "
            "t.fast_vs_reference_checks(); t.test_kernel_element_function_at_every_carry_"
            "threshold(); print('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, NUMBA_DISABLE_JIT="1"))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


# ------------------------------------------------------------------------------ the machine
CFG = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096},
                        "accumulator": {"entries": 256}})


def _split(v: int) -> str:
    """li/lih lines loading the 64-bit value v into r9."""
    v &= M64
    lo = v & 0xFFFFFFFF
    return f"li r9, {lo - (1 << 32) if lo >> 31 else lo}\nlih r9, {v >> 32}\n"


def _set_exps(eout: int, ein: int) -> str:
    return f"{_split(eout)}esetr e2, r9\n{_split(ein)}esetr e1, r9\n"


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("eout,ein", [(7, -25), (0, -32), (0, -33), (3, -60), (0, -63),
                                      (1, -63), (0, -64), (2**31 - 1, -(2**31)),
                                      (-(2**31), 2**31 - 1), (-40, 0), (0, 64)])
@pytest.mark.parametrize("rnd", NAMES)
def test_rq_rqm_vcvt_never_fault_on_exponents(datapath, eout, ein, rnd):
    """The failing spec of issue 14 hit shift e7 - e15 = 32 in an rqm; every exponent pair
    now runs, with values, saturations, draws and flags as documented."""
    s = eout - ein
    mode = NAMES.index(rnd)
    accs = [2**31 - 1, -(2**31), 1, -1, 0, 123456789, -987654321, 3]
    mul = -(2**31)
    src = (f"li r8, 77\nrngseed r8\nli r8, 5\nrngctr r8\n{_set_exps(eout, ein)}"
           f"li r1, 100\nli r2, 0\nli r3, 8\nli r4, {mul}\n"
           f"rq r1, r2, r3, e2, e1, rnd={rnd}, dt=i16\n"
           f"li r1, 200\nrqm r1, r2, r3, r4, e2, e1, rnd={rnd}, dt=i8, relu=1\n"
           f"li r1, 300\nli r2, 100\nvcvt r1, r2, r3, e2, e1, rnd={rnd}, sdt=i16, ddt=i8\n"
           "flags r20\nhalt\n")
    m = Machine(CFG, assemble(src, "rq.s"), datapath=datapath)
    m.acc[:8] = accs
    m.run()
    draws = 8 if mode >= 2 and s > 0 else 0
    y1, n1 = oracle_requant(accs, s, mode, 16, False, 77, 5)
    y2, n2 = oracle_requant([a * mul for a in accs], s, mode, 8, True, 77, 5 + draws)
    y3, n3 = oracle_requant(y1, s, mode, 8, False, 77, 5 + 2 * draws)
    assert m.sp_elems(100, 8, 2).tolist() == y1
    assert m.sp_elems(200, 8, 1).tolist() == y2
    assert m.sp_elems(300, 8, 1).tolist() == y3
    assert m.rng == [77, 5 + 3 * draws]
    pcs = [i for i, ln in enumerate(src.splitlines()) if ln.split(" ")[0] in
           ("rq", "rqm", "vcvt")]
    for pc, nsat in zip(pcs, (n1, n2, n3), strict=True):
        assert m.counts[pc, IDX["rng_draws"]] == draws
        assert m.counts[pc, IDX["saturations"]] == nsat
        assert m.counts[pc, IDX["rq_elems"]] == 8
    assert m.r[20] == (FLAG_RQ_SATURATION if n1 + n2 + n3 else 0)


# ------------------------------------------------------------------------------ vlazy
@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("s", [15, 16, 17, 40, 2**31 - 1, HUGE])
def test_vlazy_wide_shifts_move_nothing_or_round(datapath, s):
    theta = [-128, -1, 0, 1, 127, 5, -5, 0]
    resid = [-32768, 32767, -16385, 16384, 16383, -16384, 100, -1]
    src = (f"{_set_exps(s - 7, -7) if s < 2**31 else _set_exps(2**31 - 1, 2**31 - 1 - s)}"
           "li r1, 0\nli r2, 64\nli r3, 8\nvlazy r1, r2, r3, e2, e1\nflags r20\nhalt\n")
    m = Machine(CFG, assemble(src, "lz.s"), datapath=datapath)
    m.sp_elems(0, 8, 1)[...] = theta
    m.sp_elems(64, 8, 2)[...] = resid
    m.run()
    want_t, want_r, nsat = [], [], 0
    for t, a in zip(theta, resid, strict=True):
        d = math.floor(Fraction(a, 2**min(s, 5000)) + Fraction(1, 2))
        tn = min(max(t + d, -128), 127)
        nsat += tn != t + d
        want_t.append(tn)
        want_r.append(a - (tn - t) * 2**min(s, 5000))
    assert m.sp_elems(0, 8, 1).tolist() == want_t
    assert m.sp_elems(64, 8, 2).tolist() == want_r
    if s >= 16:
        assert (want_t, want_r) == (theta, resid)  # nothing moves
    pc = len(src.splitlines()) - 3
    assert m.counts[pc, IDX["saturations"]] == nsat
    assert m.r[20] == (FLAG_ALU_SATURATION if nsat else 0)


def test_vlazy_negative_shift_still_faults():
    m = Machine(CFG, assemble("eset e2, -1\nli r3, 1\nvlazy r0, r0, r3, e2, e1\nhalt\n",
                              "lz.s"))
    with pytest.raises(ExecutionError) as info:
        m.run()
    assert info.value.pc == 2 and "negative" in str(info.value)


# ------------------------------------------------------------------------------ vexp, vnormrow
@pytest.mark.parametrize("e", [-(2**31), -1000, -26, -25, -24, 8, 9, 10, 1000,
                               2**31 - 1])
def test_vexp_any_exponent(e):
    """Outside [-24, 8] the documented algorithm (run here on Python integers with the
    exponent as given) gives 16384 for every x when e <= -25 and 0 for x < 0 when e >= 9;
    the fast kernel, the reference and the instruction agree on all INT16 inputs."""
    x = np.arange(-32768, 32768, dtype=np.int64)
    fast = kernels.exp_q14(x, e)
    if e <= -25:
        assert fast.tolist() == [16384] * x.size
    elif e >= 9:
        assert fast.tolist() == [0] * 32768 + [16384] * 32768
    if abs(e) <= 1000:  # the algorithm itself, unclamped
        sh = 8 - e
        for v in (-32768, -5000, -1, 0, 7):
            t = min(v, 0) * 94548
            u = (t + (1 << (sh - 1))) >> sh if sh > 0 else t << -sh
            n, f = (-u) >> 8, (-u) & 255
            want = reference.EXP_LUT[f] if n == 0 else (
                (reference.EXP_LUT[f] + (1 << (n - 1))) >> n if n < 31 else 0)
            assert fast[v + 32768] == want
    assert reference.exp_q14(x[::101], e).tolist() == fast[::101].tolist()
    src = f"{_set_exps(e, 0)}li r1, 0\nli r2, 64\nli r3, 4\nvexp r2, r1, r3, e2\nhalt\n"
    m = Machine(CFG, assemble(src, "e.s"))
    m.sp_elems(0, 4, 2)[...] = [-32768, -1, 0, 5]
    m.run()
    assert m.sp_elems(64, 4, 2).tolist() == kernels.exp_q14(np.array([-32768, -1, 0, 5]),
                                                             e).tolist()


@pytest.mark.parametrize("f", [-(2**31 - 1), -64, -18, -17, -16, -2, -1, 31, 45, 46, 47, 48, 64,
                               2**31])
def test_vnormrow_any_exponent(f):
    """round-half-up(p * 2**f / S) as an exact fraction, saturated (bit 2 and counted),
    on edge p and S, for fraction bits far outside the former [0, 30]."""
    rows = [[-32768, -1, 0, 1, 32767, 3], [7, -7, 32767, -32768, 0, 1],
            [1, 2, 3, 4, 5, 6]]
    sums = [1, 2**31 - 1, 0]
    fc = max(-5000, min(f, 5000))
    want, nsat = [], 0
    for row, s_ in zip(rows, sums, strict=True):
        for p in row:
            y = math.floor(Fraction(p * 2**fc if fc >= 0 else p, s_ * (2**-fc if fc < 0 else 1))
                           + Fraction(1, 2)) if s_ > 0 else 0
            c, st = sat(y, 16)
            want.append(c)
            nsat += st
    src = (f"{_set_exps(-f, 0)}li r1, 0\nli r2, 64\nli r3, 8\nli r4, 3\nli r5, 6\n"
           "vnormrow r2, r1, r3, r4, r5, e2, dt=i16\nflags r20\nhalt\n")
    for datapath in ("fast", "reference"):
        m = Machine(CFG, assemble(src, "n.s"), datapath=datapath)
        m.sp_elems(0, 18, 2)[...] = sum(rows, [])
        m.acc[8:11] = sums
        m.run()
        assert m.sp_elems(64, 18, 2).tolist() == want, datapath
        assert m.counts[len(src.splitlines()) - 3, IDX["saturations"]] == nsat
        assert m.r[20] == (FLAG_ALU_SATURATION if nsat else 0)


def test_efit_faults_only_past_the_32_bit_exponent_range():
    ok = f"{_split(2**31 - 1 - 24)}esetr e1, r9\nli r2, 0\nli r3, 1\nefit e3, r2, r3, e1\nhalt\n"
    m = Machine(CFG, assemble(ok, "f.s"))
    m.acc[0] = 2**31 - 1  # 31 magnitude bits: e = e1 + 31 - 7 = 2**31 - 1
    m.run()
    assert m.e[3] == 2**31 - 1
    m = Machine(CFG, assemble(ok, "f.s"))
    m.acc[0] = -(2**31)  # ~v = 2**31 - 1: also 31 bits
    m.run()
    assert m.e[3] == 2**31 - 1
    bad = Machine(CFG, assemble(ok.replace(str(2**31 - 1 - 24), str(2**31 - 1 - 23)), "f.s"))
    bad.acc[0] = 2**31 - 1
    with pytest.raises(ExecutionError):
        bad.run()
    assert bad.e[3] == 0


# ------------------------------------------------------------------------------ vrsqrt
def rsqrt_oracle(x: int, k: int) -> int | None:
    """The unsaturated round-half-up(sqrt(2**k / x)) for x >= 1, found from the exact integer
    predicate (2y - 1)**2 * x <= 2**(k+2) < (2y + 1)**2 * x, by a search independent of any
    integer square root; None if it is at least 2**15 (the result saturates)."""
    if x <= 0:
        return None
    four_q_num = 2 ** (k + 2) if k + 2 >= 0 else Fraction(1, 2 ** -(k + 2))
    if (2 * 32768 - 1) ** 2 * x <= four_q_num:
        return None
    lo, hi = 0, 32767  # the largest y with (2y - 1)**2 x <= 4Q (y = 0 always qualifies)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if (2 * mid - 1) ** 2 * x <= four_q_num:
            lo = mid
        else:
            hi = mid - 1
    return lo


@pytest.mark.parametrize("k", [-5, -3, -2, -1, 0, 1, 2, 15, 16, 29, 30, 31, 44, 45, 46, 47])
def test_vrsqrt_every_int16_input(k):
    xs = np.arange(-32768, 32768, dtype=np.int16)
    fast, nf = kernels.rsqrt_q(xs, k)
    ref, nr = reference.rsqrt_q(xs, k)
    assert fast.tolist() == ref.tolist() and nf == nr
    want, nsat = [], 0
    for x in range(-32768, 32768):
        y = rsqrt_oracle(x, k)
        want.append(32767 if y is None else y)
        nsat += y is None
    assert fast.tolist() == want and nf == nsat
    # and within half a unit of the real function where it does not saturate
    pos = np.arange(1, 32768)
    true = np.sqrt(2.0**k / pos)
    ok = true < 32767
    assert np.all(np.abs(fast[32769:][ok] - true[ok]) <= 0.5 + 1e-9)


def test_vrsqrt_instruction_exponents_counters_and_aliasing():
    xs = [1, 4, 9, 0, -3, 32767, 2, 16384]
    for eout, ein, k in [(-14, 0, 28), (-8, -3, 19), (2**31 - 1, 0, -(2**32) + 2),
                         (-(2**31), 2**31 - 1, 2**31 + 1)]:
        assert -ein - 2 * eout == k
        for datapath in ("fast", "reference"):
            src = f"{_set_exps(eout, ein)}li r1, 0\nli r3, 8\nvrsqrt r1, r1, r3, e2, e1\nhalt\n"
            m = Machine(CFG, assemble(src, "r.s"), datapath=datapath)
            m.sp_elems(0, 8, 2)[...] = xs
            m.run()  # in place: every source is read before a result is written
            want = [32767 if rsqrt_oracle(x, max(-10, min(k, 100))) is None
                    else rsqrt_oracle(x, max(-10, min(k, 100))) for x in xs]
            assert m.sp_elems(0, 8, 2).tolist() == want
            pc = len(src.splitlines()) - 2
            nsat = sum(1 for x in xs if rsqrt_oracle(x, max(-10, min(k, 100))) is None)
            assert m.counts[pc, IDX["saturations"]] == nsat
            assert m.flags == (FLAG_ALU_SATURATION if nsat else 0)
            # 16 lanes, latency 1 (defaults): 1 + 48 * ceil(8 / 16)
            assert m.counts[pc, IDX["cycles"]] == 49 and m.counts[pc, IDX["alu_passes"]] == 384


# ------------------------------------------------------------------------------ vwmul
def test_vwmul_all_int8_products_and_int16_edges():
    a = np.repeat(np.arange(-128, 128), 256).astype(np.int8)
    b = np.tile(np.arange(-128, 128), 256).astype(np.int8)
    want = [x * y for x in range(-128, 128) for y in range(-128, 128)]
    for dp in (kernels, reference):
        d = np.full(a.size, 9, np.int32)
        assert dp.wmul_into(d, a, b, False, 32, False) == 0
        assert d.tolist() == want
    e16 = np.array([-32768, -32767, -257, -256, -1, 0, 1, 255, 256, 32767], np.int16)
    a, b = np.repeat(e16, e16.size), np.tile(e16, e16.size)
    for bits, wrap in ((32, False), (31, True), (24, False), (24, True), (16, False)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        pre = [min(max(i * 1000 - 50000, lo), hi) for i in range(a.size)]  # fits the width
        exact = [p + int(x) * int(y) for p, x, y in zip(pre, a, b, strict=True)]
        if wrap:
            fit = [((v - lo) % (1 << bits)) + lo for v in exact]
        else:
            fit = [min(max(v, lo), hi) for v in exact]
        nover = sum(1 for v in exact if not lo <= v <= hi)
        assert (nover > 0) == (bits < 32)
        for dp in (kernels, reference):
            d = np.array(pre, np.int32)
            assert dp.wmul_into(d, a, b, True, bits, wrap) == nover
            assert d.tolist() == fit


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_vwmul_instruction_is_g_squared_without_int16_saturation(datapath):
    """g*g at INT16 (the second moment of Adam) saturates in vmul but not in vwmul."""
    g = [-32767, 300, -181, 182, 0, 7]
    src = ("li r1, 0\nli r2, 6\nli r3, 40\nvwmul r3, r1, r1, r2, da=i16, db=i16\n"
           "vwmul r3, r1, r1, r2, da=i16, db=i16, acc=1\nli r4, 64\n"
           "vmul r4, r1, r1, r2, dt=i16\nflags r20\nhalt\n")
    m = Machine(CFG, assemble(src, "w.s"), datapath=datapath)
    m.sp_elems(0, 6, 2)[...] = g
    m.run()
    assert m.acc[40:46].tolist() == [2 * x * x for x in g]
    assert m.sp_elems(64, 6, 2).tolist() == [min(x * x, 32767) for x in g]
    assert m.r[20] == FLAG_ALU_SATURATION  # only vmul saturated
    assert m.counts[3, IDX["acc_overflows"]] == m.counts[4, IDX["acc_overflows"]] == 0
    assert m.counts[4, IDX["acc_rd_bytes"]] == 24 and m.counts[3, IDX["acc_rd_bytes"]] == 0
    assert m.counts[3, IDX["alu_mul_passes"]] == 24  # 4 byte-passes x 6
    cfg16 = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096},
                              "accumulator": {"entries": 256, "bits": 16}})
    m = Machine(cfg16, assemble(src, "w.s"), datapath=datapath)
    m.sp_elems(0, 6, 2)[...] = g
    m.run()
    assert m.acc[40:46].tolist() == [min(2 * x * x, 32767) for x in g]
    assert m.counts[3, IDX["acc_overflows"]] == 3  # 32767**2, 90000, 33124 leave INT16
    assert m.counts[4, IDX["acc_overflows"]] == 4  # 98 is the only sum that fits
    assert m.r[20] & FLAG_ACC_OVERFLOW
