"""LeNet benchmarks (001's network, ``configs/lenet.yaml``, on ``configs/lenet_chip.yaml``'s
hardware) on synthetic MNIST-shaped data (28x28 images on the IDX grid, 10 classes):

* :func:`bench_lenet_step`: one training step at batch 64 on the emulator vs the float32 numpy
  step of the same network (``programs.host.float_ref``), in the same process under the same
  thread policy, timed in interleaved rounds; the ratio is the median of the per-round ratios
  (target <= 3x);
* :func:`bench_lenet_epoch`: one epoch of 60,000 samples in a child process: wall time and peak
  resident memory (targets <= 120 s, <= 2 GiB).

Run alone: ``python -m programs.bench.lenet [--quick]``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def lenet_data(n_train: int, n_test: int = 64, seed: int = 0):
    """Class templates plus noise on the IDX grid (pixels 0..255 -> q = p >> 1, exponent -7)."""
    from programs.host.datasets import Dataset

    rng = np.random.default_rng(seed)
    tmpl = rng.integers(0, 256, (10, 784))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = np.empty((n, 784), np.int8)
        for i in range(0, n, 4096):  # in chunks: no int64 copy of 60,000 images
            j = min(i + 4096, n)
            p = np.clip(tmpl[y[i:j]] + rng.integers(-60, 61, (j - i, 784)), 0, 255)
            x[i:j] = p >> 1
        return x, y.astype(np.int64)

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("lenet-synthetic", xtr, ytr, xte, yte, 10, -7, (1, 28, 28))


def lenet_setup(epochs: int = 1):
    from emulator.config import Config
    from programs.experiments.tables import lenet_hardware, lenet_spec

    return lenet_spec(epochs), lenet_hardware(Config())


def lenet_step_timers(steps: int) -> tuple[Callable[[], object], Callable[[], object], int, Any]:
    """(chip epoch, float32 epoch, steps per epoch, trainer) of LeNet at batch 64 on
    ``steps`` batches, both warmed up once; the float32 step runs under the emulator's thread
    policy (its products through ``emulator.threads.matmul``)."""
    from emulator.threads import POLICY
    from programs.host.driver import ChipTrainer
    from programs.host.float_ref import FloatNet, train_step

    spec, cfg = lenet_setup()
    b = spec.batch_size
    data = lenet_data(steps * b)
    tr = ChipTrainer(spec, cfg, data)
    fnet = FloatNet(spec.net())
    params = tr.float_init()
    velocity = [np.zeros_like(p) for p in params]
    x = data.x_train.astype(np.float32) * np.float32(2.0**tr.spec.input_exponent)
    y = data.y_train

    def float_epoch() -> None:
        for i in range(0, steps * b, b):
            train_step(fnet, params, x[i:i + b], y[i:i + b], spec.lr_at(0),
                       spec.update.momentum, velocity)
        POLICY.restore()

    tr.train_epoch()  # warm-up: numba, BLAS threads, page faults, first DRAM loads
    float_epoch()
    return tr.train_epoch, float_epoch, tr.nb_train, tr


def bench_lenet_step(quick: bool) -> dict[str, Any]:
    """Per-step wall time of LeNet training at batch 64 on the chip and in float32 numpy."""
    steps = 4 if quick else 10
    chip_epoch, float_epoch, _, tr = lenet_step_timers(steps)

    def per_step(epoch: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        epoch()
        return (time.perf_counter() - t0) / steps

    rounds = [(per_step(chip_epoch), per_step(float_epoch)) for _ in range(3 if quick else 7)]
    chip, flt = (statistics.median(col) for col in zip(*rounds, strict=True))
    ratios = [c / f for c, f in rounds]
    return {"batch": tr.spec.batch_size, "chip_step_s": chip, "float32_step_s": flt,
            "chip_step_range_s": [min(r[0] for r in rounds), max(r[0] for r in rounds)],
            "float32_step_range_s": [min(r[1] for r in rounds), max(r[1] for r in rounds)],
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "instructions_per_step": tr.m.steps // ((len(rounds) + 1) * tr.nb_train)}


def lenet_epoch_child(samples: int) -> None:
    """In a child process: one LeNet epoch of ``samples`` samples; prints JSON."""
    from programs.bench.epoch import epoch_child

    epoch_child(lambda: (*lenet_setup(), lenet_data(samples)), samples,
                lambda st, tr: {"steps": tr.nb_train})


def bench_lenet_epoch(quick: bool) -> dict[str, Any]:
    samples = 6400 if quick else 60000
    res = subprocess.run([sys.executable, "-m", "programs.bench.lenet", "--epoch-child",
                          str(samples)], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("LeNet epoch benchmark failed:\n" + res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m programs.bench.lenet",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epoch-child", type=int, metavar="SAMPLES", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.epoch_child:
        lenet_epoch_child(args.epoch_child)
        return 0
    print(json.dumps({"lenet_step": bench_lenet_step(args.quick),
                      "lenet_epoch": bench_lenet_epoch(args.quick)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
