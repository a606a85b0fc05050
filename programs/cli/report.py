"""Counter reports: JSON-ready dicts and rich tables, per instruction, per label and in total."""

from __future__ import annotations

from typing import Any

from emulator.counters import COUNTER_DOCS, COUNTERS, DERIVED_DOCS, Summary
from emulator.debug import registers
from emulator.machine import Machine


def per_instruction(m: Machine) -> list[dict[str, Any]]:
    """One row per executed pc: its text, label, unit, every counter and energy."""
    from programs.cli.profile import by_instruction

    return by_instruction(m)


def per_label(m: Machine) -> dict[str, dict[str, Any]]:
    """Counters and energy summed per label (``<start>`` before the first label)."""
    from programs.cli.profile import by_label

    return {r["label"]: {k: v for k, v in r.items() if k != "label"} for r in by_label(m)}


def run_report(m: Machine, summary: Summary) -> dict[str, Any]:
    """Everything a run produced, JSON-serializable. Top-level keys include every counter."""
    d: dict[str, Any] = {"program": m.program.name, "steps": m.steps}
    d.update(summary.to_dict())
    d["per_label"] = per_label(m)
    d["per_instruction"] = per_instruction(m)
    d["config"] = m.cfg.to_dict()
    d["registers"] = registers(m)
    if getattr(m, "count_only", False):  # values were not computed: no digest, no value events
        from emulator.counters import UNCOUNTED

        d.update({k: None for k in UNCOUNTED})
        d["count_only"], d["state_digest"] = True, None
        regs = d["registers"]  # registers holding data-dependent values are unknown: null
        regs["r"] = [None if t else v for v, t in zip(regs["r"], m.rt, strict=True)]
        regs["e"] = [None if t else v for v, t in zip(regs["e"], m.et, strict=True)]
        regs["flags"], regs["flag_names"] = None, None
        if m.t_rng:
            regs["rng"]["seed"] = None
    else:
        d["count_only"], d["state_digest"] = False, m.digest()
    return d


def _fmt(v: float | int) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


def print_summary(m: Machine, summary: Summary, by_instruction: bool = False) -> None:
    from rich.table import Table

    from programs.cli.console import make_console, print_table
    from programs.cli.energy_table import component_table, price_table

    con = make_console()
    t = Table(title=f"{m.program.name}: {m.steps:,} steps")
    t.add_column("counter")
    t.add_column("total", justify="right")
    t.add_column("meaning", style="dim")
    from emulator.counters import UNCOUNTED

    uncounted = UNCOUNTED if getattr(m, "count_only", False) else ()
    for name in COUNTERS:
        t.add_row(name, "n/a (count-only)" if name in uncounted else _fmt(summary.totals[name]),
                  COUNTER_DOCS[name])
    t.add_row("energy_pj", _fmt(summary.energy_pj), "energy = events x prices (below)")
    t.add_row("assumed_energy_pj", _fmt(summary.assumed_energy_pj),
              "the part of energy_pj priced by assumed values")
    for name, value in summary.derived.items():
        t.add_row(name, f"{100 * value:.2f}%", DERIVED_DOCS[name])
    print_table(con, t)
    print_table(con, component_table(summary.energy, summary.assumed_energy,
                                     "energy by component"))
    print_table(con, price_table(summary.prices))
    if by_instruction:
        p = Table(title="per instruction")
        cols = ("pc", "label", "text", "instructions", "cycles", "macs", "macs_skipped",
                "energy_pj")
        for c in cols:
            p.add_column(c, justify="left" if c in ("label", "text") else "right")
        for row in per_instruction(m):
            p.add_row(*(_fmt(row[c]) if not isinstance(row[c], str) else row[c] for c in cols))
        print_table(con, p)


def stop_record(stop: Any) -> dict[str, Any] | None:
    """What ``--json`` records of a budget that stopped a run (None: it ran to its end)."""
    if stop is None:
        return None
    return {"kind": stop.kind, "message": stop.message, "pc": stop.pc, "steps": stop.steps,
            "cycles": stop.cycles, "error": str(stop)}
