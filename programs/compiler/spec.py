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

DATASETS = ("digits", "synthetic", "iris", "wine", "breast_cancer")
DATASET_KINDS = ("idx", "npz")
DITHERS = ("uniform", "triangular", "none")
UPDATE_MODES = ("lazy", "plain", "stochastic", "shadow")
SCHEDULES = ("constant", "step")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset read from files: ``kind: idx`` (a directory of the four MNIST-format files)
    or ``kind: npz`` (one file with ``x_train, y_train, x_test, y_test``). A relative ``path``
    in a spec file is resolved against that file's directory when the spec is loaded."""

    kind: str = ""
    path: str = ""


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
    dataset: str | DatasetSpec = "digits"
    layers: list[int] = field(default_factory=lambda: [64, 100, 100, 10])
    batch_size: int = 10
    epochs: int = 20
    seed: int = 0
    data_seed: int = 0
    validation: float | None = None
    input_exponent: int | None = None
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
        if key in _NESTED:
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
    n = spec.layers
    _need(isinstance(spec.name, str) and len(spec.name) <= 200,
          "must be a string of at most 200 characters", "name", file)
    _validate_dataset(spec.dataset, file)
    _need(isinstance(n, list) and len(n) >= 2 and all(_is_int(x) and x >= 1 for x in n),
          f"must be a list of at least two positive integers, got {short_repr(n)}", "layers",
          file)
    _need(len(n) <= 6, "at most 5 weight layers are supported", "layers", file)
    _need(all(x <= lim.MAX_LAYER_WIDTH for x in n),
          f"every width must be at most {lim.MAX_LAYER_WIDTH:,}, got {short_repr(n)}", "layers",
          file)
    for key, hi in (("batch_size", lim.MAX_BATCH_SIZE), ("epochs", lim.MAX_EPOCHS)):
        v = getattr(spec, key)
        _need(_is_int(v) and 1 <= v <= hi, f"must be an integer in [1, {hi:,}], got "
              f"{short_repr(v)}", key, file)
    _need(_is_int(spec.seed) and 0 <= spec.seed < 2**31, "must be an integer in [0, 2**31)",
          "seed", file)
    _need(_is_int(spec.data_seed) and 0 <= spec.data_seed < 2**31,
          "must be an integer in [0, 2**31)", "data_seed", file)
    v = spec.validation
    _need(v is None or (_is_num(v) and 0 < v < 1),
          "must be null or a fraction of the training set in (0, 1)", "validation", file)
    e = spec.input_exponent
    _need(e is None or (_is_int(e) and -16 <= e <= 16),
          "must be null (the dataset's own grid) or an integer in [-16, 16]",
          "input_exponent", file)
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
    s = u.schedule
    _need(s.kind in SCHEDULES, f"must be one of {SCHEDULES}", "update.schedule.kind", file)
    _need(_is_int(s.every) and 1 <= s.every <= lim.MAX_SCHEDULE_EVERY,
          f"must be an integer in [1, {lim.MAX_SCHEDULE_EVERY:,}]", "update.schedule.every", file)
    _need(_is_num(s.gamma) and 0 < s.gamma <= 1, "must be a number in (0, 1]",
          "update.schedule.gamma", file)
    return spec


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
    """A relative dataset path made absolute against ``base_dir`` (the spec file's directory);
    ``~`` is expanded."""
    ds = spec.dataset
    if not isinstance(ds, DatasetSpec) or base_dir is None:
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
