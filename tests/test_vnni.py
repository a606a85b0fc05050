"""The AVX-512 VNNI matrix path (emulator/vnni.py) against an int64 oracle and the float path:
every layout and orientation, edge values at the largest sums, K at and across the exactness
bound, accumulation, saturation and wrap with exact overflow counts, one and two threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator import kernels, reference, vnni

ROOT = Path(__file__).resolve().parents[1]

needs_vnni = pytest.mark.skipif(not vnni.AVAILABLE, reason="host has no AVX-512 VNNI")


def oracle(c, a, b, accumulate, bits, wrap):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = a.astype(np.int64) @ b.astype(np.int64) + (c.astype(np.int64) if accumulate else 0)
    n = int(((v < lo) | (v > hi)).sum())
    return (((v - lo) % (1 << bits)) + lo if wrap else np.clip(v, lo, hi)), n


def layout(x: np.ndarray, transposed: bool) -> np.ndarray:
    """The same matrix stored row-major, or stored transposed and viewed back."""
    return np.ascontiguousarray(x.T).T if transposed else np.ascontiguousarray(x)


def run(c0, a, b, accumulate, bits, wrap, threads):
    c = c0.copy()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    n = vnni.gemm_into(c, a, b, accumulate, lo, hi, wrap, threads, kernels._WS.get)
    return c, n


@needs_vnni
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 5, 33), (6, 4, 32), (7, 13, 31), (10, 405, 500),
                                   (500, 405, 10), (405, 10, 500), (37, 3, 65), (64, 64, 1)])
def test_products_match_the_oracle_in_every_layout(shape, ta, tb):
    m, k, n = shape
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = layout(rng.integers(-128, 128, (m, k)).astype(np.int8), ta)
    b = layout(rng.integers(-128, 128, (k, n)).astype(np.int8), tb)
    a[0, :], b[:, 0] = -128, -128  # the largest products
    for accumulate, bits, wrap in ((False, 32, False), (True, 24, False), (True, 16, True)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        c0 = rng.integers(lo, hi + 1, (m, n)).astype(np.int32)
        want, nw = oracle(c0, a, b, accumulate, bits, wrap)
        for threads in (1, 2):
            c, nv = run(c0, a, b, accumulate, bits, wrap, threads)
            assert np.array_equal(c, want) and nv == nw


@needs_vnni
@pytest.mark.parametrize("k", [1023, 1024, 1025, 4096, vnni.MAX_K])
def test_largest_sums_at_long_k(k):
    """All -128: every lane reaches k * 2**14 (2**30 at K = 2**16), past float32's exact
    range for K > 1024; and -128 x 127 for the most negative sums."""
    for bv in (-128, 127):
        a = np.full((7, k), -128, np.int8)
        b = np.full((k, 33), bv, np.int8)
        c, n = run(np.zeros((7, 33), np.int32), a, b, False, 32, False, 1)
        assert n == 0 and (c == k * -128 * bv).all()


@needs_vnni
def test_kernel_path_equals_the_float_path_and_reference(monkeypatch):
    rng = np.random.default_rng(3)
    for trial in range(60):
        m, k, n = (int(rng.integers(1, 70)) for _ in range(3))
        a = layout(rng.integers(-128, 128, (m, k)).astype(np.int8), trial % 2 == 0)
        b = layout(rng.integers(-128, 128, (k, n)).astype(np.int8), trial % 3 == 0)
        bits, wrap, acc = (16, 24, 32)[trial % 3], trial % 4 == 1, trial % 5 == 2
        c0 = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (m, n)).astype(np.int32)
        outs = []
        for use in (True, False):
            monkeypatch.setattr(kernels, "USE_VNNI", use)
            c = c0.copy()
            outs.append((kernels.gemm_into(c, a, b, acc, bits, wrap), c.tobytes()))
        c = c0.copy()
        outs.append((reference.gemm_into(c, a, b, acc, bits, wrap), c.tobytes()))
        assert outs[0] == outs[1] == outs[2]


@needs_vnni
def test_orientation_and_strided_output():
    """Both orientations (forced through the cost model) and a C that is a strided view."""
    rng = np.random.default_rng(9)
    a = rng.integers(-128, 128, (9, 40)).astype(np.int8)
    b = rng.integers(-128, 128, (40, 70)).astype(np.int8)
    want, _ = oracle(np.zeros((9, 70), np.int32), a, b, False, 32, False)
    big = np.zeros((9, 140), np.int32)
    c = big[:, ::2]  # not contiguous: never stored with full-row vectors
    n = vnni.gemm_into(c, a, b, False, -(1 << 31), (1 << 31) - 1, False, 1, kernels._WS.get)
    assert n == 0 and np.array_equal(c, want) and (big[:, 1::2] == 0).all()
    for flip in (False, True):
        cost = vnni._cost
        try:
            vnni._cost = (lambda a_, b_, d, t, flip=flip: float(t != flip))
            c = np.zeros((9, 70), np.int32)
            vnni.gemm_into(c, a, b, False, -(1 << 31), (1 << 31) - 1, False, 1,
                           kernels._WS.get)
        finally:
            vnni._cost = cost
        assert np.array_equal(c, want)


FIRMWARE = """; INT8 products of every kind the VNNI path takes: plain, accumulated, transposed,
; zero-skipping, saturating in a 16-bit accumulator
    li r1, 0
    li r2, 0
    li r3, 64
    li r4, 96
    dmald r1, r2, r3, r4, r4, r4        # 6 KiB of bytes into the scratchpad
    li r5, 5
    li r6, 96
    li r7, 33
    li r8, 0
    li r9, 2048
    gemm r8, r1, r9, r5, r6, r7
    gemm r8, r1, r9, r5, r6, r7, acc=1
    li r10, 200
    gemm r10, r1, r9, r7, r6, r5, ta=1, tb=1, sa=1, sb=1
    li r11, 400
    li r12, 64
    gemm r11, r9, r1, r12, r12, r7, acc=1
    halt
"""

def test_no_vnni_gives_the_same_values_and_counters():
    """LPEMU_VNNI=0 (what a host without AVX-512 VNNI or with the JIT off gets) computes INT8
    products on the float path: the same values, flags and counters as with VNNI."""
    code = (
        "import sys, numpy as np\n"
        "from emulator import kernels, vnni\n"
        "from emulator.config import config_from_dict\n"
        "from emulator.machine import Machine\n"
        "from isa.asm import assemble\n"
        "print(vnni.AVAILABLE, kernels.USE_VNNI)\n"
        "src = sys.stdin.read()\n"
        "for bits in (32, 16):\n"
        "    cfg = config_from_dict({'accumulator': {'bits': bits, 'entries': 4096}})\n"
        "    m = Machine(cfg, assemble(src, 'v.s'))\n"
        "    m.dram[:8192] = np.random.default_rng(bits).integers(0, 256, 8192, np.uint8)\n"
        "    m.dram[100:300] = 0  # zeros to skip\n"
        "    m.run(); print(m.digest(), m.flags, m.cycles, m.counts.tobytes().hex())\n"
    )
    outs = {}
    for flag in ("0", "1"):
        env = dict(os.environ, LPEMU_VNNI=flag)
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, input=FIRMWARE,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        outs[flag] = res.stdout.strip().splitlines()
    assert outs["0"][0] == "False False"
    assert outs["1"][0] == f"{vnni.AVAILABLE} {vnni.AVAILABLE}"
    assert len(outs["0"]) == 3 and outs["0"][1:] == outs["1"][1:]
    assert outs["0"][1].split()[1] != outs["0"][2].split()[1]  # 16 bits saturate: flags differ
