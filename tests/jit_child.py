"""Test code run in a child Python with numba's JIT on or off (``NUMBA_DISABLE_JIT``), from the
checkout's root with ``tests`` importable: the checks that the JIT changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_child(code: str, jit: bool, timeout: int = 600) -> str:
    """stdout of ``code`` in a child Python with the JIT on or off (its exit must be 0)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="0" if jit else "1")
    res = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tests')\n" + code],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def jit_off_outcomes(module: str) -> Any:
    """``module.jit_outcomes()`` computed with the JIT off, through JSON (compare it with the
    in-process, JIT-on value put through JSON too)."""
    out = run_child(f"import json, numba, {module}\nassert numba.config.DISABLE_JIT\n"
                    f"print(json.dumps({module}.jit_outcomes()))", jit=False)
    return json.loads(out.strip().splitlines()[-1])
