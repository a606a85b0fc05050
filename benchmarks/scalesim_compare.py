"""Cross-check lpemu's dense matrix cycle model against SCALE-Sim on the same GEMMs.

SCALE-Sim (PyPI ``scalesim==3.0.0``) crashes with numpy >= 2.4, so this script runs it in its own
virtual environment with ``numpy<2.4``, created on first use (``--venv``, default
``~/.cache/lpemu/scalesim-venv``). For every (shape, array, dataflow) it prints SCALE-Sim's
'Total Cycles' (unlimited bandwidth, so 0 stall cycles), lpemu's ``gemm`` cycles, whether they
agree, and the wall time of each tool. SCALE-Sim reports the 0-based index of the cycle of the
last output write, one less than the schedule length lpemu counts; that is the only expected
difference (docs/timing.md, "Cross-check with SCALE-Sim").

Convolutions (``CONV_LAYERS``: LeNet's two layers and odd shapes with stride 2 and 3, padding,
channel and filter counts that are not multiples of the array) run as SCALE-Sim conv topologies
(IFMAP H/W, filter H/W, channels, filters, stride) against one lpemu ``conv`` instruction
(mode=fwd, batch 1). SCALE-Sim has no padding field and counts a last, partial window where
lpemu (like every framework) floors: it is given the padded IFMAP cropped to the rows and
columns the windows cover, ``(OH - 1) S + K``, whose output size is OH x OW under both rules.

    python benchmarks/scalesim_compare.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = [  # (M, K, N)
    (256, 784, 500),
    (10, 784, 500),
    (64, 64, 64),
    (37, 70, 50),
    (100, 300, 10),
    (1, 1000, 1),
    (128, 129, 33),
]
QUICK_SHAPES = [(256, 784, 500), (10, 784, 500), (64, 64, 64), (37, 70, 50), (100, 300, 10),
                (128, 129, 33)]
ARRAYS = [(16, 16), (32, 32)]
# conv layers (H, W, C, KH, KW, F, stride, padding); SCALE-Sim takes one stride for both axes
CONV_LAYERS = [
    (28, 28, 1, 5, 5, 20, 1, 0),  # LeNet conv1
    (12, 12, 20, 5, 5, 50, 1, 0),  # LeNet conv2
    (15, 15, 3, 3, 3, 8, 2, 1),  # stride 2, padding 1
    (11, 11, 5, 4, 4, 7, 2, 0),  # stride 2 over an odd size: the last row of windows is cut
    (9, 9, 2, 5, 5, 3, 3, 2),  # stride 3, padding 2
    (32, 32, 17, 3, 3, 33, 1, 1),  # channels and filters not multiples of the array
    (7, 7, 37, 1, 1, 19, 1, 0),  # 1x1
]
QUICK_CONV_LAYERS = CONV_LAYERS[:4]
DATAFLOWS = {"ws": "weight_stationary", "os": "output_stationary", "is": "input_stationary"}
# The documented offset: SCALE-Sim's count is the last cycle's 0-based index.
SCALESIM_OFFSET = -1

SCALESIM_CFG = """[general]
run_name = lpemu

[architecture_presets]
ArrayHeight: {r}
ArrayWidth: {c}
IfmapSramSzkB: 65536
FilterSramSzkB: 65536
OfmapSramSzkB: 65536
IfmapOffset: 0
FilterOffset: 100000000
OfmapOffset: 200000000
Bandwidth: 100000
Dataflow: {df}
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""

# Runs inside the SCALE-Sim venv: one case per line of JSON on stdin, one result per line out.
RUNNER = r'''
import contextlib, csv, io, json, sys, time, os
from scalesim.scale_sim import scalesim
for line in sys.stdin:
    case = json.loads(line)
    d = case["dir"]
    with open(os.path.join(d, "topo.csv"), "w") as f:
        if "conv" in case:  # IFMAP H, IFMAP W, filter H, filter W, channels, filters, stride
            f.write("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, "
                    "Channels, Num Filter, Strides,\n")
            f.write("c, " + ", ".join(str(v) for v in case["conv"]) + ",\n")
        else:
            f.write("Layer, M, N, K,\n")
            f.write(f"g, {case['m']}, {case['n']}, {case['k']},\n")
    with open(os.path.join(d, "layout.csv"), "w") as f:
        f.write("Layer, x,\ng, 1,\n")
    with open(os.path.join(d, "scale.cfg"), "w") as f:
        f.write(case["cfg"])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        s = scalesim(save_disk_space=True, verbose=False, config=os.path.join(d, "scale.cfg"),
                     topology=os.path.join(d, "topo.csv"), layout=os.path.join(d, "layout.csv"),
                     input_type_gemm="conv" not in case)
        s.run_scale(top_path=os.path.join(d, "out"))
    wall = time.perf_counter() - t0
    rows = list(csv.reader(open(os.path.join(d, "out", "lpemu", "COMPUTE_REPORT.csv"))))
    r = [x.strip() for x in rows[1]]
    print(json.dumps({"total_cycles": int(r[2]), "stall_cycles": int(r[3]), "wall": wall}),
          flush=True)
'''


def default_venv() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "lpemu" / "scalesim-venv"


def ensure_scalesim(path: Path, quiet: bool = False) -> Path | None:
    """The venv's python with scalesim importable, creating the venv if needed; None if that
    fails (no network, no wheel)."""
    py = path / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import scalesim"],
                                      capture_output=True).returncode == 0:
        return py
    if not quiet:
        print(f"creating a SCALE-Sim venv at {path} (scalesim==3.0.0, numpy<2.4) ...",
              file=sys.stderr)
    try:
        venv.create(path, with_pip=True, clear=True)
        res = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "scalesim==3.0.0",
                              "numpy<2.4"], capture_output=True, text=True)
    except OSError as e:
        print(f"cannot create the SCALE-Sim venv: {e}", file=sys.stderr)
        return None
    if res.returncode != 0:
        print("cannot install scalesim:\n" + res.stderr[-2000:], file=sys.stderr)
        return None
    return py


def lpemu_config(r: int, c: int, df: str):
    """The hardware config of one comparison: an R x C array with the dataflow, memories large
    enough for every case."""
    from emulator.config import config_from_dict

    return config_from_dict({
        "array": {"rows": r, "cols": c, "dataflow": DATAFLOWS[df]},
        "memory": {"dram_bytes": 4096, "scratchpad_bytes": 1 << 22},
        "accumulator": {"entries": 1 << 20},
    })


def timed_runs(mach, reps: int) -> float:
    """Median wall time of ``reps`` runs of a loaded machine's program (counters reset)."""
    walls = []
    for _ in range(reps):
        mach.restart()
        mach.counts[:] = 0
        t0 = time.perf_counter()
        mach.run()
        walls.append(time.perf_counter() - t0)
    return float(np.median(walls))


def lpemu_case(m: int, k: int, n: int, r: int, c: int, df: str, reps: int) -> dict[str, Any]:
    """lpemu's cycles for one dense INT8 GEMM, and the wall time of the closed-form model alone
    and of the whole ``gemm`` instruction (values + counters)."""
    from emulator import timing
    from emulator.counters import IDX
    from emulator.machine import Machine
    from isa import assemble

    cfg = lpemu_config(r, c, df)
    t0 = time.perf_counter()
    for _ in range(reps):
        model_cycles = timing.gemm(cfg, m, k, n, 1, 1, False)[timing.CYCLES]
    model_wall = (time.perf_counter() - t0) / reps
    src = f"""
        li r2, 0
        li r3, {1 << 21}
        li r4, {m}
        li r5, {k}
        li r6, {n}
        gemm r1, r2, r3, r4, r5, r6
        halt
    """
    mach = Machine(cfg, assemble(src, "scalesim_case.s"))
    rng = np.random.default_rng(0)
    mach.spad[: m * k] = rng.integers(0, 256, m * k, dtype=np.uint8)
    mach.spad[1 << 21 : (1 << 21) + k * n] = rng.integers(0, 256, k * n, dtype=np.uint8)
    run_wall = timed_runs(mach, reps)
    cycles = int(mach.counts[5, IDX["cycles"]])
    assert cycles == model_cycles
    return {"cycles": cycles, "model_wall": model_wall, "run_wall": run_wall}


def conv_geometry(layer: tuple[int, ...]):
    """lpemu's geometry of a CONV_LAYERS entry (batch 1)."""
    from emulator.geometry import Geometry

    h, w, c, kh, kw, f, st, pad = layer
    return Geometry(n=1, c=c, h=h, w=w, kh=kh, kw=kw, sh=st, sw=st, ph=pad, pw=pad, f=f)


def scalesim_conv(layer: tuple[int, ...]) -> list[int]:
    """SCALE-Sim's conv topology row (IFMAP H, IFMAP W, filter H, filter W, channels,
    filters, stride) for a layer: the padded input cropped to the rows and columns the
    windows cover, so SCALE-Sim's ceil((H - K + S) / S) output size equals lpemu's
    (H + 2P - K) // S + 1."""
    g = conv_geometry(layer)
    return [(g.oh - 1) * g.sh + g.kh, (g.ow - 1) * g.sw + g.kw, g.kh, g.kw, g.c, g.f, g.sh]


def lpemu_conv_case(layer: tuple[int, ...], r: int, c: int, df: str,
                    reps: int) -> dict[str, Any]:
    """lpemu's cycles for one INT8 conv layer (one ``conv`` instruction, mode=fwd), and the
    wall time of the closed-form model alone and of the whole instruction."""
    from emulator import timing
    from emulator.counters import IDX
    from emulator.geometry import pack
    from emulator.machine import Machine
    from isa import assemble

    g = conv_geometry(layer)
    cfg = lpemu_config(r, c, df)
    t0 = time.perf_counter()
    for _ in range(reps):
        model_cycles = timing.conv(cfg, 0, g.m, g.k, g.f, g.inputs, 1, 1, False)[timing.CYCLES]
    model_wall = (time.perf_counter() - t0) / reps
    regs = "".join(f"li r{4 + i}, {v}\n" for i, v in enumerate(pack(g)))
    src = f"li r1, 0\nli r2, 0\nli r3, {1 << 21}\n{regs}conv r1, r2, r3, r4, r5, r6, r7\nhalt\n"
    mach = Machine(cfg, assemble(src, "scalesim_conv.s"))
    rng = np.random.default_rng(0)
    mach.spad[: g.inputs] = rng.integers(0, 256, g.inputs, dtype=np.uint8)
    mach.spad[1 << 21 : (1 << 21) + g.k * g.f] = rng.integers(0, 256, g.k * g.f, dtype=np.uint8)
    run_wall = timed_runs(mach, reps)
    pc = len(mach.program.words) - 2
    cycles = int(mach.counts[pc, IDX["cycles"]])
    assert cycles == model_cycles
    return {"cycles": cycles, "model_wall": model_wall, "run_wall": run_wall,
            "m": g.m, "k": g.k, "n": g.f}


def compare(quick: bool = False, venv_path: Path | None = None, reps: int = 3,
            progress: bool = True) -> dict[str, Any] | None:
    """Run every case through both tools; None when SCALE-Sim cannot be set up."""
    py = ensure_scalesim(venv_path or default_venv(), quiet=not progress)
    if py is None:
        return None
    shapes = QUICK_SHAPES if quick else SHAPES
    dfs = ("ws", "os") if quick else ("ws", "os", "is")
    cases: list[tuple[Any, tuple[int, int], str]] = [
        (s, a, df) for s in shapes for a in ARRAYS for df in ("ws", "os")]
    if not quick:
        cases += [(s, a, "is") for s in shapes for a in ARRAYS]
    # conv layers: ("conv", layer)
    cases += [(("conv", layer), a, df) for layer in (QUICK_CONV_LAYERS if quick else CONV_LAYERS)
              for a in ARRAYS for df in dfs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([str(py), "-c", RUNNER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        for i, (shape, (r, c), df) in enumerate(cases):
            d = Path(tmp) / f"case{i}"
            d.mkdir()
            cfg = SCALESIM_CFG.format(r=r, c=c, df=df)
            req: dict[str, Any] = {"dir": str(d), "cfg": cfg}
            if shape[0] == "conv":
                layer = shape[1]
                req["conv"] = scalesim_conv(layer)
                lp = lpemu_conv_case(layer, r, c, df, reps)
                m, k, n = lp["m"], lp["k"], lp["n"]
            else:
                m, k, n = shape
                req.update(m=m, k=k, n=n)
                lp = lpemu_case(m, k, n, r, c, df, reps)
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"SCALE-Sim failed on case {(shape, r, c, df)}")
            ss = json.loads(line)
            uncropped = None
            if shape[0] == "conv":
                g = conv_geometry(shape[1])
                padded_topo = [g.h + 2 * g.ph, g.w + 2 * g.pw, *req["conv"][2:]]
                if padded_topo != req["conv"]:  # what SCALE-Sim counts on the whole padded input
                    proc.stdin.write(json.dumps(dict(req, conv=padded_topo)) + "\n")
                    proc.stdin.flush()
                    uncropped = json.loads(proc.stdout.readline())["total_cycles"]
            row = {
                "kind": "conv" if shape[0] == "conv" else "gemm",
                "conv": list(shape[1]) if shape[0] == "conv" else None,
                "scalesim_topology": req.get("conv"),
                "m": m, "k": k, "n": n, "rows": r, "cols": c, "dataflow": df,
                "scalesim_cycles": ss["total_cycles"], "scalesim_stalls": ss["stall_cycles"],
                "lpemu_cycles": lp["cycles"],
                "scalesim_uncropped_cycles": uncropped,
                "exact": lp["cycles"] == ss["total_cycles"],
                "agree": lp["cycles"] + SCALESIM_OFFSET == ss["total_cycles"],
                "scalesim_wall_s": ss["wall"],
                "lpemu_model_wall_s": lp["model_wall"],
                "lpemu_run_wall_s": lp["run_wall"],
            }
            rows.append(row)
            if progress:
                what = f"conv {shape[1]}" if shape[0] == "conv" else f"({m},{k},{n})"
                print(f"  {df} {r}x{c} {what}: scalesim {ss['total_cycles']} "
                      f"lpemu {lp['cycles']}", file=sys.stderr)
        proc.stdin.close()
        proc.wait()
    return {"cases": rows, "offset": SCALESIM_OFFSET,
            "all_agree": all(r["agree"] for r in rows)}


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 140))
    for kind in ("gemm", "conv"):
        rows = [r for r in res["cases"] if r.get("kind", "gemm") == kind]
        if not rows:
            continue
        conv = kind == "conv"
        t = Table(title="Conv layer (mode=fwd, batch 1) compute cycles: SCALE-Sim 3.0.0 conv "
                  "topology vs lpemu" if conv else
                  "Dense GEMM compute cycles: SCALE-Sim 3.0.0 vs lpemu")
        cols = ("df", "array", "HxWxC KxK F /S +P", "SCALE-Sim IFMAP", "M,K,N", "SCALE-Sim",
                "lpemu", "agree", "uncropped", "SCALE-Sim s") if conv else \
            ("dataflow", "array", "M,K,N", "SCALE-Sim", "lpemu", "agree", "SCALE-Sim s",
             "lpemu model s", "lpemu run s")
        for col in cols:
            t.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            note = "exact" if r["exact"] else ("yes (-1)" if r["agree"] else "NO")
            mkn = f"{r['m']},{r['k']},{r['n']}"
            if conv:
                h, w, c, kh, kw, f, st, pad = r["conv"]
                un = r["scalesim_uncropped_cycles"]
                t.add_row(r["dataflow"], f"{r['rows']}x{r['cols']}",
                          f"{h}x{w}x{c} {kh}x{kw} {f} /{st} +{pad}",
                          "x".join(map(str, r["scalesim_topology"][:2])), mkn,
                          f"{r['scalesim_cycles']:,}", f"{r['lpemu_cycles']:,}", note,
                          "-" if un is None else f"{un:,}", f"{r['scalesim_wall_s']:.3f}")
            else:
                t.add_row(r["dataflow"], f"{r['rows']}x{r['cols']}", mkn,
                          f"{r['scalesim_cycles']:,}", f"{r['lpemu_cycles']:,}", note,
                          f"{r['scalesim_wall_s']:.3f}", f"{r['lpemu_model_wall_s']:.2e}",
                          f"{r['lpemu_run_wall_s']:.4f}")
        con.print(t)
        if conv:
            con.print("SCALE-Sim IFMAP: the padded input cropped to the rows and columns the "
                      "windows cover, (OH-1)S + K; 'uncropped': SCALE-Sim on the whole padded "
                      "input, where its ceil((H-K+S)/S) counts one more, partial, window row or "
                      "column than the floor every framework (and lpemu) uses.")
    n_conv = sum(r.get("kind") == "conv" for r in res["cases"])
    con.print(f"{len(res['cases'])} cases ({n_conv} conv), "
              f"{sum(r['agree'] for r in res['cases'])} agree")
    con.print("'yes (-1)': SCALE-Sim reports the 0-based index of the last cycle "
              "(schedule length - 1); see docs/timing.md.")
    for r in res["cases"]:
        if (r["m"], r["k"], r["n"], r["rows"], r["dataflow"]) == (256, 784, 500, 32, "ws") \
                and r.get("kind", "gemm") == "gemm":
            con.print(f"(256,784,500) on 32x32 WS: SCALE-Sim {r['scalesim_wall_s']:.3f} s; lpemu "
                      f"cycle model {r['lpemu_model_wall_s'] * 1e6:.1f} us "
                      f"(ratio {r['scalesim_wall_s'] / r['lpemu_model_wall_s']:,.0f}x), "
                      f"lpemu full gemm with values {r['lpemu_run_wall_s'] * 1e3:.1f} ms "
                      f"(ratio {r['scalesim_wall_s'] / r['lpemu_run_wall_s']:,.1f}x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes, no input-stationary")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--venv", type=Path, default=None, help="where the SCALE-Sim venv lives")
    args = ap.parse_args(argv)
    res = compare(args.quick, args.venv)
    if res is None:
        print("SCALE-Sim is not available; nothing compared", file=sys.stderr)
        return 1
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
