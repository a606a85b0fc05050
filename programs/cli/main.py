"""The ``lpemu`` command line.

Every user-facing error is printed as one line (``location: kind: message``) on stderr and
the process exits with that error type's code (see ``docs/errors.md``); no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from emulator.errors import LpemuError, UsageError

EXIT_IO = 9
EXIT_INTERNAL = 70

DUMP_DTYPES = ("int8", "uint8", "int16", "int32", "int64")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, typed, instead of usage + exit
        raise UsageError(message, self.prog)


def load_program(path: str):
    """Read a program: assembly text (.s/.asm or any UTF-8 text) or a binary file."""
    from isa.asm import assemble
    from isa.encoding import MAGIC, from_bytes

    data = Path(path).read_bytes()
    suffix = Path(path).suffix.lower()
    if suffix in (".s", ".asm"):
        return assemble(_text(data, path), path)
    if data[:4] == MAGIC or suffix in (".bin", ".lpem"):
        return from_bytes(data, path)
    return assemble(_text(data, path), path)


def _text(data: bytes, path: str) -> str:
    from emulator.errors import AsmError

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise AsmError("source is not UTF-8 text", path, line, col) from None


def _int(text: str, arg: str) -> int:
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise UsageError(f"{text!r} is not an integer", arg) from None


def parse_load(spec: str) -> tuple[str, int]:
    """``FILE.npy@ADDR`` -> (file, address)."""
    arg = f"--load {spec}"
    if "@" not in spec:
        raise UsageError("expected FILE.npy@ADDR", arg)
    file, _, addr = spec.rpartition("@")
    a = _int(addr, arg)
    if a < 0:
        raise UsageError("address must be >= 0", arg)
    return file, a


def parse_dump(spec: str) -> tuple[int, tuple[int, ...], str, str]:
    """``ADDR:LEN:DTYPE:FILE.npy`` -> (address, shape, dtype, file). LEN is N or RxC[x...]."""
    arg = f"--dump {spec}"
    parts = spec.split(":", 3)
    if len(parts) != 4:
        raise UsageError("expected ADDR:LEN:DTYPE:FILE.npy", arg)
    addr, length, dtype, file = parts
    a = _int(addr, arg)
    if not re.fullmatch(r"\d+(x\d+)*", length):
        raise UsageError(f"LEN {length!r} must be a count like 3200 or a shape like 64x50", arg)
    shape = tuple(int(x) for x in length.split("x"))
    if dtype not in DUMP_DTYPES:
        raise UsageError(f"DTYPE {dtype!r} must be one of {', '.join(DUMP_DTYPES)}", arg)
    if a < 0:
        raise UsageError("address must be >= 0", arg)
    return a, shape, dtype, file


def _cmd_asm(args) -> int:
    from isa.encoding import write_program

    prog = load_program(args.source)
    out = args.output or str(Path(args.source).with_suffix(".bin"))
    write_program(prog, out)
    print(f"{args.source}: {len(prog)} instructions, {len(prog.labels)} labels -> {out}")
    return 0


def _cmd_disasm(args) -> int:
    from isa.asm import disassemble

    text = disassemble(load_program(args.program))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_isa(args) -> int:
    from isa.docs import markdown, rows

    if args.markdown or args.write:
        text = markdown()
        if args.write:
            Path(args.write).write_text(text)
            print(f"wrote {args.write}")
        else:
            sys.stdout.write(text)
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="lpemu instruction set")
    for col in ("opcode", "mnemonic", "operands", "unit", "cost", "description"):
        t.add_column(col, overflow="fold")
    for row in rows():
        t.add_row(*row)
    Console().print(t)
    return 0


def _prepare(args):
    """Config, program and a machine with every --load applied (shared by run and profile)."""
    from emulator.config import load_config
    from emulator.machine import Machine

    cfg = load_config(args.config)
    prog = load_program(args.program)
    m = Machine(cfg, prog, datapath=args.datapath)
    for spec in args.load or []:
        file, addr = parse_load(spec)
        try:
            arr = np.load(file, allow_pickle=False)
        except (ValueError, EOFError) as e:  # not .npy, truncated, or an object array
            raise UsageError(f"not a readable .npy array: {e}", f"--load {spec}") from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise UsageError("an .npz archive; give one array saved with numpy.save",
                             f"--load {spec}")
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        try:
            m.load_dram(addr, data)
        except LpemuError as e:
            raise UsageError(f"{e.message}", f"--load {spec}") from None
    return m


def _cmd_run(args) -> int:
    m = _prepare(args)
    dumps = [parse_dump(s) for s in args.dump or []]
    summary = m.run(max_steps=args.max_steps, max_cycles=args.max_cycles,
                    max_seconds=args.max_seconds)
    for (addr, shape, dtype, file), spec in zip(dumps, args.dump or [], strict=True):
        dt = np.dtype(dtype).newbyteorder("<")
        nbytes = int(np.prod(shape)) * dt.itemsize
        if addr + nbytes > m.dram.size:
            raise UsageError(f"range [{addr:#x}, {addr + nbytes:#x}) is outside DRAM", spec)
        arr = np.frombuffer(m.read_dram(addr, nbytes), dtype=dt).reshape(shape)
        np.save(file, arr.astype(dt.newbyteorder("=")))
    if args.json:  # the full report (per label, per pc, state digest) only when asked for
        from programs.cli.report import run_report

        Path(args.json).write_text(json.dumps(run_report(m, summary), indent=2) + "\n")
    if not args.quiet:
        from programs.cli.report import print_summary

        print_summary(m, summary, by_instruction=args.per_instruction)
    return 0


def _cmd_profile(args) -> int:
    from programs.cli import profile

    m = _prepare(args)
    if args.trace_limit < 1:
        raise UsageError("must be >= 1", "--trace-limit")
    tracer = profile.Tracer(args.trace_limit) if args.trace else None
    m.tracer = tracer
    m.run(max_steps=args.max_steps, max_cycles=args.max_cycles, max_seconds=args.max_seconds)
    rows = profile.by_instruction(m) if args.by == "instruction" else profile.by_label(m)
    tot = profile.total(m)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"program": m.program.name, "by": args.by, "rows": rows, "total": tot,
             "config": m.cfg.to_dict()}, indent=2) + "\n")
    if args.csv:
        Path(args.csv).write_text(profile.to_csv(rows))
    if tracer is not None:
        profile.write_trace(args.trace, m, tracer)
    plotted = None
    if args.plot:
        groups = rows if args.by == "label" else profile.by_label(m)
        plotted = profile.plot_groups(groups, "label", args.plot,
                                      f"{m.program.name}: cycles and energy by label")
    if not args.quiet:
        profile.print_profile(rows, tot, args.by, f"{m.program.name}: profile by {args.by}")
        if tracer is not None and tracer.dropped:
            print(f"trace: kept the first {len(tracer):,} events, dropped {tracer.dropped:,}")
    if plotted is False:
        print("lpemu: --plot needs matplotlib (pip install 'lpemu[plot]'); no plot written",
              file=sys.stderr)
    return 0


def _cmd_train(args) -> int:
    import dataclasses

    from emulator.config import config_from_dict, load_config
    from programs.cli.train import run_training
    from programs.compiler.spec import load_model, spec_from_dict, validate

    if args.checkpoint_every < 0:
        raise UsageError("must be >= 0", "--checkpoint-every")
    if args.checkpoint_every and not args.checkpoint:
        raise UsageError("needs --checkpoint FILE", "--checkpoint-every")
    if args.checkpoint and not args.checkpoint_every:
        raise UsageError("needs --checkpoint-every N", "--checkpoint")
    if args.resume:
        from emulator.checkpoint import load
        from emulator.errors import CheckpointError

        _, extra = load(args.resume)
        if extra.get("kind") != "lpemu-train":
            raise UsageError("not a training checkpoint", f"--resume {args.resume}")
        if args.model or args.config or args.epochs is not None:
            raise UsageError("a resumed run takes its model, config and epochs from the "
                             "checkpoint; do not pass them", f"--resume {args.resume}")
        if not all(isinstance(extra.get(k), dict) for k in ("model", "config", "host")):
            raise CheckpointError("the training checkpoint lacks its model, config or driver "
                                  "state", args.resume)
        spec = spec_from_dict(extra["model"], args.resume)
        cfg = config_from_dict(extra["config"], args.resume)
    else:
        cfg = load_config(args.config)
        spec = load_model(args.model)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError("must be >= 1", "--epochs")
        spec = validate(dataclasses.replace(spec, epochs=args.epochs))
    if args.trace_limit < 1:
        raise UsageError("must be >= 1", "--trace-limit")
    run_training(spec, cfg, json_out=args.json, asm_out=args.emit_asm,
                 compare_float=not args.no_float, quiet=args.quiet, trace_out=args.trace,
                 plot_out=args.plot, trace_limit=args.trace_limit,
                 checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                 resume=args.resume)
    return 0


def _cmd_experiment(args) -> int:
    from emulator.config import load_config
    from programs.experiments import EXPERIMENTS, run_experiment

    if args.name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment; choose from {', '.join(EXPERIMENTS)}", args.name)
    cfg = load_config(args.config)
    out = Path(args.out)
    from rich.console import Console
    from rich.table import Table

    con = Console()
    with con.status(f"running experiment {args.name} ...") as status:
        runs = 0

        def note(what: str) -> None:
            nonlocal runs
            runs += 1
            status.update(f"running experiment {args.name}: {what} (part {runs})")

        rows = run_experiment(args.name, cfg, out, quick=args.quick, note=note)
    t = Table(title=args.name)
    for c in rows[0]:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()))
    con.print(t)
    con.print(f"wrote {out / (args.name + '.md')}, {out / (args.name + '.csv')}"
              + (f", {out / (args.name + '.png')}" if (out / (args.name + '.png')).exists()
                 else " (install lpemu[plot] for a PNG)"))
    return 0


def _cmd_bench(args) -> int:
    from programs.bench.suite import PARTS, misses, print_suite, run_suite

    only = args.only.split(",") if args.only else None
    for name in only or []:
        if name not in PARTS:
            raise UsageError(f"unknown part {name!r}; choose from {', '.join(PARTS)}",
                             "--only")
    if args.hogs < 0:
        raise UsageError("must be >= 0", "--hogs")
    res = run_suite(args.quick, only=only, hogs=args.hogs)
    print_suite(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 1 if args.check and misses(res) else 0


def _machine_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``run`` and ``profile``: program, config, inputs, budgets."""
    p.add_argument("program", help="assembly (.s) or binary program")
    p.add_argument("--config", help="hardware config YAML (default: built-in defaults)")
    p.add_argument("--load", action="append", metavar="FILE.npy@ADDR",
                   help="copy an array's bytes into DRAM before running (repeatable)")
    p.add_argument("--datapath", choices=("fast", "reference"), default="fast",
                   help="fast kernels (default) or the slow reference model")
    p.add_argument("--max-steps", type=int, default=None, help="step budget (config default)")
    p.add_argument("--max-cycles", type=int, default=None, help="cycle budget (config default)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-time budget in seconds, 0 for none (config default)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def _trace_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--trace", metavar="OUT.json",
                   help="write a Chrome trace-event timeline (Perfetto, chrome://tracing)")
    p.add_argument("--trace-limit", type=int, default=1_000_000, metavar="N",
                   help="keep at most N trace events (default 1,000,000)")
    p.add_argument("--plot", metavar="OUT.png",
                   help=f"plot cycles and energy by {what} (needs lpemu[plot])")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lpemu", description="Bit-accurate emulator of a low-precision DNN "
                "training accelerator: values, cycles and energy from one run.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = sub.add_parser("asm", help="assemble a program to a binary file")
    a.add_argument("source")
    a.add_argument("-o", "--output")
    a.set_defaults(fn=_cmd_asm)

    d = sub.add_parser("disasm", help="disassemble a binary (or assembly) program")
    d.add_argument("program")
    d.add_argument("-o", "--output")
    d.set_defaults(fn=_cmd_disasm)

    i = sub.add_parser("isa", help="print the instruction set")
    i.add_argument("--markdown", action="store_true", help="print docs/isa.md")
    i.add_argument("--write", metavar="FILE", help="write the markdown reference to FILE")
    i.set_defaults(fn=_cmd_isa)

    r = sub.add_parser("run", help="run a program and report its counters")
    _machine_args(r)
    r.add_argument("--dump", action="append", metavar="ADDR:LEN:DTYPE:FILE.npy",
                   help="save DRAM contents after the run; LEN is a count or a shape like 64x50")
    r.add_argument("--json", metavar="OUT", help="write counters and energy as JSON")
    r.add_argument("--per-instruction", action="store_true",
                   help="also print counters per instruction")
    r.set_defaults(fn=_cmd_run)

    pr = sub.add_parser("profile", help="run a program and profile cycles and energy")
    _machine_args(pr)
    pr.add_argument("--by", choices=("instruction", "label"), default="label",
                    help="rows of the table: per instruction (pc) or per label (default)")
    pr.add_argument("--json", metavar="OUT", help="write the rows and totals as JSON")
    pr.add_argument("--csv", metavar="OUT", help="write the rows as CSV")
    _trace_args(pr, "label")
    pr.set_defaults(fn=_cmd_profile)

    t = sub.add_parser("train", help="train a model on the emulated chip (default: digits MLP)")
    t.add_argument("model", nargs="?", help="model spec YAML (default: configs/digits_mlp.yaml)")
    t.add_argument("--config", help="hardware config YAML (default: built-in defaults)")
    t.add_argument("--json", metavar="OUT", help="write results and counters as JSON")
    t.add_argument("--epochs", type=int, help="override the spec's epoch count")
    t.add_argument("--emit-asm", metavar="FILE", help="write the compiled firmware")
    t.add_argument("--no-float", action="store_true",
                   help="skip the float32 reference run")
    _trace_args(t, "layer and phase")
    t.add_argument("--checkpoint", metavar="FILE",
                   help="checkpoint file, rewritten atomically every --checkpoint-every steps")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save a checkpoint every N training steps (batches)")
    t.add_argument("--resume", metavar="FILE",
                   help="continue a run from a checkpoint (model and config come from it)")
    t.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    t.set_defaults(fn=_cmd_train)

    b = sub.add_parser("bench", help="the speed suite: figures against targets and same-run "
                       "baselines, with noise estimates")
    b.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    b.add_argument("--json", metavar="OUT", help="write every figure and sample as JSON")
    b.add_argument("--check", action="store_true",
                   help="exit 1 if a figure misses its target")
    b.add_argument("--only", metavar="PARTS",
                   help="comma-separated parts: gemm, step, firmware, epoch, scalesim, "
                   "startup, jit_off")
    b.add_argument("--hogs", type=int, default=0, metavar="N",
                   help="also time the training step with N CPU-bound processes running")
    b.set_defaults(fn=_cmd_bench)

    x = sub.add_parser("experiment", help="reproduce a paper's claim on the emulator")
    x.add_argument("name", help="lazy-update, qbp-sweep, classifier-width, perceptron, "
                   "update-modes")
    x.add_argument("--config", help="hardware config YAML (default: built-in defaults)")
    x.add_argument("--out", default="out/experiments", help="output directory")
    x.add_argument("--quick", action="store_true", help="a smaller sweep")
    x.set_defaults(fn=_cmd_experiment)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except LpemuError as e:
        print(f"lpemu: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        where = e.filename if e.filename is not None else ""
        print(f"lpemu: {where}: file error: {e.strerror or e}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        print("lpemu: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # pragma: no cover - a bug in lpemu, still one line
        if os.environ.get("LPEMU_DEBUG"):
            raise
        print(f"lpemu: internal error: {type(e).__name__}: {e} (set LPEMU_DEBUG=1 for a "
              "traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
