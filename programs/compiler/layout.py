"""The memory plan of a compiled model (:class:`Layout`) and the data types the layer lowerings
exchange: parameter tensors (:class:`Param`) and the gradient handed from layer to layer
(:class:`Grad`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from programs.compiler.emit import Allocator, Asm
from programs.compiler.exps import Exps
from programs.compiler.net import Layer, Net
from programs.compiler.spec import ModelSpec


@dataclass(frozen=True)
class Param:
    """A tensor the optimizer updates: a weight matrix ``W<pos>`` [K, F] or a bias ``B<pos>``
    [F], INT8 or INT16 (``bits``) at exponent ``exp`` (the initial one when the exponent is
    dynamic), with state of the same shape: the lazy residual / shadow copy ``LZ``, the
    momentum velocity ``VL``, Adam's moments ``M`` and ``V``."""

    layer: Layer
    is_bias: bool
    exp: int
    bits: int = 8

    @property
    def dt(self) -> str:
        return "i8" if self.bits == 8 else "i16"

    @property
    def eb(self) -> int:
        """Bytes per element."""
        return self.bits // 8

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.layer.units,) if self.is_bias else self.layer.wshape

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ename(self) -> str:
        return f"{'b' if self.is_bias else 'w'}{self.layer.pos}"

    def key(self, x: str = "W") -> str:
        """Memory name of the tensor (``x="W"``) or its state (``"LZ"``, ``"VL"``)."""
        p = self.layer.pos
        if self.is_bias:
            return f"B{p}" if x == "W" else f"{x}B{p}"
        return f"{x}{p}"


@dataclass
class Grad:
    """The gradient a layer hands to the one below: in the accumulator or the scratchpad
    (``dt``), with a function that puts its exponent into a register (it may emit an ``eadd``)
    and an optional fixed-point scale ``mul * 2**-16`` (average pooling)."""

    where: str  # "acc" | "sp"
    addr: int
    exp: Callable[[Asm], int]
    dt: str = "i8"
    mul: int | None = None


def fixed_exp(reg: int) -> Callable[[Asm], int]:
    return lambda asm: reg



@dataclass
class Layout:
    """Where everything lives. Built from the spec and hardware config by :func:`plan`."""

    spec: ModelSpec
    net: Net
    lowerings: list[Any]  # programs.compiler.layers.Lowering, one per layer
    params: list[Param]
    sp: dict[str, int]
    acc: dict[str, int]
    dram: dict[str, int]
    sizes: dict[str, int]
    gbytes: int  # bytes of one classifier-gradient element (1 for BW <= 8, else 2)
    mu_shift: int  # lr/B = mu * 2**-mu_shift
    weight_exp: list[int]  # per weight layer
    streamed: bool = False  # weights live in DRAM and pass through the scratchpad in tiles
    tiles: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # pos -> row ranges
    exps: Exps | None = None  # type: ignore[assignment]
    spa: Allocator | None = None  # the scratchpad allocator while planning
    staging: int = 0  # DRAM bytes for layout changes (transposes)
    ones: int = 0  # length of the ones vector (bias gradients)
    timed: list[tuple[str, int, int, int]] | None = None  # (name, bytes, t0, t1) to pack
    qbp: Any = None  # programs.compiler.qbp.QbpPlan: general QBP steps and meProp

    # ---------------------------------------------------------------- planning hooks
    def need_staging(self, nbytes: int) -> None:
        self.staging = max(self.staging, nbytes)

    def need_ones(self, n: int) -> None:
        self.ones = max(self.ones, n)

    def buf(self, name: str, nbytes: int, t0: int, t1: int) -> None:
        """A scratchpad buffer live from step time t0 to t1 (:meth:`t_fwd`, :meth:`t_bwd`):
        dense-only networks take them one after another; others pack them by live range."""
        if self.timed is None:
            assert self.spa is not None
            self.sp[name] = self.spa.take(name, nbytes)
        else:
            self.timed.append((name, nbytes, t0, t1))

    def t_fwd(self, pos: int) -> int:
        """Time of layer ``pos``'s forward pass in a training step (0: the batch is loaded)."""
        return pos

    def t_bwd(self, pos: int) -> int:
        """Time of layer ``pos``'s backward pass (after the softmax, top layer first)."""
        return 2 * len(self.net.layers) + 2 - pos

    # ---------------------------------------------------------------- queries
    def state_bytes(self, x: str, p: Param | None = None) -> int:
        """Bytes per element of a parameter (``W``: its width) or its state: ``LZ``, ``M``,
        ``V`` INT16; the velocity ``VL`` INT16 on the fine grid (lazy, shadow) or the
        parameter's width on its grid (plain, stochastic). ``p`` None: the widest parameter."""
        eb = p.eb if p is not None else max(q.eb for q in self.params)
        if x == "W":
            return eb
        if x == "VL" and self.spec.update.mode in ("plain", "stochastic"):
            return eb
        return 2

    def act_dt(self, pos: int) -> str:
        """Element type of the output of layer ``pos`` (0: the INT8 input; a weight layer's
        from ``bits.activations``; pooling and flatten keep their input's)."""
        if pos == 0:
            return "i8"
        layer = self.net.layers[pos - 1]
        if layer.is_weight:
            return "i8" if self.spec.act_bits()[layer.widx - 1] == 8 else "i16"
        return self.act_dt(pos - 1)

    def act_eb(self, pos: int) -> int:
        return 1 if self.act_dt(pos) == "i8" else 2

    def grad_dt(self, layer: Layer) -> str:
        """Element type of a weight layer's dz~."""
        return "i8" if self.spec.grad_bits()[layer.widx - 1] == 8 else "i16"

    def grad_eb(self, layer: Layer) -> int:
        return 1 if self.grad_dt(layer) == "i8" else 2

    def fine_shift(self, p: Param) -> int:
        """s: the lazy residual / shadow copy / fine-grid velocity of ``p`` lives on
        2**(e_w - s). ``update.acc_shift`` is counted from an INT8 grid of the same range, so
        s = acc_shift for INT8 parameters and acc_shift - 8 for INT16 ones."""
        return self.spec.update.acc_shift - (p.bits - 8)

    def needs_q0(self, layer: Layer) -> bool:
        """Whether the layer's dz~ needs the Q(0) buffer of 004's order with triangular dither
        (layers/base.py: quantize_masked)."""
        q = self.spec.qbp
        return (layer.relu and self.spec.qbp_steps() is not None and q.dither == "triangular"
                and q.order == "mask_first")

    @property
    def dynamic(self) -> bool:
        """Whether the chip re-chooses parameter exponents (``bits.weight_exponent: dynamic``)."""
        return self.spec.bits.weight_exponent == "dynamic"

    @property
    def adam(self) -> bool:
        return self.spec.update.optimizer == "adam"

    def streams(self, p: Param) -> bool:
        """Whether parameter ``p`` passes through the scratchpad in tiles (biases never do)."""
        return self.streamed and not p.is_bias

    def param_of(self, layer: Layer, bias: bool = False) -> Param:
        return next(p for p in self.params if p.layer.pos == layer.pos and p.is_bias == bias)

    @property
    def weights(self) -> list[Param]:
        return [p for p in self.params if not p.is_bias]

    def state_names(self) -> list[str]:
        """The per-element state next to each parameter's ``W``."""
        names = ["LZ"]
        if self.spec.update.momentum != 0:
            names.append("VL")
        if self.adam:
            names += ["M", "V"]
        return names

    def param_blocks(self) -> list[tuple[Param, str, int]]:
        """(parameter, block, bytes) of every DRAM block of the parameters, per parameter in
        the order W, LZ, VL, M, V, then the exponent words E (dynamic), EM, EV (Adam, one
        per tile)."""
        out = []
        for p in self.params:
            for x in ["W"] + self.state_names():
                out.append((p, x, self.state_bytes(x, p) * p.size))
            for x in ("E", "EM", "EV"):
                if p.key(x) in self.dram:
                    out.append((p, x, 4 * (1 if x == "E" else len(self.tiles[p.layer.pos]))))
        return out

    @property
    def batch_x_bytes(self) -> int:
        return self.net.features * self.spec.batch_size

    @property
    def batch_t_bytes(self) -> int:
        return self.spec.batch_size * self.spec.classes * self.gbytes

    @property
    def batch_y_bytes(self) -> int:
        return self.spec.batch_size * self.spec.classes * self.gbytes

    @property
    def batch_logit_bytes(self) -> int:
        return self.spec.batch_size * self.spec.classes * 2
