"""The counter list (one source of truth) and energy = events x the config's energy table.

Counters are integers kept per program counter (so per-instruction, per-label and total views
are sums over rows). Energy is derived from them at report time; it is never accumulated
separately, so it cannot drift from the events it is made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator.config import Config

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


def energy_breakdown(counts: np.ndarray, cfg: Config) -> dict[str, float]:
    """Energy in pJ per component for one counter vector (or the column sums of a matrix)."""
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim == 2:
        c = c.sum(axis=0)
    en = cfg.energy
    per_byte_sram = en.sram_per_64b / 8.0
    per_byte_acc = en.acc_per_64b / 8.0
    per_byte_dram = en.dram_per_64b / 8.0
    return {
        "multiply": float(c[MAC_OPS]) * en.mult_int8,
        "accumulate": float(c[MAC_OPS]) * en.add_int32,
        "scratchpad": float(c[SPAD_RD] + c[SPAD_WR]) * per_byte_sram,
        "accumulator": float(c[ACC_RD] + c[ACC_WR]) * per_byte_acc,
        "dram": float(c[DRAM_RD] + c[DRAM_WR]) * per_byte_dram,
        "rng": float(c[RNG_DRAWS]) * en.rng_draw,
        "alu": float(c[ALU_PASSES]) * en.add_int8
        + float(c[ALU_MUL_PASSES]) * en.mult_int8
        + float(c[RQ_ELEMS]) * en.requant_element,
        "control": float(c[INSTRUCTIONS]) * en.instruction,
    }


def energy_pj(counts: np.ndarray, cfg: Config) -> float:
    return float(sum(energy_breakdown(counts, cfg).values()))


@dataclass(frozen=True)
class Summary:
    """Totals of one run: every counter, energy, and the derived metrics (utilization)."""

    totals: dict[str, int]
    energy: dict[str, float]
    derived: dict[str, float] = field(default_factory=dict)

    @property
    def energy_pj(self) -> float:
        return float(sum(self.energy.values()))

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = dict(self.totals)
        d["energy_pj"] = self.energy_pj
        d["energy_breakdown_pj"] = dict(self.energy)
        d.update(self.derived)
        return d


def summarize(counts: np.ndarray, cfg: Config) -> Summary:
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim == 2:
        c = c.sum(axis=0)
    return Summary({n: int(c[i]) for i, n in enumerate(COUNTERS)}, energy_breakdown(c, cfg),
                   derived(c, cfg))
