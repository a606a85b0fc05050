"""lpemu: a bit-accurate emulator of a low-precision DNN training accelerator.

The public Python API (``docs/api.md``): configs, the assembler, the machine, model specs,
the compiler, on-chip training and design-space sweeps (``sweep``, ``docs/sweep.md``). The
``lpemu`` command line is a thin layer over it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from emulator.config import Config, config_from_dict, load_config
from emulator.countonly import CountOnlyMachine
from emulator.errors import LpemuError
from emulator.machine import Machine
from isa.asm import assemble, disassemble
from isa.encoding import Program, read_program, write_program
from programs.sweep import SweepRun, load_sweep, sweep

try:
    __version__ = version("lpemu")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    __version__ = "0+unknown"

__all__ = [
    "Config",
    "CountOnlyMachine",
    "LpemuError",
    "Machine",
    "Program",
    "SweepRun",
    "__version__",
    "assemble",
    "config_from_dict",
    "disassemble",
    "load_config",
    "load_sweep",
    "read_program",
    "sweep",
    "write_program",
]
