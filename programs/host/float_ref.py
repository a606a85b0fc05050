"""Float32 reference trainer: the same network, data order, initial parameters and
hyperparameters as the chip's firmware, in plain numpy float32 (no quantization anywhere). It is
the baseline the on-chip experiments are compared against.

Every layer kind of ``programs/compiler/net.py`` has a forward and a backward here, on the
chip's layouts: images NHWC ``[B, H, W, C]``, convolution weights ``[KH KW C, F]`` (rows in
(kh, kw, c) order), flatten in (h, w, c) order; max pooling picks the first maximum of each
window in (kh, kw) scan order, as ``vmaxpool`` does. Parameters are a flat list in the
compiler's order: per weight layer its weights, then its bias if it has one. With a validation
split it follows the chip's protocol: validation accuracy after every epoch, test accuracy of the
best epoch's parameters. Its products run under the emulator's thread policy
(emulator/threads.py), so speed comparisons with the chip use the same BLAS threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emulator.threads import matmul
from programs.compiler.net import Layer, Net
from programs.compiler.spec import ModelSpec
from programs.host.datasets import Dataset, epoch_order, input_exponent


@dataclass
class FloatResult:
    test_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)  # of the reported test accuracy
    best_epoch: int | None = None  # with a validation split
    sparsity: list[float] | None = None  # with qbp: zeros of dz~ per weight layer


# ------------------------------------------------------------------------------ image ops
def _windows(xp: np.ndarray, layer: Layer, oh: int, ow: int) -> np.ndarray:
    """(B, OH, OW, KH, KW, C) view of the windows of a padded NHWC image."""
    kh, kw = layer.kernel
    sh, sw = layer.stride
    b, _, _, c = xp.shape
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (b, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]),
        writeable=False)


def _pad(x: np.ndarray, layer: Layer) -> np.ndarray:
    ph, pw = layer.padding
    if ph == pw == 0:
        return np.ascontiguousarray(x)
    return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


def _col2im(cols: np.ndarray, layer: Layer, shape: tuple[int, ...]) -> np.ndarray:
    """Sum window entries (B, OH, OW, KH, KW, C) back onto their NHWC input positions."""
    kh, kw = layer.kernel
    sh, sw = layer.stride
    ph, pw = layer.padding
    b, h, w, c = shape
    oh, ow = cols.shape[1], cols.shape[2]
    out = np.zeros((b, h + 2 * ph, w + 2 * pw, c), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] += cols[:, :, :, i, j]
    return out[:, ph:ph + h, pw:pw + w, :]


class FloatNet:
    """Forward and backward of a :class:`Net` in float32 on a flat parameter list."""

    def __init__(self, net: Net) -> None:
        self.net = net

    def param_slices(self) -> list[tuple[Layer, int, int | None]]:
        """(layer, index of W, index of b or None) per weight layer."""
        out, i = [], 0
        for x in self.net.weight_layers:
            out.append((x, i, i + 1 if x.bias else None))
            i += 2 if x.bias else 1
        return out

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        if self.net.is_image:  # [B, C*H*W] in (c, h, w) order -> NHWC
            c, h, w = self.net.input_shape
            return np.ascontiguousarray(x.reshape(-1, c, h, w).transpose(0, 2, 3, 1))
        return x

    def forward(self, params: list[np.ndarray], x: np.ndarray
                ) -> tuple[list[tuple[np.ndarray, object]], np.ndarray]:
        """Logits and, per layer, (its input, what its backward needs)."""
        idx = {x.pos: (iw, ib) for x, iw, ib in self.param_slices()}
        h = self._to_input(x)
        saved: list[tuple[np.ndarray, object]] = []
        for layer in self.net.layers:
            inp = h
            extra: object = None
            if layer.kind == "dense":
                iw, ib = idx[layer.pos]
                h = matmul(h, params[iw])
                if ib is not None:
                    h = h + params[ib]
                if layer.relu:
                    h = np.maximum(h, 0.0)
            elif layer.kind == "conv":
                iw, ib = idx[layer.pos]
                _, oh, ow = layer.out_shape
                cols = _windows(_pad(h, layer), layer, oh, ow).reshape(-1, layer.fan_in)
                h = matmul(cols, params[iw]).reshape(h.shape[0], oh, ow, layer.units)
                if ib is not None:
                    h = h + params[ib]
                if layer.relu:
                    h = np.maximum(h, 0.0)
                extra = cols
            elif layer.kind in ("maxpool", "avgpool"):
                _, oh, ow = layer.out_shape
                win = _windows(h, layer, oh, ow)
                kh, kw = layer.kernel
                flat = win.reshape(h.shape[0], oh, ow, kh * kw, h.shape[3])
                if layer.kind == "maxpool":
                    arg = flat.argmax(axis=3)  # the first maximum, (kh, kw) scan order
                    h = np.take_along_axis(flat, arg[:, :, :, None, :], axis=3)[:, :, :, 0]
                    extra = arg
                else:
                    h = flat.sum(axis=3) / h.dtype.type(kh * kw)
            else:  # flatten, (h, w, c) order
                h = h.reshape(h.shape[0], -1)
            saved.append((inp, extra))
            if layer.kind in ("dense", "conv"):
                saved[-1] = (inp, (extra, h))
        return saved, h

    def backward(self, params: list[np.ndarray], saved: list[tuple[np.ndarray, object]],
                 dz_top: np.ndarray, quant: Any = None) -> list[np.ndarray | None]:
        """Gradients of every parameter from dL/dlogits (``None`` where none is needed); with
        ``quant`` (programs/host/float_qbp.py) each weight layer's dz is quantized by it."""
        idx = {x.pos: (iw, ib) for x, iw, ib in self.param_slices()}
        grads: list[np.ndarray | None] = [None] * len(params)
        layers = self.net.layers
        lowest = next(i for i, x in enumerate(layers) if x.is_weight)
        g = dz_top  # gradient of the current layer's output
        for i in range(len(layers) - 1, lowest - 1, -1):
            layer = layers[i]
            inp, extra = saved[i]
            need = i > lowest
            if layer.kind in ("dense", "conv"):
                iw, ib = idx[layer.pos]
                cols, out = extra  # type: ignore[misc]
                if quant is not None:
                    dz = quant(layer, g, out > 0 if layer.relu else None, inp, params[iw])
                else:
                    dz = g * (out > 0) if layer.relu else g
                if layer.kind == "dense":
                    grads[iw] = matmul(inp.T, dz)
                    if ib is not None:
                        grads[ib] = dz.sum(axis=0)
                    g = matmul(dz, params[iw].T) if need else None
                else:
                    dzm = dz.reshape(-1, layer.units)
                    grads[iw] = matmul(cols.T, dzm)
                    if ib is not None:
                        grads[ib] = dzm.sum(axis=0)
                    if need:
                        _, oh, ow = layer.out_shape
                        kh, kw = layer.kernel
                        dcols = matmul(dzm, params[iw].T).reshape(inp.shape[0], oh, ow, kh, kw,
                                                             inp.shape[3])
                        g = _col2im(dcols, layer, inp.shape)
            elif layer.kind in ("maxpool", "avgpool"):
                kh, kw = layer.kernel
                b, oh, ow, c = g.shape
                if layer.kind == "maxpool":
                    arg = extra
                    cols = np.zeros((b, oh, ow, kh * kw, c), g.dtype)
                    np.put_along_axis(cols, arg[:, :, :, None, :], g[:, :, :, None, :], axis=3)
                else:
                    cols = np.broadcast_to((g / g.dtype.type(kh * kw))[:, :, :, None, :],
                                           (b, oh, ow, kh * kw, c))
                g = _col2im(cols.reshape(b, oh, ow, kh, kw, c), layer, inp.shape)
            else:  # flatten
                g = g.reshape(inp.shape)
        return grads


def softmax(s: np.ndarray) -> np.ndarray:
    """Row softmax. A diverged run (infinite or NaN logits) gives NaN rows, quietly: its loss
    and accuracy say so, without numpy's overflow warnings in the experiments' output."""
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def loss_and_grad(fnet: FloatNet, params: list[np.ndarray], x: np.ndarray, y: np.ndarray,
                  quant: Any = None) -> tuple[float, list[np.ndarray | None]]:
    """Mean cross-entropy of a batch and its gradient for every parameter (dz quantized by
    ``quant`` when given)."""
    saved, s = fnet.forward(params, x)
    p = softmax(s)
    b = x.shape[0]
    t = np.zeros_like(p)
    t[np.arange(b), y] = 1.0
    loss = float(-np.log(np.maximum(p[np.arange(b), y], 1e-12)).mean())
    if quant is not None:
        quant.begin()
    return loss, fnet.backward(params, saved, (p - t) / p.dtype.type(b), quant)


def accuracy(fnet: FloatNet, params: list[np.ndarray], x: np.ndarray, y: np.ndarray,
             batch: int = 1000) -> float:
    hits = 0
    for i in range(0, len(x), batch):
        _, s = fnet.forward(params, x[i:i + batch])
        hits += int((s.argmax(axis=1) == y[i:i + batch]).sum())
    return hits / max(len(x), 1)


@dataclass
class Adam:
    """Adam's state (Kingma and Ba 2014, Algorithm 1) in float32: ``t`` updates done, first and
    second moments per parameter."""

    beta1: float
    beta2: float
    eps: float
    m: list[np.ndarray]
    v: list[np.ndarray]
    t: int = 0

    @classmethod
    def like(cls, params: list[np.ndarray], beta1: float, beta2: float, eps: float) -> Adam:
        return cls(beta1, beta2, eps, [np.zeros_like(w) for w in params],
                   [np.zeros_like(w) for w in params])

    def step(self, i: int, g: np.ndarray, lr: float) -> np.ndarray:
        """The step of parameter i (call for every i, then :meth:`tick`)."""
        f = np.float32
        self.m[i] = f(self.beta1) * self.m[i] + f(1 - self.beta1) * g
        self.v[i] = f(self.beta2) * self.v[i] + f(1 - self.beta2) * g * g
        t = self.t + 1
        mh = self.m[i] / f(1 - self.beta1**t)
        vh = self.v[i] / f(1 - self.beta2**t)
        return f(lr) * mh / (np.sqrt(vh) + f(self.eps))

    def tick(self) -> None:
        self.t += 1


def train_step(fnet: FloatNet, params: list[np.ndarray], x: np.ndarray, y: np.ndarray,
               lr: float, momentum: float = 0.0,
               velocity: list[np.ndarray] | None = None, adam: Adam | None = None,
               quant: Any = None) -> float:
    """One SGD step on the mean cross-entropy; updates ``params`` in place; returns the loss.
    With ``momentum`` beta (heavy ball, as the chip does it): ``v = beta v + lr g``,
    ``w -= v``, with ``velocity`` updated in place. With ``adam``, an Adam step instead;
    ``quant`` quantizes dz (QBP)."""
    loss, grads = loss_and_grad(fnet, params, x, y, quant)
    for i in range(len(params) - 1, -1, -1):
        g = grads[i]
        assert g is not None
        if adam is not None:
            params[i] -= adam.step(i, g, lr)
            continue
        step = np.float32(lr) * g
        if momentum:
            assert velocity is not None
            velocity[i] *= np.float32(momentum)
            velocity[i] += step
            step = velocity[i]
        params[i] -= step
    if adam is not None:
        adam.tick()
    return loss


def train_float(spec: ModelSpec, data: Dataset, init: list[np.ndarray],
                epochs: int | None = None, qbp: bool = False) -> FloatResult:
    """Train in float32. With ``qbp``, the spec's QBP (fixed or adaptive step, its dither) or
    meProp quantizes each layer's dz (programs/host/float_qbp.py; ``FloatResult.sparsity``
    gives the fraction of zeros of dz~ per weight layer); without, plain back propagation."""
    from programs.host.float_qbp import FloatQuantizer

    fnet = FloatNet(spec.net())
    quant = FloatQuantizer(spec) if qbp else None
    if quant is not None and not quant.active:
        quant = None
    params = [w.astype(np.float32).copy() for w in init]
    scale = np.float32(2.0 ** input_exponent(spec, data))
    xtr = data.x_train.astype(np.float32) * scale
    xte = data.x_test.astype(np.float32) * scale
    xva = data.x_val.astype(np.float32) * scale if data.has_validation else None
    best: tuple[float, int, list[np.ndarray]] | None = None
    b = spec.batch_size
    beta = spec.update.momentum
    velocity = [np.zeros_like(w) for w in params]
    a = spec.update.adam
    adam = (Adam.like(params, a.beta1, a.beta2, a.eps) if spec.update.optimizer == "adam"
            else None)
    res = FloatResult(0.0)
    step = 0
    for epoch in range(spec.epochs if epochs is None else epochs):
        order = epoch_order(len(xtr), b, spec.seed, epoch)
        losses = []
        for i in range(0, len(order), b):
            losses.append(train_step(fnet, params, xtr[order[i : i + b]],
                                     data.y_train[order[i : i + b]], spec.lr_at(epoch, step),
                                     beta, velocity, adam, quant))
            step += 1
        h = {"epoch": epoch, "loss": float(np.mean(losses)),
             "test_accuracy": accuracy(fnet, params, xte, data.y_test)}
        if xva is not None:
            h["validation_accuracy"] = accuracy(fnet, params, xva, data.y_val)
            if best is None or h["validation_accuracy"] > best[0]:
                best = (h["validation_accuracy"], epoch, [w.copy() for w in params])
        res.history.append(h)
    if best is not None:
        res.best_epoch, params = best[1], best[2]
    res.test_accuracy = accuracy(fnet, params, xte, data.y_test)
    res.weights = params
    if quant is not None:
        res.sparsity = quant.sparsity()
    return res
