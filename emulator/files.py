"""File handling shared by checkpoints and the command line: reads with a size bound (a device
or FIFO given as a file cannot make lpemu read forever or block), output paths checked before
a long run starts, and atomic writes.

An atomic write goes to a temporary file in the target's directory (``.NAME.PID.XXXX.tmp``),
is flushed and fsync'ed, then renamed over the target and the directory fsync'ed: a crash,
a full disk or Ctrl-C leaves either the old file or the new one, never a torn or partial one,
and the temporary file is removed on every failure the process survives. Temporary files that
a killed process (SIGKILL) left behind are removed by the next write to the same target. A
target that exists and is not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO) is
written in place: renaming over a device node would replace it. Every error names the path the
user gave, never the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from isa.files import TooLarge, read_bounded  # noqa: F401 - re-exported

__all__ = ["TooLarge", "atomic_write", "output_problem", "read_bounded"]


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be written as an output file, or None: checked before a run so a
    long run does not end in an unwritable output. A missing file needs an existing, writable
    directory; an existing one must not be a directory."""
    if not path:
        return "the path is empty"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        return e.strerror or str(e)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return "is a directory"
        if stat.S_ISREG(st.st_mode) and not os.access(path, os.W_OK):
            return "is not writable"
        if stat.S_ISREG(st.st_mode):
            return _dir_problem(os.path.dirname(os.path.realpath(path)) or ".")
        return None  # a device or FIFO: written in place
    return _dir_problem(os.path.dirname(path) or ".")


def _dir_problem(d: str) -> str | None:
    if not os.path.isdir(d):
        return f"directory {d} does not exist"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"directory {d} is not writable"
    return None


def _tmp_prefix(name: str) -> str:
    return f".{name}."


def _remove_stale_temps(d: str, name: str) -> None:
    """Remove ``.NAME.PID.*.tmp`` files of processes that no longer exist (killed writers)."""
    prefix = _tmp_prefix(name)
    try:
        entries = os.listdir(d)
    except OSError:
        return
    for e in entries:
        if not (e.startswith(prefix) and e.endswith(".tmp")):
            continue
        pid_text = e[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, e))
        except OSError:  # alive (another user's process) or unknowable: leave it
            pass


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically by calling ``write(f)`` on a temporary file in the same
    directory, then fsync and rename (see the module docstring). An OSError names ``path``."""
    user = str(path)
    try:
        st = os.stat(user)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _named(e, user) from None
    try:
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", user)
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(user, "wb") as f:  # a device or FIFO: in place
                write(f)
            return
        target = os.path.realpath(user)  # through a symlink: replace the file, keep the link
        d = os.path.dirname(target) or "."
        name = os.path.basename(target)
        _remove_stale_temps(d, name)
        fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(name)}{os.getpid()}.", suffix=".tmp",
                                   dir=d)
    except OSError as e:
        raise _named(e, user) from None
    try:
        mode = st.st_mode & 0o7777 if st is not None else 0o666 & ~_umask()
        os.chmod(tmp, mode)  # like the file it replaces, or a normally created file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named(e, user) from None
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - the rename is done; some filesystems refuse this
        pass
    finally:
        os.close(dfd)


def _named(e: OSError, path: str) -> OSError:
    """``e`` as an OSError naming ``path`` (the user's path, not a temporary file's)."""
    return OSError(e.errno, e.strerror or str(e), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
