"""Datasets for on-chip training: scikit-learn's bundled digits and a synthetic many-class task.

Inputs are returned as small non-negative integers (the chip's INT8 input with the model's
``input_exponent``) plus integer labels. Splits and shuffles are fixed by seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGITS_SAMPLES, DIGITS_FEATURES = 1797, 64
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 30, 10  # samples per class


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # int8 [n, features]
    y_train: np.ndarray  # int64 [n]
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    @property
    def features(self) -> int:
        return self.x_train.shape[1]


def digits(seed: int = 0) -> Dataset:
    """8x8 handwritten digits (1,797 images, pixel values 0..16), a fixed 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x.astype(np.int8), y.astype(np.int64), test_size=0.25, random_state=seed, stratify=y
    )
    return Dataset("digits", xtr, ytr, xte, yte, 10)


def synthetic(classes: int = 100, features: int = 64, per_class_train: int = SYNTHETIC_TRAIN,
              per_class_test: int = SYNTHETIC_TEST, seed: int = 0,
              noise: float = 6.0) -> Dataset:
    """Gaussian clusters, one per class, quantized to integers in [0, 16] like the digits.

    The default noise makes clusters overlap, so the softmax keeps its mass spread over many
    classes (the regime where a narrow classifier loses small gradient components)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(2, 14, size=(classes, features))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes), per_class)
        x = np.empty((y.size, features), dtype=np.int8)
        # in row chunks, so large sets never hold float64 copies of the whole array (the
        # generator's stream is the same as one call for the whole shape)
        step = max(1, (1 << 20) // max(features, 1))
        for i in range(0, y.size, step):
            j = min(i + step, y.size)
            v = centers[y[i:j]] + rng.normal(0, noise, size=(j - i, features))
            x[i:j] = np.clip(np.rint(v), 0, 16)
        return x, y.astype(np.int64)

    xtr, ytr = draw(per_class_train)
    xte, yte = draw(per_class_test)
    return Dataset(f"synthetic-{classes}", xtr, ytr, xte, yte, classes)


def sizes(name: str, classes: int, features: int = 64) -> tuple[int, int, int]:
    """(train samples, test samples, features) that :func:`load` would return, computed
    without loading or generating anything (so a size can be checked first)."""
    if name == "digits":
        test = -(-DIGITS_SAMPLES // 4)  # train_test_split's test_size=0.25 rounds up
        return DIGITS_SAMPLES - test, test, DIGITS_FEATURES
    return SYNTHETIC_TRAIN * classes, SYNTHETIC_TEST * classes, 64


def load(name: str, classes: int, seed: int = 0) -> Dataset:
    if name == "digits":
        return digits(seed)
    return synthetic(classes=classes, seed=seed)


def epoch_order(n: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (whole batches only), shared by chip and float trainers."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[: (n // batch) * batch]
