"""The instruction table: the single source of truth for the lpemu instruction set.

Every instruction is one fixed-width 64-bit little-endian word. Bits [63:56] hold the opcode;
operand fields are packed from bit 0 upward in the order they are declared. The encoder,
decoder, assembler, disassembler, ``docs/isa.md`` and the emulator's dispatch table all derive
from :data:`TABLE`; ``tests/test_isa.py`` proves that opcodes are unique, fields fit their words
and do not overlap, and every instruction has exactly one implementation and one cost hook.

Field kinds
-----------
``reg``   scalar register r0..r31 (5 bits). r0 reads as zero and ignores writes.
``ereg``  exponent register e0..e15 (4 bits).
``simm``  signed two's complement immediate of ``width`` bits.
``uimm``  unsigned immediate of ``width`` bits.
``target`` absolute instruction index (a label in assembly), unsigned.
``enum``  a small named choice, written ``name=value`` in assembly (default first).
``flag``  a 0/1 switch, written ``name=1`` in assembly (default 0).
Positional operands (reg, ereg, simm, uimm, target) are written in declaration order;
``enum`` and ``flag`` operands are optional keywords after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WORD_BITS = 64
OPCODE_LO = 56
OPCODE_BITS = 8
N_SCALAR_REGS = 32
N_EXP_REGS = 16

KIND_WIDTH = {"reg": 5, "ereg": 4}
POSITIONAL_KINDS = ("reg", "ereg", "simm", "uimm", "target")
KEYWORD_KINDS = ("enum", "flag")

# names of labels and .equ constants in assembly (and of labels in program files)
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.]*"

DTYPES = ("i8", "i16")
ROUND_MODES = ("nearest", "trunc", "uniform", "triangular")
RNG_FIELDS = ("seed", "counter")


@dataclass(frozen=True)
class Field:
    """One operand field: its name, kind, bit position and width."""

    name: str
    kind: str
    width: int
    lo: int = -1
    choices: tuple[str, ...] = ()
    doc: str = ""

    @property
    def positional(self) -> bool:
        return self.kind in POSITIONAL_KINDS

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1


@dataclass(frozen=True)
class Instr:
    """One instruction: mnemonic, opcode, operand fields, unit, cost hook and documentation."""

    mnemonic: str
    opcode: int
    fields: tuple[Field, ...]
    unit: str
    cost: str
    doc: str
    semantics: str
    by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    @property
    def positional(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.positional)

    @property
    def keywords(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if not f.positional)


# ---------------------------------------------------------------------------------------------
# Field constructors (widths live here; positions are assigned by _layout below).


def R(name: str, doc: str = "") -> Field:  # noqa: N802 - reads like the operand kind
    return Field(name, "reg", 5, doc=doc)


def E(name: str, doc: str = "") -> Field:  # noqa: N802
    return Field(name, "ereg", 4, doc=doc)


def SIMM(name: str, width: int, doc: str = "") -> Field:  # noqa: N802
    return Field(name, "simm", width, doc=doc)


def UIMM(name: str, width: int, doc: str = "") -> Field:  # noqa: N802
    return Field(name, "uimm", width, doc=doc)


def TARGET(name: str = "target") -> Field:  # noqa: N802
    return Field(name, "target", 24, doc="absolute instruction index (label)")


def ENUM(name: str, choices: tuple[str, ...], doc: str = "") -> Field:  # noqa: N802
    width = max(1, (len(choices) - 1).bit_length())
    return Field(name, "enum", width, choices=choices, doc=doc)


def FLAG(name: str, doc: str = "") -> Field:  # noqa: N802
    return Field(name, "flag", 1, doc=doc)


DT = ENUM("dt", DTYPES, "element type of the operands")


def _layout(fields: tuple[Field, ...]) -> tuple[Field, ...]:
    out, lo = [], 0
    for f in fields:
        out.append(Field(f.name, f.kind, f.width, lo, f.choices, f.doc))
        lo += f.width
    return tuple(out)


_ENTRIES: list[Instr] = []


def _def(
    mnemonic: str,
    opcode: int,
    fields: tuple[Field, ...],
    unit: str,
    cost: str,
    doc: str,
    semantics: str,
) -> None:
    laid = _layout(fields)
    _ENTRIES.append(
        Instr(
            mnemonic,
            opcode,
            laid,
            unit,
            cost,
            doc,
            semantics.strip("\n"),
            {f.name: f for f in laid},
        )
    )


# ---------------------------------------------------------------------------------------------
# Control and scalar arithmetic. Scalar registers are 64-bit two's complement; arithmetic wraps.

_def("nop", 0x00, (), "scalar", "scalar", "Do nothing for one cycle.", "pass")
_def("halt", 0x01, (), "scalar", "scalar", "Stop the program.", "stop")
_def(
    "li", 0x02, (R("rd"), SIMM("imm", 32)), "scalar", "scalar",
    "Load a sign-extended 32-bit immediate.", "r[rd] = sext(imm)",
)
_def(
    "lih", 0x03, (R("rd"), UIMM("imm", 32)), "scalar", "scalar",
    "Set the upper 32 bits of a register, keeping the lower 32.",
    "r[rd] = wrap64((imm << 32) | (r[rd] & 0xFFFFFFFF))",
)
_def(
    "addi", 0x04, (R("rd"), R("ra"), SIMM("imm", 32)), "scalar", "scalar",
    "Add a sign-extended immediate.", "r[rd] = wrap64(r[ra] + imm)",
)
for _i, (_m, _expr, _doc) in enumerate(
    [
        ("add", "r[ra] + r[rb]", "Add."),
        ("sub", "r[ra] - r[rb]", "Subtract."),
        ("mul", "r[ra] * r[rb]", "Multiply (low 64 bits)."),
        ("and", "r[ra] & r[rb]", "Bitwise and."),
        ("or", "r[ra] | r[rb]", "Bitwise or."),
        ("xor", "r[ra] ^ r[rb]", "Bitwise exclusive or."),
        ("sll", "r[ra] << (r[rb] & 63)", "Shift left logical."),
        ("sra", "r[ra] >> (r[rb] & 63)", "Shift right arithmetic."),
        ("srl", "(r[ra] & (2**64-1)) >> (r[rb] & 63)", "Shift right logical."),
        ("slt", "1 if r[ra] < r[rb] else 0", "Set if less than (signed)."),
    ]
):
    _def(
        _m, 0x08 + _i, (R("rd"), R("ra"), R("rb")), "scalar", "scalar", _doc,
        f"r[rd] = wrap64({_expr})",
    )
for _i, (_m, _cond, _doc) in enumerate(
    [
        ("beq", "r[ra] == r[rb]", "Branch if equal."),
        ("bne", "r[ra] != r[rb]", "Branch if not equal."),
        ("blt", "r[ra] < r[rb]", "Branch if less than (signed)."),
        ("bge", "r[ra] >= r[rb]", "Branch if greater or equal (signed)."),
    ]
):
    _def(
        _m, 0x14 + _i, (R("ra"), R("rb"), TARGET()), "scalar", "branch", _doc,
        f"if {_cond}: pc = target  else: pc = pc + 1",
    )
_def("jmp", 0x18, (TARGET(),), "scalar", "branch", "Jump.", "pc = target")
_def(
    "flags", 0x19, (R("rd"),), "scalar", "scalar",
    "Read the sticky flags (bit 0 accumulator overflow, bit 1 requantizer saturation, "
    "bit 2 vector-unit saturation; see Sticky flags).",
    "r[rd] = flags",
)
_def("clrflags", 0x1A, (), "scalar", "scalar", "Clear the sticky flags.", "flags = 0")
_def(
    "accrd", 0x1D, (R("rd"), R("racc")), "scalar", "scalar_acc",
    "Read one accumulator entry into a scalar register.", "r[rd] = acc[r[racc]]",
)
_def(
    "ldw", 0x1B, (R("rd"), R("ra"), SIMM("imm", 24)), "scalar", "scalar_mem",
    "Load a sign-extended 32-bit little-endian word from DRAM into a scalar register.",
    "r[rd] = int32_le(dram, r[ra] + imm)",
)
_def(
    "stw", 0x1C, (R("rs"), R("ra"), SIMM("imm", 24)), "scalar", "scalar_mem",
    "Store the low 32 bits of a scalar register to DRAM (little-endian).",
    "int32_le(dram, r[ra] + imm) = r[rs] & 0xFFFFFFFF",
)

# ---------------------------------------------------------------------------------------------
# Dynamic-exponent registers: a tensor's value is q * 2**e[x]. Exponents are 32-bit signed.

_def(
    "eset", 0x20, (E("ed"), SIMM("imm", 16)), "scalar", "scalar",
    "Set an exponent register.", "e[ed] = imm",
)
_def(
    "eadd", 0x21, (E("ed"), E("ea"), E("eb")), "scalar", "scalar",
    "Add exponents (the exponent of a product).", "e[ed] = e[ea] + e[eb]",
)
_def(
    "eaddi", 0x22, (E("ed"), E("ea"), SIMM("imm", 16)), "scalar", "scalar",
    "Add an immediate to an exponent.", "e[ed] = e[ea] + imm",
)
_def(
    "emv", 0x23, (R("rd"), E("ea")), "scalar", "scalar",
    "Read an exponent into a scalar register.", "r[rd] = e[ea]",
)
_def(
    "esetr", 0x24, (E("ed"), R("ra")), "scalar", "scalar",
    "Set an exponent from a scalar register.", "e[ed] = r[ra]  (must fit in 32 bits)",
)
_def(
    "efit", 0x25, (E("ed"), R("racc"), R("rn"), E("ein"), DT), "vector", "scan",
    "Choose the output exponent so the accumulator block fits the element type "
    "(dynamic fixed point, from the leading sign bits of the block maximum).",
    """
B = 8 if dt == i8 else 16
nbits = max(bitlen(v if v >= 0 else ~v) for v in acc[racc : racc + r[rn]])   # 0 if all 0/-1
e[ed] = e[ein] + nbits - (B - 1)      # shift that makes every v >> s fit in B bits
# nbits <= 31; a result outside the 32-bit exponent range faults (nothing is written)
""",
)

# ---------------------------------------------------------------------------------------------
# Dither random number generator: SplitMix64 as a counter-based generator.

_def(
    "rngseed", 0x28, (R("ra"),), "scalar", "scalar",
    "Seed the dither generator and reset its counter.",
    "rng.seed = r[ra] mod 2**64; rng.counter = 0",
)
_def(
    "rngctr", 0x29, (R("ra"),), "scalar", "scalar",
    "Set the dither generator's counter (position in its stream).",
    "rng.counter = r[ra] mod 2**64",
)
_def(
    "rngrd", 0x2A, (R("rd"), ENUM("sel", RNG_FIELDS, "which part of the state")), "scalar",
    "scalar", "Read the dither generator's seed or counter.",
    "r[rd] = as_signed64(rng.seed if sel == seed else rng.counter)",
)

# ---------------------------------------------------------------------------------------------
# DMA between DRAM and the on-chip memories, 2-D strided.

_def(
    "dmald", 0x30,
    (R("rsp"), R("rdram"), R("rrows"), R("rbytes"), R("rdstride"), R("rsstride")),
    "dma", "dma",
    "Copy a 2-D block of bytes from DRAM to the scratchpad.",
    """
# strides >= 0; source rows may overlap (stride 0 repeats a row); destination rows must not
# (rows > 1, bytes > 0 and rsstride < rbytes faults). See DMA rules.
for i in range(r[rrows]):
    sp[r[rsp] + i*r[rsstride] : +r[rbytes]] = dram[r[rdram] + i*r[rdstride] : +r[rbytes]]
""",
)
_def(
    "dmast", 0x31,
    (R("rdram"), R("rsp"), R("rrows"), R("rbytes"), R("rdstride"), R("rsstride")),
    "dma", "dma",
    "Copy a 2-D block of bytes from the scratchpad to DRAM.",
    """
# strides >= 0; source rows may overlap (stride 0 repeats a row); destination rows must not
# (rows > 1, bytes > 0 and rdstride < rbytes faults). See DMA rules.
for i in range(r[rrows]):
    dram[r[rdram] + i*r[rdstride] : +r[rbytes]] = sp[r[rsp] + i*r[rsstride] : +r[rbytes]]
""",
)
_def(
    "dmaldacc", 0x32, (R("racc"), R("rdram"), R("rrows"), R("rcols"), R("rdstride")),
    "dma", "dma_acc",
    "Load a 2-D block of little-endian int32 values from DRAM into accumulator memory "
    "(dense rows), saturated or wrapped to the accumulator width.",
    """
# rdstride >= 0; source rows may overlap. fit_acc overflows set flag bit 0 (acc_overflows)
for i in range(r[rrows]), j in range(r[rcols]):
    acc[r[racc] + i*r[rcols] + j] = fit_acc(int32_le(dram, r[rdram] + i*r[rdstride] + 4*j))
""",
)
_def(
    "dmastacc", 0x33, (R("rdram"), R("racc"), R("rrows"), R("rcols"), R("rdstride")),
    "dma", "dma_acc",
    "Store a 2-D block of accumulator entries to DRAM as little-endian int32.",
    """
# rdstride >= 0; destination rows must not overlap (rows > 1, cols > 0, rdstride < 4*rcols
# faults)
for i in range(r[rrows]), j in range(r[rcols]):
    int32_le(dram, r[rdram] + i*r[rdstride] + 4*j) = acc[r[racc] + i*r[rcols] + j]
""",
)

# ---------------------------------------------------------------------------------------------
# The MAC array: one instruction is a whole tiled GEMM over scratchpad operands.

_def(
    "gemm", 0x40,
    (
        R("rc", "accumulator address of C[M,N]"),
        R("ra", "scratchpad address of A"),
        R("rb", "scratchpad address of B"),
        R("rm"), R("rk"), R("rn"),
        FLAG("acc", "add to C instead of overwriting it"),
        FLAG("ta", "A is stored transposed, as [K,M]"),
        FLAG("tb", "B is stored transposed, as [N,K]"),
        FLAG("sa", "skip MACs whose A element is zero"),
        FLAG("sb", "skip MACs whose B element is zero"),
        ENUM("da", DTYPES, "type of A (i16 runs as 2 byte-passes)"),
        ENUM("db", DTYPES, "type of B (i16 runs as 2 byte-passes)"),
    ),
    "matrix", "gemm",
    "C (+)= A @ B on the MAC array; INT16 operands run as byte-passes on the 8-bit array.",
    """
M, K, N = r[rm], r[rk], r[rn]
A = sp[r[ra]] as da, row-major [M,K] (or [K,M] if ta, then transposed)
B = sp[r[rb]] as db, row-major [K,N] (or [N,K] if tb, then transposed)
P[i,j] = sum_k A[i,k] * B[k,j]                # exact: the adder tree is wide enough
# INT16 x = hi*256 + lo (hi signed byte, lo unsigned byte); each pass is an 8-bit product:
#   P = sum over passes (A_part @ B_part) << (8*(#hi parts)), bit-identical to the direct product
C[i,j] = fit_acc((C[i,j] if acc else 0) + P[i,j])   # saturate or wrap; overflow flag + count
# K = 0: P = 0 (an empty sum), so C[M,N] is cleared unless acc; M = 0 or N = 0: nothing
skipped MACs (sa/sb): |{(i,k,j) : (sa and A[i,k]==0) or (sb and B[k,j]==0)}|
""",
)

# ---------------------------------------------------------------------------------------------
# Requantizer: accumulator -> INT8/INT16 with a shift from the exponent registers.

_def(
    "rq", 0x48,
    (
        R("rd", "scratchpad destination"),
        R("racc", "accumulator source"),
        R("rn", "element count"),
        E("eout", "exponent of the result"),
        E("ein", "exponent of the accumulator"),
        ENUM("rnd", ROUND_MODES, "rounding mode"),
        DT,
        FLAG("relu", "clamp negative results to zero"),
    ),
    "vector", "requant",
    "Requantize accumulator entries to INT8/INT16: shift s = e[eout] - e[ein], round, saturate.",
    """
s = e[eout] - e[ein]                      # any value: |s| < 2**32 (see Requantizer rounding)
for i in range(r[rn]):                    # ascending i
    a = acc[r[racc] + i]
    z = draw() if rnd in (uniform, triangular) and s > 0 else 0   # one draw per element
    y = round_shift(a, s, rnd, z)
    #   s <= 0: a * 2**-s;  nearest: floor((a + 2**(s-1)) / 2**s) (ties up);  trunc: floor(a / 2**s)
    #   uniform (s <= 64): floor((a + u) / 2**s), u = z mod 2**s   (exactly unbiased)
    #   triangular (s <= 31): floor((a + u + v + b - 2**(s-1)) / 2**s), v = (z >> s) mod 2**s,
    #                         b = (z >> 2s) & 1;  wider shifts: see Requantizer rounding
    if relu: y = max(y, 0)
    sp[r[rd] + i] = sat(y, dt)            # saturation sets flag bit 1, counted in saturations
""",
)

_def(
    "rqm", 0x49,
    (
        R("rd", "scratchpad destination"),
        R("racc", "accumulator source"),
        R("rn", "element count"),
        R("rmul", "scalar register holding the multiplier (32-bit signed)"),
        E("eout", "exponent of the result"),
        E("ein", "exponent of the accumulator"),
        ENUM("rnd", ROUND_MODES, "rounding mode"),
        DT,
        FLAG("relu", "clamp negative results to zero"),
    ),
    "vector", "requant",
    "Requantize with a fixed-point multiplier: like rq applied to acc * r[rmul] (learning-rate "
    "and batch scaling).",
    """
mul = r[rmul]                             # must fit in 32 bits (signed), else a fault
s = e[eout] - e[ein]                      # any value: |s| < 2**32
for i in range(r[rn]):                    # ascending i
    a = acc[r[racc] + i] * mul            # exact: |a| <= 2**62 (a 63-bit signed product)
    z = draw() if rnd in (uniform, triangular) and s > 0 else 0   # one draw per element
    y = round_shift(a, s, rnd, z)         # exactly as rq (see Requantizer rounding)
    if relu: y = max(y, 0)
    sp[r[rd] + i] = sat(y, dt)            # saturation sets flag bit 1, counted in saturations
""",
)
_def(
    "vcvt", 0x4A,
    (
        R("rd", "scratchpad destination"),
        R("ra", "scratchpad source"),
        R("rn", "element count"),
        E("eout", "exponent of the result"),
        E("ein", "exponent of the source"),
        ENUM("rnd", ROUND_MODES, "rounding mode"),
        ENUM("sdt", DTYPES, "source element type"),
        ENUM("ddt", DTYPES, "destination element type"),
        FLAG("relu", "clamp negative results to zero"),
    ),
    "vector", "convert",
    "Requantize scratchpad elements to another exponent and type (same rounding, dither and "
    "saturation as rq).",
    """
s = e[eout] - e[ein]                      # any value: |s| < 2**32
for i in range(r[rn]):                    # all sources are read before any result is written
    z = draw() if rnd in (uniform, triangular) and s > 0 else 0   # one draw per element
    y = round_shift(sp[r[ra]][i] as sdt, s, rnd, z)                 # as rq
    if relu: y = max(y, 0)
    sp[r[rd]][i] as ddt = sat(y, ddt)     # saturation sets flag bit 1, counted in saturations
""",
)

# ---------------------------------------------------------------------------------------------
# Vector ALU: elementwise INT8/INT16 over scratchpad operands, saturating.

_VEC3 = (R("rd"), R("ra"), R("rb"), R("rn"), DT)
for _i, (_m, _expr, _doc) in enumerate(
    [
        ("vadd", "sat(a + b)", "Elementwise saturating add."),
        ("vsub", "sat(a - b)", "Elementwise saturating subtract."),
        ("vmul", "sat(a * b)", "Elementwise saturating multiply."),
        ("vmin", "min(a, b)", "Elementwise minimum."),
        ("vmax", "max(a, b)", "Elementwise maximum."),
        ("vcmpgt", "1 if a > b else 0", "Elementwise compare: 1 where a > b, else 0."),
    ]
):
    _def(
        _m, 0x50 + _i, _VEC3, "vector", "alu", _doc,
        f"for i in range(r[rn]): a, b = sp[r[ra]][i], sp[r[rb]][i]; sp[r[rd]][i] = {_expr}",
    )
_def(
    "vsra", 0x58, (R("rd"), R("ra"), R("rs"), R("rn"), DT), "vector", "alu",
    "Elementwise arithmetic shift right by a scalar register (floor).",
    "for i in range(r[rn]): sp[r[rd]][i] = sp[r[ra]][i] >> min(r[rs], 15)   # r[rs] >= 0",
)
_def(
    "vsll", 0x59, (R("rd"), R("ra"), R("rs"), R("rn"), DT), "vector", "alu",
    "Elementwise saturating shift left by a scalar register.",
    "for i in range(r[rn]): sp[r[rd]][i] = sat(sp[r[ra]][i] << min(r[rs], 16))   # r[rs] >= 0",
)
_def(
    "vrelu", 0x5A, (R("rd"), R("ra"), R("rn"), DT), "vector", "alu",
    "Elementwise ReLU.", "for i in range(r[rn]): sp[r[rd]][i] = max(sp[r[ra]][i], 0)",
)
_def(
    "vrelumask", 0x5B, (R("rd"), R("ra"), R("rn"), DT), "vector", "alu",
    "ReLU derivative mask: 1 where the input is positive, else 0.",
    "for i in range(r[rn]): sp[r[rd]][i] = 1 if sp[r[ra]][i] > 0 else 0",
)
_def(
    "vsel", 0x5C, (R("rd"), R("rm"), R("ra"), R("rb"), R("rn"), DT), "vector", "alu",
    "Elementwise select: a where the mask is non-zero, else b.",
    "for i in range(r[rn]): sp[r[rd]][i] = sp[r[ra]][i] if sp[r[rm]][i] != 0 else sp[r[rb]][i]",
)
_def(
    "vrmax", 0x5D, (R("rd"), R("ra"), R("rrows"), R("rcols"), DT), "vector", "reduce",
    "Row maximum of a [rows, cols] block into the scratchpad.",
    "for i in range(r[rrows]): sp[r[rd]][i] = max(sp[r[ra]][i*r[rcols] + j] for j in cols)",
)
_def(
    "vrsum", 0x5E, (R("racc"), R("ra"), R("rrows"), R("rcols"), DT), "vector", "reduce",
    "Row sum of a [rows, cols] block into accumulator memory (exact, then fit to the "
    "accumulator width).",
    "for i in range(r[rrows]): acc[r[racc] + i] = fit_acc(sum(sp[r[ra]][i*r[rcols] + j]))",
)
_def(
    "vtoacc", 0x5F, (R("racc"), R("ra"), R("rn"), DT, FLAG("acc", "add instead of overwrite")),
    "vector", "alu",
    "Move scratchpad elements into accumulator memory (sign-extended), optionally adding.",
    "for i in range(r[rn]): acc[r[racc]+i] = fit_acc((acc[r[racc]+i] if acc else 0) "
    "+ sp[r[ra]][i])",
)

_def(
    "vsubrow", 0x60, (R("rd"), R("ra"), R("rb"), R("rrows"), R("rcols"), DT), "vector", "alu",
    "Subtract a per-row value from every element of its row (saturating).",
    """
for i in range(r[rrows]), j in range(r[rcols]):
    sp[r[rd]][i*r[rcols] + j] = sat(sp[r[ra]][i*r[rcols] + j] - sp[r[rb]][i])
""",
)
_def(
    "vexp", 0x61, (R("rd"), R("ra"), R("rn"), E("ea")), "vector", "exp",
    "Exponential unit: INT16 x <= 0 at exponent e[ea] -> round(2**14 * exp(x * 2**e[ea])) in "
    "INT16 (Q14), by a log2(e) multiply, a 256-entry 2**-f table and a shifter.",
    """
# EXP_LUT[f] = round(2**14 * 2**(-f/256)), f = 0..255 (exact, see emulator/reference.py)
# LOG2E_Q16 = 94548 = round(log2(e) * 2**16). Any e[ea]: results stop changing outside
# [-25, 9] (e <= -25: u = 0, y = 16384; e >= 9: y = 0 for x < 0), so e may be clamped there
for i in range(r[rn]):
    x = min(sp[r[ra]][i] as i16, 0)
    t = x * LOG2E_Q16                      # log2 of the result in units of 2**(e[ea]-16)
    sh = 8 - e[ea]                         # to units of 2**-8 (Q8), rounding half up
    u = (t + (1 << (sh-1))) >> sh if sh > 0 else t << -sh   # u <= 0
    n, f = (-u) >> 8, (-u) & 255          # 2**(u/256) = 2**-n * 2**(-f/256)
    y = EXP_LUT[f] if n == 0 else ((EXP_LUT[f] + (1 << (n-1))) >> n if n < 31 else 0)
    sp[r[rd]][i] as i16 = y                # 0 <= y <= 16384: never saturates
""",
)
_def(
    "vnormrow", 0x62,
    (R("rd"), R("ra"), R("racc"), R("rrows"), R("rcols"), E("eout"), DT),
    "vector", "divide",
    "Divide every element of a row by that row's sum held in accumulator memory (softmax "
    "normalization), rounding to nearest onto the grid 2**e[eout].",
    """
f = -e[eout]                              # fraction bits of the result: any value
for i in range(r[rrows]):
    S = acc[r[racc] + i]
    for j in range(r[rcols]):
        p = sp[r[ra]][i*r[rcols] + j] as i16
        y = floor(p * 2**f / S + 1/2) if S > 0 else 0     # exact rational; ties round up
        #   f >= 0: floor((p * 2**(f+1) + S) / (2*S));  f < 0: floor((2p + S*2**-f) / (2*S*2**-f))
        sp[r[rd]][i*r[rcols] + j] = sat(y, dt)   # saturation sets flag bit 2, counted
# results stop changing outside -17 <= f <= 47 (f <= -17: y = 0; f >= 47: every p != 0
# saturates), so f may be clamped there
""",
)
_def(
    "vlazy", 0x63, (R("rt"), R("ra"), R("rn"), E("et"), E("ea")), "vector", "lazy",
    "Lazy update (Kahan summation, Park et al. Alg. 1): move the part of the INT16 update "
    "accumulator that the INT8 parameter grid can represent into the parameter.",
    """
s = e[et] - e[ea]                         # parameter grid over accumulator grid; s < 0 faults
for i in range(r[rn]):                    # all of both ranges are read before any write
    theta, a = sp[r[rt]][i] as i8, sp[r[ra]][i] as i16
    d = (a + (1 << (s-1))) >> s if s > 0 else a     # round to the parameter grid, ties up
    tn = sat(theta + d, i8)               # saturation sets flag bit 2, counted in saturations
    sp[r[rt]][i] as i8 = tn
    sp[r[ra]][i] as i16 = a - ((tn - theta) << s)  # the residual stays in the accumulator
# every s >= 16 gives d = 0 (|a| < 2**15): nothing moves, so s may be clamped to 16.
# The residual always fits INT16. Writes: all parameters, then all residuals (where the two
# ranges overlap, the residual's bytes are the ones left).
""",
)

# ---------------------------------------------------------------------------------------------
# What Adam needs: a reciprocal square root and an exact widening multiply.
_def(
    "vrsqrt", 0x64,
    (R("rd", "scratchpad destination (INT16)"), R("ra", "scratchpad source (INT16)"),
     R("rn", "element count"), E("eout", "exponent of the result"),
     E("ein", "exponent of the source")),
    "vector", "rsqrt",
    "Reciprocal square root: INT16 x at exponent e[ein] -> 1/sqrt(x * 2**e[ein]) in INT16 at "
    "exponent e[eout], correctly rounded (a restoring divider and square root, all integer).",
    """
K = -e[ein] - 2 * e[eout]                 # y * 2**e[eout] ~ 1 / sqrt(x * 2**e[ein]): y ~ sqrt(2**K / x)
for i in range(r[rn]):                    # all sources are read before any result is written
    x = max(sp[r[ra]][i] as i16, 0)
    if x == 0: y = +inf                   # saturates
    else:      y = (isqrt(floor(2**(K+2) / x)) + 1) // 2    # = floor(sqrt(2**K / x) + 1/2)
    sp[r[rd]][i] as i16 = sat(y, i16)     # saturation sets flag bit 2, counted in saturations
# isqrt(N) = floor(sqrt(N)); floor(2**(K+2) / x) = 0 when K + 2 < 0. Results stop changing
# outside -3 <= K <= 46 (K <= -3: y = 0 for x >= 1; K >= 45: every x saturates), so K may be
# clamped there
""",
)
_def(
    "vwmul", 0x65,
    (R("racc", "accumulator destination"), R("ra", "scratchpad source A"),
     R("rb", "scratchpad source B"), R("rn", "element count"),
     ENUM("da", DTYPES, "type of A"), ENUM("db", DTYPES, "type of B"),
     FLAG("acc", "add to the accumulator instead of overwriting it")),
    "vector", "wmul",
    "Widening elementwise multiply into accumulator memory: exact INT8/INT16 products "
    "(no INT16 saturation), optionally accumulated.",
    """
for i in range(r[rn]):
    p = (sp[r[ra]][i] as da) * (sp[r[rb]][i] as db)      # exact, |p| <= 2**30
    acc[r[racc] + i] = fit_acc((acc[r[racc] + i] if acc else 0) + p)
    # an overflow (accumulator narrower than the product) sets flag bit 0, counted in
    # acc_overflows
""",
)

# ---------------------------------------------------------------------------------------------
# The QBP step unit and meProp's selection (004 sec. 5.5; Sun et al. 2017).
QSTEP_MODES = ("asum", "var", "amax")
QSTEP_COMBINE = ("none", "min", "max")
QSTEP_M_BITS = 16  # the step's significand M: Q15 in [2**15, 2**16)
QSTEP_RECIP_BITS = 46  # the reciprocal multiplier: round(2**46 / M)
QSTEP_ALIGN = 256  # var mode: the budget and the block exponents differ by at most this

_def(
    "vqstep", 0x66,
    (
        R("rd", "destination: the step's significand M (Q15, in [2**15, 2**16))"),
        R("rr", "destination: the reciprocal multiplier round(2**46 / M)"),
        R("ra", "accumulator address of the [rows, cols] block"),
        R("rb", "scratchpad address of the INT8 mask (asum) or accumulator address of N (var)"),
        R("rrows"), R("rcols"),
        R("rc", "the constant: c (asum) or the budget C (var), an integer >= 0"),
        E("ed", "destination: the step's exponent"),
        E("ea", "exponent of the block"),
        E("eb", "exponent of N (var; ignored by asum)"),
        E("ec", "exponent of the constant"),
        ENUM("mode", QSTEP_MODES, "asum: from a sum of magnitudes; var: from a variance "
             "budget; amax: from the largest magnitude"),
        FLAG("mask", "asum, amax: only the entries whose mask byte is non-zero"),
        ENUM("combine", QSTEP_COMBINE, "keep the smaller (min) or larger (max) of the new "
             "step and the one already in r[rd], e[ed]"),
    ),
    "vector", "qstep",
    "QBP step unit (004 sec. 5.5): the quantization step of a layer's pre-activation gradients "
    "from a sum of magnitudes (a sparsity target), a variance budget (eq. 5.20-5.21) or the "
    "largest magnitude (a saturation floor), as a 16-bit significand, an exponent and the "
    "reciprocal multiplier the requantizer needs.",
    """
R, C, c = r[rrows], r[rcols], r[rc]       # each >= 0, else a fault (nothing is written)
if mode in (asum, amax):                  # D = c 2**e[ec] * (sum or max of |x|)
    xs = [|acc[r[ra] + i]| for i in range(R*C) if not mask or sp[r[rb] + i] as i8 != 0]
    X = sum(xs) if mode == asum else max(xs)                   # 0 for no entries
    D = X * c * 2**(e[ea] + e[ec])        # exact
if mode == var:                           # D = min_j Gamma_j, Gamma_j = 2 sqrt((C - S_j) / N_j)
    require |e[ec] - e[ea]| <= 256        # else a fault (QSTEP_ALIGN), before anything is read
    for j in range(R):
        S_j = max(acc[r[ra] + j*C + i] for i in range(C)) * 2**e[ea]   # S_j = 0 when C == 0
        N_j = acc[r[rb] + j] * 2**e[eb]
    Q = min((c * 2**e[ec] - S_j) / N_j for j in range(R) if N_j > 0)  # exact; +inf if no such j
    D = 2 * sqrt(Q) if Q > 0 else 0       # +inf when Q is
if combine != none:                       # r[rd] < 0 faults
    D0 = +inf if e[ed] == EXP_MAX else r[rd] * 2**(e[ed] - 15)
    D = min(D, D0) if combine == min else max(D, D0)
if D == 0 or floor(log2(D)) <= EXP_MIN:   # EXP_MIN = -2**31, EXP_MAX = 2**31 - 1
    M, E, Rm = 0, EXP_MIN, 0              # the zero step
elif D == +inf or floor(log2(D)) >= EXP_MAX:
    M, E, Rm = 2**15, EXP_MAX, 2**31      # the infinite step
else:
    E = floor(log2(D))                    # D = (M / 2**15) * 2**E, rounded down
    M = floor(D * 2**(15 - E))            # 2**15 <= M < 2**16
    Rm = floor((2**47 + M) / (2*M))       # round(2**46 / M), ties up: 2**30 < Rm <= 2**31
r[rd] = M; r[rr] = Rm; e[ed] = E          # all inputs are read first; then in this order
""",
)
_def(
    "vtopk", 0x67,
    (
        R("rd", "scratchpad destination [rows, cols]"),
        R("ra", "scratchpad source [rows, cols]"),
        R("rrows"), R("rcols"),
        R("rk", "elements kept per vector"),
        DT,
        FLAG("col", "select within columns instead of rows"),
    ),
    "vector", "topk",
    "meProp's selection (Sun et al. 2017): keep the k elements of largest magnitude of every "
    "row (or column) of a block and zero the others.",
    """
R, C, k = r[rrows], r[rcols], r[rk]       # each >= 0, else a fault
X = sp[r[ra]] as dt, [R, C] row-major     # read completely before anything is written
for each vector v of X: its rows (col == 0) or its columns (col == 1), L elements:
    order the positions p by |v[p]| descending, then p ascending      # |-128| = 128
    keep the first min(k, L) positions; every other element becomes 0
sp[r[rd]] as dt, [R, C] = the result
""",
)

# ---------------------------------------------------------------------------------------------
# Convolution, pooling and bias (opcodes 0x68-0x6F). Image tensors are NHWC (channels last),
# row-major, INT8/INT16 little-endian. Every instruction below reads the same four geometry
# registers (GEOMETRY_DOC; docs/isa.md prints it once, under "Geometry registers").

GEOMETRY_DOC = """
Four scalar registers describe an image geometry. Each must hold a value in [0, 2**32) (else the
instruction faults, naming the register); the fields are unsigned bit ranges of that value:

    rsz: N = bits [15:0] (batch),          C  = bits [31:16] (channels)
    rhw: H = bits [15:0] (input height),   W  = bits [31:16] (input width)
    rkw: KH = [7:0], KW = [15:8] (window), SH = [23:16], SW = [31:24] (strides)
    rpf: PH = [7:0], PW = [15:8] (zero padding on each side), F = [31:16] (filters; conv only)

    require KH, KW, SH, SW >= 1                      # else fault (bad geometry)
    require H + 2*PH >= KH and W + 2*PW >= KW        # else fault (window larger than the input)
    OH = (H + 2*PH - KH) // SH + 1;  OW = (W + 2*PW - KW) // SW + 1
    M = N*OH*OW    # output pixels, rows m = (n, oh, ow) in that order: m = (n*OH + oh)*OW + ow
    K = KH*KW*C    # window elements, columns k = (kh, kw, c):            k = (kh*KW + kw)*C + c
    inside(ih, iw) = 0 <= ih < H and 0 <= iw < W
    # window position (kh, kw) of output pixel (oh, ow) is input position
    #   ih = oh*SH + kh - PH,  iw = ow*SW + kw - PW       (outside the input: padding)
    col(X)[m, k] = X[n, ih, iw, c] if inside(ih, iw) else 0            # the im2col view

N, C, H, W and F may be 0 (no work; costs as the hook gives for empty shapes). An image X of
shape [N,H,W,C] at scratchpad address a holds X[n,ih,iw,c] at element ((n*H + ih)*W + iw)*C + c;
every operand's whole extent is bounds-checked, and every geometry rule checked, before any
state changes. The im2col view is walked by the address generators: no copy of it exists in any
memory.
""".strip("\n")

CONV_MODES = ("fwd", "wgrad", "dgrad")
_GEO = (R("rsz", "N, C"), R("rhw", "H, W"), R("rkw", "KH, KW, SH, SW"), R("rpf", "PH, PW, F"))

_def(
    "conv", 0x68,
    (
        R("rc", "accumulator address of the output"),
        R("rx", "scratchpad address of X (fwd, wgrad) or dZ (dgrad)"),
        R("rw", "scratchpad address of W (fwd, dgrad) or dZ (wgrad)"),
        *_GEO,
        ENUM("mode", CONV_MODES, "which GEMM over the im2col view"),
        FLAG("acc", "add to the output instead of overwriting it"),
        FLAG("sa", "skip MACs whose A element is zero (padding zeros of col(X) included)"),
        FLAG("sb", "skip MACs whose B element is zero"),
        ENUM("da", DTYPES, "type of the rx operand"),
        ENUM("db", DTYPES, "type of the rw operand"),
    ),
    "matrix", "conv",
    "A whole convolution (forward, weight gradient or input gradient) as one GEMM over the "
    "im2col view of an NHWC image; INT16 operands run as byte-passes as in gemm.",
    """
geometry(r[rsz], r[rhw], r[rkw], r[rpf])  # N C H W KH KW SH SW PH PW F, OH OW M K, col(): see above
if mode == fwd:     # the GEMM (M, K, F):  A = col(X) [M,K],  B = Wt [K,F]
    X = sp[r[rx]] as da, [N,H,W,C];   Wt = sp[r[rw]] as db, [K,F]
    for m, f:  acc[r[rc] + m*F + f] = fit_acc((acc[..] if acc else 0)
                                              + sum_k col(X)[m,k] * Wt[k,f])      # out: [M,F]
if mode == wgrad:   # the GEMM (K, M, F):  A = col(X)^T [K,M],  B = dZ [M,F]
    X = sp[r[rx]] as da, [N,H,W,C];   dZ = sp[r[rw]] as db, [M,F]
    for k, f:  acc[r[rc] + k*F + f] = fit_acc((acc[..] if acc else 0)
                                              + sum_m col(X)[m,k] * dZ[m,f])      # out: [K,F]
if mode == dgrad:   # the GEMM (M, F, K):  A = dZ [M,F],  B = Wt^T [F,K];  then col2im
    dZ = sp[r[rx]] as da, [M,F];      Wt = sp[r[rw]] as db, [K,F]
    P[m,k] = sum_f dZ[m,f] * Wt[k,f]
    S[n,ih,iw,c] = sum of P[m,k] over the (m, k) = ((n,oh,ow), (kh,kw,c)) whose window position
                   is (ih, iw); a P[m,k] whose position is in the padding is computed, discarded
    for n, ih, iw, c:                                                             # out: [N,H,W,C]
        acc[r[rc] + ((n*H + ih)*W + iw)*C + c] = fit_acc((acc[..] if acc else 0) + S[n,ih,iw,c])
# every sum is exact (one fit_acc per output entry; positions no window covers get
# fit_acc(0) = 0, or keep their value with acc=1); INT16 operands as gemm (P = bytes(da)*bytes(db))
# macs + macs_skipped = M*K*F in every mode; skipped MACs are gemm's formula on the mode's A, B:
#   |{(i,k,j) : (sa and A[i,k] == 0) or (sb and B[k,j] == 0)}|  (zeros of col(X) in the padding count)
""",
)
_def(
    "vmaxpool", 0x69,
    (
        R("rd", "scratchpad address of Y [N,OH,OW,C]"),
        R("ra", "scratchpad address of X [N,H,W,C]"),
        R("ri", "scratchpad address of the uint8 indices (idx=1)"),
        *_GEO,
        DT,
        FLAG("idx", "also write the index of each maximum (for vunpool mode=max)"),
    ),
    "vector", "pool",
    "Max pooling of an NHWC image; optionally records where each maximum came from.",
    """
geometry(r[rsz], r[rhw], r[rkw], r[rpf])  # F is ignored
require every output pixel's window has a position inside the input   # else fault; as
    # windows fit the padded input, this holds exactly when H, W >= 1, KH > PH and KW > PW
require KH*KW <= 256 if idx                                          # else fault; ri is
    # ignored (not read, written or checked) when idx == 0
X = sp[r[ra]] as dt, [N,H,W,C]            # read completely before anything is written
for n, oh, ow, c:
    best = arg = None
    for kh in range(KH), kw in range(KW):                          # scan order
        ih, iw = oh*SH + kh - PH, ow*SW + kw - PW
        if inside(ih, iw) and (best is None or X[n,ih,iw,c] > best):   # padding never wins;
            best, arg = X[n,ih,iw,c], kh*KW + kw                      # the first maximum wins
    Y[n,oh,ow,c] = best                   # Y = sp[r[rd]] as dt, [N,OH,OW,C]
    if idx: sp[r[ri] + ((n*OH + oh)*OW + ow)*C + c] as u8 = arg   # written after all of Y
""",
)
_def(
    "vsumpool", 0x6A,
    (R("racc", "accumulator address of the sums [N,OH,OW,C]"),
     R("ra", "scratchpad address of X [N,H,W,C]"), *_GEO, DT),
    "vector", "pool",
    "Window sums of an NHWC image into the accumulator (average pooling before its 1/(KH KW) "
    "scale, which rq/rqm apply).",
    """
geometry(r[rsz], r[rhw], r[rkw], r[rpf])  # F is ignored
X = sp[r[ra]] as dt, [N,H,W,C]
for n, oh, ow, c:
    acc[r[racc] + ((n*OH + oh)*OW + ow)*C + c] = fit_acc(
        sum(X[n,ih,iw,c] for kh, kw in window if inside(ih, iw)))   # exact; padding adds 0
""",
)
_def(
    "vunpool", 0x6B,
    (
        R("racc", "accumulator address of dX [N,H,W,C]"),
        R("ra", "scratchpad address of dY [N,OH,OW,C]"),
        R("ri", "scratchpad address of the uint8 indices (mode=max)"),
        *_GEO,
        ENUM("mode", ("max", "sum"), "backward of vmaxpool (indices) or of vsumpool"),
        FLAG("acc", "add to dX instead of overwriting it"),
        DT,
    ),
    "vector", "unpool",
    "Pooling backward: scatter-add dY into dX in the accumulator, to the recorded maximum "
    "(mode=max) or to every window position (mode=sum).",
    """
geometry(r[rsz], r[rhw], r[rkw], r[rpf])  # F is ignored
dY = sp[r[ra]] as dt, [N,OH,OW,C];  S[n,ih,iw,c] = 0
if mode == max:
    I = sp[r[ri]] as u8, [N,OH,OW,C]
    require every I < KH*KW and selects a position inside the input   # else fault
    for n, oh, ow, c:
        kh, kw = I[n,oh,ow,c] // KW, I[n,oh,ow,c] % KW
        S[n, oh*SH + kh - PH, ow*SW + kw - PW, c] += dY[n,oh,ow,c]
if mode == sum:
    for n, oh, ow, c, kh, kw:
        if inside(ih, iw): S[n, ih, iw, c] += dY[n,oh,ow,c]     # ih, iw as in the geometry
for n, ih, iw, c:                                               # one exact sum, then one fit
    acc[r[racc] + ((n*H + ih)*W + iw)*C + c] = fit_acc((acc[..] if acc else 0) + S[n,ih,iw,c])
""",
)
_def(
    "vbias", 0x6C,
    (
        R("racc", "accumulator address of the [rows, cols] block"),
        R("rb", "scratchpad address of the bias vector [cols]"),
        R("rrows"), R("rcols"),
        E("eacc", "exponent of the accumulator block"),
        E("eb", "exponent of the bias"),
        DT,
    ),
    "vector", "bias",
    "Add a per-column bias vector, brought onto the accumulator's grid, to every row of an "
    "accumulator block.",
    """
s = e[eacc] - e[eb]                       # any difference of two 32-bit exponents
for j in range(r[rcols]):
    v = sp[r[rb]][j] as dt
    b[j] = v * 2**-s if s <= 0 else floor((v + 2**(s-1)) / 2**s)   # exact / nearest, ties up
for i in range(r[rrows]), j in range(r[rcols]):
    acc[r[racc] + i*r[rcols] + j] = fit_acc(acc[r[racc] + i*r[rcols] + j] + b[j])   # exact sum
# results are constant for s >= 16 (every b[j] = 0) and for s <= -33 (every nonzero b[j] is
# at least 2**33: fit_acc saturates to its sign's limit, or wraps back to the old value, and
# counts an overflow), so s may be clamped to [-33, 16]
""",
)
CONV_COST_HOOKS = ("conv", "pool", "unpool", "bias")

TABLE: tuple[Instr, ...] = tuple(_ENTRIES)
BY_MNEMONIC: dict[str, Instr] = {i.mnemonic: i for i in TABLE}
BY_OPCODE: dict[int, Instr] = {i.opcode: i for i in TABLE}
UNITS = ("scalar", "dma", "matrix", "vector")
COST_HOOKS = ("scalar", "scalar_mem", "scalar_acc", "branch", "convert", "exp", "divide", "lazy", "scan", "dma", "dma_acc", "gemm", "requant", "alu", "reduce", "rsqrt", "wmul", "qstep", "topk") + CONV_COST_HOOKS
