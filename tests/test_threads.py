"""The host thread policy (emulator/threads.py): one BLAS thread for small operations, never
more threads than idle CPUs, LPEMU_THREADS and ``host.threads`` as limits, the BLAS setting
restored after a run, and values identical on any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from emulator import kernels, threads
from emulator.config import config_from_dict
from emulator.errors import ConfigError
from emulator.machine import Machine
from isa.asm import assemble


@pytest.fixture
def policy(monkeypatch):
    p = threads.ThreadPolicy()
    monkeypatch.setattr(threads, "cpus", lambda: 4)
    monkeypatch.setattr(p, "_outside_limit", lambda: 1 << 30)
    monkeypatch.delenv(threads.ENV, raising=False)
    return p


def test_small_operations_run_on_one_thread(policy, monkeypatch):
    monkeypatch.setattr(policy, "_busy_others", lambda: 0)
    assert policy.for_work(threads.PARALLEL_MIN_MACS - 1) == 1
    assert policy.for_work(10 * 784 * 500) == 1  # a batch-10 layer
    assert policy.for_work(1024**3) == 4


@pytest.mark.parametrize("others,want", [(0, 4), (1, 3), (3, 1), (7, 1)])
def test_never_more_threads_than_idle_cpus(policy, monkeypatch, others, want):
    monkeypatch.setattr(policy, "_busy_others", lambda: others)
    assert policy.for_work(1 << 30) == want


def test_environment_then_config_then_cpus(policy, monkeypatch, capsys):
    monkeypatch.setattr(policy, "_busy_others", lambda: 0)
    assert policy.max_threads() == 4
    policy.config_threads = 2
    assert policy.max_threads() == 2 and policy.for_work(1 << 30) == 2
    monkeypatch.setenv(threads.ENV, "1")
    assert policy.max_threads() == 1 and policy.for_work(1 << 30) == 1
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv(threads.ENV, bad)
        assert policy.max_threads() == 2
        assert threads.ENV in capsys.readouterr().err


def test_runnable_task_count_is_read_from_proc(policy):
    n = policy._busy_others()
    assert isinstance(n, int) and n >= 0


def test_config_key_is_validated_and_applied():
    cfg = config_from_dict({"host": {"threads": 3}})
    Machine(cfg, assemble("halt\n", "t.s"))
    assert threads.POLICY.config_threads == 3
    Machine(config_from_dict({}), assemble("halt\n", "t.s"))
    assert threads.POLICY.config_threads == 0
    for bad in (-1, 1025, 1.5, True):
        with pytest.raises(ConfigError, match="host.threads"):
            config_from_dict({"host": {"threads": bad}})


def _blas_threads() -> list[int]:
    return [get() for _, get in threads.POLICY._controllers()]


def test_products_are_exact_on_any_thread_count_and_a_run_restores_blas(monkeypatch):
    if not threads.POLICY._controllers():
        pytest.skip("no OpenBLAS to control")
    rng = np.random.default_rng(7)
    m, k, n = 300, 700, 400
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (n, k)).astype(np.int8).T  # a transposed operand, as tb=1
    a[0], b[:, 0] = -128, -128  # the largest products
    want = a.astype(np.int64) @ b.astype(np.int64)
    seen = []
    real = threads.POLICY.use
    monkeypatch.setattr(threads.POLICY, "use", lambda x: (seen.append(x), real(x)))
    for t in (1, 2):
        monkeypatch.setattr(threads.POLICY, "for_work", lambda macs, t=t: t)
        assert np.array_equal(kernels.gemm(a, b), want)
        threads.POLICY.restore()
    assert seen == [1, 2]
    monkeypatch.undo()
    before = _blas_threads()
    src = f"li r1, 0\nli r2, {m * k}\nli r4, {m}\nli r5, {k}\nli r6, {n}\n" \
          "gemm r1, r1, r2, r4, r5, r6\nhalt\n"
    mach = Machine(config_from_dict({}), assemble(src, "g.s"))
    mach.spad[: m * k] = a.view(np.uint8).ravel()
    mach.spad[m * k: m * k + k * n] = np.ascontiguousarray(b).view(np.uint8).ravel()
    mach.run()
    assert np.array_equal(mach.acc[: m * n].reshape(m, n), want)
    assert _blas_threads() == before


def test_a_limit_set_outside_lpemu_is_respected():
    """threadpool_limits(1) (what a sweep worker runs under) caps every operation."""
    if not threads.POLICY._controllers():
        pytest.skip("no OpenBLAS to control")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        p = threads.ThreadPolicy()
        assert p.max_threads() == 1 and p.for_work(1 << 30) == 1
