"""The metrics a sweep point can keep: every counter, energy by component, the derived
utilization, and per kind the training results or the program's state digest."""

from __future__ import annotations

import difflib
from typing import Any

from emulator.counters import COUNTERS, DERIVED_DOCS, ENERGY_COMPONENTS, UNCOUNTED
from emulator.errors import ConfigError

ENERGY_METRICS = ("energy_pj",) + tuple(f"energy_{c}_pj" for c in ENERGY_COMPONENTS)
COMMON_METRICS = (COUNTERS + ENERGY_METRICS + tuple(DERIVED_DOCS)
                  + ("dram_bytes", "macs_skipped_fraction", "skip_cycles_saved_fraction",
                     "steps"))
TRAIN_METRICS = ("test_accuracy", "train_accuracy", "final_loss", "mean_sparsity",
                 "weights_sha256", "float_accuracy")
PROGRAM_METRICS = ("state_digest",)
DEFAULT_COMMON = ("cycles", "macs", "macs_skipped", "macs_skipped_fraction", "skip_cycles_saved",
                  "skip_cycles_saved_fraction", "array_cycles", "array_utilization",
                  "array_utilization_run", "dram_bytes") + ENERGY_METRICS
# counters count-only mode does not produce (they count value events): None in its rows
VALUE_COUNTERS = UNCOUNTED


def available_metrics(kind: str, float_reference: bool = False) -> tuple[str, ...]:
    extra = TRAIN_METRICS if kind == "train" else PROGRAM_METRICS
    if kind == "train" and not float_reference:
        extra = tuple(m for m in extra if m != "float_accuracy")
    return extra + COMMON_METRICS


def default_metrics(kind: str, float_reference: bool = False) -> tuple[str, ...]:
    if kind == "train":
        head = ("test_accuracy", "train_accuracy", "final_loss", "mean_sparsity")
        head += ("float_accuracy",) if float_reference else ()
        return head + DEFAULT_COMMON + ("weights_sha256",)
    return DEFAULT_COMMON + ("steps",)


def check_metrics(value: Any, kind: str, file: str, float_reference: bool) -> list[str]:
    """The ``metrics:`` list of a sweep file (``all`` = every metric of the point kind)."""
    avail = available_metrics(kind, float_reference)
    if value == "all":
        return list(avail)
    if not isinstance(value, list) or not value:
        raise ConfigError("must be 'all' or a non-empty list of metric names", "metrics", file)
    for i, m in enumerate(value):
        if m not in avail:
            close = difflib.get_close_matches(str(m), list(avail), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/sweep.md for the list"
            why = (" (float_accuracy needs train.float_reference: true)"
                   if m == "float_accuracy" else "")
            raise ConfigError(f"unknown metric {m!r} for {kind} points{why}; {hint}",
                              f"metrics[{i}]", file)
    return list(dict.fromkeys(value))
