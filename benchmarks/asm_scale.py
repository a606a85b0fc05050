"""The assembler at scale: a file of N lines with an error on its last line, timed end to end
(``lpemu asm`` in a fresh process: read, decode, assemble until the error) with its peak
memory (the child's max RSS).

    python benchmarks/asm_scale.py [--lines 10000000] [--repeat 3] [--code DIR] [--json OUT]

Sources of N lines plus an error on line N + 1 (``frob``, an unknown mnemonic, unless said):

* ``nop``       every line ``nop``;
* ``li-badreg``  every line ``li r1, 5``, the last one ``li r99, 5`` (a bad operand, which
                the old two-pass assembler found only after encoding every line);
* ``loop``      a 4-line loop body (labels, ``li``/``addi``/``blt`` with a forward label)
                repeated: few distinct lines;
* ``distinct``  every line different (random registers and immediates): the assembler's
                worst case, where no line is seen twice;

and ``labels``: 400,000 labels on one line before ``halt`` (assembled successfully).
Issue 18 asks for <= 10 s and <= 1 GiB for a 10-million-line file. Prints, per source, the
median and range of wall seconds, CPU seconds and peak RSS. The machine may be shared: CPU
seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the child reports its own peak RSS (VmHWM of its address space): wait4's ru_maxrss would
# include the parent's memory at fork time, and the parent holds the generated source
ENTRY = ("import atexit, sys\n"
         "def hwm():\n"
         "    with open('/proc/self/status') as f:\n"
         "        kb = next(ln.split()[1] for ln in f if ln.startswith('VmHWM'))\n"
         "    sys.stderr.write(f'\\nVMHWM_KB {kb}\\n')\n"
         "atexit.register(hwm)\n"
         "from programs.cli import main\n"
         "sys.exit(main())\n")


def source(kind: str, n: int) -> str:
    if kind == "nop":
        return "nop\n" * n + "frob\n"
    if kind == "li-badreg":  # the error is an operand: found only after encoding, before
        return "li r1, 5\n" * n + "li r99, 5\n"
    if kind == "loop":
        body = "top:\n li r1, 0\n addi r1, r1, 1\n blt r1, r2, top\n"  # 4 lines
        reps = n // 4
        text = "".join(body.replace("top", f"t{i}") for i in range(reps))
        return text + "nop\n" * (n - 4 * reps) + "frob\n"
    if kind == "distinct":
        rng = random.Random(0)
        out = []
        for i in range(n):
            k = i % 3
            if k == 0:
                out.append(f"li r{rng.randrange(32)}, {rng.randrange(-2**31, 2**31)}\n")
            elif k == 1:
                out.append(f"addi r{rng.randrange(32)}, r{rng.randrange(32)}, "
                           f"{rng.randrange(-2**15, 2**15)}\n")
            else:
                out.append(f"gemm r{rng.randrange(32)}, r{rng.randrange(32)}, "
                           f"r{rng.randrange(32)}, r4, r5, r6, acc={i % 2}, sb=1\n")
        return "".join(out) + "frob\n"
    if kind == "labels":
        return " ".join(f"l{i}:" for i in range(400_000)) + " halt\n"
    raise KeyError(kind)


def run_once(code: Path, path: Path, out: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(code))
    t0 = time.perf_counter()
    # cwd: ``python -c`` puts the current directory first on sys.path, before PYTHONPATH
    p = subprocess.Popen([sys.executable, "-c", ENTRY, "asm", str(path), "-o", str(out)],
                         env=env, cwd=path.parent, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""  # type: ignore[union-attr]
    hwm = [ln for ln in err.splitlines() if ln.startswith("VMHWM_KB ")]
    err = "\n".join(ln for ln in err.splitlines() if ln and not ln.startswith("VMHWM_KB "))
    return {"exit": os.waitstatus_to_exitcode(status), "wall_s": wall,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "peak_rss_mib": int(hwm[-1].split()[1]) / 1024 if hwm else float("nan"),
            "stderr": err.strip()[:200]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--code", default=str(ROOT))
    ap.add_argument("--kinds", default="nop,li-badreg,loop,distinct,labels")
    ap.add_argument("--json")
    args = ap.parse_args()
    code = Path(args.code).resolve()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            path = Path(tmp) / f"{kind}.s"
            path.write_text(source(kind, args.lines))
            runs = [run_once(code, path, Path(tmp) / "o.bin") for _ in range(args.repeat)]
            summary = {"lines": args.lines if kind != "labels" else 1,
                       "bytes": path.stat().st_size, "exit": runs[0]["exit"],
                       "stderr": runs[0]["stderr"]}
            for k in ("wall_s", "cpu_s", "peak_rss_mib"):
                vals = [r[k] for r in runs]
                summary[k] = {"median": round(statistics.median(vals), 2),
                              "min": round(min(vals), 2), "max": round(max(vals), 2)}
            results[kind] = summary
            print(f"{kind:9s} exit {summary['exit']}  wall {summary['wall_s']}  cpu "
                  f"{summary['cpu_s']}  rss MiB {summary['peak_rss_mib']}  "
                  f"{summary['stderr'][:90]!r}", flush=True)
            path.unlink()
    print(f"load average {os.getloadavg()}; host CPUs {os.cpu_count()}; "
          f"rlimit AS {resource.getrlimit(resource.RLIMIT_AS)[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"code": str(code), "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
