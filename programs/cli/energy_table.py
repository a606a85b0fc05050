"""The energy tables of every report: energy by component with the part resting on assumed
prices, and the prices with their sources (assumed ones marked ``ASSUMED``)."""

from __future__ import annotations

from typing import Any

KIND_LABEL = {"paper": "Horowitz 2014", "derived": "ASSUMED (derived)",
              "assumed": "ASSUMED", "config": "ASSUMED (set in config)"}


def _pct(x: float) -> str:
    return f"{x:.1f}%" if x >= 0.1 or x == 0 else f"{x:.2g}%"


def component_table(energy: dict[str, float], assumed: dict[str, float], title: str):
    """Energy per component in pJ, its share, and how much of it rests on assumed prices."""
    from rich.table import Table

    total = sum(energy.values()) or 1.0
    t = Table(title=title)
    t.add_column("component")
    t.add_column("pJ", justify="right")
    t.add_column("share", justify="right")
    t.add_column("on assumed prices", justify="right")
    for k, v in energy.items():
        a = assumed.get(k, 0.0)
        mark = "-" if a == 0 else ("all" if a >= v else _pct(100 * a / v))
        t.add_row(k, f"{v:,.1f}", f"{100 * v / total:.1f}%", mark,
                  style="yellow" if a and a >= v else None)
    all_a = sum(assumed.values())
    t.add_row("total", f"{sum(energy.values()):,.1f}", "100.0%",
              _pct(100 * all_a / total) if all_a else "-", style="bold")
    return t


def price_table(prices: dict[str, dict[str, Any]]):
    """The prices used, each with its source; every price not taken as printed from the cited
    source is marked ASSUMED."""
    from rich.table import Table

    t = Table(title="energy prices (configs/default.yaml cites each source)")
    t.add_column("price")
    t.add_column("pJ", justify="right")
    t.add_column("per")
    t.add_column("basis")
    t.add_column("source")
    for name, p in prices.items():
        t.add_row(name, f"{p['pj']:.4g}", str(p["per"]), KIND_LABEL[str(p["kind"])],
                  str(p["source"]), style="yellow" if p["assumed"] else None)
    return t


def assumed_line(prices: dict[str, dict[str, Any]]) -> str:
    """One line naming the assumed prices (for reports without the full price table)."""
    parts = [f"{n} {p['pj']:.4g} pJ ({KIND_LABEL[str(p['kind'])]})" for n, p in prices.items()
             if p["assumed"]]
    if not parts:
        return "energy prices: all from Horowitz, ISSCC 2014 (configs/default.yaml)"
    return ("energy prices not from Horowitz, ISSCC 2014: " + ", ".join(parts)
            + "; the others are the paper's (configs/default.yaml cites each)")
