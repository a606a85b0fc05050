"""The counter list (one source of truth) and energy = events x the prices of the energy model
(:mod:`emulator.energy`).

Counters are integers kept per program counter (so per-instruction, per-label and total views
are sums over rows). Energy is derived from them at report time; it is never accumulated
separately, so it cannot drift from the events it is made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator.config import Config
from emulator.energy import TERMS, Price, price_table, prices

# name -> meaning. Order is the column order of every counter matrix.
COUNTER_DOCS: dict[str, str] = {
    "instructions": "instructions executed",
    "cycles": "cycles (closed-form model per unit, docs/timing.md)",
    "macs": "logical multiply-accumulates performed (M*K*N minus skipped)",
    "macs_skipped": "logical MACs skipped because a skip-enabled operand element is zero",
    "mac_ops": "8-bit MAC operations on the array (performed MACs x byte-passes)",
    "mac_passes": "byte-passes of the MAC array (1, 2 or 4 per matrix instruction)",
    "spad_rd_bytes": "scratchpad bytes read",
    "spad_wr_bytes": "scratchpad bytes written",
    "acc_rd_bytes": "accumulator-memory bytes read",
    "acc_wr_bytes": "accumulator-memory bytes written",
    "dram_rd_bytes": "DRAM bytes read",
    "dram_wr_bytes": "DRAM bytes written",
    "alu_ops": "vector-ALU element operations",
    "alu_passes": "vector-ALU 8-bit element passes (add-class)",
    "alu_mul_passes": "vector-ALU 8-bit element passes (multiply-class)",
    "rq_elems": "elements requantized",
    "rng_draws": "64-bit dither draws",
    "acc_overflows": "accumulator results that saturated or wrapped",
    "saturations": "requantizer and ALU results that saturated",
    "skip_cycles_saved": "matrix cycles removed from the schedule by zero-skipping (array.skip)",
    "dma_stall_cycles": "cycles waiting for the DMA engine (dma.overlap: engine busy or hazard)",
    "gemm_a_rd_bytes": "scratchpad bytes the matrix unit read for operand A (in spad_rd_bytes)",
    "gemm_b_rd_bytes": "scratchpad bytes the matrix unit read for operand B (in spad_rd_bytes)",
    "array_cycles": "cycles the MAC array is busy with matrix instructions (after zero-skip "
                    "savings; DMA stalls excluded)",
}
COUNTERS: tuple[str, ...] = tuple(COUNTER_DOCS)
# the counters a count-only run (emulator/countonly.py) cannot produce: they count value events
UNCOUNTED = ("acc_overflows", "saturations")
N_COUNTERS = len(COUNTERS)
IDX: dict[str, int] = {n: i for i, n in enumerate(COUNTERS)}

(
    INSTRUCTIONS, CYCLES, MACS, MACS_SKIPPED, MAC_OPS, MAC_PASSES, SPAD_RD, SPAD_WR, ACC_RD,
    ACC_WR, DRAM_RD, DRAM_WR, ALU_OPS, ALU_PASSES, ALU_MUL_PASSES, RQ_ELEMS, RNG_DRAWS,
    ACC_OVERFLOWS, SATURATIONS, SKIP_CYCLES_SAVED, DMA_STALL_CYCLES, GEMM_A_RD, GEMM_B_RD,
    ARRAY_CYCLES,
) = range(N_COUNTERS)

# derived metrics (ratios of counters; docs/timing.md "Array utilization"): name -> meaning
DERIVED_DOCS: dict[str, str] = {
    "array_utilization": "useful MAC-cycles / array-cycles: mac_ops / (rows x cols x "
                         "array_cycles), 0 with no matrix work",
    "array_utilization_run": "mac_ops / (rows x cols x cycles): the array's share of the "
                             "whole run's peak",
}


def derived(counts: np.ndarray, cfg: Config) -> dict[str, float]:
    """The derived metrics of one counter vector (or the column sums of a matrix).

    A *useful MAC-cycle* is one PE performing one 8-bit multiply-accumulate that is not
    skipped (``mac_ops``: performed MACs x byte-passes); *array-cycles* are ``rows x cols`` PE
    slots for every cycle the array is busy (``array_cycles``). Both ratios lie in [0, 1]."""
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim == 2:
        c = c.sum(axis=0)
    pes = cfg.macs_per_cycle
    busy, run = int(c[ARRAY_CYCLES]), int(c[CYCLES])
    return {
        "array_utilization": float(c[MAC_OPS]) / (pes * busy) if busy else 0.0,
        "array_utilization_run": float(c[MAC_OPS]) / (pes * run) if run else 0.0,
    }

ENERGY_COMPONENTS = (
    "multiply", "accumulate", "scratchpad", "accumulator", "dram", "rng", "alu", "control",
)


def _vector(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.int64)
    return c.sum(axis=0) if c.ndim == 2 else c


def energy_terms(counts: np.ndarray, cfg: Config) -> list[tuple[str, Price, float]]:
    """(component, price, pJ) of every term of the energy sum, for one counter vector (or the
    column sums of a matrix); terms in :data:`emulator.energy.TERMS` order."""
    c = _vector(counts)
    p = prices(cfg)
    return [(comp, p[price], float(sum(int(c[IDX[n]]) for n in names)) * scale * p[price].pj)
            for comp, price, names, scale in TERMS]


def energy_breakdown(counts: np.ndarray, cfg: Config) -> dict[str, float]:
    """Energy in pJ per component for one counter vector (or the column sums of a matrix)."""
    out = dict.fromkeys(ENERGY_COMPONENTS, 0.0)
    for comp, _, pj in energy_terms(counts, cfg):
        out[comp] += pj
    return out


def assumed_breakdown(counts: np.ndarray, cfg: Config) -> dict[str, float]:
    """The part of each component's energy that rests on assumed prices (every price whose
    kind is not ``paper``: derived, assumed or set in the config)."""
    out = dict.fromkeys(ENERGY_COMPONENTS, 0.0)
    for comp, price, pj in energy_terms(counts, cfg):
        if price.assumed:
            out[comp] += pj
    return out


def energy_pj(counts: np.ndarray, cfg: Config) -> float:
    return float(sum(energy_breakdown(counts, cfg).values()))


@dataclass(frozen=True)
class Summary:
    """Totals of one run: every counter plus energy (per component, and the part of each that
    rests on assumed prices) and the prices used."""

    totals: dict[str, int]
    energy: dict[str, float]
    assumed_energy: dict[str, float] = field(default_factory=dict)
    prices: dict[str, dict[str, object]] = field(default_factory=dict)
    derived: dict[str, float] = field(default_factory=dict)

    @property
    def energy_pj(self) -> float:
        return float(sum(self.energy.values()))

    @property
    def assumed_energy_pj(self) -> float:
        return float(sum(self.assumed_energy.values()))

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = dict(self.totals)
        d["energy_pj"] = self.energy_pj
        d["energy_breakdown_pj"] = dict(self.energy)
        d["assumed_energy_pj"] = self.assumed_energy_pj
        d["assumed_energy_breakdown_pj"] = dict(self.assumed_energy)
        d["energy_prices"] = dict(self.prices)
        d.update(self.derived)
        return d


def summarize(counts: np.ndarray, cfg: Config) -> Summary:
    c = _vector(counts)
    return Summary({n: int(c[i]) for i, n in enumerate(COUNTERS)}, energy_breakdown(c, cfg),
                   assumed_breakdown(c, cfg), price_table(cfg),
                   derived(c, cfg))
