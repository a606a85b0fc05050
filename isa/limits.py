"""Limits on text that the lowest layer enforces: error-message length and integer literals.

The full table of lpemu's limits is :mod:`emulator.limits` (which re-exports these)."""

from __future__ import annotations

import reprlib

MAX_MESSAGE_CHARS = 1000  # an error message (longer ones are cut, marked with "...")
MAX_INT_LITERAL_CHARS = 100  # an integer in assembly or on the command line
MAX_PROGRAM_FILE_BYTES = 512 << 20  # a program file (assembly or binary) read by load_program

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a few dozen characters, in time independent of the value's size
    (an alias-expanded YAML value shares its parts; its full repr can be exponential)."""
    return _REPR.repr(value)


def cut(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (the cut marked with ``...``)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
