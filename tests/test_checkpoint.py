"""Checkpoint and resume: round trips, every kind of damaged file, atomic writes, and a training
run killed with SIGKILL mid-epoch, resumed, and compared bit for bit with an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import checkpoint as ckpt
from emulator.config import Config, config_from_dict
from emulator.machine import Machine
from isa import assemble
from isa.errors import CheckpointError, ExecutionError
from programs.cli import main

ROOT = Path(__file__).resolve().parents[1]
FUZZ = int(os.environ.get("LPEMU_FUZZ_EXAMPLES", "150"))
DERANDOMIZE = os.environ.get("LPEMU_FUZZ_RANDOM") != "1"

LOOP = """
    li r1, 0
    li r2, 40          ; iterations
    li r3, 1
    li r9, 1234
    rngseed r9
    eset e1, 0
    eset e2, 3
loop:
    dmald r1, r1, r3, r2, r2, r2
    vadd r1, r1, r1, r2, dt=i8
    gemm r0, r1, r1, r3, r3, r3, acc=1
    rq r1, r0, r3, e2, e1, rnd=uniform, dt=i8
    addi r1, r1, 8
    blt r1, r2, loop
    halt
"""


def small_cfg() -> Config:
    return config_from_dict({"memory": {"dram_bytes": 1 << 16, "scratchpad_bytes": 1 << 12},
                             "accumulator": {"entries": 64},
                             "dma": {"overlap": True}})


def fresh() -> Machine:
    m = Machine(small_cfg(), assemble(LOOP, "loop.s"))
    m.load_dram(0, np.arange(1, 200, dtype=np.uint8))
    return m


def test_round_trip_mid_run_continues_bit_identically(tmp_path):
    ref = fresh()
    ref.run()
    m = fresh()
    loop_pc = m.program.labels["loop"]
    m.run(break_pc=loop_pc, break_after=3)
    assert not m.halted and m.pc == loop_pc
    path = tmp_path / "c.ckpt"
    ckpt.save(path, m, {"note": "mid-run"})
    m2 = fresh()
    m2.dram[:] = 7  # garbage that the restore must overwrite
    assert ckpt.restore(path, m2) == {"note": "mid-run"}
    assert m2.digest() == m.digest() and np.array_equal(m2.counts, m.counts)
    m2.run()
    assert m2.digest() == ref.digest() and np.array_equal(m2.counts, ref.counts)
    assert (m2.cycles, m2.steps) == (ref.cycles, ref.steps)


def _good(tmp_path) -> tuple[Path, bytes]:
    m = fresh()
    m.run(break_pc=m.program.labels["loop"], break_after=2)
    path = tmp_path / "good.ckpt"
    ckpt.save(path, m)
    return path, path.read_bytes()


@pytest.mark.parametrize("cut", [0, 10, 47, 48, 100, -1])
def test_truncated_file_names_the_offset(tmp_path, cut):
    _, data = _good(tmp_path)
    short = data[:cut] if cut >= 0 else data[:-1]
    with pytest.raises(CheckpointError) as info:
        ckpt.decode(short, "c.ckpt")
    assert info.value.offset == len(short) and info.value.file == "c.ckpt"


def test_every_flipped_payload_byte_is_caught(tmp_path):
    _, data = _good(tmp_path)
    rng = random.Random(0)
    for pos in sorted(rng.sample(range(48, len(data)), 40)) + [48, len(data) - 1]:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(CheckpointError) as info:
            ckpt.decode(bytes(bad), "c.ckpt")
        assert info.value.offset == 16 and "SHA-256" in info.value.message


@pytest.mark.parametrize("off,patch,fragment", [(0, b"LPCX", "magic"), (4, b"\x03\x00",
                                                                          "version"),
                                                (4, b"\x01\x00", "format 1"),
                                                (6, b"\x01\x00", "reserved")])
def test_header_fields(tmp_path, off, patch, fragment):
    _, data = _good(tmp_path)
    bad = bytearray(data)
    bad[off : off + len(patch)] = patch
    with pytest.raises(CheckpointError) as info:
        ckpt.decode(bytes(bad), "c.ckpt")
    assert info.value.offset == off and fragment in info.value.message


def test_other_program_or_config_is_refused(tmp_path):
    path, _ = _good(tmp_path)
    other_prog = Machine(small_cfg(), assemble(LOOP.replace("li r2, 40", "li r2, 48"), "o.s"))
    with pytest.raises(CheckpointError, match="different program"):
        ckpt.restore(path, other_prog)
    other_cfg = Machine(config_from_dict({"memory": {"dram_bytes": 1 << 16,
                                                     "scratchpad_bytes": 1 << 12},
                                          "accumulator": {"entries": 64}}),
                        assemble(LOOP, "loop.s"))
    with pytest.raises(CheckpointError, match="different hardware config"):
        ckpt.restore(path, other_cfg)


def test_crash_during_write_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    path, data = _good(tmp_path)
    m = fresh()
    m.run()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ckpt.save(path, m)
    monkeypatch.undo()
    assert path.read_bytes() == data  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    ckpt.restore(path, fresh())  # and still loads


@settings(max_examples=FUZZ, derandomize=DERANDOMIZE, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(blob):
    try:
        ckpt.decode(blob, "f.ckpt")
    except CheckpointError as e:
        assert e.file == "f.ckpt"


GOOD_BYTES: list[bytes] = []


def _good_bytes() -> bytes:
    if not GOOD_BYTES:
        m = fresh()
        m.run(break_pc=m.program.labels["loop"], break_after=2)
        GOOD_BYTES.append(ckpt.encode(m, {"a": 1}))
    return GOOD_BYTES[0]


@settings(max_examples=FUZZ, derandomize=DERANDOMIZE, deadline=None, database=None)
@given(st.data())
def test_fuzz_mutated_checkpoints(data):
    good = bytearray(_good_bytes())
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "header"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(good) - 1))
        good[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        good = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(good)))
        good[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        struct.pack_into("<Q", good, 8, data.draw(st.integers(0, 2**64 - 1)))
    try:
        st_, extra = ckpt.decode(bytes(good), "m.ckpt")
    except CheckpointError:
        return
    assert isinstance(extra, dict)


# Files with a valid SHA-256 but impossible contents (written by a bug or by hand): the
# checksum cannot catch these, so restoring must check every value a machine could not hold.
def _state_and_extra() -> tuple[dict[str, np.ndarray], dict]:
    st, extra = ckpt.decode(_good_bytes(), "g.ckpt")
    return st, extra


IMPOSSIBLE = {
    "r0": ("r", 0, 5), "exponent": ("e", 3, 1 << 40), "acc": ("acc", 0, 1 << 40),
    "counter": ("counts", 0, -1), "flags": ("scalars", 0, 9), "pc": ("scalars", 1, 10_000),
    "halted": ("scalars", 2, 2), "steps": ("scalars", 3, -1), "dma_free": ("scalars", 5, -4),
}


@pytest.mark.parametrize("what", sorted(IMPOSSIBLE))
def test_resealed_impossible_values_are_refused(what):
    st, extra = _state_and_extra()
    name, idx, value = IMPOSSIBLE[what]
    arr = st[name].copy()
    arr.reshape(-1)[idx] = value
    st[name] = arr
    st["extra"] = np.frombuffer(json.dumps(extra).encode(), np.uint8)
    m = fresh()
    before = m.digest()
    with pytest.raises(CheckpointError, match="impossible"):
        ckpt.restore_machine(m, ckpt.decode(ckpt.pack(st), "r.ckpt")[0], "r.ckpt")
    assert m.digest() == before  # nothing was half-restored


@pytest.mark.parametrize("extra", [b"[" * 100_000 + b"]" * 100_000, b"\xff{}", b"[1, 2]"])
def test_resealed_bad_extra_document_is_refused(extra):
    st, _ = _state_and_extra()
    st["extra"] = np.frombuffer(extra, np.uint8)
    with pytest.raises(CheckpointError, match="extra document") as info:
        ckpt.decode(ckpt.pack(st), "x.ckpt")
    assert info.value.offset == ckpt.HEADER.size


@pytest.mark.parametrize("row", [[3, 0, 1, 5], [-1, 0, 1, 5], [0, 5, 4, 5], [1, 0, 1 << 20, 5],
                                 [0, 0, 1, -1]])
def test_resealed_impossible_dma_inflight_entries_are_refused(row):
    st, _ = _state_and_extra()
    st["inflight"] = np.array([row], dtype=np.int64)
    with pytest.raises(CheckpointError, match="in-flight"):
        ckpt.restore_machine(fresh(), st, "r.ckpt")


# the test machine has 64 KiB of DRAM: pages 0..15 of 4 KiB; its state stores page 0
BAD_PAGE_TABLES = {
    "float pages": (np.array([0.0]), np.zeros((1, 4096), np.uint8)),  # found by the fuzz
    "uint64 pages": (np.array([0], np.uint64), np.zeros((1, 4096), np.uint8)),
    "page repeated": (np.array([3, 3], np.int64), np.zeros((2, 4096), np.uint8)),
    "page past DRAM": (np.array([16], np.int64), np.zeros((1, 4096), np.uint8)),
    "negative page": (np.array([-1], np.int64), np.zeros((1, 4096), np.uint8)),
    "data not bytes": (np.array([0], np.int64), np.zeros((1, 4096), np.int16)),
    "data short": (np.array([0], np.int64), np.zeros((1, 4095), np.uint8)),
    "data rows differ": (np.array([0, 1], np.int64), np.zeros((1, 4096), np.uint8)),
}


@pytest.mark.parametrize("what", sorted(BAD_PAGE_TABLES))
def test_resealed_malformed_dram_page_table_is_refused(what):
    st, _ = _state_and_extra()
    st["dram_pages"], st["dram_page_data"] = BAD_PAGE_TABLES[what]
    m = fresh()
    before = m.digest()
    with pytest.raises(CheckpointError, match="page table"):
        ckpt.restore_machine(m, st, "r.ckpt")
    assert m.digest() == before


@settings(max_examples=FUZZ, derandomize=DERANDOMIZE, deadline=None, database=None)
@given(st.data())
def test_fuzz_resealed_state_arrays(data):
    """Replace one state array by a random one (any shape, dtype, values) behind a valid
    SHA-256: restoring either succeeds with a machine that runs, or raises CheckpointError."""
    st_, extra = _state_and_extra()
    name = data.draw(st.sampled_from(sorted(k for k in st_ if k not in (
        "program_sha256", "config_sha256"))))
    dtype = data.draw(st.sampled_from(["int64", "uint64", "uint8", "int32", "float64"]))
    shape = data.draw(st.sampled_from([st_[name].shape, (), (0,), (1,), (2, 4), (6,), (32,),
                                       (16,), (1, 4)]))
    size = int(np.prod(shape))
    values = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=size,
                                max_size=size))
    st_[name] = np.array(values, dtype=np.int64).astype(dtype).reshape(shape)  # ints wrap
    st_["extra"] = np.frombuffer(json.dumps(extra).encode(), np.uint8)
    m = fresh()
    try:
        restored, _ = ckpt.decode(ckpt.pack(st_), "z.ckpt")
        ckpt.restore_machine(m, restored, "z.ckpt")
    except CheckpointError:
        return
    try:  # a state that was accepted must be one the machine can run from
        m.run(max_steps=200)
    except ExecutionError:
        pass


def test_training_checkpoint_with_broken_driver_state_is_a_checkpoint_error(tmp_path, capsys):
    path = tmp_path / "t.ckpt"
    assert main(["train", "--epochs", "1", "--no-float", "-q", "--checkpoint", str(path),
                 "--checkpoint-every", "50"]) == 0
    st, extra = ckpt.load(path)
    for broken in ({"epoch": "x"}, None, {**extra["host"], "epoch_start_counts": [[1, 2]],
                                          "in_epoch": True}):
        bad = dict(extra, host=broken)
        st["extra"] = np.frombuffer(json.dumps(bad).encode(), np.uint8)
        path.write_bytes(ckpt.pack(st))
        assert main(["train", "--resume", str(path)]) == CheckpointError.exit_code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_resume_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"LPCK\x01\x00\x00\x00" + b"\x00" * 10)
    assert main(["train", "--resume", str(bad)]) == CheckpointError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}@byte 18" in err
    assert main(["train", "--checkpoint-every", "5"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def _train(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "programs.cli", "train", "--no-float", "-q",
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kw)


def test_killed_training_run_resumes_bit_identically(tmp_path):
    ref_json, res_json = tmp_path / "ref.json", tmp_path / "res.json"
    ck = tmp_path / "run.ckpt"
    epochs = "6"  # ~1.5 s of training after the first checkpoint: the kill lands mid-run
    ref = _train(["--epochs", epochs, "--json", str(ref_json)])
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()  # type: ignore[union-attr]
    victim = _train(["--epochs", epochs, "--checkpoint", str(ck), "--checkpoint-every", "7",
                     "--json", str(tmp_path / "never.json")])
    rng = random.Random(2026)
    deadline = time.time() + 120
    while not ck.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert ck.exists(), "no checkpoint was written"
    time.sleep(rng.uniform(0.0, 0.6))  # a seeded random moment after the first checkpoint
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.json").exists()
    extra = ckpt.load(ck)[1]
    resumed = _train(["--resume", str(ck), "--json", str(res_json)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()  # type: ignore
    a, b = json.loads(ref_json.read_text()), json.loads(res_json.read_text())
    for key in ("weights_sha256", "test_accuracy", "epochs", "per_layer_phase",
                "energy_breakdown_pj", "mean_gradient_sparsity"):
        assert a[key] == b[key], key
    from emulator.counters import COUNTERS

    assert {k: a[k] for k in COUNTERS} == {k: b[k] for k in COUNTERS}
    # the checkpoint really was mid-training (not after the last step)
    assert extra["host"]["epoch"] < int(epochs)
