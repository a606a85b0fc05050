"""The one-line message for Ctrl-C, shared by the entry point and the commands (no imports
beyond the standard library: it runs while numpy may still be loading)."""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130


def interrupted() -> int:
    """Print ``lpemu: interrupted`` (a further Ctrl-C is ignored while exiting); returns the
    exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("lpemu: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
