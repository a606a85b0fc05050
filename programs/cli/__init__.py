"""The ``lpemu`` command line, its reports and profiles.

This module is the console script's entry point, so it imports nothing heavy: Ctrl-C while
numpy, numba or the rest of lpemu are still being imported gives the same one-line
``lpemu: interrupted`` as at any later moment, never a traceback.
"""

from __future__ import annotations

import sys
import types

from programs.cli.interrupt import install, interrupted, restore, seen

__all__ = ["build_parser", "load_program", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``lpemu`` command line (see :mod:`programs.cli.main`); returns the exit code."""
    previous = install()
    try:
        try:
            from programs.cli.main import main as run
        except BaseException:  # Ctrl-C inside a C extension's import may come out as another
            if seen():  # error (numpy: ImportError)
                return interrupted()
            raise
        return run(argv)
    except KeyboardInterrupt:  # arrived while an error line was being printed
        return interrupted()
    finally:
        restore(previous)


def __getattr__(name: str):  # build_parser, load_program: imported when first used
    if name in ("build_parser", "load_program"):
        import importlib

        return getattr(importlib.import_module("programs.cli.main"), name)
    raise AttributeError(name)


class _Package(types.ModuleType):
    """Importing the submodule ``programs.cli.main`` would set this package's attribute
    ``main`` to that module; the entry point function keeps the name (as when the package
    imported the submodule eagerly and rebound the name)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "main" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
