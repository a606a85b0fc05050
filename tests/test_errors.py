"""The error contract: every kind of bad input raises its typed error with the location filled
in (file:line:col, byte offset, key path, pc and address, budget), and the CLI turns each into
one line on stderr and the exit code documented in docs/errors.md."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from emulator.config import Config, config_from_dict
from emulator.machine import Machine
from isa import assemble, errors, to_bytes
from isa.encoding import from_bytes
from isa.errors import (
    AsmError,
    BinaryFormatError,
    BudgetExceeded,
    ConfigError,
    ExecutionError,
    LpemuError,
    MemoryAccessError,
    UsageError,
)
from programs.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEADER = 24  # "<4sHHIIII": magic, version, reserved, words, labels, payload bytes, CRC32


# ------------------------------------------------------------------------------ assembly
@pytest.mark.parametrize(
    "src,line,col,fragment",
    [
        ("nop\n  frob r1, r2\n", 2, 3, "unknown mnemonic"),
        ("li r1, 1\nadd r1, r2, q3\n", 2, 13, "must be a"),
        ("li r1, 99999999999\n", 1, 8, "out of range"),
        ("  jmp nowhere\n", 1, 7, "undefined label"),
        ("a:\nnop\n a:\nhalt\n", 3, 2, "already defined"),
        ("add r1, r2\n", 1, 11, "missing operand"),
        ("li r99, 1\n", 1, 4, "must be a"),
        ("rq r1, r2, r3, e1, e2, rnd=sideways\n", 1, 24, "rnd"),
        ("gemm r1, r2, r3, r4, r5, r6, acc=2\n", 1, 30, "must be 0 or 1"),
        (".equ 9x, 3\n", 1, 6, "bad constant name"),
        # lines end at \n (CRLF too); a form feed, \x1d or U+2028 is not a line break
        ("nop\r\nnop\r\n  frob\r\n", 3, 3, "unknown mnemonic"),
        ("; page\x0c two\nnop\x1dx\n", 2, 5, "too many operands"),
        ("nop \u2028 ; x\n\tbad r1\n", 2, 2, "unknown mnemonic"),
    ],
)
def test_asm_errors_have_file_line_col(src, line, col, fragment):
    with pytest.raises(AsmError) as info:
        assemble(src, "prog.s")
    e = info.value
    assert (e.file, e.line, e.col) == ("prog.s", line, col), str(e)
    assert fragment in e.message
    assert str(e).startswith(f"prog.s:{line}:{col}:")


# ------------------------------------------------------------------------------ binary files
def _program_bytes() -> bytes:
    return to_bytes(assemble("start:\n li r1, 5\nloop:\n addi r1, r1, -1\n bne r1, r0, loop\n"
                             " halt\n", "p.s"))


def _recrc(data: bytearray) -> bytes:
    struct.pack_into("<I", data, 20, zlib.crc32(bytes(data[HEADER:])))
    return bytes(data)


def test_valid_program_round_trips():
    prog = from_bytes(_program_bytes(), "p.bin")
    assert len(prog.words) == 4 and prog.labels == {"start": 0, "loop": 1}


@pytest.mark.parametrize("cut", [0, 3, 23])
def test_truncated_header_reports_file_length(cut):
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(_program_bytes()[:cut], "p.bin")
    assert info.value.offset == cut and info.value.file == "p.bin"


@pytest.mark.parametrize("cut", [HEADER, HEADER + 5, HEADER + 32, -1])
def test_truncated_payload_reports_where_it_ends(cut):
    data = _program_bytes()
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(data[:cut], "p.bin")
    assert info.value.offset == len(data[:cut])
    assert "truncated" in info.value.message


def test_bad_magic_version_reserved_offsets():
    data = bytearray(_program_bytes())
    # versions 1 (no debug information) and 2 (with the debug section) are read; 3 is not
    for off, patch, fragment in [(0, b"ELF\x7f", "magic"), (4, b"\x03\x00", "version"),
                                 (6, b"\x01\x00", "reserved")]:
        bad = bytearray(data)
        bad[off : off + len(patch)] = patch
        with pytest.raises(BinaryFormatError) as info:
            from_bytes(bytes(bad), "p.bin")
        assert info.value.offset == off and fragment in info.value.message


def test_corrupted_payload_is_a_crc_mismatch_at_the_crc_field():
    data = bytearray(_program_bytes())
    data[HEADER + 9] ^= 0x10
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(bytes(data), "p.bin")
    assert info.value.offset == 20 and "CRC" in info.value.message


def test_undecodable_word_reports_its_offset():
    data = bytearray(_program_bytes())
    data[HEADER + 8 * 2 + 7] = 0xFF  # opcode byte of word 2: no such instruction
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(_recrc(data), "p.bin")
    assert info.value.offset == HEADER + 16


def test_label_table_errors_and_trailing_bytes():
    data = _program_bytes()
    labels_at = HEADER + 8 * 4
    # label points past the program
    bad = bytearray(data)
    struct.pack_into("<I", bad, labels_at, 99)
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(_recrc(bad), "p.bin")
    assert info.value.offset == labels_at
    # names must be assembly label names (not mnemonics), unique, sorted by (pc, name)
    second = labels_at + 6 + len("start")
    for where, patch, fragment, offset in [
        (labels_at + 6, b"st rt", "not a valid label name", labels_at + 6),
        (second + 6, b"halt", "not a valid label name", second + 6),
        (second + 6, b"\xff\xfeop", "not utf-8", second + 6),
    ]:
        bad = bytearray(data)
        bad[where : where + len(patch)] = patch
        with pytest.raises(BinaryFormatError) as info:
            from_bytes(_recrc(bad), "p.bin")
        assert (info.value.offset, fragment in info.value.message) == (offset, True), info.value
    ab = to_bytes(assemble("a:\n nop\nb:\n halt\n", "ab.s"))
    at_a, at_b = HEADER + 16, HEADER + 16 + 6 + 1  # label entries: (u32 pc, u16 len, name)
    twice = bytearray(ab)
    twice[at_b + 6] = ord("a")  # (0, "a"), (1, "a")
    unsorted = bytearray(ab)
    unsorted[at_a + 6] = ord("c")
    struct.pack_into("<I", unsorted, at_b, 0)  # (0, "c"), (0, "b")
    for bad, fragment in [(twice, "appears twice"), (unsorted, "not sorted")]:
        with pytest.raises(BinaryFormatError) as info:
            from_bytes(_recrc(bad), "ab.bin")
        assert info.value.offset == at_b and fragment in info.value.message, info.value
    # trailing garbage (payload length and CRC updated so only the structure is wrong)
    bad = bytearray(data + b"\x00\x00")
    struct.pack_into("<I", bad, 16, len(bad) - HEADER)
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(_recrc(bad), "p.bin")
    assert info.value.offset == len(data)


# ------------------------------------------------------------------------------ runtime
def _machine(src: str, **cfg) -> Machine:
    base = {"memory": {"dram_bytes": 4096, "scratchpad_bytes": 1024},
            "accumulator": {"entries": 64}}
    base.update(cfg)
    return Machine(config_from_dict(base), assemble(src, "run.s"))


@pytest.mark.parametrize(
    "src,pc,memory,address",
    [
        ("li r1, 1020\nli r2, 8\nli r3, 1\nvadd r1, r1, r1, r2, dt=i8\nhalt\n", 3,
         "scratchpad", 1024),
        ("li r1, -4\nldw r2, r1, 0\nhalt\n", 1, "dram", -4),
        ("li r1, 4094\nstw r1, r1, 0\nhalt\n", 1, "dram", 4096),
        ("li r1, 60\nli r2, 8\naccrd r3, r1\nli r1, 64\naccrd r3, r1\nhalt\n", 4,
         "accumulator", 64),
    ],
)
def test_out_of_range_access_names_pc_memory_and_address(src, pc, memory, address):
    m = _machine(src)
    with pytest.raises(MemoryAccessError) as info:
        m.run()
    e = info.value
    assert (e.pc, e.memory, e.address) == (pc, memory, address), str(e)


def test_fault_leaves_state_as_before_the_instruction():
    m = _machine("li r1, 1\nli r2, 2000\nli r3, 1\nli r4, 16\n"
                 "dmald r2, r0, r3, r4, r4, r4\nhalt\n")
    before = m.spad.copy()
    with pytest.raises(MemoryAccessError) as info:
        m.run()
    assert info.value.pc == 4 and np.array_equal(m.spad, before)


def test_pc_running_off_the_end():
    m = _machine("li r1, 1\n")
    with pytest.raises(ExecutionError) as info:
        m.run()
    assert info.value.pc == 1 and not isinstance(info.value, MemoryAccessError)


def test_infinite_loop_stops_at_the_step_budget():
    m = _machine("loop:\n jmp loop\n", budget={"max_steps": 1000})
    with pytest.raises(BudgetExceeded) as info:
        m.run()
    assert info.value.steps == 1000 and info.value.pc == 0 and info.value.cycles == 1000


def test_infinite_loop_stops_at_the_cycle_budget():
    src = "li r1, 0\nli r2, 1\nli r3, 64\nloop:\n dmald r1, r1, r2, r3, r3, r3\n jmp loop\n"
    m = _machine(src, budget={"max_cycles": 5000})
    with pytest.raises(BudgetExceeded) as info:
        m.run()
    # 3 li (3 cycles), then per iteration dmald (latency 64 + ceil(64/16) = 68) and jmp (1).
    # The budget is checked before each step: after the dmald of iteration i the count is
    # 3 + 69 i + 68; the first such value >= 5000 is at i = 72 (5039), so the jmp never runs.
    i = next(i for i in range(1000) if 3 + 69 * i + 68 >= 5000)
    assert (info.value.cycles, info.value.steps, info.value.pc) == (3 + 69 * i + 68,
                                                                    3 + 2 * i + 1, 4)


def test_default_budget_is_finite():
    cfg = Config()
    assert 0 < cfg.budget.max_steps < 10**12 and 0 < cfg.budget.max_cycles < 10**18


# ------------------------------------------------------------------------------ the CLI
def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def test_cli_maps_each_error_to_one_line_and_its_exit_code(tmp_path, capsys):
    bad_asm = tmp_path / "bad.s"
    bad_asm.write_text("nop\n  frob r1\n")
    rc, err = _cli(capsys, "run", str(bad_asm))
    assert rc == AsmError.exit_code
    assert err == f"lpemu: {bad_asm}:2:3: assembly error: unknown mnemonic 'frob'\n"

    good = tmp_path / "ok.s"
    good.write_text("loop:\n jmp loop\n")
    binary = tmp_path / "ok.bin"
    assert main(["asm", str(good), "-o", str(binary)]) == 0
    capsys.readouterr()
    corrupt = tmp_path / "bad.bin"
    corrupt.write_bytes(binary.read_bytes()[:-3])
    rc, err = _cli(capsys, "run", str(corrupt))
    assert rc == BinaryFormatError.exit_code and err.count("\n") == 1
    assert f"{corrupt}@byte {len(binary.read_bytes()) - 3}:" in err

    cfg = tmp_path / "hw.yaml"
    cfg.write_text("array:\n  rowz: 4\n")
    rc, err = _cli(capsys, "run", str(good), "--config", str(cfg))
    assert rc == ConfigError.exit_code and err.count("\n") == 1 and "array.rowz" in err

    rc, err = _cli(capsys, "run", str(good), "--max-steps", "50")
    assert rc == BudgetExceeded.exit_code and err.count("\n") == 1 and "pc 0" in err

    oob = tmp_path / "oob.s"
    oob.write_text("li r1, -8\nldw r2, r1, 0\nhalt\n")
    rc, err = _cli(capsys, "run", str(oob))
    assert rc == MemoryAccessError.exit_code and err.count("\n") == 1
    assert "pc 1" in err and "dram" in err and "-0x8" in err

    rc, err = _cli(capsys, "run", str(tmp_path / "missing.s"))
    assert rc == 9 and err.count("\n") == 1 and "missing.s" in err

    rc, err = _cli(capsys, "run", str(good), "--load", "nofile-without-address")
    assert rc == UsageError.exit_code
    assert err == "lpemu: --load nofile-without-address: usage error: expected FILE.npy@ADDR\n"

    for name, content in [("text.npy", b"not an array"), ("empty.npy", b""),
                          ("objects.npy", None), ("two.npz", None)]:
        path = tmp_path / name
        if name == "objects.npy":
            np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        elif name == "two.npz":
            np.savez(path, a=np.zeros(2), b=np.ones(2))
        else:
            path.write_bytes(content)
        rc, err = _cli(capsys, "run", str(good), "--load", f"{path}@0")
        assert rc == UsageError.exit_code and err.count("\n") == 1, (name, err)
        assert err.startswith(f"lpemu: --load {path}@0: usage error: "), err

    rc, err = _cli(capsys, "run", str(good), "--dump", "0x10:zz:int8:x.npy")
    assert rc == UsageError.exit_code and err.count("\n") == 1
    assert err.startswith("lpemu: --dump 0x10:zz:int8:x.npy: usage error: LEN 'zz'")


def test_cli_in_a_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.s"
    bad.write_text("halt\nli r1,\n")
    res = subprocess.run([sys.executable, "-m", "programs.cli", "run", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == AsmError.exit_code
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert re.search(r"bad\.s:2:\d+:", res.stderr)


def test_docs_list_every_error_type_with_its_exit_code():
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", doc, flags=re.M))
    classes = {name: cls for name, cls in vars(errors).items()
               if isinstance(cls, type) and issubclass(cls, LpemuError) and cls is not LpemuError}
    assert set(classes) <= set(rows), set(classes) - set(rows)
    for name, cls in classes.items():
        assert int(rows[name]) == cls.exit_code, name
    codes = [cls.exit_code for cls in classes.values()] + [9, 70]
    assert len(codes) == len(set(codes))


def test_every_error_type_pickles_with_its_location():
    """Typed errors cross process boundaries (sweep workers): they unpickle whole."""
    import pickle

    import isa.errors as errs

    made = [errs.UsageError("m", "--x"), errs.AsmError("m", "f.s", 3, 4),
            errs.BinaryFormatError("m", "f.bin", 12), errs.ConfigError("m", "a.b", "c.yaml")]
    for cls in vars(errs).values():
        if isinstance(cls, type) and issubclass(cls, errs.LpemuError):
            assert cls.__reduce__ is errs.LpemuError.__reduce__
    for err in made:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back.__dict__ == err.__dict__
