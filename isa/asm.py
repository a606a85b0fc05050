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
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from isa.encoding import MAGIC, Program, decode, field_value_to_bits, from_bytes
from isa.errors import AsmError, UsageError
from isa.files import TooLarge, read_bounded
from isa.limits import MAX_INT_LITERAL_CHARS, MAX_PROGRAM_FILE_BYTES, short_repr
from isa.spec import (
    BY_MNEMONIC,
    N_EXP_REGS,
    N_SCALAR_REGS,
    NAME_PATTERN,
    OPCODE_LO,
    TABLE,
    Field,
    Instr,
)

_IDENT = re.compile(NAME_PATTERN + r"\Z")
_LABEL = re.compile(f"({NAME_PATTERN})\\s*:\\s*")
_REGS = {f"r{i}": i for i in range(N_SCALAR_REGS)}
_EREGS = {f"e{i}": i for i in range(N_EXP_REGS)}
_REG_DIGITS = re.compile(r"[re](\d+)")
_CHUNK = 1 << 20  # characters of source split into lines at a time
# per mnemonic: positional fields in order, keyword fields by name
_FIELDS = {ins.mnemonic: (ins.positional, {f.name: f for f in ins.keywords}) for ins in TABLE}
# per immediate field: the range of values it holds
_LO = {f: -(1 << (f.width - 1)) if f.kind == "simm" else 0 for ins in TABLE for f in ins.fields}
_HI = {f: (1 << (f.width - 1)) - 1 if f.kind == "simm" else f.mask for ins in TABLE
       for f in ins.fields}


class _TooLong(ValueError):
    """An integer literal over MAX_INT_LITERAL_CHARS characters."""


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
    """An integer literal or a defined constant (optionally negated), else None. A literal
    longer than MAX_INT_LITERAL_CHARS raises _TooLong (int() of thousands of digits is slow
    and Python refuses more than 4,300)."""
    neg = tok.startswith("-")
    body = tok[1:] if neg else tok
    if body in consts:
        v = consts[body]
    else:
        if len(body) > MAX_INT_LITERAL_CHARS:
            raise _TooLong(f"integer literal of {len(body):,} characters (the limit is "
                           f"{MAX_INT_LITERAL_CHARS})")
        try:
            v = int(body.replace("_", ""), 0)
        except ValueError:
            return None
    return -v if neg else v


def _is_name(tok: str) -> bool:
    """A token that may name a constant or label defined later in the file."""
    return bool(_IDENT.match(tok[1:] if tok.startswith("-") else tok))


def _line_chunks(text: str):
    """``(number of the first line, lines)`` a chunk of the text at a time, so a huge file
    never has a list of all its lines in memory. Lines end at "\n" only (an optional "\r"
    before it is dropped), as editors and compilers count them; str.splitlines would also
    split at \f, \v, \x1c-\x1e, \x85, ..."""
    lineno = 1
    start, n = 0, len(text)
    while True:
        end = text.find("\n", start + _CHUNK) if start + _CHUNK < n else -1
        chunk = text[start:end] if end >= 0 else text[start:]
        lines = chunk.split("\n")
        if "\r" in chunk:
            lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
        yield lineno, lines
        if end < 0:
            return
        lineno += len(lines)
        start = end + 1


@dataclass
class _Pending:
    """An instruction with operands naming constants or labels not defined when it was read:
    encoded at the end of the file."""

    pc: int
    ins: Instr
    names: list[tuple[Field, str, int]]  # (field, token, column)
    lineno: int


def assemble(text: str, file: str = "<asm>") -> Program:
    """Assemble source text into a :class:`Program` (labels and its debug information: the
    file, line and text of every instruction, included).

    One pass over the lines, linear in the size of the text: each instruction is encoded as it
    is read (identical instruction lines are encoded once); only instructions naming a label or
    constant defined further down wait for the end of the file. A constant is defined once
    (redefining it is an error), so every use of it sees the same value."""
    consts: dict[str, int] = {}
    const_line: dict[str, int] = {}
    labels: dict[str, int] = {}
    words = array("Q")
    line_of = array("I")
    texts: list[str] = []  # each instruction as written (labels and comment removed)
    pending: list[_Pending] = []
    # instruction line (no labels, no names) -> its word and text (one str shared by repeats)
    cache: dict[str, tuple[int, str]] = {}

    def err(msg: str, lineno: int, col: int) -> AsmError:
        return AsmError(msg, file, lineno, col)

    for first, lines in _line_chunks(text):
        for lineno, raw in enumerate(lines, first):
            hit = cache.get(raw)
            if hit is not None:
                words.append(hit[0])
                line_of.append(lineno)
                texts.append(hit[1])
                continue
            line = _strip_comment(raw)
            rest = line.lstrip()
            if not rest:
                continue
            col0 = len(line) - len(rest)  # 0-based column of `rest`
            pos = 0
            has_label = False
            # labels (possibly several) at the start of the line
            while ":" in rest:
                m = _LABEL.match(rest, pos)
                if not m:
                    break
                has_label = True
                name = m.group(1)
                col = col0 + pos + 1
                if name in labels:
                    raise err(f"label {name!r} already defined at line "
                              f"{_label_line(text, name)}", lineno, col)
                if name in BY_MNEMONIC:
                    raise err(f"label {name!r} is a mnemonic", lineno, col)
                labels[name] = len(words)
                pos = m.end()
            if pos >= len(rest):
                continue
            head = rest.split(None, 1) if pos == 0 else rest[pos:].split(None, 1)
            mnemonic = head[0]
            operand_text = head[1] if len(head) > 1 else ""
            mcol = col0 + pos + 1
            op_col = col0 + len(rest) - len(operand_text) + 1
            if mnemonic == ".equ":
                ops = _split_operands(operand_text, op_col)
                if len(ops) != 2:
                    raise err(".equ takes a name and a value", lineno, mcol)
                (name, ncol), (val, vcol) = ops
                if not _IDENT.match(name):
                    raise err(f"bad constant name {name!r}", lineno, ncol)
                if name in consts:
                    raise err(f"constant {name!r} already defined at line {const_line[name]} "
                              "(a constant is defined once)", lineno, ncol)
                try:
                    v = _parse_int(val, consts)
                except _TooLong as e:
                    raise err(str(e), lineno, vcol) from None
                if v is None:
                    raise err(f"bad constant value {val!r}", lineno, vcol)
                consts[name] = v
                const_line[name] = lineno
                continue
            if mnemonic.startswith("."):
                raise err(f"unknown directive {mnemonic!r}", lineno, mcol)
            ins = BY_MNEMONIC.get(mnemonic.lower())
            if ins is None:
                raise err(f"unknown mnemonic {mnemonic!r}", lineno, mcol)
            parts = operand_text.split(",") if operand_text else []
            w, names = _parse_line(ins, parts, op_col, consts, labels, mcol, lineno, file)
            written = rest[pos:] if pos else rest
            if names:
                pending.append(_Pending(len(words), ins, names, lineno))
            elif not has_label and len(cache) < 100_000:
                cache[raw] = (w, written)
            words.append(w)
            line_of.append(lineno)
            texts.append(written)

    for p in pending:  # forward references, now that every label and constant is known
        w = words[p.pc]
        for f, tok, col in p.names:
            v = _resolve(f, tok, col, consts, labels, p.ins, p.lineno, file)
            w |= (v & f.mask) << f.lo
        words[p.pc] = w
    return Program(words.tolist(), labels, SourceMap(file, line_of), file, texts)


def _label_line(text: str, name: str) -> int:
    """The line that first defines label ``name`` (for the error on its second definition:
    found again by scanning, so no line number is kept per label)."""
    for first, lines in _line_chunks(text):
        for lineno, raw in enumerate(lines, first):
            rest, pos = _strip_comment(raw).lstrip(), 0
            while ":" in rest and (m := _LABEL.match(rest, pos)):
                if m.group(1) == name:
                    return lineno
                pos = m.end()
    return 0  # pragma: no cover - the caller saw the definition


class SourceMap(Sequence):
    """The (file, line) of every pc, kept as one array of line numbers (a list of tuples
    would take ~90 bytes per instruction)."""

    def __init__(self, file: str, lines: array) -> None:
        self.file, self.lines = file, lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [(self.file, ln) for ln in self.lines[i]]
        return (self.file, self.lines[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SourceMap):
            return self.file == other.file and self.lines == other.lines
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"SourceMap({self.file!r}, {len(self)} lines)"


def _parse_line(ins: Instr, parts: list[str], op_col: int, consts: dict[str, int],
                labels: dict[str, int], mcol: int, lineno: int, file: str
                ) -> tuple[int, list[tuple[Field, str, int]]]:
    """The instruction word of one line with every operand known now, and the operands naming
    constants or labels not defined yet (their bits are added at the end of the file).
    ``parts`` is the operand text split at commas, which starts at column ``op_col``."""
    pos_fields, kw_fields = _FIELDS[ins.mnemonic]
    word = ins.opcode << OPCODE_LO
    names: list[tuple[Field, str, int]] = []
    n_pos = 0
    seen_kw: set[str] = set()

    def err(msg: str, i: int) -> AsmError:
        return AsmError(msg, file, lineno, _column(parts, i, op_col))

    toks = [p.strip() for p in parts]
    if "" in toks:
        raise err("empty operand", toks.index(""))
    for i, tok in enumerate(toks):
        if "=" in tok:
            key, _, val = (s.strip() for s in tok.partition("="))
            f = kw_fields.get(key)
            if f is None:
                valid = ", ".join(kw_fields) or "none"
                raise err(f"{ins.mnemonic}: unknown keyword {short_repr(key)} (valid: {valid})",
                          i)
            if key in seen_kw:
                raise err(f"{ins.mnemonic}: keyword {key!r} given twice", i)
            seen_kw.add(key)
            if f.kind == "enum":
                if val in f.choices:
                    word |= f.choices.index(val) << f.lo
                    continue
                raise err(f"{ins.mnemonic}: {key} must be one of {', '.join(f.choices)}, got "
                          f"{short_repr(val)}", i)
            try:
                v = _parse_int(val, consts)
            except _TooLong as e:
                raise err(f"{ins.mnemonic}: {key}: {e}", i) from None
            if v not in (0, 1):
                raise err(f"{ins.mnemonic}: {key} must be 0 or 1, got {short_repr(val)}", i)
            word |= v << f.lo
            continue
        if n_pos >= len(pos_fields):
            raise err(
                f"{ins.mnemonic}: too many operands (expects {len(pos_fields)} positional)", i
            )
        f = pos_fields[n_pos]
        n_pos += 1
        if f.kind == "reg" or f.kind == "ereg":
            v = (_REGS if f.kind == "reg" else _EREGS).get(tok)
            if v is None:
                v = _register_slow(f, tok)
            if v is None:
                what = "scalar register r0..r31" if f.kind == "reg" else \
                    "exponent register e0..e15"
                raise err(f"{ins.mnemonic}: operand {f.name} must be a {what}, got "
                          f"{short_repr(tok)}", i)
            word |= v << f.lo
        elif (tok[0].isdigit() or tok[0] == "-" and tok[1:2].isdigit()) and len(tok) <= 24 \
                and (v := _literal(tok)) is not None and _LO[f] <= v <= _HI[f]:
            word |= (v & f.mask) << f.lo  # the common case: an in-range integer literal
        elif (f.kind == "target" and tok in labels) or not _is_name(tok) or \
                (tok[1:] if tok[0] == "-" else tok) in consts:
            v = _resolve(f, tok, _column(parts, i, op_col), consts, labels, ins, lineno, file)
            word |= (v & f.mask) << f.lo
        else:  # a label or constant defined further down (or never)
            names.append((f, tok, _column(parts, i, op_col)))
    if n_pos < len(pos_fields):
        missing = ", ".join(f.name for f in pos_fields[n_pos:])
        end_col = (_column(parts, len(parts) - 1, op_col) + len(toks[-1]) if toks
                   else mcol + len(ins.mnemonic))
        raise AsmError(f"{ins.mnemonic}: missing operand(s) {missing}", file, lineno, end_col)
    return word, names


def _literal(tok: str) -> int | None:
    try:
        return int(tok, 0)
    except ValueError:  # 010, 1__0, ...: the general path decides (and words the error)
        return None


def _register_slow(f: Field, tok: str) -> int | None:
    """A register written with leading zeros (``r07``), or None. The digits are counted before
    they are converted, so a register "number" of thousands of digits costs nothing."""
    m = _REG_DIGITS.fullmatch(tok)
    prefix, limit = ("r", N_SCALAR_REGS) if f.kind == "reg" else ("e", N_EXP_REGS)
    if not m or tok[0] != prefix or len(m.group(1)) > 8 or int(m.group(1)) >= limit:
        return None
    return int(m.group(1))


def _column(parts: list[str], i: int, op_col: int) -> int:
    """1-based column of the i-th operand (its first non-blank character)."""
    pos = sum(len(p) + 1 for p in parts[:i])
    part = parts[i]
    return op_col + pos + (len(part) - len(part.lstrip()))


def _resolve(f: Field, tok: str, col: int, consts: dict[str, int], labels: dict[str, int],
             ins: Instr, lineno: int, file: str) -> int:
    """The value of a positional immediate or target operand, range-checked for its field."""
    def err(msg: str) -> AsmError:
        return AsmError(msg, file, lineno, col)

    try:
        if f.kind == "target" and tok in labels:
            v: int | None = labels[tok]
        else:
            v = _parse_int(tok, consts)
    except _TooLong as e:
        raise err(f"{ins.mnemonic}: operand {f.name}: {e}") from None
    if v is None:
        if f.kind == "target":
            raise err(f"{ins.mnemonic}: undefined label {short_repr(tok)}")
        raise err(f"{ins.mnemonic}: operand {f.name} must be an integer, got {short_repr(tok)}")
    try:
        field_value_to_bits(f, v)
    except ValueError as e:
        raise err(f"{ins.mnemonic}: {e}") from None
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
    program file (``.bin``/``.lpem`` or anything starting with the magic ``LPEM``). At most
    ``MAX_PROGRAM_FILE_BYTES`` are read (a device or pipe given as the program stops there:
    UsageError naming the path)."""
    try:
        data = read_bounded(path, MAX_PROGRAM_FILE_BYTES)
    except TooLarge as e:
        raise UsageError(f"program file {e.describe()}", str(path)) from None
    suffix = Path(path).suffix.lower()
    if suffix not in (".s", ".asm") and (data[:4] == MAGIC or suffix in (".bin", ".lpem")):
        return from_bytes(data, str(path))  # type: ignore[arg-type]
    source = _utf8(data, str(path))
    del data  # the bytes are not needed while the text is assembled
    return assemble(source, str(path))


def _utf8(data: bytes | bytearray, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise AsmError("source is not UTF-8 text", path, line, col) from None
