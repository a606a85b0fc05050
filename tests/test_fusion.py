"""The fused lazy-update sequence (emulator/fusion.py) must be indistinguishable from running
its three instructions one by one: same values, flags, faults and per-instruction counters,
also when a budget or a break point ends a run inside it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from emulator.config import config_from_dict
from emulator.errors import BudgetExceeded
from emulator.machine import Machine
from isa import assemble
from isa.errors import LpemuError
from programs.verify import difftest

CASES = 300


def _outcome(m: Machine, **run) -> tuple:
    fault = None
    try:
        m.run(**run)
    except LpemuError as e:
        fault = (type(e).__name__, getattr(e, "pc", None), str(e))
    return (m.digest(), m.counts.tobytes(), m.flags, m.steps, m.cycles, m.pc, m.halted, fault)


def _update_case(seed: int) -> difftest.Case:
    rng = random.Random(seed)
    g = difftest.Gen(rng)
    difftest.g_update(g)
    cfg = difftest.random_config(rng)
    cfg["dma"]["overlap"] = False  # runs with DMA overlap never fuse
    return difftest.Case(seed, cfg, g.chunks, rng.randrange(2**32))


def _machine(case: difftest.Case, datapath: str = "fast", fuse: bool = True,
             scalar: str = "python") -> Machine:
    """The fused handler of emulator/fusion.py runs where instructions are dispatched one by
    one (``scalar="python"``); the compiled interpreter has its own fused path, tested below."""
    m = Machine(config_from_dict(case.config), assemble(case.source(), "u.s"),
                datapath=datapath, fuse=fuse, scalar=scalar)
    difftest.initial_memory(m, case.init_seed)
    return m


def test_random_update_sequences_fused_unfused_and_reference_agree():
    fused_runs = []
    for seed in range(CASES):
        case = _update_case(seed)
        m = _machine(case)
        static = any(h is not f for (h, _, _), (f, _, _) in zip(m.decoded, m.decoded_fused,
                                                                 strict=True))
        assert static == ("rnd=uniform" not in case.source())
        got = _outcome(m)
        fused_runs += [1] * m.fused_total
        assert got == _outcome(_machine(case, fuse=False)), case.source()
        assert got == _outcome(_machine(case, "reference")), case.source()
    # the generator's mix of aliasing and bad operands still leaves many fusable cases
    assert CASES // 3 <= len(fused_runs) < CASES


def test_the_interpreter_fuses_a_looped_sequence_like_the_handler():
    """In a loop the interpreter knows the costs after one pass and runs the sequence fused
    (emulator/vecops.exec_update): same state and counters as the plain, the handler-fused
    and the reference machines, with budgets and break points landing inside it."""
    fused = 0
    for seed in range(60):
        case = _update_case(seed)
        body = [ln for ch in case.chunks for ln in ch]
        looped = difftest.Case(seed, case.config, [["li r28, 3", "again:"] + body
                                                    + ["addi r28, r28, -1",
                                                       "bne r28, r0, again"]], case.init_seed)
        for run in ({}, {"max_steps": 40 + seed}, {"break_pc": len(body) // 2}):
            m = _machine(looped, scalar="compiled")
            got = _outcome(m, **run)
            fused += m.fused_total
            assert got == _outcome(_machine(looped, fuse=False, scalar="compiled"), **run)
            assert got == _outcome(_machine(looped), **run)
            assert got == _outcome(_machine(looped, "reference"), **run)
    assert fused > 20


SRC = """
    eset e1, -12
    eset e2, 0
    eset e5, 0
    eset e6, -7
    li r1, 0
    li r2, 16
    li r3, 64
    li r5, 3
    li r6, 256
    li r7, 512
    rqm r1, r2, r3, r5, e2, e1, rnd=nearest, dt=i16, relu=0
    vsub r6, r6, r1, r3, dt=i16
    vlazy r7, r6, r3, e5, e6
    halt
"""
RQM_PC = 10


def _fixed(fuse: bool) -> Machine:
    cfg = config_from_dict({"memory": {"dram_bytes": 4096, "scratchpad_bytes": 1024},
                            "accumulator": {"entries": 256}})
    m = Machine(cfg, assemble(SRC, "t.s"), fuse=fuse)
    rng = np.random.default_rng(3)
    m.acc[:] = rng.integers(-(2**31), 2**31, 256)
    m.spad[:] = rng.integers(0, 256, 1024)
    return m


@pytest.mark.parametrize("extra_steps", [0, 1, 2, 3])
def test_step_budget_inside_the_sequence(extra_steps):
    budget = RQM_PC + extra_steps
    a, b = _fixed(True), _fixed(False)
    got = _outcome(a, max_steps=budget)
    assert got == _outcome(b, max_steps=budget)
    assert got[-1][0] == BudgetExceeded.__name__ and got[-1][1] == budget and got[3] == budget


def test_cycle_budget_inside_the_sequence():
    probe = _fixed(False)
    with pytest.raises(BudgetExceeded):
        probe.run(max_steps=RQM_PC)  # cycles at the rqm; then each instruction's cost
    per_pc = probe.counts.copy()
    start = probe.cycles
    probe.run()
    cyc = [int(v) for v in probe.counts[RQM_PC : RQM_PC + 3, 1] - per_pc[RQM_PC : RQM_PC + 3, 1]]
    for limit in (start + 1, start + cyc[0], start + cyc[0] + 1, start + cyc[0] + cyc[1],
                  start + sum(cyc), start + sum(cyc) + 2):
        assert _outcome(_fixed(True), max_cycles=limit) == _outcome(_fixed(False),
                                                                     max_cycles=limit)


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_break_point_inside_the_sequence(offset):
    a, b = _fixed(True), _fixed(False)
    got = _outcome(a, break_pc=RQM_PC + offset)
    assert got == _outcome(b, break_pc=RQM_PC + offset)
    assert got[5] == RQM_PC + offset and not got[6]
    assert _outcome(a) == _outcome(b)  # and the rest of the run


def test_the_sequence_fused_matches_saturation_counts_and_flags():
    a, b = _fixed(True), _fixed(False)
    got = _outcome(a)
    assert got == _outcome(b)
    assert a.flags & 2 and a.flags & 4  # the random operands saturate both stages
