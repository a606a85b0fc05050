"""The energy model: what one event costs, where each price comes from, and energy = events x
prices, split into what rests on the cited source and what is assumed (docs/timing.md).

Prices come from the config's ``energy`` section (defaults: Horowitz, ISSCC 2014, 45 nm; the
sources are cited in configs/default.yaml):

* On-chip SRAM, per 64-bit access, scales with capacity: the paper gives 8 KB (10 pJ), 32 KB
  (20 pJ) and 1 MB (100 pJ) points. A memory of capacity C is priced by log-log (power-law)
  interpolation between the two points around C, extrapolated with the nearest segment's slope
  outside [8 KiB, 1 MiB] (KB read as KiB, MB as MiB). The scratchpad is priced at
  ``memory.scratchpad_bytes``, the accumulator memory at its capacity
  ``accumulator.entries x ceil(accumulator.bits / 8)``; ``energy.sram_per_64b`` /
  ``energy.acc_per_64b`` fix those prices instead when set.
* The accumulate add is priced at the accumulator width b: the paper's 8-bit (0.03 pJ) and
  32-bit (0.1 pJ) adds at 8 and 32 bits, linear in b between them.

Every price has a ``kind``: ``paper`` (a figure of the cited source, used as printed),
``derived`` (computed from the source's figures by the rules above: an interpolation or
extrapolation this model assumes), ``assumed`` (not in the source; our estimate) or
``config`` (a value the config sets that differs from the cited default). Reports mark every
price that is not ``paper`` as assumed and say how much of the energy rests on such prices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from emulator.config import Config, EnergyConfig

KIB = 1024

# (key, its source, True if not in the source), for the keys of the energy section
SOURCES: dict[str, tuple[str, bool]] = {
    "mult_int8": ("Horowitz, ISSCC 2014: 8-bit integer multiply", False),
    "add_int8": ("Horowitz, ISSCC 2014: 8-bit integer add", False),
    "add_int32": ("Horowitz, ISSCC 2014: 32-bit integer add", False),
    "sram_8kb_per_64b": ("Horowitz, ISSCC 2014: 8 KB SRAM, 64-bit access", False),
    "sram_32kb_per_64b": ("Horowitz, ISSCC 2014: 32 KB SRAM, 64-bit access", False),
    "sram_1mb_per_64b": ("Horowitz, ISSCC 2014: 1 MB SRAM, 64-bit access", False),
    "dram_per_64b": ("Horowitz, ISSCC 2014: DRAM 1.3-2.6 nJ per 64-bit access (midpoint)",
                     False),
    "rng_draw": ("ASSUMPTION: one 64-bit counter-hash dither draw", True),
    "requant_element": ("ASSUMPTION: requantizing one element, an int32 add and a shifter",
                        True),
    "instruction": ("ASSUMPTION: fetch, decode and control per instruction", True),
}
SRAM_POINTS: tuple[tuple[int, str], ...] = (
    (8 * KIB, "sram_8kb_per_64b"), (32 * KIB, "sram_32kb_per_64b"),
    (1024 * KIB, "sram_1mb_per_64b"))
KINDS = ("paper", "derived", "assumed", "config")
_DEFAULTS = EnergyConfig()


@dataclass(frozen=True)
class Price:
    """The energy of one event and where the number comes from."""

    name: str
    pj: float
    per: str  # the event priced
    kind: str  # one of KINDS
    source: str

    @property
    def assumed(self) -> bool:
        """Not a figure of the cited source used as printed."""
        return self.kind != "paper"

    def to_dict(self) -> dict[str, object]:
        return {"pj": self.pj, "per": self.per, "kind": self.kind, "assumed": self.assumed,
                "source": self.source}


def _key(e: EnergyConfig, key: str) -> tuple[float, str, str]:
    """(value, kind, source) of one energy key: its cited kind, or ``config`` if changed."""
    v = getattr(e, key)
    text, assumed = SOURCES[key]
    if v != getattr(_DEFAULTS, key):
        return v, "config", f"set in config: energy.{key} (default {getattr(_DEFAULTS, key)}: "\
            f"{text})"
    return v, "assumed" if assumed else "paper", text


def _combine(kinds: list[str]) -> str:
    return "config" if "config" in kinds else "derived"


def sram_price(e: EnergyConfig, capacity: int) -> tuple[float, str, str]:
    """(pJ per 64-bit access, kind, source) of an on-chip SRAM of ``capacity`` bytes."""
    pts = [(c, *_key(e, k)) for c, k in SRAM_POINTS]
    for c, v, kind, text in pts:
        if capacity == c:
            return v, kind, text
    i = 0 if capacity < pts[1][0] else 1  # the segment: [8K, 32K] or [32K, 1M] (extended)
    (c0, v0, k0, _), (c1, v1, k1, _) = pts[i], pts[i + 1]
    t = math.log(capacity / c0) / math.log(c1 / c0)
    if v0 > 0 and v1 > 0:
        v = math.exp(math.log(v0) + t * (math.log(v1) - math.log(v0)))
    else:  # a zero price: interpolate linearly in log(capacity)
        v = max(0.0, v0 + t * (v1 - v0))
    how = "interpolated" if 0 <= t <= 1 else "extrapolated"
    return v, _combine([k0, k1]), (f"{how} log-log from the {c0 // KIB} KiB and "
                                    f"{c1 // KIB} KiB SRAM points to {_size(capacity)}")


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n:,} B"


def acc_add_price(e: EnergyConfig, bits: int) -> tuple[float, str, str]:
    """(pJ, kind, source) of one accumulate add at ``bits``: the 8- and 32-bit adds at those
    widths, linear in width between them."""
    if bits == 8:
        return _key(e, "add_int8")
    if bits == 32:
        return _key(e, "add_int32")
    v8, k8, _ = _key(e, "add_int8")
    v32, k32, _ = _key(e, "add_int32")
    v = v8 + (bits - 8) * (v32 - v8) / 24
    return v, _combine([k8, k32]), (f"linear in width between the 8- and 32-bit adds, at "
                                    f"{bits} bits")


@lru_cache(maxsize=64)
def prices(cfg: Config) -> dict[str, Price]:
    """Every price the energy model uses for ``cfg``, by name."""
    e = cfg.energy
    out: dict[str, Price] = {}

    def add(name: str, per: str, vks: tuple[float, str, str]) -> None:
        out[name] = Price(name, float(vks[0]), per, vks[1], vks[2])

    add("mult_int8", "8-bit multiply (a MAC byte-pass, an ALU multiply pass)",
        _key(e, "mult_int8"))
    add("accumulate_add", f"{cfg.accumulator.bits}-bit accumulate add (a MAC byte-pass)",
        acc_add_price(e, cfg.accumulator.bits))
    add("add_int8", "8-bit add (an ALU add pass)", _key(e, "add_int8"))
    sp = cfg.memory.scratchpad_bytes
    if e.sram_per_64b is None:
        add("scratchpad_per_64b", f"64-bit access of the {_size(sp)} scratchpad",
            sram_price(e, sp))
    else:
        out["scratchpad_per_64b"] = Price(
            "scratchpad_per_64b", e.sram_per_64b, f"64-bit access of the {_size(sp)} scratchpad",
            "config", "set in config: energy.sram_per_64b (fixed, not scaled by capacity)")
    ab = cfg.acc_bytes
    if e.acc_per_64b is None:
        add("accumulator_per_64b", f"64-bit access of the {_size(ab)} accumulator memory",
            sram_price(e, ab))
    else:
        out["accumulator_per_64b"] = Price(
            "accumulator_per_64b", e.acc_per_64b,
            f"64-bit access of the {_size(ab)} accumulator memory", "config",
            "set in config: energy.acc_per_64b (fixed, not scaled by capacity)")
    add("dram_per_64b", "64-bit DRAM access", _key(e, "dram_per_64b"))
    add("rng_draw", "64-bit dither draw", _key(e, "rng_draw"))
    add("requant_element", "requantized element", _key(e, "requant_element"))
    add("instruction", "instruction executed", _key(e, "instruction"))
    return out


# (component, price, counter names whose sum is the event count, events per count)
TERMS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("multiply", "mult_int8", ("mac_ops",), 1.0),
    ("accumulate", "accumulate_add", ("mac_ops",), 1.0),
    ("scratchpad", "scratchpad_per_64b", ("spad_rd_bytes", "spad_wr_bytes"), 1 / 8),
    ("accumulator", "accumulator_per_64b", ("acc_rd_bytes", "acc_wr_bytes"), 1 / 8),
    ("dram", "dram_per_64b", ("dram_rd_bytes", "dram_wr_bytes"), 1 / 8),
    ("rng", "rng_draw", ("rng_draws",), 1.0),
    ("alu", "add_int8", ("alu_passes",), 1.0),
    ("alu", "mult_int8", ("alu_mul_passes",), 1.0),
    ("alu", "requant_element", ("rq_elems",), 1.0),
    ("control", "instruction", ("instructions",), 1.0),
)


def price_table(cfg: Config) -> dict[str, dict[str, object]]:
    """The prices as JSON-ready dicts (``pj``, ``per``, ``kind``, ``assumed``, ``source``)."""
    return {name: pr.to_dict() for name, pr in prices(cfg).items()}
