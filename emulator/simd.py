"""Loop bodies written as 16-lane LLVM vector code (numba intrinsics), for kernels whose
element arithmetic numba would otherwise widen to 64 bits (8 lanes).

:func:`update16` is sixteen elements of the fused lazy update (``rqm``; ``vsub``; ``vlazy``,
see :func:`emulator.kernels.update_into`): the requantizer product in 64-bit lanes (as the
scalar code), everything after it in 32-bit lanes, where every intermediate provably fits:
``|res - q| <= 2**16``, ``|theta + d| <= 2**15 + 128``, ``|(tn - theta) << s| <= 255 * 2**15``
(the caller's ``s`` is at most 15, as the fused sequence requires).
The requantizer product runs in 32-bit lanes for a block whose sources are all small enough
that ``|src * mul + add| < 2**31`` (checked per block), else in 64-bit lanes.
It computes exactly what the scalar loop computes, element for element (tests compare them on
random and edge inputs). Loads and stores are unaligned; all inputs of the sixteen elements are
read before any output is written, and the callers pass disjoint arrays.

Available whenever numba compiles (LLVM lowers the vectors to whatever the host has);
``NUMBA_DISABLE_JIT=1`` uses the scalar loop.
"""

from __future__ import annotations

import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from emulator import jit  # noqa: F401 - numba's numpy support without scipy

AVAILABLE = not numba.config.DISABLE_JIT

try:
    from llvmlite import ir
except ImportError:  # pragma: no cover - llvmlite is a numba dependency
    ir = None


def _vec(width: int, n: int = 16):
    return ir.VectorType(ir.IntType(width), n)


def _splat(builder, x, width: int, n: int = 16):
    """A scalar (any integer width) converted to ``width`` bits in all ``n`` lanes."""
    v = x
    if x.type.width > width:
        v = builder.trunc(x, ir.IntType(width))
    elif x.type.width < width:
        v = builder.sext(x, ir.IntType(width))
    vec = builder.insert_element(ir.Constant(_vec(width, n), ir.Undefined), v,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vec, ir.Constant(_vec(width, n), ir.Undefined),
                                  ir.Constant(_vec(32, n), None))


def _const(value: int, width: int, n: int = 16):
    return ir.Constant(_vec(width, n), [value] * n)


def _clamp(builder, v, lo, hi):
    v = builder.select(builder.icmp_signed("<", v, lo), lo, v)
    return builder.select(builder.icmp_signed(">", v, hi), hi, v)


def _count_ne(builder, a, b):
    """Lanes where ``a != b``, as an i64 count."""
    mask = builder.bitcast(builder.icmp_signed("!=", a, b), ir.IntType(16))
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.IntType(16), [ir.IntType(16)]),
                                        "llvm.ctpop.i16")
    return builder.zext(builder.call(fn, [mask]), ir.IntType(64))


def _ptr(context, builder, arrty, arr, idx, width: int):
    ary = context.make_array(arrty)(context, builder, arr)
    p = cgutils.get_item_pointer(context, builder, arrty, ary, [idx])
    return builder.bitcast(p, _vec(width).as_pointer())


@intrinsic
def update16(typingctx, src, dst, res, theta, i, mul, add, shift, relu, s, half, bound):
    """Elements ``i .. i+15`` of the fused update; returns ``n_rq | n_sub << 21 | n_lz << 42``
    (the saturation counts of the requantizer, the subtract and the parameter). ``src`` is
    int32, ``dst`` and ``res`` int16, ``theta`` int8; ``relu`` a boolean; the rest int64
    scalars, with ``bound`` = (2**31 - 1 - |add|) // max(|mul|, 1), at most 2**31 - 1."""
    def codegen(context, builder, sig, args):
        a_src, a_dst, a_res, a_th, idx, mul_, add_, shift_, relu_, s_, half_, bound_ = args
        ts = sig.args
        x = builder.load(_ptr(context, builder, ts[0], a_src, idx, 32), align=1)
        rv = builder.load(_ptr(context, builder, ts[2], a_res, idx, 16), align=1)
        tv = builder.load(_ptr(context, builder, ts[3], a_th, idx, 8), align=1)
        # rqm: y = (src * mul + add) >> shift, relu, saturate to INT16. In 32-bit lanes when
        # every |src| <= bound = (2**31 - 1 - |add|) // |mul| (the caller's ``bound``, which
        # makes |src * mul + add| < 2**31), else in 64-bit lanes, as the scalar code.
        relu_v = _splat_bool(builder, context.cast(builder, relu_, ts[8], types.boolean))
        bnd = _splat(builder, bound_, 32)
        ok = builder.and_(builder.icmp_signed("<=", x, bnd),
                          builder.icmp_signed(">=", x, builder.neg(bnd)))
        small = builder.icmp_unsigned("==", builder.bitcast(ok, ir.IntType(16)),
                                      ir.Constant(ir.IntType(16), 0xFFFF))
        with builder.if_else(small) as (narrow, wide):
            with narrow:
                y32 = builder.ashr(builder.add(builder.mul(x, _splat(builder, mul_, 32)),
                                               _splat(builder, add_, 32)),
                                   _splat(builder, shift_, 32))
                y32 = builder.select(builder.and_(builder.icmp_signed("<", y32, _const(0, 32)),
                                                  relu_v), _const(0, 32), y32)
                q_n = _clamp(builder, y32, _const(-32768, 32), _const(32767, 32))
                c_n = _count_ne(builder, q_n, y32)
                b_n = builder.block
            with wide:
                y = builder.ashr(builder.add(builder.mul(builder.sext(x, _vec(64)),
                                                         _splat(builder, mul_, 64)),
                                             _splat(builder, add_, 64)),
                                 _splat(builder, shift_, 64))
                y = builder.select(builder.and_(builder.icmp_signed("<", y, _const(0, 64)),
                                                relu_v), _const(0, 64), y)
                q64 = _clamp(builder, y, _const(-32768, 64), _const(32767, 64))
                c_w = _count_ne(builder, q64, y)
                q_w = builder.trunc(q64, _vec(32))
                b_w = builder.block
        q = builder.phi(_vec(32))
        q.add_incoming(q_n, b_n)
        q.add_incoming(q_w, b_w)
        n_rq = builder.phi(ir.IntType(64))
        n_rq.add_incoming(c_n, b_n)
        n_rq.add_incoming(c_w, b_w)
        # vsub, 32-bit lanes: a = sat16(res - q)
        r = builder.sub(builder.sext(rv, _vec(32)), q)
        a = _clamp(builder, r, _const(-32768, 32), _const(32767, 32))
        n_sub = _count_ne(builder, a, r)
        # vlazy: tn = sat8(t + ((a + half) >> s)); res = a - ((tn - t) << s)
        t = builder.sext(tv, _vec(32))
        sv = _splat(builder, s_, 32)
        d = builder.ashr(builder.add(a, _splat(builder, half_, 32)), sv)
        v = builder.add(t, d)
        tn = _clamp(builder, v, _const(-128, 32), _const(127, 32))
        n_lz = _count_ne(builder, tn, v)
        rn = builder.sub(a, builder.shl(builder.sub(tn, t), sv))
        builder.store(builder.trunc(q, _vec(16)),
                      _ptr(context, builder, ts[1], a_dst, idx, 16), align=1)
        builder.store(builder.trunc(rn, _vec(16)),
                      _ptr(context, builder, ts[2], a_res, idx, 16), align=1)
        builder.store(builder.trunc(tn, _vec(8)),
                      _ptr(context, builder, ts[3], a_th, idx, 8), align=1)
        i64 = ir.IntType(64)
        return builder.or_(builder.or_(n_rq, builder.shl(n_sub, ir.Constant(i64, 21))),
                           builder.shl(n_lz, ir.Constant(i64, 42)))

    return types.int64(src, dst, res, theta, i, mul, add, shift, relu, s, half, bound), codegen


def _splat_bool(builder, bit):
    vec = builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(1), 16), ir.Undefined),
                                 bit, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vec, ir.Constant(ir.VectorType(ir.IntType(1), 16),
                                                   ir.Undefined),
                                  ir.Constant(_vec(32), None))
