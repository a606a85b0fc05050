"""Dense (fully connected) layers: ``z = a W (+ b)``, W [n_in, n_out] INT8 or INT16.

The input ``a`` is feature-major ``[n_in, B]``, or sample-major ``[B, n_in]`` (``in_s``) when its
producer makes it so (a flatten, a dense layer with a bias) and this layer's weights are one tile
(resident, or streamed whole): then the producer's layout change is skipped. A hidden layer
without bias computes ``z^T = W^T a^T`` straight into the feature-major layout its successor
reads. A layer with a bias computes ``z = a W`` as ``[B, n_out]`` (``vbias`` adds a per-column
vector); a hidden one keeps that layout when its successor reads it (``out_s``), else it turns
its output feature-major through DRAM (:func:`transpose`). The last layer gives INT16
logits ``[B, classes]`` with their own dynamic exponent. ``dz~`` has the layout of the output;
the input gradient has the layout of the input. INT16 operands (``bits``) run as byte-passes
of the same ``gemm`` (``da``/``db``).

Weights stream from DRAM in row tiles (rows k0:k1 of W are contiguous; so are rows k0:k1 of
``a^T``) when they do not fit the scratchpad.
"""

from __future__ import annotations

from programs.compiler import qbp
from programs.compiler.emit import (
    E_DZ,
    E_S,
    E_T0,
    VEXP_MIN_E,
    Asm,
    clamp_exp_min,
    efit,
    rq,
)
from programs.compiler.exps import X_IN
from programs.compiler.layers.base import (
    Lowering,
    _dt,
    act_in,
    add_bias,
    bias_backward,
    finish_update,
    in_exp,
    input_grad,
    quantize_masked,
    save_input_grad_exp,
    tile_in,
    tile_out,
    transpose,
    update,
)
from programs.compiler.layout import Grad, Layout


def _row_tiles(rows: int, tile: int) -> list[tuple[int, int]]:
    return [(k, min(k + tile, rows)) for k in range(0, rows, tile)]


class Dense(Lowering):
    @property
    def n_in(self) -> int:
        return self.layer.in_shape[0]

    @property
    def n_out(self) -> int:
        return self.layer.units

    in_s = False  # the input is sample-major [B, n_in] (set by the planner)
    out_s_hidden = False  # a hidden layer with a bias keeps its [B, n_out] output

    @property
    def transposed_out(self) -> bool:
        """Hidden layer without bias: z^T [n_out, B] directly."""
        return not self.last and not self.layer.bias

    @property
    def out_s(self) -> bool:
        """The stored output (and dz~) is sample-major [B, n_out]."""
        return self.last or self.out_s_hidden

    def produces_s(self) -> bool:
        """Whether the natural output layout is sample-major (computed as z = a W)."""
        return self.layer.bias

    def plan_acts(self, lay: Layout, b: int) -> None:
        p, n = self.layer.pos, self.n_out * b
        if not self.last:
            # the ReLU mask overwrites the output in dz~'s width (unless there is a MASK)
            eb = lay.act_eb(p) if lay.timed is None else max(lay.act_eb(p),
                                                             lay.grad_eb(self.layer))
            lay.buf(f"A{p}", n * eb, lay.t_fwd(p), lay.t_bwd(p))
        lay.buf(f"DZ{p}", n * lay.grad_eb(self.layer), lay.t_bwd(p), lay.t_bwd(p))

    def plan_extra(self, lay: Layout, b: int) -> None:
        p = self.layer.pos
        if self.layer.bias and not self.last:
            lay.buf(f"ZS{p}", self.n_out * b * lay.act_eb(p), lay.t_fwd(p), lay.t_fwd(p))
            lay.need_staging(self.n_out * b * lay.act_eb(p))
        if lay.timed is not None and lay.needs_q0(self.layer):
            lay.buf(f"Q0{p}", self.n_out * b * lay.grad_eb(self.layer), lay.t_bwd(p),
                    lay.t_bwd(p))

    def acc_forward(self, b: int) -> int:
        return self.n_out * b

    def mask_size(self, lay: Layout, b: int) -> int:
        if not self.layer.relu:
            return 0
        return self.n_out * b * max(lay.act_eb(self.layer.pos), lay.grad_eb(self.layer))

    def tiles(self, budget: int) -> list[tuple[int, int]]:
        return _row_tiles(self.n_in, min(max(1, budget // self.n_out), self.n_in))

    # ------------------------------------------------------------------ forward
    def forward(self, asm: Asm, lay: Layout, prefix: str) -> None:
        layer, b = self.layer, lay.spec.batch_size
        l, n_in, n_out = layer.pos, self.n_in, self.n_out
        sp, acc = lay.sp, lay.acc
        w_param = lay.param_of(layer)
        asm.label(f"{prefix}.fwd.l{l}", f"layer {l}: {n_in} -> {n_out}"
                  + (f" ({layer.describe()})" if not lay.net.is_mlp else ""))
        a_in = act_in(lay, layer)
        adt, aeb = lay.act_dt(l - 1), lay.act_eb(l - 1)
        wdt = w_param.dt
        chunks = lay.tiles[l] if lay.streams(w_param) else [(0, n_in)]
        for k0, k1 in chunks:  # K-chunks (rows of W), accumulated
            w = tile_in(asm, lay, w_param, k0, k1, with_state=False)["W"]
            kw = {"ta": 1, "acc": 1} if k0 else {"ta": 1}
            w_a = {**_dt(wdt, key="da"), **_dt(adt, key="db")}  # W is A, a is B
            a_w = {**_dt(adt, key="da"), **_dt(wdt, key="db")}
            if self.in_s:  # one chunk: a is [B, n_in]
                if self.transposed_out:  # z^T [n_out, B] = W^T @ a^T
                    asm.op("gemm", acc["Z"], w, a_in, n_out, n_in, b, ta=1, tb=1, **w_a)
                else:  # z [B, n_out] = a @ W
                    asm.op("gemm", acc["Z"], a_in, w, b, n_in, n_out, **a_w)
            elif self.transposed_out:
                # z^T [n_out, B] += W[k0:k1]^T @ a^T[k0:k1]
                asm.op("gemm", acc["Z"], w, a_in + k0 * b * aeb, n_out, k1 - k0, b, **kw,
                       **w_a)
            else:
                # z [B, n_out] += a[:, k0:k1] @ W[k0:k1]
                asm.op("gemm", acc["Z"], a_in + k0 * b * aeb, w, b, k1 - k0, n_out, **kw,
                       **a_w)
        lay.exps.add(asm, E_T0, w_param.ename, in_exp(layer), X_IN)
        if layer.bias:
            add_bias(asm, lay, layer, b, n_out)
        count = n_out * b
        if not self.last:
            odt = lay.act_dt(l)
            e_out = lay.exps.target(self.out_exp)
            efit(asm, e_out, acc["Z"], count, E_T0, odt)
            dst = sp[f"A{l}"] if self.transposed_out or self.out_s else sp[f"ZS{l}"]
            rq(asm, dst, acc["Z"], count, e_out, E_T0, "nearest", odt,
               relu=1 if layer.relu else 0)
            lay.exps.commit(asm, self.out_exp)
            if not (self.transposed_out or self.out_s):  # [B, n_out] -> [n_out, B]
                transpose(asm, lay, sp[f"A{l}"], sp[f"ZS{l}"], b, n_out, lay.act_eb(l))
        else:
            # INT16 logits with a dynamic exponent
            efit(asm, E_S, acc["Z"], count, E_T0, "i16")
            clamp_exp_min(asm, E_S, VEXP_MIN_E, f"{prefix}.fwd.l{l}.clamp")
            rq(asm, sp["S"], acc["Z"], count, E_S, E_T0, "nearest", "i16")

    # ------------------------------------------------------------------ backward
    def backward(self, asm: Asm, lay: Layout, grad: Grad, need_dx: bool) -> Grad | None:
        layer, b = self.layer, lay.spec.batch_size
        l, n_out = layer.pos, self.n_out
        sp, acc = lay.sp, lay.acc
        asm.label(f"train.bwd.l{l}", f"QBP backward of layer {l}")
        ein = grad.exp(asm)
        # dz~ = Q(da * relu'(z)) (qbp.order; [B, n_out] (out_s) or [n_out, B])
        quantize_masked(asm, lay, layer, grad, ein, n_out * b)
        qbp.after_mask(asm, lay, layer, self.out_s, n_out * b, lay.grad_dt(layer))  # meProp
        w_param = lay.param_of(layer)
        tiles = lay.tiles[l]
        dz = sp[f"DZ{l}"]
        adt, aeb = lay.act_dt(l - 1), lay.act_eb(l - 1)
        gdt, wdt = lay.grad_dt(layer), w_param.dt
        a_g = {**_dt(adt, key="da"), **_dt(gdt, key="db")}  # dW: a is A, dz~ is B
        g_w = {**_dt(gdt, key="da"), **_dt(wdt, key="db")}  # da: dz~ is A, W is B
        w_g = {**_dt(wdt, key="da"), **_dt(gdt, key="db")}  # da^T: W is A, dz~ is B
        for t, (k0, k1) in enumerate(tiles):
            tag = f".t{t}" if len(tiles) > 1 else ""
            if t:
                asm.label(f"train.bwd.l{l}{tag}", f"rows {k0}:{k1} of W{l}")
            at = tile_in(asm, lay, w_param, k0, k1, with_state=True)
            w = at["W"]
            qbp.tile_hook(asm, lay, layer, w, k0, k1, need_dx)  # adaptive step: variances
            a_rows = act_in(lay, layer) + k0 * b * aeb
            rows = k1 - k0
            if self.in_s:  # one tile; a is [B, n_in], the input gradient [B, n_in] too
                tdz = {} if self.out_s else {"tb": 1}
                # dW [n_in, n_out] = a^T (a stored [B, n_in]: ta=1) @ dz~
                asm.op("gemm", acc["DW"], a_rows, dz, rows, b, n_out, ta=1, **tdz, sb=1,
                       **a_g)
                if need_dx:
                    # da [B, n_in] = dz~ [B, n_out] @ W^T (W stored [n_in, n_out]: tb=1)
                    asm.op("gemm", acc["DA"], dz, w, b, n_out, rows,
                           **({} if self.out_s else {"ta": 1}), tb=1, sa=1, **g_w)
            elif self.out_s:
                # dW [rows, C] = a^T [rows, B] @ dz [B, C]             (zero-skip on dz)
                asm.op("gemm", acc["DW"], a_rows, dz, rows, b, n_out, sb=1, **a_g)
                if need_dx:
                    # da^T [rows, B] = W [rows, C] @ dz^T   (dz stored [B, C]: tb=1)
                    asm.op("gemm", acc["DA"] + k0 * b, w, dz, rows, n_out, b, tb=1, sb=1,
                           **w_g)
            else:
                # dW [rows, n_out] = a^T [rows, B] @ dz [B, n_out]  (dz stored [n_out, B]: tb=1)
                asm.op("gemm", acc["DW"], a_rows, dz, rows, b, n_out, tb=1, sb=1, **a_g)
                if need_dx:
                    # da^T [rows, B] = W [rows, n_out] @ dz^T [n_out, B]
                    asm.op("gemm", acc["DA"] + k0 * b, w, dz, rows, n_out, b, sb=1, **w_g)
            lay.exps.add(asm, E_T0, in_exp(layer), E_DZ, X_IN)  # exponent of dW
            update(asm, lay, w_param, at, rows * n_out, tag, tile=t)
            tile_out(asm, lay, w_param, k0, k1)
        if need_dx:
            save_input_grad_exp(asm, lay, w_param)
        finish_update(asm, lay, w_param, tiles)
        if layer.bias:
            bias_backward(asm, lay, lay.param_of(layer, bias=True), not self.out_s,
                          b if self.out_s else n_out, n_out if self.out_s else b)
        return input_grad(lay, w_param) if need_dx else None

    def skip_factor(self, need_dx: bool) -> int:
        return self.n_in * (2 if need_dx else 1) + (1 if self.layer.bias else 0)

    def dz_count(self, b: int) -> int:
        return self.n_out * b
