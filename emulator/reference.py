"""The slow, obviously-correct reference datapath.

Every function here is the documented semantics written as directly as possible: Python
integers (or numpy int64 matmuls, which are exact at these magnitudes), explicit byte-passes for
INT16, explicit clamping. It exists for tests and for differential runs of whole programs
(``Machine(..., datapath="reference")``); :mod:`emulator.kernels` is the fast path with the
same interface and must agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from emulator.geometry import CONV_FWD, CONV_WGRAD
from emulator.rng import draw_ref
from isa.conventions import DRAW_BITS

ROUND_NEAREST, ROUND_TRUNC, ROUND_UNIFORM, ROUND_TRIANGULAR = range(4)


def type_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def fit_int(v: int, bits: int, wrap: bool) -> tuple[int, bool]:
    """Saturate or wrap ``v`` to a ``bits``-wide two's complement integer."""
    lo, hi = type_range(bits)
    if lo <= v <= hi:
        return v, False
    if wrap:
        return ((v - lo) % (1 << bits)) + lo, True
    return (hi if v > hi else lo), True


def fit_acc(values: np.ndarray, bits: int, wrap: bool) -> tuple[np.ndarray, int]:
    out, n = [], 0
    for v in np.asarray(values).ravel().tolist():
        y, over = fit_int(v, bits, wrap)
        out.append(y)
        n += over
    return np.array(out, dtype=np.int64).reshape(np.shape(values)), n


def byte_parts(x: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Split an operand into its 8-bit parts and their shifts.

    INT8 is one signed byte. INT16 ``x = hi * 256 + lo`` with ``hi`` the signed high byte and
    ``lo`` the unsigned low byte, so each part fits the 8-bit array (lo as an unsigned lane).
    """
    x64 = np.asarray(x).astype(np.int64)
    if np.asarray(x).dtype.itemsize == 1:
        return [(x64, 0)]
    hi = x64 >> 8
    lo = x64 & 0xFF
    return [(hi, 8), (lo, 0)]


def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact P = A @ B as the sum of shifted 8-bit byte-pass products."""
    m, n = a.shape[0], b.shape[1]
    p = np.zeros((m, n), dtype=np.int64)
    for ap, sa in byte_parts(a):
        for bp, sb in byte_parts(b):
            p += (ap @ bp) << (sa + sb)
    return p


def gemm_into(
    c: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool, bits: int, wrap: bool
) -> int:
    """C = fit((C if accumulate else 0) + A @ B) in place; returns the overflow count."""
    total = gemm(a, b) + (c if accumulate else 0)
    fitted, n = fit_acc(total, bits, wrap)
    c[...] = fitted
    return n


def gemm_passes(a_bits: int, b_bits: int) -> int:
    return (a_bits // 8) * (b_bits // 8)


# The reference clamps its shifts only to keep Python integers small. Its bounds are far wider
# than the ones the instructions' results stop changing at (isa.conventions: *_FOLD), which the
# fast kernels clamp to; comparing the two over large shifts tests the kernels' bounds.
REF_SHIFT_CLAMP = 4096


def round_shift(a: int, s: int, mode: int, z: int, width: int = DRAW_BITS) -> int:
    """Requantizer rounding of one value ``a`` by shift ``s`` with the draw ``z`` (``width``
    random bits; the machine's draws have 64). Left shifts (s <= 0) are exact: the caller
    saturates. See the requantizer section of docs/isa.md."""
    s = max(-REF_SHIFT_CLAMP, min(s, REF_SHIFT_CLAMP))
    if s <= 0:
        return a << -s
    half = 1 << (s - 1)
    if mode == ROUND_NEAREST:
        return (a + half) // (1 << s)
    if mode == ROUND_TRUNC:
        return a // (1 << s)
    if mode == ROUND_TRIANGULAR and s < width:
        # u: s bits (exact unbiasedness); v: t bits, b: 1 bit, so that s + t + 1 <= width
        t = min(s, width - 1 - s)
        u = z % (1 << s)
        v = (z >> s) % (1 << t)
        b = (z >> (s + t)) & 1
        return (a + u + (v + b) * (1 << (s - t)) - half) // (1 << s)
    # uniform dither, and triangular with s >= width
    if s > width:
        c = s - width  # round to nearest by the bits the draw cannot cover, then dither
        a = (a + (1 << (c - 1))) // (1 << c)
        s = width
    u = z % (1 << s)
    return (a + u) // (1 << s)


def uses_rng(mode: int, s: int) -> bool:
    return mode in (ROUND_UNIFORM, ROUND_TRIANGULAR) and s > 0


def requant(
    acc: np.ndarray,
    shift: int,
    mode: int,
    out_bits: int,
    relu: bool,
    seed: int,
    counter: int,
    mul: int = 1,
) -> tuple[np.ndarray, int]:
    """Requantize (accumulator or scratchpad) values times ``mul``; returns (values, nsat)."""
    out, nsat = [], 0
    draw = uses_rng(mode, shift)
    for i, a in enumerate(np.asarray(acc).ravel().tolist()):
        z = draw_ref(seed, counter + i) if draw else 0
        y = round_shift(a * mul, shift, mode, z)
        if relu and y < 0:
            y = 0
        y, sat = fit_int(y, out_bits, wrap=False)
        out.append(y)
        nsat += sat
    return np.array(out, dtype=np.int64), nsat


def sign_bits_needed(acc: np.ndarray) -> int:
    """max over values of bitlen(v if v >= 0 else ~v): magnitude bits, sign excluded."""
    best = 0
    for v in np.asarray(acc).ravel().tolist():
        best = max(best, (v if v >= 0 else ~v).bit_length())
    return best


def alu(op: str, a: np.ndarray, b: np.ndarray | None, bits: int, shift: int = 0):
    """Elementwise ALU op on Python ints with explicit saturation; returns (values, nsat)."""
    lo, hi = type_range(bits)
    out, nsat = [], 0
    av = np.asarray(a).ravel().tolist()
    bv = np.asarray(b).ravel().tolist() if b is not None else [0] * len(av)
    for x, y in zip(av, bv, strict=True):
        if op == "vadd":
            r = x + y
        elif op == "vsub":
            r = x - y
        elif op == "vmul":
            r = x * y
        elif op == "vmin":
            r = min(x, y)
        elif op == "vmax":
            r = max(x, y)
        elif op == "vcmpgt":
            r = 1 if x > y else 0
        elif op == "vsra":
            r = x >> min(shift, 15)
        elif op == "vsll":
            r = x << min(shift, 16)
        elif op == "vrelu":
            r = max(x, 0)
        elif op == "vrelumask":
            r = 1 if x > 0 else 0
        else:
            raise ValueError(op)
        clipped = min(max(r, lo), hi)
        nsat += clipped != r
        out.append(clipped)
    return np.array(out, dtype=np.int64), nsat


def select(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array(
        [x if m != 0 else y for m, x, y in zip(mask.tolist(), a.tolist(), b.tolist(), strict=True)],
        dtype=np.int64,
    )


def row_max(x: np.ndarray) -> np.ndarray:
    return np.array([max(row) for row in np.asarray(x).tolist()], dtype=np.int64)


def row_sum(x: np.ndarray) -> np.ndarray:
    return np.array([sum(row) for row in np.asarray(x).tolist()], dtype=np.int64)


# --------------------------------------------------------------------------- softmax helpers
LOG2E_Q16 = 94548  # round(log2(e) * 2**16)


def _exp_lut() -> tuple[int, ...]:
    """EXP_LUT[f] = round(2**14 * 2**(-f/256)) computed exactly (40-digit decimal)."""
    import decimal

    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_UP)
    out = []
    for f in range(256):
        v = ctx.multiply(ctx.power(decimal.Decimal(2), decimal.Decimal(-f) / 256), 16384)
        out.append(int(v.quantize(decimal.Decimal(1), context=ctx)))
    return tuple(out)


EXP_LUT: tuple[int, ...] = (  # = _exp_lut() (a test checks); a literal for start-up time
    16384, 16340, 16296, 16251, 16208, 16164, 16120, 16076, 16033, 15990, 15946, 15903, 15860,
    15817, 15775, 15732, 15689, 15647, 15605, 15562, 15520, 15478, 15437, 15395, 15353, 15312,
    15270, 15229, 15188, 15147, 15106, 15065, 15024, 14984, 14943, 14903, 14862, 14822, 14782,
    14742, 14702, 14663, 14623, 14583, 14544, 14505, 14465, 14426, 14387, 14348, 14310, 14271,
    14232, 14194, 14155, 14117, 14079, 14041, 14003, 13965, 13927, 13890, 13852, 13815, 13777,
    13740, 13703, 13666, 13629, 13592, 13555, 13519, 13482, 13446, 13409, 13373, 13337, 13301,
    13265, 13229, 13193, 13157, 13122, 13086, 13051, 13016, 12981, 12945, 12910, 12876, 12841,
    12806, 12771, 12737, 12702, 12668, 12634, 12600, 12566, 12532, 12498, 12464, 12430, 12397,
    12363, 12330, 12296, 12263, 12230, 12197, 12164, 12131, 12098, 12065, 12033, 12000, 11968,
    11935, 11903, 11871, 11839, 11807, 11775, 11743, 11711, 11680, 11648, 11617, 11585, 11554,
    11523, 11492, 11460, 11429, 11399, 11368, 11337, 11306, 11276, 11245, 11215, 11185, 11154,
    11124, 11094, 11064, 11034, 11004, 10975, 10945, 10915, 10886, 10856, 10827, 10798, 10769,
    10739, 10710, 10681, 10653, 10624, 10595, 10566, 10538, 10509, 10481, 10453, 10424, 10396,
    10368, 10340, 10312, 10284, 10256, 10229, 10201, 10173, 10146, 10118, 10091, 10064, 10037,
    10009, 9982, 9955, 9928, 9902, 9875, 9848, 9821, 9795, 9768, 9742, 9716, 9689, 9663, 9637,
    9611, 9585, 9559, 9533, 9507, 9482, 9456, 9431, 9405, 9380, 9354, 9329, 9304, 9279, 9253,
    9228, 9204, 9179, 9154, 9129, 9104, 9080, 9055, 9031, 9006, 8982, 8958, 8933, 8909, 8885,
    8861, 8837, 8813, 8789, 8766, 8742, 8718, 8695, 8671, 8648, 8624, 8601, 8578, 8555, 8532,
    8508, 8485, 8463, 8440, 8417, 8394, 8371, 8349, 8326, 8304, 8281, 8259, 8236, 8214,
)


def exp_q14(x: np.ndarray, e: int) -> np.ndarray:
    """The vexp unit: round(2**14 * exp(min(x, 0) * 2**e)) by LUT and shifter (Python ints)."""
    out = []
    sh = 8 - max(-64, min(e, 64))  # a clamp far outside [-25, 9], where results stop changing
    for v in np.asarray(x).ravel().tolist():
        t = min(v, 0) * LOG2E_Q16
        u = (t + (1 << (sh - 1))) >> sh if sh > 0 else t << -sh
        n, f = (-u) >> 8, (-u) & 255
        if n == 0:
            y = EXP_LUT[f]
        elif n < 31:
            y = (EXP_LUT[f] + (1 << (n - 1))) >> n
        else:
            y = 0
        out.append(y)
    return np.array(out, dtype=np.int64)


def norm_rows(p: np.ndarray, sums: np.ndarray, frac_bits: int, out_bits: int):
    """y = floor(p * 2**f / S + 1/2) per row (0 where S <= 0), saturated; (values, nsat).

    ``f`` may be negative (a result grid coarser than 1)."""
    lo, hi = type_range(out_bits)
    f = max(-64, min(frac_bits, 64))  # far outside [-17, 47], where results stop changing
    out, nsat = [], 0
    for row, s in zip(np.asarray(p).tolist(), np.asarray(sums).tolist(), strict=True):
        for v in row:
            if s <= 0:
                y = 0
            elif f >= 0:
                y = (v * (1 << (f + 1)) + s) // (2 * s)
            else:  # multiply through by 2**-f
                y = (2 * v + s * (1 << -f)) // (2 * s * (1 << -f))
            c = min(max(y, lo), hi)
            nsat += c != y
            out.append(c)
    return np.array(out, dtype=np.int64).reshape(np.shape(p)), nsat


def rsqrt_one(x: int, k: int) -> int:
    """The vrsqrt unit before saturation: round-half-up(sqrt(2**k / x)) for x >= 1, exactly:
    with N = floor(2**(k+2) / x), y = (isqrt(N) + 1) // 2. (Python ints.)"""
    k = max(-64, min(k, 256))  # far outside [-3, 46], where results stop changing
    if k + 2 < 0:
        return 0  # 2**(k+2) < 1 <= x
    return (math.isqrt((1 << (k + 2)) // x) + 1) // 2


def rsqrt_q(x: np.ndarray, k: int, out_bits: int = 16) -> tuple[np.ndarray, int]:
    """vrsqrt: y = sat(round(sqrt(2**k / max(x, 0)))), x = 0 saturating (an infinite
    result); (values, nsat)."""
    lo, hi = type_range(out_bits)
    out, nsat = [], 0
    for v in np.asarray(x).ravel().tolist():
        v = max(v, 0)
        y = rsqrt_one(v, k) if v else hi + 1
        c = min(max(y, lo), hi)
        nsat += c != y
        out.append(c)
    return np.array(out, dtype=np.int64), nsat


def wmul_into(d: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool, bits: int,
              wrap: bool) -> int:
    """vwmul: d = fit_acc((d if accumulate else 0) + a * b) with exact products; returns the
    overflow count."""
    out, n = [], 0
    for x, y, c in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), np.asarray(d).tolist(),
                       strict=True):
        v, over = fit_int((c if accumulate else 0) + x * y, bits, wrap)
        out.append(v)
        n += over
    d[...] = out
    return n


def lazy_update(theta: np.ndarray, acc: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Kahan lazy update (s >= 0): (new INT8 parameters, new INT16 residual accumulators)."""
    return _lazy(theta, acc, s)[:2]


def _lazy(theta: np.ndarray, acc: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray, int]:
    s = min(s, 64)  # far beyond 16, from where nothing moves
    th_out, acc_out, nsat = [], [], 0
    for t, a in zip(np.asarray(theta).tolist(), np.asarray(acc).tolist(), strict=True):
        d = (a + (1 << (s - 1))) >> s if s > 0 else a
        tn = min(max(t + d, -128), 127)
        nsat += tn != t + d
        th_out.append(tn)
        acc_out.append(a - ((tn - t) << s))
    return np.array(th_out, dtype=np.int64), np.array(acc_out, dtype=np.int64), nsat


def sub_rows(a: np.ndarray, b: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """a[i, j] - b[i], saturated to ``bits``; (values, nsat)."""
    lo, hi = type_range(bits)
    out, nsat = [], 0
    for row, bv in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True):
        for v in row:
            r = v - bv
            c = min(max(r, lo), hi)
            nsat += c != r
            out.append(c)
    return np.array(out, dtype=np.int64).reshape(np.shape(a)), nsat


# ---------------------------------------------------------------------------- in-place forms
# The semantics call these; the fast datapath overrides them with fused kernels. Inputs are
# read completely before any output is written, whatever the aliasing.
def alu_into(op: str, d: np.ndarray, a: np.ndarray, b: np.ndarray | None, bits: int,
             shift: int = 0) -> int:
    vals, nsat = alu(op, a, b, bits, shift)
    d[...] = vals
    return nsat


def lazy_update_into(theta: np.ndarray, acc: np.ndarray, s: int) -> int:
    """vlazy in place; returns the number of parameters that saturated."""
    tn, an, nsat = _lazy(theta, acc, s)
    theta[...] = tn
    acc[...] = an
    return nsat


def requant_into(dst: np.ndarray, src: np.ndarray, shift: int, mode: int, out_bits: int,
                 relu: bool, seed: int, counter: int, mul: int = 1) -> int:
    vals, nsat = requant(src, shift, mode, out_bits, relu, seed, counter, mul)
    dst[...] = vals
    return nsat


def update_into(dst: np.ndarray, src: np.ndarray, res: np.ndarray, theta: np.ndarray, mul: int,
                shift: int, mode: int, relu: bool, s: int) -> tuple[int, int, int]:
    """The fused lazy-update sequence (emulator/fusion.py) as its three instructions: ``rqm``
    of ``src`` times ``mul`` into 16-bit ``dst`` (nearest or truncating: no draws), ``vsub``
    ``res -= dst`` in 16 bits, ``vlazy`` of ``theta`` with residual ``res``. Returns the three
    saturation counts (requantizer, subtract, parameter)."""
    n_rq = requant_into(dst, src, shift, mode, 16, relu, 0, 0, mul)
    n_sub = alu_into("vsub", res, res, dst, 16)
    n_lz = lazy_update_into(theta, res, s)
    return n_rq, n_sub, n_lz


# ============================================================================ conv and pooling
# The documented semantics of conv, vmaxpool, vsumpool, vunpool and vbias written as loops over
# Python integers (docs/isa.md); ``g`` is an emulator.geometry.Geometry. Operands are the
# scratchpad/accumulator views the semantics pass (1-D, in the documented layouts).


def _window(g, oh: int, ow: int):
    """The window positions of output pixel (oh, ow): (kh, kw, ih, iw, inside)."""
    for kh in range(g.kh):
        for kw in range(g.kw):
            ih, iw = oh * g.sh + kh - g.ph, ow * g.sw + kw - g.pw
            yield kh, kw, ih, iw, 0 <= ih < g.h and 0 <= iw < g.w


def im2col(x: np.ndarray, g) -> np.ndarray:
    """col(X)[m, k] as an [M, K] int64 array, element by element."""
    xs = np.asarray(x).reshape(g.n, g.h, g.w, g.c).tolist()
    out = np.zeros((g.m, g.k), dtype=np.int64)
    for n in range(g.n):
        for oh in range(g.oh):
            for ow in range(g.ow):
                m = (n * g.oh + oh) * g.ow + ow
                for kh, kw, ih, iw, inside in _window(g, oh, ow):
                    for c in range(g.c):
                        if inside:
                            out[m, (kh * g.kw + kw) * g.c + c] = xs[n][ih][iw][c]
    return out


def col2im(p: np.ndarray, g) -> np.ndarray:
    """S[n, ih, iw, c] = sum of P[m, k] over the (m, k) whose window position is (ih, iw);
    products in the padding are dropped. [N, H, W, C] int64."""
    ps = np.asarray(p).reshape(g.m, g.k).tolist()
    out = [[[[0] * g.c for _ in range(g.w)] for _ in range(g.h)] for _ in range(g.n)]
    for n in range(g.n):
        for oh in range(g.oh):
            for ow in range(g.ow):
                m = (n * g.oh + oh) * g.ow + ow
                for kh, kw, ih, iw, inside in _window(g, oh, ow):
                    if inside:
                        for c in range(g.c):
                            out[n][ih][iw][c] += ps[m][(kh * g.kw + kw) * g.c + c]
    return np.array(out, dtype=np.int64).reshape(g.n, g.h, g.w, g.c)


def _fit_into_flat(out: np.ndarray, total: np.ndarray, accumulate: bool, bits: int,
                   wrap: bool) -> int:
    t = np.asarray(total, dtype=np.int64).ravel()
    if accumulate:
        t = t + np.asarray(out, dtype=np.int64)
    fitted, n = fit_acc(t, bits, wrap)
    out[...] = fitted.reshape(out.shape)
    return n


def conv_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, mode: int, g, accumulate: bool,
              bits: int, wrap: bool) -> int:
    """conv in every mode: the GEMM over the im2col view by explicit byte-passes
    (:func:`gemm`), then col2im for dgrad; one fit per output entry. Returns overflows."""
    if mode == CONV_FWD:
        total = gemm(im2col(a, g).astype(a.dtype), np.asarray(b).reshape(g.k, g.f))
    elif mode == CONV_WGRAD:
        total = gemm(im2col(a, g).astype(a.dtype).T, np.asarray(b).reshape(g.m, g.f))
    else:
        p = gemm(np.asarray(a).reshape(g.m, g.f), np.asarray(b).reshape(g.k, g.f).T)
        total = col2im(p, g)
    # (the operands keep their element types, so gemm's byte-passes are those of da and db)
    return _fit_into_flat(out, total, accumulate, bits, wrap)


def maxpool(x: np.ndarray, g) -> tuple[np.ndarray, np.ndarray]:
    """(Y, indices) of max pooling, both [M*C]: the first maximum in (kh, kw) scan order over
    the window positions inside the input (every window has one: checked by the semantics)."""
    xs = np.asarray(x).reshape(g.n, g.h, g.w, g.c).tolist()
    ys, idx = [], []
    for n in range(g.n):
        for oh in range(g.oh):
            for ow in range(g.ow):
                for c in range(g.c):
                    best, arg = None, None
                    for kh, kw, ih, iw, inside in _window(g, oh, ow):
                        if inside and (best is None or xs[n][ih][iw][c] > best):
                            best, arg = xs[n][ih][iw][c], kh * g.kw + kw
                    ys.append(best)
                    idx.append(arg)
    return np.array(ys, dtype=np.int64), np.array(idx, dtype=np.int64)


def maxpool_into(y: np.ndarray, idx: np.ndarray | None, x: np.ndarray, g) -> None:
    vals, args = maxpool(x, g)  # every input is read before anything is written
    y[...] = vals
    if idx is not None:
        idx[...] = args


def sumpool(x: np.ndarray, g) -> np.ndarray:
    """Window sums over the positions inside the input, [M*C] int64."""
    xs = np.asarray(x).reshape(g.n, g.h, g.w, g.c).tolist()
    out = []
    for n in range(g.n):
        for oh in range(g.oh):
            for ow in range(g.ow):
                for c in range(g.c):
                    out.append(sum(xs[n][ih][iw][c]
                                   for _, _, ih, iw, inside in _window(g, oh, ow) if inside))
    return np.array(out, dtype=np.int64)


def sumpool_into(out: np.ndarray, x: np.ndarray, g, bits: int, wrap: bool) -> int:
    return _fit_into_flat(out, sumpool(x, g), False, bits, wrap)


def bad_unpool_index(idx: np.ndarray, g) -> tuple[int, int] | None:
    """(element, value) of the first index that is >= KH KW or selects a padding position."""
    flat = np.asarray(idx).tolist()
    for n in range(g.n):
        for oh in range(g.oh):
            for ow in range(g.ow):
                for c in range(g.c):
                    e = ((n * g.oh + oh) * g.ow + ow) * g.c + c
                    v = flat[e]
                    ih, iw = oh * g.sh + v // g.kw - g.ph, ow * g.sw + v % g.kw - g.pw
                    if v >= g.kh * g.kw or not (0 <= ih < g.h and 0 <= iw < g.w):
                        return e, v
    return None


def unpool_into(out: np.ndarray, dy: np.ndarray, idx: np.ndarray | None, g, accumulate: bool,
                bits: int, wrap: bool) -> int:
    """vunpool: scatter-add dY to the indexed position (``idx``) or to every window position
    inside the input (``idx`` None); one fit per destination entry. Returns overflows."""
    ds = np.asarray(dy).reshape(g.n, g.oh, g.ow, g.c).tolist()
    ix = None if idx is None else np.asarray(idx).reshape(g.n, g.oh, g.ow, g.c).tolist()
    s = [[[[0] * g.c for _ in range(g.w)] for _ in range(g.h)] for _ in range(g.n)]
    for n in range(g.n):
        for oh in range(g.oh):
            for ow in range(g.ow):
                for c in range(g.c):
                    v = ds[n][oh][ow][c]
                    for kh, kw, ih, iw, inside in _window(g, oh, ow):
                        if ix is None:
                            if inside:
                                s[n][ih][iw][c] += v
                        elif ix[n][oh][ow][c] == kh * g.kw + kw:
                            s[n][ih][iw][c] += v
    return _fit_into_flat(out, np.array(s, dtype=np.int64), accumulate, bits, wrap)


def bias_into(out: np.ndarray, b: np.ndarray, s: int, bits: int, wrap: bool) -> int:
    """vbias on an accumulator block ``out`` [rows, cols]: add b[j] shifted onto its grid,
    exactly in Python integers, then fit. Returns the overflow count."""
    s = max(-REF_SHIFT_CLAMP, min(s, REF_SHIFT_CLAMP))  # (only keeps Python integers small)
    shifted = [v << -s if s <= 0 else (v + (1 << (s - 1))) >> s for v in np.asarray(b).tolist()]
    rows, cols = out.shape
    vals, n = [], 0
    for i in range(rows):
        for j in range(cols):
            y, over = fit_int(int(out[i, j]) + shifted[j], bits, wrap)
            vals.append(y)
            n += over
    out[...] = np.array(vals, dtype=np.int64).reshape(rows, cols)
    return n


# ------------------------------------------------------------------------------ vqstep, vtopk
Q_EXP_MIN, Q_EXP_MAX = -(1 << 31), (1 << 31) - 1
QSTEP_ZERO = (0, Q_EXP_MIN, 0)  # (M, E, Rm) of the zero step
QSTEP_INF = (1 << 15, Q_EXP_MAX, 1 << 31)  # ... and of the infinite one


def qstep_finish(m: int, e: int) -> tuple[int, int, int]:
    """(M, E, Rm) of a step whose significand ``m`` is already in [2**15, 2**16) and whose
    exponent is ``e``: the zero / infinite encodings outside the exponent range."""
    if e <= Q_EXP_MIN:
        return QSTEP_ZERO
    if e >= Q_EXP_MAX:
        return QSTEP_INF
    assert 1 << 15 <= m < 1 << 16
    return m, e, ((1 << 47) + m) // (2 * m)


def qstep_pack(p: int, k: int) -> tuple[int, int, int]:
    """Encode the step ``p * 2**k`` (p >= 0 an integer), rounded down to 16 significant bits."""
    if p == 0:
        return QSTEP_ZERO
    n = p.bit_length()
    m = p >> (n - 16) if n >= 16 else p << (16 - n)
    return qstep_finish(m, n - 1 + k)


def qstep_pack_sqrt(num: int, den: int, k: int) -> tuple[int, int, int]:
    """Encode the step ``2 sqrt(num / den * 2**k)`` (num >= 0, den > 0), rounded down."""
    if num == 0:
        return QSTEP_ZERO
    if k % 2:  # an even exponent: 2 sqrt(q 2**k) = sqrt(4 q) 2**(k / 2)
        num, k = 2 * num, k - 1
    a, b = 4 * num, den  # D = sqrt(a / b) * 2**(k / 2)
    fl = a.bit_length() - b.bit_length()  # floor(log2(a / b)) is fl or fl - 1
    if (a << max(-fl, 0)) < (b << max(fl, 0)):
        fl -= 1
    e0 = fl // 2  # floor(log2(sqrt(a / b)))
    t = 15 - e0  # M = floor(sqrt(a / b * 4**t))
    x = (a << (2 * t)) // b if t >= 0 else a // (b << (-2 * t))
    return qstep_finish(math.isqrt(x), e0 + k // 2)


def qstep_key(st: tuple[int, int, int]) -> tuple[int, int]:
    """Order of encoded steps (the encoding is monotone: compare it instead of the values)."""
    return st[1], st[0]


def qstep_decode(m: int, e: int) -> tuple[int, int, int]:
    """The step held in (r[rd], e[ed]) as vqstep min=1 reads it: re-encoded."""
    if e == Q_EXP_MAX:
        return QSTEP_INF
    return qstep_pack(m, e - 15)


def qstep_var_min(smax: list[int], n: list[int], c: int, ec: int, ea: int
                  ) -> tuple[int, int] | None:
    """min_j (c 2**ec - smax_j 2**ea) / n_j over the rows with n_j > 0, as an exact fraction
    (numerator, denominator) in units of 2**min(ec, ea); None when no row has n_j > 0."""
    m = min(ec, ea)
    best: tuple[int, int] | None = None
    for s, d in zip(smax, n, strict=True):
        if d <= 0:
            continue
        num = (c << (ec - m)) - (s << (ea - m))
        if best is None or num * best[1] < best[0] * d:
            best = (num, d)
    return best


def vqstep(mode: int, block: np.ndarray, aux: np.ndarray | None, c: int, ea: int, eb: int,
           ec: int) -> tuple[int, int, int]:
    """vqstep before its combine: mode 0 (asum) sums, mode 2 (amax) takes the maximum of,
    |block| where the INT8 mask ``aux`` (or None) is non-zero; mode 1 (var) takes ``block``
    [R, C] and N = ``aux`` [R]. Python integers."""
    if mode in (0, 2):
        vals = np.asarray(block).ravel().tolist()
        keep = [True] * len(vals) if aux is None else [v != 0 for v in np.asarray(aux).tolist()]
        mags = [abs(v) for v, k in zip(vals, keep, strict=True) if k]
        x = sum(mags) if mode == 0 else max(mags, default=0)
        return qstep_pack(x * c, ea + ec)
    rows = np.asarray(block).tolist()
    smax = [max(row) if row else 0 for row in rows]
    best = qstep_var_min(smax, np.asarray(aux).tolist(), c, ec, ea)
    if best is None:
        return QSTEP_INF
    num, den = best
    if num <= 0:
        return QSTEP_ZERO
    return qstep_pack_sqrt(num, den, min(ec, ea) - eb)


def topk(x: np.ndarray, k: int, col: bool) -> np.ndarray:
    """vtopk on a [R, C] block: per row (or column) keep the k largest magnitudes, the lower
    position first among equal ones; zero the rest."""
    a = np.asarray(x).astype(np.int64)
    vecs = a.T.tolist() if col else a.tolist()
    out = []
    for v in vecs:
        order = sorted(range(len(v)), key=lambda p: (-abs(v[p]), p))
        keep = set(order[:k])
        out.append([v[p] if p in keep else 0 for p in range(len(v))])
    res = np.array(out, dtype=np.int64).reshape(a.T.shape if col else a.shape)
    return res.T if col else res
