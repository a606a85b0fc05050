"""The dz quantizer's step beyond fixed powers of two, and meProp (004 ch. 4-5; Sun et al. 2017).

A power-of-two QBP step (``qbp.step_log2``) is a pure shift of the requantizer; everything here
is the *general* path (``qbp.step`` or ``qbp.adapt``), which every weight layer then takes, and
meProp (``qbp.meprop_k``). programs/compiler/layers/base.py calls in at four places:
:func:`quantize` (dz~ of a layer), :func:`after_mask` (meProp's selection), :func:`tile_hook`
(the variance propagation, per weight tile) and :func:`update_scale` (the update multiplier).

The step of a layer
-------------------
A step is ``Delta = (M / 2**15) * 2**e`` with a 16-bit significand ``M`` in [2**15, 2**16)
and an exponent ``e = floor(log2 Delta)`` (the encoding of ``vqstep``, docs/isa.md). dz~ is
INT8 ``y`` at exponent register ``E_DZ = e`` *with the significand* ``m = M / 2**15``: its value
is ``y * m * 2**e``. So the gradient a layer hands down, ``da = W dz~``, is the accumulator at
``e_w + e`` times ``m``, and the next layer's quantizer divides by its own step. With
``Rm = round(2**46 / M_l)`` (vqstep's reciprocal) and the incoming significand ``M_in`` (``2**15``
for the classifier gradient), the requantizer multiplier is

    R_l = floor(M_in * Rm_l / 2**16)  (~ M_in 2**30 / M_l; 2**29 < R_l < 2**31)
    y = rqm(acc, R_l, shift = (e_l + 30) - e_in, dither)   (avg-pooling: R_l * mul >> 16)

so the requantizer's grid is the realised step to a relative 2**-28 (the two roundings of the
reciprocal); the value given to ``y`` downstream is exactly ``M_l 2**(e_l - 15)``. The update
multiplies ``dW`` by ``mu * M_l`` (r18, < 2**29) with the exponent lowered by 15 more.

Registers: r19 holds the significand of the layer quantized last (``M_in`` of the next), r18
``mu * M`` for the layer's updates (both taken out of the compiler's temporaries), r29 the
requantizer multiplier while it is formed; the step of the layer being quantized is e[E_DZ]
with r19. Between batches (``adapt.every`` > 1) the
steps persist in a DRAM step table. A fixed ``qbp.step`` is a compile-time constant
(:func:`fixed_step`: the binary64 value rounded down to 16 significant bits).

Adaptive steps, on the chip (``qbp.adapt``), before the layer's quantization:

* ``sparsity``: 004 sec. 5.5's alternative: fit a zero-mean Laplace distribution to the
  layer's pre-activation gradients dz = da * f' (all of them, the ReLU's zeros included: the
  maximum-likelihood scale is b = mean |dz|) and choose ``Delta = t* b`` where t* solves
  ``p(t) = target`` for the dither in use (sec. 4.3, eq. 4.26; :func:`laplace_sparsity`,
  solved on the host at compile time: for uniform dither ``p(t) = 1 - (1 - e^-t) / t``). On
  the chip: ``vqstep mode=asum`` with the ReLU mask (the stored activation, non-zero exactly
  where f' = 1) and the constant ``t* / count * M_in``.
* ``variance`` (eq. 5.19-5.21): ``Delta_l = min_ij 2 sqrt((B^2 sigma - S_ij) / N_j)`` with
  ``N_j = sum_k a_jk^2`` and ``S_ij = sum_k f'_ik V_ik a_jk^2``, where ``V`` bounds the
  propagated error variance of da (eq. 5.18: ``V^(l-1)_jk = sum_i W_ij^2 (f'_ik V^l_ik +
  Delta_l^2 / 4)``, ``V^L = 0``). 004 prints ``||a_j*||_2`` and ``||W_*j||_2``; eq. 5.14 gives
  their squares, which is what is computed. ``B`` is the batch (dW is the mean gradient, dz the
  per-sample one). On the chip, per layer (top down): ``a^2`` by ``vwmul`` (exact, to INT16),
  ``N = a^2 @ ones`` and ``S^T = a^2 @ (f'V)^T`` on the MAC array (INT16 x INT16), ``vqstep
  mode=var`` over the weight tiles (min=1 after the first), the clamp, then ``U = f'V +
  Delta^2 / 4`` (``vbias`` adds the constant) and, per weight tile in the backward loop,
  ``V^(l-1) = W^2 @ U`` (``W^2`` by ``vwmul``). Fixed point: ``V`` enters ``S`` as INT16 with
  ``h_S`` bits of headroom and ``U`` as INT16 with ``h_U`` (:func:`headroom`: no sum can leave
  the 32-bit accumulator), nearest rounding; ``Delta^2 / 4`` is ``round(M^2 / 2**17)`` at
  exponent ``2 e - 15``. ``tests/test_qbp_adaptive.py`` recomputes all of it independently.

Both are clamped to [2**min_step_log2, 2**max_step_log2] (a zero step, e.g. an unreachable
variance budget, becomes the smallest; an unconstrained one the largest) and logged per batch
to the host's log area (PARAMS word 10: 8 bytes (M, e) per weight layer per batch).

meProp: dz~ is INT8 with a dynamic exponent (nearest, as without QBP), masked by f', then
``vtopk`` keeps the k largest magnitudes of every sample's vector (a column of a feature-major
``[n, B]`` dz~, a row of a sample-major ``[B, n]`` one).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from emulator.reference import qstep_pack
from programs.compiler.emit import (
    E_DZ,
    E_S,
    E_T1,
    E_X,
    R_B,
    R_MU,
    R_T0,
    R_T1,
    Asm,
    Reg,
    efit,
    rq,
)
from programs.compiler.emit import (
    TEMPS as TEMPS_ALL,
)
from programs.compiler.net import Layer

# mu * M of the current layer; M of the layer quantized last: taken out of the temporaries
# for the whole program when the general path is on (r30/r31 are other sequences' scratch)
R_QMU, R_QM = 18, 19
TEMPS = tuple(r for r in TEMPS_ALL if r not in (R_QMU, R_QM))
MANT_ONE = 1 << 15  # the significand of 1.0 (Q15)
RECIP_SHIFT = 16  # R_l = (M_in * Rm_l) >> 16
EOUT_BIAS = 30  # the requantizer's output exponent is e_l + 30
P_QLOG = 10  # PARAMS word: DRAM address of the per-batch step log (adaptive steps)
C_BITS = 24  # significand bits of the sparsity mode's constant
ACC_MAX = (1 << 31) - 1
A2_MAX = 1 << 14  # the largest a^2 or W^2 of INT8 values (-128)
V16_MAX = 1 << 15  # INT16 magnitudes after the requantizer (32767, rounded up)


# ------------------------------------------------------------------------------ host maths
def fixed_step(step: float) -> tuple[int, int, int]:
    """(M, e, Rm) the chip realises for the step ``step``: its binary64 value rounded down to
    16 significant bits (as vqstep rounds)."""
    p, q = Fraction(step).as_integer_ratio()
    return qstep_pack(p, -(q.bit_length() - 1))  # q is a power of two


def realised(m: int, e: int) -> float:
    return m * 2.0 ** (e - 15)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def laplace_sparsity(t: float, dither: str) -> float:
    """Fraction of zeros after mid-tread quantization with step ``t b`` of a zero-mean Laplace
    variable of scale b (004 sec. 4.3, eq. 4.26): ``E[P(y = 0 | x)]`` with u = |x| / b ~ Exp(1).
    uniform: 1 - (1 - e^-t) / t; none: 1 - e^(-t/2); triangular: by Gauss-Legendre quadrature
    of the piecewise-quadratic P(y = 0 | x) (exact to rounding)."""
    if dither == "uniform":
        return 1.0 - (-math.expm1(-t)) / t
    if dither == "none":
        return -math.expm1(-t / 2)
    # P0 is a quadratic in u between its breakpoints t/2 and 3t/2 (0 beyond); e^-u is below
    # 2**-86 past 60: unit pieces up to there are integrated exactly to rounding
    cuts = np.array(sorted({0.0, *(float(k) for k in range(1, 61)),
                            *(c for c in (t / 2, 1.5 * t) if c < 60)}))
    lo, hi = cuts[:-1, None], cuts[1:, None]
    u = (hi - lo) / 2 * _GL_NODES[None, :] + (hi + lo) / 2
    v = u / t

    def cdf(x: np.ndarray) -> np.ndarray:  # the triangular dither on [-1, 1] (in steps)
        return np.where(x <= -1, 0.0, np.where(x <= 0, (x + 1) ** 2 / 2,
                                                np.where(x <= 1, 1 - (1 - x) ** 2 / 2, 1.0)))

    p0 = cdf(0.5 - v) - cdf(-0.5 - v)
    return float(np.sum((hi - lo) / 2 * _GL_WEIGHTS[None, :] * np.exp(-u) * p0))


@functools.lru_cache(maxsize=256)
def solve_sparsity(target: float, dither: str) -> float:
    """t* with laplace_sparsity(t*) = target (bisection in log t; the function increases)."""
    lo, hi = 1e-12, 1e12
    for _ in range(80):  # the log-interval halves each time: 80 reach float precision
        mid = math.sqrt(lo * hi)
        if laplace_sparsity(mid, dither) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def fixed_point(x: float, bits: int) -> tuple[int, int]:
    """(c, k) with c * 2**k = x rounded to nearest with ``bits`` significant bits, c < 2**bits."""
    k = math.floor(math.log2(x)) - (bits - 1)
    c = round(x / 2.0**k)
    if c >= 1 << bits:
        c, k = c // 2, k + 1
    return c, k


def headroom(terms: int) -> int:
    """Bits an INT16 operand gives up so that ``terms`` products with an INT8 square (at most
    2**14) stay inside the 32-bit accumulator: sum <= terms 2**14 2**(15-h) <= 2**31 - 1."""
    h = 0
    while terms * A2_MAX * (V16_MAX >> h) > ACC_MAX:
        h += 1
    return h


# ------------------------------------------------------------------------------ the plan
@dataclass
class QbpPlan:
    """What the general QBP path needs, per weight layer (widx - 1 indexes the lists)."""

    steps: list[tuple[int, int, int]] | None = None  # fixed: (M, e, Rm)
    adapt: Any = None  # the AdaptSpec
    every: int = 1
    c_sparsity: list[tuple[int, int]] = field(default_factory=list)  # (c, k): t*/count
    c_budget: list[tuple[int, int]] = field(default_factory=list)  # (C, k): B^2 sigma
    meprop: list[int] | None = None
    dram: int = -1  # the QSTEP words: countdown, e_V, c16, then (M, e, Rm, -) per layer
    nw: int = 0

    @property
    def general(self) -> bool:
        return self.steps is not None or self.adapt is not None

    @property
    def variance(self) -> bool:
        return self.adapt is not None and self.adapt.mode == "variance"

    def table(self, widx: int) -> int:
        return self.dram + 16 * widx  # widx from 1: words 16.. (0..15: the counters)

    @property
    def cnt(self) -> int:
        return self.dram

    @property
    def qev(self) -> int:
        return self.dram + 4

    @property
    def qc(self) -> int:
        return self.dram + 8


def make_plan(spec: Any) -> QbpPlan:
    net = spec.net()
    nw = len(net.weight_layers)
    q = spec.qbp
    plan = QbpPlan(nw=nw)

    def per_layer(v: Any) -> list:
        return list(v) if isinstance(v, list) else [v] * nw

    if q.meprop_k is not None:
        plan.meprop = per_layer(q.meprop_k)
    if not spec.qbp_general:
        return plan
    if q.adapt is None:
        plan.steps = [fixed_step(float(s)) for s in per_layer(q.step)]
        return plan
    a = q.adapt
    plan.adapt, plan.every = a, a.every
    b = spec.batch_size
    for layer, target, sigma in zip(net.weight_layers, per_layer(a.sparsity),
                                    per_layer(a.sigma_max), strict=True):
        t = solve_sparsity(float(target), q.dither)
        plan.c_sparsity.append(fixed_point(t / (layer.units * b * _spatial(layer)), C_BITS))
        plan.c_budget.append(fixed_point(b * b * float(sigma), C_BITS))
    return plan


def _spatial(layer: Layer) -> int:
    """Output pixels per sample of a layer (1 for dense)."""
    return layer.out_size // layer.units


def _widest(lay: Any) -> tuple[int, int]:
    ws = lay.net.weight_layers
    return max(x.in_shape[0] for x in ws), max(x.units for x in ws)


def plan_sp(lay: Any, sp: Any, b: int) -> None:
    """Scratchpad buffers of the variance mode (dense networks; the widest layer's shapes),
    taken before the weight tiles are sized."""
    if not lay.qbp.variance:
        return
    n_in, n_out = _widest(lay)
    for name, size in (("QA2", 2 * n_in * b), ("QFV", 2 * n_out * b), ("QM8", n_out * b),
                       ("QM16", 2 * n_out * b), ("QU", 2 * n_out * b), ("QC", 2)):
        lay.sp[name] = sp.take(name, size)
    lay.need_ones(b)


def plan_acc(lay: Any, acc: Any, b: int) -> None:
    """Accumulator regions of the variance mode: a^2 and U in transit (QT), N (QN) and the
    propagated variance V (QV)."""
    if not lay.qbp.variance:
        return
    n_in, n_out = _widest(lay)
    for name, size in (("QT", max(n_in, n_out) * b), ("QN", n_in), ("QV", n_in * b)):
        lay.acc[name] = acc.take(name, size)


def plan_dram(lay: Any, top: int) -> int:
    qp: QbpPlan = lay.qbp
    if not qp.adapt:
        return top
    qp.dram = top
    lay.dram["QSTEP"] = top
    return top + -(-16 * (qp.nw + 1) // 64) * 64


def describe(spec: Any) -> str:
    """The QBP setting for the firmware's header comment and reports."""
    q = spec.qbp
    if q.meprop_k is not None:
        return f"meProp k {q.meprop_k}"
    if q.step_log2 is None:
        return "off (dynamic exponent)"
    if q.adapt is not None:
        a = q.adapt
        what = (f"sigma_max {a.sigma_max}" if a.mode == "variance"
                else f"sparsity {a.sparsity}")
        return f"adaptive ({a.mode}, {what}, every {a.every}), {q.dither} dither"
    if q.step is not None:
        return f"step {q.step}, {q.dither} dither"
    return f"step 2^{q.step_log2}, {q.dither} dither"


def header(spec: Any) -> str:
    """The firmware header's QBP part (unchanged for power-of-two steps and no QBP)."""
    q = spec.qbp
    if not spec.qbp_general and q.meprop_k is None:
        return f"step {q.step_log2} ({q.dither} dither)"
    return describe(spec)


def realised_steps(spec: Any) -> list[dict[str, Any]] | None:
    """Per weight layer: the requested and the realised fixed step (``qbp.step``)."""
    plan = make_plan(spec)
    if plan.steps is None:
        return None
    req = spec.qbp.step if isinstance(spec.qbp.step, list) else [spec.qbp.step] * plan.nw
    return [{"layer": f"l{x.pos}", "requested": float(r), "realised": realised(m, e),
             "significand": m, "exponent": e}
            for x, r, (m, e, _) in zip(spec.net().weight_layers, req, plan.steps, strict=True)]


# ------------------------------------------------------------------------------ emission
def handles(lay: Any) -> bool:
    """Whether dz~ is quantized here (general steps, meProp) instead of base.quantize_dz."""
    qp = lay.qbp
    return qp.general or qp.meprop is not None


def update_scale(lay: Any) -> tuple[int, int]:
    """(multiplier register, extra exponent drop) of the update: mu, or mu * M with 15 more."""
    return (R_QMU, 15) if lay.qbp.general else (R_MU, 0)


def _top(layer: Layer, lay: Any) -> bool:
    return layer.widx == len(lay.net.weight_layers)


def _bottom(layer: Layer) -> bool:
    return layer.widx == 1


def _dither(lay: Any) -> str:
    return {"uniform": "uniform", "triangular": "triangular", "none": "nearest"}[
        lay.spec.qbp.dither]


def quantize(asm: Asm, lay: Any, layer: Layer, grad: Any, ein: int, count: int,
             dt: str = "i8") -> None:
    """dz~ of weight layer ``layer`` (``dt`` at ``DZ<pos>``, exponent e[E_DZ], significand r19)
    from the incoming gradient ``grad`` at exponent e[ein]."""
    qp: QbpPlan = lay.qbp
    dst = lay.sp[f"DZ{layer.pos}"]
    src = grad.addr
    if grad.where == "sp":  # to the accumulator, where the requantizer reads
        asm.op("vtoacc", lay.acc["TMP"], grad.addr, count, dt=grad.dt)
        src = lay.acc["TMP"]
    if qp.meprop is not None:  # no QBP: a dynamic exponent, nearest
        if grad.mul is not None:
            asm.raw(f"eaddi e{E_X}, e{ein}, -16")
            efit(asm, E_DZ, src, count, ein, dt)
            mul = asm.const(grad.mul, set())
            rq(asm, dst, src, count, E_DZ, E_X, "nearest", dt, mnemonic="rqm", mul=mul)
        else:
            efit(asm, E_DZ, src, count, ein, dt)
            rq(asm, dst, src, count, E_DZ, ein, "nearest", dt)
        return
    w = layer.widx
    if _top(layer, lay):
        asm.raw(f"li r{R_QM}, {MANT_ONE}")  # the classifier gradient carries no significand
    skip = f"train.bwd.l{layer.pos}.qstep.load"
    if qp.adapt is not None:
        if qp.every > 1:
            asm.raw(f"ldw r{R_T0}, r0, {qp.cnt}")
            asm.raw(f"bne r{R_T0}, r0, {skip}")
        if qp.variance:
            _variance_step(asm, lay, layer, ein, src, count)
        else:
            _sparsity_step(asm, lay, layer, grad, ein, src, count)
        _log(asm, lay, layer, raw=True)
        _floor(asm, lay, layer, grad, ein, src, count, dt)
        _clamp(asm, lay, layer)
        if qp.every > 1:  # keep it for the batches that do not adapt
            asm.raw(f"stw r{R_QMU}, r0, {qp.table(w)}")
            asm.raw(f"emv r{R_T0}, e{E_DZ}")
            asm.raw(f"stw r{R_T0}, r0, {qp.table(w) + 4}")
            asm.raw(f"stw r{R_T1}, r0, {qp.table(w) + 8}")
            asm.label(skip, f"the step of layer {layer.pos} from the step table")
            asm.raw(f"ldw r{R_QMU}, r0, {qp.table(w)}")
            asm.raw(f"ldw r{R_T0}, r0, {qp.table(w) + 4}")
            asm.raw(f"esetr e{E_DZ}, r{R_T0}")
            asm.raw(f"ldw r{R_T1}, r0, {qp.table(w) + 8}")
        m_reg = R_QMU  # the step's significand until r19 takes it
    else:
        m, e, rm = qp.steps[w - 1]
        asm.raw(f"eset e{E_DZ}, {e}")
        _li(asm, R_T1, rm)
        m_reg = None
    # R_l = (M_in * Rm) >> 16 [* avg-pooling mul >> 16]; then r19 = M_l, r18 = mu * M_l
    asm.raw(f"mul r{R_T1}, r{R_T1}, r{R_QM}")
    sh = asm.const(RECIP_SHIFT, set())
    asm.raw(f"sra r{R_T1}, r{R_T1}, r{sh}")
    if grad.mul is not None:
        pm = asm.const(grad.mul, set())
        asm.raw(f"mul r{R_T1}, r{R_T1}, r{pm}")
        sh = asm.const(16, set())
        asm.raw(f"sra r{R_T1}, r{R_T1}, r{sh}")
    if m_reg is None:
        asm.raw(f"li r{R_QM}, {qp.steps[w - 1][0]}")
    else:
        asm.raw(f"add r{R_QM}, r{m_reg}, r0")
    asm.raw(f"mul r{R_QMU}, r{R_MU}, r{R_QM}")
    asm.raw(f"eaddi e{E_X}, e{E_DZ}, {EOUT_BIAS}")
    rq(asm, dst, src, count, E_X, ein, _dither(lay), dt, mnemonic="rqm", mul=Reg(R_T1))
    if qp.adapt is not None:
        _log(asm, lay, layer)
        if qp.variance and not _bottom(layer):
            _build_u(asm, lay, layer, count)
        if qp.every > 1 and _bottom(layer):  # the batch's last use of the countdown
            _countdown(asm, lay, layer)


def _li(asm: Asm, reg: int, value: int) -> None:
    """Any value in [0, 2**32) into a register that asm.const does not manage."""
    if value < 1 << 31:
        asm.raw(f"li r{reg}, {value}")
    else:
        asm.raw(f"li r{reg}, {value - (1 << 32)}")
        asm.raw(f"lih r{reg}, 0")


LOG_BYTES = 16  # per weight layer per batch: M, e used; M, e the rule asked for


def _log(asm: Asm, lay: Any, layer: Layer, raw: bool = False) -> None:
    """The step to the host's log at base + (R_B nw + widx - 1) 16: (M, e) used (r19, after
    the quantization) or, ``raw``, the rule's own (r18, before the floor and the clamps)."""
    qp: QbpPlan = lay.qbp
    asm.raw(f"ldw r{R_T0}, r0, {4 * P_QLOG}")
    k = asm.const(LOG_BYTES * qp.nw, set())
    asm.raw(f"mul r{R_T1}, r{R_B}, r{k}")
    asm.raw(f"add r{R_T0}, r{R_T0}, r{R_T1}")
    at = LOG_BYTES * (layer.widx - 1) + (8 if raw else 0)
    asm.raw(f"stw r{R_QMU if raw else R_QM}, r{R_T0}, {at}")
    asm.raw(f"emv r{R_T1}, e{E_DZ}")
    asm.raw(f"stw r{R_T1}, r{R_T0}, {at + 4}")


def saturation_floor(dither: str, dt: str = "i8") -> tuple[int, int]:
    """(c, k): the least step that keeps |dz / Delta| within ``dt`` after dithered rounding,
    as a multiple of max |dz|: 1/127 for INT8, 1/32767 for INT16 (nearest, uniform:
    |y| <= ceil(|x| / Delta)), one less in the denominator for triangular dither (one step
    more), raised by 2**-14 for the significand's rounding down."""
    top = 127 if dt == "i8" else 32767
    return fixed_point((1 + 2.0**-14) / (top - (dither == "triangular")), C_BITS)


def _floor(asm: Asm, lay: Any, layer: Layer, grad: Any, ein: int, src: int,
           count: int, dt: str = "i8") -> None:
    """Raise the step to the saturation floor: vqstep mode=amax combine=max over the entries
    the ReLU keeps (only they survive the mask)."""
    c, k = saturation_floor(lay.spec.qbp.dither, dt)
    rc = asm.const(c, set())
    asm.raw(f"mul r{R_T1}, r{rc}, r{R_QM}")  # c * M_in
    shift = 15
    if grad.mul is not None:
        pm = asm.const(grad.mul, set())
        asm.raw(f"mul r{R_T1}, r{R_T1}, r{pm}")
        shift += 16
    asm.raw(f"eset e{E_X}, {k - shift}")
    mask = lay.sp[f"A{layer.pos}"] if layer.relu else 0
    regs = [asm.const(v, set()) for v in (src, mask, 1, count)]
    asm.raw(f"vqstep r{R_QMU}, r{R_T1}, r{regs[0]}, r{regs[1]}, r{regs[2]}, r{regs[3]}, "
            f"r{R_T1}, e{E_DZ}, e{ein}, e{E_X}, e{E_X}, mode=amax, mask={int(layer.relu)}, "
            "combine=max")


def _countdown(asm: Asm, lay: Any, layer: Layer) -> None:
    """Adapt again ``every`` batches later: the word counts down to 0 (adapt), then restarts."""
    qp: QbpPlan = lay.qbp
    tag = f"train.bwd.l{layer.pos}.qstep.count"
    asm.raw(f"ldw r{R_T0}, r0, {qp.cnt}")
    asm.raw(f"addi r{R_T0}, r{R_T0}, -1")
    asm.raw(f"bge r{R_T0}, r0, {tag}")
    asm.raw(f"li r{R_T0}, {qp.every - 1}")
    asm.label(tag, "the batches until the steps adapt again")
    asm.raw(f"stw r{R_T0}, r0, {qp.cnt}")


def _clamp(asm: Asm, lay: Any, layer: Layer) -> None:
    """Clamp the step in (r18, e[E_DZ], r29) to [2**lo, 2**hi] (exponent compares: a step is
    below 2**lo exactly when its exponent is, at least 2**hi when its exponent is)."""
    a = lay.qbp.adapt
    tag = f"train.bwd.l{layer.pos}.qstep"
    asm.raw(f"emv r{R_T0}, e{E_DZ}")
    for bound, cond, name in ((a.min_step_log2, "bge", "lo"), (a.max_step_log2, "blt", "hi")):
        r = asm.const(bound, set())
        asm.raw(f"{cond} r{R_T0}, r{r}, {tag}.{name}")
        asm.raw(f"li r{R_QMU}, {MANT_ONE}")
        _li(asm, R_T1, 1 << 31)
        asm.raw(f"eset e{E_DZ}, {bound}")
        asm.label(f"{tag}.{name}", f"the step is at least 2^{bound}" if name == "lo"
                  else f"the step is below 2^{bound}")


def _sparsity_step(asm: Asm, lay: Any, layer: Layer, grad: Any, ein: int, src: int,
                   count: int) -> None:
    """Delta = t* mean |dz| (the Laplace fit of sec. 5.5): vqstep mode=asum with the ReLU mask
    (the stored activation is non-zero exactly where f' = 1)."""
    qp: QbpPlan = lay.qbp
    c, k = qp.c_sparsity[layer.widx - 1]
    shift = 15 + (16 if grad.mul is not None else 0)
    rc = asm.const(c, set())
    asm.raw(f"mul r{R_T1}, r{rc}, r{R_QM}")  # c * M_in (< 2**40)
    if grad.mul is not None:  # avg-pooling: the gradient is acc * mul * 2**-16
        pm = asm.const(grad.mul, set())
        asm.raw(f"mul r{R_T1}, r{R_T1}, r{pm}")
    asm.raw(f"eset e{E_S}, {k - shift}")
    mask = lay.sp[f"A{layer.pos}"] if layer.relu else 0
    regs = [asm.const(v, set()) for v in (src, mask, 1, count)]
    asm.raw(f"vqstep r{R_QMU}, r{R_T1}, r{regs[0]}, r{regs[1]}, r{regs[2]}, r{regs[3]}, "
            f"r{R_T1}, e{E_DZ}, e{ein}, e{E_S}, e{E_S}, mode=asum, mask={int(layer.relu)}")


def _variance_step(asm: Asm, lay: Any, layer: Layer, ein: int, src: int, count: int) -> None:
    """eq. 5.20-5.21 for a dense layer without bias: N, S^T per weight tile, vqstep mode=var.
    Leaves the step in (r18, e[E_DZ], r29). Exponents: e[E_T1] = 2 e_a (N), e[E_S] = 2 e_a +
    e_fv (S), e[E_X] = the budget's; r28 keeps e_fv."""
    from programs.compiler.exps import X_IN

    qp: QbpPlan = lay.qbp
    sp, acc = lay.sp, lay.acc
    b = lay.spec.batch_size
    n_in, n_out = layer.in_shape[0], layer.units
    a_in = sp[f"A{layer.pos - 1}"]
    top = _top(layer, lay)
    asm.comment(f"adaptive step (variance, sigma_max): layer {layer.pos}")
    # N_j = sum_k a_jk^2: a^2 exact in the accumulator, INT16 in QA2, times ones
    asm.op("vwmul", acc["QT"], a_in, a_in, n_in * b, da="i8", db="i8")
    rq(asm, sp["QA2"], acc["QT"], n_in * b, E_X, E_X, "nearest", "i16")  # shift 0: exact
    asm.op("gemm", acc["QN"], sp["QA2"], sp["ONES"], n_in, b, 1, da="i16")
    ea = lay.exps.load(asm, f"a{layer.pos - 1}", X_IN)
    asm.raw(f"eadd e{E_T1}, e{ea}, e{ea}")  # N's exponent
    if not top:  # f'V as INT16 with h_S bits of headroom (the S sums run over the batch)
        asm.raw(f"ldw r{R_T0}, r0, {qp.qev}")
        asm.raw(f"esetr e{E_S}, r{R_T0}")
        efit(asm, E_X, acc["QV"], count, E_S, "i16")
        asm.raw(f"eaddi e{E_X}, e{E_X}, {headroom(b)}")
        rq(asm, sp["QFV"], acc["QV"], count, E_X, E_S, "nearest", "i16")
        asm.op("vrelumask", sp["QM8"], sp[f"A{layer.pos}"], count, dt="i8")
        r = [asm.const(v, set()) for v in (sp["QM16"], sp["QM8"], count)]
        asm.raw(f"vcvt r{r[0]}, r{r[1]}, r{r[2]}, e{E_X}, e{E_X}, rnd=nearest, sdt=i8, ddt=i16")
        asm.op("vmul", sp["QFV"], sp["QFV"], sp["QM16"], count, dt="i16")
        asm.raw(f"emv r{R_T0}, e{E_X}")  # e_fv, back to e[E_S] after the loop
        asm.raw(f"eadd e{E_S}, e{E_T1}, e{E_X}")
    c, k = qp.c_budget[layer.widx - 1]
    asm.raw(f"eset e{E_X}, {k}")
    if top:
        asm.raw(f"eset e{E_S}, {k}")  # no block: any exponent near the budget's
    tiles = lay.tiles[layer.pos] if not top else [(0, n_in)]
    for t, (k0, k1) in enumerate(tiles):
        rows = k1 - k0
        if top:  # V = 0: no S, N alone (rcols = 0)
            regs = [asm.const(v, set()) for v in (acc["QT"], acc["QN"], n_in, 0, c)]
        else:  # S^T [rows, n_out] = a^2 [rows, B] @ (f'V)^T (f'V stored [n_out, B])
            asm.op("gemm", acc["DW"], sp["QA2"] + 2 * k0 * b, sp["QFV"], rows, b, n_out,
                   tb=1, da="i16", db="i16")
            regs = [asm.const(v, set()) for v in (acc["DW"], acc["QN"] + k0, rows, n_out, c)]
        asm.raw(f"vqstep r{R_QMU}, r{R_T1}, r{regs[0]}, r{regs[1]}, r{regs[2]}, r{regs[3]}, "
                f"r{regs[4]}, e{E_DZ}, e{E_S}, e{E_T1}, e{E_X}, mode=var, "
                f"combine={'min' if t else 'none'}")
    if not top:
        asm.raw(f"esetr e{E_S}, r{R_T0}")  # e_fv, kept for U


def _build_u(asm: Asm, lay: Any, layer: Layer, count: int) -> None:
    """U = f'V + Delta^2 / 4 as INT16 (QU) with h_U bits of headroom, and the exponent of the
    V the layer below gets (2 e_w + e_u, to the QSTEP word e_V). e[E_S] holds e_fv (not top)."""
    from programs.compiler.exps import X_W

    qp: QbpPlan = lay.qbp
    sp, acc = lay.sp, lay.acc
    # Delta^2 / 4 = M^2 2**(2e - 32) = round(M^2 / 2**17) at exponent 2e - 15
    asm.raw(f"eadd e{E_X}, e{E_DZ}, e{E_DZ}")
    asm.raw(f"eaddi e{E_X}, e{E_X}, -15")
    if _top(layer, lay):  # V = 0: U is the constant alone
        asm.op("gemm", acc["QT"], 0, 0, count, 0, 1)  # K = 0 clears the block
        asm.raw(f"eaddi e{E_S}, e{E_X}, 0")
    else:
        asm.op("vtoacc", acc["QT"], sp["QFV"], count, dt="i16")
    asm.raw(f"mul r{R_T1}, r{R_QM}, r{R_QM}")
    h = asm.const(1 << 16, set())
    asm.raw(f"add r{R_T1}, r{R_T1}, r{h}")
    s = asm.const(17, set())
    asm.raw(f"sra r{R_T1}, r{R_T1}, r{s}")
    asm.raw(f"stw r{R_T1}, r0, {qp.qc}")
    asm.op("dmald", sp["QC"], qp.qc, 1, 2, 2, 2)
    r = [asm.const(v, set()) for v in (acc["QT"], sp["QC"], count, 1)]
    asm.raw(f"vbias r{r[0]}, r{r[1]}, r{r[2]}, r{r[3]}, e{E_S}, e{E_X}, dt=i16")
    efit(asm, E_T1, acc["QT"], count, E_S, "i16")
    asm.raw(f"eaddi e{E_T1}, e{E_T1}, {headroom(layer.units)}")
    rq(asm, sp["QU"], acc["QT"], count, E_T1, E_S, "nearest", "i16")
    ew = lay.exps.load(asm, f"w{layer.pos}", X_W)
    asm.raw(f"eadd e{E_T1}, e{E_T1}, e{ew}")
    asm.raw(f"eadd e{E_T1}, e{E_T1}, e{ew}")
    asm.raw(f"emv r{R_T0}, e{E_T1}")
    asm.raw(f"stw r{R_T0}, r0, {qp.qev}")


def tile_hook(asm: Asm, lay: Any, layer: Layer, w: int, k0: int, k1: int, need_dx: bool
              ) -> None:
    """Variance mode, in the backward's tile loop before the update changes W: rows k0:k1 of
    V^(l-1) = W^2 @ U (W^2 exact through the accumulator into the update buffer U)."""
    qp: QbpPlan = lay.qbp
    if not (qp.variance and need_dx):
        return
    sp, acc = lay.sp, lay.acc
    b, n_out, rows = lay.spec.batch_size, layer.units, k1 - k0
    skip = f"train.bwd.l{layer.pos}.t{k0}.qv"
    if qp.every > 1:
        asm.raw(f"ldw r{R_T0}, r0, {qp.cnt}")
        asm.raw(f"bne r{R_T0}, r0, {skip}")
    asm.op("vwmul", acc["DW"], w, w, rows * n_out, da="i8", db="i8")
    rq(asm, sp["U"], acc["DW"], rows * n_out, E_X, E_X, "nearest", "i16")  # shift 0: exact
    asm.op("gemm", acc["QV"] + k0 * b, sp["U"], sp["QU"], rows, n_out, b, da="i16", db="i16")
    if qp.every > 1:
        asm.label(skip)


def after_mask(asm: Asm, lay: Any, layer: Layer, out_s: bool, count: int,
               dt: str = "i8") -> None:
    """meProp: keep the k largest |dz~| of every sample (after the ReLU mask)."""
    qp: QbpPlan = lay.qbp
    if qp.meprop is None:
        return
    k = qp.meprop[layer.widx - 1]
    b = lay.spec.batch_size
    n = count // b
    if k >= n:
        return  # nothing to drop
    dz = lay.sp[f"DZ{layer.pos}"]
    rows, cols = (b, n) if out_s else (n, b)
    asm.op("vtopk", dz, dz, rows, cols, k, dt=dt, col=int(not out_s))
