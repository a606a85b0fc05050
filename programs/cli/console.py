"""Rich consoles for the command line: tables are never cut to fit.

On a terminal, table cells fold onto more lines instead of ending in an ellipsis; in files and
pipes the console is as wide as the widest line, so a table keeps its natural width.
"""

from __future__ import annotations

from typing import Any

WIDE = 1000  # the width of a non-terminal console: wider than any table lpemu prints


def make_console(quiet: bool = False, stderr: bool = False, **kw: Any):
    """A rich Console; not a terminal: :data:`WIDE` columns instead of rich's 80."""
    from rich.console import Console

    con = Console(quiet=quiet, stderr=stderr, **kw)
    if not con.is_terminal:
        con = Console(quiet=quiet, stderr=stderr, width=WIDE, **kw)
    return con


def print_table(con: Any, table: Any) -> None:
    """Print ``table`` whole: no cell is elided (on a terminal, cells fold instead)."""
    for col in table.columns:
        col.overflow = "fold"
    con.print(table)
