"""The host thread policy: how many BLAS threads each operation runs on (no value or counter
ever depends on it; the exact float paths give the same integers on any thread count).

* The most threads one operation may use is ``LPEMU_THREADS`` (environment, an integer >= 1)
  if set, else ``host.threads`` of the config if > 0, else the CPUs this process may run on;
  never more than the BLAS thread count set outside lpemu (``OPENBLAS_NUM_THREADS``,
  ``threadpoolctl.threadpool_limits``: sweep workers run with one thread) nor than numba's
  ``NUMBA_NUM_THREADS`` for numba's parallel kernels.
* An operation with less work than ``PARALLEL_MIN_MACS`` runs on one thread: on the project's
  2-core machines the batch-10 layer products were as fast on one OpenBLAS thread as on two
  when idle, and 1.5-10x slower on two when other processes competed for the cores (a thread
  waits at OpenBLAS's barriers for a partner that is descheduled).
* A larger one uses up to the maximum, but never more threads than there are CPUs not already
  running something else (``/proc/loadavg``'s count of runnable tasks, read at most every
  0.2 s): the process never oversubscribes the machine.

The same policy drives the float32 baselines of ``lpemu bench`` (:func:`matmul`), so ratios
compare like with like. A run restores the BLAS thread count it found when it ends.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

ENV = "LPEMU_THREADS"
PARALLEL_MIN_MACS = 1 << 25  # ~34 M multiply-adds: below this, one thread
_LOAD_TTL = 0.2


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def env_threads() -> int | None:
    """``LPEMU_THREADS`` as an int >= 1, or None when unset or empty. A malformed value is
    ignored with a warning on stderr (it must never stop a run)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        import sys

        print(f"lpemu: ignoring {ENV}={raw!r} (expected an integer >= 1)", file=sys.stderr)
        return None
    return n


class ThreadPolicy:
    """Chooses and applies BLAS thread counts per operation (one per process: BLAS thread
    pools are process-wide)."""

    def __init__(self) -> None:
        self.config_threads = 0  # host.threads of the last machine built (0: automatic)
        self._blas: list[tuple[Any, Any]] | None = None  # (set, get) per OpenBLAS found
        self._current: int | None = None  # what we last set, or None (not ours)
        self._saved: list[int] | None = None
        self._load_at = -1.0
        self._others = 0

    # ------------------------------------------------------------------ choosing
    def max_threads(self) -> int:
        n = env_threads()
        if n is None:
            n = self.config_threads or cpus()
        return max(1, min(n, self._outside_limit()))

    def _outside_limit(self) -> int:
        """The BLAS thread count set outside lpemu (``OPENBLAS_NUM_THREADS``,
        ``threadpool_limits`` as a sweep worker uses, or OpenBLAS's default of all CPUs):
        lpemu never uses more."""
        libs = self._controllers()
        if not libs:
            return 1 << 30
        counts = self._saved if self._saved is not None else [get() for _, get in libs]
        return max(1, min(counts))

    def _busy_others(self) -> int:
        """Runnable tasks other than this one (instantaneous, refreshed every 0.2 s)."""
        now = time.monotonic()
        if now - self._load_at > _LOAD_TTL:
            self._load_at = now
            try:
                with open("/proc/loadavg", "rb") as f:
                    running = int(f.read().split()[3].split(b"/")[0])
                self._others = max(0, running - 1)
            except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
                self._others = 0
        return self._others

    def for_work(self, macs: int) -> int:
        """Threads for one operation of ``macs`` multiply-adds (or element operations)."""
        if macs < PARALLEL_MIN_MACS:
            return 1
        most = self.max_threads()
        if most == 1:
            return 1
        return max(1, min(most, cpus() - self._busy_others()))

    # ------------------------------------------------------------------ applying
    def _controllers(self) -> list[tuple[Any, Any]]:
        if self._blas is None:
            found: list[tuple[Any, Any]] = []
            try:
                from threadpoolctl import ThreadpoolController

                for lib in ThreadpoolController().select(internal_api="openblas") \
                        .lib_controllers:
                    setter = lib._get_symbol("openblas_set_num_threads")
                    getter = lib._get_symbol("openblas_get_num_threads")
                    if setter is not None and getter is not None:
                        found.append((setter, getter))
            except Exception:  # noqa: BLE001 - any failure means "cannot control"
                found = []
            self._blas = found
        return self._blas

    def use(self, n: int) -> None:
        """Run the following BLAS calls on ``n`` threads (a no-op if already so)."""
        if n == self._current:
            return
        libs = self._controllers()
        if self._saved is None:
            self._saved = [get() for _, get in libs]
        for setter, _ in libs:
            setter(n)
        self._current = n

    def restore(self) -> None:
        """Give BLAS back the thread counts it had before lpemu changed them."""
        if self._saved is not None:
            for (setter, _), n in zip(self._controllers(), self._saved, strict=True):
                setter(n)
            self._saved = None
        self._current = None

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``np.matmul(a, b, out=out)`` for 2-D operands under the policy."""
        self.use(self.for_work(a.shape[0] * a.shape[1] * b.shape[1]))
        return np.matmul(a, b, out=out)


POLICY = ThreadPolicy()
matmul = POLICY.matmul
