"""The ``lpemu`` command line, its reports and profiles."""

from programs.cli.main import build_parser, load_program, main

__all__ = ["build_parser", "load_program", "main"]
