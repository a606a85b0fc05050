"""The parameter update on the chip: the optimizer's step, its application by the update mode,
and (``bits.weight_exponent: dynamic``) the exponent of each parameter tensor chosen by the chip.

For one tile of ``nw`` elements of parameter ``p`` (INT8 or INT16 ``W`` at exponent e_w) whose
gradient sum over the batch is in the accumulator (``DW``, exponent e[e_grad]):

1. **Step** ``U`` on the *target grid*: the fine grid e_w - acc_shift (INT16; lazy, shadow)
   or the weights' grid e_w (the weights' width; plain, stochastic).
   - SGD: ``U = rqm(dW, mu)`` with lr/B = mu 2**-t, rounded to nearest (lazy, plain) or with
     uniform dither (shadow, stochastic); with momentum ``VL = round_dither(beta VL) + U``
     and the step is VL.
   - Adam (:func:`adam_step`): INT16 moments with their own dynamic exponents.
2. **Mode**: lazy: ``LZ -= step`` then the lazy move (``vlazy`` for INT8 weights, the
   same arithmetic as seven vector instructions for INT16 weights); shadow (BinaryConnect, 002):
   ``LZ -= step`` on the shadow copy, then ``W = readout(LZ)`` (nearest or uniform dither);
   plain and stochastic: ``W -= step``.
3. **Dynamic exponent** (:func:`param_exponent`, after the last tile): raise e_w by one when
   the weight write saturated in this update, lower it by one when every weight lies in
   [-2**(B-3), 2**(B-3)), and re-grid the weights and their state (docs/training.md).
"""

from __future__ import annotations

import math

from programs.compiler import qbp
from programs.compiler.emit import (
    E_LZ,
    E_T0,
    E_T1,
    E_X,
    R_MU,
    R_T0,
    R_T1,
    R_X0,
    R_X1,
    Asm,
    efit,
    ldw_abs,
    rq,
    stw_abs,
    vcvt,
)
from programs.compiler.exps import X_W
from programs.compiler.layout import Layout, Param

MOMENTUM_FRAC_BITS = 15  # the momentum factor is a Q15 multiplier: beta_q = round(beta 2**15)
ADAM_FRAC_BITS = 15  # Adam's betas are Q15: beta_q = round(beta 2**15), 1 - beta = 2**15 - beta_q
LANES = 16  # Adam's moment sums: [R, 16] rows times 16 x 16 diagonal constants
DIAG_BYTES = 2 * LANES * LANES  # one INT16 16 x 16 diagonal matrix
RSQRT_K = 29  # vrsqrt's K = -e_v - 2 e_r is 28 or 29 (y(1) = 2**14.5 at most: no saturation)
EPS_MANT_BITS = 15  # Adam's eps**2 as an integer of 15 bits times a power of two


def has_momentum(lay: Layout) -> bool:
    return lay.spec.update.momentum != 0


def momentum_q15(momentum: float) -> int:
    return round(momentum * 2**MOMENTUM_FRAC_BITS)


def beta_q15(beta: float) -> int:
    return round(beta * 2**ADAM_FRAC_BITS)


def eps2_parts(lay: Layout) -> tuple[int, int]:
    """(mantissa, exponent) of (B eps)**2 = mantissa 2**exponent, mantissa in [2**14, 2**15),
    rounded to nearest (the gradient in the accumulator is the batch sum, B times the mean:
    the chip's eps is B eps). (0, 0) for eps = 0."""
    eps = lay.spec.update.adam.eps * lay.spec.batch_size
    if eps == 0:
        return 0, 0
    e2 = eps * eps
    k = math.floor(math.log2(e2)) - (EPS_MANT_BITS - 1)
    mant = round(e2 / 2.0**k)
    if mant >= 2**EPS_MANT_BITS:
        mant, k = mant // 2, k + 1
    return mant, k


def rnd_of(lay: Layout) -> str:
    """Rounding of the step onto the target grid: nearest (lazy, plain) or uniform dither
    (stochastic, and the shadow copy's update: 002's BinaryConnect)."""
    return "nearest" if lay.spec.update.mode in ("lazy", "plain") else "uniform"


def fine(lay: Layout) -> bool:
    """Whether the step lives on the fine grid (lazy, shadow) rather than the weights'."""
    return lay.spec.update.mode in ("lazy", "shadow")


def _step_dt(lay: Layout, p: Param) -> str:
    return "i16" if fine(lay) else p.dt


# ------------------------------------------------------------------------------ the update
def update(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int, tag: str,
           e_grad: int = E_T0, tile: int = 0) -> None:
    """The update of ``nw`` elements of ``p`` at the addresses ``at`` (``W`` and its state) from
    the gradient in ``DW`` (exponent e[e_grad]); ``tile`` numbers the row tile (0 first)."""
    spec = lay.spec
    sp = lay.sp
    mode = spec.update.mode
    what = f"b{p.layer.pos}" if p.is_bias else f"W{p.layer.pos}"
    extra = ""
    if has_momentum(lay):
        extra = f", momentum {spec.update.momentum}"
    if lay.adam:
        extra = ", Adam"
    asm.label(f"train.upd.l{p.layer.pos}{tag}", f"{mode} update of {what}{tag}" + extra)
    if lay.dynamic and tile == 0:  # saturation flags (OR) and the widest weight, per tensor
        asm.raw(f"li r{R_X0}, 0")
        asm.raw(f"li r{R_X1}, 0")
    if lay.adam:
        adam_step(asm, lay, p, at, nw, tile, e_grad, tag)
        step = sp["U"]
    else:
        step = sgd_step(asm, lay, p, at, nw, e_grad)
    apply_step(asm, lay, p, at, nw, step)
    if lay.dynamic:
        scan(asm, lay, p, at, nw)


def sgd_step(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int,
             e_grad: int) -> int:
    """U = round(lr g) on the target grid [VL = round_dither(beta VL) + U]; returns the address
    of the step (U or VL)."""
    spec, sp = lay.spec, lay.sp
    qmul, qshift = qbp.update_scale(lay)  # mu (r22), or mu * M of a general QBP step
    asm.raw(f"eaddi e{E_T1}, e{e_grad}, {-lay.mu_shift - qshift}")  # exponent of dW * mu
    rnd = rnd_of(lay)
    if fine(lay):
        lay.exps.addi(asm, E_LZ, p.ename, -lay.fine_shift(p))  # the fine grid
        e_t, dt = E_LZ, "i16"
    else:
        e_t, dt = lay.exps.load(asm, p.ename, X_W), p.dt
    rq(asm, sp["U"], lay.acc["DW"], nw, e_t, E_T1, rnd, dt, mnemonic="rqm", mul=qmul)
    if not has_momentum(lay):
        return sp["U"]
    # VL = round_dither(beta VL) + U on the target grid. dW in the accumulator is dead: VL
    # passes through it for the Q15 multiply. Dithered rounding lets small velocities decay to
    # zero (round-to-nearest would hold +-1 forever).
    vl = at["VL"]
    asm.op("vtoacc", lay.acc["DW"], vl, nw, dt=dt)
    asm.raw(f"eaddi e{E_T1}, e{e_t}, {MOMENTUM_FRAC_BITS}")  # shift 15: the Q15 beta
    beta = asm.const(momentum_q15(spec.update.momentum), set())
    rq(asm, vl, lay.acc["DW"], nw, E_T1, e_t, "uniform", dt, mnemonic="rqm", mul=beta)
    asm.op("vadd", vl, vl, sp["U"], nw, dt=dt)
    return vl


def apply_step(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int,
               step: int) -> None:
    """Apply the step by the update mode (the target grid's exponent is in E_LZ for lazy and
    shadow)."""
    spec = lay.spec
    mode = spec.update.mode
    w = at["W"]
    if mode in ("lazy", "shadow"):
        lz = at["LZ"]
        asm.op("vsub", lz, lz, step, nw, dt="i16")
        ew = lay.exps.load(asm, p.ename, X_W)
        if mode == "lazy" and p.bits == 8:
            r = [asm.const(v, set()) for v in (w, lz, nw)]
            _flags_before(asm, lay)
            asm.raw(f"vlazy r{r[0]}, r{r[1]}, r{r[2]}, e{ew}, e{E_LZ}")
            _flags_after(asm, lay)
        elif mode == "lazy":
            lazy16(asm, lay, p, w, lz, nw, ew)
        else:
            _flags_before(asm, lay)
            vcvt(asm, w, lz, nw, ew, E_LZ, spec.update.readout, "i16", p.dt)
            _flags_after(asm, lay)
    else:
        _flags_before(asm, lay)
        asm.op("vsub", w, w, step, nw, dt=p.dt)
        _flags_after(asm, lay)


def lazy16(asm: Asm, lay: Layout, p: Param, w: int, lz: int, nw: int, ew: int) -> None:
    """``vlazy``'s arithmetic for INT16 parameters (the instruction takes INT8 ones), s =
    :meth:`Layout.fine_shift` >= 0: d = round(a / 2**s) (ties up; d = a for s = 0),
    tn = sat16(theta + d), a -= (tn - theta) 2**s. For s >= 1 the residual is updated by
    subtracting (tn - theta) 2**(s-1) twice: every partial result fits INT16
    (|tn - theta| <= |d| <= 2**(15-s), same sign as d)."""
    s = lay.fine_shift(p)
    u = lay.sp["U"]
    vcvt(asm, u, lz, nw, ew, E_LZ, "nearest", "i16", "i16")  # d
    _flags_before(asm, lay)
    asm.op("vadd", u, w, u, nw, dt="i16")  # tn = sat16(theta + d)
    _flags_after(asm, lay)
    asm.op("vsub", w, u, w, nw, dt="i16")  # moved = tn - theta (exact)
    if s > 1:
        asm.op("vsll", w, w, s - 1, nw, dt="i16")  # moved 2**(s-1) (exact)
    asm.op("vsub", lz, lz, w, nw, dt="i16")
    if s > 0:
        asm.op("vsub", lz, lz, w, nw, dt="i16")
    asm.op("vmax", w, u, u, nw, dt="i16")  # W = tn


# ------------------------------------------------------------------------------ Adam
def adam_step(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int, tile: int,
              e_grad: int, tag: str) -> None:
    """U = alpha_t m r on the target grid (docs/training.md, "Adam on the chip"):

    g = rq(dW) INT16 (efit exponent e_g); g2 = rq(g * g) INT16 (``vwmul``, efit e_g2);
    m' = rq(beta1_q m + (2**15 - beta1_q) g) and v' likewise, each sum exact in the accumulator
    (two GEMMs of the vectors as [R, 16] rows by diagonal Q15 constants, on the common exponent
    max(e_m, e_g), both brought there by nearest ``vcvt``) and requantized onto a fresh efit
    exponent with uniform dither;
    r = vrsqrt(sat16(v' + eps_q)) (eps_q = (B eps)**2 on v's grid rounded up: at least one
    step, so v' + eps_q > 0); U = rqm(m' r, mu_t)
    with mu_t the host's per-step multiplier of alpha_t = lr sqrt(1 - beta2^t) / (1 - beta1^t).
    The moments' exponents are one word per tile in DRAM."""
    sp, acc = lay.sp, lay.acc
    dw = acc["DW"]
    t0, t1, t2 = sp["AT"], sp["AT"] + 2 * nw, sp["AT"] + 4 * nw
    em = lay.dram[p.key("EM")] + 4 * tile
    ev = lay.dram[p.key("EV")] + 4 * tile
    base = f"train.upd.l{p.layer.pos}{tag}"
    # g and g**2 in INT16
    efit(asm, E_X, dw, nw, e_grad, "i16")
    rq(asm, t1, dw, nw, E_X, e_grad, "nearest", "i16")
    asm.op("vwmul", dw, t1, t1, nw, da="i16", db="i16")
    asm.raw(f"eadd e{E_T1}, e{E_X}, e{E_X}")
    efit(asm, E_T0, dw, nw, E_T1, "i16")
    rq(asm, t2, dw, nw, E_T0, E_T1, "nearest", "i16")
    # the moments
    _moment(asm, lay, at["M"], t0, E_X, em, sp["CONST"], nw, f"{base}.m")
    _moment(asm, lay, at["V"], t1, E_T0, ev, sp["CONST"] + 2 * DIAG_BYTES, nw, f"{base}.v")
    # r = 1 / sqrt(v + eps) at e_r = -(e_v + K) / 2, K in {28, 29} with e_v + K even
    src = at["V"]
    if eps2_parts(lay)[0]:
        asm.raw(f"eset e{E_T1}, {eps2_parts(lay)[1]}")
        rq(asm, sp["EPSQ"], acc["EPS"], 1, E_LZ, E_T1, "trunc", "i16")  # -eps_q
        asm.op("vsubrow", t0, src, sp["EPSQ"], 1, nw, dt="i16")
        src = t0
    asm.raw(f"emv r{R_T0}, e{E_LZ}")
    asm.raw(f"addi r{R_T0}, r{R_T0}, {RSQRT_K}")
    asm.raw(f"li r{R_T1}, 1")
    asm.raw(f"and r{R_T1}, r{R_T0}, r{R_T1}")
    asm.raw(f"sub r{R_T0}, r{R_T0}, r{R_T1}")
    asm.raw(f"li r{R_T1}, 1")
    asm.raw(f"sra r{R_T0}, r{R_T0}, r{R_T1}")
    asm.raw(f"sub r{R_T0}, r0, r{R_T0}")
    asm.raw(f"esetr e{E_T1}, r{R_T0}")
    r1, r2, r3 = (asm.const(v, set()) for v in (t0, src, nw))
    asm.raw(f"vrsqrt r{r1}, r{r2}, r{r3}, e{E_T1}, e{E_LZ}")
    # U = alpha_t m r on the target grid
    asm.op("vwmul", dw, at["M"], t0, nw, da="i16", db="i16")
    ldw_abs(asm, R_T0, em)
    asm.raw(f"esetr e{E_X}, r{R_T0}")
    asm.raw(f"eadd e{E_X}, e{E_X}, e{E_T1}")
    asm.raw(f"eaddi e{E_X}, e{E_X}, {-lay.mu_shift}")
    if fine(lay):
        lay.exps.addi(asm, E_LZ, p.ename, -lay.fine_shift(p))
        e_t = E_LZ
    else:
        e_t = lay.exps.load(asm, p.ename, X_W)
    rq(asm, sp["U"], dw, nw, e_t, E_X, rnd_of(lay), _step_dt(lay, p), mnemonic="rqm",
       mul=R_MU)


def _moment(asm: Asm, lay: Layout, mom: int, lo: int, e_g: int, word: int, coef: int,
            nw: int, label: str) -> None:
    """mom' = beta mom + (1 - beta) g (Q15 diagonal matrices beta I, (1 - beta) I at ``coef``),
    g INT16 at ``lo + 2 nw`` with exponent e[e_g]; the old exponent is in DRAM ``word``, the new
    one goes there (and stays in E_LZ). The GEMMs read up to 15 elements past each vector and
    write up to 15 accumulator entries past ``nw`` (the buffers are padded for it)."""
    dw = lay.acc["DW"]
    ldw_abs(asm, R_T0, word)
    asm.raw(f"esetr e{E_T1}, r{R_T0}")  # e_m
    asm.raw(f"emv r{R_T1}, e{e_g}")
    asm.raw(f"bge r{R_T0}, r{R_T1}, {label}.c")
    asm.raw(f"add r{R_T0}, r{R_T1}, r0")
    asm.label(f"{label}.c")
    asm.raw(f"esetr e{E_LZ}, r{R_T0}")  # the common exponent max(e_m, e_g)
    vcvt(asm, lo, mom, nw, E_LZ, E_T1, "nearest", "i16", "i16")
    vcvt(asm, lo + 2 * nw, lo + 2 * nw, nw, E_LZ, e_g, "nearest", "i16", "i16")
    # beta mom + (1 - beta) g, exact: each vector as the rows of an [R, 16] matrix times a
    # diagonal 16 x 16 constant (beta I, (1 - beta) I), the second GEMM accumulating; the
    # zeros of the diagonal are skipped (sb=1); the last row's lanes past n are not used
    rows = -(-nw // LANES)
    asm.op("gemm", dw, lo, coef, rows, LANES, LANES, sb=1, da="i16", db="i16")
    asm.op("gemm", dw, lo + 2 * nw, coef + DIAG_BYTES, rows, LANES, LANES, acc=1, sb=1,
           da="i16", db="i16")
    asm.raw(f"eaddi e{E_T1}, e{E_LZ}, {-ADAM_FRAC_BITS}")
    efit(asm, E_LZ, dw, nw, E_T1, "i16")
    rq(asm, mom, dw, nw, E_LZ, E_T1, "uniform", "i16")
    asm.raw(f"emv r{R_T0}, e{E_LZ}")
    stw_abs(asm, R_T0, word, R_T1)


# ------------------------------------------------------------------------------ exponents
def _flags_before(asm: Asm, lay: Layout) -> None:
    if lay.dynamic:
        asm.raw("clrflags")


def _flags_after(asm: Asm, lay: Layout) -> None:
    if lay.dynamic:
        asm.raw(f"flags r{R_T0}")
        asm.raw(f"or r{R_X0}, r{R_X0}, r{R_T0}")


def sat_flag(lay: Layout) -> int:
    """The sticky flag the weight write sets when it saturates: bit 1 for the shadow mode's
    read-out (the requantizer), bit 2 for the vector unit (vlazy, vadd, vsub)."""
    return 2 if lay.spec.update.mode == "shadow" else 4


def scan(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int) -> None:
    """r[R_X1] = max(r[R_X1], nbits) with nbits = efit's bit length of the widest weight of the
    tile (``vtoacc`` to the accumulator, then ``efit`` with e_in = B - 1)."""
    dw = lay.acc["DW"]
    asm.op("vtoacc", dw, at["W"], nw, dt=p.dt)
    asm.raw(f"eset e{E_X}, {p.bits - 1}")
    efit(asm, E_X, dw, nw, E_X, p.dt)
    asm.raw(f"emv r{R_T0}, e{E_X}")
    asm.raw(f"slt r{R_T1}, r{R_X1}, r{R_T0}")  # branch-free max
    asm.raw(f"sub r{R_T0}, r{R_T0}, r{R_X1}")
    asm.raw(f"mul r{R_T0}, r{R_T0}, r{R_T1}")
    asm.raw(f"add r{R_X1}, r{R_X1}, r{R_T0}")


def param_exponent(asm: Asm, lay: Layout, p: Param, tiles: list[tuple[int, int]], tag: str,
                   tile_in: object, tile_out: object) -> None:
    """After the last tile of ``p``'s update: raise e_p by one when a weight write saturated,
    else lower it by one when every weight lies in [-2**(B-3), 2**(B-3)) (nbits <= B - 3), and
    re-grid every tile (loaded and stored again when the weights stream)."""
    if not lay.dynamic:
        return
    base = f"train.upd.l{p.layer.pos}{tag}.exp"
    asm.label(base, f"dynamic exponent of {'b' if p.is_bias else 'W'}{p.layer.pos}")
    asm.raw(f"li r{R_T1}, {sat_flag(lay)}")
    asm.raw(f"and r{R_T0}, r{R_X0}, r{R_T1}")
    asm.raw(f"bne r{R_T0}, r0, {base}.raise")
    asm.raw(f"li r{R_T1}, {p.bits - 3}")
    asm.raw(f"bge r{R_T1}, r{R_X1}, {base}.lower")
    asm.raw(f"jmp {base}.done")
    n_out = p.shape[-1]
    for direction in ("raise", "lower"):
        asm.label(f"{base}.{direction}")
        for k0, k1 in tiles:
            at = tile_in(asm, lay, p, k0, k1, with_state=True)  # type: ignore[operator]
            nw = (k1 - k0) * n_out
            if direction == "raise":
                regrid_raise(asm, lay, p, at, nw)
            else:
                regrid_lower(asm, lay, p, at, nw)
            tile_out(asm, lay, p, k0, k1)  # type: ignore[operator]
        lay.exps.bump(asm, p.ename, 1 if direction == "raise" else -1)
        if direction == "raise":
            asm.raw(f"jmp {base}.done")
    asm.label(f"{base}.done")


def _shift_pair(asm: Asm, s: int) -> tuple[int, int]:
    """Exponent registers (eout, ein) whose difference is s (E_T1 = s, E_X = 0)."""
    asm.raw(f"eset e{E_T1}, {s}")
    asm.raw(f"eset e{E_X}, 0")
    return E_T1, E_X


def regrid_raise(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int) -> None:
    """e_w -> e_w + 1. lazy: w' = floor(w / 2) and the residual r' = round((r + b 2**s) / 2)
    on the new fine grid, b = w - 2 w' (the weight's lost bit moves into it; the one rounding,
    ties up, is of r's own lowest bit: r' = round(r / 2) + b 2**(s-1) for s >= 1); shadow:
    the copy S' = round(S / 2), W = readout(S'); plain and stochastic: w' = round(w / 2) by the
    mode's rounding. A momentum velocity on the fine grid
    is halved to nearest, one on the weights' grid by the mode's rounding."""
    mode = lay.spec.update.mode
    s = lay.fine_shift(p)
    w, u, dw = at["W"], lay.sp["U"], lay.acc["DW"]
    eo, ei = _shift_pair(asm, 1)
    if mode == "lazy":
        if has_momentum(lay):
            vcvt(asm, at["VL"], at["VL"], nw, eo, ei, "nearest", "i16", "i16")
        if s > 0:
            vcvt(asm, at["LZ"], at["LZ"], nw, eo, ei, "nearest", "i16", "i16")
        asm.op("vtoacc", dw, w, nw, dt=p.dt)  # w
        asm.op("vsra", w, w, 1, nw, dt=p.dt)  # w' = floor(w / 2)
        asm.op("vsub", u, w, w, nw, dt=p.dt)  # 0
        asm.op("vsub", u, u, w, nw, dt=p.dt)  # -w'
        asm.op("vtoacc", dw, u, nw, dt=p.dt, acc=1)
        asm.op("vtoacc", dw, u, nw, dt=p.dt, acc=1)  # b = w - 2 w' in {0, 1}
        if s > 0:  # r' = round(r / 2) + b 2**(s-1)
            eo, ei = _shift_pair(asm, -(s - 1))
            rq(asm, u, dw, nw, eo, ei, "nearest", "i16")  # b 2**(s-1)
            asm.op("vadd", at["LZ"], at["LZ"], u, nw, dt="i16")
        else:  # r' = round((r + b) / 2)
            asm.op("vtoacc", dw, at["LZ"], nw, dt="i16", acc=1)
            rq(asm, at["LZ"], dw, nw, eo, ei, "nearest", "i16")
    elif mode == "shadow":
        vcvt(asm, at["LZ"], at["LZ"], nw, eo, ei, "nearest", "i16", "i16")
        if has_momentum(lay):
            vcvt(asm, at["VL"], at["VL"], nw, eo, ei, "nearest", "i16", "i16")
        eo, ei = _shift_pair(asm, lay.fine_shift(p))
        vcvt(asm, w, at["LZ"], nw, eo, ei, lay.spec.update.readout, "i16", p.dt)
    else:
        rnd = rnd_of(lay)
        vcvt(asm, w, w, nw, eo, ei, rnd, p.dt, p.dt)
        if has_momentum(lay):
            vcvt(asm, at["VL"], at["VL"], nw, eo, ei, rnd, p.dt, p.dt)


def regrid_lower(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int) -> None:
    """e_w -> e_w - 1: every value doubles (exact: |w| < 2**(B-3); the lazy residual is within
    +-2**(s-1) after an update without saturation; a shadow copy below 2**(B-3+s) + 2**(s-1)).
    The shadow mode reads W out again from the doubled copy; a velocity doubles (saturating)."""
    mode = lay.spec.update.mode
    w = at["W"]
    if mode in ("lazy", "shadow"):
        asm.op("vadd", at["LZ"], at["LZ"], at["LZ"], nw, dt="i16")
    if has_momentum(lay):
        vdt = "i16" if fine(lay) else p.dt
        asm.op("vadd", at["VL"], at["VL"], at["VL"], nw, dt=vdt)
    if mode == "shadow":
        eo, ei = _shift_pair(asm, lay.fine_shift(p))
        vcvt(asm, w, at["LZ"], nw, eo, ei, lay.spec.update.readout, "i16", p.dt)
    else:
        asm.op("vadd", w, w, w, nw, dt=p.dt)
