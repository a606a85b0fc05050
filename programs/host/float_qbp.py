"""QBP and meProp in the float reference: float32 forward and update, the pre-activation
gradients quantized as 004 specifies (eq. 5.4-5.6) in float64, so a table can show what QBP
itself does apart from the chip's INT8 arithmetic.

Per weight layer, on the per-sample gradient ``x = B dL/dz`` (004 sec. 6.1: dz scaled by the
batch size) and in the order ``qbp.order`` gives, as the chip (``mask_first``: ``Q(da f')``,
004 eq. 5.1, 5.4; ``quantize_first``: ``Q(da) f'``):

* ``uniform``: ``Delta floor(x / Delta + u)``, u ~ U[0, 1); ``triangular``: ``Delta floor(x /
  Delta + u1 + u2 - 1/2)``; ``none``: ``Delta floor(x / Delta + 1/2)`` (004 eq. 4.5, 4.13);
* the step: ``qbp.step_log2`` or the step the chip realises for ``qbp.step``
  (:func:`programs.compiler.qbp.fixed_step`), or adaptive: ``variance``, eq. 5.20-5.21 with
  variances propagated by eq. 5.18 (no INT8 floor: there is no saturation here), ``sparsity``,
  ``t* mean |dz|``; both clamped to [2**min_step_log2, 2**max_step_log2];
* meProp (``qbp.meprop_k``): after the mask, keep the k largest |dz| of each sample (the lower
  index first among equal ones).

The dither comes from ``numpy.random.default_rng([seed, 15])``: this is the host's model, not
the chip's datapath.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from programs.compiler.net import Layer
from programs.compiler.qbp import fixed_step, realised, solve_sparsity


class FloatQuantizer:
    """The dz quantizer of one float training run; call it once per weight layer, top down,
    in every backward pass (``begin`` starts a pass)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        q = spec.qbp
        self.rng = np.random.default_rng([spec.seed, 15])
        ws = list(spec.net().weight_layers)
        self.nw = len(ws)

        def per_layer(v: Any) -> list:
            return list(v) if isinstance(v, list) else [v] * self.nw

        self.steps: list[float] | None = None
        self.meprop = per_layer(q.meprop_k) if q.meprop_k is not None else None
        self.adapt = q.adapt
        if q.step_log2 is not None and q.adapt is None:
            self.steps = ([realised(*fixed_step(float(s))[:2]) for s in per_layer(q.step)]
                          if q.step is not None else [2.0**s for s in per_layer(q.step_log2)])
        if q.adapt is not None:
            self.sigma = [float(s) for s in per_layer(q.adapt.sigma_max)]
            self.t = [solve_sparsity(float(p), q.dither) for p in per_layer(q.adapt.sparsity)]
        self.zeros = np.zeros(self.nw)  # zeros of dz~ per layer, summed over passes
        self.count = np.zeros(self.nw)
        self.used: list[float] = [0.0] * self.nw  # the steps of the last pass
        self._v: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.steps is not None or self.adapt is not None or self.meprop is not None

    def begin(self) -> None:
        self._v = None  # eq. 5.18: no noise from the loss

    def sparsity(self) -> list[float]:
        return [float(z / c) if c else 0.0 for z, c in zip(self.zeros, self.count, strict=True)]

    def _round(self, x: np.ndarray, d: float) -> np.ndarray:
        dither = self.spec.qbp.dither
        if dither == "uniform":
            return d * np.floor(x / d + self.rng.random(x.shape))
        if dither == "triangular":
            return d * np.floor(x / d + self.rng.random(x.shape) + self.rng.random(x.shape) - 0.5)
        return d * np.floor(x / d + 0.5)

    def _adaptive(self, i: int, layer: Layer, x: np.ndarray, f: np.ndarray,
                  inp: np.ndarray) -> float:
        a = self.adapt
        b = x.shape[0]
        if a.mode == "sparsity":
            d = self.t[i] * float(np.abs(x * f).mean())
        else:  # eq. 5.20-5.21 on [B, n] arrays: S[j, i] = sum_k a_kj^2 f'_ki V_ki
            a2 = inp.astype(np.float64) ** 2
            n = a2.sum(axis=0)
            s = a2.T @ (f * f * self._v) if self._v is not None else np.zeros((len(n), 1))
            q = (b * b * self.sigma[i] - s.max(axis=1)) / np.where(n > 0, n, 1)
            q = q[n > 0]
            d = 2 * math.sqrt(max(q.min(), 0.0)) if q.size else math.inf
        return min(max(d, 2.0**a.min_step_log2), 2.0**a.max_step_log2)

    def __call__(self, layer: Layer, g: np.ndarray, mask: np.ndarray | None, inp: np.ndarray,
                 w: np.ndarray) -> np.ndarray:
        """dz of ``layer`` (mean-loss domain, the layout of ``g``) from dL/d(output) ``g``, the
        ReLU mask (None: linear), the layer's input and weights (dense: [B, n_in], [n_in,
        n_out])."""
        i = layer.widx - 1
        b = g.shape[0]
        f = np.ones(g.shape) if mask is None else mask.astype(np.float64)
        x = g.astype(np.float64) * b
        if self.meprop is not None:
            dz = x * f
            v = dz.reshape(b, -1)
            k = min(self.meprop[i], v.shape[1])
            order = np.argsort(-np.abs(v), axis=1, kind="stable")
            keep = np.zeros(v.shape, bool)
            np.put_along_axis(keep, order[:, :k], True, axis=1)
            q = np.where(keep, v, 0.0).reshape(g.shape)
        else:
            d = self.steps[i] if self.steps is not None else self._adaptive(i, layer, x, f, inp)
            self.used[i] = d
            if self.spec.qbp.order == "mask_first":  # 004 eq. 5.1, 5.4: Q(da f')
                q = self._round(x * f, d)
            else:  # quantize_first: Q(da) f'
                q = self._round(x, d) * f
            if self.adapt is not None and self.adapt.mode == "variance":
                # eq. 5.18 for the layer below: V_jk = sum_i W_ji^2 (f'^2 V + Delta^2 / 4)
                v = (f * f * self._v if self._v is not None else 0.0) + d * d / 4
                self._v = (v * np.ones(g.shape)) @ (w.astype(np.float64) ** 2).T
        self.zeros[i] += np.count_nonzero(q == 0)
        self.count[i] += q.size
        return (q / b).astype(g.dtype)
