"""The ``lpemu`` command line.

Every user-facing error is printed as one line (``location: kind: message``) on stderr and
the process exits with that error type's code (see ``docs/errors.md``); no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emulator.errors import LpemuError, UsageError
from isa.asm import load_program

EXIT_IO = 9
EXIT_INTERNAL = 70
EXIT_TERMINATED = 143

DUMP_DTYPES = ("int8", "uint8", "int16", "int32", "int64")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, typed, instead of usage + exit
        # the location is the subcommand ("run"), never "lpemu" again after the "lpemu: " prefix
        raise UsageError(message, self.prog.removeprefix("lpemu").strip())


def version() -> str:
    """The installed lpemu version (from the package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("lpemu")
    except PackageNotFoundError:  # pragma: no cover - a checkout that is not installed
        return "0+unknown"


class _VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked (reading the package metadata takes
    a tenth of a second, which every other command would pay at start-up)."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser._print_message(f"lpemu {version()}\n", sys.stdout)
        parser.exit()


def _count(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo`` (decimal, 0x hex, _ separators)."""

    def parse(text: str) -> int:
        try:
            v = int(text.replace("_", ""), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    from emulator.limits import short_repr

    try:
        v = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{short_repr(text)} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {short_repr(text)}")
    return v


# an integer as assembly writes it: decimal, 0x hex, 0o octal or 0b binary, "_" separators
_INT = r"(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)"
_DIMS = re.compile(rf"{_INT}(?:x{_INT})*")


def _int(text: str, arg: str) -> int:
    from emulator.limits import MAX_INT_LITERAL_CHARS, short_repr

    if len(text) > MAX_INT_LITERAL_CHARS:
        raise UsageError(f"integer of {len(text):,} characters (the limit is "
                         f"{MAX_INT_LITERAL_CHARS})", arg)
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise UsageError(f"{short_repr(text)} is not an integer", arg) from None


def parse_load(spec: str) -> tuple[str, int]:
    """``FILE.npy@ADDR`` -> (file, address)."""
    arg = f"--load {spec}"
    if "@" not in spec:
        raise UsageError("expected FILE.npy@ADDR", arg)
    file, _, addr = spec.rpartition("@")
    a = _int(addr, arg)
    if a < 0:
        raise UsageError("address must be >= 0", arg)
    if not file:
        raise UsageError("expected FILE.npy@ADDR (no file name)", arg)
    return file, a


def parse_dump(spec: str) -> tuple[int, tuple[int, ...], str, str]:
    """``ADDR:LEN:DTYPE:FILE`` -> (address, shape, dtype, file). LEN is a count or a shape
    ``D0xD1[x...]``; every number takes the address syntax (``0x40`` is 64, so a dimension
    is never written with a leading 0). Empty shapes (a zero dimension) are refused."""
    from emulator.limits import MAX_DUMP_DIMS, MAX_INT_LITERAL_CHARS, short_repr

    arg = f"--dump {spec}"
    parts = spec.split(":", 3)
    if len(parts) != 4:
        raise UsageError("expected ADDR:LEN:DTYPE:FILE", arg)
    addr, length, dtype, file = parts
    a = _int(addr, arg)
    if a < 0:
        raise UsageError("address must be >= 0", arg)
    if not _DIMS.fullmatch(length):
        raise UsageError(f"LEN {short_repr(length)} must be a count like 3200 or 0xc80, or a "
                         "shape like 64x50", arg)
    dims = re.findall(_INT, length)
    if len(dims) > MAX_DUMP_DIMS:
        raise UsageError(f"LEN has {len(dims)} dimensions; at most {MAX_DUMP_DIMS}", arg)
    if any(len(d) > MAX_INT_LITERAL_CHARS for d in dims):
        raise UsageError(f"LEN has a dimension over {MAX_INT_LITERAL_CHARS} characters", arg)
    shape = tuple(int(d.replace("_", ""), 0) for d in dims)
    if 0 in shape:
        raise UsageError(f"LEN {length} is empty (a dimension is 0)", arg)
    if dtype not in DUMP_DTYPES:
        raise UsageError(f"DTYPE {short_repr(dtype)} must be one of {', '.join(DUMP_DTYPES)}",
                         arg)
    if not file:
        raise UsageError("expected ADDR:LEN:DTYPE:FILE (no file name)", arg)
    return a, shape, dtype, file


def _dump_bytes(shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_outputs(outputs: list[tuple[str, str | None]]) -> None:
    """Before any work: every output path given can be written, and no two are the same file
    (``outputs`` is (argument, path or None) pairs). UsageError names the argument."""
    from emulator.files import output_problem

    seen: dict[str, str] = {}
    for arg, path in outputs:
        if path is None:
            continue
        problem = output_problem(path)
        if problem:
            raise UsageError(f"cannot write {path}: {problem}", arg)
        key = os.path.realpath(path)
        if key in seen and not _is_special(path):
            raise UsageError(f"{seen[key]} writes the same file", arg)
        seen[key] = arg


def _is_special(path: str) -> bool:
    import stat

    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_npy(file: str, arg: str, room: int) -> np.ndarray:
    """An array from a .npy file for ``--load``: a regular file only (a FIFO or device is
    refused before it is opened for reading), its header checked against the file's size and
    against ``room`` (the DRAM bytes from the load address on) before any data is read."""
    import stat

    from emulator.limits import short_repr

    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"cannot read {file}: {e.strerror or e}", arg) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{file} is not a regular file (a FIFO, device or directory "
                             "cannot be loaded)", arg)
        head = f.read(6)
        if head[:4] == b"PK\x03\x04":
            raise UsageError("an .npz archive; give one array saved with numpy.save", arg)
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
        except (ValueError, EOFError, SyntaxError) as e:
            raise UsageError(f"not a readable .npy array: {short_repr(str(e))}", arg) from None
        if dtype.hasobject or dtype.itemsize == 0:
            raise UsageError(f"the array's dtype {dtype} cannot be loaded (Python objects or "
                             "zero-size elements); give a numeric array", arg)
        nbytes = math.prod(shape) * dtype.itemsize
        held = st.st_size - f.tell()
        if nbytes > held:
            raise UsageError(f"the header claims shape {shape} ({nbytes:,} bytes) but the file "
                             f"holds {held:,} bytes of data (truncated)", arg)
        if nbytes > room:
            raise UsageError(f"{nbytes:,} bytes do not fit the {max(room, 0):,} bytes of DRAM "
                             "from the load address on", arg)
        data = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    return data.reshape(shape, order="F" if fortran else "C")


def _write_text(path: str, text: str) -> None:
    from programs.cli.profile import write_text

    write_text(path, text)


def _cmd_asm(args) -> int:
    from emulator.files import atomic_write
    from isa.encoding import to_bytes

    out = args.output or str(Path(args.source).with_suffix(".bin"))
    check_outputs([("-o", out)])
    prog = load_program(args.source)
    data = to_bytes(prog, debug=not args.no_debug)
    atomic_write(out, lambda f: f.write(data))
    what = "" if args.no_debug or not prog.has_debug_info else ", source lines"
    print(f"{args.source}: {len(prog)} instructions, {len(prog.labels)} labels{what} -> {out}")
    return 0


def _cmd_disasm(args) -> int:
    from isa.asm import disassemble

    check_outputs([("-o", args.output)])
    text = disassemble(load_program(args.program))
    if args.output:
        _write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_isa(args) -> int:
    from isa.docs import markdown, rows

    if args.markdown or args.write:
        check_outputs([("--write", args.write)])
        text = markdown()
        if args.write:
            _write_text(args.write, text)
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


def _hw_config(args):
    """The hardware config of a command: ``--config`` (or the defaults) with its ``--set``
    overrides (``hw.`` keys only: run and profile have no model)."""
    from emulator.config import load_config

    cfg = load_config(args.config)
    if not args.set:  # the overrides' module (and the sweep package) only when there are some
        return cfg
    from programs.sweep.overrides import apply, parse_sets

    cfg, _ = apply(cfg, None, parse_sets(args.set))
    return cfg


def _prepare(args, dumps: list[tuple[int, tuple[int, ...], str, str]] = ()):
    """Config, program and a machine with every --load applied (shared by run and profile);
    every --load and --dump range is checked against DRAM before anything runs."""
    from emulator.errors import ConfigError
    from emulator.host import load_array
    from emulator.machine import Machine

    cfg = _hw_config(args)
    prog = load_program(args.program)
    try:
        if args.count_only:
            from emulator.countonly import CountOnlyMachine

            if args.datapath != "fast":
                raise UsageError("count-only mode runs no datapath", "--datapath")
            if getattr(args, "dump", None):
                raise UsageError("count-only mode computes no values to dump", "--dump")
            m = CountOnlyMachine(cfg, prog)
        else:
            m = Machine(cfg, prog, datapath=args.datapath)
    except ConfigError as e:  # over the memory budget: name the config file
        raise ConfigError(e.message, e.key, e.file or args.config or "") from None
    for (addr, shape, dtype, _), spec in zip(dumps, getattr(args, "dump", None) or [],
                                             strict=True):
        nbytes = _dump_bytes(shape, dtype)
        if addr + nbytes > m.dram.size:
            raise UsageError(f"range [{addr:#x}, {addr + nbytes:#x}) ({nbytes:,} bytes) is "
                             f"outside DRAM [0, {m.dram.size:#x})", f"--dump {spec}")
    for spec in args.load or []:
        file, addr = parse_load(spec)
        arr = read_npy(file, f"--load {spec}", m.dram.size - addr)
        try:
            load_array(m, addr, arr)
        except LpemuError as e:
            raise UsageError(f"{e.message}", f"--load {spec}") from None
    return m


class _Chunks:
    """A file seen by numpy as a plain stream: it writes through ``write`` in chunks, so a
    full disk is the OS's own error (ENOSPC) rather than numpy's byte count."""

    def __init__(self, f) -> None:
        self.write = f.write


def _budgets(args) -> None:
    """The budget flags within the config's limits (argparse already refused values < 1 and,
    for --max-seconds, < 0)."""
    from emulator.limits import MAX_CYCLES, MAX_SECONDS, MAX_STEPS

    if args.max_seconds is not None and args.max_seconds > MAX_SECONDS:
        raise UsageError(f"must be in [0, {MAX_SECONDS:g}], got {args.max_seconds:g}",
                         "--max-seconds")
    for arg, v, hi in (("--max-steps", args.max_steps, MAX_STEPS),
                       ("--max-cycles", args.max_cycles, MAX_CYCLES)):
        if v is not None and not 1 <= v <= hi:
            raise UsageError(f"must be in [1, {hi:,}], got {v}", arg)


def _run_to_stop(m, args, **trace):
    """Run (faults annotated with their source, emulator/debug.py); a budget that stops the run
    is returned (to be recorded in the outputs, which are written before it is raised), not
    raised."""
    from emulator import debug
    from emulator.errors import BudgetExceeded

    try:
        debug.run(m, max_steps=args.max_steps, max_cycles=args.max_cycles,
                  max_seconds=args.max_seconds, **trace)
    except BudgetExceeded as e:
        return e
    return None


def _cmd_run(args) -> int:
    from emulator import debug
    from emulator.errors import ExecutionError
    from emulator.files import atomic_write
    from emulator.host import read_array

    _budgets(args)
    dumps = [parse_dump(s) for s in args.dump or []]
    check_outputs([("--json", args.json)] + [(f"--dump {s}", d[3])
                                             for s, d in zip(args.dump or [], dumps,
                                                             strict=True)])
    m = _prepare(args, dumps)
    if args.trace_steps:
        print(f"first {args.trace_steps:,} steps (effects: what each step changed):")
    try:
        stop = _run_to_stop(m, args, trace_steps=args.trace_steps, on_step=print)
    except ExecutionError:
        if args.regs:  # the state at the fault, for inspection
            print(debug.format_registers(m))
        raise
    summary = m.summary()
    for addr, shape, dtype, file in dumps:
        arr = read_array(m, addr, shape, dtype)
        atomic_write(file, lambda f, arr=arr: np.save(_Chunks(f), arr, allow_pickle=False))
    if args.json:  # the full report (per label, per instruction, state digest) only if asked
        from programs.cli.report import run_report, stop_record

        report = run_report(m, summary)
        report["stopped"] = stop_record(stop)
        _write_text(args.json, json.dumps(report, indent=2, allow_nan=False) + "\n")
    if args.regs:
        print(debug.format_registers(m))
    if stop is not None:
        raise stop
    if not args.quiet:
        from programs.cli.report import print_summary

        print_summary(m, summary, by_instruction=args.per_instruction)
    return 0


def _cmd_profile(args) -> int:
    from emulator.energy import price_table
    from programs.cli import profile
    from programs.cli.report import stop_record

    _budgets(args)
    if args.plot:
        profile.require_matplotlib("--plot")
    check_outputs([("--json", args.json), ("--csv", args.csv), ("--trace", args.trace),
                   ("--plot", args.plot)])
    m = _prepare(args)
    if args.trace:
        profile.check_trace_limit(args.trace_limit, m.cfg)
    tracer = profile.Tracer(args.trace_limit) if args.trace else None
    m.tracer = tracer
    stop = _run_to_stop(m, args)
    rows = profile.by_instruction(m) if args.by == "instruction" else profile.by_label(m)
    tot = profile.total(m)
    if getattr(m, "count_only", False):  # value events are not counted in count-only mode
        from emulator.counters import UNCOUNTED

        for r in [*rows, tot]:
            r.update({k: None for k in UNCOUNTED})
    if args.json:
        _write_text(args.json, json.dumps(
            {"program": m.program.name, "by": args.by, "rows": rows, "total": tot,
             "energy_prices": price_table(m.cfg), "config": m.cfg.to_dict(),
             "stopped": stop_record(stop)}, indent=2, allow_nan=False) + "\n")
    if args.csv:
        _write_text(args.csv, profile.to_csv(rows))
    if tracer is not None:
        profile.write_trace(args.trace, m, tracer)
    if args.plot:
        groups = rows if args.by == "label" else profile.by_label(m)
        profile.plot_groups(groups, "label", args.plot,
                            f"{Path(m.program.name).name}: cycles and energy by label")
    if stop is not None:
        raise stop
    if not args.quiet:
        profile.print_profile(rows, tot, args.by, f"{m.program.name}: profile by {args.by}",
                              m.cfg)
        if tracer is not None and tracer.dropped:
            print(f"trace: kept the first {len(tracer):,} events, dropped {tracer.dropped:,}")
    return 0


def _cmd_train(args) -> int:
    import dataclasses

    from emulator.limits import MAX_EPOCHS
    from programs.cli.train import run_training
    from programs.compiler.spec import validate, with_data

    if args.checkpoint_every < 0:
        raise UsageError("must be >= 0", "--checkpoint-every")
    if args.checkpoint_every and not args.checkpoint:
        raise UsageError("needs --checkpoint FILE", "--checkpoint-every")
    if args.overwrite_checkpoint and not args.checkpoint:
        raise UsageError("needs --checkpoint FILE", "--overwrite-checkpoint")
    if args.epochs is not None and args.epochs > MAX_EPOCHS:
        raise UsageError(f"must be in [1, {MAX_EPOCHS:,}], got {args.epochs}", "--epochs")
    if args.resume and args.set:
        raise UsageError("a resumed run takes its model and config from the checkpoint; "
                         "do not pass --set", f"--resume {args.resume}")
    if args.resume and args.data:
        raise UsageError("a resumed run takes its data from the checkpoint's model; do not "
                         "pass --data", f"--resume {args.resume}")
    if args.plot:
        from programs.cli.profile import require_matplotlib

        require_matplotlib("--plot")
    check_outputs([("--json", args.json), ("--emit-asm", args.emit_asm),
                   ("--trace", args.trace), ("--plot", args.plot),
                   ("--checkpoint", args.checkpoint)])
    if args.resume:
        spec, cfg, run_id = _resumed_run(args)
    else:
        from emulator.config import load_config
        from programs.compiler.spec import load_model
        from programs.sweep.overrides import apply, parse_sets

        model = load_model(args.model)
        cfg, spec = apply(load_config(args.config or model.hardware), model,
                          parse_sets(args.set))
        if args.data:
            spec = with_data(spec, args.data)
        run_id = None
    if args.epochs is not None:
        spec = validate(dataclasses.replace(spec, epochs=args.epochs))
    run_training(spec, cfg, json_out=args.json, asm_out=args.emit_asm,
                 compare_float=not args.no_float, quiet=args.quiet, trace_out=args.trace,
                 plot_out=args.plot, trace_limit=args.trace_limit,
                 checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                 resume=args.resume, run_id=run_id,
                 overwrite_checkpoint=args.overwrite_checkpoint)
    return 0


def _resumed_run(args):
    """(model spec, config, run id) recorded in the checkpoint ``--resume`` names; a model or
    config given as well must be the one recorded (the epoch count may differ)."""
    import dataclasses

    from emulator import checkpoint as ckpt
    from emulator.config import config_from_dict, load_config
    from emulator.errors import CheckpointError, ConfigError
    from programs.compiler.spec import load_model, spec_from_dict

    file = args.resume
    meta = ckpt.read_meta(file)
    if meta.get("kind") != "lpemu-train":
        raise CheckpointError(f"not a training checkpoint (kind {meta.get('kind')!r})", file)
    if not (isinstance(meta.get("model"), dict) and isinstance(meta.get("config"), dict)
            and isinstance(meta.get("run_id"), str)):
        raise CheckpointError("the training checkpoint lacks its model, config or run id",
                              file)
    try:
        spec = spec_from_dict(meta["model"], file)
        cfg = config_from_dict(meta["config"], file)
    except ConfigError as e:
        raise CheckpointError(f"the recorded {e.key or 'model'} is invalid: {e.message}",
                              file) from None
    if args.model is not None:
        given = load_model(args.model)
        if dataclasses.replace(given, epochs=spec.epochs) != spec:
            raise CheckpointError(f"belongs to model {spec.name!r} as recorded in it, not to "
                                  f"{args.model} (a checkpoint resumes only its own run)", file)
    if args.config is not None and load_config(args.config) != cfg:
        raise CheckpointError(f"was taken with another hardware config than {args.config}",
                              file)
    return spec, cfg, meta["run_id"]


def _cmd_experiment(args) -> int:
    from emulator.config import load_config
    from programs.cli.console import make_console, print_table
    from programs.experiments import EXPERIMENTS, run_experiment
    from programs.experiments.paper import _fmt, summary_rows

    if args.name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment; choose from {', '.join(EXPERIMENTS)}", args.name)
    from programs.compiler.spec import load_model
    from programs.sweep.overrides import apply, parse_sets

    sets = parse_sets(args.set)
    if args.name in ("perceptron", "sr-floor") and any(k.startswith("model.") for k, _ in sets):
        raise UsageError(f"the {args.name} experiment has no model spec: only hw. keys apply",
                         "--set")
    cfg, base = apply(load_config(args.config), load_model(None), sets)
    out = Path(args.out)
    try:  # before the (long) run: the folder and the three files can be written
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder: {e.strerror}", "--out") from None
    check_outputs([("--out", str(out / f"{args.name}{ext}")) for ext in (".md", ".csv", ".png")])
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    con = make_console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("parts, elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), TextColumn("{task.fields[what]}"),
                  console=con) as progress:
        task = progress.add_task(args.name, total=None, what="")

        def note(what: str, total: int) -> None:
            t = progress.tasks[0]
            if t.total is None:
                progress.update(task, total=total)
            elif t.fields["what"]:
                progress.advance(task)
            progress.update(task, what=what)

        rows = run_experiment(args.name, cfg, out, quick=args.quick, note=note, base=base,
                              data=args.data, epochs=args.epochs)
        progress.update(task, completed=progress.tasks[0].total or 0, what="done")
    shown = summary_rows(args.name, rows)
    t = Table(title=args.name)
    for c in shown[0]:
        t.add_column(c, justify="right")
    for r in shown:
        t.add_row(*(_fmt(v) for v in r.values()))
    print_table(con, t)
    png = out / (args.name + ".png")
    con.print(f"wrote {out / (args.name + '.md')}, {out / (args.name + '.csv')}"
              + (f", {png}" if png.exists() else " (no plot: pip install 'lpemu[plot]')"),
              markup=False, highlight=False)
    return 0


def _cmd_bench(args) -> int:
    from programs.bench.suite import PARTS, misses, print_suite, run_suite

    only = args.only.split(",") if args.only else None
    for name in only or []:
        if name not in PARTS and name != "hogs":
            raise UsageError(f"unknown part {name!r}; choose from {', '.join(PARTS)}, hogs "
                             "(with --hogs N)", "--only")
    if args.hogs < 0:
        raise UsageError("must be >= 0", "--hogs")
    res = run_suite(args.quick, only=only, hogs=args.hogs)
    print_suite(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 1 if args.check and misses(res) else 0


def _cmd_sweep(args) -> int:
    from programs.sweep import command

    return command(args)


def _set_arg(p: argparse.ArgumentParser, model: bool = True) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hardware config key (hw.array.rows=32)"
                   + (" or a model spec key (model.update.lr=0.01)" if model else "")
                   + "; VALUE is YAML (repeatable, later wins)")


def _machine_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``run`` and ``profile``: program, config, inputs, budgets."""
    p.add_argument("program", help="assembly (.s) or binary program")
    p.add_argument("--config", help="hardware config YAML (default: built-in defaults)")
    p.add_argument("--load", action="append", metavar="FILE.npy@ADDR",
                   help="copy an array's bytes into DRAM before running (repeatable)")
    p.add_argument("--datapath", choices=("fast", "reference"), default="fast",
                   help="fast kernels (default) or the slow reference model")
    p.add_argument("--count-only", action="store_true",
                   help="counters from the closed forms without running the datapath; refused "
                   "where a counter depends on values (docs/timing.md)")
    p.add_argument("--max-steps", type=_count(1), default=None, metavar="N",
                   help="step budget, >= 1 (default: the config's budget.max_steps)")
    p.add_argument("--max-cycles", type=_count(1), default=None, metavar="N",
                   help="cycle budget, >= 1 (default: the config's budget.max_cycles)")
    p.add_argument("--max-seconds", type=_seconds, default=None, metavar="S",
                   help="wall-time budget in seconds, 0 for none (default: the config's "
                   "budget.max_seconds)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    _set_arg(p, model=False)


def _trace_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--trace", metavar="OUT.json",
                   help="write a Chrome trace-event timeline (Perfetto, chrome://tracing)")
    p.add_argument("--trace-limit", type=_count(1), default=1_000_000, metavar="N",
                   help="keep at most N trace events (default 1,000,000)")
    p.add_argument("--plot", metavar="OUT.png",
                   help=f"plot cycles and energy by {what} (needs lpemu[plot])")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lpemu", description="Bit-accurate emulator of a low-precision DNN "
                "training accelerator: values, cycles and energy from one run.")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = sub.add_parser("asm", help="assemble a program to a binary file")
    a.add_argument("source")
    a.add_argument("-o", "--output")
    a.add_argument("--no-debug", action="store_true",
                   help="leave out the debug section (source file, line and text per "
                   "instruction): a version-1 file")
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
    r.add_argument("--dump", action="append", metavar="ADDR:LEN:DTYPE:FILE",
                   help="save DRAM contents after the run; LEN is a count or a shape like 64x50")
    r.add_argument("--json", metavar="OUT", help="write counters and energy as JSON")
    r.add_argument("--per-instruction", action="store_true",
                   help="also print counters per instruction")
    r.add_argument("--regs", action="store_true",
                   help="print the final scalar and exponent registers, flags and RNG state "
                   "(also after a fault)")
    r.add_argument("--trace-steps", type=_count(0), default=0, metavar="N",
                   help="print the first N executed instructions with their effects "
                   "(register and memory changes)")
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
    _set_arg(t)
    t.add_argument("--json", metavar="OUT", help="write results and counters as JSON")
    t.add_argument("--epochs", type=_count(1), metavar="N",
                   help="override the spec's epoch count (>= 1)")
    t.add_argument("--data", metavar="DIR",
                   help="train on this MNIST-format directory (or .npz file) instead of the "
                   "spec's dataset")
    t.add_argument("--emit-asm", metavar="FILE", help="write the compiled firmware")
    t.add_argument("--no-float", action="store_true",
                   help="skip the float32 reference run")
    _trace_args(t, "layer and phase")
    t.add_argument("--checkpoint", metavar="FILE",
                   help="checkpoint file, rewritten atomically every --checkpoint-every steps "
                   "and at the end of the run")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save a checkpoint every N training steps (batches)")
    t.add_argument("--overwrite-checkpoint", action="store_true",
                   help="replace a --checkpoint file that belongs to another run")
    t.add_argument("--resume", metavar="FILE",
                   help="continue a run from a checkpoint (model and config come from it; "
                   "--epochs extends it)")
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
                   "startup, jit_off, conv, hogs (with --hogs N)")
    b.add_argument("--hogs", type=int, default=0, metavar="N",
                   help="also time the training step with N CPU-bound processes running")
    b.set_defaults(fn=_cmd_bench)

    x = sub.add_parser("experiment", help="reproduce a paper's claim on the emulator")
    x.add_argument("name", help="lazy-update, qbp-sweep, classifier-width, perceptron, "
                   "update-modes, sr-floor, lenet-lazy, qbp-table, qbp-error-stats, qbp-meprop")
    x.add_argument("--config", help="hardware config YAML (default: built-in defaults)")
    _set_arg(x)
    x.add_argument("--out", default="out/experiments", help="output directory")
    x.add_argument("--quick", action="store_true", help="a smaller sweep")
    x.add_argument("--data", metavar="DIR",
                   help="MNIST-format directory (lenet-lazy, qbp-table; qbp-error-stats and "
                   "qbp-meprop: 784-500-500-10 on it instead of the digits)")
    x.add_argument("--epochs", type=_count(1), metavar="N",
                   help="epochs per run (lenet-lazy: 3, qbp-table: 5, qbp-error-stats: 1, "
                   "qbp-meprop: 10 on the digits, 3 with --data by default)")
    x.set_defaults(fn=_cmd_experiment)

    s = sub.add_parser("sweep", help="design-space exploration on Dask (docs/sweep.md)")
    s.add_argument("file", help="sweep file (YAML): what each point runs, axes, seeds, metrics")
    s.add_argument("--out", help="results folder (default out/sweeps/<name>); finished "
                   "points there are skipped")
    _set_arg(s)
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="submit to a running Dask scheduler (tcp://host:8786) instead of an "
                   "embedded LocalCluster")
    s.add_argument("--workers", type=int, metavar="N",
                   help="LocalCluster worker processes (default: one per core; 0: run in "
                   "this process without Dask)")
    s.add_argument("--retries", type=int, default=2, metavar="N",
                   help="re-run a task that raised up to N times (default 2)")
    s.add_argument("--plot", action="store_true",
                   help="write pareto.png and axis_<key>.png (needs lpemu[plot])")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or table")
    s.set_defaults(fn=_cmd_sweep)
    return p


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so outputs being written are cleaned up."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Parse and run one command; every error is one line on stderr and an exit code."""
    from programs.cli.interrupt import interrupted, seen

    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help and --version print and exit 0
            return e.code if isinstance(e.code, int) else 0
        return args.fn(args)
    except LpemuError as e:
        print(f"lpemu: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"lpemu: {where}file error: {e.strerror or e}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        return interrupted()
    except _Terminated:
        print("lpemu: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:  # pragma: no cover - a bug in lpemu, still one line
        if seen():  # a Ctrl-C inside C code can come out as another exception
            return interrupted()
        if os.environ.get("LPEMU_DEBUG"):
            raise
        print(f"lpemu: internal error: {type(e).__name__}: {e} (set LPEMU_DEBUG=1 for a "
              "traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
