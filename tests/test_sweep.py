"""``lpemu sweep`` (programs/sweep/): schema errors, expansion and point identity, results that
survive (resume, faults, atomic writes), and the Dask engine: a 2-worker LocalCluster, a worker
killed mid-sweep, a scheduler address. Points are tiny assembly programs on a small config."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from emulator.errors import ConfigError, SweepError
from programs.sweep import load_sweep, sweep, sweep_from_dict
from programs.sweep.point import resolve
from programs.sweep.store import ResultStore

SMALL = {"memory": {"dram_bytes": 65536, "scratchpad_bytes": 32768}}
VOLATILE = ("wall_seconds", "cpu_seconds", "worker", "finished_at")

GEMM = """
    li r1, 0
    li r2, 0
    li r3, 16
    li r4, 64
    dmald r1, r2, r3, r4, r4, r4
    li r5, 0x1000
    li r6, 0x400
    dmald r5, r6, r4, r3, r3, r3
    li r7, 0
    gemm r7, r1, r5, r3, r4, r3, sb=1
    eset e1, 0
    eset e2, 6
    li r8, 256
    li r9, 0x2000
    li r10, 5
    rngseed r10
    rq r9, r7, r8, e2, e1, rnd=uniform
    halt
"""
# a slow point (for the kill test): the GEMM again many times after the first; a loop of scalar
# instructions alone would take microseconds in the compiled interpreter, a matrix instruction
# goes through Python dispatch every time
SLOW = GEMM.replace("    halt\n", """    li r11, 0
    li r12, 20000
spin:
    gemm r7, r1, r5, r3, r4, r3, sb=1
    addi r11, r11, 1
    blt r11, r12, spin
    halt
""")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    a = rng.integers(-100, 100, (16, 64)).astype(np.int8)
    b = rng.integers(-3, 3, (64, 16)).astype(np.int8)
    np.save(d / "a.npy", a)
    np.save(d / "b.npy", b)
    (d / "gemm.s").write_text(GEMM)
    (d / "slow.s").write_text(SLOW)
    return d


def doc(program: str = "gemm.s", **extra) -> dict:
    d = {"name": "t", "config": SMALL,
         "program": {"file": program, "load": ["a.npy@0", "b.npy@0x400"]},
         "axes": [{"grid": {"hw.array.dataflow": ["weight_stationary", "output_stationary"],
                            "hw.array.skip": ["none", "element"]}},
                  {"zip": {"hw.array.rows": [4, 8], "hw.array.cols": [4, 8]}}]}
    d.update(extra)
    return d


def write(folder: Path, name: str, d: dict) -> Path:
    p = folder / name
    p.write_text(yaml.safe_dump(d))
    return p


def same(rows_a: list[dict], rows_b: list[dict]) -> None:
    """Rows equal point by point, except timing and worker fields."""
    a = {r["point_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows_a}
    b = {r["point_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows_b}
    assert a == b


def serial(folder: Path, d: dict) -> list[dict]:
    """The reference: every point's task called here, one after another."""
    spec = sweep_from_dict(d, str(folder / "ref.yaml"), folder)
    return sweep(spec, folder / f"serial-{len(os.listdir(folder))}", workers=0).rows


# ------------------------------------------------------------------------------ schema
@pytest.mark.parametrize("change, key, fragment", [
    ({"bogus": 1}, "bogus", "unknown key 'bogus'"),
    ({"axes": [{"grid": {"hw.array.rowz": [1]}}]}, "axes[0].grid.hw.array.rowz",
     "did you mean 'rows'"),
    ({"axes": [{"zip": {"hw.array.rows": [4, 8], "hw.array.cols": [4]}}]},
     "axes[0].zip.hw.array.cols", "has 1 values"),
    ({"axes": [{"grid": {"model.update.lr": [0.1]}}]}, "axes[0].grid.model.update.lr",
     "program point has no model"),
    ({"axes": [{"cube": {}}]}, "axes[0].cube", "unknown key 'cube'"),
    ({"axes": [{"random": {"samples": 3, "keys": {"hw.array.rows": {"int": [8, 4]}}}}]},
     "axes[0].random.keys.hw.array.rows.int", "low <= high"),
    ({"axes": [{"grid": {"hw.array": [1]}}]}, "axes[0].grid.hw.array", "is a section"),
    ({"seeds": [0, 1]}, "seeds", "apply to train points"),
    ({"metrics": ["cycles", "test_accuracy"]}, "metrics[1]", "unknown metric"),
    ({"axes": [{"grid": {"hw.array.rows": [4]}}, {"zip": {"hw.array.rows": [8]}}]},
     "axes[1].zip.hw.array.rows", "already varied"),
    ({"program": {"file": "gemm.s", "lod": []}}, "program.lod", "did you mean 'load'"),
])
def test_schema_errors_name_the_key_path(folder, change, key, fragment):
    d = doc()
    d.update(change)
    with pytest.raises(ConfigError) as info:
        sweep_from_dict(d, "s.yaml", folder)
    assert info.value.key == key and fragment in info.value.message, str(info.value)
    assert info.value.file == "s.yaml"


def test_expansion_grid_zip_random_and_seeds(folder):
    d = {"train": {}, "axes": [
        {"grid": {"hw.array.dataflow": ["weight_stationary", "output_stationary"],
                  "model.qbp.step_log2": [-4, -3, [-2, -2, -2]]}},
        {"zip": {"hw.array.rows": [8, 16], "hw.array.cols": [8, 16]}},
        {"random": {"samples": 3, "seed": 7, "keys": {
            "model.update.lr": {"log_uniform": [0.01, 0.2]},
            "hw.alu.lanes": {"int": [4, 32]},
            "model.qbp.dither": {"choice": ["uniform", "none"]}}}}],
        "seeds": [0, 1]}
    spec = sweep_from_dict(d, "s.yaml", folder)
    pts = spec.points()
    assert len(pts) == 2 * 3 * 2 * 3 * 2
    assert pts == sweep_from_dict(d, "s.yaml", folder).points()  # seeded: reproducible
    assert all(p["hw.array.rows"] == p["hw.array.cols"] for p in pts)
    lrs = {p["model.update.lr"] for p in pts}
    assert len(lrs) == 3 and all(0.01 <= x <= 0.2 for x in lrs)
    assert {p["hw.alu.lanes"] for p in pts} <= set(range(4, 33))
    assert spec.axis_keys[-1] == "model.seed" and {p["model.seed"] for p in pts} == {0, 1}
    ids = [p.point_id for p in resolve(spec)]
    assert len(set(ids)) == len(ids)


def test_point_id_covers_config_program_inputs_version_and_code(folder, monkeypatch, tmp_path):
    spec = sweep_from_dict(doc(), str(folder / "s.yaml"), folder)
    base = [p.point_id for p in resolve(spec)]
    assert base == [p.point_id for p in resolve(spec)]
    assert base != [p.point_id for p in resolve(spec, [("hw.dma.latency_cycles", 3)])]
    import programs.sweep.point as point

    monkeypatch.setattr(point, "lpemu_version", lambda: "9.9.9")
    assert base != [p.point_id for p in resolve(spec)]
    monkeypatch.undo()
    monkeypatch.setattr(point, "_CODE_STAMP", "0" * 64)  # an edited source, same version
    assert set(base).isdisjoint(p.point_id for p in resolve(spec))
    monkeypatch.undo()
    assert len(point.code_stamp()) == 64 and base == [p.point_id for p in resolve(spec)]
    # the same program and inputs copied elsewhere: same ids; one input byte changed: new ids
    for f in ("gemm.s", "a.npy", "b.npy"):
        (tmp_path / f).write_bytes((folder / f).read_bytes())
    moved = sweep_from_dict(doc(), str(tmp_path / "s.yaml"), tmp_path)
    assert base == [p.point_id for p in resolve(moved)]
    b = np.load(tmp_path / "b.npy")
    b[0, 0] += 1
    np.save(tmp_path / "b.npy", b)
    assert set(base).isdisjoint(p.point_id for p in resolve(moved))


# ------------------------------------------------------------------------------ results
def test_faulting_point_records_its_typed_error_and_the_sweep_goes_on(folder):
    d = doc(axes=[{"grid": {"hw.memory.scratchpad_bytes": [32768, 1024],
                            "hw.array.rows": [4, 0]}}])
    res = sweep(sweep_from_dict(d, str(folder / "f.yaml"), folder), folder / "faults",
                workers=0)
    by = {(r["hw.memory.scratchpad_bytes"], r["hw.array.rows"]): r for r in res.rows}
    assert by[(32768, 4)]["status"] == "ok" and by[(32768, 4)]["cycles"] > 0
    fault = by[(1024, 4)]
    assert fault["status"] == "error" and fault["error_kind"] == "memory access error"
    assert "scratchpad" in fault["error"] and fault["cycles"] is None
    bad = by[(32768, 0)]  # an invalid axis value: a config error located at the key
    assert bad["status"] == "error" and bad["error_kind"] == "config error"
    assert "hw.array.rows" in bad["error"] and "must be >= 1" in bad["error"]
    # typed errors are final: a re-run skips every point
    again = sweep(sweep_from_dict(d, str(folder / "f.yaml"), folder), folder / "faults",
                  workers=0)
    assert again.ran == 0 and again.skipped == 4


def test_interrupted_sweep_resumes_and_matches_an_uninterrupted_one(folder):
    d = doc()
    spec = sweep_from_dict(d, str(folder / "r.yaml"), folder)
    out = folder / "resume"
    seen = []

    def stop_after_three(row):
        seen.append(row["point_id"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    from programs.sweep import engine

    with pytest.raises(KeyboardInterrupt):
        engine.run(spec, out, workers=0, on_row=stop_after_three)
    assert len(ResultStore(out).rows) == 3  # what finished is on disk
    res = sweep(spec, out, workers=0)
    assert res.skipped == 3 and res.ran == 5 and len(res.rows) == 8
    same(res.rows, serial(folder, d))
    # CSV export holds the same rows
    import csv

    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 8


def test_a_crash_while_writing_never_corrupts_the_results(folder, monkeypatch):
    out = folder / "atomic"
    store = ResultStore(out)
    store.add({"point_id": "a", "status": "ok", "cycles": 1})
    import pyarrow.parquet as pq

    real = pq.write_table

    def crash(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk died")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError):
        store.add({"point_id": "b", "status": "ok", "cycles": 2})
    monkeypatch.setattr(pq, "write_table", real)
    assert set(ResultStore(out).rows) == {"a"}
    (out / "results.parquet").write_bytes(b"garbage")
    with pytest.raises(SweepError):
        ResultStore(out)


# ------------------------------------------------------------------------------ Dask
@pytest.fixture(scope="module")
def cluster():
    """One 2-worker LocalCluster (processes, one thread each) for the Dask tests."""
    from programs.sweep.engine import _local_client

    with _local_client(2) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def test_two_worker_cluster_gives_the_serial_results(folder, cluster):
    d = doc()
    res = sweep(sweep_from_dict(d, str(folder / "d.yaml"), folder), folder / "dask",
                client=cluster)
    assert res.ran == 8 and res.failed == 0
    assert len({r["worker"] for r in res.rows}) == 2  # both workers ran points
    same(res.rows, serial(folder, d))
    # the workers run with one BLAS/numba thread
    env = cluster.run(lambda: {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS",
                                                              "NUMBA_NUM_THREADS")})
    assert all(e == {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
               for e in env.values())


def test_scheduler_address_runs_the_same_sweep(folder, cluster, monkeypatch):
    d = doc(axes=[{"grid": {"hw.array.rows": [2, 3, 5]}}])
    res = sweep(sweep_from_dict(d, str(folder / "a.yaml"), folder), folder / "addr",
                scheduler=cluster.scheduler.address)
    assert res.ran == 3 and res.engine.startswith("dask scheduler")
    same(res.rows, serial(folder, d))
    from programs.sweep import engine

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(SweepError):
        sweep(sweep_from_dict(d, str(folder / "a.yaml"), folder), folder / "none",
              scheduler="tcp://127.0.0.1:9")


def test_a_worker_killed_mid_sweep_loses_no_point(folder, cluster):
    """SIGKILL a worker while it runs a point: its nanny restarts it, the scheduler re-runs
    what it held, and every point is stored exactly once with the serial results."""
    d = doc(program="slow.s")
    spec = sweep_from_dict(d, str(folder / "k.yaml"), folder)
    killed: list[int] = []

    def kill_one(row):
        if killed:
            return
        busy = [w for w, keys in cluster.processing().items() if keys]
        pids = cluster.run(os.getpid, workers=busy[:1])
        (pid,) = pids.values()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    from programs.sweep import engine

    stored = []
    res = engine.run(spec, folder / "killed", client=cluster,
                     on_row=lambda r: (stored.append(r["point_id"]), kill_one(r)))
    assert killed, "no worker was busy to kill"
    assert sorted(stored) == sorted({p.point_id for p in resolve(spec)})  # each exactly once
    assert all(r["status"] == "ok" for r in res.rows) and len(res.rows) == 8
    assert all(str(killed[0]) not in r["worker"] or r["point_id"] == stored[0]
               for r in res.rows)  # nothing finished on the dead worker after the kill
    same(res.rows, serial(folder, d))


# ------------------------------------------------------------------------------ CLI
def test_cli_sweep(folder, cluster, capsys):
    """``lpemu sweep`` end to end (on the fixture's cluster, by address: the embedded
    LocalCluster is the fixture itself, made by the same function the default engine uses)."""
    from programs.cli.main import main

    d = doc(axes=[{"grid": {"hw.array.dataflow": ["weight_stationary", "output_stationary"]}}])
    f = write(folder, "cli.yaml", d)
    out = folder / "cli-out"
    assert main(["sweep", str(f), "--out", str(out), "--scheduler", cluster.scheduler.address,
                 "--set", "hw.array.rows=8"]) == 0
    text = capsys.readouterr().out
    assert "2 run (0 failed)" in text and "dask scheduler tcp://" in text
    assert "sweep t: 2 points" in text and "ok/runs" in text  # the summary table
    rows = ResultStore(out).rows.values()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    assert {r["hw.array.dataflow"] for r in rows} == {"weight_stationary", "output_stationary"}
    pytest.importorskip("matplotlib")
    # all points finished: no cluster is needed, the plots come from the stored rows
    assert main(["sweep", str(f), "--out", str(out), "--set", "hw.array.rows=8",
                 "--plot"]) == 0
    assert "0 run (0 failed), 2 already finished" in capsys.readouterr().out
    assert (out / "pareto.png").stat().st_size > 0
    assert (out / "axis_hw.array.dataflow.png").exists()
    assert main(["sweep", str(f), "--set", "hw.array.rowz=8"]) == ConfigError.exit_code
    assert "--set:hw.array.rowz" in capsys.readouterr().err


def test_shipped_digits_sweep_is_small_and_valid():
    spec = load_sweep(Path(__file__).parents[1] / "configs" / "sweep_digits.yaml")
    pts = resolve(spec)
    assert spec.kind == "train" and 1 < len(pts) <= 12
    assert all(p.payload is not None for p in pts)


def test_count_only_points_give_the_full_runs_counters(folder):
    """A program sweep with count_only: every kept counter and energy equal to full runs; the
    value-event counters are null; a refused program is a typed error row."""
    axes = [{"grid": {"hw.array.dataflow": ["weight_stationary", "output_stationary"],
                      "hw.array.skip": ["none", "element"]}}]
    metrics = ["cycles", "macs", "macs_skipped", "skip_cycles_saved", "rng_draws",
               "array_utilization", "energy_pj", "dram_bytes", "acc_overflows", "saturations"]
    full = sweep(sweep_from_dict(doc(axes=axes, metrics=metrics), str(folder / "c.yaml"),
                                 folder), folder / "co-full", workers=0).rows
    d = doc(axes=axes, metrics=metrics)
    d["program"]["count_only"] = True
    counted = sweep(sweep_from_dict(d, str(folder / "c.yaml"), folder), folder / "co",
                    workers=0).rows
    assert len(full) == len(counted) == 4
    for f, c in zip(full, counted, strict=True):
        assert c["status"] == "ok" and f["point_id"] != c["point_id"]
        for m in metrics:
            assert c[m] == (None if m in ("acc_overflows", "saturations") else f[m]), m
    (folder / "dyn.s").write_text(GEMM.replace("eset e2, 6", "efit e2, r7, r8, e1"))
    d["program"]["file"] = "dyn.s"
    rows = sweep(sweep_from_dict(d, str(folder / "c.yaml"), folder), folder / "co-dyn",
                 workers=0).rows
    assert all(r["status"] == "error" and r["error_kind"] == "count-only refused"
               and "pc 16 (rq" in r["error"] for r in rows)


def test_pareto_front_and_per_design_means():
    from programs.sweep.views import designs, pareto

    rows = []
    for x, seed, acc, cyc, en in [("a", 0, 0.9, 100, 10.0), ("a", 1, 0.8, 100, 10.0),
                                  ("b", 0, 0.9, 90, 12.0), ("c", 0, 0.7, 120, 9.0),
                                  ("d", 0, 0.8, 130, 13.0), ("e", 0, 0.84, 100, 10.0),
                                  ("g", 0, 0.9, 90, 12.0)]:
        rows.append({"k": x, "model.seed": seed, "status": "ok", "test_accuracy": acc,
                     "cycles": cyc, "energy_pj": en})
    rows.append({"k": "f", "model.seed": 0, "status": "error", "test_accuracy": None,
                 "cycles": None, "energy_pj": None, "error": "boom"})
    ds = designs(rows, ["k", "model.seed"])
    by = {d["k"]: d for d in ds}
    assert by["a"]["runs"] == by["a"]["ok"] == 2
    assert by["a"]["test_accuracy"] == pytest.approx(0.85)
    assert by["a"]["test_accuracy_std"] == pytest.approx(0.0707106781)
    assert by["f"]["ok"] == 0 and by["f"]["errors"] == ["boom"]
    front = dict(zip([d["k"] for d in ds], pareto(ds), strict=True))
    # a dominates d and e (less accurate at the same cost); b and g tie: neither dominates
    assert front == {"a": True, "b": True, "c": True, "d": False, "e": False, "f": False,
                     "g": True}
