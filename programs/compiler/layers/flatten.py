"""Flatten: the NHWC image ``[B, H, W, C]`` becomes the feature-major ``[H W C, B]`` that
dense layers read (features in (h, w, c) order), by a transpose through DRAM; the exponent is
unchanged. Backward brings the gradient from the dense layer above (feature-major, in the
accumulator) to INT16 with a dynamic exponent (nearest) and transposes it back to NHWC in the
scratchpad (``GY<pos>``) for the layer below. When the dense layer above reads the sample-major
``[B, H W C]`` directly (its weights in one tile), flatten does nothing at all
(``passthrough``), forward or backward.
"""

from __future__ import annotations

from programs.compiler.emit import E_X, Asm, efit, rq
from programs.compiler.layers.base import (
    Lowering,
    act_in,
    in_exp,
    transpose,
)
from programs.compiler.layout import Grad, Layout, fixed_exp


class Flatten(Lowering):
    passthrough = False  # the dense layer above reads NHWC [B, n] as it is (set by the planner)

    def exp_alias(self) -> str | None:
        return in_exp(self.layer)

    def plan_acts(self, lay: Layout, b: int) -> None:
        p = self.layer.pos
        lay.buf(f"A{p}", self.layer.out_size * b * lay.act_eb(p), lay.t_fwd(p), lay.t_bwd(p))

    def plan_extra(self, lay: Layout, b: int) -> None:
        n, p = self.layer.out_size * b, self.layer.pos
        lay.buf(f"GF{p}", 2 * n, lay.t_bwd(p), lay.t_bwd(p))
        lay.buf(f"GY{p}", 2 * n, lay.t_bwd(p), lay.t_bwd(p - 1))  # read by the layer below
        lay.need_staging(2 * n)

    def sp_grad_size(self, b: int) -> int:
        return self.layer.out_size * b

    def forward(self, asm: Asm, lay: Layout, prefix: str) -> None:
        layer, b = self.layer, lay.spec.batch_size
        l, n = layer.pos, layer.out_size
        shape = "x".join(map(str, layer.in_shape))
        if self.passthrough:
            asm.label(f"{prefix}.fwd.l{l}", f"layer {l}: flatten {shape} -> {n} (NHWC [B, {n}] "
                      "as it is: the dense layer above reads it sample-major)")
            return
        asm.label(f"{prefix}.fwd.l{l}", f"layer {l}: flatten {shape} -> {n} (NHWC [B, {n}] -> "
                  f"[{n}, B])")
        transpose(asm, lay, lay.sp[f"A{l}"], act_in(lay, layer), b, n, lay.act_eb(l))

    def backward(self, asm: Asm, lay: Layout, grad: Grad, need_dx: bool) -> Grad | None:
        layer, b = self.layer, lay.spec.batch_size
        l, n = layer.pos, layer.out_size
        sp = lay.sp
        asm.label(f"train.bwd.l{l}", f"backward of layer {l} (flatten)")
        if not need_dx:  # pragma: no cover - nothing below needs a gradient
            return None
        if self.passthrough:  # the gradient is NHWC already
            return grad
        ein = grad.exp(asm)
        efit(asm, E_X, grad.addr, n * b, ein, "i16")
        rq(asm, sp[f"GF{l}"], grad.addr, n * b, E_X, ein, "nearest", "i16")
        transpose(asm, lay, sp[f"GY{l}"], sp[f"GF{l}"], n, b, 2)  # [n, B] -> [B, n]
        return Grad("sp", sp[f"GY{l}"], fixed_exp(E_X), dt="i16")
