"""The compiled scalar interpreter: stretches of scalar, branch and exponent instructions (and
the scratchpad DMA ``dmald``/``dmast``, which firmware interleaves with them) run in one numba
loop between coarse (matrix, vector, accumulator) instructions.

A program is decoded once, vectorized, into ``prog``, an int64 ``[n, 4]`` array: per pc the
instruction kind (0 for a coarse instruction, which the Python run loop dispatches) and up to
three operand fields (register numbers, immediate or branch target); 32 bytes per instruction.

:func:`run_scalar` executes from ``pc`` until it meets a coarse instruction, a ``halt``, the
break point, the end of the step window or the cycle budget, or an instruction it leaves to
Python. It implements exactly the pseudo-code of ``isa/spec.py`` (the same as
:mod:`emulator.semantics`) on the machine's own register arrays, and charges exactly the
closed-form costs of :mod:`emulator.timing` to the same counters. It never faults: an
instruction that would fault (an address outside a memory, an exponent outside 32 bits,
overlapping DMA destination rows), or whose operands it cannot compute in int64 without
overflow, is returned to
Python untouched (status ``PY``), whose handler then raises the typed error with the pc (or
executes it). Scalar registers wrap at 64 bits in both (numba's int64 arithmetic wraps; with
``NUMBA_DISABLE_JIT=1`` numpy scalars wrap under ``errstate(over="ignore")``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from emulator import (
    jit,  # noqa: F401 - numba's numpy support without scipy
    vecops,
)
from emulator.counters import (
    CYCLES,
    DRAM_RD,
    DRAM_WR,
    INSTRUCTIONS,
    N_COUNTERS,
    SPAD_RD,
    SPAD_WR,
)
from emulator.kernels import ALU_CODES
from emulator.timing import HOOKS
from emulator.vecops import rows_fit
from isa.spec import BY_MNEMONIC, OPCODE_LO, Field

# operand fields of each scalar mnemonic, in prog columns (a, b, c); c holds the immediate or
# the branch target. The order defines the kind codes (1..); 0 is "coarse".
FIELDS: dict[str, tuple[str | None, str | None, str | None]] = {
    "li": ("rd", None, "imm"),
    "addi": ("rd", "ra", "imm"),
    "add": ("rd", "ra", "rb"),
    "sub": ("rd", "ra", "rb"),
    "mul": ("rd", "ra", "rb"),
    "and": ("rd", "ra", "rb"),
    "or": ("rd", "ra", "rb"),
    "xor": ("rd", "ra", "rb"),
    "sll": ("rd", "ra", "rb"),
    "sra": ("rd", "ra", "rb"),
    "srl": ("rd", "ra", "rb"),
    "slt": ("rd", "ra", "rb"),
    "lih": ("rd", None, "imm"),
    "beq": ("ra", "rb", "target"),
    "bne": ("ra", "rb", "target"),
    "blt": ("ra", "rb", "target"),
    "bge": ("ra", "rb", "target"),
    "jmp": (None, None, "target"),
    "halt": (None, None, None),
    "nop": (None, None, None),
    "eset": ("ed", None, "imm"),
    "eadd": ("ed", "ea", "eb"),
    "eaddi": ("ed", "ea", "imm"),
    "emv": ("rd", "ea", None),
    "esetr": ("ed", "ra", None),
    "flags": ("rd", None, None),
    "clrflags": (None, None, None),
    "accrd": ("rd", "racc", None),
    "ldw": ("rd", "ra", "imm"),
    "stw": ("rs", "ra", "imm"),
    "rngseed": (None, "ra", None),
    "rngctr": (None, "ra", None),
    "rngrd": ("rd", "sel", None),
    # DMA: column c packs the six register numbers (scratchpad, dram, rows, row bytes, dram
    # stride, scratchpad stride), 5 bits each from bit 0
    "dmald": (None, None, "*"),
    "dmast": (None, None, "*"),
    # requantizer, vector ALU, softmax units, lazy update, accumulator DMA: fields packed as
    # emulator/vecops.py lists them (registers, exponent registers, enums and flags)
    **{mn: ("@r", "@e", "@o") for mn in vecops.MNEMONICS},
}
DMA_REGS = ("rsp", "rdram", "rrows", "rbytes", "rdstride", "rsstride")
KIND: dict[str, int] = {mn: i + 1 for i, mn in enumerate(FIELDS)}
FIELDS_SCALAR = len(FIELDS) - len(vecops.MNEMONICS)  # kinds before the vector ones
N_KINDS = len(FIELDS) + 1
CONTROL = ("beq", "bne", "blt", "bge", "jmp", "halt")
(K_LI, K_ADDI, K_ADD, K_SUB, K_MUL, K_AND, K_OR, K_XOR, K_SLL, K_SRA, K_SRL, K_SLT, K_LIH,
 K_BEQ, K_BNE, K_BLT, K_BGE, K_JMP, K_HALT, K_NOP, K_ESET, K_EADD, K_EADDI, K_EMV, K_ESETR,
 K_FLAGS, K_CLRFLAGS, K_ACCRD, K_LDW, K_STW, K_RNGSEED, K_RNGCTR, K_RNGRD, K_DMALD,
 K_DMAST) = range(1, 1 + FIELDS_SCALAR)
K_VEC0 = 1 + FIELDS_SCALAR  # the first vector kind
K_RQM = KIND["rqm"]
# per kind: the vecops class and ALU code of a vector kind (-1 elsewhere)
VCLS = np.full(N_KINDS, -1, np.int64)
VCODE = np.zeros(N_KINDS, np.int64)
for _mn in vecops.MNEMONICS:
    VCLS[KIND[_mn]] = vecops.OPCLASS[_mn]
    VCODE[KIND[_mn]] = ALU_CODES.get(_mn, 0)

# run_scalar's status: why it returned
ST_COARSE, ST_STOP, ST_PY, ST_BREAK, ST_HALT = range(5)

EXP_MIN, EXP_MAX = -(1 << 31), (1 << 31) - 1
COST_PAIRS = 3  # counter increments per kind beyond instructions and cycles

# the cost hook (and its arguments) of each scalar kind: emulator/timing.py
_COST_CALL: dict[str, tuple] = {mn: (BY_MNEMONIC[mn].cost,) for mn in FIELDS}
_COST_CALL["ldw"] = ("scalar_mem", False)
_COST_CALL["stw"] = ("scalar_mem", True)
for _mn in ("dmald", "dmast", *vecops.MNEMONICS):  # sized: per transfer, or from ccost
    del _COST_CALL[_mn]


def kind_costs(cfg) -> np.ndarray:
    """Per kind: ``[cycles, counter, n, counter, n, counter, n]`` from the timing hooks; the
    extra last row holds the DMA engine's ``[latency, bytes per cycle]`` (its cost hook,
    ``latency + ceil(bytes / bytes_per_cycle)``, is evaluated per transfer) and the
    accumulator's ``[bits, wrap]``, then a count of the fused sequences the interpreter ran."""
    out = np.zeros((N_KINDS + 1, 1 + 2 * COST_PAIRS), dtype=np.int64)
    out[N_KINDS, 0] = cfg.dma.latency_cycles
    out[N_KINDS, 1] = cfg.dma.bytes_per_cycle
    out[N_KINDS, 2] = cfg.accumulator.bits
    out[N_KINDS, 3] = int(cfg.accumulator.overflow == "wrap")
    for mn, call in _COST_CALL.items():
        cost = HOOKS[call[0]](cfg, *call[1:])
        row = out[KIND[mn]]
        row[0] = cost.get(CYCLES, 0)
        extra = [(k, v) for k, v in cost.items() if k != CYCLES and v]
        if len(extra) > COST_PAIRS:  # pragma: no cover - a new hook with more counters
            raise ValueError(f"cost of {mn} has more than {COST_PAIRS} counters")
        for j, (k, v) in enumerate(extra):
            row[1 + 2 * j], row[2 + 2 * j] = k, v
    return out


def _field_values(w: np.ndarray, f: Field) -> np.ndarray:
    raw = ((w >> np.uint64(f.lo)) & np.uint64(f.mask)).astype(np.int64)
    if f.kind == "simm":
        raw -= ((raw >> (f.width - 1)) & 1) << f.width
    return raw


def decode_program(words: list[int]) -> np.ndarray:
    """The ``[n, 5]`` int64 decode of a program (kind, fields a, b, c, and a cost-row column
    the machine fills for vector kinds); raises ValueError (as ``isa.encoding.decode`` does,
    for the first bad word) on an invalid word."""
    from isa.encoding import decode, first_bad_word

    n = len(words)
    prog = np.zeros((n, 5), dtype=np.int64)
    if n == 0:
        return prog
    bad = first_bad_word(words)
    if bad >= 0:
        decode(words[bad])  # raises its ValueError
    w = np.array(words, dtype=np.uint64)
    op = (w >> np.uint64(OPCODE_LO)).astype(np.int64)
    for mn, cols in FIELDS.items():
        ins = BY_MNEMONIC[mn]
        sel = np.flatnonzero(op == ins.opcode)
        if sel.size == 0:
            continue
        ws = w[sel]
        prog[sel, 0] = KIND[mn]
        if cols[0] == "@r":
            for col, names, width in zip((1, 2, 3), vecops.PACK[mn], (5, 4, 4), strict=True):
                packed = np.zeros(sel.size, dtype=np.int64)
                for i, f in enumerate(names):
                    packed |= _field_values(ws, ins.by_name[f]) << (width * i)
                prog[sel, col] = packed
            continue
        for col, name in enumerate(cols, start=1):
            if name == "*":
                packed = np.zeros(sel.size, dtype=np.int64)
                for i, reg in enumerate(DMA_REGS):
                    packed |= _field_values(ws, ins.by_name[reg]) << (5 * i)
                prog[sel, col] = packed
            elif name is not None:
                prog[sel, col] = _field_values(ws, ins.by_name[name])
    return prog


_CONTROL_KINDS = np.array([KIND[mn] for mn in CONTROL])


def hot_marks(prog: np.ndarray, min_run: int) -> np.ndarray:
    """Per pc, whether the compiled interpreter should start there: a pc it can run from
    which the straight-line run of such instructions (up to the next coarse one) is at least
    ``min_run`` long or ends in a branch, jump or halt (a loop the firmware may spin in).
    Vectorized (numpy): no compiled function to load at start-up."""
    n = prog.shape[0]
    kind = prog[:, 0]
    idx = np.arange(n)
    big = np.int64(n + 1)

    def next_at_or_after(mask: np.ndarray) -> np.ndarray:
        pos = np.where(mask, idx, big)
        return np.minimum.accumulate(pos[::-1])[::-1]

    next_coarse = next_at_or_after(kind == 0)
    next_ctrl = next_at_or_after(np.isin(kind, _CONTROL_KINDS))
    ends_in_ctrl = next_ctrl < next_coarse
    run = np.where(ends_in_ctrl, next_ctrl + 1, np.minimum(next_coarse, n)) - idx
    return (kind != 0) & (ends_in_ctrl | (run >= min_run))


def _memcpy_py(dst, d0, src, s0, n):  # the same, as Python (NUMBA_DISABLE_JIT=1)
    dst[d0 : d0 + n] = src[s0 : s0 + n]


@intrinsic
def _memcpy_llvm(typingctx, dst, d0, src, s0, n):
    """``dst[d0 : d0 + n] = src[s0 : s0 + n]`` for byte arrays that do not overlap, by
    ``llvm.memcpy`` (numba's slice assignment copies byte by byte, ~15x slower)."""
    def codegen(context, builder, sig, args):
        dty, _, sty, _, _ = sig.args
        dp = cgutils.get_item_pointer(context, builder, dty,
                                      context.make_array(dty)(context, builder, args[0]),
                                      [args[1]])
        sp = cgutils.get_item_pointer(context, builder, sty,
                                      context.make_array(sty)(context, builder, args[2]),
                                      [args[3]])
        cgutils.raw_memcpy(builder, dp, sp, args[4], 1)
        return context.get_dummy_value()
    return types.none(dst, d0, src, s0, n), codegen


_memcpy = _memcpy_py if numba.config.DISABLE_JIT else _memcpy_llvm


@njit(cache=True, inline="always")
def _copy_rows(src, s0, sstride, dst, d0, dstride, rows, nb):  # pragma: no cover - compiled
    """Copy ``rows`` rows of ``nb`` bytes (different arrays; destination rows disjoint)."""
    if rows == 1 or (sstride == nb and dstride == nb):
        _memcpy(dst, d0, src, s0, rows * nb)
        return
    for i in range(rows):
        _memcpy(dst, d0 + i * dstride, src, s0 + i * sstride, nb)


@njit(cache=True)
def run_scalar(prog, kcost, ccost, rowof, r, e, rng, counts, dram, spad, acc, pc, steps,
               cycles, flags, step_stop, cycle_limit, break_pc):  # pragma: no cover - compiled
    """Run scalar instructions from ``pc``; returns ``(status, pc, steps, cycles, flags)``.

    ``r``/``e`` are the int64 register files, ``rng`` the generator state as int64 bit
    patterns, ``counts`` the ``[n, N_COUNTERS]`` matrix. Before each instruction it returns
    ``ST_STOP`` if the pc is outside the program, ``steps >= step_stop`` or ``cycles >=
    cycle_limit`` (the caller decides which error, if any), ``ST_COARSE`` at a coarse
    instruction and ``ST_PY`` at one Python must execute; after one, ``ST_HALT`` (halted) and
    ``ST_BREAK`` on arriving at ``break_pc``."""
    n = prog.shape[0]
    dram_n = dram.shape[0]
    spad_n = spad.shape[0]
    acc_n = acc.shape[0]
    one = np.int64(1)
    while True:
        if pc < 0 or pc >= n or steps >= step_stop or cycles >= cycle_limit:
            return ST_STOP, pc, steps, cycles, flags
        k = prog[pc, 0]
        if k == 0:
            return ST_COARSE, pc, steps, cycles, flags
        a = prog[pc, 1]
        b = prog[pc, 2]
        c = prog[pc, 3]
        nxt = pc + 1
        if k >= K_VEC0:
            if k == K_RQM and c & vecops.FUSABLE and pc + 2 < n:
                done, fl, cyc = vecops.exec_update(
                    a, b, c, prog[pc + 2, 1], prog[pc + 2, 2], rowof[prog[pc, 4]],
                    rowof[prog[pc + 1, 4]], rowof[prog[pc + 2, 4]], r, e, counts, ccost, spad,
                    acc, pc, flags, steps, step_stop, cycles, cycle_limit, break_pc)
                if done:
                    kcost[N_KINDS, 4] += 1  # diagnostics: sequences run fused
                    flags = fl
                    counts[pc, INSTRUCTIONS] += 1
                    cycles += cyc
                    steps += 3
                    pc += 3
                    if pc == break_pc:
                        return ST_BREAK, pc, steps, cycles, flags
                    continue
            st, fl, cyc = vecops.exec_vector(
                VCLS[k], VCODE[k], a, b, c, rowof[prog[pc, 4]], r, e, rng, counts, ccost, spad,
                acc, dram, pc, flags, kcost[N_KINDS, 2], kcost[N_KINDS, 3] != 0)
            if st != vecops.OK:
                return ST_PY, pc, steps, cycles, flags
            flags = fl
            counts[pc, INSTRUCTIONS] += 1
            cycles += cyc
            steps += 1
            pc = nxt
            if pc == break_pc:
                return ST_BREAK, pc, steps, cycles, flags
            continue
        if k == K_LI:
            if a != 0:
                r[a] = c
        elif k == K_ADDI:
            if a != 0:
                r[a] = r[b] + c
        elif k == K_BNE:
            if r[a] != r[b]:
                nxt = c
        elif k == K_BEQ:
            if r[a] == r[b]:
                nxt = c
        elif k == K_BLT:
            if r[a] < r[b]:
                nxt = c
        elif k == K_BGE:
            if r[a] >= r[b]:
                nxt = c
        elif k == K_JMP:
            nxt = c
        elif k == K_LIH:  # (imm << 32) | low 32 bits of r[rd]
            if a != 0:
                r[a] = (c << 32) | (r[a] & np.int64(0xFFFFFFFF))
        elif k <= K_SLT:  # three-register ALU ops
            x = r[b]
            y = r[c]
            if k == K_ADD:
                v = x + y
            elif k == K_SUB:
                v = x - y
            elif k == K_MUL:
                v = x * y
            elif k == K_AND:
                v = x & y
            elif k == K_OR:
                v = x | y
            elif k == K_XOR:
                v = x ^ y
            elif k == K_SLL:
                v = x << (y & 63)
            elif k == K_SRA:
                v = x >> (y & 63)
            elif k == K_SRL:  # (x mod 2**64) >> s, in int64: a masked arithmetic shift
                s = y & 63
                v = x if s == 0 else (x >> s) & ((one << (64 - s)) - one)
            else:
                v = one if x < y else np.int64(0)
            if a != 0:
                r[a] = v
        elif k == K_ESET or k == K_EADD or k == K_EADDI or k == K_ESETR:
            if k == K_ESET:
                v = c
            elif k == K_ESETR:
                v = r[b]
            else:
                x = e[b]
                y = e[c] if k == K_EADD else c
                if x < EXP_MIN or x > EXP_MAX or y < EXP_MIN or y > EXP_MAX:
                    return ST_PY, pc, steps, cycles, flags
                v = x + y
            if v < EXP_MIN or v > EXP_MAX:  # the handler raises the exponent-range fault
                return ST_PY, pc, steps, cycles, flags
            e[a] = v
        elif k == K_EMV:
            if a != 0:
                r[a] = e[b]
        elif k == K_HALT:
            nxt = pc
        elif k == K_NOP:
            pass
        elif k == K_FLAGS:
            if a != 0:
                r[a] = flags
        elif k == K_CLRFLAGS:
            flags = 0
        elif k == K_ACCRD:
            addr = r[b]
            if addr < 0 or addr >= acc_n:
                return ST_PY, pc, steps, cycles, flags
            if a != 0:
                r[a] = np.int64(acc[addr])
        elif k == K_LDW or k == K_STW:
            base = r[b]
            if base < -(one << 40) or base > (one << 40):  # outside DRAM for any imm
                return ST_PY, pc, steps, cycles, flags
            addr = base + c
            if addr < 0 or addr > dram_n - 4:
                return ST_PY, pc, steps, cycles, flags
            if k == K_LDW:
                v = (np.int64(dram[addr]) | (np.int64(dram[addr + 1]) << 8)
                     | (np.int64(dram[addr + 2]) << 16) | (np.int64(dram[addr + 3]) << 24))
                if v >= (one << 31):
                    v -= one << 32
                if a != 0:
                    r[a] = v
            else:
                v = r[a]
                for i in range(4):
                    dram[addr + i] = np.uint8((v >> (8 * i)) & 0xFF)
        elif k == K_RNGSEED:
            rng[0] = r[b]
            rng[1] = 0
        elif k == K_RNGCTR:
            rng[1] = r[b]
        elif k == K_RNGRD:
            if a != 0:
                r[a] = rng[b]
        elif k == K_DMALD or k == K_DMAST:
            sa = r[c & 31]
            da = r[(c >> 5) & 31]
            rows = r[(c >> 10) & 31]
            nb = r[(c >> 15) & 31]
            ds = r[(c >> 20) & 31]
            ss = r[(c >> 25) & 31]
            if rows < 0 or nb < 0 or ds < 0 or ss < 0:
                return ST_PY, pc, steps, cycles, flags
            total = np.int64(0)
            if rows != 0 and nb != 0:
                to_dram = k == K_DMAST
                if (not rows_fit(da, rows, nb, ds, dram_n)
                        or not rows_fit(sa, rows, nb, ss, spad_n)
                        or (rows > 1 and (ds if to_dram else ss) < nb)):
                    return ST_PY, pc, steps, cycles, flags  # the handler raises the fault
                total = rows * nb
                if to_dram:
                    _copy_rows(spad, sa, ss, dram, da, ds, rows, nb)
                else:
                    _copy_rows(dram, da, ds, spad, sa, ss, rows, nb)
            lat = kcost[N_KINDS, 0]
            bw = kcost[N_KINDS, 1]
            cyc = lat + (total + bw - 1) // bw
            counts[pc, INSTRUCTIONS] += 1
            counts[pc, CYCLES] += cyc
            if k == K_DMAST:
                counts[pc, SPAD_RD] += total
                counts[pc, DRAM_WR] += total
            else:
                counts[pc, DRAM_RD] += total
                counts[pc, SPAD_WR] += total
            cycles += cyc
            steps += 1
            pc = nxt
            if pc == break_pc:
                return ST_BREAK, pc, steps, cycles, flags
            continue
        else:
            return ST_PY, pc, steps, cycles, flags
        cyc = kcost[k, 0]
        counts[pc, INSTRUCTIONS] += 1
        counts[pc, CYCLES] += cyc
        for j in range(COST_PAIRS):
            inc = kcost[k, 2 + 2 * j]
            if inc != 0:
                counts[pc, kcost[k, 1 + 2 * j]] += inc
        cycles += cyc
        steps += 1
        if k == K_HALT:
            return ST_HALT, pc, steps, cycles, flags
        pc = nxt
        if pc == break_pc:
            return ST_BREAK, pc, steps, cycles, flags


def run_scalar_ints(*args):  # type: ignore[no-untyped-def]
    """:func:`run_scalar` with Python-int results (with ``NUMBA_DISABLE_JIT=1`` it runs as
    Python and would return numpy scalars)."""
    st, pc, steps, cycles, flags = run_scalar(*args)
    return int(st), int(pc), int(steps), int(cycles), int(flags)


_ = N_COUNTERS
