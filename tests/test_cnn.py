"""Convolutional networks on the chip: the layer list, every layer's forward and backward in the
compiled firmware against an independent numpy int64 computation of the documented semantics,
exact skipped MACs, depth beyond the exponent registers, streaming, and the float32 reference's
gradients against finite differences."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from jit_child import run_child

from emulator.config import Config
from emulator.counters import IDX
from emulator.errors import ConfigError
from emulator.rng import draw_ref
from programs.compiler import exps as exps_mod
from programs.compiler import firmware
from programs.compiler.emit import E_DZ, E_G, E_T1, E_X
from programs.compiler.firmware import compile_model
from programs.compiler.spec import ModelSpec, spec_from_dict, with_overrides
from programs.host.datasets import Dataset
from programs.host.driver import ChipTrainer, label_key
from programs.host.float_ref import FloatNet, loss_and_grad

ROOT = Path(__file__).resolve().parents[1]

# every layer kind, strides 1 and 2, padding, odd sizes, channel counts that are not multiples of
# the 16x16 array, overlapping max-pooling windows, an average over 6 positions (not a power of
# two), biases on a convolution and on hidden and last dense layers
NET = [
    {"kind": "input", "shape": [3, 10, 10]},
    {"kind": "conv", "filters": 6, "kernel": 3, "padding": 1, "bias": True},
    {"kind": "maxpool", "window": 3, "stride": 2},
    {"kind": "conv", "filters": 5, "kernel": [3, 2], "stride": [2, 1], "padding": [1, 0]},
    {"kind": "avgpool", "window": [2, 3], "stride": 1},
    {"kind": "flatten"},
    {"kind": "dense", "units": 7, "bias": True},
    {"kind": "dense", "units": 4, "bias": True},
]


def image_data(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0) -> Dataset:
    """Random pixels 0..16 with labels from a random linear rule (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    feats = math.prod(shape)
    x = rng.integers(0, 17, (2 * n, feats)).astype(np.int8)
    w = rng.normal(size=(feats, classes))
    y = (x.astype(np.float64) @ w).argmax(axis=1).astype(np.int64)
    return Dataset("images", x[:n], y[:n], x[n:], y[n:], classes, -4, shape)


def cnn_spec(**over) -> ModelSpec:
    d = {"name": "cnn", "layers": NET, "batch_size": 4, "epochs": 1, "input_exponent": -4,
         "update": {"lr": 0.05}}
    return with_overrides(spec_from_dict(d), **over) if over else spec_from_dict(d)


# ------------------------------------------------------------------------------ the oracle
def bitlen(v: np.ndarray) -> int:
    m = np.where(v >= 0, v, ~v)
    return int(m.max()).bit_length() if m.size else 0


def efit(v: np.ndarray, e_in: int, bits: int) -> int:
    return e_in + bitlen(v) - (bits - 1)


def round_shift(v: np.ndarray, s: int, u: np.ndarray | None = None) -> np.ndarray:
    """floor((v + 2**(s-1)) / 2**s) (nearest, ties up) or with dither u in [0, 2**s):
    floor((v + u) / 2**s); s <= 0 shifts left."""
    v = v.astype(np.int64)
    if s <= 0:
        return v << -s
    return (v + (u if u is not None else (1 << (s - 1)))) >> s


def sat(v: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(v, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def fit32(v: np.ndarray) -> np.ndarray:
    """fit_acc of the default accumulator (32 bits, saturate): INT16 x INT16 products can
    exceed it."""
    return sat(v, 32)


def windows(x: np.ndarray, k, s, p, fill=0) -> np.ndarray:
    """[B, OH, OW, KH, KW, C] windows of an NHWC int64 image (padding = ``fill``), plus a mask
    of positions inside the input."""
    b, h, w, c = x.shape
    xp = np.full((b, h + 2 * p[0], w + 2 * p[1], c), fill, np.int64)
    xp[:, p[0]:p[0] + h, p[1]:p[1] + w] = x
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    out = np.empty((b, oh, ow, k[0], k[1], c), np.int64)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]]
    return out


def col2im(cols: np.ndarray, shape, k, s, p) -> np.ndarray:
    b, h, w, c = shape
    out = np.zeros((b, h + 2 * p[0], w + 2 * p[1], c), np.int64)
    for i in range(cols.shape[1]):
        for j in range(cols.shape[2]):
            out[:, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]] += cols[:, i, j]
    return out[:, p[0]:p[0] + h, p[1]:p[1] + w]


class Probe:
    """Reads tensors and exponents of a ChipTrainer stopped at a label."""

    def __init__(self, tr: ChipTrainer) -> None:
        self.tr, self.m, self.lay = tr, tr.m, tr.layout

    def exp(self, name: str) -> int:
        ex = self.lay.exps
        n = ex._name(name)
        if n in ex.regs:
            return int(self.m.e[ex.regs[n]])
        if n in ex.fixed:
            return ex.fixed[n]
        return int(np.frombuffer(self.m.read_dram(ex.mem[n], 4), "<i4")[0])

    def sp(self, name: str, shape, eb: int = 1) -> np.ndarray:
        n = math.prod(shape)
        return self.m.sp_elems(self.lay.sp[name], n, eb).astype(np.int64).reshape(shape)

    def param(self, wp, x: str = "W") -> np.ndarray:
        """A parameter as the next instruction would read it: from the scratchpad when
        resident, from its DRAM home when it streams (the home is current between tiles)."""
        n, eb = wp.size, self.lay.state_bytes(x, wp)
        if not self.lay.streams(wp):
            return self.sp(wp.key(x), wp.shape, eb)
        raw = self.m.read_dram(self.lay.dram[wp.key(x)], n * eb)
        return np.frombuffer(raw, np.int8 if eb == 1 else "<i2").astype(np.int64).reshape(
            wp.shape)

    def acc(self, name: str, shape) -> np.ndarray:
        a = self.lay.acc[name]
        return self.m.acc[a:a + math.prod(shape)].astype(np.int64).reshape(shape)

    def run_to(self, label: str) -> None:
        pc = self.tr.program.labels[label]
        if self.m.pc != pc:  # (a label with no instructions of its own shares the next pc)
            self.m.run(break_pc=pc)

    def sample_major(self, pos: int) -> bool:
        """Whether layer pos's stored output is [B, ...] (images; a pass-through flatten; a dense
        layer with a bias feeding a dense layer that reads it so; the logits) rather than
        feature-major [features, B]."""
        if pos == 0:
            return self.lay.net.is_image
        low = self.lay.lowerings[pos - 1]
        return (len(low.layer.out_shape) == 3 or getattr(low, "passthrough", False)
                or getattr(low, "out_s", False))

    def act(self, pos: int, b: int) -> np.ndarray:
        """Layer pos's output as stored: NHWC for images; vectors [B, n] or [n, B]."""
        net = self.lay.net
        shape = net.input_shape if pos == 0 else net.layers[pos - 1].out_shape
        eb = self.lay.act_eb(pos)  # bits.activations
        if len(shape) == 3:
            c, h, w = shape
            return self.sp(f"A{pos}", (b, h, w, c), eb)
        if self.sample_major(pos):
            return self.sp(f"A{pos}", (b, shape[0]), eb)
        return self.sp(f"A{pos}", (shape[0], b), eb)


def fresh(spec: ModelSpec, data: Dataset, cfg: Config | None = None) -> tuple[ChipTrainer, Probe]:
    tr = ChipTrainer(spec, cfg or Config(), data)
    tr._begin_epoch()
    return tr, Probe(tr)


# ------------------------------------------------------------------------------ the spec
def test_layer_list_shapes_and_shorthand():
    net = cnn_spec().net()
    assert [x.out_shape for x in net.layers] == [(6, 10, 10), (6, 4, 4), (5, 2, 3), (5, 1, 1),
                                                  (5,), (7,), (4,)]
    assert [x.widx for x in net.layers] == [1, 0, 2, 0, 0, 3, 4]
    assert net.layers[2].fan_in == 3 * 2 * 6 and net.classes == 4 and net.is_image
    mlp = ModelSpec().net()
    assert mlp.is_mlp and [x.units for x in mlp.layers] == [100, 100, 10]
    same = [{"kind": "input", "shape": [64]}, {"kind": "dense", "units": 100},
            {"kind": "dense", "units": 100}, {"kind": "dense", "units": 10}]
    assert spec_from_dict({"layers": same}).net().layers == mlp.layers


@pytest.mark.parametrize(("layers", "key", "fragment"), [
    ([{"kind": "conv", "filters": 2, "kernel": 3}, {"kind": "dense", "units": 2}],
     "layers[0].kind", "first entry"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "convv"}], "layers[1].kind",
     "did you mean 'conv'"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 2, "kernal": 3}],
     "layers[1].kernal", "did you mean 'kernel'"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 2}],
     "layers[1].kernel", "missing"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 0, "kernel": 3}],
     "layers[1].filters", "[1, 65535]"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 2, "kernel": 5}],
     "layers[1].kernel", "larger than"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 2, "kernel": "3"}],
     "layers[1].kernel", "integer"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 2, "kernel": 3,
                                              "stride": 0}], "layers[1].stride", "[1, 255]"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "conv", "filters": 2, "kernel": 3,
                                              "bias": 1}], "layers[1].bias", "true or false"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "maxpool", "window": 5}],
     "layers[1].window", "larger than"),
    ([{"kind": "input", "shape": [1, 40, 40]}, {"kind": "maxpool", "window": 17}],
     "layers[1].window", "256 positions"),
    ([{"kind": "input", "shape": [16]}, {"kind": "maxpool", "window": 2}], "layers[1].kind",
     "image input"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "dense", "units": 3}], "layers[1].kind",
     "flatten"),
    ([{"kind": "input", "shape": [16]}, {"kind": "flatten"}], "layers[1].kind", "already"),
    ([{"kind": "input", "shape": [1, 4, 4]}, {"kind": "flatten"}], "layers[1].kind",
     "must be dense"),
    ([{"kind": "input", "shape": [16]}, {"kind": "dense", "units": 3, "relu": True}],
     "layers[1].relu", "no ReLU"),
    ([{"kind": "input", "shape": [2, 3]}, {"kind": "dense", "units": 3}], "layers[0].shape",
     "[C, H, W]"),
    ([{"kind": "input", "shape": [16]}, 5], "layers[1]", "mapping"),
    ([64], "layers", "at least two"),
])
def test_layer_errors_name_the_key(layers, key, fragment):
    with pytest.raises(ConfigError) as info:
        spec_from_dict({"layers": layers}, "m.yaml")
    assert info.value.key == key and info.value.file == "m.yaml", info.value
    assert fragment in info.value.message


def test_qbp_steps_count_weight_layers_only():
    spec_from_dict({"layers": NET, "qbp": {"step_log2": [-3, -3, -2, -2]}})
    with pytest.raises(ConfigError) as info:
        spec_from_dict({"layers": NET, "qbp": {"step_log2": [-3] * 7}})
    assert info.value.key == "qbp.step_log2" and "(4)" in info.value.message


# ------------------------------------------------------------------------------ forward
def _forward_oracle(p: Probe, layer, x: np.ndarray, b: int) -> tuple[np.ndarray, int]:
    """The layer's stored output and exponent from its stored input ``x`` (as the chip stores
    it), by the documented semantics in int64."""
    lay = p.lay
    e_in = p.exp(f"a{layer.pos - 1}")
    if layer.kind == "flatten":
        return (x.reshape(b, -1) if p.sample_major(layer.pos) else x.reshape(b, -1).T), e_in
    if layer.kind == "maxpool":
        win = windows(x, layer.kernel, layer.stride, layer.padding)
        bb, oh, ow, kh, kw, c = win.shape
        return win.reshape(bb, oh, ow, kh * kw, c).max(axis=3), e_in
    if layer.kind == "avgpool":
        area = layer.kernel[0] * layer.kernel[1]
        sums = windows(x, layer.kernel, layer.stride, layer.padding).sum(axis=(3, 4))
        e_out = efit(sums, e_in, 8) - int(math.floor(math.log2(area)))
        mul = round(2**16 / area)
        bits = 8 * lay.act_eb(layer.pos)
        e_out = efit(sums, e_in, bits) - int(math.floor(math.log2(area)))
        return sat(round_shift(sums * mul, e_out - (e_in - 16)), bits), e_out
    wp = lay.param_of(layer)
    w = p.param(wp)
    if layer.kind == "conv":
        win = windows(x, layer.kernel, layer.stride, layer.padding)
        z = win.reshape(-1, layer.fan_in) @ w
        z = z.reshape(win.shape[:3] + (layer.units,))
    else:
        z = (x if p.sample_major(layer.pos - 1) else x.T) @ w  # [B, n_out]
    z = fit32(z)
    e_acc = wp.exp + e_in
    if layer.bias:
        bp = lay.param_of(layer, bias=True)
        z = fit32(z + round_shift(p.param(bp), e_acc - bp.exp))
    last = layer.pos == len(lay.net.layers)
    bits = 16 if last else 8 * lay.act_eb(layer.pos)
    e_out = efit(z, e_acc, bits)
    if last:
        e_out = max(e_out, -24)
    y = sat(round_shift(z, e_out - e_acc), bits)
    if layer.relu:
        y = np.maximum(y, 0)
    return (y if layer.kind == "conv" or p.sample_major(layer.pos) else y.T), e_out


def small_scratchpad(spec: ModelSpec) -> Config:
    """A scratchpad 256 bytes short of the resident plan: the weights stream."""
    base = Config()
    need = compile_model(spec, base)[1].sizes["sp_used"]
    return dataclasses.replace(base, memory=dataclasses.replace(base.memory,
                                                                scratchpad_bytes=need - 256))


def feature_major(monkeypatch) -> None:
    """Make every dense layer read feature-major inputs (flatten and the biased hidden layer
    transpose through DRAM), as when a dense layer streams in several row tiles."""
    monkeypatch.setattr(firmware, "_choose_layouts", lambda lay: None)


@pytest.mark.parametrize(("weights", "widths"), [("resident", False), ("streamed", False),
                                                 ("resident", True), ("streamed", True)])
def test_cnn_forward_equals_int64_oracle_layer_by_layer(weights, widths, monkeypatch):
    """Resident weights with the sample-major shortcut; streamed weights with every layout
    change through DRAM; INT8 and mixed INT8/INT16 widths."""
    spec = cnn_spec(**(WIDTHS if widths else {}))
    cfg = Config()
    if weights == "streamed":
        cfg = small_scratchpad(spec)
        feature_major(monkeypatch)
    tr, p = fresh(spec, image_data(8, (3, 10, 10), 4), cfg)
    flat = tr.layout.lowerings[4]
    assert flat.passthrough == (weights == "resident")
    assert tr.layout.streamed == (weights == "streamed")
    b = spec.batch_size
    assert not tr.layout.exps.register_mode  # 12 exponents: memory mode is exercised here
    layers = tr.layout.net.layers
    p.run_to("train.fwd.l1")
    for layer in layers:
        x = p.act(layer.pos - 1, b)
        nxt = f"train.fwd.l{layer.pos + 1}" if layer.pos < len(layers) else "train.softmax"
        p.run_to(nxt)
        want, e_want = _forward_oracle(p, layer, x, b)
        if layer.pos == len(layers):
            got, e_got = p.sp("S", (b, spec.classes), 2), int(p.m.e[11])
        else:
            got, e_got = p.act(layer.pos, b), p.exp(f"a{layer.pos}")
            if layer.kind == "maxpool":  # and the argmax indices: the first maximum
                win = windows(x, layer.kernel, layer.stride, layer.padding)
                bb, oh, ow, kh, kw, c = win.shape
                idx = win.reshape(bb, oh, ow, kh * kw, c).argmax(axis=3)
                np.testing.assert_array_equal(
                    p.m.sp_elems(p.lay.sp[f"IDX{layer.pos}"], idx.size, 1).view(np.uint8)
                    .reshape(idx.shape), idx)
        assert e_got == e_want, layer
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=str(layer))
        assert np.count_nonzero(got) > 0, layer


# ------------------------------------------------------------------------------ backward
def _incoming(p: Probe, layers, layer, b: int, e_dz: int) -> tuple[np.ndarray, int, int | None]:
    """The gradient arriving at ``layer``'s backward (stopped at its label): values (the
    layout of the layer's output), exponent and the average-pooling multiplier, if any."""
    top = layer.pos == len(layers)
    if top:
        return p.sp("G", (b, layer.units), 2), int(p.m.e[E_G]), None
    above = layers[layer.pos]
    n = layer.out_size * b
    if above.kind == "flatten" and p.lay.lowerings[above.pos - 1].passthrough:
        above = layers[above.pos]  # the dense layer above hands its gradient through
    if above.kind in ("conv", "dense"):
        e = p.lay.param_of(above).exp + e_dz
        g = p.acc("DA", (n,))
        if len(layer.out_shape) == 1:
            return (g.reshape(b, n // b) if p.sample_major(layer.pos)
                    else g.reshape(n // b, b)), e, None
        c, h, w = layer.out_shape
        return g.reshape(b, h, w, c), e, None
    if above.kind == "flatten":
        c, h, w = layer.out_shape
        return p.sp(f"GY{above.pos}", (b, h, w, c), 2), int(p.m.e[E_X]), None
    c, h, w = layer.out_shape  # a pooling layer above
    area = above.kernel[0] * above.kernel[1]
    mul = None if above.kind == "maxpool" else round(2**16 / area)
    return p.acc("DA", (n,)).reshape(b, h, w, c), int(p.m.e[E_T1]), mul


def _skipped(tr: ChipTrainer, before: np.ndarray, pos: int) -> int:
    rows = np.array([k == (f"l{pos}", "backward") for k in tr.pc_keys])
    return int((tr.m.counts - before)[rows, IDX["macs_skipped"]].sum())


# per-layer widths: INT16 weights, activations and dz~ on some layers (byte-pass GEMMs, INT16
# pooling and flatten, masks converted between widths), a 12-bit classifier (INT16 dz~ on top)
WIDTHS = {"bits.weights": [16, 8, 16, 16], "bits.activations": [16, 8, 16],
          "bits.gradients": [8, 16, 16], "bits.classifier": 12}


@pytest.mark.parametrize(("dither", "weights", "widths"), [
    ("uniform", "resident", False), ("none", "resident", False), ("uniform", "streamed", False),
    ("uniform", "resident", True), ("none", "streamed", True)])
def test_cnn_backward_equals_int64_oracle_with_exact_skips(dither, weights, widths, monkeypatch):
    """One training step stopped at every backward label: dz~ (QBP step, dither drawn from the
    documented generator, ReLU mask), dW and db before the update, dX by col2im / unpooling /
    the flatten transpose, and the skipped MACs of each weight layer = zeros(dz~) x (K per
    product + 1 for the bias gradient); with mixed INT8/INT16 widths too."""
    spec = cnn_spec(**{"qbp.step_log2": [-4, -5, -4, -2], "qbp.dither": dither,
                       **(WIDTHS if widths else {})})
    cfg = Config()
    if weights == "streamed":
        cfg = small_scratchpad(spec)
        feature_major(monkeypatch)
    tr, p = fresh(spec, image_data(8, (3, 10, 10), 4, seed=1), cfg)
    b = spec.batch_size
    layers = tr.layout.net.layers
    p.run_to(f"train.bwd.l{len(layers)}")
    e_dz = 0
    checked = 0
    for layer in reversed(layers):
        if not any(x.is_weight for x in layers[:layer.pos]):
            break
        need_dx = any(x.is_weight for x in layers[:layer.pos - 1])
        g, e_g, mul = _incoming(p, layers, layer, b, e_dz)
        x_in = p.act(layer.pos - 1, b)
        out = p.act(layer.pos, b) if layer.pos < len(layers) else None
        before = tr.m.counts.copy()
        seed, counter = p.m.rng
        if layer.is_weight:
            wp = tr.layout.param_of(layer)
            w = p.param(wp)
            p.run_to(f"train.upd.l{layer.pos}")
            # dz~ = Q(g [* mul 2**-16]) * (a > 0), at the QBP step
            step = spec.qbp_steps()[layer.widx - 1]
            v, e_v = (g * mul, e_g - 16) if mul else (g, e_g)
            s = step - e_v
            u = None
            if dither == "uniform" and s > 0:
                u = np.array([draw_ref(seed, counter + i) & ((1 << s) - 1)
                              for i in range(v.size)], np.int64).reshape(v.shape)
            geb = tr.layout.grad_eb(layer)  # the last layer's dz~ has the classifier's width
            dz = sat(round_shift(v, s, u), 8 * geb)
            if layer.relu:
                dz = dz * (out > 0)
            got_dz = p.sp(f"DZ{layer.pos}", dz.shape, geb)
            np.testing.assert_array_equal(got_dz, dz, err_msg=str(layer))
            assert p.m.e[E_DZ] == step
            zeros = int(np.count_nonzero(dz == 0))
            assert 0 < zeros < dz.size
            if layer.kind == "conv":
                cols = windows(x_in, layer.kernel, layer.stride, layer.padding)
                dzm = dz.reshape(-1, layer.units)
                np.testing.assert_array_equal(p.acc("DW", wp.shape),
                                              fit32(cols.reshape(-1, layer.fan_in).T @ dzm))
                if need_dx:
                    dcols = (dzm @ w.T).reshape(cols.shape)
                    np.testing.assert_array_equal(
                        p.acc("DA", (x_in.size,)).reshape(x_in.shape),
                        fit32(col2im(dcols, x_in.shape, layer.kernel, layer.stride,
                                     layer.padding)))
            else:
                dzr = dz if p.sample_major(layer.pos) else dz.T  # [B, n_out]
                xs = p.sample_major(layer.pos - 1)  # x_in is [B, n_in]
                np.testing.assert_array_equal(p.acc("DW", wp.shape),
                                              fit32((x_in.T if xs else x_in) @ dzr))
                if need_dx:
                    np.testing.assert_array_equal(p.acc("DA", x_in.shape),
                                                  fit32(dzr @ w.T if xs else w @ dzr.T))
            if layer.bias:
                p.run_to(f"train.upd.l{layer.pos}.b")
                bsum = dz.reshape(-1, layer.units).sum(axis=0) if (
                    layer.kind == "conv" or p.sample_major(layer.pos)) else dz.sum(axis=1)
                np.testing.assert_array_equal(p.acc("DW", (layer.units,)), bsum)
            e_dz = int(p.m.e[E_DZ])
            nxt = next((f"train.bwd.l{x.pos}" for x in reversed(layers[:layer.pos - 1])),
                       "train.stats")
            p.run_to(nxt if need_dx or nxt == "train.stats" else "train.stats")
            factor = layer.fan_in * (2 if need_dx else 1) + (1 if layer.bias else 0)
            assert _skipped(tr, before, layer.pos) == zeros * factor
            checked += 1
        else:
            acc_before = p.acc("DA", (layer.out_size * b,)).copy()
            p.run_to(f"train.bwd.l{layer.pos - 1}")
            if layer.kind == "flatten" and tr.layout.lowerings[layer.pos - 1].passthrough:
                # nothing to do: the gradient is NHWC already and stays where it is
                np.testing.assert_array_equal(p.acc("DA", acc_before.shape), acc_before)
            elif layer.kind == "flatten":
                e16 = efit(g, e_g, 16)
                want = sat(round_shift(g, e16 - e_g), 16).T  # [B, n]
                c, h, w_ = layer.in_shape
                np.testing.assert_array_equal(p.sp(f"GY{layer.pos}", (b, h, w_, c), 2),
                                              want.reshape(b, h, w_, c))
                assert p.m.e[E_X] == e16
            else:
                from_sp = (layers[layer.pos].kind == "flatten"  # already INT16 in the scratchpad
                           and not tr.layout.lowerings[layer.pos].passthrough)
                e16 = e_g if from_sp else efit(g, e_g, 16)
                dy = g if from_sp else sat(round_shift(g, e16 - e_g), 16)
                kh, kw = layer.kernel
                win = windows(x_in, layer.kernel, layer.stride, layer.padding)
                bb, oh, ow, _, _, c = win.shape
                cols = np.zeros((bb, oh, ow, kh * kw, c), np.int64)
                if layer.kind == "maxpool":
                    arg = win.reshape(bb, oh, ow, kh * kw, c).argmax(axis=3)
                    np.put_along_axis(cols, arg[:, :, :, None, :], dy[:, :, :, None, :], 3)
                else:
                    cols[:] = dy[:, :, :, None, :]
                want = col2im(cols.reshape(bb, oh, ow, kh, kw, c), x_in.shape, layer.kernel,
                              layer.stride, layer.padding)
                np.testing.assert_array_equal(p.acc("DA", (x_in.size,)).reshape(x_in.shape),
                                              want, err_msg=str(layer))
                assert p.m.e[E_T1] == e16
            checked += 1
    assert checked == len(layers)


# ------------------------------------------------------------------------------ whole runs
def test_cnn_training_step_fast_equals_reference_datapath():
    spec = cnn_spec()
    data = image_data(8, (3, 10, 10), 4, seed=2)
    out = []
    for dp in ("fast", "reference"):
        tr = ChipTrainer(spec, Config(), data, datapath=dp)
        tr.train_epoch()
        out.append((tr.m.digest(), tr.m.counts.copy(), tr.evaluate()))
    assert out[0][0] == out[1][0] and out[0][2] == out[1][2]
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_cnn_training_same_with_numba_off():
    code = (
        "from test_cnn import cnn_spec, image_data\n"
        "from programs.host.driver import ChipTrainer\n"
        "from emulator.config import Config\n"
        "tr = ChipTrainer(cnn_spec(), Config(), image_data(8, (3, 10, 10), 4, seed=3))\n"
        "tr.train_epoch(); print(tr.m.digest(), int(tr.m.counts.sum()), tr.evaluate())\n"
    )
    assert run_child(code, jit=True, timeout=300) == run_child(code, jit=False, timeout=300)


def test_streamed_weights_and_layout_shortcut_change_cycles_not_values(monkeypatch):
    """A scratchpad too small for the weights: dense weights stream in row tiles, a
    convolution's as one tile, and the dense layers read feature-major inputs (flatten and the
    biased hidden layer transpose through DRAM); with resident weights they read the NHWC /
    [B, n] outputs directly. Without QBP dither (whose draws follow the element order; the
    momentum's draws follow the parameters and stay) parameters, predictions, MACs and skips are
    the same; streaming costs DRAM traffic and cycles."""
    spec = cnn_spec(**{"qbp.dither": "none", "update.momentum": 0.5})
    data = image_data(8, (3, 10, 10), 4, seed=4)
    runs = []
    for cfg in (Config(), small_scratchpad(spec)):
        if runs:
            feature_major(monkeypatch)
        tr = ChipTrainer(spec, cfg, data)
        tr.train_epoch()
        runs.append((tr.layout.streamed, tr.layout.lowerings[4].passthrough,
                     tr.weights_digest(), tr.evaluate(), tr.m.summary().totals))
    assert runs[1][0] and not runs[0][0]
    assert runs[0][1] and not runs[1][1]
    assert runs[0][2:4] == runs[1][2:4]
    for key in ("macs", "macs_skipped", "rng_draws"):
        assert runs[0][4][key] == runs[1][4][key]
    assert runs[1][4]["dram_rd_bytes"] > runs[0][4]["dram_rd_bytes"]
    assert runs[1][4]["cycles"] > runs[0][4]["cycles"]


def test_ten_weight_layers_compile_and_train_with_exponents_in_memory(monkeypatch):
    """Depth is not capped by the exponent registers: a 10-layer network keeps its activation
    exponents in DRAM words and learns; forcing memory mode on a small network changes cycles
    but not a single value."""
    from programs.host.datasets import digits

    d = digits(0)
    data = Dataset("d", d.x_train[:600], d.y_train[:600], d.x_test, d.y_test, 10)
    spec = with_overrides(ModelSpec(), **{"layers": [64] + [32] * 9 + [10], "epochs": 2,
                                          "update.lr": 0.1})
    tr = ChipTrainer(spec, Config(), data)
    assert spec.n_weight_layers == 10 and not tr.layout.exps.register_mode
    assert "ldw" in tr.asm_text and "stw" in tr.asm_text
    losses = [tr.train_epoch().loss for _ in range(2)]
    assert losses[1] < losses[0] - 0.2 and tr.evaluate() > 0.3  # chance is 0.1
    small = with_overrides(ModelSpec(), epochs=1)
    outs = []
    for slots in (exps_mod.SLOTS, 0):
        monkeypatch.setattr(exps_mod, "SLOTS", slots)
        t = ChipTrainer(small, Config(), data)
        t.train_epoch()
        outs.append((t.layout.exps.register_mode, t.weights_digest(), t.evaluate(),
                     t.m.summary().totals["cycles"]))
    assert outs[0][0] and not outs[1][0]
    assert outs[0][1:3] == outs[1][1:3] and outs[0][3] < outs[1][3]


def test_labels_attribute_every_layer_and_phase():
    tr = ChipTrainer(cnn_spec(), Config(), image_data(8, (3, 10, 10), 4))
    keys = {label_key(x) for x in tr.program.labels}
    for pos in range(1, 8):
        assert (f"l{pos}", "forward") in keys and (f"l{pos}", "eval forward") in keys
        assert (f"l{pos}", "backward") in keys
    for pos in (1, 3, 6, 7):
        assert (f"l{pos}", "update") in keys


# ------------------------------------------------------------------------------ float32 reference
def test_float_reference_gradients_equal_finite_differences():
    """Every layer kind's backward in the float reference (run in float64 here) against central
    differences of the loss."""
    spec = cnn_spec()
    fnet = FloatNet(spec.net())
    rng = np.random.default_rng(5)
    params = []
    for x in spec.net().weight_layers:
        params.append(rng.normal(0, 0.5, x.wshape))
        if x.bias:
            params.append(rng.normal(0, 0.2, x.units))
    x = rng.random((3, 300))
    y = np.array([0, 2, 3])
    _, grads = loss_and_grad(fnet, params, x, y)
    eps = 1e-6
    for i, w in enumerate(params):
        flat = w.reshape(-1)
        for j in rng.choice(flat.size, size=min(flat.size, 12), replace=False):
            old = flat[j]
            flat[j] = old + eps
            lp, _ = loss_and_grad(fnet, params, x, y)
            flat[j] = old - eps
            lm, _ = loss_and_grad(fnet, params, x, y)
            flat[j] = old
            num = (lp - lm) / (2 * eps)
            assert grads[i].reshape(-1)[j] == pytest.approx(num, rel=1e-5, abs=1e-8), (i, j)


# ------------------------------------------------------------------------------ INT8 momentum
def test_plain_momentum_is_the_documented_int8_algorithm():
    """update.mode plain with momentum keeps everything INT8 (001's INT8 column): stopped at the
    last layer's update in the third step, U = sat8(round(dW mu 2^-s)) on the weight grid,
    VL = sat8(sat8(floor((VL beta_q + u) / 2^15)) + U) with u the low 15 bits of one draw per
    element, W = sat8(W - VL), computed independently in int64."""
    from programs.compiler.emit import E_T0, R_MU
    from programs.compiler.layers.base import momentum_q15
    from programs.host.datasets import digits

    d = digits(0)
    data = Dataset("d", d.x_train[:40], d.y_train[:40], d.x_test[:10], d.y_test[:10], 10)
    spec = with_overrides(ModelSpec(input_exponent=-4), **{
        "epochs": 1, "update.mode": "plain", "update.momentum": 0.875, "update.lr": 0.5})
    tr, p = fresh(spec, data)
    lay, m = tr.layout, tr.m
    wp = lay.weights[-1]
    assert lay.state_bytes("VL") == 1
    m.run(break_pc=tr.program.labels[f"train.upd.l{wp.layer.pos}"], break_after=3)
    nw = wp.size
    dw = m.acc[lay.acc["DW"]:lay.acc["DW"] + nw].astype(np.int64)
    w0 = p.sp(wp.key("W"), (nw,))
    vl0 = p.sp(wp.key("VL"), (nw,))
    assert np.count_nonzero(vl0) > 0  # the velocity carries earlier steps
    e_dw, mu = int(m.e[E_T0]), int(m.r[R_MU])
    seed, counter = m.rng
    p.run_to(f"train.bwd.l{wp.layer.pos - 1}")
    s = wp.exp - (e_dw - lay.mu_shift)
    assert s > 0
    u_step = sat(round_shift(dw * mu, s), 8)
    u = np.array([draw_ref(seed, counter + i) & 0x7FFF for i in range(nw)], np.int64)
    vl = sat(sat((vl0 * momentum_q15(0.875) + u) >> 15, 8) + u_step, 8)
    w = sat(w0 - vl, 8)
    np.testing.assert_array_equal(p.sp(wp.key("VL"), (nw,)), vl)
    np.testing.assert_array_equal(p.sp(wp.key("W"), (nw,)), w)
    assert np.any(w != w0)
