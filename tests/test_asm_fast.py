"""The assembler's compiled scanner (isa/fastasm.py, used for large sources) against the Python
assembler (the reference): the same words, labels, source map, source texts and errors (with
file:line:col) on generated programs and on edge cases, with numba's JIT on and off (the
second in a NUMBA_DISABLE_JIT=1 child). The fast path is forced on small sources by calling
it directly or by lowering FAST_MIN_LINES."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jit_child import jit_off_outcomes

import isa.asm as asm
from isa.encoding import decode, encode
from isa.errors import AsmError
from isa.fastasm import scan
from isa.spec import TABLE

ROOT = Path(__file__).resolve().parents[1]


def outcome(fn) -> object:
    """Everything a Program holds (or the error's one line), comparable across paths."""
    try:
        p = fn()
    except AsmError as e:
        return str(e)
    if p is None:
        return None
    return (p.words, p.labels, [tuple(s) for s in p.source], list(p.text), p.name,
            p.has_debug_info)


def check(text: str) -> object:
    """The scanner and the Python assembler agree on ``text``: with labels left to Python
    always, with labels in the scanner whenever that try stands; returns the outcome."""
    want = outcome(lambda: asm.assemble_python(text, "f.s"))
    got = outcome(lambda: asm._assemble_scanned(text.encode(), "f.s"))
    assert got == want, (text, got, want)
    n = text.count("\n") + 1
    for labels in (False, True):
        got = outcome(lambda labels=labels: asm._scanned(text.encode(), "f.s", n, labels))
        assert got == want or labels and got is None, (labels, text, got, want)
    return want


def n_slow(text: str, labels: bool = False) -> int:
    """How many lines of ``text`` the scanner left to Python."""
    data = np.frombuffer(text.encode(), np.uint8)
    n = text.count("\n") + 1
    arrays = (np.zeros(n, np.uint64), np.zeros(n, np.uint32), np.zeros(n, np.uint32),
              np.zeros(n, np.uint32), np.zeros(n, np.uint8))
    ns, _, _ = scan(data, *arrays, labels=labels)
    return int(arrays[4][:ns].sum())


# ------------------------------------------------------------------------------ edge cases
def boundary_tokens(f) -> list[str]:
    """Operand spellings at and past the bounds of field ``f``."""
    if f.kind == "reg":
        return ["r0", "r31", "r07", "r00000031", "r32", "r000000001", "R1", "r", "e1", "r-1",
                "r1x", "x"]
    if f.kind == "ereg":
        return ["e0", "e15", "e015", "e16", "r1", "E1", "e"]
    lo = -(1 << (f.width - 1)) if f.kind == "simm" else 0
    hi = (1 << (f.width - 1)) - 1 if f.kind == "simm" else f.mask
    vals = [lo, hi, lo - 1, hi + 1, 0, 1, -1]
    return ([str(v) for v in vals] + [hex(v) for v in vals] + [f"{v:#b}" for v in vals[:4]]
            + [f"{v:#o}" for v in vals[:4]] + [hex(hi).upper().replace("X", "x"), "0X1F",
                                               "0B1", "0O7", "-0", "00", "007", "1_0", "+5",
                                               "0x", "--1", "-", "0x" + "f" * 16, "9" * 19,
                                               "name", "-name", "0xg"])


def test_every_mnemonic_with_boundary_operands():
    lines = []
    for ins in TABLE:
        good = {f.name: boundary_tokens(f)[0] for f in ins.positional}
        lines.append(f"{ins.mnemonic} " + ", ".join(good.values()))
        for f in ins.positional:
            for tok in boundary_tokens(f):
                ops = [tok if g.name == f.name else good[g.name] for g in ins.positional]
                lines.append(f"{ins.mnemonic} " + ", ".join(ops))
        base = f"{ins.mnemonic.upper()}\t" + ",".join(good.values())
        for f in ins.keywords:
            vals = list(f.choices) if f.kind == "enum" else ["0", "1"]
            for v in vals + ["2", "", "x", "01", " 1 "]:
                lines.append(f"{base}, {f.name}={v}")
                lines.append(f"{base},{f.name} = {v}  # c")
            lines.append(f"{base}, {f.name}={vals[-1]}, {f.name}={vals[0]}")
        lines.append(f"{base}, bogus=1")
        lines.append(f"{base}, {good and 'r1'}")  # one operand too many (or a name for nop)
        if ins.positional:
            lines.append(f"{ins.mnemonic} " + ", ".join(list(good.values())[:-1]))
            lines.append(f"{ins.mnemonic} " + ", ".join(good.values()) + ",")
    words_seen = 0
    for line in lines:  # each line alone: its word or its error
        out = check(line + "\n")
        words_seen += isinstance(out, tuple)
    assert words_seen > len(TABLE) * 3
    # the valid lines are the words of the table's own encoder (an oracle besides Python)
    for ins in TABLE:
        ops = {f.name: 0 for f in ins.fields}
        text = f"{ins.mnemonic} " + ", ".join(
            "r31" if f.kind == "reg" else "e15" if f.kind == "ereg" else
            str((1 << (f.width - 1)) - 1 if f.kind == "simm" else f.mask)
            for f in ins.positional)
        for f in ins.positional:
            ops[f.name] = (31 if f.kind == "reg" else 15 if f.kind == "ereg" else
                           (1 << (f.width - 1)) - 1 if f.kind == "simm" else f.mask)
        kw = []
        for f in ins.keywords:
            ops[f.name] = len(f.choices) - 1 if f.kind == "enum" else 1
            kw.append(f"{f.name}={f.choices[-1] if f.kind == 'enum' else 1}")
        text = ", ".join([text.rstrip()] + kw) if kw else text
        p = asm._assemble_scanned((text + "\n").encode(), "f.s")
        assert p.words == [encode(ins, ops)], text
        assert n_slow(text + "\n") == 0, text  # the scanner itself encoded it


EDGE_SOURCES = [
    "", "\n", "nop", "nop\n", "nop\r\n", "nop\r", "nop\r\r\n", "\r\n\r\n", "  nop  \t \n",
    "\tli\tr1,\t5\t\n", "li r1 , 5 # c\n", "li r1, 5; c # d\n", "li r1, 5 # c ; d\n",
    "# only\n; only\n   # x\n", "li r1, 5\x0b\n", "li\x0cr1, 5\n", "\x1cnop\n", "nop\x85\n",
    "li r1, 5 # é\n", "li r1, é\n", "é: nop\n", "nöp\n", "li r1, 5\x00\n", "li r1,\xa05\n",
    "li r1, 5\rnop\n", "x: nop\nx: nop\n", "nop: nop\n", "jmp later\nnop\nlater: halt\n",
    "jmp nowhere\n", ".equ A, 5\nli r1, A\n", ".equ A, 5\n.equ A, 6\n", ".org 5\n",
    "li r1, B\n.equ B, 7\n", "li r1, -A\n.equ A, 7\n", "frob\n", "nop\nfrob r1\n",
    "li r1, 5:\n", "li r1\n", "li\n", "li ,\n", "li r1,, 5\n", "nop x\n", "NOP\n", "Li r1, 1\n",
    "li r1, " + "1" * 101 + "\n", "li r1, 0x" + "0" * 30 + "1\n", "li r1, 0b" + "1" * 31 + "\n",
    "a: b: c: nop\n", "a:b:nop\n", "a : nop\n", "jmp 5\n", "jmp -1\n", "jmp 0x1000000\n",
    "x:\n", "li r1, 5\n" * 5 + "li r99, 5\n", "nop\n" * 3 + "  \n\n\t\n" + "halt",
    "a.b: nop\njmp a.b\n", "_x: jmp _x\n", "1a: nop\n", "a:: nop\n", "a: : nop\n",
    "NOP: jmp NOP\n", "li: nop\n", "a: # c\njmp a\n", ":\n", "jmp a-b\na: nop\n",
    "a\t:\tb :jmp b\n", "jmp a\nnop\na:\n", "jmp a\n\x0b\na: nop\n", "a: nop\n\x0b\njmp a\n",
    "jmp a\na: nop\na: nop\n", "jmp A\n.equ A, 3\nA: nop\n", "A: nop\n.equ A, 3\njmp A\n",
    "gemm r1, r2, r3, r4, r5, r6, dt=i8x\n", "li r1, L\nL: nop\n", "jmp L, r1\nL: nop\n",
    "L: frob\njmp L\n", "jmp L\nL: frob\n", "x: nop\nL: li r1, é\nL: nop\n",
]


@pytest.mark.parametrize("text", EDGE_SOURCES)
def test_edge_cases(text):
    check(text)


def test_plain_lines_take_the_compiled_path():
    """Not vacuous: the scanner encodes plain lines itself and hands the rest to Python."""
    plain = "nop\n LI r1, -0x10 # c\nGemm r1, r2, r3, r4, r5, r6, acc=1, sb=1 ; c\r\n\n"
    assert n_slow(plain) == 0
    assert n_slow(plain + "x: nop\n.equ A, 1\nli r1, A\nfrob\nli r1, é\n") == 5
    labelled = "x: nop\n y :\tz:jmp w\nw: blt r1, r2, x\n"
    assert n_slow(labelled) == 3 and n_slow(labelled, labels=True) == 0
    assert outcome(lambda: asm._scanned(labelled.encode(), "f.s", 4, True)) == check(labelled)


# ------------------------------------------------------------------------------ generated
def random_instruction(rng, valid: bool = False) -> str:
    """One instruction line of the table, its operands at, near or past their bounds, names,
    keywords in any position, missing operands, mixed case and spacing (``valid``: operands
    at their bounds, else mostly)."""
    ins = rng.choice(TABLE)
    ops = []
    for f in ins.positional:
        toks = boundary_tokens(f)
        r = rng.random()
        if valid:
            ops.append(toks[rng.randrange(2)])
            continue
        if r < 0.5:
            ops.append(toks[rng.randrange(4)])
        elif r < 0.7:
            ops.append(rng.choice(toks))
        elif f.kind in ("reg", "ereg"):
            ops.append(f"{'r' if f.kind == 'reg' else 'e'}{rng.randrange(40)}")
        elif r < 0.85:
            ops.append(str(rng.randrange(-(1 << 33), 1 << 33)))
        else:
            ops.append(rng.choice(["a", "b", "top", "undefined", "C", "-C"]))
    if ins.positional and rng.random() < 0.1 and not valid:
        ops = ops[: rng.randrange(len(ops) + 1)]  # missing operands
    for f in ins.keywords:
        if rng.random() < 0.5:
            v = rng.choice(list(f.choices) + ["1"] if f.kind == "enum" else ["0", "1", "1", "2"])
            v = rng.choice(f.choices) if valid and f.kind == "enum" else "1" if valid else v
            ops.insert(rng.randrange(max(len(ops) - 1, 0), len(ops) + 1),
                       f"{f.name}{rng.choice(['=', ' = ', '=  '])}{v}")
    sep = rng.choice([", ", ",", " , ", ",\t"])
    mn = rng.choice([ins.mnemonic, ins.mnemonic, ins.mnemonic.upper(), ins.mnemonic.title()])
    return mn + (rng.choice([" ", "\t", "  "]) + sep.join(ops) if ops else "")


OTHER_LINES = ["a:", "b: nop", "top:", ".equ C, 3", "li r1, C", ".equ D, -1", "", "   ", "# c",
               "frob r1", "x: y:", "jmp top", "nop", "halt", "li r1, 5", "add r1, r2, r3"]


@st.composite
def source_text(draw) -> str:
    import random

    rng = random.Random(draw(st.integers(0, 2**32)))
    valid = draw(st.booleans())  # then mostly valid lines: errors, if any, come late
    lines = []
    for _ in range(draw(st.integers(0, 30))):
        r = rng.random()
        line = random_instruction(rng, valid and r < 0.97) if r < 0.6 or valid and r < 0.98 \
            else rng.choice(OTHER_LINES)
        lead = rng.choice(["", "", " ", "\t", "  \t"])
        tail = rng.choice(["", "", " ", "\t", " # c", "; c", " # é"] +
                          ([] if valid else ["\x0b", "é"]))
        lines.append(lead + line + tail + rng.choice(["\n", "\n", "\r\n"]))
    text = "".join(lines)
    return text if draw(st.booleans()) else text.rstrip("\r\n")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(source_text())
def test_generated_programs(text):
    check(text)
    with pytest.MonkeyPatch.context() as mp:  # the lines left to Python, a few at a time
        mp.setattr(asm, "_SLOW_CHUNK", 3)
        check(text)


@st.composite
def labelled_text(draw) -> str:
    import random

    return labelled_program(random.Random(draw(st.integers(0, 2**32))))


def labelled_program(rng) -> str:
    """Mostly valid programs with many labels (several per line, on their own lines or before
    an instruction), backward and forward references, and now and then a duplicate or
    undefined label, a label that is a mnemonic, a constant or a line only Python reads."""
    n_labels = rng.randrange(1, 12)
    names = [f"L{i}" if rng.random() < 0.8 else f"_x.{i}" for i in range(n_labels)]
    defs = list(names)
    rng.shuffle(defs)
    odd = rng.random() < 0.5  # one unusual line somewhere
    lines = []
    while defs or rng.random() < 0.3:
        r = rng.random()
        if defs and r < 0.35:
            k = rng.randrange(1, 3)
            head = "".join(d + rng.choice([":", " :", ":  ", ":\t"]) + " " for d in defs[:k])
            defs = defs[k:]
            line = head + (random_instruction(rng, True) if rng.random() < 0.5 else "")
        elif r < 0.7:
            target = rng.choice(names)
            line = rng.choice([f"jmp {target}", f"beq r1, r2, {target}",
                               f"blt\tr3 ,r4,{target}  # back or forward"])
        else:
            line = random_instruction(rng, True)
        lines.append(rng.choice(["", " ", "\t"]) + line)
    if odd:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(
            ["L0: nop", "jmp nowhere", "nop: halt", ".equ C, 1", "li r1, C", "L1: li r1, é",
             "jmp -L0", "li r1, L0", "\x0b", "frob", "jmp L0 \x0b", "L9:\x0b"]))
    return "\n".join(lines) + rng.choice(["", "\n", "\r\n"])


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(labelled_text())
def test_generated_programs_with_labels(text):
    check(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asm, "_SLOW_CHUNK", 2)
        check(text)


REPEATED = ["li r1, C", "li r1, -C", "jmp L", "beq r1, r2, M", "jmp L  # c", "nop", "L:",
            "M: nop", ".equ C, 7", "li r1, D", ".equ D, C", "L: li r1, C", "jmp X", "li r2, L",
            "frob", "li r1, 99999999999", "jmp L, r1", ".equ B, 99999999999", "li r1, B",
            "jmp C", "C: nop", "jmp B"]


def without_memory(text: str) -> object:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asm, "_CACHE_LINES", 0)
        return outcome(lambda: asm.assemble_python(text, "f.s"))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(REPEATED), max_size=14))
def test_encodings_kept_for_repeated_lines_change_nothing(lines):
    """The Python assembler encodes a repeated line once (also one naming what is defined
    further down, until the next label or constant): the same outcome as with no such
    memory, which reads every line afresh."""
    text = "\n".join(lines)
    assert outcome(lambda: asm.assemble_python(text, "f.s")) == without_memory(text)


@pytest.mark.parametrize("text", [
    "li r1, B\n.equ B, 99999999999\nli r1, B\nnop\n",  # at its line, not at the end
    "jmp C\n.equ C, 5\njmp C\nC: nop\n",  # the constant (as read then), not the label
    "jmp C\nC: nop\njmp C\n.equ C, 5\n", "li r1, C\nL: nop\nli r1, C\n.equ C, 5\n"])
def test_repeated_lines_after_a_definition(text):
    assert outcome(lambda: asm.assemble_python(text, "f.s")) == without_memory(text)
    check(text)


def test_mostly_python_sources_are_assembled_by_python_alone(monkeypatch):
    calls = []
    real = asm.assemble_python
    monkeypatch.setattr(asm, "assemble_python", lambda *a: calls.append(1) or real(*a))
    text = ".equ C, 5\n" + "li r1, C\n" * 9 + "nop\n" * 20
    assert check(text)[0][:2] == [encode(asm.BY_MNEMONIC["li"], {"rd": 1, "imm": 5})] * 2
    n = len(calls)
    asm._assemble_scanned(text.encode(), "f.s")  # 10 of 31 lines for Python: Python alone
    assert len(calls) == n + 1
    asm._assemble_scanned(text.replace("nop\n" * 20, "nop\n" * 40).encode(), "f.s")
    assert len(calls) == n + 1


# ------------------------------------------------------------------------------ entry points
def test_assemble_and_load_program_take_the_fast_path_above_the_threshold(tmp_path,
                                                                          monkeypatch):
    text = "".join(f"t{i}: li r1, 0\n  addi r1, r1, 1 # c\n blt r1, r2, t{i + 1}\r\n"
                   for i in range(5)) + "t5:\nfrob\n"
    want = outcome(lambda: asm.assemble_python(text, str(tmp_path / "p.s")))
    calls = []
    real = asm._assemble_scanned
    monkeypatch.setattr(asm, "_assemble_scanned", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(asm, "FAST_MIN_LINES", 3)
    (tmp_path / "p.s").write_text(text)
    assert outcome(lambda: asm.assemble(text, str(tmp_path / "p.s"))) == want
    assert outcome(lambda: asm.load_program(tmp_path / "p.s")) == want
    ok = text.replace("frob\n", "halt\n")
    assert outcome(lambda: asm.load_program(tmp_path / "p.s")) == want
    (tmp_path / "p.s").write_text(ok)
    p = asm.load_program(tmp_path / "p.s")
    assert isinstance(p.text, asm.SourceText) and p.text[-1] == "halt" and p.text[2] == \
        "blt r1, r2, t1" and p.text[3:5] == ["li r1, 0", "addi r1, r1, 1"]
    assert p.labels["t5"] == 15 and decode(p.words[2])[1]["target"] == 3
    assert outcome(lambda: p) == outcome(lambda: asm.assemble_python(ok, str(tmp_path / "p.s")))
    assert len(calls) == 4
    monkeypatch.setattr(asm, "FAST_MIN_LINES", 100)  # below the threshold: Python only
    assert outcome(lambda: asm.assemble(text, "f.s")) == outcome(
        lambda: asm.assemble_python(text, "f.s")) and len(calls) == 4


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_non_utf8_source_is_the_same_error(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(asm, "_CHUNK", chunk)
    for data in (b"nop\nli r1, 5 # \xc3\xa9\nnop\n\xff\n", b"nop\n\xe2\x82\nnop\n",
                 b"n\xc3\xa9p\nnop\n\xe2\x82", b"nop\n" * 3 + b"#\xc3\xa9 x\n"):
        (tmp_path / "p.s").write_bytes(data)
        monkeypatch.setattr(asm, "FAST_MIN_LINES", 10**9)
        want = outcome(lambda: asm.load_program(tmp_path / "p.s"))
        monkeypatch.setattr(asm, "FAST_MIN_LINES", 2)
        assert outcome(lambda: asm.load_program(tmp_path / "p.s")) == want, data


def test_lone_surrogate_text_takes_the_python_path(monkeypatch):
    monkeypatch.setattr(asm, "FAST_MIN_LINES", 1)
    assert "not" not in str(outcome(lambda: asm.assemble("nop # \ud800\nnop\n")))


# ------------------------------------------------------------------------------ JIT off
def jit_outcomes() -> list[object]:
    """The scanner's outcomes on every edge case and on generated programs, each compared with
    the Python assembler's (run in a NUMBA_DISABLE_JIT=1 child by the test below)."""
    import random

    rng = random.Random(7)
    texts = list(EDGE_SOURCES)
    for ins in TABLE:
        for f in ins.positional:
            for tok in boundary_tokens(f):
                ops = [tok if g.name == f.name else boundary_tokens(g)[0]
                       for g in ins.positional]
                texts.append(f"{ins.mnemonic} " + ", ".join(ops) + "\n")
    texts.append("".join(rng.choice(["nop\n", "li r1, -7\n", "x: nop\n" if rng.random() < 0.01
                                     else "halt\n", "gemm r1, r2, r3, r4, r5, r6, acc=1\n"])
                         for _ in range(300)))
    texts += [labelled_program(rng) for _ in range(40)]
    return [json.loads(json.dumps(check(t))) for t in texts]


def test_jit_off_gives_the_same_results():
    assert jit_off_outcomes("test_asm_fast") == jit_outcomes()
