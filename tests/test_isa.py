"""The instruction table is consistent, and everything derived from it round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.semantics import SEMANTICS
from emulator.timing import HOOKS
from isa.asm import assemble, disassemble, format_instruction
from isa.docs import markdown
from isa.encoding import Program, decode, encode, from_bytes, to_bytes
from isa.spec import COST_HOOKS, OPCODE_LO, TABLE, UNITS, WORD_BITS, Instr

ROOT = Path(__file__).resolve().parents[1]


def test_opcodes_and_mnemonics_unique():
    assert len({i.opcode for i in TABLE}) == len(TABLE)
    assert len({i.mnemonic for i in TABLE}) == len(TABLE)
    assert all(0 <= i.opcode < (1 << (WORD_BITS - OPCODE_LO)) for i in TABLE)


@pytest.mark.parametrize("ins", TABLE, ids=lambda i: i.mnemonic)
def test_fields_fit_and_do_not_overlap(ins: Instr):
    used = 0
    for f in ins.fields:
        assert f.width >= 1 and f.lo >= 0
        assert f.lo + f.width <= OPCODE_LO, f"{ins.mnemonic}.{f.name} runs into the opcode"
        bits = f.mask << f.lo
        assert used & bits == 0, f"{ins.mnemonic}.{f.name} overlaps another field"
        used |= bits
        if f.kind == "enum":
            assert len(f.choices) <= (1 << f.width)
    assert len({f.name for f in ins.fields}) == len(ins.fields)


def test_encodings_do_not_overlap():
    """No word decodes as two instructions: the opcode alone selects the instruction."""
    masks = {i.opcode: i for i in TABLE}
    for ins in TABLE:
        zero = encode(ins, {f.name: 0 for f in ins.fields})
        assert decode(zero)[0] is masks[ins.opcode]


def test_every_instruction_has_one_implementation_and_a_cost_hook():
    assert set(SEMANTICS) == {i.mnemonic for i in TABLE}
    assert set(COST_HOOKS) == set(HOOKS)
    for ins in TABLE:
        assert ins.cost in HOOKS, ins.mnemonic
        assert ins.unit in UNITS, ins.mnemonic
        assert ins.doc and ins.semantics, ins.mnemonic


def _operand_strategy(ins: Instr):
    parts = {}
    for f in ins.fields:
        if f.kind == "simm":
            parts[f.name] = st.integers(-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1)
        elif f.kind == "enum":
            parts[f.name] = st.integers(0, len(f.choices) - 1)
        else:
            parts[f.name] = st.integers(0, f.mask)
    return st.fixed_dictionaries(parts)


@st.composite
def instructions(draw):
    ins = draw(st.sampled_from(TABLE))
    return ins, draw(_operand_strategy(ins))


@given(instructions())
def test_encode_decode_round_trip(item):
    ins, ops = item
    word = encode(ins, ops)
    assert 0 <= word < (1 << WORD_BITS)
    ins2, ops2 = decode(word)
    assert ins2 is ins and ops2 == ops


@given(st.integers(0, (1 << 64) - 1))
def test_decode_random_words_is_total(word):
    """Any 64-bit word either decodes and re-encodes to itself, or raises ValueError."""
    try:
        ins, ops = decode(word)
    except ValueError:
        return
    assert encode(ins, ops) == word


@settings(max_examples=60)
@given(st.lists(instructions(), min_size=1, max_size=20), st.data())
def test_assemble_disassemble_round_trip(items, data):
    words = [encode(i, o) for i, o in items]
    n = len(words)
    labels = {
        f"L{k}": data.draw(st.integers(0, n)) for k in range(data.draw(st.integers(0, 3)))
    }
    prog = Program(words, labels)
    text = disassemble(prog)
    again = assemble(text, "rt.s")
    assert again.words == words
    # labels at the same pc may be printed once per name; all survive
    assert again.labels == labels
    assert from_bytes(to_bytes(again)).words == words
    assert from_bytes(to_bytes(again)).labels == labels


def test_format_instruction_matches_assembler():
    src = (
        "x: gemm r1, r2, r3, r4, r5, r6, acc=1, sb=1, db=i16\n"
        " rq r1, r2, r3, e4, e5, rnd=triangular"
    )
    prog = assemble(src, "t.s")
    ins, ops = decode(prog.words[0])
    assert format_instruction(ins, ops, {}) == "gemm r1, r2, r3, r4, r5, r6, acc=1, sb=1, db=i16"
    assert prog.labels == {"x": 0}


def test_docs_isa_md_is_generated_from_the_table():
    path = ROOT / "docs" / "isa.md"
    assert path.read_text() == markdown(), "run: lpemu isa --write docs/isa.md"
    for ins in TABLE:
        assert f"`{ins.mnemonic}" in path.read_text()
