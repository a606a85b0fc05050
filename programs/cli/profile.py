"""Profiles of a run: counter tables per instruction, per label and in total; a Chrome
trace-event timeline (Perfetto / chrome://tracing); a PNG of cycles and energy by label and
energy component.

The timeline is recorded by a :class:`Tracer` attached to ``Machine.tracer``: one complete event
(``ph: "X"``) per executed instruction, on the track (``tid``) of the unit that runs it, with
``ts`` and ``dur`` in cycles (the viewer shows them as microseconds: 1 us = 1 cycle).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.counters import (
    COUNTERS,
    ENERGY_COMPONENTS,
    INSTRUCTIONS,
    assumed_breakdown,
    derived,
    energy_breakdown,
)
from emulator.errors import UsageError
from emulator.files import atomic_write
from emulator.machine import Machine
from isa.asm import format_instruction
from isa.spec import TABLE

UNITS: tuple[str, ...] = tuple(sorted({ins.unit for ins in TABLE}))
DEFAULT_TRACE_LIMIT = 1_000_000


TRACE_EVENT_BYTES = 1024  # memory per kept event, recorded and then written (measured: ~900)


def check_trace_limit(limit: int, cfg: Config) -> None:
    """``--trace-limit`` N keeps up to N events in memory: refuse, before the run, a limit
    whose trace would not fit the memory budget (``budget.max_memory_bytes``)."""
    from emulator.limits import fmt_bytes, memory_budget

    need, room = limit * TRACE_EVENT_BYTES, memory_budget(cfg.budget.max_memory_bytes)
    if need > room:
        raise UsageError(f"{limit:,} events need about {fmt_bytes(need)} for the trace, over "
                         f"the memory budget of {fmt_bytes(room)} (budget.max_memory_bytes); "
                         "ask for fewer events", "--trace-limit")


class Tracer:
    """Records (pc, start cycle, end cycle) of executed instructions, up to ``limit`` events."""

    def __init__(self, limit: int = DEFAULT_TRACE_LIMIT) -> None:
        self.limit = limit
        self.pcs: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.dropped = 0

    def record(self, pc: int, start: int, end: int) -> None:
        if len(self.pcs) < self.limit:
            self.pcs.append(pc)
            self.starts.append(start)
            self.ends.append(end)
        else:
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.pcs)


def chrome_trace(m: Machine, tracer: Tracer, cycle_offset: int = 0) -> dict[str, Any]:
    """The recorded timeline as a Chrome trace-event JSON object (``traceEvents`` + metadata)."""
    labels = m.program.label_at()
    names = {pc: name for name, pc in m.program.labels.items()}
    texts: dict[int, str] = {}
    tid = {u: i + 1 for i, u in enumerate(UNITS)}
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
         "args": {"name": f"lpemu: {m.program.name}"}},
    ]
    for u, t in tid.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": t,
                       "args": {"name": f"{u} unit"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": t,
                       "args": {"sort_index": t}})
    for pc, start, end in zip(tracer.pcs, tracer.starts, tracer.ends, strict=True):
        _, ops, ins = m.decoded[pc]
        if pc not in texts:
            texts[pc] = format_instruction(ins, ops, names)
        events.append({
            "name": ins.mnemonic, "cat": labels[pc] or "<start>", "ph": "X",
            "ts": start - cycle_offset, "dur": end - start, "pid": 1, "tid": tid[ins.unit],
            "args": {"pc": pc, "label": labels[pc], "text": texts[pc]},
        })
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"program": m.program.name, "time_unit": "1 us in the viewer = 1 cycle",
                      "events": len(tracer), "dropped_events": tracer.dropped},
    }


def write_trace(path: str | Path, m: Machine, tracer: Tracer) -> None:
    """Write the timeline as Chrome trace-event JSON, atomically (emulator/files.py)."""
    write_text(path, json.dumps(chrome_trace(m, tracer), allow_nan=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text output file atomically (a device or FIFO in place)."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------- tables
def _row(c: np.ndarray, cfg: Config) -> dict[str, Any]:
    en = energy_breakdown(c, cfg)
    d: dict[str, Any] = {n: int(c[i]) for i, n in enumerate(COUNTERS)}
    d["energy_pj"] = float(sum(en.values()))
    d.update({f"energy_{k}_pj": v for k, v in en.items()})
    d["assumed_energy_pj"] = float(sum(assumed_breakdown(c, cfg).values()))
    d.update(derived(c, cfg))
    return d


def by_instruction(m: Machine) -> list[dict[str, Any]]:
    labels = m.program.label_at()
    names = {pc: name for name, pc in m.program.labels.items()}
    out = []
    for pc, (_, ops, ins) in enumerate(m.decoded):
        c = m.counts[pc]
        if c[INSTRUCTIONS] == 0:
            continue
        d: dict[str, Any] = {"pc": pc, "label": labels[pc],
                             "text": format_instruction(ins, ops, names), "unit": ins.unit}
        d.update(_row(c, m.cfg))
        out.append(d)
    return out


def by_label(m: Machine) -> list[dict[str, Any]]:
    labels = m.program.label_at()
    order = list(dict.fromkeys(labels))
    idx = np.array([order.index(lb) for lb in labels], dtype=np.int64)
    sums = np.zeros((len(order), len(COUNTERS)), dtype=np.int64)
    np.add.at(sums, idx, m.counts[: len(labels)])
    out = []
    for i, name in enumerate(order):
        if sums[i, INSTRUCTIONS] == 0:
            continue
        d: dict[str, Any] = {"label": name or "<start>"}
        d.update(_row(sums[i], m.cfg))
        out.append(d)
    return out


def total(m: Machine) -> dict[str, Any]:
    return _row(m.counts.sum(axis=0), m.cfg)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def print_profile(rows: list[dict[str, Any]], tot: dict[str, Any], by: str,
                  title: str, cfg: Config | None = None) -> None:
    from rich.table import Table

    from programs.cli.console import make_console, print_table
    from programs.cli.energy_table import component_table, price_table

    con = make_console()
    key_cols = ["pc", "label", "text"] if by == "instruction" else ["label"]
    # (header, row -> cell)
    cyc, en = tot["cycles"] or 1, tot["energy_pj"] or 1.0
    cells = [
        ("instrs", lambda r: f"{r['instructions']:,}"),
        ("cycles", lambda r: f"{r['cycles']:,}"),
        ("cyc %", lambda r: f"{100 * r['cycles'] / cyc:.1f}"),
        ("MACs", lambda r: f"{r['macs']:,}"),
        ("skipped", lambda r: f"{r['macs_skipped']:,}"),
        ("cyc saved", lambda r: f"{r['skip_cycles_saved']:,}"),
        ("util %", lambda r: f"{100 * r['array_utilization']:.1f}" if r["array_cycles"]
         else "-"),
        ("DRAM B", lambda r: f"{r['dram_rd_bytes'] + r['dram_wr_bytes']:,}"),
        ("uJ", lambda r: f"{r['energy_pj'] / 1e6:,.3f}"),
        ("E %", lambda r: f"{100 * r['energy_pj'] / en:.1f}"),
        ("assumed E %", lambda r: f"{100 * r['assumed_energy_pj'] / (r['energy_pj'] or 1):.1f}"),
    ]
    t = Table(title=title)
    for c in key_cols:
        t.add_column(c, justify="left" if c != "pc" else "right", overflow="fold")
    for h, _ in cells:
        t.add_column(h, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(*([str(r[c]) for c in key_cols] + [f(r) for _, f in cells]))
    t.add_row(*(["total"] + [""] * (len(key_cols) - 1) + [f(tot) for _, f in cells]),
              style="bold")
    print_table(con, t)
    energy = {k: tot[f"energy_{k}_pj"] for k in ENERGY_COMPONENTS}
    if cfg is None:
        print_table(con, component_table(energy, {}, "energy by component"))
        return
    assumed = assumed_breakdown(np.array([tot[n] for n in COUNTERS], dtype=np.int64), cfg)
    print_table(con, component_table(energy, assumed, "energy by component"))
    from emulator.energy import price_table as prices

    print_table(con, price_table(prices(cfg)))


def require_matplotlib(argument: str = "--plot") -> None:
    """Raise UsageError naming ``argument`` unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("needs matplotlib: pip install 'lpemu[plot]'", argument) from None


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (UsageError if not installed)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wrap_title(title: str, width_in: float, fontsize: float = 12.0) -> tuple[str, float]:
    """(``title`` broken at spaces into lines that fit ``width_in`` inches, the font size that
    makes its longest word fit too); a character is at most ~0.6 em wide."""
    import textwrap

    chars = max(10, int(width_in * 72 / (0.6 * fontsize)))
    lines = textwrap.wrap(title, chars, break_long_words=False, break_on_hyphens=False)
    longest = max((len(ln) for ln in lines), default=0)
    if longest > chars:
        fontsize = max(5.0, fontsize * chars / longest)
    return "\n".join(lines) or title, fontsize


def groups_figure(groups: list[dict[str, Any]], key: str, title: str):
    """Bar charts of cycles and stacked energy components per group (a matplotlib Figure)."""
    plt = pyplot()
    names = [str(g[key]) for g in groups]
    x = np.arange(len(names))
    width = max(6.0, 0.45 * len(names) + 2)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 7), sharex=True)
    ax1.bar(x, [g["cycles"] for g in groups], color="tab:blue")
    ax1.set_ylabel("cycles")
    text, size = wrap_title(title, width - 0.5)
    ax1.set_title(text, fontsize=size)
    bottom = np.zeros(len(names))
    for comp in ENERGY_COMPONENTS:
        vals = np.array([g[f"energy_{comp}_pj"] for g in groups]) / 1e6
        if vals.any():
            ax2.bar(x, vals, bottom=bottom, label=comp)
            bottom += vals
    ax2.set_ylabel("energy (uJ)")
    ax2.legend(fontsize=8, ncol=4)
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_groups(groups: list[dict[str, Any]], key: str, path: str | Path, title: str) -> bool:
    """Write :func:`groups_figure` to ``path``, atomically, in the format its suffix names
    (png, pdf, svg, ...; PNG for any other). UsageError without matplotlib; an unwritable path
    raises OSError naming it."""
    fig = groups_figure(groups, key, title)
    plt = pyplot()
    fmt = Path(path).suffix[1:].lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        fmt = "png"
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120))
    finally:
        plt.close(fig)
    return True
