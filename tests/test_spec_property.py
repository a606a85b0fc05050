"""Every model spec that validates trains without a fault (issue 14): a hypothesis search over the
spec space (tiny MLPs and CNNs, biases, INT8/INT16 widths per layer, fixed and dynamic weight
exponents, QBP on and off in both orders, every update mode and optimizer, momentum, learning
rates up to the limit, extreme input exponents and weight headroom), each example trained for
one epoch on tiny random data and evaluated. A spec the validator refuses must name its key.
Bounded and derandomized: the same examples run in CI every time."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.config import Config
from emulator.errors import ConfigError
from programs.compiler.spec import spec_from_dict
from programs.host.datasets import Dataset
from programs.host.driver import ChipTrainer

EXAMPLES = int(os.environ.get("LPEMU_SPEC_EXAMPLES", "24"))  # raise it for a longer search
DERANDOMIZE = "LPEMU_SPEC_EXAMPLES" not in os.environ


@st.composite
def nets(draw) -> tuple[list, tuple[int, ...]]:
    """(layers, input shape): an MLP shorthand, dense mappings with biases, or a tiny CNN."""
    kind = draw(st.sampled_from(["mlp", "dense", "cnn"]))
    classes = draw(st.integers(2, 5))
    if kind == "mlp":
        f = draw(st.integers(1, 12))
        hidden = draw(st.lists(st.integers(1, 9), min_size=0, max_size=2))
        return [f, *hidden, classes], (f,)
    if kind == "dense":
        f = draw(st.integers(1, 12))
        layers = [{"kind": "input", "shape": [f]}]
        for _ in range(draw(st.integers(0, 2))):
            layers.append({"kind": "dense", "units": draw(st.integers(1, 9)),
                           "bias": draw(st.booleans()), "relu": draw(st.booleans())})
        layers.append({"kind": "dense", "units": classes, "bias": draw(st.booleans())})
        return layers, (f,)
    c, h = draw(st.integers(1, 2)), draw(st.integers(3, 6))
    layers = [{"kind": "input", "shape": [c, h, h]},
              {"kind": "conv", "filters": draw(st.integers(1, 4)), "kernel": 3, "padding": 1,
               "bias": draw(st.booleans())}]
    pool = draw(st.sampled_from(["maxpool", "avgpool", None]))
    if pool:
        layers.append({"kind": pool, "window": 2})
    layers += [{"kind": "flatten"}, {"kind": "dense", "units": classes, "bias": True}]
    return layers, (c, h, h)


def widths(draw, n: int) -> int | list[int]:
    if n == 0 or draw(st.booleans()):
        return draw(st.sampled_from([8, 16]))
    return draw(st.lists(st.sampled_from([8, 16]), min_size=n, max_size=n))


@st.composite
def specs(draw) -> tuple[dict, tuple[int, ...], int]:
    layers, shape = draw(nets())
    d = {"layers": layers}
    from programs.compiler.net import build_net

    net = build_net(layers)
    nw = len(net.weight_layers)
    lr = draw(st.sampled_from([1e-4, 0.01, 0.1, 1.0, 16.0]))
    d.update({
        "batch_size": draw(st.integers(1, 4)), "epochs": 1, "seed": draw(st.integers(0, 5)),
        "input_exponent": draw(st.sampled_from([None, -16, -4, 0, 16])),
        "weight_headroom": draw(st.sampled_from([1.0, 2.0, 1e6])),
        "bits": {"weights": widths(draw, nw), "activations": widths(draw, nw - 1),
                 "gradients": widths(draw, nw - 1), "classifier": draw(st.integers(4, 16)),
                 "weight_exponent": draw(st.sampled_from(["fixed", "dynamic"]))},
        "qbp": {"step_log2": draw(st.sampled_from([None, -12, -3, 0, 8])),
                "dither": draw(st.sampled_from(["uniform", "triangular", "none"])),
                "order": draw(st.sampled_from(["mask_first", "quantize_first"]))},
    })
    mode = draw(st.sampled_from(["lazy", "plain", "stochastic", "shadow"]))
    opt = draw(st.sampled_from(["sgd", "adam"]))
    upd = {"mode": mode, "optimizer": opt, "lr": lr,
           "acc_shift": draw(st.sampled_from([1, 4, 8, 12, 15])),
           "momentum": 0.0 if opt == "adam" else draw(st.sampled_from([0.0, 0.5, 0.99])),
           "readout": draw(st.sampled_from(["nearest", "uniform"])) if mode == "shadow"
           else "nearest",
           "schedule": {"kind": draw(st.sampled_from(["constant", "step", "inverse"])),
                        "every": 1, "t0": 2.0},
           "adam": {"eps": draw(st.sampled_from([0.0, 1e-8, 1e-2]))}}
    d["update"] = upd
    return d, shape, net.classes


def tiny_data(shape: tuple[int, ...], classes: int, batch: int, seed: int) -> Dataset:
    """Two batches of random pixels in [-128, 127] (the extremes of the input grid) and a test
    batch."""
    rng = np.random.default_rng(seed)
    f = int(np.prod(shape))
    n = 2 * batch
    x = rng.integers(-128, 128, (n + batch, f)).astype(np.int8)
    y = rng.integers(0, classes, n + batch).astype(np.int64)
    return Dataset("tiny", x[:n], y[:n], x[n:], y[n:], classes, -4, shape)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(specs())
def test_every_valid_spec_trains_without_a_fault(case):
    d, shape, classes = case
    try:
        spec = spec_from_dict(d, "m.yaml")
    except ConfigError as e:  # refused: with the key that is wrong
        assert e.key and e.file == "m.yaml", e
        REFUSED.append(e.key)
        return
    data = tiny_data(shape, classes, spec.batch_size, spec.seed)
    tr = ChipTrainer(spec, Config(), data)
    st_ = tr.train_epoch()
    assert np.isfinite(st_.loss)
    assert 0.0 <= tr.test_accuracy() <= 1.0
    assert len(tr.param_exponents()) == len(tr.layout.params)
    TRAINED.append(d)


REFUSED: list[str] = []
TRAINED: list[dict] = []


def test_the_search_trains_most_examples():
    """Runs after the search (file order): most drawn specs are valid and were trained."""
    if not (REFUSED or TRAINED):  # the search test was deselected
        return
    assert len(TRAINED) >= 2 * len(REFUSED), (len(TRAINED), REFUSED)
