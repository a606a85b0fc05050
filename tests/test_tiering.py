"""Python first, compiled code when it pays (emulator/tiering.py): a machine that has not loaded
numba runs small datapath operations on the reference datapath and scalar instructions by their
handlers, loads the kernels at the first large operation and the compiled interpreter after
``TIER_STEPS`` instructions, and none of it changes a value or a counter.

The cold cases run in a child Python, where nothing has loaded numba yet; their outcomes are
compared with this process's, where the kernels are loaded (as the tests and the differential
tester always have them)."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
from jit_child import run_child

from emulator import reference, tiering
from emulator.config import config_from_dict
from emulator.machine import Machine
from isa import assemble

CFG = {"memory": {"dram_bytes": 4096, "scratchpad_bytes": 16384},
       "accumulator": {"entries": 4096}}

# a firmware-style loop of small operations: a 4x4x4 GEMM, a dithered requantize, a vector add
# and the compiler's lazy-update sequence (rqm; vsub; vlazy, which runs fused)
LOOP = """
    li r9, 12345
    rngseed r9
    li r1, 0
    li r2, 64
    li r3, 4
    eset e1, 0
    eset e2, 2
    li r6, 0
    li r7, {iters}
    li r4, 128
    li r5, 16
    li r10, 256
    li r11, 3
    li r12, 512
    li r13, 768
    eset e3, 4
    eset e4, 0
    eset e5, 8
top:
    gemm r1, r1, r2, r3, r3, r3
    rq r4, r1, r5, e2, e1, rnd=uniform, dt=i8
    vadd r1, r1, r4, r5, dt=i8
    rqm r10, r0, r5, r11, e5, e1, rnd=nearest, dt=i16
    vsub r12, r12, r10, r5, dt=i16
    vlazy r13, r12, r5, e3, e4
    addi r6, r6, 1
    blt r6, r7, top
{big}
    halt
"""
# a 64x64x64 GEMM: 12,288 elements in its operands, over SMALL_ELEMENTS
BIG = "    li r8, 64\n    gemm r0, r0, r0, r8, r8, r8\n"


@pytest.fixture(autouse=True)
def _kernels_loaded_here() -> None:
    """This process runs with the kernels loaded (the child imports this module without)."""
    tiering.load_kernels()


def source(iters: int, big: bool) -> str:
    return LOOP.format(iters=iters, big=BIG if big else "")


def outcome(src: str, scalar: str = "auto", datapath: str = "fast", runs: int = 1) -> dict:
    """Run ``src`` (``runs`` times, restarting after each halt) on a machine with a fixed
    initial memory; everything it produced."""
    m = Machine(config_from_dict(CFG), assemble(src, "t.s"), datapath=datapath, scalar=scalar)
    m.spad[:] = (np.arange(m.spad.size) * 37 % 251).astype(np.uint8)
    for i in range(runs):
        if i:
            m.restart()
        m.run()
    return {"r": list(m.r), "e": list(m.e), "rng": list(m.rng), "flags": m.flags,
            "steps": m.steps, "cycles": m.cycles, "digest": m.digest(),
            "counts": hashlib.sha256(m.counts.tobytes()).hexdigest(),
            "fused": m.fused_total, "tiered": m._interp is not None,
            "kernels": m.dp is not None and m.dp is sys.modules.get("emulator.kernels")}


def cold_outcome(iters: int, big: bool, runs: int = 1) -> dict:
    """The outcome in a child that starts without numba, with what it had loaded after."""
    code = ("import json, sys\nimport test_tiering as t\n"
            f"out = t.outcome(t.source({iters}, {big}), runs={runs})\n"
            "out['numba_loaded'] = 'numba' in sys.modules\n"
            "out['kernels_loaded'] = 'emulator.kernels' in sys.modules\n"
            "print(json.dumps(out))")
    return json.loads(run_child(code, jit=True).strip().splitlines()[-1])


def warm(d: dict) -> dict:
    return {k: v for k, v in d.items()
            if k not in ("tiered", "kernels", "numba_loaded", "kernels_loaded", "fused")}


def test_a_short_program_runs_without_numba_and_gives_the_same_bits():
    src = source(100, big=False)
    cold = cold_outcome(100, big=False)
    assert not cold["numba_loaded"] and not cold["kernels_loaded"]
    assert not cold["tiered"] and not cold["kernels"]
    assert cold["fused"] == 100  # the lazy update ran fused, on the reference datapath
    hot = outcome(src, scalar="compiled")  # kernels and compiled interpreter from the start
    assert hot["tiered"] and hot["kernels"]
    assert warm(cold) == warm(hot)
    assert warm(cold) == warm(outcome(src, scalar="python", datapath="reference"))


def test_a_long_run_switches_to_the_compiled_interpreter_midway_with_the_same_bits():
    iters = tiering.TIER_STEPS // 8 + 100  # eight instructions per iteration
    src = source(iters, big=False)
    cold = cold_outcome(iters, big=False)
    assert cold["steps"] > tiering.TIER_STEPS
    assert cold["tiered"] and cold["numba_loaded"]
    assert warm(cold) == warm(outcome(src, scalar="compiled"))
    assert warm(cold) == warm(outcome(src, scalar="python", datapath="reference"))


def test_the_first_large_operation_loads_the_kernels_with_the_same_bits():
    src = source(3, big=True)
    cold = cold_outcome(3, big=True)
    assert cold["kernels_loaded"] and cold["kernels"]  # the state now calls them directly
    assert warm(cold) == warm(outcome(src, scalar="compiled"))
    assert warm(cold) == warm(outcome(src, scalar="python", datapath="reference"))


def test_once_the_kernels_are_loaded_the_next_run_is_compiled_with_the_same_bits():
    """A training host's machine: its first batch loads the kernels, the next runs in the
    compiled interpreter."""
    src = source(3, big=True)
    cold = cold_outcome(3, big=True, runs=2)
    assert cold["tiered"] and cold["kernels"]
    assert warm(cold) == warm(outcome(src, scalar="compiled", runs=2))
    assert warm(cold) == warm(outcome(src, scalar="python", datapath="reference", runs=2))


def test_lpemu_run_of_a_short_program_never_imports_numba(tmp_path):
    """The start-up guarantee behind ``lpemu run``'s half second (timed in ``lpemu bench``):
    nothing on its path imports numba, scikit-learn, scipy or matplotlib."""
    prog = tmp_path / "t.s"
    prog.write_text(source(10, big=False))
    code = ("import sys\nfrom programs.cli.main import main\n"
            f"rc = main(['run', {str(prog)!r}, '-q'])\n"
            "heavy = [m for m in ('numba', 'sklearn', 'scipy', 'matplotlib', 'emulator.kernels')"
            " if m in sys.modules]\n"
            "print(rc, heavy)")
    assert run_child(code, jit=True).strip().splitlines()[-1] == "0 []"


def test_cold_datapath_routes_by_size_and_switches_for_good(monkeypatch):
    kernels = tiering.load_kernels()

    class S:
        dp = None

    state = S()
    cold = tiering.ColdDatapath(state)
    state.dp = cold
    loaded = [False]
    monkeypatch.setattr(tiering, "kernels_loaded", lambda: loaded[0])
    calls = []
    monkeypatch.setattr(reference, "row_sum", lambda x: calls.append("ref") or x.sum(1))
    monkeypatch.setattr(kernels, "row_sum", lambda x: calls.append("fast") or x.sum(1))
    small = np.ones((64, 64), np.int64)  # exactly SMALL_ELEMENTS
    assert small.size == tiering.SMALL_ELEMENTS
    cold.row_sum(small)
    assert calls == ["ref"] and state.dp is cold
    cold.row_sum(np.ones((65, 64), np.int64))
    assert calls == ["ref", "fast"] and state.dp is kernels
    # a small operation after the cold tier's time is used up
    state.dp = cold = tiering.ColdDatapath(state)
    cold.row_sum(small)
    assert calls[-1] == "ref" and state.dp is cold
    monkeypatch.setattr(tiering, "_cold_spent", tiering.COLD_SECONDS)
    cold.row_sum(small)
    assert calls[-1] == "fast" and state.dp is kernels
    with pytest.raises(AttributeError):
        tiering.ColdDatapath(S()).no_such_operation  # noqa: B018


def test_jit_disabled_reads_the_environment_before_numba_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)
    for value, want in (("1", True), ("0", False), ("", False), ("x", False), (" 2", True)):
        monkeypatch.setenv("NUMBA_DISABLE_JIT", value)
        assert tiering.jit_disabled() is want


def test_every_datapath_operation_the_machine_calls_has_a_reference_with_its_signature():
    """The cold tier sends any operation to emulator/reference.py: each one the emulator calls
    through ``m.dp`` exists there with the kernels' parameters."""
    import inspect
    import re
    from pathlib import Path

    kernels = tiering.load_kernels()
    src = "".join(p.read_text() for p in Path(tiering.__file__).parent.glob("*.py"))
    names = set(re.findall(r"\.dp\.([a-z_0-9]+)", src))
    assert {"gemm_into", "update_into", "conv_into"} <= names
    for name in sorted(names):
        ref, fast = getattr(reference, name), getattr(kernels, name)
        assert list(inspect.signature(ref).parameters) == \
            list(inspect.signature(fast).parameters), name
