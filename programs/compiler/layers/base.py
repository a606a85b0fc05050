"""What every layer lowering shares: the gradient handed from layer to layer, parameter
tensors, quantization of dz~ (QBP), the optimizer update, weight tiles, geometry registers and
layout changes through DRAM.

Layouts between layers: images are NHWC ``[B, H, W, C]`` (sample-major); vectors between dense
layers are feature-major ``[features, B]`` so that every weight tile is a contiguous row range;
the logits are ``[B, classes]``.
"""

from __future__ import annotations

from programs.compiler import qbp
from programs.compiler.emit import (
    E_DZ,
    E_LZ,
    E_T0,
    E_T1,
    E_X,
    Asm,
    efit,
    rq,
    vcvt,
)
from programs.compiler.exps import X_B, X_W
from programs.compiler.layout import Grad, Layout, Param
from programs.compiler.net import Layer

MOMENTUM_FRAC_BITS = 15  # the momentum factor is a Q15 multiplier: beta_q = round(beta 2**15)
POOL_MUL_BITS = 16  # average pooling scales by round(2**16 / (KH KW)) / 2**16


class Lowering:
    """How one layer kind becomes firmware. Subclasses fill in what applies."""

    def __init__(self, layer: Layer, last: bool) -> None:
        self.layer, self.last = layer, last

    # --------------------------------------------------------------- planning
    @property
    def out_exp(self) -> str:
        """The exponent name of this layer's output (``a<pos>``)."""
        return f"a{self.layer.pos}"

    def exp_alias(self) -> str | None:
        """The name whose exponent the output shares (max pooling, flatten), if any."""
        return None

    def params(self, weight_exp: int) -> list[Param]:
        """A weight layer's weights and (if any) its bias, on the weights' grid."""
        if not self.layer.is_weight:
            return []
        ps = [Param(self.layer, False, weight_exp)]
        if self.layer.bias:
            ps.append(Param(self.layer, True, weight_exp))
        return ps

    def plan_acts(self, lay: Layout, b: int) -> None:
        """Phase 1 of the scratchpad plan: output activations and dz~ (layer order)."""

    def plan_extra(self, lay: Layout, b: int) -> None:
        """Phase 3: buffers of this kind (indices, staging, gradients in transit)."""

    def acc_forward(self, b: int) -> int:
        """Accumulator entries the forward pass writes at once."""
        return 0

    def mask_size(self, b: int) -> int:
        return 0

    def sp_grad_size(self, b: int) -> int:
        """Elements of a scratchpad-resident gradient this layer hands down (for TMP)."""
        return 0

    def tiles(self, budget: int) -> list[tuple[int, int]]:
        """Row ranges of the weights processed at once, each at most ``budget`` elements when
        the layer allows splitting (the accumulator holds one tile of dW; streamed weights pass
        through tile buffers of that size)."""
        return []

    # --------------------------------------------------------------- emission
    def forward(self, asm: Asm, lay: Layout, prefix: str) -> None:
        raise NotImplementedError

    def backward(self, asm: Asm, lay: Layout, grad: Grad, need_dx: bool) -> Grad | None:
        raise NotImplementedError

    # --------------------------------------------------------------- counting
    def skip_factor(self, need_dx: bool) -> int:
        """Skipped MACs per zero of dz~ in this layer's backward (0: no dz~)."""
        return 0

    def dz_count(self, b: int) -> int:
        """Elements of dz~ per batch."""
        return 0


def act_in(lay: Layout, layer: Layer) -> int:
    """Scratchpad address of a layer's input activation."""
    return lay.sp[f"A{layer.pos - 1}"]


def in_exp(layer: Layer) -> str:
    return f"a{layer.pos - 1}"


# ------------------------------------------------------------------------ geometry registers
def geometry(n: int, c: int, h: int, w: int, k: tuple[int, int], s: tuple[int, int],
             p: tuple[int, int], f: int = 0) -> tuple[int, int, int, int]:
    """The rsz, rhw, rkw, rpf values of an image geometry (docs/isa.md)."""
    return (n | c << 16, h | w << 16, k[0] | k[1] << 8 | s[0] << 16 | s[1] << 24,
            p[0] | p[1] << 8 | f << 16)


def layer_geometry(layer: Layer, n: int) -> tuple[int, int, int, int]:
    c, h, w = layer.in_shape
    return geometry(n, c, h, w, layer.kernel, layer.stride, layer.padding,
                    layer.units if layer.kind == "conv" else 0)


# ------------------------------------------------------------------------ dz~ quantization
def dither(lay: Layout) -> str:
    return {"uniform": "uniform", "triangular": "triangular", "none": "nearest"}[
        lay.spec.qbp.dither]


def quantize_dz(asm: Asm, lay: Layout, layer: Layer, grad: Grad, ein: int, count: int) -> None:
    """dz~ of a weight layer to INT8 at exponent e[E_DZ] (``DZ<pos>``): the QBP fixed step with
    the configured dither, or (``qbp.step_log2: null``) a dynamic exponent, nearest rounding.
    Steps that are not powers of two, adaptive steps and meProp: programs/compiler/qbp.py."""
    if qbp.handles(lay):
        qbp.quantize(asm, lay, layer, grad, ein, count)
        return
    steps = lay.spec.qbp_steps()
    dst = lay.sp[f"DZ{layer.pos}"]
    src_acc = grad.addr if grad.where == "acc" else None
    if grad.mul is not None:  # the average-pooling scale: sums * mul * 2**-16
        asm.raw(f"eaddi e{E_X}, e{ein}, {-POOL_MUL_BITS}")
    if steps is not None:
        asm.raw(f"eset e{E_DZ}, {steps[layer.widx - 1]}")
        rnd = dither(lay)
    else:
        rnd = "nearest"
        if src_acc is None:  # bring the gradient to the accumulator to scan its maximum
            asm.op("vtoacc", lay.acc["TMP"], grad.addr, count, dt=grad.dt)
            src_acc = lay.acc["TMP"]
        efit(asm, E_DZ, src_acc, count, ein, "i8")  # (with a scale <= 1 the result fits too)
    if grad.mul is not None:
        if src_acc is None:  # pragma: no cover - pooling gradients are in the accumulator
            raise AssertionError("a scaled gradient must be in the accumulator")
        mul = asm.const(grad.mul, set())
        rq(asm, dst, src_acc, count, E_DZ, E_X, rnd, "i8", mnemonic="rqm", mul=mul)
    elif src_acc is not None:
        rq(asm, dst, src_acc, count, E_DZ, ein, rnd, "i8")
    else:
        vcvt(asm, dst, grad.addr, count, E_DZ, ein, rnd, grad.dt, "i8")


def relu_mask(asm: Asm, lay: Layout, layer: Layer, count: int) -> None:
    """dz~ *= relu'(z), the mask a > 0 of the layer's stored output (after quantization). The
    mask overwrites the output itself (dead by now: the layer above has used it) except in the
    dense-only networks, which keep a ``MASK`` buffer."""
    a = lay.sp[f"A{layer.pos}"]
    mask = lay.sp["MASK"] if "MASK" in lay.sp else a
    asm.op("vrelumask", mask, a, count, dt="i8")
    asm.op("vmul", lay.sp[f"DZ{layer.pos}"], lay.sp[f"DZ{layer.pos}"], mask, count, dt="i8")


# ------------------------------------------------------------------------ weights in and out
def has_momentum(lay: Layout) -> bool:
    return lay.spec.update.momentum != 0


def momentum_q15(momentum: float) -> int:
    return round(momentum * 2**MOMENTUM_FRAC_BITS)


def update_state(lay: Layout) -> list[str]:
    """The per-weight INT16 update state next to W: LZ (lazy residual or shadow copy) and, with
    momentum, the velocity VL."""
    return ["LZ", "VL"] if has_momentum(lay) else ["LZ"]


def tile_in(asm: Asm, lay: Layout, p: Param, k0: int, k1: int,
            with_state: bool) -> dict[str, int]:
    """Scratchpad addresses of rows k0:k1 of a parameter (and its update state ``LZ``
    [``VL``]); DMA them in when the weights stream from DRAM."""
    n_out = p.shape[-1]
    names = ["W"] + (update_state(lay) if with_state else [])
    if not lay.streams(p):
        return {x: lay.sp[p.key(x)] + lay.state_bytes(x) * k0 * n_out for x in names}
    nb = (k1 - k0) * n_out
    for x in names:
        size = lay.state_bytes(x) * nb
        base = lay.dram[p.key(x)] + lay.state_bytes(x) * k0 * n_out
        asm.op("dmald", lay.sp[f"{x}T"], base, 1, size, size, size)
    return {x: lay.sp[f"{x}T"] for x in names}


def tile_out(asm: Asm, lay: Layout, p: Param, k0: int, k1: int) -> None:
    if not lay.streams(p):
        return
    n_out = p.shape[-1]
    nb = (k1 - k0) * n_out
    for x in ["W"] + update_state(lay):
        size = lay.state_bytes(x) * nb
        base = lay.dram[p.key(x)] + lay.state_bytes(x) * k0 * n_out
        asm.op("dmast", base, lay.sp[f"{x}T"], 1, size, size, size)


# ------------------------------------------------------------------------ the update
def update(asm: Asm, lay: Layout, p: Param, at: dict[str, int], nw: int, tag: str,
           e_grad: int = E_T0) -> None:
    """SGD step for nw elements of ``p`` at ``at["W"]`` (INT16 state at ``at["LZ"]``, velocity at
    ``at["VL"]``: INT16 on the fine grid for lazy/shadow, INT8 on the parameter's grid for
    plain/stochastic) from its gradient in the accumulator (``DW``, exponent e[e_grad]) scaled by
    lr/B = mu * 2**-t."""
    spec = lay.spec
    sp = lay.sp
    mode = spec.update.mode
    w = at["W"]
    what = f"b{p.layer.pos}" if p.is_bias else f"W{p.layer.pos}"
    asm.label(f"train.upd.l{p.layer.pos}{tag}", f"{mode} update of {what}{tag}"
              + (f", momentum {spec.update.momentum}" if has_momentum(lay) else ""))
    qmul, qshift = qbp.update_scale(lay)  # mu (r22), or mu * M of a general QBP step
    asm.raw(f"eaddi e{E_T1}, e{e_grad}, {-lay.mu_shift - qshift}")  # exponent of dW * mu
    if mode in ("lazy", "shadow"):
        lz = at["LZ"]
        lay.exps.addi(asm, E_LZ, p.ename, -spec.update.acc_shift)  # the fine grid
        # U = round(lr g) on the fine grid
        rq(asm, sp["U"], lay.acc["DW"], nw, E_LZ, E_T1, "nearest", "i16", mnemonic="rqm",
           mul=qmul)
        step = sp["U"]
        if has_momentum(lay):
            # VL = round_dither(beta VL) + U on the fine grid. dW in the accumulator is dead:
            # VL passes through it for the Q15 multiply. Dithered rounding lets small
            # velocities decay to zero (round-to-nearest would hold +-1 forever).
            vl = at["VL"]
            asm.op("vtoacc", lay.acc["DW"], vl, nw, dt="i16")
            asm.raw(f"eaddi e{E_T1}, e{E_LZ}, {MOMENTUM_FRAC_BITS}")
            beta = asm.const(momentum_q15(spec.update.momentum), set())
            rq(asm, vl, lay.acc["DW"], nw, E_T1, E_LZ, "uniform", "i16", mnemonic="rqm",
               mul=beta)
            asm.op("vadd", vl, vl, sp["U"], nw, dt="i16")
            step = vl
        asm.op("vsub", lz, lz, step, nw, dt="i16")
        ew = lay.exps.load(asm, p.ename, X_W)
        if mode == "lazy":
            r = [asm.const(v, set()) for v in (w, lz, nw)]
            asm.raw(f"vlazy r{r[0]}, r{r[1]}, r{r[2]}, e{ew}, e{E_LZ}")
        else:
            vcvt(asm, w, lz, nw, ew, E_LZ, "nearest", "i16", "i8")
    else:
        rnd = "nearest" if mode == "plain" else "uniform"
        ew = lay.exps.load(asm, p.ename, X_W)
        rq(asm, sp["U"], lay.acc["DW"], nw, ew, E_T1, rnd, "i8", mnemonic="rqm", mul=qmul)
        step = sp["U"]
        if has_momentum(lay):
            # everything INT8: VL = sat8(round_dither(beta VL) + U) on the parameter's grid
            vl = at["VL"]
            asm.op("vtoacc", lay.acc["DW"], vl, nw, dt="i8")
            asm.raw(f"eaddi e{E_T1}, e{ew}, {MOMENTUM_FRAC_BITS}")  # shift 15: the Q15 beta
            beta = asm.const(momentum_q15(spec.update.momentum), set())
            rq(asm, vl, lay.acc["DW"], nw, E_T1, ew, "uniform", "i8", mnemonic="rqm", mul=beta)
            asm.op("vadd", vl, vl, sp["U"], nw, dt="i8")
            step = vl
        asm.op("vsub", w, w, step, nw, dt="i8")


def add_bias(asm: Asm, lay: Layout, layer: Layer, rows: int, cols: int) -> None:
    """``vbias``: the layer's bias onto every row of the [rows, cols] forward output in the
    accumulator (exponent e[E_T0])."""
    eb = lay.exps.load(asm, f"b{layer.pos}", X_B)
    r = [asm.const(v, set()) for v in (lay.acc["Z"], lay.sp[f"B{layer.pos}"], rows, cols)]
    asm.raw(f"vbias r{r[0]}, r{r[1]}, r{r[2]}, r{r[3]}, e{E_T0}, e{eb}, dt=i8")


def input_grad(lay: Layout, w: Param) -> Grad:
    """The input gradient a weight layer leaves in the accumulator (``DA``): its exponent is
    the weights' plus dz~'s, put into E_T0 by the layer below when it starts."""
    name = w.ename

    def exp(asm: Asm) -> int:
        lay.exps.add(asm, E_T0, name, E_DZ)
        return E_T0

    return Grad("acc", lay.acc["DA"], exp)


def image_label(asm: Asm, prefix: str, layer: Layer) -> None:
    """``<prefix>.fwd.l<pos>`` with the layer and its image shapes as the comment."""
    c, h, w = layer.in_shape
    co, oh, ow = layer.out_shape
    asm.label(f"{prefix}.fwd.l{layer.pos}", f"layer {layer.pos}: {layer.describe()}, "
              f"{c}x{h}x{w} -> {co}x{oh}x{ow}")


def bias_backward(asm: Asm, lay: Layout, p: Param, dz_rows_major: bool, rows: int,
                  cols: int) -> None:
    """db = column sums of dz~ [rows, cols] (``dz_rows_major``: dz~ stored [F, B] and the sums
    are row sums) on the MAC array with a ones vector and zero-skipping on dz~, then the update;
    db's exponent is that of dz~ (the ones are integers at exponent 0)."""
    dz = lay.sp[f"DZ{p.layer.pos}"]
    asm.label(f"train.bwd.l{p.layer.pos}.b", f"gradient of b{p.layer.pos}")
    if dz_rows_major:  # db [F, 1] = dz~ [F, B] @ ones [B, 1]
        asm.op("gemm", lay.acc["DW"], dz, lay.sp["ONES"], rows, cols, 1, sa=1)
        n = rows
    else:  # db [1, F] = ones [1, M] @ dz~ [M, F]
        asm.op("gemm", lay.acc["DW"], lay.sp["ONES"], dz, 1, rows, cols, sb=1)
        n = cols
    update(asm, lay, p, {x: lay.sp[p.key(x)] for x in ["W"] + update_state(lay)}, n, ".b",
           e_grad=E_DZ)


# ------------------------------------------------------------------------ layout changes
def transpose(asm: Asm, lay: Layout, dst: int, src: int, rows: int, cols: int,
              eb: int) -> None:
    """dst [cols, rows] = src [rows, cols]^T (elements of ``eb`` bytes) through the DRAM staging
    area ``STG``: one contiguous DMA and one element-strided DMA per row of the smaller side."""
    stg = lay.dram["STG"]
    if rows <= cols:  # store src whole; load each of its rows into a column of dst
        n = rows * cols * eb
        asm.op("dmast", stg, src, 1, n, n, n)
        for r in range(rows):
            asm.op("dmald", dst + r * eb, stg + r * cols * eb, cols, eb, eb, rows * eb)
    else:  # store each column of src as a row; load dst whole
        for c in range(cols):
            asm.op("dmast", stg + c * rows * eb, src + c * eb, rows, eb, eb, cols * eb)
        n = rows * cols * eb
        asm.op("dmald", dst, stg, 1, n, n, n)


def transpose_bytes(rows: int, cols: int, eb: int) -> int:
    return rows * cols * eb
