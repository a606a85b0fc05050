"""Model specs: what to train on the chip (layers, widths, QBP step, update mode, schedule).

Loaded from YAML with ``yaml.safe_load`` only; unknown keys and bad values raise
:class:`ConfigError` with the dotted key path. The defaults of :class:`ModelSpec` are the
default model (``configs/digits_mlp.yaml`` mirrors them key for key; a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator import limits as lim
from emulator.config import read_yaml
from emulator.errors import ConfigError
from emulator.limits import cut, short_repr
from programs.compiler.net import MAX16, Net, build_net

DATASETS = ("digits", "synthetic", "iris", "wine", "breast_cancer")
DATASET_KINDS = ("idx", "npz")
DITHERS = ("uniform", "triangular", "none")
UPDATE_MODES = ("lazy", "plain", "stochastic", "shadow")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "inverse")
READOUTS = ("nearest", "uniform")
QBP_ORDERS = ("mask_first", "quantize_first")
WEIGHT_EXPONENTS = ("fixed", "dynamic")
WIDTHS = (8, 16)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset read from files: ``kind: idx`` (a directory of the four MNIST-format files)
    or ``kind: npz`` (one file with ``x_train, y_train, x_test, y_test``). A relative ``path``
    in a spec file is resolved against that file's directory when the spec is loaded."""

    kind: str = ""
    path: str = ""


@dataclass(frozen=True)
class BitsSpec:
    """Bit widths (8 or 16) per weight layer, each one value for all layers or a list.

    ``weights``: one entry per weight layer (conv and dense, first to last). ``activations``
    and ``gradients``: one entry per *hidden* weight layer (all but the last): the width of the
    activation it outputs and of its quantized pre-activation gradient dz~. The last layer's
    output is the INT16 logits; ``classifier`` (4..16 bits) is the grid of y and dL/ds = y - t,
    and its container (INT8 up to 8 bits, else INT16) is the width of the last layer's dz~, the
    gradient its dW and dX products use. ``weight_exponent``: ``fixed`` (from the init bound)
    or ``dynamic`` (chosen by the chip after every update, 001's dynamic fixed point)."""

    weights: int | list[int] = 8
    activations: int | list[int] = 8
    gradients: int | list[int] = 8
    classifier: int = 16
    weight_exponent: str = "fixed"


@dataclass(frozen=True)
class AdaptSpec:
    """The adaptive QBP step (004 sec. 5.5), computed on the chip every ``every`` batches per
    weight layer: ``variance`` keeps each weight gradient's error variance below
    ``sigma_max`` (eq. 5.19-5.21; dense networks without biases), ``sparsity`` aims at the
    fraction ``sparsity`` of zeros in dz~ from a Laplace fit (sec. 4.3). The step is clamped
    to [2**min_step_log2, 2**max_step_log2]. Number keys take one value or one per weight
    layer. See programs/compiler/qbp.py."""

    mode: str = "variance"
    sigma_max: float | list[float] = 0.01
    sparsity: float | list[float] = 0.9
    every: int = 1
    min_step_log2: int = -24
    max_step_log2: int = 8


@dataclass(frozen=True)
class QbpSpec:
    """Quantized back propagation: the step of the per-sample gradient dz.

    ``step_log2`` is one value for all layers or one per weight layer (first to last);
    ``null`` disables QBP: dz is requantized to INT8 with a dynamic exponent, nearest rounding.
    ``step`` (a number or one per weight layer) sets a step that need not be a power of two
    (the chip realises it as a 16-bit significand times a power of two, rounded down; it
    replaces ``step_log2``); ``adapt`` computes the step on the chip (:class:`AdaptSpec`);
    ``meprop_k`` replaces QBP by meProp (keep the k largest |dz| per sample; needs
    ``step_log2: null``).
    """

    step_log2: int | list[int] | None = -3
    dither: str = "uniform"
    step: float | list[float] | None = None
    adapt: AdaptSpec | None = None
    meprop_k: int | list[int] | None = None
    # mask_first: dz = da * f'(z), then quantize (004 eq. 5.1, 5.4); quantize_first: quantize
    # da, then mask (the order before; the same values except with triangular dither)
    order: str = "mask_first"


@dataclass(frozen=True)
class ScheduleSpec:
    """``constant``; ``step``: lr x gamma every ``every`` epochs; ``inverse``: lr t0 / (t0 + t)
    at training step t (0, 1, ...; one step per batch), 002's alpha_t = 1 / (mu (t + t0))."""

    kind: str = "constant"
    every: int = 10
    gamma: float = 0.5
    t0: float = 100.0


@dataclass(frozen=True)
class AdamSpec:
    """Adam's constants (Kingma and Ba 2014); the chip's fixed-point form is in
    docs/training.md."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass(frozen=True)
class UpdateSpec:
    """The update. ``optimizer`` (sgd, with optional heavy-ball ``momentum``, or adam) makes
    the step; ``mode`` applies it to the parameters (lazy, plain, stochastic, shadow).
    ``acc_shift``: the lazy accumulator / shadow copy grid is 2**acc_shift finer than the
    weights'. ``readout``: how the shadow copy is rounded onto the weights' grid."""

    mode: str = "lazy"
    lr: float = 0.1
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    acc_shift: int = 8
    momentum: float = 0.0
    optimizer: str = "sgd"
    readout: str = "nearest"
    adam: AdamSpec = field(default_factory=AdamSpec)


@dataclass(frozen=True)
class ModelSpec:
    name: str = "digits-mlp"
    dataset: str | DatasetSpec = "digits"
    # widths [input, hidden..., classes] (dense, no biases) or layer mappings (programs/compiler/
    # net.py): conv, maxpool, avgpool, flatten, dense, with optional biases
    layers: list[Any] = field(default_factory=lambda: [64, 100, 100, 10])
    batch_size: int = 10
    epochs: int = 20
    seed: int = 0
    data_seed: int = 0
    validation: float | None = None
    input_exponent: int | None = None
    weight_headroom: float = 2.0
    classifier_alpha: float = 0.5
    # the hardware config the model is meant for (a YAML path, relative to the spec file);
    # null: the built-in defaults; ``--config`` overrides it
    hardware: str | None = None
    bits: BitsSpec = field(default_factory=BitsSpec)
    qbp: QbpSpec = field(default_factory=QbpSpec)
    update: UpdateSpec = field(default_factory=UpdateSpec)

    def net(self) -> Net:
        """The normalized layers with their shapes (raises ConfigError on a bad ``layers``)."""
        return build_net(self.layers)

    @property
    def n_weight_layers(self) -> int:
        return len(self.net().weight_layers)

    @property
    def classes(self) -> int:
        return self.net().classes

    @property
    def qbp_general(self) -> bool:
        """QBP with steps that need not be powers of two (``qbp.step``) or adaptive ones: the
        firmware carries each step's significand (programs/compiler/qbp.py)."""
        return self.qbp.step_log2 is not None and (self.qbp.step is not None
                                                   or self.qbp.adapt is not None)

    def weight_bits(self) -> list[int]:
        """Width of each weight layer's parameters (weights and bias)."""
        return _per_layer(self.bits.weights, self.n_weight_layers)

    def act_bits(self) -> list[int]:
        """Width of each weight layer's output activation (the last: the INT16 logits)."""
        return _per_layer(self.bits.activations, self.n_weight_layers - 1) + [16]

    def grad_bits(self) -> list[int]:
        """Width of each weight layer's dz~ (the last: the classifier gradient's container)."""
        last = 8 if self.bits.classifier <= 8 else 16
        return _per_layer(self.bits.gradients, self.n_weight_layers - 1) + [last]

    def qbp_steps(self) -> list[int] | None:
        s = self.qbp.step_log2
        if s is None:
            return None
        return list(s) if isinstance(s, list) else [s] * self.n_weight_layers

    def lr_at(self, epoch: int, step: int = 0) -> float:
        """The learning rate in ``epoch`` at training ``step`` (batches since the start; only
        the ``inverse`` schedule uses it)."""
        sch = self.update.schedule
        if sch.kind == "step":
            return self.update.lr * sch.gamma ** (epoch // sch.every)
        if sch.kind == "inverse":
            return self.update.lr * sch.t0 / (sch.t0 + step)
        return self.update.lr

    @property
    def per_step_lr(self) -> bool:
        """Whether the step size changes from batch to batch (the host then gives the firmware
        a table of multipliers, one per batch): the inverse schedule, Adam's bias correction."""
        return self.update.schedule.kind == "inverse" or self.update.optimizer == "adam"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _per_layer(v: int | list[int], n: int) -> list[int]:
    return list(v) if isinstance(v, list) else [v] * n


# ------------------------------------------------------------------------------- loading
_NESTED = {"bits": BitsSpec, "qbp": QbpSpec, "update": UpdateSpec, "schedule": ScheduleSpec,
           "adapt": AdaptSpec, "adam": AdamSpec}
_NULLABLE = {"adapt"}  # nested keys whose null means "off", not "the defaults"


def _build(cls: type, d: Any, prefix: str, file: str) -> Any:  # noqa: C901 - one loop
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
        if key in _NESTED and not (key in _NULLABLE and value is None):
            value = _build(_NESTED[key], value, f"{prefix}{key}.", file)
        elif cls is ModelSpec and key == "dataset" and isinstance(value, dict):
            value = _build(DatasetSpec, value, "dataset.", file)
        kwargs[key] = value
    return cls(**kwargs)


def _need(cond: bool, msg: str, key: str, file: str) -> None:
    if not cond:
        raise ConfigError(msg, key, file)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(spec: ModelSpec, file: str = "") -> ModelSpec:
    """Check every field; raise ConfigError naming the key path of the first problem."""
    _need(isinstance(spec.name, str) and len(spec.name) <= 200,
          "must be a string of at most 200 characters", "name", file)
    _validate_dataset(spec.dataset, file)
    net = build_net(spec.layers, file)
    nw = len(net.weight_layers)
    for key, hi in (("batch_size", lim.MAX_BATCH_SIZE), ("epochs", lim.MAX_EPOCHS)):
        v = getattr(spec, key)
        _need(_is_int(v) and 1 <= v <= hi, f"must be an integer in [1, {hi:,}], got "
              f"{short_repr(v)}", key, file)
    _need(not net.is_image or spec.batch_size <= MAX16,
          f"an image network's batch is a 16-bit geometry field: at most {MAX16}", "batch_size",
          file)
    _need(_is_int(spec.seed) and 0 <= spec.seed < 2**31, "must be an integer in [0, 2**31)",
          "seed", file)
    _need(_is_int(spec.data_seed) and 0 <= spec.data_seed < 2**31,
          "must be an integer in [0, 2**31)", "data_seed", file)
    v = spec.validation
    _need(v is None or (_is_num(v) and 0 < v < 1),
          "must be null or a fraction of the training set in (0, 1)", "validation", file)
    _need(spec.hardware is None or (isinstance(spec.hardware, str) and spec.hardware != ""),
          "must be null or the path of a hardware config YAML", "hardware", file)
    e = spec.input_exponent
    _need(e is None or (_is_int(e) and -16 <= e <= 16),
          "must be null (the dataset's own grid) or an integer in [-16, 16]",
          "input_exponent", file)
    _need(_is_num(spec.weight_headroom) and spec.weight_headroom >= 1, "must be a number >= 1",
          "weight_headroom", file)
    _need(_is_num(spec.classifier_alpha) and 0 < spec.classifier_alpha < 1,
          "must be a number in (0, 1)", "classifier_alpha", file)
    b = spec.bits
    _widths(b.weights, nw, "one per weight layer", "bits.weights", file)
    _widths(b.activations, nw - 1, "one per weight layer but the last (whose output is the "
            "INT16 logits)", "bits.activations", file)
    _widths(b.gradients, nw - 1, "one per weight layer but the last (whose dz~ has the "
            "classifier's width)", "bits.gradients", file)
    _need(_is_int(b.classifier) and 4 <= b.classifier <= 16, "must be an integer in [4, 16]",
          "bits.classifier", file)
    _need(b.weight_exponent in WEIGHT_EXPONENTS, f"must be one of {WEIGHT_EXPONENTS}",
          "bits.weight_exponent", file)
    q = spec.qbp
    steps = q.step_log2
    if steps is not None:
        ok = _is_int(steps) or (isinstance(steps, list) and all(_is_int(s) for s in steps))
        _need(ok, "must be an integer, a list of integers, or null", "qbp.step_log2", file)
        if isinstance(steps, list):
            _need(len(steps) == nw, f"needs one step per weight layer ({nw})",
                  "qbp.step_log2", file)
        for s in steps if isinstance(steps, list) else [steps]:
            _need(-24 <= s <= 8, "steps must lie in [-24, 8]", "qbp.step_log2", file)
    _need(q.dither in DITHERS, f"must be one of {DITHERS}", "qbp.dither", file)
    _need(q.order in QBP_ORDERS, f"must be one of {QBP_ORDERS}", "qbp.order", file)
    _validate_qbp_more(spec, q, net, file)
    u = spec.update
    _need(u.mode in UPDATE_MODES, f"must be one of {UPDATE_MODES}", "update.mode", file)
    _need(u.optimizer in OPTIMIZERS, f"must be one of {OPTIMIZERS}", "update.optimizer", file)
    _need(u.readout in READOUTS, f"must be one of {READOUTS}", "update.readout", file)
    _need(u.readout == "nearest" or u.mode == "shadow",
          "the read-out rounding is the shadow mode's: use 'nearest' with other modes",
          "update.readout", file)
    if u.mode == "shadow":
        wide = [i for i, w in enumerate(_per_layer(b.weights, nw)) if w != 8]
        _need(not wide, "the shadow copy is INT16 (2**acc_shift finer than INT8 weights): "
              f"INT16 weights (weight layer {wide[0] + 1 if wide else 0}) have no wider copy; "
              "use update.mode lazy, plain or stochastic", "bits.weights", file)
    _need(_is_num(u.lr) and 0 < u.lr <= 16, "must be a number in (0, 16]", "update.lr", file)
    _need(_is_int(u.acc_shift) and 1 <= u.acc_shift <= 15, "must be an integer in [1, 15]",
          "update.acc_shift", file)
    wide = any(w == 16 for w in _per_layer(b.weights, nw))
    _need(not (wide and u.mode == "lazy" and u.acc_shift < 8),
          "counts from an INT8 grid of the weights' range: INT16 weights need at least 8 "
          "(their residual grid is 2**(acc_shift - 8) finer than theirs)", "update.acc_shift",
          file)
    _need(u.mode != "shadow" or u.acc_shift <= 8,
          "the INT16 shadow copy must cover the INT8 weights' range: at most 8",
          "update.acc_shift", file)
    _need(_is_num(u.momentum) and 0 <= u.momentum < 1, "must be a number in [0, 1)",
          "update.momentum", file)
    _need(u.optimizer == "sgd" or u.momentum == 0,
          "Adam keeps its own first moment (update.adam.beta1): momentum must be 0",
          "update.momentum", file)
    a = u.adam
    for key in ("beta1", "beta2"):
        v = getattr(a, key)
        _need(_is_num(v) and 1 <= round(v * 2**15) <= 2**15 - 1,
              "must be a number with 1 <= round(beta * 2**15) <= 32767 (a Q15 constant on the "
              "chip, as is 1 - beta)", f"update.adam.{key}", file)
    _need(_is_num(a.eps) and 0 <= a.eps <= 1, "must be a number in [0, 1]", "update.adam.eps",
          file)
    s = u.schedule
    _need(s.kind in SCHEDULES, f"must be one of {SCHEDULES}", "update.schedule.kind", file)
    _need(_is_int(s.every) and 1 <= s.every <= lim.MAX_SCHEDULE_EVERY,
          f"must be an integer in [1, {lim.MAX_SCHEDULE_EVERY:,}]", "update.schedule.every", file)
    _need(_is_num(s.gamma) and 0 < s.gamma <= 1, "must be a number in (0, 1]",
          "update.schedule.gamma", file)
    _need(_is_num(s.t0) and s.t0 >= 1, "must be a number >= 1 (steps)", "update.schedule.t0",
          file)
    return spec


# ------------------------------------------------------------------ qbp.step, adapt, meprop_k
ADAPT_MODES = ("variance", "sparsity")


def _per_weight_layer(v: object, nw: int, ok, what: str, key: str, file: str) -> list:
    """A number (or integer) for every weight layer, or a list of one per weight layer."""
    vals = v if isinstance(v, list) else [v]
    _need(all(ok(x) for x in vals) and (not isinstance(v, list) or len(v) == nw),
          f"must be {what}, or a list of one per weight layer ({nw})", key, file)
    return vals * (nw if not isinstance(v, list) else 1)


def _validate_qbp_more(spec: ModelSpec, q: QbpSpec, net: Net, file: str) -> None:
    """qbp.step, qbp.adapt and qbp.meprop_k (programs/compiler/qbp.py implements them)."""
    nw = len(net.weight_layers)
    on = q.step_log2 is not None
    if on and (q.step is not None or q.adapt is not None):
        key = "qbp.step" if q.step is not None else "qbp.adapt"
        _need(spec.update.optimizer != "adam", "Adam's moments do not take a step's "
              "significand: with update.optimizer: adam use qbp.step_log2 (powers of two)",
              key, file)
    if q.step is not None:
        _need(on, "needs QBP on (step_log2 not null)", "qbp.step", file)
        _per_weight_layer(q.step, nw, lambda x: _is_num(x) and 2.0**-24 <= x <= 2.0**8,
                   "a number in [2**-24, 2**8]", "qbp.step", file)
    a = q.adapt
    if a is not None:
        _need(isinstance(a, AdaptSpec), "must be null or a mapping", "qbp.adapt", file)
        _need(on, "needs QBP on (step_log2 not null)", "qbp.adapt", file)
        _need(q.step is None, "qbp.step and qbp.adapt exclude each other (the adaptive step "
              "replaces the fixed one)", "qbp.adapt", file)
        _need(a.mode in ADAPT_MODES, f"must be one of {ADAPT_MODES}", "qbp.adapt.mode", file)
        _per_weight_layer(a.sigma_max, nw, lambda x: _is_num(x) and 0 < x <= 2.0**20,
                   "a number in (0, 2**20]", "qbp.adapt.sigma_max", file)
        top = 0.75 if q.dither == "triangular" else 1  # triangular: an exact 0 -> +-1 w.p. 1/4
        _per_weight_layer(a.sparsity, nw, lambda x: _is_num(x) and 0 < x < top,
                   f"a number in (0, {top})" + (" (triangular dither zeroes at most 75%)"
                                                if top < 1 else ""), "qbp.adapt.sparsity", file)
        _need(_is_int(a.every) and 1 <= a.every <= 2**30, "must be an integer in [1, 2**30]",
              "qbp.adapt.every", file)
        for k in ("min_step_log2", "max_step_log2"):
            v = getattr(a, k)
            _need(_is_int(v) and -40 <= v <= 40, "must be an integer in [-40, 40]",
                  f"qbp.adapt.{k}", file)
        _need(a.min_step_log2 <= a.max_step_log2, "must not exceed max_step_log2",
              "qbp.adapt.min_step_log2", file)
        if a.mode == "variance":
            _need(all(w == 8 for w in spec.weight_bits())
                  and all(w == 8 for w in spec.act_bits()[:-1]), "the variance mode squares "
                  "INT8 weights and activations: set bits.weights and bits.activations to 8",
                  "qbp.adapt.mode", file)
            _need(net.is_mlp, "the variance mode propagates error variances through dense "
                  "layers without biases (004's networks); use mode: sparsity here",
                  "qbp.adapt.mode", file)
    if q.meprop_k is not None:
        _per_weight_layer(q.meprop_k, nw, lambda x: _is_int(x) and 1 <= x <= MAX16,
                   f"an integer in [1, {MAX16}]", "qbp.meprop_k", file)
        _need(not on and q.step is None and a is None, "meProp replaces QBP: set "
              "qbp.step_log2: null (and no step or adapt)", "qbp.meprop_k", file)
        for x in net.weight_layers:
            _need(x.kind == "dense", f"meProp selects per sample in dense layers; layer "
                  f"{x.pos} is a {x.kind}", "qbp.meprop_k", file)


def _widths(v: object, n: int, what: str, key: str, file: str) -> None:
    """``v`` is 8, 16 or a list of n of them."""
    if isinstance(v, list):
        _need(len(v) == n, f"needs {what} ({n} entries), got {len(v)}", key, file)
        bad = [x for x in v if not (_is_int(x) and x in WIDTHS)]
        _need(not bad, f"entries must be 8 or 16, got {bad[0]!r}" if bad else "", key, file)
    else:
        _need(_is_int(v) and v in WIDTHS, f"must be 8 or 16, or a list ({what}), got {v!r}",
              key, file)


def _validate_dataset(ds: object, file: str) -> None:
    if isinstance(ds, DatasetSpec):
        _need(ds.kind in DATASET_KINDS,
              f"must be one of {DATASET_KINDS} (a named dataset is written as a plain name, "
              f"e.g. 'dataset: iris')", "dataset.kind", file)
        _need(isinstance(ds.path, str) and ds.path != "",
              "must be a non-empty path" + (" to a directory" if ds.kind == "idx" else
                                            " to an .npz file"), "dataset.path", file)
        return
    if isinstance(ds, str) and ds not in DATASETS:
        close = difflib.get_close_matches(ds, DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown dataset {short_repr(ds)}: must be one of {DATASETS} or a "
                          f"mapping {{kind: idx|npz, path: ...}}{hint}", "dataset", file)
    _need(isinstance(ds, str), f"must be a name {DATASETS} or a mapping "
          "{kind: idx|npz, path: ...}", "dataset", file)


def _resolve_paths(spec: ModelSpec, base_dir: str | Path | None) -> ModelSpec:
    """Relative dataset and hardware paths made absolute against ``base_dir`` (the spec file's
    directory); ``~`` is expanded."""
    if base_dir is None:
        return spec
    if spec.hardware is not None:
        hw = os.path.abspath(os.path.join(base_dir, os.path.expanduser(spec.hardware)))
        spec = dataclasses.replace(spec, hardware=hw)
    ds = spec.dataset
    if not isinstance(ds, DatasetSpec):
        return spec
    p = os.path.expanduser(ds.path)
    p = os.path.abspath(os.path.join(base_dir, p))
    return dataclasses.replace(spec, dataset=dataclasses.replace(ds, path=p))


def spec_from_dict(d: Any, file: str = "", base_dir: str | Path | None = None) -> ModelSpec:
    """Build and validate a spec from a mapping. With ``base_dir``, a relative
    ``dataset.path`` is resolved against it (otherwise it stays relative to the working
    directory)."""
    try:
        spec = _build(ModelSpec, d, "", file)
    except TypeError as e:  # pragma: no cover - _build passes only known keys
        raise ConfigError(str(e), "", file) from None
    if isinstance(spec.layers, tuple):
        spec = dataclasses.replace(spec, layers=list(spec.layers))
    return _resolve_paths(validate(spec, file), base_dir)


def load_model(path: str | Path | None = None) -> ModelSpec:
    """Load a model spec (``None``: the default digits MLP). A relative ``dataset.path`` is
    resolved against the directory of the spec file."""
    if path is None:
        return validate(ModelSpec())
    return spec_from_dict(read_yaml(path, "model spec"), str(path),
                          base_dir=Path(path).parent)


def with_overrides(spec: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy with dotted-key overrides, e.g. ``with_overrides(s, **{"update.mode": "plain"})``."""
    d = spec.to_dict()
    for key, value in changes.items():
        node = d
        *path, last = key.split(".")
        for p in path:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"unknown key {p!r}", key)
            node = node[p]
        if not isinstance(node, dict) or last not in node:
            raise ConfigError(f"unknown key {last!r}", key)
        node[last] = value
    return spec_from_dict(d)


def with_data(spec: ModelSpec, path: str | Path) -> ModelSpec:
    """A copy that trains on ``path``: an MNIST-format directory (``kind: idx``) or an ``.npz``
    file (``kind: npz``)."""
    kind = "idx" if Path(path).is_dir() else "npz"
    ds = DatasetSpec(kind, os.path.abspath(os.path.expanduser(str(path))))
    return validate(dataclasses.replace(spec, dataset=ds))
