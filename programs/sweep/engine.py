"""Running a sweep on Dask distributed.

The default engine is an embedded ``distributed.LocalCluster``: process workers (as many as
cores), one thread each, and one BLAS/OpenMP/numba thread per worker, set in the worker's
environment before it starts (``distributed.nanny.pre-spawn-environ``) and held again inside
each task with threadpoolctl. ``scheduler=ADDRESS`` submits the same tasks to an existing
cluster. Points go out with ``client.map(run_point, ..., retries=N)``; results are stored as
they arrive (``as_completed``), each one rewriting ``results.parquet`` atomically, so a killed
sweep resumes from what is on disk. A worker that dies is replaced by its nanny and the
scheduler re-runs the tasks it held (up to ``distributed.scheduler.allowed-failures``
times); a task that still fails is stored as ``failed`` and re-run by the next invocation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.errors import SweepError
from programs.sweep.metrics import VALUE_COUNTERS, default_metrics
from programs.sweep.point import THREAD_VARS, Point, lpemu_version, resolve, run_point
from programs.sweep.schema import SweepSpec
from programs.sweep.store import KEY, ResultStore

DEFAULT_RETRIES = 2
NULLABLE = VALUE_COUNTERS + ("state_digest",)  # may be null in an ok row (count-only)
CONNECT_TIMEOUT = "10s"


@dataclass
class SweepRun:
    """What one invocation did."""

    sweep: SweepSpec
    out: Path
    points: list[Point]
    store: ResultStore
    skipped: int = 0  # finished before this invocation
    ran: int = 0
    failed: int = 0  # status error or failed among this invocation's points
    wall_seconds: float = 0.0
    workers: int = 0
    engine: str = ""
    duplicates: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    @property
    def points_per_hour(self) -> float:
        return 3600.0 * self.ran / self.wall_seconds if self.wall_seconds > 0 else 0.0


def _row(p: Point, sweep: SweepSpec, body: dict[str, Any]) -> dict[str, Any]:
    """A stored row: id, assignment columns (named by their keys), then the task's result."""
    row: dict[str, Any] = {KEY: p.point_id, "point": p.index}
    for k in sweep.axis_keys:
        row[k] = p.assignment.get(k)
    row.update(body)
    row["lpemu_version"] = lpemu_version()
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def _error_body(kind: str, message: str, metrics: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"status": kind, "error_kind": None, "error": message}
    body.update({m: None for m in metrics})
    return body


@contextmanager
def _local_client(workers: int) -> Iterator[Any]:
    """An embedded LocalCluster: process workers, one thread each, one BLAS/numba thread."""
    import dask
    from distributed import Client, LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.update({v: 1 for v in THREAD_VARS})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@contextmanager
def _remote_client(address: str) -> Iterator[Any]:
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise SweepError(f"cannot reach the Dask scheduler: {e}", address) from None
    try:
        yield client
    finally:
        client.close()


def run(sweep: SweepSpec, out: str | Path, sets: list[tuple[str, Any]] | None = None,
        scheduler: str | None = None, workers: int | None = None, client: Any = None,
        retries: int = DEFAULT_RETRIES, progress: bool = False,
        on_row: Callable[[dict[str, Any]], None] | None = None) -> SweepRun:
    """Run every unfinished point of ``sweep`` and store its row under ``out``.

    Engine: ``client`` (a ``distributed.Client`` the caller owns), else ``scheduler`` (an
    address), else an embedded LocalCluster of ``workers`` processes (default: the cores);
    ``workers=0`` runs the points one after another in this process, without Dask."""
    out = Path(out)
    points = resolve(sweep, sets)
    store = ResultStore(out)
    metrics = list(sweep.metrics or default_metrics(sweep.kind, sweep.float_reference))
    res = SweepRun(sweep, out, points, store)
    seen: set[str] = set()
    todo: list[Point] = []
    for p in points:
        if p.point_id in seen:
            res.duplicates += 1
            continue
        seen.add(p.point_id)
        if store.finished(p.point_id, metrics, NULLABLE):
            res.skipped += 1
        elif p.payload is None:  # an invalid assignment: its typed error is its result
            assert p.error is not None
            body = _error_body("error", str(p.error), metrics)
            body["error_kind"] = p.error.kind
            _store(res, _row(p, sweep, body), on_row)
        else:
            todo.append(p)
    total = len(seen)
    t0 = time.perf_counter()
    bar = _Progress(sweep.name, total, res.skipped + res.ran, res.failed, progress)
    with bar:
        if todo:
            if client is not None:
                res.engine, res.workers = "dask (given client)", _n_workers(client)
                _dask(client, todo, sweep, res, retries, bar, on_row)
            elif scheduler:
                with _remote_client(scheduler) as c:
                    res.engine, res.workers = f"dask scheduler {scheduler}", _n_workers(c)
                    _dask(c, todo, sweep, res, retries, bar, on_row)
            elif workers == 0:
                res.engine, res.workers = "serial (this process, no Dask)", 1
                for p in todo:
                    _store(res, _row(p, sweep, run_point(p.payload)), on_row)  # type: ignore
                    bar.update(res)
            else:
                n = workers or os.cpu_count() or 1
                with _local_client(n) as c:
                    plural = "" if n == 1 else "s"
                    res.engine, res.workers = f"dask LocalCluster ({n} worker{plural})", n
                    _dask(c, todo, sweep, res, retries, bar, on_row)
    res.wall_seconds = time.perf_counter() - t0
    if res.ran or not (out / "results.csv").exists():
        if store.rows:
            store.export_csv()
    res.rows = [store.rows[p.point_id] for p in points if p.point_id in store.rows]
    return res


def _n_workers(client: Any) -> int:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - informational only
        return 0


def _store(res: SweepRun, row: dict[str, Any], on_row) -> None:
    res.store.add(row)
    res.ran += 1
    if row["status"] != "ok":
        res.failed += 1
    if on_row is not None:
        on_row(row)


def _dask(client: Any, todo: list[Point], sweep: SweepSpec, res: SweepRun, retries: int,
          bar: _Progress, on_row) -> None:
    from distributed import as_completed

    metrics = todo[0].payload["metrics"]  # type: ignore[index]
    keys = [f"lpemu-point-{p.point_id}-{os.getpid()}" for p in todo]
    futures = client.map(run_point, [p.payload for p in todo], key=keys, retries=retries,
                         pure=False)
    by_key = {f.key: p for f, p in zip(futures, todo, strict=True)}
    try:
        for fut in as_completed(futures):
            p = by_key[fut.key]
            if fut.status == "finished":
                body = fut.result()
            else:  # lost past the scheduler's allowed failures, or a bug in lpemu
                exc = fut.exception()
                body = _error_body("failed", f"{type(exc).__name__}: {exc}", metrics)
                body["error_kind"] = type(exc).__name__
            _store(res, _row(p, sweep, body), on_row)
            bar.update(res)
            fut.release()
    finally:
        for f in futures:
            if not f.done():
                f.cancel()


class _Progress:
    """A rich progress bar (points done/total, failures, elapsed, ETA), or nothing."""

    def __init__(self, name: str, total: int, done: int, failed: int, show: bool) -> None:
        self.show = show
        if not show:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("points"),
                             TextColumn("{task.fields[failures]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn())
        self.task = self.prog.add_task(f"sweep {name}", total=total, completed=done,
                                       failures="")
        self.base = done

    def __enter__(self) -> _Progress:
        if self.show:
            self.prog.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.prog.__exit__(*exc)

    def update(self, res: SweepRun) -> None:
        if self.show:
            f = f"[red]{res.failed} failed[/red]" if res.failed else "0 failed"
            self.prog.update(self.task, completed=res.skipped + res.ran, failures=f)
