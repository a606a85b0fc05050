"""The matrix cycle and traffic model: dense cycles of every dataflow against SCALE-Sim's
published behaviour, hand-computed cases through the ``gemm`` instruction for each dataflow and
skip granularity, and the closed-form skip model against a brute-force per-PE schedule."""

from __future__ import annotations

import itertools
from math import ceil

import numpy as np
import pytest

from emulator.config import config_from_dict
from emulator.counters import IDX
from emulator.machine import Machine
from emulator.timing import gemm_skip_cycles_saved
from isa import assemble

DF = {"ws": "weight_stationary", "os": "output_stationary", "is": "input_stationary"}

# SCALE-Sim 3.0.0 (PyPI `scalesim`, numpy < 2.4), GEMM topology "M, N, K", 'Total Cycles' column
# of COMPUTE_REPORT.csv with unlimited bandwidth (0 stall cycles). Measured once with
# benchmarks/scalesim_compare.py's runner; SCALE-Sim reports the 0-based index of the cycle of
# the last output write, i.e. the schedule length minus one (docs/timing.md).
SCALESIM_TOTAL_CYCLES = {
    # (dataflow, R, C, M, N, K): cycles
    ("ws", 8, 8, 37, 50, 70): 3716, ("ws", 8, 8, 8, 8, 8): 29, ("ws", 8, 8, 1, 1, 1): 22,
    ("ws", 8, 8, 16, 9, 33): 379, ("ws", 8, 8, 5, 70, 3): 242,
    ("ws", 32, 32, 37, 50, 70): 785, ("ws", 32, 32, 8, 8, 8): 101, ("ws", 32, 32, 1, 1, 1): 94,
    ("ws", 32, 32, 16, 9, 33): 219, ("ws", 32, 32, 5, 70, 3): 296,
    ("ws", 4, 8, 37, 50, 70): 6425, ("ws", 4, 8, 8, 8, 8): 43, ("ws", 4, 8, 1, 1, 1): 14,
    ("ws", 4, 8, 16, 9, 33): 539, ("ws", 4, 8, 5, 70, 3): 170,
    ("os", 8, 8, 37, 50, 70): 2939, ("os", 8, 8, 8, 8, 8): 21, ("os", 8, 8, 1, 1, 1): 14,
    ("os", 8, 8, 16, 9, 33): 187, ("os", 8, 8, 5, 70, 3): 152,
    ("os", 32, 32, 37, 50, 70): 527, ("os", 32, 32, 8, 8, 8): 69, ("os", 32, 32, 1, 1, 1): 62,
    ("os", 32, 32, 16, 9, 33): 94, ("os", 32, 32, 5, 70, 3): 194,
    ("os", 4, 8, 37, 50, 70): 5599, ("os", 4, 8, 8, 8, 8): 35, ("os", 4, 8, 1, 1, 1): 10,
    ("os", 4, 8, 16, 9, 33): 343, ("os", 4, 8, 5, 70, 3): 233,
    ("is", 8, 8, 37, 50, 70): 3239, ("is", 8, 8, 8, 8, 8): 29, ("is", 8, 8, 1, 1, 1): 22,
    ("is", 8, 8, 16, 9, 33): 309, ("is", 8, 8, 5, 70, 3): 91,
    ("is", 32, 32, 37, 50, 70): 863, ("is", 32, 32, 8, 8, 8): 101, ("is", 32, 32, 1, 1, 1): 94,
    ("is", 32, 32, 16, 9, 33): 205, ("is", 32, 32, 5, 70, 3): 163,
    ("is", 4, 8, 37, 50, 70): 5759, ("is", 4, 8, 8, 8, 8): 43, ("is", 4, 8, 1, 1, 1): 14,
    ("is", 4, 8, 16, 9, 33): 413, ("is", 4, 8, 5, 70, 3): 83,
}


def cfg_for(df: str, r: int, c: int, skip: str = "none", bits: int = 32):
    return config_from_dict({
        "array": {"rows": r, "cols": c, "dataflow": DF[df], "skip": skip},
        "accumulator": {"bits": bits, "entries": 1 << 16},
        "memory": {"dram_bytes": 1 << 16, "scratchpad_bytes": 1 << 18},
    })


GEMM_SRC = """
    li r1, 0
    li r2, {a}
    li r3, {b}
    li r4, {m}
    li r5, {k}
    li r6, {n}
    gemm r1, r2, r3, r4, r5, r6{flags}
    halt
"""
GEMM_PC = 6


def run_gemm(cfg, a: np.ndarray, b: np.ndarray, flags: str = "", da: str = "i8",
             db: str = "i8") -> Machine:
    m_, k_ = a.shape
    n_ = b.shape[1]
    b_addr = 1 << 17
    src = GEMM_SRC.format(a=0, b=b_addr, m=m_, k=k_, n=n_,
                          flags=flags + f", da={da}, db={db}")
    mach = Machine(cfg, assemble(src, "g.s"))
    ad = np.int8 if da == "i8" else np.dtype("<i2")
    bd = np.int8 if db == "i8" else np.dtype("<i2")
    mach.spad[: a.size * np.dtype(ad).itemsize] = np.ascontiguousarray(a, ad).view(np.uint8).ravel()
    raw = np.ascontiguousarray(b, bd).view(np.uint8).ravel()
    mach.spad[b_addr : b_addr + raw.size] = raw
    mach.run()
    return mach


# ------------------------------------------------------------------------------ dense cycles
@pytest.mark.parametrize("key", sorted(SCALESIM_TOTAL_CYCLES))
def test_dense_cycles_match_scalesim(key):
    df, r, c, m, n, k = key
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    mach = run_gemm(cfg_for(df, r, c), a, b)
    assert mach.counts[GEMM_PC, IDX["cycles"]] == SCALESIM_TOTAL_CYCLES[key] + 1


# SCALE-Sim 3.0.0 conv topologies (IFMAP H, IFMAP W, filter H, filter W, channels, filters,
# stride), 'Total Cycles' with unlimited bandwidth, measured with benchmarks/scalesim_compare.py's
# runner. SCALE-Sim has no padding and rounds the output size up, so it was given the padded
# input cropped to the rows/columns the windows cover, (OH - 1) S + K (docs/timing.md).
# Key: (dataflow, R, C, (H, W, C, KH, KW, F, stride, padding) of the lpemu layer): cycles.
SCALESIM_CONV_TOTAL_CYCLES = {
    # 15x15x3, 3x3, 8 filters, stride 2, padding 1 -> SCALE-Sim IFMAP 17x17
    ("ws", 8, 8, (15, 15, 3, 3, 3, 8, 2, 1)): 343, ("os", 8, 8, (15, 15, 3, 3, 3, 8, 2, 1)): 327,
    ("is", 8, 8, (15, 15, 3, 3, 3, 8, 2, 1)): 959, ("ws", 4, 8, (15, 15, 3, 3, 3, 8, 2, 1)): 545,
    ("os", 4, 8, (15, 15, 3, 3, 3, 8, 2, 1)): 591, ("is", 4, 8, (15, 15, 3, 3, 3, 8, 2, 1)): 1231,
    # 11x11x5, 4x4, 7 filters, stride 2 -> SCALE-Sim IFMAP 10x10 (the last input row/column is
    # never read)
    ("ws", 8, 8, (11, 11, 5, 4, 4, 7, 2, 0)): 379, ("os", 8, 8, (11, 11, 5, 4, 4, 7, 2, 0)): 187,
    ("is", 8, 8, (11, 11, 5, 4, 4, 7, 2, 0)): 579, ("ws", 4, 8, (11, 11, 5, 4, 4, 7, 2, 0)): 599,
    ("os", 4, 8, (11, 11, 5, 4, 4, 7, 2, 0)): 359, ("is", 4, 8, (11, 11, 5, 4, 4, 7, 2, 0)): 839,
    # 9x9x2, 5x5, 3 filters, stride 3, padding 2 -> SCALE-Sim IFMAP 11x11
    ("ws", 8, 8, (9, 9, 2, 5, 5, 3, 3, 2)): 216, ("os", 8, 8, (9, 9, 2, 5, 5, 3, 3, 2)): 127,
    ("is", 8, 8, (9, 9, 2, 5, 5, 3, 3, 2)): 349, ("ws", 4, 8, (9, 9, 2, 5, 5, 3, 3, 2)): 298,
    ("os", 4, 8, (9, 9, 2, 5, 5, 3, 3, 2)): 179, ("is", 4, 8, (9, 9, 2, 5, 5, 3, 3, 2)): 441,
    # LeNet conv2 (12x12x20, 5x5, 50 filters) and conv1 (28x28x1, 5x5, 20 filters)
    ("ws", 8, 8, (12, 12, 20, 5, 5, 50, 1, 0)): 37925,
    ("os", 4, 8, (12, 12, 20, 5, 5, 50, 1, 0)): 57119,
    ("is", 32, 32, (12, 12, 20, 5, 5, 50, 1, 0)): 4607,
    ("ws", 16, 16, (28, 28, 1, 5, 5, 20, 1, 0)): 2487,
    ("os", 16, 16, (28, 28, 1, 5, 5, 20, 1, 0)): 3959,
    ("is", 32, 32, (28, 28, 1, 5, 5, 20, 1, 0)): 2051,
}


@pytest.mark.parametrize("key", sorted(SCALESIM_CONV_TOTAL_CYCLES), ids=str)
def test_conv_layer_cycles_match_scalesim(key):
    """One conv instruction (mode=fwd, batch 1) takes SCALE-Sim's conv cycles + 1."""
    from emulator.geometry import Geometry, pack

    df, r, c, (h, w, ch, kh, kw, f, st, pad) = key
    g = Geometry(n=1, c=ch, h=h, w=w, kh=kh, kw=kw, sh=st, sw=st, ph=pad, pw=pad, f=f)
    regs = "".join(f"li r{4 + i}, {v}\n" for i, v in enumerate(pack(g)))
    src = f"li r1, 0\nli r2, 0\nli r3, {1 << 17}\n{regs}conv r1, r2, r3, r4, r5, r6, r7\nhalt\n"
    mach = Machine(cfg_for(df, r, c), assemble(src, "conv.s"))
    rng = np.random.default_rng(2)
    mach.spad[: g.inputs] = rng.integers(0, 256, g.inputs, dtype=np.uint8)
    mach.spad[1 << 17 : (1 << 17) + g.k * f] = rng.integers(0, 256, g.k * f, dtype=np.uint8)
    mach.run()
    assert mach.counts[len(mach.program.words) - 2, IDX["cycles"]] == \
        SCALESIM_CONV_TOTAL_CYCLES[key] + 1


@pytest.mark.parametrize("df", ["ws", "os", "is"])
def test_hand_computed_dense_cycles_and_traffic(df):
    # 4x4 array, C[6,5] = A[6,9] @ B[9,5]; INT8; accumulator entries 4 bytes.
    cfg = cfg_for(df, 4, 4)
    a = np.ones((6, 9), np.int8)
    b = np.ones((9, 5), np.int8)
    row = run_gemm(cfg, a, b).counts[GEMM_PC]
    if df == "ws":  # rows<-K=9 (3 folds), cols<-N=5 (2 folds), stream M=6, overhead 2*4+4-2
        cycles, a_rd, b_rd, acc_wr = 3 * 2 * (10 + 6), 6 * 9 * 2, 9 * 5, 6 * 5 * 3
    elif df == "is":  # rows<-K=9 (3), cols<-M=6 (2), stream N=5, overhead 10
        cycles, a_rd, b_rd, acc_wr = 3 * 2 * (10 + 5), 6 * 9, 9 * 5 * 2, 6 * 5 * 3
    else:  # rows<-M=6 (2), cols<-N=5 (2), stream K=9, overhead 4+4-2
        cycles, a_rd, b_rd, acc_wr = 2 * 2 * (6 + 9), 6 * 9 * 2, 9 * 5 * 2, 6 * 5
    assert row[IDX["cycles"]] == cycles
    assert row[IDX["spad_rd_bytes"]] == a_rd + b_rd
    assert row[IDX["acc_wr_bytes"]] == 4 * acc_wr
    # read-modify-write of every partial sum after the first (no acc flag)
    assert row[IDX["acc_rd_bytes"]] == 4 * (acc_wr - 6 * 5)
    assert row[IDX["macs"]] == 6 * 9 * 5 and row[IDX["skip_cycles_saved"]] == 0


def test_int16_passes_multiply_cycles_and_traffic():
    cfg = cfg_for("ws", 4, 4)
    a = np.full((3, 4), 300, np.int16)
    b = np.full((4, 2), -2, np.int8)
    mach = run_gemm(cfg, a, b, da="i16")
    row = mach.counts[GEMM_PC]
    # one fold (K=4 rows, N=2 cols), stream 3, overhead 10 -> 13 per pass, 2 passes
    assert row[IDX["cycles"]] == 2 * 13
    assert row[IDX["mac_passes"]] == 2 and row[IDX["mac_ops"]] == 2 * 3 * 4 * 2
    assert row[IDX["spad_rd_bytes"]] == 2 * (3 * 4 + 4 * 2)
    # pass 2 accumulates onto pass 1: 2 writes and 1 read of each of the 6 outputs
    assert row[IDX["acc_wr_bytes"]] == 4 * 12 and row[IDX["acc_rd_bytes"]] == 4 * 6
    assert mach.acc[:6].tolist() == [300 * -2 * 4] * 6


@pytest.mark.parametrize("acc", [False, True])
def test_accumulate_flag_reads_c_once_more(acc):
    cfg = cfg_for("os", 4, 4)
    row = run_gemm(cfg, np.ones((2, 3), np.int8), np.ones((3, 2), np.int8),
                   flags=", acc=1" if acc else "").counts[GEMM_PC]
    assert row[IDX["acc_rd_bytes"]] == (4 * 4 if acc else 0)
    assert row[IDX["acc_wr_bytes"]] == 4 * 4


# ------------------------------------------------------------------------------ zero-skipping
def test_hand_computed_skip_cases_each_dataflow_and_granularity():
    # A[4,4] with column 0 and row 3 zero; B[4,4] = ones; array 2x2; sa only.
    a = np.arange(1, 17, dtype=np.int8).reshape(4, 4)
    a[:, 0] = 0
    a[3, :] = 0
    b = np.ones((4, 4), np.int8)
    want = {
        # WS: rows<-K, cols<-N, stream M=4, overhead 2*2+2-2 = 4, dense fold 8, 2x2 folds = 32.
        # element: PE(k, j) work = nonzeros of A[:, k] = [0, 3, 3, 3]: every fold max 3 ->
        #          saves 1 per fold = 4.
        # row: vector i=3 is all zero in both K folds -> saves 1 per fold = 4.
        ("ws", "element"): 4, ("ws", "row"): 4,
        # IS: rows<-K, cols<-M, stream N=4; PE(k, i) work = 4 if A[i,k] != 0 else 0.
        # element: every fold has some nonzero A -> max 4, saves 0.
        # row: a column j of B is needed if some (i,k) in the fold has A[i,k] != 0: always.
        #      Fold (k in {0,1}, i in {2,3}): A[2,1] != 0 -> needed. Saves 0.
        ("is", "element"): 0, ("is", "row"): 0,
        # OS: rows<-M, cols<-N, stream K=4, overhead 2; dense fold 6, 4 folds = 24.
        # element: PE(i, j) work = nonzeros of A[i, :] = [3, 3, 3, 0]: fold rows {0,1}: 3,
        #          saves 1 on 2 folds; fold rows {2,3}: max 3, saves 1 on 2 folds -> 4.
        # row: step k needed if A[rows, k] has a nonzero: k=0 never -> 3 steps -> saves 4.
        ("os", "element"): 4, ("os", "row"): 4,
    }
    for (df, gran), saved in want.items():
        dense = run_gemm(cfg_for(df, 2, 2, "none"), a, b, flags=", sa=1").counts[GEMM_PC]
        row = run_gemm(cfg_for(df, 2, 2, gran), a, b, flags=", sa=1").counts[GEMM_PC]
        assert row[IDX["skip_cycles_saved"]] == saved, (df, gran)
        assert row[IDX["cycles"]] == dense[IDX["cycles"]] - saved, (df, gran)
        # the ideal skipped MACs do not depend on the granularity: 7 zeros x N
        assert row[IDX["macs_skipped"]] == dense[IDX["macs_skipped"]] == 7 * 4


def test_all_zero_weight_tile_skips_the_whole_fold():
    # WS, 2x2 array, B[4,2]: the K-fold of rows 2..3 of B is all zero, so that fold is skipped.
    a = np.ones((3, 4), np.int8)
    b = np.array([[1, 2], [3, 4], [0, 0], [0, 0]], np.int8)
    for gran in ("element", "row"):
        row = run_gemm(cfg_for("ws", 2, 2, gran), a, b, flags=", sb=1").counts[GEMM_PC]
        # dense: 2 K-folds x 1 N-fold x (2*2+2-2 + 3) = 2 x 7; one fold skipped whole
        assert row[IDX["cycles"]] == 7 and row[IDX["skip_cycles_saved"]] == 7


def test_load_imbalance_element_versus_row():
    # OS 2x1 array, sa: row 0 of A has 1 nonzero, row 1 has 4: element -> max(1, 4) = 4 (no
    # saving, the busy lane sets the pace); row -> steps with any nonzero in the fold = 4.
    # Now put the nonzeros of both rows at the same k: both lanes have work 1 -> saves 3 either way.
    b = np.ones((4, 1), np.int8)
    imbalanced = np.array([[1, 0, 0, 0], [1, 1, 1, 1]], np.int8)
    aligned = np.array([[0, 0, 5, 0], [0, 0, 7, 0]], np.int8)
    staggered = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.int8)
    saved = {}
    for name, a in [("imb", imbalanced), ("ali", aligned), ("stag", staggered)]:
        for gran in ("element", "row"):
            mach = run_gemm(cfg_for("os", 2, 1, gran), a, b, flags=", sa=1")
            saved[name, gran] = int(mach.counts[GEMM_PC, IDX["skip_cycles_saved"]])
    assert saved == {("imb", "element"): 0, ("imb", "row"): 0,
                     ("ali", "element"): 3, ("ali", "row"): 3,
                     # staggered: each lane has 1 product (element saves 3) but the two
                     # nonzero vectors differ (row keeps 2 steps, saves 2)
                     ("stag", "element"): 3, ("stag", "row"): 2}


def brute_force_saved(df: str, r: int, c: int, gran: str, a: np.ndarray, b: np.ndarray,
                      sa: bool, sb: bool) -> int:
    """Per-fold, per-PE schedule walk in plain Python: the obviously-correct skip model."""
    m, k = a.shape
    n = b.shape[1]

    def needed(i: int, kk: int, j: int) -> bool:
        return not ((sa and a[i, kk] == 0) or (sb and b[kk, j] == 0))

    if df == "ws":
        rows, cols, stream, over = k, n, m, 2 * r + c - 2
        prod = lambda x, y, s: (s, x, y)  # noqa: E731  (PE row x = k, PE col y = j, step i)
    elif df == "is":
        rows, cols, stream, over = k, m, n, 2 * r + c - 2
        prod = lambda x, y, s: (y, x, s)  # noqa: E731  (PE row k, PE col i, step j)
    else:
        rows, cols, stream, over = m, n, k, r + c - 2
        prod = lambda x, y, s: (x, s, y)  # noqa: E731  (PE row i, PE col j, step k)
    saved = 0
    for fr in range(ceil(rows / r)):
        for fc in range(ceil(cols / c)):
            pes = [(x, y) for x in range(fr * r, min(rows, fr * r + r))
                   for y in range(fc * c, min(cols, fc * c + c))]
            if gran == "element":
                t = max(sum(needed(*prod(x, y, s)) for s in range(stream)) for x, y in pes)
            else:
                t = sum(any(needed(*prod(x, y, s)) for x, y in pes) for s in range(stream))
            saved += (over + stream) - (over + t if t else 0)
    return saved


@pytest.mark.parametrize("df,gran", list(itertools.product(["ws", "os", "is"],
                                                          ["element", "row"])))
def test_skip_model_equals_brute_force_schedule(df, gran):
    rng = np.random.default_rng(7)
    for trial in range(40):
        m, k, n = (int(x) for x in rng.integers(1, 11, 3))
        r, c = (int(x) for x in rng.integers(1, 5, 2))
        density = [0.0, 0.1, 0.5, 0.9][trial % 4]
        a = (rng.random((m, k)) < density) * rng.integers(1, 5, (m, k))
        b = (rng.random((k, n)) < [0.05, 0.6, 1.0][trial % 3]) * rng.integers(1, 5, (k, n))
        for sa, sb in [(True, False), (False, True), (True, True)]:
            cfg = cfg_for(df, r, c, gran)
            got = gemm_skip_cycles_saved(cfg, m, k, n, a != 0 if sa else None,
                                         b != 0 if sb else None)
            assert got == brute_force_saved(df, r, c, gran, a, b, sa, sb), (m, k, n, r, c)


def test_skipping_never_changes_values():
    rng = np.random.default_rng(3)
    a = (rng.random((9, 13)) < 0.2) * rng.integers(-128, 128, (9, 13))
    b = rng.integers(-128, 128, (13, 7))
    outs = []
    for df in DF:
        for gran in ("none", "element", "row"):
            mach = run_gemm(cfg_for(df, 4, 4, gran), a.astype(np.int8), b.astype(np.int8),
                            flags=", sa=1, sb=1")
            outs.append(mach.acc[: 9 * 7].copy())
    want = a.astype(np.int64) @ b.astype(np.int64)
    for o in outs:
        assert o.tolist() == want.ravel().tolist()


# ------------------------------------------------------------------------------ DMA overlap
OVERLAP_SRC = """
    li r1, 0            ; scratchpad A (4x4 int8)
    li r2, 0            ; DRAM A
    li r3, 1            ; rows
    li r4, 16           ; bytes
    li r7, 1024         ; scratchpad B
    li r8, 4
    li r9, {gemm_a}     ; gemm's A operand
    li r10, 2048        ; DRAM / scratchpad address of a second block
    dmald r1, r2, r3, r4, r4, r4
    gemm r0, r9, r7, r8, r8, r8
    dmald r10, r10, r3, r4, r4, r4
    halt
"""


def overlap_cfg(overlap: bool):
    return config_from_dict({
        "array": {"rows": 4, "cols": 4},
        "dma": {"bytes_per_cycle": 4, "latency_cycles": 10, "overlap": overlap},
        "memory": {"dram_bytes": 1 << 14, "scratchpad_bytes": 1 << 14},
        "accumulator": {"entries": 1024},
    })


@pytest.mark.parametrize("hazard", [False, True])
def test_dma_overlap_hides_transfers_and_respects_hazards(hazard):
    # DMA: 10 + ceil(16/4) = 14 cycles. gemm 4x4x4 on 4x4 WS: 1 fold x (2*4+4-2 + 4) = 14.
    src = OVERLAP_SRC.format(gemm_a=0 if hazard else 512)
    seq = Machine(overlap_cfg(False), assemble(src, "o.s"))
    seq.run()
    ov = Machine(overlap_cfg(True), assemble(src, "o.s"))
    ov.run()
    assert ov.digest() == seq.digest()  # timing never changes values
    cyc = IDX["cycles"]
    stall = IDX["dma_stall_cycles"]
    # sequential: 8 li + 14 + 14 + 14 + halt 1
    assert int(seq.counts[:, cyc].sum()) == 8 + 14 + 14 + 14 + 1
    assert int(seq.counts[:, stall].sum()) == 0
    # overlapped: the first dmald issues at cycle 8 (1 cycle), the engine is busy 8..22.
    assert ov.counts[8, cyc] == 1
    if hazard:
        # gemm reads the bytes being loaded: it waits until 22, then runs 14 -> 36
        assert ov.counts[9, stall] == 22 - 9 and ov.counts[9, cyc] == 13 + 14
        # the second dmald issues at 36 (engine free), engine 36..50, core at 37; halt at 37
        # drains to 50 and ends at 51
        assert ov.counts[10, cyc] == 1 and ov.counts[11, stall] == 50 - 37
        assert ov.counts[11, cyc] == 1 + 13 and int(ov.counts[:, cyc].sum()) == 51
    else:
        # gemm runs 9..23 alongside the transfer; the second dmald issues at 23 (engine free
        # since 22), engine 23..37, core at 24; halt at 24 waits to 37 and ends at 38
        assert ov.counts[9, cyc] == 14 and ov.counts[9, stall] == 0
        assert ov.counts[11, stall] == 37 - 24 and int(ov.counts[:, cyc].sum()) == 38


def test_back_to_back_transfers_wait_for_the_engine():
    src = """
        li r3, 1
        li r4, 16
        li r10, 2048
        dmald r0, r0, r3, r4, r4, r4
        dmald r10, r10, r3, r4, r4, r4
        halt
    """
    m = Machine(overlap_cfg(True), assemble(src, "b.s"))
    m.run()
    stall = IDX["dma_stall_cycles"]
    # first: issue at 3, engine 3..17; second: issue at 4, waits 13 to 17, engine 17..31;
    # halt at 18 drains to 31 and ends at 32
    assert m.counts[3, stall] == 0 and m.counts[4, stall] == 13
    assert int(m.counts[:, IDX["cycles"]].sum()) == 32 and m.cycles == 32


def test_overlap_trace_puts_transfers_on_their_own_track():
    from programs.cli.profile import Tracer, chrome_trace

    m = Machine(overlap_cfg(True), assemble(OVERLAP_SRC.format(gemm_a=512), "o.s"))
    tracer = m.tracer = Tracer()
    m.run()
    xs = [e for e in chrome_trace(m, tracer)["traceEvents"] if e["ph"] == "X"]
    dma = [e for e in xs if e["name"] == "dmald"]
    gemm = [e for e in xs if e["name"] == "gemm"][0]
    assert [(e["ts"], e["dur"]) for e in dma] == [(8, 14), (23, 14)]
    assert (gemm["ts"], gemm["dur"]) == (9, 14)  # concurrent with the first transfer


@pytest.mark.parametrize("df", ["ws", "os", "is"])
def test_operand_reads_are_a_breakdown_of_scratchpad_reads(df):
    # 4x4 array, A[6,9] int16 x B[9,5] int8: P = 2 passes
    row = run_gemm(cfg_for(df, 4, 4), np.ones((6, 9), np.int16), np.ones((9, 5), np.int8),
                   da="i16").counts[GEMM_PC]
    a_rd = {"ws": 6 * 9 * 2, "is": 6 * 9, "os": 6 * 9 * 2}[df]  # x column folds (N=5: 2)
    b_rd = {"ws": 9 * 5, "is": 9 * 5 * 2, "os": 9 * 5 * 2}[df]  # x M folds (M=6: 2)
    assert row[IDX["gemm_a_rd_bytes"]] == 2 * a_rd and row[IDX["gemm_b_rd_bytes"]] == 2 * b_rd
    assert row[IDX["spad_rd_bytes"]] == 2 * (a_rd + b_rd)
