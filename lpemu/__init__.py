"""lpemu: a bit-accurate emulator of a low-precision DNN training accelerator.

The public Python API (``docs/api.md``): configs, the assembler, the machine, model specs,
the compiler and on-chip training. The ``lpemu`` command line is a thin layer over it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from emulator.config import Config, config_from_dict, load_config
from emulator.errors import LpemuError
from emulator.machine import Machine
from isa.asm import assemble, disassemble
from isa.encoding import Program, read_program, write_program

try:
    __version__ = version("lpemu")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    __version__ = "0+unknown"

__all__ = [
    "Config",
    "LpemuError",
    "Machine",
    "Program",
    "__version__",
    "assemble",
    "config_from_dict",
    "disassemble",
    "load_config",
    "read_program",
    "write_program",
]
