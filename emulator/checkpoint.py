"""Checkpoints: the whole machine state (and a host's own state) in one versioned, checksummed
file, written atomically.

File layout (little-endian)::

    offset  size  field
    0       4     magic b"LPCK"
    4       2     format version (1)
    6       2     reserved, 0
    8       8     payload length in bytes
    16      32    SHA-256 of the payload
    48      ...   payload: a zlib-compressed numpy .npz archive (no pickles)

The payload holds DRAM as its non-zero 4 KiB pages (DRAM is mostly empty), the scratchpad,
accumulator memory, the counter matrix, scalar and exponent registers, RNG seed and counter,
flags, pc, halted, steps, cycles, the DMA engine's timeline, SHA-256 digests of the program
words and of the config, and a JSON ``extra`` document for the host (e.g. the training
driver's epoch and history).

Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed
over the target (and the directory fsync'ed), so a crash leaves either the old checkpoint or
the new one, never a torn file. Every defect found on reading raises :class:`CheckpointError`
with the file and, where it applies, the byte offset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import zlib
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config
from emulator.machine import Machine
from isa.errors import CheckpointError

MAGIC = b"LPCK"
VERSION = 1
HEADER = struct.Struct("<4sHHQ32s")  # 48 bytes
PAGE = 4096


def program_digest(words: list[int]) -> str:
    return hashlib.sha256(np.array(words, dtype=np.uint64).tobytes()).hexdigest()


def config_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- state
def machine_state(m: Machine) -> dict[str, np.ndarray]:
    """Every piece of machine state as named arrays."""
    dram = m.dram
    npages = -(-dram.size // PAGE)
    padded = dram.size == npages * PAGE
    pages_view = dram.reshape(npages, PAGE) if padded else None
    if pages_view is not None:
        nz = np.flatnonzero(pages_view.any(axis=1))
        page_data = pages_view[nz]
    else:
        nz = np.array([i for i in range(npages) if dram[i * PAGE : (i + 1) * PAGE].any()],
                      dtype=np.int64)
        page_data = np.stack([np.pad(dram[i * PAGE : (i + 1) * PAGE],
                                     (0, max(0, (i + 1) * PAGE - dram.size)))
                              for i in nz]) if nz.size else np.zeros((0, PAGE), np.uint8)
    scalars = np.array([m.flags, m.pc, int(m.halted), m.steps, m.cycles, m.dma_free],
                       dtype=np.int64)
    inflight = np.array([(("dram", "scratchpad", "accumulator").index(mem), lo, hi, end)
                         for mem, lo, hi, end in m.inflight], dtype=np.int64).reshape(-1, 4)
    return {
        "dram_size": np.array([dram.size], dtype=np.int64),
        "dram_pages": nz.astype(np.int64),
        "dram_page_data": np.ascontiguousarray(page_data, dtype=np.uint8),
        "spad": m.spad,
        "acc": m.acc.astype(np.int64),  # the file format keeps int64 words
        "counts": m.counts,
        "r": np.array(m.r, dtype=np.int64),
        "e": np.array(m.e, dtype=np.int64),
        "rng": np.array(m.rng, dtype=np.uint64),
        "scalars": scalars,
        "inflight": inflight,
    }


def restore_machine(m: Machine, st: dict[str, np.ndarray], file: str) -> None:
    """Put a state from :func:`machine_state` back into a machine of the same shape."""
    def need(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        a = st[name]
        if a.shape != shape or a.dtype != np.dtype(dtype):
            raise CheckpointError(f"{name} has shape {a.shape} {a.dtype}, expected {shape} "
                                  f"{np.dtype(dtype)}", file)
        return a

    if int(need("dram_size", (1,), "int64")[0]) != m.dram.size:
        raise CheckpointError("DRAM size differs from the config's", file)
    pages = st["dram_pages"]
    data = st["dram_page_data"]
    npages = -(-m.dram.size // PAGE)
    if (pages.ndim != 1 or pages.dtype != np.int64 or data.shape != (pages.size, PAGE)
            or data.dtype != np.uint8 or np.unique(pages).size != pages.size
            or (pages.size and (pages.min() < 0 or pages.max() >= npages))):
        raise CheckpointError("DRAM page table is malformed", file)
    spad = need("spad", m.spad.shape, "uint8")
    acc = need("acc", m.acc.shape, "int64")
    counts = need("counts", m.counts.shape, "int64")
    r = need("r", (32,), "int64")
    e = need("e", (16,), "int64")
    rng = need("rng", (2,), "uint64")
    sc = need("scalars", (6,), "int64")
    infl = st["inflight"]
    if infl.ndim != 2 or infl.shape[1] != 4 or infl.dtype != np.int64:
        raise CheckpointError("DMA in-flight table is malformed", file)
    # values a running machine can hold (the SHA-256 only proves the file is as written)
    flags, pc, halted, steps, cycles, dma_free = (int(v) for v in sc)
    mem_sizes = (m.dram.size, m.spad.size, m.acc.size)
    checks = [
        (r[0] == 0, "r0 is not zero"),
        (-(1 << 31) <= e.min() and e.max() < 1 << 31, "an exponent is outside 32 bits"),
        (acc.size == 0 or m.cfg.acc_min <= acc.min() and acc.max() <= m.cfg.acc_max,
         "an accumulator entry is outside the accumulator width"),
        (counts.size == 0 or counts.min() >= 0, "a counter is negative"),
        (0 <= flags < 8, "flags has bits other than 0..2"),
        (0 <= pc <= len(m.program), f"pc {pc} is outside the program"),
        (halted in (0, 1), "halted is not 0 or 1"),
        (min(steps, cycles, dma_free) >= 0, "a step, cycle or DMA-engine count is negative"),
        (all(0 <= k < 3 and 0 <= lo <= hi <= mem_sizes[k] and end >= 0
             for k, lo, hi, end in infl.tolist()),
         "a DMA in-flight entry names no memory or an impossible range"),
    ]
    for ok, what in checks:
        if not ok:
            raise CheckpointError(f"machine state is impossible: {what}", file)
    m.dram[:] = 0
    for i, p in enumerate(pages.tolist()):
        lo = p * PAGE
        hi = min(lo + PAGE, m.dram.size)
        m.dram[lo:hi] = data[i, : hi - lo]
    m.spad[:] = spad
    m.acc[:] = acc
    m.counts[:] = counts
    m.r[:] = array("q", r.tobytes())  # in place: the machine shares these arrays
    m.e[:] = array("q", e.tobytes())
    m.rng[:] = array("Q", rng.tobytes())
    m.flags, m.pc, m.steps, m.cycles, m.dma_free = flags, pc, steps, cycles, dma_free
    m.halted = bool(halted)
    names = ("dram", "scratchpad", "accumulator")
    m.inflight = [(names[int(k)], int(lo), int(hi), int(end)) for k, lo, hi, end in infl]


# ---------------------------------------------------------------------------- file format
def encode(m: Machine, extra: dict[str, Any] | None = None) -> bytes:
    st = machine_state(m)
    st["program_sha256"] = np.frombuffer(program_digest(m.program.words).encode(), np.uint8)
    st["config_sha256"] = np.frombuffer(config_digest(m.cfg).encode(), np.uint8)
    st["extra"] = np.frombuffer(json.dumps(extra or {}, sort_keys=True).encode(), np.uint8)
    return pack(st)


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Header, SHA-256 and compressed payload around named arrays (the file format only)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = zlib.compress(buf.getvalue(), 1)
    return HEADER.pack(MAGIC, VERSION, 0, len(payload), hashlib.sha256(payload).digest()) \
        + payload


def decode(data: bytes, file: str = "<checkpoint>") -> tuple[dict[str, np.ndarray],
                                                             dict[str, Any]]:
    """Validate and unpack a checkpoint; returns (machine state arrays, extra)."""
    if len(data) < HEADER.size:
        raise CheckpointError(f"file is {len(data)} bytes, shorter than the {HEADER.size}-byte "
                              "header", file, len(data))
    magic, version, reserved, n, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"bad magic {magic!r}, expected {MAGIC!r}", file, 0)
    if version != VERSION:
        raise CheckpointError(f"unsupported checkpoint version {version}, expected {VERSION}",
                              file, 4)
    if reserved:
        raise CheckpointError("reserved header field is not zero", file, 6)
    payload = data[HEADER.size :]
    if len(payload) != n:
        raise CheckpointError(f"payload is {len(payload)} bytes, header says {n} (truncated or "
                              "padded)", file, HEADER.size + min(len(payload), n))
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("SHA-256 mismatch: the payload is corrupted", file, 16)
    try:
        raw = zlib.decompress(payload)
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            st = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zlib/zipfile/numpy on damaged bytes raise many types
        raise CheckpointError(f"payload does not unpack: {type(e).__name__}: {e}", file,
                              HEADER.size) from None
    required = {"dram_size", "dram_pages", "dram_page_data", "spad", "acc", "counts", "r", "e",
                "rng", "scalars", "inflight", "program_sha256", "config_sha256", "extra"}
    not_arrays = sorted(k for k, v in st.items() if not isinstance(v, np.ndarray))
    if not_arrays:  # an archive member that is not a .npy array comes back as raw bytes
        raise CheckpointError(f"payload members {not_arrays} are not arrays", file,
                              HEADER.size)
    missing = required - st.keys()
    if missing:
        raise CheckpointError(f"payload lacks {sorted(missing)}", file, HEADER.size)
    try:
        extra = json.loads(st.pop("extra").tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"extra document is not JSON: {type(e).__name__}: {e}", file,
                              HEADER.size) from None
    if not isinstance(extra, dict):
        raise CheckpointError("extra document is not a JSON object", file, HEADER.size)
    return st, extra


def save(path: str | Path, m: Machine, extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically: temp file, flush, fsync, rename, fsync the directory."""
    path = Path(path)
    data = encode(m, extra)
    d = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=d)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # like a normally created file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    return decode(Path(path).read_bytes(), str(path))


def restore(path: str | Path, m: Machine) -> dict[str, Any]:
    """Load ``path`` into machine ``m`` (same program and config); returns the extra document."""
    st, extra = load(path)
    file = str(path)
    if st["program_sha256"].tobytes().decode(errors="replace") != program_digest(
            m.program.words):
        raise CheckpointError("checkpoint was taken from a different program", file)
    if st["config_sha256"].tobytes().decode(errors="replace") != config_digest(m.cfg):
        raise CheckpointError("checkpoint was taken with a different hardware config", file)
    restore_machine(m, st, file)
    return extra
