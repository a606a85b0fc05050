"""Rerun the adversarial inputs named in issue 18 against a code tree and count the outcomes.

    python benchmarks/adversarial.py [--code DIR] [--json OUT] [--only NAME,...] [--heavy]
                                     [--mem-gib 8] [--timeout 60]
    python benchmarks/adversarial.py --compare BEFORE.json AFTER.json   # the two side by side

Each case builds its input files in a fresh temporary directory and runs the ``lpemu`` command
line of the code tree ``--code`` (default: this checkout) the way the console script does
(``from programs.cli import main``), in a child process under an address-space cap
(RLIMIT_AS, ``--mem-gib``) and a wall-time limit. To compare with older code, extract it first,
e.g. ``git archive <commit> | tar -x -C /tmp/base`` and pass ``--code /tmp/base``.

Outcomes:

* ``ok``        exit 0 and the result is right (the case's own check);
* ``typed``     the expected typed error: its exit code, one line on stderr naming the
                location the case asks for (a regex), at most 2,000 characters, and any check
                on the files left behind passes;
* ``mistyped``  a typed error, but not the expected one (wrong exit code, location missing,
                message unbounded, or outputs missing/partial);
* ``wrong``     exit 0 but the result is wrong (silently wrong);
* ``internal``  exit 70 (an internal error);
* ``traceback`` a Python traceback or exit 1;
* ``memory``    MemoryError, or killed by the memory cap;
* ``timeout``   still running at the time limit (killed);
* ``startup``   (Ctrl-C cases) the signal arrived while CPython itself was starting, before
                any line of lpemu ran: the process dies of SIGINT or CPython reports a fatal
                error in its own start-up; nothing lpemu can catch.

Cases marked heavy (10^7-instruction programs, a 10-million-line source) run only with
``--heavy``. The machine is shared: times are single runs, indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CODE: list[Path] = [ROOT]  # the code tree under test (--code)
# the console script's two lines, plus the child's own peak RSS (VmHWM) on stderr at exit:
# wait4's ru_maxrss would include the parent's memory at fork time
ENTRY = ("import atexit, sys\n"
         "def _hwm():\n"
         "    with open('/proc/self/status') as f:\n"
         "        kb = next(ln.split()[1] for ln in f if ln.startswith('VmHWM'))\n"
         "    sys.stderr.write(f'VMHWM_KB {kb}\\n')\n"
         "atexit.register(_hwm)\n"
         "from programs.cli import main\n"
         "sys.exit(main())\n")
TYPED_CODES = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11}

SMALL_MODEL = "name: tiny\nlayers: [64, 10]\nepochs: 1\n"
TINY_MODEL = SMALL_MODEL
SMALL_CFG = "memory: {dram_bytes: 1048576, scratchpad_bytes: 65536}\n"


@dataclass
class Run:
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    maxrss_mb: float
    timed_out: bool = False


@dataclass
class Case:
    name: str
    group: str
    setup: Callable[[Path], list[str] | list[list[str]]]
    expect: int  # 0 (correct result) or the exit code of the expected typed error
    where: str = ""  # regex the error line must match (its location)
    check: Callable[[Path, Run], bool] | None = None  # the result of a run that exits 0
    typed_check: Callable[[Path, Run], bool] | None = None  # files left by the typed error
    heavy: bool = False
    sigint_ms: float | None = None  # send SIGINT this long after the start
    timeout: float | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ helpers
def w(d: Path, name: str, text: str | bytes) -> str:
    p = d / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def laughs(levels: int) -> str:
    """A billion-laughs alias bomb as one flow sequence: level i has 9 aliases of level i-1."""
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def reg_set(reg: int, value: int) -> str:
    """Assembly setting a 64-bit register to ``value`` (li, lih)."""
    lo = value & 0xFFFFFFFF
    hi = (value >> 32) & 0xFFFFFFFF
    lo_s = lo - (1 << 32) if lo >> 31 else lo
    return f"li r{reg}, {lo_s}\nlih r{reg}, {hi}\n"


def npy_header(shape: tuple[int, ...], dtype: str = "<u1") -> bytes:
    hdr = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    hdr += " " * (63 - (len(hdr) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode()


def load_npy(p: Path) -> np.ndarray | None:
    try:
        return np.load(p, allow_pickle=False)
    except Exception:  # noqa: BLE001
        return None


def json_ok(p: Path) -> dict | None:
    """The JSON document at p, parsed strictly (no NaN/Infinity), or None."""
    def bad(x: str):
        raise ValueError(x)

    try:
        return json.loads(p.read_text(), parse_constant=bad)
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------ cases
def cases() -> list[Case]:  # noqa: C901 - one long table
    out: list[Case] = []
    add = out.append
    prog = "halt\n"

    # --- a traceback: billion laughs, Ctrl-C at start-up
    for lv in (9, 8):
        add(Case(f"laughs{lv}-config", "traceback",
                 lambda d, lv=lv: ["run", w(d, "p.s", prog), "--config",
                                   w(d, "c.yaml", f"memory:\n  dram_bytes: {laughs(lv)}\n")],
                 5, r"c\.yaml", timeout=30))
        add(Case(f"laughs{lv}-model", "traceback",
                 lambda d, lv=lv: ["train", w(d, "m.yaml", f"epochs: {laughs(lv)}\n"), "-q"],
                 5, r"m\.yaml", timeout=30))
    for ms in (10, 30, 60, 100, 200, 400):
        add(Case(f"sigint-{ms}ms", "traceback",
                 lambda d: ["train", w(d, "m.yaml", SMALL_MODEL), "--no-float", "-q"],
                 130, r"^lpemu: interrupted$", sigint_ms=ms, timeout=60))

    # --- silently wrong
    add(Case("equ-redefined", "silent",
             lambda d: ["run", w(d, "p.s", ".equ A, 5\nli r1, A\n.equ A, 6\nstw r1, r0, 0\n"
                                 "halt\n"), "--dump", f"0:1:int32:{d / 'o.npy'}", "-q"],
             3, r"p\.s:3:"))

    def cycles_right(expected: int):
        def check(d: Path, r: Run) -> bool:
            doc = json_ok(d / "o.json")
            return doc is not None and doc.get("cycles") == expected
        return check

    add(Case("latency-2^62-wraps", "silent",
             lambda d: ["run", w(d, "p.s", "stw r0, r0, 0\nstw r0, r0, 0\nhalt\n"), "--config",
                        w(d, "c.yaml", "dma: {latency_cycles: 4611686018427387904}\n"
                                       "budget: {max_cycles: 36893488147419103232}\n"),
                        "--json", str(d / "o.json"), "-q"],
             5, r"dma\.latency_cycles",
             check=cycles_right(2 * (2**62 + 1) + 1)))
    add(Case("budget-2^65", "silent",
             lambda d: ["run", w(d, "p.s", prog), "--config",
                        w(d, "c.yaml", "budget: {max_cycles: 36893488147419103232}\n"), "-q"],
             5, r"budget\.max_cycles"))
    add(Case("energy-1e308", "silent",
             lambda d: ["run", w(d, "p.s", "stw r0, r0, 0\nhalt\n"), "--config",
                        w(d, "c.yaml", "energy: {dram_per_64b: 1.0e+308, instruction: 1.7e+308}\n"),
                        "--json", str(d / "o.json"), "-q"],
             5, r"energy\.", check=lambda d, r: json_ok(d / "o.json") is not None))

    def dump_hex(d: Path) -> list[str]:
        np.save(d / "in.npy", np.arange(1, 33, dtype=np.int8))
        return ["run", w(d, "p.s", prog), "--load", f"{d / 'in.npy'}@0",
                "--dump", f"0:0x10:int8:{d / 'f.npy'}", "-q"]

    add(Case("dump-hex-length", "silent", dump_hex, 0,
             check=lambda d, r: (a := load_npy(d / "f.npy")) is not None and a.shape == (16,)
             and a.tolist() == list(range(1, 17))))

    def no_dev_full_npy(d: Path, r: Run) -> bool:
        ok = not Path("/dev/full.npy").exists()
        Path("/dev/full.npy").unlink(missing_ok=True)
        return ok

    add(Case("dump-to-dev-full", "silent",
             lambda d: ["run", w(d, "p.s", prog), "--dump", "0:16:int8:/dev/full", "-q"],
             9, r"/dev/full", typed_check=no_dev_full_npy))
    add(Case("duplicate-key-config", "silent",
             lambda d: ["run", w(d, "p.s", prog), "--config",
                        w(d, "c.yaml", "memory:\n  dram_bytes: 65536\n  dram_bytes: 1024\n"),
                        "-q"], 5, r"c\.yaml.*line 3"))
    add(Case("duplicate-key-model", "silent",
             lambda d: ["train", w(d, "m.yaml", SMALL_MODEL + "epochs: 2\n"), "--no-float", "-q"],
             5, r"m\.yaml.*line 4"))

    def shared_ckpt(d: Path) -> list[list[str]]:
        a = w(d, "a.yaml", SMALL_MODEL)
        b = w(d, "b.yaml", "name: other\nlayers: [64, 20, 10]\nepochs: 1\n")
        ck = str(d / "run.ckpt")
        return [["train", a, "--no-float", "-q", "--checkpoint", ck, "--checkpoint-every", "5"],
                ["train", b, "--no-float", "-q", "--checkpoint", ck, "--checkpoint-every", "5"]]

    add(Case("shared-checkpoint-path", "silent", shared_ckpt, 10, r"run\.ckpt", timeout=120))

    # --- internal errors (exit 70) instead of a typed error
    for key, v in (("dram_bytes", 2**32), ("dram_bytes", 2**40), ("dram_bytes", 2**63),
                   ("dram_bytes", 2**100), ("scratchpad_bytes", 2**40),
                   ("scratchpad_bytes", 2**100)):
        add(Case(f"memory.{key}=2^{v.bit_length() - 1}", "internal",
                 lambda d, key=key, v=v: ["run", w(d, "p.s", prog), "--config",
                                          w(d, "c.yaml", f"memory: {{{key}: {v}}}\n"), "-q"],
                 5, rf"memory\.{key}"))
    for v in (2**30, 2**63):
        add(Case(f"accumulator.entries=2^{v.bit_length() - 1}", "internal",
                 lambda d, v=v: ["run", w(d, "p.s", prog), "--config",
                                 w(d, "c.yaml", f"accumulator: {{entries: {v}}}\n"), "-q"],
                 5, r"accumulator\.entries"))
    add(Case("dma.latency_cycles=2^62", "internal",
             lambda d: ["run", w(d, "p.s", "stw r0, r0, 0\nhalt\n"), "--config",
                        w(d, "c.yaml", "dma: {latency_cycles: 4611686018427387904}\n"), "-q"],
             5, r"dma\.latency_cycles"))
    add(Case("gemm-M=2^40-K=N=0", "internal",
             lambda d: ["run", w(d, "p.s", reg_set(4, 2**40) + "gemm r0, r0, r0, r4, r0, r0\n"
                                 "halt\n"), "--json", str(d / "o.json"), "-q"], 0,
             check=lambda d, r: (j := json_ok(d / "o.json")) is not None and j["macs"] == 0))
    add(Case("gemm-skip-K=2^29", "internal",
             lambda d: ["run", w(d, "p.s", reg_set(5, 2**29) + "li r4, 1\nli r6, 1\n"
                                 "gemm r0, r0, r0, r4, r5, r6, sa=1, sb=1\nhalt\n"),
                        "--config", w(d, "c.yaml", "memory: {scratchpad_bytes: 1073741824}\n"
                                      "array: {skip: element}\n"),
                        "--json", str(d / "o.json"), "-q"],
             7, r"", check=lambda d, r: r.code != 0 or (
                 (j := json_ok(d / "o.json")) is not None and j["macs_skipped"] == 2**29),
             notes="ok (K = 2^29 zero MACs skipped) or a typed error (memory budget)",
             extra={"accept": (0, 5, 6, 7)}, timeout=120))
    add(Case("dmaldacc-rows=2^62-cols=0", "internal",
             lambda d: ["run", w(d, "p.s", reg_set(3, 2**62) + "dmaldacc r0, r0, r3, r0, r0\n"
                                 "halt\n"), "--json", str(d / "o.json"), "-q"], 0,
             check=lambda d, r: json_ok(d / "o.json") is not None))
    add(Case("vnormrow-rows=0-cols=2^62", "internal",
             lambda d: ["run", w(d, "p.s", reg_set(4, 2**62) + "vnormrow r0, r0, r0, r0, r4, e0\n"
                                 "halt\n"), "--json", str(d / "o.json"), "-q"], 0,
             check=lambda d, r: json_ok(d / "o.json") is not None))
    add(Case("load-npy-claims-1TiB", "internal",
             lambda d: ["run", w(d, "p.s", prog), "--load",
                        w(d, "big.npy", npy_header((1 << 40,)) + b"\0" * 64) + "@0", "-q"],
             2, r"--load .*big\.npy"))
    add(Case("dump-shape-overflows", "internal",
             lambda d: ["run", w(d, "p.s", prog), "--dump",
                        f"0:4294967296x4294967296x4:int8:{d / 'o.npy'}", "-q"],
             2, r"--dump"))
    add(Case("dump-71-dims", "internal",
             lambda d: ["run", w(d, "p.s", prog), "--dump",
                        f"0:{'x'.join(['1'] * 71)}:int8:{d / 'o.npy'}", "-q"],
             2, r"--dump"))
    add(Case("register-5001-digits", "internal",
             lambda d: ["asm", w(d, "p.s", "li r" + "1" * 5001 + ", 5\n"), "-o",
                        str(d / "p.bin")], 3, r"p\.s:1:4"))

    def forged(d: Path, mutate: Callable[[dict], None]) -> list[list[str]]:
        """A real training checkpoint, then a copy of it with one field forged (re-sealed)."""
        ck = d / "run.ckpt"
        return [["train", w(d, "m.yaml", SMALL_MODEL), "--no-float", "-q", "--checkpoint",
                 str(ck), "--checkpoint-every", "50"],
                ["__forge__", str(ck), mutate.__name__],
                ["train", "--resume", str(ck), "--no-float", "-q"]]

    add(Case("forged-ckpt-2^40-page-table", "internal",
             lambda d: forged(d, forge_page_table), 10, r"run\.ckpt", timeout=120))
    add(Case("forged-ckpt-string-history", "internal",
             lambda d: forged(d, forge_history), 10, r"run\.ckpt", timeout=120))
    add(Case("run-/dev/zero", "internal", lambda d: ["run", "/dev/zero", "-q"], 2, r"/dev/zero",
             timeout=60))
    add(Case("config-/dev/zero", "internal",
             lambda d: ["run", w(d, "p.s", prog), "--config", "/dev/zero", "-q"], 5, r"/dev/zero",
             timeout=60))
    add(Case("train-/dev/zero", "internal", lambda d: ["train", "/dev/zero", "-q"], 5,
             r"/dev/zero", timeout=60))

    # --- memory and time that tiny inputs demand
    add(Case("empty-gemm-K=2^27-skip", "scale",
             lambda d: ["run", w(d, "p.s", reg_set(5, 2**27) + "gemm r0, r0, r0, r0, r5, r0, "
                                 "sa=1, sb=1\nhalt\n"), "--json", str(d / "o.json"), "-q"], 0,
             check=lambda d, r: (j := json_ok(d / "o.json")) is not None and j["macs"] == 0
             and r.seconds < 10))
    for n, heavy in ((10**6, False), (10**7, True)):
        add(Case(f"run-{n:.0e}-instructions", "scale",
                 lambda d, n=n: ["run", w(d, "p.s", "addi r1, r1, 1\n" * n + "halt\n"),
                                 "--max-steps", str(n + 10), "-q"], 0, heavy=heavy,
                 check=lambda d, r: True, timeout=600 if heavy else 120))
    add(Case("synthetic-17.9GiB", "scale",
             lambda d: ["train", w(d, "m.yaml", "dataset: synthetic\nlayers: [64, 10000000]\n"),
                        "-q"], 5, r"m\.yaml", timeout=60))
    add(Case("synthetic-1e6-classes", "scale",
             lambda d: ["train", w(d, "m.yaml", "dataset: synthetic\nlayers: [64, 1000000]\n"),
                        "-q"], 5, r"m\.yaml|memory\.|layers|scratchpad", timeout=60))
    add(Case("epochs-flag-10^12", "scale",
             lambda d: ["train", w(d, "m.yaml", TINY_MODEL), "--epochs", "1000000000000", "-q"],
             2, r"--epochs", timeout=60))
    add(Case("ckpt-inflates-6GiB", "scale",
             lambda d: ["train", "--resume", bomb(d, CODE[0]), "-q"], 10,
             r"bomb\.ckpt", timeout=120))
    add(Case("asm-400k-labels-one-line", "scale",
             lambda d: ["asm", w(d, "p.s", " ".join(f"l{i}:" for i in range(400_000)) + " halt\n"),
                        "-o", str(d / "p.bin")], 0,
             check=lambda d, r: (d / "p.bin").exists(), timeout=120))
    add(Case("asm-1e7-lines-error-last", "scale",
             lambda d: ["asm", w(d, "p.s", "nop\n" * 10_000_000 + "frob\n"), "-o",
                        str(d / "p.bin")], 3, r"p\.s:10000001:1", heavy=True, timeout=300))
    add(Case("epochs-10^12", "scale",
             lambda d: ["train", w(d, "m.yaml", "layers: [64, 10]\nepochs: 1000000000000\n"),
                        "-q"], 5, r"m\.yaml:epochs"))

    def fifo(d: Path) -> list[str]:
        os.mkfifo(d / "in.npy")
        return ["run", w(d, "p.s", prog), "--load", f"{d / 'in.npy'}@0", "-q"]

    add(Case("load-fifo", "scale", fifo, 2, r"--load", timeout=20))

    loop = "loop:\n addi r1, r1, 1\n jmp loop\n"

    def budget_outputs(d: Path, r: Run) -> bool:
        doc = json_ok(d / "o.json")
        return (doc is not None and "budget" in json.dumps(doc.get("stopped", ""))
                and load_npy(d / "o.npy") is not None)

    add(Case("budget-stop-run-outputs", "scale",
             lambda d: ["run", w(d, "p.s", loop), "--max-steps", "1000", "--json",
                        str(d / "o.json"), "--dump", f"0:16:int8:{d / 'o.npy'}", "-q"],
             8, r"1000 steps", typed_check=budget_outputs))

    def profile_outputs(d: Path, r: Run) -> bool:
        doc = json_ok(d / "o.json")
        return (doc is not None and "budget" in json.dumps(doc.get("stopped", ""))
                and json_ok(d / "t.json") is not None and (d / "o.csv").exists())

    add(Case("budget-stop-profile-outputs", "scale",
             lambda d: ["profile", w(d, "p.s", loop), "--max-steps", "1000", "--json",
                        str(d / "o.json"), "--trace", str(d / "t.json"), "--csv",
                        str(d / "o.csv"), "-q"], 8, r"1000 steps", typed_check=profile_outputs))
    add(Case("lr-1e-8", "scale",
             lambda d: ["train", w(d, "m.yaml", SMALL_MODEL + "update: {lr: 1.0e-8}\n"),
                        "--no-float", "-q", "--json", str(d / "o.json")], 0,
             check=lambda d, r: json_ok(d / "o.json") is not None,
             notes="validates and trains (or a ConfigError naming update.lr)",
             extra={"accept": (5,)}, timeout=120))

    # --- partial outputs
    add(Case("json-to-dev-full", "partial",
             lambda d: ["run", w(d, "p.s", prog), "--json", "/dev/full", "-q"], 9, r"/dev/full"))

    def small_fs(d: Path) -> list[str]:
        mnt = d / "full"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], check=True)
        (mnt / "filler").write_bytes(b"x" * 8192)
        prog2 = reg_set(3, 64) + "li r4, 4096\ndmald r0, r0, r3, r4, r4, r4\nhalt\n"
        return ["run", w(d, "p.s", prog2), "--json", str(mnt / "o.json"), "--dump",
                f"0:262144:int8:{mnt / 'o.npy'}", "--per-instruction"]

    def nothing_partial(d: Path, r: Run) -> bool:
        mnt = d / "full"
        left = sorted(p.name for p in mnt.iterdir())
        subprocess.run(["umount", str(mnt)], check=False)
        return left == ["filler"]

    add(Case("full-disk-outputs", "partial", small_fs, 9, r"full/o\.(json|npy)",
             typed_check=nothing_partial))

    # --- checkpoint/resume corners from the brief
    def every_beyond(d: Path) -> list[list[str]]:
        ck = str(d / "run.ckpt")
        return [["train", w(d, "m.yaml", SMALL_MODEL), "--no-float", "-q", "--checkpoint", ck,
                 "--checkpoint-every", "1000000"]]

    add(Case("checkpoint-every-beyond-run", "checkpoint", every_beyond, 0,
             check=lambda d, r: (d / "run.ckpt").exists(), timeout=120))

    def extend(d: Path) -> list[list[str]]:
        ck = str(d / "run.ckpt")
        return [["train", w(d, "m.yaml", SMALL_MODEL), "--no-float", "-q", "--checkpoint", ck,
                 "--checkpoint-every", "40"],
                ["train", "--resume", ck, "--epochs", "2", "--no-float", "-q", "--json",
                 str(d / "o.json")]]

    add(Case("resume-extends-epochs", "checkpoint", extend, 0,
             check=lambda d, r: (j := json_ok(d / "o.json")) is not None
             and len(j["epochs"]) == 2, timeout=180))
    return out


# ------------------------------------------------------------------------------ forgeries
def _reseal(path: Path, mutate: Callable[[dict], None]) -> None:
    """Unpack a checkpoint (format 1 or 2), let ``mutate`` change its arrays, and write it back
    with valid lengths and SHA-256."""
    import hashlib
    import io
    import zipfile

    data = path.read_bytes()
    version = struct.unpack_from("<H", data, 4)[0]
    if version == 1:
        meta, comp = b"", data[48:]
    else:
        meta_len = struct.unpack_from("<I", data, 56)[0]
        meta, comp = data[60 : 60 + meta_len], data[60 + meta_len :]
    with np.load(io.BytesIO(zlib.decompress(comp)), allow_pickle=False) as z:
        st = {k: z[k] for k in z.files}
    mutate(st)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in st.items() if not isinstance(v, bytes)})
    raw = buf.getvalue()
    for k, v in st.items():  # raw .npy bytes placed in the archive as they are
        if isinstance(v, bytes):
            zb = io.BytesIO(raw)
            with zipfile.ZipFile(zb, "a") as zf:
                zf.writestr(k + ".npy", v)
            raw = zb.getvalue()
    body = zlib.compress(raw, 1)
    if version != 1:
        body = struct.pack("<QI", len(raw), len(meta)) + meta + body
    head = struct.pack("<4sHHQ32s", b"LPCK", version, 0, len(body),
                       hashlib.sha256(body).digest())
    path.write_bytes(head + body)


def forge_page_table(st: dict) -> None:
    """A DRAM page table whose .npy header claims 2^40 bytes of page data."""
    del st["dram_page_data"]
    st["dram_page_data"] = npy_header((1 << 28, 4096)) + b"\0" * 4096


def forge_history(st: dict) -> None:
    """The training driver's epoch history with string-typed values."""
    extra = json.loads(st["extra"].tobytes())
    h = {"epoch": "0", "lr": "x", "loss": "y", "train_accuracy": "z", "sparsity": "abc",
         "roundoff_mean_abs": "1", "roundoff_mean": "2", "roundoff_max_abs": "3",
         "y_zero_fraction": "4", "counters": {}}
    extra["host"]["history"] = [h]
    extra["host"]["epoch"] = 1
    extra["host"]["in_epoch"] = False
    st["extra"] = np.frombuffer(json.dumps(extra).encode(), np.uint8)


FORGERIES = {f.__name__: f for f in (forge_page_table, forge_history)}


def bomb(d: Path, code: Path) -> str:
    """A ~6 MB checkpoint whose payload inflates to 6 GiB of zeros, with a valid header and
    SHA-256, in the checkpoint format of the code under test (format 2 carries a training
    meta, so a resume gets as far as inflating)."""
    import hashlib

    comp = zlib.compressobj(9)
    chunk = bytes(1 << 24)
    parts = [comp.compress(chunk) for _ in range(6 * 64)]
    parts.append(comp.flush())
    payload = b"".join(parts)
    src = (code / "emulator" / "checkpoint.py").read_text()
    version = int(re.search(r"^VERSION = (\d+)", src, re.M).group(1))  # type: ignore[union-attr]
    body = payload
    if version >= 2:
        meta = json.dumps({"kind": "lpemu-train", "run_id": "bomb", "config": {},
                           "model": {"name": "tiny", "layers": [64, 10], "epochs": 1}}).encode()
        body = struct.pack("<QI", 6 << 30, len(meta)) + meta + payload
    head = struct.pack("<4sHHQ32s", b"LPCK", version, 0, len(body),
                       hashlib.sha256(body).digest())
    return w(d, "bomb.ckpt", head + body)


# ------------------------------------------------------------------------------ running
def run_cli(code: Path, argv: list[str], cwd: Path, mem_gib: float, timeout: float,
            sigint_ms: float | None = None) -> Run:
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONHASHSEED="0")
    env.pop("LPEMU_DEBUG", None)
    cap = int(mem_gib * (1 << 30))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        os.setsid()
        # a shell's background job starts with SIGINT ignored; a terminal's Ctrl-C does not
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        p = subprocess.Popen([sys.executable, "-c", ENTRY, *argv], cwd=cwd, env=env,
                             stdout=fo, stderr=fe, preexec_fn=limit)
        timed_out = False
        sent = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            el = time.perf_counter() - t0
            if sigint_ms is not None and not sent and el * 1000 >= sigint_ms:
                os.kill(p.pid, signal.SIGINT)
                sent = True
            if el > timeout:
                os.killpg(p.pid, signal.SIGKILL)
                _, status, ru = os.wait4(p.pid, 0)
                timed_out = True
                break
            time.sleep(0.002 if sigint_ms is not None and not sent else 0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        err = fe.read(200_000_000).decode(errors="replace")
        lines = err.split("\n")
        hwm = [ln for ln in lines if ln.startswith("VMHWM_KB ")]
        err = "\n".join(ln for ln in lines if not ln.startswith("VMHWM_KB "))
        rss = int(hwm[-1].split()[1]) / 1024 if hwm else ru.ru_maxrss / 1024
        return Run(p.returncode, fo.read().decode(errors="replace"), err, secs, rss,
                   timed_out)


def classify(case: Case, r: Run, d: Path) -> str:
    err = r.stderr
    if r.timed_out:
        return "timeout"
    if case.sigint_ms is not None and ((r.code == -2 and not err.strip())
                                       or "Fatal Python error: init" in err):
        return "startup"  # the signal came while CPython itself was starting, before any
        # line of lpemu ran (killed by SIGINT silently, or CPython's own fatal error)
    if "MemoryError" in err or r.code in (-9, -11, 137) or "Cannot allocate memory" in err:
        return "memory"
    if "Traceback" in err or r.code == 1:
        return "traceback"
    if r.code == 70:
        return "internal"
    if r.code == 0:
        ok_check = case.check is None or case.check(d, r)
        return "ok" if case.expect == 0 and ok_check else "wrong"
    ok_check = case.typed_check is None or case.typed_check(d, r)
    accept = case.extra.get("accept", (case.expect,))
    line = err.rstrip("\n")
    one_line = "\n" not in line and len(line) <= 2000
    located = bool(re.search(case.where, line)) if case.where else True
    if r.code in accept and one_line and located and ok_check:
        return "typed"
    if r.code in TYPED_CODES or r.code == 130:
        return "mistyped"
    return "traceback"


def run_case(case: Case, code: Path, mem_gib: float, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="adv-") as tmp:
        d = Path(tmp)
        steps = case.setup(d)
        if steps and isinstance(steps[0], str):
            steps = [steps]  # type: ignore[list-item]
        r = None
        total = 0.0
        peak = 0.0
        for argv in steps:  # type: ignore[union-attr]
            if argv[0] == "__forge__":
                if r is not None and r.code != 0:
                    break
                _reseal(Path(argv[1]), FORGERIES[argv[2]])
                continue
            r = run_cli(code, argv, d, mem_gib, case.timeout or timeout, case.sigint_ms)
            total += r.seconds
            peak = max(peak, r.maxrss_mb)
        assert r is not None
        outcome = classify(case, r, d)
        Path("/dev/full.npy").unlink(missing_ok=True)  # what older code wrote for /dev/full
        # a mounted tmpfs must not outlive the directory
        if (d / "full").is_dir():
            subprocess.run(["umount", str(d / "full")], check=False, capture_output=True)
        return {"name": case.name, "group": case.group, "outcome": outcome, "exit": r.code,
                "seconds": round(total, 2), "peak_rss_mb": round(peak),
                "stderr": r.stderr.strip()[:300], "stderr_chars": len(r.stderr)}


def compare(before: Path, after: Path) -> None:
    """Outcome counts before and after (all cases and per group of the issue), and every case
    whose outcome changed."""
    b = {r["name"]: r for r in json.loads(before.read_text())["results"]}
    a = {r["name"]: r for r in json.loads(after.read_text())["results"]}
    names = [n for n in a if n in b]
    groups = ["all"] + sorted({a[n]["group"] for n in names})
    for g in groups:
        sel = [n for n in names if g == "all" or a[n]["group"] == g]
        cb = Counter(b[n]["outcome"] for n in sel)
        ca = Counter(a[n]["outcome"] for n in sel)
        print(f"{g:10s} {len(sel):3d} cases  before {dict(sorted(cb.items()))}  "
              f"after {dict(sorted(ca.items()))}")
    print()
    for n in names:
        print(f"{n:32s} {b[n]['outcome']:9s} {b[n]['seconds']:7.2f}s {b[n]['peak_rss_mb']:6d}MB"
              f"  ->  {a[n]['outcome']:9s} {a[n]['seconds']:7.2f}s {a[n]['peak_rss_mb']:6d}MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                    help="print two result files side by side and exit")
    ap.add_argument("--code", default=str(ROOT), help="the code tree to run (default: here)")
    ap.add_argument("--json", help="write the results as JSON")
    ap.add_argument("--only", help="comma-separated case names (or name prefixes)")
    ap.add_argument("--heavy", action="store_true", help="also the heavy cases")
    ap.add_argument("--mem-gib", type=float, default=8.0, help="address-space cap per run")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per run")
    args = ap.parse_args()
    if args.compare:
        compare(Path(args.compare[0]), Path(args.compare[1]))
        return 0
    code = Path(args.code).resolve()
    CODE[0] = code
    todo = [c for c in cases() if args.heavy or not c.heavy]
    if args.only:
        names = args.only.split(",")
        todo = [c for c in todo if any(c.name.startswith(n) for n in names)]
    results = []
    for c in todo:
        res = run_case(c, code, args.mem_gib, args.timeout)
        results.append(res)
        print(f"{res['outcome']:9s} exit={res['exit']!s:4s} {res['seconds']:7.2f}s "
              f"{res['peak_rss_mb']:6d}MB  {c.name}: {res['stderr'][:140]!r}", flush=True)
    counts = Counter(r["outcome"] for r in results)
    print("\noutcomes:", dict(sorted(counts.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"code": str(code), "results": results,
                                               "counts": counts}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
