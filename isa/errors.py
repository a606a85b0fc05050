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

    def __str__(self) -> str:
        loc = cut(self.location(), MAX_MESSAGE_CHARS)
        return f"{loc}: {self.kind}: {self.message}" if loc else f"{self.kind}: {self.message}"


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
    """A fault while running a program, located by program counter (and label if known)."""

    exit_code = 6
    kind = "execution error"

    def __init__(self, message: str, pc: int) -> None:
        super().__init__(message)
        self.pc = pc

    def location(self) -> str:
        return f"pc {self.pc}"


class MemoryAccessError(ExecutionError):
    """An access outside a memory: names the pc, the memory and the first bad address."""

    exit_code = 7
    kind = "memory access error"

    def __init__(self, message: str, pc: int, memory: str, address: int) -> None:
        super().__init__(message, pc)
        self.memory, self.address = memory, address

    def location(self) -> str:
        return f"pc {self.pc}: {self.memory}[{self.address:#x}]"


class BudgetExceeded(ExecutionError):
    """The step or cycle budget ran out: the program is stopped, state kept for inspection."""

    exit_code = 8
    kind = "budget exceeded"

    def __init__(self, message: str, pc: int, steps: int, cycles: int) -> None:
        super().__init__(message, pc)
        self.steps, self.cycles = steps, cycles

    def location(self) -> str:
        return f"pc {self.pc} after {self.steps} steps, {self.cycles} cycles"


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
