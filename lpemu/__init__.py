"""lpemu: a bit-accurate emulator of a low-precision DNN training accelerator.

The public Python API (``docs/api.md`` shows each part with examples the tests run):

* configs: :class:`Config`, :func:`load_config`, :func:`config_from_dict`;
* programs: :func:`assemble`, :func:`disassemble`, :func:`load_program`,
  :func:`read_program`, :func:`write_program`, :class:`Program`;
* the machine: :class:`Machine`, :func:`load_array` / :func:`read_array` (typed DRAM access),
  :func:`run` (faults name the label and source line), :func:`step` (instructions with their
  effects), :func:`registers`, counters in :class:`Summary` and :func:`profile`;
* models: :class:`ModelSpec`, :func:`load_model`, :func:`model_from_dict`,
  :func:`with_overrides`, :func:`compile_model`;
* training: :mod:`datasets` (:class:`Dataset`), :func:`train` (checked like ``lpemu train``);
* design-space sweeps on Dask: :func:`sweep`, :func:`load_sweep`, :class:`SweepRun`
  (``docs/sweep.md``); counters without the datapath: :class:`CountOnlyMachine`;
* errors: :class:`LpemuError` and its typed subclasses.

The ``lpemu`` command line is a thin layer over the same functions.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from emulator.config import Config, config_from_dict, load_config
from emulator.counters import COUNTER_DOCS, COUNTERS, ENERGY_COMPONENTS, Summary
from emulator.countonly import CountOnlyMachine
from emulator.debug import StepRecord, format_registers, registers, run, step
from emulator.errors import (
    AsmError,
    BinaryFormatError,
    BudgetExceeded,
    CheckpointError,
    ConfigError,
    CountOnlyError,
    ExecutionError,
    LpemuError,
    MemoryAccessError,
    SweepError,
    UsageError,
)
from emulator.host import load_array, read_array
from emulator.machine import Machine
from isa.asm import assemble, disassemble, load_program
from isa.encoding import Program, read_program, write_program
from lpemu.api import Firmware, TrainResult, compile_model, model_from_dict, profile, train
from programs.compiler.spec import ModelSpec, load_model, with_overrides
from programs.host import datasets
from programs.host.datasets import Dataset
from programs.host.driver import EpochStats
from programs.sweep import SweepRun, load_sweep, sweep

try:
    __version__ = version("lpemu")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    __version__ = "0+unknown"

__all__ = [
    "COUNTERS",
    "COUNTER_DOCS",
    "ENERGY_COMPONENTS",
    "AsmError",
    "BinaryFormatError",
    "BudgetExceeded",
    "CheckpointError",
    "Config",
    "ConfigError",
    "CountOnlyError",
    "CountOnlyMachine",
    "Dataset",
    "EpochStats",
    "ExecutionError",
    "Firmware",
    "LpemuError",
    "Machine",
    "MemoryAccessError",
    "ModelSpec",
    "Program",
    "StepRecord",
    "Summary",
    "SweepError",
    "SweepRun",
    "TrainResult",
    "UsageError",
    "__version__",
    "assemble",
    "compile_model",
    "config_from_dict",
    "datasets",
    "disassemble",
    "format_registers",
    "load_array",
    "load_config",
    "load_model",
    "load_program",
    "load_sweep",
    "model_from_dict",
    "profile",
    "read_array",
    "read_program",
    "registers",
    "run",
    "step",
    "sweep",
    "train",
    "with_overrides",
    "write_program",
]
