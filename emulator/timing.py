"""Closed-form cycle and traffic model: one function per cost hook of the instruction table.

Each hook returns the *data-independent* counter increments of one instruction from its shapes
and the config, before the work runs (so a count-only mode is free). Data-dependent counts
(skipped MACs, overflows, saturations) are added by the semantics. The formulas are documented
in ``docs/timing.md``; keep the two in step.

Model (first version):

* scalar / branch: 1 cycle; scalar DRAM load/store (ldw/stw): DMA latency + 1.
* DMA: ``latency + ceil(bytes / bytes_per_cycle)``.
* vector ALU: ``latency + passes * ceil(n / lanes)``; INT16 add-class ops take 2 byte-passes,
  INT16 multiplies 4.
* requantize / efit / reductions: ``latency + ceil(n / lanes)`` (INT16 output: 2 passes).
* GEMM, weight-stationary on an R x C array, per byte-pass: the K x N weight matrix is cut into
  ``ceil(K/R) * ceil(N/C)`` folds; each fold loads its weights (R cycles), then streams the M
  rows of A through the skewed array: ``M + R + C - 2`` cycles until the last result drains.
  Zero-skipping does not shorten the schedule in this model (``array`` skip granularity is
  ``none``); skipped MACs save multiply/accumulate energy only.
"""

from __future__ import annotations

from math import ceil

from emulator.config import Config
from emulator.counters import (
    ACC_RD,
    ACC_WR,
    ALU_MUL_PASSES,
    ALU_OPS,
    ALU_PASSES,
    CYCLES,
    DRAM_RD,
    DRAM_WR,
    MAC_PASSES,
    RQ_ELEMS,
    SPAD_RD,
    SPAD_WR,
)

Cost = dict[int, int]


def scalar(cfg: Config) -> Cost:
    return {CYCLES: 1}


branch = scalar


def scalar_mem(cfg: Config, to_dram: bool) -> Cost:
    """A 32-bit scalar load/store: one DRAM access at the DMA latency."""
    return {CYCLES: cfg.dma.latency_cycles + 1, DRAM_WR if to_dram else DRAM_RD: 4}


def scalar_acc(cfg: Config) -> Cost:
    """A scalar read of one accumulator entry."""
    return {CYCLES: 1, ACC_RD: cfg.acc_bytes_per_entry}


def dma(cfg: Config, nbytes: int, to_dram: bool) -> Cost:
    cyc = cfg.dma.latency_cycles + ceil(nbytes / cfg.dma.bytes_per_cycle)
    if to_dram:
        return {CYCLES: cyc, SPAD_RD: nbytes, DRAM_WR: nbytes}
    return {CYCLES: cyc, DRAM_RD: nbytes, SPAD_WR: nbytes}


def dma_acc(cfg: Config, entries: int, to_dram: bool) -> Cost:
    nbytes = 4 * entries
    acc_bytes = entries * cfg.acc_bytes_per_entry
    cyc = cfg.dma.latency_cycles + ceil(nbytes / cfg.dma.bytes_per_cycle)
    if to_dram:
        return {CYCLES: cyc, ACC_RD: acc_bytes, DRAM_WR: nbytes}
    return {CYCLES: cyc, DRAM_RD: nbytes, ACC_WR: acc_bytes}


def gemm_fold_cycles(cfg: Config, m: int, k: int, n: int) -> int:
    """Cycles of one byte-pass of an M x K x N GEMM, weight-stationary."""
    r, c = cfg.array.rows, cfg.array.cols
    if m == 0 or k == 0 or n == 0:
        return 0
    folds = ceil(k / r) * ceil(n / c)
    return folds * (r + m + r + c - 2)


def gemm(
    cfg: Config, m: int, k: int, n: int, a_bytes: int, b_bytes: int, accumulate: bool
) -> Cost:
    passes = a_bytes * b_bytes
    acc_entry = cfg.acc_bytes_per_entry
    col_folds = ceil(n / cfg.array.cols) if n else 0
    return {
        CYCLES: passes * gemm_fold_cycles(cfg, m, k, n),
        MAC_PASSES: passes,
        # A is streamed once per column fold; B (the stationary weights) is read once.
        SPAD_RD: m * k * a_bytes * col_folds + k * n * b_bytes,
        ACC_RD: m * n * acc_entry if accumulate else 0,
        ACC_WR: m * n * acc_entry,
    }


def alu(cfg: Config, n: int, elem_bytes: int, n_inputs: int, multiply: bool) -> Cost:
    passes = elem_bytes * elem_bytes if multiply else elem_bytes
    groups = ceil(n / cfg.alu.lanes)
    return {
        CYCLES: cfg.alu.latency_cycles + passes * groups,
        ALU_OPS: n,
        ALU_MUL_PASSES if multiply else ALU_PASSES: passes * n,
        SPAD_RD: n_inputs * n * elem_bytes,
        SPAD_WR: n * elem_bytes,
    }


def requant(cfg: Config, n: int, out_bytes: int) -> Cost:
    return {
        CYCLES: cfg.alu.latency_cycles + out_bytes * ceil(n / cfg.alu.lanes),
        RQ_ELEMS: n,
        ACC_RD: n * cfg.acc_bytes_per_entry,
        SPAD_WR: n * out_bytes,
    }


def convert(cfg: Config, n: int, src_bytes: int, dst_bytes: int) -> Cost:
    """Scratchpad-to-scratchpad requantization: the requantizer fed from the scratchpad."""
    return {
        CYCLES: cfg.alu.latency_cycles + max(src_bytes, dst_bytes) * ceil(n / cfg.alu.lanes),
        RQ_ELEMS: n,
        SPAD_RD: n * src_bytes,
        SPAD_WR: n * dst_bytes,
    }


def exp(cfg: Config, n: int) -> Cost:
    """Exponential unit on INT16: a 16 x 16-bit multiply (4 byte-passes), table read, shift."""
    return {
        CYCLES: cfg.alu.latency_cycles + 4 * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_MUL_PASSES: 4 * n,
        ALU_PASSES: n,
        SPAD_RD: 2 * n,
        SPAD_WR: 2 * n,
    }


def divide(cfg: Config, rows: int, cols: int, out_bytes: int) -> Cost:
    """Row normalization by a restoring divider: one quotient bit per cycle per lane."""
    n = rows * cols
    return {
        CYCLES: cfg.alu.latency_cycles + 8 * out_bytes * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_PASSES: 8 * out_bytes * n,
        SPAD_RD: 2 * n,
        ACC_RD: rows * cfg.acc_bytes_per_entry,
        SPAD_WR: out_bytes * n,
    }


def lazy(cfg: Config, n: int) -> Cost:
    """Lazy update: INT16 round-shift, INT8 saturating add, INT16 residual subtract (4 passes)."""
    return {
        CYCLES: cfg.alu.latency_cycles + 4 * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_PASSES: 4 * n,
        SPAD_RD: 3 * n,
        SPAD_WR: 3 * n,
    }


def scan(cfg: Config, n: int) -> Cost:
    return {
        CYCLES: cfg.alu.latency_cycles + ceil(n / cfg.alu.lanes),
        ACC_RD: n * cfg.acc_bytes_per_entry,
    }


def reduce(cfg: Config, rows: int, cols: int, elem_bytes: int, to_acc: bool) -> Cost:
    n = rows * cols
    out = {
        CYCLES: cfg.alu.latency_cycles + elem_bytes * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_PASSES: elem_bytes * n,
        SPAD_RD: n * elem_bytes,
    }
    if to_acc:
        out[ACC_WR] = rows * cfg.acc_bytes_per_entry
    else:
        out[SPAD_WR] = rows * elem_bytes
    return out


HOOKS = {
    "scalar": scalar,
    "branch": branch,
    "scalar_mem": scalar_mem,
    "scalar_acc": scalar_acc,
    "convert": convert,
    "exp": exp,
    "divide": divide,
    "lazy": lazy,
    "scan": scan,
    "dma": dma,
    "dma_acc": dma_acc,
    "gemm": gemm,
    "requant": requant,
    "alu": alu,
    "reduce": reduce,
}
