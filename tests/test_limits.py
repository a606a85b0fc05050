"""Bad input at scale (issue 18): every adversarial input of the issue, each with its typed error
and location or the correct result; sizes checked before anything is allocated (measured with
tracemalloc, which sees numpy's allocations); outputs written atomically; the limits table in
docs/errors.md equal to emulator/limits.py; and a property test near and past every limit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import checkpoint as ckpt
from emulator import limits
from emulator.config import Config, config_from_dict, load_config
from emulator.files import atomic_write, read_bounded
from emulator.machine import Machine
from emulator.state import check_memory
from isa import assemble
from isa.errors import (
    AsmError,
    BudgetExceeded,
    CheckpointError,
    ConfigError,
    ExecutionError,
    LpemuError,
    MemoryAccessError,
    UsageError,
)
from programs.cli import main
from programs.cli.main import parse_dump
from programs.compiler.spec import load_model, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = "name: tiny\nlayers: [64, 10]\nepochs: 1\n"


def laughs(levels: int) -> str:
    """A billion-laughs alias bomb: 9 aliases of the level below, ``levels`` deep."""
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and len(err) < 1200


def peak_bytes(fn, cap_seconds: float | None = None) -> tuple[object, int]:
    """(fn's result or the exception it raised, peak bytes allocated while it ran); with
    ``cap_seconds``, fn must also finish within that time."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            out: object = fn()
        except Exception as e:  # noqa: BLE001 - returned for the caller to check
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        if cap_seconds is not None:
            assert time.perf_counter() - t0 < cap_seconds


def small(**sections) -> Config:
    d = {"memory": {"dram_bytes": 1 << 16, "scratchpad_bytes": 1 << 14},
         "accumulator": {"entries": 1 << 10}}
    for k, v in sections.items():
        d.setdefault(k, {}).update(v)
    return config_from_dict(d)


def run1(src: str, cfg: Config | None = None) -> Machine:
    m = Machine(cfg or small(), assemble(src + "\nhalt\n", "t.s"))
    m.run(max_steps=100)
    return m


def set_reg(r: int, v: int) -> str:
    lo, hi = v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF
    return f"li r{r}, {lo - (1 << 32) if lo >> 31 else lo}\nlih r{r}, {hi}\n"


# ============================================================================ a traceback
@pytest.mark.parametrize("loader,text,key", [
    (load_config, "memory:\n  dram_bytes: {}\n", "memory.dram_bytes"),
    (load_model, "epochs: {}\n", "epochs"),
])
def test_billion_laughs_is_a_config_error_naming_the_file(tmp_path, loader, text, key):
    p = tmp_path / "bomb.yaml"
    p.write_text(text.format(laughs(9)))  # 9**9 = 387 million strings once expanded
    assert p.stat().st_size < 600
    with pytest.raises(ConfigError) as info:
        loader(p)
    assert info.value.file == str(p) and "expands to more than 100,000 nodes" in str(info.value)
    p.write_text(text.format(laughs(5)))  # under the node limit: the value's type is wrong
    with pytest.raises(ConfigError) as info:
        loader(p)
    assert info.value.key == key and len(str(info.value)) < 400, len(str(info.value))


def test_error_messages_are_one_bounded_line():
    e = ConfigError("x" * 10**6 + "\nsecond line", "k" * 5000, "f.yaml")
    assert "\n" not in str(e) and len(e.message) == limits.MAX_MESSAGE_CHARS
    assert e.message.endswith("...") and len(str(e)) < 2 * limits.MAX_MESSAGE_CHARS + 100


def _mapped(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _sigint_when(moment: str, tmp_path: Path, sig: int = signal.SIGINT,
                 extra: tuple[str, ...] | list[str] = ()) -> subprocess.CompletedProcess:
    """Send SIGINT to ``lpemu train`` at a moment recognised from the libraries it has mapped:
    while numpy is being imported (its extension module just mapped), while numba is, or
    during the run (sklearn's dataset loading done, a little later)."""
    # far more epochs than the signal waits for: a tiny epoch takes milliseconds once the
    # firmware runs compiled, and the process must still be training when the signal comes
    (tmp_path / "m.yaml").write_text(TINY.replace("epochs: 1", "epochs: 100000"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", "import sys; from programs.cli import main; "
                          "sys.exit(main())", "train", str(tmp_path / "m.yaml"), "--no-float",
                          "-q", *extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marker = {"numpy": "_multiarray_umath", "numba": "llvmlite", "run": "llvmlite"}[moment]
    deadline = time.time() + 60
    while not _mapped(p.pid, marker) and p.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    if moment == "run":  # imports done, the dataset loaded, epochs running
        time.sleep(2.0)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize("moment", ["numpy", "numba", "run"])
def test_ctrl_c_at_start_up_or_later_is_one_line(tmp_path, moment):
    """Ctrl-C while numpy or numba are still being imported, or later while training."""
    res = _sigint_when(moment, tmp_path)
    assert res.returncode == 130, res.stderr
    assert res.stderr == "lpemu: interrupted\n"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_sigterm_is_one_line_and_leaves_no_partial_output(tmp_path):
    res = _sigint_when("run", tmp_path, signal.SIGTERM, ["--json", str(tmp_path / "o.json")])
    assert res.returncode == 143 and res.stderr == "lpemu: terminated\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


# ============================================================================ silently wrong
def test_equ_redefinition_is_an_error_at_its_line():
    with pytest.raises(AsmError) as info:
        assemble(".equ A, 5\nli r1, A\n.equ A, 6\nhalt\n", "p.s")
    assert (info.value.line, info.value.col) == (3, 6) and "already defined at line 1" in str(
        info.value)
    # a constant used before its (single) definition still works
    assert assemble("li r1, B\n.equ B, 7\nhalt\n").words == assemble("li r1, 7\nhalt\n").words


@pytest.mark.parametrize("key,value", [
    ("dma.latency_cycles", 2**62), ("alu.latency_cycles", 2**21), ("dma.bytes_per_cycle", 2**40),
    ("alu.lanes", 2**40), ("budget.max_cycles", 2**65), ("budget.max_steps", 2**41),
    ("energy.dram_per_64b", 1e308), ("energy.instruction", 2e9),
    ("budget.max_memory_bytes", 2**51),
])
def test_counts_cannot_wrap_every_field_is_bounded(key, value):
    sec, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        config_from_dict({sec: {name: value}})
    assert info.value.key == key and "must be <=" in info.value.message


def test_largest_latency_and_energies_give_finite_counts_and_valid_json(tmp_path, capsys):
    hi = limits.MAX_ENERGY_PJ
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"dma: {{latency_cycles: {limits.MAX_LATENCY_CYCLES}}}\n"
                   f"energy: {{dram_per_64b: {hi}, instruction: {hi}}}\n")
    prog = tmp_path / "p.s"
    prog.write_text("stw r0, r0, 0\nstw r0, r0, 0\nhalt\n")
    rc, _ = cli(capsys, "run", str(prog), "--config", str(cfg), "--json", str(tmp_path / "o.j"))
    assert rc == 0
    doc = json.loads((tmp_path / "o.j").read_text(), parse_constant=lambda c: 1 / 0)
    assert doc["cycles"] == 2 * (limits.MAX_LATENCY_CYCLES + 1) + 1
    assert doc["energy_pj"] == pytest.approx(3 * hi + 8 * hi / 8)


def test_dump_length_takes_the_address_syntax(tmp_path, capsys):
    src = np.arange(1, 33, dtype=np.int8)
    np.save(tmp_path / "in.npy", src)
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    out = tmp_path / "f.npy"
    rc, _ = cli(capsys, "run", str(prog), "--load", f"{tmp_path / 'in.npy'}@0", "--dump",
                f"0:0x10:int8:{out}", "--dump", f"0:0b10x0x4:int8:{tmp_path / 's.npy'}", "-q")
    assert rc == 0
    assert np.load(out).tolist() == list(range(1, 17))
    assert np.load(tmp_path / "s.npy").tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_dump("0:64x50:int8:y")[1] == (64, 50)
    assert parse_dump("0:1_024:int8:y")[1] == (1024,)


@pytest.mark.parametrize("length,fragment", [
    ("0", "empty"), ("4x0", "empty"), ("x4", "must be a count"), ("4x", "must be a count"),
    ("-4", "must be a count"), ("x".join(["1"] * 71), "at most 16"),
    ("4294967296x4294967296x4", "outside DRAM"), ("9" * 200, "over 100 characters"),
])
def test_dump_rejects_empty_odd_and_huge_shapes(tmp_path, capsys, length, fragment):
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    spec = f"0:{length}:int8:{tmp_path / 'o.npy'}"
    rc, err = cli(capsys, "run", str(prog), "--dump", spec)
    assert rc == UsageError.exit_code and one_line(err) and fragment in err, err
    assert f"--dump {spec[:50]}" in err
    assert not (tmp_path / "o.npy").exists()


def test_outputs_are_written_exactly_as_given(tmp_path, capsys):
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    rc, err = cli(capsys, "run", str(prog), "--dump", "0:16:int8:/dev/full", "-q")
    assert rc == 9 and err == "lpemu: /dev/full: file error: No space left on device\n"
    assert not Path("/dev/full.npy").exists()
    rc, err = cli(capsys, "run", str(prog), "--dump", f"0:16:int8:{tmp_path}", "-q")
    assert rc == UsageError.exit_code and "is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.s"]
    rc, _ = cli(capsys, "run", str(prog), "--dump", f"0:16:int8:{tmp_path / 'plain'}", "-q")
    assert rc == 0 and (tmp_path / "plain").exists() and not (tmp_path / "plain.npy").exists()
    rc, err = cli(capsys, "run", str(prog), "--json", str(tmp_path / "x" / "o.json"))
    assert rc == UsageError.exit_code and "does not exist" in err and "--json" in err
    rc, err = cli(capsys, "run", str(prog), "--json", str(tmp_path / "a"), "--dump",
                  f"0:4:int8:{tmp_path / 'a'}")
    assert rc == UsageError.exit_code and "same file" in err


@pytest.mark.parametrize("loader", [load_config, load_model])
def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path, loader):
    p = tmp_path / "d.yaml"
    key = "dram_bytes" if loader is load_config else "epochs"
    p.write_text(f"memory:\n  {key}: 65536\n  {key}: 1024\n" if loader is load_config
                 else f"name: x\n{key}: 1\n{key}: 2\n")
    with pytest.raises(ConfigError) as info:
        loader(p)
    assert "line 3" in info.value.message and "first at line 2" in info.value.message
    assert info.value.key.endswith(key) and info.value.file == str(p)
    p.write_text("base: &b {a: 1}\n")  # a << merge may be overridden, as YAML allows
    from emulator.config import read_yaml

    p.write_text("x: &b {a: 1, b: 2}\ny: {<<: *b, a: 3}\n")
    assert read_yaml(p, "t") == {"x": {"a": 1, "b": 2}, "y": {"a": 3, "b": 2}}
    p.write_text("a: 1\n0x1: 2\n1: 3\n")  # 0x1 and 1 are the same key
    with pytest.raises(ConfigError, match="duplicate key 1"):
        read_yaml(p, "t")


# ============================================================================ checkpoints
def _train(capsys, tmp_path, *args: str) -> tuple[int, str]:
    return cli(capsys, "train", "--no-float", "-q", *args)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny training run of 1 epoch with a checkpoint only at its end (--checkpoint-every
    far beyond the run), and the same run with 2 epochs straight, for comparisons."""
    d = tmp_path_factory.mktemp("run")
    (d / "m.yaml").write_text(TINY)
    assert main(["train", str(d / "m.yaml"), "--no-float", "-q", "--checkpoint",
                 str(d / "r.ckpt"), "--checkpoint-every", "1000000"]) == 0
    assert main(["train", str(d / "m.yaml"), "--no-float", "-q", "--epochs", "2", "--json",
                 str(d / "two.json")]) == 0
    return d


def test_final_checkpoint_and_resume_with_more_epochs_is_bit_identical(finished_run, capsys,
                                                                       tmp_path):
    d = finished_run
    meta = ckpt.read_meta(d / "r.ckpt")
    assert meta["kind"] == "lpemu-train" and meta["model"]["name"] == "tiny"
    assert ckpt.load(d / "r.ckpt")[1]["host"]["epoch"] == 1  # written at the end of the run
    ck = tmp_path / "copy.ckpt"
    ck.write_bytes((d / "r.ckpt").read_bytes())
    rc, err = _train(capsys, tmp_path, "--resume", str(ck), "--epochs", "2", "--json",
                     str(tmp_path / "ext.json"), "--checkpoint", str(ck))
    assert rc == 0, err
    a, b = json.loads((d / "two.json").read_text()), json.loads((tmp_path / "ext.json")
                                                               .read_text())
    for key in ("weights_sha256", "test_accuracy", "epochs", "cycles", "energy_pj"):
        assert a[key] == b[key], key
    assert ckpt.read_meta(ck)["run_id"] == meta["run_id"]  # the same run, resumed


def test_another_run_cannot_take_over_a_checkpoint(finished_run, capsys, tmp_path):
    d = finished_run
    ck = tmp_path / "r.ckpt"
    ck.write_bytes((d / "r.ckpt").read_bytes())
    other = tmp_path / "o.yaml"
    other.write_text("name: other\nlayers: [64, 20, 10]\nepochs: 1\n")
    rc, err = _train(capsys, tmp_path, str(other), "--checkpoint", str(ck))
    assert rc == CheckpointError.exit_code and one_line(err)
    assert f"{ck}: checkpoint error: exists and is another run's checkpoint" in err
    assert ck.read_bytes() == (d / "r.ckpt").read_bytes()
    rc, err = _train(capsys, tmp_path, str(other), "--resume", str(ck))
    assert rc == CheckpointError.exit_code and "belongs to model 'tiny'" in err
    (tmp_path / "data.bin").write_bytes(b"precious")
    rc, err = _train(capsys, tmp_path, str(other), "--checkpoint", str(tmp_path / "data.bin"))
    assert rc == CheckpointError.exit_code and "not a checkpoint of this run" in err
    assert (tmp_path / "data.bin").read_bytes() == b"precious"


def test_two_runs_writing_one_path_are_caught():
    m = Machine(small(), assemble("halt\n"))
    d = Path(os.environ.get("TMPDIR", "/tmp"))
    path = d / f"shared-{os.getpid()}.ckpt"
    try:
        a = ckpt.CheckpointTarget(path, "run-a")
        a.save(m, {}, ckpt.identity(m))
        b = ckpt.CheckpointTarget(path, "run-b", overwrite=True)  # b was told to overwrite
        time.sleep(0.01)
        b.save(m, {}, ckpt.identity(m))
        with pytest.raises(CheckpointError, match="another run since this run last wrote"):
            a.save(m, {}, ckpt.identity(m))
        assert ckpt.read_meta(path)["run_id"] == "run-b"
    finally:
        path.unlink(missing_ok=True)


def _reseal(data: bytes, mutate) -> bytes:
    raw_len, meta_len = ckpt.BODY.unpack_from(data, ckpt.HEADER.size)
    off = ckpt.HEADER.size + ckpt.BODY.size
    meta = json.loads(data[off : off + meta_len])
    raw = zlib.decompress(data[off + meta_len :])
    return ckpt.seal(mutate(raw), meta)


def _good_checkpoint() -> tuple[Machine, bytes]:
    m = Machine(small(), assemble("li r1, 3\nhalt\n"))
    m.run()
    return m, ckpt.encode(m, {"kind": "t"})


def test_forged_page_table_claiming_2_40_bytes_is_refused_before_allocation():
    m, good = _good_checkpoint()

    def forge(raw: bytes) -> bytes:
        zin = zipfile.ZipFile(io.BytesIO(raw))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename == "dram_page_data.npy":
                    hdr = "{'descr': '|u1', 'fortran_order': False, 'shape': (268435456, 4096), }"
                    hdr += " " * (63 - (len(hdr) + 10) % 64) + "\n"
                    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode()
                zout.writestr(info.filename, data)
        return out.getvalue()

    bad = _reseal(good, forge)
    err, peak = peak_bytes(lambda: ckpt.decode(bad, "f.ckpt"))
    assert isinstance(err, CheckpointError) and "claims shape (268435456, 4096)" in str(err)
    assert peak < 16 << 20


def test_checkpoint_that_inflates_past_its_machine_is_refused_before_inflating(tmp_path):
    m, _ = _good_checkpoint()
    payload = zlib.compress(bytes(16 << 20), 1)  # 16 MiB of zeros in ~70 KiB
    body = ckpt.BODY.pack(256 << 20, 2) + b"{}" + payload  # and a header claiming 256 MiB
    data = ckpt.HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0, len(body),
                            hashlib.sha256(body).digest()) + body
    (tmp_path / "bomb.ckpt").write_bytes(data)
    err, peak = peak_bytes(lambda: ckpt.restore(tmp_path / "bomb.ckpt", m))
    assert isinstance(err, CheckpointError) and "would inflate to 268,435,456 bytes" in str(err)
    assert peak < 8 << 20
    lying = ckpt.HEADER.size + ckpt.BODY.size  # a raw length that understates the stream
    body2 = ckpt.BODY.pack(1000, 2) + b"{}" + payload
    data2 = ckpt.HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0, len(body2),
                             hashlib.sha256(body2).digest()) + body2
    err, peak = peak_bytes(lambda: ckpt.decode(data2, "l.ckpt"))
    assert isinstance(err, CheckpointError) and err.offset == ckpt.HEADER.size and lying
    assert peak < 8 << 20


def test_string_typed_history_is_a_checkpoint_error(finished_run, capsys, tmp_path):
    src = (finished_run / "r.ckpt").read_bytes()
    st_, extra = ckpt.decode(src, "r.ckpt")
    meta = ckpt.read_meta(finished_run / "r.ckpt")
    h = dict(extra["host"]["history"][0])
    for field, value in (("loss", "y"), ("sparsity", "abc"), ("counters", {"cycles": "1"}),
                         ("epoch", "0")):
        bad = dict(extra, host=dict(extra["host"], history=[dict(h, **{field: value})]))
        st_["extra"] = np.frombuffer(json.dumps(bad).encode(), np.uint8)
        path = tmp_path / f"{field}.ckpt"
        path.write_bytes(ckpt.pack(st_, meta))
        rc, err = _train(capsys, tmp_path, "--resume", str(path))
        assert rc == CheckpointError.exit_code and one_line(err), err
        assert f"{path}: checkpoint error: training driver state is malformed" in err


def test_killed_writers_temp_files_are_removed_and_errors_name_the_target(tmp_path,
                                                                          monkeypatch):
    target = tmp_path / "out.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.json.{dead.pid}.abcd.tmp"
    stale.write_text("torn")
    mine_alive = tmp_path / f".out.json.{os.getppid()}.abcd.tmp"  # a live process's: kept
    mine_alive.write_text("in progress")
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and not stale.exists() and mine_alive.exists()

    def fail(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, fail)
    assert info.value.filename == str(target) and target.read_bytes() == b"new"

    def interrupt(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name,
                                                                 mine_alive.name])


def test_full_disk_message_names_the_path(tmp_path, capsys):
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    rc, err = cli(capsys, "run", str(prog), "--json", "/dev/full")
    assert rc == 9 and err == "lpemu: /dev/full: file error: No space left on device\n"


# ============================================================================ exit 70 list
@pytest.mark.parametrize("key,value,fragment", [
    ("memory.dram_bytes", 2**63, "must be <= 2^40"),
    ("memory.dram_bytes", 2**100, "must be <= 2^40"),
    ("memory.scratchpad_bytes", 2**100, "must be <= 2^40"),
    ("accumulator.entries", 2**63, "must be <= 2^32"),
    ("memory.dram_bytes", 2**32, "over the memory budget"),
    ("memory.dram_bytes", 2**40, "over the memory budget"),
    ("memory.scratchpad_bytes", 2**40, "over the memory budget"),
    ("accumulator.entries", 2**30, "over the memory budget"),
])
def test_huge_memories_are_config_errors_before_allocation(key, value, fragment):
    sec, name = key.split(".")
    d = {sec: {name: value}, "budget": {"max_memory_bytes": 1 << 30}}

    def build():
        return Machine(config_from_dict(d), assemble("halt\n"))

    err, peak = peak_bytes(build)
    assert isinstance(err, ConfigError) and err.key == key and fragment in err.message, err
    assert peak < 4 << 20


def test_memory_budget_default_is_a_fraction_of_available_memory():
    avail = limits.available_memory()
    assert limits.memory_budget(0) == int(limits.AUTO_MEMORY_FRACTION * avail)
    assert limits.memory_budget(12345) == 12345
    cfg = small(budget={"max_memory_bytes": 1 << 30})
    assert check_memory(cfg) == (1 << 30) - (1 << 16) - (1 << 14) - 4 * (1 << 10)


@pytest.mark.parametrize("src,what", [
    (set_reg(4, 2**40) + "gemm r0, r0, r0, r4, r0, r0", "M=2^40, K=N=0"),
    (set_reg(5, 2**27) + "gemm r0, r0, r0, r0, r5, r0, sa=1, sb=1", "M=N=0, K=2^27, skip"),
    (set_reg(3, 2**62) + "dmaldacc r0, r0, r3, r0, r0", "rows=2^62, cols=0"),
    (set_reg(4, 2**62) + "vnormrow r0, r0, r0, r0, r4, e0", "rows=0, cols=2^62"),
    (set_reg(4, 2**62) + "vrsum r0, r0, r0, r4, dt=i16", "rows=0, cols=2^62"),
    (set_reg(4, 2**62) + "vrmax r0, r0, r0, r4, dt=i16", "rows=0, cols=2^62"),
    (set_reg(4, 2**62) + "vsubrow r0, r0, r0, r0, r4, dt=i16", "rows=0, cols=2^62"),
])
def test_empty_operations_beside_huge_extents_do_nothing(src, what):
    m = Machine(small(), assemble(src + "\nhalt\n"))
    before = m.acc.copy()
    out, peak = peak_bytes(lambda: m.run(max_steps=10))
    assert not isinstance(out, Exception), (what, out)
    assert m.halted and np.array_equal(m.acc, before)
    assert m.summary().totals["macs"] == 0 and m.summary().totals["macs_skipped"] == 0
    assert peak < 4 << 20, (what, peak)


def test_empty_gemm_k0_clears_c_and_checks_its_range():
    m = run1("li r1, 4\nli r2, 7\nvtoacc r0, r0, r1\n" + "gemm r0, r0, r0, r2, r0, r2")
    assert m.acc[:49].tolist() == [0] * 49
    with pytest.raises(MemoryAccessError):
        run1(set_reg(4, 2**40) + "li r6, 1\ngemm r0, r0, r0, r4, r0, r6")  # C: 2^40 entries


def test_zero_skip_gemm_beyond_the_memory_budget_is_an_execution_error():
    base = small()
    src = "li r4, 8\nli r5, 1024\nli r6, 8\ngemm r0, r0, r0, r4, r5, r6, sa=1, sb=1\nhalt\n"
    need = (base.memory.dram_bytes + 9 * base.memory.scratchpad_bytes
            + 20 * base.accumulator.entries + 5 * limits.BYTES_PER_INSTRUCTION)
    cfg = small(budget={"max_memory_bytes": need})
    m = Machine(cfg, assemble(src))
    with pytest.raises(ExecutionError) as info:
        m.run()
    assert info.value.pc == 3 and "M=8, K=1024, N=8 with zero-skipping" in info.value.message
    roomy = Machine(small(budget={"max_memory_bytes": need + (1 << 20)}), assemble(src))
    roomy.run()
    assert roomy.summary().totals["macs_skipped"] == 8 * 1024 * 8


def test_load_checks_the_npy_header_before_reading(tmp_path, capsys):
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    hdr = "{'descr': '|u1', 'fortran_order': False, 'shape': (1099511627776,), }"
    hdr += " " * (63 - (len(hdr) + 10) % 64) + "\n"
    big = tmp_path / "big.npy"
    big.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode()
                    + bytes(64))
    rc, err = cli(capsys, "run", str(prog), "--load", f"{big}@0")
    assert rc == UsageError.exit_code and one_line(err) and f"--load {big}@0" in err
    assert "1,099,511,627,776 bytes" in err and "truncated" in err
    np.save(tmp_path / "fits.npy", np.zeros(1 << 16, np.uint8))
    rc, err = cli(capsys, "run", str(prog), "--load", f"{tmp_path / 'fits.npy'}@0x10",
                  "--config", str(_cfg(tmp_path, "memory: {dram_bytes: 65536}\n")))
    assert rc == UsageError.exit_code and "do not fit the 65,520 bytes of DRAM" in err
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    rc, err = cli(capsys, "run", str(prog), "--load", f"{fifo}@0")  # must not block
    assert rc == UsageError.exit_code and "not a regular file" in err


def _cfg(d: Path, text: str) -> Path:
    p = d / "c.yaml"
    p.write_text(text)
    return p


def test_register_number_of_5001_digits_is_an_asm_error():
    with pytest.raises(AsmError) as info:
        assemble("li r" + "1" * 5001 + ", 5\n", "p.s")
    assert (info.value.line, info.value.col) == (1, 4) and len(str(info.value)) < 300
    with pytest.raises(AsmError, match="integer literal of 5,001 characters"):
        assemble("li r1, " + "1" * 5001 + "\n", "p.s")
    assert assemble("li r07, 1\nhalt\n").words == assemble("li r7, 1\nhalt\n").words


@pytest.mark.parametrize("argv,code,where", [
    (["run", "/dev/zero"], UsageError.exit_code, "lpemu: /dev/zero: usage error: program file"),
    (["run", "PROG", "--config", "/dev/zero"], ConfigError.exit_code,
     "lpemu: /dev/zero: config error: config file holds more than"),
    (["train", "/dev/zero"], ConfigError.exit_code,
     "lpemu: /dev/zero: config error: model spec holds more than"),
])
def test_device_files_are_read_with_a_bound(tmp_path, capsys, argv, code, where):
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    argv = [str(prog) if a == "PROG" else a for a in argv]
    rc, err = cli(capsys, *argv)
    assert rc == code and err.startswith(where), err


def test_read_bounded_stops_at_the_bound(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    assert read_bounded(p, 100) == b"x" * 100
    assert read_bounded(p, 10, prefix=True) == b"x" * 10
    with pytest.raises(Exception, match="over the limit of 99"):
        read_bounded(p, 99)


# ============================================================================ memory and time
def test_run_builds_its_report_only_when_asked(tmp_path, capsys, monkeypatch):
    import programs.cli.report as report

    def no(*a, **k):
        raise AssertionError("the JSON report was built without --json")

    monkeypatch.setattr(report, "run_report", no)
    prog = tmp_path / "p.s"
    prog.write_text("li r1, 3\nhalt\n")
    assert cli(capsys, "run", str(prog), "-q")[0] == 0


def test_state_digest_hashes_dram_in_place():
    m = Machine(small(memory={"dram_bytes": 64 << 20}), assemble("halt\n"))
    digest, peak = peak_bytes(m.digest)
    h = hashlib.sha256()
    for arr in (m.dram, m.spad, m.acc.astype(np.int64)):
        h.update(arr.tobytes())
    h.update(np.array(m.r + m.e, dtype=np.int64).tobytes())
    h.update(np.array(m.rng, dtype=np.uint64).tobytes())
    h.update(np.array([m.flags, m.pc, int(m.halted)], dtype=np.int64).tobytes())
    assert digest == h.hexdigest() and peak < 4 << 20


def test_synthetic_dataset_size_is_checked_before_it_is_generated(tmp_path, capsys):
    p = tmp_path / "m.yaml"
    p.write_text("dataset: synthetic\nlayers: [64, 1000000]\n")
    rc, err = cli(capsys, "train", str(p), "-q")
    assert rc == ConfigError.exit_code and one_line(err)
    from programs.host.driver import check_dataset_fits

    spec = spec_from_dict({"dataset": "synthetic", "layers": [64, 2000]})
    cfg = config_from_dict({"memory": {"dram_bytes": 1 << 20, "scratchpad_bytes": 1 << 22}})
    err_, peak = peak_bytes(lambda: check_dataset_fits(spec, cfg))
    assert isinstance(err_, ConfigError) and err_.key == "layers", err_
    assert "more than the 1,048,576 bytes of DRAM" in err_.message
    assert peak < 4 << 20


@pytest.mark.parametrize("text,key", [
    ("epochs: 1000000000000\n", "epochs"), ("batch_size: 100000\n", "batch_size"),
    ("layers: [64, 2000000]\n", "layers"), ("update: {schedule: {every: 10000000}}\n",
                                            "update.schedule.every"),
    ("update: {lr: 17}\n", "update.lr"),
])
def test_model_sizes_are_bounded(text, key):
    with pytest.raises(ConfigError) as info:
        spec_from_dict(__import__("yaml").safe_load(text), "m.yaml")
    assert info.value.key == key


def test_epochs_flag_is_bounded(tmp_path, capsys):
    rc, err = cli(capsys, "train", "--epochs", "1000000000000", "-q")
    assert rc == UsageError.exit_code and err.startswith("lpemu: --epochs: usage error")


@pytest.mark.parametrize("lr", [1e-8, 1e-300])
def test_a_tiny_learning_rate_that_validates_also_runs(lr):
    """lr = 1e-8 used to validate and then fault in the firmware (a requantize shift of 34);
    the requantizer now takes any shift, so every lr the validator accepts trains: here one
    epoch on a tiny model, whose updates all round to zero."""
    from programs.host.datasets import load_for
    from programs.host.driver import ChipTrainer

    spec = spec_from_dict({"layers": [64, 10], "epochs": 1, "update": {"lr": lr}})
    tr = ChipTrainer(spec, Config(), load_for(spec))
    w0 = [w.copy() for w in tr.weights()]
    tr.train_epoch()
    assert all(np.array_equal(a, b) for a, b in zip(w0, tr.weights(), strict=True))


def test_budget_stop_still_writes_the_outputs(tmp_path, capsys):
    prog = tmp_path / "p.s"
    prog.write_text("li r1, 0\nloop:\n addi r1, r1, 1\n stw r1, r0, 0\n jmp loop\n")
    rc, err = cli(capsys, "run", str(prog), "--max-steps", "1000", "--json",
                  str(tmp_path / "o.json"), "--dump", f"0:1:int32:{tmp_path / 'o.npy'}")
    assert rc == BudgetExceeded.exit_code and one_line(err) and "after 1000 steps" in err
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["stopped"]["kind"] == "budget exceeded" and doc["stopped"]["steps"] == 1000
    assert doc["instructions"] == 1000
    assert np.load(tmp_path / "o.npy").tolist() == [333]
    rc, err = cli(capsys, "profile", str(prog), "--max-steps", "1000", "--json",
                  str(tmp_path / "p.json"), "--trace", str(tmp_path / "t.json"), "--csv",
                  str(tmp_path / "p.csv"), "-q")
    assert rc == BudgetExceeded.exit_code
    assert json.loads((tmp_path / "p.json").read_text())["stopped"]["pc"] == err_pc(err)
    assert len(json.loads((tmp_path / "t.json").read_text())["traceEvents"]) > 1000
    assert (tmp_path / "p.csv").read_text().count("\n") >= 2
    rc, _ = cli(capsys, "run", str(prog), "--max-steps", "10", "--json", str(tmp_path / "h.j"))
    assert rc == BudgetExceeded.exit_code
    rc, _ = cli(capsys, "run", str(_cfg(tmp_path, "halt\n")), "--json", str(tmp_path / "h.j"))
    assert rc == 0 and json.loads((tmp_path / "h.j").read_text())["stopped"] is None


def test_budget_stop_in_training_still_writes_the_outputs(tmp_path, capsys):
    """lpemu train stopped by the step budget (per firmware run, and training runs the
    firmware one batch per run: a batch of this model is over 60 instructions, an epoch about
    15,000): --json has the epochs finished (none), the counters so far and the stop; --trace
    has the events; the error is the typed budget error (exit 8)."""
    model = tmp_path / "m.yaml"
    model.write_text("layers: [64, 16, 10]\nepochs: 3\n")
    cfg = tmp_path / "hw.yaml"
    cfg.write_text("budget:\n  max_steps: 60\n")
    rc, err = cli(capsys, "train", str(model), "--config", str(cfg), "-q", "--json",
                  str(tmp_path / "t.json"), "--trace", str(tmp_path / "tr.json"))
    assert rc == BudgetExceeded.exit_code and one_line(err) and "budget of 60 exhausted" in err
    doc = json.loads((tmp_path / "t.json").read_text())
    stop = doc["stopped"]
    assert stop["kind"] == "budget exceeded" and f"after {stop['steps']} steps" in err
    assert stop["pc"] == err_pc(err)
    assert doc["epochs_finished"] == len(doc["epochs"]) == 0
    # the machine's steps so far: the set-up run's and the 60 of the stopped batch
    assert doc["instructions"] == stop["steps"] > 60 and doc["cycles"] > 0
    assert json.loads((tmp_path / "tr.json").read_text())["traceEvents"]


def test_trace_limit_is_bounded_by_the_memory_budget(tmp_path, capsys):
    """--trace-limit keeps events in memory (about 1 KiB each until written): a limit whose
    trace cannot fit the memory budget is refused before the run, naming the flag."""
    prog = tmp_path / "p.s"
    prog.write_text("halt\n")
    cfg = tmp_path / "hw.yaml"
    cfg.write_text("budget:\n  max_memory_bytes: 536870912\n")  # 512 MiB (DRAM: 256)
    for cmd in (["profile", str(prog)], ["train"]):
        rc, err = cli(capsys, *cmd, "--config", str(cfg), "--trace", str(tmp_path / "t.json"),
                      "--trace-limit", "1000000", "-q")
        assert rc == UsageError.exit_code and one_line(err), err
        assert err.startswith("lpemu: --trace-limit: usage error") and "976.6 MiB" in err
        assert not (tmp_path / "t.json").exists()
    rc, _ = cli(capsys, "profile", str(prog), "--config", str(cfg), "--trace",
                str(tmp_path / "t.json"), "--trace-limit", "100000", "-q")
    assert rc == 0 and (tmp_path / "t.json").exists()


def test_experiment_out_is_checked_before_the_run(tmp_path, capsys, monkeypatch):
    """--out that cannot hold the tables is refused before any run (none is started)."""
    import programs.experiments

    monkeypatch.setattr(programs.experiments, "run_experiment",
                        lambda *a, **k: pytest.fail("ran"))
    blocker = tmp_path / "f"
    blocker.write_text("")
    for out in (blocker / "sub", "/proc/lpemu-no"):
        rc, err = cli(capsys, "experiment", "perceptron", "--out", str(out))
        assert rc == UsageError.exit_code and err.startswith("lpemu: --out: usage error"), err
    (tmp_path / "d" / "perceptron.md").mkdir(parents=True)  # a folder where a table goes
    rc, err = cli(capsys, "experiment", "perceptron", "--out", str(tmp_path / "d"))
    assert rc == UsageError.exit_code and err.startswith("lpemu: --out: usage error"), err


def err_pc(err: str) -> int:
    return int(err.split("pc ")[1].split(" ")[0])


def test_many_labels_on_one_line():
    src = " ".join(f"l{i}:" for i in range(2000)) + " halt\nnext: nop\n"
    p = assemble(src)
    assert p.labels["l0"] == p.labels["l1999"] == 0 and p.labels["next"] == 1


# ============================================================================ the docs
def test_docs_list_every_limit():
    doc = (ROOT / "docs" / "errors.md").read_text()
    assert limits.limits_table() in doc
    names = {cls.__name__ for cls in LpemuError.__subclasses__()} | {
        "MemoryAccessError", "BudgetExceeded"}
    for lim in limits.LIMITS:
        if not lim.error.startswith("("):
            assert set(lim.error.split(", ")) <= names, lim.error


def test_config_bounds_are_the_documented_ones():
    for key, hi in (("memory.dram_bytes", limits.MAX_MEMORY_BYTES),
                    ("accumulator.entries", limits.MAX_ACC_ENTRIES),
                    ("dma.latency_cycles", limits.MAX_LATENCY_CYCLES),
                    ("budget.max_steps", limits.MAX_STEPS),
                    ("budget.max_cycles", limits.MAX_CYCLES)):
        sec, name = key.split(".")
        assert getattr(getattr(config_from_dict({sec: {name: hi}}), sec), name) == hi
        with pytest.raises(ConfigError):
            config_from_dict({sec: {name: hi + 1}})
    assert limits.MAX_MEMORY_BYTES == 2**40 and limits.MAX_ACC_ENTRIES == 2**32
    assert limits.MAX_LATENCY_CYCLES == 2**20 and limits.MAX_STEPS == 2**40
    assert limits.MAX_CYCLES == 2**56 and limits.MAX_ENERGY_PJ == 1e9


# ============================================================================ property test
def near(hi: int, lo: int = 0) -> st.SearchStrategy[int]:
    """Integers near and past the bounds [lo, hi], and far beyond them."""
    return st.sampled_from([lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, 2 * hi, 2**63, 2**100,
                            -(2**63)])


INT_FIELDS = {
    "memory": {"dram_bytes": limits.MAX_MEMORY_BYTES,
               "scratchpad_bytes": limits.MAX_MEMORY_BYTES},
    "accumulator": {"entries": limits.MAX_ACC_ENTRIES},
    "array": {"rows": limits.MAX_ARRAY_DIM, "cols": limits.MAX_ARRAY_DIM},
    "dma": {"latency_cycles": limits.MAX_LATENCY_CYCLES,
            "bytes_per_cycle": limits.MAX_BYTES_PER_CYCLE},
    "alu": {"lanes": limits.MAX_LANES, "latency_cycles": limits.MAX_LATENCY_CYCLES},
    "budget": {"max_steps": limits.MAX_STEPS, "max_cycles": limits.MAX_CYCLES},
}
REGS = st.sampled_from([0, 1, 2, 7, 16, 255, 1023, 4096, 2**16, 2**31, 2**32, 2**40, 2**62,
                        2**63 - 1, -1, -(2**63)])
OPS = ["gemm r0, r1, r2, r3, r4, r5{}", "dmald r1, r2, r3, r4, r5, r6",
       "dmaldacc r1, r2, r3, r4, r5", "dmastacc r1, r2, r3, r4, r5",
       "vnormrow r1, r2, r3, r4, r5, e0", "vrsum r1, r2, r3, r4", "vrmax r1, r2, r3, r4",
       "vsubrow r1, r2, r3, r4, r5", "rq r1, r2, r3, e0, e0", "vadd r1, r2, r3, r4",
       "efit e1, r1, r2, e0", "vtoacc r1, r2, r3"]
CAP_BYTES = 64 << 20  # memory cap of one example (tracemalloc peak)
CAP_SECONDS = 30.0  # time cap of one example (generous: a first call may JIT-compile kernels)
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.data())
def test_property_configs_near_and_past_every_limit(data):
    d: dict = {}
    for sec, fields in INT_FIELDS.items():
        for name, hi in fields.items():
            if data.draw(st.booleans()):
                lo = 0 if name == "latency_cycles" else 1
                d.setdefault(sec, {})[name] = data.draw(near(hi, lo))
    if data.draw(st.booleans()):
        d["energy"] = {"dram_per_64b": data.draw(st.sampled_from(
            [0.0, 1e9, 1.0000001e9, 1e308, float("inf"), float("nan"), -1.0]))}
    d["budget"] = dict(d.get("budget", {}), max_memory_bytes=32 << 20)

    def build():
        return Machine(config_from_dict(d), assemble("halt\n"))

    out, peak = peak_bytes(build, CAP_SECONDS)
    if isinstance(out, Exception):
        assert isinstance(out, ConfigError) and out.key, out
    else:
        out.run()  # type: ignore[union-attr]
    assert peak < CAP_BYTES + (32 << 20)


@SETTINGS
@given(st.data())
def test_property_operands_near_and_past_every_extent(data):
    op = data.draw(st.sampled_from(OPS))
    if "{}" in op:
        op = op.format(data.draw(st.sampled_from(["", ", sa=1", ", sa=1, sb=1", ", acc=1",
                                                  ", da=i16, ta=1"])))
    src = "".join(set_reg(r, data.draw(REGS)) for r in range(1, 7)) + op + "\nhalt\n"
    cfg = small(array={"skip": data.draw(st.sampled_from(["none", "element", "row"]))},
                budget={"max_memory_bytes": 8 << 20})
    m = Machine(cfg, assemble(src))
    out, peak = peak_bytes(lambda: m.run(max_steps=100), CAP_SECONDS)
    assert not isinstance(out, Exception) or isinstance(out, (ExecutionError,)), out
    assert peak < CAP_BYTES


@SETTINGS
@given(st.data())
def test_property_model_specs_near_and_past_every_limit(data):
    d = {"layers": data.draw(st.sampled_from([[64, 10], [64, 0], [64, 2**20], [64, 2**20 + 1],
                                              [64] * 7, [64, 1], [64, 100, 10]])),
         "epochs": data.draw(near(limits.MAX_EPOCHS, 1)),
         "batch_size": data.draw(near(limits.MAX_BATCH_SIZE, 1)),
         "dataset": data.draw(st.sampled_from(["digits", "synthetic"])),
         "update": {"lr": data.draw(st.sampled_from([1e-12, 1e-8, 1e-6, 0.1, 16.0, 17.0]))}}
    from programs.host.driver import check_dataset_fits

    def build():
        spec = spec_from_dict(d, "m.yaml")
        check_dataset_fits(spec, Config())
        return spec

    out, peak = peak_bytes(build, CAP_SECONDS)
    assert not isinstance(out, Exception) or isinstance(out, ConfigError), out
    assert peak < CAP_BYTES


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["nop", "nop\r", "", "x: nop", "li r1, 5", "  ; c", "frob",
                                 "jmp x", "jmp y", "y:", "halt\r", ".equ A, 3",
                                 "li r2, A"]), max_size=40))
def test_line_chunks_do_not_change_the_result(monkeypatch, lines):
    """The assembler splits a text into lines a chunk at a time: with tiny chunks (every
    boundary inside or between lines, after a \\r) the result or error is the same."""
    import isa.asm as asm

    text = "\n".join(lines)

    def outcome():
        try:
            p = assemble(text, "c.s")
            return p.words, p.labels, list(p.source)
        except AsmError as e:
            return str(e)

    want = outcome()
    for chunk in (1, 2, 7):
        monkeypatch.setattr(asm, "_CHUNK", chunk)
        assert outcome() == want, chunk
    monkeypatch.undo()
