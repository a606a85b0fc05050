"""004's QBP experiments on the chip beyond the tables: the error statistics of the weight
gradients during training (sec. 6.2, 6.4: Figs. 6.1, 6.2, 6.4, 6.6) and the accuracy-sparsity
curves of QBP and meProp (sec. 6.3: Figs. 6.3, 6.5).

``qbp-error-stats``: each variant trains an MLP on the chip; at chosen iterations
(:class:`programs.host.probe.StepProbe`, training itself unchanged) K extra backward passes of
the same batch with fresh dither are compared with the exact back propagation computed on the
host from the chip's forward pass (activations, weights, classifier gradient: integers, so the
exact gradients are exact). Per weight: the error mean and variance over the K passes; per layer
their mean, variance and maximum ("second-order statistics", sec. 6.2), the variance eq. 5.14
predicts through all layers (eq. 5.15; the quantization noise of each element from the passes:
``f (1 - f) Delta^2`` for uniform dither given its input, ``Delta^2 / 4`` for triangular, on
every element in 004's order ``qbp.order: mask_first``, where a masked zero's ``Q(0)`` is -1, 0
or +1 steps, and on the ReLU's ones only in ``quantize_first``), the
bound of eq. 5.17-5.18 and the fraction of weights whose measured variance exceeds the bound
(and, for the adaptive step, sigma_max).

``qbp-meprop``: accuracy against the sparsity of dz~ for QBP with uniform, triangular and no
dither over steps, and meProp over k, each on the chip and in the float reference
(programs/host/float_qbp.py), beside float back propagation.

Without ``--data`` both run on the digits (64-100-100-10); with an MNIST-format directory on
004's 784-500-500-10 (batch 10). SGD with the lazy update, lr 0.1 (004 used SGD lr 1e-3 for the
statistics and Adam for Fig. 6.5).
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
from programs.host.datasets import Dataset, digits, load_for
from programs.host.driver import ChipTrainer
from programs.host.float_ref import train_float
from programs.host.probe import ForwardState, StepProbe

Row = dict[str, Any]
Note = Callable[[str, int], None]

PAPER_004 = {"table_6_1": {"BP": 98.13, "QBP-UD (step 1)": 98.14, "meProp (k 50)": 97.89},
             "sparsity_6_1": {"QBP-UD (step 1)": 99.15, "meProp (k 50)": 94.11},
             "over_sigma_percent": 0.4}


def base_spec(data: str | None, epochs: int) -> ModelSpec:
    """The network: 004's 784-500-500-10 on an MNIST-format directory, else the digits MLP."""
    d = {"name": "qbp-mlp", "batch_size": 10, "epochs": epochs,
         "update": {"mode": "lazy", "lr": 0.1}}
    if data is None:
        return spec_from_dict({**d, "layers": [64, 100, 100, 10]})
    if not Path(data).is_dir():
        raise UsageError("not a directory", f"--data {data}")
    return with_data(spec_from_dict({**d, "layers": [784, 500, 500, 10]}), data)


def _dataset(spec: ModelSpec, data: str | None) -> Dataset:
    return digits(spec.data_seed) if data is None else load_for(spec)


# ------------------------------------------------------------------------------ exact BP
def exact_grads(fs: ForwardState, layers: list, b: int) -> dict[int, np.ndarray]:
    """The mean-loss weight gradients of exact back propagation from the chip's forward pass
    (integers and exponents: int64 products, exact at these sizes, scaled at the end)."""
    dz = fs.g.T.astype(np.int64)  # [C, B] per-sample dL/ds
    dz_exp = fs.g_exp
    out = {}
    for x in reversed(layers):
        a, ea = fs.acts[x.pos - 1]
        out[x.pos] = (a.astype(np.int64) @ dz.T).astype(np.float64) * 2.0 ** (ea + dz_exp) / b
        if x.widx == 1:
            break
        w, ew = fs.weights[x.pos]
        da = w.astype(np.int64) @ dz  # [n_in, B]
        dz, dz_exp = da * (fs.acts[x.pos - 1][0] > 0), dz_exp + ew
    return out


def _real(v: np.ndarray, mant: int, e: int) -> np.ndarray:
    return v.astype(np.float64) * (mant / 2**15) * 2.0**e


def probe_stats(tr: ChipTrainer, passes: int, seed: int, sigma: float | None,
                keep_hist: bool = False) -> list[Row]:
    """One probe point: K backward passes of the next batch vs exact BP, per weight layer."""
    spec = tr.spec
    b = spec.batch_size
    dither = spec.qbp.dither
    layers = list(tr.layout.net.weight_layers)
    pr = StepProbe(tr)
    fs = pr.forward()
    exact = exact_grads(fs, layers, b)
    s1 = {x.pos: np.zeros(x.wshape) for x in layers}
    s2 = {x.pos: np.zeros(x.wshape) for x in layers}
    eq = {x.pos: np.zeros((x.units, b)) for x in layers}  # E[(delta_q dz)^2] per element
    zeros = dict.fromkeys(s1, 0.0)
    step: dict[int, float] = {}
    for k in range(passes):
        res = pr.backward(seed=(seed * 1_000_003 + k * 7919 + 1) & ((1 << 63) - 1))
        for x in layers:
            p = res[x.pos]
            ea = fs.acts[x.pos - 1][1]
            e = _real(p.dw, p.dz_mant, ea + p.dz_exp) / b - exact[x.pos]
            s1[x.pos] += e
            s2[x.pos] += e * e
            d = p.dz_mant * 2.0 ** (p.dz_exp - 15)
            step[x.pos] = d
            xin = _real(p.x, p.x_mant, p.x_exp)
            top = x is layers[-1]
            xin = xin.T if top else xin  # [n_out, B]
            f = np.ones_like(xin) if top else (fs.acts[x.pos][0] > 0) * 1.0
            if dither == "uniform":
                r = xin / d - np.floor(xin / d)
                eq[x.pos] += f * r * (1 - r) * d * d
            elif dither == "triangular":  # in 004's order a masked element's Q(0) is noisy too
                eq[x.pos] += (f if spec.qbp.order == "quantize_first" else 1.0) * d * d / 4
            zeros[x.pos] += np.count_nonzero(p.dz == 0) / p.dz.size
    rows = []
    v_calc = v_bound = None
    for x in reversed(layers):
        top = x is layers[-1]
        f = np.ones((x.units, b)) if top else (fs.acts[x.pos][0] > 0) * 1.0
        ai, ea = fs.acts[x.pos - 1]
        a2 = (ai.astype(np.float64) * 2.0**ea) ** 2
        q = eq[x.pos] / passes
        d = step[x.pos]
        u_calc = f * f * (0 if v_calc is None else v_calc) + q  # eq. 5.14 / 5.15
        u_bound = f * f * (0 if v_bound is None else v_bound) + d * d / 4  # eq. 5.17 / 5.18
        calc = a2 @ u_calc.T / (b * b)
        bound = a2 @ u_bound.T / (b * b)
        w, ew = fs.weights[x.pos]
        w2 = (w.astype(np.float64) * 2.0**ew) ** 2
        v_calc, v_bound = w2 @ u_calc, w2 @ u_bound
        mean = s1[x.pos] / passes
        var = (s2[x.pos] - passes * mean * mean) / (passes - 1)
        var = np.maximum(var, 0.0)
        row: Row = {
            "layer": f"dW{x.widx}", "step": d,
            "err_mean_mean": float(np.abs(mean).mean()), "err_mean_var": float(mean.var()),
            "err_mean_max": float(np.abs(mean).max()),
            "err_var_mean": float(var.mean()), "err_var_var": float(var.var()),
            "err_var_max": float(var.max()),
            "calc_var_mean": float(calc.mean()) if dither != "none" else math.nan,
            "calc_var_max": float(calc.max()) if dither != "none" else math.nan,
            "measured_over_calc": float(var.mean() / calc.mean())
            if dither != "none" and calc.mean() > 0 else math.nan,
            "bound_mean": float(bound.mean()), "bound_max": float(bound.max()),
            "frac_over_bound": float((var > bound).mean()),
            "sigma_max": sigma if sigma is not None else math.nan,
            "frac_over_sigma": float((var > sigma).mean()) if sigma is not None else math.nan,
            "sparsity": zeros[x.pos] / passes,
        }
        if keep_hist:
            row["_hist"] = (mean.ravel().copy(), var.ravel().copy())
        rows.append(row)
    return rows[::-1]


# ------------------------------------------------------------------------------ variants
ERROR_VARIANTS: list[tuple[str, dict[str, Any], float | None]] = [
    ("QBP-UD 0.1", {"qbp.step": 0.1, "qbp.dither": "uniform"}, None),
    ("QBP-TD 0.1", {"qbp.step": 0.1, "qbp.dither": "triangular"}, None),
    ("QBP-ND 0.1", {"qbp.step": 0.1, "qbp.dither": "none"}, None),
    ("QBP-UD 0.33", {"qbp.step": 0.33, "qbp.dither": "uniform"}, None),
    ("QBP-ND 0.33", {"qbp.step": 0.33, "qbp.dither": "none"}, None),
    ("QBP-UD 1", {"qbp.step": 1.0, "qbp.dither": "uniform"}, None),
    ("QBP-ND 1", {"qbp.step": 1.0, "qbp.dither": "none"}, None),
    ("QBP-UD adaptive", {"qbp.adapt": {"mode": "variance", "sigma_max": 0.01},
                         "qbp.dither": "uniform"}, 0.01),
]


def error_stats(cfg: Config, quick: bool, note: Note, data: str | None = None,
                epochs: int | None = None, passes: int | None = None,
                probes: int | None = None) -> list[Row]:
    """004 sec. 6.2/6.4: weight-gradient error statistics of QBP during training on the chip
    (K extra backward passes with fresh dither per probe point vs exact back propagation), per
    layer: mean, variance and maximum of the error means and variances, eq. 5.14's prediction
    through all layers, eq. 5.17's bound and the fraction of weights above it (and above
    sigma_max = 0.01 for the adaptive step; 004 sec. 6.4: below 0.4%)."""
    ep = epochs or 1
    k = passes or (6 if quick else 50)
    npr = probes or (2 if quick else 8)
    base = base_spec(data, ep)
    ds = _dataset(base, data)
    variants = [ERROR_VARIANTS[0], ERROR_VARIANTS[-1]] if quick else ERROR_VARIANTS
    rows: list[Row] = []
    for vi, (name, ov, sigma) in enumerate(variants):
        note(f"{name}: training with {npr} probe points x {k} passes", len(variants))
        spec = with_overrides(base, **ov)
        tr = ChipTrainer(spec, cfg, ds)
        # quick: the first 24 training steps only (the tests)
        total = min(ep * tr.nb_train, 24) if quick else ep * tr.nb_train
        points = sorted({min(total - 1, round(total * i / npr)) for i in range(npr)})
        t0 = time.perf_counter()
        loop = tr.program.labels["train.loop"]
        for epoch in range(ep):
            tr._begin_epoch()
            arrived = 0
            for g in (p for p in points if p // tr.nb_train == epoch):
                b = g % tr.nb_train
                tr._run(break_pc=loop, break_after=b + 1 - arrived)
                arrived = b + 1
                last = g == points[-1]
                for r in probe_stats(tr, k, seed=spec.seed * 7 + g + 1000 * vi, sigma=sigma,
                                     keep_hist=last):
                    rows.append({"variant": name, "dither": spec.qbp.dither,
                                 "iteration": g, **r, "passes": k,
                                 "dataset": ds.name})
            if total < (epoch + 1) * tr.nb_train:  # quick: stop here
                tr._run(break_pc=loop, break_after=total - epoch * tr.nb_train + 1 - arrived)
                break
            tr.continue_epoch()
        acc = tr.evaluate()
        for r in rows:
            if r["variant"] == name:
                r["test_accuracy"] = acc
                r["seconds"] = time.perf_counter() - t0
    return rows


# ------------------------------------------------------------------------------ Fig. 6.5
def meprop_points(quick: bool, wide: bool) -> list[tuple[str, str, dict[str, Any]]]:
    steps = (0.33, 1.0) if quick else (0.1, 0.33, 1.0, 3.3)
    ks = (10,) if quick else ((5, 10, 20, 50, 100) if wide else (2, 5, 10, 20, 50))
    pts: list[tuple[str, str, dict[str, Any]]] = [("BP", "-", {"qbp.step_log2": None})]
    for dither, tag in (("uniform", "QBP-UD"), ("triangular", "QBP-TD"), ("none", "QBP-ND")):
        if quick and dither != "uniform":
            continue
        for s in steps:
            pts.append((tag, f"step {s}", {"qbp.step": s, "qbp.dither": dither}))
    for k in ks:
        pts.append(("meProp", f"k {k}", {"qbp.step_log2": None, "qbp.meprop_k": k}))
    return pts


def meprop_curves(cfg: Config, quick: bool, note: Note, data: str | None = None,
                  epochs: int | None = None) -> list[Row]:
    """004 Fig. 6.3/6.5: test accuracy against the sparsity of dz~ (averaged over layers and
    iterations) for QBP with uniform (UD), triangular (TD) and no dither (ND) over steps and
    for meProp over k, on the chip and in the float reference with the same quantizer, beside
    back propagation (BP: the chip without QBP, dz~ INT8 with a dynamic exponent; float32)."""
    ep = epochs or (1 if quick else (3 if data else 10))
    base = base_spec(data, ep)
    ds = _dataset(base, data)
    if quick:  # the tests: 300 training samples
        ds = dataclasses.replace(ds, x_train=ds.x_train[:300], y_train=ds.y_train[:300])
    pts = meprop_points(quick, data is not None)
    rows = []
    for i, (method, hyper, ov) in enumerate(pts):
        note(f"{method} {hyper}: chip, float", len(pts))
        spec = with_overrides(base, **ov)
        t0 = time.perf_counter()
        tr = ChipTrainer(spec, cfg, ds)
        hist = [tr.train_epoch() for _ in range(spec.epochs)]
        chip_acc = tr.evaluate()
        chip_sp = float(np.mean([h.mean_sparsity for h in hist]))
        t1 = time.perf_counter()
        fl = train_float(spec, ds, tr.float_init(), qbp=method != "BP")
        rows.append({
            "method": method, "hyper": hyper,
            "chip_accuracy": chip_acc, "chip_sparsity": chip_sp if method != "BP" else math.nan,
            "float_accuracy": fl.test_accuracy,
            "float_sparsity": float(np.mean(fl.sparsity)) if fl.sparsity else math.nan,
            "epochs": ep, "dataset": ds.name, "chip_seconds": t1 - t0,
            "float_seconds": time.perf_counter() - t1, "_order": i})
    return rows


def summary(rows: list[Row]) -> list[Row]:
    """Per variant and layer, over the probe points: the mean error variance, eq. 5.14's
    ratio, the largest fractions of weights above the bound and above sigma_max."""
    out = []
    keys = sorted({(r["variant"], r["layer"]) for r in rows},
                  key=lambda k: ([v[0] for v in ERROR_VARIANTS].index(k[0])
                                 if k[0] in [v[0] for v in ERROR_VARIANTS] else 99, k[1]))
    for v, layer in keys:
        rs = [r for r in rows if r["variant"] == v and r["layer"] == layer]

        def agg(key: str, fn: Callable = np.mean, rs: list[Row] = rs) -> float:
            vals = [r[key] for r in rs if not math.isnan(r[key])]
            return float(fn(vals)) if vals else math.nan

        out.append({"variant": v, "layer": layer, "probes": len(rs),
                    "step_mean": agg("step"), "err_mean_mean": agg("err_mean_mean"),
                    "err_var_mean": agg("err_var_mean"),
                    "measured_over_calc": agg("measured_over_calc"),
                    "frac_over_bound_max": agg("frac_over_bound", max),
                    "frac_over_sigma_max": agg("frac_over_sigma", max),
                    "sparsity": agg("sparsity"), "test_accuracy": rs[0]["test_accuracy"]})
    return out


QBP_EXPERIMENTS: dict[str, Callable[..., list[Row]]] = {
    "qbp-error-stats": error_stats,
    "qbp-meprop": meprop_curves,
}


# ------------------------------------------------------------------------------ figures
def _series(rows: list[Row], variant: str, layer: str, key: str) -> tuple[list, list]:
    pts = sorted((r["iteration"], r[key]) for r in rows
                 if r["variant"] == variant and r["layer"] == layer)
    return [p[0] for p in pts], [p[1] for p in pts]


def figure(name: str, rows: list[Row]) -> Any:
    """The experiment's main figure (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if name == "qbp-meprop":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, src in zip(axes, ("chip", "float"), strict=True):
            for j, method in enumerate(("QBP-UD", "QBP-TD", "QBP-ND", "meProp")):
                pts = [r for r in rows if r["method"] == method]
                if not pts:
                    continue
                xs = [100 * r[f"{src}_sparsity"] for r in pts]
                ys = [100 * r[f"{src}_accuracy"] for r in pts]
                ax.plot(xs, ys, marker="os^D"[j], linestyle="-", color=f"C{j}", label=method)
                for r, x, y in zip(pts, xs, ys, strict=True):
                    ax.annotate(r["hyper"].split()[-1], (x, y), fontsize=7, color=f"C{j}",
                                textcoords="offset points", xytext=(3, 3))
            bp = [r for r in rows if r["method"] == "BP"]
            if bp:
                ax.axhline(100 * bp[0][f"{src}_accuracy"], color="grey", linestyle="--",
                           label="BP")
            ax.set_xlabel("mean sparsity of dz~ (%)")
            ax.set_title(f"{src}: accuracy vs sparsity (labels: step or k)", fontsize=9)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("test accuracy (%)")
        fig.suptitle("qbp-meprop: QBP (uniform / triangular / no dither) and meProp "
                     f"({rows[0]['dataset']}; 004 Fig. 6.3, 6.5)")
        fig.tight_layout()
        return fig
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    layer = "dW2"
    variants = {r["variant"] for r in rows}
    ax = axes[0, 0]  # Fig. 6.1: error means, UD vs ND at 0.1
    for v, c in (("QBP-UD 0.1", "C0"), ("QBP-ND 0.1", "C2"), ("QBP-UD adaptive", "C3")):
        if v in variants:
            x, y = _series(rows, v, layer, "err_mean_mean")
            ax.plot(x, y, marker="o", color=c, label=f"{v}: mean |err mean|")
            x, y = _series(rows, v, layer, "err_mean_var")
            ax.plot(x, y, marker=".", linestyle=":", color=c, label=f"{v}: var of err means")
    ax.set_yscale("log")
    ax.set_title(f"{layer} error means (004 Fig. 6.1)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0, 1]  # Fig. 6.2: error variances, calculated vs measured
    for v, c in (("QBP-UD 0.1", "C0"), ("QBP-TD 0.1", "C1"), ("QBP-UD adaptive", "C3")):
        if v in variants:
            for key, ls in (("err_var_max", "-"), ("calc_var_max", "--"), ("bound_max", ":")):
                x, y = _series(rows, v, layer, key)
                ax.plot(x, y, linestyle=ls, color=c, marker=".", label=f"{v}: {key}")
    ax.set_yscale("log")
    ax.set_title(f"{layer} error variances: measured, eq. 5.14, bound 5.17 (Fig. 6.2)",
                 fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0, 2]  # Fig. 6.4: ND vs UD at larger steps
    for v, c in (("QBP-UD 0.33", "C0"), ("QBP-ND 0.33", "C2"), ("QBP-UD 1", "C4"),
                 ("QBP-ND 1", "C5")):
        if v in variants:
            x, y = _series(rows, v, layer, "err_mean_mean")
            ax.plot(x, y, marker="o", color=c, label=f"{v}: mean")
            x, y = _series(rows, v, layer, "err_mean_max")
            ax.plot(x, y, marker=".", linestyle=":", color=c, label=f"{v}: max")
    ax.set_yscale("log")
    ax.set_title(f"{layer} |error means|, no dither vs uniform (Fig. 6.4)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    hist = [r for r in rows if r["variant"] == "QBP-UD adaptive" and "_hist" in r]
    for j, r in enumerate(hist[:3]):  # Fig. 6.6: histograms per layer at the last probe
        ax = axes[1, j]
        mean, var = r["_hist"]
        ax.hist(var, bins=60, color="C3", alpha=0.8, label="error variances")
        ax.axvline(r["sigma_max"], color="black", linestyle="--", label="sigma_max")
        ax.set_yscale("log")
        ax.set_title(f"{r['layer']} at iteration {r['iteration']}: "
                     f"{100 * r['frac_over_sigma']:.3f}% above sigma_max (Fig. 6.6)",
                     fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xlabel("training iteration")
    fig.suptitle(f"qbp-error-stats ({rows[0]['dataset']}, {rows[0]['passes']} passes per "
                 "probe)")
    fig.tight_layout()
    return fig
