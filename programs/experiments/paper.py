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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config
from programs.compiler.spec import ModelSpec, with_overrides
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


def float_run(spec: ModelSpec, data: Dataset, tr: ChipTrainer) -> float:
    return train_float(spec, data, tr.float_init()).test_accuracy


# ------------------------------------------------------------------------------ experiments
Note = Callable[[str, int], None]  # note(what the next part is, number of parts in all)


def _silent(_: str, __: int) -> None:
    pass


def lazy_update(cfg: Config, quick: bool, note: Note = _silent,
                base: ModelSpec | None = None) -> list[Row]:
    """Float32 reference vs INT8 plain vs INT8 lazy on digits, over learning rates (001 sec. 2)."""
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
        rows.append({"lr": lr, "float32": ref, "int8_plain": plain["test_accuracy"],
                     "int8_lazy": lazy["test_accuracy"],
                     "lazy_minus_float": lazy["test_accuracy"] - ref,
                     "plain_minus_float": plain["test_accuracy"] - ref})
    return rows


def qbp_sweep(cfg: Config, quick: bool, note: Note = _silent,
              base: ModelSpec | None = None) -> list[Row]:
    """Accuracy vs gradient sparsity over QBP steps and dither modes (004 Fig. 6.3, Table 6.1)."""
    base = base or ModelSpec()
    data = digits(base.data_seed)
    steps = (-3, -1) if quick else (-5, -4, -3, -2, -1, 0, 1)
    dithers = ("uniform", "none") if quick else ("uniform", "triangular", "none")
    total = 1 + len(steps) * len(dithers)
    note("no QBP", total)
    no_qbp = chip_run(with_overrides(base, **{"qbp.step_log2": None}), cfg, data)
    rows = [{"step_log2": "none (dynamic)", "dither": "-", "test_accuracy":
             no_qbp["test_accuracy"], "mean_sparsity": no_qbp["mean_sparsity"],
             "final_loss": no_qbp["final_loss"]}]
    for step in steps:
        for dither in dithers:
            note(f"step 2^{step}, {dither} dither", total)
            r = chip_run(with_overrides(base, **{"qbp.step_log2": step, "qbp.dither": dither}),
                         cfg, data)
            rows.append({"step_log2": step, "dither": dither,
                         "test_accuracy": r["test_accuracy"],
                         "mean_sparsity": r["mean_sparsity"], "final_loss": r["final_loss"]})
    return rows


def classifier_spec(classes: int, bits: int, epochs: int,
                    base: ModelSpec | None = None) -> ModelSpec:
    return with_overrides(base or ModelSpec(), **{
        "name": f"synthetic-{classes}", "dataset": "synthetic", "layers": [64, 100, classes],
        "bits.classifier": bits, "epochs": epochs, "update.lr": 0.05, "qbp.step_log2": None})


def classifier_width(cfg: Config, quick: bool, note: Note = _silent,
                     base: ModelSpec | None = None) -> list[Row]:
    """Round-off of dL/ds vs classifier width and class count on a synthetic task (001 sec. 3)."""
    rows = []
    class_counts = (10, 100) if quick else (10, 30, 100)
    widths = (8, 16) if quick else (6, 8, 10, 12, 16)
    for classes in class_counts:
        data = synthetic(classes=classes, features=64, seed=0)
        for bits in widths:
            spec = classifier_spec(classes, bits, epochs=5 if quick else 10, base=base)
            note(f"{classes} classes, INT{bits} classifier", len(class_counts) * len(widths))
            r = chip_run(spec, cfg, data)
            rows.append({
                "classes": classes, "classifier_bits": bits,
                "eq5_bound_bits": classifier_bits_bound(classes, spec.classifier_alpha),
                "roundoff_mean": r["roundoff_mean"],
                "roundoff_mean_abs": r["roundoff_mean_abs"],
                "roundoff_max_abs": r["roundoff_max_abs"],
                "alpha": spec.classifier_alpha,
                "lost_components": r["y_zero_fraction"],
                "test_accuracy": r["test_accuracy"],
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
    """Stochastic rounding vs shadow copy vs lazy vs plain at a small learning rate (002)."""
    base = with_overrides(base or ModelSpec(), **{"update.lr": 0.01})
    if quick:
        base = with_overrides(base, epochs=5)
    data = digits(base.data_seed)
    rows = []
    ref = None
    modes = ("lazy", "shadow", "stochastic", "plain")
    for mode in modes:
        note(f"{mode} update", len(modes))
        r = chip_run(with_overrides(base, **{"update.mode": mode}), cfg, data)
        if ref is None:
            ref = float_run(base, data, r["trainer"])
        rows.append({"mode": mode, "epochs": base.epochs, "test_accuracy": r["test_accuracy"],
                     "float32": ref, "final_loss": r["final_loss"]})
    return rows


EXPERIMENTS: dict[str, Callable[..., list[Row]]] = {
    "lazy-update": lazy_update,
    "qbp-sweep": qbp_sweep,
    "classifier-width": classifier_width,
    "perceptron": perceptron,
    "update-modes": update_modes,
}


# ------------------------------------------------------------------------------ output
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def table_rows(rows: list[Row]) -> list[Row]:
    """The rows without their plot-only (``_``) keys: what the tables show."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def write_outputs(name: str, rows: list[Row], out: Path) -> list[Path]:
    """Write ``NAME.md``, ``NAME.csv`` and (with matplotlib) ``NAME.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shown = table_rows(rows)
    cols = list(shown[0])
    md = [f"# {name}", "", (EXPERIMENTS[name].__doc__ or "").strip(), "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in shown]
    paths = [out / f"{name}.md", out / f"{name}.csv"]
    paths[0].write_text("\n".join(md) + "\n")
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(shown)
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if name == "update-modes":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 4))
        modes = [r["mode"] for r in rows]
        ax.bar(modes, [100 * r["test_accuracy"] for r in rows], color="tab:blue")
        ax.axhline(100 * rows[0]["float32"], color="black", linestyle="--",
                   label="float32 reference")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xlabel("update mode")
        ax.set_title("test accuracy")
        ax.legend(fontsize=8, loc="lower left")
        ax2.bar(modes, [r["final_loss"] for r in rows], color="tab:orange")
        ax2.set_ylabel("final training loss (cross-entropy)")
        ax2.set_xlabel("update mode")
        ax2.set_title("final training loss")
        fig.suptitle(f"update-modes: INT8 update rules at lr 0.01, {rows[0]['epochs']} epochs")
    elif name == "qbp-sweep":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        _qbp_axes(ax, ax2, rows)
        fig.suptitle("qbp-sweep: QBP step and dither vs accuracy and gradient sparsity")
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
            for key in ("float32", "int8_lazy", "int8_plain"):
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
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def run_experiment(name: str, cfg: Config, out: Path, quick: bool = False,
                   note: Note = _silent, base: ModelSpec | None = None) -> list[Row]:
    """Run one experiment; ``note(what, total)`` is told what each part is before it starts
    and how many parts there are. ``base`` is the model every run starts from (default: the
    digits MLP); the keys an experiment varies are set on top of it."""
    rows = EXPERIMENTS[name](cfg, quick, note, base)
    write_outputs(name, rows, out)
    return rows
