"""``lpemu sweep``: design-space exploration on Dask distributed (``docs/sweep.md``).

:func:`sweep` is the public entry point (re-exported as ``lpemu.sweep``); the command line's
``lpemu sweep`` is a thin layer over it (:func:`command`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from programs.sweep.engine import DEFAULT_RETRIES, SweepRun
from programs.sweep.schema import SweepSpec, load_sweep, sweep_from_dict

__all__ = ["SweepRun", "SweepSpec", "command", "load_sweep", "sweep", "sweep_from_dict"]


def _overrides(sets: Iterable[str] | Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    from programs.sweep.overrides import check_key_syntax, parse_set

    if sets is None:
        return []
    if isinstance(sets, Mapping):
        for k in sets:
            check_key_syntax(k, "sets")
        return list(sets.items())
    return [parse_set(s) for s in sets]


def sweep(spec: str | Path | SweepSpec | Mapping[str, Any], out: str | Path | None = None, *,
          sets: Iterable[str] | Mapping[str, Any] | None = None, scheduler: str | None = None,
          workers: int | None = None, client: Any = None, retries: int = DEFAULT_RETRIES,
          plot: bool = False, progress: bool = False) -> SweepRun:
    """Run a sweep and return what it did (``.rows``: one dict per point, in point order).

    ``spec`` is a sweep file, a loaded :class:`SweepSpec` or a sweep document (a dict; paths
    in it are relative to the current folder). ``out`` (default ``out/sweeps/<name>``) holds
    ``results.parquet`` and ``results.csv``; points already finished there are skipped.
    ``sets`` are ``--set`` overrides (``["hw.array.rows=32"]`` or ``{"hw.array.rows": 32}``).
    Engine: ``client`` (a ``distributed.Client``), else ``scheduler`` (address of a running
    Dask scheduler), else an embedded LocalCluster with ``workers`` processes (default: one
    per core); ``workers=0`` runs the points in this process without Dask. ``plot`` writes
    ``pareto.png`` and ``axis_<key>.png`` (needs matplotlib)."""
    from programs.sweep import engine, views

    if isinstance(spec, Mapping):
        spec = sweep_from_dict(dict(spec), "<sweep>", Path.cwd())
    elif not isinstance(spec, SweepSpec):
        spec = load_sweep(spec)
    folder = Path(out) if out is not None else Path("out") / "sweeps" / spec.name
    res = engine.run(spec, folder, _overrides(sets), scheduler=scheduler, workers=workers,
                     client=client, retries=retries, progress=progress)
    if plot:
        res.plots = views.plot(res.rows, spec.axis_keys, folder, spec.name)
    return res


def command(args: Any) -> int:
    """``lpemu sweep SWEEP.yaml [--out DIR] [--set K=V] [--scheduler ADDR] [--workers N]
    [--retries N] [--plot] [-q]``."""
    from rich.console import Console

    from emulator.errors import UsageError
    from programs.sweep import views

    if args.workers is not None and args.workers < 0:
        raise UsageError("must be >= 0 (0: run in this process without Dask)", "--workers")
    if args.workers is not None and args.scheduler:
        raise UsageError("a --scheduler cluster has its own workers", "--workers")
    if args.retries < 0:
        raise UsageError("must be >= 0", "--retries")
    spec = load_sweep(args.file)
    res = sweep(spec, args.out, sets=args.set, scheduler=args.scheduler, workers=args.workers,
                retries=args.retries, plot=args.plot, progress=not args.quiet)
    if args.quiet:
        return 0
    con = Console()
    views.print_summary(res.rows, spec.axis_keys, f"sweep {spec.name}: {len(res.rows)} points")
    con.print(f"{res.ran} run ({res.failed} failed), {res.skipped} already finished"
              + (f", {res.duplicates} duplicate points" if res.duplicates else "")
              + (f"; {res.engine}, {res.wall_seconds:.1f} s, {res.points_per_hour:,.0f} "
                 "points/hour" if res.ran else ""))
    files = [res.store.path, res.out / "results.csv"] + list(res.plots)
    con.print("wrote " + ", ".join(str(f) for f in files if Path(f).exists()))
    if args.plot and not res.plots:
        con.print("[yellow]warning:[/yellow] --plot needs matplotlib "
                  "(pip install 'lpemu[plot]') and a finished point; no plot written")
    return 0
