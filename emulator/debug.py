"""Debugging a run: faults located in the source, single steps with their effects, registers.

* :func:`annotate` adds to a runtime fault (:class:`ExecutionError` and its subclasses) the
  nearest label and the offset from it, and, when the program carries debug information (it
  came from assembly, or from a program file with a debug section), the source file, line and
  the instruction as written; otherwise the disassembled instruction.
* :func:`run` runs a machine like :meth:`Machine.run` with faults annotated, optionally
  reporting the first ``trace_steps`` instructions with their effects (:class:`StepRecord`).
  Steps are taken one at a time through ``Machine.run`` itself (a one-step budget), so the
  traced instructions execute exactly as in a plain run; the rest of the run is a plain run.
* :func:`registers` / :func:`format_registers`: the scalar and exponent registers, flags and
  the dither generator's state.

Effects are the state a step changed, found by comparing the state before and after it: the
scalar and exponent registers, flags, the dither generator, the scratchpad and accumulator
memory (compared in full) and the DRAM range the instruction may store to (``stw``, ``dmast``
and ``dmastacc`` are the only DRAM writers; a test checks that against the instruction table).
A write of the value already there changes nothing and is not listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from emulator.counters import Summary
from emulator.errors import BudgetExceeded, ExecutionError
from emulator.machine import Machine
from emulator.state import FLAG_ACC_OVERFLOW, FLAG_ALU_SATURATION, FLAG_RQ_SATURATION
from isa.asm import format_instruction
from isa.encoding import Program, decode

FLAG_NAMES = ((FLAG_ACC_OVERFLOW, "acc_overflow"), (FLAG_RQ_SATURATION, "rq_saturation"),
              (FLAG_ALU_SATURATION, "alu_saturation"))


# ------------------------------------------------------------------------------ faults
def _label_at(program: Program, pc: int) -> tuple[str, int] | None:
    """(nearest label at or before ``pc``, offset from it), or None."""
    best: tuple[int, str] | None = None
    for name, at in program.labels.items():
        if at <= pc and (best is None or (at, name) > best):
            best = (at, name)
    return None if best is None else (best[1], pc - best[0])


def instruction_text(program: Program, pc: int) -> str:
    """The instruction at ``pc`` as written in its source, else disassembled."""
    if pc < len(program.text) and program.text[pc]:
        return program.text[pc]
    ins, ops = decode(program.words[pc])
    names: dict[int, str] = {}
    for name, at in sorted(program.labels.items()):
        names.setdefault(at, name)
    return format_instruction(ins, ops, names)


def where(program: Program, pc: int) -> str:
    """``label+offset`` (or ``label``) of ``pc``; "" before the first label."""
    lab = _label_at(program, pc)
    if lab is None:
        return ""
    return f"{lab[0]}+{lab[1]}" if lab[1] else lab[0]


def annotate(err: ExecutionError, program: Program) -> ExecutionError:
    """Fill in the fault's label, offset, source file:line and instruction text (in place);
    returns ``err``. A pc outside the program gets only what applies to it."""
    pc = err.pc
    n = len(program.words)
    if 0 <= pc <= n:
        lab = _label_at(program, pc)
        if lab is not None:
            err.label, err.label_offset = lab
    if 0 <= pc < n:
        if program.has_debug_info:
            err.source_file, err.source_line = program.source[pc]
        err.text = instruction_text(program, pc)
    return err


# ------------------------------------------------------------------------------ registers
def registers(m: Machine) -> dict[str, Any]:
    """The architectural registers: ``r`` (32 scalars), ``e`` (16 exponents), ``flags`` (and
    their names), ``rng`` (seed, counter), ``pc``, ``halted``, ``steps``, ``cycles``."""
    return {
        "r": list(m.r), "e": list(m.e), "flags": m.flags,
        "flag_names": [name for bit, name in FLAG_NAMES if m.flags & bit],
        "rng": {"seed": m.rng[0], "counter": m.rng[1]},
        "pc": m.pc, "halted": m.halted, "steps": m.steps, "cycles": m.cycles,
    }


def _num(v: int) -> str:
    return f"{v} ({v & 0xFFFFFFFFFFFFFFFF:#x})" if abs(v) >= 256 else str(v)


def format_registers(m: Machine) -> str:
    """The registers as text: scalars four per line, exponents eight per line, then flags and
    the dither generator."""
    d = registers(m)
    state = "halted" if d["halted"] else "stopped"
    lines = [f"registers: {state} at pc {d['pc']} after {d['steps']:,} steps, "
             f"{d['cycles']:,} cycles"]
    cells = [f"r{i:<2} = {_num(v)}" for i, v in enumerate(d["r"])]
    width = max(len(c) for c in cells) + 2
    for i in range(0, 32, 4):
        lines.append("  " + "".join(c.ljust(width) for c in cells[i:i + 4]).rstrip())
    ecells = [f"e{i:<2} = {v}" for i, v in enumerate(d["e"])]
    ew = max(len(c) for c in ecells) + 2
    for i in range(0, 16, 8):
        lines.append("  " + "".join(c.ljust(ew) for c in ecells[i:i + 8]).rstrip())
    names = ", ".join(d["flag_names"]) or "none"
    lines.append(f"  flags = {d['flags']:#x} ({names})   rng seed = {d['rng']['seed']:#x}, "
                 f"counter = {d['rng']['counter']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ stepping
@dataclass(frozen=True)
class StepRecord:
    """One executed instruction and what it changed."""

    step: int  # 0-based index of the step in the machine's life
    pc: int
    where: str  # label+offset ("" before the first label)
    text: str  # the instruction (source text or disassembly)
    cycles: int  # cycles it took
    effects: tuple[str, ...]  # what it changed, e.g. "r1 = 64 (was 0)"

    def __str__(self) -> str:
        loc = f"pc {self.pc}" + (f" ({self.where})" if self.where else "")
        eff = "; ".join(self.effects) or "no state change"
        return f"step {self.step:<6} {loc:<24} {self.text:<40} [{self.cycles} cyc]  {eff}"


def _dram_store_span(m: Machine, pc: int) -> tuple[int, int] | None:
    """The DRAM byte range [lo, hi) the instruction at ``pc`` may write, clipped to DRAM."""
    _, ops, ins = m.decoded[pc]
    r = m.r
    mn = ins.mnemonic
    if mn == "stw":
        lo, n = r[ops["ra"]] + ops["imm"], 4
        hi = lo + n
    elif mn in ("dmast", "dmastacc"):
        rows = r[ops["rrows"]]
        nbytes = r[ops["rbytes"]] if mn == "dmast" else 4 * r[ops["rcols"]]
        if rows <= 0 or nbytes <= 0:
            return None
        lo = r[ops["rdram"]]
        hi = lo + (rows - 1) * max(r[ops["rdstride"]], 0) + nbytes
    else:
        return None
    lo, hi = max(lo, 0), min(hi, m.dram.size)
    return (lo, hi) if lo < hi else None


DRAM_WRITERS = ("stw", "dmast", "dmastacc")


def _runs(changed: np.ndarray, gap: int = 16) -> list[tuple[int, int]]:
    """Index ranges [lo, hi) covering the changed positions (runs closer than ``gap`` merge)."""
    idx = np.flatnonzero(changed)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _mem_effects(name: str, before: np.ndarray, after: np.ndarray, base: int,
                 show: Callable[[np.ndarray], str]) -> list[str]:
    """``name[lo, hi) changed: values`` per changed range (the first 8 values of each)."""
    runs = _runs(before != after)
    out = []
    for lo, hi in runs[:4]:
        more = " ..." if hi - lo > 8 else ""
        out.append(f"{name}[{base + lo:#x}, {base + hi:#x}) changed: "
                   f"{show(after[lo:min(hi, lo + 8)])}{more}")
    if len(runs) > 4:
        out.append(f"{name}: {len(runs) - 4} more changed ranges")
    return out


def _hex(vals: np.ndarray) -> str:
    return " ".join(f"{int(v):02x}" for v in vals)


def _ints(vals: np.ndarray) -> str:
    return ", ".join(str(int(v)) for v in vals)


class _Snapshot:
    def __init__(self, m: Machine, span: tuple[int, int] | None) -> None:
        self.r, self.e = list(m.r), list(m.e)
        self.flags, self.rng, self.halted = m.flags, list(m.rng), m.halted
        self.spad, self.acc = m.spad.copy(), m.acc.copy()
        self.span = span
        self.dram = m.dram[span[0]:span[1]].copy() if span else None
        self.cycles = m.cycles

    def effects(self, m: Machine) -> list[str]:
        out = [f"r{i} = {_num(v)} (was {_num(self.r[i])})"
               for i, v in enumerate(m.r) if v != self.r[i]]
        out += [f"e{i} = {v} (was {self.e[i]})" for i, v in enumerate(m.e) if v != self.e[i]]
        if m.flags != self.flags:
            names = ", ".join(n for b, n in FLAG_NAMES if m.flags & b) or "none"
            out.append(f"flags = {m.flags:#x} ({names}) (was {self.flags:#x})")
        for i, part in enumerate(("seed", "counter")):
            if m.rng[i] != self.rng[i]:
                out.append(f"rng.{part} = {m.rng[i]} (was {self.rng[i]})")
        out += _mem_effects("scratchpad", self.spad, m.spad, 0, _hex)
        out += _mem_effects("acc", self.acc, m.acc, 0, _ints)
        if self.span is not None and self.dram is not None:
            lo, hi = self.span
            out += _mem_effects("dram", self.dram, m.dram[lo:hi], lo, _hex)
        if m.halted and not self.halted:
            out.append("halted")
        return out


def _budget_error(m: Machine, step_limit: int, max_steps: int, max_cycles: int
                  ) -> BudgetExceeded:
    what = (f"step budget of {max_steps}" if m.steps >= step_limit
            else f"cycle budget of {max_cycles}")
    return BudgetExceeded(f"{what} exhausted", m.pc, m.steps, m.cycles)


def run(m: Machine, max_steps: int | None = None, max_cycles: int | None = None,
        trace_steps: int = 0, on_step: Callable[[StepRecord], None] | None = None,
        max_seconds: float | None = None) -> Summary:
    """Run ``m`` to ``halt`` like ``m.run(max_steps, max_cycles, max_seconds=...)``, with any
    runtime fault annotated (:func:`annotate`). With ``trace_steps`` = N > 0, ``on_step`` is
    called with a :class:`StepRecord` for each of the first N instructions executed (the
    wall-time budget then applies to the rest of the run)."""
    try:
        if trace_steps <= 0:
            return m.run(max_steps=max_steps, max_cycles=max_cycles, max_seconds=max_seconds)
        return _run_traced(m, max_steps, max_cycles, trace_steps, on_step, max_seconds)
    except ExecutionError as e:
        raise annotate(e, m.program) from None


def step(m: Machine, n: int = 1) -> list[StepRecord]:
    """Execute up to ``n`` instructions (fewer if the program halts first) and return what each
    did. The step and cycle budgets of the config apply; faults are annotated."""
    if n < 1:
        raise ValueError("n must be >= 1")
    out: list[StepRecord] = []
    try:
        _steps(m, n, m.steps + m.cfg.budget.max_steps, m.cycles + m.cfg.budget.max_cycles,
               m.cfg.budget.max_steps, m.cfg.budget.max_cycles, out.append)
    except ExecutionError as e:
        raise annotate(e, m.program) from None
    return out


def _steps(m: Machine, n: int, step_limit: int, cycle_limit: int, max_steps: int,
           max_cycles: int, on_step: Callable[[StepRecord], None] | None) -> None:
    """Single-step up to ``n`` instructions within the run's budgets."""
    for _ in range(n):
        if m.halted:
            return
        if m.steps >= step_limit or m.cycles >= cycle_limit:
            raise _budget_error(m, step_limit, max_steps, max_cycles)
        pc, steps0 = m.pc, m.steps
        snap = None
        if on_step is not None and 0 <= pc < len(m.decoded):
            snap = _Snapshot(m, _dram_store_span(m, pc))
        try:
            m.run(max_steps=1, max_cycles=cycle_limit - m.cycles)
        except BudgetExceeded:
            if m.steps != steps0 + 1:  # not the one-step stop: cannot happen, but never hide
                raise
        if snap is not None and on_step is not None:
            on_step(StepRecord(steps0, pc, where(m.program, pc), instruction_text(m.program, pc),
                               m.cycles - snap.cycles, tuple(snap.effects(m))))


def _run_traced(m: Machine, max_steps: int | None, max_cycles: int | None, n: int,
                on_step: Callable[[StepRecord], None] | None,
                max_seconds: float | None = None) -> Summary:
    max_steps = m.cfg.budget.max_steps if max_steps is None else max_steps
    max_cycles = m.cfg.budget.max_cycles if max_cycles is None else max_cycles
    step_limit, cycle_limit = m.steps + max_steps, m.cycles + max_cycles
    _steps(m, n, step_limit, cycle_limit, max_steps, max_cycles, on_step)
    if m.halted:
        return m.summary()
    try:
        return m.run(max_steps=step_limit - m.steps, max_cycles=cycle_limit - m.cycles,
                     max_seconds=max_seconds)
    except BudgetExceeded:
        raise _budget_error(m, step_limit, max_steps, max_cycles) from None
