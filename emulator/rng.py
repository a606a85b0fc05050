"""The dither random number generator: SplitMix64 used as a counter-based generator.

Architectural state is two 64-bit words, ``seed`` and ``counter``. Draw number ``n`` of the
stream (n = counter at the time of the draw) is::

    x = (seed + (n + 1) * 0x9E3779B97F4A7C15) mod 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) mod 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) mod 2**64
    z = x ^ (x >> 31)

which is exactly the n-th output of Vigna's SplitMix64 started from state ``seed`` (the
generator behind Java's SplittableRandom). Because a draw depends only on (seed, n), a block
of draws vectorizes, any position can be reached directly, and checkpointing is two words.
Each draw advances ``counter`` by one. The constants live in :mod:`isa.conventions` (docs/isa.md
renders them); known-answer vectors are in ``tests/test_rng.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from emulator import jit  # noqa: F401 - numba's numpy support without scipy
from isa.conventions import RNG_GAMMA as GAMMA
from isa.conventions import RNG_MIX1 as MIX1
from isa.conventions import RNG_MIX2 as MIX2
from isa.conventions import RNG_SHIFTS

MASK64 = (1 << 64) - 1
_SH1, _SH2, _SH3 = RNG_SHIFTS


def draw_ref(seed: int, n: int) -> int:
    """Draw ``n`` of the stream seeded with ``seed``, in plain Python integers."""
    x = (seed + (n + 1) * GAMMA) & MASK64
    x = ((x ^ (x >> _SH1)) * MIX1) & MASK64
    x = ((x ^ (x >> _SH2)) * MIX2) & MASK64
    return x ^ (x >> _SH3)


_G = np.uint64(GAMMA)
_M1 = np.uint64(MIX1)
_M2 = np.uint64(MIX2)
_S30 = np.uint64(_SH1)
_S27 = np.uint64(_SH2)
_S31 = np.uint64(_SH3)
_ONE = np.uint64(1)


@njit(cache=True, inline="always")
def mix(seed: np.uint64, n: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    x = seed + (n + _ONE) * _G
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True)
def _draws(seed: np.uint64, counter: np.uint64, out: np.ndarray) -> None:  # pragma: no cover
    for i in range(out.shape[0]):
        out[i] = mix(seed, counter + np.uint64(i))


def draws(seed: int, counter: int, n: int) -> np.ndarray:
    """``n`` consecutive draws starting at position ``counter``, as a uint64 array."""
    out = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        _draws(np.uint64(seed & MASK64), np.uint64(counter & MASK64), out)
    return out
