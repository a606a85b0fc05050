"""``lpemu train``: train a model spec on the emulated chip with progress and a counter table."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.errors import BudgetExceeded
from emulator.files import atomic_write
from programs.cli.profile import write_text
from programs.compiler.spec import ModelSpec
from programs.host.datasets import load_for
from programs.host.driver import (
    ChipTrainer,
    EpochStats,
    check_dataset_fits,
    classifier_bits_bound,
    classifier_warning,
)


def write_firmware(asm_out: str, tr: ChipTrainer, con: Any = None) -> Path | None:
    """Write the firmware to ``asm_out`` and, at an epoch start, the DRAM image of the next
    training epoch next to it (``<stem>.dram.npy``); the assembly ends with comments giving the
    image's layout and the ``lpemu run`` command that runs that epoch on its own and dumps the
    weights. Returns the image's path (None when resumed mid-epoch or after the last epoch)."""
    from programs.compiler.firmware import P_LOADW, P_NBATCH

    spec, lay = tr.spec, tr.layout
    asm = Path(asm_out)
    if tr.in_epoch or tr.epoch >= spec.epochs:
        write_text(asm, tr.asm_text)
        if con is not None:
            con.print(f"note: {asm} written without a DRAM image (the run is not at the start "
                      "of a training epoch)", markup=False)
        return None
    image = tr.firmware_image()
    npy = asm.with_name(asm.name.removesuffix(asm.suffix) + ".dram.npy")
    atomic_write(npy, lambda f: f.write(_npy_bytes(image)))
    words = np.frombuffer(image[:64].tobytes(), "<i4")
    dumps = []
    for p in lay.params:
        shape = "x".join(map(str, p.shape))
        wdt = "int8" if p.bits == 8 else "int16"
        dumps.append(f"--dump {lay.dram[p.key('W')]:#x}:{shape}:{wdt}:{p.key('W')}.npy")
        dumps.append(f"--dump {lay.dram[p.key('LZ')]:#x}:{shape}:int16:{p.key('LZ')}.npy")
    tail = [
        "",
        f"# ---- DRAM image: {npy.name} (lpemu train --emit-asm) ----",
        f"# DRAM bytes [0, {tr.dram_top:#x}) at the start of training epoch {tr.epoch + 1} of "
        f"{spec.epochs}: the PARAMS block (int32 words at 0: mode 0 = train, n_batches "
        f"{words[P_NBATCH]}, mu, seed, x_base, t_base, out_base, roundoff_base, load_weights "
        f"{words[P_LOADW]}" + (", qbp_step_log" if lay.qbp.adapt else "") + "),",
        "# the parameters W<l> / B<l> (INT8) and their INT16 update state LZ<l> / LZB<l> at "
        + ", ".join(f"{p.key('W')} {lay.dram[p.key('W')]:#x} {p.key('LZ')} "
                    f"{lay.dram[p.key('LZ')]:#x}" for p in lay.params) + ",",
        "# the epoch's training batches and the test data. This runs that epoch of training on "
        "its own (add --config with the config used for training):",
        f"#   lpemu run {asm.name} --load {npy.name}@0 " + " ".join(dumps),
        "# and dumps the weights bit-identical to lpemu train's after the epoch. Set PARAMS word "
        f"{P_NBATCH} (n_batches, byte {4 * P_NBATCH}) to 1 for a single training step.",
    ]
    write_text(asm, tr.asm_text.rstrip("\n") + "\n" + "\n".join(tail) + "\n")
    return npy


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _write_stopped(stop: BudgetExceeded, tr: ChipTrainer, spec: ModelSpec,
                   json_out: str | None, trace_out: str | None, tracer: Any, con: Any,
                   wall: float) -> None:
    """A budget stopped training: ``--json`` gets the epochs finished, the counters so far and
    the stop (no test evaluation: the firmware stopped inside a step), ``--trace`` the events
    so far."""
    from programs.cli.report import stop_record

    if tracer is not None and trace_out:
        from programs.cli.profile import write_trace

        write_trace(trace_out, tr.m, tracer)
        con.print(f"trace: {len(tracer):,} events written to {trace_out}", markup=False)
    if json_out:
        result: dict[str, Any] = {
            "model": spec.to_dict(),
            "stopped": stop_record(stop),
            "epochs_finished": tr.epoch,
            "wall_seconds": wall,
            "epochs": [dataclasses.asdict(h) for h in tr.history],
        }
        result.update(tr.m.summary().to_dict())
        write_text(json_out, json.dumps(result, indent=2, allow_nan=False) + "\n")


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
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from emulator import checkpoint as ckpt
    from programs.cli.console import make_console, print_table
    from programs.cli.energy_table import assumed_line, component_table

    con = make_console(quiet=quiet)
    warn = classifier_warning(spec)
    if warn:
        con.print(f"[yellow]warning:[/yellow] {warn}")
    run_id = run_id or ckpt.new_run_id()
    target = (ckpt.CheckpointTarget(checkpoint, run_id, overwrite_checkpoint) if checkpoint
              else None)
    check_dataset_fits(spec, cfg)  # before the synthetic set is generated
    if trace_out:
        from programs.cli.profile import check_trace_limit

        check_trace_limit(trace_limit, cfg)
    data = load_for(spec)
    t0 = time.perf_counter()
    tr = ChipTrainer(spec, cfg, data)
    if resume:
        extra = ckpt.restore(resume, tr.m)
        tr.set_host_state(extra.get("host"), resume)
        con.print(f"resumed run {run_id} of {spec.name} from {resume}: epoch {tr.epoch}"
                  + (f", step {tr.global_step()}" if tr.in_epoch else "")
                  + f" of {spec.epochs}", markup=False)

    def save_checkpoint(t: ChipTrainer) -> None:
        assert target is not None
        target.save(t.m, {"kind": "lpemu-train", "host": t.host_state()},
                    ckpt.identity(t.m, "lpemu-train", run_id, model=spec.to_dict()))

    on_ckpt = save_checkpoint if target is not None and checkpoint_every > 0 else None
    if asm_out:
        write_firmware(asm_out, tr, con)
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
        try:
            while tr.epoch < spec.epochs:
                if tr.in_epoch:
                    st = tr.continue_epoch(checkpoint_every, on_ckpt)
                else:
                    st = tr.train_epoch(checkpoint_every, on_ckpt)
                prog.update(task, advance=1, status=(
                    f"loss {st.loss:.3f}  train acc {100 * st.train_accuracy:.1f}%  "
                    f"dz sparsity {100 * st.mean_sparsity:.1f}%"))
        except BudgetExceeded as stop:
            # the requested outputs, with the stop recorded, before the error is raised
            _write_stopped(stop, tr, spec, json_out, trace_out, tracer, con,
                           time.perf_counter() - t0)
            raise
    if target is not None:  # the end of training: resumable, e.g. with more --epochs
        save_checkpoint(tr)
    history: list[EpochStats] = tr.history
    test_acc = tr.test_accuracy()
    best = tr.best_epoch()
    wall = time.perf_counter() - t0
    summary = tr.m.summary()
    ref = ref_best = ref_qbp = None
    qbp_on = spec.qbp.step_log2 is not None or spec.qbp.meprop_k is not None
    if compare_float:
        from programs.host.float_ref import train_float

        fres = train_float(spec, data, tr.float_init())
        ref, ref_best = fres.test_accuracy, fres.best_epoch
        if qbp_on:  # the same QBP in float32: what QBP does apart from the INT8 arithmetic
            ref_qbp = train_float(spec, data, tr.float_init(), qbp=True).test_accuracy
    rows = tr.breakdown()
    at = ""
    if best is not None:
        at = (f" at best-validation epoch {best + 1} (validation "
              f"{100 * history[best].validation_accuracy:.2f}%)")
    t = Table(title=f"{spec.name} on the chip: test accuracy {100 * test_acc:.2f}%{at}"
              + (f" (float32 reference {100 * ref:.2f}%"
                 + (f" at its epoch {ref_best + 1}" if ref_best is not None else "")
                 + (f"; float32 with the same QBP {100 * ref_qbp:.2f}%"
                    if ref_qbp is not None else "") + ")"
                 if ref is not None else ""))
    for col in ("layer", "phase", "cycles", "macs", "macs_skipped", "skipped %", "util %",
                "energy uJ"):
        t.add_column(col, justify="left" if col in ("layer", "phase") else "right")
    net = spec.net()
    kinds = {} if net.is_mlp else {x.name: f"{x.name} {x.describe()}" for x in net.layers}
    for r in rows:
        total = r["macs"] + r["macs_skipped"]
        t.add_row(kinds.get(r["layer"], r["layer"]), r["phase"], f"{r['cycles']:,}",
                  f"{r['macs']:,}",
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
    print_table(con, t)
    print_table(con, component_table(summary.energy, summary.assumed_energy,
                                     "energy by component"))
    con.print(assumed_line(summary.prices), markup=False, highlight=False)
    mean_sparsity = sum(h.mean_sparsity for h in history) / max(len(history), 1)
    con.print(f"mean dz~ sparsity {100 * mean_sparsity:.1f}%, mean |round-off sum of dL/ds| "
              f"{history[-1].roundoff_mean_abs if history else 0.0:.2e} (last epoch), "
              f"wall time {wall:.1f} s")
    if tr.layout.dynamic:
        first = history[0].param_exponents if history else []
        con.print(f"parameter exponents (dynamic): {tr.param_exponents()} (after epoch 1: "
                  f"{first})", markup=False, highlight=False)
    from programs.compiler.qbp import realised_steps

    fixed = realised_steps(spec)
    ws = [x.name for x in net.weight_layers]
    if fixed:
        con.print("QBP steps realised (16-bit significand, rounded down): " + ", ".join(
            f"{f['layer']} {f['requested']:g} -> {f['realised']:.9g} "
            f"({f['significand']} x 2^{f['exponent'] - 15})" for f in fixed),
            markup=False, highlight=False)
    if history and history[-1].qbp_steps:
        con.print("adaptive QBP steps, last epoch (mean [min, max], batches raised by the "
                  "saturation floor or the lower clamp): " + ", ".join(
                      f"{n} {m:.4g} [{lo:.4g}, {hi:.4g}] {100 * r:.0f}%"
                      for n, (m, lo, hi, r) in zip(ws, history[-1].qbp_steps, strict=True)),
                  markup=False, highlight=False)
    result: dict[str, Any] = {
        "model": spec.to_dict(),
        "test_accuracy": test_acc,
        "float_reference_accuracy": ref,
        "float_qbp_reference_accuracy": ref_qbp,
        "qbp_steps": fixed,
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
        "param_exponents": tr.param_exponents(),
        "epochs": [dataclasses.asdict(h) for h in history],
        "per_layer_phase": rows,
    }
    result.update(summary.to_dict())
    if tracer is not None and trace_out:
        from programs.cli.profile import write_trace

        write_trace(trace_out, tr.m, tracer)
        con.print(f"trace: {len(tracer):,} events written to {trace_out}"
                  + (f" ({tracer.dropped:,} later events dropped; see --trace-limit)"
                     if tracer.dropped else ""), markup=False)
    if plot_out:
        from programs.cli.profile import plot_groups

        groups = [dict(r, group=f"{r['layer']} {r['phase']}") for r in rows]
        plot_groups(groups, "group", plot_out, f"{spec.name}: cycles and energy by layer and phase")
        con.print(f"plot written to {plot_out}", markup=False)
    if json_out:
        write_text(json_out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
