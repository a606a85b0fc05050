"""numba for the emulator's kernels, loaded without scipy.

When numba loads its numpy support (``numba.np.arraymath``, on the first compiled call) it
probes for a BLAS by importing ``scipy.linalg.cython_blas``: with scikit-learn installed
that imports scipy, about half of ``lpemu run``'s start-up. No lpemu kernel uses numba's
BLAS-backed functions (``np.dot``, ``np.linalg`` inside compiled code; matrix products go
through numpy or emulator/vnni.py), so that module is loaded here with scipy hidden: the
probe answers "no BLAS" at once. scipy stays importable afterwards (scikit-learn's datasets
use it), and numba only gives up its BLAS-backed ``np.dot`` in compiled code.
Every emulator module that compiles kernels imports numba through this one.
(numba itself imports the top-level scipy package: that is cheap.)
"""

from __future__ import annotations

import sys

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

__all__ = ["numba"]
