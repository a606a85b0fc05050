"""Every size limit lpemu enforces, in one place, and the memory budget.

A request beyond one of these limits is refused with a typed error naming the key, operand or
argument and the size asked for, before anything is allocated or any work starts.
``docs/errors.md`` lists them (``tests/test_limits.py`` checks the two agree): :data:`LIMITS`
is the table it is checked against.

Why the run-time counters cannot wrap (int64): the run loop checks the budgets before every
instruction, so at most ``budget.max_steps`` instructions run and the cycle count is at most
``budget.max_cycles`` plus one instruction's cycles. One instruction's cycles are a latency
(at most :data:`MAX_LATENCY_CYCLES`) plus work bounded by the memories (at most
:data:`MAX_MEMORY_BYTES` bytes, :data:`MAX_ACC_ENTRIES` entries): far below 2**62. Energy is a
counter times an entry of at most :data:`MAX_ENERGY_PJ`, so it stays finite.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from isa.limits import (  # noqa: F401 - re-exported: every limit is importable from here
    MAX_INT_LITERAL_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_PROGRAM_FILE_BYTES,
    cut,
    short_repr,
)

# --- hardware config (emulator/config.py) ---------------------------------------------------
MAX_MEMORY_BYTES = 1 << 40  # memory.dram_bytes, memory.scratchpad_bytes
MAX_ACC_ENTRIES = 1 << 32  # accumulator.entries
MAX_ARRAY_DIM = 4096  # array.rows, array.cols
MAX_LATENCY_CYCLES = 1 << 20  # dma.latency_cycles, alu.latency_cycles
MAX_BYTES_PER_CYCLE = 1 << 20  # dma.bytes_per_cycle
MAX_LANES = 1 << 20  # alu.lanes
MAX_STEPS = 1 << 40  # budget.max_steps
MAX_CYCLES = 1 << 56  # budget.max_cycles
MAX_SECONDS = 1e9  # budget.max_seconds (0: no wall-time limit)
MAX_THREADS = 1024  # host.threads (0: automatic)
MAX_ENERGY_PJ = 1e9  # every energy.* entry (pJ per event)
MAX_MEMORY_BUDGET = 1 << 50  # budget.max_memory_bytes (0: auto)
AUTO_MEMORY_FRACTION = 0.5  # budget.max_memory_bytes = 0: this fraction of available memory

# working memory one instruction may need beyond the state, per byte of scratchpad and per
# accumulator entry (operand conversions to float, int64 partial results, masks)
WORK_BYTES_PER_SPAD_BYTE = 8
WORK_BYTES_PER_ACC_ENTRY = 16
# host memory per instruction of a loaded program: its counter row (23 x int64) and the
# decoded (handler, operands, instruction) entry
BYTES_PER_INSTRUCTION = 1024

# --- files and text ------------------------------------------------------------------------
MAX_YAML_FILE_BYTES = 1 << 20  # a config or model spec
MAX_YAML_NODES = 100_000  # YAML nodes after alias expansion
MAX_DUMP_DIMS = 16  # dimensions of a --dump shape

# --- model specs (programs/compiler/spec.py) -----------------------------------------------
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 1 << 16
MAX_LAYER_WIDTH = 1 << 20
MAX_SCHEDULE_EVERY = MAX_EPOCHS


@dataclass(frozen=True)
class Limit:
    """One documented limit: what it bounds, its value (as docs/errors.md prints it) and the
    error that enforces it."""

    what: str
    value: str
    error: str


LIMITS: tuple[Limit, ...] = (
    # hardware config
    Limit("`memory.dram_bytes`, `memory.scratchpad_bytes`", "1 .. 2^40", "ConfigError"),
    Limit("`accumulator.entries`", "1 .. 2^32", "ConfigError"),
    Limit("`array.rows`, `array.cols`", "1 .. 4096", "ConfigError"),
    Limit("`dma.latency_cycles`, `alu.latency_cycles`", "0 .. 2^20", "ConfigError"),
    Limit("`dma.bytes_per_cycle`, `alu.lanes`", "1 .. 2^20", "ConfigError"),
    Limit("`budget.max_steps`, `--max-steps`", "1 .. 2^40", "ConfigError, UsageError"),
    Limit("`budget.max_cycles`, `--max-cycles`", "1 .. 2^56", "ConfigError, UsageError"),
    Limit("`budget.max_seconds`, `--max-seconds` (0: no limit)", "0 .. 1e9, finite",
          "ConfigError, UsageError"),
    Limit("`host.threads` (0: automatic)", "0 .. 1024", "ConfigError"),
    Limit("`energy.*` (pJ per event)", "0 .. 1e9, finite", "ConfigError"),
    Limit("`budget.max_memory_bytes` (0: half the memory available)", "0 .. 2^50",
          "ConfigError"),
    Limit("a machine: DRAM + 9 x scratchpad + 20 x accumulator entries + 1 KiB per "
          "instruction", "the memory budget", "ConfigError"),
    # files and text
    Limit("config or model YAML file", "1 MiB", "ConfigError"),
    Limit("YAML nodes with every alias expanded", "100,000", "ConfigError"),
    Limit("YAML mapping keys", "each once", "ConfigError"),
    Limit("program file (assembly or binary)", "512 MiB", "UsageError"),
    Limit("integer literal (assembly, command line)", "100 characters",
          "AsmError, UsageError"),
    Limit("`.equ` constant", "defined once", "AsmError"),
    Limit("error message", "1,000 characters", "(cut, ending in ...)"),
    # run-time operands
    Limit("operand ranges", "inside the memory they address", "MemoryAccessError"),
    Limit("`gemm` zero-skip accounting: 24 x (MK + KN + MN) + 48 K bytes",
          "what the memory budget leaves beside the machine", "ExecutionError"),
    # command line
    Limit("`--load FILE@ADDR`", "a regular .npy file whose data fits the file and DRAM from "
          "ADDR on", "UsageError"),
    Limit("`--dump ADDR:LEN:...` shape", "1 .. 16 dimensions, each >= 1, inside DRAM",
          "UsageError"),
    Limit("`--trace-limit N`", "N >= 1, N x 1 KiB within the memory budget", "UsageError"),
    Limit("output paths (`--json`, `--csv`, `--plot`, `--dump`, `--trace`, `--emit-asm`, "
          "`--checkpoint`, `-o`, an experiment's `--out` tables)", "writable, distinct, checked "
          "before the run", "UsageError"),
    # model specs
    Limit("`epochs`, `--epochs`", "1 .. 1,000,000", "ConfigError, UsageError"),
    Limit("`batch_size`", "1 .. 65,536", "ConfigError"),
    Limit("`layers`", "a list of 2 or more widths, each 1 .. 2^20; or layer mappings "
          "(`docs/training.md`): sizes, filters and units 1 .. 65,535, kernels and strides "
          "1 .. 255, padding 0 .. 255, a max-pooling window at most 256 positions, an image "
          "network's batch at most 65,535", "ConfigError"),
    Limit("`update.schedule.every`", "1 .. 1,000,000", "ConfigError"),
    Limit("`update.lr`", "(0, 16]", "ConfigError"),
    Limit("`synthetic` dataset (40 samples of 64 features per class)", "fits "
          "`memory.dram_bytes` and the memory budget, checked before it is generated",
          "ConfigError"),
    # checkpoints
    Limit("checkpoint meta document", "1 MiB", "CheckpointError"),
    Limit("checkpoint payload, inflated", "what a checkpoint of its machine holds (state, "
          "64 MiB of host document)", "CheckpointError"),
    Limit("checkpoint archive members", "exactly the bytes their .npy headers claim",
          "CheckpointError"),
    Limit("`--checkpoint FILE` of another run", "not overwritten without "
          "`--overwrite-checkpoint`", "CheckpointError"),
)


def limits_table() -> str:
    """The limits as the markdown table docs/errors.md carries."""
    rows = ["| limit on | bound | error |", "|---|---|---|"]
    rows += [f"| {x.what} | {x.value} | {x.error} |" for x in LIMITS]
    return "\n".join(rows) + "\n"


# --- the memory budget ------------------------------------------------------------------------
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, if it has one."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), None)
        if rel is None:
            return None
        base = "/sys/fs/cgroup" + rel.rstrip("/")
        with open(base + "/memory.max", encoding="ascii") as f:
            lim = f.read().strip()
        if lim == "max":
            return None
        with open(base + "/memory.current", encoding="ascii") as f:
            cur = int(f.read().strip())
        return max(0, int(lim) - cur)
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def _address_space_room() -> int | None:
    """Bytes of address space left under RLIMIT_AS (ulimit -v), if one is set."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        vm = 0
    return max(0, soft - vm)


def available_memory() -> int:
    """Memory this process can still use: the least of the kernel's MemAvailable, the room
    under its cgroup limit and under RLIMIT_AS (16 GiB if none of them can be read)."""
    rooms = [r for r in (_meminfo_available(), _cgroup_room(), _address_space_room())
             if r is not None]
    return min(rooms) if rooms else 16 << 30


def memory_budget(configured: int) -> int:
    """The memory budget in bytes: ``budget.max_memory_bytes``, or for 0 (the default)
    :data:`AUTO_MEMORY_FRACTION` of :func:`available_memory` now."""
    return configured if configured else int(AUTO_MEMORY_FRACTION * available_memory())


def fmt_bytes(n: int) -> str:
    """``n`` bytes for a message: ``1,073,741,824 bytes (1.0 GiB)``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n:,} bytes ({n / (1 << shift):.1f} {unit})"
    return f"{n:,} bytes"
