"""Reading a file with a size bound (the lowest layer needs it for program files; emulator/files.py
re-exports it beside the atomic writer)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class TooLarge(Exception):
    """A file larger than the limit it is read with (``size`` bytes, or more if not exact)."""

    def __init__(self, size: int, limit: int, exact: bool = True) -> None:
        super().__init__(size, limit)
        self.size, self.limit, self.exact = size, limit, exact

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        if self.exact:
            return f"is {self.size:,} bytes, over the limit of {self.limit:,} bytes"
        return f"holds more than the limit of {self.limit:,} bytes"


def read_bounded(path: str | Path, limit: int, prefix: bool = False) -> bytearray:
    """Read at most ``limit`` bytes of ``path``; raise :class:`TooLarge` if it holds more (so
    ``/dev/zero`` stops after ``limit + 1`` bytes), or with ``prefix`` return its first
    ``limit`` bytes. The file is opened without blocking, so a FIFO with no writer does not
    hang the open; a directory raises IsADirectoryError."""
    path = str(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if stat.S_ISREG(st.st_mode) and st.st_size > limit and not prefix:
            raise TooLarge(st.st_size, limit)
        if not stat.S_ISREG(st.st_mode):
            os.set_blocking(fd, True)  # a pipe or device: read until EOF or the bound
        want = limit if prefix else limit + 1
        buf = bytearray()  # grows in place: the peak is the data, not data + a joined copy
        while len(buf) < want:
            b = os.read(fd, min(1 << 20, want - len(buf)))
            if not b:
                break
            buf += b
        if len(buf) > limit:
            raise TooLarge(len(buf), limit, exact=False)
        return buf
    finally:
        os.close(fd)
