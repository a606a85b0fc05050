"""Assembler and disassembler, both driven by the instruction table.

Syntax (one instruction per line)::

    # comment (';' also starts a comment)
    .equ ROWS, 64            # named constant, usable wherever an immediate is
    loop:                    # label: names the next instruction's index
        li   r1, ROWS
        gemm r3, r1, r2, r4, r5, r6, acc=1, sb=1
        rq   r7, r3, r8, e2, e1, rnd=uniform, dt=i8
        blt  r1, r2, loop
        halt

Positional operands follow the table's declaration order: registers ``r0..r31``, exponent
registers ``e0..e15``, integer immediates (decimal, ``0x`` hex, ``0b`` binary, a ``.equ`` name,
optionally negated) and branch targets (a label or an instruction index). Enum and flag operands
are optional ``name=value`` keywords after them. Errors carry file:line:col.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from isa.encoding import MAGIC, Program, decode, encode, field_value_to_bits, from_bytes
from isa.errors import AsmError
from isa.spec import BY_MNEMONIC, N_EXP_REGS, N_SCALAR_REGS, NAME_PATTERN, Field, Instr

_IDENT = re.compile(NAME_PATTERN + r"\Z")
_LABEL = re.compile(f"({NAME_PATTERN})\\s*:")
_TOKEN = re.compile(r"\s*([^,]+?)\s*(?:,|$)")


@dataclass
class _Line:
    ins: Instr
    ops: list[tuple[str, int]]  # (operand text, column)
    lineno: int
    col: int
    text: str  # the instruction as written (labels and comment removed)


def _strip_comment(text: str) -> str:
    for ch in "#;":
        i = text.find(ch)
        if i >= 0:
            text = text[:i]
    return text.rstrip()


def _split_operands(text: str, base_col: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos = 0
    for part in text.split(","):
        stripped = part.strip()
        col = base_col + pos + (len(part) - len(part.lstrip()))
        out.append((stripped, col))
        pos += len(part) + 1
    if len(out) == 1 and out[0][0] == "":
        return []
    return out


def _parse_int(tok: str, consts: dict[str, int]) -> int | None:
    neg = tok.startswith("-")
    body = tok[1:] if neg else tok
    if body in consts:
        v = consts[body]
    else:
        try:
            v = int(body.replace("_", ""), 0)
        except ValueError:
            return None
    return -v if neg else v


def assemble(text: str, file: str = "<asm>") -> Program:
    """Assemble source text into a :class:`Program` (labels and its debug information: the
    file, line and text of every instruction, included)."""
    consts: dict[str, int] = {}
    labels: dict[str, int] = {}
    label_pos: dict[str, tuple[int, int]] = {}
    lines: list[_Line] = []

    def err(msg: str, lineno: int, col: int) -> AsmError:
        return AsmError(msg, file, lineno, col)

    # lines end at "\n" only (an optional "\r" before it is dropped), as editors and
    # compilers count them; str.splitlines would also split at \f, \v, \x1c-\x1e, \x85, ...
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = _strip_comment(raw.removesuffix("\r"))
        col0 = len(line) - len(line.lstrip())
        rest = line.strip()
        # labels (possibly several) at the start of the line
        while True:
            m = _LABEL.match(rest)
            if not m:
                break
            name = m.group(1)
            if name in labels:
                prev = label_pos[name]
                raise err(f"label {name!r} already defined at line {prev[0]}", lineno, col0 + 1)
            if name in BY_MNEMONIC:
                raise err(f"label {name!r} is a mnemonic", lineno, col0 + 1)
            labels[name] = len(lines)
            label_pos[name] = (lineno, col0 + 1)
            consumed = m.end()
            rest2 = rest[consumed:]
            col0 += consumed + (len(rest2) - len(rest2.lstrip()))
            rest = rest2.strip()
        if not rest:
            continue
        m = re.match(r"(\S+)\s*(.*)\Z", rest)
        assert m is not None
        mnemonic, operand_text = m.group(1), m.group(2)
        op_col = col0 + m.start(2) + 1
        if mnemonic == ".equ":
            ops = _split_operands(operand_text, op_col)
            if len(ops) != 2:
                raise err(".equ takes a name and a value", lineno, col0 + 1)
            (name, ncol), (val, vcol) = ops
            if not _IDENT.match(name):
                raise err(f"bad constant name {name!r}", lineno, ncol)
            v = _parse_int(val, consts)
            if v is None:
                raise err(f"bad constant value {val!r}", lineno, vcol)
            consts[name] = v
            continue
        if mnemonic.startswith("."):
            raise err(f"unknown directive {mnemonic!r}", lineno, col0 + 1)
        ins = BY_MNEMONIC.get(mnemonic.lower())
        if ins is None:
            raise err(f"unknown mnemonic {mnemonic!r}", lineno, col0 + 1)
        ops = _split_operands(operand_text, op_col)
        for tok, c in ops:
            if tok == "":
                raise err("empty operand", lineno, c)
        lines.append(_Line(ins, ops, lineno, col0 + 1, rest))

    words: list[int] = []
    source: list[tuple[str, int]] = []
    for ln in lines:
        words.append(_encode_line(ln, consts, labels, file))
        source.append((file, ln.lineno))
    return Program(words, labels, source, file, [ln.text for ln in lines])


def _encode_line(ln: _Line, consts: dict[str, int], labels: dict[str, int], file: str) -> int:
    ins = ln.ins
    pos_fields = ins.positional
    kw_fields = {f.name: f for f in ins.keywords}
    values: dict[str, int] = {f.name: 0 for f in ins.fields}
    n_pos = 0
    seen_kw: set[str] = set()

    def err(msg: str, col: int) -> AsmError:
        return AsmError(msg, file, ln.lineno, col)

    for tok, col in ln.ops:
        if "=" in tok:
            key, _, val = (s.strip() for s in tok.partition("="))
            f = kw_fields.get(key)
            if f is None:
                valid = ", ".join(kw_fields) or "none"
                raise err(f"{ins.mnemonic}: unknown keyword {key!r} (valid: {valid})", col)
            if key in seen_kw:
                raise err(f"{ins.mnemonic}: keyword {key!r} given twice", col)
            seen_kw.add(key)
            if f.kind == "enum":
                if val in f.choices:
                    values[key] = f.choices.index(val)
                    continue
                raise err(
                    f"{ins.mnemonic}: {key} must be one of {', '.join(f.choices)}, got {val!r}",
                    col,
                )
            v = _parse_int(val, consts)
            if v not in (0, 1):
                raise err(f"{ins.mnemonic}: {key} must be 0 or 1, got {val!r}", col)
            values[key] = v
            continue
        if n_pos >= len(pos_fields):
            raise err(
                f"{ins.mnemonic}: too many operands (expects {len(pos_fields)} positional)", col
            )
        f = pos_fields[n_pos]
        n_pos += 1
        values[f.name] = _operand(f, tok, col, consts, labels, ins, err)
    if n_pos < len(pos_fields):
        missing = ", ".join(f.name for f in pos_fields[n_pos:])
        end_col = ln.ops[-1][1] + len(ln.ops[-1][0]) if ln.ops else ln.col + len(ins.mnemonic)
        raise err(f"{ins.mnemonic}: missing operand(s) {missing}", end_col)
    return encode(ins, values)


def _operand(f: Field, tok: str, col: int, consts, labels, ins: Instr, err) -> int:
    if f.kind in ("reg", "ereg"):
        prefix, limit = ("r", N_SCALAR_REGS) if f.kind == "reg" else ("e", N_EXP_REGS)
        m = re.fullmatch(prefix + r"(\d+)", tok)
        if not m or int(m.group(1)) >= limit:
            what = "scalar register r0..r31" if f.kind == "reg" else "exponent register e0..e15"
            raise err(f"{ins.mnemonic}: operand {f.name} must be a {what}, got {tok!r}", col)
        return int(m.group(1))
    if f.kind == "target":
        if tok in labels:
            return labels[tok]
        v = _parse_int(tok, consts)
        if v is None:
            raise err(f"{ins.mnemonic}: undefined label {tok!r}", col)
    else:
        v = _parse_int(tok, consts)
        if v is None:
            raise err(f"{ins.mnemonic}: operand {f.name} must be an integer, got {tok!r}", col)
    try:
        field_value_to_bits(f, v)
    except ValueError as e:
        raise err(f"{ins.mnemonic}: {e}", col) from None
    return v


def format_instruction(ins: Instr, ops: dict[str, int], names: dict[int, str]) -> str:
    parts: list[str] = []
    for f in ins.positional:
        v = ops[f.name]
        if f.kind == "reg":
            parts.append(f"r{v}")
        elif f.kind == "ereg":
            parts.append(f"e{v}")
        elif f.kind == "target":
            parts.append(names.get(v, str(v)))
        else:
            parts.append(str(v))
    for f in ins.keywords:
        v = ops[f.name]
        if v:
            parts.append(f"{f.name}={f.choices[v] if f.kind == 'enum' else v}")
    return f"{ins.mnemonic} {', '.join(parts)}".rstrip()


def disassemble(prog: Program) -> str:
    """Readable assembly that re-assembles to the same words and labels."""
    by_pc: dict[int, list[str]] = {}
    for name, pc in prog.labels.items():
        by_pc.setdefault(pc, []).append(name)
    first = {pc: sorted(ns)[0] for pc, ns in by_pc.items()}
    out: list[str] = []
    for pc, w in enumerate(prog.words):
        for name in sorted(by_pc.get(pc, [])):
            out.append(f"{name}:")
        ins, ops = decode(w)
        out.append(f"    {format_instruction(ins, ops, first)}")
    for name in sorted(by_pc.get(len(prog.words), [])):
        out.append(f"{name}:")
    return "\n".join(out) + "\n"


def load_program(path: str | Path) -> Program:
    """Read a program file: assembly text (``.s``/``.asm`` or any UTF-8 text) or a binary
    program file (``.bin``/``.lpem`` or anything starting with the magic ``LPEM``)."""
    data = Path(path).read_bytes()
    suffix = Path(path).suffix.lower()
    if suffix in (".s", ".asm"):
        return assemble(_utf8(data, str(path)), str(path))
    if data[:4] == MAGIC or suffix in (".bin", ".lpem"):
        return from_bytes(data, str(path))
    return assemble(_utf8(data, str(path)), str(path))


def _utf8(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise AsmError("source is not UTF-8 text", path, line, col) from None
