"""The fast datapath: exact BLAS matmuls and compiled numba kernels.

Same interface and bit-identical results as :mod:`emulator.reference` (tests compare them).

Matrix products: a float32 matmul of int8-valued operands is exact while every partial sum
stays within 2**24; each int8 x int8 product is at most 2**14 in magnitude, so K is processed in
chunks of at most 1024 and the chunk results are summed in int64. INT16 operands use float64,
exact while |sum| <= 2**53 (chunks of up to 2**23 products of at most 2**30). The byte-pass
decomposition of INT16 changes no value (it is an identity of integer arithmetic, checked against
the reference's explicit passes in the tests), so the fast path computes the direct product and
the passes are only counted.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
from numba import njit

from emulator import (
    jit,  # noqa: F401 - numba's numpy support without scipy
    simd,
    vnni,
)
from emulator.decoding import ALU_CODES
from emulator.geometry import CONV_FWD, CONV_WGRAD, padded, window_view
from emulator.reference import (
    EXP_LUT,
    LOG2E_Q16,
    QSTEP_INF,
    QSTEP_ZERO,
    ROUND_NEAREST,
    ROUND_TRIANGULAR,
    ROUND_TRUNC,
    ROUND_UNIFORM,
    gemm_passes,
    qstep_pack,
    qstep_pack_sqrt,
    qstep_var_min,
    type_range,
    uses_rng,
)
from emulator.threads import POLICY
from isa.conventions import (
    BIAS_SHIFT_FOLD,
    EXP_E_FOLD,
    LAZY_SHIFT_FOLD,
    NORM_F_FOLD,
    RNG_GAMMA,
    RNG_MIX1,
    RNG_MIX2,
    RNG_SHIFTS,
    RQ_SHIFT_FOLD,
    RSQRT_K_FOLD,
)

__all__ = ["gemm_passes", "type_range", "uses_rng"]

F32_EXACT_K = 1024  # 1024 * 2**14 = 2**24
F64_EXACT_K = 1 << 23  # 2**23 * 2**30 = 2**53


class _Workspace:
    """Reusable scratch buffers for the BLAS path.

    Fresh multi-megabyte temporaries are mmap'ed and page-faulted on every call, which costs
    as much as the matmul itself at layer sizes; reusing buffers removes that. Contents never
    carry over between calls (every buffer is fully overwritten before it is read).
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self._views: dict[tuple, np.ndarray] = {}  # (name, shape, dtype) -> view of the buffer

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        key = (name, shape, dtype)
        v = self._views.get(key)
        if v is not None:
            return v
        size = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = np.empty(max(size, 1), dtype=dtype)
            self._bufs[name] = buf
            self._views = {k: w for k, w in self._views.items() if k[0] != name}
        if len(self._views) >= 1024:  # programs with ever-new shapes: stay bounded
            self._views.clear()
        v = self._views[key] = buf[:size].reshape(shape)
        return v


_WS = _Workspace()


# Scalar arguments of compiled kernels: numba types a Python int as int64 exactly like an
# np.int64 (the same compiled code), at half the dispatch cost. With the JIT off the kernels
# run as Python on numpy scalars, where np.int64 keeps the arithmetic 64-bit.
_I64 = np.int64 if numba.config.DISABLE_JIT else int


def _wrapping():
    """The dither RNG's uint64 arithmetic wraps on purpose. Compiled kernels never check; with
    ``NUMBA_DISABLE_JIT=1`` they run on numpy scalars, which warn, so only then is the warning
    switched off (an ``errstate`` costs microseconds per call)."""
    return np.errstate(over="ignore") if numba.config.DISABLE_JIT else contextlib.nullcontext()


# Products with a small output and large operands are computed in K slices whose converted
# operands (about 256 KiB of float32) stay in cache: converting a whole 405 x 500 tile first
# and multiplying after was measured 1.3-1.5x slower than slices of 128 rows.
CACHE_SMALL_OUTPUT = 16384
CACHE_OPERAND_ELEMS = 1 << 16


def _as_float(x: np.ndarray, name: str, ftype: type) -> np.ndarray:
    """``x`` converted into a reused float buffer. A transposed operand is converted in its
    stored (contiguous) order and handed to BLAS as a transposed view: no strided copy."""
    if x.ndim == 2 and not x.flags.c_contiguous and x.T.flags.c_contiguous:
        out = _WS.get(name, x.T.shape, ftype)
        np.copyto(out, x.T, casting="unsafe")
        return out.T
    out = _WS.get(name, x.shape, ftype)
    np.copyto(out, x, casting="unsafe")
    return out


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact A @ B in the float workspace (one chunk) or as int64 (several K chunks)."""
    m, k = a.shape
    n = b.shape[1]
    wide = a.dtype.itemsize > 1 or b.dtype.itemsize > 1
    ftype, chunk = (np.float64, F64_EXACT_K) if wide else (np.float32, F32_EXACT_K)
    pf = _WS.get("p", (m, n), ftype)
    POLICY.use(POLICY.for_work(m * k * n))  # emulator/threads.py
    if k <= chunk and m * n <= CACHE_SMALL_OUTPUT and (m + n) * k > CACHE_OPERAND_ELEMS:
        # a small output from large operands: convert and multiply K in slices that stay in
        # cache, summing the partial products in the float type (exact: every partial sum is
        # an integer within the one exact block)
        step = max(16, CACHE_OPERAND_ELEMS // (m + n))
        part = _WS.get("q", (m, n), ftype)
        for k0 in range(0, k, step):
            ac = _as_float(a[:, k0 : k0 + step], "a", ftype)
            bc = _as_float(b[k0 : k0 + step], "b", ftype)
            np.matmul(ac, bc, out=part if k0 else pf)
            if k0:
                pf += part
        return pf
    total = None
    for k0 in range(0, max(k, 1), chunk):
        ac = _as_float(a[:, k0 : k0 + chunk], "a", ftype)
        bc = _as_float(b[k0 : k0 + chunk], "b", ftype)
        np.matmul(ac, bc, out=pf)
        if k <= chunk:
            return pf
        total = pf.astype(np.int64) if total is None else total + pf.astype(np.int64)
    return total


def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact int64 P = A @ B for int8/int16 operand arrays (any strides)."""
    return _products(a, b).astype(np.int64)


@njit(cache=True)
def _fit_into(c, p, accumulate, lo, hi, wrap):  # pragma: no cover - compiled
    """c = fit((c if accumulate else 0) + p) elementwise; returns the overflow count."""
    novf = 0
    span = hi - lo + 1
    rows, cols = c.shape
    if not wrap:  # saturate: a branch-free clamp, which vectorizes
        for i in range(rows):
            for j in range(cols):
                v = np.int64(p[i, j])
                if accumulate:
                    v += c[i, j]
                r = min(max(v, lo), hi)
                novf += r != v
                c[i, j] = r
        return novf
    for i in range(rows):
        for j in range(cols):
            v = np.int64(p[i, j])
            if accumulate:
                v += c[i, j]
            if v > hi or v < lo:  # wrap (saturation returned above)
                novf += 1
                v = ((v - lo) % span) + lo
            c[i, j] = v
    return novf


# INT8 x INT8 products run on AVX-512 VNNI where the host has it (emulator/vnni.py: exact
# integer dot products, about 4x float32 BLAS on one core); tests switch this off to compare
USE_VNNI = vnni.AVAILABLE


def gemm_into(
    c: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool, bits: int, wrap: bool
) -> int:
    """C = fit((C if accumulate else 0) + A @ B) in place; returns the overflow count."""
    if c.size == 0:
        return 0
    lo, hi = type_range(bits)
    k = a.shape[1]
    if USE_VNNI and a.itemsize == b.itemsize == 1 and 0 < k <= vnni.MAX_K:
        threads = min(POLICY.for_work(a.shape[0] * k * b.shape[1]),
                      numba.config.NUMBA_NUM_THREADS)
        return vnni.gemm_into(c, a, b, bool(accumulate), lo, hi, bool(wrap), threads, _WS.get)
    p = _products(a, b)
    if not accumulate and a.shape[1] << (8 * (a.itemsize + b.itemsize) - 2) <= hi:
        # |each product| <= 2**(8*(bytes_a+bytes_b)-2), so no sum of K of them can leave the
        # accumulator's range: a plain conversion, with no overflow to fit or count
        np.copyto(c, p, casting="unsafe")
        return 0
    return int(_fit_into(c, p, bool(accumulate), _I64(lo), _I64(hi), bool(wrap)))


def fit_acc(values: np.ndarray, bits: int, wrap: bool) -> tuple[np.ndarray, int]:
    lo, hi = type_range(bits)
    v = np.asarray(values, dtype=np.int64)
    over = (v < lo) | (v > hi)
    n = int(np.count_nonzero(over))
    if not n:
        return v, 0
    if wrap:
        return ((v - lo) & ((1 << bits) - 1)) + lo, n
    return np.clip(v, lo, hi), n


_U0, _U1 = np.uint64(0), np.uint64(1)
_U63, _U64MAX = np.uint64(63), np.uint64((1 << 64) - 1)

# the dither RNG (emulator/rng.py: draw_ref is the definition) as compiled code
_G, _M1, _M2 = np.uint64(RNG_GAMMA), np.uint64(RNG_MIX1), np.uint64(RNG_MIX2)
_S1, _S2, _S3 = (np.uint64(s) for s in RNG_SHIFTS)


@njit(cache=True, inline="always")
def mix(seed: np.uint64, n: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    """Draw ``n`` of the stream seeded with ``seed`` (uint64 arithmetic wraps)."""
    x = seed + (n + _U1) * _G
    x = (x ^ (x >> _S1)) * _M1
    x = (x ^ (x >> _S2)) * _M2
    return x ^ (x >> _S3)


@njit(inline="always")
def _umask(s):  # pragma: no cover - compiled
    """2**s - 1 as uint64, 0 <= s <= 63."""
    return (_U1 << np.uint64(s)) - _U1


@njit(inline="always")
def _nearest(p, s):  # pragma: no cover - compiled
    """floor((p + 2**(s-1)) / 2**s) for |p| < 2**63 and 1 <= s <= 63, without overflow."""
    return (p >> s) + ((p >> (s - 1)) & 1)


@njit(inline="always")
def _dither31(p, s, us, mask, half, tri, z):  # pragma: no cover - compiled
    """Dithered rounding for 1 <= s <= 31 (``us``, ``mask``, ``half`` = s, 2**s - 1 and
    2**(s-1), hoisted by the caller): uniform u on s bits; triangular adds v on the next s bits
    and one fair bit. Int64 sums cannot overflow: |p| <= 2**62 and u + v + b < 2**33."""
    u = np.int64(z & mask)
    if tri:
        u += np.int64((z >> us) & mask) + np.int64((z >> (us + us)) & _U1) - half
    return (p + u) >> s


@njit(inline="always")
def _round_one(p, s, mode, z):  # pragma: no cover - compiled
    """The requantizer's rounding of one value ``p`` (|p| <= 2**62) by a right shift
    1 <= s <= 128 with the 64-bit draw ``z``: exactly :func:`emulator.reference.round_shift`.

    Shifts up to 31 (and 62 without dither) use plain int64 sums, which cannot overflow there.
    Wider shifts split p = q * 2**s + r (0 <= r < 2**s) and decide the carries out of the
    fraction in uint64, as a 64-bit datapath would."""
    if mode == 0:  # nearest, ties up
        if s <= 62:
            return (p + (np.int64(1) << (s - 1))) >> s
        return _nearest(p, s) if s == 63 else np.int64(0)  # |p| < 2**63 rounds to 0
    if mode == 1:  # truncate (floor)
        return p >> min(s, np.int64(63))
    if mode >= 2 and s <= 31:
        return _dither31(p, s, np.uint64(s), _umask(s), np.int64(1) << (s - 1), mode == 3, z)
    if mode == 3 and s <= 63:  # triangular, v narrowed to t = 63 - s bits
        t = min(s, 63 - s)
        us, ut = np.uint64(s), np.uint64(t)
        mask = _umask(s)
        q = p >> s
        r = np.uint64(p) & mask
        x = r + (z & mask)  # < 2**(s+1) <= 2**64: no wrap
        c1 = np.int64(x >> us)
        x &= mask
        dv = (((z >> us) & _umask(t)) + ((z >> (us + ut)) & _U1)) << (us - ut)  # <= 2**s
        x += dv  # < 2**(s+1)
        half = _U1 << (us - _U1)
        k = np.int64(-1) if x < half else (np.int64(1) if x - half >= (_U1 << us)
                                            else np.int64(0))
        return q + c1 + k
    # uniform dither (and triangular with s >= 64, which is uniform)
    if s <= 62:
        return (p + np.int64(z & _umask(s))) >> s  # p + u < 2**62 + 2**62
    if s == 63:
        r = np.uint64(p) & _umask(63)
        return (p >> 63) + np.int64((r + (z & _umask(63))) >> _U63)
    if s > 64:  # round to nearest by the s - 64 bits the draw cannot cover
        c = s - 64
        p = _nearest(p, c) if c <= 63 else np.int64(0)  # |p| <= 2**62 < 2**(c-1)
    r = np.uint64(p)  # p mod 2**64; floor(p / 2**64) = p >> 63
    total = r + z  # wraps exactly when r + z >= 2**64
    return (p >> 63) + (np.int64(1) if total < z else np.int64(0))


@njit(cache=True)
def _requant(src, out, mul, shift, mode, lo, hi, relu, seed, counter):  # pragma: no cover
    """Requantizer over int64 ``src * mul``; returns the saturation count.

    Nothing overflows int64: sources are accumulator (<= 32-bit) or scratchpad values and
    ``|mul| <= 2**31``, so ``|src * mul| <= 2**62``; left shifts (shift <= 0) saturate before
    shifting; ``shift`` is clamped to [-64, 128] by the caller (isa.conventions.RQ_SHIFT_FOLD).
    Only the dither RNG wraps (uint64, on purpose; see :func:`_wrapping`).
    """
    nsat = 0
    n = src.shape[0]
    if shift <= 0:
        sh = min(-shift, np.int64(63))  # every nonzero value saturates from 16 on
        top = hi >> sh
        bottom = -((-lo) >> sh)  # smallest v with v << sh >= lo
        for i in range(n):
            v = src[i] * mul
            if relu and v < 0:
                v = 0
            if v > top:
                y, nsat = hi, nsat + 1
            elif v < bottom:
                y, nsat = lo, nsat + 1
            else:
                y = v << sh
            out[i] = y
        return nsat
    if mode <= 1 and shift <= 62:
        # nearest (ties up) or truncate (floor): a loop of its own, which vectorizes
        add = (np.int64(1) << (shift - 1)) if mode == 0 else np.int64(0)
        for i in range(n):
            y = (src[i] * mul + add) >> shift
            if relu:
                y = max(y, np.int64(0))
            c = min(max(y, lo), hi)
            nsat += c != y
            out[i] = c
        return nsat
    if mode >= 2 and shift <= 31:  # the common dithered shifts: constants hoisted
        us, mask, half, tri = np.uint64(shift), _umask(shift), np.int64(1) << (shift - 1), \
            mode == 3
        for i in range(n):
            y = _dither31(src[i] * mul, shift, us, mask, half, tri,
                          mix(seed, counter + np.uint64(i)))
            if relu and y < 0:
                y = 0
            if y > hi:
                y, nsat = hi, nsat + 1
            elif y < lo:
                y, nsat = lo, nsat + 1
            out[i] = y
        return nsat
    dither = mode >= 2
    for i in range(n):
        z = mix(seed, counter + np.uint64(i)) if dither else _U0
        y = _round_one(src[i] * mul, shift, mode, z)
        if relu and y < 0:
            y = 0
        if y > hi:
            y, nsat = hi, nsat + 1
        elif y < lo:
            y, nsat = lo, nsat + 1
        out[i] = y
    return nsat


@njit(cache=True)
def _round_draws(p, s, mode, z, out):  # pragma: no cover - compiled
    for i in range(p.shape[0]):
        out[i] = _round_one(p[i], s, mode, z[i])


def round_shift_draws(p: np.ndarray, s: int, mode: int, z: np.ndarray) -> np.ndarray:
    """The compiled rounding of each ``p[i]`` by a right shift ``s`` >= 1 with the given draws
    ``z[i]``: the requantizer's element function, exposed so that tests can feed it chosen
    draws (around every decision boundary) instead of the generator's."""
    if s < 1:
        raise ValueError("round_shift_draws takes right shifts (s >= 1)")
    p = np.ascontiguousarray(p, dtype=np.int64)
    out = np.empty(p.size, np.int64)
    with _wrapping():
        _round_draws(p, _I64(min(s, RQ_SHIFT_FOLD[1])), _I64(mode),
                     np.ascontiguousarray(z, dtype=np.uint64), out)
    return out


def _fold_shift(shift: int) -> int:
    """Shifts beyond [-64, 128] give the same results as the bound (isa.conventions)."""
    return max(RQ_SHIFT_FOLD[0], min(shift, RQ_SHIFT_FOLD[1]))


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
    src = np.ascontiguousarray(acc, dtype=np.int64).ravel()
    out = np.empty_like(src)
    lo, hi = type_range(out_bits)
    with _wrapping():
        nsat = _requant(src, out, _I64(mul), _I64(_fold_shift(shift)), _I64(mode), _I64(lo),
                        _I64(hi), bool(relu), np.uint64(seed), np.uint64(counter))
    return out, int(nsat)


def sign_bits_needed(acc: np.ndarray) -> int:
    v = np.asarray(acc)
    if v.size == 0:
        return 0
    return max(int(v.max()), ~int(v.min()), 0).bit_length()


def alu(op: str, a: np.ndarray, b: np.ndarray | None, bits: int, shift: int = 0):
    lo, hi = type_range(bits)
    x = np.asarray(a, dtype=np.int64)
    y = np.asarray(b, dtype=np.int64) if b is not None else None
    if op == "vadd":
        r = x + y
    elif op == "vsub":
        r = x - y
    elif op == "vmul":
        r = x * y
    elif op == "vmin":
        r = np.minimum(x, y)
    elif op == "vmax":
        r = np.maximum(x, y)
    elif op == "vcmpgt":
        r = (x > y).astype(np.int64)
    elif op == "vsra":
        r = x >> min(shift, 15)
    elif op == "vsll":
        r = x << min(shift, 16)
    elif op == "vrelu":
        r = np.maximum(x, 0)
    elif op == "vrelumask":
        r = (x > 0).astype(np.int64)
    else:
        raise ValueError(op)
    c = np.clip(r, lo, hi)
    return c, int(np.count_nonzero(c != r))


def select(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(mask) != 0, a, b).astype(np.int64)


def row_max(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).max(axis=1)


def row_sum(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).sum(axis=1)


_EXP_LUT = np.array(EXP_LUT, dtype=np.int64)


@njit(cache=True)
def _exp_kernel(x, out, sh, lut):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        t = min(np.int64(x[i]), np.int64(0)) * LOG2E_Q16
        if sh > 0:
            u = (t + (np.int64(1) << (sh - 1))) >> sh
        else:
            u = t << -sh
        n, f = (-u) >> 8, (-u) & 255
        if n == 0:
            out[i] = lut[f]
        elif n < 31:
            out[i] = (lut[f] + (np.int64(1) << (n - 1))) >> n
        else:
            out[i] = 0


def exp_q14(x: np.ndarray, e: int) -> np.ndarray:
    v = np.ascontiguousarray(x).ravel()
    out = np.empty(v.size, dtype=np.int64)
    e = max(EXP_E_FOLD[0], min(e, EXP_E_FOLD[1]))  # results stop changing beyond these
    _exp_kernel(v, out, _I64(8 - e), _EXP_LUT)
    return out


@njit(cache=True)
def _norm_kernel(p, sums, out, f, lo, hi):  # pragma: no cover - compiled
    """round-half-up(p * 2**f / S); -17 <= f <= 47 keeps every term within int64."""
    nsat = 0
    g = max(-f, np.int64(0))  # f < 0: multiply numerator and denominator by 2**-f
    scale = np.int64(1) << (max(f, np.int64(-1)) + 1)
    for i in range(p.shape[0]):
        s = np.int64(sums[i])
        for j in range(p.shape[1]):
            if s <= 0:
                y = np.int64(0)
            elif g == 0:
                y = (np.int64(p[i, j]) * scale + s) // (2 * s)
            else:
                y = (2 * np.int64(p[i, j]) + (s << g)) // ((2 * s) << g)
            c = min(max(y, lo), hi)
            nsat += c != y
            out[i, j] = c
    return nsat


def norm_rows(p: np.ndarray, sums: np.ndarray, frac_bits: int, out_bits: int):
    lo, hi = type_range(out_bits)
    out = np.empty(np.shape(p), dtype=np.int64)
    f = max(NORM_F_FOLD[0], min(frac_bits, NORM_F_FOLD[1]))  # results stop changing beyond
    nsat = _norm_kernel(np.asarray(p), np.asarray(sums), out, _I64(f), _I64(lo), _I64(hi))
    return out, int(nsat)


@njit(cache=True)
def _rsqrt_kernel(x, out, k, hi):  # pragma: no cover - compiled
    """y = sat((isqrt(2**(k+2) // x) + 1) // 2), x = max(x, 0) = 0 saturating; -3 <= k <= 46,
    so the radicand is below 2**49 and a float64 square root is within one of the integer
    root, which two correction loops make exact."""
    nsat = 0
    for i in range(x.shape[0]):
        v = max(np.int64(x[i]), np.int64(0))
        if v == 0:
            out[i] = hi
            nsat += 1
            continue
        if k + 2 < 0:
            out[i] = 0
            continue
        n = (np.int64(1) << (k + 2)) // v
        w = np.int64(np.sqrt(np.float64(n)))
        while w * w > n:
            w -= 1
        while (w + 1) * (w + 1) <= n:
            w += 1
        y = (w + 1) >> 1
        if y > hi:
            y = hi
            nsat += 1
        out[i] = y
    return nsat


def rsqrt_q(x: np.ndarray, k: int, out_bits: int = 16) -> tuple[np.ndarray, int]:
    """vrsqrt over an INT16 array (see :func:`emulator.reference.rsqrt_q`)."""
    v = np.ascontiguousarray(x).ravel()
    out = np.empty(v.size, dtype=np.int64)
    k = max(RSQRT_K_FOLD[0], min(k, RSQRT_K_FOLD[1]))  # results stop changing beyond these
    nsat = _rsqrt_kernel(v, out, _I64(k), _I64(type_range(out_bits)[1]))
    return out, int(nsat)


@njit(cache=True)
def _wmul_kernel(d, a, b, accumulate, lo, hi, wrap):  # pragma: no cover - compiled
    """Exact products into a temporary first (the accumulator cannot alias the scratchpad
    operands, but this keeps the loop free of possible aliasing), then fit and count."""
    n = d.shape[0]
    novf = 0
    span = hi - lo + 1
    for i in range(n):
        v = np.int64(a[i]) * np.int64(b[i])
        if accumulate:
            v += d[i]
        if v > hi or v < lo:
            novf += 1
            v = ((v - lo) % span) + lo if wrap else (hi if v > hi else lo)
        d[i] = v
    return novf


def wmul_into(d: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool, bits: int,
              wrap: bool) -> int:
    lo, hi = type_range(bits)
    return int(_wmul_kernel(d, a, b, bool(accumulate), _I64(lo), _I64(hi), bool(wrap)))


def lazy_update(theta: np.ndarray, acc: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    return _lazy_numpy(theta, acc, s)[:2]


def _lazy_numpy(theta: np.ndarray, acc: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray,
                                                                     int]:
    s = min(s, LAZY_SHIFT_FOLD)  # from 16 on nothing moves
    t = np.asarray(theta, dtype=np.int64)
    a = np.asarray(acc, dtype=np.int64)
    d = (a + (1 << (s - 1))) >> s if s > 0 else a
    tn = np.clip(t + d, -128, 127)
    return tn, a - ((tn - t) << s), int(np.count_nonzero(tn != t + d))


@njit(cache=True)
def _sub_rows_kernel(a, b, out, lo, hi):  # pragma: no cover - compiled
    nsat = 0
    for i in range(a.shape[0]):
        bv = np.int64(b[i])
        for j in range(a.shape[1]):
            r = np.int64(a[i, j]) - bv
            c = min(max(r, lo), hi)
            nsat += c != r
            out[i, j] = c
    return nsat


def sub_rows(a: np.ndarray, b: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    lo, hi = type_range(bits)
    out = np.empty(np.shape(a), dtype=np.int64)
    nsat = _sub_rows_kernel(np.asarray(a), np.asarray(b), out, _I64(lo), _I64(hi))
    return out, int(nsat)


_ = (ROUND_NEAREST, ROUND_TRUNC, ROUND_UNIFORM, ROUND_TRIANGULAR)
VECTOR = simd.AVAILABLE  # the fused update's 16-lane body (compile-time constant)
update16 = simd.update16


# ---------------------------------------------------------------------------- in-place forms
# Fused kernels writing straight into scratchpad views. Where an output may overlap an input
# other than element for element, the inputs are read completely before anything is written.


@njit(cache=True)
def _alu_kernel(code, d, a, b, lo, hi, shift):  # pragma: no cover - compiled
    """Two passes: every result into a fresh temporary, then saturate, count and store. Reading
    all inputs before writing makes any aliasing of ``d`` with ``a``/``b`` exact, and both
    loops are free of possible aliasing, so they vectorize. Returns the saturation count."""
    n = d.shape[0]
    t = np.empty(n, np.int64)
    if code == 0:
        for i in range(n):
            t[i] = np.int64(a[i]) + np.int64(b[i])
    elif code == 1:
        for i in range(n):
            t[i] = np.int64(a[i]) - np.int64(b[i])
    elif code == 2:
        for i in range(n):
            t[i] = np.int64(a[i]) * np.int64(b[i])
    elif code == 3:
        for i in range(n):
            t[i] = min(np.int64(a[i]), np.int64(b[i]))
    elif code == 4:
        for i in range(n):
            t[i] = max(np.int64(a[i]), np.int64(b[i]))
    elif code == 5:
        for i in range(n):
            t[i] = 1 if a[i] > b[i] else 0
    elif code == 6:
        s = min(shift, 15)
        for i in range(n):
            t[i] = np.int64(a[i]) >> s
    elif code == 7:
        s = min(shift, 16)
        for i in range(n):
            t[i] = np.int64(a[i]) << s
    elif code == 8:
        for i in range(n):
            t[i] = max(np.int64(a[i]), 0)
    else:
        for i in range(n):
            t[i] = 1 if a[i] > 0 else 0
    nsat = 0
    for i in range(n):
        r = t[i]
        c = min(max(r, lo), hi)
        nsat += c != r
        d[i] = c
    return nsat


def alu_into(op: str, d: np.ndarray, a: np.ndarray, b: np.ndarray | None, bits: int,
             shift: int = 0) -> int:
    lo, hi = type_range(bits)
    return int(_alu_kernel(ALU_CODES[op], d, a, a if b is None else b, _I64(lo), _I64(hi),
                           _I64(shift)))


@njit(cache=True)
def _lazy_kernel(theta, acc, s):  # pragma: no cover - compiled
    half = (np.int64(1) << (s - 1)) if s > 0 else np.int64(0)
    nsat = 0
    for i in range(theta.shape[0]):
        theta[i], acc[i], sat = _lazy_one(np.int64(theta[i]), np.int64(acc[i]), s, half)
        nsat += sat
    return nsat


@njit(inline="always")
def _lazy_one(t, a, s, half):  # pragma: no cover - compiled
    """One lazy-update element: (new parameter, new residual, 1 if the parameter saturated);
    ``half`` = 2**(s-1), or 0."""
    v = t + ((a + half) >> s)
    tn = min(max(v, np.int64(-128)), np.int64(127))
    return tn, a - ((tn - t) << s), np.int64(tn != v)


def lazy_update_into(theta: np.ndarray, acc: np.ndarray, s: int) -> int:
    """vlazy in place (s >= 0); returns the number of parameters that saturated."""
    if np.may_share_memory(theta, acc):
        tn, an, nsat = _lazy_numpy(theta, acc, s)
        theta[...] = tn
        acc[...] = an
        return nsat
    return int(_lazy_kernel(theta, acc, _I64(min(s, LAZY_SHIFT_FOLD))))


def requant_into(dst: np.ndarray, src: np.ndarray, shift: int, mode: int, out_bits: int,
                 relu: bool, seed: int, counter: int, mul: int = 1) -> int:
    if src.ndim != 1 or dst.ndim != 1 or not src.flags.c_contiguous \
            or src.dtype not in (np.int64, np.int32) or np.may_share_memory(dst, src):
        vals, nsat = requant(src, shift, mode, out_bits, relu, seed, counter, mul)
        dst[...] = vals
        return nsat
    lo, hi = type_range(out_bits)
    with _wrapping():
        return int(_requant(src, dst, _I64(mul), _I64(_fold_shift(shift)), _I64(mode),
                            _I64(lo), _I64(hi), bool(relu), np.uint64(seed),
                            np.uint64(counter)))


@njit(cache=True)
def _update_kernel(src, dst, res, theta, mul, shift, mode, relu, s):  # pragma: no cover
    """``rqm dst <- src`` (INT16, nearest or truncate, 0 < shift <= 31), ``vsub res <- res -
    dst`` (INT16) and ``vlazy theta, res`` (0 <= s <= 15) in one pass. Exact when ``dst``,
    ``res`` and ``theta`` are pairwise disjoint (every element then depends only on the same
    element of the earlier steps). Returns the three saturation counts (requantizer, subtract,
    parameter)."""
    add = (np.int64(1) << (shift - 1)) if mode == 0 else np.int64(0)
    half = (np.int64(1) << (s - 1)) if s > 0 else np.int64(0)
    lo, hi = np.int64(-32768), np.int64(32767)
    n_rq = 0
    n_sub = 0
    n_lz = 0
    n = dst.shape[0]
    start = 0
    if VECTOR:  # sixteen at a time (emulator/simd.py), the same arithmetic
        start = n - n % 16
        bound = (np.int64(2**31 - 1) - add) // max(abs(mul), np.int64(1))
        for i in range(0, start, 16):
            cnt = update16(src, dst, res, theta, i, mul, add, shift, relu, s, half, bound)
            n_rq += cnt & 0x1FFFFF
            n_sub += (cnt >> 21) & 0x1FFFFF
            n_lz += cnt >> 42
    for i in range(start, n):
        y = (np.int64(src[i]) * mul + add) >> shift
        if relu:
            y = max(y, np.int64(0))
        q = min(max(y, lo), hi)
        n_rq += q != y
        dst[i] = q
        r = np.int64(res[i]) - q
        a = min(max(r, lo), hi)
        n_sub += a != r
        theta[i], res[i], sat = _lazy_one(np.int64(theta[i]), a, s, half)
        n_lz += sat
    return n_rq, n_sub, n_lz


def update_into(dst: np.ndarray, src: np.ndarray, res: np.ndarray, theta: np.ndarray, mul: int,
                shift: int, mode: int, relu: bool, s: int) -> tuple[int, int, int]:
    """The fused lazy-update sequence (see :mod:`emulator.fusion`); arrays must be disjoint.
    Returns the saturation counts of the three steps (requantizer, subtract, parameter)."""
    n_rq, n_sub, n_lz = _update_kernel(src, dst, res, theta, _I64(mul), _I64(shift),
                                       _I64(mode), bool(relu), _I64(s))
    return int(n_rq), int(n_sub), int(n_lz)



# ============================================================================ conv and pooling
# conv, vmaxpool, vsumpool, vunpool and vbias (same interface as emulator/reference.py).
#
# Exactness of the float paths: a sum of integer terms computed in floating point is exact in
# any order (BLAS may reorder, block or use FMA) while every partial sum is an integer of
# magnitude <= 2**24 (float32) or 2**53 (float64); every partial sum of sum_k A[i,k] B[k,j] is
# bounded by sum_k |A[i,k]| |B[k,j]| <= min(terms * max|A| max|B|, max|A| * max_j
# sum_k |B[k,j]|, max|B| * max_i sum_k |A[i,k]|). So a product runs as one float32 matmul when
# such a bound (static, or from the operands' absolute column/row sums) is <= 2**24, as float64
# when INT16 operands need it, and otherwise in chunks of the reduction whose exact results
# are summed in float64 or int64.
F32_LIMIT, F64_LIMIT = 1 << 24, 1 << 53


def _max_product(a_bytes: int, b_bytes: int) -> int:
    """The largest |a b| of two elements: 2**14, 2**22 or 2**30."""
    return 1 << (8 * (a_bytes + b_bytes) - 2)


@njit(cache=True)
def _abs_stats(x2):  # pragma: no cover - compiled
    """(max |x|, max over columns of sum |x[:, j]|, max over rows of sum |x[i, :]|) of a 2-D
    integer array, as int64, in one pass."""
    rows, cols = x2.shape
    colsum = np.zeros(cols, np.int64)
    amax = np.int64(0)
    rmax = np.int64(0)
    for i in range(rows):
        r = np.int64(0)
        for j in range(cols):
            v = abs(np.int64(x2[i, j]))
            r += v
            colsum[j] += v
            amax = max(amax, v)
        rmax = max(rmax, r)
    cmax = np.int64(0)
    for j in range(cols):
        cmax = max(cmax, colsum[j])
    return amax, cmax, rmax


def _abs_max(x: np.ndarray) -> int:
    return max(int(x.max()), -int(x.min())) if x.size else 0


class _ColCache:
    """im2col results of the last few (geometry, element type, float type) triples, each with a
    copy of the X it was built from: a weight gradient right after the forward pass of the same
    layer reuses the forward's im2col whenever X is still byte-for-byte the same (compared in
    full on every use, so a reuse is exact by construction)."""

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        self._d: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.max_bytes = max_bytes

    def get(self, x: np.ndarray, g, ftype: type) -> np.ndarray:
        key = (g._replace(f=0), x.dtype.str, ftype)  # im2col does not depend on F
        hit = self._d.pop(key, None)
        if hit is not None and np.array_equal(hit[0], x):
            self._d[key] = hit  # most recent last
            return hit[1]
        col = np.empty((g.m, g.k), ftype)
        xp = padded(x, g, ftype, 0, out=_WS.get("conv_xp", g.padded, ftype))
        np.copyto(col.reshape(g.n, g.oh, g.ow, g.kh, g.kw, g.c), window_view(xp, g))
        self._d[key] = (x.copy(), col)
        total = sum(c.nbytes for _, c in self._d.values())
        while total > self.max_bytes and len(self._d) > 1:
            oldest = next(iter(self._d))
            total -= self._d.pop(oldest)[1].nbytes
        return col


_COLS = _ColCache()


def _exact_matmul(a: np.ndarray, b: np.ndarray, bound: int, a_bytes: int, b_bytes: int,
                  name: str) -> np.ndarray:
    """a @ b for integer-valued float operands whose partial sums are bounded by ``bound``
    (see above): one matmul when that is exact in the operands' float type, otherwise the
    reduction in chunks of static exactness (float32: 1024 INT8 terms; float64: 2**53 over the
    largest product), chunk results summed in float64 (float32 chunks, each <= 2**24: exact up
    to 2**29 chunks) or int64. Returns a float workspace array or a fresh float64/int64 one."""
    m, k = a.shape
    n = b.shape[1]
    out = _WS.get(name, (m, n), a.dtype)
    limit = F32_LIMIT if a.dtype == np.float32 else F64_LIMIT
    POLICY.use(POLICY.for_work(m * k * n))  # emulator/threads.py
    if bound <= limit:
        np.matmul(a, b, out=out)
        return out
    chunk = limit // _max_product(a_bytes, b_bytes)
    in_f64 = a.dtype == np.float32 and -(-k // chunk) <= F64_LIMIT // F32_LIMIT
    total = np.zeros((m, n), np.float64 if in_f64 else np.int64)
    for k0 in range(0, k, chunk):
        np.matmul(a[:, k0 : k0 + chunk], b[k0 : k0 + chunk], out=out)
        total += out if in_f64 else out.astype(np.int64)
    return total


def _store(c: np.ndarray, p: np.ndarray, accumulate: bool, bits: int, wrap: bool,
           bound: int) -> int:
    """c (2-D accumulator view) = fit((c if accumulate else 0) + p); ``bound`` >= max |p|."""
    lo, hi = type_range(bits)
    if not accumulate and bound <= hi:
        np.copyto(c, p, casting="unsafe")
        return 0
    return int(_fit_into(c, p, bool(accumulate), _I64(lo), _I64(hi), bool(wrap)))


def conv_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, mode: int, g, accumulate: bool,
              bits: int, wrap: bool) -> int:
    """conv on exact BLAS: fwd col(X) @ W, wgrad col(X)^T @ dZ (reusing the forward's im2col
    when X is unchanged), dgrad dZ @ W^T then col2im in one compiled pass over the product.
    Returns the overflow count."""
    if out.size == 0:
        return 0
    ba, bb = a.itemsize, b.itemsize
    if g.m * g.k * g.f == 0:  # no products: the output is fit(acc or 0)
        return _store(out.reshape(1, -1), np.zeros((1, out.size), np.int64), accumulate, bits,
                      wrap, 0)
    ftype = np.float32 if ba == bb == 1 else np.float64
    maxp = _max_product(ba, bb)
    if mode == CONV_FWD:
        w2 = b.reshape(g.k, g.f)
        bound = g.k * maxp
        if bound > F32_LIMIT:
            _, bcol, _ = _abs_stats(w2)
            bound = min(bound, _abs_max(a) * int(bcol))
        p = _exact_matmul(_COLS.get(a, g, ftype), _as_float(w2, "b", ftype), bound, ba, bb,
                          "conv_p")
        return _store(out.reshape(g.m, g.f), p, accumulate, bits, wrap, bound)
    if mode == CONV_WGRAD:
        dz = b.reshape(g.m, g.f)
        bound = g.m * maxp
        if bound > F32_LIMIT:
            _, dcol, _ = _abs_stats(dz)
            bound = min(bound, _abs_max(a) * int(dcol))
        p = _exact_matmul(_COLS.get(a, g, ftype).T, _as_float(dz, "b", ftype), bound, ba, bb,
                          "conv_p")
        return _store(out.reshape(g.k, g.f), p, accumulate, bits, wrap, bound)
    dz, w2 = a.reshape(g.m, g.f), b.reshape(g.k, g.f)
    # |P[m, k]| <= min(F max|dZ| max|W|, max_m sum_f |dZ[m, f]| max|W|, ...); each input
    # position receives at most ceil(KH/SH) ceil(KW/SW) window products
    amax, _, arow = _abs_stats(dz)
    bmax, _, brow = _abs_stats(w2)
    pbound = min(g.f * maxp, int(arow) * int(bmax), int(brow) * int(amax))
    p = _exact_matmul(_as_float(dz, "a", ftype), _as_float(w2, "b", ftype).T, pbound, ba, bb,
                      "conv_p")  # [M, K]
    bound = -(-g.kh // g.sh) * -(-g.kw // g.sw) * pbound
    stype = np.float32 if bound <= F32_LIMIT else np.float64 if bound <= F64_LIMIT else np.int64
    if stype is np.int64 and p.dtype != np.int64:
        p = p.astype(np.int64)
    s = _WS.get("conv_dx", (g.n, g.h, g.w, g.c), stype)
    _col2im_add(s, p, g)
    return _store(out.reshape(1, -1), s.reshape(1, -1), accumulate, bits, wrap, bound)


@njit(inline="always")
def _taps(o, stride, pad, k, size):  # pragma: no cover - compiled
    """The window offsets [lo, hi) of output row (column) ``o`` whose input position
    ``o stride + t - pad`` lies inside [0, size)."""
    start = o * stride - pad
    return max(0, -start), max(0, min(k, size - start))


@njit(cache=True)
def _col2im_kernel(s, p, c, oh_n, ow_n, kh_n, kw_n, sh, sw, ph, pw):  # pragma: no cover
    """s[n, ih, iw c + ch] += p[m, (kh KW + kw) C + ch] over every (m, kh, kw) whose window
    position (ih, iw) is inside the input: one sequential pass over P (the caller zeroes s,
    viewed as [N, H, W C]). With SW = 1 the inside taps kw0..kw1 of a window row are adjacent
    in both P and s, so each is one contiguous run of (kw1 - kw0) C additions."""
    nb, h, wc = s.shape
    w = wc // c
    for n in range(nb):
        for oh in range(oh_n):
            kh0, kh1 = _taps(oh, sh, ph, kh_n, h)
            for ow in range(ow_n):
                m = (n * oh_n + oh) * ow_n + ow
                kw0, kw1 = _taps(ow, sw, pw, kw_n, w)
                for kh in range(kh0, kh1):  # (indexing, not views: views cost in this loop)
                    ih = oh * sh + kh - ph
                    if sw == 1:
                        d0 = (ow + kw0 - pw) * c
                        p0 = (kh * kw_n + kw0) * c
                        for t in range((kw1 - kw0) * c):
                            s[n, ih, d0 + t] += p[m, p0 + t]
                        continue
                    for kw in range(kw0, kw1):
                        d0 = (ow * sw + kw - pw) * c
                        p0 = (kh * kw_n + kw) * c
                        for ch in range(c):
                            s[n, ih, d0 + ch] += p[m, p0 + ch]


def _col2im_add(s: np.ndarray, p: np.ndarray, g) -> None:
    """s[n, ih, iw, c] = sum of P[m, k] over the (m, k) whose window position is (ih, iw)."""
    s[...] = 0
    _col2im_kernel(s.reshape(g.n, g.h, g.w * g.c), p, _I64(g.c), _I64(g.oh), _I64(g.ow),
                   _I64(g.kh), _I64(g.kw), _I64(g.sh), _I64(g.sw), _I64(g.ph), _I64(g.pw))


@njit(cache=True)
def _maxpool_kernel(x, y, ix, write_idx, oh_n, ow_n, kh_n, kw_n, sh, sw, ph, pw):
    """Max over the window positions inside the input, the first maximum in scan order, and
    its index kh KW + kw; per output pixel a branch-free pass over the channels of each
    position. (Every window has an inside position: checked by the semantics.)"""
    nb, h, w, c = x.shape
    best = np.empty(c, x.dtype)
    arg = np.empty(c, np.uint8)
    for n in range(nb):
        for oh in range(oh_n):
            for ow in range(ow_n):
                first = True
                kh0, kh1 = _taps(oh, sh, ph, kh_n, h)
                kw0, kw1 = _taps(ow, sw, pw, kw_n, w)
                for kh in range(kh0, kh1):
                    ih = oh * sh + kh - ph
                    for kw in range(kw0, kw1):
                        iw = ow * sw + kw - pw
                        code = np.uint8(kh * kw_n + kw)
                        row = x[n, ih, iw]
                        if first:
                            for ch in range(c):
                                best[ch] = row[ch]
                                arg[ch] = code
                            first = False
                            continue
                        for ch in range(c):
                            v = row[ch]
                            gt = v > best[ch]
                            best[ch] = v if gt else best[ch]
                            arg[ch] = code if gt else arg[ch]
                base = ((n * oh_n + oh) * ow_n + ow) * c
                for ch in range(c):
                    y[base + ch] = best[ch]
                if write_idx:
                    for ch in range(c):
                        ix[base + ch] = arg[ch]


def maxpool_into(y: np.ndarray, idx: np.ndarray | None, x: np.ndarray, g) -> None:
    if y.size == 0:
        return
    x4 = x.reshape(g.n, g.h, g.w, g.c)
    # X is read completely before anything is written, and Y before the indices: when the
    # ranges share memory, compute into temporaries and store in that order
    direct = not np.may_share_memory(x, y) and (
        idx is None or not (np.may_share_memory(x, idx) or np.may_share_memory(y, idx)))
    yy = y if direct else np.empty_like(y)
    ii = (idx if direct else np.empty(y.size, np.uint8)) if idx is not None else \
        np.empty(1, np.uint8)
    _maxpool_kernel(x4, yy, ii, idx is not None, _I64(g.oh), _I64(g.ow), _I64(g.kh),
                    _I64(g.kw), _I64(g.sh), _I64(g.sw), _I64(g.ph), _I64(g.pw))
    if not direct:
        y[...] = yy
        if idx is not None:
            idx[...] = ii


@njit(cache=True)
def _sumpool_kernel(x, out, oh_n, ow_n, kh_n, kw_n, sh, sw, ph, pw, lo, hi, wrap):
    """Window sums (exact in int64) fitted into ``out``; returns the overflow count."""
    nb, h, w, c = x.shape
    acc = np.zeros(c, np.int64)
    novf = 0
    span = hi - lo + 1
    for n in range(nb):
        for oh in range(oh_n):
            for ow in range(ow_n):
                acc[:] = 0
                kh0, kh1 = _taps(oh, sh, ph, kh_n, h)
                kw0, kw1 = _taps(ow, sw, pw, kw_n, w)
                for kh in range(kh0, kh1):
                    ih = oh * sh + kh - ph
                    for kw in range(kw0, kw1):
                        iw = ow * sw + kw - pw
                        for ch in range(c):
                            acc[ch] += x[n, ih, iw, ch]
                base = ((n * oh_n + oh) * ow_n + ow) * c
                for ch in range(c):
                    v = acc[ch]
                    if v > hi or v < lo:
                        novf += 1
                        v = min(max(v, lo), hi) if not wrap else ((v - lo) % span) + lo
                    out[base + ch] = v
    return novf


def sumpool_into(out: np.ndarray, x: np.ndarray, g, bits: int, wrap: bool) -> int:
    if out.size == 0:
        return 0
    lo, hi = type_range(bits)
    return int(_sumpool_kernel(x.reshape(g.n, g.h, g.w, g.c), out, _I64(g.oh), _I64(g.ow),
                               _I64(g.kh), _I64(g.kw), _I64(g.sh), _I64(g.sw), _I64(g.ph),
                               _I64(g.pw), _I64(lo), _I64(hi), bool(wrap)))


@njit(cache=True)
def _bad_index_kernel(ix, nb, c, oh_n, ow_n, kh_n, kw_n, sh, sw, ph, pw, h, w):
    """The first element whose index is >= KH KW or selects a padding position, or -1."""
    for n in range(nb):
        for oh in range(oh_n):
            for ow in range(ow_n):
                base = ((n * oh_n + oh) * ow_n + ow) * c
                for ch in range(c):
                    v = np.int64(ix[base + ch])
                    ih = oh * sh + v // kw_n - ph
                    iw = ow * sw + v % kw_n - pw
                    if v >= kh_n * kw_n or ih < 0 or ih >= h or iw < 0 or iw >= w:
                        return base + ch
    return -1


def bad_unpool_index(idx: np.ndarray, g) -> tuple[int, int] | None:
    if idx.size == 0:
        return None
    if g.ph == g.pw == 0 and int(idx.max()) < g.kh * g.kw:
        return None  # without padding every window position is inside the input
    e = int(_bad_index_kernel(idx, _I64(g.n), _I64(g.c), _I64(g.oh), _I64(g.ow), _I64(g.kh),
                              _I64(g.kw), _I64(g.sh), _I64(g.sw), _I64(g.ph), _I64(g.pw),
                              _I64(g.h), _I64(g.w)))
    return None if e < 0 else (e, int(idx[e]))


@njit(cache=True)
def _unpool_kernel(dy, ix, by_index, s, oh_n, ow_n, kh_n, kw_n, sh, sw, ph, pw):
    """Scatter-add dY into s [N,H,W,C] (zeroed by the caller): to every window position
    inside the input, or (``by_index``) only where the element's index is that position's
    code (selected into a temporary first, so both loops over channels vectorize; indices
    were checked by the semantics)."""
    nb, h, w, c = s.shape
    tmp = np.empty(c, s.dtype)
    for n in range(nb):
        for oh in range(oh_n):
            for ow in range(ow_n):
                base = ((n * oh_n + oh) * ow_n + ow) * c
                d = dy[base : base + c]
                ii = ix[base : base + c]
                kh0, kh1 = _taps(oh, sh, ph, kh_n, h)
                kw0, kw1 = _taps(ow, sw, pw, kw_n, w)
                for kh in range(kh0, kh1):
                    ih = oh * sh + kh - ph
                    for kw in range(kw0, kw1):
                        iw = ow * sw + kw - pw
                        dst = s[n, ih, iw]
                        if by_index:
                            code = kh * kw_n + kw
                            for ch in range(c):
                                tmp[ch] = d[ch] if ii[ch] == code else 0
                            for ch in range(c):
                                dst[ch] += tmp[ch]
                        else:
                            for ch in range(c):
                                dst[ch] += d[ch]


def unpool_into(out: np.ndarray, dy: np.ndarray, idx: np.ndarray | None, g, accumulate: bool,
                bits: int, wrap: bool) -> int:
    if out.size == 0:
        return 0
    lo, hi = type_range(bits)
    # every input position receives at most ceil(KH/SH) ceil(KW/SW) gradient elements
    bound = -(-g.kh // g.sh) * -(-g.kw // g.sw) * _abs_max(dy)
    direct = not accumulate and bound <= hi  # no fit can change a value: add in place
    s = out.reshape(g.n, g.h, g.w, g.c) if direct else \
        _WS.get("unpool_s", (g.n, g.h, g.w, g.c), np.int64)
    s[...] = 0
    if dy.size:
        _unpool_kernel(dy, dy if idx is None else idx, idx is not None, s, _I64(g.oh),
                       _I64(g.ow), _I64(g.kh), _I64(g.kw), _I64(g.sh), _I64(g.sw), _I64(g.ph),
                       _I64(g.pw))
    if direct:
        return 0
    return int(_fit_into(out.reshape(1, -1), s.reshape(1, -1), bool(accumulate), _I64(lo),
                         _I64(hi), bool(wrap)))


@njit(cache=True)
def _bias_kernel(c, b, lo, hi, wrap):  # pragma: no cover - compiled
    """c[i, j] = fit(c[i, j] + b[j]); returns the overflow count."""
    rows, cols = c.shape
    novf = 0
    if not wrap:
        for i in range(rows):
            for j in range(cols):
                v = np.int64(c[i, j]) + b[j]
                r = min(max(v, lo), hi)
                novf += r != v
                c[i, j] = r
        return novf
    span = hi - lo + 1
    for i in range(rows):
        for j in range(cols):
            v = np.int64(c[i, j]) + b[j]
            if v > hi or v < lo:
                novf += 1
                v = ((v - lo) % span) + lo
            c[i, j] = v
    return novf


def bias_into(out: np.ndarray, b: np.ndarray, s: int, bits: int, wrap: bool) -> int:
    if out.size == 0:
        return 0
    s = max(BIAS_SHIFT_FOLD[0], min(s, BIAS_SHIFT_FOLD[1]))  # results constant beyond
    v = b.astype(np.int64)
    shifted = v << -s if s <= 0 else (v + (1 << (s - 1))) >> s
    lo, hi = type_range(bits)
    return int(_bias_kernel(out, shifted, _I64(lo), _I64(hi), bool(wrap)))


# ------------------------------------------------------------------------------ vqstep, vtopk
def vqstep(mode: int, block: np.ndarray, aux: np.ndarray | None, c: int, ea: int, eb: int,
           ec: int) -> tuple[int, int, int]:
    """vqstep before min=1 (see :func:`emulator.reference.vqstep`): the reductions in numpy
    int64 (|acc| <= 2**31, so sums of fewer than 2**32 terms are exact), the row minimum of
    (C - S_j) / N_j from float64 candidates settled exactly in Python integers."""
    if mode in (0, 2):
        a = np.abs(np.asarray(block, dtype=np.int64).ravel())
        if aux is not None:
            a = a[np.asarray(aux).ravel() != 0]
        x = int(a.sum()) if mode == 0 else (int(a.max()) if a.size else 0)
        return qstep_pack(x * c, ea + ec)
    blk = np.asarray(block, dtype=np.int64)
    n = np.asarray(aux, dtype=np.int64)
    rows = np.flatnonzero(n > 0)
    if rows.size == 0:
        return QSTEP_INF
    smax = blk[rows].max(axis=1) if blk.shape[1] else np.zeros(rows.size, np.int64)
    m = min(ec, ea)
    cf = math.ldexp(float(c), ec - m)
    sf = np.ldexp(smax.astype(np.float64), ea - m)
    nf = n[rows].astype(np.float64)
    q = (cf - sf) / nf
    # each q carries an error below 2**-50 (|C| + |S_j|) / N_j: keep every row that may be the
    # minimum and decide among them exactly
    err = np.ldexp(cf + np.abs(sf), -48) / nf
    cand = rows[q - err <= (q + err).min()]
    best = qstep_var_min([int(v) for v in (blk[cand].max(axis=1) if blk.shape[1]
                                           else np.zeros(cand.size, np.int64))],
                         [int(v) for v in n[cand]], c, ec, ea)
    assert best is not None
    num, den = best
    if num <= 0:
        return QSTEP_ZERO
    return qstep_pack_sqrt(num, den, m - eb)


def topk(x: np.ndarray, k: int, col: bool) -> np.ndarray:
    """vtopk (see :func:`emulator.reference.topk`): a stable sort of the negated magnitudes
    per vector gives each element's rank; ranks below k are kept."""
    a = np.asarray(x)
    v = a.T if col else a
    if v.size == 0:
        return a.copy()
    mag = np.abs(v.astype(np.int64))
    order = np.argsort(-mag, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(v.shape[1])[None, :].repeat(v.shape[0], 0), axis=1)
    out = np.where(rank < k, v, 0).astype(a.dtype)
    return out.T if col else out


def clear_caches() -> None:
    """Forget cached host-side temporaries (im2col results); values never depend on them."""
    _COLS._d.clear()
