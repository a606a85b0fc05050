"""The paper tables (lenet-lazy, qbp-table) and ``lpemu train --data`` on tiny MNIST-format
directories made here (28x28 images, 10 classes)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator.config import Config, load_config
from emulator.errors import UsageError
from programs.compiler.spec import load_model
from programs.experiments import run_experiment
from programs.experiments.tables import (
    LENET_ACC_ENTRIES,
    LENET_SCRATCHPAD,
    lenet_spec,
)

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def _idx(a: np.ndarray) -> bytes:
    return (bytes([0, 0, 8, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
            + a.astype(np.uint8).tobytes())


def tiny_mnist(d: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """Class templates plus noise, so the labels carry signal."""
    rng = np.random.default_rng(0)
    tmpl = rng.integers(0, 256, (10, 28, 28))
    d.mkdir(parents=True, exist_ok=True)
    for (xi, yi), n in zip(((0, 1), (2, 3)), (n_train, n_test), strict=True):
        y = np.arange(n) % 10
        x = np.clip(tmpl[y] + rng.integers(-60, 61, (n, 28, 28)), 0, 255)
        (d / FILES[xi]).write_bytes(_idx(x))
        (d / FILES[yi]).write_bytes(_idx(y))
    return d


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return tiny_mnist(tmp_path_factory.mktemp("mnist"))


def test_lenet_config_is_001s_lenet_on_its_chip():
    spec = load_model(ROOT / "configs" / "lenet.yaml")
    assert spec.layers == lenet_spec(spec.epochs).layers
    assert (spec.batch_size, spec.update.lr, spec.update.momentum, spec.qbp.step_log2) == (
        64, 0.01, 0.9, None)
    hw = load_config(spec.hardware)
    assert hw.memory.scratchpad_bytes == LENET_SCRATCHPAD
    assert hw.accumulator.entries == LENET_ACC_ENTRIES


def test_lenet_lazy_quick(mnist_dir, tmp_path):
    rows = run_experiment("lenet-lazy", Config(), tmp_path, quick=True, data=str(mnist_dir))
    assert [r["variant"] for r in rows] == ["FP32", "INT8", "INT8 + lazy"]
    assert [r["paper_001_mnist"] for r in rows] == [99.10, 95.28, 99.24]
    for r in rows:
        assert 0 <= r["seed_0"] <= 100 and r["mean"] == r["seed_0"] and r["std"] == 0
        assert r["epochs"] == 1
    text = (tmp_path / "lenet-lazy.md").read_text()
    assert "99.24" in text and "INT8 + lazy" in text
    assert (tmp_path / "lenet-lazy.csv").exists()


def test_qbp_table_quick(mnist_dir, tmp_path):
    rows = run_experiment("qbp-table", Config(), tmp_path, quick=True, data=str(mnist_dir))
    names = [r["variant"] for r in rows]
    assert names == ["BP (float32)", "chip, no QBP", "QBP-UD step 2^0",
                     "float32 + QBP-UD step 2^0"]
    qbp, none, fq = rows[2], rows[1], rows[3]
    assert qbp["paper_004_accuracy"] == 98.14 and qbp["paper_004_sparsity"] == 99.15
    assert 0 < none["sparsity_mean"] < qbp["sparsity_mean"] <= 100
    assert np.isnan(rows[0]["sparsity_mean"]) and 0 < fq["sparsity_mean"] <= 100


def test_tables_need_a_data_directory(tmp_path):
    with pytest.raises(UsageError) as info:
        run_experiment("qbp-table", Config(), tmp_path, quick=True)
    assert "--data" in info.value.message
    with pytest.raises(UsageError):
        run_experiment("lazy-update", Config(), tmp_path, quick=True, data=str(tmp_path))


def test_lpemu_train_data_option_on_lenet(mnist_dir, tmp_path):
    """``lpemu train configs/lenet.yaml --data DIR`` trains on the directory, on the hardware
    the spec names."""
    out = tmp_path / "r.json"
    res = subprocess.run(
        [sys.executable, "-m", "programs.cli", "train", "configs/lenet.yaml", "--data",
         str(mnist_dir), "--epochs", "1", "--no-float", "--json", str(out)], cwd=ROOT,
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads(out.read_text())
    assert rep["dataset"]["train"] == 64 and rep["dataset"]["shape"] == [1, 28, 28]
    assert rep["model"]["dataset"]["path"] == str(mnist_dir)
    layers = {r["layer"] for r in rep["per_layer_phase"]}
    assert {f"l{i}" for i in range(1, 8)} <= layers
    assert rep["macs_skipped"] > 0


def test_hardware_key_is_checked_and_resolved_against_the_spec_file(tmp_path):
    from emulator.errors import ConfigError
    from programs.compiler.spec import spec_from_dict

    with pytest.raises(ConfigError) as info:
        spec_from_dict({"hardware": 5}, "m.yaml")
    assert info.value.key == "hardware"
    (tmp_path / "hw.yaml").write_text("memory:\n  scratchpad_bytes: 4096\n")
    (tmp_path / "m.yaml").write_text("hardware: hw.yaml\n")
    spec = load_model(tmp_path / "m.yaml")
    assert spec.hardware == str(tmp_path / "hw.yaml")
    assert load_config(spec.hardware).memory.scratchpad_bytes == 4096
