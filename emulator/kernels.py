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
from emulator.reference import (
    EXP_LUT,
    LOG2E_Q16,
    ROUND_NEAREST,
    ROUND_TRIANGULAR,
    ROUND_TRUNC,
    ROUND_UNIFORM,
    gemm_passes,
    type_range,
    uses_rng,
)
from emulator.rng import mix
from emulator.threads import POLICY

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


@njit(cache=True)
def _requant(src, out, mul, shift, mode, lo, hi, relu, seed, counter):  # pragma: no cover
    """Requantizer over int64 ``src * mul``; returns the saturation count.

    Nothing overflows int64: sources are accumulator (<= 32-bit) or scratchpad values and
    ``|mul| < 2**31``; left shifts (shift <= 0) saturate before shifting. Only the dither
    RNG wraps (uint64, on purpose; see :func:`_wrapping`).
    """
    nsat = 0
    n = src.shape[0]
    if shift <= 0:
        sh = -shift
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
    half = np.int64(1) << (shift - 1)
    if mode <= 1:  # nearest (ties up) or truncate (floor): a loop of its own, which vectorizes
        add = half if mode == 0 else np.int64(0)
        for i in range(n):
            y = (src[i] * mul + add) >> shift
            if relu:
                y = max(y, np.int64(0))
            c = min(max(y, lo), hi)
            nsat += c != y
            out[i] = c
        return nsat
    mask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    ush = np.uint64(shift)
    one = np.int64(1)
    for i in range(n):  # uniform (mode 2) or triangular (mode 3) dither
        z = mix(seed, counter + np.uint64(i))
        u = np.int64(z & mask)
        if mode == 2:
            d = u - half
        else:
            v = np.int64((z >> ush) & mask)
            bit = np.int64((z >> (ush + ush)) & np.uint64(1))
            d = u + v - (one << shift) + bit
        y = (src[i] * mul + d + half) >> shift
        if relu and y < 0:
            y = 0
        if y > hi:
            y, nsat = hi, nsat + 1
        elif y < lo:
            y, nsat = lo, nsat + 1
        out[i] = y
    return nsat


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
        nsat = _requant(src, out, _I64(mul), _I64(shift), _I64(mode), _I64(lo), _I64(hi),
                        bool(relu), np.uint64(seed), np.uint64(counter))
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
    _exp_kernel(v, out, _I64(8 - e), _EXP_LUT)
    return out


@njit(cache=True)
def _norm_kernel(p, sums, out, f, lo, hi):  # pragma: no cover - compiled
    nsat = 0
    scale = np.int64(1) << (f + 1)
    for i in range(p.shape[0]):
        s = np.int64(sums[i])
        for j in range(p.shape[1]):
            y = (np.int64(p[i, j]) * scale + s) // (2 * s) if s > 0 else np.int64(0)
            c = min(max(y, lo), hi)
            nsat += c != y
            out[i, j] = c
    return nsat


def norm_rows(p: np.ndarray, sums: np.ndarray, frac_bits: int, out_bits: int):
    lo, hi = type_range(out_bits)
    out = np.empty(np.shape(p), dtype=np.int64)
    nsat = _norm_kernel(np.asarray(p), np.asarray(sums), out, _I64(frac_bits), _I64(lo), _I64(hi))
    return out, int(nsat)


def lazy_update(theta: np.ndarray, acc: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(theta, dtype=np.int64)
    a = np.asarray(acc, dtype=np.int64)
    d = (a + (1 << (s - 1))) >> s if s > 0 else a
    tn = np.clip(t + d, -128, 127)
    return tn, a - ((tn - t) << s)


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
ALU_CODES = {"vadd": 0, "vsub": 1, "vmul": 2, "vmin": 3, "vmax": 4, "vcmpgt": 5, "vsra": 6,
             "vsll": 7, "vrelu": 8, "vrelumask": 9}


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
    for i in range(theta.shape[0]):
        theta[i], acc[i] = _lazy_one(np.int64(theta[i]), np.int64(acc[i]), s, half)


@njit(inline="always")
def _lazy_one(t, a, s, half):  # pragma: no cover - compiled
    """One lazy-update element: (new parameter, new residual); ``half`` = 2**(s-1), or 0."""
    tn = min(max(t + ((a + half) >> s), np.int64(-128)), np.int64(127))
    return tn, a - ((tn - t) << s)


def lazy_update_into(theta: np.ndarray, acc: np.ndarray, s: int) -> None:
    if np.may_share_memory(theta, acc):
        tn, an = lazy_update(theta, acc, s)
        theta[...] = tn
        acc[...] = an
        return
    _lazy_kernel(theta, acc, _I64(s))


def requant_into(dst: np.ndarray, src: np.ndarray, shift: int, mode: int, out_bits: int,
                 relu: bool, seed: int, counter: int, mul: int = 1) -> int:
    if src.ndim != 1 or dst.ndim != 1 or not src.flags.c_contiguous \
            or src.dtype not in (np.int64, np.int32) or np.may_share_memory(dst, src):
        vals, nsat = requant(src, shift, mode, out_bits, relu, seed, counter, mul)
        dst[...] = vals
        return nsat
    lo, hi = type_range(out_bits)
    with _wrapping():
        return int(_requant(src, dst, _I64(mul), _I64(shift), _I64(mode), _I64(lo),
                            _I64(hi), bool(relu), np.uint64(seed), np.uint64(counter)))


@njit(cache=True)
def _update_kernel(src, dst, res, theta, mul, shift, mode, relu, s):  # pragma: no cover
    """``rqm dst <- src`` (INT16, nearest or truncate, shift > 0), ``vsub res <- res - dst``
    (INT16) and ``vlazy theta, res`` (shift ``s``) in one pass. Exact when ``dst``, ``res`` and
    ``theta`` are pairwise disjoint (every element then depends only on the same element of the
    earlier steps). Returns the two saturation counts (requantizer, subtract)."""
    add = (np.int64(1) << (shift - 1)) if mode == 0 else np.int64(0)
    half = (np.int64(1) << (s - 1)) if s > 0 else np.int64(0)
    lo, hi = np.int64(-32768), np.int64(32767)
    n_rq = 0
    n_sub = 0
    n = dst.shape[0]
    start = 0
    if VECTOR:  # sixteen at a time (emulator/simd.py), the same arithmetic
        start = n - n % 16
        bound = (np.int64(2**31 - 1) - add) // max(abs(mul), np.int64(1))
        for i in range(0, start, 16):
            cnt = update16(src, dst, res, theta, i, mul, add, shift, relu, s, half, bound)
            n_rq += cnt & 0xFFFFFFFF
            n_sub += cnt >> 32
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
        theta[i], res[i] = _lazy_one(np.int64(theta[i]), a, s, half)
    return n_rq, n_sub


def update_into(dst: np.ndarray, src: np.ndarray, res: np.ndarray, theta: np.ndarray, mul: int,
                shift: int, mode: int, relu: bool, s: int) -> tuple[int, int]:
    """The fused lazy-update sequence (see :mod:`emulator.fusion`); arrays must be disjoint."""
    n_rq, n_sub = _update_kernel(src, dst, res, theta, _I64(mul), _I64(shift), _I64(mode),
                                 bool(relu), _I64(s))
    return int(n_rq), int(n_sub)
