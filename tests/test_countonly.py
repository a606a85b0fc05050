"""Count-only mode (emulator/countonly.py): counters equal to a full run's, per pc, without
running the datapath; refused with a typed error where a counter depends on values."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.config import Config, config_from_dict
from emulator.counters import COUNTERS
from emulator.countonly import UNCOUNTED, CountOnlyMachine
from emulator.errors import CountOnlyError, LpemuError
from emulator.machine import Machine
from isa import assemble
from isa.encoding import Program, encode
from isa.spec import TABLE
from programs.verify.difftest import initial_memory, make_case

KEEP = [i for i, n in enumerate(COUNTERS) if n not in UNCOUNTED]
RNG = np.random.default_rng(16)
A = RNG.integers(-100, 100, (24, 40)).astype(np.int8)
A[RNG.random(A.shape) < 0.4] = 0
B = RNG.integers(-3, 4, (40, 20)).astype(np.int8)
B16 = RNG.integers(-3000, 3000, (40, 20)).astype("<i2")

GEMM_RQ = """
    li r1, 0
    li r2, 0
    li r3, 24
    li r4, 40
    dmald r1, r2, r3, r4, r4, r4      # A [24,40] int8
    li r5, 0x1000
    li r6, 0x400
    li r7, 20
    dmald r5, r6, r4, r7, r7, r7      # B [40,20] int8
    li r8, 0
    gemm r8, r1, r5, r3, r4, r7, sa=1, sb=1
    gemm r8, r1, r5, r3, r4, r7, acc=1, sa=1
    eset e1, 0
    eset e2, 7
    li r9, 480
    li r10, 0x2000
    li r11, 77
    rngseed r11
    rq r10, r8, r9, e2, e1, rnd=uniform
    vrelu r10, r10, r9
    vadd r10, r10, r10, r9
    li r12, 0x3000
    li r13, 1
    dmast r12, r10, r13, r9, r9, r9
    halt
"""

INT16_LOOP = """
    li r20, 0x800             # loop count from host data
    ldw r21, r20, 0
    li r1, 0
    li r2, 0
    li r3, 24
    li r4, 40
    dmald r1, r2, r3, r4, r4, r4
    li r5, 0x1000
    li r6, 0x1000
    li r7, 40                 # bytes per INT16 row of B
    li r14, 20
    li r15, 80
    dmald r5, r6, r4, r15, r15, r15
    li r22, 0
loop:
    li r8, 0
    gemm r8, r1, r5, r3, r4, r14, db=i16, sb=1
    eset e1, 0
    eset e2, 3
    li r9, 480
    li r10, 0x3000
    rq r10, r8, r9, e2, e1, rnd=triangular, dt=i16
    vmul r10, r10, r10, r9, dt=i16
    li r11, 24
    li r12, 20
    vrmax r10, r10, r11, r12, dt=i16
    addi r22, r22, 1
    blt r22, r21, loop
    halt
"""


def _pair(src: str, cfg: Config, loads=((0, A), (0x400, B))) -> tuple[Machine, Machine]:
    prog = assemble(src, "t.s")
    full, count = Machine(cfg, prog), CountOnlyMachine(cfg, prog)
    for m in (full, count):
        for addr, arr in loads:
            m.load_dram(addr, arr)
        m.run()
    return full, count


@pytest.mark.parametrize("dataflow", ["weight_stationary", "output_stationary",
                                      "input_stationary"])
@pytest.mark.parametrize("skip", ["none", "element", "row"])
def test_counters_equal_a_full_run_on_every_dataflow_and_skip(dataflow, skip):
    cfg = config_from_dict({"array": {"rows": 8, "cols": 4, "dataflow": dataflow,
                                      "skip": skip}, "dma": {"overlap": skip == "row"}})
    full, count = _pair(GEMM_RQ, cfg)
    assert np.array_equal(full.counts[:, KEEP], count.counts[:, KEEP])
    assert full.steps == count.steps and full.cycles == count.cycles
    ft, ct = full.summary(), count.summary()
    assert ft.energy == ct.energy and ft.derived == ct.derived
    assert ft.totals["macs_skipped"] > 0 and ft.totals["rng_draws"] == 480
    if skip == "element" and dataflow == "output_stationary":
        assert ft.totals["skip_cycles_saved"] > 0


def test_int16_passes_loop_with_a_host_loaded_count():
    n = np.array([3], dtype="<i4")
    full, count = _pair(INT16_LOOP, Config(), ((0, A), (0x1000, B16), (0x800, n)))
    assert np.array_equal(full.counts[:, KEEP], count.counts[:, KEEP])
    assert full.summary().totals["mac_passes"] == 3 * 2  # INT8 x INT16: 2 byte-passes, 3 times
    assert count.steps == full.steps


def test_random_programs_are_counted_exactly_or_refused():
    """Differential: the difftest's random programs (every instruction, loops, faults, DMA
    overlap, random configs) give the same counters and the same fault, or a refusal."""
    counted = refused = 0
    for seed in range(60):
        case = make_case(seed)
        outs = []
        for cls in (Machine, CountOnlyMachine):
            m = cls(config_from_dict(case.config), assemble(case.source(), "c.s"))
            initial_memory(m, case.init_seed)  # host-written memory: known
            try:
                m.run()
                fault = None
            except CountOnlyError:
                fault = "refused"
            except LpemuError as e:
                fault = (type(e).__name__, getattr(e, "pc", None))
            outs.append((m, fault))
        (f, ff), (c, cf) = outs
        if cf == "refused":
            refused += 1
            continue
        counted += 1
        assert ff == cf, seed
        assert np.array_equal(f.counts[:, KEEP], c.counts[:, KEEP]), seed
    assert counted >= 50


def test_every_instruction_has_a_rule():
    words = [encode(ins, {f.name: 0 for f in ins.fields}) for ins in TABLE]
    m = CountOnlyMachine(Config(), Program(words))  # builds a rule per instruction
    assert {ins.mnemonic for _, _, ins in m.decoded} == {ins.mnemonic for ins in TABLE}


REFUSALS = {
    "branch on a computed value": ("""
        li r1, 0
        li r2, 4
        li r4, 0
        gemm r4, r1, r1, r2, r2, r2
        accrd r5, r4
        beq r5, r0, done
    done:
        halt""", 5, "branch register r5"),
    "skip on a computed operand": ("""
        li r1, 0
        li r2, 16
        vadd r1, r1, r1, r2
        li r3, 4
        li r4, 0
        gemm r4, r1, r1, r3, r3, r3, sa=1
        halt""", 5, "zero-skipping on A"),
    "address loaded from computed data": ("""
        li r1, 0
        li r2, 16
        vadd r1, r1, r1, r2
        li r3, 1
        li r4, 100
        dmast r4, r1, r3, r2, r2, r2
        ldw r5, r4, 0
        dmast r5, r1, r3, r2, r2, r2
        halt""", 7, "operand register r5 (rdram)"),
    "dither shift from efit": ("""
        li r1, 0
        li r2, 16
        eset e1, 0
        efit e2, r1, r2, e1
        rq r1, r1, r2, e2, e1, rnd=uniform
        halt""", 4, "draws dither"),
    "flags": ("""
        flags r1
        bne r1, r0, x
    x:  halt""", 1, "branch register r1"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals_name_the_pc_and_instruction(name):
    src, pc, fragment = REFUSALS[name]
    m = CountOnlyMachine(Config(), assemble(src, "r.s"))
    with pytest.raises(CountOnlyError) as info:
        m.run()
    assert info.value.pc == pc and fragment in str(info.value)
    assert str(info.value).startswith(f"pc {pc} (")


def test_the_example_program_is_refused_at_its_dynamic_requantization(tmp_path, capsys):
    from programs.cli.main import main

    ex = "programs/examples/"
    args = ["run", ex + "gemm_dither.s", "--load", ex + "gemm_a.npy@0", "--load",
            ex + "gemm_b.npy@0x10000", "--count-only"]
    assert main(args) == CountOnlyError.exit_code
    err = capsys.readouterr().err
    assert "pc 18 (rq r13, r10, r11, e2, e1, rnd=uniform)" in err and "efit" in err
    # with a fixed exponent it is counted, and the CLI reports the same counters as a run
    src = (tmp_path / "fixed.s")
    src.write_text(open(ex + "gemm_dither.s").read().replace(
        "efit e2, r10, r11, e1, dt=i8", "eset e2, 9"))
    base = ["run", str(src), "--load", ex + "gemm_a.npy@0", "--load", ex + "gemm_b.npy@0x10000",
            "-q", "--json"]
    assert main(base + [str(tmp_path / "full.json")]) == 0
    assert main(base + [str(tmp_path / "count.json"), "--count-only"]) == 0
    import json

    full = json.loads((tmp_path / "full.json").read_text())
    count = json.loads((tmp_path / "count.json").read_text())
    for k in COUNTERS:
        assert count[k] == (None if k in UNCOUNTED else full[k]), k
    assert count["energy_pj"] == full["energy_pj"] and count["count_only"] is True
    assert count["state_digest"] is None
