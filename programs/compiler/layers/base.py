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
    E_T0,
    E_X,
    R_CTR,
    R_T0,
    Asm,
    efit,
    ldw_abs,
    rq,
    vcvt,
)
from programs.compiler.exps import X_B
from programs.compiler.layout import Grad, Layout, Param
from programs.compiler.net import Layer
from programs.compiler.update import (  # noqa: F401 - re-exported
    MOMENTUM_FRAC_BITS,
    has_momentum,
    momentum_q15,
    param_exponent,
    update,
)

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

    def params(self, weight_exp: int, bits: int = 8) -> list[Param]:
        """A weight layer's weights and (if any) its bias, on the weights' grid and width."""
        if not self.layer.is_weight:
            return []
        ps = [Param(self.layer, False, weight_exp, bits)]
        if self.layer.bias:
            ps.append(Param(self.layer, True, weight_exp, bits))
        return ps

    def plan_acts(self, lay: Layout, b: int) -> None:
        """Phase 1 of the scratchpad plan: output activations and dz~ (layer order)."""

    def plan_extra(self, lay: Layout, b: int) -> None:
        """Phase 3: buffers of this kind (indices, staging, gradients in transit)."""

    def acc_forward(self, b: int) -> int:
        """Accumulator entries the forward pass writes at once."""
        return 0

    def mask_size(self, lay: Layout, b: int) -> int:
        """Bytes of the ReLU mask (in the wider of the output's and dz~'s widths)."""
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


def quantize_dz(asm: Asm, lay: Layout, layer: Layer, grad: Grad, ein: int, count: int,
                dt: str = "i8") -> int:
    """dz~ of a weight layer to ``dt`` at exponent e[E_DZ] (``DZ<pos>``): the QBP fixed step
    with the configured dither, or (``qbp.step_log2: null``) a dynamic exponent, nearest
    rounding. Returns the register holding the source's exponent as the quantizer read it."""
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
        efit(asm, E_DZ, src_acc, count, ein, dt)  # (with a scale <= 1 the result fits too)
    if grad.mul is not None:
        if src_acc is None:  # pragma: no cover - pooling gradients are in the accumulator
            raise AssertionError("a scaled gradient must be in the accumulator")
        mul = asm.const(grad.mul, set())
        rq(asm, dst, src_acc, count, E_DZ, E_X, rnd, dt, mnemonic="rqm", mul=mul)
        return E_X
    if src_acc is not None:
        rq(asm, dst, src_acc, count, E_DZ, ein, rnd, dt)
    else:
        vcvt(asm, dst, grad.addr, count, E_DZ, ein, rnd, grad.dt, dt)
    return ein


def quantize_masked(asm: Asm, lay: Layout, layer: Layer, grad: Grad, ein: int,
                    count: int) -> None:
    """dz~ of a weight layer (``DZ<pos>``, the layer's gradient width): the incoming gradient
    da quantized by :func:`quantize_dz` and, for a ReLU layer, masked with relu'(z) = [a > 0]
    of its stored output, in the order ``qbp.order`` gives.

    ``quantize_first`` is Q(da) * m. ``mask_first`` is 004's Q(da * m) (eq. 5.1, 5.4): with
    nearest rounding or uniform dither Q(0) = 0 (0 <= u < 2**s), so Q(da * m) = Q(da) * m with
    the same draws and the firmware is the same; with triangular dither Q(0) is -1, 0 or +1, so
    the firmware saves the dither counter c, quantizes da (draws c .. c+n-1), rewinds to c and
    quantizes the mask itself with the same shift (each masked element is 0: its Q(0) with its
    own draw), and selects Q(da) where m = 1, Q(0) where m = 0 (``vsel``). The counter ends at
    c + n either way; the second pass's n draws are counted in ``rng_draws``."""
    gdt = lay.grad_dt(layer)
    tri = lay.needs_q0(layer)
    if tri:
        asm.raw(f"rngrd r{R_CTR}, sel=counter")
    if qbp.handles(lay):  # steps that are not powers of two, adaptive steps, meProp
        qbp.quantize(asm, lay, layer, grad, ein, count, gdt)
        if tri:  # the requantizer's shift: (e[E_DZ] + 30) - e[ein], whatever its multiplier
            asm.raw(f"eaddi e{E_X}, e{E_DZ}, {qbp.EOUT_BIAS}")
        e_out, e_src = E_X, ein
    else:
        e_out, e_src = E_DZ, quantize_dz(asm, lay, layer, grad, ein, count, gdt)
    if not layer.relu:
        return
    mask = relu_mask(asm, lay, layer, count, apply=not tri)
    if tri:  # Q(0) of the masked elements: the mask's zeros with the same draws and shift
        dz = lay.sp[f"DZ{layer.pos}"]
        q0 = lay.sp[f"Q0{layer.pos}"] if f"Q0{layer.pos}" in lay.sp else lay.sp["Q0"]
        asm.raw(f"rngctr r{R_CTR}")
        vcvt(asm, q0, mask, count, e_out, e_src, "triangular", gdt, gdt)
        asm.op("vsel", dz, mask, dz, q0, count, **_dt(gdt))


def relu_mask(asm: Asm, lay: Layout, layer: Layer, count: int, apply: bool = True) -> int:
    """The mask relu'(z) = [a > 0] of the layer's stored output in the gradient's width, and
    (``apply``) dz~ *= mask. The mask overwrites the output itself (dead by now: the layer above
    has used it; the buffer holds the wider of the two widths) except in the dense-only
    networks, which keep a ``MASK`` buffer. Returns the mask's address."""
    a = lay.sp[f"A{layer.pos}"]
    mask = lay.sp["MASK"] if "MASK" in lay.sp else a
    adt, gdt = lay.act_dt(layer.pos), lay.grad_dt(layer)
    asm.op("vrelumask", mask, a, count, **_dt(adt, force=True))
    if adt != gdt:  # the 0/1 mask in the gradient's width (shift 0: exact)
        vcvt(asm, mask, mask, count, E_DZ, E_DZ, "nearest", adt, gdt)
    if apply:
        dz = lay.sp[f"DZ{layer.pos}"]
        asm.op("vmul", dz, dz, mask, count, **_dt(gdt, force=True))
    return mask


def _dt(dt: str, force: bool = False, key: str = "dt") -> dict[str, str]:
    """The ``dt=`` keyword of an instruction (left out for i8 unless ``force``)."""
    return {key: dt} if force or dt != "i8" else {}


# ------------------------------------------------------------------------ weights in and out
def update_state(lay: Layout) -> list[str]:
    """The per-element state next to W: LZ (lazy residual or shadow copy), with momentum the
    velocity VL, with Adam the moments M and V."""
    return lay.state_names()


def tile_in(asm: Asm, lay: Layout, p: Param, k0: int, k1: int,
            with_state: bool) -> dict[str, int]:
    """Scratchpad addresses of rows k0:k1 of a parameter (and its update state); DMA them in
    when the weights stream from DRAM."""
    n_out = p.shape[-1]
    names = ["W"] + (update_state(lay) if with_state else [])
    if not lay.streams(p):
        return {x: lay.sp[p.key(x)] + lay.state_bytes(x, p) * k0 * n_out for x in names}
    nb = (k1 - k0) * n_out
    for x in names:
        size = lay.state_bytes(x, p) * nb
        base = lay.dram[p.key(x)] + lay.state_bytes(x, p) * k0 * n_out
        asm.op("dmald", lay.sp[f"{x}T"], base, 1, size, size, size)
    return {x: lay.sp[f"{x}T"] for x in names}


def tile_out(asm: Asm, lay: Layout, p: Param, k0: int, k1: int) -> None:
    if not lay.streams(p):
        return
    n_out = p.shape[-1]
    nb = (k1 - k0) * n_out
    for x in ["W"] + update_state(lay):
        size = lay.state_bytes(x, p) * nb
        base = lay.dram[p.key(x)] + lay.state_bytes(x, p) * k0 * n_out
        asm.op("dmast", base, lay.sp[f"{x}T"], 1, size, size, size)


def finish_update(asm: Asm, lay: Layout, p: Param, tiles: list[tuple[int, int]],
                  tag: str = "") -> None:
    """After the last tile of ``p``'s update: its dynamic exponent (programs/compiler/update.py)."""
    param_exponent(asm, lay, p, tiles, tag, tile_in, tile_out)


def save_input_grad_exp(asm: Asm, lay: Layout, w: Param) -> None:
    """With dynamic exponents the weights' exponent may change in the update, after the input
    gradient was made with the old one: its exponent (weights' + dz~'s) is kept in a word."""
    if lay.dynamic:
        lay.exps.add(asm, E_T0, w.ename, E_DZ)
        lay.exps.save(asm, f"da{w.layer.pos}", E_T0)


# ------------------------------------------------------------------------ the update
def add_bias(asm: Asm, lay: Layout, layer: Layer, rows: int, cols: int) -> None:
    """``vbias``: the layer's bias onto every row of the [rows, cols] forward output in the
    accumulator (exponent e[E_T0])."""
    eb = lay.exps.load(asm, f"b{layer.pos}", X_B)
    dt = lay.param_of(layer, bias=True).dt
    r = [asm.const(v, set()) for v in (lay.acc["Z"], lay.sp[f"B{layer.pos}"], rows, cols)]
    asm.raw(f"vbias r{r[0]}, r{r[1]}, r{r[2]}, r{r[3]}, e{E_T0}, e{eb}, dt={dt}")


def input_grad(lay: Layout, w: Param) -> Grad:
    """The input gradient a weight layer leaves in the accumulator (``DA``): its exponent is
    the weights' plus dz~'s, put into E_T0 by the layer below when it starts (from the word
    :func:`save_input_grad_exp` wrote, when exponents are dynamic)."""
    name = w.ename

    def exp(asm: Asm) -> int:
        if lay.dynamic:
            ldw_abs(asm, R_T0, lay.exps.mem[f"da{w.layer.pos}"])
            asm.raw(f"esetr e{E_T0}, r{R_T0}")
        else:
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
    gdt = lay.grad_dt(p.layer)
    asm.label(f"train.bwd.l{p.layer.pos}.b", f"gradient of b{p.layer.pos}")
    if dz_rows_major:  # db [F, 1] = dz~ [F, B] @ ones [B, 1]
        asm.op("gemm", lay.acc["DW"], dz, lay.sp["ONES"], rows, cols, 1, sa=1,
               **_dt(gdt, key="da"))
        n = rows
    else:  # db [1, F] = ones [1, M] @ dz~ [M, F]
        asm.op("gemm", lay.acc["DW"], lay.sp["ONES"], dz, 1, rows, cols, sb=1,
               **_dt(gdt, key="db"))
        n = cols
    update(asm, lay, p, {x: lay.sp[p.key(x)] for x in ["W"] + update_state(lay)}, n, ".b",
           e_grad=E_DZ)
    finish_update(asm, lay, p, [(0, 1)], ".b")


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
