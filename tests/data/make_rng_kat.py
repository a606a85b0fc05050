"""Regenerate tests/data/rng_kat.json: known-answer vectors of the dither generator.

Written from the published SplitMix64 algorithm (S. Vigna, splitmix64.c) in plain Python
integers, independently of emulator/rng.py: the state starts at ``seed``; each ``next()`` adds
the golden gamma and returns the mixed state. Draw ``n`` of the machine's stream is the
``(n + 1)``-th output, reached here by jumping the state to ``seed + n * gamma`` first.

    python tests/data/make_rng_kat.py > tests/data/rng_kat.json
"""

from __future__ import annotations

import json

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, state: int) -> None:
        self.state = state & M64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


SEEDS = [0, 1, 1 << 63, M64, 0x0123456789ABCDEF, 0xD1B54A32D192ED03]
COUNTERS = [0, 1, 2, 1000, 1 << 32, M64 - 1]


def vectors() -> dict:
    out = []
    for seed in SEEDS:
        first = SplitMix64(seed)
        seq = [first.next() for _ in range(8)]
        at = {}
        for c in COUNTERS:
            g = SplitMix64(seed + c * 0x9E3779B97F4A7C15)
            at[str(c)] = [f"{g.next():016x}", f"{g.next():016x}"]
        out.append({"seed": f"{seed:016x}", "first8": [f"{v:016x}" for v in seq],
                    "at_counter": at})
    return {"generator": "SplitMix64 (Vigna), draw n = output n+1 from state seed",
            "vectors": out}


def render() -> str:
    return json.dumps(vectors(), indent=1) + "\n"


if __name__ == "__main__":
    print(render(), end="")
