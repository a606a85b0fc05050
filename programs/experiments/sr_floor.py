"""``lpemu experiment sr-floor``: 002's accuracy floor of stochastic rounding, as chip firmware.

A strongly convex least-squares problem F(w) = ||A w - y||**2 / (2 n) (A [n, d] INT8, y on a
power-of-two grid) is solved by minibatch SGD with the step size alpha_t = 1 / (mu (t + t0))
(002, Theorems 1 and 2; mu = the least eigenvalue of A^T A / n) with the weights on the lattice
Delta Z^d, Delta = 2**e_w (INT8 at exponent e_w), three ways:

* ``sr`` (002's "fully quantized" stochastic rounding): w <- w - Q_SR(alpha g), the step rounded
  onto the lattice with uniform dither (``rqm ... rnd=uniform`` to INT8, ``vsub``);
* ``bc`` (BinaryConnect as 002 analyses it): an INT16 shadow copy S on the grid Delta 2**-8 is
  updated with the dithered step, S <- S - Q_SR(alpha g(Q(S))), and read out to the lattice for
  the gradient with uniform dither (``vcvt``; ``bc_nearest``: by nearest rounding);
* ``lazy`` (001 Alg. 1): an INT16 residual on the same fine grid, ``vlazy``.

Per step the firmware loads a minibatch of B rows X [B, d] and -y (int32 on the residual's
grid, ``dmaldacc``), computes r = X w - y exactly in the accumulator (``gemm acc=1``), brings it
to INT16 with a dynamic exponent (``efit``, nearest ``rq``: 15 bits of the largest residual),
g_sum = X^T r on the MAC array (``gemm ta=1, db=i16``) and the step with the per-step multiplier
mu_t = alpha_t / B 2**shift from a table the host wrote. Every ``log_every`` steps the weights
(and the shadow copy / residual) are appended to a log in DRAM; the host evaluates F there in
float64.

002 (Theorem 2): E[F(w_T) - F(w*)] <= O(log T / T) + sqrt(d) Delta G / 2 for SR: a floor linear
in Delta. Theorem 1 and its corollary: BC's floor is D L2 sqrt(d) Delta / 2 = 0 on quadratics
(L2 = 0): BC finds the optimum. The table gives per Delta the floors (mean gap over the last
quarter of the run, averaged over seeds), SR's floor over Delta (constant when linear) and the
fitted log-log slope, BC's read-out gap to the best lattice point (found by enumeration), and
002's bound.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from emulator.config import Config
from emulator.machine import Machine
from isa.asm import assemble

MODES = ("sr", "bc", "bc_nearest", "lazy")
FINE = 8  # the shadow copy / residual grid is 2**8 finer than the lattice
E_A = -3  # A's integers at 2**-3
D, N, BATCH = 8, 256, 4
X_ADDR = 0x10000
LOG_BYTES_MAX = 1 << 22


@dataclass(frozen=True)
class Problem:
    a: np.ndarray  # int8 [n, d], values a * 2**E_A
    y: np.ndarray  # float64 [n], on the grid 2**e_y
    e_y: int
    w_star: np.ndarray
    mu: float
    lip: float

    @property
    def af(self) -> np.ndarray:
        return self.a.astype(np.float64) * 2.0**E_A

    def f(self, w: np.ndarray) -> np.ndarray:
        """F at each row of w [k, d] (or one w [d])."""
        r = np.atleast_2d(w) @ self.af.T - self.y
        out = (r * r).sum(axis=1) / (2 * len(self.y))
        return out if np.ndim(w) == 2 else out[0]

    @property
    def f_star(self) -> float:
        return float(self.f(self.w_star))

    def lattice_opt(self, delta: float) -> tuple[float, np.ndarray]:
        """min F over the box of 4**d lattice points of Delta Z^d around w* (floor(w*/Delta) - 1
        .. + 2 per coordinate): the best lattice point near the optimum, by enumeration."""
        lo = np.floor(self.w_star / delta) - 1
        pts = np.array(list(itertools.product(range(4), repeat=len(lo))), np.float64)
        cand = (lo + pts) * delta
        vals = self.f(cand)
        i = int(np.argmin(vals))
        return float(vals[i]), cand[i]

    def grad_bound(self) -> float:
        """G: the largest minibatch-gradient norm at w* over single rows (per-row gradients
        bound every minibatch mean)."""
        r = self.af @ self.w_star - self.y
        return float(np.max(np.linalg.norm(self.af * r[:, None], axis=1)))


def make_problem(e_y: int, seed: int = 0) -> Problem:
    """A [N, D] INT8 with columns of different scale (condition number of A^T A about 2),
    w_true in [-1, 1], y = A w_true + noise rounded to 2**e_y."""
    rng = np.random.default_rng([seed, 2002])
    scale = np.linspace(0.75, 1.0, D)
    a = np.clip(np.rint(rng.normal(0, 8, (N, D)) * scale), -127, 127).astype(np.int8)
    w_true = rng.uniform(-1, 1, D)
    af = a.astype(np.float64) * 2.0**E_A
    y = np.rint((af @ w_true + rng.normal(0, 0.5, N)) / 2.0**e_y) * 2.0**e_y
    w_star = np.linalg.lstsq(af, y, rcond=None)[0]
    h = af.T @ af / N
    ev = np.linalg.eigvalsh(h)
    return Problem(a, y, e_y, w_star, float(ev[0]), float(ev[-1]))


def _asm(mode: str, steps: int, e_w: int, shift: int, log_every: int, mu_addr: int,
         log_addr: int, y_addr: int) -> str:
    """The firmware of one run (see the module docstring)."""
    row = BATCH * D
    wide = mode != "sr"
    upd = {
        "sr": """
    rqm  r20, r13, r5, r22, e2, e6, rnd=uniform, dt=i8    # U = Q_SR(alpha g / Delta)
    vsub r21, r21, r20, r5, dt=i8                         # w -= U""",
        "bc": """
    rqm  r20, r13, r5, r22, e7, e6, rnd=uniform, dt=i16   # U = Q_SR(alpha g) on the fine grid
    vsub r23, r23, r20, r5, dt=i16                        # S -= U
    vcvt r21, r23, r5, e2, e7, rnd=uniform, sdt=i16, ddt=i8   # w = Q_SR(S): read-out""",
        "bc_nearest": """
    rqm  r20, r13, r5, r22, e7, e6, rnd=uniform, dt=i16   # U = Q_SR(alpha g) on the fine grid
    vsub r23, r23, r20, r5, dt=i16                        # S -= U
    vcvt r21, r23, r5, e2, e7, rnd=nearest, sdt=i16, ddt=i8   # w = Q(S): read-out""",
        "lazy": """
    rqm  r20, r13, r5, r22, e7, e6, rnd=nearest, dt=i16   # U = round(alpha g) on the fine grid
    vsub r23, r23, r20, r5, dt=i16                        # acc -= U
    vlazy r21, r23, r5, e2, e7                            # move what the lattice holds""",
    }[mode]
    log_state = ""
    if wide:
        log_state = f"""
    li   r15, {2 * D}
    mul  r16, r25, r15
    li   r15, {log_addr + steps // log_every * D + 64}
    add  r16, r16, r15
    li   r17, {2 * D}
    dmast r16, r23, r4, r17, r17, r17                     # the shadow copy / residual"""
    return f"""
# sr-floor ({mode}): least squares d={D}, batch {BATCH}, {steps} steps, Delta = 2**{e_w}
start:
    eset e1, {E_A}
    eset e2, {e_w}                 # the lattice
    eset e3, {E_A + e_w}           # r = X w - y
    eset e7, {e_w - FINE}          # the fine grid (bc, lazy)
    li   r1, 0                     # step
    li   r4, 1
    li   r5, {D}
    li   r6, {BATCH}
    li   r7, {row}
    li   r8, 0                     # sp: X [B, d]
    li   r9, 64                    # sp: R16 [B]
    li   r21, 128                  # sp: w [d] INT8
    li   r23, 192                  # sp: S / residual [d] INT16
    li   r20, 256                  # sp: U [d]
    li   r12, 0                    # acc: r [B]
    li   r13, 16                   # acc: g [d]
    li   r25, 0                    # log entries
    li   r26, {log_every}          # steps to the next log entry
step:
    li   r15, {row}
    mul  r16, r1, r15
    li   r15, {X_ADDR}
    add  r16, r16, r15
    dmald r8, r16, r4, r7, r7, r7                         # X_t
    li   r15, {4 * BATCH}
    mul  r16, r1, r15
    li   r15, {y_addr}
    add  r16, r16, r15
    dmaldacc r12, r16, r4, r6, r6                         # acc r = -y_t
    gemm r12, r8, r21, r6, r5, r4, acc=1                  # r += X_t w
    efit e4, r12, r6, e3, dt=i16
    rq   r9, r12, r6, e4, e3, rnd=nearest, dt=i16         # r in INT16
    gemm r13, r8, r9, r5, r6, r4, ta=1, db=i16            # g_sum = X_t^T r
    eadd e5, e1, e4
    eaddi e6, e5, {-shift}                                # exponent of g_sum * mu
    li   r15, 4
    mul  r16, r1, r15
    ldw  r22, r16, {mu_addr}                              # mu_t{upd}
    addi r1, r1, 1
    addi r26, r26, -1
    bne  r26, r0, next                                    # every log_every steps:
    li   r26, {log_every}
    mul  r16, r25, r5
    li   r15, {log_addr}
    add  r16, r16, r15
    dmast r16, r21, r4, r5, r5, r5                        # w{log_state}
    addi r25, r25, 1
next:
    li   r15, {steps}
    blt  r1, r15, step
    halt
"""


@dataclass
class FloorRun:
    w: np.ndarray  # [logs, d] lattice weights (values)
    fine: np.ndarray | None  # [logs, d] shadow copy / weight + residual (values)
    cycles: int


def run_floor(prob: Problem, mode: str, e_w: int, steps: int, seed: int, t0: float,
              log_every: int, cfg: Config | None = None) -> FloorRun:
    """One chip run from w = 0; the minibatches (with replacement) and the dither come from
    ``seed``."""
    if E_A + e_w > prob.e_y:
        raise ValueError("y must lie on the residual's grid 2**(E_A + e_w)")
    rng = np.random.default_rng([seed, 17])
    idx = rng.integers(0, N, (steps, BATCH))
    alphas = 1.0 / (prob.mu * (np.arange(steps) + t0))
    last = alphas[-1] / BATCH
    shift = 12 - math.floor(math.log2(last))  # mu_T in [2**12, 2**13)
    mus = np.maximum(1, np.rint(alphas / BATCH * 2.0**shift)).astype(np.int64)
    if mus.max() >= 2**31:
        raise ValueError("t0 too small: the first step's multiplier overflows 32 bits")
    y_int = np.rint(prob.y / 2.0 ** (E_A + e_w)).astype(np.int64)
    y_addr = X_ADDR + steps * BATCH * D
    mu_addr = y_addr + steps * BATCH * 4
    log_addr = -(-(mu_addr + 4 * steps) // 4096) * 4096
    logs = steps // log_every
    cfg = cfg or Config()
    text = _asm(mode, steps, e_w, shift, log_every, mu_addr, log_addr, y_addr)
    m = Machine(cfg, assemble(text, f"sr_floor_{mode}.s"))
    m.load_dram(X_ADDR, prob.a[idx].reshape(-1).astype(np.int8))
    m.load_dram(y_addr, (-y_int[idx]).reshape(-1).astype("<i4"))
    m.load_dram(mu_addr, mus.astype("<i4"))
    m.run()  # w (and S / the residual) start at 0
    w = np.frombuffer(m.read_dram(log_addr, logs * D), np.int8).reshape(logs, D)
    wv = w.astype(np.float64) * 2.0**e_w
    fine = None
    if mode != "sr":
        s = np.frombuffer(m.read_dram(log_addr + logs * D + 64, logs * 2 * D), "<i2")
        s = s.reshape(logs, D).astype(np.float64) * 2.0 ** (e_w - FINE)
        fine = wv + s if mode == "lazy" else s
    return FloorRun(wv, fine, int(m.summary().totals["cycles"]))


def float_sgd(prob: Problem, steps: int, seed: int, t0: float, log_every: int) -> np.ndarray:
    """The same minibatches and step sizes in float64, no quantization: [logs, d]."""
    rng = np.random.default_rng([seed, 17])
    idx = rng.integers(0, N, (steps, BATCH))
    af = prob.af
    w = np.zeros(D)
    out = []
    for t in range(steps):
        x, y = af[idx[t]], prob.y[idx[t]]
        w = w - 1.0 / (prob.mu * (t + t0)) * (x.T @ (x @ w - y)) / BATCH
        if (t + 1) % log_every == 0:
            out.append(w.copy())
    return np.array(out)


def sr_floor_rows(cfg: Config, quick: bool, note: object = None) -> list[dict]:
    """SR's floor vs Delta (linear), BC's gap to the optimum and of its rounded shadow copy to
    the best lattice point, lazy, float SGD, and 002's SR bound sqrt(d) Delta G / 2, on chip
    firmware (mean over the last quarter of each run, then over seeds)."""
    deltas = (-3, -5) if quick else (-2, -3, -4, -5, -6)
    seeds = (0,) if quick else (0, 1, 2, 3, 4)
    steps = 600 if quick else 4000
    log_every = steps // 100
    prob = make_problem(e_y=E_A + max(deltas))
    t0 = 2.0 * prob.lip / prob.mu
    g_bound = prob.grad_bound()
    total = len(deltas) * len(seeds)
    rows = []
    tail = slice(3 * (steps // log_every) // 4, None)
    fs = prob.f_star
    for e_w in deltas:
        delta = 2.0**e_w
        f_lat, _ = prob.lattice_opt(delta)
        gaps: dict[str, list[float]] = {}

        def add(key: str, v: float, gaps: dict[str, list[float]] = gaps) -> None:
            gaps.setdefault(key, []).append(v)

        cycles = 0
        for seed in seeds:
            if callable(note):
                note(f"Delta 2^{e_w}, seed {seed}", total)
            runs = {mode: run_floor(prob, mode, e_w, steps, seed, t0, log_every, cfg)
                    for mode in MODES}
            cycles += sum(r.cycles for r in runs.values())
            sr = runs["sr"].w[tail]
            add("sr", float(np.mean(prob.f(sr))) - fs)
            add("sr_avg", float(prob.f(sr.mean(axis=0))) - fs)
            for mode in ("bc", "bc_nearest"):
                s_bar = runs[mode].fine[tail].mean(axis=0)  # type: ignore[index]
                add(f"{mode}_shadow", float(prob.f(s_bar)) - fs)
                add(f"{mode}_weights", float(np.mean(prob.f(runs[mode].w[tail]))) - fs)
                add(f"{mode}_final", float(prob.f(np.rint(s_bar / delta) * delta)) - f_lat)
            add("lazy", float(np.mean(prob.f(runs["lazy"].w[tail]))) - fs)
            add("lazy_value", float(prob.f(runs["lazy"].fine[tail].mean(axis=0))) - fs)
            fl = float_sgd(prob, steps, seed, t0, log_every)
            add("float", float(prob.f(fl[tail].mean(axis=0))) - fs)
        m = {k: float(np.mean(v)) for k, v in gaps.items()}
        rows.append({
            "delta": delta, "sr_gap": m["sr"], "sr_gap_over_delta": m["sr"] / delta,
            "sr_avg_gap": m["sr_avg"], "bound_002": math.sqrt(D) * delta * g_bound / 2,
            "lattice_opt_gap": f_lat - fs,
            "bc_shadow_gap": m["bc_shadow"], "bc_weights_gap": m["bc_weights"],
            "bc_rounded_minus_lattice": m["bc_final"],
            "bc_nearest_shadow_gap": m["bc_nearest_shadow"],
            "bc_nearest_rounded_minus_lattice": m["bc_nearest_final"],
            "lazy_gap": m["lazy"], "lazy_value_gap": m["lazy_value"],
            "float_sgd_gap": m["float"],
            "steps": steps, "seeds": len(seeds), "chip_cycles": cycles,
        })
    xs = np.log2([r["delta"] for r in rows])
    ys = np.log2([max(r["sr_gap"], 1e-300) for r in rows])
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(rows) > 1 else float("nan")
    for r in rows:
        r["sr_loglog_slope"] = slope
        r["_problem"] = {"mu": prob.mu, "L": prob.lip, "t0": t0, "G": g_bound}
    return rows
