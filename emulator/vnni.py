"""Exact INT8 matrix products on AVX-512 VNNI (the ``vpdpbusd`` instruction), from numba.

``vpdpbusd`` adds to each of 16 int32 lanes the sum of four products of an unsigned byte and
a signed byte. With A biased to unsigned (``a + 128``, i.e. ``a ^ 0x80``) and every lane
started at ``-128 * sum_k B[k, j]``, a lane ends holding exactly ``sum_k A[i, k] * B[k, j]``:
every addition is int32 modulo 2**32 (the non-saturating form), and the final sum satisfies
``|sum| <= K * 2**14 < 2**31`` for ``K <= MAX_K``, so the modular result is the exact integer.
Nothing is rounded anywhere: it is integer arithmetic, like the reference's.

Layout: A is packed as rows of ``4 * Kq`` biased bytes (one int32 word per 4 consecutive k);
B as ``Kq`` rows of int32 words, word (q, j) holding B[4q .. 4q+3, j]. A 6 x 32
block of C lives in 12 vector registers for the whole K loop (``MR`` x ``NR``). Padding rows,
columns and k are zeros of B (and biased zeros of A) and are never stored.

Used only where the host has AVX-512 VNNI, numba compiles for the host CPU and the JIT is on
(:data:`AVAILABLE`); ``LPEMU_VNNI=0`` turns it off. Elsewhere the float path of
:mod:`emulator.kernels` computes the same integers.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from emulator import jit  # noqa: F401 - numba's numpy support without scipy

MR, NR = 6, 32  # C block rows x columns held in registers
MAX_K = 1 << 16  # |sum| <= K * 2**14 < 2**31 (with margin)

try:
    from llvmlite import ir
except ImportError:  # pragma: no cover - llvmlite is a numba dependency
    ir = None


def _detect() -> bool:
    if os.environ.get("LPEMU_VNNI", "").strip() == "0" or numba.config.DISABLE_JIT:
        return False
    if getattr(numba.config, "CPU_NAME", None):  # compiling for another CPU than this one
        return False
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features()
        return all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))
    except Exception:  # noqa: BLE001 - no way to tell: do not use it
        return False


AVAILABLE = _detect()
if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's own queue: its threads sleep when idle (OpenMP's spin, which steals a core from
    # whatever runs next on a busy machine)
    numba.config.THREADING_LAYER = "workqueue"


# ---------------------------------------------------------------------------- 512-bit vectors
class _Vec16(types.Type):
    """Sixteen int32 lanes (an LLVM <16 x i32>), for locals of the kernels only."""

    def __init__(self) -> None:
        super().__init__(name="Vec16i32")


vec16 = _Vec16()

if ir is not None:
    _I32 = ir.IntType(32)
    _V16 = ir.VectorType(_I32, 16)
    _V64 = ir.VectorType(ir.IntType(8), 64)

    @register_model(_Vec16)
    class _Vec16Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type) -> None:
            super().__init__(dmm, fe_type, _V16)


def _ptr(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx])


@intrinsic
def _vzero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16, None)
    return vec16(), codegen


@intrinsic
def _vload(typingctx, arr, idx):
    """The 16 int32 words of ``arr`` (an int32 array) from element ``idx`` (unaligned)."""
    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _V16.as_pointer()), align=1)
    return vec16(arr, idx), codegen


@intrinsic
def _vbroadcast(typingctx, arr, idx):
    """Word ``idx`` of ``arr`` (an int32 array) in all 16 lanes."""
    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        x = builder.load(builder.bitcast(p, _I32.as_pointer()), align=1)
        v = builder.insert_element(ir.Constant(_V16, ir.Undefined), x, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, None))
    return vec16(arr, idx), codegen


@intrinsic
def _vstore(typingctx, arr, idx, v):
    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _V16.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(arr, idx, v), codegen


@intrinsic
def _vdpbusd(typingctx, acc, a, b):
    """acc + sum of 4 products (unsigned byte of a) x (signed byte of b), per int32 lane,
    modulo 2**32 (``vpdpbusd``)."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_V16, [_V16, _V64, _V64])
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [args[0], builder.bitcast(args[1], _V64),
                                 builder.bitcast(args[2], _V64)])
    return vec16(vec16, vec16, vec16), codegen


# ---------------------------------------------------------------------------- packing
@njit(cache=True)
def pack_a(a, out, mp, kp):  # pragma: no cover - compiled
    """``out`` (uint8 ``[mp, kp]``) = ``a ^ 0x80`` (a + 128 as unsigned bytes), padded with
    0x80 (a biased zero) to ``kp`` columns and ``mp`` rows."""
    m, k = a.shape
    o = out.reshape(mp, kp)
    if a.strides[1] == 1 or k == 1:  # rows of a are contiguous: a plain copy per row
        for i in range(m):
            src = a[i]
            dst = o[i]
            for j in range(k):
                dst[j] = np.uint8(src[j]) ^ np.uint8(0x80)
    else:  # a is a transposed view: copy 64 x 64 tiles so both sides stay in cache
        for j0 in range(0, k, 64):
            j1 = min(j0 + 64, k)
            for i0 in range(0, m, 64):
                i1 = min(i0 + 64, m)
                for j in range(j0, j1):
                    for i in range(i0, i1):
                        o[i, j] = np.uint8(a[i, j]) ^ np.uint8(0x80)
    for i in range(m):
        for j in range(k, kp):
            o[i, j] = 0x80
    for i in range(m, mp):
        for j in range(kp):
            o[i, j] = 0x80


@njit(cache=True)
def pack_b(b, out, corr, ldb, kq):  # pragma: no cover - compiled
    """``out`` (int32 ``[kq, ldb]``): word (q, j) holds the bytes b[4q .. 4q+3, j]
    (little-endian, zero padded); ``corr[j] = -128 * sum_k b[k, j]`` (0 for padding
    columns) starts each lane so that the biased A cancels."""
    k, n = b.shape
    kfull = k // 4
    o = out.reshape(kq, ldb)
    corr[:] = 0
    for q in range(kq):  # the padding columns
        for c in range(n, ldb):
            o[q, c] = 0
    if b.strides[1] == 1 or k == 1:  # rows of b contiguous: interleave 4 rows
        for q in range(kfull):
            r0 = b[4 * q]
            r1 = b[4 * q + 1]
            r2 = b[4 * q + 2]
            r3 = b[4 * q + 3]
            wq = o[q]
            for c in range(n):
                x0, x1, x2, x3 = r0[c], r1[c], r2[c], r3[c]
                wq[c] = (np.int32(np.uint8(x0)) | (np.int32(np.uint8(x1)) << 8)
                         | (np.int32(np.uint8(x2)) << 16) | (np.int32(np.uint8(x3)) << 24))
                corr[c] -= (np.int32(x0) + np.int32(x1) + np.int32(x2) + np.int32(x3)) * 128
    else:  # columns of b contiguous (a transposed view): 4 consecutive bytes per word
        for c0 in range(0, n, 64):
            c1 = min(c0 + 64, n)
            for q in range(kfull):
                k0 = 4 * q
                for c in range(c0, c1):
                    x0, x1, x2, x3 = b[k0, c], b[k0 + 1, c], b[k0 + 2, c], b[k0 + 3, c]
                    o[q, c] = (np.int32(np.uint8(x0)) | (np.int32(np.uint8(x1)) << 8)
                               | (np.int32(np.uint8(x2)) << 16)
                               | (np.int32(np.uint8(x3)) << 24))
                    corr[c] -= (np.int32(x0) + np.int32(x1) + np.int32(x2)
                                + np.int32(x3)) * 128
    for q in range(kfull, kq):  # the last, partial group of k
        for c in range(n):
            w = np.int32(0)
            for t in range(4):
                if 4 * q + t < k:
                    x = b[4 * q + t, c]
                    w |= np.int32(np.uint8(x)) << (8 * t)
                    corr[c] -= np.int32(x) * 128
            o[q, c] = w


# ---------------------------------------------------------------------------- the product
@njit(cache=True)
def _store(t, c, ib, jb, m, n, trans, accumulate, direct, lo, hi, wrap):  # pragma: no cover
    """Write a computed block (``t``: MR x NR int32, row-major) into ``c``: rows ``ib..``,
    columns ``jb..`` (or transposed); fit to [lo, hi] unless ``direct``. Returns overflows."""
    novf = 0
    rows = min(MR, m - ib)
    cols = min(NR, n - jb)
    span = hi - lo + 1
    for r in range(rows):
        for j in range(cols):
            v = np.int64(t[r * NR + j])
            if trans:
                ci, cj = jb + j, ib + r
            else:
                ci, cj = ib + r, jb + j
            if direct:
                c[ci, cj] = v
                continue
            if accumulate:
                v += c[ci, cj]
            if v > hi or v < lo:
                novf += 1
                v = ((v - lo) % span) + lo if wrap else (hi if v > hi else lo)
            c[ci, cj] = v
    return novf


@njit(cache=True)
def _blocks(ap, bp, corr, c, cv, m, n, kq, ldb, trans, accumulate, direct, lo, hi, wrap, p0,
            p1, t):  # pragma: no cover - compiled
    """C blocks of column-panel pairs ``p0 .. p1`` (each NR columns of the padded product),
    every MR-row block. ``cv`` is C flat (its rows contiguous) when full blocks may be stored
    straight into it, else empty; ``t`` an MR x NR int32 scratch block. Returns overflows."""
    novf = 0
    mp = (m + MR - 1) // MR * MR
    for pp in range(p0, p1):
        jb = pp * NR
        k0 = _vload(corr, jb)
        k1 = _vload(corr, jb + 16)
        for ib in range(0, mp, MR):
            c00 = k0
            c01 = k1
            c10 = k0
            c11 = k1
            c20 = k0
            c21 = k1
            c30 = k0
            c31 = k1
            c40 = k0
            c41 = k1
            c50 = k0
            c51 = k1
            ao = ib * kq
            for q in range(kq):
                b0 = _vload(bp, q * ldb + jb)
                b1 = _vload(bp, q * ldb + jb + 16)
                a = _vbroadcast(ap, ao + q)
                c00 = _vdpbusd(c00, a, b0)
                c01 = _vdpbusd(c01, a, b1)
                a = _vbroadcast(ap, ao + kq + q)
                c10 = _vdpbusd(c10, a, b0)
                c11 = _vdpbusd(c11, a, b1)
                a = _vbroadcast(ap, ao + 2 * kq + q)
                c20 = _vdpbusd(c20, a, b0)
                c21 = _vdpbusd(c21, a, b1)
                a = _vbroadcast(ap, ao + 3 * kq + q)
                c30 = _vdpbusd(c30, a, b0)
                c31 = _vdpbusd(c31, a, b1)
                a = _vbroadcast(ap, ao + 4 * kq + q)
                c40 = _vdpbusd(c40, a, b0)
                c41 = _vdpbusd(c41, a, b1)
                a = _vbroadcast(ap, ao + 5 * kq + q)
                c50 = _vdpbusd(c50, a, b0)
                c51 = _vdpbusd(c51, a, b1)
            if direct and cv.size and ib + MR <= m and jb + NR <= n:
                o = ib * n + jb  # a full block straight into C's rows
                _vstore(cv, o, c00)
                _vstore(cv, o + 16, c01)
                _vstore(cv, o + n, c10)
                _vstore(cv, o + n + 16, c11)
                _vstore(cv, o + 2 * n, c20)
                _vstore(cv, o + 2 * n + 16, c21)
                _vstore(cv, o + 3 * n, c30)
                _vstore(cv, o + 3 * n + 16, c31)
                _vstore(cv, o + 4 * n, c40)
                _vstore(cv, o + 4 * n + 16, c41)
                _vstore(cv, o + 5 * n, c50)
                _vstore(cv, o + 5 * n + 16, c51)
                continue
            _vstore(t, 0, c00)
            _vstore(t, 16, c01)
            _vstore(t, NR, c10)
            _vstore(t, NR + 16, c11)
            _vstore(t, 2 * NR, c20)
            _vstore(t, 2 * NR + 16, c21)
            _vstore(t, 3 * NR, c30)
            _vstore(t, 3 * NR + 16, c31)
            _vstore(t, 4 * NR, c40)
            _vstore(t, 4 * NR + 16, c41)
            _vstore(t, 5 * NR, c50)
            _vstore(t, 5 * NR + 16, c51)
            novf += _store(t, c, ib, jb, m, n, trans, accumulate, direct, lo, hi, wrap)
    return novf


@njit(cache=True)
def _product(a, b, ap, bp, corr, c, cv, kq, mp, ldb, trans, accumulate, direct, lo, hi, wrap,
             t):  # pragma: no cover - compiled
    """Pack A and B, then every block on this thread (one call from Python)."""
    m = a.shape[0]
    n = b.shape[1]
    pack_a(a, ap, mp, kq * 4)
    pack_b(b, bp, corr, ldb, kq)
    return _blocks(ap.view(np.int32), bp, corr, c, cv, m, n, kq, ldb, trans, accumulate,
                   direct, lo, hi, wrap, 0, (n + NR - 1) // NR, t)


@njit(cache=True, parallel=True)
def _product_parallel(a, b, ap, bp, corr, c, cv, kq, mp, ldb, trans, accumulate, direct, lo,
                      hi, wrap, parts):  # pragma: no cover - compiled
    """:func:`_product` with the blocks of ``parts`` disjoint ranges of column panels on as
    many threads."""
    m = a.shape[0]
    n = b.shape[1]
    pack_a(a, ap, mp, kq * 4)
    pack_b(b, bp, corr, ldb, kq)
    api = ap.view(np.int32)
    npairs = (n + NR - 1) // NR
    counts = np.zeros(parts, np.int64)
    for w in prange(parts):
        t = np.empty(MR * NR, np.int32)
        counts[w] = _blocks(api, bp, corr, c, cv, m, n, kq, ldb, trans, accumulate, direct, lo,
                            hi, wrap, w * npairs // parts, (w + 1) * npairs // parts, t)
    return counts.sum()


def _cost(a: np.ndarray, b: np.ndarray, direct: bool, trans: bool) -> float:
    """Estimated nanoseconds of one orientation (measured on the project's Zen 4 cores):
    block work ~0.005 ns per padded multiply-add; packing B ~0.06 ns per element with
    contiguous rows, ~0.6 ns transposed; packing A ~0.02 ns and ~1 ns; storing C ~0.02 ns
    per element straight from registers, ~0.5 ns through the fitting (or transposing) loop."""
    m, k = a.shape
    n = b.shape[1]
    slots = -(-m // MR) * MR * -(-n // NR) * NR * k
    a_rows = a.strides[1] == a.itemsize or k == 1
    b_rows = b.strides[1] == b.itemsize or k == 1
    return (0.005 * slots + (0.06 if b_rows else 0.6) * k * n
            + (0.02 if a_rows else 1.0) * m * k + (0.02 if direct and not trans else 0.5) * m * n)


_ORIENT: dict[tuple, bool] = {}  # orientation chosen per (shape, strides, direct)
_T = np.empty(MR * NR, np.int32)
_NO_FLAT = np.empty(0, np.int32)


def gemm_into(c: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool, lo: int, hi: int,
              wrap: bool, threads: int, workspace) -> int:
    """C = fit((C if accumulate else 0) + A @ B) for int8 A [M, K] and B [K, N] (any
    strides), 1 <= K <= MAX_K; returns the overflow count. ``workspace(name, shape, dtype)``
    gives reusable buffers; ``threads`` is the most threads to use."""
    m, k = a.shape
    n = b.shape[1]
    # no fit: a fresh product whose K terms of at most 2**14 cannot leave [lo, hi]
    direct = not accumulate and k << 14 <= hi
    # the orientation that costs less (padding, and packing a transposed A is a slow byte
    # transpose): C = A B, or C^T = B^T A^T written back transposed
    key = (m, k, n, a.strides, b.strides, direct)
    trans = _ORIENT.get(key)
    if trans is None:
        if len(_ORIENT) >= 4096:
            _ORIENT.clear()
        trans = _ORIENT[key] = _cost(b.T, a.T, direct, True) < _cost(a, b, direct, False)
    if trans:
        a, b, m, n = b.T, a.T, n, m
    kq = -(-k // 4)
    mp, np_ = -(-m // MR) * MR, -(-n // NR) * NR
    ap = workspace("vnni_a", (mp * kq * 4,), np.uint8)
    ldb = np_ + 16  # words per packed row: not a multiple of 4 KiB (cache sets)
    bp = workspace("vnni_b", (kq * ldb,), np.int32)
    corr = workspace("vnni_c", (ldb,), np.int32)
    cv = c.reshape(-1) if not trans and c.flags.c_contiguous else _NO_FLAT
    parts = min(threads, np_ // NR)
    args = (a, b, ap, bp, corr, c, cv, kq, mp, ldb, trans, accumulate, direct, lo, hi, wrap)
    if parts > 1:
        numba.set_num_threads(parts)
        return int(_product_parallel(*args, parts))
    return int(_product(*args, _T))
