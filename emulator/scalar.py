"""The compiled scalar interpreter: stretches of scalar, branch and exponent instructions (and
the scratchpad DMA ``dmald``/``dmast``, which firmware interleaves with them) run in one numba
loop between coarse (matrix, vector, accumulator) instructions.

It runs the decoded form of :mod:`emulator.decoding` (``prog``, an int64 ``[n, 5]`` array of
kinds and operand fields). The run loop (:class:`emulator.machine.Machine`) loads this module,
and with it numba, only when a run goes on long enough to need it (its ``scalar="auto"``).

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
from emulator.decoding import (
    COST_PAIRS,
    EXP_MAX,
    EXP_MIN,
    FUSABLE,
    K_ACCRD,
    K_ADD,
    K_ADDI,
    K_AND,
    K_BEQ,
    K_BGE,
    K_BLT,
    K_BNE,
    K_CLRFLAGS,
    K_DMALD,
    K_DMAST,
    K_EADD,
    K_EADDI,
    K_EMV,
    K_ESET,
    K_ESETR,
    K_FLAGS,
    K_HALT,
    K_JMP,
    K_LDW,
    K_LI,
    K_LIH,
    K_MUL,
    K_NOP,
    K_OR,
    K_RNGCTR,
    K_RNGRD,
    K_RNGSEED,
    K_RQM,
    K_SLL,
    K_SLT,
    K_SRA,
    K_SRL,
    K_STW,
    K_SUB,
    K_VEC0,
    K_XOR,
    N_KINDS,
    ST_BREAK,
    ST_COARSE,
    ST_HALT,
    ST_PY,
    ST_STOP,
    VCLS,
    VCODE,
)
from emulator.vecops import rows_fit


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
            if k == K_RQM and c & FUSABLE and pc + 2 < n:
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
