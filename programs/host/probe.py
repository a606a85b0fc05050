"""Looking inside one training step on the chip, as a debugger would, without changing training.

:class:`StepProbe` stops a :class:`~programs.host.driver.ChipTrainer` at its batch-loop head,
saves the machine (every memory region the step can write, registers, exponents, the dither
generator, flags, counters), runs the step one or more times with breakpoints at the firmware's
labels to read what the firmware holds there, and puts the machine back: the training run that
continues is bit-identical to one that was never probed (``tests/test_qbp_stats.py``).

Per weight layer of a dense network (``net.is_mlp``), in one pass of the step:

* at ``train.bwd.l<pos>``: the incoming gradient (the classifier gradient g, INT16 at
  2**-(BW-1), or the accumulator block ``DA``) with its exponent and significand;
* at ``train.upd.l<pos>[.t<i>]`` (before each tile's update): the tile of dW in the accumulator,
  dz~ (its width, after the ReLU mask) and the step that quantized it (e[E_DZ], and r19 on the
  general path).

:meth:`StepProbe.forward` reads the forward pass: activations (INT8 with their exponents), the
weights before the step's update and the classifier gradient, from which an exact backward
pass can be computed on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from programs.compiler.emit import E_DZ, E_G
from programs.compiler.qbp import MANT_ONE, R_QM


@dataclass
class LayerPass:
    """What one backward pass left in one weight layer (arrays in the firmware's layouts)."""

    x: np.ndarray  # the incoming gradient, integers [n_out, B] (sample-major [B, C] on top)
    x_exp: int  # ... its exponent
    x_mant: int  # ... and significand (Q15: 2**15 is 1)
    dz: np.ndarray  # dz~ INT8, same layout
    dz_exp: int
    dz_mant: int
    dw: np.ndarray  # int64 [n_in, n_out] (sum over the batch, not the mean)


@dataclass
class ForwardState:
    """The forward pass of one step: per layer position its INT8 output and exponent."""

    acts: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)  # [n, B] feature-major
    weights: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)  # [n_in, n_out]
    g: np.ndarray | None = None  # the classifier gradient [B, C], INT16
    g_exp: int = 0


class StepProbe:
    """Probe the next training step of ``tr`` (which must be stopped at ``train.loop``)."""

    def __init__(self, tr: Any) -> None:
        self.tr = tr
        lay = tr.layout
        if not lay.net.is_mlp:
            raise ValueError("StepProbe reads dense networks without biases (net.is_mlp)")
        if lay.dynamic:
            raise ValueError("StepProbe reads fixed weight exponents (bits.weight_exponent)")
        self.m = tr.m
        self.labels = tr.program.labels
        if self.m.pc != self.labels["train.loop"] or self.m.halted:
            raise ValueError("the trainer must be stopped at its batch-loop head")
        self.layers = list(lay.net.weight_layers)

    # ------------------------------------------------------------------ save and restore
    def _regions(self) -> list[tuple[int, int]]:
        tr, lay = self.tr, self.tr.layout
        b = lay.spec.batch_size
        step = int(self.m.r[20])  # R_B: the batch about to run
        out = [(0, lay.dram["DATA"])]  # PARAMS, parameters, exponents, staging, step table
        out.append((tr.y_addr + step * lay.batch_y_bytes, lay.batch_y_bytes))
        out.append((tr.ro_addr + step * 4 * b, 4 * b))
        if tr.qlog_addr:
            from programs.compiler.qbp import LOG_BYTES

            nb = LOG_BYTES * lay.qbp.nw
            out.append((tr.qlog_addr + step * nb, nb))
        return out

    def save(self) -> dict[str, Any]:
        m = self.m
        return {"dram": [(a, m.dram[a : a + n].copy()) for a, n in self._regions()],
                "spad": m.spad.copy(), "acc": m.acc.copy(), "counts": m.counts.copy(),
                "r": list(m.r), "e": list(m.e), "rng": list(m.rng),
                "scalars": (m.flags, m.pc, m.halted, m.steps, m.cycles, m.dma_free),
                "inflight": list(m.inflight)}

    def restore(self, st: dict[str, Any]) -> None:
        m = self.m
        for a, data in st["dram"]:
            m.dram[a : a + data.size] = data
        m.spad[:] = st["spad"]
        m.acc[:] = st["acc"]
        m.counts[:] = st["counts"]
        m.r, m.e, m.rng = list(st["r"]), list(st["e"]), list(st["rng"])
        m.flags, m.pc, m.halted, m.steps, m.cycles, m.dma_free = st["scalars"]
        m.inflight = list(st["inflight"])

    # ------------------------------------------------------------------ reading
    def _run_to(self, label: str) -> None:
        self.tr._run(break_pc=self.labels[label])

    def exponent(self, name: str) -> int:
        """The current value of exponent ``name`` (``a<pos>``, ``w<pos>``)."""
        ex = self.tr.layout.exps
        name = ex._name(name)
        if name in ex.regs:
            return int(self.m.e[ex.regs[name]])
        if name in ex.fixed:
            return int(ex.fixed[name])
        return int(np.frombuffer(self.m.read_dram(ex.mem[name], 4), "<i4")[0])

    def _weights(self, pos: int) -> np.ndarray:
        lay = self.tr.layout
        p = next(p for p in lay.params if p.layer.pos == pos and not p.is_bias)
        nb = 2 if p.dt == "i16" else 1
        if lay.streams(p):
            raw = self.m.read_dram(lay.dram[p.key("W")], nb * p.size)
            return np.frombuffer(raw, "<i2" if nb == 2 else np.int8).reshape(p.shape).copy()
        return self.m.sp_elems(lay.sp[p.key("W")], p.size, nb).reshape(p.shape).copy()

    def forward(self) -> ForwardState:
        """Run the step's forward pass and softmax (on a saved machine, restored after) and
        read activations, weights and the classifier gradient."""
        st = self.save()
        lay = self.tr.layout
        b = lay.spec.batch_size
        top = self.layers[-1]
        try:
            self._run_to(f"train.bwd.l{top.pos}")
            fs = ForwardState()
            fs.acts[0] = (self.m.sp_elems(lay.sp["A0"], lay.net.features * b, 1)
                          .reshape(-1, b).copy(), self.exponent("a0"))
            for x in self.layers[:-1]:
                nb = 2 if lay.act_dt(x.pos) == "i16" else 1
                fs.acts[x.pos] = (self.m.sp_elems(lay.sp[f"A{x.pos}"], x.units * b, nb)
                                  .reshape(x.units, b).copy(), self.exponent(f"a{x.pos}"))
            for x in self.layers:
                fs.weights[x.pos] = (self._weights(x.pos), self.exponent(f"w{x.pos}"))
            c = top.units
            gdt = 2 if lay.gbytes == 2 else 1
            fs.g = self.m.sp_elems(lay.sp["G"], b * c, gdt).reshape(b, c).astype(np.int64)
            fs.g_exp = int(self.m.e[E_G])
        finally:
            self.restore(st)
        return fs

    def backward(self, seed: int | None = None) -> dict[int, LayerPass]:
        """Run the whole step once (restored after) with the dither generator reseeded to
        ``seed`` (None: as training would run it) and read every weight layer's pass."""
        st = self.save()
        lay = self.tr.layout
        b = lay.spec.batch_size
        general = lay.qbp.general
        out: dict[int, LayerPass] = {}
        try:
            if seed is not None:
                self.m.rng = [seed & ((1 << 64) - 1), 0]
            for x in reversed(self.layers):
                self._run_to(f"train.bwd.l{x.pos}")
                if x is self.layers[-1]:
                    xs = self.m.sp_elems(lay.sp["G"], b * x.units, lay.gbytes)
                    xv = xs.reshape(b, x.units).astype(np.int64)
                    x_exp, x_mant = int(self.m.e[E_G]), MANT_ONE
                else:
                    above = next(y for y in self.layers if y.widx == x.widx + 1)
                    xv = self.m.acc_range(lay.acc["DA"], x.units * b).reshape(
                        x.units, b).astype(np.int64)
                    x_exp = self.exponent(f"w{above.pos}") + out[above.pos].dz_exp
                    x_mant = out[above.pos].dz_mant
                tiles = lay.tiles[x.pos]
                dw = np.zeros(x.wshape, np.int64)
                for t, (k0, k1) in enumerate(tiles):
                    tag = f".t{t}" if len(tiles) > 1 else ""
                    self._run_to(f"train.upd.l{x.pos}{tag}")
                    dw[k0:k1] = self.m.acc_range(lay.acc["DW"], (k1 - k0) * x.units).reshape(
                        k1 - k0, x.units)
                    if t == 0:
                        shape = (b, x.units) if x is self.layers[-1] else (x.units, b)
                        nb = 2 if lay.grad_dt(x) == "i16" else 1
                        dz = self.m.sp_elems(lay.sp[f"DZ{x.pos}"], b * x.units, nb).reshape(
                            shape).copy()
                        dz_exp = int(self.m.e[E_DZ])
                        dz_mant = int(self.m.r[R_QM]) if general else MANT_ONE
                out[x.pos] = LayerPass(xv, x_exp, x_mant, dz, dz_exp, dz_mant, dw)
        finally:
            self.restore(st)
        return out
