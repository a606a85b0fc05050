"""Dataset loaders: every source on the INT8 input grid, the spec's dataset keys, validation
splits and data seeds, and every malformed-file case with its typed error and byte offset.
All files are made here, tiny; nothing is downloaded."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from emulator.errors import ConfigError, DatasetError
from programs.cli import main
from programs.compiler.spec import DatasetSpec, ModelSpec, load_model, spec_from_dict
from programs.host.datasets import (
    IDX_FILES,
    Dataset,
    digits,
    load,
    load_for,
    load_idx,
    load_npz,
    read_idx,
    split_validation,
)

RNG = np.random.default_rng(13)


# ------------------------------------------------------------------------------ IDX writers
def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file written from the format's definition (big-endian sizes)."""
    head = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def make_idx_dir(d: Path, n_train: int = 12, n_test: int = 6, hw: tuple[int, int] = (4, 5),
                 gz: bool = False, classes: int = 3) -> dict[str, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        IDX_FILES[0]: RNG.integers(0, 256, (n_train, *hw)),
        IDX_FILES[1]: np.arange(n_train) % classes,
        IDX_FILES[2]: RNG.integers(0, 256, (n_test, *hw)),
        IDX_FILES[3]: np.arange(n_test)[::-1] % classes,
    }
    for name, a in arrays.items():
        raw = idx_bytes(a)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(raw, mtime=0))
        else:
            (d / name).write_bytes(raw)
    return arrays


def replace_file(d: Path, name: str, data: bytes) -> Path:
    for p in (d / name, d / (name + ".gz")):
        p.unlink(missing_ok=True)
    path = d / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ IDX: good files
@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads_on_the_pixel_grid(tmp_path, gz):
    a = make_idx_dir(tmp_path, gz=gz)
    d = load_idx(tmp_path, classes=3)
    assert d.shape == (1, 4, 5) and d.features == 20 and d.input_exponent == -7
    assert d.classes == 3 and d.x_train.dtype == np.int8
    # p >> 1, row-major: the value q * 2**-7 is p / 256 rounded down to the 2**-7 grid
    assert np.array_equal(d.x_train, (a[IDX_FILES[0]] // 2).reshape(12, 20))
    assert np.array_equal(d.x_test, (a[IDX_FILES[2]] // 2).reshape(6, 20))
    assert np.array_equal(d.y_train, a[IDX_FILES[1]]) and np.array_equal(d.y_test,
                                                                          a[IDX_FILES[3]])
    assert d.x_train.max() <= 127 and d.x_train.min() >= 0


def test_pixel_grid_mapping_is_exhaustive():
    from programs.host.datasets import pixels_to_grid

    p = np.arange(256, dtype=np.uint8)
    q = pixels_to_grid(p)
    assert q.dtype == np.int8
    assert [int(v) for v in q] == [v // 2 for v in range(256)]


def test_idx_plain_file_preferred_over_gz(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    plain = make_idx_dir(tmp_path / "plain")
    for name in IDX_FILES:
        (tmp_path / name).write_bytes((tmp_path / "plain" / name).read_bytes())
    d = load_idx(tmp_path, classes=3)
    assert np.array_equal(d.x_train, (plain[IDX_FILES[0]] // 2).reshape(12, 20))


# ------------------------------------------------------------------------------ IDX: bad files
def _err(fn, *args) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        fn(*args)
    return info.value


IMG = IDX_FILES[0]
LAB = IDX_FILES[1]


@pytest.mark.parametrize(
    ("name", "data", "offset", "fragment"),
    [
        (IMG, b"\x12\x34\x08\x03" + bytes(40), 0, "wrong magic"),
        (IMG, b"\x00\x00\x09\x03" + bytes(40), 2, "element type 0x09"),
        (IMG, b"\x00\x00\x08\x02" + bytes(40), 3, "2 dimensions, expected 3"),
        (LAB, b"\x00\x00\x08\x03" + bytes(40), 3, "3 dimensions, expected 1"),
        (IMG, b"\x00\x00", 2, "truncated header"),
        (IMG, b"\x00\x00\x08\x03\x00\x00", 6, "truncated header"),
        (IMG, idx_bytes(np.zeros((12, 4, 5)))[:-7], 16 + 240 - 7, "truncated data"),
        (IMG, idx_bytes(np.zeros((12, 4, 5))) + b"\x00\x01", 16 + 240, "extra bytes"),
        (IMG, idx_bytes(np.zeros((12, 4, 5)))[:8] + struct.pack(">I", 0) + bytes(4), 8,
         "dimension 1 has size 0"),
        # a header claiming 10**12-ish images is an error, never an allocation of that size
        (IMG, bytes([0, 0, 8, 3]) + struct.pack(">III", 2**32 - 1, 28, 28) + bytes(100),
         16 + 100, "truncated data"),
        (LAB, idx_bytes(np.zeros(11)), 4, "11 labels for 12 images"),
        (LAB, idx_bytes(np.array([0, 1, 2, 0, 1, 7, 2, 0, 1, 2, 0, 1])), 8 + 5,
         "label 7 of sample 5 is outside 0..2"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_file_names_file_and_offset(tmp_path, name, data, offset, fragment, gz):
    make_idx_dir(tmp_path)
    if gz:
        replace_file(tmp_path, name, b"")
        (tmp_path / name).unlink()
        path = tmp_path / (name + ".gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path = replace_file(tmp_path, name, data)
    e = _err(load_idx, tmp_path, 3)
    assert e.file == str(path) and e.offset == offset, str(e)
    assert fragment in e.message
    assert str(e).startswith(f"{path}@byte {offset}: dataset error: ")


def test_idx_test_images_of_another_size(tmp_path):
    make_idx_dir(tmp_path)
    path = replace_file(tmp_path, IDX_FILES[2], idx_bytes(np.zeros((6, 5, 4))))
    e = _err(load_idx, tmp_path, 3)
    assert (e.file, e.offset) == (str(path), 8) and "5x4" in e.message


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda z: b"not gzip at all" + z[15:], "unreadable gzip"),
        (lambda z: z[: len(z) // 2], "unreadable gzip"),  # the stream ends early
        (lambda z: z[:-8] + bytes([z[-8] ^ 1]) + z[-7:], "unreadable gzip"),  # CRC mismatch
    ],
)
def test_idx_unreadable_gzip(tmp_path, damage, fragment):
    make_idx_dir(tmp_path, gz=True)
    path = tmp_path / (IMG + ".gz")
    path.write_bytes(damage(path.read_bytes()))
    e = _err(load_idx, tmp_path, 3)
    assert e.file == str(path) and fragment in e.message
    assert e.offset is not None and 0 <= e.offset <= 16 + 240


def test_idx_missing_file_or_directory(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / LAB).unlink()
    e = _err(load_idx, tmp_path, 3)
    assert e.file == str(tmp_path) and LAB in e.message and e.offset is None
    e = _err(load_idx, tmp_path / "nope", 3)
    assert e.file == str(tmp_path / "nope") and "not a directory" in e.message


def test_read_idx_unopenable(tmp_path):
    e = _err(read_idx, tmp_path / "missing", 1)
    assert e.file == str(tmp_path / "missing") and "cannot open" in e.message


# ------------------------------------------------------------------------------ npz
def npz(path: Path, compressed: bool = False, **arrays) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def member_data_start(path: Path, key: str, nbytes: int) -> int:
    """Where a member's array data starts: the member's length minus the data's length."""
    with zipfile.ZipFile(path) as z:
        return z.getinfo(key + ".npy").file_size - nbytes


def test_npz_uint8_images_and_int8(tmp_path):
    x = RNG.integers(0, 256, (8, 3, 3)).astype(np.uint8)
    xt = RNG.integers(0, 256, (4, 3, 3)).astype(np.uint8)
    y, yt = np.arange(8) % 2, np.arange(4) % 2
    d = load_npz(npz(tmp_path / "a.npz", x_train=x, y_train=y, x_test=xt, y_test=yt), 2)
    assert d.shape == (1, 3, 3) and d.input_exponent == -7
    assert np.array_equal(d.x_train, (x // 2).reshape(8, 9).astype(np.int8))
    x8 = RNG.integers(-128, 128, (8, 2, 3, 3)).astype(np.int8)
    d = load_npz(npz(tmp_path / "b.npz", True, x_train=x8, y_train=y, x_test=x8[:4],
                     y_test=yt), None)
    assert d.shape == (2, 3, 3) and d.classes == 2 and np.array_equal(d.x_train,
                                                                      x8.reshape(8, 18))


def test_npz_float_vectors_are_standardized_with_train_statistics(tmp_path):
    # feature 0: train [0, 2] -> mean 1, std 1; feature 1 constant 5 (std 0 counts as 1)
    x = np.array([[0.0, 5.0], [2.0, 5.0]])
    xt = np.array([[1.0, 6.0], [5.0, 4.0], [1.5, 5.0]])
    d = load_npz(npz(tmp_path / "f.npz", x_train=x, y_train=np.array([0, 1]), x_test=xt,
                     y_test=np.array([0, 1, 1])), 2)
    assert d.input_exponent == -5 and d.shape == (2,)
    assert d.x_train.tolist() == [[-32, 0], [32, 0]]
    # z = (1-1)/1, (5-1)/1 -> 128 clipped to 127, 0.5 * 32 = 16; (6-5)/1 * 32 = 32
    assert d.x_test.tolist() == [[0, 32], [127, -32], [16, 0]]


def test_npz_float_images_are_standardized_per_channel(tmp_path):
    x = RNG.normal(3.0, 2.0, (20, 2, 4, 4)) * np.array([1.0, 10.0])[None, :, None, None]
    d = load_npz(npz(tmp_path / "c.npz", x_train=x, y_train=np.arange(20) % 4,
                     x_test=x[:5], y_test=np.arange(5) % 4), 4)
    q = d.x_train.reshape(20, 2, 16).astype(np.float64) / 32
    assert d.shape == (2, 4, 4)
    for c in range(2):  # both channels centred and unit-scaled despite the 10x scale
        assert abs(q[:, c].mean()) < 0.05 and abs(q[:, c].std() - 1) < 0.05


def _good(**over) -> dict[str, np.ndarray]:
    a = {"x_train": np.zeros((6, 4), np.float32), "y_train": np.arange(6) % 3,
         "x_test": np.zeros((3, 4), np.float32), "y_test": np.arange(3)}
    a.update(over)
    return {k: v for k, v in a.items() if v is not None}


@pytest.mark.parametrize(
    ("over", "member", "fragment"),
    [
        ({"y_test": None}, "", "missing array 'y_test'"),
        ({"x_train": np.zeros((6, 4), bool)}, "x_train.npy", "must be integer or float"),
        ({"x_train": np.zeros((6, 4), complex)}, "x_train.npy", "must be integer or float"),
        ({"x_train": np.array([["a"] * 4] * 6)}, "x_train.npy", "must be integer or float"),
        ({"x_train": np.zeros(6)}, "x_train.npy", "expected [n, features]"),
        ({"x_train": np.zeros((6, 1, 1, 2, 2))}, "x_train.npy", "expected [n, features]"),
        ({"x_train": np.zeros((6, 0))}, "x_train.npy", "no zero size"),
        ({"x_test": np.zeros((3, 5), np.float32)}, "x_test.npy", "training shape (4,)"),
        ({"x_test": np.zeros((3, 4))}, "x_test.npy", "differs from x_train's float32"),
        ({"y_train": np.zeros(6)}, "y_train.npy", "labels must be integers"),
        ({"y_train": np.zeros((6, 1), int)}, "y_train.npy", "expected (6,)"),
        ({"y_test": np.arange(4)}, "y_test.npy", "expected (3,)"),
    ],
)
def test_npz_bad_arrays(tmp_path, over, member, fragment):
    path = npz(tmp_path / "bad.npz", **_good(**over))
    e = _err(load_npz, path, 3)
    assert e.file == str(path) and e.member == member and fragment in e.message, str(e)
    assert str(e).startswith(f"{path}" + (f":{member}@byte 0" if member else ":"))


def test_npz_label_out_of_range_names_its_offset(tmp_path):
    y = np.array([0, 1, 2, 2, -1, 0])
    path = npz(tmp_path / "l.npz", **_good(y_train=y))
    e = _err(load_npz, path, 3)
    start = member_data_start(path, "y_train", y.nbytes)
    assert (e.member, e.offset) == ("y_train.npy", start + 4 * y.itemsize)
    assert "label -1 of sample 4 is outside 0..2" in e.message


def test_npz_non_finite_input_names_its_offset(tmp_path):
    x = np.zeros((6, 4), np.float32)
    x[2, 3] = np.nan
    path = npz(tmp_path / "n.npz", **_good(x_train=x))
    e = _err(load_npz, path, 3)
    start = member_data_start(path, "x_train", x.nbytes)
    assert (e.member, e.offset) == ("x_train.npy", start + (2 * 4 + 3) * 4)
    assert "non-finite" in e.message


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A version 1.0 .npy header written from the format's definition."""
    d = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(d) + 1) % 64
    d = d + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for k, v in members.items():
            z.writestr(k + ".npy", v)
    return path


def _members(**over: bytes) -> dict[str, bytes]:
    out = {}
    for k, a in _good().items():
        buf = io.BytesIO()
        np.save(buf, a)
        out[k] = buf.getvalue()
    out.update(over)
    return out


@pytest.mark.parametrize(
    ("member", "fragment", "offset"),
    [
        (_npy_header((6, 4)) + bytes(50), "truncated data", len(_npy_header((6, 4))) + 50),
        (_npy_header((6, 4)) + bytes(200), "extra data", len(_npy_header((6, 4))) + 96),
        # 10**12 rows claimed: refused from the sizes alone, nothing of that size allocated
        (_npy_header((10**12, 4)) + bytes(96), "truncated data",
         len(_npy_header((10**12, 4))) + 96),
        (b"\x93NUMPZ\x01\x00" + bytes(60), "not a valid .npy header", 0),
        (_npy_header((6, 4), "|O") + bytes(48), "not a plain numeric type", 0),
    ],
)
def test_npz_bad_member_bytes(tmp_path, member, fragment, offset):
    path = _zip(tmp_path / "m.npz", _members(x_train=member))
    e = _err(load_npz, path, 3)
    assert (e.file, e.member, e.offset) == (str(path), "x_train.npy", offset), str(e)
    assert fragment in e.message


def test_npz_pickled_object_array_is_refused_without_unpickling(tmp_path):
    x = np.empty((6, 4), object)
    x[:] = 1.0
    path = npz(tmp_path / "o.npz", **_good(x_train=x))
    e = _err(load_npz, path, 3)
    assert e.member == "x_train.npy" and "not a plain numeric type" in e.message


def test_npz_not_a_zip_or_missing(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"PK\x03\x04 garbage")
    e = _err(load_npz, p, 3)
    assert (e.file, e.offset) == (str(p), 0) and "not a readable npz" in e.message
    e = _err(load_npz, tmp_path / "none.npz", 3)
    assert e.file == str(tmp_path / "none.npz") and "no such file" in e.message


def test_npz_corrupted_compressed_member(tmp_path):
    path = npz(tmp_path / "z.npz", True, **_good(x_train=RNG.normal(size=(6, 4))))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_train.npy")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 20
    raw[at : at + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    e = _err(load_npz, path, 3)
    assert e.file == str(path) and e.member == "x_train.npy"


# ------------------------------------------------------------------------------ named sets
@pytest.mark.parametrize(("name", "features", "classes", "n"),
                         [("iris", 4, 3, 150), ("wine", 13, 3, 178),
                          ("breast_cancer", 30, 2, 569)])
def test_sklearn_tables_standardized_on_the_feature_grid(name, features, classes, n):
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split

    d = load(name, classes, seed=4)
    assert d.features == features and d.classes == classes and d.input_exponent == -5
    assert len(d.x_train) + len(d.x_test) == n and d.x_train.dtype == np.int8
    # the documented mapping, computed here: the stratified 75/25 split of the data seed,
    # z-scores with the training set's mean and (population) deviation, 2**5 steps, clipped
    x, y = getattr(skd, f"load_{name}")(return_X_y=True)
    xtr, xte, ytr, _ = train_test_split(x, y, test_size=0.25, random_state=4, stratify=y)
    mu, sd = xtr.mean(axis=0), xtr.std(axis=0)
    for raw, q in ((xtr, d.x_train), (xte, d.x_test)):
        want = np.clip(np.rint((raw - mu) / sd * 32), -127, 127)
        assert np.array_equal(q, want)
    assert np.array_equal(d.y_train, ytr)


def test_digits_unchanged_and_shaped():
    from sklearn.datasets import load_digits

    d = digits(0)
    assert d.shape == (1, 8, 8) and d.input_exponent == -4 and d.features == 64
    assert d.x_train.min() == 0 and d.x_train.max() == 16
    assert len(d.x_train) == 1347 and len(d.x_test) == 450
    raw = load_digits().images.reshape(-1, 64)
    rows = {r.tobytes() for r in raw.astype(np.int8)}
    assert all(r.tobytes() in rows for r in d.x_train[:20])


# ------------------------------------------------------------------------------ splits, seeds
def test_validation_split_is_stratified_disjoint_and_seeded():
    d = digits(0)
    v = split_validation(d, 0.2, seed=3)
    n = len(d.x_train)
    assert len(v.x_val) == round(0.2 * n) and len(v.x_train) + len(v.x_val) == n
    counts = np.bincount(d.y_train, minlength=10)
    got = np.bincount(v.y_val, minlength=10)
    assert got.sum() == len(v.x_val) and np.all(np.abs(got - counts * 0.2) < 1)
    rows = lambda x: sorted(r.tobytes() + bytes([k]) for r, k in zip(*x, strict=True))  # noqa
    assert rows((v.x_train, v.y_train)) + rows((v.x_val, v.y_val)) != []
    assert sorted(rows((v.x_train, v.y_train)) + rows((v.x_val, v.y_val))) == rows(
        (d.x_train, d.y_train))
    again = split_validation(d, 0.2, seed=3)
    other = split_validation(d, 0.2, seed=4)
    assert np.array_equal(again.x_val, v.x_val)
    assert not np.array_equal(other.x_val, v.x_val)


def test_validation_fraction_too_small_or_large_is_a_config_error():
    tiny = Dataset("t", np.zeros((4, 2), np.int8), np.arange(4) % 2, np.zeros((2, 2), np.int8),
                   np.arange(2), 2)
    for f in (0.05, 0.95):
        with pytest.raises(ConfigError) as info:
            split_validation(tiny, f, 0)
        assert info.value.key == "validation"


def test_data_seed_alone_fixes_the_data():
    base = ModelSpec()
    a = load_for(base)
    b = load_for(spec_from_dict({"seed": 5}))
    c = load_for(spec_from_dict({"data_seed": 5}))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    # the default data seed 0 keeps today's digits split (train_test_split random_state 0)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr = train_test_split(x.astype(np.int8), y, test_size=0.25, random_state=0, stratify=y)[0]
    assert np.array_equal(a.x_train, xtr)
    v1 = load_for(spec_from_dict({"validation": 0.25, "seed": 1}))
    v2 = load_for(spec_from_dict({"validation": 0.25, "seed": 2}))
    assert np.array_equal(v1.x_val, v2.x_val)


# ------------------------------------------------------------------------------ the spec keys
def test_spec_dataset_mapping_and_relative_path(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "m.yaml"
    f.write_text("dataset: {kind: idx, path: ../data}\nlayers: [20, 3]\n")
    spec = load_model(f)
    assert spec.dataset == DatasetSpec("idx", str(tmp_path / "data"))
    f.write_text("dataset: {kind: npz, path: /abs/x.npz}\n")
    assert load_model(f).dataset == DatasetSpec("npz", "/abs/x.npz")
    assert spec_from_dict({"dataset": {"kind": "npz", "path": "rel.npz"}}).dataset.path == \
        "rel.npz"
    assert spec_from_dict(spec.to_dict()) == spec  # round trip (checkpoints store to_dict)


@pytest.mark.parametrize(
    ("d", "key", "fragment"),
    [
        ({"dataset": {"kind": "idx", "path": "d", "pth": 1}}, "dataset.pth", "did you mean"),
        ({"dataset": {"kind": "csv", "path": "d"}}, "dataset.kind", "must be one of"),
        ({"dataset": {"kind": "iris"}}, "dataset.kind", "plain name"),
        ({"dataset": {"kind": "idx"}}, "dataset.path", "directory"),
        ({"dataset": "mnist"}, "dataset", "unknown dataset"),
        ({"dataset": "iriss"}, "dataset", "did you mean 'iris'"),
        ({"dataset": 3}, "dataset", "must be a name"),
        ({"validation": 1.0}, "validation", "(0, 1)"),
        ({"validation": 0}, "validation", "(0, 1)"),
        ({"data_seed": -1}, "data_seed", "[0, 2**31)"),
        ({"input_exponent": "x"}, "input_exponent", "null"),
    ],
)
def test_spec_dataset_errors_name_the_key(d, key, fragment):
    with pytest.raises(ConfigError) as info:
        spec_from_dict(d, "m.yaml")
    assert info.value.key == key and fragment in info.value.message, str(info.value)


# ------------------------------------------------------------------------------ CLI, end to end
def test_cli_trains_from_an_idx_dir_with_validation(tmp_path, capsys):
    make_idx_dir(tmp_path / "data", n_train=60, n_test=20, hw=(3, 3), gz=True, classes=3)
    spec = tmp_path / "m.yaml"
    spec.write_text("dataset: {kind: idx, path: data}\nlayers: [9, 8, 3]\nepochs: 3\n"
                    "validation: 0.25\nbatch_size: 5\n")
    out = tmp_path / "o.json"
    assert main(["train", str(spec), "-q", "--json", str(out)]) == 0
    j = json.loads(out.read_text())
    assert j["dataset"] == {"name": "idx:data", "shape": [1, 3, 3], "input_exponent": -7,
                            "train": 45, "validation": 15, "test": 20}
    accs = [e["validation_accuracy"] for e in j["epochs"]]
    assert j["best_epoch"] == accs.index(max(accs))
    assert j["float_reference_best_epoch"] is not None


def test_cli_bad_dataset_file_is_one_line_with_exit_code(tmp_path, capsys):
    make_idx_dir(tmp_path / "data")
    bad = replace_file(tmp_path / "data", LAB, idx_bytes(np.arange(12) % 5))
    spec = tmp_path / "m.yaml"
    spec.write_text("dataset: {kind: idx, path: data}\nlayers: [20, 3]\n")
    assert main(["train", str(spec), "-q"]) == DatasetError.exit_code
    err = capsys.readouterr().err
    assert err == (f"lpemu: {bad}@byte {8 + 3}: dataset error: label 3 of sample 3 is outside "
                   "0..2 (the model has 3 classes)\n")



# ------------------------------------------------------------------------------ best-validation
def _val_data() -> Dataset:
    d = digits(0)
    t = Dataset("t", d.x_train[:100], d.y_train[:100], d.x_test[:60], d.y_test[:60], 10, -4,
                (1, 8, 8))
    return split_validation(t, 0.3, 0)


@pytest.mark.parametrize("scratchpad", [1 << 20, 14000])  # weights resident / streamed
def test_chip_reports_test_accuracy_of_the_best_validation_epoch(scratchpad):
    import dataclasses

    from emulator.config import Config
    from programs.compiler.spec import with_overrides
    from programs.host.driver import ChipTrainer

    cfg = Config()
    cfg = dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory,
                                                              scratchpad_bytes=scratchpad))
    spec = with_overrides(ModelSpec(), epochs=4)
    data = _val_data()
    tr = ChipTrainer(spec, cfg, data)
    plain = ChipTrainer(spec, cfg, dataclasses.replace(data, x_val=None, y_val=None))
    assert tr.layout.streamed == (scratchpad < 1 << 20)
    weights, tests = [], []
    for _ in range(spec.epochs):
        tr.train_epoch()
        plain.train_epoch()
        weights.append(tr.weights())
        tests.append(tr.evaluate())
        # the validation (and test) passes between epochs leave training unchanged
        assert tr.weights_digest() == plain.weights_digest()
    accs = [h.validation_accuracy for h in tr.history]
    best = accs.index(max(accs))
    assert tr.best_epoch() == best and best != spec.epochs - 1  # the restore path is used
    # validation accuracy is the chip's own prediction on the held-out rows
    assert all(round(a * len(data.y_val)) == a * len(data.y_val) for a in accs)
    acc = tr.test_accuracy()
    assert acc == tests[best]
    assert all(np.array_equal(a, b) for a, b in zip(tr.weights(), weights[best], strict=True))
    assert tr.evaluate() == acc  # the machine now holds the best epoch's parameters


def test_float_reference_follows_the_same_protocol():
    from emulator.config import Config
    from programs.host.driver import ChipTrainer
    from programs.host.float_ref import train_float

    spec = spec_from_dict({"epochs": 6, "update": {"lr": 1.0}})
    data = _val_data()
    res = train_float(spec, data, ChipTrainer(spec, Config(), data).float_init())
    accs = [h["validation_accuracy"] for h in res.history]
    assert res.best_epoch == accs.index(max(accs)) and res.best_epoch != 5
    assert res.test_accuracy == res.history[res.best_epoch]["test_accuracy"]


def test_input_exponent_null_is_the_dataset_grid_and_an_integer_rescales():
    from emulator.config import Config
    from programs.host.driver import ChipTrainer
    from programs.host.float_ref import train_float

    data = _val_data()
    spec = spec_from_dict({"epochs": 1})
    tr = ChipTrainer(spec, Config(), data)
    assert spec.input_exponent is None and tr.spec.input_exponent == -4
    assert "eset e1, -4" in tr.asm_text
    assert ChipTrainer(spec_from_dict({"epochs": 1, "input_exponent": -5}), Config(),
                       data).spec.input_exponent == -5
    # the float reference sees the same values: the integers x 2**exponent
    a = train_float(spec, data, tr.float_init(), epochs=1)
    b = train_float(spec_from_dict({"epochs": 1, "input_exponent": -4}), data,
                    tr.float_init(), epochs=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))


def test_resume_with_a_validation_split_is_bit_identical(tmp_path):
    from emulator import checkpoint as ckpt
    from emulator.config import Config
    from programs.compiler.spec import with_overrides
    from programs.host.driver import ChipTrainer

    spec = with_overrides(ModelSpec(), epochs=4)
    data = _val_data()
    ref = ChipTrainer(spec, Config(), data)
    for _ in range(spec.epochs):
        ref.train_epoch()
    ref_acc = ref.test_accuracy()
    path = tmp_path / "v.ckpt"
    a = ChipTrainer(spec, Config(), data)
    saved = []

    def save(t: ChipTrainer) -> None:
        if t.global_step() == 24 and not saved:  # in the last epoch, after the best one
            ckpt.save(path, t.m, {"host": t.host_state()})
            saved.append(t.epoch)

    for _ in range(spec.epochs):
        a.train_epoch(1, save)
    assert saved == [3] and ref.best_epoch() == 2  # the best copy comes from the file
    b = ChipTrainer(spec, Config(), data)
    b.set_host_state(ckpt.restore(path, b.m)["host"])
    while b.epoch < spec.epochs:
        b.continue_epoch() if b.in_epoch else b.train_epoch()
    assert [h.validation_accuracy for h in b.history] == [
        h.validation_accuracy for h in ref.history]
    assert b.test_accuracy() == ref_acc and b.weights_digest() == ref.weights_digest()


def test_shipped_fashion_config_loads():
    spec = load_model(Path(__file__).resolve().parents[1] / "configs" / "fashion_mlp.yaml")
    assert spec.dataset == DatasetSpec("idx", "/usr/share/datasets/fashion-mnist")
    assert spec.layers[0] == 28 * 28 and spec.classes == 10 and spec.input_exponent is None
