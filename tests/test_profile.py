"""Profiles: the Chrome trace of a training step (schema and coverage), profile tables per
label and per instruction summing to the totals, and the `lpemu profile` CLI."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator.config import Config
from emulator.counters import COUNTERS, IDX
from programs.cli import main, profile
from programs.compiler.spec import ModelSpec, with_overrides
from programs.host.datasets import Dataset, digits
from programs.host.driver import ChipTrainer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "programs/examples/gemm_dither.s"
LOADS = ["--load", f"{ROOT / 'programs/examples/gemm_a.npy'}@0",
         "--load", f"{ROOT / 'programs/examples/gemm_b.npy'}@0x10000"]


def check_trace_schema(trace: dict) -> list[dict]:
    """The trace-event format's required fields; returns the complete ("X") events."""
    assert isinstance(trace, dict) and isinstance(trace["traceEvents"], list)
    xs = []
    for ev in trace["traceEvents"]:
        assert isinstance(ev["name"], str) and ev["ph"] in ("X", "M")
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "X":
            assert isinstance(ev["ts"], int) and ev["ts"] >= 0
            assert isinstance(ev["dur"], int) and ev["dur"] >= 0
            xs.append(ev)
    json.dumps(trace)  # serializable as is
    return xs


def one_step_trainer() -> ChipTrainer:
    d = digits(0)
    spec = with_overrides(ModelSpec(), epochs=1, batch_size=10)
    one_batch = Dataset("one-step", d.x_train[:10], d.y_train[:10], d.x_test[:10],
                        d.y_test[:10], d.classes)
    return ChipTrainer(spec, Config(), one_batch)


def test_trace_of_a_training_step_covers_every_instruction():
    tr = one_step_trainer()
    tracer = tr.m.tracer = profile.Tracer()
    tr.train_epoch()  # one batch = one training step
    trace = profile.chrome_trace(tr.m, tracer)
    xs = check_trace_schema(trace)
    counts = tr.m.counts
    # one event per executed instruction, and every executed pc appears
    assert len(xs) == int(counts[:, IDX["instructions"]].sum())
    assert {ev["args"]["pc"] for ev in xs} == set(np.flatnonzero(counts[:, 0]).tolist())
    per_pc = np.zeros(len(counts), dtype=np.int64)
    for ev in xs:
        per_pc[ev["args"]["pc"]] += 1
    assert per_pc.tolist() == counts[:, IDX["instructions"]].tolist()
    # a sequential machine: events tile the timeline without gaps or overlaps
    ts = [ev["ts"] for ev in xs]
    assert ts == sorted(ts) and ts[0] == 0
    for a, b in zip(xs, xs[1:], strict=False):
        assert a["ts"] + a["dur"] == b["ts"]
    assert sum(ev["dur"] for ev in xs) == int(counts[:, IDX["cycles"]].sum())
    # units are tracks, named by metadata events
    names = {ev["tid"]: ev["args"]["name"] for ev in trace["traceEvents"]
             if ev["ph"] == "M" and ev["name"] == "thread_name"}
    assert {ev["tid"] for ev in xs} <= set(names)
    gemm_tids = {ev["tid"] for ev in xs if ev["name"] == "gemm"}
    assert [names[t] for t in gemm_tids] == ["matrix unit"]
    # the phases of a step are all there as categories
    cats = {ev["cat"] for ev in xs}
    assert {"train.fwd.l1", "train.softmax", "train.bwd.l3", "train.upd.l1"} <= cats


def test_trace_limit_drops_and_says_so():
    tr = one_step_trainer()
    tracer = tr.m.tracer = profile.Tracer(limit=50)
    tr.train_epoch()
    trace = profile.chrome_trace(tr.m, tracer)
    xs = check_trace_schema(trace)
    total = int(tr.m.counts[:, 0].sum())
    assert len(xs) == 50 and trace["otherData"]["dropped_events"] == total - 50


def test_tables_sum_to_totals():
    tr = one_step_trainer()
    tr.train_epoch()
    tot = profile.total(tr.m)
    for rows in (profile.by_label(tr.m), profile.by_instruction(tr.m)):
        for name in COUNTERS:
            assert sum(r[name] for r in rows) == tot[name]
        assert sum(r["energy_pj"] for r in rows) == pytest.approx(tot["energy_pj"], rel=1e-12)
    comps = sum(v for k, v in tot.items() if k.startswith("energy_") and k != "energy_pj")
    assert comps == pytest.approx(tot["energy_pj"], rel=1e-12)


def test_profile_cli_writes_json_csv_trace(tmp_path, capsys):
    j, c, t = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "t.json"
    rc = main(["profile", str(EXAMPLE), *LOADS, "--by", "instruction", "--json", str(j),
               "--csv", str(c), "--trace", str(t), "-q"])
    assert rc == 0 and capsys.readouterr().out == ""
    rep = json.loads(j.read_text())
    rows = list(csv.DictReader(c.read_text().splitlines()))
    assert len(rows) == len(rep["rows"]) == 25  # every instruction of the example runs once
    assert [int(r["cycles"]) for r in rows] == [r["cycles"] for r in rep["rows"]]
    assert rep["total"]["cycles"] == sum(r["cycles"] for r in rep["rows"])
    xs = check_trace_schema(json.loads(t.read_text()))
    assert len(xs) == 25
    # by label: the example's four labels, in program order
    rc = main(["profile", str(EXAMPLE), *LOADS, "--json", str(j), "-q"])
    assert [r["label"] for r in json.loads(j.read_text())["rows"]] == [
        "start", "matmul", "requantize", "store"]


def test_profile_cli_prints_tables(capsys):
    assert main(["profile", str(EXAMPLE), *LOADS]) == 0
    out = capsys.readouterr().out
    assert "profile by label" in out and "energy by component" in out and "matmul" in out


def test_profile_cli_bad_trace_limit(capsys):
    assert main(["profile", str(EXAMPLE), "--trace", "x.json", "--trace-limit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trace-limit" in err


@pytest.mark.skipif("matplotlib" not in sys.modules and not __import__("importlib").util
                    .find_spec("matplotlib"), reason="matplotlib not installed")
def test_profile_plot_is_a_png(tmp_path):
    out = tmp_path / "p.png"
    assert main(["profile", str(EXAMPLE), *LOADS, "--plot", str(out), "-q"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
