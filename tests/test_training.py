"""Training on the chip: counters, accuracy claims of the papers, determinism (fixed seeds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jit_child import run_child

from emulator.config import Config
from emulator.counters import IDX
from emulator.errors import ConfigError
from programs.cli.train import classifier_warning
from programs.compiler.spec import ModelSpec, load_model, spec_from_dict, with_overrides
from programs.experiments import chip_run, classifier_spec
from programs.host.datasets import Dataset, digits
from programs.host.driver import ChipTrainer, classifier_bits_bound
from programs.host.float_ref import train_float

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_data() -> Dataset:
    return digits(0)


def tiny(data: Dataset, n: int) -> Dataset:
    return Dataset("tiny", data.x_train[:n], data.y_train[:n], data.x_test[:20],
                   data.y_test[:20], data.classes)


# ------------------------------------------------------------------------------ model spec
def test_default_model_yaml_equals_builtin_defaults():
    assert load_model(ROOT / "configs" / "digits_mlp.yaml") == ModelSpec()


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"layerz": [1, 2]}, "layerz"),
        ({"update": {"lr": 0.1, "moment": 0.9}}, "update.moment"),
        ({"update": {"schedule": {"kind": "cosine"}}}, "update.schedule.kind"),
        ({"qbp": {"dither": "gaussian"}}, "qbp.dither"),
        ({"qbp": {"step_log2": [-3, -3]}}, "qbp.step_log2"),
        ({"bits": {"classifier": 17}}, "bits.classifier"),
        ({"batch_size": 0}, "batch_size"),
        ({"layers": [64]}, "layers"),
    ],
)
def test_model_spec_errors_name_the_key(d, key):
    with pytest.raises(ConfigError) as info:
        spec_from_dict(d, "m.yaml")
    assert info.value.key == key and info.value.file == "m.yaml"


# ------------------------------------------------------------------------------ counters
def test_macs_skipped_equals_zeros_of_dz_times_other_dimension(digits_data):
    """Over one training step, every backward GEMM skips exactly zeros(dz~) x the other
    dimension of its product; zeros are counted from the values the chip left in memory."""
    spec = with_overrides(ModelSpec(), **{"epochs": 1, "qbp.step_log2": -2})
    tr = ChipTrainer(spec, Config(), tiny(digits_data, spec.batch_size))
    assert tr.nb_train == 1
    before = tr.m.counts.copy()
    tr.train_epoch()
    delta = tr.m.counts - before
    n = spec.layers
    total_zero_products = 0
    for l in range(1, spec.n_weight_layers + 1):
        count = spec.batch_size * n[l]
        # the last layer's dz~ has the classifier gradient's width (INT16)
        dz = tr.m.sp_elems(tr.layout.sp[f"DZ{l}"], count,
                           tr.layout.grad_eb(tr.layout.net.layers[l - 1]))
        zeros = int(np.count_nonzero(dz == 0))
        assert 0 < zeros < count  # a real test: some zeros, some not
        rows = tr.bwd_pcs[l]
        skipped = int(delta[rows, IDX["macs_skipped"]].sum())
        products = 2 if l > 1 else 1  # dW always, dA except for the first layer
        assert skipped == zeros * n[l - 1] * products
        total_zero_products += zeros * n[l - 1] * products
    # and nothing else in the step skips anything
    assert int(delta[:, IDX["macs_skipped"]].sum()) == total_zero_products


# ------------------------------------------------------------------------------ papers' claims
def test_lazy_update_matches_float_and_plain_int8_fails(digits_data):
    """001: at a learning rate where lr*g falls below the INT8 grid, plain INT8 training stalls
    while the lazy update tracks float32 (digits, 64-100-100-10, batch 10, fixed seeds)."""
    spec = with_overrides(ModelSpec(), **{"update.lr": 0.01})
    lazy = chip_run(spec, Config(), digits_data)
    plain = chip_run(with_overrides(spec, **{"update.mode": "plain"}), Config(), digits_data)
    ref = train_float(spec, digits_data, lazy["trainer"].float_init()).test_accuracy
    assert abs(lazy["test_accuracy"] - ref) <= 0.015
    assert plain["test_accuracy"] <= ref - 0.10


def test_qbp_uniform_dither_keeps_accuracy_at_high_sparsity(digits_data):
    """004: QBP with uniform dither at a step giving >= 90% gradient sparsity stays within
    1.5 points of training without QBP; the same step without dither is measurably worse."""
    base = ModelSpec()
    no_qbp = chip_run(with_overrides(base, **{"qbp.step_log2": None}), Config(), digits_data)
    uni = chip_run(with_overrides(base, **{"qbp.step_log2": -1}), Config(), digits_data)
    none = chip_run(with_overrides(base, **{"qbp.step_log2": -1, "qbp.dither": "none"}),
                    Config(), digits_data)
    assert uni["mean_sparsity"] >= 0.90
    assert abs(uni["test_accuracy"] - no_qbp["test_accuracy"]) <= 0.015
    # "measurably": more than 3 standard errors of a 450-sample accuracy estimate
    n = len(digits_data.y_test)
    se = math.sqrt(uni["test_accuracy"] * (1 - uni["test_accuracy"]) / n)
    assert none["test_accuracy"] < uni["test_accuracy"] - max(3 * se, 0.02)


def test_classifier_width_int8_loses_small_components_int16_within_alpha():
    """001 sec. 3: on a 100-class task an INT8 classifier (below the eq. 5 bound of 8.63 bits)
    rounds many small softmax outputs to zero and biases the round-off sum of dL/ds; INT16
    keeps every sample's round-off sum far inside alpha."""
    from programs.host.datasets import synthetic

    data = synthetic(classes=100, features=64, seed=0)
    int8 = chip_run(classifier_spec(100, 8, epochs=5), Config(), data)
    int16 = chip_run(classifier_spec(100, 16, epochs=5), Config(), data)
    tr8 = int8["trainer"]
    assert int8["y_zero_fraction"] > 0.2
    assert int16["y_zero_fraction"] < int8["y_zero_fraction"] / 3
    # bias: the last epoch's per-sample signed round-off sums are negative on average, far
    # beyond their standard error
    ro = np.frombuffer(tr8.m.read_dram(tr8.ro_addr, tr8.nb_train * 10 * 4), "<i4") * 2.0**-7
    assert ro.mean() < -5 * ro.std(ddof=1) / math.sqrt(ro.size)
    assert int16["roundoff_max_abs"] < 0.5 * 0.05  # far within alpha = 0.5
    assert classifier_bits_bound(100, 0.5) == pytest.approx(math.log2(99) + 2)


def test_classifier_bound_and_warning():
    assert classifier_bits_bound(1000, 0.5) == pytest.approx(11.964, abs=1e-3)
    assert classifier_bits_bound(10, 0.5) == pytest.approx(math.log2(9) + 2)
    assert classifier_warning(classifier_spec(100, 8, 1)) is not None
    assert classifier_warning(classifier_spec(100, 16, 1)) is None
    assert classifier_warning(ModelSpec()) is None


# ------------------------------------------------------------------------------ exactness
# issue 14's numerics in one spec: mixed widths, dynamic exponents, Adam, 004's order with
# triangular dither
NUMERICS = {"bits.weights": [8, 16, 16], "bits.activations": [16, 8],
            "bits.gradients": [16, 8], "bits.weight_exponent": "dynamic",
            "update.optimizer": "adam", "update.lr": 0.01, "qbp.dither": "triangular"}


@pytest.mark.parametrize("over", [{}, NUMERICS], ids=["default", "numerics"])
def test_training_step_fast_equals_reference_datapath(digits_data, over):
    """A whole training step on the fast kernels and on the slow reference model: same state
    digest and the same counters, instruction by instruction."""
    spec = with_overrides(ModelSpec(), **{"epochs": 1, **over})
    data = tiny(digits_data, 2 * spec.batch_size)
    results = []
    for dp in ("fast", "reference"):
        tr = ChipTrainer(spec, Config(), data, datapath=dp)
        tr.train_epoch()
        results.append((tr.m.digest(), tr.m.counts.copy()))
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


def test_training_same_with_numba_off(tmp_path, digits_data):
    code = (
        "from programs.compiler.spec import ModelSpec, with_overrides\n"
        "from programs.host.driver import ChipTrainer\n"
        "from programs.host.datasets import digits, Dataset\n"
        "from emulator.config import Config\n"
        "d = digits(0)\nd = Dataset('t', d.x_train[:30], d.y_train[:30], d.x_test[:20],"
        " d.y_test[:20], 10)\n"
        f"for over in ({{}}, {NUMERICS!r}):\n"
        "    tr = ChipTrainer(with_overrides(ModelSpec(), epochs=1, **over), Config(), d)\n"
        "    tr.train_epoch(); print(tr.m.digest(), int(tr.m.counts.sum()))\n"
    )
    assert run_child(code, jit=True, timeout=300) == run_child(code, jit=False, timeout=300)


def test_training_is_reproducible(digits_data):
    spec = with_overrides(ModelSpec(), epochs=2)
    data = tiny(digits_data, 60)
    digests = []
    for _ in range(2):
        tr = ChipTrainer(spec, Config(), data)
        for _ in range(spec.epochs):
            tr.train_epoch()
        digests.append((tr.m.digest(), tr.evaluate(), tr.m.counts.sum()))
    assert digests[0] == digests[1]


# ------------------------------------------------------------------------------ CLI
def test_lpemu_train_cli_json(tmp_path):
    out = tmp_path / "train.json"
    res = subprocess.run(
        [sys.executable, "-m", "programs.cli", "train", "--epochs", "2", "--json", str(out),
         "--no-float"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rep = json.loads(out.read_text())
    for key in ("test_accuracy", "mean_gradient_sparsity", "cycles", "macs", "macs_skipped",
                "energy_pj"):
        assert key in rep
    assert 0.5 < rep["test_accuracy"] <= 1.0
    assert 0 < rep["mean_gradient_sparsity"] < 1
    assert rep["macs_skipped"] > 0 and rep["energy_pj"] > 0


def test_lpemu_train_bad_model_key(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("update:\n  lr: 0.1\n  mode: lazzy\n")
    res = subprocess.run([sys.executable, "-m", "programs.cli", "train", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == ConfigError.exit_code
    assert "update.mode" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_layers_larger_than_the_scratchpad_are_tiled_with_identical_values(digits_data):
    """With a 12 KB scratchpad the weights stream from DRAM in row tiles: the trained weights,
    MACs and skips are bit-identical to the resident run; DRAM traffic and cycles grow."""
    import dataclasses

    spec = with_overrides(ModelSpec(), epochs=1)
    data = tiny(digits_data, 100)
    base = Config()
    small = dataclasses.replace(
        base, memory=dataclasses.replace(base.memory, scratchpad_bytes=12000))
    runs = []
    for cfg in (base, small):
        tr = ChipTrainer(spec, cfg, data)
        tr.train_epoch()
        runs.append((tr, tr.weights(), tr.m.summary().totals))
    assert not runs[0][0].layout.streamed and runs[1][0].layout.streamed
    assert max(len(t) for t in runs[1][0].layout.tiles.values()) > 1
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(a, b)
    for key in ("macs", "macs_skipped", "rng_draws"):
        assert runs[0][2][key] == runs[1][2][key]
    assert runs[1][2]["dram_rd_bytes"] > runs[0][2]["dram_rd_bytes"]
    assert runs[1][2]["cycles"] > runs[0][2]["cycles"]


# ------------------------------------------------------------------------------ momentum
def test_momentum_update_is_the_documented_integer_algorithm(digits_data):
    """Stop the firmware at the last layer's update in the third step and compute that update
    independently in int64 from the documented semantics: U = round(dW mu 2^-s) on the fine
    grid, VL = sat16(floor((VL beta_q + u) / 2^15) + U) with u the low 15 bits of one dither
    draw per element, LZ -= VL, then the lazy move into the INT8 weights."""
    from emulator.rng import draw_ref
    from programs.compiler.firmware import E_T0, E_W, R_MU, momentum_q15

    spec = with_overrides(ModelSpec(), **{"epochs": 1, "update.momentum": 0.875,
                                          "update.lr": 0.05})
    tr = ChipTrainer(spec, Config(), tiny(digits_data, 4 * spec.batch_size))
    lay, m, l = tr.layout, tr.m, spec.n_weight_layers
    nw = spec.layers[l - 1] * spec.layers[l]
    tr._begin_epoch()
    m.run(break_pc=tr.program.labels[f"train.upd.l{l}"], break_after=3)

    def sp16(name: str) -> np.ndarray:
        return m.sp_elems(lay.sp[name], nw, 2).astype(np.int64)

    dw = m.acc[lay.acc["DW"] : lay.acc["DW"] + nw].copy()
    w0 = m.sp_elems(lay.sp[f"W{l}"], nw, 1).astype(np.int64)
    lz0, vl0 = sp16(f"LZ{l}"), sp16(f"VL{l}")
    assert np.count_nonzero(vl0) > nw // 4  # the velocity carries earlier steps
    e_w, e_dw, mu = m.e[E_W(l)], m.e[E_T0], m.r[R_MU]
    seed, counter = m.rng
    m.run(break_pc=tr.program.labels[f"train.bwd.l{l - 1}"])

    k = spec.update.acc_shift
    s = (e_w - k) - (e_dw - lay.mu_shift)  # shift from dW * mu to the fine grid
    assert s > 0
    u_step = np.clip((dw * mu + (1 << (s - 1))) >> s, -32768, 32767)
    beta = momentum_q15(spec)
    assert beta == 28672  # 0.875 * 2**15
    u = np.array([draw_ref(seed, counter + i) & 0x7FFF for i in range(nw)], dtype=np.int64)
    vl = np.clip(np.clip((vl0 * beta + u) >> 15, -32768, 32767) + u_step, -32768, 32767)
    lz = np.clip(lz0 - vl, -32768, 32767)
    d = (lz + (1 << (k - 1))) >> k
    w = np.clip(w0 + d, -128, 127)
    lz = lz - ((w - w0) << k)
    np.testing.assert_array_equal(sp16(f"VL{l}"), vl)
    np.testing.assert_array_equal(sp16(f"LZ{l}"), lz)
    np.testing.assert_array_equal(m.sp_elems(lay.sp[f"W{l}"], nw, 1), w)
    assert m.rng == [seed, counter + nw] and np.any(w != w0)


def test_momentum_tracks_the_float32_heavy_ball_reference(digits_data):
    """lr 0.01, momentum 0.9 (lazy and shadow): the chip stays within 1.5 points of float32
    SGD with the same heavy-ball momentum, and the momentum changes the trained weights."""
    for mode in ("lazy", "shadow"):
        spec = with_overrides(ModelSpec(), **{"update.lr": 0.01, "update.momentum": 0.9,
                                              "update.mode": mode, "epochs": 10})
        chip = chip_run(spec, Config(), digits_data)
        ref = train_float(spec, digits_data, chip["trainer"].float_init()).test_accuracy
        assert abs(chip["test_accuracy"] - ref) <= 0.015, (mode, chip["test_accuracy"], ref)
        plain = chip_run(with_overrides(spec, **{"update.momentum": 0.0}), Config(),
                         digits_data)["trainer"]
        assert plain.weights_digest() != chip["trainer"].weights_digest()


def test_momentum_with_streamed_weights_is_bit_identical(digits_data):
    import dataclasses

    spec = with_overrides(ModelSpec(), **{"epochs": 1, "update.momentum": 0.9})
    base = Config()
    small = dataclasses.replace(
        base, memory=dataclasses.replace(base.memory, scratchpad_bytes=14000))
    digests = []
    for cfg in (base, small):
        tr = ChipTrainer(spec, cfg, tiny(digits_data, 60))
        tr.train_epoch()
        digests.append((tr.layout.streamed, tr.weights_digest(), tr.m.summary().totals["macs"]))
    assert digests[1][0] and not digests[0][0]
    assert digests[0][1:] == digests[1][1:]


@pytest.mark.parametrize(("d", "fragment"), [
    ({"update": {"momentum": 1.0}}, "[0, 1)"),
    ({"update": {"momentum": -0.1}}, "[0, 1)"),
])
def test_momentum_spec_errors(d, fragment):
    with pytest.raises(ConfigError) as info:
        spec_from_dict(d, "m.yaml")
    assert info.value.key == "update.momentum" and fragment in info.value.message
