"""Coverage-guided fuzzing of lpemu's input readers with atheris (libFuzzer for Python).

    pip install -e ".[fuzz]"
    python benchmarks/atheris_fuzz.py [--seconds 600] [--targets asm,binary,...] [--json OUT]

Each target takes raw bytes and feeds them to one reader the way the CLI does (assembly source,
program binary, hardware config, model spec, checkpoint). The contract is the one of
``tests/test_fuzz.py``: a reader either succeeds or raises its documented typed error with a
location inside the input; anything else is a crash. Every target runs in its own process for
``--seconds``, starting from a seed corpus of valid inputs taken from the repository; a crashing
input is copied to ``tests/fuzz_regressions/<target>/`` where ``tests/test_fuzz.py`` replays it
on every test run (atheris is not needed for that).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"


# ------------------------------------------------------------------------------ the targets
def _file(data: bytes, suffix: str) -> Path:
    tmp = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)  # noqa: SIM115
    with tmp:
        tmp.write(data)
    return Path(tmp.name)


def target_asm(data: bytes) -> None:
    """Assembly source through the CLI's program reader (non-UTF-8 bytes included)."""
    from isa.errors import AsmError
    from programs.cli import load_program

    path = _file(data, ".s")
    try:
        load_program(str(path))
    except AsmError as e:
        assert e.file == str(path) and e.line >= 1 and e.col >= 1, e
        assert e.line <= data.count(b"\n") + 1, e
    finally:
        path.unlink()


def target_binary(data: bytes) -> None:
    """A program binary: rejected with a byte offset inside the file, or accepted canonically."""
    from isa.encoding import from_bytes, to_bytes
    from isa.errors import BinaryFormatError

    try:
        prog = from_bytes(data, "f.bin")
    except BinaryFormatError as e:
        assert e.file == "f.bin" and 0 <= e.offset <= len(data), e
    else:
        assert to_bytes(prog) == data


def target_binary_sealed(data: bytes) -> None:
    """A program binary whose header is made consistent first (magic, version, payload length
    and CRC32 recomputed; word and label counts kept), so mutations reach the instruction
    decoder and the label table instead of stopping at the CRC."""
    import zlib

    from isa.encoding import HEADER, MAGIC, VERSION

    if len(data) >= HEADER.size:
        _, _, _, n_words, n_labels, _, _ = HEADER.unpack_from(data)
        body = data[HEADER.size :]
        data = HEADER.pack(MAGIC, VERSION, 0, n_words, n_labels, len(body),
                           zlib.crc32(body)) + body
    target_binary(data)


def _yaml_target(loader_name: str) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        from emulator.config import load_config
        from isa.errors import ConfigError
        from programs.compiler.spec import load_model

        loader = load_config if loader_name == "config" else load_model
        path = _file(data, ".yaml")
        try:
            loader(path)
        except ConfigError as e:
            assert e.file == str(path), e
        finally:
            path.unlink()

    target.__doc__ = f"A {loader_name} YAML file: loaded, or a ConfigError naming the file."
    return target


def target_checkpoint(data: bytes) -> None:
    """A checkpoint file: decoded and restored into a machine, or a CheckpointError."""
    from emulator import checkpoint as ckpt
    from isa.errors import CheckpointError

    try:
        st, _ = ckpt.decode(data, "f.ckpt")
        ckpt.restore_machine(_machine(), st, "f.ckpt")
    except CheckpointError as e:
        assert e.file == "f.ckpt", e
        assert e.offset is None or 0 <= e.offset <= len(data), e


def target_checkpoint_sealed(data: bytes) -> None:
    """The uncompressed archive inside a checkpoint, compressed and sealed behind a valid
    header and SHA-256 by the harness, so mutations reach the archive reader and the state
    checks instead of stopping at the checksum."""
    from emulator import checkpoint as ckpt

    target_checkpoint(ckpt.seal(data, {"kind": "fuzz"}))


_MACHINE: list = []


def _machine():
    from emulator.config import config_from_dict
    from emulator.machine import Machine
    from isa import assemble

    if not _MACHINE:
        cfg = config_from_dict({"memory": {"dram_bytes": 1 << 16, "scratchpad_bytes": 1 << 12},
                                "accumulator": {"entries": 64}})
        _MACHINE.append((cfg, assemble(SEED_ASM, "seed.s")))
    cfg, prog = _MACHINE[0]
    return Machine(cfg, prog)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "asm": target_asm,
    "binary": target_binary,
    "binary-sealed": target_binary_sealed,
    "config": _yaml_target("config"),
    "model": _yaml_target("model"),
    "checkpoint": target_checkpoint,
    "checkpoint-sealed": target_checkpoint_sealed,
}


# ------------------------------------------------------------------------------ seed corpora
SEED_ASM = """; a loop over most operand kinds
    .equ N, 4
    li r1, 0
    li r2, N
    li r3, 16
    eset e1, -3
    rngseed r2
loop:
    gemm r0, r3, r3, r2, r2, r2, acc=1, sb=1, da=i16
    rq r3, r0, r2, e1, e1, rnd=uniform, dt=i8, relu=1
    addi r1, r1, 1
    blt r1, r2, loop   # back
    halt
"""


def seeds(target: str) -> list[bytes]:
    """Valid inputs for a target, from the repository (its programs, configs, a checkpoint)."""
    if target == "asm":
        return [SEED_ASM.encode()] + [p.read_bytes() for p in sorted(
            (ROOT / "programs" / "asm").glob("*.s"))]
    if target in ("binary", "binary-sealed"):
        from isa import assemble, to_bytes

        return [to_bytes(assemble(SEED_ASM, "seed.s"))]
    if target == "config":
        return [(ROOT / "configs" / "default.yaml").read_bytes(), b"array: {rows: 8}\n"]
    if target == "model":
        return [(ROOT / "configs" / "digits_mlp.yaml").read_bytes(), b"layers: [64, 10]\n"]
    if target in ("checkpoint", "checkpoint-sealed"):
        import zlib

        from emulator import checkpoint as ckpt

        m = _machine()
        m.run(break_pc=m.program.labels["loop"], break_after=2)  # mid-run, state non-trivial
        good = ckpt.encode(m, {"kind": "seed"})
        if target == "checkpoint":
            return [good]
        meta_len = ckpt.BODY.unpack_from(good, ckpt.HEADER.size)[1]
        return [zlib.decompress(good[ckpt.HEADER.size + ckpt.BODY.size + meta_len :])]
    raise KeyError(target)


def regression_inputs() -> list[tuple[str, Path]]:
    """Every crashing input found so far, as (target, file)."""
    return [(d.name, p) for d in sorted(REGRESSIONS.glob("*")) if d.is_dir()
            for p in sorted(d.iterdir()) if p.is_file()]


# ------------------------------------------------------------------------------ running
def child(name: str, corpus: Path, artifacts: Path, seconds: int) -> None:
    """Fuzz one target in this process (libFuzzer exits the process when it is done)."""
    import atheris

    # coverage feedback from lpemu's packages and the YAML parser (not numpy or numba)
    with atheris.instrument_imports(include=["isa", "emulator", "programs", "yaml"]):
        import yaml  # noqa: F401

        import emulator.checkpoint  # noqa: F401
        import emulator.config  # noqa: F401
        import isa.asm  # noqa: F401
        import isa.encoding  # noqa: F401
        import programs.cli  # noqa: F401
        import programs.compiler.spec  # noqa: F401
    fn = TARGETS[name]
    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={seconds}",
                   f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-timeout=20",
                   "-rss_limit_mb=4096"], fn)
    atheris.Fuzz()


def run_target(name: str, seconds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        corpus, artifacts = Path(tmp) / "corpus", Path(tmp) / "artifacts"
        corpus.mkdir()
        artifacts.mkdir()
        for i, s in enumerate(seeds(name)):
            (corpus / f"seed{i}").write_bytes(s)
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, __file__, "--child", name, "--corpus", str(corpus),
                              "--artifacts", str(artifacts), "--seconds", str(seconds)],
                             cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", res.stderr)
        cov = re.findall(r"\bcov: (\d+)", res.stderr)
        crashes = []
        for p in sorted(artifacts.iterdir()):
            dest = REGRESSIONS / name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
            crashes.append(str(dest.relative_to(ROOT)))
        ok = res.returncode == 0 and not crashes
        return {"target": name, "runs": int(runs[-1]) if runs else None,
                "coverage": int(cov[-1]) if cov else None, "seconds": wall,
                "corpus_size": len(list(corpus.iterdir())), "crashes": crashes,
                "ok": ok, "log_tail": "" if ok else res.stderr[-3000:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=600, help="wall time per target")
    ap.add_argument("--targets", help=f"comma-separated subset of {','.join(TARGETS)}")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.corpus, args.artifacts, args.seconds)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    names = args.targets.split(",") if args.targets else list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown target(s) {unknown}; choose from {list(TARGETS)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        r = run_target(name, args.seconds)
        results.append(r)
        print(f"{name}: {r['runs'] or 0:,} runs in {r['seconds']:.0f} s, coverage {r['coverage']}, "
              f"corpus {r['corpus_size']}, crashes {len(r['crashes'])}"
              + ("" if r["ok"] else f"\n{r['log_tail']}"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
