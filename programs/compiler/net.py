"""The network a model spec describes: its ``layers:`` list normalized into :class:`Layer`
records with every shape worked out.

``layers:`` is either the shorthand list of widths (``[64, 100, 100, 10]``: input features,
hidden dense layers with ReLU, classes; no biases) or a list of mappings::

    layers:
      - {kind: input, shape: [1, 8, 8]}          # (C, H, W) of an image, or [features]
      - {kind: conv, filters: 8, kernel: 3, stride: 1, padding: 1, bias: true}   # relu: true
      - {kind: maxpool, window: 2}               # stride defaults to the window
      - {kind: flatten}                          # NHWC image -> feature vector (h, w, c order)
      - {kind: dense, units: 32, bias: true}     # relu: true on hidden layers
      - {kind: dense, units: 10, bias: true}     # the last layer: logits, no ReLU

Kernels, windows, strides and padding are an integer or ``[height, width]``. Every problem
raises :class:`ConfigError` with the key path, e.g. ``layers[2].kernel``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from emulator.errors import ConfigError
from emulator.limits import MAX_LAYER_WIDTH, short_repr

KINDS = ("input", "conv", "maxpool", "avgpool", "flatten", "dense")
WEIGHT_KINDS = ("conv", "dense")
_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("kind", "shape"),
    "conv": ("kind", "filters", "kernel", "stride", "padding", "bias", "relu"),
    "maxpool": ("kind", "window", "stride"),
    "avgpool": ("kind", "window", "stride"),
    "flatten": ("kind",),
    "dense": ("kind", "units", "bias", "relu"),
}
# field limits of the geometry registers (docs/isa.md): N, C, H, W, F 16 bits; KH, KW, SH, SW,
# PH, PW 8 bits
MAX16, MAX8 = 0xFFFF, 0xFF


@dataclass(frozen=True)
class Layer:
    """One layer with its shapes. ``pos`` is its place in ``layers:`` (the input entry is 0;
    firmware labels are ``train.fwd.l<pos>``); ``widx`` numbers the weight layers from 1
    (0 for pooling and flatten). Image shapes are (C, H, W); vectors are (features,)."""

    pos: int
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    units: int = 0  # dense units or conv filters
    kernel: tuple[int, int] = (1, 1)  # conv kernel or pooling window
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    bias: bool = False
    relu: bool = False
    widx: int = 0

    @property
    def is_weight(self) -> bool:
        return self.kind in WEIGHT_KINDS

    @property
    def fan_in(self) -> int:
        """Inputs per output: K = KH KW C for a convolution, the input width for dense."""
        if self.kind == "conv":
            return self.kernel[0] * self.kernel[1] * self.in_shape[0]
        return self.in_shape[0]

    @property
    def wshape(self) -> tuple[int, int]:
        """The weight matrix [K, F] (conv, K in (kh, kw, c) order) or [n_in, n_out] (dense)."""
        return (self.fan_in, self.units)

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    @property
    def name(self) -> str:
        return f"l{self.pos}"

    def describe(self) -> str:
        """A short text such as ``conv 8@3x3/1 p1 +b relu`` for tables and comments."""
        kh, kw = self.kernel
        if self.kind == "conv":
            t = f"conv {self.units}@{kh}x{kw}"
            if self.stride != (1, 1):
                t += f"/{self.stride[0]}" + ("" if self.stride[0] == self.stride[1]
                                             else f"x{self.stride[1]}")
            if self.padding != (0, 0):
                t += f" p{self.padding[0]}" + ("" if self.padding[0] == self.padding[1]
                                               else f"x{self.padding[1]}")
        elif self.kind in ("maxpool", "avgpool"):
            t = f"{self.kind} {kh}x{kw}" + (f"/{self.stride[0]}" if self.stride != self.kernel
                                            else "")
        elif self.kind == "dense":
            t = f"dense {self.units}"
        else:
            t = self.kind
        if self.bias:
            t += " +b"
        if self.relu:
            t += " relu"
        return t


@dataclass(frozen=True)
class Net:
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    @property
    def weight_layers(self) -> tuple[Layer, ...]:
        return tuple(x for x in self.layers if x.is_weight)

    @property
    def classes(self) -> int:
        return self.layers[-1].units

    @property
    def features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def is_mlp(self) -> bool:
        """Dense layers only, no biases, ReLU on every hidden layer: the shorthand's network."""
        ws = self.layers
        return (all(x.kind == "dense" and not x.bias for x in ws)
                and all(x.relu for x in ws[:-1]))


# ------------------------------------------------------------------------------- parsing
def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(v: Any, key: str, file: str, lo: int, hi: int) -> tuple[int, int]:
    """An integer or a [height, width] pair, each in [lo, hi]."""
    if _is_int(v):
        v = [v, v]
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)):
        raise ConfigError("must be an integer or a [height, width] pair of integers", key, file)
    if not all(lo <= x <= hi for x in v):
        raise ConfigError(f"must lie in [{lo}, {hi}], got {v}", key, file)
    return int(v[0]), int(v[1])


def _flag(d: dict, name: str, default: bool, key: str, file: str) -> bool:
    v = d.get(name, default)
    if not isinstance(v, bool):
        raise ConfigError(f"must be true or false, got {v!r}", f"{key}.{name}", file)
    return v


def _shorthand(widths: list[Any], file: str) -> Net:
    if len(widths) < 2 or not all(_is_int(x) and x >= 1 for x in widths):
        raise ConfigError("must be a list of at least two positive integers (input, hidden..., "
                          f"classes) or a list of layer mappings, got {short_repr(widths)}",
                          "layers", file)
    if not all(x <= MAX_LAYER_WIDTH for x in widths):
        raise ConfigError(f"every width must be at most {MAX_LAYER_WIDTH:,}, got "
                          f"{short_repr(widths)}", "layers", file)
    layers = []
    for i in range(1, len(widths)):
        last = i == len(widths) - 1
        layers.append(Layer(i, "dense", (widths[i - 1],), (widths[i],), units=widths[i],
                            relu=not last, widx=i))
    return Net((widths[0],), tuple(layers))


def build_net(value: Any, file: str = "") -> Net:
    """Normalize and check a spec's ``layers:`` value."""
    if isinstance(value, list) and value and not any(isinstance(x, dict) for x in value):
        return _shorthand(value, file)
    if not isinstance(value, list) or len(value) < 2:
        raise ConfigError("must be a list of widths or a list of layer mappings starting with "
                          "{kind: input, shape: [...]}", "layers", file)
    shape: tuple[int, ...] = ()
    input_shape: tuple[int, ...] = ()
    layers: list[Layer] = []
    widx = 0
    for i, item in enumerate(value):
        key = f"layers[{i}]"
        if not isinstance(item, dict):
            raise ConfigError("must be a mapping with a 'kind' (the shorthand list of widths "
                              "cannot be mixed with mappings)", key, file)
        kind = item.get("kind")
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"must be one of {KINDS}, got {kind!r}{hint}", f"{key}.kind", file)
        for k in item:
            if k not in _KEYS[kind]:
                close = difflib.get_close_matches(str(k), _KEYS[kind], n=1)
                hint = (f"did you mean {close[0]!r}?" if close
                        else "valid keys: " + ", ".join(_KEYS[kind]))
                raise ConfigError(f"unknown key {str(k)!r} for a {kind} layer; {hint}",
                                  f"{key}.{k}", file)
        if (i == 0) != (kind == "input"):
            raise ConfigError("the first entry, and only the first, is {kind: input, shape: "
                              "[C, H, W] or [features]}", f"{key}.kind", file)
        if kind == "input":
            s = item.get("shape")
            if _is_int(s):
                s = [s]
            if not (isinstance(s, list) and len(s) in (1, 3) and all(_is_int(x) for x in s)
                    and all(1 <= x <= MAX16 for x in s)):
                raise ConfigError(f"must be [C, H, W] (an image) or [features] with entries in "
                                  f"[1, {MAX16}], got {s!r}", f"{key}.shape", file)
            shape = input_shape = tuple(int(x) for x in s)
            continue
        last = i == len(value) - 1
        layers.append(_layer(kind, item, i, key, shape, last, widx + 1, file))
        shape = layers[-1].out_shape
        if layers[-1].is_weight:
            widx += 1
    top = layers[-1]
    if top.kind != "dense":
        raise ConfigError(f"the last layer gives the class scores and must be dense, not "
                          f"{top.kind}", f"layers[{len(value) - 1}].kind", file)
    return Net(input_shape, tuple(layers))


def _layer(kind: str, d: dict, pos: int, key: str, shape: tuple[int, ...], last: bool,
           widx: int, file: str) -> Layer:
    image = len(shape) == 3
    if kind in ("conv", "maxpool", "avgpool") and not image:
        raise ConfigError(f"a {kind} layer needs an image input (C, H, W); its input is a "
                          f"vector of {shape[0]}", f"{key}.kind", file)
    if kind == "flatten":
        if not image:
            raise ConfigError("the input is already a vector", f"{key}.kind", file)
        return Layer(pos, kind, shape, (math.prod(shape),))
    if kind == "dense":
        if image:
            raise ConfigError("a dense layer needs a vector input: put {kind: flatten} before "
                              "it", f"{key}.kind", file)
        units = d.get("units")
        if not (_is_int(units) and 1 <= units <= MAX16):
            raise ConfigError(f"must be an integer in [1, {MAX16}], got {units!r}",
                              f"{key}.units", file)
        relu = _flag(d, "relu", not last, key, file)
        if last and relu:
            raise ConfigError("the last layer gives the logits: no ReLU", f"{key}.relu", file)
        return Layer(pos, kind, shape, (units,), units=units,
                     bias=_flag(d, "bias", False, key, file), relu=relu, widx=widx)
    c, h, w = shape
    if kind == "conv":
        f = d.get("filters")
        if not (_is_int(f) and 1 <= f <= MAX16):
            raise ConfigError(f"must be an integer in [1, {MAX16}], got {f!r}",
                              f"{key}.filters", file)
        if "kernel" not in d:
            raise ConfigError("missing (an integer or [height, width])", f"{key}.kernel", file)
        k = _pair(d["kernel"], f"{key}.kernel", file, 1, MAX8)
        s = _pair(d.get("stride", 1), f"{key}.stride", file, 1, MAX8)
        p = _pair(d.get("padding", 0), f"{key}.padding", file, 0, MAX8)
        wkey = f"{key}.kernel"
    else:
        if "window" not in d:
            raise ConfigError("missing (an integer or [height, width])", f"{key}.window", file)
        k = _pair(d["window"], f"{key}.window", file, 1, MAX8)
        s = _pair(d.get("stride", list(k)), f"{key}.stride", file, 1, MAX8)
        p = (0, 0)
        f = c
        wkey = f"{key}.window"
        if kind == "maxpool" and k[0] * k[1] > 256:
            raise ConfigError("a max-pooling window has at most 256 positions (its argmax "
                              "index is one byte)", wkey, file)
    if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
        raise ConfigError(f"the {k[0]}x{k[1]} window is larger than the (padded) "
                          f"{h + 2 * p[0]}x{w + 2 * p[1]} input", wkey, file)
    oh = (h + 2 * p[0] - k[0]) // s[0] + 1
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    if kind == "conv":
        return Layer(pos, kind, shape, (f, oh, ow), units=f, kernel=k, stride=s, padding=p,
                     bias=_flag(d, "bias", False, key, file),
                     relu=_flag(d, "relu", True, key, file), widx=widx)
    return Layer(pos, kind, shape, (c, oh, ow), kernel=k, stride=s, padding=p)
