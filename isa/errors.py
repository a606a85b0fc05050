"""Typed errors, each carrying the location a user needs to find the fault.

Every error lpemu raises on bad input derives from :class:`LpemuError`. The CLI prints
``str(err)`` on one line and exits with ``err.exit_code``; it never shows a traceback.
The location fields are plain attributes so tests and tools can read them.
"""

from __future__ import annotations

from isa.limits import MAX_MESSAGE_CHARS, cut


class LpemuError(Exception):
    """Base of every user-facing error. ``exit_code`` is distinct per subclass."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str) -> None:
        # one line of bounded length, always
        message = cut(message.replace("\r", " ").replace("\n", " "), MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message

    def location(self) -> str:
        return ""

    def __reduce__(self):  # pickle by state: subclasses' __init__ take location arguments
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))

    def __str__(self) -> str:
        loc = cut(self.location(), MAX_MESSAGE_CHARS)
        return f"{loc}: {self.kind}: {self.message}" if loc else f"{self.kind}: {self.message}"


def _rebuild(cls: type[LpemuError], args: tuple, state: dict) -> LpemuError:
    """Unpickle an :class:`LpemuError` (errors cross process boundaries in sweeps)."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class UsageError(LpemuError):
    """A bad command-line argument (names the argument)."""

    exit_code = 2
    kind = "usage error"

    def __init__(self, message: str, argument: str = "") -> None:
        super().__init__(message)
        self.argument = argument

    def location(self) -> str:
        return self.argument


class AsmError(LpemuError):
    """Malformed assembly source, located by file:line:col (1-based)."""

    exit_code = 3
    kind = "assembly error"

    def __init__(self, message: str, file: str, line: int, col: int) -> None:
        super().__init__(message)
        self.file, self.line, self.col = file, line, col

    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class BinaryFormatError(LpemuError):
    """A truncated or corrupted program/checkpoint file, located by byte offset."""

    exit_code = 4
    kind = "binary format error"

    def __init__(self, message: str, file: str, offset: int) -> None:
        super().__init__(message)
        self.file, self.offset = file, offset

    def location(self) -> str:
        return f"{self.file}@byte {self.offset}"


class ConfigError(LpemuError):
    """A bad configuration value or unknown key, located by file and dotted key path."""

    exit_code = 5
    kind = "config error"

    def __init__(self, message: str, key: str, file: str = "") -> None:
        super().__init__(message)
        self.key, self.file = key, file

    def location(self) -> str:
        if self.file and self.key:
            return f"{self.file}:{self.key}"
        return self.file or self.key


class ExecutionError(LpemuError):
    """A fault while running a program, located by program counter. Once annotated
    (``emulator.debug.annotate``, done by ``lpemu run`` and the Python API), it also names the
    nearest label and the offset from it and, for a program with debug information, the
    source file, line and the instruction text."""

    exit_code = 6
    kind = "execution error"

    def __init__(self, message: str, pc: int) -> None:
        super().__init__(message)
        self.pc = pc
        self.label: str | None = None  # nearest label at or before pc
        self.label_offset = 0
        self.source_file: str | None = None
        self.source_line: int | None = None
        self.text: str | None = None  # the faulting instruction (source text or disassembly)

    def where(self) -> str:
        """``pc N`` or ``pc N (label+offset)``."""
        if not getattr(self, "label", None):
            return f"pc {self.pc}"
        off = getattr(self, "label_offset", 0)
        return f"pc {self.pc} ({self.label}+{off})" if off else f"pc {self.pc} ({self.label})"

    def source_prefix(self) -> str:
        """``file:line: `` when the source is known, else ""."""
        f = getattr(self, "source_file", None)
        return f"{f}:{self.source_line}: " if f else ""

    def location(self) -> str:
        return f"{self.source_prefix()}{self.where()}"

    def __str__(self) -> str:
        s = super().__str__()
        text = getattr(self, "text", None)
        return f"{s}; instruction: {text}" if text else s


class MemoryAccessError(ExecutionError):
    """An access outside a memory: names the pc, the memory and the first bad address."""

    exit_code = 7
    kind = "memory access error"

    def __init__(self, message: str, pc: int, memory: str, address: int) -> None:
        super().__init__(message, pc)
        self.memory, self.address = memory, address

    def location(self) -> str:
        return f"{super().location()}: {self.memory}[{self.address:#x}]"


class BudgetExceeded(ExecutionError):
    """The step or cycle budget ran out: the program is stopped, state kept for inspection."""

    exit_code = 8
    kind = "budget exceeded"

    def __init__(self, message: str, pc: int, steps: int, cycles: int) -> None:
        super().__init__(message, pc)
        self.steps, self.cycles = steps, cycles

    def location(self) -> str:
        return f"{super().location()} after {self.steps} steps, {self.cycles} cycles"


class CheckpointError(LpemuError):
    """A checkpoint file that cannot be used: truncated, corrupted, wrong format version, or
    taken from a different program or config. Names the file and the byte offset."""

    exit_code = 10
    kind = "checkpoint error"

    def __init__(self, message: str, file: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.file, self.offset = file, offset

    def location(self) -> str:
        return self.file if self.offset is None else f"{self.file}@byte {self.offset}"


class CountOnlyError(ExecutionError):
    """Count-only mode refused a program: at ``pc`` a counter (or a fault, or the control flow)
    depends on values that only running the datapath would produce (docs/timing.md)."""

    exit_code = 12
    kind = "count-only refused"

    def __init__(self, message: str, pc: int, instruction: str = "") -> None:
        super().__init__(message, pc)
        self.instruction = instruction

    def location(self) -> str:
        return f"pc {self.pc} ({self.instruction})" if self.instruction else f"pc {self.pc}"


class SweepError(LpemuError):
    """A sweep's results file cannot be used (unreadable, not a results table of lpemu), or
    the Dask cluster cannot be reached. Names the file or the scheduler address."""

    exit_code = 13
    kind = "sweep error"

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where

    def location(self) -> str:
        return self.where


class DatasetError(LpemuError):
    """A dataset file that cannot be used: missing, unreadable, truncated or malformed (IDX,
    npz, gzip). Names the file, the npz member when there is one, and the byte offset of the
    fault when one applies (for ``.gz`` files and npz members: the offset in the uncompressed
    content)."""

    exit_code = 11
    kind = "dataset error"

    def __init__(self, message: str, file: str, offset: int | None = None,
                 member: str = "") -> None:
        super().__init__(message)
        self.file, self.offset, self.member = file, offset, member

    def location(self) -> str:
        loc = f"{self.file}:{self.member}" if self.member else self.file
        return loc if self.offset is None else f"{loc}@byte {self.offset}"
