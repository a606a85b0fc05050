"""Convolution layers: one ``conv`` instruction per GEMM over the im2col view of the NHWC input
(docs/isa.md): ``mode=fwd`` for ``z [M, F] = col(X) W``, ``mode=wgrad`` for
``dW [K, F] = col(X)^T dz~`` and ``mode=dgrad`` for ``dX`` by col2im accumulation of
``dz~ W^T``; M = B OH OW output pixels, K = KH KW C. The output ``[M, F]`` is the NHWC image
``[B, OH, OW, F]``. A bias is added per filter with ``vbias``; its gradient is the column sums of
dz~ (a GEMM with a ones vector). Weights are one tile (a convolution needs all of W).
"""

from __future__ import annotations

from programs.compiler.emit import E_DZ, E_T0, Asm, efit, rq
from programs.compiler.exps import X_IN
from programs.compiler.layers.base import (
    Lowering,
    _dt,
    act_in,
    add_bias,
    bias_backward,
    finish_update,
    image_label,
    in_exp,
    input_grad,
    layer_geometry,
    quantize_masked,
    save_input_grad_exp,
    tile_in,
    tile_out,
    update,
)
from programs.compiler.layout import Grad, Layout


class Conv(Lowering):
    def pixels(self, b: int) -> int:
        """M = B OH OW."""
        _, oh, ow = self.layer.out_shape
        return b * oh * ow

    def plan_acts(self, lay: Layout, b: int) -> None:
        p, n = self.layer.pos, self.layer.out_size * b
        geb = lay.grad_eb(self.layer)
        # the ReLU mask overwrites the output, in dz~'s width
        lay.buf(f"A{p}", n * max(lay.act_eb(p), geb), lay.t_fwd(p), lay.t_bwd(p))
        lay.buf(f"DZ{p}", n * geb, lay.t_bwd(p), lay.t_bwd(p))

    def plan_extra(self, lay: Layout, b: int) -> None:
        p = self.layer.pos
        if self.layer.bias:
            lay.need_ones(self.pixels(b))
        if lay.needs_q0(self.layer):
            lay.buf(f"Q0{p}", self.layer.out_size * b * lay.grad_eb(self.layer),
                    lay.t_bwd(p), lay.t_bwd(p))

    def acc_forward(self, b: int) -> int:
        return self.layer.out_size * b

    def mask_size(self, lay: Layout, b: int) -> int:
        if not self.layer.relu:
            return 0
        return self.layer.out_size * b * max(lay.act_eb(self.layer.pos),
                                             lay.grad_eb(self.layer))

    def tiles(self, budget: int) -> list[tuple[int, int]]:
        return [(0, self.layer.fan_in)]  # the instruction needs all of W

    def _geo(self, asm: Asm, b: int) -> list[int]:
        return list(layer_geometry(self.layer, b))

    def forward(self, asm: Asm, lay: Layout, prefix: str) -> None:
        layer, b = self.layer, lay.spec.batch_size
        l = layer.pos
        sp, acc = lay.sp, lay.acc
        f = layer.units
        image_label(asm, prefix, layer)
        w_param = lay.param_of(layer)
        wt = tile_in(asm, lay, w_param, 0, layer.fan_in, with_state=False)["W"]
        # z [M, F] = col(X) [M, K] @ W [K, F]
        asm.op("conv", acc["Z"], act_in(lay, layer), wt, *self._geo(asm, b), mode="fwd",
               **_dt(lay.act_dt(l - 1), key="da"), **_dt(w_param.dt, key="db"))
        lay.exps.add(asm, E_T0, w_param.ename, in_exp(layer), X_IN)
        m = self.pixels(b)
        if layer.bias:
            add_bias(asm, lay, layer, m, f)
        odt = lay.act_dt(l)
        e_out = lay.exps.target(self.out_exp)
        efit(asm, e_out, acc["Z"], m * f, E_T0, odt)
        rq(asm, sp[f"A{l}"], acc["Z"], m * f, e_out, E_T0, "nearest", odt,
           relu=1 if layer.relu else 0)
        lay.exps.commit(asm, self.out_exp)

    def backward(self, asm: Asm, lay: Layout, grad: Grad, need_dx: bool) -> Grad | None:
        layer, b = self.layer, lay.spec.batch_size
        l = layer.pos
        sp, acc = lay.sp, lay.acc
        f = layer.units
        m = self.pixels(b)
        asm.label(f"train.bwd.l{l}", f"QBP backward of layer {l} ({layer.describe()})")
        ein = grad.exp(asm)
        quantize_masked(asm, lay, layer, grad, ein, m * f)  # dz~ [M, F]
        w_param = lay.param_of(layer)
        at = tile_in(asm, lay, w_param, 0, layer.fan_in, with_state=True)
        geo = self._geo(asm, b)
        dz = sp[f"DZ{l}"]
        gdt = lay.grad_dt(layer)
        # dW [K, F] = col(X)^T [K, M] @ dz~ [M, F]                        (zero-skip on dz~)
        asm.op("conv", acc["DW"], act_in(lay, layer), dz, *geo, mode="wgrad", sb=1,
               **_dt(lay.act_dt(l - 1), key="da"), **_dt(gdt, key="db"))
        if need_dx:
            # dX [B, H, W, C] = col2im(dz~ [M, F] @ W^T [F, K])          (zero-skip on dz~)
            asm.op("conv", acc["DA"], dz, at["W"], *geo, mode="dgrad", sa=1,
                   **_dt(gdt, key="da"), **_dt(w_param.dt, key="db"))
        lay.exps.add(asm, E_T0, in_exp(layer), E_DZ, X_IN)  # exponent of dW
        update(asm, lay, w_param, at, layer.fan_in * f, "")
        tile_out(asm, lay, w_param, 0, layer.fan_in)
        if need_dx:
            save_input_grad_exp(asm, lay, w_param)
        finish_update(asm, lay, w_param, [(0, layer.fan_in)])
        if layer.bias:
            bias_backward(asm, lay, lay.param_of(layer, bias=True), False, m, f)
        return input_grad(lay, w_param) if need_dx else None

    def skip_factor(self, need_dx: bool) -> int:
        return self.layer.fan_in * (2 if need_dx else 1) + (1 if self.layer.bias else 0)

    def dz_count(self, b: int) -> int:
        return self.layer.out_size * b
