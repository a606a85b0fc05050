"""Generate the instruction-set reference (``docs/isa.md``) and table rows from the table."""

from __future__ import annotations

from isa.conventions import conventions_markdown
from isa.spec import GEOMETRY_DOC, OPCODE_LO, TABLE, UNITS, WORD_BITS, Field, Instr


def operand_syntax(ins: Instr) -> str:
    parts = []
    for f in ins.positional:
        parts.append({"reg": f.name, "ereg": f.name, "target": "label"}.get(f.kind, f.name))
    for f in ins.keywords:
        default = f.choices[0] if f.kind == "enum" else "0"
        parts.append(f"[{f.name}={default}]")
    return ", ".join(parts)


def field_summary(f: Field) -> str:
    bits = f"[{f.lo + f.width - 1}:{f.lo}]"
    kind = f.kind if f.kind != "enum" else "enum " + "|".join(f.choices)
    doc = f" — {f.doc}" if f.doc else ""
    return f"`{f.name}` {bits} {kind}{doc}"


def rows() -> list[tuple[str, str, str, str, str, str]]:
    """(opcode, mnemonic, operands, unit, cost hook, doc) for every instruction."""
    return [
        (f"0x{i.opcode:02x}", i.mnemonic, operand_syntax(i), i.unit, i.cost, i.doc) for i in TABLE
    ]


def markdown() -> str:
    out = [
        "# lpemu instruction set",
        "",
        "_Generated from `isa/spec.py` by `lpemu isa --markdown`; do not edit by hand._",
        "",
        f"Every instruction is one {WORD_BITS}-bit little-endian word. Bits "
        f"[{WORD_BITS - 1}:{OPCODE_LO}] hold the opcode; operand fields are packed from bit 0 "
        "upward. Unused bits must be zero (the decoder rejects a word that sets them).",
        "",
        "Notation: `r[x]` scalar register (64-bit, wrapping; `r0` is always 0), `e[x]` exponent "
        "register (value = q * 2**e), `sp` scratchpad (bytes; i8/i16 elements, little-endian), "
        "`acc` accumulator memory (entries of `accumulator.bits`), `dram` DRAM (bytes). "
        "`sat(y, dt)` clamps to the type's range; `fit_acc(y)` saturates or wraps to the "
        "accumulator width per `accumulator.overflow` and counts an overflow when the value "
        "changes. `floor` is exact floor division (of unbounded integers, or of exact "
        "rationals). `draw()` takes the dither generator's next 64-bit draw and "
        "`round_shift` is the requantizer's rounding (both under Machine state and "
        "conventions, with reset values, flags, alignment, aliasing, DMA rules and every "
        "fault). Every address range is bounds-checked before any state changes; a bad "
        "access raises a memory access error naming pc and address.",
        "",
        "Assembly: one instruction per line; lines end at `\\n` (a `\\r` before it is "
        "dropped; no other character breaks a line). `#` or `;` starts a comment. `name:` "
        "defines a label (several may precede an instruction) and `.equ NAME, value` a "
        "constant, usable wherever an integer is. Positional operands come in the order shown, "
        "separated by commas; enum and flag operands are optional `name=value` keywords "
        "(defaults: the first choice, 0). Integers are decimal, `0x` hex, `0o` octal or `0b` "
        "binary, with optional `_` separators. Errors name `file:line:col` (1-based; columns "
        "count characters).",
        "",
        "| opcode | mnemonic | operands | unit | cost | description |",
        "|---|---|---|---|---|---|",
    ]
    for op, mn, ops, unit, cost, doc in rows():
        out.append(f"| {op} | `{mn}` | `{ops}` | {unit} | {cost} | {doc} |")
    out += ["", conventions_markdown().rstrip("\n")]
    geo_users = ", ".join(f"`{i.mnemonic}`" for i in TABLE if "rsz" in i.by_name)
    out += ["", "## Geometry registers", "",
            f"Used by {geo_users} (operands `rsz, rhw, rkw, rpf`); the pseudo-code below calls "
            "this `geometry(...)`. Image tensors are NHWC (channels last), row-major.", "",
            "```python", GEOMETRY_DOC, "```"]
    for unit in UNITS:
        out += ["", f"## {unit} unit", ""]
        for i in TABLE:
            if i.unit != unit:
                continue
            out += [f"### `{i.mnemonic} {operand_syntax(i)}`", "", i.doc, ""]
            if i.fields:
                out += ["Fields: " + "; ".join(field_summary(f) for f in i.fields), ""]
            out += ["```python", i.semantics, "```", ""]
    return "\n".join(out).rstrip() + "\n"
