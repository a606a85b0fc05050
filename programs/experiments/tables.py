"""The papers' headline tables on an MNIST-format dataset (``--data DIR``), 3 seeds each:

* ``lenet-lazy``: 001 Table 1's MNIST row, LeNet trained in FP32 (the float32 reference), INT8
  with plain rounding updates, and INT8 with the lazy update;
* ``qbp-table``: 004 Table 6.1, 784-500-500-10 trained without QBP and with QBP (uniform
  dither) at several steps, accuracy and gradient sparsity averaged over layers and iterations.

The papers' numbers are for MNIST; the tables print them beside whatever dataset was given.
``quick`` runs one seed for one epoch (tests use it on tiny generated data).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.errors import UsageError
from programs.compiler.spec import ModelSpec, spec_from_dict, with_data, with_overrides
from programs.host.datasets import Dataset, load_for
from programs.host.driver import ChipTrainer
from programs.host.float_ref import train_float

Row = dict[str, Any]
Note = Callable[[str, int], None]  # note(what the next part is, number of parts in all)

# configs/lenet.yaml (a test keeps the two equal)
LENET_LAYERS: list[dict[str, Any]] = [
    {"kind": "input", "shape": [1, 28, 28]},
    {"kind": "conv", "filters": 20, "kernel": 5, "bias": True},
    {"kind": "maxpool", "window": 2},
    {"kind": "conv", "filters": 50, "kernel": 5, "bias": True},
    {"kind": "maxpool", "window": 2},
    {"kind": "flatten"},
    {"kind": "dense", "units": 500, "bias": True},
    {"kind": "dense", "units": 10, "bias": True},
]
LENET_SCRATCHPAD, LENET_ACC_ENTRIES = 2 << 20, 1 << 20  # configs/lenet_chip.yaml
SEEDS = (0, 1, 2)

PAPER_001_MNIST = {"FP32": 99.10, "INT8": 95.28, "INT8 + lazy": 99.24}
PAPER_004_MNIST = {"bp": (98.13, 0.133, None), "qbp": (98.14, 0.156, 99.15)}  # Δ = 1


def lenet_spec(epochs: int) -> ModelSpec:
    return spec_from_dict({
        "name": "lenet", "layers": LENET_LAYERS, "batch_size": 64, "epochs": epochs,
        "qbp": {"step_log2": None}, "update": {"mode": "lazy", "lr": 0.01, "momentum": 0.9}})


def lenet_hardware(cfg: Config) -> Config:
    """``cfg`` with at least configs/lenet_chip.yaml's scratchpad and accumulator."""
    mem = dataclasses.replace(cfg.memory, scratchpad_bytes=max(cfg.memory.scratchpad_bytes,
                                                               LENET_SCRATCHPAD))
    acc = dataclasses.replace(cfg.accumulator, entries=max(cfg.accumulator.entries,
                                                           LENET_ACC_ENTRIES))
    return dataclasses.replace(cfg, memory=mem, accumulator=acc)


def mlp_spec(epochs: int) -> ModelSpec:
    """004's network (784-500-500-10, batch 10), SGD with the lazy update, 5,000 of the 60,000
    training images held out for validation (test accuracy at the best-validation epoch)."""
    return spec_from_dict({
        "name": "mlp-784-500-500-10", "layers": [784, 500, 500, 10], "batch_size": 10,
        "epochs": epochs, "validation": round(5000 / 60000, 6),
        "update": {"mode": "lazy", "lr": 0.1}})


def _need_data(data: str | None, name: str) -> str:
    if not data:
        raise UsageError(f"{name} trains on an MNIST-format directory: give --data DIR", name)
    if not Path(data).is_dir():
        raise UsageError("not a directory", f"--data {data}")
    return data


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.array(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _chip(spec: ModelSpec, cfg: Config, data: Dataset) -> tuple[float, float, ChipTrainer]:
    tr = ChipTrainer(spec, cfg, data)
    hist = [tr.train_epoch() for _ in range(spec.epochs)]
    return tr.test_accuracy(), float(np.mean([h.mean_sparsity for h in hist])), tr


def lenet_lazy(cfg: Config, quick: bool, note: Note, data: str | None = None,
               epochs: int | None = None) -> list[Row]:
    """001 Table 1 (MNIST row): LeNet (conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2,
    dense 500, dense 10; biases; batch 64, lr 0.01, momentum 0.9) trained in FP32 (the float32
    reference), in INT8 with plain rounding updates (INT8 momentum) and in INT8 with the lazy
    update; dz~ is INT8 with a dynamic exponent (no QBP). Test accuracy (%) per seed, mean and
    sample standard deviation, beside the paper's MNIST numbers (its dataset may differ from
    the one given)."""
    path = _need_data(data, "lenet-lazy")
    seeds = SEEDS[:1] if quick else SEEDS
    base = with_data(lenet_spec(epochs or (1 if quick else 3)), path)
    hw = lenet_hardware(cfg)
    ds = load_for(base)
    acc: dict[str, list[float]] = {k: [] for k in PAPER_001_MNIST}
    secs: dict[str, float] = dict.fromkeys(PAPER_001_MNIST, 0.0)
    for seed in seeds:
        spec = with_overrides(base, seed=seed)
        for variant, mode in (("INT8 + lazy", "lazy"), ("INT8", "plain")):
            note(f"seed {seed}: {variant}", 3 * len(seeds))
            t = time.perf_counter()
            a, _, tr = _chip(with_overrides(spec, **{"update.mode": mode}), hw, ds)
            secs[variant] += time.perf_counter() - t
            acc[variant].append(100 * a)
        note(f"seed {seed}: FP32", 3 * len(seeds))
        t = time.perf_counter()
        acc["FP32"].append(100 * train_float(spec, ds, tr.float_init()).test_accuracy)
        secs["FP32"] += time.perf_counter() - t
    rows = []
    for variant, paper in PAPER_001_MNIST.items():
        mean, std = _stats(acc[variant])
        row: Row = {"variant": variant, "paper_001_mnist": paper}
        row.update({f"seed_{s}": v for s, v in zip(seeds, acc[variant], strict=True)})
        row.update({"mean": mean, "std": std, "epochs": base.epochs, "dataset": ds.name,
                    "seconds_per_run": secs[variant] / len(seeds)})
        rows.append(row)
    return rows


def qbp_table(cfg: Config, quick: bool, note: Note, data: str | None = None,
              epochs: int | None = None) -> list[Row]:
    """004 Table 6.1: a 784-500-500-10 MLP (batch 10, SGD with the lazy update, lr 0.1; test
    accuracy at the best of the epochs on 5,000 held-out training images) trained as float32
    back propagation, on the chip without QBP (dz~ INT8 with a dynamic exponent, nearest), on
    the chip with QBP and uniform dither at steps 2^s, and in float32 with the same QBP (what
    QBP does apart from INT8); accuracy (%) and the sparsity of dz~ (%, averaged
    over layers and iterations) over 3 seeds (mean and sample standard deviation), beside the
    paper's MNIST numbers (Adam; BP 98.13 +- 0.133, QBP-UD step 1: 98.14 +- 0.156 at 99.15 +-
    0.029 % sparsity)."""
    path = _need_data(data, "qbp-table")
    seeds = SEEDS[:1] if quick else SEEDS
    steps = (0,) if quick else (-2, -1, 0, 1)
    base = with_data(mlp_spec(epochs or (1 if quick else 5)), path)
    ds = load_for(base)
    variants: list[tuple[str, int | None, str | None]] = [("BP (float32)", None, "float"),
                                                           ("chip, no QBP", None, None)]
    variants += [(f"QBP-UD step 2^{s}", s, None) for s in steps]
    variants += [(f"float32 + QBP-UD step 2^{s}", s, "float") for s in steps]
    res: dict[str, tuple[list[float], list[float]]] = {v[0]: ([], []) for v in variants}
    for seed in seeds:
        spec = with_overrides(base, seed=seed)
        tr = None
        for name, step, kind in variants:
            if kind == "float":
                continue
            note(f"seed {seed}: {name}", len(variants) * len(seeds))
            a, sp, tr = _chip(with_overrides(spec, **{"qbp.step_log2": step,
                                                      "qbp.dither": "uniform"}), cfg, ds)
            res[name][0].append(100 * a)
            res[name][1].append(100 * sp)
        assert tr is not None
        for name, step, kind in variants:
            if kind != "float":
                continue
            note(f"seed {seed}: {name}", len(variants) * len(seeds))
            fspec = with_overrides(spec, **{"qbp.step_log2": step, "qbp.dither": "uniform"})
            fl = train_float(fspec, ds, tr.float_init(), qbp=step is not None)
            res[name][0].append(100 * fl.test_accuracy)
            if fl.sparsity:
                res[name][1].append(100 * float(np.mean(fl.sparsity)))
    rows = []
    for name, step, _kind in variants:
        accs, sps = res[name]
        am, asd = _stats(accs)
        paper = PAPER_004_MNIST["bp"] if name == "BP (float32)" else (
            PAPER_004_MNIST["qbp"] if step == 0 else None)
        row: Row = {"variant": name, "step": "-" if step is None else f"2^{step}"}
        row.update({f"acc_seed_{s}": v for s, v in zip(seeds, accs, strict=True)})
        row.update({"accuracy_mean": am, "accuracy_std": asd})
        if sps:
            sm, ssd = _stats(sps)
            row.update({"sparsity_mean": sm, "sparsity_std": ssd})
        else:
            row.update({"sparsity_mean": math.nan, "sparsity_std": math.nan})
        row.update({"paper_004_accuracy": paper[0] if paper else math.nan,
                    "paper_004_sparsity": paper[2] if paper and paper[2] else math.nan,
                    "epochs": base.epochs, "dataset": ds.name})
        rows.append(row)
    return rows


TABLES = {"lenet-lazy": lenet_lazy, "qbp-table": qbp_table}


def figure(name: str, rows: list[Row], plt: Any) -> Any:
    """The table's plot beside the paper's MNIST numbers (``plt``: matplotlib.pyplot)."""
    runs = f"{rows[0]['dataset']}, {rows[0]['epochs']} epochs"
    if name == "lenet-lazy":
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["mean"] for r in rows], 0.4, yerr=[r["std"] for r in rows],
               capsize=4, label=f"lpemu ({runs}; mean, s.d. of seeds)")
        ax.bar(xs + 0.2, [r["paper_001_mnist"] for r in rows], 0.4, color="lightgrey",
               label="001 Table 1 (MNIST)")
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"{r['mean']:.2f}", (x - 0.2, r["mean"]), ha="center", fontsize=8,
                        textcoords="offset points", xytext=(0, 6))
        ax.set_xticks(xs, [r["variant"] for r in rows])
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(min(50.0, min(r["mean"] for r in rows) - 10), 100)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("lenet-lazy: LeNet in FP32, INT8 and INT8 + lazy update")
        return fig
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if math.isnan(r["sparsity_mean"]):  # float32 back propagation: no dz~
            ax.axhline(r["accuracy_mean"], color="black", linestyle="--", linewidth=0.9,
                       label=f"{r['variant']} ({runs})")
            continue
        ax.errorbar([r["sparsity_mean"]], [r["accuracy_mean"]], xerr=[r["sparsity_std"]],
                    yerr=[r["accuracy_std"]], marker="o", capsize=3, linestyle="none",
                    label=r["variant"])
    ax.plot([PAPER_004_MNIST["qbp"][2]], [PAPER_004_MNIST["qbp"][0]], marker="*",
            markersize=12, color="grey", linestyle="none",
            label="004 Table 6.1, QBP-UD step 1 (MNIST)")
    ax.axhline(PAPER_004_MNIST["bp"][0], color="grey", linestyle=":", linewidth=0.9,
               label="004 Table 6.1, BP (MNIST)")
    ax.set_xlabel("mean sparsity of dz~ (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("qbp-table: 784-500-500-10 with and without QBP (uniform dither)")
    return fig
