"""Debug information: program files with a debug section (old files still load, corrupt
sections are typed errors), faults that name label + offset and the source line, and
``lpemu run --regs`` / ``--trace-steps``."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from emulator import debug
from emulator.config import config_from_dict
from emulator.machine import Machine
from isa import assemble
from isa.encoding import VERSION, VERSION_DEBUG, from_bytes, read_program, to_bytes
from isa.errors import BinaryFormatError, BudgetExceeded, ExecutionError, MemoryAccessError
from isa.spec import TABLE
from programs.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEADER = 24
# written by the version-1 writer before debug sections existed (tests/data/v1_program.bin)
V1_SRC = ("start:\n    li r1, 3\nloop:\n    addi r1, r1, -1\n    bne r1, r0, loop\n"
          "    li r2, -8\n    ldw r3, r2, 0\n    halt\n")
SMALL = {"memory": {"dram_bytes": 4096, "scratchpad_bytes": 1024},
         "accumulator": {"entries": 64}}


def _cfg():
    return config_from_dict(SMALL)


# ------------------------------------------------------------------------------ file format
def test_old_version_1_files_still_load_and_are_written_unchanged_without_debug_info():
    old = (ROOT / "tests" / "data" / "v1_program.bin").read_bytes()
    assert struct.unpack_from("<H", old, 4)[0] == 1
    prog = from_bytes(old, "v1.bin")
    src = assemble(V1_SRC, "v1.s")
    assert prog.words == src.words and prog.labels == src.labels
    assert prog.source == [] and prog.text == [] and not prog.has_debug_info
    assert to_bytes(src, debug=False) == old  # the version-1 writer is unchanged
    assert to_bytes(prog) == old  # a program without debug info stays version 1


def test_debug_section_round_trips_source_lines_and_text(tmp_path):
    prog = assemble(V1_SRC, "v1.s")
    data = to_bytes(prog)
    assert struct.unpack_from("<H", data, 4)[0] == VERSION_DEBUG != VERSION
    back = from_bytes(data, "p.bin")
    assert back.source == [("v1.s", n) for n in (2, 4, 5, 6, 7, 8)]
    assert back.text == ["li r1, 3", "addi r1, r1, -1", "bne r1, r0, loop", "li r2, -8",
                         "ldw r3, r2, 0", "halt"]
    assert to_bytes(back) == data  # canonical
    # the CLI's asm writes the debug section; a fault in the binary names the .s line
    s = tmp_path / "v1.s"
    s.write_text(V1_SRC)
    assert main(["asm", str(s), "-o", str(tmp_path / "v1.bin")]) == 0
    assert read_program(tmp_path / "v1.bin").source == [(str(s), n) for n in (2, 4, 5, 6, 7, 8)]


def _debug_bytes() -> tuple[bytes, int]:
    """A version-2 file and the offset of its debug section."""
    prog = assemble("a:\n nop\nb: halt\n", "x.s")
    data = to_bytes(prog)
    return data, HEADER + 16 + (6 + 1) * 2


def _patched(data: bytes, off: int, new: bytes, grow: bool = False) -> bytes:
    """``data`` with bytes at ``off`` replaced (or inserted), header length and CRC fixed."""
    b = bytearray(data)
    b[off : off + (0 if grow else len(new))] = new
    struct.pack_into("<I", b, 16, len(b) - HEADER)
    struct.pack_into("<I", b, 20, zlib.crc32(bytes(b[HEADER:])))
    return bytes(b)


def test_corrupt_debug_sections_are_typed_errors_at_their_offset():
    data, dbg = _debug_bytes()
    files_at = dbg + 4
    entries = files_at + 2 + len("x.s")
    # layout check: u32 n_files=1, u16 len=3, "x.s", then per pc (u16 file, u32 line, u16 len)
    assert struct.unpack_from("<IH", data, dbg) == (1, 3)
    assert struct.unpack_from("<HIH", data, entries) == (0, 2, 3)
    two_files = _patched(_patched(data, entries, struct.pack("<H", 3) + b"y.s", grow=True),
                         dbg, struct.pack("<I", 2))
    cases = [
        (two_files, "'y.s' is never used", entries),
        (_patched(data, dbg, struct.pack("<I", 2)), "file name ''", entries),
        (_patched(data, dbg, struct.pack("<I", 0)), "names 0 source files", dbg),
        (_patched(data, dbg, struct.pack("<I", 70000)), "names 70000", dbg),
        (_patched(data, files_at + 2, b"\xff\xfe\x00"), "not utf-8", files_at + 2),
        (_patched(data, files_at, struct.pack("<H", 0)), "file name", files_at),
        (_patched(data, entries, struct.pack("<H", 1)), "index 1", entries),
        (_patched(data, entries + 2, struct.pack("<I", 0)), "lines start at 1", entries + 2),
        (_patched(data, entries + 8, b"n\nq"), "spans lines", entries + 8),
        (_patched(data, entries + 8, b"\xc3("), "not utf-8", entries + 8),
        (_patched(data, len(data), b"\x00", grow=True), "trailing bytes after the debug",
         len(data)),
    ]
    for i, cut in enumerate((dbg + 2, files_at + 1, entries + 5, len(data) - 1)):
        cases.append((_patched(data[:cut], cut, b""), "truncated", None))
        assert i < 4
    for bad, fragment, offset in cases:
        with pytest.raises(BinaryFormatError) as info:
            from_bytes(bad, "d.bin")
        e = info.value
        assert fragment in e.message, (fragment, e)
        if offset is not None:
            assert e.offset == offset, (fragment, e)
        assert dbg <= e.offset <= len(bad), e
    # a version-1 header on a file with a debug section: trailing bytes after the labels
    with pytest.raises(BinaryFormatError) as info:
        from_bytes(_patched(data, 4, struct.pack("<H", 1)), "d.bin")
    assert info.value.offset == dbg and "label table" in info.value.message


def test_every_dram_writer_is_known_to_the_step_tracer():
    """Effects of DRAM stores are found by comparing the range a store may write: the set of
    instructions whose pseudo-code assigns to DRAM must be exactly debug.DRAM_WRITERS."""
    def assigns_dram(line: str) -> bool:
        code = line.split("#")[0]
        return " = " in code and "dram" in code.split(" = ")[0]

    writers = {ins.mnemonic for ins in TABLE
               if any(assigns_dram(ln) for ln in ins.semantics.splitlines())}
    assert writers == set(debug.DRAM_WRITERS)


# ------------------------------------------------------------------------------ faults
def test_fault_names_pc_label_offset_source_line_and_text():
    src = ("# header\n.equ BAD, -8\nstart:\n    li r1, 3\nloop:   addi r1, r1, -1\n"
           "        bne r1, r0, loop\n    li r2, BAD   # an address below DRAM\n"
           "    ldw r3, r2, 0\n    halt\n")
    m = Machine(_cfg(), assemble(src, "prog.s"))
    with pytest.raises(MemoryAccessError) as info:
        debug.run(m)
    e = info.value
    assert (e.pc, e.label, e.label_offset) == (4, "loop", 3)
    assert (e.source_file, e.source_line, e.text) == ("prog.s", 8, "ldw r3, r2, 0")
    assert str(e) == ("prog.s:8: pc 4 (loop+3): dram[-0x8]: memory access error: dram access "
                      "[-0x8, -0x4) outside [0, 0x1000); instruction: ldw r3, r2, 0")
    # from a binary without debug information: label + offset and the disassembled text
    m = Machine(_cfg(), from_bytes(to_bytes(assemble(src, "prog.s"), debug=False), "p.bin"))
    with pytest.raises(MemoryAccessError) as info:
        debug.run(m)
    e = info.value
    assert e.source_file is None and e.text == "ldw r3, r2, 0"
    assert str(e).startswith("pc 4 (loop+3): dram[-0x8]: memory access error:")
    # a budget stop names where the program was; the constant's name is kept as written
    m = Machine(_cfg(), assemble(".equ TOP, 0\nspin:\n    jmp TOP\n", "spin.s"))
    with pytest.raises(BudgetExceeded) as info:
        debug.run(m, max_steps=10)
    assert str(info.value) == ("spin.s:3: pc 0 (spin) after 10 steps, 10 cycles: budget "
                               "exceeded: step budget of 10 exhausted; instruction: jmp TOP")
    # running off the end: no instruction there, the label still applies
    m = Machine(_cfg(), assemble("a:\n nop\nend:\n", "off.s"))
    with pytest.raises(ExecutionError) as info:
        debug.run(m)
    assert info.value.label == "end" and info.value.text is None


def test_cli_fault_is_one_line_with_the_source_location(tmp_path, capsys):
    p = tmp_path / "f.s"
    p.write_text("start:\n    li r1, 2000\nwork:\n    li r2, 64\n    li r3, 1\n"
                 "    dmald r1, r0, r3, r2, r2, r2\n    halt\n")
    rc = main(["run", str(p), "--config", str(_yaml(tmp_path))])
    err = capsys.readouterr().err
    assert rc == MemoryAccessError.exit_code and err.count("\n") == 1
    assert err.startswith(f"lpemu: {p}:6: pc 3 (work+2): scratchpad[0x7d0]: ")
    assert err.rstrip().endswith("; instruction: dmald r1, r0, r3, r2, r2, r2")


def _yaml(tmp_path: Path) -> Path:
    y = tmp_path / "small.yaml"
    y.write_text("memory:\n  dram_bytes: 4096\n  scratchpad_bytes: 1024\n"
                 "accumulator:\n  entries: 64\n")
    return y


# ------------------------------------------------------------------------------ --regs
def test_run_regs_prints_registers_flags_and_rng(tmp_path, capsys):
    p = tmp_path / "r.s"
    p.write_text("    li r1, -5\n    li r31, 300\n    eset e3, -7\n    li r4, 99\n"
                 "    rngseed r4\n    li r5, 1\n    li r6, 0x7f\n    li r7, 0x100\n"
                 "    stw r6, r0, 0\n    li r8, 1\n    li r9, 2\n    dmald r0, r0, r8, r9, r9, r9\n"
                 "    vadd r0, r0, r0, r8, dt=i8\n    halt\n")
    assert main(["run", str(p), "--regs", "-q"]) == 0
    out = capsys.readouterr().out
    assert "registers: halted at pc 13 after 14 steps" in out
    assert re.search(r"\br1  = -5\b", out) and "r31 = 300 (0x12c)" in out
    assert re.search(r"\be3  = -7\b", out) and re.search(r"\br0  = 0\b", out)
    assert "flags = 0x4 (alu_saturation)" in out  # 0x7f + 0x7f saturates INT8
    assert "rng seed = 0x63, counter = 0" in out
    # after a fault, the registers are printed before the error
    bad = tmp_path / "bad.s"
    bad.write_text("    li r1, 7\n    li r2, -1\n    ldw r3, r2, 0\n    halt\n")
    assert main(["run", str(bad), "--regs"]) == MemoryAccessError.exit_code
    cap = capsys.readouterr()
    assert "registers: stopped at pc 2 after 2 steps" in cap.out and "r1  = 7" in cap.out
    assert "pc 2" in cap.err


# ------------------------------------------------------------------------------ --trace-steps
TRACED = """\
start:
    li r1, 5
    li r2, 4
    li r3, 1
    stw r1, r0, 0
    dmald r0, r0, r3, r2, r2, r2
    vtoacc r0, r0, r2, dt=i8
    eset e2, -3
    rngseed r1
    vadd r0, r0, r0, r2, dt=i8
    clrflags
    halt
"""


def test_step_effects_name_every_kind_of_state_change():
    m = Machine(_cfg(), assemble(TRACED, "t.s"))
    recs = debug.step(m, 20)
    assert [r.pc for r in recs] == list(range(11)) and m.halted
    assert recs[0].effects == ("r1 = 5 (was 0)",)
    assert recs[3].effects == ("dram[0x0, 0x1) changed: 05",)
    assert recs[4].effects == ("scratchpad[0x0, 0x1) changed: 05",)  # DRAM 0..3 = 05 00 00 00
    assert recs[5].effects == ("acc[0x0, 0x1) changed: 5",)
    assert recs[6].effects == ("e2 = -3 (was 0)",)
    assert recs[7].effects == ("rng.seed = 5 (was 0)",)
    assert recs[8].effects == ("scratchpad[0x0, 0x1) changed: 0a",)
    assert recs[9].effects == ()
    assert recs[10].effects == ("halted",)
    assert recs[3].cycles == 65 and recs[0].where == "start" and recs[3].where == "start+3"
    assert str(recs[3]).startswith("step 3 ") and "stw r1, r0, 0" in str(recs[3])


def test_trace_steps_change_nothing_and_keep_the_budgets():
    plain = Machine(_cfg(), assemble(TRACED, "t.s"))
    plain.run()
    traced = Machine(_cfg(), assemble(TRACED, "t.s"))
    seen: list[debug.StepRecord] = []
    debug.run(traced, trace_steps=4, on_step=seen.append)
    assert len(seen) == 4 and traced.digest() == plain.digest()
    assert np.array_equal(traced.counts, plain.counts)
    loop = "top:\n    addi r1, r1, 1\n    jmp top\n"
    for n in (2, 5, 50):  # the trace ends before, at or after the budget
        m = Machine(_cfg(), assemble(loop, "l.s"))
        seen = []
        with pytest.raises(BudgetExceeded) as info:
            debug.run(m, max_steps=5, trace_steps=n, on_step=seen.append)
        assert info.value.steps == 5 and "step budget of 5 exhausted" in info.value.message
        assert len(seen) == min(n, 5) and info.value.source_line in (2, 3)
    m = Machine(_cfg(), assemble(loop, "l.s"))
    with pytest.raises(BudgetExceeded) as info:
        debug.run(m, max_cycles=7, trace_steps=3, on_step=lambda r: None)
    assert info.value.cycles == 7 and "cycle budget of 7 exhausted" in info.value.message


def test_cli_trace_steps_prints_the_first_n_steps(tmp_path, capsys):
    p = tmp_path / "t.s"
    p.write_text(TRACED)
    assert main(["run", str(p), "--trace-steps", "4", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "first 4 steps (effects: what each step changed):"
    assert [ln.split()[:4] for ln in lines[1:]] == [
        ["step", "0", "pc", "0"], ["step", "1", "pc", "1"], ["step", "2", "pc", "2"],
        ["step", "3", "pc", "3"]]
    assert lines[4].endswith("dram[0x0, 0x1) changed: 05")
    rc = main(["run", str(p), "--trace-steps", "-1"])
    assert rc == 2 and "--trace-steps" in capsys.readouterr().err
