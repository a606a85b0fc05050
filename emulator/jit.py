"""numba for the emulator's kernels, loaded without scipy.

When numba loads its numpy support (``numba.np.arraymath``, on the first compiled call) it
probes for a BLAS by importing ``scipy.linalg.cython_blas``: with scikit-learn installed
that imports scipy, about half of ``lpemu run``'s start-up. No lpemu kernel uses numba's
BLAS-backed functions (``np.dot``, ``np.linalg`` inside compiled code; matrix products go
through numpy or emulator/vnni.py), so that module is loaded here with scipy hidden: the
probe answers "no BLAS" at once. scipy stays importable afterwards (scikit-learn's datasets
use it), and numba only gives up its BLAS-backed ``np.dot`` in compiled code.
Every emulator module that compiles kernels imports numba through this one. It also makes
numba's cache of this package's kernels depend on every module of the package (numba only
tracks a function's own file, and the kernels inline each other across files).
(numba itself imports the top-level scipy package: that is cheap.)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numba


def _load_numpy_support_without_scipy() -> None:
    name = "scipy.linalg"
    if "numba.np.arraymath" in sys.modules or name in sys.modules:
        return  # already loaded, or scipy.linalg is here anyway: nothing to save
    sys.modules[name] = None  # type: ignore[assignment] - the import fails fast
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


_load_numpy_support_without_scipy()


# ---------------------------------------------------------------------------- cache freshness
_PACKAGE = Path(__file__).resolve().parent
_STAMP: str | None = None


def package_stamp() -> str:
    """SHA-256 over every module of this package (computed once per process).

    numba keys a cached function by its own source file only; the interpreter, the
    datapath kernels and the intrinsics here call and inline each other across files, so a
    change in one file must invalidate the cached code of all of them."""
    global _STAMP
    if _STAMP is None:
        h = hashlib.sha256()
        for p in sorted(_PACKAGE.glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        _STAMP = h.hexdigest()
    return _STAMP


def _install_package_stamp() -> None:
    """Put locators in front of numba's own for this package's functions: the same cache
    places, with :func:`package_stamp` as the freshness stamp (a private numba hook; without
    it numba's per-file stamps apply)."""
    try:
        from numba.core.caching import CacheImpl, InTreeCacheLocator, UserWideCacheLocator
    except ImportError:  # pragma: no cover - another numba
        return
    classes = getattr(CacheImpl, "_locator_classes", None)
    if not isinstance(classes, list):  # pragma: no cover - another numba
        return

    def ours(py_file: str) -> bool:
        try:
            return Path(py_file).resolve().parent == _PACKAGE
        except OSError:  # pragma: no cover
            return False

    class PackageInTree(InTreeCacheLocator):
        def get_source_stamp(self):
            return package_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if ours(py_file) else None

    class PackageUserWide(UserWideCacheLocator):
        def get_source_stamp(self):
            return package_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if ours(py_file) else None

    if not any(getattr(c, "__name__", "") == "PackageInTree" for c in classes):
        classes[:0] = [PackageInTree, PackageUserWide]


_install_package_stamp()


# ---------------------------------------------------------------------------- compile time
def _compile_timer():
    try:
        from numba.core import event

        timer = event.TimingListener()
        event.register("numba:compile", timer)
        return timer
    except Exception:  # noqa: BLE001 - another numba: compile time is not separated
        return None


_COMPILE_TIMER = _compile_timer()


def compile_seconds() -> float:
    """Seconds numba has spent compiling in this process so far (its top-level compile
    events; loading from the cache is included but short). The wall-time budget leaves
    this out: a first run after an install or an edit compiles for a minute or more."""
    t = _COMPILE_TIMER
    return float(t.duration) if t is not None and t.done else 0.0

__all__ = ["numba"]
