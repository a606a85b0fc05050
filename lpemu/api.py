"""The functions of the public API that are more than a re-export (see ``docs/api.md``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.counters import Summary
from emulator.machine import Machine
from isa.asm import assemble
from isa.encoding import Program
from programs.compiler.firmware import Layout
from programs.compiler.firmware import compile_model as _compile
from programs.compiler.spec import ModelSpec, spec_from_dict, validate
from programs.host.datasets import Dataset
from programs.host.driver import ChipTrainer, EpochStats, classifier_warning


@dataclass(frozen=True)
class Firmware:
    """A model spec compiled for a hardware config: the assembly text, the assembled program
    (with debug information: faults name the source line of ``asm``) and the memory layout
    (scratchpad, accumulator and DRAM addresses of every buffer)."""

    asm: str
    program: Program
    layout: Layout


def compile_model(spec: ModelSpec | None = None, cfg: Config | None = None,
                  data: Dataset | None = None) -> Firmware:
    """Compile ``spec`` (default: the default digits MLP) for ``cfg`` (default: ``Config()``).
    The spec is validated first (ConfigError naming the key). A spec whose
    ``input_exponent`` is null takes the input grid of ``data`` (default: the dataset the spec
    names, loaded), as training does."""
    from programs.host.datasets import input_exponent, load_for

    spec = validate(ModelSpec() if spec is None else spec)
    cfg = Config() if cfg is None else cfg
    if spec.input_exponent is None:
        data = load_for(spec) if data is None else data
        spec = dataclasses.replace(spec, input_exponent=input_exponent(spec, data))
    text, layout = _compile(spec, cfg)
    return Firmware(text, assemble(text, f"{spec.name}.s"), layout)


def model_from_dict(d: dict[str, Any]) -> ModelSpec:
    """A validated model spec from nested dicts (the YAML structure); missing keys default."""
    return spec_from_dict(d)


def profile(m: Machine, by: str = "label") -> list[dict[str, Any]]:
    """Counters and energy of everything ``m`` has run, one row per label (``by="label"``) or
    per executed instruction (``by="instruction"``)."""
    from programs.cli.profile import by_instruction, by_label

    if by == "label":
        return by_label(m)
    if by == "instruction":
        return by_instruction(m)
    raise ValueError(f"by must be 'label' or 'instruction', got {by!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    spec: ModelSpec
    config: Config
    test_accuracy: float
    history: list[EpochStats]  # one entry per epoch: loss, accuracy, sparsity, counters
    summary: Summary  # every counter and the energy of the whole run (training + evaluation)
    breakdown: list[dict[str, Any]]  # counters and energy per (layer, phase)
    weights: list[np.ndarray]  # final weights (int8 or int16), one [fan_in, units] per layer
    weights_sha256: str
    trainer: ChipTrainer = field(repr=False)  # the driver; ``trainer.m`` is the machine
    classifier_warning: str | None = None
    float_reference_accuracy: float | None = None
    best_epoch: int | None = None  # with a validation split: the epoch whose weights are tested


def train(spec: ModelSpec | None = None, data: Dataset | None = None,
          cfg: Config | None = None, *, epochs: int | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None,
          compare_float: bool = False, datapath: str = "fast") -> TrainResult:
    """Train ``spec`` (default: the default digits MLP) on ``data`` (default: the dataset the
    spec names) on the emulated chip with config ``cfg``, then evaluate on the test split.

    Checks exactly what ``lpemu train`` checks (:func:`programs.host.driver.check_training`,
    the spec, and that the dataset fits it), raising ConfigError naming the key. ``epochs``
    overrides the spec's epoch count; ``on_epoch`` is called after every epoch;
    ``compare_float`` also trains the float32 reference from the same initial weights. With a
    validation split in the data, the test accuracy is that of the best-validation epoch."""
    from programs.host.datasets import load_for

    spec = ModelSpec() if spec is None else spec
    if epochs is not None:
        spec = dataclasses.replace(spec, epochs=epochs)
    spec = validate(spec)
    cfg = Config() if cfg is None else cfg
    if data is None:
        data = load_for(spec)
    tr = ChipTrainer(spec, cfg, data, datapath=datapath)
    while tr.epoch < spec.epochs:
        st = tr.train_epoch()
        if on_epoch is not None:
            on_epoch(st)
    acc = tr.test_accuracy()
    ref = None
    if compare_float:
        from programs.host.float_ref import train_float

        ref = train_float(spec, data, tr.float_init()).test_accuracy
    return TrainResult(spec, cfg, acc, list(tr.history), tr.m.summary(), tr.breakdown(),
                       tr.weights(), tr.weights_digest(), tr, classifier_warning(spec), ref,
                       tr.best_epoch())
