"""Encoder, decoder and the program file format, all derived from :mod:`isa.spec`.

Program file layout (little-endian)::

    offset  size  field
    0       4     magic  b"LPEM"
    4       2     version (1)
    6       2     reserved, zero
    8       4     n_words: number of 64-bit instruction words
    12      4     n_labels
    16      4     payload_bytes: length of everything after this 24-byte header
    20      4     crc32 of the payload
    24      8*n   instruction words
    ...           n_labels x (u32 pc, u16 name length, utf-8 name), sorted by (pc, name);
                  names are unique assembly label names (not mnemonics), pc <= n_words
    ...           version 2 only: the debug section (below)

Version 1 files carry no debug information; version 2 files (written for programs that came
from assembly) end with a debug section that maps every pc to its source::

    u32 n_files
    n_files x (u16 length, utf-8 file name)    non-empty, unique, in order of first use
    n_words x (u16 file index, u32 line, u16 length, utf-8 source text)
                                               line >= 1; text is one line (no CR/LF)

Programs without a source map are written as version 1, byte for byte as before, so older
readers load them; both versions are read. Every field is checked on load; a failure raises
:class:`BinaryFormatError` with the byte offset of the first bad byte.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isa.errors import BinaryFormatError
from isa.spec import BY_MNEMONIC, BY_OPCODE, NAME_PATTERN, OPCODE_BITS, OPCODE_LO, Field, Instr

MAGIC = b"LPEM"
VERSION = 1  # files without debug information
VERSION_DEBUG = 2  # files with the debug section
HEADER = struct.Struct("<4sHHIIII")
_LABEL_NAME = re.compile(NAME_PATTERN)


@dataclass
class Program:
    """A decoded-once program: instruction words plus its labels and optional debug
    information: ``source`` (file, line) and ``text`` (the source line as written) per pc,
    both empty for a program without it."""

    words: list[int]
    labels: dict[str, int] = field(default_factory=dict)
    # (file, line) per pc: a list, or the assembler's compact isa.asm.SourceMap
    source: Sequence[tuple[str, int]] = field(default_factory=list)
    name: str = "<program>"
    # source text per pc ("" if unknown): a list, or the assembler's compact isa.asm.SourceText
    text: Sequence[str] = field(default_factory=list)

    @property
    def has_debug_info(self) -> bool:
        return bool(self.source) and len(self.source) == len(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def label_at(self) -> list[str]:
        """For every pc, the nearest label at or before it ("" before the first label)."""
        starts = sorted((pc, name) for name, pc in self.labels.items())
        out, cur, j = [], "", 0
        for pc in range(len(self.words)):
            while j < len(starts) and starts[j][0] <= pc:
                cur = starts[j][1]
                j += 1
            out.append(cur)
        return out


def field_value_to_bits(f: Field, value: int) -> int:
    """Range-check ``value`` for field ``f`` and return its raw bits. Raises ValueError."""
    if f.kind == "simm":
        lo, hi = -(1 << (f.width - 1)), (1 << (f.width - 1)) - 1
    elif f.kind == "enum":
        lo, hi = 0, len(f.choices) - 1
    else:
        lo, hi = 0, f.mask
    if not lo <= value <= hi:
        raise ValueError(f"operand {f.name}={value} out of range [{lo}, {hi}]")
    return value & f.mask


def encode(ins: Instr, operands: dict[str, int]) -> int:
    """Encode one instruction; ``operands`` maps every field name to an int."""
    word = ins.opcode << OPCODE_LO
    for f in ins.fields:
        word |= field_value_to_bits(f, operands[f.name]) << f.lo
    return word


def decode(word: int) -> tuple[Instr, dict[str, int]]:
    """Decode one word. Raises ValueError for an unknown opcode or non-zero unused bits."""
    if not 0 <= word < (1 << 64):
        raise ValueError("instruction word out of 64-bit range")
    opcode = word >> OPCODE_LO
    ins = BY_OPCODE.get(opcode)
    if ins is None:
        raise ValueError(f"unknown opcode {opcode:#04x}")
    used = 0
    ops: dict[str, int] = {}
    for f in ins.fields:
        raw = (word >> f.lo) & f.mask
        used |= f.mask << f.lo
        if f.kind == "simm" and raw >> (f.width - 1):
            raw -= 1 << f.width
        if f.kind == "enum" and raw >= len(f.choices):
            raise ValueError(f"{ins.mnemonic}: field {f.name} has invalid value {raw}")
        ops[f.name] = raw
    stray = word & ((1 << OPCODE_LO) - 1) & ~used
    if stray:
        raise ValueError(f"{ins.mnemonic}: reserved bits set ({stray:#x})")
    return ins, ops


def _word_tables() -> tuple[Any, Any, list[int]]:
    """(known[opcode], used-bit mask[opcode], opcodes with enums whose codes are not all
    valid), as numpy arrays for :func:`first_bad_word`."""
    import numpy as np

    known = np.zeros(256, dtype=bool)
    used = np.zeros(256, dtype=np.uint64)
    partial = []
    for op, ins in BY_OPCODE.items():
        known[op] = True
        m = 0
        for f in ins.fields:
            m |= f.mask << f.lo
            if f.kind == "enum" and len(f.choices) != 1 << f.width:
                partial.append(op)
        used[op] = m
    return known, used, sorted(set(partial))


_TABLES: tuple[Any, Any, list[int]] | None = None


def first_bad_word(words: list[int]) -> int:
    """The index of the first word :func:`decode` rejects, or -1; vectorized (numpy), so
    checking a million-word program takes milliseconds."""
    global _TABLES
    import numpy as np

    if not words:
        return -1
    try:
        w = np.array(words, dtype=np.uint64)
    except (OverflowError, TypeError, ValueError):  # a value that is no 64-bit word
        w = None
    if w is None or w.ndim != 1:
        for i, x in enumerate(words):
            try:
                decode(x)
            except (ValueError, TypeError):
                return i
        return -1
    if _TABLES is None:
        _TABLES = _word_tables()
    known, used, partial = _TABLES
    op = (w >> np.uint64(OPCODE_LO)).astype(np.int64)
    low = np.uint64((1 << OPCODE_LO) - 1)
    suspect = ~known[op] | ((w & low & ~used[op]) != 0)
    for p in partial:  # enum codes past the last choice: checked word by word
        suspect |= op == p
    for i in np.flatnonzero(suspect):
        try:
            decode(int(w[i]))
        except ValueError:
            return int(i)
    return -1


def opcode_mask() -> int:
    return ((1 << OPCODE_BITS) - 1) << OPCODE_LO


# ---------------------------------------------------------------------------------------------
# Program files


def to_bytes(prog: Program, debug: bool = True) -> bytes:
    """The program file of ``prog``: version 2 with its debug section when it has a source map
    and ``debug`` is true, else version 1 (no debug information)."""
    body = bytearray()
    for w in prog.words:
        body += struct.pack("<Q", w)
    for name, pc in sorted(prog.labels.items(), key=lambda kv: (kv[1], kv[0])):
        raw = name.encode("utf-8")
        body += struct.pack("<IH", pc, len(raw)) + raw
    version = VERSION
    if debug and prog.has_debug_info:
        version = VERSION_DEBUG
        body += _debug_section(prog)
    header = HEADER.pack(
        MAGIC, version, 0, len(prog.words), len(prog.labels), len(body), zlib.crc32(body)
    )
    return header + bytes(body)


def _one_line(text: str) -> bytes:
    """``text`` on one line as UTF-8, at most 65535 bytes (never cutting a character)."""
    raw = text.replace("\r", " ").replace("\n", " ").encode("utf-8")[:0xFFFF]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def _debug_section(prog: Program) -> bytes:
    names = [_one_line(f) or b"<unknown>" for f, _ in prog.source]
    files: dict[bytes, int] = {}
    for f in names:
        files.setdefault(f, len(files))
    if len(files) > 0xFFFF:
        raise ValueError("more than 65535 source files")
    out = bytearray(struct.pack("<I", len(files)))
    for raw in files:
        out += struct.pack("<H", len(raw)) + raw
    texts = prog.text if len(prog.text) == len(prog.words) else [""] * len(prog.words)
    for f, (_, line), text in zip(names, prog.source, texts, strict=True):
        raw = _one_line(text)
        out += struct.pack("<HIH", files[f], min(max(line, 1), 0xFFFFFFFF), len(raw)) + raw
    return bytes(out)


def from_bytes(data: bytes, file: str = "<bytes>") -> Program:
    """Parse and fully validate a program file (header, CRC, every word, every label)."""
    if len(data) < HEADER.size:
        raise BinaryFormatError(
            f"file is {len(data)} bytes, shorter than the {HEADER.size}-byte header", file,
            len(data),
        )
    magic, version, reserved, n_words, n_labels, payload, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BinaryFormatError(f"bad magic {magic!r}, expected {MAGIC!r}", file, 0)
    if version not in (VERSION, VERSION_DEBUG):
        raise BinaryFormatError(
            f"unsupported version {version}, expected {VERSION} or {VERSION_DEBUG}", file, 4)
    if reserved:
        raise BinaryFormatError("reserved header field is not zero", file, 6)
    body = data[HEADER.size :]
    if len(body) != payload:
        where = HEADER.size + min(len(body), payload)
        raise BinaryFormatError(
            f"payload is {len(body)} bytes, header says {payload} (truncated or padded)",
            file, where,
        )
    if 8 * n_words > payload:
        raise BinaryFormatError(
            f"header claims {n_words} words, more than the payload holds", file, 8
        )
    if zlib.crc32(body) != crc:
        raise BinaryFormatError("CRC mismatch: the payload is corrupted", file, 20)
    words = [int(w) for w in struct.unpack_from(f"<{n_words}Q", data, HEADER.size)]
    bad = first_bad_word(words)
    if bad >= 0:
        try:
            decode(words[bad])
        except ValueError as e:
            raise BinaryFormatError(f"instruction {bad}: {e}", file,
                                    HEADER.size + 8 * bad) from None
    labels: dict[str, int] = {}
    prev = (0, "")
    off = HEADER.size + 8 * n_words
    for _ in range(n_labels):
        if off + 6 > len(data):
            raise BinaryFormatError("label table truncated", file, off)
        pc, n = struct.unpack_from("<IH", data, off)
        if off + 6 + n > len(data):
            raise BinaryFormatError("label name truncated", file, off + 6)
        try:
            name = data[off + 6 : off + 6 + n].decode("utf-8")
        except UnicodeDecodeError:
            raise BinaryFormatError("label name is not utf-8", file, off + 6) from None
        if not _LABEL_NAME.fullmatch(name) or name in BY_MNEMONIC:
            raise BinaryFormatError(f"{name!r} is not a valid label name", file, off + 6)
        if pc > n_words:
            raise BinaryFormatError(f"label {name!r} points past the program ({pc})", file, off)
        if name in labels:
            raise BinaryFormatError(f"label {name!r} appears twice", file, off)
        if labels and (pc, name) < prev:
            raise BinaryFormatError("label table is not sorted by pc, then name", file, off)
        prev = (pc, name)
        labels[name] = pc
        off += 6 + n
    source: list[tuple[str, int]] = []
    text: list[str] = []
    if version == VERSION_DEBUG:
        source, text, off = _read_debug(data, off, n_words, file)
    if off != len(data):
        what = "debug section" if version == VERSION_DEBUG else "label table"
        raise BinaryFormatError(f"trailing bytes after the {what}", file, off)
    return Program(words, labels, source, file, text)


def _read_debug(data: bytes, off: int, n_words: int, file: str
                ) -> tuple[list[tuple[str, int]], list[str], int]:
    """Parse the debug section at ``off``: (source map, source texts, offset after it)."""

    def need(n: int, what: str) -> None:
        if off + n > len(data):
            raise BinaryFormatError(f"debug section truncated in {what}", file, off)

    def utf8(start: int, n: int, what: str) -> str:
        try:
            return data[start : start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise BinaryFormatError(f"{what} is not utf-8", file, start) from None

    need(4, "the file count")
    (n_files,) = struct.unpack_from("<I", data, off)
    if n_files > 0xFFFF or (n_files == 0 and n_words):
        raise BinaryFormatError(f"debug section names {n_files} source files", file, off)
    off += 4
    files: list[str] = []
    starts: list[int] = []
    for _ in range(n_files):
        need(2, "a file name")
        (n,) = struct.unpack_from("<H", data, off)
        need(2 + n, "a file name")
        name = utf8(off + 2, n, "source file name")
        if not name or name in files or "\n" in name or "\r" in name:
            raise BinaryFormatError(f"bad or repeated source file name {name!r}", file, off)
        files.append(name)
        starts.append(off)
        off += 2 + n
    source: list[tuple[str, int]] = []
    text: list[str] = []
    used = 0  # files are listed in order of first use: the next new one must be files[used]
    for pc in range(n_words):
        need(8, f"the entry of pc {pc}")
        idx, line, n = struct.unpack_from("<HIH", data, off)
        if idx > used or idx >= n_files:
            raise BinaryFormatError(f"pc {pc}: source file index {idx} out of order or range",
                                    file, off)
        used = max(used, idx + 1)
        if line < 1:
            raise BinaryFormatError(f"pc {pc}: source line {line} (lines start at 1)", file,
                                    off + 2)
        need(8 + n, f"the text of pc {pc}")
        t = utf8(off + 8, n, f"pc {pc}: source text")
        if "\n" in t or "\r" in t:
            raise BinaryFormatError(f"pc {pc}: source text spans lines", file, off + 8)
        source.append((files[idx], line))
        text.append(t)
        off += 8 + n
    if used != n_files:
        raise BinaryFormatError(f"source file {files[used]!r} is never used", file,
                                starts[used])
    return source, text, off


def write_program(prog: Program, path: str | Path, debug: bool = True) -> None:
    """Write ``prog`` as a program file (with its debug section unless ``debug`` is false)."""
    Path(path).write_bytes(to_bytes(prog, debug))


def read_program(path: str | Path) -> Program:
    return from_bytes(Path(path).read_bytes(), str(path))
