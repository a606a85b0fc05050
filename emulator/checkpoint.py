"""Checkpoints: the whole machine state (and a host's own state) in one versioned, checksummed
file that records the run it belongs to, written atomically.

File layout (little-endian)::

    offset  size  field
    0       4     magic b"LPCK"
    4       2     format version (2)
    6       2     reserved, 0
    8       8     body length in bytes
    16      32    SHA-256 of the body
    48      ...   body:
                    8   raw length: bytes of the payload once decompressed
                    4   meta length
                    ... meta: a JSON object naming the run (kind, run_id, program and config
                        SHA-256, the config, and for training runs the model spec)
                    ... payload: a zlib-compressed numpy .npz archive (no pickles)

The payload holds DRAM as its non-zero 4 KiB pages (DRAM is mostly empty), the scratchpad,
accumulator memory, the counter matrix, scalar and exponent registers, RNG seed and counter,
flags, pc, halted, steps, cycles, the DMA engine's timeline, SHA-256 digests of the program
words and of the config, and a JSON ``extra`` document for the host (e.g. the training
driver's epoch and history).

Reading is bounded before anything is inflated: the file's size, the meta's size, and the raw
length (at most what a checkpoint of the machine it is restored into can hold, or the memory
budget when that machine is not known yet) are checked first; the archive's members are checked
against their .npy headers before numpy reads them. :func:`read_meta` reads only the header and
the meta, so a host can build the machine a checkpoint belongs to before inflating anything.

Writing goes through :func:`emulator.files.atomic_write` (temporary file in the same directory,
fsync, rename, fsync of the directory). :class:`CheckpointTarget` is a path a run writes again
and again: it refuses a file that belongs to another run unless told to overwrite it. Every
defect found on reading raises :class:`CheckpointError` with the file and, where it applies,
the byte offset.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import struct
import zipfile
import zlib
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from emulator import limits
from emulator.config import Config
from emulator.files import TooLarge, atomic_write, read_bounded
from emulator.machine import Machine
from isa.errors import CheckpointError

MAGIC = b"LPCK"
VERSION = 2
HEADER = struct.Struct("<4sHHQ32s")  # 48 bytes
BODY = struct.Struct("<QI")  # raw length, meta length: the first 12 bytes of the body
PAGE = 4096
MAX_META_BYTES = 1 << 20
MAX_INFLIGHT = 1 << 16  # DMA transfers in flight a checkpoint may record
EXTRA_BYTES = 64 << 20  # the host's extra document, beyond what a machine holds


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
    if infl.ndim != 2 or infl.shape[1] != 4 or infl.dtype != np.int64 or \
            infl.shape[0] > MAX_INFLIGHT:
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
def new_run_id() -> str:
    """A random identifier for one run (kept across its resumes)."""
    return secrets.token_hex(8)


def identity(m: Machine, kind: str = "machine", run_id: str | None = None,
             **more: Any) -> dict[str, Any]:
    """The meta document of a checkpoint of ``m``: what it is and which run it belongs to."""
    d = {"kind": kind, "run_id": run_id or new_run_id(),
         "program_sha256": program_digest(m.program.words),
         "config_sha256": config_digest(m.cfg), "config": m.cfg.to_dict(),
         "instructions": len(m.program.words)}
    d.update(more)
    return d


def encode(m: Machine, extra: dict[str, Any] | None = None,
           meta: dict[str, Any] | None = None) -> bytes:
    st = machine_state(m)
    st["program_sha256"] = np.frombuffer(program_digest(m.program.words).encode(), np.uint8)
    st["config_sha256"] = np.frombuffer(config_digest(m.cfg).encode(), np.uint8)
    st["extra"] = np.frombuffer(json.dumps(extra or {}, sort_keys=True).encode(), np.uint8)
    return pack(st, meta if meta is not None else identity(m))


def pack(arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> bytes:
    """Header, SHA-256, meta and compressed payload around named arrays (the format only)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return seal(buf.getvalue(), meta)


def seal(raw: bytes, meta: dict[str, Any] | None = None) -> bytes:
    """A checkpoint file around an uncompressed payload ``raw`` and a meta document."""
    m = json.dumps(meta or {}, sort_keys=True).encode()
    body = BODY.pack(len(raw), len(m)) + m + zlib.compress(raw, 1)
    return HEADER.pack(MAGIC, VERSION, 0, len(body), hashlib.sha256(body).digest()) + body


def max_raw_bytes(m: Machine) -> int:
    """The most an uncompressed payload of a checkpoint of ``m`` can hold: its state arrays,
    the archive's overhead, in-flight DMA entries and the host's extra document."""
    npages = -(-m.dram.size // PAGE)
    return (npages * (PAGE + 8) + m.spad.size + 8 * m.acc.size + m.counts.nbytes
            + 32 * MAX_INFLIGHT + (1 << 16) + EXTRA_BYTES + 21 * m.counts.size)


def max_file_bytes(max_raw: int) -> int:
    """Largest file whose payload inflates to at most ``max_raw`` bytes (zlib's bound)."""
    return HEADER.size + BODY.size + MAX_META_BYTES + max_raw + (max_raw >> 12) + 64


def _budget_raw() -> int:
    """Bound of the raw payload when the machine is not known: the memory budget."""
    return limits.memory_budget(0)


def _fixed_header(data: bytes, file: str) -> tuple[int, bytes]:
    """Check the fixed header's size, magic, version and reserved field (``data`` may be the
    whole file or its first bytes); (payload length, SHA-256) as the header states them."""
    if len(data) < HEADER.size:
        raise CheckpointError(f"file is {len(data)} bytes, shorter than the {HEADER.size}-byte "
                              "header", file, len(data))
    magic, version, reserved, n, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"bad magic {magic!r}, expected {MAGIC!r}", file, 0)
    if version != VERSION:
        old = " (format 1 recorded no run identity; resume it with the lpemu that wrote it)" \
            if version == 1 else ""
        raise CheckpointError(f"unsupported checkpoint version {version}, expected {VERSION}"
                              + old, file, 4)
    if reserved:
        raise CheckpointError("reserved header field is not zero", file, 6)
    return n, digest


def _header(data: bytes, file: str) -> tuple[int, int]:
    """Check the fixed header and the body's length and checksum; (raw length, meta length)."""
    n, digest = _fixed_header(data, file)
    body = len(data) - HEADER.size
    if body != n:
        raise CheckpointError(f"payload is {body} bytes, header says {n} (truncated or "
                              "padded)", file, HEADER.size + min(body, n))
    if hashlib.sha256(memoryview(data)[HEADER.size:]).digest() != digest:
        raise CheckpointError("SHA-256 mismatch: the payload is corrupted", file, 16)
    return _body_lengths(data, file)


def _body_lengths(data: bytes, file: str) -> tuple[int, int]:
    if len(data) < HEADER.size + BODY.size:
        raise CheckpointError("body shorter than its 12-byte length fields", file, HEADER.size)
    raw_len, meta_len = BODY.unpack_from(data, HEADER.size)
    if meta_len > MAX_META_BYTES or HEADER.size + BODY.size + meta_len > len(data):
        raise CheckpointError(f"meta length {meta_len:,} is impossible (at most "
                              f"{MAX_META_BYTES:,} and within the file)", file, HEADER.size + 8)
    return raw_len, meta_len


def _meta(data: bytes, meta_len: int, file: str) -> dict[str, Any]:
    off = HEADER.size + BODY.size
    try:
        meta = json.loads(data[off : off + meta_len].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"meta document is not JSON: {type(e).__name__}: {e}", file,
                              off) from None
    if not isinstance(meta, dict):
        raise CheckpointError("meta document is not a JSON object", file, off)
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """The meta document of a checkpoint file (what it is, which run, program and config),
    reading only the header and the meta (unverified: :func:`restore` checks the SHA-256)."""
    file = str(path)
    try:
        head = read_bounded(file, HEADER.size + BODY.size + MAX_META_BYTES, prefix=True)
    except TooLarge as e:  # pragma: no cover - prefix reads never exceed
        raise CheckpointError(f"checkpoint {e.describe()}", file) from None
    _fixed_header(head, file)
    _, meta_len = _body_lengths(head, file)
    return _meta(head, meta_len, file)


def decode(data: bytes, file: str = "<checkpoint>", max_raw: int | None = None
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Validate and unpack a checkpoint; returns (machine state arrays, extra). The payload
    may inflate to at most ``max_raw`` bytes (default: the memory budget)."""
    raw_len, meta_len = _header(data, file)
    _meta(data, meta_len, file)
    bound = _budget_raw() if max_raw is None else max_raw
    if raw_len > bound:
        raise CheckpointError(f"payload would inflate to {raw_len:,} bytes, over the "
                              f"{bound:,} a checkpoint of this machine can hold", file,
                              HEADER.size)
    comp = memoryview(data)[HEADER.size + BODY.size + meta_len :]
    try:
        d = zlib.decompressobj()
        raw = d.decompress(comp, raw_len + 1)
        if len(raw) != raw_len or not d.eof or d.unused_data:
            raise ValueError(f"inflates to {len(raw):,}{'+' if not d.eof else ''} bytes, the "
                             f"header says {raw_len:,}")
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            _check_members(zf)
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            st = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
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


def _check_members(zf: zipfile.ZipFile) -> None:
    """Every .npy member holds exactly the bytes its header promises (numpy allocates what a
    header claims before it reads, so a forged shape must be caught here)."""
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"member {info.filename}: .npy version {version}")
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds Python objects")
            claimed = math.prod(shape) * dtype.itemsize
            held = info.file_size - f.tell()
        if claimed != held:
            raise ValueError(f"member {info.filename} claims shape {shape} ({claimed:,} bytes) "
                             f"but holds {held:,}")


def save(path: str | Path, m: Machine, extra: dict[str, Any] | None = None,
         meta: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically: temp file, flush, fsync, rename, fsync the directory."""
    data = encode(m, extra, meta)
    atomic_write(path, lambda f: f.write(data))


def load(path: str | Path, max_raw: int | None = None
         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and unpack a checkpoint file (payload bounded by ``max_raw``; default the memory
    budget)."""
    file = str(path)
    bound = _budget_raw() if max_raw is None else max_raw
    try:
        data = read_bounded(file, max_file_bytes(bound))
    except TooLarge as e:
        raise CheckpointError(f"checkpoint {e.describe()}", file) from None
    return decode(data, file, bound)


def restore(path: str | Path, m: Machine) -> dict[str, Any]:
    """Load ``path`` into machine ``m`` (same program and config); returns the extra document.
    Nothing larger than a checkpoint of ``m`` can be is read or inflated."""
    st, extra = load(path, max_raw_bytes(m))
    file = str(path)
    if st["program_sha256"].tobytes().decode(errors="replace") != program_digest(
            m.program.words):
        raise CheckpointError("checkpoint was taken from a different program", file)
    if st["config_sha256"].tobytes().decode(errors="replace") != config_digest(m.cfg):
        raise CheckpointError("checkpoint was taken with a different hardware config", file)
    restore_machine(m, st, file)
    return extra


class CheckpointTarget:
    """The checkpoint file of one run, written again and again. It refuses to overwrite a file
    that belongs to another run (a different ``run_id`` in its meta, or not a checkpoint at all)
    unless ``overwrite``, and refuses to write once another process has replaced the file
    since this run last wrote it (two runs sharing one path)."""

    def __init__(self, path: str | Path, run_id: str, overwrite: bool = False) -> None:
        self.path, self.run_id = str(path), run_id
        self._mine: tuple[int, int, int] | None = None
        sig = self._signature()
        if sig is None or overwrite:
            self._mine = sig
            return
        try:
            owner = read_meta(self.path).get("run_id")
        except CheckpointError:
            owner = None
        if owner != run_id:
            what = "another run's checkpoint" if owner else "not a checkpoint of this run"
            raise CheckpointError(f"exists and is {what}; refusing to overwrite it (pass "
                                  "--overwrite-checkpoint to replace it)", self.path)
        self._mine = sig  # the checkpoint this run resumes from

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.path) from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def save(self, m: Machine, extra: dict[str, Any], meta: dict[str, Any]) -> None:
        now = self._signature()
        if now is not None and now != self._mine:
            raise CheckpointError("was written by another run since this run last wrote it "
                                  "(two runs share this checkpoint path); not overwriting it",
                                  self.path)
        save(self.path, m, extra, dict(meta, run_id=self.run_id))
        self._mine = self._signature()
