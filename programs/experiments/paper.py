"""``lpemu experiment NAME``: reproduce the source papers' claims on the emulator.

Each experiment trains on the chip (and, where relevant, with the float32 reference), writes a
markdown table and a CSV to ``OUT/NAME.md`` / ``OUT/NAME.csv`` and, when matplotlib is installed
(``pip install lpemu[plot]``), a PNG plot. ``quick=True`` shrinks the sweep for tests.

An experiment first lays out its parts, then calls ``note(what, total)`` before each one, so a
progress display knows the total from the start. Row keys starting with ``_`` carry data for
the plot only (not written to the tables).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.files import atomic_write
from programs.compiler.spec import ModelSpec, with_overrides
from programs.experiments import qbp_stats
from programs.experiments.qbp_stats import QBP_EXPERIMENTS
from programs.experiments.tables import TABLES
from programs.host.datasets import Dataset, digits, synthetic
from programs.host.driver import ChipTrainer, classifier_bits_bound
from programs.host.float_ref import train_float

Row = dict[str, Any]


def chip_run(spec: ModelSpec, cfg: Config, data: Dataset) -> Row:
    tr = ChipTrainer(spec, cfg, data)
    hist = [tr.train_epoch() for _ in range(spec.epochs)]
    return {
        "test_accuracy": tr.evaluate(),
        "mean_sparsity": float(np.mean([h.mean_sparsity for h in hist])),
        "roundoff_mean": float(np.mean([h.roundoff_mean for h in hist])),
        "roundoff_mean_abs": float(np.mean([h.roundoff_mean_abs for h in hist])),
        "roundoff_max_abs": float(max(h.roundoff_max_abs for h in hist)),
        "y_zero_fraction": float(np.mean([h.y_zero_fraction for h in hist])),
        "final_loss": hist[-1].loss,
        "trainer": tr,
    }


def float_run(spec: ModelSpec, data: Dataset, tr: ChipTrainer, qbp: bool = False) -> float:
    """Test accuracy of the float32 reference from the chip run's initial weights; with
    ``qbp``, the spec's QBP applied to its dz (programs/host/float_qbp.py), so a table can
    tell QBP's effect from the chip's INT8 arithmetic."""
    return train_float(spec, data, tr.float_init(), qbp=qbp).test_accuracy


# ------------------------------------------------------------------------------ experiments
Note = Callable[[str, int], None]  # note(what the next part is, number of parts in all)


def _silent(_: str, __: int) -> None:
    pass


def lazy_update(cfg: Config, quick: bool, note: Note = _silent,
                base: ModelSpec | None = None) -> list[Row]:
    """Float32 reference (without and with the model's QBP on dz) vs INT8 plain vs INT8 lazy
    on digits, over learning rates (001 sec. 2)."""
    base = base or ModelSpec()
    data = digits(base.data_seed)
    rows = []
    lrs = (0.01, 0.02) if quick else (0.01, 0.02, 0.05, 0.1)
    for lr in lrs:
        spec = with_overrides(base, **{"update.lr": lr})
        note(f"lr {lr}: INT8 lazy, INT8 plain, float32", len(lrs))
        lazy = chip_run(spec, cfg, data)
        plain = chip_run(with_overrides(spec, **{"update.mode": "plain"}), cfg, data)
        ref = float_run(spec, data, lazy["trainer"])
        ref_q = float_run(spec, data, lazy["trainer"], qbp=True)
        rows.append({"lr": lr, "float32": ref, "float32_qbp": ref_q,
                     "int8_plain": plain["test_accuracy"],
                     "int8_lazy": lazy["test_accuracy"],
                     "lazy_minus_float": lazy["test_accuracy"] - ref,
                     "plain_minus_float": plain["test_accuracy"] - ref})
    return rows


def qbp_sweep(cfg: Config, quick: bool, note: Note = _silent,
              base: ModelSpec | None = None) -> list[Row]:
    """Accuracy vs gradient sparsity over QBP steps and dither modes (004 Fig. 6.3, Table 6.1),
    on the chip and in the float32 reference with the same QBP (the no-QBP row: float32 back
    propagation)."""
    base = base or ModelSpec()
    data = digits(base.data_seed)
    steps = (-3, -1) if quick else (-5, -4, -3, -2, -1, 0, 1)
    dithers = ("uniform", "none") if quick else ("uniform", "triangular", "none")
    total = 1 + len(steps) * len(dithers)
    note("no QBP", total)
    spec = with_overrides(base, **{"qbp.step_log2": None})
    no_qbp = chip_run(spec, cfg, data)
    rows = [{"step_log2": "none (dynamic)", "dither": "-", "test_accuracy":
             no_qbp["test_accuracy"], "mean_sparsity": no_qbp["mean_sparsity"],
             "final_loss": no_qbp["final_loss"],
             "float32_qbp_accuracy": float_run(spec, data, no_qbp["trainer"]),
             "float32_qbp_sparsity": math.nan}]
    for step in steps:
        for dither in dithers:
            note(f"step 2^{step}, {dither} dither", total)
            spec = with_overrides(base, **{"qbp.step_log2": step, "qbp.dither": dither})
            r = chip_run(spec, cfg, data)
            fl = train_float(spec, data, r["trainer"].float_init(), qbp=True)
            rows.append({"step_log2": step, "dither": dither,
                         "test_accuracy": r["test_accuracy"],
                         "mean_sparsity": r["mean_sparsity"], "final_loss": r["final_loss"],
                         "float32_qbp_accuracy": fl.test_accuracy,
                         "float32_qbp_sparsity": float(np.mean(fl.sparsity or [math.nan]))})
    return rows


def classifier_spec(classes: int, bits: int, epochs: int,
                    base: ModelSpec | None = None) -> ModelSpec:
    return with_overrides(base or ModelSpec(), **{
        "name": f"synthetic-{classes}", "dataset": "synthetic", "layers": [64, 100, classes],
        "bits.classifier": bits, "epochs": epochs, "update.lr": 0.05, "qbp.step_log2": None})


def classifier_width(cfg: Config, quick: bool, note: Note = _silent,
                     base: ModelSpec | None = None) -> list[Row]:
    """Round-off of dL/ds vs classifier width and class count on a synthetic task (001 sec. 3).
    The width is the grid of y and dL/ds = y - t and the container of the last layer's dz~
    (INT8 up to 8 bits, else INT16), so the last layer's dW and dX products use it; dz~ has a
    dynamic exponent (no QBP). 1000 classes: 001 eq. 5 with alpha = 0.5 asks for more than
    log2(999) + 2 = 11.96 bits (the paper's text says 13.97)."""
    rows = []
    class_counts = (10, 100) if quick else (10, 30, 100, 1000)
    widths = (8, 16) if quick else (6, 8, 10, 12, 14, 16)
    total = len(class_counts) * len(widths)
    for classes in class_counts:
        data = synthetic(classes=classes, features=64, seed=0)
        for bits in widths:
            epochs = 5 if quick else (4 if classes >= 1000 else 10)
            spec = classifier_spec(classes, bits, epochs=epochs, base=base)
            note(f"{classes} classes, INT{bits} classifier", total)
            r = chip_run(spec, cfg, data)
            rows.append({
                "classes": classes, "classifier_bits": bits,
                "dz_last_bits": 8 if bits <= 8 else 16,
                "eq5_bound_bits": classifier_bits_bound(classes, spec.classifier_alpha),
                "roundoff_mean": r["roundoff_mean"],
                "roundoff_mean_abs": r["roundoff_mean_abs"],
                "roundoff_max_abs": r["roundoff_max_abs"],
                "alpha": spec.classifier_alpha,
                "lost_components": r["y_zero_fraction"],
                "test_accuracy": r["test_accuracy"],
                "final_loss": r["final_loss"],
                "epochs": epochs,
                "weights_sha256": r["trainer"].weights_digest()[:12],
            })
    return rows


def perceptron(cfg: Config, quick: bool, note: Note = _silent,
               base: ModelSpec | None = None) -> list[Row]:
    """The Perceptron program vs an exact integer Perceptron on integer data (000 Theorem 2)."""
    from programs.experiments.perceptron import exact_perceptron, run_perceptron

    rows = []
    seeds = range(2 if quick else 5)
    for seed in seeds:
        note(f"seed {seed}", len(seeds))
        rng = np.random.default_rng(seed)
        d, n = 16, 200
        w_true = rng.integers(-8, 9, d)
        x = rng.integers(-16, 17, (n, d))
        score = x @ w_true
        keep = np.abs(score) >= 8  # a margin, so the Perceptron converges
        x, y = x[keep], np.where(score[keep] > 0, 1, -1)
        run = run_perceptron(x, y, epochs=5, cfg=cfg)
        exact = np.array(exact_perceptron(x, y, epochs=5), dtype=np.int64).reshape(-1, d)
        same = exact.shape == run.trajectory.shape and bool(np.array_equal(exact, run.trajectory))
        rows.append({"seed": seed, "samples": len(x), "features": d, "updates": len(exact),
                     "equal_after_every_update": same,
                     "train_accuracy": float((np.sign(x @ run.weights) == y).mean()),
                     "cycles": run.machine.summary().totals["cycles"],
                     "_chip": run.trajectory, "_exact": exact})
    return rows


def update_modes(cfg: Config, quick: bool, note: Note = _silent,
                 base: ModelSpec | None = None) -> list[Row]:
    """Stochastic rounding vs BinaryConnect (shadow copy, nearest and dithered read-out) vs
    lazy vs plain (002): at a constant learning rate 0.01, and decaying from 0.1 (``inverse``:
    0.1 t0 / (t0 + t) at step t, t0 = one epoch of steps; 002's alpha_t = 1 / (mu (t + t0))); beside
    the float32 reference without and with the model's QBP."""
    base = with_overrides(base or ModelSpec(), **{"update.lr": 0.01})
    if quick:
        base = with_overrides(base, epochs=5)
    data = digits(base.data_seed)
    steps = len(data.x_train) // base.batch_size
    rows = []
    modes = (("lazy", "nearest"), ("shadow", "nearest"), ("shadow", "uniform"),
             ("stochastic", "nearest"), ("plain", "nearest"))
    schedules = ("constant", "inverse")
    total = len(modes) * len(schedules)
    for sched in schedules:
        sbase = with_overrides(base, **{"update.schedule.kind": sched,
                                        "update.schedule.t0": float(steps),
                                        "update.lr": 0.1 if sched == "inverse" else 0.01})
        ref = ref_q = None
        for mode, readout in modes:
            note(f"{mode} update ({readout} read-out), {sched} lr", total)
            r = chip_run(with_overrides(sbase, **{"update.mode": mode,
                                                  "update.readout": readout}), cfg, data)
            if ref is None:
                ref = float_run(sbase, data, r["trainer"])
                ref_q = float_run(sbase, data, r["trainer"], qbp=True)
            rows.append({"mode": mode, "readout": readout if mode == "shadow" else "-",
                         "schedule": sched, "epochs": base.epochs,
                         "test_accuracy": r["test_accuracy"], "float32": ref, "float32_qbp": ref_q,
                         "final_loss": r["final_loss"]})
    return rows


def sr_floor(cfg: Config, quick: bool, note: Note = _silent,
             base: ModelSpec | None = None) -> list[Row]:
    """002's accuracy floor on a strongly convex least-squares problem run as chip firmware
    (programs/experiments/sr_floor.py): minibatch SGD with alpha_t = 1 / (mu (t + t0)) on the
    lattice Delta Z^8 by stochastic rounding (SR), BinaryConnect (an INT16 shadow copy 2**8
    finer, updated with dithered rounding, read out with dither or nearest) and the lazy update.
    Gaps are F - F(w*) (mean over the last quarter of each run, then over seeds); *_minus_lattice
    compares with the best lattice point; bound_002 = sqrt(d) Delta G / 2 (Theorem 2)."""
    from programs.experiments.sr_floor import sr_floor_rows

    if base is not None and base != ModelSpec():
        from emulator.errors import UsageError

        raise UsageError("sr-floor runs its own least-squares firmware: model. keys do not "
                         "apply", "sr-floor")
    return sr_floor_rows(cfg, quick, note)


EXPERIMENTS: dict[str, Callable[..., list[Row]]] = {
    "lazy-update": lazy_update,
    "qbp-sweep": qbp_sweep,
    "classifier-width": classifier_width,
    "perceptron": perceptron,
    "update-modes": update_modes,
    "sr-floor": sr_floor,
    **TABLES,  # lenet-lazy, qbp-table (programs/experiments/tables.py): they need --data DIR
    **QBP_EXPERIMENTS,  # qbp-error-stats, qbp-meprop (qbp_stats.py): digits, or --data DIR
}
FIXED_NETWORK = {**TABLES, **QBP_EXPERIMENTS}  # their own networks: --data and --epochs apply


# ------------------------------------------------------------------------------ output
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v == 0 or abs(v) >= 0.01 or v != v else f"{v:.3e}"
    return str(v)


def table_rows(rows: list[Row]) -> list[Row]:
    """The rows without their plot-only (``_``) keys: what the tables show."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def summary_rows(name: str, rows: list[Row]) -> list[Row]:
    """What the console prints: the rows, or a summary of long experiments."""
    if name == "qbp-error-stats":
        return qbp_stats.summary(rows)
    return table_rows(rows)


def _md_table(shown: list[Row]) -> list[str]:
    cols = list(shown[0])
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in shown])


def write_outputs(name: str, rows: list[Row], out: Path) -> list[Path]:
    """Write ``NAME.md``, ``NAME.csv`` and (with matplotlib) ``NAME.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shown = table_rows(rows)
    cols = list(shown[0])
    md = [f"# {name}", "", (EXPERIMENTS[name].__doc__ or "").strip(), ""]
    if name == "qbp-error-stats":
        md += ["## Summary (over the probe points)", ""] + _md_table(summary_rows(name, rows))
        md += ["", "## Every probe point", ""]
    md += _md_table(shown)
    paths = [out / f"{name}.md", out / f"{name}.csv"]
    text = "\n".join(md) + "\n"
    atomic_write(paths[0], lambda f: f.write(text.encode()))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(shown)
    atomic_write(paths[1], lambda f: f.write(buf.getvalue().encode()))
    png = plot(name, rows, out / f"{name}.png")
    if png:
        paths.append(png)
    return paths


QBP_STYLES = {"uniform": ("o", "-"), "triangular": ("s", "--"), "none": ("^", ":")}


def _qbp_label(dither: str) -> str:
    return "QBP, no dither" if dither == "none" else f"QBP, {dither} dither"


def _qbp_axes(ax: Any, ax2: Any, rows: list[Row]) -> None:
    """Left: accuracy vs sparsity as points only (004 Fig. 6.3), each marked with its step.
    Right: accuracy vs QBP step, one line per dither mode (a line never joins two modes).
    The no-QBP run is a grey star on the left and a reference line on the right."""
    dithers = [d for d in QBP_STYLES if any(r["dither"] == d for r in rows)]
    for r in rows:
        if r["dither"] == "-":
            ax.plot([100 * r["mean_sparsity"]], [100 * r["test_accuracy"]], marker="*",
                    markersize=11, color="grey", linestyle="none",
                    label="no QBP (dynamic exponent)")
            ax2.axhline(100 * r["test_accuracy"], color="grey", linestyle="--",
                        linewidth=0.9, label="no QBP (dynamic exponent)")
    for i, dither in enumerate(dithers):
        pts = sorted((r for r in rows if r["dither"] == dither), key=lambda r: r["step_log2"])
        marker, ls = QBP_STYLES[dither]
        color = f"C{i}"
        xs = [100 * r["mean_sparsity"] for r in pts]
        ys = [100 * r["test_accuracy"] for r in pts]
        ax.plot(xs, ys, marker=marker, linestyle="none", color=color, label=_qbp_label(dither))
        for r, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(f"2^{r['step_log2']}", (x, y), fontsize=7, color=color,
                        textcoords="offset points", xytext=(3, 3))
        ax2.plot([r["step_log2"] for r in pts], ys, marker=marker, linestyle=ls, color=color,
                 label=_qbp_label(dither))
    ax.set_xlabel("mean gradient sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs sparsity (label: QBP step)", fontsize=9)
    ax.legend(fontsize=8)
    steps = sorted({r["step_log2"] for r in rows if r["dither"] != "-"})
    ax2.set_xticks(steps)
    ax2.set_xticklabels([f"2^{s}" for s in steps])
    ax2.set_xlabel("QBP step")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title("accuracy vs QBP step, per dither mode", fontsize=9)
    ax2.legend(fontsize=8)


def figure(name: str, rows: list[Row]) -> Any:
    """The experiment's plot as a matplotlib Figure (None without matplotlib)."""
    if name in QBP_EXPERIMENTS:
        return qbp_stats.figure(name, rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if name == "update-modes":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        scheds = sorted({r["schedule"] for r in rows}, key=lambda s: s != "constant")
        labels = [r["mode"] + ("" if r["readout"] == "-" else f"\n({r['readout']})")
                  for r in rows if r["schedule"] == scheds[0]]
        x = np.arange(len(labels))
        width = 0.8 / len(scheds)
        for i, sched in enumerate(scheds):
            pts = [r for r in rows if r["schedule"] == sched]
            ax.bar(x + i * width, [100 * r["test_accuracy"] for r in pts], width,
                   label=f"{sched} lr")
            ax.axhline(100 * pts[0]["float32"], color=f"C{i}", linestyle="--", linewidth=0.8,
                       label=f"float32, {sched} lr")
            ax2.bar(x + i * width, [r["final_loss"] for r in pts], width, label=f"{sched} lr")
        for a in (ax, ax2):
            a.set_xticks(x + width * (len(scheds) - 1) / 2)
            a.set_xticklabels(labels, fontsize=7)
            a.set_xlabel("update mode")
            a.legend(fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("test accuracy")
        ax2.set_ylabel("final training loss (cross-entropy)")
        ax2.set_title("final training loss")
        fig.suptitle(f"update-modes: INT8 update rules, lr 0.01 constant and 0.1 t0/(t0 + t), "
                     f"{rows[0]['epochs']} epochs")
    elif name == "sr-floor":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        ds = [r["delta"] for r in rows]
        panels = (
            (ax, f"SR floor (log-log slope {rows[0]['sr_loglog_slope']:.2f})",
             (("sr_gap", "SR weights"), ("bound_002", "002 bound sqrt(d) Delta G/2"),
              ("lattice_opt_gap", "best lattice point"),
              ("bc_weights_gap", "BC weights (dithered read-out)"),
              ("lazy_gap", "lazy weights"))),
            (ax2, "BC and lazy: the wide copy reaches the optimum",
             (("bc_shadow_gap", "BC shadow copy (mean)"),
              ("bc_nearest_shadow_gap", "BC shadow, nearest read-out"),
              ("lazy_value_gap", "lazy w + residual (mean)"),
              ("float_sgd_gap", "float64 SGD (mean)"))))
        for a, title, curves in panels:
            for key, label in curves:
                a.plot(ds, [max(r[key], 1e-12) for r in rows], marker="o", label=label)
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.set_xlabel("lattice step Delta")
            a.set_ylabel("F - F(w*)")
            a.set_title(title, fontsize=9)
            a.legend(fontsize=7)
        fig.suptitle("sr-floor: least squares on the chip, alpha_t = 1/(mu (t + t0))")
    elif name == "qbp-sweep":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        _qbp_axes(ax, ax2, rows)
        fig.suptitle("qbp-sweep: QBP step and dither vs accuracy and gradient sparsity")
    elif name in TABLES:
        from programs.experiments.tables import figure as table_figure

        fig = table_figure(name, rows, plt)
    elif name == "perceptron":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        r0 = rows[0]
        chip, exact = np.asarray(r0["_chip"]), np.asarray(r0["_exact"])
        steps = np.arange(1, len(exact) + 1)
        for j in range(min(4, exact.shape[1]) if exact.ndim == 2 else 0):
            line, = ax.plot(steps, exact[:, j], linewidth=3, alpha=0.35,
                            label=f"w[{j}] exact")
            ax.plot(steps[: len(chip)], chip[:, j], linestyle="none", marker=".",
                    markersize=4, color=line.get_color(), label=f"w[{j}] chip")
        ax.legend(fontsize=7, ncol=2)
        ax.set_xlabel("update")
        ax.set_ylabel("weight value")
        ax.set_title(f"seed {r0['seed']}: w[0..3], chip (dots) on the exact Perceptron (lines)",
                     fontsize=9)
        for r in rows:
            c, e = np.asarray(r["_chip"]), np.asarray(r["_exact"])
            n = min(len(c), len(e))
            diff = np.abs(c[:n] - e[:n]).max(axis=1) if n else np.zeros(0)
            ax2.plot(np.arange(1, n + 1), diff, marker=".", label=f"seed {r['seed']}"
                     + ("" if r["equal_after_every_update"] else " (DIFFERS)"))
        ax2.set_xlabel("update")
        ax2.set_ylabel("max |w_chip - w_exact|")
        ax2.set_title("difference after every update (000 Theorem 2: zero)", fontsize=9)
        ax2.legend(fontsize=8)
        fig.suptitle("perceptron: the chip's quantized Perceptron equals the exact one")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.set_title(name)
        if name == "lazy-update":
            lrs = [r["lr"] for r in rows]
            for key in ("float32", "float32_qbp", "int8_lazy", "int8_plain"):
                ax.plot(lrs, [100 * r[key] for r in rows], marker="o", label=key)
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("test accuracy (%)")
            ax.legend()
        elif name == "classifier-width":
            for classes in sorted({r["classes"] for r in rows}):
                pts = [r for r in rows if r["classes"] == classes]
                ax.plot([r["classifier_bits"] for r in pts],
                        [r["roundoff_mean_abs"] for r in pts], marker="o",
                        label=f"{classes} classes")
            ax.axhline(rows[0]["alpha"], color="grey", linestyle="--", label="alpha")
            ax.set_yscale("log")
            ax.set_xlabel("classifier width (bits)")
            ax.set_ylabel("mean |round-off sum of dL/ds|")
            ax.legend()
    fig.tight_layout()
    return fig


def plot(name: str, rows: list[Row], path: Path) -> Path | None:
    """Write :func:`figure` to ``path``; None without matplotlib."""
    fig = figure(name, rows)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    try:
        img = io.BytesIO()
        fig.savefig(img, dpi=120, format="png")
    finally:
        plt.close(fig)
    atomic_write(path, lambda f: f.write(img.getvalue()))
    return path


def run_experiment(name: str, cfg: Config, out: Path, quick: bool = False,
                   note: Note = _silent, base: ModelSpec | None = None,
                   data: str | None = None, epochs: int | None = None) -> list[Row]:
    """Run one experiment; ``note(what, total)`` is told what each part is before it starts
    and how many parts there are. ``base`` is the model every run starts from (default: the
    digits MLP); the keys an experiment varies are set on top of it. ``data`` (an MNIST-format
    directory) and ``epochs`` are for the tables of ``tables.py``, which fix their own
    networks."""
    if name in FIXED_NETWORK:
        if base is not None and base != ModelSpec():
            from emulator.errors import UsageError

            raise UsageError("the network and training of this table are fixed: model. keys "
                             "do not apply (hw. keys do)", name)
        rows = FIXED_NETWORK[name](cfg, quick, note, data=data, epochs=epochs)
    else:
        if data is not None or epochs is not None:
            from emulator.errors import UsageError

            raise UsageError("--data and --epochs are for lenet-lazy, qbp-table, "
                             "qbp-error-stats and qbp-meprop", name)
        rows = EXPERIMENTS[name](cfg, quick, note, base)
    write_outputs(name, rows, out)
    return rows
