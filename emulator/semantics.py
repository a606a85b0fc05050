"""Instruction semantics: one small function per mnemonic, registered in :data:`SEMANTICS`.

Each function receives the machine state (:class:`emulator.state.State`) and the decoded
operand dict, reads and checks every operand range *before* changing state (a faulting
instruction leaves the machine as it was), does the work on the machine's datapath (``m.dp``:
fast kernels or the reference), charges the closed-form cost from :mod:`emulator.timing` plus
its data-dependent counts, and returns the next pc (or None for pc + 1). The pseudo-code each
one implements is in ``isa/spec.py`` and ``docs/isa.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emulator.counters import (
    ACC_OVERFLOWS,
    ACC_RD,
    ACC_WR,
    ARRAY_CYCLES,
    CYCLES,
    MAC_OPS,
    MACS,
    MACS_SKIPPED,
    N_COUNTERS,
    RNG_DRAWS,
    SATURATIONS,
    SKIP_CYCLES_SAVED,
    SPAD_RD,
    SPAD_WR,
)
from emulator.errors import ExecutionError
from emulator.geometry import CONV_DGRAD, CONV_FWD, Geometry, padded, unpack, window_view
from emulator.reference import uses_rng
from emulator.rng import MASK64
from emulator.state import (
    FLAG_ACC_OVERFLOW,
    FLAG_ALU_SATURATION,
    FLAG_RQ_SATURATION,
    State,
)
from emulator.timing import conv_gemm_shape, gemm_skip_cycles_saved
from isa.spec import DTYPES, RNG_FIELDS, ROUND_MODES

Handler = Callable[[State, dict[str, int]], "int | None"]
SEMANTICS: dict[str, Handler] = {}
# mnemonic -> factory of a handler for one pc (given its operands) that behaves exactly like
# the plain one, faster in loops; the machine uses it where one exists
SPECIALIZE: dict[str, Callable[[dict[str, int]], Handler]] = {}

ELEM_BYTES = {DTYPES.index("i8"): 1, DTYPES.index("i16"): 2}
EXP_MIN, EXP_MAX = -(1 << 31), (1 << 31) - 1


def semantics(*mnemonics: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for mn in mnemonics:
            if mn in SEMANTICS:
                raise RuntimeError(f"two implementations of {mn}")
            SEMANTICS[mn] = fn
        return fn

    return deco


def _count(m: State, name: str, n: int) -> int:
    if n < 0:
        raise ExecutionError(f"{name} must be >= 0, got {n}", m.pc)
    return n


def _set_exp(m: State, ed: int, v: int) -> None:
    if not EXP_MIN <= v <= EXP_MAX:
        raise ExecutionError(f"exponent e{ed} = {v} outside the 32-bit range", m.pc)
    m.e[ed] = v


# ============================================================================ scalar / control
@semantics("nop")
def _nop(m, o):
    m.charge_cost("scalar")


@semantics("halt")
def _halt(m, o):
    m.charge_cost("scalar")
    m.halted = True
    return m.pc  # stay on the halt


@semantics("li")
def _li(m, o):
    rd = o["rd"]
    if rd:
        m.r[rd] = o["imm"]  # a sign-extended 32-bit immediate always fits: no wrap
    m.charge_cost("scalar")


@semantics("lih")
def _lih(m, o):
    m.set_reg(o["rd"], (o["imm"] << 32) | (m.r[o["rd"]] & 0xFFFFFFFF))
    m.charge_cost("scalar")


@semantics("addi")
def _addi(m, o):
    m.set_reg(o["rd"], m.r[o["ra"]] + o["imm"])
    m.charge_cost("scalar")


_BINOPS: dict[str, Callable[[int, int], int]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "sll": lambda a, b: a << (b & 63),
    "sra": lambda a, b: a >> (b & 63),
    "srl": lambda a, b: (a & MASK64) >> (b & 63),
    "slt": lambda a, b: int(a < b),
}


def _make_binop(fn: Callable[[int, int], int]) -> Handler:
    def h(m, o):
        m.set_reg(o["rd"], fn(m.r[o["ra"]], m.r[o["rb"]]))
        m.charge_cost("scalar")

    return h


for _mn, _fn in _BINOPS.items():
    semantics(_mn)(_make_binop(_fn))

_CONDS: dict[str, Callable[[int, int], bool]] = {
    "beq": lambda a, b: a == b,
    "bne": lambda a, b: a != b,
    "blt": lambda a, b: a < b,
    "bge": lambda a, b: a >= b,
}


def _make_branch(cond: Callable[[int, int], bool]) -> Handler:
    def h(m, o):
        m.charge_cost("branch")
        return o["target"] if cond(m.r[o["ra"]], m.r[o["rb"]]) else None

    return h


for _mn, _c in _CONDS.items():
    semantics(_mn)(_make_branch(_c))


@semantics("jmp")
def _jmp(m, o):
    m.charge_cost("branch")
    return o["target"]


@semantics("flags")
def _flags(m, o):
    m.set_reg(o["rd"], m.flags)
    m.charge_cost("scalar")


@semantics("clrflags")
def _clrflags(m, o):
    m.flags = 0
    m.charge_cost("scalar")


@semantics("ldw")
def _ldw(m, o):
    addr = m.r[o["ra"]] + o["imm"]
    m.check_dram(addr, 4)
    m.set_reg(o["rd"], int(m.dram[addr : addr + 4].view("<i4")[0]))
    m.charge_cost("scalar_mem", False)


@semantics("stw")
def _stw(m, o):
    addr = m.r[o["ra"]] + o["imm"]
    m.check_dram(addr, 4)
    m.dram[addr : addr + 4] = np.array([m.r[o["rs"]] & 0xFFFFFFFF], "<u4").view(np.uint8)
    m.charge_cost("scalar_mem", True)


# ============================================================================ exponents
@semantics("eset")
def _eset(m, o):
    _set_exp(m, o["ed"], o["imm"])
    m.charge_cost("scalar")


@semantics("eadd")
def _eadd(m, o):
    _set_exp(m, o["ed"], m.e[o["ea"]] + m.e[o["eb"]])
    m.charge_cost("scalar")


@semantics("eaddi")
def _eaddi(m, o):
    _set_exp(m, o["ed"], m.e[o["ea"]] + o["imm"])
    m.charge_cost("scalar")


@semantics("emv")
def _emv(m, o):
    m.set_reg(o["rd"], m.e[o["ea"]])
    m.charge_cost("scalar")


@semantics("esetr")
def _esetr(m, o):
    _set_exp(m, o["ed"], m.r[o["ra"]])
    m.charge_cost("scalar")


@semantics("efit")
def _efit(m, o):
    n = _count(m, "element count", m.r[o["rn"]])
    block = m.acc_range(m.r[o["racc"]], n)
    bits = 8 * ELEM_BYTES[o["dt"]]
    need = m.dp.sign_bits_needed(block)
    _set_exp(m, o["ed"], m.e[o["ein"]] + need - (bits - 1))
    m.charge_cost("scan", n)


# ============================================================================ dither RNG
@semantics("rngseed")
def _rngseed(m, o):
    m.rng[0] = m.r[o["ra"]] & MASK64
    m.rng[1] = 0
    m.charge_cost("scalar")


@semantics("rngctr")
def _rngctr(m, o):
    m.rng[1] = m.r[o["ra"]] & MASK64
    m.charge_cost("scalar")


@semantics("rngrd")
def _rngrd(m, o):
    m.set_reg(o["rd"], m.rng[RNG_FIELDS.index(RNG_FIELDS[o["sel"]])])
    m.charge_cost("scalar")


# ============================================================================ DMA
def _block(m: State, memory: str, size: int, base: int, rows: int, nbytes: int, stride: int):
    """Bounds-check a 2-D byte block and return (row starts ok); strides must be >= 0."""
    if stride < 0:
        raise ExecutionError(f"{memory} stride must be >= 0, got {stride}", m.pc)
    if rows == 0 or nbytes == 0:
        return
    m._check(memory, size, base, nbytes)
    m._check(memory, size, base + (rows - 1) * stride, nbytes)


def _strided(buf: np.ndarray, base: int, rows: int, nbytes: int, stride: int) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(
        buf[base:], shape=(rows, nbytes), strides=(stride, 1), writeable=True
    )


def _dma(m: State, o: dict[str, int], to_dram: bool) -> None:
    r = m.r
    rows = _count(m, "row count", r[o["rrows"]])
    nbytes = _count(m, "row bytes", r[o["rbytes"]])
    dram_a, sp_a = r[o["rdram"]], r[o["rsp"]]
    dstride, sstride = r[o["rdstride"]], r[o["rsstride"]]
    _block(m, "dram", m.dram.size, dram_a, rows, nbytes, dstride)
    _block(m, "scratchpad", m.spad.size, sp_a, rows, nbytes, sstride)
    dst_stride = dstride if to_dram else sstride
    if rows > 1 and 0 < dst_stride < nbytes or (rows > 1 and dst_stride == 0 and nbytes):
        raise ExecutionError("destination rows overlap (stride < row bytes)", m.pc)
    if rows and nbytes:
        if rows == 1 or dstride == sstride == nbytes:  # one contiguous block: plain slices
            d = m.dram[dram_a : dram_a + rows * nbytes]
            s = m.spad[sp_a : sp_a + rows * nbytes]
        else:
            d = _strided(m.dram, dram_a, rows, nbytes, dstride)
            s = _strided(m.spad, sp_a, rows, nbytes, sstride)
        if to_dram:
            d[...] = s
        else:
            s[...] = d
    if not m.overlap:
        m.charge_cost("dma", rows * nbytes, to_dram)
        return
    m.charge_dma(m.cost("dma", rows * nbytes, to_dram), [
        ("dram", dram_a, dram_a + (rows - 1) * dstride + nbytes if rows and nbytes else dram_a),
        ("scratchpad", sp_a, sp_a + (rows - 1) * sstride + nbytes if rows and nbytes else sp_a),
    ])


@semantics("dmald")
def _dmald(m, o):
    _dma(m, o, to_dram=False)


@semantics("dmast")
def _dmast(m, o):
    _dma(m, o, to_dram=True)


def _dma_acc(m: State, o: dict[str, int], to_dram: bool) -> None:
    r = m.r
    rows = _count(m, "row count", r[o["rrows"]])
    cols = _count(m, "column count", r[o["rcols"]])
    dram_a, acc_a, dstride = r[o["rdram"]], r[o["racc"]], r[o["rdstride"]]
    _block(m, "dram", m.dram.size, dram_a, rows, 4 * cols, dstride)
    if to_dram and rows > 1 and cols and dstride < 4 * cols:
        raise ExecutionError("destination rows overlap (stride < row bytes)", m.pc)
    block = m.acc_range(acc_a, rows * cols)
    if rows and cols:
        block = block.reshape(rows, cols)
        d = _strided(m.dram, dram_a, rows, 4 * cols, dstride)
        if to_dram:
            d[...] = block.astype("<i4").view(np.uint8).reshape(rows, 4 * cols)
        else:
            vals = np.ascontiguousarray(d).view("<i4").astype(np.int64)
            fitted, nover = m.dp.fit_acc(vals, m.acc_bits, m.acc_wrap)
            block[...] = fitted.reshape(rows, cols)
            _overflow(m, nover)
    m.charge_dma(m.cost("dma_acc", rows * cols, to_dram), [
        ("dram", dram_a, dram_a + (rows - 1) * dstride + 4 * cols if rows and cols else dram_a),
        ("accumulator", acc_a, acc_a + rows * cols),
    ])


@semantics("dmaldacc")
def _dmaldacc(m, o):
    _dma_acc(m, o, to_dram=False)


@semantics("dmastacc")
def _dmastacc(m, o):
    _dma_acc(m, o, to_dram=True)


def _overflow(m: State, n: int) -> None:
    if n:
        m.flags |= FLAG_ACC_OVERFLOW
        m.charge({ACC_OVERFLOWS: n})


# ============================================================================ matrix
def _operand(m: State, addr: int, rows: int, cols: int, elem: int, trans: bool) -> np.ndarray:
    """The [rows, cols] operand stored row-major (or as [cols, rows] if ``trans``)."""
    v = m.sp_elems(addr, rows * cols, elem)
    return v.reshape(cols, rows).T if trans else v.reshape(rows, cols)


def _zero_skips(a: np.ndarray, b: np.ndarray, sa: bool, sb: bool) -> int:
    """MACs (i,k,j) with a skip-enabled zero operand: exact, from per-k zero counts."""
    mdim, ndim = a.shape[0], b.shape[1]
    if not (sa or sb):
        return 0
    if not sb:  # every zero of A skips N MACs
        return (a.size - int(np.count_nonzero(a))) * ndim
    if not sa:  # every zero of B skips M MACs
        return (b.size - int(np.count_nonzero(b))) * mdim
    za = (a == 0).sum(axis=0, dtype=np.int64)  # zeros per k in A's column
    zb = (b == 0).sum(axis=1, dtype=np.int64)  # zeros per k in B's row
    return int((za * ndim + zb * mdim - za * zb).sum())


def _gemm_empty(m: State, o: dict[str, int], mm: int, kk: int, nn: int, ea: int,
                eb: int) -> None:
    """A GEMM with a zero extent does no multiply: its operand ranges are checked (as ranges
    of zero or more elements, so a huge extent beside a zero one costs nothing), C becomes 0
    when K = 0 and ``acc`` is off, and no MAC is done or skipped."""
    r = m.r
    m.sp_elems(r[o["ra"]], mm * kk, ea)
    m.sp_elems(r[o["rb"]], kk * nn, eb)
    c = m.acc_range(r[o["rc"]], mm * nn)
    if c.size and not o["acc"]:
        c[...] = 0
    m.charge_cost("gemm", mm, kk, nn, ea, eb, bool(o["acc"]))


def _skip_work_bytes(mm: int, kk: int, nn: int) -> int:
    """Upper bound of the host memory the zero-skip accounting of one GEMM takes (zero masks,
    per-k counts and per-fold work tables, emulator/timing.py)."""
    return 24 * (mm * kk + kk * nn + mm * nn) + 48 * kk


def _gemm_operands(m: State, o: dict[str, int]) -> tuple | None:
    """Checked operand views and sizes of a gemm, (A, B, C, M, K, N, A bytes, B bytes); None
    for a gemm with a zero extent, which is then done (``_gemm_empty``)."""
    r = m.r
    mm = _count(m, "M", r[o["rm"]])
    kk = _count(m, "K", r[o["rk"]])
    nn = _count(m, "N", r[o["rn"]])
    ea, eb = ELEM_BYTES[o["da"]], ELEM_BYTES[o["db"]]
    if not (mm and kk and nn):
        _gemm_empty(m, o, mm, kk, nn, ea, eb)
        return None
    a = _operand(m, r[o["ra"]], mm, kk, ea, bool(o["ta"]))
    b = _operand(m, r[o["rb"]], kk, nn, eb, bool(o["tb"]))
    c = m.acc_range(r[o["rc"]], mm * nn).reshape(mm, nn)
    if (o["sa"] or o["sb"]) and _skip_work_bytes(mm, kk, nn) > m.work_bytes:
        raise ExecutionError(
            f"gemm M={mm}, K={kk}, N={nn} with zero-skipping needs up to "
            f"{_skip_work_bytes(mm, kk, nn):,} bytes of working memory; the memory budget "
            f"leaves {m.work_bytes:,} (budget.max_memory_bytes)", m.pc)
    return a, b, c, mm, kk, nn, ea, eb


def _gemm_counts(m: State, o: dict[str, int], a: np.ndarray, b: np.ndarray, mm: int, kk: int,
                 nn: int, ea: int, eb: int, nover: int) -> bool:
    """Skip counts, MACs and overflows of a gemm whose product is done; charges the cost only
    when zero-skipping changes it and returns whether it did (else the caller charges the
    static cost)."""
    sa, sb = bool(o["sa"]), bool(o["sb"])
    skipped = _zero_skips(a, b, sa, sb)
    done = mm * kk * nn - skipped
    charged = bool(skipped) and m.cfg.array.skip != "none"
    if charged:
        cost = m.cost("gemm", mm, kk, nn, ea, eb, bool(o["acc"]))
        saved = ea * eb * gemm_skip_cycles_saved(
            m.cfg, mm, kk, nn, a != 0 if sa else None, b != 0 if sb else None)
        cost[CYCLES] -= saved
        cost[ARRAY_CYCLES] -= saved
        cost[SKIP_CYCLES_SAVED] = saved
        m.charge(cost)
    m.charge_counts(MACS, done, MACS_SKIPPED, skipped, MAC_OPS, done * ea * eb)
    _overflow(m, nover)
    return charged


@semantics("gemm")
def _gemm(m, o):
    ops = _gemm_operands(m, o)
    if ops is None:
        return
    a, b, c, mm, kk, nn, ea, eb = ops
    nover = m.dp.gemm_into(c, a, b, bool(o["acc"]), m.acc_bits, m.acc_wrap)
    if not _gemm_counts(m, o, a, b, mm, kk, nn, ea, eb, nover):
        m.charge_cost("gemm", mm, kk, nn, ea, eb, bool(o["acc"]))


def _specialize_gemm(o: dict[str, int]) -> Handler:
    """``gemm`` for one pc: operand checks, views and the static cost are kept while the six
    registers it reads (and the memories) are unchanged, as they are every time a firmware
    loop comes round. Runs observed for DMA overlap use the plain handler."""
    regs = tuple(o[f] for f in ("rm", "rk", "rn", "ra", "rb", "rc"))
    accumulate = bool(o["acc"])
    memo: list = [None, None, None, None]  # key, spad, acc, plan

    def h(m, o_):
        if m._touch is not None:
            return _gemm(m, o_)
        r = m.r
        key = (r[regs[0]], r[regs[1]], r[regs[2]], r[regs[3]], r[regs[4]], r[regs[5]])
        if key != memo[0] or memo[1] is not m.spad or memo[2] is not m.acc:
            ops = _gemm_operands(m, o_)
            if ops is None:  # a zero extent: done, nothing kept
                return None
            a, b, c, mm, kk, nn, ea, eb = ops
            d, items = m._cached_cost(("gemm", mm, kk, nn, ea, eb, accumulate))
            memo[:] = key, m.spad, m.acc, (a, b, c, mm, kk, nn, ea, eb, items, d.get(CYCLES, 0))
        a, b, c, mm, kk, nn, ea, eb, items, cyc = memo[3]
        nover = m.dp.gemm_into(c, a, b, accumulate, m.acc_bits, m.acc_wrap)
        if not _gemm_counts(m, o_, a, b, mm, kk, nn, ea, eb, nover):
            mv = m._cmv
            base = m.pc * N_COUNTERS
            for k, v in items:
                mv[base + k] += v
            m.cycles += cyc
        return None

    return h


SPECIALIZE["gemm"] = _specialize_gemm


# ============================================================================ requantize
def _shift(m: State, o: dict[str, int], eout: str = "eout", ein: str = "ein") -> int:
    """The requantizer shift: any difference of two exponents is valid (docs/isa.md)."""
    return m.e[o[eout]] - m.e[o[ein]]


def _requantize(m: State, src: np.ndarray, dst: np.ndarray, o: dict[str, int], shift: int,
                mul: int, out_bytes: int) -> None:
    """The requantizer datapath shared by rq, rqm and vcvt: values, RNG, flags, counts."""
    mode = o["rnd"]
    seed, counter = m.rng
    nsat = m.dp.requant_into(dst, src, shift, mode, 8 * out_bytes, bool(o["relu"]), seed,
                             counter, mul)
    draws = src.size if uses_rng(mode, shift) else 0
    m.rng[1] = (counter + draws) & MASK64
    if draws or nsat:
        m.charge({RNG_DRAWS: draws, SATURATIONS: nsat})
    if nsat:
        m.flags |= FLAG_RQ_SATURATION


def _rq_common(m: State, o: dict[str, int], mul: int) -> None:
    r = m.r
    n = _count(m, "element count", r[o["rn"]])
    shift = _shift(m, o)
    elem = ELEM_BYTES[o["dt"]]
    src = m.acc_range(r[o["racc"]], n)
    dst = m.sp_elems(r[o["rd"]], n, elem)
    _requantize(m, src, dst, o, shift, mul, elem)
    m.charge_cost("requant", n, elem)


@semantics("rq")
def _rq(m, o):
    _rq_common(m, o, 1)


@semantics("rqm")
def _rqm(m, o):
    mul = m.r[o["rmul"]]
    if not -(1 << 31) <= mul < (1 << 31):
        raise ExecutionError(f"rqm multiplier r{o['rmul']} = {mul} does not fit 32 bits", m.pc)
    _rq_common(m, o, mul)


@semantics("vcvt")
def _vcvt(m, o):
    r = m.r
    n = _count(m, "element count", r[o["rn"]])
    shift = _shift(m, o)
    sb, db = ELEM_BYTES[o["sdt"]], ELEM_BYTES[o["ddt"]]
    src = m.sp_elems(r[o["ra"]], n, sb).astype(np.int64)  # read all before writing
    dst = m.sp_elems(r[o["rd"]], n, db)
    _requantize(m, src, dst, o, shift, 1, db)
    m.charge_cost("convert", n, sb, db)


# ============================================================================ vector ALU
def _alu_sat(m: State, nsat: int) -> None:
    if nsat:
        m.flags |= FLAG_ALU_SATURATION
        m.charge({SATURATIONS: nsat})


def _make_vec3(op: str) -> Handler:
    multiply = op == "vmul"

    def h(m, o):
        r = m.r
        n = _count(m, "element count", r[o["rn"]])
        elem = ELEM_BYTES[o["dt"]]
        a = m.sp_elems(r[o["ra"]], n, elem)
        b = m.sp_elems(r[o["rb"]], n, elem)
        d = m.sp_elems(r[o["rd"]], n, elem)
        nsat = m.dp.alu_into(op, d, a, b, 8 * elem)
        m.charge_cost("alu", n, elem, 2, multiply)
        _alu_sat(m, nsat)

    return h


for _op in ("vadd", "vsub", "vmul", "vmin", "vmax", "vcmpgt"):
    semantics(_op)(_make_vec3(_op))


def _make_shift(op: str) -> Handler:
    def h(m, o):
        r = m.r
        n = _count(m, "element count", r[o["rn"]])
        sh = r[o["rs"]]
        if sh < 0:
            raise ExecutionError(f"shift amount must be >= 0, got {sh}", m.pc)
        elem = ELEM_BYTES[o["dt"]]
        a = m.sp_elems(r[o["ra"]], n, elem)
        d = m.sp_elems(r[o["rd"]], n, elem)
        nsat = m.dp.alu_into(op, d, a, None, 8 * elem, shift=sh)
        m.charge_cost("alu", n, elem, 1, False)
        _alu_sat(m, nsat)

    return h


for _op in ("vsra", "vsll"):
    semantics(_op)(_make_shift(_op))


def _make_unary(op: str) -> Handler:
    def h(m, o):
        r = m.r
        n = _count(m, "element count", r[o["rn"]])
        elem = ELEM_BYTES[o["dt"]]
        a = m.sp_elems(r[o["ra"]], n, elem)
        d = m.sp_elems(r[o["rd"]], n, elem)
        nsat = m.dp.alu_into(op, d, a, None, 8 * elem)
        m.charge_cost("alu", n, elem, 1, False)
        _alu_sat(m, nsat)

    return h


for _op in ("vrelu", "vrelumask"):
    semantics(_op)(_make_unary(_op))


@semantics("vsel")
def _vsel(m, o):
    r = m.r
    n = _count(m, "element count", r[o["rn"]])
    elem = ELEM_BYTES[o["dt"]]
    mask = m.sp_elems(r[o["rm"]], n, elem)
    a = m.sp_elems(r[o["ra"]], n, elem)
    b = m.sp_elems(r[o["rb"]], n, elem)
    d = m.sp_elems(r[o["rd"]], n, elem)
    d[...] = m.dp.select(mask, a, b)
    m.charge_cost("alu", n, elem, 3, False)


def _block2(v: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The ``rows * cols`` elements ``v`` as a [rows, cols] block. An empty block is [rows, 0]
    (cols = 0) or [0, 0] (rows = 0): numpy cannot hold a huge extent beside a zero one, and
    rows was bounds-checked by the caller's per-row operand first."""
    if rows and cols:
        return v.reshape(rows, cols)
    return v.reshape(rows if not cols else 0, 0)


def _rows_cols(m: State, o: dict[str, int]) -> tuple[int, int]:
    rows = _count(m, "row count", m.r[o["rrows"]])
    cols = _count(m, "column count", m.r[o["rcols"]])
    return rows, cols


@semantics("vrmax")
def _vrmax(m, o):
    rows, cols = _rows_cols(m, o)
    if rows and not cols:
        raise ExecutionError("row maximum of an empty row", m.pc)
    elem = ELEM_BYTES[o["dt"]]
    d = m.sp_elems(m.r[o["rd"]], rows, elem)
    x = _block2(m.sp_elems(m.r[o["ra"]], rows * cols, elem), rows, cols)
    d[...] = m.dp.row_max(x) if rows else d
    m.charge_cost("reduce", rows, cols, elem, False)


@semantics("vrsum")
def _vrsum(m, o):
    rows, cols = _rows_cols(m, o)
    elem = ELEM_BYTES[o["dt"]]
    d = m.acc_range(m.r[o["racc"]], rows)
    x = _block2(m.sp_elems(m.r[o["ra"]], rows * cols, elem), rows, cols)
    fitted, nover = m.dp.fit_acc(m.dp.row_sum(x), m.acc_bits, m.acc_wrap)
    d[...] = fitted
    m.charge_cost("reduce", rows, cols, elem, True)
    _overflow(m, nover)


def _vtoacc_cost(m: State, n: int, elem: int, accumulate: bool) -> dict[int, int]:
    """The ALU's cost of moving n elements, writing the accumulator instead of the
    scratchpad (and reading it too when adding)."""
    cost = m.cost("alu", n, elem, 1, False)
    del cost[SPAD_WR]
    cost[ACC_WR] = n * m.cfg.acc_bytes_per_entry
    if accumulate:
        cost[ACC_RD] = n * m.cfg.acc_bytes_per_entry
    return cost


@semantics("vtoacc")
def _vtoacc(m, o):
    r = m.r
    n = _count(m, "element count", r[o["rn"]])
    elem = ELEM_BYTES[o["dt"]]
    a = m.sp_elems(r[o["ra"]], n, elem)
    d = m.acc_range(r[o["racc"]], n)
    total = a.astype(np.int64) + d if o["acc"] else a.astype(np.int64)
    fitted, nover = m.dp.fit_acc(total, m.acc_bits, m.acc_wrap)
    d[...] = fitted
    m.charge(_vtoacc_cost(m, n, elem, bool(o["acc"])))
    _overflow(m, nover)


_ = ROUND_MODES


@semantics("accrd")
def _accrd(m, o):
    m.set_reg(o["rd"], int(m.acc_range(m.r[o["racc"]], 1)[0]))
    m.charge_cost("scalar_acc")


def _vsubrow_cost(m: State, rows: int, cols: int, elem: int) -> dict[int, int]:
    cost = m.cost("alu", rows * cols, elem, 1, False)
    cost[SPAD_RD] += rows * elem  # the per-row operand
    return cost


@semantics("vsubrow")
def _vsubrow(m, o):
    rows, cols = _rows_cols(m, o)
    elem = ELEM_BYTES[o["dt"]]
    b = m.sp_elems(m.r[o["rb"]], rows, elem)
    a = _block2(m.sp_elems(m.r[o["ra"]], rows * cols, elem), rows, cols)
    d = m.sp_elems(m.r[o["rd"]], rows * cols, elem)
    vals, nsat = m.dp.sub_rows(a, b, 8 * elem)
    d[...] = vals.ravel()
    m.charge(_vsubrow_cost(m, rows, cols, elem))
    _alu_sat(m, nsat)


@semantics("vexp")
def _vexp(m, o):
    n = _count(m, "element count", m.r[o["rn"]])
    e = m.e[o["ea"]]  # any exponent (results stop changing outside [-25, 9])
    x = m.sp_elems(m.r[o["ra"]], n, 2)
    d = m.sp_elems(m.r[o["rd"]], n, 2)
    d[...] = m.dp.exp_q14(x, e)
    m.charge_cost("exp", n)


@semantics("vnormrow")
def _vnormrow(m, o):
    rows, cols = _rows_cols(m, o)
    f = -m.e[o["eout"]]  # any exponent (results stop changing outside f in [-17, 47])
    elem = ELEM_BYTES[o["dt"]]
    sums = m.acc_range(m.r[o["racc"]], rows)
    p = _block2(m.sp_elems(m.r[o["ra"]], rows * cols, 2), rows, cols)
    d = m.sp_elems(m.r[o["rd"]], rows * cols, elem)
    vals, nsat = m.dp.norm_rows(p, sums, f, 8 * elem)
    d[...] = vals.ravel()
    m.charge_cost("divide", rows, cols, elem)
    _alu_sat(m, nsat)


@semantics("vlazy")
def _vlazy(m, o):
    n = _count(m, "element count", m.r[o["rn"]])
    s = m.e[o["et"]] - m.e[o["ea"]]
    if s < 0:
        raise ExecutionError(f"vlazy shift e{o['et']} - e{o['ea']} = {s} is negative (the "
                             "accumulator grid must not be coarser than the parameter grid)",
                             m.pc)
    theta = m.sp_elems(m.r[o["rt"]], n, 1)
    acc = m.sp_elems(m.r[o["ra"]], n, 2)
    nsat = m.dp.lazy_update_into(theta, acc, s)
    m.charge_cost("lazy", n)
    _alu_sat(m, nsat)


@semantics("vrsqrt")
def _vrsqrt(m, o):
    n = _count(m, "element count", m.r[o["rn"]])
    k = -m.e[o["ein"]] - 2 * m.e[o["eout"]]  # y ~ 2**(k/2) / sqrt(x)
    x = m.sp_elems(m.r[o["ra"]], n, 2)
    d = m.sp_elems(m.r[o["rd"]], n, 2)
    vals, nsat = m.dp.rsqrt_q(x, k)
    d[...] = vals
    m.charge_cost("rsqrt", n)
    _alu_sat(m, nsat)


@semantics("vwmul")
def _vwmul(m, o):
    r = m.r
    n = _count(m, "element count", r[o["rn"]])
    ea, eb = ELEM_BYTES[o["da"]], ELEM_BYTES[o["db"]]
    a = m.sp_elems(r[o["ra"]], n, ea)
    b = m.sp_elems(r[o["rb"]], n, eb)
    d = m.acc_range(r[o["racc"]], n)
    nover = m.dp.wmul_into(d, a, b, bool(o["acc"]), m.acc_bits, m.acc_wrap)
    m.charge_cost("wmul", n, ea, eb, bool(o["acc"]))
    _overflow(m, nover)


@semantics("vqstep")
def _vqstep(m, o):
    from emulator.reference import qstep_decode, qstep_key
    from isa.spec import QSTEP_ALIGN

    r = m.r
    rows, cols = _rows_cols(m, o)
    c = r[o["rc"]]
    if c < 0:
        raise ExecutionError(f"vqstep constant r{o['rc']} = {c} is negative", m.pc)
    ea, eb, ec = m.e[o["ea"]], m.e[o["eb"]], m.e[o["ec"]]
    var = o["mode"] == 1
    if var and abs(ec - ea) > QSTEP_ALIGN:
        raise ExecutionError(f"vqstep mode=var: exponents e{o['ec']} = {ec} and e{o['ea']} = "
                             f"{ea} differ by more than {QSTEP_ALIGN}", m.pc)
    if o["combine"] and r[o["rd"]] < 0:
        raise ExecutionError(f"vqstep combine: r{o['rd']} = {r[o['rd']]} is not a step "
                             "significand (negative)", m.pc)
    block = m.acc_range(r[o["ra"]], rows * cols)
    if var:
        aux = m.acc_range(r[o["rb"]], rows)
        st = m.dp.vqstep(1, block.reshape(rows, cols), aux, c, ea, eb, ec)
    else:
        aux = m.sp_elems(r[o["rb"]], rows * cols, 1) if o["mask"] else None
        st = m.dp.vqstep(o["mode"], block, aux, c, ea, eb, ec)
    if o["combine"]:
        pick = min if o["combine"] == 1 else max
        st = pick(st, qstep_decode(r[o["rd"]], m.e[o["ed"]]), key=qstep_key)
    mant, exp, recip = st
    m.set_reg(o["rd"], mant)
    m.set_reg(o["rr"], recip)
    m.e[o["ed"]] = exp
    m.charge_cost("qstep", int(var), rows, cols, bool(o["mask"]) and not var)


@semantics("vtopk")
def _vtopk(m, o):
    r = m.r
    rows, cols = _rows_cols(m, o)
    k = _count(m, "kept count", r[o["rk"]])
    elem = ELEM_BYTES[o["dt"]]
    x = m.sp_elems(r[o["ra"]], rows * cols, elem).reshape(rows, cols)
    d = m.sp_elems(r[o["rd"]], rows * cols, elem)
    d[...] = m.dp.topk(x, k, bool(o["col"])).ravel()
    m.charge_cost("topk", rows * cols, elem)


# ============================================================================ conv and pooling
# conv, vmaxpool, vsumpool, vunpool, vbias (isa/spec.py, "Convolution, pooling and bias").
# Every geometry rule and operand range is checked (Python ints) before anything is written.
_GEO_REGS = ("rsz", "rhw", "rkw", "rpf")


def _geometry(m: State, o: dict[str, int]) -> Geometry:
    """The geometry registers' fields, checked (docs/isa.md, "Geometry registers")."""
    vals = []
    for name in _GEO_REGS:
        v = m.r[o[name]]
        if not 0 <= v < 1 << 32:
            raise ExecutionError(
                f"geometry register {name} (r{o[name]}) = {v} outside [0, 2**32)", m.pc)
        vals.append(v)
    g = unpack(*vals)
    if min(g.kh, g.kw, g.sh, g.sw) < 1:
        raise ExecutionError(f"bad geometry: window {g.kh}x{g.kw} and strides {g.sh}x{g.sw} "
                             "must be >= 1", m.pc)
    if g.h + 2 * g.ph < g.kh or g.w + 2 * g.pw < g.kw:
        raise ExecutionError(f"window {g.kh}x{g.kw} larger than the padded input "
                             f"{g.h + 2 * g.ph}x{g.w + 2 * g.pw}", m.pc)
    return g


def _col_zeros(x: np.ndarray, g: Geometry, axis: str) -> np.ndarray:
    """Zeros of col(X), padding included, per column k = (kh, kw, c) (``axis="k"``, shape K)
    or per row m = (n, oh, ow) (``"m"``, shape M). From the zero mask Z of the padded input
    (padding counts as zero) by separable sums over strided slices, without building col(X):
    per k, sum Z over n, then over the OW columns ow SW + kw, then the OH rows oh SH + kh;
    per m, sum Z over c, then over each window's KW columns, then its KH rows."""
    z = padded(x == 0, g, np.int64, fill=1)
    rows = [slice(kh, kh + g.sh * (g.oh - 1) + 1, g.sh) for kh in range(g.kh)]
    cols = [slice(kw, kw + g.sw * (g.ow - 1) + 1, g.sw) for kw in range(g.kw)]
    if axis == "k":
        zs = z.sum(axis=0)  # (Hp, Wp, C)
        r = np.stack([zs[:, c].sum(axis=1) for c in cols], axis=1)  # (Hp, KW, C)
        return np.stack([r[rw].sum(axis=0) for rw in rows]).reshape(g.k)  # (KH, KW, C)
    zc = z.sum(axis=3)  # (N, Hp, Wp)
    t = sum(zc[:, :, c] for c in cols)  # (N, Hp, OW)
    return sum(t[:, rw] for rw in rows).reshape(g.m)  # type: ignore[union-attr]


def _conv_zero_skips(a: np.ndarray, b: np.ndarray, mode: int, g: Geometry, sa: bool,
                     sb: bool) -> int:
    """gemm's skipped-MAC formula on the mode's GEMM operands (``_zero_skips``) from zero
    counts: in total when one operand skips, per inner index when both do (fwd
    col(X)[M,K] @ W[K,F], inner k; wgrad col(X)^T[K,M] @ dZ[M,F], inner m; dgrad
    dZ[M,F] @ W^T[F,K], inner f)."""
    if not (sa or sb) or g.m * g.k * g.f == 0:
        return 0
    gm, gk, gn = conv_gemm_shape(mode, g.m, g.k, g.f)
    if not sa:  # every zero of B skips gm MACs
        return (b.size - int(np.count_nonzero(b))) * gm
    if not sb:  # every zero of A skips gn MACs
        if mode == CONV_DGRAD:
            return (a.size - int(np.count_nonzero(a))) * gn
        return int(_col_zeros(a, g, "m" if g.k > g.m else "k").sum()) * gn
    if mode == CONV_FWD:  # inner k: zeros of col(X) column k, of W row k
        za = _col_zeros(a, g, "k")
        zb = (b.reshape(g.k, g.f) == 0).sum(axis=1, dtype=np.int64)
    elif mode == CONV_DGRAD:  # inner f: zeros of dZ column f, of W column f
        za = (a.reshape(g.m, g.f) == 0).sum(axis=0, dtype=np.int64)
        zb = (b.reshape(g.k, g.f) == 0).sum(axis=0, dtype=np.int64)
    else:  # wgrad, inner m: zeros of col(X) row m, of dZ row m
        za = _col_zeros(a, g, "m")
        zb = (b.reshape(g.m, g.f) == 0).sum(axis=1, dtype=np.int64)
    return int((za * gn + zb * gm - za * zb).sum())


def _conv_masks(a: np.ndarray, b: np.ndarray, mode: int, g: Geometry, sa: bool,
                sb: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``operand != 0`` of the mode's skip-enabled GEMM operands (for the skip cycle model)."""
    def col_nonzero() -> np.ndarray:
        return window_view(padded(a != 0, g, np.bool_, fill=0), g).reshape(g.m, g.k)

    if mode == CONV_FWD:
        return (col_nonzero() if sa else None,
                b.reshape(g.k, g.f) != 0 if sb else None)
    if mode == CONV_DGRAD:
        return (a.reshape(g.m, g.f) != 0 if sa else None,
                (b.reshape(g.k, g.f) != 0).T if sb else None)
    return (col_nonzero().T if sa else None, b.reshape(g.m, g.f) != 0 if sb else None)


@semantics("conv")
def _conv(m, o):
    r = m.r
    g = _geometry(m, o)
    mode = o["mode"]
    ea, eb = ELEM_BYTES[o["da"]], ELEM_BYTES[o["db"]]
    if mode == CONV_DGRAD:
        a = m.sp_elems(r[o["rx"]], g.m * g.f, ea)
        b = m.sp_elems(r[o["rw"]], g.k * g.f, eb)
        out = m.acc_range(r[o["rc"]], g.inputs)
    else:
        a = m.sp_elems(r[o["rx"]], g.inputs, ea)
        b = m.sp_elems(r[o["rw"]], (g.k if mode == CONV_FWD else g.m) * g.f, eb)
        out = m.acc_range(r[o["rc"]], (g.m if mode == CONV_FWD else g.k) * g.f)
    accumulate = bool(o["acc"])
    nover = m.dp.conv_into(out, a, b, mode, g, accumulate, m.acc_bits, m.acc_wrap)
    sa, sb = bool(o["sa"]), bool(o["sb"])
    gm, gk, gn = conv_gemm_shape(mode, g.m, g.k, g.f)
    skipped = _conv_zero_skips(a, b, mode, g, sa, sb)
    done = gm * gk * gn - skipped
    args = (mode, g.m, g.k, g.f, g.inputs, ea, eb, accumulate)
    if skipped and m.cfg.array.skip != "none":
        cost = m.cost("conv", *args)
        az, bz = _conv_masks(a, b, mode, g, sa, sb)
        saved = ea * eb * gemm_skip_cycles_saved(m.cfg, gm, gk, gn, az, bz)
        cost[CYCLES] -= saved
        cost[ARRAY_CYCLES] -= saved
        cost[SKIP_CYCLES_SAVED] = saved
        m.charge(cost)
    else:
        m.charge_cost("conv", *args)
    m.charge_counts(MACS, done, MACS_SKIPPED, skipped, MAC_OPS, done * ea * eb)
    _overflow(m, nover)


def _windows_inside(m: State, g: Geometry) -> None:
    """Fault unless every output pixel's window has a position inside the input. An empty
    input (H or W = 0) has none; otherwise windows move monotonically, so the first and last
    row (column) of windows decide, and a last window entirely below the input starts at padded
    row >= H + PH and ends by H + 2 PH, so KH <= PH, which puts the first window entirely above
    it too: the rule is H, W >= 1, KH > PH and KW > PW."""
    if g.h == 0 or g.w == 0 or g.kh <= g.ph or g.kw <= g.pw:
        raise ExecutionError(
            f"a {g.kh}x{g.kw} pooling window lies entirely in the padding (input {g.h}x{g.w}, "
            f"padding {g.ph}x{g.pw}, stride {g.sh}x{g.sw})", m.pc)


@semantics("vmaxpool")
def _vmaxpool(m, o):
    r = m.r
    g = _geometry(m, o)
    _windows_inside(m, g)
    idx = bool(o["idx"])
    if idx and g.kh * g.kw > 256:
        raise ExecutionError(f"vmaxpool idx=1 needs KH*KW <= 256, got {g.kh}x{g.kw}", m.pc)
    elem = ELEM_BYTES[o["dt"]]
    x = m.sp_elems(r[o["ra"]], g.inputs, elem)
    y = m.sp_elems(r[o["rd"]], g.m * g.c, elem)
    ix = m.sp_elems(r[o["ri"]], g.m * g.c, 1).view(np.uint8) if idx else None
    m.dp.maxpool_into(y, ix, x, g)
    m.charge_cost("pool", g.m * g.c, g.kh * g.kw, elem, False, idx)


@semantics("vsumpool")
def _vsumpool(m, o):
    r = m.r
    g = _geometry(m, o)
    elem = ELEM_BYTES[o["dt"]]
    x = m.sp_elems(r[o["ra"]], g.inputs, elem)
    out = m.acc_range(r[o["racc"]], g.m * g.c)
    nover = m.dp.sumpool_into(out, x, g, m.acc_bits, m.acc_wrap)
    m.charge_cost("pool", g.m * g.c, g.kh * g.kw, elem, True, False)
    _overflow(m, nover)


@semantics("vunpool")
def _vunpool(m, o):
    r = m.r
    g = _geometry(m, o)
    by_index = o["mode"] == 0
    elem = ELEM_BYTES[o["dt"]]
    dy = m.sp_elems(r[o["ra"]], g.m * g.c, elem)
    ix = m.sp_elems(r[o["ri"]], g.m * g.c, 1).view(np.uint8) if by_index else None
    out = m.acc_range(r[o["racc"]], g.inputs)
    if ix is not None:
        bad = m.dp.bad_unpool_index(ix, g)
        if bad is not None:
            raise ExecutionError(
                f"vunpool index {bad[1]} at element {bad[0]} selects no position inside the "
                f"input (window {g.kh}x{g.kw})", m.pc)
    accumulate = bool(o["acc"])
    nover = m.dp.unpool_into(out, dy, ix, g, accumulate, m.acc_bits, m.acc_wrap)
    m.charge_cost("unpool", g.m * g.c, g.kh * g.kw, g.inputs, elem, by_index, accumulate)
    _overflow(m, nover)


@semantics("vbias")
def _vbias(m, o):
    rows, cols = _rows_cols(m, o)
    s = m.e[o["eacc"]] - m.e[o["eb"]]  # any difference is valid (docs/isa.md)
    elem = ELEM_BYTES[o["dt"]]
    b = m.sp_elems(m.r[o["rb"]], cols, elem)
    out = m.acc_range(m.r[o["racc"]], rows * cols).reshape(rows, cols)
    nover = m.dp.bias_into(out, b, s, m.acc_bits, m.acc_wrap)
    m.charge_cost("bias", rows, cols, elem)
    _overflow(m, nover)


# ============================================================================ static costs
def interp_cost(m: State, mnemonic: str, o: dict[str, int]) -> tuple[int, dict[int, int]]:
    """(size key, static cost) of the vector-class instruction that just ran with operands
    ``o``: exactly what its handler charges before its data-dependent counts, for the
    compiled interpreter to charge while the size stays the same (emulator/vecops.py)."""
    from emulator.decoding import ALU_OPS, size_key

    r = m.r
    elem = ELEM_BYTES.get(o.get("dt", 0), 1)
    if mnemonic in ("rq", "rqm"):
        n = r[o["rn"]]
        return size_key(n), m.cost("requant", n, elem)
    if mnemonic == "vcvt":
        n = r[o["rn"]]
        return size_key(n), m.cost("convert", n, ELEM_BYTES[o["sdt"]], ELEM_BYTES[o["ddt"]])
    if mnemonic == "efit":
        n = r[o["rn"]]
        return size_key(n), m.cost("scan", n)
    if mnemonic in ALU_OPS or mnemonic == "vsel":
        n = r[o["rn"]]
        inputs = 3 if mnemonic == "vsel" else 2 if "rb" in o else 1
        return size_key(n), m.cost("alu", n, elem, inputs, mnemonic == "vmul")
    if mnemonic == "vtoacc":
        n = r[o["rn"]]
        return size_key(n), _vtoacc_cost(m, n, elem, bool(o["acc"]))
    if mnemonic == "vexp":
        n = r[o["rn"]]
        return size_key(n), m.cost("exp", n)
    if mnemonic == "vlazy":
        n = r[o["rn"]]
        return size_key(n), m.cost("lazy", n)
    rows, cols = r[o["rrows"]], r[o["rcols"]]
    key = size_key(cols, rows)
    if mnemonic in ("vrmax", "vrsum"):
        return key, m.cost("reduce", rows, cols, elem, mnemonic == "vrsum")
    if mnemonic == "vsubrow":
        return key, _vsubrow_cost(m, rows, cols, elem)
    if mnemonic == "vnormrow":
        return key, m.cost("divide", rows, cols, elem)
    if mnemonic in ("dmaldacc", "dmastacc"):
        return key, m.cost("dma_acc", rows * cols, mnemonic == "dmastacc")
    raise KeyError(mnemonic)
