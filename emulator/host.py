"""Host access to a machine's DRAM with typed arrays (what ``--load`` and ``--dump`` do).

Arrays travel as their raw little-endian bytes: :func:`load_array` copies an array's bytes into
DRAM at a byte address, :func:`read_array` reads ``shape`` elements of an integer type back.
Both bounds-check the range (a :class:`MemoryAccessError` naming the address).
"""

from __future__ import annotations

import math

import numpy as np

from emulator.state import State


def load_array(m: State, addr: int, array: np.ndarray) -> None:
    """Copy ``array``'s elements (C order, little-endian) into DRAM starting at byte ``addr``."""
    a = np.asarray(array)
    m.load_dram(addr, np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")))


def read_array(m: State, addr: int, shape: int | tuple[int, ...], dtype: str | np.dtype
               ) -> np.ndarray:
    """``shape`` elements of ``dtype`` (little-endian) from DRAM at byte ``addr``, as a new
    native-endian array."""
    dt = np.dtype(dtype)
    if dt.kind not in "iu":
        raise ValueError(f"dtype must be an integer type, got {dt}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dt.itemsize
    raw = m.read_dram(addr, nbytes)
    return np.frombuffer(raw, dtype=dt.newbyteorder("<")).reshape(shape).astype(
        dt.newbyteorder("="))
