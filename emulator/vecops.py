"""Requantizer, vector-ALU, softmax-unit, lazy-update and accumulator-DMA instructions for the
compiled interpreter (emulator/scalar.py), so firmware runs them without a Python dispatch.

Each function mirrors one handler of :mod:`emulator.semantics` on the fast datapath: the same
operand checks, the same kernels of :mod:`emulator.kernels` (so the same values), the same
data-dependent counts and flags. It returns ``PY`` without changing anything when the handler
must run instead: any operand that would fault, a 16-bit operand at an odd address (the
kernels' views must be aligned here), or a static cost not yet known for this pc.

Static costs come from the timing model through Python, never from a formula here: the
handler's cost for a pc is stored in a row of ``ccost`` (``[key, counter increments...]``,
the row's index in the decoded program, -1 before the first run) after the handler first
runs it, keyed by the instruction's size operands (``n``, or rows and columns); a different
size is a miss (``PY``), and the handler runs and refills the row.

Operand fields come packed from the decoder (:data:`emulator.decoding.PACK`): column a holds
the scalar register numbers (5 bits each), b the exponent registers (4 bits each), c the enum
and flag fields (4 bits each), each in the order that table lists them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from emulator import jit  # noqa: F401 - numba's numpy support without scipy
from emulator.counters import (
    ACC_OVERFLOWS,
    CYCLES,
    INSTRUCTIONS,
    N_COUNTERS,
    RNG_DRAWS,
    SATURATIONS,
)
from emulator.decoding import (
    V_ALU,
    V_DMASTACC,
    V_EFIT,
    V_RQ,
    V_RQM,
    V_VCVT,
    V_VEXP,
    V_VLAZY,
    V_VNORMROW,
    V_VRMAX,
    V_VRSUM,
    V_VSEL,
    V_VSUBROW,
    V_VTOACC,
)
from emulator.kernels import (
    _EXP_LUT,
    _alu_kernel,
    _exp_kernel,
    _lazy_kernel,
    _norm_kernel,
    _requant,
    _sub_rows_kernel,
    _update_kernel,
)
from isa.conventions import EXP_E_FOLD, LAZY_SHIFT_FOLD, NORM_F_FOLD, RQ_SHIFT_FOLD

OK, PY = 0, 1
assert CYCLES == 1  # ccost rows: [key, counters...], so cycles are column 2
FLAG_ACC, FLAG_RQ, FLAG_ALU = 1, 2, 4

# ---------------------------------------------------------------------------- helpers
@njit(cache=True, inline="always")
def _fits(start, nbytes, size):  # pragma: no cover - compiled
    """[start, start + nbytes) inside [0, size), without overflow (nbytes >= 0)."""
    return start >= 0 and nbytes <= size and start <= size - nbytes


@njit(cache=True, inline="always")
def _reg(word, i):  # pragma: no cover - compiled
    return (word >> (5 * i)) & 31


@njit(cache=True, inline="always")
def _ereg(word, i):  # pragma: no cover - compiled
    return (word >> (4 * i)) & 15


@njit(cache=True, inline="always")
def _opt(word, i):  # pragma: no cover - compiled
    return (word >> (4 * i)) & 15


@njit(cache=True, inline="always")
def _key(n, rows):  # pragma: no cover - compiled
    """numba twin of :func:`size_key`."""
    if rows < 0:
        return n if (n >= 0 and n < (np.int64(1) << 62)) else np.int64(-1)
    if rows >= 0 and rows < (np.int64(1) << 31) and n >= 0 and n < (np.int64(1) << 31):
        return (rows << 31) | n
    return np.int64(-1)


@njit(cache=True, inline="always")
def _charge(counts, ccost, crow, pc, key):  # pragma: no cover - compiled
    """Add the static cost stored in row ``crow`` to ``pc`` if it is for ``key``; returns its
    cycles, or -1 when it is not (a miss: nothing added)."""
    if key < 0 or crow < 0 or ccost[crow, 0] != key:
        return np.int64(-1)
    for j in range(N_COUNTERS):
        v = ccost[crow, 1 + j]
        if v != 0:
            counts[pc, j] += v
    return ccost[crow, 2]  # the cycles column (CYCLES == 1)


@njit(cache=True, inline="always")
def _fit(v, lo, hi, span, wrap):  # pragma: no cover - compiled
    """(fitted value, 1 if it overflowed) for the accumulator width."""
    if v > hi or v < lo:
        if wrap:
            return ((v - lo) & (span - 1)) + lo, 1
        return (hi if v > hi else lo), 1
    return v, 0


@njit(cache=True, inline="always")
def rows_fit(base, rows, nb, stride, size):  # pragma: no cover - compiled
    """Whether ``rows`` rows of ``nb`` bytes from ``base``, ``stride`` apart, lie in
    ``[0, size)`` (all >= 0, rows and nb >= 1), without overflowing int64."""
    if base < 0 or nb > size or base > size - nb:
        return False
    return rows == 1 or stride == 0 or rows - 1 <= (size - nb - base) // stride


@njit(cache=True)
def _i16(spad, addr, n):  # pragma: no cover - compiled
    return spad[addr : addr + 2 * n].view(np.int16)


@njit(cache=True)
def _i8(spad, addr, n):  # pragma: no cover - compiled
    return spad[addr : addr + n].view(np.int8)


@njit(cache=True)
def _select_into(d, m, a, b):  # pragma: no cover - compiled
    n = d.shape[0]
    t = np.empty(n, np.int64)  # every input read before the output is written
    for i in range(n):
        t[i] = a[i] if m[i] != 0 else b[i]
    for i in range(n):
        d[i] = t[i]


@njit(cache=True)
def _rowmax_into(x, d):  # pragma: no cover - compiled
    rows, cols = x.shape
    t = np.empty(rows, np.int64)
    for i in range(rows):
        v = np.int64(x[i, 0])
        for j in range(1, cols):
            v = max(v, np.int64(x[i, j]))
        t[i] = v
    for i in range(rows):
        d[i] = t[i]


@njit(cache=True)
def _rowsum_into(x, acc, d0, lo, hi, span, wrap):  # pragma: no cover - compiled
    rows, cols = x.shape
    nover = 0
    for i in range(rows):
        s = np.int64(0)
        for j in range(cols):
            s += np.int64(x[i, j])
        v, o = _fit(s, lo, hi, span, wrap)
        nover += o
        acc[d0 + i] = v
    return nover


@njit(cache=True)
def _toacc_into(a, acc, d0, add, lo, hi, span, wrap):  # pragma: no cover - compiled
    nover = 0
    for i in range(a.shape[0]):
        v = np.int64(a[i])
        if add:
            v += acc[d0 + i]
        w, o = _fit(v, lo, hi, span, wrap)
        nover += o
        acc[d0 + i] = w
    return nover


@njit(cache=True)
def _store(flat, d):  # pragma: no cover - compiled
    for i in range(d.shape[0]):
        d[i] = flat[i]


# ---------------------------------------------------------------------------- instructions
@njit(cache=True)
def exec_vector(cls, code, a, b, c, crow, r, e, rng, counts, ccost, spad, acc, dram, pc, flags,
                acc_bits, acc_wrap):  # pragma: no cover - compiled
    """Execute the vector-class instruction at ``pc`` (cost row ``crow``): returns
    (status, flags, cycles)."""
    spad_n = spad.shape[0]
    acc_n = acc.shape[0]
    lo_acc = -(np.int64(1) << (acc_bits - 1))
    hi_acc = (np.int64(1) << (acc_bits - 1)) - 1
    span = np.int64(1) << acc_bits
    big = np.int64(1) << 31
    nothing = (PY, flags, np.int64(0))
    if cls == V_RQ or cls == V_RQM or cls == V_VCVT:
        n = r[_reg(a, 2)]
        shift = e[_ereg(b, 0)] - e[_ereg(b, 1)]  # any: results stop changing past the folds
        if n < 0:
            return nothing
        folded = max(np.int64(RQ_SHIFT_FOLD[0]), min(shift, np.int64(RQ_SHIFT_FOLD[1])))
        mode = _opt(c, 0)
        relu = _opt(c, 3 if cls == V_VCVT else 2) != 0
        mul = np.int64(1)
        if cls == V_RQM:
            mul = r[_reg(a, 3)]
            if mul < -big or mul >= big:
                return nothing
        ob = 1 + _opt(c, 2 if cls == V_VCVT else 1)
        sb = 1 + _opt(c, 1) if cls == V_VCVT else 4
        d0 = r[_reg(a, 0)]
        s0 = r[_reg(a, 1)]
        if not _fits(d0, n * ob, spad_n) or (ob == 2 and d0 & 1):
            return nothing
        if cls == V_VCVT:
            if not _fits(s0, n * sb, spad_n) or (sb == 2 and s0 & 1):
                return nothing
        elif not _fits(s0, n, acc_n):
            return nothing
        cyc = _charge(counts, ccost, crow, pc, _key(n, np.int64(-1)))
        if cyc < 0:
            return nothing
        lo = -(np.int64(1) << (8 * ob - 1))
        hi = (np.int64(1) << (8 * ob - 1)) - 1
        u = rng.view(np.uint64)
        seed = u[0]
        counter = u[1]
        if cls == V_VCVT:  # every source read before any result is written
            if sb == 2:
                src = _i16(spad, s0, n).astype(np.int64)
            else:
                src = _i8(spad, s0, n).astype(np.int64)
            if ob == 2:
                nsat = _requant(src, _i16(spad, d0, n), mul, folded, mode, lo, hi, relu, seed,
                                counter)
            else:
                nsat = _requant(src, _i8(spad, d0, n), mul, folded, mode, lo, hi, relu, seed,
                                counter)
        elif ob == 2:
            nsat = _requant(acc[s0 : s0 + n], _i16(spad, d0, n), mul, folded, mode, lo, hi,
                            relu, seed, counter)
        else:
            nsat = _requant(acc[s0 : s0 + n], _i8(spad, d0, n), mul, folded, mode, lo, hi,
                            relu, seed, counter)
        draws = n if mode >= 2 and shift > 0 else np.int64(0)
        rng[1] = rng[1] + draws
        counts[pc, RNG_DRAWS] += draws
        counts[pc, SATURATIONS] += nsat
        if nsat:
            flags |= FLAG_RQ
        return OK, flags, cyc
    if cls == V_EFIT:
        n = r[_reg(a, 1)]
        s0 = r[_reg(a, 0)]
        if n < 0 or not _fits(s0, n, acc_n):
            return nothing
        top = np.int64(0)
        for i in range(n):
            v = np.int64(acc[s0 + i])
            if v < 0:
                v = ~v
            if v > top:
                top = v
        need = np.int64(0)
        while top > 0:
            need += 1
            top >>= 1
        x = e[_ereg(b, 1)]
        v = x + need - (8 * (1 + _opt(c, 0)) - 1)
        if x < -big or x >= big or v < -big or v >= big:
            return nothing
        cyc = _charge(counts, ccost, crow, pc, _key(n, np.int64(-1)))
        if cyc < 0:
            return nothing
        e[_ereg(b, 0)] = v
        return OK, flags, cyc
    if cls == V_ALU or cls == V_VSEL:
        n = r[_reg(a, 4)] if cls == V_VSEL else r[_reg(a, 3 if code < 8 else 2)]
        eb = 1 + _opt(c, 0)
        if n < 0:
            return nothing
        d0 = r[_reg(a, 0)]
        a0 = r[_reg(a, 2)] if cls == V_VSEL else r[_reg(a, 1)]
        b0 = a0
        m0 = a0
        shift = np.int64(0)
        if cls == V_VSEL:
            m0 = r[_reg(a, 1)]
            b0 = r[_reg(a, 3)]
        elif code < 6:
            b0 = r[_reg(a, 2)]
        elif code < 8:
            shift = r[_reg(a, 2)]
            if shift < 0:
                return nothing
        nb = n * eb
        for x0 in (d0, a0, b0, m0):
            if not _fits(x0, nb, spad_n) or (eb == 2 and x0 & 1):
                return nothing
        cyc = _charge(counts, ccost, crow, pc, _key(n, np.int64(-1)))
        if cyc < 0:
            return nothing
        if cls == V_VSEL:
            if eb == 2:
                _select_into(_i16(spad, d0, n), _i16(spad, m0, n), _i16(spad, a0, n),
                             _i16(spad, b0, n))
            else:
                _select_into(_i8(spad, d0, n), _i8(spad, m0, n), _i8(spad, a0, n),
                             _i8(spad, b0, n))
            return OK, flags, cyc
        if eb == 2:
            nsat = _alu_kernel(code, _i16(spad, d0, n), _i16(spad, a0, n), _i16(spad, b0, n),
                               np.int64(-32768), np.int64(32767), shift)
        else:
            nsat = _alu_kernel(code, _i8(spad, d0, n), _i8(spad, a0, n), _i8(spad, b0, n),
                               np.int64(-128), np.int64(127), shift)
        if nsat:
            flags |= FLAG_ALU
            counts[pc, SATURATIONS] += nsat
        return OK, flags, cyc
    if cls == V_VRMAX or cls == V_VRSUM or cls == V_VSUBROW or cls == V_VNORMROW:
        ir = 3 if cls == V_VSUBROW or cls == V_VNORMROW else 2
        rows = r[_reg(a, ir)]
        cols = r[_reg(a, ir + 1)]
        if rows < 0 or cols < 0 or rows >= big or cols >= big:
            return nothing
        eb = 1 + _opt(c, 0)
        n = rows * cols
        x0 = r[_reg(a, 1)]
        d0 = r[_reg(a, 0)]
        xb = 2 if cls == V_VNORMROW else eb
        if not _fits(x0, n * xb, spad_n) or (xb == 2 and x0 & 1):
            return nothing
        if cls == V_VRMAX:
            if (rows and not cols) or not _fits(d0, rows * eb, spad_n) or (eb == 2 and d0 & 1):
                return nothing
        elif cls == V_VRSUM:
            if not _fits(d0, rows, acc_n):
                return nothing
        elif cls == V_VSUBROW:
            b0 = r[_reg(a, 2)]
            if not _fits(b0, rows * eb, spad_n) or not _fits(d0, n * eb, spad_n) \
                    or (eb == 2 and (b0 & 1 or d0 & 1)):
                return nothing
        else:
            s0 = r[_reg(a, 2)]
            if not _fits(s0, rows, acc_n) or not _fits(d0, n * eb, spad_n) \
                    or (eb == 2 and d0 & 1):
                return nothing
        cyc = _charge(counts, ccost, crow, pc, _key(cols, rows))
        if cyc < 0:
            return nothing
        nsat = 0
        if cls == V_VRMAX:
            if rows:
                if eb == 2:
                    _rowmax_into(_i16(spad, x0, n).reshape(rows, cols), _i16(spad, d0, rows))
                else:
                    _rowmax_into(_i8(spad, x0, n).reshape(rows, cols), _i8(spad, d0, rows))
            return OK, flags, cyc
        if cls == V_VRSUM:
            if eb == 2:
                nover = _rowsum_into(_i16(spad, x0, n).reshape(rows, cols), acc, d0, lo_acc,
                                     hi_acc, span, acc_wrap)
            else:
                nover = _rowsum_into(_i8(spad, x0, n).reshape(rows, cols), acc, d0, lo_acc,
                                     hi_acc, span, acc_wrap)
            if nover:
                flags |= FLAG_ACC
                counts[pc, ACC_OVERFLOWS] += nover
            return OK, flags, cyc
        lo = -(np.int64(1) << (8 * eb - 1))
        hi = (np.int64(1) << (8 * eb - 1)) - 1
        out = np.empty((rows, cols), np.int64)
        if cls == V_VSUBROW:
            b0 = r[_reg(a, 2)]
            if eb == 2:
                nsat = _sub_rows_kernel(_i16(spad, x0, n).reshape(rows, cols),
                                        _i16(spad, b0, rows), out, lo, hi)
            else:
                nsat = _sub_rows_kernel(_i8(spad, x0, n).reshape(rows, cols),
                                        _i8(spad, b0, rows), out, lo, hi)
        else:
            s0 = r[_reg(a, 2)]
            f = max(np.int64(NORM_F_FOLD[0]), min(-e[_ereg(b, 0)], np.int64(NORM_F_FOLD[1])))
            nsat = _norm_kernel(_i16(spad, x0, n).reshape(rows, cols), acc[s0 : s0 + rows], out,
                                f, lo, hi)
        if eb == 2:
            _store(out.reshape(n), _i16(spad, d0, n))
        else:
            _store(out.reshape(n), _i8(spad, d0, n))
        if nsat:
            flags |= FLAG_ALU
            counts[pc, SATURATIONS] += nsat
        return OK, flags, cyc
    if cls == V_VTOACC:
        n = r[_reg(a, 2)]
        eb = 1 + _opt(c, 0)
        s0 = r[_reg(a, 1)]
        d0 = r[_reg(a, 0)]
        if n < 0 or not _fits(s0, n * eb, spad_n) or not _fits(d0, n, acc_n) \
                or (eb == 2 and s0 & 1):
            return nothing
        cyc = _charge(counts, ccost, crow, pc, _key(n, np.int64(-1)))
        if cyc < 0:
            return nothing
        add = _opt(c, 1) != 0
        if eb == 2:
            nover = _toacc_into(_i16(spad, s0, n), acc, d0, add, lo_acc, hi_acc, span, acc_wrap)
        else:
            nover = _toacc_into(_i8(spad, s0, n), acc, d0, add, lo_acc, hi_acc, span, acc_wrap)
        if nover:
            flags |= FLAG_ACC
            counts[pc, ACC_OVERFLOWS] += nover
        return OK, flags, cyc
    if cls == V_VEXP:
        n = r[_reg(a, 2)]
        ex = e[_ereg(b, 0)]
        x0 = r[_reg(a, 1)]
        d0 = r[_reg(a, 0)]
        if n < 0 or not _fits(x0, 2 * n, spad_n) or not _fits(d0, 2 * n, spad_n) \
                or x0 & 1 or d0 & 1:
            return nothing
        ex = max(np.int64(EXP_E_FOLD[0]), min(ex, np.int64(EXP_E_FOLD[1])))
        cyc = _charge(counts, ccost, crow, pc, _key(n, np.int64(-1)))
        if cyc < 0:
            return nothing
        out = np.empty(n, np.int64)
        _exp_kernel(_i16(spad, x0, n), out, 8 - ex, _EXP_LUT)
        _store(out, _i16(spad, d0, n))
        return OK, flags, cyc
    if cls == V_VLAZY:
        n = r[_reg(a, 2)]
        s = e[_ereg(b, 0)] - e[_ereg(b, 1)]
        t0 = r[_reg(a, 0)]
        a0 = r[_reg(a, 1)]
        if n < 0 or s < 0 or not _fits(t0, n, spad_n) or not _fits(a0, 2 * n, spad_n) \
                or a0 & 1:
            return nothing
        if t0 < a0 + 2 * n and a0 < t0 + n:
            return nothing  # overlapping operands: the handler's general path
        cyc = _charge(counts, ccost, crow, pc, _key(n, np.int64(-1)))
        if cyc < 0:
            return nothing
        nsat = _lazy_kernel(_i8(spad, t0, n), _i16(spad, a0, n), min(s, np.int64(LAZY_SHIFT_FOLD)))
        if nsat:
            flags |= FLAG_ALU
            counts[pc, SATURATIONS] += nsat
        return OK, flags, cyc
    # dmaldacc / dmastacc (DMA overlap runs never use the interpreter)
    to_dram = cls == V_DMASTACC
    rows = r[_reg(a, 2)]
    cols = r[_reg(a, 3)]
    ds = r[_reg(a, 4)]
    da = r[_reg(a, 0)] if to_dram else r[_reg(a, 1)]
    aa = r[_reg(a, 1)] if to_dram else r[_reg(a, 0)]
    if rows < 0 or cols < 0 or ds < 0 or rows >= big or cols >= big:
        return nothing
    nb = 4 * cols
    if rows and nb:
        if not rows_fit(da, rows, nb, ds, dram.shape[0]):
            return nothing
        if to_dram and rows > 1 and ds < nb:
            return nothing
    n = rows * cols
    if not _fits(aa, n, acc_n):
        return nothing
    cyc = _charge(counts, ccost, crow, pc, _key(cols, rows))
    if cyc < 0:
        return nothing
    if rows and cols:
        if to_dram:
            for i in range(rows):
                for j in range(cols):
                    v = np.int64(acc[aa + i * cols + j])
                    p = da + i * ds + 4 * j
                    for t in range(4):
                        dram[p + t] = np.uint8((v >> (8 * t)) & 0xFF)
        else:
            vals = np.empty(n, np.int64)  # every source read before the block is written
            for i in range(rows):
                for j in range(cols):
                    p = da + i * ds + 4 * j
                    w = (np.int64(dram[p]) | (np.int64(dram[p + 1]) << 8)
                         | (np.int64(dram[p + 2]) << 16) | (np.int64(dram[p + 3]) << 24))
                    if w >= big:
                        w -= np.int64(1) << 32
                    vals[i * cols + j] = w
            nover = 0
            for i in range(n):
                v, o = _fit(vals[i], lo_acc, hi_acc, span, acc_wrap)
                nover += o
                acc[aa + i] = v
            if nover:
                flags |= FLAG_ACC
                counts[pc, ACC_OVERFLOWS] += nover
    return OK, flags, cyc


@njit(cache=True)
def exec_update(a0, b0, c0, a2, b2, r0, r1, r2, r, e, counts, ccost, spad, acc, pc, flags,
                steps, step_stop, cycles, cycle_limit, break_pc):  # pragma: no cover - compiled
    """The fused lazy update (emulator/fusion.py) starting at the ``rqm`` at ``pc`` (cost
    rows ``r0, r1, r2`` of it and the next two), when fusing it is indistinguishable from
    stepping it; returns (done, flags, cycles added). ``a0, b0, c0`` are the rqm's packed
    fields, ``a2, b2`` the vlazy's."""
    n = r[_reg(a0, 2)]
    mul = r[_reg(a0, 3)]
    shift = e[_ereg(b0, 0)] - e[_ereg(b0, 1)]
    s = e[_ereg(b2, 0)] - e[_ereg(b2, 1)]
    u = r[_reg(a0, 0)]
    src = r[_reg(a0, 1)]
    res = r[_reg(a2, 1)]
    t = r[_reg(a2, 0)]
    no = (False, flags, np.int64(0))
    big = np.int64(1) << 31
    if not (n >= 0 and 0 < shift <= 31 and 0 <= s <= 15 and -big <= mul < big
            and _fits(src, n, acc.shape[0]) and _fits(u, 2 * n, spad.shape[0])
            and _fits(res, 2 * n, spad.shape[0]) and _fits(t, n, spad.shape[0])
            and not (u & 1) and not (res & 1)):
        return no
    if (u < res + 2 * n and res < u + 2 * n) or (u < t + n and t < u + 2 * n) \
            or (res < t + n and t < res + 2 * n):
        return no
    if steps + 2 >= step_stop or break_pc == pc + 1 or break_pc == pc + 2:
        return no
    key = _key(n, np.int64(-1))
    if key < 0 or r0 < 0 or r1 < 0 or r2 < 0 or ccost[r0, 0] != key or ccost[r1, 0] != key \
            or ccost[r2, 0] != key:
        return no
    c_rq = ccost[r0, 2]
    c_sub = ccost[r1, 2]
    if cycles + c_rq >= cycle_limit or cycles + c_rq + c_sub >= cycle_limit:
        return no
    n_rq, n_sub, n_lz = _update_kernel(acc[src : src + n], _i16(spad, u, n),
                                       _i16(spad, res, n), _i8(spad, t, n), mul, shift,
                                       _opt(c0, 0), _opt(c0, 2) != 0, s)
    total = np.int64(0)
    for i in range(3):
        row = r0 if i == 0 else r1 if i == 1 else r2
        for j in range(N_COUNTERS):
            v = ccost[row, 1 + j]
            if v != 0:
                counts[pc + i, j] += v
        total += ccost[row, 2]
        if i:
            counts[pc + i, INSTRUCTIONS] += 1
    if n_rq:
        counts[pc, SATURATIONS] += n_rq
        flags |= FLAG_RQ
    if n_sub:
        counts[pc + 1, SATURATIONS] += n_sub
        flags |= FLAG_ALU
    if n_lz:
        counts[pc + 2, SATURATIONS] += n_lz
        flags |= FLAG_ALU
    return True, flags, total
