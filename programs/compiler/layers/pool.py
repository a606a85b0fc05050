"""Pooling on the vector unit. Max pooling (``vmaxpool``) keeps its input's exponent and, in
training, the uint8 index of each window's first maximum, which its backward (``vunpool
mode=max``) scatters the gradient to. Average pooling sums windows into the accumulator
(``vsumpool``) and scales by ``round(2**16 / (KH KW)) * 2**-16`` in ``rqm`` onto a dynamic
INT8 exponent; its backward spreads the gradient over each window (``vunpool mode=sum``) and
the layer below applies the same scale when it quantizes.

The gradient arriving from the layer above is brought to INT16 with a dynamic exponent
(nearest rounding) in the scratchpad (``GY<pos>``) when it is in the accumulator: ``vunpool`` reads
the scratchpad.
"""

from __future__ import annotations

import math

from programs.compiler.emit import E_T0, E_T1, E_X, Asm, efit, rq
from programs.compiler.exps import X_IN
from programs.compiler.layers.base import (
    POOL_MUL_BITS,
    Lowering,
    act_in,
    image_label,
    in_exp,
    layer_geometry,
)
from programs.compiler.layout import Grad, Layout, fixed_exp


class Pool(Lowering):
    @property
    def is_max(self) -> bool:
        return self.layer.kind == "maxpool"

    @property
    def area(self) -> int:
        return self.layer.kernel[0] * self.layer.kernel[1]

    @property
    def mul(self) -> int:
        """The average's fixed-point scale round(2**16 / (KH KW))."""
        return round(2**POOL_MUL_BITS / self.area)

    def exp_alias(self) -> str | None:
        return in_exp(self.layer) if self.is_max else None

    def plan_acts(self, lay: Layout, b: int) -> None:
        p, n = self.layer.pos, self.layer.out_size * b
        lay.buf(f"A{p}", n * lay.act_eb(p), lay.t_fwd(p), lay.t_bwd(p))
        if self.is_max:
            lay.buf(f"IDX{p}", n, lay.t_fwd(p), lay.t_bwd(p))

    def plan_extra(self, lay: Layout, b: int) -> None:
        p = self.layer.pos
        lay.buf(f"GY{p}", 2 * self.layer.out_size * b, lay.t_bwd(p), lay.t_bwd(p))

    def acc_forward(self, b: int) -> int:
        return 0 if self.is_max else self.layer.out_size * b

    def forward(self, asm: Asm, lay: Layout, prefix: str) -> None:
        layer, b = self.layer, lay.spec.batch_size
        l = layer.pos
        sp, acc = lay.sp, lay.acc
        image_label(asm, prefix, layer)
        geo = list(layer_geometry(layer, b))
        dt = lay.act_dt(l)  # the input's width
        if self.is_max:
            train = prefix == "train"
            asm.op("vmaxpool", sp[f"A{l}"], act_in(lay, layer),
                   sp[f"IDX{l}"] if train else 0, *geo, dt=dt,
                   **({"idx": 1} if train else {}))
            return
        n = layer.out_size * b
        asm.op("vsumpool", acc["Z"], act_in(lay, layer), *geo, dt=dt)
        # the sums fit the width at e_s (efit); the average at e_s - floor(log2(KH KW))
        x = lay.exps.load(asm, in_exp(layer), X_IN)
        efit(asm, E_T1, acc["Z"], n, x, dt)
        e_out = lay.exps.target(self.out_exp)
        asm.raw(f"eaddi e{e_out}, e{E_T1}, {-int(math.floor(math.log2(self.area)))}")
        asm.raw(f"eaddi e{E_T0}, e{x}, {-POOL_MUL_BITS}")
        mul = asm.const(self.mul, set())
        rq(asm, sp[f"A{l}"], acc["Z"], n, e_out, E_T0, "nearest", dt, mnemonic="rqm", mul=mul)
        lay.exps.commit(asm, self.out_exp)

    def backward(self, asm: Asm, lay: Layout, grad: Grad, need_dx: bool) -> Grad | None:
        layer, b = self.layer, lay.spec.batch_size
        l = layer.pos
        sp, acc = lay.sp, lay.acc
        asm.label(f"train.bwd.l{l}", f"backward of layer {l} ({layer.describe()})")
        if not need_dx:  # pragma: no cover - a pooling layer below every weight layer
            return None
        ein = grad.exp(asm)
        n = layer.out_size * b
        if grad.where == "acc":  # dY to INT16 in the scratchpad (vunpool reads it there)
            efit(asm, E_X, grad.addr, n, ein, "i16")
            rq(asm, sp[f"GY{l}"], grad.addr, n, E_X, ein, "nearest", "i16")
            src, e_dy, dt = sp[f"GY{l}"], E_X, "i16"
        else:
            src, e_dy, dt = grad.addr, ein, grad.dt
        if e_dy != E_T1:
            asm.raw(f"eaddi e{E_T1}, e{e_dy}, 0")
        geo = list(layer_geometry(layer, b))
        asm.op("vunpool", acc["DA"], src, sp[f"IDX{l}"] if self.is_max else 0, *geo,
               mode="max" if self.is_max else "sum", dt=dt)
        return Grad("acc", acc["DA"], fixed_exp(E_T1), mul=None if self.is_max else self.mul)
