"""``lpemu train``: train a model spec on the emulated chip with progress and a counter table."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from emulator.config import Config
from programs.cli.profile import write_text
from programs.compiler.spec import ModelSpec
from programs.host.datasets import load
from programs.host.driver import (
    ChipTrainer,
    EpochStats,
    check_dataset_fits,
    classifier_bits_bound,
)


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
                 checkpoint_every: int = 0, resume: str | None = None,
                 run_id: str | None = None,
                 overwrite_checkpoint: bool = False) -> dict[str, Any]:
    """Train ``spec`` on the chip with progress and tables. With ``checkpoint`` the run is
    saved at the end of its last epoch (before the test evaluation) and, with
    ``checkpoint_every`` = N, every N training steps (a resumable point at the firmware's
    batch-loop head). ``resume`` continues from such a file (the caller takes the model and
    config from it, possibly with more epochs), ending bit-identical to an uninterrupted run.
    The checkpoint file belongs to this run (``run_id``, inherited when resuming): another
    run's file is not overwritten unless ``overwrite_checkpoint``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from emulator import checkpoint as ckpt

    con = Console(stderr=False, quiet=quiet)
    if not con.is_terminal:  # files and pipes get the whole table, unwrapped
        con = Console(stderr=False, quiet=quiet, width=160)
    warn = classifier_warning(spec)
    if warn:
        con.print(f"[yellow]warning:[/yellow] {warn}")
    run_id = run_id or ckpt.new_run_id()
    target = (ckpt.CheckpointTarget(checkpoint, run_id, overwrite_checkpoint) if checkpoint
              else None)
    check_dataset_fits(spec, cfg)  # before the dataset is generated or loaded
    data = load(spec.dataset, spec.classes, spec.seed)
    if data.features != spec.layers[0] or data.classes != spec.classes:
        from emulator.errors import ConfigError

        raise ConfigError(f"dataset {data.name} has {data.features} features and "
                          f"{data.classes} classes; layers are {spec.layers}", "layers")
    t0 = time.perf_counter()
    tr = ChipTrainer(spec, cfg, data)
    if resume:
        extra = ckpt.restore(resume, tr.m)
        tr.set_host_state(extra.get("host"), resume)
        con.print(f"resumed run {run_id} of {spec.name} from {resume}: epoch {tr.epoch}"
                  + (f", step {tr.global_step()}" if tr.in_epoch else "")
                  + f" of {spec.epochs}")

    def save_checkpoint(t: ChipTrainer) -> None:
        assert target is not None
        target.save(t.m, {"kind": "lpemu-train", "host": t.host_state()},
                    ckpt.identity(t.m, "lpemu-train", run_id, model=spec.to_dict()))

    on_ckpt = save_checkpoint if target is not None and checkpoint_every > 0 else None
    if asm_out:
        write_text(asm_out, tr.asm_text)
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
    if target is not None:  # the end of training: resumable, e.g. with more --epochs
        save_checkpoint(tr)
    history: list[EpochStats] = tr.history
    test_acc = tr.evaluate()
    wall = time.perf_counter() - t0
    summary = tr.m.summary()
    ref = None
    if compare_float:
        from programs.host.float_ref import train_float

        ref = train_float(spec, data, tr.float_init()).test_accuracy
    rows = tr.breakdown()
    t = Table(title=f"{spec.name} on the chip: test accuracy {100 * test_acc:.2f}%"
              + (f" (float32 reference {100 * ref:.2f}%)" if ref is not None else ""))
    for col in ("layer", "phase", "cycles", "macs", "macs_skipped", "skipped %", "energy uJ"):
        t.add_column(col, justify="left" if col in ("layer", "phase") else "right")
    for r in rows:
        total = r["macs"] + r["macs_skipped"]
        t.add_row(r["layer"], r["phase"], f"{r['cycles']:,}", f"{r['macs']:,}",
                  f"{r['macs_skipped']:,}",
                  f"{100 * r['macs_skipped'] / total:.1f}" if total else "-",
                  f"{r['energy_pj'] / 1e6:,.2f}")
    tot = summary.totals
    all_macs = tot["macs"] + tot["macs_skipped"]
    t.add_row("all", "total", f"{tot['cycles']:,}", f"{tot['macs']:,}", f"{tot['macs_skipped']:,}",
              f"{100 * tot['macs_skipped'] / all_macs:.1f}" if all_macs else "-",
              f"{summary.energy_pj / 1e6:,.2f}", style="bold")
    con.print(t)
    mean_sparsity = sum(h.mean_sparsity for h in history) / max(len(history), 1)
    con.print(f"mean dz~ sparsity {100 * mean_sparsity:.1f}%, mean |round-off sum of dL/ds| "
              f"{history[-1].roundoff_mean_abs if history else 0.0:.2e} (last epoch), "
              f"wall time {wall:.1f} s")
    result: dict[str, Any] = {
        "model": spec.to_dict(),
        "test_accuracy": test_acc,
        "float_reference_accuracy": ref,
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
        write_text(json_out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
