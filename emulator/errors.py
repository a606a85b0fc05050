"""Re-export of the typed errors (they live in :mod:`isa.errors`, the lowest layer)."""

from isa.errors import (  # noqa: F401
    AsmError,
    BinaryFormatError,
    BudgetExceeded,
    CheckpointError,
    ConfigError,
    CountOnlyError,
    DatasetError,
    ExecutionError,
    LpemuError,
    MemoryAccessError,
    SweepError,
    UsageError,
)
