"""The training instructions (rqm, vcvt, vsubrow, vexp, vnormrow, vlazy, accrd): fast path ==
reference == an independent computation, exact counters, and their defining properties."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import kernels, reference
from emulator.config import Config
from emulator.counters import IDX
from emulator.errors import ExecutionError
from emulator.machine import Machine
from emulator.rng import draw_ref
from isa.asm import assemble


# ------------------------------------------------------------------------------ lazy update
@pytest.mark.parametrize("s", [0, 1, 3, 8, 15])
def test_lazy_update_exhaustive_theta_and_kahan_invariant(s):
    theta = np.repeat(np.arange(-128, 128), 512)
    acc = np.tile(np.arange(-32768, 32768, 128), 256) + 37 % 128
    tn, an = kernels.lazy_update(theta.astype(np.int8), acc.astype(np.int16), s)
    # independent: d = round-half-up(acc / 2**s), saturating parameter add, residual
    d = np.array([math.floor(Fraction(int(a), 2**s) + Fraction(1, 2)) for a in acc[:4096]])
    want = np.clip(theta[:4096] + d, -128, 127)
    np.testing.assert_array_equal(tn[:4096], want)
    # Kahan: parameter and accumulator together hold exactly the same value unless saturated
    before = theta.astype(np.int64) * 2**s + acc
    after = tn * 2**s + an
    unsat = (theta + ((acc + (1 << (s - 1))) >> s if s else acc) == tn)
    assert np.array_equal(before[unsat], after[unsat])
    assert np.all(np.abs(an[unsat]) <= (1 << (s - 1) if s else 0))
    assert an.min() >= -32768 and an.max() <= 32767  # the residual fits INT16
    rt, ra = reference.lazy_update(theta[::97], acc[::97], s)
    np.testing.assert_array_equal(rt, tn[::97])
    np.testing.assert_array_equal(ra, an[::97])


# ------------------------------------------------------------------------------ exp unit
@pytest.mark.parametrize("e", [-24, -14, -8, -4, 0, 8])
def test_vexp_all_int16_inputs_fast_equals_reference(e):
    pos = np.arange(1, 32768, dtype=np.int16)
    assert kernels.exp_q14(pos, e).tolist() == [16384] * pos.size  # exp(min(x, 0))
    x = np.arange(-32768, 1, dtype=np.int64)
    fast = kernels.exp_q14(x, e)
    step = 1 if e in (-8, 0) else 17
    np.testing.assert_array_equal(reference.exp_q14(x[::step], e), fast[::step])
    # accuracy: the Q8 log2 grid and the Q14 table give |rel. error| < 0.3% + 1 LSB
    true = 16384 * np.exp(x.astype(np.float64) * 2.0**e)
    assert np.all(np.abs(fast - true) <= 0.003 * true + 1)
    assert fast[-1] == 16384 and np.all(np.diff(fast) >= 0)  # exp(0) = 1, monotone


def test_exp_lut_is_nearest_integer():
    assert reference.EXP_LUT[0] == 16384
    for f in range(1, 256):
        # 2**(-f/256) is irrational here, so no tie: v is the nearest integer iff
        # (v - 1/2)**256 < 16384**256 * 2**-f < (v + 1/2)**256, checked in exact integers
        v = reference.EXP_LUT[f]
        lo, hi = (2 * v - 1) ** 256, (2 * v + 1) ** 256
        target = (2 * 16384) ** 256 // 2**f
        assert lo < target < hi, f


# ------------------------------------------------------------------------------ division
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=12), st.integers(0, 30),
       st.sampled_from([8, 16]), st.integers(-(2**31), 2**31 - 1))
def test_norm_rows_fast_equals_reference_and_rounds_to_nearest(p, f, bits, other_sum):
    arr = np.array([p, p[::-1], p], dtype=np.int16)
    sums = np.array([abs(sum(p)), abs(sum(p)) + 1, other_sum], dtype=np.int32)
    fast, nsat_f = kernels.norm_rows(arr, sums, f, bits)
    ref, nsat_r = reference.norm_rows(arr, sums, f, bits)
    np.testing.assert_array_equal(fast, ref)
    assert nsat_f == nsat_r
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for i in range(3):
        for j, v in enumerate(arr[i]):
            if sums[i] > 0:
                q = Fraction(int(v) * 2**f, int(sums[i]))
                want = math.floor(q + Fraction(1, 2))
            else:
                want = 0
            assert fast[i, j] == min(max(want, lo), hi)


def test_norm_rows_zero_sum_gives_zero():
    out, _ = kernels.norm_rows(np.zeros((1, 4), np.int64), np.array([0]), 15, 16)
    assert not out.any()


# ------------------------------------------------------------------------------ rqm / vcvt
EDGE = [0, 1, -1, 127, -128, 2**31 - 1, -(2**31), 12345, -54321]
MULS = [1, -1, 3, 2**31 - 1, -(2**31), 20971]


@pytest.mark.parametrize("mode", range(4))
@pytest.mark.parametrize("shift", [-31, -20, -3, 0, 1, 7, 19, 31])
def test_requant_with_multiplier_fast_equals_reference_and_exact_ints(mode, shift):
    acc = np.array([a for a in EDGE for _ in MULS], dtype=np.int64)
    for bits in (8, 16):
        for relu in (False, True):
            for mul in (1, -(2**31), 2**31 - 1, 20971):
                fast, ns_f = kernels.requant(acc, shift, mode, bits, relu, 99, 5, mul)
                ref, ns_r = reference.requant(acc, shift, mode, bits, relu, 99, 5, mul)
                np.testing.assert_array_equal(fast, ref)
                assert ns_f == ns_r
    # independent check of the saturating left shift with Python ints
    fast, _ = kernels.requant(acc, shift, mode, 16, False, 7, 0, 3)
    lo, hi = -32768, 32767
    for i, a in enumerate(acc.tolist()):
        v = a * 3
        if shift <= 0:
            want = min(max(v << -shift, lo), hi)
            assert fast[i] == want


def run(src: str, setup=None, cfg: Config | None = None) -> Machine:
    m = Machine(cfg or Config(), assemble(src, "t.s"))
    if setup:
        setup(m)
    m.run()
    return m


def test_rqm_instruction_values_rng_and_counters():
    vals = np.array([1000, -1000, 123456, -7, 0, 99999], dtype=np.int64)

    def setup(m):
        m.acc[:6] = vals

    m = run("""
        li r1, 64
        li r2, 0
        li r3, 6
        li r4, -3
        li r9, 42
        rngseed r9
        eset e1, 0
        eset e2, 5
        rqm r1, r2, r3, r4, e2, e1, rnd=uniform, dt=i8
        halt
    """, setup)
    got = m.sp_elems(64, 6, 1).astype(np.int64)
    want = []
    for i, a in enumerate(vals.tolist()):
        u = draw_ref(42, i) & 31
        want.append(min(max((a * -3 + u) // 32, -128), 127))
    assert got.tolist() == want
    assert m.rng == [42, 6]
    row = m.counts[8]
    assert row[IDX["rng_draws"]] == 6 and row[IDX["rq_elems"]] == 6
    assert row[IDX["cycles"]] == 1 + 1  # latency + ceil(6 / 16) lanes
    assert row[IDX["acc_rd_bytes"]] == 24 and row[IDX["spad_wr_bytes"]] == 6
    assert row[IDX["saturations"]] == sum(1 for w in want if w in (-128, 127))


def test_rqm_rejects_wide_multiplier():
    with pytest.raises(ExecutionError) as info:
        run("li r4, 1\nlih r4, 1\nli r3, 1\neset e1, 0\nrqm r0, r0, r3, r4, e1, e1\nhalt")
    assert info.value.pc == 4


def test_vcvt_int16_to_int8_with_dither_and_aliasing():
    src = np.array([-32768, -1, 0, 1, 300, 32767, -300, 5], dtype="<i2")

    def setup(m):
        m.spad[:16] = src.view(np.uint8)

    m = run("""
        li r1, 0
        li r3, 8
        li r9, 7
        rngseed r9
        eset e1, -8
        eset e2, 0
        vcvt r1, r1, r3, e2, e1, rnd=triangular, sdt=i16, ddt=i8
        halt
    """, setup)
    got = m.sp_elems(0, 8, 1).astype(np.int64)
    want = [min(max(reference.round_shift(int(v), 8, 3, draw_ref(7, i)), -128), 127)
            for i, v in enumerate(src.tolist())]
    assert got.tolist() == want
    row = m.counts[6]
    assert row[IDX["spad_rd_bytes"]] == 16 and row[IDX["spad_wr_bytes"]] == 8
    assert row[IDX["cycles"]] == 1 + 2 * 1 and row[IDX["rng_draws"]] == 8


def test_vsubrow_vexp_vnormrow_softmax_pipeline_counters():
    s = np.array([[100, -50, 0, 7], [-32768, 32767, 5, 5]], dtype="<i2")

    def setup(m):
        m.spad[:16] = s.view(np.uint8).ravel()

    m = run("""
        li r1, 0
        li r2, 64
        li r3, 128
        li r4, 2
        li r5, 4
        li r6, 8
        li r7, 0
        li r8, 256
        eset e1, -6
        eset e2, -15
        vrmax r2, r1, r4, r5, dt=i16
        vsubrow r3, r1, r2, r4, r5, dt=i16
        vexp r8, r3, r6, e1
        vrsum r7, r8, r4, r5, dt=i16
        vnormrow r3, r8, r7, r4, r5, e2, dt=i16
        halt
    """, setup)
    x = s.astype(np.int64) - s.max(axis=1, keepdims=True)
    x = np.clip(x, -32768, 32767)
    p = reference.exp_q14(x.ravel(), -6).reshape(2, 4)
    y, _ = reference.norm_rows(p, p.sum(axis=1), 15, 16)
    assert m.sp_elems(128, 8, 2).tolist() == y.ravel().tolist()
    assert abs(int(y[0].sum()) - 32768) <= 4  # rows of the softmax sum to one
    assert m.counts[11, IDX["saturations"]] == 1  # -32768 - 32767 saturates
    assert m.counts[12, IDX["cycles"]] == 1 + 4 * 1  # exp: 4 passes
    assert m.counts[14, IDX["cycles"]] == 1 + 16 * 1  # divide: 16 quotient bits
    assert m.counts[14, IDX["acc_rd_bytes"]] == 2 * 4


def test_accrd_reads_an_accumulator_entry():
    def setup(m):
        m.acc[5] = -123456

    m = run("li r1, 5\naccrd r2, r1\nhalt", setup)
    assert m.r[2] == -123456
    assert m.counts[1, IDX["acc_rd_bytes"]] == 4


def test_vlazy_instruction_and_shift_check():
    theta = np.array([10, -128, 127, 0], dtype=np.int8)
    acc = np.array([300, -200, 500, -129], dtype="<i2")

    def setup(m):
        m.spad[:4] = theta.view(np.uint8)
        m.spad[64:72] = acc.view(np.uint8)

    m = run("""
        li r1, 0
        li r2, 64
        li r3, 4
        eset e1, -7
        eset e2, -15
        vlazy r1, r2, r3, e1, e2
        halt
    """, setup)
    tn, an = reference.lazy_update(theta, acc, 8)
    assert m.sp_elems(0, 4, 1).tolist() == tn.tolist()
    assert m.sp_elems(64, 4, 2).tolist() == an.tolist()
    assert tn.tolist() == [11, -128, 127, -1] and an.tolist() == [44, -200, 500, 127]
    with pytest.raises(ExecutionError):
        run("li r3, 1\neset e1, 0\neset e2, 1\nvlazy r0, r0, r3, e1, e2\nhalt")


@pytest.mark.parametrize("op", ["vadd", "vsub", "vmul", "vmin", "vmax", "vcmpgt", "vsra",
                                "vsll", "vrelu", "vrelumask"])
@pytest.mark.parametrize("elem", [1, 2])
@pytest.mark.parametrize("d_off,a_off,b_off", [(0, 0, 0), (3, 0, 8), (0, 5, 5), (7, 2, 0)])
def test_alu_into_fast_equals_reference_under_any_aliasing(op, elem, d_off, a_off, b_off):
    from emulator import kernels, reference

    rng = np.random.default_rng(elem * 100 + d_off * 10 + a_off)
    n = 61
    raw = rng.integers(0, 256, 2 * n * elem + 64, dtype=np.uint8)
    raw[:8] = [0x80, 0x7F, 0xFF, 0x00, 0x01, 0x80, 0x7F, 0xFF]  # edge bytes
    dt = np.int8 if elem == 1 else np.dtype("<i2")
    outs = []
    for dp in (kernels, reference):
        buf = raw.copy()
        view = (lambda off, b=buf: b[off * elem : off * elem + n * elem].view(dt))  # noqa: B023
        d, a, b = view(d_off), view(a_off), view(b_off)
        nsat = dp.alu_into(op, d, a, b, 8 * elem, shift=3)
        outs.append((buf.tobytes(), nsat))
    assert outs[0] == outs[1]


def test_exp_lut_literal_is_the_exact_computation():
    assert reference.EXP_LUT == reference._exp_lut()
