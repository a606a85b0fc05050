"""The adaptive QBP step computed on the chip (programs/compiler/qbp.py) against independent
computations on recorded batches: an integer replica of the documented fixed-point algorithm
(written here from the docs: efit, nearest requantization, vbias, the vqstep encoding by exact
fractions) must give the chip's steps bit for bit, and a float64 evaluation of 004 eq.
5.19-5.21 (with exactly propagated variances, eq. 5.18) must lie within an error radius derived
from the fixed-point formats. The sparsity mode is checked the same way against t* mean|dz|,
and the Laplace sparsity formula against a Monte Carlo draw."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from emulator.config import config_from_dict
from programs.compiler.qbp import (
    C_BITS,
    fixed_point,
    headroom,
    laplace_sparsity,
    saturation_floor,
    solve_sparsity,
)
from programs.compiler.spec import ModelSpec, with_overrides
from programs.host.datasets import digits
from programs.host.driver import ChipTrainer
from programs.host.probe import StepProbe

CFG = config_from_dict({})
EMIN, EMAX = -(1 << 31), (1 << 31) - 1


# ------------------------------------------------------------------------------ the replica
def encode(d2: Fraction | None, sqrt: bool) -> tuple[int, int]:
    """(M, e) of D (or sqrt(D) when ``sqrt``) rounded down to 16 bits, by exact comparisons;
    None is +inf. Zero and +inf use vqstep's encodings."""
    if d2 is None:
        return (1 << 15, EMAX)
    if d2 <= 0:
        return (0, EMIN)
    p = 2 if sqrt else 1
    lo = Fraction(2) ** math.floor(math.log2(d2) / p - 2)
    e = math.floor(math.log2(lo))
    while Fraction(2) ** (p * (e + 1)) <= d2:
        e += 1
    m = 1 << 15
    for bit in range(14, -1, -1):  # the largest m with (m 2**(e-15))**p <= d2
        if ((m | 1 << bit) * Fraction(2) ** (e - 15)) ** p <= d2:
            m |= 1 << bit
    return m, e


def value(st: tuple[int, int]) -> Fraction | None:
    m, e = st
    return None if e == EMAX else m * Fraction(2) ** (e - 15)


def efit16(v: np.ndarray, ein: int) -> int:
    nb = max((int(x) if x >= 0 else ~int(x)).bit_length() for x in v.ravel()) if v.size else 0
    return ein + nb - 15


def rq_nearest(v: np.ndarray, s: int) -> np.ndarray:
    out = [(int(x) + (1 << (s - 1))) >> s if s > 0 else int(x) << -s for x in v.ravel()]
    return np.clip(np.array(out, dtype=object), -32768, 32767).astype(np.int64).reshape(v.shape)


def bias_onto(c: int, s: int) -> int:
    return c << -s if s <= 0 else (c + (1 << (s - 1))) >> s


def replica(spec: ModelSpec, fs, passes, sigma: float) -> list[tuple]:
    """The documented variance-mode algorithm, top down: per layer (rule step, used step)."""
    layers = list(spec.net().weight_layers)
    b = spec.batch_size
    a = spec.qbp.adapt
    cb, kb = fixed_point(b * b * sigma, C_BITS)
    cf, kf = saturation_floor(spec.qbp.dither)
    out = {}
    v = v_exp = None
    for x in reversed(layers):
        top = x is layers[-1]
        ai, ea = fs.acts[x.pos - 1]
        a2 = ai.astype(np.int64) ** 2
        n = a2.sum(axis=1)
        if top:
            rule = encode(None if not (n > 0).any() else
                          4 * cb * Fraction(2) ** kb / (int(n.max()) * Fraction(2) ** (2 * ea)),
                          sqrt=True)
            fv = fv_exp = None
        else:
            fv_exp = efit16(v, v_exp) + headroom(b)
            fv = rq_nearest(v, fv_exp - v_exp) * (fs.acts[x.pos][0] > 0)
            s = a2 @ fv.T  # S^T [n_in, n_out]
            assert np.abs(s).max() < 2**31
            qs = [(cb * Fraction(2) ** kb - int(s[j].max()) * Fraction(2) ** (2 * ea + fv_exp))
                  / (int(n[j]) * Fraction(2) ** (2 * ea)) for j in range(len(n)) if n[j] > 0]
            rule = encode(4 * min(qs) if qs else None, sqrt=True)
        # the saturation floor over the entries the ReLU keeps, then the clamps
        p = passes[x.pos]
        keep = np.ones(p.x.shape, bool) if top else fs.acts[x.pos][0] > 0
        xmax = int(np.abs(p.x[keep]).max()) if keep.any() else 0
        floor = encode(Fraction(xmax * cf * p.x_mant) * Fraction(2) ** (p.x_exp + kf - 15),
                       sqrt=False)
        used = max(rule, floor, key=lambda st: (st[1], st[0]))
        if used[1] < a.min_step_log2:
            used = (1 << 15, a.min_step_log2)
        elif used[1] >= a.max_step_log2:
            used = (1 << 15, a.max_step_log2)
        out[x.pos] = (rule, used, (None, None, fv, fv_exp))
        if x.widx == 1:
            break
        # U = f'V + Delta^2 / 4 with h_U bits of headroom, then V below = W^2 @ U
        m, e = used
        c16, ec = (m * m + (1 << 16)) >> 17, 2 * e - 15
        if top:
            u_acc, u_in = np.full((x.units, b), c16, np.int64), ec
        else:
            u_acc, u_in = fv + bias_onto(c16, fv_exp - ec), fv_exp
        u_exp = efit16(u_acc, u_in) + headroom(x.units)
        u = rq_nearest(u_acc, u_exp - u_in)
        w, ew = fs.weights[x.pos]
        v = (w.astype(np.int64) ** 2) @ u
        assert np.abs(v).max() < 2**31
        v_exp = 2 * ew + u_exp
        out[x.pos] = (rule, used, (u, u_exp, fv, fv_exp))
    return out


def float_steps(spec: ModelSpec, fs, used: dict, sigma: float) -> dict:
    """004 eq. 5.19-5.21 in float64 with V propagated exactly by eq. 5.18 (squared norms),
    using the steps the chip used above each layer: per layer Delta_l = min_ij Gamma_ij."""
    layers = list(spec.net().weight_layers)
    b = spec.batch_size
    out = {}
    v = None
    for x in reversed(layers):
        ai, ea = fs.acts[x.pos - 1]
        a = ai.astype(np.float64) * 2.0**ea
        f = np.ones((x.units, b)) if x is layers[-1] else (fs.acts[x.pos][0] > 0) * 1.0
        fv = np.zeros((x.units, b)) if v is None else f * f * v
        num = 4 * b * b * sigma - 4 * (a**2 @ fv.T)  # [n_in, n_out]: 4 m^2 sigma - 4 sum ...
        den = (a**2).sum(axis=1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma2 = np.where(den > 0, num / den, np.inf)
        out[x.pos] = math.sqrt(max(gamma2.min(), 0.0)) if np.isfinite(gamma2.min()) else math.inf
        d = float(value(used[x.pos]))
        w, ew = fs.weights[x.pos]
        v = (w.astype(np.float64) * 2.0**ew) ** 2 @ (fv + d * d / 4)  # eq. 5.18, V^(l-1)
    return out


# ------------------------------------------------------------------------------ fixtures
def _spec(**adapt) -> ModelSpec:
    return with_overrides(ModelSpec(), layers=[64, 32, 64, 10], batch_size=8, epochs=1,
                          **{"qbp.adapt": adapt})


def _record(spec: ModelSpec, batches: tuple[int, ...], cfg=CFG):
    """Train ``spec`` on the digits and probe the steps ``batches`` (at the loop head)."""
    tr = ChipTrainer(spec, cfg, digits(0))
    tr._begin_epoch()
    loop = tr.program.labels["train.loop"]
    arrived, out = 0, []  # arrivals at the loop head: batch k starts at the (k+1)-th
    for k in batches:
        tr._run(break_pc=loop, break_after=k + 1 - arrived)
        arrived = k + 1
        pr = StepProbe(tr)
        fs = pr.forward()
        passes = pr.backward()
        # the step log of this batch, written by running the step once (then restored)
        st = pr.save()
        tr._run(break_pc=loop)
        raw = np.frombuffer(tr.m.read_dram(tr.qlog_addr + 16 * tr.layout.qbp.nw * k,
                                           16 * tr.layout.qbp.nw), "<i4").reshape(-1, 4)
        pr.restore(st)
        out.append((fs, passes, raw))
    return tr, out


SIGMA = 0.05


# weights streamed from DRAM in row tiles, two tiles of dW in layers 1 and 2 (vqstep
# combine=min across tiles, W^2 per streamed tile)
STREAMED = config_from_dict({"memory": {"scratchpad_bytes": 16384},
                             "accumulator": {"entries": 4096}})


@pytest.fixture(scope="module", params=["resident", "streamed"])
def variance_run(request):
    spec = _spec(mode="variance", sigma_max=SIGMA, min_step_log2=-20, max_step_log2=6)
    cfg = CFG if request.param == "resident" else STREAMED
    tr, recs = _record(spec, (0, 3, 17) if request.param == "resident" else (2, 9), cfg)
    assert tr.layout.streamed == (request.param == "streamed")
    return spec, (tr, recs)


def test_variance_steps_equal_the_integer_replica(variance_run):
    spec, (tr, recs) = variance_run
    layers = list(spec.net().weight_layers)
    finite = 0
    for fs, passes, raw in recs:
        rep = replica(spec, fs, passes, SIGMA)
        for x in layers:
            m, e, m_raw, e_raw = (int(v) for v in raw[x.widx - 1])
            assert (m_raw, e_raw) == rep[x.pos][0], (x.pos, "rule")
            assert (m, e) == rep[x.pos][1], (x.pos, "used")
            assert (passes[x.pos].dz_mant, passes[x.pos].dz_exp) == (m, e)
            finite += 0 < m_raw and e_raw < EMAX
    assert finite >= 2 * len(recs)  # most rule steps are ordinary numbers: a real check


def test_variance_steps_follow_eq_5_19_to_5_21(variance_run):
    """The chip's rule step against float64 eq. 5.19-5.21 with exact variances: within the
    radius the documented roundings allow (first-order bound, computed per batch)."""
    spec, (tr, recs) = variance_run
    layers = list(spec.net().weight_layers)
    b = spec.batch_size
    checked = 0
    for fs, passes, raw in recs:
        used = {x.pos: (int(raw[x.widx - 1][0]), int(raw[x.widx - 1][1])) for x in layers}
        rep = replica(spec, fs, passes, SIGMA)
        flt = float_steps(spec, fs, used, SIGMA)
        # error radius of V (absolute, per element) and of S, top down
        r_v = None
        for x in reversed(layers):
            m_raw, e_raw = (int(v) for v in raw[x.widx - 1][2:])
            ai, ea = fs.acts[x.pos - 1]
            a2 = (ai.astype(np.float64) * 2.0**ea) ** 2
            n = a2.sum(axis=1)
            if x is layers[-1]:
                r_s = np.zeros(len(n))
            else:
                fv_exp = rep[x.pos][2][3]
                f = fs.acts[x.pos][0] > 0
                r_fv = f * (r_v + 2.0 ** (fv_exp - 1))  # |FV_chip - f'V|
                r_s = (a2 @ r_fv.T).max(axis=1)
            if 0 < m_raw and e_raw < EMAX and np.isfinite(flt[x.pos]):
                chip = m_raw * 2.0 ** (e_raw - 15)
                # Delta = 2 sqrt(q): |d Delta| <= 2 |dq| / Delta (q >= 0), dq <= r_S / N
                dq = float(np.max(np.where(n > 0, r_s / np.where(n > 0, n, 1), 0)))
                tol = 2 * dq / max(chip, 1e-300) + chip * 2.0**-15 + 1e-12 * chip
                assert abs(chip - flt[x.pos]) <= tol, (x.pos, chip, flt[x.pos], tol)
                checked += 1
            if x.widx == 1:
                break
            # U's radius: FV's, c16's rounding (half a unit at 2e - 15), U's own rounding
            m, e = used[x.pos]
            u, u_exp, fv, fv_exp = rep[x.pos][2]
            r_u = 2.0 ** (2 * e - 16) + 2.0 ** (u_exp - 1)
            if fv is not None:
                r_u = r_u + r_fv + 2.0 ** (fv_exp - 1)  # vbias rounds c onto FV's grid
            w, ew = fs.weights[x.pos]
            r_v = (w.astype(np.float64) * 2.0**ew) ** 2 @ (r_u * np.ones((x.units, b)))
    assert checked >= len(recs)


def test_sparsity_steps_are_t_star_times_mean_abs_dz():
    spec = _spec(mode="sparsity", sparsity=0.8, min_step_log2=-20, max_step_log2=6)
    tr, recs = _record(spec, (0, 5))
    t = solve_sparsity(0.8, "uniform")
    layers = list(spec.net().weight_layers)
    for fs, passes, raw in recs:
        for x in layers:
            p = passes[x.pos]
            keep = np.ones(p.x.shape, bool) if x is layers[-1] else fs.acts[x.pos][0] > 0
            xs = np.where(keep, p.x, 0)
            # integer replica: vqstep asum with the compile-time constant t*/count
            c, k = fixed_point(t / xs.size, C_BITS)
            want = encode(Fraction(int(np.abs(xs).sum()) * c * p.x_mant)
                          * Fraction(2) ** (p.x_exp + k - 15), sqrt=False)
            assert tuple(int(v) for v in raw[x.widx - 1][2:]) == want
            # float: Delta = t* mean |dz| (a Laplace fit to every dz, the ReLU's zeros too)
            dz = xs.astype(np.float64) * (p.x_mant / 2**15) * 2.0**p.x_exp
            chip = value(want)
            assert abs(float(chip) - t * np.abs(dz).mean()) <= float(chip) * (2**-15 + 2**-23)


@pytest.mark.parametrize("dither", ["uniform", "triangular", "none"])
def test_laplace_sparsity_against_monte_carlo(dither):
    """eq. 4.26 for Laplace inputs against a draw quantized as the chip does (mid-tread,
    dither in units of the step): within 5 binomial standard deviations."""
    rng = np.random.default_rng(11)
    n = 400_000
    x = rng.laplace(0.0, 1.0, n)
    for t in (0.3, 1.0, 4.0):
        u = rng.random(n)
        if dither == "uniform":
            y = np.floor(x / t + u)
        elif dither == "triangular":
            y = np.floor(x / t + u + rng.random(n) - 0.5)
        else:
            y = np.floor(x / t + 0.5)
        p = laplace_sparsity(t, dither)
        assert abs((y == 0).mean() - p) <= 5 * math.sqrt(p * (1 - p) / n)
    # triangular dither turns an exact zero into +-1 a quarter of the time: at most 75% zeros
    target = 0.6 if dither == "triangular" else 0.9
    assert abs(laplace_sparsity(solve_sparsity(target, dither), dither) - target) < 1e-9
    assert abs(laplace_sparsity(1e9, dither) - (0.75 if dither == "triangular" else 1)) < 1e-6


def test_probing_leaves_training_bit_identical():
    spec = _spec(mode="variance", sigma_max=SIGMA, every=2)
    a = ChipTrainer(spec, CFG, digits(0))
    a.train_epoch()
    b, _ = _record(spec, (2, 7))
    b.continue_epoch()
    assert a.weights_digest() == b.weights_digest()
    assert (a.m.counts == b.m.counts).all()
