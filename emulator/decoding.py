"""The decoded form of a program, without numba: what the run loop needs before (and
whether or not) the compiled interpreter is loaded.

A program is decoded once, vectorized, into ``prog``, an int64 ``[n, 5]`` array: per pc the
instruction kind (0 for a coarse instruction, which the Python run loop dispatches), up to
three operand fields (register numbers, immediate or branch target; vector-class
instructions pack theirs as :data:`PACK` lists them) and a cost-row column the machine fills
for vector kinds. The compiled interpreter (:mod:`emulator.scalar`, :mod:`emulator.vecops`)
executes this array; the tables here (kinds, packing, operation codes, per-kind static costs
from :mod:`emulator.timing`) are shared by both sides, so they cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from emulator.counters import CYCLES
from emulator.timing import HOOKS
from isa.spec import BY_MNEMONIC, OPCODE_LO, Field

# the vector ALU's operation codes (emulator/kernels.py's _alu_kernel switches on them)
ALU_CODES = {"vadd": 0, "vsub": 1, "vmul": 2, "vmin": 3, "vmax": 4, "vcmpgt": 5, "vsra": 6,
             "vsll": 7, "vrelu": 8, "vrelumask": 9}

# field packing per mnemonic: (scalar registers, exponent registers, enums and flags)
_V3 = (("rd", "ra", "rb", "rn"), (), ("dt",))
_SH = (("rd", "ra", "rs", "rn"), (), ("dt",))
_UN = (("rd", "ra", "rn"), (), ("dt",))
PACK: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "rq": (("rd", "racc", "rn"), ("eout", "ein"), ("rnd", "dt", "relu")),
    "rqm": (("rd", "racc", "rn", "rmul"), ("eout", "ein"), ("rnd", "dt", "relu")),
    "vcvt": (("rd", "ra", "rn"), ("eout", "ein"), ("rnd", "sdt", "ddt", "relu")),
    "efit": (("racc", "rn"), ("ed", "ein"), ("dt",)),
    "vadd": _V3, "vsub": _V3, "vmul": _V3, "vmin": _V3, "vmax": _V3, "vcmpgt": _V3,
    "vsra": _SH, "vsll": _SH, "vrelu": _UN, "vrelumask": _UN,
    "vsel": (("rd", "rm", "ra", "rb", "rn"), (), ("dt",)),
    "vrmax": (("rd", "ra", "rrows", "rcols"), (), ("dt",)),
    "vrsum": (("racc", "ra", "rrows", "rcols"), (), ("dt",)),
    "vtoacc": (("racc", "ra", "rn"), (), ("dt", "acc")),
    "vsubrow": (("rd", "ra", "rb", "rrows", "rcols"), (), ("dt",)),
    "vexp": (("rd", "ra", "rn"), ("ea",), ()),
    "vnormrow": (("rd", "ra", "racc", "rrows", "rcols"), ("eout",), ("dt",)),
    "vlazy": (("rt", "ra", "rn"), ("et", "ea"), ()),
    "dmaldacc": (("racc", "rdram", "rrows", "rcols", "rdstride"), (), ()),
    "dmastacc": (("rdram", "racc", "rrows", "rcols", "rdstride"), (), ()),
}
MNEMONICS = tuple(PACK)
ALU_OPS = ("vadd", "vsub", "vmul", "vmin", "vmax", "vcmpgt", "vsra", "vsll", "vrelu",
           "vrelumask")
FUSABLE = 1 << 40  # in column c of an rqm that starts the compiler's lazy-update sequence

# the operation code of each mnemonic inside vecops.exec_vector (ALU ops use ALU_CODES)
(V_RQ, V_RQM, V_VCVT, V_EFIT, V_ALU, V_VSEL, V_VRMAX, V_VRSUM, V_VTOACC, V_VSUBROW, V_VEXP,
 V_VNORMROW, V_VLAZY, V_DMALDACC, V_DMASTACC) = range(15)
OPCLASS = {"rq": V_RQ, "rqm": V_RQM, "vcvt": V_VCVT, "efit": V_EFIT, "vsel": V_VSEL,
           "vrmax": V_VRMAX, "vrsum": V_VRSUM, "vtoacc": V_VTOACC, "vsubrow": V_VSUBROW,
           "vexp": V_VEXP, "vnormrow": V_VNORMROW, "vlazy": V_VLAZY, "dmaldacc": V_DMALDACC,
           "dmastacc": V_DMASTACC, **{op: V_ALU for op in ALU_OPS}}


def size_key(n: int, rows: int = -1) -> int:
    """The ``ccost`` key of a size: ``n``, or rows and columns (``rows`` >= 0). -1 (never
    stored) when it does not fit the packing."""
    if rows < 0:
        return n if 0 <= n < 1 << 62 else -1
    if 0 <= rows < 1 << 31 and 0 <= n < 1 << 31:
        return (rows << 31) | n
    return -1



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
    # :data:`PACK` lists them (registers, exponent registers, enums and flags)
    **{mn: ("@r", "@e", "@o") for mn in MNEMONICS},
}
DMA_REGS = ("rsp", "rdram", "rrows", "rbytes", "rdstride", "rsstride")
KIND: dict[str, int] = {mn: i + 1 for i, mn in enumerate(FIELDS)}
FIELDS_SCALAR = len(FIELDS) - len(MNEMONICS)  # kinds before the vector ones
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
for _mn in MNEMONICS:
    VCLS[KIND[_mn]] = OPCLASS[_mn]
    VCODE[KIND[_mn]] = ALU_CODES.get(_mn, 0)

# run_scalar's status: why it returned
ST_COARSE, ST_STOP, ST_PY, ST_BREAK, ST_HALT = range(5)

EXP_MIN, EXP_MAX = -(1 << 31), (1 << 31) - 1
COST_PAIRS = 3  # counter increments per kind beyond instructions and cycles

# the cost hook (and its arguments) of each scalar kind: emulator/timing.py
_COST_CALL: dict[str, tuple] = {mn: (BY_MNEMONIC[mn].cost,) for mn in FIELDS}
_COST_CALL["ldw"] = ("scalar_mem", False)
_COST_CALL["stw"] = ("scalar_mem", True)
for _mn in ("dmald", "dmast", *MNEMONICS):  # sized: per transfer, or from ccost
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
            for col, names, width in zip((1, 2, 3), PACK[mn], (5, 4, 4), strict=True):
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
