"""conv, vmaxpool, vsumpool, vunpool and vbias against an independent numpy int64 computation of
the documented semantics (docs/isa.md), written here from the pseudo-code with fancy indexing
and np.add.at (not the kernels' stride tricks nor the reference's loops), on random shapes:
stride 1 to 3, padding, odd sizes, channel counts that are not multiples of the array, INT8 and
INT16, acc=0/1, saturating and wrapping accumulators of 16 to 32 bits. Fast and reference
datapaths must agree bit for bit (state digest and every counter), with numba's JIT on and off
(a child process); macs/macs_skipped are checked against a brute-force count over every
(i, k, j) of the mode's GEMM; faults leave the state unchanged."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from jit_child import jit_off_outcomes

from emulator.config import config_from_dict
from emulator.counters import IDX
from emulator.errors import ExecutionError, MemoryAccessError
from emulator.geometry import Geometry, pack
from emulator.machine import Machine
from isa import assemble

ROOT = Path(__file__).resolve().parents[1]
SPAD = 1 << 17
ACC = 1 << 14
X_AT, W_AT, Z_AT, I_AT, ACC_AT = 0, 1 << 15, 1 << 16, 3 << 15, 64
MODES = ("fwd", "wgrad", "dgrad")


def cfg(bits: int = 32, wrap: bool = False, skip: str = "none", df: str = "weight_stationary",
        rows: int = 4, cols: int = 4):
    return config_from_dict({
        "array": {"rows": rows, "cols": cols, "dataflow": df, "skip": skip},
        "accumulator": {"bits": bits, "entries": ACC,
                        "overflow": "wrap" if wrap else "saturate"},
        "memory": {"dram_bytes": 4096, "scratchpad_bytes": SPAD},
        "alu": {"lanes": 4, "latency_cycles": 2},
    })


def li(reg: int, v: int) -> str:
    """li/lih lines setting r<reg> to v in [0, 2**32)."""
    lo = v - (1 << 32) if v >> 31 else v
    return f"li r{reg}, {lo}\n" + (f"lih r{reg}, 0\n" if v >> 31 else "")


def geo_lines(g: Geometry) -> str:
    return "".join(li(4 + i, v) for i, v in enumerate(pack(g)))


# ------------------------------------------------------------------------------ the oracle
def o_positions(g: Geometry):
    """Broadcast (OH, OW, KH, KW) arrays of input row, column and inside-ness."""
    oh = np.arange(g.oh).reshape(-1, 1, 1, 1)
    ow = np.arange(g.ow).reshape(1, -1, 1, 1)
    kh = np.arange(g.kh).reshape(1, 1, -1, 1)
    kw = np.arange(g.kw).reshape(1, 1, 1, -1)
    ih = oh * g.sh + kh - g.ph + 0 * (ow + kw)
    iw = ow * g.sw + kw - g.pw + 0 * (oh + kh)
    inside = (ih >= 0) & (ih < g.h) & (iw >= 0) & (iw < g.w)
    return ih, iw, inside


def o_windows(x: np.ndarray, g: Geometry, fill: int = 0):
    """(N, OH, OW, KH, KW, C) int64 window values (``fill`` in the padding), and inside-ness."""
    x4 = x.astype(np.int64).reshape(g.n, g.h, g.w, g.c)
    ih, iw, inside = o_positions(g)
    if x4.size == 0:
        return np.full((g.n, g.oh, g.ow, g.kh, g.kw, g.c), fill, np.int64), inside
    vals = x4[:, np.clip(ih, 0, max(g.h - 1, 0)), np.clip(iw, 0, max(g.w - 1, 0)), :]
    return np.where(inside[None, ..., None], vals, fill), inside


def o_col(x: np.ndarray, g: Geometry) -> np.ndarray:
    return o_windows(x, g)[0].reshape(g.m, g.k)


def o_scatter(vals6: np.ndarray, g: Geometry) -> np.ndarray:
    """S[n, ih, iw, c] = sum of vals6[n, oh, ow, kh, kw, c] at window position (ih, iw),
    positions in the padding dropped (np.add.at)."""
    ih, iw, inside = o_positions(g)
    s = np.zeros((g.n, g.h, g.w, g.c), np.int64)
    full = (g.n, g.oh, g.ow, g.kh, g.kw, g.c)
    n_i = np.broadcast_to(np.arange(g.n).reshape(-1, 1, 1, 1, 1, 1), full)
    c_i = np.broadcast_to(np.arange(g.c).reshape(1, 1, 1, 1, 1, -1), full)
    ih6 = np.broadcast_to(ih[None, ..., None], full)
    iw6 = np.broadcast_to(iw[None, ..., None], full)
    keep = np.broadcast_to(inside[None, ..., None], full)
    np.add.at(s, (n_i[keep], ih6[keep], iw6[keep], c_i[keep]), vals6[keep])
    return s


def o_fit(v: np.ndarray, bits: int, wrap: bool) -> tuple[np.ndarray, int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    over = int(((v < lo) | (v > hi)).sum())
    if wrap:
        return (v - lo) % (1 << bits) + lo, over
    return np.clip(v, lo, hi), over


def o_gemm_operands(mode: str, x, z, w, g: Geometry):
    """The mode's GEMM operands A, B as int64 (docs/isa.md, conv)."""
    if mode == "fwd":
        return o_col(x, g), w.astype(np.int64).reshape(g.k, g.f)
    if mode == "wgrad":
        return o_col(x, g).T, z.astype(np.int64).reshape(g.m, g.f)
    return z.astype(np.int64).reshape(g.m, g.f), w.astype(np.int64).reshape(g.k, g.f).T


def o_conv(mode: str, x, z, w, g: Geometry, pre: np.ndarray, acc: bool, bits: int,
           wrap: bool) -> tuple[np.ndarray, int]:
    a, b = o_gemm_operands(mode, x, z, w, g)
    p = a @ b
    if mode == "dgrad":
        p = o_scatter(p.reshape(g.n, g.oh, g.ow, g.kh, g.kw, g.c), g)
    total = p.ravel() + (pre if acc else 0)
    return o_fit(total, bits, wrap)


def o_skipped(mode: str, x, z, w, g: Geometry, sa: bool, sb: bool) -> int:
    """|{(i, k, j) : (sa and A[i,k] == 0) or (sb and B[k,j] == 0)}| by brute force."""
    a, b = o_gemm_operands(mode, x, z, w, g)
    za = (a == 0)[:, :, None] & sa
    zb = (b == 0)[None, :, :] & sb
    return int((za | zb).sum())


def o_maxpool(x, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    vals, inside = o_windows(x, g, fill=-(1 << 40))
    flat = vals.reshape(g.n, g.oh, g.ow, g.kh * g.kw, g.c)
    arg = flat.argmax(axis=3)  # the first maximum in (kh, kw) scan order
    return flat.max(axis=3).ravel(), arg.ravel()


def o_sumpool(x, g: Geometry) -> np.ndarray:
    return o_windows(x, g)[0].sum(axis=(3, 4)).ravel()


def o_unpool(dy, ix, g: Geometry) -> np.ndarray:
    d = dy.astype(np.int64).reshape(g.n, g.oh, g.ow, 1, 1, g.c)
    if ix is None:
        vals = np.broadcast_to(d, (g.n, g.oh, g.ow, g.kh, g.kw, g.c))
    else:
        code = np.arange(g.kh * g.kw).reshape(1, 1, 1, g.kh, g.kw, 1)
        vals = np.where(ix.reshape(g.n, g.oh, g.ow, 1, 1, g.c) == code, d, 0)
    return o_scatter(np.ascontiguousarray(vals), g).ravel()


# ------------------------------------------------------------------------------ random cases
@dataclass
class ConvCase:
    mode: str
    g: Geometry
    da: str
    db: str
    acc: bool
    sa: bool
    sb: bool
    bits: int
    wrap: bool
    seed: int


def rand_geometry(r: np.random.Generator) -> Geometry:
    while True:
        kh, kw = int(r.integers(1, 5)), int(r.integers(1, 5))
        g = Geometry(n=int(r.integers(1, 4)), c=int(r.choice([1, 2, 3, 5, 7])),
                     h=int(r.integers(1, 10)), w=int(r.integers(1, 10)), kh=kh, kw=kw,
                     sh=int(r.choice([1, 2, 2, 3])), sw=int(r.choice([1, 2, 2, 3])),
                     ph=int(r.integers(0, 3)), pw=int(r.integers(0, 3)),
                     f=int(r.choice([1, 2, 3, 5, 6])))
        if g.h + 2 * g.ph >= g.kh and g.w + 2 * g.pw >= g.kw:
            return g


def rand_values(r: np.random.Generator, n: int, dt: str) -> np.ndarray:
    if dt == "i8":
        v = r.integers(-128, 128, n)
        edges = [-128, 127, -1, 1]
    else:
        v = r.integers(-32768, 32768, n)
        edges = [-32768, 32767, -1, 1, 255, -256]
    v[r.random(n) < 0.3] = 0
    pick = r.random(n) < 0.1
    v[pick] = r.choice(edges, int(pick.sum()))
    return v.astype(np.int8 if dt == "i8" else np.int16)


def conv_cases(count: int = 48) -> list[ConvCase]:
    r = np.random.default_rng(2024)
    out = []
    for i in range(count):
        mode = MODES[i % 3]
        # every (da, db) pair with each mode; narrow accumulators make overflows likely
        da, db = [("i8", "i8"), ("i16", "i8"), ("i8", "i16"), ("i16", "i16")][(i // 3) % 4]
        out.append(ConvCase(mode, rand_geometry(r), da, db, bool(r.integers(2)),
                            bool(r.integers(2)), bool(r.integers(2)),
                            int(r.choice([16, 20, 24, 32])), bool(r.integers(2)),
                            int(r.integers(2**31))))
    return out


def conv_source(c: ConvCase) -> str:
    rx, rw = (Z_AT, W_AT) if c.mode == "dgrad" else (X_AT, Z_AT if c.mode == "wgrad" else W_AT)
    return (li(1, ACC_AT) + li(2, rx) + li(3, rw) + geo_lines(c.g)
            + f"conv r1, r2, r3, r4, r5, r6, r7, mode={c.mode}, acc={int(c.acc)}, "
            f"sa={int(c.sa)}, sb={int(c.sb)}, da={c.da}, db={c.db}\nhalt\n")


def conv_data(c: ConvCase):
    """(X, dZ, W, the accumulator's initial values) of a case; X/W of type da/db as the mode
    reads them (dgrad reads dZ as da)."""
    r = np.random.default_rng(c.seed)
    g = c.g
    lo, hi = -(1 << (c.bits - 1)), (1 << (c.bits - 1)) - 1
    x = rand_values(r, g.inputs, c.da)
    z = rand_values(r, g.m * g.f, c.da if c.mode == "dgrad" else c.db)
    w = rand_values(r, g.k * g.f, c.db)
    pre = r.integers(lo, hi + 1, ACC - ACC_AT)
    pre[r.random(pre.size) < 0.2] = 0
    return x, z, w, pre


def load(m: Machine, addr: int, v: np.ndarray) -> None:
    raw = np.ascontiguousarray(v).view(np.uint8).ravel()
    m.spad[addr : addr + raw.size] = raw


def run_conv(c: ConvCase, datapath: str, **kw) -> Machine:
    m = Machine(cfg(c.bits, c.wrap, **kw), assemble(conv_source(c), "conv.s"), datapath=datapath)
    x, z, w, pre = conv_data(c)
    load(m, X_AT, x)
    load(m, Z_AT, z)
    load(m, W_AT, w)
    m.acc[ACC_AT:] = pre
    m.run()
    return m


def out_size(c: ConvCase) -> int:
    g = c.g
    return {"fwd": g.m * g.f, "wgrad": g.k * g.f, "dgrad": g.inputs}[c.mode]


CASES = conv_cases()
CONV_PC = lambda c: len(assemble(conv_source(c), "c.s").words) - 2  # noqa: E731


def check_conv(c: ConvCase, m: Machine) -> None:
    x, z, w, pre = conv_data(c)
    n = out_size(c)
    want, nover = o_conv(c.mode, x, z, w, c.g, pre[:n], c.acc, c.bits, c.wrap)
    np.testing.assert_array_equal(m.acc[ACC_AT : ACC_AT + n], want)
    np.testing.assert_array_equal(m.acc[ACC_AT + n :], pre[n:])  # nothing else written
    pc = CONV_PC(c)
    g = c.g
    skipped = o_skipped(c.mode, x, z, w, g, c.sa, c.sb)
    assert m.counts[pc, IDX["macs_skipped"]] == skipped
    assert m.counts[pc, IDX["macs"]] == g.m * g.k * g.f - skipped
    p = {"i8": 1, "i16": 2}
    assert m.counts[pc, IDX["mac_ops"]] == (g.m * g.k * g.f - skipped) * p[c.da] * p[c.db]
    assert m.counts[pc, IDX["acc_overflows"]] == nover
    assert bool(m.flags & 1) == (nover > 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.mode}-{c.da}{c.db}-{c.seed}")
def test_conv_matches_the_oracle_on_both_datapaths(case: ConvCase):
    fast = run_conv(case, "fast")
    check_conv(case, fast)
    ref = run_conv(case, "reference")
    assert ref.digest() == fast.digest()
    np.testing.assert_array_equal(ref.counts, fast.counts)


def test_cases_cover_the_edges():
    """The random cases really contain what the acceptance asks for."""
    gs = [c.g for c in CASES]
    assert {1, 2, 3} <= {g.sh for g in gs} and any(g.ph and g.pw for g in gs)
    assert any(g.c % 4 and g.c > 4 for g in gs) and any(g.h % 2 for g in gs)
    overflowed = [c for c in CASES
                  if run_conv(c, "fast").counts[CONV_PC(c), IDX["acc_overflows"]]]
    assert {c.wrap for c in overflowed} == {False, True}
    assert {c.mode for c in CASES if c.acc} == set(MODES)


@pytest.mark.parametrize("df", ["weight_stationary", "output_stationary", "input_stationary"])
@pytest.mark.parametrize("skip", ["element", "row"])
def test_conv_skip_cycles_are_those_of_the_materialized_gemm(df, skip):
    """With zero-skipping on, conv's cycles equal gemm's on the materialized operands."""
    from emulator import timing

    for c in CASES[:12]:
        if not (c.sa or c.sb):
            continue
        x, z, w, _ = conv_data(c)
        a, b = o_gemm_operands(c.mode, x, z, w, c.g)
        m = run_conv(c, "fast", skip=skip, df=df)
        gm, gk = a.shape
        gn = b.shape[1]
        pb = {"i8": 1, "i16": 2}
        config = cfg(c.bits, c.wrap, skip=skip, df=df)
        dense = timing.conv(config, MODES.index(c.mode), c.g.m, c.g.k, c.g.f, c.g.inputs,
                            pb[c.da], pb[c.db], c.acc)[timing.CYCLES]
        saved = pb[c.da] * pb[c.db] * timing.gemm_skip_cycles_saved(
            config, gm, gk, gn, a != 0 if c.sa else None, b != 0 if c.sb else None)
        pc = CONV_PC(c)
        assert m.counts[pc, IDX["skip_cycles_saved"]] == saved
        assert m.counts[pc, IDX["cycles"]] == dense - saved


# ------------------------------------------------------------------------------ pooling
@dataclass
class PoolCase:
    g: Geometry
    dt: str
    bits: int
    wrap: bool
    acc: bool
    seed: int


def pool_cases(count: int = 24) -> list[PoolCase]:
    r = np.random.default_rng(7)
    out = []
    while len(out) < count:
        g = rand_geometry(r)._replace(f=0)
        if (g.kh <= g.ph or g.kw <= g.pw or (g.oh - 1) * g.sh - g.ph >= g.h
                or (g.ow - 1) * g.sw - g.pw >= g.w):
            continue  # a window entirely in the padding: a fault (tested below)
        out.append(PoolCase(g, ("i8", "i16")[len(out) % 2], int(r.choice([16, 18, 32])),
                            bool(r.integers(2)), bool(r.integers(2)), int(r.integers(2**31))))
    return out


POOLS = pool_cases()


def pool_data(c: PoolCase):
    r = np.random.default_rng(c.seed)
    x = rand_values(r, c.g.inputs, c.dt)
    x[r.random(x.size) < 0.2] = x[0] if x.size else 0  # ties for the first-maximum rule
    dy = rand_values(r, c.g.m * c.g.c, c.dt)
    lo, hi = -(1 << (c.bits - 1)), (1 << (c.bits - 1)) - 1
    pre = r.integers(lo, hi + 1, ACC - ACC_AT)
    return x, dy, pre


def run_pool(c: PoolCase, datapath: str) -> tuple[Machine, list[int]]:
    """vmaxpool (idx=1) into Y and I; vsumpool into acc; vunpool max and sum of dY (from the
    scratchpad) into acc. Returns the machine and the pcs of the four instructions."""
    g = c.g
    mc = g.m * g.c
    b = 1 if c.dt == "i8" else 2
    y_at, dy_at = W_AT, Z_AT
    sum_at, max_at, un_at = ACC_AT, ACC_AT + mc, ACC_AT + mc + g.inputs
    src = (geo_lines(g) + li(1, y_at) + li(2, X_AT) + li(3, I_AT)
           + f"vmaxpool r1, r2, r3, r4, r5, r6, r7, dt={c.dt}, idx=1\n"
           + li(8, sum_at) + f"vsumpool r8, r2, r4, r5, r6, r7, dt={c.dt}\n"
           + li(9, max_at) + li(10, dy_at)
           + f"vunpool r9, r10, r3, r4, r5, r6, r7, mode=max, acc={int(c.acc)}, dt={c.dt}\n"
           + li(11, un_at)
           + f"vunpool r11, r10, r3, r4, r5, r6, r7, mode=sum, acc={int(c.acc)}, dt={c.dt}\n"
           + "halt\n")
    prog = assemble(src, "pool.s")
    m = Machine(cfg(c.bits, c.wrap), prog, datapath=datapath)
    x, dy, pre = pool_data(c)
    load(m, X_AT, x)
    load(m, dy_at, dy)
    m.acc[ACC_AT:] = pre
    m.run()
    names = [prog.words[i] >> 56 for i in range(len(prog.words))]
    pcs = [i for i, op in enumerate(names) if op in (0x69, 0x6A, 0x6B)]
    assert len(pcs) == 4 and b
    return m, pcs


@pytest.mark.parametrize("case", POOLS, ids=lambda c: f"{c.dt}-{c.seed}")
def test_pooling_matches_the_oracle_on_both_datapaths(case: PoolCase):
    g = case.g
    mc = g.m * g.c
    m, pcs = run_pool(case, "fast")
    x, dy, pre = pool_data(case)
    want_y, want_i = o_maxpool(x, g)
    get = (lambda a, n: m.sp_elems(a, n, 1).tolist()) if case.dt == "i8" else \
        (lambda a, n: m.sp_elems(a, n, 2).tolist())
    assert get(W_AT, mc) == want_y.tolist()
    assert m.spad[I_AT : I_AT + mc].tolist() == want_i.tolist()
    sums, n_sum = o_fit(o_sumpool(x, g), case.bits, case.wrap)
    assert m.acc[ACC_AT : ACC_AT + mc].tolist() == sums.tolist()
    base = ACC_AT + mc
    n_over = [n_sum]
    for mode_ix, at in ((want_i, base), (None, base + g.inputs)):
        s = o_unpool(dy, mode_ix, g)
        old = pre[at - ACC_AT : at - ACC_AT + g.inputs]
        want, nov = o_fit(s + (old if case.acc else 0), case.bits, case.wrap)
        assert m.acc[at : at + g.inputs].tolist() == want.tolist()
        n_over.append(nov)
    assert [int(m.counts[p, IDX["acc_overflows"]]) for p in pcs[1:]] == n_over
    ref, _ = run_pool(case, "reference")
    assert ref.digest() == m.digest()
    np.testing.assert_array_equal(ref.counts, m.counts)


def test_pool_cases_cover_the_edges():
    assert any(c.g.ph and c.g.sh > 1 for c in POOLS) and {c.dt for c in POOLS} == {"i8", "i16"}
    assert any(run_pool(c, "fast")[0].counts[:, IDX["acc_overflows"]].sum() for c in POOLS)


# shifts on both sides of the fold bounds (-33, 16) and far past them
VBIAS_SHIFTS = [-200, -40, -34, -33, -32, -31, -9, -1, 0, 1, 3, 8, 15, 16, 17, 31, 200]
VBIAS_ACCS = ((32, False), (20, True), (24, False))


def run_vbias(dt: str, s: int, bits: int, wrap: bool, datapath: str):
    """vbias of a random 7-wide bias onto a 5 x 7 block (edge values in its first row) with
    shift s; returns the machine and the oracle's (values, overflow count)."""
    rows, cols = 5, 7
    r = np.random.default_rng(s + 1000 + bits)
    b = rand_values(r, cols, dt)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    pre = r.integers(lo, hi + 1, rows * cols)
    pre[:cols] = [hi, lo, 0, 1, -1, hi - 3, lo + 3]
    src = (li(1, ACC_AT) + li(2, 0) + li(3, rows) + li(4, cols)
           + f"eset e1, 5\neset e2, {5 - s}\nvbias r1, r2, r3, r4, e1, e2, dt={dt}\nhalt\n")
    m = Machine(cfg(bits, wrap), assemble(src, "b.s"), datapath=datapath)
    load(m, 0, b)
    m.acc[ACC_AT : ACC_AT + rows * cols] = pre
    m.run()
    # the documented rounding, in Python integers
    shifted = [int(v) << -s if s <= 0 else (int(v) + (1 << (s - 1))) // (1 << s) for v in b]
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    total = [int(pre[i * cols + j]) + shifted[j] for i in range(rows) for j in range(cols)]
    fitted = [((t - lo) % (1 << bits)) + lo if wrap else min(max(t, lo), hi) for t in total]
    return m, (np.array(fitted), sum(not lo <= t <= hi for t in total))


@pytest.mark.parametrize("dt", ["i8", "i16"])
@pytest.mark.parametrize("s", VBIAS_SHIFTS)
def test_vbias_matches_the_oracle(dt, s):
    for bits, wrap in VBIAS_ACCS:
        m, (want, nover) = run_vbias(dt, s, bits, wrap, "fast")
        assert m.acc[ACC_AT : ACC_AT + want.size].tolist() == want.tolist()
        assert m.counts[6, IDX["acc_overflows"]] == nover
        ref, _ = run_vbias(dt, s, bits, wrap, "reference")
        assert (ref.digest(), ref.counts.tolist()) == (m.digest(), m.counts.tolist())


# ------------------------------------------------------------------------------ JIT off
def jit_outcomes() -> dict[str, str]:
    """Digest and counters of every conv, pooling and vbias case on the fast datapath, each
    checked against the oracle first (run in a NUMBA_DISABLE_JIT=1 child by the test below)."""
    out = {}
    for c in CASES:
        m = run_conv(c, "fast")
        check_conv(c, m)
        out[f"conv{c.seed}"] = m.digest() + hashlib.sha256(m.counts.tobytes()).hexdigest()
    for c in POOLS:
        m, _ = run_pool(c, "fast")
        out[f"pool{c.seed}"] = m.digest() + hashlib.sha256(m.counts.tobytes()).hexdigest()
    for dt in ("i8", "i16"):
        for s in VBIAS_SHIFTS:
            for bits, wrap in VBIAS_ACCS:
                m, (want, _) = run_vbias(dt, s, bits, wrap, "fast")
                assert m.acc[ACC_AT : ACC_AT + want.size].tolist() == want.tolist()
                out[f"bias{dt}{s}{bits}"] = m.digest() + hashlib.sha256(
                    m.counts.tobytes()).hexdigest()
    return out


def test_jit_off_gives_the_same_state_and_counters():
    assert jit_off_outcomes("test_conv") == jit_outcomes()


# ------------------------------------------------------------------------------ faults
def _fault(src: str, datapath: str, exc: type = ExecutionError, contains: str = "") -> None:
    m = Machine(cfg(), assemble(src + "halt\n", "f.s"), datapath=datapath)
    r = np.random.default_rng(5)
    m.spad[:] = r.integers(0, 256, SPAD, dtype=np.uint8)
    m.acc[:] = r.integers(-1000, 1000, ACC)
    before = (m.spad.copy(), m.acc.copy())
    with pytest.raises(exc) as info:
        m.run()
    assert contains in str(info.value)
    n = len(assemble(src + "halt\n", "f.s").words)
    assert info.value.pc == n - 2  # the instruction under test (the last before halt)
    np.testing.assert_array_equal(m.spad, before[0])
    np.testing.assert_array_equal(m.acc, before[1])
    assert m.flags == 0 and not m.counts[:, IDX["macs"]].any()


G = Geometry(n=2, c=3, h=5, w=6, kh=3, kw=2, sh=2, sw=1, ph=1, pw=0, f=4)
CONV = "conv r1, r2, r3, r4, r5, r6, r7, mode={mode}\n"
POOL_OPS = {
    "vmaxpool": "vmaxpool r1, r2, r3, r4, r5, r6, r7, idx=1\n",
    "vsumpool": "vsumpool r1, r2, r4, r5, r6, r7\n",
    "vunpool": "vunpool r1, r2, r3, r4, r5, r6, r7, mode=max\n",
}
ALL_OPS = {**{f"conv-{md}": CONV.format(mode=md) for md in MODES}, **POOL_OPS}


def _ops(rc=64, rx=0, rw=1 << 15, ri=3 << 15) -> str:
    return li(1, rc) + li(2, rx) + li(3, rw if rw is not None else ri)


def _bad_geometries():
    yield "rsz", "li r4, -1\n", "geometry register rsz"
    yield "rkw", "li r6, 1\nlih r6, 1\n", "geometry register rkw"  # 2**32 + 1
    yield "zero stride", li(6, 3 | 3 << 8 | 0 << 16 | 1 << 24), "bad geometry"
    yield "zero window", li(6, 0 | 3 << 8 | 1 << 16 | 1 << 24), "bad geometry"
    yield "window > input", li(6, 8 | 2 << 8 | 1 << 16 | 1 << 24), "larger than the padded"


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_bad_geometry_faults_leave_state_unchanged(op, datapath):
    for _, lines, msg in _bad_geometries():
        _fault(_ops() + geo_lines(G) + lines + ALL_OPS[op], datapath, ExecutionError, msg)


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_out_of_bounds_operands_fault_before_any_write(op, datapath):
    big = G._replace(n=60, h=40, w=40, c=20)  # X: 1.9 MB, more than the scratchpad
    _fault(_ops() + geo_lines(big) + ALL_OPS[op], datapath, MemoryAccessError)
    first = SPAD - 8 if op == "vmaxpool" else ACC - 8  # vmaxpool writes the scratchpad
    for reg, val in ((1, first), (2, SPAD - 16), (3, SPAD - 8)):
        if op == "vsumpool" and reg == 3:
            continue  # no third address operand
        _fault(_ops() + geo_lines(G) + li(reg, val) + ALL_OPS[op], datapath, MemoryAccessError)


@pytest.mark.parametrize("datapath", ["fast", "reference"])
def test_pooling_faults(datapath):
    inpad = G._replace(kh=2, ph=2)  # the first row of windows lies in the padding
    for op in ("vmaxpool",):
        _fault(_ops() + geo_lines(inpad) + POOL_OPS[op], datapath, ExecutionError,
               "entirely in the padding")
    # (a window of the last row or column in the padding implies KH <= PH or KW <= PW, since
    # windows fit the padded input: so these two cases are all)
    _fault(_ops() + geo_lines(G._replace(kw=1, pw=1)) + POOL_OPS["vmaxpool"], datapath,
           ExecutionError, "entirely in the padding")
    for empty in (G._replace(h=0, ph=2), G._replace(w=0, pw=1), G._replace(h=0, n=0, ph=2)):
        _fault(_ops() + geo_lines(empty) + POOL_OPS["vmaxpool"], datapath, ExecutionError,
               "entirely in the padding")  # no input rows or columns: every window is padding
    wide = G._replace(kh=17, kw=16, h=20, w=20)
    _fault(_ops() + geo_lines(wide) + POOL_OPS["vmaxpool"], datapath, ExecutionError,
           "KH*KW <= 256")


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("bad", ["too large", "in the padding"])
def test_unpool_bad_index_faults(datapath, bad):
    g = G
    mc = g.m * g.c
    m = Machine(cfg(), assemble(_ops(rw=None) + geo_lines(g) + POOL_OPS["vunpool"] + "halt\n",
                                "u.s"), datapath=datapath)
    idx = np.zeros(mc, np.uint8)  # index 0 = (kh, kw) = (0, 0): row -1 for oh = 0 (PH = 1)
    idx[:] = 2  # (kh, kw) = (1, 0): inside for every window of this geometry
    e = 13
    idx[e] = 6 if bad == "too large" else 0
    if bad == "in the padding":
        # element 13 = ((n*OH + oh)*OW + ow)*C + c with oh = 0: kh = 0 is row -1
        assert (e // g.c // g.ow) % g.oh == 0
    m.spad[3 << 15 : (3 << 15) + mc] = idx
    before = m.acc.copy()
    with pytest.raises(ExecutionError, match=f"index {idx[e]} at element {e}"):
        m.run()
    np.testing.assert_array_equal(m.acc, before)


@pytest.mark.parametrize("dt", ["i8", "i16"])
@pytest.mark.parametrize("bits, wrap", VBIAS_ACCS)
def test_vbias_shifts_of_any_size(dt, bits, wrap):
    """Exponent differences up to +-(2**32 - 1) never fault; fast (which folds the shift to
    [-33, 16]) and reference (exact up to |s| = 4096) agree on values and counters."""
    for s in (-(1 << 32) + 1, -(1 << 31), -5000, -4096, 4096, 5000, (1 << 31) - 1,
              (1 << 32) - 1):
        e_acc = (1 << 31) - 1 if s >= 0 else -(1 << 31)  # both exponents within 32 bits
        e_b = e_acc - s
        assert -(1 << 31) <= e_b < (1 << 31) and -(1 << 31) <= e_acc < (1 << 31)
        src = (li(1, ACC_AT) + li(2, 0) + li(3, 3) + li(4, 5) + f"li r9, {e_acc}\n"
               f"li r10, {e_b}\nesetr e1, r9\nesetr e2, r10\n"
               f"vbias r1, r2, r3, r4, e1, e2, dt={dt}\nhalt\n")
        outs = []
        for dp in ("fast", "reference"):
            m = Machine(cfg(bits, wrap), assemble(src, "w.s"), datapath=dp)
            load(m, 0, np.array([3, -1, 0, 1, -7], np.int8 if dt == "i8" else np.int16))
            m.acc[ACC_AT : ACC_AT + 15] = np.arange(15) * 1000 - 7000
            m.run()
            outs.append((m.acc[ACC_AT : ACC_AT + 15].tolist(), m.counts.tolist(), m.flags))
        assert outs[0] == outs[1], s


# ------------------------------------------------------------------------------ empty shapes
@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("field", ["n", "c", "f", "h"])
def test_empty_shapes_do_no_work(datapath, field):
    g = G._replace(**{field: 0}, kh=2)  # H = 0: every window is padding (H + 2 PH = KH)
    for md in MODES:
        src = _ops() + geo_lines(g) + CONV.format(mode=md) + "halt\n"
        m = Machine(cfg(), assemble(src, "e.s"), datapath=datapath)
        m.acc[:] = 7
        m.run()
        pc = len(m.program.words) - 2
        # H = 0 still multiplies the padding zeros: M K F MACs, all others have none
        assert m.counts[pc, IDX["macs"]] == g.m * g.k * g.f
        assert (g.m * g.k * g.f > 0) == (field == "h") and not m.counts[pc, IDX["macs_skipped"]]
        n_out = {"fwd": g.m * g.f, "wgrad": g.k * g.f, "dgrad": g.inputs}[md]
        assert (m.acc[64 : 64 + n_out] == 0).all() and (m.acc[64 + n_out :] == 7).all()


# ------------------------------------------------------------------------------ exactness paths
def _one_conv(c: ConvCase, x, z, w, pre=None) -> Machine:
    m = Machine(cfg(c.bits, c.wrap), assemble(conv_source(c), "big.s"))
    load(m, X_AT, x)
    load(m, Z_AT, z)
    load(m, W_AT, w)
    if pre is not None:
        m.acc[ACC_AT : ACC_AT + pre.size] = pre
    m.run()
    return m


def _big(mode: str, g: Geometry, fill: int = 127, acc: bool = False, sparse: bool = False):
    """A case whose sums pass 2**24 with odd partial sums (127 * 127 = 16129): a float32 sum
    of them is inexact unless the fast path chunks it or widens it. ``sparse``: mostly zero
    and +-1 gradients, whose data-dependent bound stays below 2**24."""
    c = ConvCase(mode, g, "i8", "i8", acc, False, False, 32, False, 0)
    x = np.full(g.inputs, fill, np.int8)
    x[::97] = -128
    z = np.full(g.m * g.f, fill, np.int8)
    w = np.full(g.k * g.f, fill, np.int8)
    w[::53] = -127
    if sparse:
        r = np.random.default_rng(3)
        z = (r.integers(-1, 2, z.size) * (r.random(z.size) < 0.1)).astype(np.int8)
    pre = np.arange(out_size(c), dtype=np.int64) - 5
    m = _one_conv(c, x, z, w, pre if acc else None)
    want, nover = o_conv(mode, x, z, w, g, pre, acc, 32, False)
    np.testing.assert_array_equal(m.acc[ACC_AT : ACC_AT + out_size(c)], want)
    return m, want


def test_products_past_the_float32_limit_are_exact():
    base = Geometry(n=1, c=1, h=40, w=40, kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, f=3)
    _, want = _big("wgrad", base)  # M = 1600 > 1024 terms of 16129
    assert np.abs(want).max() > 1 << 24
    _big("wgrad", base, acc=True)
    _big("wgrad", base, sparse=True)  # the data bound allows one float32 product
    _, want = _big("fwd", base._replace(h=3, w=3, c=300, kh=2, kw=2))  # K = 1200
    assert np.abs(want).max() > 1 << 24
    _, want = _big("dgrad", base._replace(h=2, w=2, f=1100))  # F = 1100 per product
    assert np.abs(want).max() > 1 << 24
    # products below 2**24, their col2im sums above it: 9 windows of 201 terms each
    _, want = _big("dgrad", base._replace(h=4, w=4, kh=3, kw=3, ph=1, pw=1, f=201))
    assert np.abs(want).max() > 1 << 24 and (want % 2).any()


def test_chunked_paths_with_lowered_exactness_limits(monkeypatch):
    """With the float limits lowered (2**15 and 2**31), every product of the random cases
    runs chunked, float64 chunks are summed in int64 and col2im runs in int64: the fast path
    must still equal the oracle."""
    from emulator import kernels

    monkeypatch.setattr(kernels, "F32_LIMIT", 1 << 15)
    monkeypatch.setattr(kernels, "F64_LIMIT", 1 << 31)
    kernels.clear_caches()
    for c in CASES[:24]:
        check_conv(c, run_conv(c, "fast"))


def test_im2col_reuse_sees_every_change_of_x():
    """fwd, then wgrad on the same X (reuses the forward's im2col), then X changed by one
    element (vsub) and wgrad again, then X changed back: each equals the oracle."""
    g = Geometry(n=2, c=3, h=6, w=5, kh=3, kw=2, sh=1, sw=2, ph=1, pw=1, f=4)
    r = np.random.default_rng(11)
    x, z, w = rand_values(r, g.inputs, "i8"), rand_values(r, g.m * g.f, "i8"), \
        rand_values(r, g.k * g.f, "i8")
    step = "li r9, {a}\nli r10, {b}\nli r11, 1\nvsub r9, r9, r10, r11\n"  # x[i] -= x'[0]
    wg = ("conv r1, r2, r3, r4, r5, r6, r7\n" + li(12, ACC_AT + 2000)
          + "conv r12, r2, r13, r4, r5, r6, r7, mode=wgrad\n")
    src = (li(1, ACC_AT) + li(2, X_AT) + li(3, W_AT) + li(13, Z_AT) + geo_lines(g) + wg
           + "mid:\n" + step.format(a=X_AT + 17, b=X_AT + 40000) + wg + "halt\n")
    prog = assemble(src, "reuse.s")
    m = Machine(cfg(), prog)
    load(m, X_AT, x)
    load(m, Z_AT, z)
    load(m, W_AT, w)
    m.spad[X_AT + 40000] = 5
    m.run(break_pc=prog.labels["mid"])  # up to the change of X
    want = o_conv("wgrad", x, z, w, g, np.zeros(0), False, 32, False)[0]
    np.testing.assert_array_equal(m.acc[ACC_AT + 2000 : ACC_AT + 2000 + want.size], want)
    m.run()
    x2 = x.copy()
    x2[17] = max(int(x2[17]) - 5, -128)
    want2 = o_conv("wgrad", x2, z, w, g, np.zeros(0), False, 32, False)[0]
    np.testing.assert_array_equal(m.acc[ACC_AT + 2000 : ACC_AT + 2000 + want2.size], want2)
    assert not np.array_equal(want, want2)
