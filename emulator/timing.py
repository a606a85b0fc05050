"""Closed-form cycle and traffic model: one function per cost hook of the instruction table.

Each hook returns the *data-independent* counter increments of one instruction from its shapes
and the config, before the work runs (so a count-only mode is free). Data-dependent counts
(skipped MACs, overflows, saturations) are added by the semantics. The formulas are documented
in ``docs/timing.md``; keep the two in step.

Model:

* scalar / branch: 1 cycle; scalar DRAM load/store (ldw/stw): DMA latency + 1.
* DMA: ``latency + ceil(bytes / bytes_per_cycle)``.
* vector ALU: ``latency + passes * ceil(n / lanes)``; INT16 add-class ops take 2 byte-passes,
  INT16 multiplies 4.
* requantize / efit / reductions: ``latency + ceil(n / lanes)`` (INT16 output: 2 passes).
* GEMM: ``P`` byte-passes, each ``folds * (fixed + streamed)`` cycles for the configured
  dataflow (weight-, output- or input-stationary; ``gemm_mapping``), minus the cycles zero-skipping
  saves at the configured granularity (``gemm_skip_cycles_saved``). Matches SCALE-Sim's dense
  compute cycles (benchmarks/scalesim_compare.py). An empty GEMM costs nothing (:func:`gemm`).
"""

from __future__ import annotations

from math import ceil

import numpy as np

from emulator.config import Config
from emulator.counters import (
    ACC_RD,
    ACC_WR,
    ALU_MUL_PASSES,
    ALU_OPS,
    ALU_PASSES,
    ARRAY_CYCLES,
    CYCLES,
    DRAM_RD,
    DRAM_WR,
    GEMM_A_RD,
    GEMM_B_RD,
    MAC_PASSES,
    RQ_ELEMS,
    SPAD_RD,
    SPAD_WR,
)
from emulator.geometry import CONV_DGRAD, CONV_FWD, CONV_WGRAD

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


DATAFLOWS = ("weight_stationary", "output_stationary", "input_stationary")


def gemm_mapping(cfg: Config, m: int, k: int, n: int) -> tuple[int, int, int, int]:
    """How one byte-pass of ``C[M,N] = A[M,K] @ B[K,N]`` maps onto the ``R x C`` array.

    Returns ``(row_dim, col_dim, stream_len, overhead)``: the GEMM dimensions held spatially by
    the array rows and columns (cut into ``ceil(row_dim/R) * ceil(col_dim/C)`` folds), the number
    of vectors streamed through the array per fold, and the fixed cycles per fold.

    * weight-stationary: rows <- K, cols <- N, stream M rows of A; per fold ``R`` cycles to load
      the weights, then ``R - 1`` skew and ``C - 1`` drain: overhead ``2R + C - 2``.
    * input-stationary: rows <- K, cols <- M, stream N columns of B; overhead ``2R + C - 2``.
    * output-stationary: rows <- M, cols <- N, stream K; nothing to preload, the outputs shift out
      behind the next fold: overhead ``R + C - 2``.
    """
    r, c = cfg.array.rows, cfg.array.cols
    df = cfg.array.dataflow
    if df == "weight_stationary":
        return k, n, m, 2 * r + c - 2
    if df == "input_stationary":
        return k, m, n, 2 * r + c - 2
    return m, n, k, r + c - 2


def gemm_folds(cfg: Config, m: int, k: int, n: int) -> tuple[int, int]:
    """(row folds, column folds) of one byte-pass."""
    rd, cd, _, _ = gemm_mapping(cfg, m, k, n)
    return ceil(rd / cfg.array.rows), ceil(cd / cfg.array.cols)


def gemm_fold_cycles(cfg: Config, m: int, k: int, n: int) -> int:
    """Dense cycles of one byte-pass of an M x K x N GEMM: ``folds * (overhead + stream)``."""
    if m == 0 or k == 0 or n == 0:
        return 0
    rf, cf = gemm_folds(cfg, m, k, n)
    _, _, stream, overhead = gemm_mapping(cfg, m, k, n)
    return rf * cf * (overhead + stream)


def gemm(
    cfg: Config, m: int, k: int, n: int, a_bytes: int, b_bytes: int, accumulate: bool
) -> Cost:
    """Dense cycles and the operand traffic of each dataflow (see docs/timing.md).

    Each of the ``P = a_bytes * b_bytes`` byte-passes streams one byte plane of each operand,
    so a pass moves ``M K`` bytes of A and ``K N`` bytes of B per full read. The stationary
    operand is read once per pass; the streamed one once per fold of the other spatial
    dimension. Partial sums of successive K-folds (weight- and input-stationary) and of the
    byte-passes are accumulated in the accumulator memory (read-modify-write); output-stationary
    keeps the K reduction inside the PEs.

    An empty GEMM (M, K or N zero) runs no byte-pass and reads no operand: every counter is 0,
    except that K = 0 without ``acc`` (and M, N > 0) clears C: ``ceil(M N / C)`` cycles and
    ``M N Ba`` accumulator bytes written.
    """
    passes = a_bytes * b_bytes
    acc_entry = cfg.acc_bytes_per_entry
    if m == 0 or k == 0 or n == 0:
        # no product runs: nothing at all, except that K = 0 without accumulation clears
        # C[M,N] (an empty sum is 0) through the array's output port, C entries per cycle
        if k or not m or not n or accumulate:
            return {}
        return {CYCLES: ceil(m * n / cfg.array.cols), ACC_WR: m * n * acc_entry}
    r, c = cfg.array.rows, cfg.array.cols
    df = cfg.array.dataflow
    if df == "weight_stationary":
        a_rd, b_rd, writes = m * k * ceil(n / c), k * n, m * n * ceil(k / r)
    elif df == "input_stationary":
        a_rd, b_rd, writes = m * k, k * n * ceil(m / c), m * n * ceil(k / r)
    else:
        a_rd, b_rd, writes = m * k * ceil(n / c), k * n * ceil(m / r), m * n
    writes *= passes
    cycles = passes * gemm_fold_cycles(cfg, m, k, n)
    return {
        CYCLES: cycles,
        ARRAY_CYCLES: cycles,
        MAC_PASSES: passes,
        SPAD_RD: passes * (a_rd + b_rd),
        GEMM_A_RD: passes * a_rd,
        GEMM_B_RD: passes * b_rd,
        ACC_RD: (writes - m * n + (m * n if accumulate else 0)) * acc_entry,
        ACC_WR: writes * acc_entry,
    }


def _ceil_to(x: int, q: int) -> int:
    return -(-x // q) * q


def _fold_max(w: np.ndarray, r: int, c: int) -> np.ndarray:
    """Max of ``w[row_dim, col_dim]`` over each ``r x c`` fold: shape (row folds, col folds)."""
    rd, cd = w.shape
    p = np.zeros((_ceil_to(rd, r), _ceil_to(cd, c)), dtype=w.dtype)
    p[:rd, :cd] = w
    return p.reshape(p.shape[0] // r, r, p.shape[1] // c, c).max(axis=(1, 3))


def _fold_any(x: np.ndarray, axis_len: int, q: int) -> np.ndarray:
    """``any`` over groups of ``q`` along axis 0 of a 2-D bool array: (ceil(len/q), cols)."""
    p = np.zeros((_ceil_to(axis_len, q), x.shape[1]), dtype=bool)
    p[:axis_len] = x
    return p.reshape(-1, q, x.shape[1]).any(axis=1)


def _stream_ws(m: int, k: int, n: int, az: np.ndarray | None, bz: np.ndarray | None,
               r: int, c: int, gran: str) -> np.ndarray:
    """Weight-stationary stream time per fold (K folds x N folds) under zero-skipping."""
    kf, nf = ceil(k / r), ceil(n / c)
    n_a = az.sum(axis=0, dtype=np.int64) if az is not None else np.full(k, m, np.int64)
    if gran == "element":
        if bz is None:  # every PE of a fold row k sees the same work n_a[k]
            return np.repeat(_fold_max(n_a[:, None], r, 1), nf, axis=1)
        return _fold_max(n_a[:, None] * bz, r, c)
    # row: vector i (row i of A) is needed in fold (kb, nb) iff some k in kb has
    # A[i,k] != 0 (or no A skipping) and B[k, nb] has a nonzero (or no B skipping).
    bany = (_fold_any(bz.T, n, c).T if bz is not None else np.ones((k, nf), dtype=bool))
    if az is None:
        any_k = _fold_any(bany, k, r)  # (kf, nf): fold has any work -> all M rows stream
        return np.where(any_k, m, 0).astype(np.int64)
    ap = np.zeros((m, kf * r), dtype=np.float32)
    ap[:, :k] = az
    bp = np.zeros((kf * r, nf), dtype=np.float32)
    bp[:k] = bany
    hits = np.matmul(ap.reshape(m, kf, r).transpose(1, 0, 2), bp.reshape(kf, r, nf))
    return (hits > 0).sum(axis=1, dtype=np.int64)


def _stream_os(m: int, k: int, n: int, az: np.ndarray | None, bz: np.ndarray | None,
               r: int, c: int, gran: str) -> np.ndarray:
    """Output-stationary stream time per fold (M folds x N folds) under zero-skipping."""
    mf, nf = ceil(m / r), ceil(n / c)
    if gran == "element":
        if az is not None and bz is not None:
            work = np.rint(az.astype(np.float32) @ bz.astype(np.float32)).astype(np.int64)
            return _fold_max(work, r, c)
        if az is not None:
            rows = _fold_max(az.sum(axis=1, dtype=np.int64)[:, None], r, 1)
            return np.repeat(rows, nf, axis=1)
        cols = _fold_max(bz.sum(axis=0, dtype=np.int64)[None, :], 1, c)  # type: ignore[union-attr]
        return np.repeat(cols, mf, axis=0)
    aany = _fold_any(az, m, r) if az is not None else np.ones((mf, k), dtype=bool)
    bany = _fold_any(bz.T, n, c).T if bz is not None else np.ones((k, nf), dtype=bool)
    return np.rint(aany.astype(np.float32) @ bany.astype(np.float32)).astype(np.int64)


def gemm_skip_cycles_saved(cfg: Config, m: int, k: int, n: int, az: np.ndarray | None,
                           bz: np.ndarray | None) -> int:
    """Cycles one byte-pass saves by zero-skipping, given the skip-enabled operands' masks.

    ``az`` (M x K) / ``bz`` (K x N) are ``operand != 0`` for a skip-enabled operand and ``None``
    otherwise. A product (i, k, j) is skippable when a skip-enabled operand element is zero.
    In a fold each PE's work is its number of non-skippable products along the streamed
    dimension:

    * ``element``: PEs skip independently and wait for the slowest at the end of the fold (load
      imbalance): stream time = max over the fold's PEs of their work;
    * ``row``: a streamed vector is skipped when every product it carries in the fold is
      skippable: stream time = number of vectors with any work;
    * a fold with no work at all is skipped whole, overhead included; ``none`` saves nothing.

    Saved = sum over folds of (dense fold time - actual fold time).
    """
    gran = cfg.array.skip
    if gran == "none" or (az is None and bz is None) or m == 0 or k == 0 or n == 0:
        return 0
    r, c = cfg.array.rows, cfg.array.cols
    df = cfg.array.dataflow
    if df == "weight_stationary":
        stream = _stream_ws(m, k, n, az, bz, r, c, gran)
    elif df == "input_stationary":  # = weight-stationary on C^T = B^T A^T
        stream = _stream_ws(n, k, m, None if bz is None else bz.T,
                            None if az is None else az.T, r, c, gran)
    else:
        stream = _stream_os(m, k, n, az, bz, r, c, gran)
    _, _, dense_stream, overhead = gemm_mapping(cfg, m, k, n)
    actual = np.where(stream > 0, overhead + stream, 0)
    return int(stream.size * (overhead + dense_stream) - actual.sum())


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


def rsqrt(cfg: Config, n: int) -> Cost:
    """Reciprocal square root: a restoring divider makes the 32-bit radicand (one quotient bit
    per cycle), then a restoring square root its 16 root bits (one per cycle)."""
    return {
        CYCLES: cfg.alu.latency_cycles + 48 * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_PASSES: 48 * n,
        SPAD_RD: 2 * n,
        SPAD_WR: 2 * n,
    }


def wmul(cfg: Config, n: int, a_bytes: int, b_bytes: int, accumulate: bool) -> Cost:
    """Widening multiply into the accumulator: ``a_bytes * b_bytes`` 8-bit multiply passes per
    element (as vmul), the exact product written (or added) to accumulator memory."""
    passes = a_bytes * b_bytes
    acc_bytes = n * cfg.acc_bytes_per_entry
    out = {
        CYCLES: cfg.alu.latency_cycles + passes * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_MUL_PASSES: passes * n,
        SPAD_RD: n * (a_bytes + b_bytes),
        ACC_WR: acc_bytes,
    }
    if accumulate:
        out[ACC_RD] = acc_bytes
    return out


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


QSTEP_DIVIDE_CYCLES = 32  # one quotient bit per cycle (the reciprocal, each row's ratio)
QSTEP_SQRT_CYCLES = 16  # one root bit per cycle


def qstep(cfg: Config, var: bool, rows: int, cols: int, masked: bool) -> Cost:
    """vqstep: one scan of the [rows, cols] accumulator block (asum: |x| added, with the mask
    bytes read; var: row maxima), then var: one 32-bit division per row on the lanes, a
    16-bit square root; both: the 32-cycle reciprocal of the significand."""
    n = rows * cols
    lanes = cfg.alu.lanes
    ba = cfg.acc_bytes_per_entry
    cyc = cfg.alu.latency_cycles + ceil(n / lanes) + QSTEP_DIVIDE_CYCLES
    passes = n + QSTEP_DIVIDE_CYCLES
    out = {ACC_RD: n * ba}
    if var:
        cyc += QSTEP_DIVIDE_CYCLES * ceil(rows / lanes) + QSTEP_SQRT_CYCLES
        passes += QSTEP_DIVIDE_CYCLES * rows + QSTEP_SQRT_CYCLES
        out[ACC_RD] += rows * ba
    if masked:
        out[SPAD_RD] = n
    out.update({CYCLES: cyc, ALU_OPS: n + (rows if var else 0) + 1, ALU_PASSES: passes})
    return out


def topk(cfg: Config, n: int, elem_bytes: int) -> Cost:
    """vtopk as a radix select over the magnitudes: one pass per magnitude bit (8 or 16), each
    counting per vector the elements at or above the candidate threshold, and one pass that
    breaks ties by position and writes; the block is read once and written once."""
    passes = 8 * elem_bytes + 1
    return {
        CYCLES: cfg.alu.latency_cycles + passes * ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_PASSES: passes * n,
        SPAD_RD: n * elem_bytes,
        SPAD_WR: n * elem_bytes,
    }


HOOKS = {
    "scalar": scalar,
    "branch": branch,
    "scalar_mem": scalar_mem,
    "scalar_acc": scalar_acc,
    "convert": convert,
    "exp": exp,
    "divide": divide,
    "rsqrt": rsqrt,
    "wmul": wmul,
    "lazy": lazy,
    "scan": scan,
    "dma": dma,
    "dma_acc": dma_acc,
    "gemm": gemm,
    "requant": requant,
    "alu": alu,
    "reduce": reduce,
    "qstep": qstep,
    "topk": topk,
}


# ============================================================================ conv and pooling
# (conv, vmaxpool, vsumpool, vunpool, vbias; docs/timing.md "Convolution and pooling")


def conv_gemm_shape(mode: int, m: int, k: int, f: int) -> tuple[int, int, int]:
    """The (M, K, N) of the GEMM a conv mode runs: fwd (M, K, F), wgrad (K, M, F), dgrad
    (M, F, K), with M = N OH OW output pixels and K = KH KW C window elements."""
    if mode == CONV_FWD:
        return m, k, f
    if mode == CONV_WGRAD:
        return k, m, f
    return m, f, k


def conv(cfg: Config, mode: int, m: int, k: int, f: int, n_in: int, a_bytes: int,
         b_bytes: int, accumulate: bool) -> Cost:
    """A convolution: the ``gemm`` cost of the mode's GEMM shape. dgrad scatter-adds into its
    ``n_in = N H W C`` destination (read-modify-write: charged as accumulating) and, with acc=0,
    first clears it: ``n_in Ba`` more accumulator bytes written, ``ceil(n_in / L)`` cycles."""
    gm, gk, gn = conv_gemm_shape(mode, m, k, f)
    if mode != CONV_DGRAD:
        return gemm(cfg, gm, gk, gn, a_bytes, b_bytes, accumulate)
    out = gemm(cfg, gm, gk, gn, a_bytes, b_bytes, True)
    if not accumulate and n_in:
        out[CYCLES] = out.get(CYCLES, 0) + ceil(n_in / cfg.alu.lanes)
        out[ACC_WR] = out.get(ACC_WR, 0) + n_in * cfg.acc_bytes_per_entry
    return out


def pool(cfg: Config, outputs: int, window: int, elem_bytes: int, to_acc: bool,
         index: bool) -> Cost:
    """vmaxpool / vsumpool: a row reduction (``reduce``) of ``outputs = M C`` rows of
    ``window = KH KW`` positions each (the whole window is walked, padding included), plus the
    index bytes of vmaxpool idx=1."""
    out = reduce(cfg, outputs, window, elem_bytes, to_acc)
    if index:
        out[SPAD_WR] += outputs
    return out


def unpool(cfg: Config, outputs: int, window: int, n_in: int, elem_bytes: int, by_index: bool,
           accumulate: bool) -> Cost:
    """vunpool: ``outputs = M C`` gradient elements, each added (read-modify-write of the
    accumulator) to its recorded position (mode=max: one add, plus one index byte read) or to
    every position of its ``window = KH KW`` (mode=sum); with acc=0 the ``n_in = N H W C``
    destination is cleared first (``ceil(n_in / L)`` cycles, ``n_in Ba`` bytes written)."""
    ops = outputs * (1 if by_index else window)
    ba = cfg.acc_bytes_per_entry
    cyc = cfg.alu.latency_cycles + elem_bytes * ceil(ops / cfg.alu.lanes)
    wr = ops * ba
    if not accumulate:
        cyc += ceil(n_in / cfg.alu.lanes)
        wr += n_in * ba
    return {
        CYCLES: cyc,
        ALU_OPS: ops,
        ALU_PASSES: elem_bytes * ops,
        SPAD_RD: outputs * elem_bytes + (outputs if by_index else 0),
        ACC_RD: ops * ba,
        ACC_WR: wr,
    }


def bias(cfg: Config, rows: int, cols: int, elem_bytes: int) -> Cost:
    """vbias: one shifted bias add per accumulator entry of the [rows, cols] block."""
    n = rows * cols
    return {
        CYCLES: cfg.alu.latency_cycles + ceil(n / cfg.alu.lanes),
        ALU_OPS: n,
        ALU_PASSES: elem_bytes * n,
        SPAD_RD: cols * elem_bytes,
        ACC_RD: n * cfg.acc_bytes_per_entry,
        ACC_WR: n * cfg.acc_bytes_per_entry,
    }


HOOKS.update({"conv": conv, "pool": pool, "unpool": unpool, "bias": bias})
