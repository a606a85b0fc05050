"""The committed example (64x300x50 INT8 GEMM + dithered requantization) through `lpemu run`,
checked bit for bit against an independent numpy int64 computation of the documented semantics,
with numba on and with NUMBA_DISABLE_JIT=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = 2024  # .equ SEED in programs/examples/gemm_dither.s

M64 = np.uint64((1 << 64) - 1)


def splitmix64_block(seed: int, n: int) -> np.ndarray:
    """SplitMix64 outputs 0..n-1 for state `seed`, vectorized in numpy uint64 (wrapping)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def expected_output(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    p = a.astype(np.int64) @ b.astype(np.int64)  # exact; no saturation at 32 bits here
    assert np.abs(p).max() < 2**31
    # efit: shift = max bit length of (v if v >= 0 else ~v) - 7
    mag = np.where(p >= 0, p, ~p)
    s = int(mag.max()).bit_length() - 7
    assert s > 0
    u = (splitmix64_block(SEED, p.size) & np.uint64((1 << s) - 1)).astype(np.int64)
    y = np.floor_divide(p.ravel() + u, 1 << s)  # (p + d + 2**(s-1)) >> s with d = u - 2**(s-1)
    return np.clip(y, -128, 127).reshape(p.shape).astype(np.int8), s


@pytest.mark.parametrize("jit", ["on", "off"])
def test_example_gemm_dither_bit_exact(tmp_path, jit):
    env = dict(os.environ)
    if jit == "off":
        env["NUMBA_DISABLE_JIT"] = "1"
    out_y, out_e, out_json = tmp_path / "y.npy", tmp_path / "e.npy", tmp_path / "run.json"
    cmd = [
        sys.executable, "-m", "programs.cli", "run", str(ROOT / "programs/examples/gemm_dither.s"),
        "--load", f"{ROOT / 'programs/examples/gemm_a.npy'}@0",
        "--load", f"{ROOT / 'programs/examples/gemm_b.npy'}@0x10000",
        "--dump", f"0x20000:64x50:int8:{out_y}",
        "--dump", f"0x21000:1:int32:{out_e}",
        "--json", str(out_json), "-q",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a = np.load(ROOT / "programs/examples/gemm_a.npy")
    b = np.load(ROOT / "programs/examples/gemm_b.npy")
    assert a.shape == (64, 300) and b.shape == (300, 50)
    want, s = expected_output(a, b)
    got = np.load(out_y)
    assert got.dtype == np.int8 and got.shape == (64, 50)
    np.testing.assert_array_equal(got, want)
    assert int(np.load(out_e)[0]) == s
    rep = json.loads(out_json.read_text())
    assert rep["macs"] + rep["macs_skipped"] == 64 * 300 * 50
    assert rep["macs_skipped"] == int((b == 0).sum()) * 64  # sb=1: zeros of B times M
    assert rep["rng_draws"] == 64 * 50
    assert rep["energy_pj"] > 0 and rep["cycles"] > 0
    (tmp_path / f"digest_{jit}").write_text(rep["state_digest"])


def test_example_same_digest_with_and_without_jit(tmp_path):
    digests = []
    for jit in ("on", "off"):
        env = dict(os.environ)
        if jit == "off":
            env["NUMBA_DISABLE_JIT"] = "1"
        out = tmp_path / f"{jit}.json"
        cmd = [
            sys.executable, "-m", "programs.cli", "run", "programs/examples/gemm_dither.s",
            "--load", "programs/examples/gemm_a.npy@0",
            "--load", "programs/examples/gemm_b.npy@0x10000",
            "--json", str(out), "-q",
        ]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        rep = json.loads(out.read_text())
        digests.append((rep["state_digest"], rep["per_instruction"]))
    assert digests[0] == digests[1]
