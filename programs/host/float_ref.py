"""Float32 reference trainer: the same MLP, data order, initial weights and hyperparameters as
the chip's firmware, in plain numpy float32 (no quantization anywhere). It is the baseline the
on-chip experiments are compared against. With a validation split it follows the chip's
protocol: validation accuracy after every epoch, test accuracy of the best epoch's weights. Its
products run under the emulator's thread policy (emulator/threads.py), so speed comparisons
with the chip use the same BLAS threads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator.threads import matmul
from programs.compiler.spec import ModelSpec
from programs.host.datasets import Dataset, epoch_order, input_exponent


@dataclass
class FloatResult:
    test_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)  # of the reported test accuracy
    best_epoch: int | None = None  # with a validation split


def forward(weights: list[np.ndarray], x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    acts = [x]
    h = x
    for w in weights[:-1]:
        h = np.maximum(matmul(h, w), 0.0)
        acts.append(h)
    return acts, matmul(acts[-1], weights[-1])


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def accuracy(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    _, s = forward(weights, x)
    return float((s.argmax(axis=1) == y).mean())


def train_step(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, lr: float,
               momentum: float = 0.0, velocity: list[np.ndarray] | None = None) -> float:
    """One SGD step on the mean cross-entropy; updates ``weights`` in place; returns the loss.
    With ``momentum`` beta (heavy ball, as the chip does it): ``v = beta v + lr g``,
    ``w -= v``, with ``velocity`` updated in place."""
    acts, s = forward(weights, x)
    p = softmax(s)
    b = x.shape[0]
    t = np.zeros_like(p)
    t[np.arange(b), y] = 1.0
    loss = float(-np.log(np.maximum(p[np.arange(b), y], 1e-12)).mean())
    dz = (p - t) / np.float32(b)
    for i in range(len(weights) - 1, -1, -1):
        dw = matmul(acts[i].T, dz)
        if i > 0:
            dz = matmul(dz, weights[i].T) * (acts[i] > 0)
        step = np.float32(lr) * dw
        if momentum:
            assert velocity is not None
            velocity[i] *= np.float32(momentum)
            velocity[i] += step
            step = velocity[i]
        weights[i] -= step
    return loss


def train_float(spec: ModelSpec, data: Dataset, init: list[np.ndarray],
                epochs: int | None = None) -> FloatResult:
    weights = [w.astype(np.float32).copy() for w in init]
    scale = np.float32(2.0 ** input_exponent(spec, data))
    xtr = data.x_train.astype(np.float32) * scale
    xte = data.x_test.astype(np.float32) * scale
    xva = data.x_val.astype(np.float32) * scale if data.has_validation else None
    best: tuple[float, int, list[np.ndarray]] | None = None
    b = spec.batch_size
    beta = spec.update.momentum
    velocity = [np.zeros_like(w) for w in weights]
    res = FloatResult(0.0)
    for epoch in range(spec.epochs if epochs is None else epochs):
        order = epoch_order(len(xtr), b, spec.seed, epoch)
        lr = spec.lr_at(epoch)
        losses = [
            train_step(weights, xtr[order[i : i + b]], data.y_train[order[i : i + b]], lr,
                       beta, velocity)
            for i in range(0, len(order), b)
        ]
        h = {"epoch": epoch, "loss": float(np.mean(losses)),
             "test_accuracy": accuracy(weights, xte, data.y_test)}
        if xva is not None:
            h["validation_accuracy"] = accuracy(weights, xva, data.y_val)
            if best is None or h["validation_accuracy"] > best[0]:
                best = (h["validation_accuracy"], epoch, [w.copy() for w in weights])
        res.history.append(h)
    if best is not None:
        res.best_epoch, weights = best[1], best[2]
    res.test_accuracy = accuracy(weights, xte, data.y_test)
    res.weights = weights
    return res
