"""Bit-exactness, proven: the fast datapath (emulator/kernels.py) and the slow reference
(emulator/reference.py) against independent oracles written here in plain Python integers,
exhaustively where the domain is small."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import kernels, reference
from emulator.config import config_from_dict
from emulator.counters import IDX
from emulator.machine import FLAG_ACC_OVERFLOW, Machine
from emulator.reference import ROUND_NEAREST, ROUND_TRIANGULAR, ROUND_TRUNC, ROUND_UNIFORM
from isa import assemble

I8 = list(range(-128, 128))
EDGE16 = [-32768, -32767, -257, -256, -255, -129, -128, -1, 0, 1, 127, 128, 255, 256, 32767]
EDGE8 = [-128, -127, -1, 0, 1, 126, 127]


def sat(v: int, bits: int) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return min(max(v, lo), hi)


# ------------------------------------------------------------------------------ products
def test_all_int8_products_fast_reference_python():
    a = np.array(I8, dtype=np.int8).reshape(256, 1)
    b = np.array(I8, dtype=np.int8).reshape(1, 256)
    want = [[x * y for y in I8] for x in I8]
    assert kernels.gemm(a, b).tolist() == want
    assert reference.gemm(a, b).tolist() == want


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_all_int8_products_through_the_gemm_instruction(datapath):
    cfg = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096},
                            "accumulator": {"entries": 65536}})
    src = """
        li r2, 0
        li r3, 256
        li r4, 256
        li r5, 1
        gemm r1, r2, r3, r4, r5, r4
        halt
    """
    m = Machine(cfg, assemble(src, "p.s"), datapath=datapath)
    m.spad[:256] = np.array(I8, dtype=np.int8).view(np.uint8)
    m.spad[256:512] = np.array(I8, dtype=np.int8).view(np.uint8)
    m.run()
    assert m.acc[:65536].tolist() == [x * y for x in I8 for y in I8]
    assert m.counts[4, IDX["macs"]] == 65536 and m.counts[4, IDX["macs_skipped"]] == 0


@pytest.mark.parametrize("db", ["i8", "i16"])
def test_int16_byte_passes_equal_direct_products_on_edges(db):
    edges_b = EDGE16 if db == "i16" else EDGE8
    b_dt = np.int16 if db == "i16" else np.int8
    # an outer product: C[i, j] = a[i] * b[j] over the cross product of the edge sets
    a = np.array(EDGE16, dtype=np.int16).reshape(-1, 1)
    b = np.array(edges_b, dtype=b_dt).reshape(1, -1)
    want = [[x * y for y in edges_b] for x in EDGE16]
    assert reference.gemm(a, b).tolist() == want  # explicit hi/lo byte passes
    assert kernels.gemm(a, b).tolist() == want


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 9),
       st.sampled_from([(np.int8, np.int8), (np.int16, np.int8), (np.int8, np.int16),
                        (np.int16, np.int16)]),
       st.integers(0, 2**32 - 1))
def test_random_mixed_width_gemms(m, k, n, kinds, seed):
    rng = np.random.default_rng(seed)
    da, db = kinds
    lo_a, hi_a = np.iinfo(da).min, np.iinfo(da).max
    lo_b, hi_b = np.iinfo(db).min, np.iinfo(db).max
    a = rng.integers(lo_a, hi_a + 1, (m, k)).astype(da)
    b = rng.integers(lo_b, hi_b + 1, (k, n)).astype(db)
    want = [[sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) for j in range(n)]
            for i in range(m)]
    assert kernels.gemm(a, b).tolist() == want
    assert reference.gemm(a, b).tolist() == want


@pytest.mark.parametrize("k", [1025, 3000])
def test_long_k_beyond_float32_exactness(k):
    # every partial sum of 16384s passes 2**24 after 1024 terms: float32 alone would round
    a = np.full((3, k), -128, dtype=np.int8)
    b = np.full((k, 2), -128, dtype=np.int8)
    b[-1, 1] = 127
    want = [[16384 * k, 16384 * (k - 1) - 128 * 127]] * 3
    assert kernels.gemm(a, b).tolist() == want
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, (4, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, 5)).astype(np.int8)
    want = [[sum(int(x) * int(y) for x, y in zip(a[i], b[:, j], strict=True)) for j in
             range(5)] for i in range(4)]
    assert kernels.gemm(a, b).tolist() == want


def test_int16_long_k_beyond_int32():
    k = 3000
    a = np.full((2, k), -32768, dtype=np.int16)
    b = np.full((k, 2), -32768, dtype=np.int16)
    want = [[(1 << 30) * k] * 2] * 2  # 3.2e12, far beyond 32 bits
    assert kernels.gemm(a, b).tolist() == want
    assert reference.gemm(a, b).tolist() == want


@pytest.mark.parametrize("m,k,n,trans", [(10, 1024, 500, False), (500, 1024, 10, True),
                                         (7, 300, 331, False)])
def test_small_output_products_in_k_slices_are_exact(m, k, n, trans):
    """Small outputs of large operands are multiplied in K slices whose float partial sums are
    added: exact up to the block edge (1024 products of 2**14 = 2**24)."""
    assert m * n <= kernels.CACHE_SMALL_OUTPUT
    assert (m + n) * k > kernels.CACHE_OPERAND_ELEMS  # the sliced path
    rng = np.random.default_rng(k + m)
    a = rng.integers(-128, 128, (k, m)).astype(np.int8).T if trans else \
        rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a[0], b[:, 0] = -128, -128  # row 0 x column 0: k * 2**14, the largest exact sum
    b[:, 1] = 127
    want = a.astype(np.int64) @ b.astype(np.int64)
    assert want[0, 0] == k * 2**14
    assert np.array_equal(kernels.gemm(a, b), want)
    c = np.full((m, n), -3, dtype=np.int32)
    assert kernels.gemm_into(c, a, b, True, 32, False) == 0
    assert np.array_equal(c, want - 3)


@pytest.mark.parametrize("k", [511, 512])
@pytest.mark.parametrize("sign", [1, -1])
def test_non_accumulating_gemm_at_the_no_overflow_bound(k, sign):
    """At 24 bits, K = 511 products of 2**14 always fit (the fast path skips the fit) and
    K = 512 can reach 2**23, one past the top (the fit saturates and counts it)."""
    lo, hi = -(1 << 23), (1 << 23) - 1
    a = np.full((2, k), -128, dtype=np.int8)
    b = np.full((k, 3), -128 if sign > 0 else 127, dtype=np.int8)
    exact = k * 128 * (128 if sign > 0 else -127)
    want, n_over = min(max(exact, lo), hi), int(not lo <= exact <= hi)
    for dp in (kernels, reference):
        c = np.zeros((2, 3), dtype=np.int32)
        assert dp.gemm_into(c, a, b, False, 24, False) == 6 * n_over
        assert c.tolist() == [[want] * 3] * 2


# ------------------------------------------------------------------------------ accumulator
@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("wrap", [False, True])
def test_fit_acc_at_and_past_the_limits(bits, wrap):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    vals = [lo - 1, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi + 1, 3 * hi, 5 * lo, (1 << 40) + 7]

    def oracle(v: int) -> int:
        if lo <= v <= hi:
            return v
        return ((v - lo) % (1 << bits)) + lo if wrap else (hi if v > hi else lo)

    want = [oracle(v) for v in vals]
    nover = sum(1 for v in vals if not lo <= v <= hi)
    for dp in (kernels, reference):
        got, n = dp.fit_acc(np.array(vals, dtype=np.int64), bits, wrap)
        assert np.asarray(got).tolist() == want and n == nover


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_accumulating_gemm_at_the_limit_and_one_past(datapath, overflow):
    bits = 16
    hi = (1 << (bits - 1)) - 1
    cfg = config_from_dict({"accumulator": {"bits": bits, "overflow": overflow,
                                            "entries": 16},
                            "memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096}})
    src = """
        li r2, 0
        li r3, 64
        li r4, 1
        li r5, 3
        gemm r1, r2, r3, r4, r4, r5, acc=1
        halt
    """
    m = Machine(cfg, assemble(src, "acc.s"), datapath=datapath)
    m.acc[:3] = [hi - 1, hi - 1, hi - 1]
    m.spad[0] = 1
    m.spad[64:67] = np.array([0, 1, 2], dtype=np.int8).view(np.uint8)
    m.run()
    # hi-1+0 fits, hi-1+1 = hi is the limit, hi-1+2 = hi+1 is one past it
    past = hi if overflow == "saturate" else -(1 << (bits - 1))
    assert m.acc[:3].tolist() == [hi - 1, hi, past]
    assert m.counts[4, IDX["acc_overflows"]] == 1 and m.flags & FLAG_ACC_OVERFLOW


# ------------------------------------------------------------------------------ requantizer
@pytest.mark.parametrize("s", range(1, 9))
def test_uniform_dither_every_value_exact_mean_and_round_up_probability(s):
    # every residue a mod 2^s for a few integer parts, each under all 2^s dither values
    for a in list(range(-3 * (1 << s), 3 * (1 << s))):
        ys = [reference.round_shift(a, s, ROUND_UNIFORM, z) for z in range(1 << s)]
        # mean over all dither values == a / 2^s exactly: Fraction(sum(ys), 2^s) == a / 2^s
        assert Fraction(sum(ys), 1 << s) == Fraction(a, 1 << s)
        floor = a >> s
        ups = sum(1 for y in ys if y == floor + 1)
        assert ups == a % (1 << s)  # P(round up) = remainder / 2^s
        assert set(ys) <= {floor, floor + 1}


@pytest.mark.parametrize("s", range(1, 7))
def test_triangular_dither_every_value_exact_mean(s):
    n = 1 << s
    zs = np.arange(1 << (2 * s + 1), dtype=np.int64)  # all (u, v, bit) combinations
    for a in range(-2 * n, 2 * n):
        ys = [reference.round_shift(a, s, ROUND_TRIANGULAR, int(z)) for z in zs]
        assert Fraction(sum(ys), len(zs)) == Fraction(a, n)  # mean == a / 2^s exactly
        assert max(ys) - min(ys) <= 2


@pytest.mark.parametrize("s", range(1, 16))
def test_nearest_ties_up_and_truncate_floor_all_small_values(s):
    for a in range(-(1 << 12), 1 << 12):
        q, r = divmod(a, 1 << s)
        near = q + (1 if 2 * r >= (1 << s) else 0)  # ties (2r == 2^s) go up
        assert reference.round_shift(a, s, ROUND_NEAREST, 0) == near
        assert reference.round_shift(a, s, ROUND_TRUNC, 0) == q


EDGE_ACC = [-(1 << 31), -(1 << 31) + 1, -(1 << 20) - 1, -32769, -32768, -257, -129, -128, -2, -1,
            0, 1, 2, 127, 128, 255, 32767, 32768, (1 << 20) + 1, (1 << 31) - 1]


@pytest.mark.parametrize("mode", [ROUND_NEAREST, ROUND_TRUNC, ROUND_UNIFORM, ROUND_TRIANGULAR])
@pytest.mark.parametrize("bits", [8, 16])
def test_requant_fast_equals_reference_every_shift(mode, bits):
    rng = np.random.default_rng(mode * 10 + bits)
    vals = np.array(EDGE_ACC + rng.integers(-(1 << 31), 1 << 31, 200).tolist(), dtype=np.int64)
    for shift in list(range(-8, 0)) + list(range(0, 32)):
        for relu, mul in ((False, 1), (True, 1), (False, -3)):
            seed, counter = 0xDEADBEEF + shift, 1000 * (shift + 8) + 7
            f, nf = kernels.requant(vals, shift, mode, bits, relu, seed, counter, mul)
            r, nr = reference.requant(vals, shift, mode, bits, relu, seed, counter, mul)
            assert f.tolist() == r.tolist() and nf == nr, (shift, relu, mul)
            out = np.zeros(vals.size, dtype=np.int8 if bits == 8 else np.int16)
            assert kernels.requant_into(out, vals, shift, mode, bits, relu, seed, counter,
                                        mul) == nr
            assert out.tolist() == r.tolist()


def test_requant_saturates_and_counts():
    vals = np.array([10**9, -(10**9), 40000, -40000, 127, -128], dtype=np.int64)
    for dp in (kernels, reference):
        y, n = dp.requant(vals, 0, ROUND_NEAREST, 8, False, 0, 0)
        assert y.tolist() == [127, -128, 127, -128, 127, -128] and n == 4
        y, n = dp.requant(vals, 0, ROUND_NEAREST, 16, False, 0, 0)
        assert y.tolist() == [32767, -32768, 32767, -32768, 127, -128] and n == 4


# ------------------------------------------------------------------------------ vector ALU
def alu_oracle(op: str, x: int, y: int, bits: int, shift: int) -> int:
    r = {
        "vadd": lambda: x + y, "vsub": lambda: x - y, "vmul": lambda: x * y,
        "vmin": lambda: min(x, y), "vmax": lambda: max(x, y), "vcmpgt": lambda: int(x > y),
        "vsra": lambda: x >> min(shift, 15), "vsll": lambda: x << min(shift, 16),
        "vrelu": lambda: max(x, 0), "vrelumask": lambda: int(x > 0),
    }[op]()
    return sat(r, bits)


OPS = ["vadd", "vsub", "vmul", "vmin", "vmax", "vcmpgt", "vsra", "vsll", "vrelu", "vrelumask"]


@pytest.mark.parametrize("op", OPS)
def test_alu_int8_exhaustive(op):
    xs = np.repeat(np.array(I8), 256)
    ys = np.tile(np.array(I8), 256)
    shift = 3
    want = [alu_oracle(op, x, y, 8, shift) for x, y in zip(xs.tolist(), ys.tolist(),
                                                             strict=True)]
    nsat = sum(1 for x, y, w in zip(xs.tolist(), ys.tolist(), want, strict=True)
               if w != {"vadd": x + y, "vsub": x - y, "vmul": x * y, "vsll": x << 3}.get(op, w))
    a, b = xs.astype(np.int8), ys.astype(np.int8)
    for dp in (kernels, reference):
        got, n = dp.alu(op, a, b, 8, shift=shift)
        assert np.asarray(got).tolist() == want and n == nsat
        d = np.zeros(a.size, np.int8)
        assert dp.alu_into(op, d, a, b, 8, shift=shift) == nsat
        assert d.tolist() == want


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shift", [0, 1, 7, 15, 16, 40])
def test_alu_int16_edges_and_random(op, shift):
    rng = np.random.default_rng(shift)
    pairs = list(itertools.product(EDGE16, EDGE16))
    xs = [p[0] for p in pairs] + rng.integers(-32768, 32768, 500).tolist()
    ys = [p[1] for p in pairs] + rng.integers(-32768, 32768, 500).tolist()
    want = [alu_oracle(op, x, y, 16, shift) for x, y in zip(xs, ys, strict=True)]
    a, b = np.array(xs, np.int16), np.array(ys, np.int16)
    for dp in (kernels, reference):
        d = np.zeros(a.size, np.int16)
        dp.alu_into(op, d, a, b, 16, shift=shift)
        assert d.tolist() == want


def test_select_row_reductions_sign_bits():
    rng = np.random.default_rng(5)
    for bits, dt in ((8, np.int8), (16, np.int16)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
        x = rng.integers(lo, hi, (7, 33)).astype(dt)
        x[0] = lo
        x[1] = hi - 1
        mask = rng.integers(0, 2, x.size).astype(dt)
        a, b = x.ravel(), x.ravel()[::-1].copy()
        want_sel = [int(p) if int(m) != 0 else int(q) for m, p, q in zip(mask, a, b, strict=True)]
        for dp in (kernels, reference):
            assert np.asarray(dp.select(mask, a, b)).tolist() == want_sel
            assert np.asarray(dp.row_max(x)).tolist() == [max(map(int, r)) for r in x]
            assert np.asarray(dp.row_sum(x)).tolist() == [sum(map(int, r)) for r in x]
    vals = np.array(EDGE_ACC, dtype=np.int64)
    want = max((v if v >= 0 else ~v).bit_length() for v in EDGE_ACC)
    assert kernels.sign_bits_needed(vals) == reference.sign_bits_needed(vals) == want == 31


# ------------------------------------------------------------------------------ fused update
def _update_oracle(u, res, theta, s):
    """numpy int64: r = sat16(res - u); d = round-shift(r, s); theta' = sat8(theta + d);
    res' = r - ((theta' - theta) << s). Returns (theta', res', saturated subtractions,
    saturated parameters)."""
    r = res.astype(np.int64) - u.astype(np.int64)
    a = np.clip(r, -32768, 32767)
    d = (a + ((1 << (s - 1)) if s else 0)) >> s
    t = theta.astype(np.int64)
    tn = np.clip(t + d, -128, 127)
    return (tn, a - ((tn - t) << s), int(np.count_nonzero(a != r)),
            int(np.count_nonzero(tn != t + d)))


def _update(u, res, theta, s):
    """kernels.update_into with an accumulator source that requantizes to exactly ``u``
    (src = u << 8, multiplier 1, shift 8, truncate); (theta', res', n_sub, n_theta)."""
    src = u.astype(np.int32) << 8
    dst, r, t = np.zeros(u.size, np.int16), res.astype(np.int16), theta.astype(np.int8)
    n_rq, n_sub, n_lz = kernels.update_into(dst, src, r, t, 1, 8, ROUND_TRUNC, False, s)
    assert dst.tolist() == u.tolist() and n_rq == 0
    return t, r, n_sub, n_lz


@pytest.mark.parametrize("s", range(16))
def test_fused_update_every_residual_and_parameter_value(s):
    """The fused subtract-and-lazy-update against the int64 oracle: every INT16
    residual with every INT8 parameter (u = 0) at shifts 0, 1, 8 and 15, and with the INT8
    edge values at every other shift."""
    thetas = np.arange(-128, 128) if s in (0, 1, 8, 15) else np.array(EDGE8)
    res = np.tile(np.arange(-32768, 32768), thetas.size)
    theta = np.repeat(thetas, 65536)
    u = np.zeros(res.size, np.int64)
    t, r, n, n_lz = _update(u, res, theta, s)
    tn, rn, nsat, nsat_lz = _update_oracle(u, res, theta, s)
    assert np.array_equal(t, tn) and np.array_equal(r, rn) and n == nsat == 0
    assert n_lz == nsat_lz > 0  # theta = 127 with a = 32767 rounds past 127 at every s


@pytest.mark.parametrize("s", [0, 1, 7, 15])
def test_fused_update_saturating_subtract_edges_and_random(s):
    rng = np.random.default_rng(s)
    pairs = np.array(list(itertools.product(EDGE16, EDGE16))).T
    res = np.concatenate([pairs[0], rng.integers(-32768, 32768, 5000)])
    u = np.concatenate([pairs[1], rng.integers(-32768, 32768, 5000)])
    theta = rng.choice(EDGE8 + list(range(-128, 128)), res.size)
    t, r, n, n_lz = _update(u, res, theta, s)
    tn, rn, nsat, nsat_lz = _update_oracle(u, res, theta, s)
    assert np.array_equal(t, tn) and np.array_equal(r, rn) and n == nsat > 0
    assert n_lz == nsat_lz
    # and the unfused reference instructions, element by element
    sub, n_ref = reference.alu("vsub", res, u, 16)
    t_ref, r_ref = reference.lazy_update(theta, sub, s)
    assert t.tolist() == t_ref.tolist() and r.tolist() == r_ref.tolist() and n == n_ref
    theta_ref = theta.astype(np.int8)
    sub_ref = sub.astype(np.int16)
    assert reference.lazy_update_into(theta_ref, sub_ref, s) == n_lz


@pytest.mark.parametrize("mode", [ROUND_NEAREST, ROUND_TRUNC])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_update_requantizer_narrow_and_wide_lanes(mode, relu):
    """The fused kernel's requantizer against int64: products that fit 32 bits and products up
    to 2**62 (the vector body switches between 32- and 64-bit lanes per block of 16, at the
    bound |src * mul + add| < 2**31), every shift, lengths that are not multiples of 16."""
    rng = np.random.default_rng(11 + 2 * mode + relu)
    for trial in range(120):
        n = int(rng.choice([1, 15, 16, 17, 33, 160, 1000]))
        mul = int(rng.choice([1, -1, 3, 5243, -5243, 2**15, 2**31 - 1, -(2**31), 0]))
        shift = int(rng.integers(1, 32))
        s = int(rng.integers(0, 16))
        small = int(rng.integers(0, 4)) != 0
        top = max(1, (2**31 - 1 - (1 << (shift - 1))) // max(abs(mul), 1)) if small else 2**31
        src = rng.integers(-top, top, n).astype(np.int64)
        if trial % 5 == 0:  # the bound itself, one past it, the int32 extremes
            src[: min(n, 4)] = [top, -top, -(2**31), 2**31 - 1][: min(n, 4)]
        src = np.clip(src, -(2**31), 2**31 - 1).astype(np.int32)
        res = rng.integers(-32768, 32768, n).astype(np.int16)
        theta = rng.integers(-128, 128, n).astype(np.int8)
        add = (1 << (shift - 1)) if mode == ROUND_NEAREST else 0
        y = (src.astype(np.int64) * mul + add) >> shift
        if relu:
            y = np.maximum(y, 0)
        u = np.clip(y, -32768, 32767)
        tn, rn, nsat, nsat_lz = _update_oracle(u, res, theta, s)
        dst, r, t = np.zeros(n, np.int16), res.copy(), theta.copy()
        n_rq, n_sub, n_lz = kernels.update_into(dst, src, r, t, mul, shift, mode, relu, s)
        assert dst.tolist() == u.tolist() and n_rq == int(np.count_nonzero(u != y))
        assert t.tolist() == tn.tolist() and r.tolist() == rn.tolist() and n_sub == nsat
        assert n_lz == nsat_lz


@pytest.mark.parametrize("mode", [ROUND_NEAREST, ROUND_TRUNC])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_update_reference_matches_the_kernel(mode, relu):
    """reference.update_into (the three instructions one after the other, which a machine
    without its kernels loaded runs: emulator/tiering.py) against the fused kernel, with
    saturating requantizer, subtract and parameter edges."""
    rng = np.random.default_rng(40 + 2 * mode + relu)
    for _ in range(60):
        n = int(rng.choice([1, 15, 16, 17, 100]))
        mul = int(rng.choice([1, -1, 3, 5243, 2**15, 2**31 - 1, -(2**31)]))
        shift, s = int(rng.integers(1, 32)), int(rng.integers(0, 16))
        src = rng.choice([-(2**31), 2**31 - 1, 0, -1, 1, *rng.integers(-2**31, 2**31, 8)], n)
        src = src.astype(np.int32)
        res = rng.choice(EDGE16 + list(rng.integers(-32768, 32768, 8)), n).astype(np.int16)
        theta = rng.choice(EDGE8 + list(rng.integers(-128, 128, 8)), n).astype(np.int8)
        outs = []
        for dp in (kernels, reference):
            dst, r, t = np.zeros(n, np.int16), res.copy(), theta.copy()
            counts = dp.update_into(dst, src, r, t, mul, shift, mode, relu, s)
            outs.append((dst.tolist(), r.tolist(), t.tolist(), tuple(int(c) for c in counts)))
        assert outs[0] == outs[1]
