"""Sweep points: resolving a point, its identity (a hash), and running it (the worker task).

A *resolved point* is everything that determines its results: the full hardware config, the
full model spec (train points) or the program's binary encoding and the bytes and addresses of
its inputs (program points), the count-only switch and step/cycle budgets, the lpemu
version and a hash of lpemu's source (:func:`code_stamp`: a resumed sweep reruns its points
after any change of the code, even one that kept the version). Its ``point_id`` is the
SHA-256 of that, as canonical JSON, cut to 20 hex digits.
:func:`run_point` is a pure function of the resolved point's payload: the Dask task.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config, config_from_dict, load_config
from emulator.errors import ConfigError, LpemuError
from programs.compiler.spec import ModelSpec, load_model, spec_from_dict
from programs.sweep import overrides
from programs.sweep.metrics import VALUE_COUNTERS, default_metrics
from programs.sweep.schema import SweepSpec


def lpemu_version() -> str:
    try:
        return version("lpemu")
    except PackageNotFoundError:  # pragma: no cover - a checkout without install
        return "0+unknown"


_CODE_STAMP: str | None = None


def code_stamp() -> str:
    """SHA-256 of every Python source of the ``isa``, ``emulator`` and ``programs`` packages
    (relative paths and bytes; computed once per process, about 10 ms)."""
    global _CODE_STAMP
    if _CODE_STAMP is None:
        import emulator

        root = Path(emulator.__file__).resolve().parents[1]
        h = hashlib.sha256()
        for pkg in ("isa", "emulator", "programs"):
            for f in sorted((root / pkg).rglob("*.py")):
                h.update(f.relative_to(root).as_posix().encode() + b"\0")
                h.update(f.read_bytes())
        _CODE_STAMP = h.hexdigest()
    return _CODE_STAMP


# ---------------------------------------------------------------------------- resolving
@dataclass(frozen=True)
class Point:
    """One point of a sweep: its assignment, its id, and the payload the worker runs (None
    when the assignment itself is invalid: ``error`` then holds the typed error)."""

    index: int
    assignment: dict[str, Any]
    point_id: str
    payload: dict[str, Any] | None
    error: LpemuError | None = None


def _hash(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return hashlib.sha256(v).hexdigest()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON-serializable: {type(v).__name__}")


def _load_base(sweep: SweepSpec) -> tuple[Config, ModelSpec | None]:
    def path(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else sweep.base_dir / q

    if isinstance(sweep.config, dict):
        cfg = config_from_dict(sweep.config, f"{sweep.file}:config")
    else:
        cfg = load_config(path(sweep.config) if sweep.config else None)
    spec = None
    if sweep.kind == "train":
        if isinstance(sweep.model, dict):
            spec = spec_from_dict(sweep.model, f"{sweep.file}:train.model", sweep.base_dir)
        else:
            spec = load_model(path(sweep.model) if sweep.model else None)
    return cfg, spec


def _program_payload(sweep: SweepSpec) -> dict[str, Any]:
    """The program's binary encoding and its inputs' bytes (read once, in the driver)."""
    from isa.asm import assemble
    from isa.encoding import MAGIC, from_bytes, to_bytes

    p = Path(sweep.program or "")
    p = p if p.is_absolute() else sweep.base_dir / p
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the program: {e.strerror or e}", "program.file",
                          sweep.file) from None
    if data[:4] == MAGIC or p.suffix.lower() in (".bin", ".lpem"):
        prog = from_bytes(data, str(p))
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("the program is neither UTF-8 assembly nor an lpemu binary",
                              "program.file", sweep.file) from None
        prog = assemble(text, str(p))
    loads = []
    for i, spec in enumerate(sweep.load):
        where = f"program.load[{i}]"
        file, _, addr = spec.rpartition("@")
        try:
            a = int(addr.replace("_", ""), 0)
        except ValueError:
            raise ConfigError(f"{addr!r} is not an integer address", where, sweep.file) from None
        if a < 0:
            raise ConfigError("address must be >= 0", where, sweep.file)
        f = Path(file) if Path(file).is_absolute() else sweep.base_dir / file
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ConfigError(f"not a readable .npy array: {e}", where, sweep.file) from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise ConfigError("an .npz archive; give one array saved with numpy.save", where,
                              sweep.file)
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        loads.append((a, raw))
    # the worker gets the debug section (faults name source lines); the identity does not
    # (it holds the source path): see resolve()
    return {"program": to_bytes(prog), "program_id": to_bytes(prog, debug=False),
            "name": prog.name, "loads": loads,
            "count_only": sweep.count_only, "max_steps": sweep.max_steps,
            "max_cycles": sweep.max_cycles}


def resolve(sweep: SweepSpec, sets: list[tuple[str, Any]] | None = None) -> list[Point]:
    """Every point of ``sweep`` resolved (``sets``: the command line's ``--set`` overrides,
    applied to every point before its axes). Errors of the base (files, ``set:``, ``--set``)
    raise; an invalid axis value makes that point an error point."""
    cfg0, spec0 = _load_base(sweep)
    try:
        cfg0, spec0 = overrides.apply(cfg0, spec0, list(sweep.set), sweep.file)
    except ConfigError as e:
        raise ConfigError(e.message, f"set.{e.key}", sweep.file) from None
    cfg0, spec0 = overrides.apply(cfg0, spec0, sets or [], "--set")
    metrics = list(sweep.metrics or default_metrics(sweep.kind, sweep.float_reference))
    common: dict[str, Any] = {"kind": sweep.kind, "metrics": metrics}
    ident: dict[str, Any] = {"lpemu": lpemu_version(), "code": code_stamp()[:20],
                             "kind": sweep.kind}
    if sweep.kind == "program":
        prog = _program_payload(sweep)
        ident["program"] = prog.pop("program_id")
        common.update(prog)
        ident.update({"loads": prog["loads"],
                      "count_only": sweep.count_only, "max_steps": sweep.max_steps,
                      "max_cycles": sweep.max_cycles})
    else:
        common["float_reference"] = sweep.float_reference
        ident["float_reference"] = sweep.float_reference
    points = []
    for i, assignment in enumerate(sweep.points()):
        try:
            cfg, spec = overrides.apply(cfg0, spec0, assignment, f"point {i}")
        except ConfigError as e:
            pid = _hash({**ident, "invalid": assignment, "config": cfg0.to_dict(),
                         "model": spec0.to_dict() if spec0 else None})
            points.append(Point(i, assignment, pid, None, e))
            continue
        payload = dict(common, config=cfg.to_dict(),
                       model=spec.to_dict() if spec is not None else None)
        pid = _hash({**ident, "config": payload["config"], "model": payload["model"]})
        points.append(Point(i, assignment, pid, payload))
    return points


# ---------------------------------------------------------------------------- running
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


_DATASETS: dict[str, Any] = {}


def _dataset(key: str, spec: ModelSpec):
    """The spec's dataset, cached per worker by (source, classes, data seed, validation)."""
    from programs.host.datasets import load_for

    if key not in _DATASETS:
        if len(_DATASETS) >= 4:
            _DATASETS.clear()
        _DATASETS[key] = load_for(spec)
    return _DATASETS[key]


def _common_metrics(summary, steps: int) -> dict[str, Any]:
    t = summary.totals
    out: dict[str, Any] = dict(t)
    out["energy_pj"] = summary.energy_pj
    out.update({f"energy_{k}_pj": v for k, v in summary.energy.items()})
    out.update(summary.derived)
    out["dram_bytes"] = t["dram_rd_bytes"] + t["dram_wr_bytes"]
    all_macs = t["macs"] + t["macs_skipped"]
    out["macs_skipped_fraction"] = t["macs_skipped"] / all_macs if all_macs else 0.0
    dense = t["cycles"] + t["skip_cycles_saved"]
    out["skip_cycles_saved_fraction"] = t["skip_cycles_saved"] / dense if dense else 0.0
    out["steps"] = steps
    return out


def _run_train(p: dict[str, Any]) -> dict[str, Any]:
    from programs.host.driver import ChipTrainer

    cfg = config_from_dict(p["config"], "<point>")
    spec = spec_from_dict(p["model"], "<point>")
    key = json.dumps([str(spec.dataset), spec.classes, spec.data_seed, spec.validation])
    data = _dataset(key, spec)
    net = spec.net()
    if data.features != net.features or data.classes != spec.classes:
        raise ConfigError(f"dataset {data.name} has {data.features} features and "
                          f"{data.classes} classes; the network takes {net.features} inputs "
                          f"and gives {net.classes} classes", "model.layers")
    tr = ChipTrainer(spec, cfg, data)
    hist = [tr.train_epoch() for _ in range(spec.epochs)]
    test_accuracy = tr.test_accuracy()  # at the best-validation epoch with a validation split
    out = _common_metrics(tr.m.summary(), tr.m.steps)  # the evaluation run included
    out.update({
        "test_accuracy": test_accuracy,
        "train_accuracy": hist[-1].train_accuracy,
        "final_loss": hist[-1].loss,
        "mean_sparsity": float(np.mean([h.mean_sparsity for h in hist])),
        "weights_sha256": tr.weights_digest(),
    })
    if p.get("float_reference"):
        from programs.host.float_ref import train_float

        out["float_accuracy"] = train_float(spec, data, tr.float_init()).test_accuracy
    return out


def _run_program(p: dict[str, Any]) -> dict[str, Any]:
    from isa.encoding import from_bytes

    cfg = config_from_dict(p["config"], "<point>")
    prog = from_bytes(p["program"], p["name"])
    if p["count_only"]:
        from emulator.countonly import CountOnlyMachine

        m = CountOnlyMachine(cfg, prog)
    else:
        from emulator.machine import Machine

        m = Machine(cfg, prog)
    for addr, raw in p["loads"]:
        m.load_dram(addr, raw)
    summary = m.run(max_steps=p["max_steps"], max_cycles=p["max_cycles"])
    out = _common_metrics(summary, m.steps)
    if p["count_only"]:
        for k in VALUE_COUNTERS:
            out[k] = None
        out["state_digest"] = None
    elif "state_digest" in p["metrics"]:  # SHA-256 over every memory: ~1 s for 256 MiB
        out["state_digest"] = m.digest()
    return out


def run_point(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one resolved point (the Dask task): its kept metrics, or its typed error.

    BLAS and numba are held to one thread here too (a worker of a foreign cluster may have
    been started without lpemu's thread environment). Only lpemu's own typed errors are
    caught: anything else is a bug or a lost worker, raised so Dask can retry the task."""
    from threadpoolctl import threadpool_limits

    t0, c0 = time.perf_counter(), time.process_time()
    row: dict[str, Any] = {"status": "ok", "error_kind": None, "error": None}
    with threadpool_limits(limits=1):
        try:
            res = (_run_train if payload["kind"] == "train" else _run_program)(payload)
        except LpemuError as e:
            row.update(status="error", error_kind=e.kind, error=str(e))
            res = {}
    for m in payload["metrics"]:
        row[m] = res.get(m)
    row["wall_seconds"] = time.perf_counter() - t0
    row["cpu_seconds"] = time.process_time() - c0  # this worker process's CPU time
    row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return row
