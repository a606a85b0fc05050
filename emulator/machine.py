"""The machine: a decode-once program on the architectural state, and the run loop.

:class:`Machine` extends :class:`emulator.state.State` (memories, registers, counters) with a
decoded program and :meth:`Machine.run`.

Decoding is vectorized and compact: an int64 ``[n, 5]`` array (kind and operands, see
:mod:`emulator.decoding`) plus one list slot per pc, 48 bytes per instruction; a coarse
instruction's operand dict and handler are built the first time it executes (a bounded cache).
Stretches of scalar, branch and exponent instructions run in the compiled interpreter
(:func:`emulator.scalar.run_scalar`) once it is loaded (:mod:`emulator.tiering`: Python
handlers first, so a short run never loads numba); coarse instructions are dispatched to their
handlers in :mod:`emulator.semantics` (or a fused handler, :mod:`emulator.fusion`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from emulator import decoding, fusion, tiering
from emulator.config import Config
from emulator.counters import CYCLES, DMA_STALL_CYCLES, INSTRUCTIONS, N_COUNTERS, Summary
from emulator.errors import BudgetExceeded, ExecutionError
from emulator.semantics import SEMANTICS, SPECIALIZE, interp_cost
from emulator.state import (  # noqa: F401 - re-exported: part of this module's API
    DATAPATHS,
    FLAG_ACC_OVERFLOW,
    FLAG_ALU_SATURATION,
    FLAG_RQ_SATURATION,
    MASK64,
    RegisterFile,
    State,
    wrap64,
)
from emulator.threads import POLICY
from isa.encoding import Program, decode
from isa.spec import BY_MNEMONIC, OPCODE_LO

SCALAR_MODES = ("auto", "compiled", "python")
# "auto" starts the compiled interpreter at scalar runs at least this long, or ending in a
# branch, jump or halt (entering it costs about as much as 2-3 instructions in Python), once it
# is loaded (emulator/tiering.py: after TIER_STEPS instructions, or at once if numba's kernels
# are already loaded)
HOT_RUN = 2
SLOT_CAP = 1 << 16  # decoded handlers kept at once (programs of many distinct instructions)
# the interpreter works in int64: runs whose budgets or costs could leave it use Python
_I64_SAFE = 1 << 62
_HOT = object()  # slot marker: start the compiled interpreter here
_RQM = BY_MNEMONIC["rqm"].opcode  # the only start of a fused sequence (emulator/fusion.py)


class DecodedView(Sequence):
    """``m.decoded[pc]`` = (handler, operand dict, Instr), decoded on demand (the machine
    itself keeps the compact form). ``fused`` views give the fused handler where one starts."""

    def __init__(self, m: Machine, fused: bool) -> None:
        self._m, self._fused = m, fused

    def __len__(self) -> int:
        return len(self._m.program.words)

    def __iter__(self) -> Iterator[tuple[Any, dict[str, int], Any]]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        pc = i % n
        ins, ops = decode(self._m.program.words[pc])
        handler = SEMANTICS[ins.mnemonic]
        if self._fused:
            handler = self._m._fused_handler(pc, handler) or handler
        return handler, ops, ins


class Machine(State):
    """One emulated accelerator running one program.

    ``datapath`` is ``"fast"`` (emulator/kernels.py) or ``"reference"``; ``fuse`` lets plain
    runs on the fast datapath execute hot instruction sequences fused (emulator/fusion.py);
    ``scalar`` picks how scalar, branch and exponent instructions run: ``"compiled"`` always
    in the compiled interpreter, ``"python"`` always by their handlers, ``"auto"`` (default)
    by their handlers for the first ``tiering.TIER_STEPS`` instructions or until numba's
    kernels are loaded, then compiled for runs of at least ``HOT_RUN`` instructions or
    loops, when numba's JIT is on.
    Values, flags, faults and every counter are the same whatever the choices."""

    def __init__(self, cfg: Config, program: Program, datapath: str = "fast",
                 fuse: bool = True, scalar: str = "auto") -> None:
        super().__init__(cfg, datapath, len(program.words))
        if scalar not in SCALAR_MODES:
            raise ValueError(f"scalar must be one of {SCALAR_MODES}")
        self.program = program
        self._dec_plain: list | None = None  # handler lists a subclass assigned, if any
        self._dec_fused: list | None = None
        self.prog = _decode(program.words)  # ValueError for an invalid word, as decode()
        n = len(program.words)
        self.counts = np.zeros((max(n, 1), N_COUNTERS), dtype=np.int64)
        self._fuse = fuse and datapath == "fast"
        # vector-class instructions run in the interpreter on the fast datapath only, each
        # with a row of static costs learnt from its handler (emulator/vecops.py)
        vec = np.flatnonzero(self.prog[:, 0] >= _K_VEC0)
        if datapath != "fast":
            self.prog[vec, 0] = 0
            vec = vec[:0]
        # pcs holding the same word share one cost row (same operands, same cost for a size):
        # column 4 = the word's class, rowof[class] = its row, allocated when first learnt
        words = np.array(program.words, dtype=np.uint64)[vec] if vec.size else \
            np.zeros(0, np.uint64)
        uniq, cls = np.unique(words, return_inverse=True)
        self.prog[vec, 4] = cls.reshape(-1)
        self._rowof = np.full(max(uniq.size, 1), -1, dtype=np.int64)
        self._ccost = np.full((16, 1 + N_COUNTERS), -1, dtype=np.int64)
        self._nrows = 0
        if self._fuse:
            for pc in vec[self.prog[vec, 0] == _K_RQM].tolist():
                if pc + 2 < n and fusion.match_update(self.decoded, pc):
                    self.prog[pc, 3] |= decoding.FUSABLE
        self._kcost = _scalar_costs(cfg)
        self._kmax = int(self._kcost.max())
        # the compiled interpreter (emulator/scalar.py) once loaded, and its start marks; until
        # then _tier_at is the step count at which to load it (None: never)
        self._interp: Any = None
        self._hot: np.ndarray | None = None
        self._min_run = 1 if scalar == "compiled" else HOT_RUN
        self._tier_at: int | None = None
        if scalar == "compiled" or (scalar == "auto" and tiering.kernels_loaded()
                                    and not tiering.jit_disabled()):
            self._tier_up()
        elif scalar == "auto" and not tiering.jit_disabled():
            self._tier_at = tiering.TIER_STEPS
        # per pc, the run loop's entry: (handler, operands), shared by every pc holding the
        # same word, or _HOT; plain runs use the list _slots (fused handlers, the interpreter),
        # traced or overlapped runs and the interpreter's fallbacks the dict _plain
        self._slots: list[Any] = self._fresh_slots()
        self._plain: dict[int, Any] = {}
        self._by_word: dict[int, tuple[Any, dict[str, int]]] = {}
        self._nslots = 0
        # (step budget, cycle budget, break pc) of the current run (the fused handler reads it)
        self.limits: tuple[int, int, int | None] = (0, 0, None)
        self._views: tuple[Any, ...] = ()
        self._bind_registers()
        POLICY.config_threads = cfg.host.threads  # emulator/threads.py (process-wide)

    # ----------------------------------------------------------------- decoding
    @property
    def decoded(self) -> Sequence:
        """Per pc (handler, operands, Instr), decoded on demand. A subclass may assign its
        own list (wrapped handlers): the machine then runs every instruction by it."""
        return self._dec_plain if self._dec_plain is not None else DecodedView(self, False)

    @decoded.setter
    def decoded(self, value: Sequence) -> None:
        self._dec_plain = list(value)
        self._by_handlers()

    @property
    def decoded_fused(self) -> Sequence:
        """As :attr:`decoded`, with the fused handler where a fused sequence starts."""
        return self._dec_fused if self._dec_fused is not None else DecodedView(self, True)

    @decoded_fused.setter
    def decoded_fused(self, value: Sequence) -> None:
        self._dec_fused = list(value)
        self._by_handlers()

    def _by_handlers(self) -> None:
        """Assigned handler lists replace the decoding and the compiled interpreter."""
        self._hot = None
        self._tier_at = None
        self._slots = self._fresh_slots()
        self._plain = {}
        self._by_word.clear()

    def _fused_handler(self, pc: int, handler):
        words = self.program.words
        if not self._fuse or pc + 2 >= len(words) or words[pc] >> OPCODE_LO != _RQM:
            return None
        view = self.decoded
        if not fusion.match_update(view, pc):
            return None
        return fusion.make_update_handler(handler, tuple(view[pc + i][1] for i in range(3)))

    def _slot(self, pc: int, fused: bool) -> Any:
        """Build (and keep) the run loop's entry for ``pc``: decoded once per distinct word
        (a fused sequence, which depends on the words after it, once per pc)."""
        table = self._dec_fused if fused else self._dec_plain
        if table is not None:
            handler, ops, _ = table[pc]
            slot = (handler, ops)
            if fused:
                self._slots[pc] = slot
            else:
                self._plain[pc] = slot
            return slot
        word = self.program.words[pc]
        if self._nslots >= SLOT_CAP:  # bounded: forget them all, rebuild on demand
            self._slots = self._fresh_slots()
            self._plain = {}
            self._by_word.clear()
            self._nslots = 0
        if fused and self._hot is not None and self._hot[pc]:
            self._slots[pc] = _HOT
            return _HOT
        slot = None if fused and word >> OPCODE_LO == _RQM else self._by_word.get(word)
        if slot is None:
            ins, ops = decode(word)
            handler = SEMANTICS[ins.mnemonic]
            special = SPECIALIZE.get(ins.mnemonic)
            fast = special(ops) if special is not None and not self.overlap else handler
            fused_handler = self._fused_handler(pc, handler) if fused else None
            slot = (fused_handler or fast, ops)
            if fused_handler is None:
                self._by_word[word] = slot
            self._nslots += 1
        if fused:
            self._slots[pc] = slot
        else:
            self._plain[pc] = slot
        return slot

    def _tier_up(self) -> None:
        """Load the compiled interpreter and mark where it starts (between two instructions:
        nothing else changes)."""
        from emulator import scalar

        self._interp = scalar
        self._hot = _hot_marks(self.prog, self._min_run)
        self._tier_at = None
        self._slots = self._fresh_slots()

    def _fresh_slots(self) -> list[Any]:
        """The plain runs' slot list before anything ran: _HOT where the interpreter starts."""
        if self._hot is None:
            return [None] * len(self.program.words)
        return [_HOT if h else None for h in self._hot.tolist()]

    @property
    def fused_total(self) -> int:
        """Sequences run fused so far, by the fused handler or the interpreter."""
        return self.fused_sequences + int(self._kcost[-1, 4])

    def _learn_cost(self, pc: int, ops: dict[str, int]) -> None:
        """Store the static cost the handler of the vector-class instruction at ``pc`` just
        charged (keyed by its size) for the interpreter to charge next time."""
        ins, _ = decode(self.program.words[pc])
        key, cost = interp_cost(self, ins.mnemonic, ops)
        cls = int(self.prog[pc, 4])
        i = int(self._rowof[cls])
        if i < 0:
            i = self._nrows
            if i == len(self._ccost):
                self._ccost = np.concatenate([self._ccost, np.full_like(self._ccost, -1)])
            self._nrows += 1
            self._rowof[cls] = i
        row = self._ccost[i]
        row[:] = 0
        row[0] = key
        for k, v in cost.items():
            row[1 + k] = v

    def _bind_registers(self) -> None:
        """Make ``r``, ``e`` and ``rng`` the typed arrays the interpreter shares (a host that
        assigned plain lists gets them copied in) and refresh the interpreter's views."""
        for name, code in (("r", "q"), ("e", "q"), ("rng", "Q")):
            v = getattr(self, name)
            if not (isinstance(v, RegisterFile) and v.typecode == code):
                setattr(self, name, RegisterFile(code, [int(x) for x in v]))
        if len(self.r) != 32 or len(self.e) != 16 or len(self.rng) != 2:
            raise ValueError("register files must hold 32, 16 and 2 values")
        if not self._views or self._views[0] is not self.r or self._views[1] is not self.e \
                or self._views[2] is not self.rng:
            self._views = (self.r, self.e, self.rng, np.frombuffer(self.r, np.int64),
                           np.frombuffer(self.e, np.int64), np.frombuffer(self.rng, np.int64))

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
            break_pc: int | None = None, break_after: int = 1,
            max_seconds: float | None = None) -> Summary:
        """Run until ``halt``; raises BudgetExceeded past the step, cycle or wall-time budget
        (``budget:`` in the config unless given here; each counts from the start of this
        call; ``max_seconds`` 0 means no wall-time limit). Returns the counter summary.

        With ``break_pc``, also return (not halted) on arriving at ``break_pc`` for the
        ``break_after``-th time in this call, before executing it: a host uses this to stop at
        a loop head (e.g. to checkpoint) and then calls ``run`` again to continue."""
        self.execute(max_steps, max_cycles, break_pc, break_after, max_seconds)
        return self.summary()

    def execute(self, max_steps: int | None = None, max_cycles: int | None = None,
                break_pc: int | None = None, break_after: int = 1,
                max_seconds: float | None = None) -> None:
        """:meth:`run` without building the summary (a host running many short calls)."""
        budget = self.cfg.budget
        max_steps = budget.max_steps if max_steps is None else max_steps
        max_cycles = budget.max_cycles if max_cycles is None else max_cycles
        max_seconds = budget.max_seconds if max_seconds is None else max_seconds
        step_limit = self.steps + max_steps  # budgets count from the start of this run
        cycle_limit = self.cycles + max_cycles
        watch = _Watch(max_seconds)
        self._bind_registers()
        args = (step_limit, cycle_limit, max_steps, max_cycles, watch, break_pc, break_after)
        loop = self._loop if self.tracer is None and not self.overlap else self._loop_observed
        try:
            if tiering.jit_disabled():  # the interpreter's numpy int64 scalars wrap, warning
                with np.errstate(over="ignore"):
                    loop(*args)
            else:
                loop(*args)
        finally:
            POLICY.restore()  # BLAS threads as this run found them

    def _loop(self, step_limit: int, cycle_limit: int, max_steps: int, max_cycles: int,
              watch: _Watch, break_pc: int | None, break_after: int) -> None:
        """The run loop of plain runs: the compiled interpreter, fused handlers."""
        if self._tier_at is not None and tiering.kernels_loaded():
            self._tier_up()  # numba is loaded now anyway (a training host's first batch)
        wsoft = watch.first_limit(self.steps, step_limit)
        soft = wsoft if self._tier_at is None else min(wsoft, self._tier_at)
        n = len(self.program.words)
        cmv = self._cmv
        hits = 0
        slots = self._slots
        self.limits = (step_limit, cycle_limit, break_pc)
        small = step_limit < _I64_SAFE and cycle_limit < _I64_SAFE and self._kmax < _I64_SAFE >> 20
        compiled, run_scalar = self._compiled_entry(small)
        views = self._views
        rv, ev, gv = views[3], views[4], views[5]
        bp = -1 if break_pc is None else break_pc
        while not self.halted:
            pc = self.pc
            if not 0 <= pc < n or self.steps >= soft or self.cycles >= cycle_limit:
                if self._tier_at is not None and (self.steps >= self._tier_at
                                                  or tiering.kernels_loaded()):
                    self._tier_up()  # long enough: continue in the compiled interpreter
                    slots = self._slots
                    compiled, run_scalar = self._compiled_entry(small)
                else:
                    wsoft = self._stop(pc, n, step_limit, cycle_limit, max_steps, max_cycles,
                                       watch)
                soft = wsoft if self._tier_at is None else min(wsoft, self._tier_at)
                continue
            slot = slots[pc]
            if slot is None:
                slot = self._slot(pc, True)
                slots = self._slots
            if slot is _HOT:
                if compiled:
                    st, self.pc, self.steps, self.cycles, self.flags = run_scalar(
                        self.prog, self._kcost, self._ccost, self._rowof, rv, ev, gv,
                        self._counts,
                        self.dram, self.spad, self.acc, pc, self.steps, self.cycles,
                        self.flags, soft, cycle_limit, bp)
                    if st == _ST_HALT:
                        self.halted = True
                        break
                    if st == _ST_BREAK:
                        hits += 1
                        if hits >= break_after:
                            break
                        continue
                    if st != _ST_PY:
                        continue
                    pc = self.pc  # an instruction its handler executes (or faults on)
                    handler, ops = self._plain.get(pc) or self._slot(pc, False)
                    slots = self._slots
                    nxt = handler(self, ops)
                    if self.prog[pc, 0] >= _K_VEC0:  # teach the interpreter its cost
                        self._learn_cost(pc, ops)
                    cmv[pc * N_COUNTERS + INSTRUCTIONS] += 1
                    self.steps += 1
                    self.pc = pc = pc + 1 if nxt is None else nxt
                    if pc == break_pc:
                        hits += 1
                        if hits >= break_after:
                            break
                    continue
                slot = self._plain.get(pc) or self._slot(pc, False)
                slots = self._slots
            handler, ops = slot
            nxt = handler(self, ops)
            cmv[pc * N_COUNTERS + INSTRUCTIONS] += 1
            self.steps += 1
            self.pc = pc = pc + 1 if nxt is None else nxt
            if pc == break_pc:
                hits += 1
                if hits >= break_after:
                    break

    def _compiled_entry(self, small: bool) -> tuple[bool, Any]:
        """(whether the run loop enters the compiled interpreter, its entry point)."""
        interp = self._interp
        if interp is None or self._hot is None or not small:
            return False, None
        return True, interp.run_scalar_ints if tiering.jit_disabled() else interp.run_scalar

    def _loop_observed(self, step_limit: int, cycle_limit: int, max_steps: int,
                       max_cycles: int, watch: _Watch, break_pc: int | None,
                       break_after: int) -> None:
        """The run loop with a tracer or DMA overlap: every instruction by its handler."""
        soft = watch.first_limit(self.steps, step_limit)
        n = len(self.program.words)
        cmv = self._cmv
        tracer = self.tracer
        overlap = self.overlap
        hits = 0
        while not self.halted:
            pc = self.pc
            if not 0 <= pc < n or self.steps >= soft or self.cycles >= cycle_limit:
                soft = self._stop(pc, n, step_limit, cycle_limit, max_steps, max_cycles, watch)
                continue
            handler, ops = self._plain.get(pc) or self._slot(pc, False)
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

    def _stop(self, pc: int, n: int, step_limit: int, cycle_limit: int, max_steps: int,
              max_cycles: int, watch: _Watch) -> int:
        """The run loop cannot go on at ``pc`` as it stands: raise why (outside the program,
        then a budget), or, at the end of a wall-clock window, check the clock and return the
        next window's step limit."""
        if not 0 <= pc < n:
            raise ExecutionError(f"pc {pc} outside the program (0..{n - 1}); missing halt?", pc)
        if self.steps >= step_limit:
            raise BudgetExceeded(f"step budget of {max_steps} exhausted", pc, self.steps,
                                 self.cycles)
        if self.cycles >= cycle_limit:
            raise BudgetExceeded(f"cycle budget of {max_cycles} exhausted", pc, self.steps,
                                 self.cycles)
        if watch.expired():
            raise BudgetExceeded(f"wall-time budget of {watch.seconds:g} s exhausted "
                                 "(budget.max_seconds)", pc, self.steps, self.cycles)
        return watch.next_limit(self.steps, step_limit)

    def restart(self, pc: int = 0) -> None:
        """Continue from ``pc`` after a halt (state, counters and RNG are kept)."""
        self.pc, self.halted = pc, False


class _Watch:
    """The wall-time budget without a clock read per step: the run loop stops at the end of a
    window of steps (a soft step limit), reads the clock, and sizes the next window to last
    about ``TICK`` seconds. Time numba spends compiling kernels is not counted."""

    TICK = 0.02
    MAX_WINDOW = 1 << 24

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.window = 16
        self.last = time.perf_counter()
        self.start = self.last
        self.compiled = tiering.compile_seconds()
        self.limited = seconds > 0

    def first_limit(self, steps: int, step_limit: int) -> int:
        return min(step_limit, steps + self.window) if self.limited else step_limit

    def expired(self) -> bool:
        if not self.limited:
            return False
        used = time.perf_counter() - self.start - (tiering.compile_seconds() - self.compiled)
        return used >= self.seconds

    def next_limit(self, steps: int, step_limit: int) -> int:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        grow = self.window * 4 if dt <= 0 else int(self.window * self.TICK / dt)
        self.window = max(1, min(grow, self.window * 4, self.MAX_WINDOW))
        return min(step_limit, steps + self.window)


_K_VEC0, _K_RQM = decoding.K_VEC0, decoding.K_RQM
_ST_PY, _ST_BREAK, _ST_HALT = decoding.ST_PY, decoding.ST_BREAK, decoding.ST_HALT
_decode = decoding.decode_program
_scalar_costs = decoding.kind_costs
_hot_marks = decoding.hot_marks
