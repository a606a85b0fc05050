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


def draws(seed: int, counter: int, n: int) -> np.ndarray:
    """``n`` consecutive draws starting at position ``counter``, as a uint64 array (numpy's
    uint64 array arithmetic wraps modulo 2**64, as the formula does). The datapath's compiled
    kernels draw with :func:`emulator.kernels.mix`, the same formula."""
    x = np.arange(n, dtype=np.uint64) + np.uint64(counter & MASK64)
    x = np.uint64(seed & MASK64) + (x + np.uint64(1)) * np.uint64(GAMMA)
    x = (x ^ (x >> np.uint64(_SH1))) * np.uint64(MIX1)
    x = (x ^ (x >> np.uint64(_SH2))) * np.uint64(MIX2)
    return x ^ (x >> np.uint64(_SH3))
