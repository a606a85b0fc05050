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
    [F], INT8 at a fixed exponent, with INT16 state (lazy residual / shadow copy ``LZ``, velocity
    ``VL``) of the same shape."""

    layer: Layer
    is_bias: bool
    exp: int

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
    def state_bytes(self, x: str) -> int:
        """Bytes per element of a parameter (``W``, INT8) or its state: ``LZ`` INT16; the
        velocity ``VL`` INT16 on the fine grid (lazy, shadow) or INT8 on the parameter's grid
        (plain, stochastic: everything INT8)."""
        if x == "W":
            return 1
        if x == "VL" and self.spec.update.mode in ("plain", "stochastic"):
            return 1
        return 2

    def streams(self, p: Param) -> bool:
        """Whether parameter ``p`` passes through the scratchpad in tiles (biases never do)."""
        return self.streamed and not p.is_bias

    def param_of(self, layer: Layer, bias: bool = False) -> Param:
        return next(p for p in self.params if p.layer.pos == layer.pos and p.is_bias == bias)

    @property
    def weights(self) -> list[Param]:
        return [p for p in self.params if not p.is_bias]

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
