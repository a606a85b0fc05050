"""Model specs: what to train on the chip (layers, widths, QBP step, update mode, schedule).

Loaded from YAML with ``yaml.safe_load`` only; unknown keys and bad values raise
:class:`ConfigError` with the dotted key path. The defaults of :class:`ModelSpec` are the
default model (``configs/digits_mlp.yaml`` mirrors them key for key; a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator import limits as lim
from emulator.config import read_yaml
from emulator.errors import ConfigError
from emulator.limits import cut, short_repr

DATASETS = ("digits", "synthetic")
DITHERS = ("uniform", "triangular", "none")
UPDATE_MODES = ("lazy", "plain", "stochastic", "shadow")
SCHEDULES = ("constant", "step")


@dataclass(frozen=True)
class BitsSpec:
    """Bit widths per tensor. Weights are INT8 (the lazy/shadow copies are INT16)."""

    weights: int = 8
    activations: int = 8
    gradients: int = 8
    classifier: int = 16


@dataclass(frozen=True)
class QbpSpec:
    """Quantized back propagation: fixed power-of-two step of the per-sample gradient dz.

    ``step_log2`` is one value for all layers or one per weight layer (first to last);
    ``null`` disables QBP: dz is requantized to INT8 with a dynamic exponent, nearest rounding.
    """

    step_log2: int | list[int] | None = -3
    dither: str = "uniform"


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str = "constant"
    every: int = 10
    gamma: float = 0.5


@dataclass(frozen=True)
class UpdateSpec:
    """SGD update. ``acc_shift``: the lazy accumulator / shadow copy grid is 2**acc_shift finer."""

    mode: str = "lazy"
    lr: float = 0.1
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    acc_shift: int = 8
    momentum: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    name: str = "digits-mlp"
    dataset: str = "digits"
    layers: list[int] = field(default_factory=lambda: [64, 100, 100, 10])
    batch_size: int = 10
    epochs: int = 20
    seed: int = 0
    input_exponent: int = -4
    weight_headroom: float = 2.0
    classifier_alpha: float = 0.5
    bits: BitsSpec = field(default_factory=BitsSpec)
    qbp: QbpSpec = field(default_factory=QbpSpec)
    update: UpdateSpec = field(default_factory=UpdateSpec)

    @property
    def n_weight_layers(self) -> int:
        return len(self.layers) - 1

    @property
    def classes(self) -> int:
        return self.layers[-1]

    def qbp_steps(self) -> list[int] | None:
        s = self.qbp.step_log2
        if s is None:
            return None
        return list(s) if isinstance(s, list) else [s] * self.n_weight_layers

    def lr_at(self, epoch: int) -> float:
        sch = self.update.schedule
        if sch.kind == "step":
            return self.update.lr * sch.gamma ** (epoch // sch.every)
        return self.update.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------- loading
_NESTED = {"bits": BitsSpec, "qbp": QbpSpec, "update": UpdateSpec, "schedule": ScheduleSpec}


def _build(cls: type, d: Any, prefix: str, file: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"must be a mapping, got {type(d).__name__} {short_repr(d)}",
                          prefix.rstrip("."), file)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(names)
            raise ConfigError(f"unknown key {short_repr(str(key))}; {hint}",
                              f"{prefix}{cut(str(key), 100)}", file)
        if key in _NESTED:
            value = _build(_NESTED[key], value, f"{prefix}{key}.", file)
        kwargs[key] = value
    return cls(**kwargs)


def _need(cond: bool, msg: str, key: str, file: str) -> None:
    if not cond:
        raise ConfigError(msg, key, file)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def init_bound(n_in: int) -> float:
    """He-uniform bound for ReLU layers: U(-b, b), b = sqrt(6 / n_in)."""
    return math.sqrt(6.0 / n_in)


def weight_exponents(spec: ModelSpec) -> list[int]:
    """Fixed INT8 weight exponent per layer: the init bound times the headroom fits in 127."""
    out = []
    for n_in in spec.layers[:-1]:
        top = init_bound(n_in) * spec.weight_headroom
        out.append(math.ceil(math.log2(top / 127 * 128)) - 7)
    return out


def mu_shift(spec: ModelSpec) -> int:
    """Shift t with lr/B = mu * 2**-t and mu in [2**12, 2**13) at the initial learning rate."""
    x = spec.update.lr / spec.batch_size
    return 12 - math.floor(math.log2(x))


MAX_RQ_SHIFT = 31  # the requantizer's shift range is [-31, 31] (emulator/semantics.py)


def first_update_shift(spec: ModelSpec) -> int | None:
    """The requantize shift of layer 1's SGD update (``rqm`` of dW x mu onto the update grid)
    when every exponent in it is known at compile time (QBP on: the gradient's exponent is the
    fixed step, the layer's input is the input exponent); ``None`` when QBP is off.

    dW of layer 1 sits at exponent ``input_exponent + step``; ``lr/B = mu * 2**-t``; the update
    lands on the weights' grid (plain, stochastic) or on the ``2**acc_shift`` finer grid (lazy,
    shadow), so ``shift = e_W1 [- acc_shift] - (input_exponent + step - t)``."""
    steps = spec.qbp_steps()
    if steps is None:
        return None
    grid = weight_exponents(spec)[0]
    if spec.update.mode in ("lazy", "shadow"):
        grid -= spec.update.acc_shift
    return grid - (spec.input_exponent + steps[0] - mu_shift(spec))


def validate(spec: ModelSpec, file: str = "") -> ModelSpec:
    """Check every field; raise ConfigError naming the key path of the first problem."""
    n = spec.layers
    _need(isinstance(spec.name, str) and len(spec.name) <= 200,
          "must be a string of at most 200 characters", "name", file)
    _need(isinstance(spec.dataset, str) and spec.dataset in DATASETS,
          f"must be one of {DATASETS}, got {short_repr(spec.dataset)}", "dataset", file)
    _need(isinstance(n, list) and 2 <= len(n) <= 6,
          f"must be a list of 2 to 6 layer widths (at most 5 weight layers), got "
          f"{short_repr(n)}", "layers", file)
    _need(all(_is_int(x) and 1 <= x <= lim.MAX_LAYER_WIDTH for x in n),
          f"every width must be an integer in [1, {lim.MAX_LAYER_WIDTH:,}], got {short_repr(n)}",
          "layers", file)
    for key, hi in (("batch_size", lim.MAX_BATCH_SIZE), ("epochs", lim.MAX_EPOCHS)):
        v = getattr(spec, key)
        _need(_is_int(v) and 1 <= v <= hi, f"must be an integer in [1, {hi:,}], got "
              f"{short_repr(v)}", key, file)
    _need(_is_int(spec.seed) and 0 <= spec.seed < 2**31, "must be an integer in [0, 2**31)",
          "seed", file)
    _need(_is_int(spec.input_exponent) and -16 <= spec.input_exponent <= 16,
          "must be an integer in [-16, 16]", "input_exponent", file)
    _need(_is_num(spec.weight_headroom) and spec.weight_headroom >= 1, "must be a number >= 1",
          "weight_headroom", file)
    _need(_is_num(spec.classifier_alpha) and 0 < spec.classifier_alpha < 1,
          "must be a number in (0, 1)", "classifier_alpha", file)
    b = spec.bits
    _need(b.weights == 8, "only INT8 weights are supported (lazy/shadow copies are INT16)",
          "bits.weights", file)
    _need(b.activations == 8, "only INT8 activations are supported", "bits.activations", file)
    _need(b.gradients == 8, "only INT8 quantized gradients are supported", "bits.gradients", file)
    _need(_is_int(b.classifier) and 4 <= b.classifier <= 16, "must be an integer in [4, 16]",
          "bits.classifier", file)
    q = spec.qbp
    steps = q.step_log2
    if steps is not None:
        ok = _is_int(steps) or (isinstance(steps, list) and all(_is_int(s) for s in steps))
        _need(ok, "must be an integer, a list of integers, or null", "qbp.step_log2", file)
        if isinstance(steps, list):
            _need(len(steps) == len(n) - 1, f"needs one step per weight layer ({len(n) - 1})",
                  "qbp.step_log2", file)
        for s in steps if isinstance(steps, list) else [steps]:
            _need(-24 <= s <= 8, "steps must lie in [-24, 8]", "qbp.step_log2", file)
    _need(q.dither in DITHERS, f"must be one of {DITHERS}", "qbp.dither", file)
    u = spec.update
    _need(u.mode in UPDATE_MODES, f"must be one of {UPDATE_MODES}", "update.mode", file)
    _need(_is_num(u.lr) and 0 < u.lr <= 16, "must be a number in (0, 16]", "update.lr", file)
    _need(_is_int(u.acc_shift) and 1 <= u.acc_shift <= 8, "must be an integer in [1, 8]",
          "update.acc_shift", file)
    _need(_is_num(u.momentum) and 0 <= u.momentum < 1, "must be a number in [0, 1)",
          "update.momentum", file)
    _need(u.momentum == 0 or u.mode in ("lazy", "shadow"),
          "momentum needs the INT16 fine grid of update.mode lazy or shadow", "update.momentum",
          file)
    shift = first_update_shift(spec)
    if shift is not None and not -MAX_RQ_SHIFT <= shift <= MAX_RQ_SHIFT:
        # the compiler would emit an update whose requantize shift the hardware cannot do
        what = "small" if shift > 0 else "large"
        raise ConfigError(f"learning rate {u.lr!r} is too {what} for this model: layer 1's "
                          f"update would requantize by a shift of {shift}, outside "
                          f"[-{MAX_RQ_SHIFT}, {MAX_RQ_SHIFT}] (lr/batch_size = mu * 2**-t with "
                          f"t = {mu_shift(spec)}; see docs/training.md)", "update.lr", file)
    s = u.schedule
    _need(s.kind in SCHEDULES, f"must be one of {SCHEDULES}", "update.schedule.kind", file)
    _need(_is_int(s.every) and 1 <= s.every <= lim.MAX_SCHEDULE_EVERY,
          f"must be an integer in [1, {lim.MAX_SCHEDULE_EVERY:,}]", "update.schedule.every", file)
    _need(_is_num(s.gamma) and 0 < s.gamma <= 1, "must be a number in (0, 1]",
          "update.schedule.gamma", file)
    return spec


def spec_from_dict(d: Any, file: str = "") -> ModelSpec:
    try:
        spec = _build(ModelSpec, d, "", file)
    except TypeError as e:  # pragma: no cover - _build passes only known keys
        raise ConfigError(str(e), "", file) from None
    if isinstance(spec.layers, tuple):
        spec = dataclasses.replace(spec, layers=list(spec.layers))
    return validate(spec, file)


def load_model(path: str | Path | None = None) -> ModelSpec:
    """Load a model spec (``None``: the default digits MLP)."""
    if path is None:
        return validate(ModelSpec())
    return spec_from_dict(read_yaml(path, "model spec"), str(path))


def with_overrides(spec: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy with dotted-key overrides, e.g. ``with_overrides(s, **{"update.mode": "plain"})``."""
    d = spec.to_dict()
    for key, value in changes.items():
        node = d
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        if last not in node:
            raise ConfigError(f"unknown key {last!r}", key)
        node[last] = value
    return spec_from_dict(d)
