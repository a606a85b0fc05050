"""The "Machine state and conventions" section of docs/isa.md, one test per claim: the dither
generator as printed (constants, combination of seed and counter, wrap, reset, draws per
instruction and their order), which saturation sets which flag and counter, reset values,
INT16 alignment, the DMA rules, and the cost of empty GEMMs (never a negative count)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from emulator import timing
from emulator.config import config_from_dict
from emulator.counters import COUNTERS, IDX
from emulator.errors import BudgetExceeded, ExecutionError, MemoryAccessError
from emulator.machine import Machine
from emulator.rng import draw_ref
from isa import assemble
from isa.conventions import (
    FLAG_ACC_OVERFLOW,
    FLAG_ALU_SATURATION,
    FLAG_RQ_SATURATION,
    FLAG_SOURCES,
    RNG_GAMMA,
    RNG_MIX1,
    RNG_MIX2,
)
from isa.encoding import decode
from isa.errors import LpemuError
from isa.spec import TABLE
from programs.verify import difftest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "isa.md").read_text()
M64 = (1 << 64) - 1
CFG = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096},
                        "accumulator": {"entries": 256}, "alu": {"lanes": 4,
                                                                 "latency_cycles": 2},
                        "dma": {"bytes_per_cycle": 8, "latency_cycles": 3}})


def step(m: Machine) -> bool:
    """Execute one instruction within the run's budgets; False on a fault or a spent
    budget (the one-step budget stopping after its instruction is not one)."""
    before = m.steps
    try:
        m.run(max_steps=min(1, m.cfg.budget.max_steps - m.steps),
              max_cycles=m.cfg.budget.max_cycles - m.cycles)
    except BudgetExceeded:
        return m.steps == before + 1
    except LpemuError:
        return False
    return True


def run(src: str, setup=None, cfg=CFG, datapath: str = "fast") -> Machine:
    m = Machine(cfg, assemble(src, "c.s"), datapath=datapath)
    if setup:
        setup(m)
    m.run()
    return m


# ------------------------------------------------------------------------------ the generator
def test_documented_generator_is_the_machine_generator():
    """The Python block of docs/isa.md, executed as printed, reproduces the committed
    known-answer vectors (written from the published algorithm, tests/data)."""
    block = DOC.split("def draw_n(")[1].split("```")[0]
    ns: dict = {}
    exec("def draw_n(" + block, ns)  # noqa: S102 - the documented definition itself
    kat = json.loads((ROOT / "tests" / "data" / "rng_kat.json").read_text())
    for v in kat["vectors"]:
        seed = int(v["seed"], 16)
        assert [ns["draw_n"](seed, n) for n in range(8)] == [int(x, 16) for x in v["first8"]]
        for c, pair in v["at_counter"].items():
            assert [ns["draw_n"](seed, int(c) + i) for i in range(2)] == \
                [int(x, 16) for x in pair]
    for const in (RNG_GAMMA, RNG_MIX1, RNG_MIX2):
        assert f"0x{const:016X}" in block
    assert "0xE220A8397B1DCDAF" in DOC and ns["draw_n"](0, 0) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_counter_wraps_and_elements_take_draws_in_ascending_order(datapath):
    """rngctr -2 is counter 2**64 - 2; five dithered elements use draws 2**64 - 2, 2**64 - 1,
    0, 1, 2 in element order, and leave the counter at 3."""
    src = ("li r1, -7\nrngseed r1\nli r1, -2\nrngctr r1\neset e1, 0\neset e2, 20\n"
           "li r2, 0\nli r3, 5\nli r4, 64\nrq r4, r2, r3, e2, e1, rnd=uniform, dt=i16\n"
           "rngrd r5, sel=counter\nrngrd r6, sel=seed\nhalt\n")
    accs = [123456789, -5, 2**31 - 1, -(2**31), 1 << 20]
    m = run(src, lambda m: m.acc.__setitem__(slice(0, 5), accs), datapath=datapath)
    seed = (-7) & M64
    ns = [M64 - 1, M64, 0, 1, 2]
    want = [min(max((a + (draw_ref(seed, n) & 0xFFFFF)) >> 20, -32768), 32767)
            for a, n in zip(accs, ns, strict=True)]
    assert m.sp_elems(64, 5, 2).tolist() == want
    assert m.r[5] == 3 and m.r[6] == -7 and m.rng == [seed, 3]


@pytest.mark.parametrize("rnd", ["nearest", "trunc", "uniform", "triangular"])
@pytest.mark.parametrize("shift", [-40, -1, 0, 1, 31, 64, 200, 2**31 - 1])
def test_draws_per_instruction(rnd, shift):
    """One draw per element for dither with s > 0 (whatever the result), none otherwise; the
    only instructions that draw are rq, rqm and vcvt."""
    draws = 6 if rnd in ("uniform", "triangular") and shift > 0 else 0
    src = (f"li r1, 9\nrngseed r1\neset e1, 0\nli r9, {shift}\nesetr e2, r9\n"
           "li r2, 0\nli r3, 6\nli r4, 64\nli r5, 3\n"
           f"rq r4, r2, r3, e2, e1, rnd={rnd}\n"
           f"rqm r4, r2, r3, r5, e2, e1, rnd={rnd}, dt=i16\n"
           f"vcvt r4, r4, r3, e2, e1, rnd={rnd}, sdt=i16, ddt=i8\nhalt\n")
    m = run(src)
    assert [int(m.counts[pc, IDX["rng_draws"]]) for pc in (9, 10, 11)] == [draws] * 3
    assert m.rng == [9, 3 * draws] and int(m.counts[:, IDX["rng_draws"]].sum()) == 3 * draws


def test_reset_values_are_all_zero():
    """A new machine: every memory, register, exponent, the generator and the flags are 0, pc
    is 0, and the state digest is that of explicitly zeroed state."""
    m = Machine(CFG, assemble("rngrd r1, sel=seed\nrngrd r2, sel=counter\nflags r3\n"
                              "emv r4, e15\nhalt\n", "r.s"))
    assert not m.dram.any() and not m.spad.any() and not m.acc.any()
    assert m.r == [0] * 32 and m.e == [0] * 16 and m.rng == [0, 0]
    assert (m.flags, m.pc, m.halted) == (0, 0, False)
    fresh = m.digest()
    m.dram[:] = 1
    m.dram[:] = 0
    assert m.digest() == fresh
    m.r[7] = 5
    m.run()
    assert m.r[1:5] == [0, 0, 0, 0] and m.halted and m.pc == 4  # halt stays on the halt


# ------------------------------------------------------------------------------ flags
ACC16 = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096},
                          "accumulator": {"entries": 256, "bits": 16}})

# one program per instruction that can set a flag, making exactly one element saturate
PROVOKE = {
    "gemm": ("li r1, 1\nli r2, 0\nli r3, 64\ngemm r0, r2, r3, r1, r1, r1, acc=1\n",
             lambda m: (m.spad.__setitem__(0, 100), m.spad.__setitem__(64, 100),
                        m.acc.__setitem__(0, 30000))),
    "vrsum": ("li r2, 1\nli r3, 2\nvrsum r0, r0, r2, r3, dt=i16\n",
              lambda m: m.sp_elems(0, 2, 2).__setitem__(slice(None), [32767, 1])),
    "vtoacc": ("li r3, 1\nvtoacc r0, r0, r3, dt=i16, acc=1\n",
               lambda m: (m.sp_elems(0, 1, 2).__setitem__(0, 5), m.acc.__setitem__(0, 32765))),
    "vwmul": ("li r3, 2\nvwmul r0, r0, r0, r3, da=i16, db=i16\n",
              lambda m: m.sp_elems(0, 2, 2).__setitem__(slice(None), [182, 181])),
    "dmaldacc": ("li r1, 0\nli r2, 1\nli r3, 2\nli r4, 8\ndmaldacc r1, r1, r2, r3, r4\n",
                 lambda m: m.load_dram(0, np.array([40000, -5], "<i4"))),
    "rq": ("li r3, 2\neset e1, 1\nrq r0, r0, r3, e1, e0, dt=i8\n",
           lambda m: m.acc.__setitem__(slice(0, 2), [300, -10])),
    "rqm": ("li r3, 2\nli r4, 1000\nrqm r0, r0, r3, r4, e0, e0, dt=i16\n",
            lambda m: m.acc.__setitem__(slice(0, 2), [33, -30])),
    "vcvt": ("li r3, 2\nli r4, 64\nvcvt r4, r0, r3, e0, e0, sdt=i16, ddt=i8\n",
             lambda m: m.sp_elems(0, 2, 2).__setitem__(slice(None), [-129, 127])),
    "vadd": ("li r3, 2\nli r4, 2\nvadd r0, r0, r4, r3, dt=i8\n",
             lambda m: m.sp_elems(0, 4, 1).__setitem__(slice(None), [100, 1, 100, 1])),
    "vsub": ("li r3, 1\nli r4, 1\nvsub r0, r0, r4, r3, dt=i8\n",
             lambda m: m.sp_elems(0, 2, 1).__setitem__(slice(None), [-100, 100])),
    "vmul": ("li r3, 2\nvmul r0, r0, r0, r3, dt=i8\n",
             lambda m: m.sp_elems(0, 2, 1).__setitem__(slice(None), [12, 11])),
    "vsll": ("li r3, 2\nli r4, 4\nvsll r0, r0, r4, r3, dt=i8\n",
             lambda m: m.sp_elems(0, 2, 1).__setitem__(slice(None), [8, 7])),
    "vsubrow": ("li r2, 1\nli r3, 2\nli r4, 8\nvsubrow r0, r0, r4, r2, r3, dt=i8\n",
                lambda m: (m.sp_elems(0, 2, 1).__setitem__(slice(None), [-100, 0]),
                           m.sp_elems(8, 1, 1).__setitem__(0, 100))),
    "vnormrow": ("li r2, 1\nli r3, 2\nli r4, 8\neset e1, -7\n"
                 "vnormrow r4, r0, r0, r2, r3, e1, dt=i8\n",
                 lambda m: (m.sp_elems(0, 2, 2).__setitem__(slice(None), [10, 9]),
                            m.acc.__setitem__(0, 10))),
    "vlazy": ("li r2, 8\nli r3, 2\neset e1, 0\nvlazy r0, r2, r3, e1, e1\n",
              lambda m: (m.sp_elems(0, 2, 1).__setitem__(slice(None), [127, 0]),
                         m.sp_elems(8, 2, 2).__setitem__(slice(None), [1, 1]))),
    "vrsqrt": ("li r3, 2\nli r4, 8\nvrsqrt r4, r0, r3, e0, e0\n",
               lambda m: m.sp_elems(0, 2, 2).__setitem__(slice(None), [0, 1])),
    # conv/pooling geometry: r4 = rsz (N=1, C=1), r5 = rhw, r6 = rkw, r7 = rpf
    "conv": ("li r3, 64\nli r4, 65537\nli r5, 65537\nli r6, 16843009\nli r7, 131072\n"
             "conv r0, r0, r3, r4, r5, r6, r7, acc=1\n",  # 1x1 input, 1x1 window, F = 2
             lambda m: (m.spad.__setitem__(0, 100), m.spad.__setitem__(64, 100),
                        m.spad.__setitem__(65, 1), m.acc.__setitem__(0, 30000))),
    "vsumpool": ("li r4, 65537\nli r5, 131073\nli r6, 16843265\nli r7, 0\n"
                 "vsumpool r0, r0, r4, r5, r6, r7, dt=i16\n",  # one 1x2 window
                 lambda m: m.sp_elems(0, 2, 2).__setitem__(slice(None), [32767, 1])),
    "vunpool": ("li r4, 65537\nli r5, 131073\nli r6, 16843009\nli r7, 0\n"
                "vunpool r0, r0, r0, r4, r5, r6, r7, mode=sum, acc=1, dt=i16\n",
                lambda m: (m.sp_elems(0, 2, 2).__setitem__(slice(None), [5, 5]),
                           m.acc.__setitem__(0, 32765))),
    "vbias": ("li r2, 1\nli r3, 2\nvbias r0, r0, r2, r3, e0, e0, dt=i16\n",
              lambda m: (m.sp_elems(0, 2, 2).__setitem__(slice(None), [5, 0]),
                         m.acc.__setitem__(0, 32765))),
}


def _flag_of(mnemonic: str) -> int:
    return next((bit for bit, (_, ms) in FLAG_SOURCES.items() if mnemonic in ms), 0)


def test_flag_sources_are_the_instructions_that_saturate():
    every = [m for _, ms in FLAG_SOURCES.values() for m in ms]
    assert len(every) == len(set(every)) and set(every) == set(PROVOKE)
    assert set(every) <= {i.mnemonic for i in TABLE}
    assert (FLAG_ACC_OVERFLOW, FLAG_RQ_SATURATION, FLAG_ALU_SATURATION) == (1, 2, 4)
    for bit, (counter, ms) in FLAG_SOURCES.items():  # the documented table is this one
        row = next(ln for ln in DOC.splitlines() if ln.startswith(f"| {bit.bit_length() - 1} "))
        assert f"`{counter}`" in row and all(f"`{m}`" in row for m in ms)


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("mnemonic", sorted(PROVOKE))
def test_each_saturation_sets_its_flag_and_counter(mnemonic, datapath):
    src, setup = PROVOKE[mnemonic]
    m = run(src + "halt\n", setup, ACC16, datapath)
    pc = len(src.splitlines()) - 1
    assert decode(m.program.words[pc])[0].mnemonic == mnemonic
    bit = _flag_of(mnemonic)
    counter, _ = FLAG_SOURCES[bit]
    other = "saturations" if counter == "acc_overflows" else "acc_overflows"
    assert m.flags == bit
    assert m.counts[pc, IDX[counter]] == 1 and m.counts[pc, IDX[other]] == 0


def test_no_other_instruction_sets_a_flag_or_counts_a_saturation():
    """Random programs (the differential tester's generators, edge-rich memory), one
    instruction at a time with the flags cleared before each: an instruction sets at most its
    documented bit, and sets it exactly when it adds to that bit's counter."""
    seen: set[str] = set()
    for seed in range(60):
        case = difftest.make_case(seed)
        m = Machine(config_from_dict(case.config), assemble(case.source(), "f.s"),
                    datapath="reference")
        difftest.initial_memory(m, case.init_seed)
        while not m.halted:
            pc = m.pc
            ins = decode(m.program.words[pc])[0].mnemonic
            before = m.counts[pc].copy()
            m.flags = 0
            if not step(m):
                break
            delta = m.counts[pc] - before
            bit = _flag_of(ins)
            events = int(delta[IDX["saturations"]] + delta[IDX["acc_overflows"]])
            if ins == "flags":
                continue
            assert m.flags in (0, bit), (ins, m.flags)
            assert (m.flags != 0) == (events > 0), (ins, seed)
            if events:
                seen.add(ins)
                counter = FLAG_SOURCES[bit][0]
                assert delta[IDX[counter]] == events, ins
    assert {"gemm", "rq", "vadd", "vlazy"} <= seen  # the campaign did saturate


# ------------------------------------------------------------------------------ alignment
ODD_PROGRAM = """
    li r1, {a}
    li r2, {b}
    li r3, 6
    li r4, {d}
    li r5, 2
    li r6, 3
    li r7, 40
    eset e1, -3
    eset e2, 4
    vadd r4, r1, r2, r3, dt=i16
    vcvt r4, r4, r3, e2, e1, rnd=nearest, sdt=i16, ddt=i16
    vexp r4, r4, r3, e1
    vrsqrt r4, r4, r3, e1, e1
    vsubrow r4, r4, r1, r5, r6, dt=i16
    vrmax r4, r4, r5, r6, dt=i16
    vwmul r7, r1, r2, r3, da=i16, db=i16
    gemm r0, r1, r2, r5, r6, r5, da=i16, db=i16
    vrsum r7, r4, r5, r6, dt=i16
    vnormrow r4, r1, r7, r5, r6, e1, dt=i16
    rq r2, r0, r3, e2, e1, dt=i16
    vlazy r1, r2, r3, e2, e1
    halt
"""


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_int16_elements_at_odd_addresses(datapath):
    """The same INT16 program on operands at even addresses and shifted by one byte: every
    result is the same (no alignment rule) and so is every counter."""
    vals = np.array([-32768, 300, -1, 0, 7, 32767, 12, -12, 256, -256, 1, 2], np.int16)
    outs = []
    for off in (0, 1):
        a, b, d = 100 + off, 200 + off, 300 + off
        m = Machine(CFG, assemble(ODD_PROGRAM.format(a=a, b=b, d=d), "odd.s"),
                    datapath=datapath)
        m.spad[a : a + 24] = vals.view(np.uint8)
        m.spad[b : b + 24] = vals[::-1].copy().view(np.uint8)
        m.acc[:6] = [5, -5, 2**20, 1, 0, 3]
        m.run()
        outs.append((m.spad[a : a + 24].tobytes(), m.spad[b : b + 24].tobytes(),
                     m.spad[d : d + 24].tobytes(), m.acc[:64].tolist(), m.flags,
                     m.counts.tolist()))
    assert outs[0] == outs[1]


# ------------------------------------------------------------------------------ DMA rules
def _dma(op: str, rows: int, nbytes: int, dstride: int, sstride: int, sp: int = 64,
         dram: int = 0) -> str:
    regs = "r1, r2" if op == "dmald" else "r2, r1"
    return (f"li r1, {sp}\nli r2, {dram}\nli r3, {rows}\nli r4, {nbytes}\nli r5, {dstride}\n"
            f"li r6, {sstride}\n{op} {regs}, r3, r4, r5, r6\nhalt\n")


def test_dma_source_rows_may_overlap_destination_rows_may_not():
    data = np.arange(1, 33, dtype=np.uint8)
    # dmald: DRAM stride 0 reads one row three times (a broadcast); DRAM stride 2 < 4 bytes
    m = run(_dma("dmald", 3, 4, 0, 4), lambda m: m.load_dram(0, data))
    assert m.spad[64:76].tolist() == [1, 2, 3, 4] * 3
    m = run(_dma("dmald", 3, 4, 2, 5), lambda m: m.load_dram(0, data))
    assert [m.spad[64 + 5 * i : 68 + 5 * i].tolist() for i in range(3)] == \
        [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]
    # dmast: scratchpad stride 0 broadcasts into DRAM
    m = run(_dma("dmast", 2, 3, 3, 0), lambda m: m.spad.__setitem__(slice(64, 67), [9, 8, 7]))
    assert m.dram[:6].tolist() == [9, 8, 7, 9, 8, 7]
    # overlapping destination rows fault, before anything moves
    for op, dst_stride_first in (("dmald", False), ("dmast", True)):
        for stride in (0, 3):
            args = (stride, 4) if dst_stride_first else (4, stride)
            m = Machine(CFG, assemble(_dma(op, 2, 4, *args), "d.s"))
            m.load_dram(0, data)
            m.spad[64:72] = 5
            m.run(break_pc=6)  # up to the transfer
            before = m.digest()
            with pytest.raises(ExecutionError, match="overlap"):
                m.run()
            assert m.digest() == before and m.pc == 6
    # but one row, or zero-byte rows, never overlap
    run(_dma("dmald", 1, 4, 0, 0))
    run(_dma("dmast", 5, 0, 0, 0))
    # dmastacc: DRAM rows of 4 * cols bytes must not overlap; dmaldacc's may
    src = "li r1, 0\nli r2, 0\nli r3, 2\nli r4, 2\nli r5, {s}\n{op} r1, r2, r3, r4, r5\nhalt\n"
    with pytest.raises(ExecutionError, match="overlap"):
        run(src.format(s=4, op="dmastacc"))
    m = run(src.format(s=4, op="dmaldacc"), lambda m: m.load_dram(0, np.array([1, 2, 3],
                                                                            "<i4")))
    assert m.acc[:4].tolist() == [1, 2, 2, 3]


def test_dma_negative_strides_fault_and_empty_transfers_check_nothing():
    for op in ("dmald", "dmast"):
        for rows, dstride, sstride in ((2, -1, 4), (2, 4, -4), (0, -8, 0), (1, 0, -1)):
            with pytest.raises(ExecutionError, match="stride"):
                run(_dma(op, rows, 4, dstride, sstride))
        # zero rows or zero bytes: no address is checked, the latency is still paid
        for rows, nbytes in ((0, 4), (3, 0)):
            m = run(_dma(op, rows, nbytes, 4, 4, sp=10**6, dram=-(10**6)))
            assert m.counts[6, IDX["cycles"]] == 3 and m.counts[6, IDX["dram_rd_bytes"]] == 0
        with pytest.raises(MemoryAccessError):
            run(_dma(op, 1, 4, 4, 4, sp=4093))
    # dmaldacc/dmastacc: the DRAM side is unchecked when empty, the accumulator side is not
    src = "li r1, {acc}\nli r2, -99\nli r3, 0\nli r4, 3\nli r5, 12\ndmaldacc r1, r2, r3, r4, r5\n" \
          "halt\n"
    run(src.format(acc=256))
    with pytest.raises(MemoryAccessError):
        run(src.format(acc=257))


# ------------------------------------------------------------------------------ empty GEMMs
DFS = ("weight_stationary", "output_stationary", "input_stationary")


@pytest.mark.parametrize("df", DFS)
def test_empty_gemm_costs_nothing_and_no_count_is_ever_negative(df):
    """The cases of issue 14 (M = 0 weight-stationary, N = 0 input-stationary, K = 0
    output-stationary: 46, 46 and 30 cycles by the dense formula on 16x16) cost 0; K = 0
    without acc costs the clear of C; and over every small shape, pass count and acc flag no
    counter is negative and an empty GEMM reads no operand."""
    cfg = config_from_dict({"array": {"dataflow": df}})
    r, c = cfg.array.rows, cfg.array.cols
    for m, k, n in ((0, 5, 7), (7, 5, 0), (7, 0, 5), (0, 0, 0)):
        for acc in (False, True):
            cost = timing.gemm(cfg, m, k, n, 1, 1, acc)
            if k == 0 and m and n and not acc:
                assert cost == {IDX["cycles"]: -(-m * n // c), IDX["acc_wr_bytes"]: 4 * m * n}
            else:
                assert all(v == 0 for v in cost.values()), (m, k, n, acc, cost)
    assert 2 * r + c - 2 == 46 and r + c - 2 == 30  # what the dense formula would charge
    for dims in itertools.product(range(4), repeat=3):
        for pa, pb, acc in itertools.product((1, 2), (1, 2), (False, True)):
            small = config_from_dict({"array": {"dataflow": df, "rows": 2, "cols": 3}})
            cost = timing.gemm(small, *dims, pa, pb, acc)
            assert all(v >= 0 for v in cost.values()), (dims, pa, pb, acc, cost)
            if 0 in dims:
                assert cost.get(IDX["spad_rd_bytes"], 0) == 0
                assert cost.get(IDX["mac_passes"], 0) == 0


def test_every_counter_of_a_random_program_is_non_negative():
    for seed in range(20):
        case = difftest.make_case(seed)
        m = Machine(config_from_dict(case.config), assemble(case.source(), "n.s"))
        difftest.initial_memory(m, case.init_seed)
        try:
            m.run()
        except LpemuError:
            pass
        assert (m.counts >= 0).all(), [COUNTERS[i] for i in np.nonzero((m.counts < 0).any(0))[0]]


def test_random_programs_reach_the_widened_exponent_ranges():
    """The differential tester's generators execute rq/rqm/vcvt at shifts past every internal
    width (31, 62/63, 64, 128) and at both extremes, and vlazy past 15."""
    cfg = config_from_dict(difftest.random_config(random.Random(0)))
    shifts: set[int] = set()
    lazy: set[int] = set()
    rng = random.Random(5)
    for name in ("rq", "rqm", "vcvt", "vlazy") * 120:
        g = difftest.Gen(rng)
        difftest.GENERATORS[name](g)
        m = Machine(cfg, assemble("\n".join(g.chunks[0] + ["halt"]), "w.s"))
        while not m.halted:
            ins, ops = decode(m.program.words[m.pc])
            if ins.mnemonic in ("rq", "rqm", "vcvt"):
                shifts.add(m.e[ops["eout"]] - m.e[ops["ein"]])
            if ins.mnemonic == "vlazy":
                lazy.add(m.e[ops["et"]] - m.e[ops["ea"]])
            if not step(m):
                break
    assert {32, 33, 62, 63, 64, 65, 127, 128, 129} <= shifts
    assert max(shifts) == (1 << 32) - 1 and min(shifts) == -(1 << 32) + 1
    assert {16, 17, 40, (1 << 32) - 1} <= lazy and -1 in lazy
