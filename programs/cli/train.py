"""``lpemu train``: train a model spec on the emulated chip with progress and a counter table."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from emulator.config import Config
from programs.compiler.spec import ModelSpec
from programs.host.datasets import load_for
from programs.host.driver import ChipTrainer, EpochStats, classifier_bits_bound


def classifier_warning(spec: ModelSpec) -> str | None:
    bound = classifier_bits_bound(spec.classes, spec.classifier_alpha)
    if spec.bits.classifier <= bound:
        return (f"classifier width INT{spec.bits.classifier} is below the bound of 001 eq. 5 "
                f"for {spec.classes} classes (alpha = {spec.classifier_alpha}): need more than "
                f"{bound:.2f} bits; small gradient components of dL/ds will be lost")
    return None


def run_training(spec: ModelSpec, cfg: Config, json_out: str | None = None,
                 asm_out: str | None = None, compare_float: bool = True,
                 quiet: bool = False, trace_out: str | None = None,
                 plot_out: str | None = None,
                 trace_limit: int = 1_000_000, checkpoint: str | None = None,
                 checkpoint_every: int = 0, resume: str | None = None) -> dict[str, Any]:
    """Train ``spec`` on the chip with progress and tables. With ``checkpoint`` and
    ``checkpoint_every`` = N, the run is saved every N training steps (a resumable point at
    the firmware's batch-loop head); ``resume`` continues from such a file with the model and
    config stored in it, ending bit-identical to an uninterrupted run."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    con = Console(stderr=False, quiet=quiet)
    if not con.is_terminal:  # files and pipes get the whole table, unwrapped
        con = Console(stderr=False, quiet=quiet, width=160)
    warn = classifier_warning(spec)
    if warn:
        con.print(f"[yellow]warning:[/yellow] {warn}")
    data = load_for(spec)
    if data.features != spec.layers[0] or data.classes != spec.classes:
        from emulator.errors import ConfigError

        shape = "x".join(map(str, data.shape))
        raise ConfigError(f"dataset {data.name} has {data.features} features (input shape "
                          f"{shape}) and {data.classes} classes; layers are {spec.layers}",
                          "layers")
    t0 = time.perf_counter()
    tr = ChipTrainer(spec, cfg, data)
    if resume:
        from emulator import checkpoint as ckpt

        extra = ckpt.restore(resume, tr.m)
        tr.set_host_state(extra.get("host"), resume)
        con.print(f"resumed from {resume}: epoch {tr.epoch}"
                  + (f", step {tr.global_step()}" if tr.in_epoch else ""))
    on_ckpt = None
    if checkpoint and checkpoint_every > 0:
        from emulator import checkpoint as ckpt

        def on_ckpt(t: ChipTrainer) -> None:
            ckpt.save(checkpoint, t.m, {"kind": "lpemu-train", "model": spec.to_dict(),
                                        "config": cfg.to_dict(), "host": t.host_state()})
    if asm_out:
        Path(asm_out).write_text(tr.asm_text)
    tracer = None
    if trace_out:
        from programs.cli.profile import Tracer

        tracer = tr.m.tracer = Tracer(trace_limit)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=con,
        transient=False,
    ) as prog:
        task = prog.add_task(f"training {spec.name}", total=spec.epochs, status="",
                             completed=tr.epoch)
        while tr.epoch < spec.epochs:
            if tr.in_epoch:
                st = tr.continue_epoch(checkpoint_every, on_ckpt)
            else:
                st = tr.train_epoch(checkpoint_every, on_ckpt)
            prog.update(task, advance=1, status=(
                f"loss {st.loss:.3f}  train acc {100 * st.train_accuracy:.1f}%  "
                f"dz sparsity {100 * st.mean_sparsity:.1f}%"))
    history: list[EpochStats] = tr.history
    test_acc = tr.test_accuracy()
    best = tr.best_epoch()
    wall = time.perf_counter() - t0
    summary = tr.m.summary()
    ref = ref_best = None
    if compare_float:
        from programs.host.float_ref import train_float

        fres = train_float(spec, data, tr.float_init())
        ref, ref_best = fres.test_accuracy, fres.best_epoch
    rows = tr.breakdown()
    at = ""
    if best is not None:
        at = (f" at best-validation epoch {best + 1} (validation "
              f"{100 * history[best].validation_accuracy:.2f}%)")
    t = Table(title=f"{spec.name} on the chip: test accuracy {100 * test_acc:.2f}%{at}"
              + (f" (float32 reference {100 * ref:.2f}%"
                 + (f" at its epoch {ref_best + 1}" if ref_best is not None else "") + ")"
                 if ref is not None else ""))
    for col in ("layer", "phase", "cycles", "macs", "macs_skipped", "skipped %", "util %",
                "energy uJ"):
        t.add_column(col, justify="left" if col in ("layer", "phase") else "right")
    for r in rows:
        total = r["macs"] + r["macs_skipped"]
        t.add_row(r["layer"], r["phase"], f"{r['cycles']:,}", f"{r['macs']:,}",
                  f"{r['macs_skipped']:,}",
                  f"{100 * r['macs_skipped'] / total:.1f}" if total else "-",
                  f"{100 * r['array_utilization']:.1f}" if r["array_cycles"] else "-",
                  f"{r['energy_pj'] / 1e6:,.2f}")
    tot = summary.totals
    all_macs = tot["macs"] + tot["macs_skipped"]
    t.add_row("all", "total", f"{tot['cycles']:,}", f"{tot['macs']:,}", f"{tot['macs_skipped']:,}",
              f"{100 * tot['macs_skipped'] / all_macs:.1f}" if all_macs else "-",
              f"{100 * summary.derived['array_utilization']:.1f}" if tot["array_cycles"]
              else "-",
              f"{summary.energy_pj / 1e6:,.2f}", style="bold")
    con.print(t)
    mean_sparsity = sum(h.mean_sparsity for h in history) / len(history)
    con.print(f"mean dz~ sparsity {100 * mean_sparsity:.1f}%, mean |round-off sum of dL/ds| "
              f"{history[-1].roundoff_mean_abs:.2e} (last epoch), wall time {wall:.1f} s")
    result: dict[str, Any] = {
        "model": spec.to_dict(),
        "test_accuracy": test_acc,
        "float_reference_accuracy": ref,
        "dataset": {"name": data.name, "shape": list(data.shape),
                    "input_exponent": tr.spec.input_exponent, "train": len(data.x_train),
                    "validation": len(data.x_val) if data.has_validation else 0,
                    "test": len(data.x_test)},
        "best_epoch": best,
        "float_reference_best_epoch": ref_best,
        "mean_gradient_sparsity": mean_sparsity,
        "classifier_bits_bound": classifier_bits_bound(spec.classes, spec.classifier_alpha),
        "classifier_warning": warn,
        "wall_seconds": wall,
        "weights_sha256": tr.weights_digest(),
        "epochs": [dataclasses.asdict(h) for h in history],
        "per_layer_phase": rows,
    }
    result.update(summary.to_dict())
    if tracer is not None and trace_out:
        from programs.cli.profile import write_trace

        write_trace(trace_out, tr.m, tracer)
        con.print(f"trace: {len(tracer):,} events written to {trace_out}"
                  + (f" ({tracer.dropped:,} later events dropped; see --trace-limit)"
                     if tracer.dropped else ""))
    if plot_out:
        from programs.cli.profile import plot_groups

        groups = [dict(r, group=f"{r['layer']} {r['phase']}") for r in rows]
        if plot_groups(groups, "group", plot_out,
                       f"{spec.name}: cycles and energy by layer and phase"):
            con.print(f"plot written to {plot_out}")
        else:
            con.print("[yellow]warning:[/yellow] --plot needs matplotlib "
                      "(pip install 'lpemu[plot]'); no plot written")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result
