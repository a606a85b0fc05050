"""The update rules and numerics of issue 14 against independent int64 computations of their
documented semantics (docs/training.md): BinaryConnect's shadow copy, the lazy update of INT16
weights, dynamic weight exponents (raise, lower, re-gridding), QBP's mask-first order with
triangular dither, fixed-point Adam, the per-step learning rate, the classifier width in the last
layer's products, and the spec's new keys."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.config import Config
from emulator.counters import IDX
from emulator.errors import ConfigError
from emulator.rng import draw_ref
from programs.compiler.emit import E_DZ, E_T0, R_MU
from programs.compiler.firmware import E_W, lr_multiplier
from programs.compiler.spec import ModelSpec, spec_from_dict, with_overrides
from programs.compiler.update import beta_q15, eps2_parts
from programs.host.datasets import Dataset, digits, synthetic
from programs.host.driver import ChipTrainer
from programs.host.float_ref import train_float


@pytest.fixture(scope="module")
def data() -> Dataset:
    return digits(0)


def tiny(d: Dataset, n: int) -> Dataset:
    return Dataset("tiny", d.x_train[:n], d.y_train[:n], d.x_test[:20], d.y_test[:20],
                   d.classes)


# ------------------------------------------------------------------------ the documented ops
def rshift(a: int, s: int, mode: str, z: int = 0) -> int:
    """round_shift of docs/isa.md ("Requantizer rounding") on Python integers."""
    if s <= 0:
        return a * 2**-s
    if mode == "nearest":
        return (a + 2 ** (s - 1)) >> s
    if mode == "trunc":
        return a >> s
    if mode == "triangular" and s < 64:
        t = min(s, 63 - s)
        u, v, b = z % 2**s, (z >> s) % 2**t, (z >> (s + t)) & 1
        return (a + u + (v + b) * 2 ** (s - t) - 2 ** (s - 1)) >> s
    if s > 64:
        a, s = (a + 2 ** (s - 65)) >> (s - 64), 64
    return (a + z % 2**s) >> s


def sat(v: int, bits: int) -> int:
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, v))


def rq_vec(a, s: int, mode: str, bits: int, seed: int = 0, counter: int = 0) -> np.ndarray:
    """sat(round_shift(a_i, s, mode, draw counter + i)) for every element (draws only for the
    dither modes with s > 0, as the chip)."""
    out = []
    dith = mode in ("uniform", "triangular") and s > 0
    for i, x in enumerate(np.asarray(a).ravel().tolist()):
        z = draw_ref(seed, counter + i) if dith else 0
        out.append(sat(rshift(int(x), s, mode, z), bits))
    return np.array(out, np.int64).reshape(np.shape(a))


def bitlen(v: np.ndarray) -> int:
    m = np.where(v >= 0, v, ~v)
    return int(m.max()).bit_length() if m.size else 0


class Stop:
    """A trainer stopped in its first epoch, with readers of its buffers."""

    def __init__(self, spec: ModelSpec, d: Dataset, cfg: Config | None = None) -> None:
        self.tr = ChipTrainer(spec, cfg or Config(), d)
        self.m, self.lay = self.tr.m, self.tr.layout
        self.tr._begin_epoch()

    def run_to(self, label: str, after: int = 1) -> None:
        pc = self.tr.program.labels[label]
        if self.m.pc != pc or after > 1:
            self.m.run(break_pc=pc, break_after=after)

    def sp(self, name: str, n: int, eb: int) -> np.ndarray:
        return self.m.sp_elems(self.lay.sp[name], n, eb)

    def acc(self, name: str, n: int) -> np.ndarray:
        a = self.lay.acc[name]
        return self.m.acc[a:a + n]

    def word(self, addr: int) -> int:
        return int(np.frombuffer(self.m.read_dram(addr, 4), "<i4")[0])


# ------------------------------------------------------------------------ BinaryConnect
def test_shadow_is_binaryconnect_dithered_update_and_read_out(data):
    """002's BinaryConnect: the INT16 shadow copy S on the fine grid takes the step rounded
    with uniform dither, U = floor((dW mu + u) / 2**s); W = readout(S) (uniform dither here:
    the next nw draws). Third step of the last layer, every element."""
    spec = with_overrides(ModelSpec(), **{"epochs": 1, "update.mode": "shadow",
                                          "update.readout": "uniform", "update.lr": 0.05})
    st = Stop(spec, tiny(data, 40))
    nw = 100 * 10
    st.run_to("train.upd.l3", after=3)
    m = st.m
    dw = st.acc("DW", nw).astype(np.int64)
    s0 = st.sp("LZ3", nw, 2).astype(np.int64)
    e_w, e_dw, mu = int(m.e[E_W(3)]), int(m.e[E_T0]), int(m.r[R_MU])
    seed, ctr = m.rng
    st.run_to("train.bwd.l2")
    k = spec.update.acc_shift
    u = rq_vec(dw * mu, (e_w - k) - (e_dw - st.lay.mu_shift), "uniform", 16, seed, ctr)
    s = np.clip(s0 - u, -32768, 32767)
    w = rq_vec(s, k, "uniform", 8, seed, ctr + nw)
    np.testing.assert_array_equal(st.sp("LZ3", nw, 2), s)
    np.testing.assert_array_equal(st.sp("W3", nw, 1), w)
    assert m.rng == [seed, ctr + 2 * nw]
    assert np.count_nonzero(u) > 0 and np.count_nonzero(s % 256) > 0


# ------------------------------------------------------------------------ INT16 lazy
def _edge_pairs(s: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    thetas = [-32768, -32767, -16384, -1, 0, 1, 16383, 32766, 32767]
    h = 2 ** (s - 1) if s else 0
    accs = sorted({-32768, -32767, -h - 1, -h, -h + 1, -1, 0, 1, h - 1, h, h + 1, 32766,
                   32767} & set(range(-32768, 32768)))
    pairs = [(t, a) for t in thetas for a in accs]
    theta = np.array([p[0] for p in pairs] + list(rng.integers(-32768, 32768, n)), np.int64)
    acc = np.array([p[1] for p in pairs] + list(rng.integers(-32768, 32768, n)), np.int64)
    return theta[:n], acc[:n]


@pytest.mark.parametrize("acc_shift", [8, 9, 12])
def test_int16_weights_lazy_update_is_vlazy_arithmetic_on_edge_values(data, acc_shift):
    """INT16 weights take the lazy move as seven vector instructions: with dW = 0 (no step)
    and crafted theta and residual a (the rails, the rounding ties, random), the result is
    vlazy's definition: d = round(a / 2**s) ties up (d = a for s = 0), tn = sat16(theta + d),
    a' = a - (tn - theta) 2**s, with s = acc_shift - 8."""
    spec = with_overrides(ModelSpec(), **{"epochs": 1, "bits.weights": [8, 8, 16],
                                          "update.acc_shift": acc_shift})
    st = Stop(spec, tiny(data, 20))
    nw = 1000
    st.run_to("train.upd.l3")
    s = acc_shift - 8
    assert st.lay.fine_shift(st.lay.param_of(st.lay.net.layers[2])) == s
    theta, a = _edge_pairs(s, nw, np.random.default_rng(acc_shift))
    st.acc("DW", nw)[:] = 0
    st.sp("W3", nw, 2)[:] = theta
    st.sp("LZ3", nw, 2)[:] = a
    st.run_to("train.bwd.l2")
    d = (a + (1 << (s - 1))) >> s if s else a
    tn = np.clip(theta + d, -32768, 32767)
    np.testing.assert_array_equal(st.sp("W3", nw, 2), tn)
    np.testing.assert_array_equal(st.sp("LZ3", nw, 2), a - ((tn - theta) << s))
    assert np.count_nonzero(tn != theta + d) > 0  # the rails were hit


# ------------------------------------------------------------------------ dynamic exponents
def _dyn(mode: str, **over) -> ModelSpec:
    return with_overrides(ModelSpec(), **{"epochs": 1, "bits.weight_exponent": "dynamic",
                                          "update.mode": mode, **over})


@pytest.mark.parametrize("mode", ["lazy", "plain", "shadow"])
def test_dynamic_exponent_raise_on_saturation_regrids_as_documented(data, mode):
    """A weight write that saturates raises e_w by one after the update; every weight and its
    state are re-gridded: lazy w' = floor(w / 2), r' = round(r / 2) + (w - 2 w') 2**(s-1);
    plain w' = round(w / 2); shadow S' = round(S / 2), W = round(S' / 2**s). The input gradient
    keeps the exponent it was made with (weights' before the change + dz~'s)."""
    st = Stop(_dyn(mode), tiny(data, 20))
    nw, s = 1000, 8
    st.run_to("train.upd.l3")
    e0 = int(st.m.e[E_W(3)])
    if mode == "lazy":  # the lazy move pushes W[0] past 127
        st.sp("W3", nw, 1)[0], st.sp("LZ3", nw, 2)[0] = 127, 30000
    elif mode == "plain":  # a huge negative step: W[0] - (-128) saturates
        st.sp("W3", nw, 1)[0] = 100
        st.acc("DW", nw)[0] = -(2**30)
    else:  # the read-out of S = 32767 rounds to 128
        st.sp("LZ3", nw, 2)[0] = 32767
    st.run_to("train.upd.l3.exp")
    w = st.sp("W3", nw, 1).astype(np.int64)
    r = st.sp("LZ3", nw, 2).astype(np.int64)
    assert w[0] == 127 and e0 == int(st.m.e[E_W(3)])
    e_dz = int(st.m.e[E_DZ])
    st.run_to("train.bwd.l2")
    assert int(st.m.e[E_W(3)]) == e0 + 1
    if mode == "lazy":
        w2 = w >> 1
        np.testing.assert_array_equal(st.sp("W3", nw, 1), w2)
        np.testing.assert_array_equal(st.sp("LZ3", nw, 2),
                                      ((r + 1) >> 1) + (w - 2 * w2) * 2 ** (s - 1))
    elif mode == "plain":
        np.testing.assert_array_equal(st.sp("W3", nw, 1), (w + 1) >> 1)
    else:
        s2 = (r + 1) >> 1
        np.testing.assert_array_equal(st.sp("LZ3", nw, 2), s2)
        np.testing.assert_array_equal(st.sp("W3", nw, 1), np.clip((s2 + 128) >> 8, -128, 127))
    assert st.word(st.lay.exps.mem["da3"]) == e0 + e_dz
    st.m.run()  # the epoch's end stores the register into the parameter's word
    assert st.word(st.lay.dram["E3"]) == e0 + 1 == st.tr.param_exponents()[2]


@pytest.mark.parametrize("mode", ["lazy", "stochastic"])
def test_dynamic_exponent_lowers_when_the_top_bits_are_unused(data, mode):
    """Every weight in [-16, 16) (efit's bit length <= B - 3 = 5) and no saturation: e_w drops
    by one and every value doubles exactly (the lazy residual too); weights using more bits
    keep their exponent (the first layer here)."""
    st = Stop(_dyn(mode), tiny(data, 20))
    nw = 1000
    st.run_to("train.upd.l3")
    rng = np.random.default_rng(3)
    e0 = [int(st.m.e[E_W(i)]) for i in (1, 2, 3)]
    st.acc("DW", nw)[:] = 0
    st.sp("W3", nw, 1)[:] = rng.integers(-16, 16, nw)
    st.sp("LZ3", nw, 2)[:] = rng.integers(-128, 128, nw)
    st.run_to("train.upd.l3.exp")
    w = st.sp("W3", nw, 1).astype(np.int64)
    r = st.sp("LZ3", nw, 2).astype(np.int64)
    assert bitlen(w) <= 5
    st.run_to("train.bwd.l1")
    assert int(st.m.e[E_W(3)]) == e0[2] - 1
    np.testing.assert_array_equal(st.sp("W3", nw, 1), 2 * w)
    if mode == "lazy":
        np.testing.assert_array_equal(st.sp("LZ3", nw, 2), 2 * r)
    st.run_to("train.bwd.l1")
    st.m.run()
    assert st.tr.param_exponents()[0] == e0[0]  # He-uniform weights fill their grid


def test_dynamic_exponent_keeps_training_and_the_float_values(data):
    """Over a few epochs of lr 0.1 the exponents move (the weights grow), each move keeps the
    values: w 2**e and the lazy pair's value w 2**e + r 2**(e-s) change by at most one step of
    the fine grid per element at a change, so the accuracy stays that of fixed exponents
    within a few points."""
    spec = with_overrides(_dyn("lazy"), epochs=4, weight_headroom=1.0)
    dyn = ChipTrainer(spec, Config(), data)
    fixed = ChipTrainer(with_overrides(spec, **{"bits.weight_exponent": "fixed"}), Config(),
                        data)
    for _ in range(spec.epochs):
        dyn.train_epoch()
        fixed.train_epoch()
    moved = [a - b for a, b in zip(dyn.param_exponents(), fixed.param_exponents(),
                                   strict=True)]
    assert any(moved), moved  # headroom 1: the weights outgrow the initial grid
    assert dyn.m.summary().totals["saturations"] < fixed.m.summary().totals["saturations"]
    assert dyn.test_accuracy() >= fixed.test_accuracy() - 0.03


# ------------------------------------------------------------------------ QBP order
@pytest.mark.parametrize("order", ["mask_first", "quantize_first"])
def test_qbp_triangular_order(data, order):
    """004's order quantizes dz = da * relu'(z): with triangular dither a masked element is
    Q(0) with its own draw (-1, 0 or +1), where quantize-first gives 0. Both orders use the
    draws c .. c+n-1 for Q(da) and leave the counter at c + n; mask-first draws them twice."""
    spec = with_overrides(ModelSpec(), **{"epochs": 1, "qbp.dither": "triangular",
                                          "qbp.order": order})
    st = Stop(spec, tiny(data, 20))
    n = 100 * 10
    st.run_to("train.bwd.l2")
    da = st.acc("DA", n).astype(np.int64)
    a = st.sp("A2", n, 1).astype(np.int64)
    w3e, e_dz = int(st.m.e[E_W(3)]), int(st.m.e[E_DZ])
    seed, ctr = st.m.rng
    draws0 = int(st.m.counts[:, IDX["rng_draws"]].sum())
    st.run_to("train.upd.l2")
    s = spec.qbp.step_log2 - (w3e + e_dz)
    q = rq_vec(da, s, "triangular", 8, seed, ctr)
    q0 = rq_vec(np.zeros(n, np.int64), s, "triangular", 8, seed, ctr)
    want = np.where(a > 0, q, q0 if order == "mask_first" else 0)
    np.testing.assert_array_equal(st.sp("DZ2", n, 1), want)
    assert st.m.rng == [seed, ctr + n]
    drawn = int(st.m.counts[:, IDX["rng_draws"]].sum()) - draws0
    assert drawn == (2 * n if order == "mask_first" else n)
    if order == "mask_first":
        masked = q0[a <= 0]
        assert set(np.unique(masked)) == {-1, 0, 1}
        # P(Q(0) != 0) = 1/4 exactly; a 5-sigma band around it
        p = np.count_nonzero(masked) / masked.size
        assert abs(p - 0.25) < 5 * math.sqrt(0.25 * 0.75 / masked.size)


def test_qbp_triangular_mask_first_with_a_general_step(data):
    """The same order with a step that is not a power of two (qbp.step, programs/compiler/
    qbp.py): dz~ = Q(da * f') where Q is the requantizer with multiplier R = floor(M_in Rm /
    2**16) and shift (e_l + 30) - e_in; the masked elements are Q(0) with their own draws."""
    from programs.compiler.qbp import fixed_step

    spec = with_overrides(ModelSpec(), **{"epochs": 1, "qbp.dither": "triangular",
                                          "qbp.step": 0.1})
    st = Stop(spec, tiny(data, 20))
    n = 100 * 10
    st.run_to("train.bwd.l2")
    da = st.acc("DA", n).astype(np.int64)
    a = st.sp("A2", n, 1).astype(np.int64)
    w3e, e_dz3 = int(st.m.e[E_W(3)]), int(st.m.e[E_DZ])
    seed, ctr = st.m.rng
    st.run_to("train.upd.l2")
    m, e, rm = fixed_step(0.1)
    r = (m * rm) >> 16  # M_in: layer 3's step has the same significand
    s = (e + 30) - (w3e + e_dz3)
    q = rq_vec(da * r, s, "triangular", 8, seed, ctr)
    q0 = rq_vec(np.zeros(n, np.int64), s, "triangular", 8, seed, ctr)
    np.testing.assert_array_equal(st.sp("DZ2", n, 1), np.where(a > 0, q, q0))
    assert int(st.m.e[E_DZ]) == e and st.m.rng == [seed, ctr + n]
    assert np.count_nonzero(q0[a <= 0]) > 0  # not vacuous: some masked elements are +-1


def test_qbp_uniform_dither_orders_agree(data):
    """Q(0) = 0 with uniform dither, so both orders give the same bits."""
    digests = []
    for order in ("mask_first", "quantize_first"):
        spec = with_overrides(ModelSpec(), **{"epochs": 1, "qbp.order": order})
        tr = ChipTrainer(spec, Config(), tiny(data, 60))
        tr.train_epoch()
        digests.append(tr.weights_digest())
    assert digests[0] == digests[1]


# ------------------------------------------------------------------------ Adam
def adam_reference(dw, e_dw, m0, e_m, v0, e_v, mu, mu_shift, b1q, b2q, eps2, seed, ctr):
    """docs/training.md "Adam on the chip" in int64 for one tile; returns (m, e_m, v, e_v, U on
    e_grid, draws used) where U = rqm(m r, mu) to the exponent e_grid (given later)."""

    def efit(a, e_in, bits=16):
        return e_in + bitlen(np.asarray(a)) - (bits - 1)

    n = dw.size
    e_g = efit(dw, e_dw)
    g = rq_vec(dw, e_g - e_dw, "nearest", 16)
    g2a = g * g
    e_g2 = efit(g2a, 2 * e_g)
    g2 = rq_vec(g2a, e_g2 - 2 * e_g, "nearest", 16)
    used = 0

    def moment(mom, e_mom, gg, e_gg, bq):
        nonlocal used
        e_c = max(e_mom, e_gg)
        mc = rq_vec(mom, e_c - e_mom, "nearest", 16)
        gc = rq_vec(gg, e_c - e_gg, "nearest", 16)
        acc = bq * mc + (2**15 - bq) * gc
        e_new = efit(acc, e_c - 15)
        out = rq_vec(acc, e_new - (e_c - 15), "uniform", 16, seed, ctr + used)
        if e_new - (e_c - 15) > 0:
            used += n
        return out, e_new

    m1, e_m1 = moment(m0, e_m, g, e_g, b1q)
    v1, e_v1 = moment(v0, e_v, g2, e_g2, b2q)
    x = v1
    if eps2[0]:
        eq = rshift(-eps2[0], e_v1 - eps2[1], "trunc")
        x = np.clip(v1 - sat(eq, 16), -32768, 32767)
    t = e_v1 + 29
    t -= t & 1
    e_r = -(t >> 1)
    kk = -e_v1 - 2 * e_r
    r = np.array([32767 if xi <= 0 else min(32767, (math.isqrt((2 ** (kk + 2)) // int(xi)) + 1)
                                           // 2) for xi in x.tolist()], np.int64)
    return m1, e_m1, v1, e_v1, m1 * r, e_m1 + e_r - mu_shift, used


@pytest.mark.parametrize(("mode", "eps"), [("lazy", 1e-8), ("plain", 1e-3)])
def test_adam_step_is_the_documented_fixed_point_algorithm(data, mode, eps):
    """Third step, last layer: g and g**2 in INT16 (efit, nearest), each moment as the exact
    Q15 mix of [m; g] on max(e_m, e_g) then efit and uniform dither, r = vrsqrt(v + eps_q)
    (eps_q = (B eps)**2 on v's grid rounded up), the step rqm(m r, mu_t) on the target grid
    (fine for lazy, the weights' for plain), then the update mode: every element and exponent
    as an int64 computation gives them."""
    spec = with_overrides(ModelSpec(), **{"epochs": 1, "update.optimizer": "adam",
                                          "update.lr": 0.002, "update.mode": mode,
                                          "update.adam.eps": eps})
    st = Stop(spec, tiny(data, 40))
    lay = st.lay
    p = lay.param_of(lay.net.layers[2])
    nw = p.size
    st.run_to("train.upd.l3", after=3)
    m = st.m
    dw = st.acc("DW", nw).astype(np.int64)
    e_dw, mu = int(m.e[E_T0]), int(m.r[R_MU])
    m0, v0 = st.sp("M3", nw, 2).astype(np.int64), st.sp("V3", nw, 2).astype(np.int64)
    e_m, e_v = st.word(lay.dram["EM3"]), st.word(lay.dram["EV3"])
    w0 = st.sp("W3", nw, 1).astype(np.int64)
    lz0 = st.sp("LZ3", nw, 2).astype(np.int64)
    e_w = int(m.e[E_W(3)])
    seed, ctr = m.rng
    assert mu == lr_multiplier(spec, lay, 0, 2) and e_m > -(2**29)  # step 3: moments exist
    st.run_to("train.bwd.l2")
    b1q, b2q = beta_q15(0.9), beta_q15(0.999)
    m1, e_m1, v1, e_v1, mr, e_mr, used = adam_reference(
        dw, e_dw, m0, e_m, v0, e_v, mu, lay.mu_shift, b1q, b2q, eps2_parts(lay), seed, ctr)
    np.testing.assert_array_equal(st.sp("M3", nw, 2), m1)
    np.testing.assert_array_equal(st.sp("V3", nw, 2), v1)
    assert (st.word(lay.dram["EM3"]), st.word(lay.dram["EV3"])) == (e_m1, e_v1)
    if mode == "lazy":
        s = spec.update.acc_shift
        u = rq_vec(mr * mu, (e_w - s) - e_mr, "nearest", 16)
        lz = np.clip(lz0 - u, -32768, 32767)
        d = (lz + 128) >> 8
        w = np.clip(w0 + d, -128, 127)
        np.testing.assert_array_equal(st.sp("LZ3", nw, 2), lz - ((w - w0) << 8))
    else:
        u = rq_vec(mr * mu, e_w - e_mr, "nearest", 8)
        w = np.clip(w0 - u, -128, 127)
    np.testing.assert_array_equal(st.sp("W3", nw, 1), w)
    assert np.count_nonzero(w != w0) > 0
    assert m.rng == [seed, ctr + used]


def test_adam_tracks_the_float32_reference(data):
    """Adam (lr 0.001, 004's setting up to the network) with INT16 moments and the lazy
    update stays within 2 points of float32 Adam from the same start on digits."""
    spec = with_overrides(ModelSpec(), **{"epochs": 3, "update.optimizer": "adam",
                                          "update.lr": 0.001})
    tr = ChipTrainer(spec, Config(), data)
    for _ in range(spec.epochs):
        tr.train_epoch()
    ref = train_float(spec, data, tr.float_init()).test_accuracy
    assert abs(tr.test_accuracy() - ref) <= 0.02 and ref > 0.9


# ------------------------------------------------------------------------ learning rate
def test_inverse_schedule_gives_one_multiplier_per_step(data):
    """``inverse``: lr t0 / (t0 + t) at step t; the host writes one mu per batch, the firmware
    loads it at the batch loop's head; the float reference follows the same steps."""
    spec = with_overrides(ModelSpec(), **{"epochs": 2, "update.schedule.kind": "inverse",
                                          "update.schedule.t0": 3.0})
    assert spec.lr_at(0, 3) == pytest.approx(0.05) and spec.lr_at(5, 0) == pytest.approx(0.1)
    st = Stop(spec, tiny(data, 50))
    nb = st.tr.nb_train
    for b in range(nb):
        st.run_to("train.upd.l3")
        assert int(st.m.r[R_MU]) == lr_multiplier(spec, st.lay, 0, b)
        st.run_to("train.stats")
    st.m.run()
    st.tr.in_epoch = False
    st.tr._finish_epoch()
    st.tr.train_epoch()  # epoch 1 continues the step count
    table = np.frombuffer(st.m.read_dram(st.tr.mu_addr, 4 * nb), "<i4")
    assert list(table) == [lr_multiplier(spec, st.lay, 1, nb + b) for b in range(nb)]
    assert table[0] > table[-1]


# ------------------------------------------------------------------------ classifier width
def test_classifier_width_reaches_the_last_layers_products():
    """Without QBP the last layer's dz~ is the classifier gradient itself (INT16 container,
    dynamic exponent: exact), so classifier widths 10, 12 and 16 train differently (they all
    trained on the same INT8 gradient before), and the round-off sum of dL/ds shrinks with the
    width."""
    data = synthetic(classes=100, features=64, seed=0)
    spec = with_overrides(ModelSpec(), **{
        "dataset": "synthetic", "layers": [64, 100, 100], "epochs": 1, "update.lr": 0.05,
        "qbp.step_log2": None})
    st = Stop(with_overrides(spec, **{"bits.classifier": 12}), data)
    n = spec.batch_size * 100
    st.run_to("train.upd.l2")
    g = st.sp("G", n, 2).astype(np.int64)
    assert np.count_nonzero(g) > n // 2
    np.testing.assert_array_equal(st.sp("DZ2", n, 2) * 2.0 ** st.m.e[E_DZ], g * 2.0**-11)
    digests, roundoff = [], []
    for bits in (10, 12, 16):
        tr = ChipTrainer(with_overrides(spec, **{"bits.classifier": bits}), Config(), data)
        roundoff.append(tr.train_epoch().roundoff_mean_abs)
        digests.append(tr.weights_digest())
    assert len(set(digests)) == 3
    assert roundoff[0] > roundoff[1] > roundoff[2] > 0


# ------------------------------------------------------------------------ the spec
@pytest.mark.parametrize(("d", "key", "fragment"), [
    ({"bits": {"weights": 12}}, "bits.weights", "8 or 16"),
    ({"bits": {"weights": [8, 16]}}, "bits.weights", "3 entries"),
    ({"bits": {"activations": [8, 8, 8]}}, "bits.activations", "2 entries"),
    ({"bits": {"gradients": [8, "16"]}}, "bits.gradients", "8 or 16"),
    ({"bits": {"weight_exponent": "float"}}, "bits.weight_exponent", "fixed"),
    ({"qbp": {"order": "mask"}}, "qbp.order", "mask_first"),
    ({"update": {"readout": "uniform"}}, "update.readout", "shadow"),
    ({"update": {"mode": "shadow"}, "bits": {"weights": [8, 8, 16]}}, "bits.weights",
     "weight layer 3"),
    ({"bits": {"weights": 16}, "update": {"acc_shift": 4}}, "update.acc_shift", "at least 8"),
    ({"update": {"mode": "shadow", "acc_shift": 9}}, "update.acc_shift", "at most 8"),
    ({"update": {"optimizer": "adam", "momentum": 0.9}}, "update.momentum", "Adam"),
    ({"update": {"optimizer": "rmsprop"}}, "update.optimizer", "adam"),
    ({"update": {"adam": {"beta2": 0.99999}}}, "update.adam.beta2", "32767"),
    ({"update": {"adam": {"eps": -1}}}, "update.adam.eps", "[0, 1]"),
    ({"update": {"adam": {"beta3": 1}}}, "update.adam.beta3", "unknown"),
    ({"update": {"schedule": {"kind": "inverse", "t0": 0.5}}}, "update.schedule.t0", ">= 1"),
])
def test_new_spec_keys_are_checked(d, key, fragment):
    with pytest.raises(ConfigError) as info:
        spec_from_dict(d, "m.yaml")
    assert info.value.key == key and fragment in info.value.message, info.value


def test_per_layer_widths_expand():
    spec = spec_from_dict({"bits": {"weights": [8, 16, 16], "activations": 16,
                                    "gradients": [16, 8], "classifier": 8}})
    assert spec.weight_bits() == [8, 16, 16]
    assert spec.act_bits() == [16, 16, 16]  # the last: the INT16 logits
    assert spec.grad_bits() == [16, 8, 8]  # the last: INT8 classifier gradient
    assert spec_from_dict({"bits": {"classifier": 9}}).grad_bits()[-1] == 16
