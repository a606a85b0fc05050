"""Ctrl-C for the command line: the one-line message, and a SIGINT handler that remembers the
signal came (no imports beyond the standard library: it runs while numpy may still be
loading).

A Ctrl-C normally surfaces as KeyboardInterrupt, but one that lands inside a C extension's
initialisation (numpy importing ``datetime`` from C, say) can surface as an ImportError or
another exception instead; :func:`seen` tells the command line that such an error is the
interruption, so it still prints ``lpemu: interrupted``.
"""

from __future__ import annotations

import signal
import sys
import threading

EXIT_INTERRUPTED = 130
_SEEN = [False]


def _on_sigint(signum, frame):  # noqa: ARG001 - signal handler signature
    _SEEN[0] = True
    raise KeyboardInterrupt


def install() -> object:
    """Handle SIGINT with :func:`_on_sigint` (main thread, default handler only: a program
    that set its own, or ignores SIGINT, keeps it). Returns what :func:`restore` takes."""
    _SEEN[0] = False
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        return signal.default_int_handler
    return None


def restore(previous: object) -> None:
    """Put back the handler :func:`install` replaced (unless the run ended interrupted: then
    SIGINT stays ignored while the process exits)."""
    if previous is not None and signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, previous)  # type: ignore[arg-type]


def seen() -> bool:
    """Whether a SIGINT arrived since :func:`install`."""
    return _SEEN[0]


def interrupted() -> int:
    """Print ``lpemu: interrupted`` (a further Ctrl-C is ignored while exiting); returns the
    exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("lpemu: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
