"""Fuzz targets (hypothesis, fixed seeds, bounded examples; ``LPEMU_FUZZ_EXAMPLES`` raises the
count for long local runs). The only allowed outcomes are success or a documented typed error
carrying its location; anything else (an IndexError, a numpy error, a hang) fails. The
checkpoint reader's fuzz targets are in tests/test_checkpoint.py."""

from __future__ import annotations

import os
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import atheris_fuzz
from emulator.config import config_from_dict, load_config
from isa import assemble, to_bytes
from isa.encoding import decode, encode, from_bytes
from isa.errors import AsmError, BinaryFormatError, ConfigError
from programs.compiler.spec import load_model, spec_from_dict

N = int(os.environ.get("LPEMU_FUZZ_EXAMPLES", "200"))
# fixed seeds in CI; LPEMU_FUZZ_RANDOM=1 (benchmarks/fuzz_campaign.py) draws fresh ones
DERANDOMIZE = os.environ.get("LPEMU_FUZZ_RANDOM") != "1"
SETTINGS = settings(max_examples=N, derandomize=DERANDOMIZE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

VALID_ASM = """
start:
    li r1, 5
    lih r1, 7
loop:
    addi r1, r1, -1
    gemm r1, r2, r3, r4, r5, r6, acc=1, sb=1, da=i16
    rq r1, r2, r3, e2, e1, rnd=uniform, dt=i8, relu=1
    bne r1, r0, loop
    vadd r1, r2, r3, r4, dt=i16   # comment
    .equ K, 12
    li r9, K
    halt
"""
VALID_BIN = to_bytes(assemble(VALID_ASM, "v.s"))


# ------------------------------------------------------------------------------ binary loader
@SETTINGS
@given(st.binary(max_size=300))
def test_loader_random_bytes(blob):
    try:
        prog = from_bytes(blob, "f.bin")
    except BinaryFormatError as e:
        assert e.file == "f.bin" and 0 <= e.offset <= len(blob)
    else:
        assert to_bytes(prog) == blob  # anything accepted is canonical


@SETTINGS
@given(st.data())
def test_loader_mutated_program_files(data):
    blob = bytearray(VALID_BIN)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not blob:
            break
        pos = data.draw(st.integers(0, len(blob) - 1))
        if kind == "flip":
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=9))
        else:
            del blob[pos : pos + data.draw(st.integers(1, 9))]
    try:
        from_bytes(bytes(blob), "m.bin")
    except BinaryFormatError as e:
        assert 0 <= e.offset <= len(blob)


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_decode_is_total_and_round_trips(word):
    try:
        ins, ops = decode(word)
    except ValueError:
        return
    assert encode(ins, ops) == word


# ------------------------------------------------------------------------------ assembler
ASM_ALPHABET = string.ascii_letters + string.digits + " ,:._-=#;\t\n$()[]+*'\"\\"


@SETTINGS
@given(st.text(alphabet=ASM_ALPHABET, max_size=200))
def test_assembler_random_text(text):
    try:
        assemble(text, "r.s")
    except AsmError as e:
        assert e.file == "r.s" and e.line >= 1 and e.col >= 1
        assert e.line <= text.count("\n") + 1


@SETTINGS
@given(st.data())
def test_assembler_mutated_lines(data):
    lines = VALID_ASM.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    line = lines[i]
    pos = data.draw(st.integers(0, len(line)))
    junk = data.draw(st.text(alphabet=ASM_ALPHABET.replace("\n", ""), max_size=6))
    cut = data.draw(st.integers(0, 4))
    lines[i] = line[:pos] + junk + line[pos + cut :]
    text = "\n".join(lines)
    try:
        assemble(text, "m.s")
    except AsmError as e:
        assert e.line >= 1 and e.col >= 1 and e.file == "m.s"


@SETTINGS
@given(st.text(max_size=60))
def test_assembler_arbitrary_unicode(text):
    try:
        assemble(text, "u.s")
    except AsmError as e:
        assert e.line >= 1 and e.col >= 1
        assert e.line <= text.count("\n") + 1  # lines are counted at "\n" only


# ------------------------------------------------------------------------------ YAML loaders
# leaves include the empty containers, so the recursive containers below are never empty
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.just([]), st.just({}))
KEYS = st.one_of(st.sampled_from(["array", "rows", "cols", "accumulator", "bits", "overflow",
                                  "memory", "dma", "alu", "budget", "energy", "mult_int8",
                                  "layers", "bits", "qbp", "update", "lr", "epochs", "skip",
                                  "dataflow", "overlap", "step_log2", "dither", "mode",
                                  "dataset", "kind", "path", "validation", "data_seed",
                                  "input_exponent"]),
                 st.text(max_size=5), st.integers(-3, 3))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=4), st.dictionaries(KEYS, inner, min_size=1,
                                                             max_size=4)), max_leaves=12)


@SETTINGS
@given(DOCS)
def test_config_from_random_documents(doc):
    try:
        config_from_dict(doc, "c.yaml")
    except ConfigError as e:
        assert e.file == "c.yaml"


@SETTINGS
@given(DOCS)
def test_model_spec_from_random_documents(doc):
    try:
        spec_from_dict(doc, "m.yaml")
    except ConfigError as e:
        assert e.file == "m.yaml"


YAML_ALPHABET = string.ascii_letters + string.digits + " :-_[]{},'\"!&*#|>.\n\t%@`?"


HALF = settings(SETTINGS, max_examples=max(N // 2, 20))


def _into_both_loaders(write: Callable[[Path], object]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.yaml"
        write(p)
        for loader in (load_config, load_model):
            try:
                loader(p)
            except ConfigError as e:
                assert e.file == str(p)


@HALF
@given(st.text(alphabet=YAML_ALPHABET, max_size=120))
def test_yaml_text_into_both_loaders(text):
    _into_both_loaders(lambda p: p.write_text(text))


@HALF
@given(st.binary(max_size=120))
def test_yaml_bytes_into_both_loaders(blob):
    """Raw bytes (not always UTF-8) in a file given to either YAML loader."""
    _into_both_loaders(lambda p: p.write_bytes(blob))


def test_python_tags_are_never_constructed(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("array: !!python/object/apply:os.system ['echo pwned']\n")
    for loader in (load_config, load_model):
        try:
            loader(p)
        except ConfigError as e:
            assert "YAML" in e.message
        else:
            raise AssertionError("a python tag was accepted")
    assert yaml.safe_load("a: 1") == {"a": 1}


# ------------------------------------------------------------------------------ atheris
# benchmarks/atheris_fuzz.py fuzzes the same readers coverage-guided (an optional extra); the
# inputs it found crashing are kept under tests/fuzz_regressions/<target>/ and replayed here,
# without atheris, together with the seed corpora it starts from.
@pytest.mark.parametrize(("target", "path"), atheris_fuzz.regression_inputs(),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_atheris_crashes_stay_fixed(target, path):
    atheris_fuzz.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(atheris_fuzz.TARGETS))
def test_atheris_targets_hold_on_their_seeds(target):
    seeds = atheris_fuzz.seeds(target)
    assert seeds
    for s in seeds:
        atheris_fuzz.TARGETS[target](s)
