"""Differential testing: random valid programs on the reference model, the fast datapath and the
fast datapath with NUMBA_DISABLE_JIT=1 must agree on every state bit, counter and fault.
``LPEMU_DIFF_PROGRAMS`` raises the number of programs (default 250)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from emulator import kernels
from isa.spec import TABLE
from programs.verify import difftest

COUNT = int(os.environ.get("LPEMU_DIFF_PROGRAMS", "250"))
REGRESSIONS = sorted((Path(__file__).parent / "regressions").glob("*.s"))


def test_every_instruction_has_a_generator():
    assert set(difftest.GENERATORS) == {i.mnemonic for i in TABLE}


def test_random_programs_agree_on_all_three_legs():
    res = difftest.campaign(COUNT, seed0=0, jit_leg=True, out=None)
    assert res["programs"] == COUNT
    assert res["mismatches"] == []
    # the campaign really exercised the whole instruction set
    assert {i.mnemonic for i in TABLE} <= set(res["covered"])


def test_programs_are_reproducible_from_their_seed():
    a, b = difftest.make_case(1234), difftest.make_case(1234)
    assert a.source() == b.source() and a.config == b.config
    assert difftest.execute(a, "fast") == difftest.execute(b, "fast")


@pytest.fixture(scope="module")
def jit():
    with difftest.JitOff() as worker:
        yield worker


def test_detector_reports_the_first_diverging_instruction_and_shrinks(monkeypatch, tmp_path,
                                                                     jit):
    real = kernels.alu_into

    def planted(op, d, a, b, bits, shift=0):  # a rare off-by-one in the fast path
        nsat = real(op, d, a, b, bits, shift)
        if op == "vsub" and d.size >= 5 and bits == 16:
            d[4] = np.int16(d[4] ^ 1)
        return nsat

    monkeypatch.setattr(kernels, "alu_into", planted)
    found = None
    for seed in range(1500):  # (the first hit moves with the generator set: 707 today)
        case = difftest.make_case(seed)
        # (cases with the lazy-update sequence or loops are left out: such a chunk alone can
        # exceed 12 lines)
        if "vsub" in case.source() and "vlazy" not in case.source() \
                and "loop" not in case.source() and difftest.mismatch(case):
            found = case
            break
    assert found is not None, "the planted bug was never triggered"
    div = difftest.first_divergence(found)
    assert div["text"].startswith("vsub ") and div["step"] is not None
    small = difftest.shrink(found)
    lines = [ln for ch in small for ln in ch]
    # (at most one chunk besides the vsub's setup: a loop chunk is up to 16 lines)
    assert sum(ln.startswith("vsub") for ln in lines) >= 1 and len(lines) <= 16
    assert difftest.mismatch(found, small)
    # the shrunk case round-trips through a regression file and still shows the bug
    text = difftest.regression_text(found, small, "planted vsub bug")
    (tmp_path / "r.s").write_text(text)
    again = difftest.parse_regression((tmp_path / "r.s").read_text())
    assert difftest.mismatch(again)
    # the same bug seen from the JIT-off leg (a child process the patch does not reach)
    legs = ("fast", "jit-off")
    assert difftest.mismatch(found, legs=legs, jit=jit)
    div_jit = difftest.first_divergence(found, legs=legs, jit=jit)
    assert (div_jit["step"], div_jit["pc"], div_jit["text"]) == (div["step"], div["pc"],
                                                                 div["text"])
    small_jit = difftest.shrink(found, legs, jit)
    assert difftest.mismatch(found, small_jit, legs, jit)
    assert len([ln for ch in small_jit for ln in ch]) <= 16
    monkeypatch.undo()
    assert not difftest.mismatch(again)
    assert not difftest.mismatch(again, legs=legs, jit=jit)


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_regressions_replay_identically(path, jit):
    text = path.read_text()
    case = difftest.parse_regression(text)
    outs = [difftest.outcome(case, leg, jit=jit) for leg in difftest.LEGS]
    if text.splitlines()[0].startswith("; xfail:"):
        pytest.xfail(text.splitlines()[0])
    assert outs[0] == outs[1] == outs[2]
