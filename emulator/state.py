"""Architectural state of the lpemu machine as plain arrays, and what instructions use of it.

State
-----
``dram`` (uint8, byte-addressed), ``spad`` scratchpad (uint8; INT8/INT16 little-endian
elements), ``acc`` accumulator memory (int32 entries holding ``accumulator.bits``-wide values,
bits <= 32; every write is fitted to the width first),
``r`` 32 scalar registers (64-bit, r0 = 0), ``e`` 16 exponent registers (32-bit signed),
``rng`` = [seed, counter] (64-bit each), ``flags`` (sticky bits), ``pc``. The register files
are :class:`RegisterFile` typed arrays that index, iterate and compare like lists of ints.

Counters are kept per pc: ``counts[pc, counter]``; per-label and total views are row sums.
The instruction semantics (:mod:`emulator.semantics`) act on a :class:`State`; the run loop
that decodes and steps a program is :class:`emulator.machine.Machine`, a subclass.
"""

from __future__ import annotations

import hashlib
from array import array

import numpy as np

from emulator import limits, reference, tiering
from emulator.config import Config
from emulator.counters import CYCLES, DMA_STALL_CYCLES, N_COUNTERS, Summary, summarize
from emulator.errors import ConfigError, ExecutionError, MemoryAccessError
from emulator.timing import HOOKS
from isa.conventions import (  # noqa: F401 - re-exported: the sticky flag bits
    FLAG_ACC_OVERFLOW,
    FLAG_ALU_SATURATION,
    FLAG_RQ_SATURATION,
)

MASK64 = (1 << 64) - 1

DATAPATHS = ("fast", "reference")
_I8, _I16 = np.dtype(np.int8), np.dtype("<i2")


class RegisterFile(array):
    """A register file as a typed array (``"q"`` int64 or ``"Q"`` uint64): indexes, slices,
    iterates and compares (``==`` with a list or tuple) like a list of ints, and its memory is
    shared without copies with the compiled scalar interpreter (emulator/scalar.py)."""

    def __getitem__(self, i):  # type: ignore[override]
        v = array.__getitem__(self, i)
        return RegisterFile(self.typecode, v) if type(i) is slice else v

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return array.__eq__(self, other)

    def __ne__(self, other: object) -> bool:  # type: ignore[override]
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


def wrap64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def check_memory(cfg: Config, n_instructions: int = 0) -> int:
    """Check that a machine fits the memory budget (``budget.max_memory_bytes``; 0: a fraction
    of the memory available now, emulator/limits.py) before anything is allocated: its DRAM,
    scratchpad and accumulator memory, ``n_instructions`` of program, and the working memory one
    instruction may need beside them. Returns the bytes the budget leaves beyond the state;
    raises ConfigError naming the largest part otherwise."""
    budget = limits.memory_budget(cfg.budget.max_memory_bytes)
    parts = {
        "memory.dram_bytes": cfg.memory.dram_bytes,
        "memory.scratchpad_bytes": cfg.memory.scratchpad_bytes
        * (1 + limits.WORK_BYTES_PER_SPAD_BYTE),
        "accumulator.entries": cfg.accumulator.entries * (4 + limits.WORK_BYTES_PER_ACC_ENTRY),
        "budget.max_memory_bytes": n_instructions * limits.BYTES_PER_INSTRUCTION,
    }
    need = sum(parts.values())
    if need > budget:
        key = max(parts, key=parts.__getitem__)
        how = "budget.max_memory_bytes" if cfg.budget.max_memory_bytes else \
            f"{limits.AUTO_MEMORY_FRACTION:.0%} of the memory available now; set " \
            "budget.max_memory_bytes to change it"
        raise ConfigError(
            f"the machine needs {limits.fmt_bytes(need)}: DRAM {cfg.memory.dram_bytes:,}, "
            f"scratchpad {cfg.memory.scratchpad_bytes:,} and accumulator "
            f"{4 * cfg.accumulator.entries:,} bytes, {n_instructions:,} instructions, and the "
            f"working memory of one instruction; over the memory budget of "
            f"{limits.fmt_bytes(budget)} ({how})", key)
    state = (cfg.memory.dram_bytes + cfg.memory.scratchpad_bytes + 4 * cfg.accumulator.entries
             + n_instructions * limits.BYTES_PER_INSTRUCTION)
    return budget - state


class State:
    """The architectural state of one emulated accelerator, its counters and datapath.

    ``datapath`` is ``"fast"`` (emulator/kernels.py) or ``"reference"`` (emulator/reference.py);
    values, flags, faults and every counter are the same whatever the choice."""

    def __init__(self, cfg: Config, datapath: str = "fast", n_instructions: int = 0) -> None:
        if datapath not in DATAPATHS:
            raise ValueError(f"datapath must be one of {sorted(DATAPATHS)}")
        # host memory beyond the state that one instruction may still use (checked first)
        self.work_bytes = check_memory(cfg, n_instructions)
        self.cfg = cfg
        # the kernels (or, until they are loaded, small operations on the reference datapath:
        # emulator/tiering.py)
        self.dp = reference if datapath == "reference" else tiering.fast_datapath(self)
        self.dram = np.zeros(cfg.memory.dram_bytes, dtype=np.uint8)
        self.spad = np.zeros(cfg.memory.scratchpad_bytes, dtype=np.uint8)
        self.acc = np.zeros(cfg.accumulator.entries, dtype=np.int32)
        self.r = RegisterFile("q", bytes(8 * 32))
        self.e = RegisterFile("q", bytes(8 * 16))
        self.rng = RegisterFile("Q", bytes(16))
        self.flags = 0
        self.pc = 0
        self.steps = 0
        self.cycles = 0
        self.halted = False
        self.fused_sequences = 0  # diagnostics: sequences run fused (emulator/fusion.py)
        # optional timeline recorder: any object with record(pc, start_cycle, end_cycle)
        self.tracer = None
        # DMA overlap (dma.overlap): the engine's timeline and its in-flight transfers
        self.overlap = cfg.dma.overlap
        self._touch: list[tuple[str, int, int]] | None = [] if self.overlap else None
        self.dma_free = 0
        self.inflight: list[tuple[str, int, int, int]] = []  # (memory, lo, hi, end cycle)
        self._dma_span: tuple[int, int] | None = None
        self.acc_wrap = cfg.accumulator.overflow == "wrap"
        self.acc_bits = cfg.accumulator.bits
        self._costs: dict[tuple, dict[int, int]] = {}  # see cost()
        self.counts = np.zeros((1, N_COUNTERS), dtype=np.int64)

    @property
    def counts(self) -> np.ndarray:
        """The counter matrix, ``counts[pc, counter]`` (int64)."""
        return self._counts

    @counts.setter
    def counts(self, value: np.ndarray) -> None:
        arr = np.ascontiguousarray(value, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != N_COUNTERS:
            raise ValueError(f"counter matrix must have shape (n, {N_COUNTERS})")
        self._counts = arr
        # a flat int64 view: Python-level increments through it are ~3x cheaper than numpy
        # scalar indexing, and write straight into the matrix
        self._cmv = memoryview(arr).cast("B").cast("q")

    # ----------------------------------------------------------------- memory access helpers
    def _check(self, memory: str, size: int, start: int, length: int) -> None:
        if length < 0:
            raise ExecutionError(f"negative length {length} for {memory} access", self.pc)
        if start < 0 or start + length > size:
            bad = start if start < 0 or start >= size else size
            raise MemoryAccessError(
                f"{memory} access [{start:#x}, {start + length:#x}) outside [0, {size:#x})",
                self.pc,
                memory,
                bad,
            )
        if self._touch is not None:
            self._touch.append((memory, start, start + length))

    def sp_elems(self, addr: int, count: int, elem_bytes: int) -> np.ndarray:
        """A typed view of ``count`` INT8/INT16 elements of the scratchpad at byte ``addr``."""
        end = addr + count * elem_bytes
        if addr < 0 or count < 0 or end > self.spad.size or self._touch is not None:
            self._check("scratchpad", self.spad.size, addr, count * elem_bytes)
        return self.spad[addr:end].view(_I8 if elem_bytes == 1 else _I16)

    def acc_range(self, addr: int, count: int) -> np.ndarray:
        end = addr + count
        if addr < 0 or count < 0 or end > self.acc.size or self._touch is not None:
            self._check("accumulator", self.acc.size, addr, count)
        return self.acc[addr:end]

    def check_dram(self, addr: int, nbytes: int) -> None:
        self._check("dram", self.dram.size, addr, nbytes)

    # ----------------------------------------------------------------- bookkeeping
    def charge(self, cost: dict[int, int]) -> None:
        mv = self._cmv
        base = self.pc * N_COUNTERS
        for k, v in cost.items():
            if v:
                mv[base + k] += v
                if k == CYCLES:
                    self.cycles += v

    def charge_counts(self, *pairs: int) -> None:
        """Add event counts (no cycles) to the current pc: ``counter, n, counter, n, ...``."""
        mv = self._cmv
        base = self.pc * N_COUNTERS
        for i in range(0, len(pairs), 2):
            mv[base + pairs[i]] += pairs[i + 1]

    def charge_dma(self, cost: dict[int, int], ranges: list[tuple[str, int, int]]) -> None:
        """Charge a DMA transfer. Without ``dma.overlap`` the core waits for it; with it, the
        transfer occupies the DMA engine from when the engine is free and the core only spends
        one issue cycle (plus any wait for the busy engine)."""
        if not self.overlap:
            self.charge(cost)
            return
        t = self.cycles
        start = max(t, self.dma_free)
        end = start + cost.get(CYCLES, 0)
        self.dma_free = end
        self.inflight.extend((mem, lo, hi, end) for mem, lo, hi in ranges if hi > lo)
        self._dma_span = (start, end)
        cost = dict(cost)
        cost[CYCLES] = start - t + 1
        cost[DMA_STALL_CYCLES] = start - t
        self.charge(cost)

    def _cached_cost(self, key: tuple) -> tuple[dict[int, int], tuple[tuple[int, int], ...]]:
        """(cost dict, its nonzero items) of ``key`` = (hook, *args). Costs are pure functions
        of the config and the arguments, so each is computed once per machine (a loop repeats
        the same few)."""
        c = self._costs.get(key)
        if c is None:
            if len(self._costs) >= 4096:  # programs with ever-new sizes: stay bounded
                self._costs.clear()
            d = HOOKS[key[0]](self.cfg, *key[1:])
            c = self._costs[key] = (d, tuple((k, v) for k, v in d.items() if v))
        return c

    def cost(self, hook: str, *args) -> dict[int, int]:
        """The closed-form cost of ``hook`` (emulator/timing.py) for these arguments: a fresh
        dict the caller may change."""
        return dict(self._cached_cost((hook, *args))[0])

    def charge_cost(self, hook: str, *args) -> None:
        """``charge(cost(hook, *args))`` without building a dict."""
        key = (hook, *args)
        c = self._costs.get(key) or self._cached_cost(key)
        mv = self._cmv
        base = self.pc * N_COUNTERS
        for k, v in c[1]:
            mv[base + k] += v
            if k == CYCLES:
                self.cycles += v

    def set_reg(self, rd: int, value: int) -> None:
        if rd:
            self.r[rd] = wrap64(value)

    def summary(self) -> Summary:
        return summarize(self.counts, self.cfg)

    # ----------------------------------------------------------------- host access
    def load_dram(self, addr: int, data: bytes | np.ndarray) -> None:
        buf = np.frombuffer(bytes(data) if isinstance(data, bytes) else data.tobytes(), np.uint8)
        self.check_dram(addr, buf.size)
        self.dram[addr : addr + buf.size] = buf

    def read_dram(self, addr: int, nbytes: int) -> bytes:
        self.check_dram(addr, nbytes)
        return self.dram[addr : addr + nbytes].tobytes()

    def digest(self) -> str:
        """SHA-256 over every piece of architectural state (not counters). The memories are
        hashed in place, a slice at a time (no copy of DRAM)."""
        h = hashlib.sha256()
        for arr in (self.dram, self.spad):
            for i in range(0, arr.size, 1 << 24):
                h.update(memoryview(arr[i : i + (1 << 24)]))
        for i in range(0, self.acc.size, 1 << 21):  # acc as int64 words, as ever
            h.update(self.acc[i : i + (1 << 21)].astype(np.int64).tobytes())
        h.update(np.array(list(self.r) + list(self.e), dtype=np.int64).tobytes())
        h.update(np.array(self.rng, dtype=np.uint64).tobytes())
        h.update(np.array([self.flags, self.pc, int(self.halted)], dtype=np.int64).tobytes())
        return h.hexdigest()
