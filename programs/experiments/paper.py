"""``lpemu experiment NAME``: reproduce the source papers' claims on the emulator.

Each experiment trains on the chip (and, where relevant, with the float32 reference), writes a
markdown table and a CSV to ``OUT/NAME.md`` / ``OUT/NAME.csv`` and, when matplotlib is installed
(``pip install lpemu[plot]``), a PNG plot. ``quick=True`` shrinks the sweep for tests.
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
Note = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def lazy_update(cfg: Config, quick: bool, note: Note = _silent,
                base: ModelSpec | None = None) -> list[Row]:
    """Float32 reference vs INT8 plain vs INT8 lazy on digits, over learning rates (001 sec. 2)."""
    base = base or ModelSpec()
    data = digits(base.data_seed)
    rows = []
    for lr in (0.01, 0.02) if quick else (0.01, 0.02, 0.05, 0.1):
        spec = with_overrides(base, **{"update.lr": lr})
        note(f"lr {lr}: INT8 lazy, INT8 plain, float32")
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
    note("no QBP")
    no_qbp = chip_run(with_overrides(base, **{"qbp.step_log2": None}), cfg, data)
    rows = [{"step_log2": "none (dynamic)", "dither": "-", "test_accuracy":
             no_qbp["test_accuracy"], "mean_sparsity": no_qbp["mean_sparsity"],
             "final_loss": no_qbp["final_loss"]}]
    steps = (-3, -1) if quick else (-5, -4, -3, -2, -1, 0, 1)
    dithers = ("uniform", "none") if quick else ("uniform", "triangular", "none")
    for step in steps:
        for dither in dithers:
            note(f"step 2^{step}, {dither} dither")
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
    for classes in (10, 100) if quick else (10, 30, 100):
        data = synthetic(classes=classes, features=64, seed=0)
        for bits in (8, 16) if quick else (6, 8, 10, 12, 16):
            spec = classifier_spec(classes, bits, epochs=5 if quick else 10, base=base)
            note(f"{classes} classes, INT{bits} classifier")
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
    for seed in range(2 if quick else 5):
        note(f"seed {seed}")
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
                     "cycles": run.machine.summary().totals["cycles"]})
    return rows


def update_modes(cfg: Config, quick: bool, note: Note = _silent,
                 base: ModelSpec | None = None) -> list[Row]:
    """Stochastic rounding vs shadow copy vs lazy vs plain at a small learning rate (002)."""
    base = with_overrides(base or ModelSpec(), **{"update.lr": 0.01})
    data = digits(base.data_seed)
    rows = []
    ref = None
    for mode in ("lazy", "shadow", "stochastic", "plain"):
        note(f"{mode} update")
        r = chip_run(with_overrides(base, **{"update.mode": mode}), cfg, data)
        if ref is None:
            ref = float_run(base, data, r["trainer"])
        rows.append({"mode": mode, "test_accuracy": r["test_accuracy"], "float32": ref,
                     "final_loss": r["final_loss"]})
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


def write_outputs(name: str, rows: list[Row], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    md = [f"# {name}", "", (EXPERIMENTS[name].__doc__ or "").strip(), "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    paths = [out / f"{name}.md", out / f"{name}.csv"]
    paths[0].write_text("\n".join(md) + "\n")
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    png = plot(name, rows, out / f"{name}.png")
    if png:
        paths.append(png)
    return paths


def plot(name: str, rows: list[Row], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if name == "lazy-update":
        lrs = [r["lr"] for r in rows]
        for key in ("float32", "int8_lazy", "int8_plain"):
            ax.plot(lrs, [100 * r[key] for r in rows], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("test accuracy (%)")
    elif name == "qbp-sweep":
        for dither in sorted({r["dither"] for r in rows}):
            pts = [r for r in rows if r["dither"] == dither]
            xs = [100 * r["mean_sparsity"] for r in pts]
            ys = [100 * r["test_accuracy"] for r in pts]
            ax.plot(xs, ys, marker="o", linestyle=":", linewidth=0.8,
                    label="no QBP" if dither == "-" else f"{dither} dither")
            for r, x, y in zip(pts, xs, ys, strict=True):
                if dither != "-":
                    ax.annotate(f"2^{r['step_log2']}", (x, y), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("mean gradient sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
    elif name == "classifier-width":
        for classes in sorted({r["classes"] for r in rows}):
            pts = [r for r in rows if r["classes"] == classes]
            ax.plot([r["classifier_bits"] for r in pts], [r["roundoff_mean_abs"] for r in pts],
                    marker="o", label=f"{classes} classes")
        ax.axhline(rows[0]["alpha"], color="grey", linestyle="--", label="alpha")
        ax.set_yscale("log")
        ax.set_xlabel("classifier width (bits)")
        ax.set_ylabel("mean |round-off sum of dL/ds|")
    else:
        keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
        labels = [str(list(r.values())[0]) for r in rows]
        for k in keys[:3]:
            ax.bar(labels, [r[k] for r in rows], label=k, alpha=0.6)
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_experiment(name: str, cfg: Config, out: Path, quick: bool = False,
                   note: Note = _silent, base: ModelSpec | None = None) -> list[Row]:
    """Run one experiment; ``note`` is told what each run is before it starts. ``base`` is the
    model every run starts from (default: the digits MLP); the keys an experiment varies are
    set on top of it."""
    rows = EXPERIMENTS[name](cfg, quick, note, base)
    write_outputs(name, rows, out)
    return rows


