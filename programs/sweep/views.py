"""Views of a sweep's rows: the per-design summary (mean over seeds), its Pareto front, a rich
table, and the plots (``--plot``: the Pareto front and one plot per axis; matplotlib is the
``plot`` extra).

A *design* is one assignment of the axes other than the seed. Its metrics are means over its
finished seeds. The Pareto front is the set of designs no other design dominates on the
objectives (fewer cycles, less energy and, for training, higher test accuracy): ``b``
dominates ``a`` when it is no worse on every objective and better on one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

OBJECTIVES = (("cycles", "min"), ("energy_pj", "min"), ("test_accuracy", "max"))
SHOWN = ("test_accuracy", "cycles", "energy_pj", "array_utilization", "macs_skipped_fraction",
         "skip_cycles_saved_fraction")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def designs(rows: list[dict[str, Any]], axis_keys: list[str]) -> list[dict[str, Any]]:
    """One entry per design: its axis values, ``runs``/``ok`` counts and metric means and
    standard deviations over its ok rows (``<metric>`` and ``<metric>_std``)."""
    keys = [k for k in axis_keys if k != "model.seed"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        g = json.dumps([r.get(k) for k in keys], sort_keys=True, default=str)
        groups.setdefault(g, []).append(r)
    out = []
    for members in groups.values():
        ok = [r for r in members if r.get("status") == "ok"]
        d: dict[str, Any] = {k: members[0].get(k) for k in keys}
        d["runs"], d["ok"] = len(members), len(ok)
        d["errors"] = sorted({str(r.get("error")) for r in members if r.get("status") != "ok"})
        skip = set(keys) | {"model.seed", "point"}
        metrics = [m for m in (ok[0] if ok else {})
                   if m not in skip and _num(ok[0].get(m)) is not None]
        for m in metrics:
            vals = [_num(r.get(m)) for r in ok]
            xs = [v for v in vals if v is not None]
            if xs:
                mean = sum(xs) / len(xs)
                d[m] = mean
                d[f"{m}_std"] = (math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
                                 if len(xs) > 1 else 0.0)
        out.append(d)
    return out


def pareto(ds: list[dict[str, Any]]) -> list[bool]:
    """For each design: is it on the Pareto front of the objectives it has?"""
    objs = [(m, s) for m, s in OBJECTIVES if any(m in d for d in ds)]

    def vec(d: dict[str, Any]) -> list[float] | None:
        v = []
        for m, sense in objs:
            x = _num(d.get(m))
            if x is None:
                return None
            v.append(x if sense == "min" else -x)
        return v

    vecs = [vec(d) for d in ds]
    front = []
    for i, a in enumerate(vecs):
        if a is None:
            front.append(False)
            continue
        dominated = any(b is not None and j != i and all(y <= x for x, y in zip(a, b, strict=True))
                        and any(y < x for x, y in zip(a, b, strict=True))
                        for j, b in enumerate(vecs))
        front.append(not dominated)
    return front


def _fmt(m: str, v: Any, std: Any = None) -> str:
    if v is None:
        return "-"
    if m in ("test_accuracy", "array_utilization", "macs_skipped_fraction",
             "skip_cycles_saved_fraction"):
        s = f"{100 * v:.2f}"
        return s + (f" ±{100 * std:.2f}" if std else "")
    if m == "energy_pj":
        return f"{v / 1e6:,.2f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"


HEADERS = {"test_accuracy": "test acc %", "cycles": "cycles", "energy_pj": "energy uJ",
           "array_utilization": "util %", "macs_skipped_fraction": "MACs skipped %",
           "skip_cycles_saved_fraction": "cycles saved %"}


def print_summary(rows: list[dict[str, Any]], axis_keys: list[str], title: str,
                  limit: int = 60) -> list[dict[str, Any]]:
    """Print the per-design table (Pareto designs starred); returns the designs."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:
        con = Console(width=200)
    ds = designs(rows, axis_keys)
    front = pareto(ds)
    keys = [k for k in axis_keys if k != "model.seed"]
    shown = [m for m in SHOWN if any(m in d for d in ds)]
    t = Table(title=title)
    t.add_column("front", justify="center")
    for k in keys:
        t.add_column(k.split(".", 1)[1], overflow="fold")
    t.add_column("ok/runs", justify="right")
    for m in shown:
        t.add_column(HEADERS[m], justify="right")
    for d, f in list(zip(ds, front, strict=True))[:limit]:
        cells = ["*" if f else ""] + [_cell(d.get(k)) for k in keys]
        cells.append(f"{d['ok']}/{d['runs']}")
        cells += [_fmt(m, d.get(m), d.get(f"{m}_std")) for m in shown]
        t.add_row(*cells, style="bold" if f else None)
    con.print(t)
    if len(ds) > limit:
        con.print(f"... {len(ds) - limit} more designs in results.csv")
    errs = sorted({e for d in ds for e in d["errors"]})
    for e in errs[:5]:
        con.print(f"[red]failed:[/red] {e}")
    return ds


def _cell(v: Any) -> str:
    return "-" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else str(v))


# ------------------------------------------------------------------------------ plots
def _front2(xs: list[float], ys: list[float], ymax: bool) -> tuple[list[float], list[float]]:
    """The 2-D front (min x; min or max y) as a staircase through its points."""
    pts = sorted(zip(xs, ys, strict=True))
    fx, fy, best = [], [], None
    for x, y in pts:
        if best is None or (y > best if ymax else y < best):
            best = y
            fx.append(x)
            fy.append(y)
    return fx, fy


def plot(rows: list[dict[str, Any]], axis_keys: list[str], out: Path, title: str) -> list[Path]:
    """Write ``pareto.png`` and ``axis_<key>.png`` per axis into ``out``; [] without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ds = [d for d in designs(rows, axis_keys) if d["ok"]]
    if not ds:
        return []
    front = pareto(ds)
    keys = [k for k in axis_keys if k != "model.seed"]
    written = []
    has_acc = all(_num(d.get("test_accuracy")) is not None for d in ds)
    cyc = [d["cycles"] for d in ds]
    en = [d["energy_pj"] / 1e6 for d in ds]
    pairs: list[tuple[list[float], list[float], str, str, bool]] = [
        (cyc, en, "cycles", "energy (uJ)", False)]
    if has_acc:
        acc = [100 * d["test_accuracy"] for d in ds]
        pairs += [(en, acc, "energy (uJ)", "test accuracy (%)", True),
                  (cyc, acc, "cycles", "test accuracy (%)", True)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.4), squeeze=False)
    color = ([100 * d["test_accuracy"] for d in ds] if has_acc
             else [100 * d.get("array_utilization", 0.0) for d in ds])
    for ax, (xs, ys, xl, yl, ymax) in zip(axes[0], pairs, strict=True):
        sc = ax.scatter(xs, ys, c=color, cmap="viridis", s=28, zorder=2)
        fx = [x for x, f in zip(xs, front, strict=True) if f]
        fy = [y for y, f in zip(ys, front, strict=True) if f]
        ax.scatter(fx, fy, facecolors="none", edgecolors="red", s=90, linewidths=1.4, zorder=3,
                   label="Pareto front (all objectives)")
        sx, sy = _front2(xs, ys, ymax)
        ax.step(sx, sy, where="post", color="red", linewidth=0.8, alpha=0.6, zorder=1,
                label="2-D front")
        if sum(front) <= 12:
            for d, x, y, f in zip(ds, xs, ys, front, strict=True):
                if f:
                    ax.annotate(", ".join(_short(d.get(k)) for k in keys), (x, y), fontsize=6,
                                textcoords="offset points", xytext=(4, 3))
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.colorbar(sc, ax=axes[0][-1], label="test accuracy (%)" if has_acc
                 else "array utilization (%)")
    fig.suptitle(f"{title}: {len(ds)} designs, {sum(front)} on the front"
                 + (f" (labels: {', '.join(k.split('.', 1)[1] for k in keys)})" if keys else ""),
                 fontsize=9)
    fig.tight_layout()
    p = out / "pareto.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    written.append(p)
    ok = [r for r in rows if r.get("status") == "ok"]
    metrics = [m for m in ("test_accuracy", "cycles", "energy_pj", "array_utilization")
               if all(_num(r.get(m)) is not None for r in ok)]
    for k in axis_keys:
        values = sorted({_cell(r.get(k)) for r in ok}, key=_sort_key)
        if len(values) < 2:
            continue
        pos = {v: i for i, v in enumerate(values)}
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4),
                                 squeeze=False)
        for ax, m in zip(axes[0], metrics, strict=True):
            scale = 100 if m in ("test_accuracy", "array_utilization") else (
                1e-6 if m == "energy_pj" else 1)
            xs = [pos[_cell(r.get(k))] for r in ok]
            ys = [scale * r[m] for r in ok]
            ax.scatter(xs, ys, s=10, alpha=0.5)
            means = [sum(y for x, y in zip(xs, ys, strict=True) if x == i)
                     / max(1, sum(1 for x in xs if x == i)) for i in range(len(values))]
            ax.plot(range(len(values)), means, color="black", marker="_", markersize=14,
                    linewidth=0.8)
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels([_short(v) for v in values], rotation=30, fontsize=7)
            ax.set_xlabel(k)
            ax.set_ylabel({"test_accuracy": "test accuracy (%)", "energy_pj": "energy (uJ)",
                           "array_utilization": "array utilization (%)"}.get(m, m))
            ax.grid(alpha=0.3)
        fig.suptitle(f"{title}: by {k} (dots: points; bars: mean)", fontsize=9)
        fig.tight_layout()
        p = out / f"axis_{k}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def _short(v: Any) -> str:
    s = _cell(v)
    for long, short in (("weight_stationary", "WS"), ("output_stationary", "OS"),
                        ("input_stationary", "IS")):
        s = s.replace(long, short)
    return s


def _sort_key(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)
