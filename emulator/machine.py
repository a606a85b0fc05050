"""The machine: a decode-once program on the architectural state, and the run loop.

:class:`Machine` extends :class:`emulator.state.State` (memories, registers, counters) with a
decoded program and :meth:`Machine.run`.
"""

from __future__ import annotations

import numpy as np

from emulator import fusion
from emulator.config import Config
from emulator.counters import CYCLES, DMA_STALL_CYCLES, INSTRUCTIONS, N_COUNTERS, Summary
from emulator.errors import BudgetExceeded, ExecutionError
from emulator.semantics import SEMANTICS
from emulator.state import (  # noqa: F401 - re-exported: part of this module's API
    DATAPATHS,
    FLAG_ACC_OVERFLOW,
    FLAG_ALU_SATURATION,
    FLAG_RQ_SATURATION,
    MASK64,
    State,
    wrap64,
)
from isa.encoding import Program, decode


class Machine(State):
    """One emulated accelerator running one program.

    ``datapath`` is ``"fast"`` (emulator/kernels.py) or ``"reference"``; ``fuse`` lets plain
    runs on the fast datapath execute hot instruction sequences fused (emulator/fusion.py).
    Values, flags, faults and every counter are the same whatever the choice."""

    def __init__(self, cfg: Config, program: Program, datapath: str = "fast",
                 fuse: bool = True) -> None:
        super().__init__(cfg, datapath, len(program.words))
        self.program = program
        # decode once: (handler, operands, static cost) per pc; a word repeated in the program
        # shares one entry (handlers only read the operand dict)
        self.decoded = []
        seen: dict[int, tuple] = {}
        for w in program.words:
            entry = seen.get(w)
            if entry is None:
                ins, ops = decode(w)
                entry = seen[w] = (SEMANTICS[ins.mnemonic], ops, ins)
            self.decoded.append(entry)
        n = len(program.words)
        self.counts = np.zeros((max(n, 1), N_COUNTERS), dtype=np.int64)
        # the same program with hot sequences fused (emulator/fusion.py), for plain runs on
        # the fast datapath; (step budget, cycle budget, break pc) of the current run
        self.decoded_fused = list(self.decoded)
        if fuse and datapath == "fast":
            for pc in range(n):
                if fusion.match_update(self.decoded, pc):
                    handler, ops, ins = self.decoded[pc]
                    ops3 = tuple(self.decoded[pc + i][1] for i in range(3))
                    self.decoded_fused[pc] = (fusion.make_update_handler(handler, ops3), ops,
                                              ins)
        self.limits: tuple[int, int, int | None] = (0, 0, None)


    def _overlap_step(self, pc: int, c0: int) -> int:
        """After a non-DMA instruction that started at ``c0``: stall it until the in-flight
        transfers it conflicts with (same memory, overlapping bytes) are done; ``halt`` waits
        for the engine to drain. Returns the instruction's actual start cycle."""
        self.inflight = [x for x in self.inflight if x[3] > c0]
        until = c0
        if self.inflight:
            for mem, lo, hi in self._touch:  # type: ignore[union-attr]
                for mem2, lo2, hi2, end in self.inflight:
                    if end > until and mem == mem2 and lo < hi2 and lo2 < hi:
                        until = end
        if self.halted and self.dma_free > until:
            until = self.dma_free
        stall = until - c0
        if stall > 0:
            self.cycles += stall
            self.counts[pc, CYCLES] += stall
            self.counts[pc, DMA_STALL_CYCLES] += stall
        return until

    # ----------------------------------------------------------------- running
    def run(self, max_steps: int | None = None, max_cycles: int | None = None,
            break_pc: int | None = None, break_after: int = 1) -> Summary:
        """Run until ``halt``; raises BudgetExceeded past the step or cycle budget.

        With ``break_pc``, also return (not halted) on arriving at ``break_pc`` for the
        ``break_after``-th time in this call, before executing it: a host uses this to stop at
        a loop head (e.g. to checkpoint) and then calls ``run`` again to continue."""
        max_steps = self.cfg.budget.max_steps if max_steps is None else max_steps
        max_cycles = self.cfg.budget.max_cycles if max_cycles is None else max_cycles
        step_limit = self.steps + max_steps  # budgets count from the start of this run
        cycle_limit = self.cycles + max_cycles
        decoded = self.decoded
        n = len(decoded)
        cmv = self._cmv
        tracer = self.tracer
        overlap = self.overlap
        hits = 0
        if tracer is None and not overlap:  # the common case, with less per-step work
            decoded = self.decoded_fused
            self.limits = (step_limit, cycle_limit, break_pc)
            while not self.halted:
                pc = self.pc
                if not 0 <= pc < n or self.steps >= step_limit or self.cycles >= cycle_limit:
                    raise self._stop_error(pc, n, step_limit, max_steps, max_cycles)
                handler, ops, _ = decoded[pc]
                nxt = handler(self, ops)
                cmv[pc * N_COUNTERS + INSTRUCTIONS] += 1
                self.steps += 1
                self.pc = pc = pc + 1 if nxt is None else nxt
                if pc == break_pc:
                    hits += 1
                    if hits >= break_after:
                        break
            return self.summary()
        while not self.halted:
            pc = self.pc
            if not 0 <= pc < n or self.steps >= step_limit or self.cycles >= cycle_limit:
                raise self._stop_error(pc, n, step_limit, max_steps, max_cycles)
            handler, ops, _ = decoded[pc]
            c0 = self.cycles
            if overlap:
                self._touch.clear()  # type: ignore[union-attr]
                self._dma_span = None
            nxt = handler(self, ops)
            if overlap:
                if self._dma_span is None:
                    c0 = self._overlap_step(pc, c0)
                elif tracer is not None:
                    c0 = self._dma_span[0]
            if tracer is not None:
                tracer.record(pc, c0, self.cycles if self._dma_span is None
                              else self._dma_span[1])
            cmv[pc * N_COUNTERS + INSTRUCTIONS] += 1
            self.steps += 1
            self.pc = pc + 1 if nxt is None else nxt
            if self.pc == break_pc:
                hits += 1
                if hits >= break_after:
                    break
        return self.summary()

    def _stop_error(self, pc: int, n: int, step_limit: int, max_steps: int,
                    max_cycles: int) -> ExecutionError | BudgetExceeded:
        """Why the run loop cannot execute ``pc``: outside the program, or a budget is spent
        (checked in that order)."""
        if not 0 <= pc < n:
            return ExecutionError(f"pc {pc} outside the program (0..{n - 1}); missing halt?", pc)
        what = f"step budget of {max_steps}" if self.steps >= step_limit else \
            f"cycle budget of {max_cycles}"
        return BudgetExceeded(f"{what} exhausted", pc, self.steps, self.cycles)

    def restart(self, pc: int = 0) -> None:
        """Continue from ``pc`` after a halt (state, counters and RNG are kept)."""
        self.pc, self.halted = pc, False

