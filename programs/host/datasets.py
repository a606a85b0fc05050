"""Datasets for on-chip training: one loader per source, one :class:`Dataset` for all.

Sources: scikit-learn's bundled ``digits``, ``iris``, ``wine`` and ``breast_cancer``; a
``synthetic`` many-class task; an MNIST-format IDX directory (:func:`load_idx`: MNIST,
Fashion-MNIST, KMNIST, gzipped or not) and an ``.npz`` file (:func:`load_npz`). Every loader
returns the inputs already on the chip's INT8 input grid together with the exponent of that
grid (value = q * 2**input_exponent); ``docs/training.md`` ("Datasets") states the mapping of
each source. Malformed files raise :class:`DatasetError` naming the file and the byte offset;
sizes read from a header are checked against the data actually present before anything of
that size is allocated. Splits and sampling depend only on the data seed.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from emulator.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from programs.compiler.spec import DatasetSpec, ModelSpec

NAMED = ("digits", "synthetic", "iris", "wine", "breast_cancer")
DIGITS_EXPONENT = -4  # digits and synthetic: integers 0..16 used as they are
SYNTHETIC_FEATURES = 64  # what load() generates for ``synthetic``
SYNTHETIC_PER_CLASS = 40  # 30 training + 10 test samples per class
PIXEL_EXPONENT = -7  # uint8 0..255 -> q = p >> 1 (0..127)
FEATURE_EXPONENT = -5  # standardized features: q = clip(rint(z * 32), -127, 127)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """Inputs on the chip's INT8 input grid, labels, and how to read them.

    ``x_*`` are int8 ``[n, features]``: each row is one sample of ``shape`` flattened in C
    order (``(features,)`` for vectors, ``(C, H, W)`` for images; an MLP takes the flat row).
    A value is ``q * 2**input_exponent``. ``x_val``/``y_val`` hold a validation split of the
    training set (:func:`split_validation`) or are ``None``."""

    name: str
    x_train: np.ndarray  # int8 [n, features]
    y_train: np.ndarray  # int64 [n]
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    input_exponent: int = DIGITS_EXPONENT
    shape: tuple[int, ...] | None = None  # None: (features,)
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.shape is None:
            object.__setattr__(self, "shape", (self.features,))
        if math.prod(self.shape) != self.features:
            raise ValueError(f"shape {self.shape} does not have {self.features} elements")

    @property
    def features(self) -> int:
        return self.x_train.shape[1]

    @property
    def has_validation(self) -> bool:
        return self.x_val is not None and self.y_val is not None


# ------------------------------------------------------------------------- grid mappings
def pixels_to_grid(p: np.ndarray) -> np.ndarray:
    """uint8 intensities 0..255 -> INT8 ``p >> 1`` (0..127) at exponent -7 (value ~ p / 256)."""
    return (p >> 1).astype(np.int8)


def standardize_to_grid(train: np.ndarray, others: list[np.ndarray],
                        axes: tuple[int, ...]) -> list[np.ndarray]:
    """Standardize with the training set's mean and standard deviation over ``axes`` (float64;
    a zero deviation counts as 1), then ``q = clip(rint(z * 2**5), -127, 127)`` at exponent
    -5 (z in about [-3.97, 3.97] standard deviations, resolution 1/32)."""
    t = train.astype(np.float64)
    mean = t.mean(axis=axes, keepdims=True)
    std = t.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0
    out = []
    for a in [train, *others]:
        z = (a.astype(np.float64) - mean) / std
        out.append(np.clip(np.rint(z * 2.0**-FEATURE_EXPONENT), -127, 127).astype(np.int8))
    return out


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(len(x), -1))


# ------------------------------------------------------------------------- bundled sets
def digits(seed: int = 0) -> Dataset:
    """8x8 handwritten digits (1,797 images, pixel values 0..16, used as INT8 at exponent -4),
    a stratified 75/25 split by ``seed``; shape (1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x.astype(np.int8), y.astype(np.int64), test_size=0.25, random_state=seed, stratify=y
    )
    return Dataset("digits", xtr, ytr, xte, yte, 10, DIGITS_EXPONENT, (1, 8, 8))


def _sklearn_table(name: str, loader: Callable, seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x, y = loader(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y.astype(np.int64), test_size=0.25,
                                          random_state=seed, stratify=y)
    qtr, qte = standardize_to_grid(xtr, [xte], axes=(0,))
    return Dataset(name, qtr, ytr, qte, yte, int(y.max()) + 1, FEATURE_EXPONENT)


def iris(seed: int = 0) -> Dataset:
    """Iris (150 samples, 4 features, 3 classes), stratified 75/25 split, standardized."""
    from sklearn.datasets import load_iris

    return _sklearn_table("iris", load_iris, seed)


def wine(seed: int = 0) -> Dataset:
    """Wine (178 samples, 13 features, 3 classes), stratified 75/25 split, standardized."""
    from sklearn.datasets import load_wine

    return _sklearn_table("wine", load_wine, seed)


def breast_cancer(seed: int = 0) -> Dataset:
    """Breast cancer Wisconsin (569 samples, 30 features, 2 classes), stratified 75/25 split,
    standardized."""
    from sklearn.datasets import load_breast_cancer

    return _sklearn_table("breast_cancer", load_breast_cancer, seed)


def synthetic(classes: int = 100, features: int = 64, per_class_train: int = 30,
              per_class_test: int = 10, seed: int = 0, noise: float = 6.0) -> Dataset:
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
    return Dataset(f"synthetic-{classes}", xtr, ytr, xte, yte, classes, DIGITS_EXPONENT)


# ------------------------------------------------------------------------- IDX (MNIST format)
_CHUNK = 1 << 20


def _read_all(f: IO[bytes], limit: int, file: str, start: int = 0, what: str = "gzip",
              member: str = "") -> bytes:
    """Up to ``limit`` bytes of ``f`` in chunks (never allocating more than is really there);
    decompression and I/O failures become DatasetError at the (uncompressed) offset reached,
    ``start`` being the offset of ``f``'s current position."""
    buf = bytearray()
    try:
        while len(buf) < limit:
            chunk = f.read(min(_CHUNK, limit - len(buf)))
            if not chunk:
                break
            buf += chunk
    except (gzip.BadGzipFile, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DatasetError(f"unreadable {what} data after {start + len(buf):,} uncompressed "
                           f"bytes: {e}", file, start + len(buf), member) from None
    except OSError as e:
        raise DatasetError(f"cannot read: {e.strerror or e}", file, start + len(buf),
                           member) from None
    return bytes(buf)


def _idx_file(directory: Path, base: str) -> Path:
    for name in (base, base + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    raise DatasetError(f"missing {base} (or {base}.gz) in the IDX directory", str(directory))


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ``ndim`` dimensions (gzipped if it ends in
    ``.gz``): magic ``00 00 08 ndim``, ``ndim`` big-endian uint32 sizes, then the data in C
    order. Any deviation raises DatasetError with the byte offset of the fault."""
    file = str(path)
    gz = file.endswith(".gz")
    try:
        f: IO[bytes] = gzip.open(file, "rb") if gz else open(file, "rb")  # noqa: SIM115
    except OSError as e:
        raise DatasetError(f"cannot open: {e.strerror or e}", file) from None
    with f:
        head = _read_all(f, 4, file)
        if len(head) < 4:
            raise DatasetError(f"truncated header: {len(head)} of 4 magic bytes", file,
                               len(head))
        if head[0] != 0 or head[1] != 0:
            raise DatasetError(f"wrong magic {head.hex()}: an IDX file starts with 00 00", file,
                               0)
        if head[2] != 0x08:
            raise DatasetError(f"IDX element type 0x{head[2]:02x} is not supported (only 0x08, "
                               "unsigned byte)", file, 2)
        if head[3] != ndim:
            raise DatasetError(f"{head[3]} dimensions, expected {ndim}", file, 3)
        dims_raw = _read_all(f, 4 * ndim, file, 4)
        if len(dims_raw) < 4 * ndim:
            raise DatasetError(f"truncated header: {len(dims_raw)} of {4 * ndim} size bytes",
                               file, 4 + len(dims_raw))
        dims = [int.from_bytes(dims_raw[4 * i : 4 * i + 4], "big") for i in range(ndim)]
        for i, d in enumerate(dims):
            if d == 0:
                raise DatasetError(f"dimension {i} has size 0", file, 4 + 4 * i)
        start = 4 + 4 * ndim
        need = math.prod(dims)
        if not gz:  # a plain file's size is known before reading it
            have = os.path.getsize(file) - start
            if have < need:
                raise DatasetError(f"truncated data: the header promises {need:,} bytes "
                                   f"({' x '.join(map(str, dims))}) but {have:,} follow it",
                                   file, start + have)
        data = _read_all(f, need + 1, file, start)
    if len(data) < need:
        raise DatasetError(f"truncated data: the header promises {need:,} bytes "
                           f"({' x '.join(map(str, dims))}) but {len(data):,} follow it"
                           + (" (uncompressed)" if gz else ""), file, start + len(data))
    if len(data) > need:
        raise DatasetError(f"extra bytes after the {need:,} data bytes the header promises",
                           file, start + need)
    return np.frombuffer(data, np.uint8).reshape(dims)


def _check_labels(y: np.ndarray, classes: int, file: str, start: int, member: str = "") -> None:
    """Every label in ``0..classes-1``; else the offset of the first bad one (C order)."""
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"label {int(y[i])} of sample {i} is outside 0..{classes - 1} "
                           f"(the model has {classes} classes)", file,
                           start + i * y.dtype.itemsize, member)


def load_idx(path: str | Path, classes: int = 10) -> Dataset:
    """An MNIST-format directory: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped
    (``.gz``; the plain file is used when both exist). Pixels map to ``p >> 1`` at exponent -7;
    shape ``(1, rows, cols)``; labels must lie in ``0..classes-1``."""
    d = Path(path)
    if not d.is_dir():
        raise DatasetError("not a directory (an IDX dataset is a directory holding "
                           + ", ".join(IDX_FILES) + ")", str(d))
    files = [_idx_file(d, base) for base in IDX_FILES]
    parts = []
    for img_f, lab_f in ((files[0], files[1]), (files[2], files[3])):
        img = read_idx(img_f, 3)
        lab = read_idx(lab_f, 1)
        if len(lab) != len(img):
            raise DatasetError(f"{len(lab):,} labels for {len(img):,} images in "
                               f"{img_f.name}", str(lab_f), 4)
        _check_labels(lab, classes, str(lab_f), 8)
        parts.append((img, lab))
    (xtr, ytr), (xte, yte) = parts
    if xte.shape[1:] != xtr.shape[1:]:
        raise DatasetError(f"test images are {xte.shape[1]}x{xte.shape[2]}, training images "
                           f"{xtr.shape[1]}x{xtr.shape[2]}", str(files[2]), 8)
    shape = (1, *xtr.shape[1:])
    return Dataset(f"idx:{d.name}", _flat(pixels_to_grid(xtr)), ytr.astype(np.int64),
                   _flat(pixels_to_grid(xte)), yte.astype(np.int64), classes, PIXEL_EXPONENT,
                   shape)


# ------------------------------------------------------------------------- npz
def _npz_member(z: zipfile.ZipFile, key: str, file: str) -> tuple[np.ndarray, int]:
    """One ``.npy`` member, read after checking its header against its stored size, and the
    offset of its data in the member."""
    name = key + ".npy"
    try:
        info = z.getinfo(name)
    except KeyError:
        have = sorted(n.removesuffix(".npy") for n in z.namelist())
        raise DatasetError(f"missing array {key!r} (the file has {have}; an npz dataset needs "
                           + ", ".join(NPZ_ARRAYS) + ")", file) from None
    fmt = np.lib.format
    try:
        with z.open(info) as f:
            try:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
                else:
                    raise ValueError(f".npy format version {version} is not supported")
            except ValueError as e:
                raise DatasetError(f"not a valid .npy header: {e}", file, 0, name) from None
            start = f.tell()
            if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
                raise DatasetError(f"dtype {dtype} is not a plain numeric type", file, 0, name)
            need = math.prod(shape) * dtype.itemsize
            have = info.file_size - start
            if have != need:
                raise DatasetError(f"{'truncated' if have < need else 'extra'} data: shape "
                                   f"{shape} of {dtype} needs {need:,} bytes, the member holds "
                                   f"{have:,}", file, start + min(have, need), name)
            raw = _read_all(f, need, file, start, "npz member", name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # opening the member
        raise DatasetError(f"unreadable member: {e}", file, None, name) from None
    if len(raw) != need:
        raise DatasetError("truncated member data", file, start + len(raw), name)
    a = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
    return a, start


def load_npz(path: str | Path, classes: int | None = None) -> Dataset:
    """An ``.npz`` file with arrays ``x_train, y_train, x_test, y_test`` (no pickles).

    ``x`` is ``[n, features]`` (vectors), ``[n, H, W]`` (one-channel images) or
    ``[n, C, H, W]``; ``y`` is 1-D integer in ``0..classes-1`` (``classes`` defaults to the
    largest label + 1). Grid by dtype: ``uint8`` -> ``p >> 1`` at exponent -7; ``int8`` as is
    at exponent -7; any other integer or float type is standardized with the training set's
    statistics (per feature for vectors, per channel for images) at exponent -5."""
    file = str(path)
    try:
        z = zipfile.ZipFile(file)
    except FileNotFoundError:
        raise DatasetError("no such file", file) from None
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"not a readable npz (zip) file: {e}", file, 0) from None
    with z:
        arrays = {k: _npz_member(z, k, file) for k in NPZ_ARRAYS}
    x = {k: arrays[k][0] for k in ("x_train", "x_test")}
    y = {k: arrays[k][0] for k in ("y_train", "y_test")}
    for k, a in x.items():
        if a.ndim not in (2, 3, 4) or a.shape[0] == 0 or 0 in a.shape:
            raise DatasetError(f"shape {a.shape}: expected [n, features], [n, H, W] or "
                               "[n, C, H, W] with no zero size", file, 0, k + ".npy")
        if a.dtype.kind not in "iuf":
            raise DatasetError(f"dtype {a.dtype}: inputs must be integer or float", file, 0,
                               k + ".npy")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            at = np.argwhere(~np.isfinite(a))[0]
            raise DatasetError(f"non-finite value {a[tuple(at)]} at index {tuple(map(int, at))}",
                               file, arrays[k][1] + int(np.dot(at, a.strides)), k + ".npy")
    if x["x_test"].shape[1:] != x["x_train"].shape[1:]:
        raise DatasetError(f"shape {x['x_test'].shape}: each sample must have the training "
                           f"shape {x['x_train'].shape[1:]}", file, 0, "x_test.npy")
    if x["x_test"].dtype != x["x_train"].dtype:
        raise DatasetError(f"dtype {x['x_test'].dtype} differs from x_train's "
                           f"{x['x_train'].dtype}", file, 0, "x_test.npy")
    for k, xk in (("y_train", "x_train"), ("y_test", "x_test")):
        a = y[k]
        if a.dtype.kind not in "iu":
            raise DatasetError(f"dtype {a.dtype}: labels must be integers", file, 0, k + ".npy")
        if a.ndim != 1 or len(a) != len(x[xk]):
            raise DatasetError(f"shape {a.shape}: expected ({len(x[xk])},), one label per "
                               f"sample of {xk}", file, 0, k + ".npy")
    if classes is None:
        classes = max(int(y["y_train"].max()), int(y["y_test"].max()), 0) + 1
    for k in ("y_train", "y_test"):
        _check_labels(y[k], classes, file, arrays[k][1], k + ".npy")
    xtr, xte = x["x_train"], x["x_test"]
    if xtr.dtype == np.uint8:
        qtr, qte, exp = pixels_to_grid(xtr), pixels_to_grid(xte), PIXEL_EXPONENT
    elif xtr.dtype == np.int8:
        qtr, qte, exp = xtr, xte, PIXEL_EXPONENT
    else:
        axes = (0,) if xtr.ndim == 2 else (0, *range(xtr.ndim - 2, xtr.ndim))
        qtr, qte = standardize_to_grid(xtr, [xte], axes)
        exp = FEATURE_EXPONENT
    shape = xtr.shape[1:] if xtr.ndim != 3 else (1, *xtr.shape[1:])
    return Dataset(f"npz:{Path(file).stem}", _flat(qtr), y["y_train"].astype(np.int64),
                   _flat(qte), y["y_test"].astype(np.int64), classes, exp, tuple(shape))


# ------------------------------------------------------------------------- splits
def split_validation(data: Dataset, fraction: float, seed: int) -> Dataset:
    """Hold out ``round(fraction * n)`` training samples as a validation set, stratified by
    class: class quotas by the largest-remainder rule (ties to the lower class), and within a
    class the first samples of the permutation ``default_rng([seed, 1]).permutation(n)``. Both
    parts keep the original order of the training set."""
    y = data.y_train
    n = len(y)
    n_val = int(math.floor(fraction * n + 0.5))
    if not 1 <= n_val <= n - 1:
        raise ConfigError(f"a validation fraction of {fraction} of {n} training samples "
                          f"leaves {n_val} for validation and {n - n_val} for training",
                          "validation")
    counts = np.bincount(y, minlength=data.classes)
    exact = counts * n_val / n
    quota = np.floor(exact).astype(np.int64)
    extra = n_val - int(quota.sum())
    by_remainder = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quota[c]), c))
    quota[by_remainder[:extra]] += 1
    perm = np.random.default_rng([seed, 1]).permutation(n)
    ys = y[perm]
    order = np.argsort(ys, kind="stable")  # class by class, in permutation order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts[ys[order]]
    val = np.zeros(n, bool)
    val[perm] = rank < quota[ys]
    return replace(data, x_train=data.x_train[~val], y_train=y[~val],
                   x_val=data.x_train[val], y_val=y[val])


def load(source: str | DatasetSpec, classes: int, seed: int = 0,
         validation: float | None = None) -> Dataset:
    """The dataset a model spec names: ``source`` is a name from :data:`NAMED` or a
    ``DatasetSpec`` (``kind`` ``idx``/``npz`` with an explicit ``path``). ``seed`` is the data
    seed (train/test split of the bundled sets, synthetic sampling, validation split);
    ``classes`` is the model's class count (synthetic's class count; the label range of files).
    """
    if isinstance(source, str):
        loaders: dict[str, Callable[[], Dataset]] = {
            "digits": lambda: digits(seed),
            "iris": lambda: iris(seed),
            "wine": lambda: wine(seed),
            "breast_cancer": lambda: breast_cancer(seed),
            "synthetic": lambda: synthetic(classes=classes, seed=seed),
        }
        if source not in loaders:
            raise ConfigError(f"unknown dataset {source!r}; one of {NAMED}", "dataset")
        data = loaders[source]()
    elif source.kind == "idx":
        data = load_idx(source.path, classes)
    elif source.kind == "npz":
        data = load_npz(source.path, classes)
    else:
        raise ConfigError(f"unknown dataset kind {source.kind!r}", "dataset.kind")
    if validation is not None:
        data = split_validation(data, validation, seed)
    return data


def load_for(spec: ModelSpec) -> Dataset:
    """The dataset of a model spec with its data seed and validation split."""
    return load(spec.dataset, spec.classes, spec.data_seed, spec.validation)


def input_exponent(spec: ModelSpec, data: Dataset) -> int:
    """The exponent the chip gives the INT8 inputs: the spec's ``input_exponent``, or the
    dataset's own grid when it is null."""
    return data.input_exponent if spec.input_exponent is None else spec.input_exponent


def epoch_order(n: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (whole batches only), shared by chip and float trainers."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[: (n // batch) * batch]
