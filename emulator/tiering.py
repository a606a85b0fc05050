"""Python first, compiled code when it pays: when the emulator loads numba.

Importing numba and loading the emulator's cached compiled code takes about half a second,
longer than a short program's whole run. So no module on the emulator's import path imports
numba (:mod:`emulator.kernels`, :mod:`emulator.scalar`, :mod:`emulator.vecops` and what they
import are loaded on demand), and a machine decides when to load them:

* **The datapath.** A state on the fast datapath starts on :class:`ColdDatapath`: an operation
  whose array arguments hold at most :data:`SMALL_ELEMENTS` elements in all runs on the
  reference datapath (:mod:`emulator.reference`, which gives the same values, counts, flags
  and faults: ``tests/test_differential.py``, ``python -m programs.verify.difftest``); the
  first larger one, or any once the process has spent :data:`COLD_SECONDS` in such reference
  calls (some of them loop in Python), loads :mod:`emulator.kernels`, and from then on the
  state calls the kernels directly. Once the kernels are loaded in a process, every new state
  uses them at once. Which path runs an operation never changes its bits, so a choice that
  depends on time keeps every run reproducible.
* **The scalar interpreter.** ``Machine(scalar="auto")`` runs scalar, branch and exponent
  instructions by their Python handlers until it has executed :data:`TIER_STEPS` instructions,
  then loads the compiled interpreter (:mod:`emulator.scalar`) and continues there. Once the
  kernels are loaded (by this machine's first large operation or anything else in the process)
  it switches at the next run call or wall-clock check, and a machine made after that starts
  compiled. The switch happens between two instructions and changes no value or counter.

A 10-instruction ``lpemu run`` therefore never imports numba, while a training run loads it
with its first layer-sized operation. ``NUMBA_DISABLE_JIT=1`` is honoured without importing
numba to read it.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType
from typing import Any

import numpy as np

# an operation with at most this many array elements in its arguments runs on the reference
# datapath until the kernels are loaded (measured: a 36x36x36 GEMM 0.7 ms, requantizing 2,048
# elements 2.4 ms; COLD_SECONDS bounds the total)
SMALL_ELEMENTS = 4096
# instructions run by the Python handlers before "auto" loads the compiled interpreter
# (about 0.05-0.1 s of Python, a fraction of what loading numba costs)
TIER_STEPS = 50_000
# seconds of reference-datapath calls a process spends in the cold tier before loading the
# kernels anyway (a loop of small pooling instructions would otherwise run 50,000 of them)
COLD_SECONDS = 0.1
_cold_spent = 0.0


def kernels_loaded() -> bool:
    """Whether the compiled kernels (and so numba) are loaded in this process."""
    return "emulator.kernels" in sys.modules


def load_kernels() -> ModuleType:
    """The fast datapath's compiled kernels (importing numba the first time)."""
    from emulator import kernels

    return kernels


def jit_disabled() -> bool:
    """numba's ``config.DISABLE_JIT``: read from numba once it is loaded, before that from the
    ``NUMBA_DISABLE_JIT`` environment variable as numba itself reads it."""
    numba = sys.modules.get("numba")
    if numba is not None and hasattr(numba, "config"):
        return bool(numba.config.DISABLE_JIT)
    value = os.environ.get("NUMBA_DISABLE_JIT", "")
    try:
        return bool(int(value)) if value.strip() else False
    except ValueError:  # numba warns and keeps its default
        return False


def compile_seconds() -> float:
    """Seconds numba has spent compiling in this process (0 while it is not loaded)."""
    jit = sys.modules.get("emulator.jit")
    return jit.compile_seconds() if jit is not None else 0.0


def fast_datapath(state: Any) -> Any:
    """The fast datapath for a new state: the kernels if loaded, else a cold datapath."""
    return load_kernels() if kernels_loaded() else ColdDatapath(state)


def _elements(args: tuple, kwargs: dict) -> int:
    n = 0
    for a in args:
        if isinstance(a, np.ndarray):
            n += a.size
    for a in kwargs.values():
        if isinstance(a, np.ndarray):
            n += a.size
    return n


class ColdDatapath:
    """The fast datapath before the kernels are loaded: each operation (the interface of
    :mod:`emulator.kernels`) runs on the reference datapath while its arrays are small, and
    the first large one (or any operation once something else loaded the kernels, or once the
    cold tier has used up :data:`COLD_SECONDS`) switches ``state.dp`` to the kernels for
    good."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def _warm(self) -> ModuleType:
        kernels = load_kernels()
        if self._state.dp is self:
            self._state.dp = kernels
        return kernels

    def __getattr__(self, name: str) -> Any:
        from emulator import reference

        if name.startswith("__") or kernels_loaded():
            return getattr(self._warm(), name)
        ref = getattr(reference, name)  # AttributeError for a name neither datapath has

        def call(*args: Any, **kwargs: Any) -> Any:
            global _cold_spent
            if (not kernels_loaded() and _cold_spent < COLD_SECONDS
                    and _elements(args, kwargs) <= SMALL_ELEMENTS):
                t0 = time.perf_counter()
                try:
                    return ref(*args, **kwargs)
                finally:
                    _cold_spent += time.perf_counter() - t0
            return getattr(self._warm(), name)(*args, **kwargs)

        call.__name__ = name
        self.__dict__[name] = call  # found before __getattr__ next time
        return call
