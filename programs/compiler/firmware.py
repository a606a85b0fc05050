"""Compile a model spec into firmware for the lpemu machine.

One program holds two entry paths selected by the host through the PARAMS block in DRAM:
``mode 0`` trains one epoch (forward, INT16 softmax + cross-entropy gradient, QBP backward,
update) over the batches the host put in DRAM; ``mode 1`` runs the forward pass over test
batches and stores the logits. Parameters live in DRAM between runs and are resident in the
scratchpad during one (loaded when PARAMS.load_weights is set, stored back at the end), or
stream through it in tiles when they do not fit.

This module plans memory and emits the program skeleton (batch loops, softmax, statistics);
each layer kind is lowered by its own module in ``programs/compiler/layers/`` (forward,
backward, update). Layouts between layers are described in ``layers/base.py``; exponents
live where ``programs/compiler/exps.py`` puts them.

Labels name layer and phase (``train.fwd.l1``, ``train.softmax``, ``train.bwd.l3``,
``train.upd.l3``, ``eval.fwd.l2`` ...; ``l<pos>`` is the layer's place in ``layers:``), so
counters can be attributed per layer and phase.
"""

from __future__ import annotations

import math

from emulator.config import Config
from emulator.errors import ConfigError
from programs.compiler import qbp
from programs.compiler.emit import (  # noqa: F401 - re-exported for the driver and tests
    E_DZ,
    E_G,
    E_LZ,
    E_S,
    E_T0,
    E_T1,
    R_B,
    R_MODE,
    R_MU,
    R_NB,
    R_OB,
    R_RB,
    R_T0,
    R_T1,
    R_TB,
    R_XB,
    TEMPS,
    VEXP_MIN_E,
    Allocator,
    Asm,
    Reg,
    Region,
    branch_targets,
)
from programs.compiler.exps import Exps
from programs.compiler.layers import LOWERINGS
from programs.compiler.layers.base import MOMENTUM_FRAC_BITS, update_state
from programs.compiler.layers.base import momentum_q15 as _momentum_q15
from programs.compiler.layout import Grad, Layout, fixed_exp
from programs.compiler.net import Net
from programs.compiler.spec import ModelSpec
from programs.compiler.update import DIAG_BYTES, LANES, beta_q15, eps2_parts

# PARAMS block (int32 words at DRAM address 0); P_MUTAB: the per-batch mu table (per-step lr)
P_MODE, P_NBATCH, P_MU, P_SEED, P_XBASE, P_TBASE, P_OBASE, P_RBASE, P_LOADW, P_MUTAB = range(10)
PARAMS_BYTES = 64
# Adam's constants: the INT16 16 x 16 diagonal matrices beta1_q I, (2**15 - beta1_q) I,
# beta2_q I, (2**15 - beta2_q) I, then eps_q (INT16)
CONST_BYTES = 4 * DIAG_BYTES + 16
ADAM_TEMP_BYTES = 6  # Adam's INT16 temporaries per element of a tile: [m; g], g**2
ADAM_PAD = 64  # the moment GEMMs read and write up to 15 elements past a tile
MODE_TRAIN, MODE_EVAL = 0, 1
E_IN = 1  # the input's exponent register (register mode)


def E_ACT(layer: int) -> int:  # noqa: N802 - register name
    """Register of activation exponent ``a<layer>`` in register mode (dense networks)."""
    return 1 + layer


def E_W(layer: int) -> int:  # noqa: N802
    """Register of weight exponent ``w<layer>`` in register mode (networks without biases)."""
    return 5 + layer


def init_bound(n_in: int) -> float:
    """He-uniform bound for ReLU layers: U(-b, b), b = sqrt(6 / n_in) (n_in: fan-in)."""
    return math.sqrt(6.0 / n_in)


def weight_exponents(spec: ModelSpec) -> list[int]:
    """Weight exponent per weight layer (fixed, or the initial one of a dynamic exponent): the
    init bound times the headroom fits in 2**(B-1) - 1 (127 for INT8, 32767 for INT16). A
    layer's bias starts on its weights' grid."""
    out = []
    for layer, bits in zip(spec.net().weight_layers, spec.weight_bits(), strict=True):
        top = init_bound(layer.fan_in) * spec.weight_headroom
        half = 2 ** (bits - 1)
        out.append(math.ceil(math.log2(top / (half - 1) * half)) - (bits - 1))
    return out


def mu_shift(spec: ModelSpec) -> int:
    """Shift t with lr/B = mu * 2**-t (SGD) or lr = mu * 2**-t (Adam, whose step does not
    scale with the gradient) and mu in [2**12, 2**13) at the initial learning rate."""
    x = spec.update.lr / (1 if spec.update.optimizer == "adam" else spec.batch_size)
    return 12 - math.floor(math.log2(x))


def has_momentum(spec: ModelSpec) -> bool:
    return spec.update.momentum != 0


def momentum_q15(spec: ModelSpec) -> int:
    return _momentum_q15(spec.update.momentum)


def lr_multiplier(spec: ModelSpec, layout: Layout, epoch: int, step: int = 0) -> int:
    """mu for training ``step`` (batches since the start) in ``epoch``: SGD's lr/B, Adam's
    alpha_t = lr sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)) with the chip's Q15 betas (t = step;
    the bias correction of the (t+1)-th update), times 2**mu_shift, rounded, at least 1."""
    lr = spec.lr_at(epoch, step)
    if spec.update.optimizer == "adam":
        from programs.compiler.update import beta_q15

        b1 = beta_q15(spec.update.adam.beta1) / 2**15
        b2 = beta_q15(spec.update.adam.beta2) / 2**15
        alpha = lr * math.sqrt(1 - b2 ** (step + 1)) / (1 - b1 ** (step + 1))
        return max(1, round(alpha * 2**layout.mu_shift))
    return max(1, round(lr / spec.batch_size * 2**layout.mu_shift))


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


CAPACITY_KEYS = {"memory.scratchpad_bytes": ("memory", "scratchpad_bytes", "bytes"),
                 "accumulator.entries": ("accumulator", "entries", "entries")}


def plan(spec: ModelSpec, cfg: Config) -> Layout:
    """Place every buffer. Weights stay resident in the scratchpad when everything fits;
    otherwise they are streamed from DRAM in tiles sized to the space that is left (dense: row
    tiles; a convolution's weights are one tile). Biases are always resident.

    A model that does not fit raises ConfigError on the memory's key, stating the least
    capacity with which it compiles (found by trying capacities: that one works, one less
    does not), with the other settings of ``cfg`` kept."""
    try:
        return _plan(spec, cfg)
    except ConfigError as e:
        if e.key not in CAPACITY_KEYS:
            raise
        need = least_capacity(spec, cfg, e.key)
        if need is None:
            raise
        section, name, unit = CAPACITY_KEYS[e.key]
        have = getattr(getattr(cfg, section), name)
        hint = e.message.split("; ", 1)[1] if "; " in e.message else ""
        raise ConfigError(f"the model needs {need:,} {unit}, {have:,} available"
                          + (f"; {hint}" if hint else ""), e.key) from None


def least_capacity(spec: ModelSpec, cfg: Config, key: str) -> int | None:
    """The least value of the capacity ``key`` (``memory.scratchpad_bytes`` or
    ``accumulator.entries``) with which ``spec`` compiles for ``cfg``; None if no value up to
    2**40 does (another memory is too small)."""
    import dataclasses

    section, name, _ = CAPACITY_KEYS[key]

    def fits(v: int) -> bool:
        try:
            sec = dataclasses.replace(getattr(cfg, section), **{name: v})
            _plan(spec, dataclasses.replace(cfg, **{section: sec}))
        except ConfigError:
            return False
        return True

    lo = getattr(getattr(cfg, section), name)  # does not fit
    hi = max(2 * lo, 64)
    while not fits(hi):
        lo, hi = hi, 2 * hi
        if hi > 1 << 40:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _plan(spec: ModelSpec, cfg: Config) -> Layout:
    net = spec.net()
    b, c = spec.batch_size, spec.classes
    bw = spec.bits.classifier
    gbytes = 1 if bw <= 8 else 2
    lows = [LOWERINGS[x.kind](x, i == len(net.layers) - 1) for i, x in enumerate(net.layers)]
    wexp = weight_exponents(spec)
    wbits = spec.weight_bits()
    params = [p for low in lows if low.layer.is_weight
              for p in low.params(wexp[low.layer.widx - 1], wbits[low.layer.widx - 1])]
    sp = Allocator("memory.scratchpad_bytes", cfg.memory.scratchpad_bytes)
    acc = Allocator("accumulator.entries", cfg.accumulator.entries, align=16)
    lay = Layout(spec, net, lows, params, {}, {}, {}, {}, gbytes, mu_shift(spec), wexp, spa=sp)
    lay.qbp = qbp.make_plan(spec)
    s, a = lay.sp, lay.acc
    # per-step buffers: one after another for dense-only networks; packed by live range
    # (layers/base.py) for the others, which then mask the ReLU in place
    lay.timed = None if net.is_mlp else []
    lay.buf("A0", net.features * b, 0, lay.t_bwd(1))
    for low in lows:
        low.plan_acts(lay, b)
    if net.is_mlp:
        mask = max((low.mask_size(lay, b) for low in lows[:-1]), default=0) or b
        s["MASK"] = sp.take("MASK", mask)
        if any(lay.needs_q0(x) for x in net.layers):
            s["Q0"] = sp.take("Q0", mask)
    for name in ("S", "XS", "P"):
        s[name] = sp.take(name, 2 * b * c)
    s["MX"] = sp.take("MX", 2 * b)
    for name in ("Y", "NT", "G"):
        s[name] = sp.take(name, gbytes * b * c)
    for low in lows:
        low.plan_extra(lay, b)
    if lay.timed is not None:
        s.update(sp.pack(lay.timed))
    sp.check("use a smaller batch or a larger scratchpad", what="the activation buffers alone")
    qbp.plan_sp(lay, sp, b)
    if any(p.is_bias for p in params):
        lay.need_ones(b)
    if lay.ones:
        s["ONES"] = sp.take("ONES", lay.ones)
    if lay.adam:  # Q15 [beta1, 1 - beta1], [beta2, 1 - beta2] and eps on v's grid (INT16)
        s["CONST"] = sp.take("CONST", CONST_BYTES)
        s["EPSQ"] = s["CONST"] + 4 * DIAG_BYTES
    names = ["W"] + lay.state_names()
    for p in params:
        if p.is_bias:
            for x in names:
                s[p.key(x)] = sp.take(p.key(x), lay.state_bytes(x, p) * p.size)
    sp.check("use a smaller batch or a larger scratchpad",
             what="the activation, gradient and bias buffers")
    weights = lay.weights
    # bytes per weight on chip: W (1 or 2) + LZ (2) [+ velocity VL] [+ Adam's M, V (2 + 2)];
    # per element of the largest tile: the update buffer U (2) [and Adam's temporaries (6)]
    per_elem = {p.key(): sum(lay.state_bytes(x, p) for x in names) for p in weights}
    temp = 2 + (ADAM_TEMP_BYTES if lay.adam else 0)
    resident_bytes = (sum(_align(per_elem[p.key()] * p.size, sp.align) for p in weights)
                      + temp * max(p.size for p in weights) + (ADAM_PAD if lay.adam else 0))
    streamed = sp.top + resident_bytes + len(weights) * 2 * sp.align > sp.capacity
    # the accumulator: the forward output and the input gradient in transit (one region when
    # two do not fit: each gradient is quantized into the scratchpad before the next is made)
    z_size = max(low.acc_forward(b) for low in lows)
    da_size = max(low.layer.in_size * b for low in lows)
    widest = max(x.units for x in net.weight_layers)
    small = 2 * b + b * c + max([low.sp_grad_size(b) for low in lows] + [b * c])
    share = acc.capacity - (_align(z_size, acc.align) + _align(da_size, acc.align)
                            + 4 * acc.align + small) < widest and not net.is_mlp
    a["Z"] = acc.take("Z", max(z_size, da_size) if share else z_size)
    a["DA"] = a["Z"] if share else acc.take("DA", da_size)
    a["SUM"] = acc.take("SUM", b)
    a["RO"] = acc.take("RO", b)
    a["TMP"] = acc.take("TMP", max([b * c] + [low.sp_grad_size(b) for low in lows]))
    qbp.plan_acc(lay, acc, b)
    if lay.adam and eps2_parts(lay)[0]:
        a["EPS"] = acc.take("EPS", 1)  # -mantissa of (B eps)**2, loaded at the start
    # the accumulator holds dW one row tile at a time: as many rows as fit
    acc_rows = (acc.capacity - acc.top - acc.align) // widest
    # at least one row of dW (plus alignment) after the buffers above
    acc.check("use a config with more accumulator entries", need=acc.top + acc.align + widest,
              what="one row of dW with the buffers")
    tile_rows = acc_rows
    if streamed:
        # one tile of W, LZ, U [VL, M, V, Adam's temporaries] per weight, x rows x n_out
        reserve = (len(names) + 1 + (1 if lay.adam else 0)) * sp.align  # their alignment
        per_row = (max(per_elem.values()) + temp) * widest  # one row of every tile buffer
        room = sp.capacity - sp.top - reserve
        tile_rows = min(tile_rows, room // per_row)
        sp.check("use a larger scratchpad or narrower layers", need=sp.top + reserve + per_row,
                 what="one row of the widest weight matrix in tiles, with the buffers,")
    lay.streamed = streamed
    # tiles of at most tile_rows rows of the widest layer, in elements: narrower layers take
    # more rows
    lay.tiles = {low.layer.pos: low.tiles(tile_rows * widest) for low in lows
                 if low.layer.is_weight}
    _choose_layouts(lay)
    tmax = max((k1 - k0) * low.layer.units for low in lows if low.layer.is_weight
               for k0, k1 in lay.tiles[low.layer.pos])
    if not streamed:
        for p in weights:
            for x in names:
                s[p.key(x)] = sp.take(p.key(x), lay.state_bytes(x, p) * p.size)
    else:
        for x in names:
            s[f"{x}T"] = sp.take(f"{x}T", lay.state_bytes(x) * tmax)
    s["U"] = sp.take("U", 2 * tmax)
    if lay.adam:
        s["AT"] = sp.take("AT", ADAM_TEMP_BYTES * tmax + ADAM_PAD)
    sp.check("weights do not fit even in tiles")
    a["DW"] = acc.take("DW", tmax + (LANES if lay.adam else 0))
    acc.check("use a config with more accumulator entries")
    d: dict[str, int] = {"PARAMS": 0}
    top = PARAMS_BYTES
    for p in params:
        for x in names:
            d[p.key(x)] = top
            top += _align(lay.state_bytes(x, p) * p.size, 64)
        words = (["E"] if lay.dynamic else []) + (["EM", "EV"] if lay.adam else [])
        for x in words:  # exponent words: the parameter's, Adam's moments' (one per tile)
            d[p.key(x)] = top
            top += _align(4 * (1 if x == "E" else len(lay.tiles[p.layer.pos])), 64)
    acts = ["a0"] + [low.out_exp for low in lows[:-1] if low.exp_alias() is None]
    alias = {low.out_exp: al for low in lows[:-1] if (al := low.exp_alias()) is not None}
    fixed = {"a0": spec.input_exponent}
    dyn = {}
    for bias in (False, True):
        for p in params:
            if p.is_bias != bias:
                continue
            if lay.dynamic:
                dyn[p.ename] = d[p.key("E")]
            else:
                fixed[p.ename] = p.exp
    words = [f"da{x.pos}" for x in net.weight_layers] if lay.dynamic else []
    lay.exps = Exps(acts, fixed, alias, top, dyn, words)
    if lay.exps.dram_bytes:
        d["EXPS"] = top
        top += _align(lay.exps.dram_bytes, 64)
    if lay.adam:
        d["CONST"] = top
        top += _align(CONST_BYTES + 4, 64)
    if lay.staging:
        d["STG"] = top
        top += _align(lay.staging, 64)
    if lay.ones:
        d["ONES"] = top
        top += _align(lay.ones, 64)
    lay.dram = d
    top = qbp.plan_dram(lay, top)
    d["DATA"] = _align(top, 4096)
    lay.dram = d
    lay.sizes = {"sp_used": sp.top, "acc_used": acc.top}
    lay.spa = None
    return lay


def _choose_layouts(lay: Layout) -> None:
    """A dense layer whose producer is naturally sample-major (a flatten of NHWC, a dense layer
    with a bias) reads that layout directly when its weights are one tile (resident, or
    streamed whole): the producer then skips its transpose through DRAM."""
    lows = lay.lowerings
    for i in range(1, len(lows)):
        low, prod = lows[i], lows[i - 1]
        if low.layer.kind != "dense":
            continue
        natural_s = prod.layer.kind == "flatten" or (prod.layer.kind == "dense"
                                                     and prod.produces_s())
        pos = low.layer.pos
        if natural_s and len(lay.tiles[pos]) == 1:
            low.in_s = True
            if prod.layer.kind == "flatten":
                prod.passthrough = True
                lay.sp[f"A{prod.layer.pos}"] = lay.sp[f"A{prod.layer.pos - 1}"]
            else:
                prod.out_s_hidden = True


# ------------------------------------------------------------------------------- emitter
def _softmax(asm: Asm, lay: Layout) -> None:
    spec = lay.spec
    b, c = spec.batch_size, spec.classes
    sp, acc = lay.sp, lay.acc
    gdt = "i8" if lay.gbytes == 1 else "i16"
    asm.label("train.softmax", "INT16 softmax and cross-entropy gradient y - t")
    asm.op("vrmax", sp["MX"], sp["S"], b, c, dt="i16")
    asm.op("vsubrow", sp["XS"], sp["S"], sp["MX"], b, c, dt="i16")
    r1, r2, r3 = asm.const(sp["P"], set()), asm.const(sp["XS"], set()), asm.const(b * c, set())
    asm.raw(f"vexp r{r1}, r{r2}, r{r3}, e{E_S}")
    asm.op("vrsum", acc["SUM"], sp["P"], b, c, dt="i16")
    r = [asm.const(v, set()) for v in (sp["Y"], sp["P"], acc["SUM"], b, c)]
    asm.raw(f"vnormrow r{r[0]}, r{r[1]}, r{r[2]}, r{r[3]}, r{r[4]}, e{E_G}, dt={gdt}")
    # g = y + (-t): the host stores the negated one-hot target -2**(BW-1)
    asm.op("vadd", sp["G"], sp["Y"], sp["NT"], b * c, dt=gdt)
    # round-off sum of dL/ds per sample (the exact sum is zero)
    asm.op("vrsum", acc["RO"], sp["G"], b, c, dt=gdt)


def _forward(asm: Asm, lay: Layout, prefix: str) -> None:
    for low in lay.lowerings:
        low.forward(asm, lay, prefix)


def _backward(asm: Asm, lay: Layout) -> None:
    gdt = "i8" if lay.gbytes == 1 else "i16"
    grad: Grad | None = Grad("sp", lay.sp["G"], fixed_exp(E_G), dt=gdt)
    layers = lay.net.layers
    lowest = next(i for i, x in enumerate(layers) if x.is_weight)
    for i in range(len(layers) - 1, lowest - 1, -1):
        need_dx = any(x.is_weight for x in layers[:i])
        assert grad is not None
        grad = lay.lowerings[i].backward(asm, lay, grad, need_dx)


def _params_dma(asm: Asm, lay: Layout, store: bool) -> None:
    """Resident parameters (and their update state) between DRAM and the scratchpad; dynamic
    parameter exponents between their words and their registers (register mode)."""
    for p in lay.params:
        if lay.streams(p):
            continue  # streamed weights never stay on chip
        for x in ["W"] + update_state(lay):
            name, size = p.key(x), lay.state_bytes(x, p) * p.size
            if store:
                asm.op("dmast", lay.dram[name], lay.sp[name], 1, size, size, size)
            else:
                asm.op("dmald", lay.sp[name], lay.dram[name], 1, size, size, size)
    if store:
        lay.exps.store_dyn(asm)
    else:
        lay.exps.load_dyn(asm)


def constants(lay: Layout) -> tuple[bytes, int] | None:
    """Adam's constants: the bytes of the scratchpad's ``CONST`` (the Q15 diagonal matrices
    beta1_q I, (2**15 - beta1_q) I, beta2_q I, (2**15 - beta2_q) I, INT16 little-endian, then
    room for eps_q) and the accumulator entry ``EPS`` (-mantissa of (B eps)**2); None without
    Adam. The host puts them at DRAM ``CONST`` (the entry as int32 at +CONST_BYTES)."""
    if not lay.adam:
        return None
    import numpy as np

    a = lay.spec.update.adam
    b1, b2 = beta_q15(a.beta1), beta_q15(a.beta2)
    mats = [np.diag(np.full(LANES, v, "<i2")) for v in (b1, 2**15 - b1, b2, 2**15 - b2)]
    raw = b"".join(m.astype("<i2").tobytes() for m in mats) + bytes(16)
    return raw, -eps2_parts(lay)[0]


def _batch_addr(asm: Asm, base_reg: int, stride: int) -> None:
    """r[R_T0] = r[base_reg] + r[R_B] * stride."""
    asm.raw(f"li r{R_T1}, {stride}")
    asm.raw(f"mul r{R_T0}, r{R_B}, r{R_T1}")
    asm.raw(f"add r{R_T0}, r{base_reg}, r{R_T0}")


def compile_model(spec: ModelSpec, cfg: Config) -> tuple[str, Layout]:
    """Assembly text of the training/eval firmware and the memory layout it assumes.

    Two passes: the first finds which labels are branch targets, the second keeps constants
    in temporaries across every other label (control only falls through those).
    ``spec.input_exponent`` must be resolved (the host driver puts in the dataset's grid when
    the spec leaves it null)."""
    if spec.input_exponent is None:
        raise ConfigError("null input_exponent: compile needs the dataset's input exponent "
                          "(the training driver fills it in)", "input_exponent")
    first, _ = _compile(spec, cfg, None)
    return _compile(spec, cfg, branch_targets(first))


def _describe(spec: ModelSpec, net: Net) -> str:
    if net.is_mlp:
        return f"layers {spec.layers}"
    shape = "x".join(map(str, net.input_shape))
    return f"input {shape}, " + ", ".join(x.describe() for x in net.layers)


def _compile(spec: ModelSpec, cfg: Config, targets: set[str] | None) -> tuple[str, Layout]:
    lay = plan(spec, cfg)
    b = spec.batch_size
    sp, acc = lay.sp, lay.acc
    asm = Asm(targets)
    if lay.qbp.general:  # r18/r19 carry the steps' significands (programs/compiler/qbp.py)
        asm.temps = qbp.TEMPS
    asm.comment(f"lpemu firmware for {spec.name}: {_describe(spec, lay.net)}, batch {b}, "
                f"update {spec.update.mode}, QBP {qbp.header(spec)}, "
                f"classifier INT{spec.bits.classifier}")
    asm.comment("generated by programs/compiler/firmware.py; PARAMS block at DRAM 0 (int32 words): "
                "mode, n_batches, mu, seed, x_base, t_base, out_base, roundoff_base, load_weights")
    asm.label("start")
    for idx, reg in ((P_MODE, R_MODE), (P_NBATCH, R_NB), (P_MU, R_MU), (P_XBASE, R_XB),
                     (P_TBASE, R_TB), (P_OBASE, R_OB), (P_RBASE, R_RB)):
        asm.raw(f"ldw r{reg}, r0, {4 * idx}")
    asm.raw(f"ldw r{R_T0}, r0, {4 * P_SEED}")
    asm.raw(f"rngseed r{R_T0}")
    lay.exps.preload(asm)
    asm.raw(f"eset e{E_G}, {-(spec.bits.classifier - 1)}")
    if lay.ones:  # the ones vector of the bias gradients (the host put it in DRAM)
        asm.op("dmald", sp["ONES"], lay.dram["ONES"], 1, lay.ones, lay.ones, lay.ones)
    if lay.adam:  # Adam's constants (the host put them in DRAM)
        asm.op("dmald", sp["CONST"], lay.dram["CONST"], 1, CONST_BYTES, CONST_BYTES,
               CONST_BYTES)
        if "EPS" in lay.acc:
            asm.op("dmaldacc", acc["EPS"], lay.dram["CONST"] + CONST_BYTES, 1, 1, 4)
    asm.raw(f"ldw r{R_T0}, r0, {4 * P_LOADW}")
    asm.raw(f"beq r{R_T0}, r0, start.loaded")
    asm.label("start.load_weights")
    _params_dma(asm, lay, store=False)
    asm.label("start.loaded")
    asm.raw(f"li r{R_B}, 0")
    asm.raw(f"li r{R_T0}, {MODE_EVAL}")
    asm.raw(f"beq r{R_MODE}, r{R_T0}, eval.loop")

    # ---------------------------------------------------------------- training epoch
    asm.label("train.loop", "one batch per iteration")
    if spec.per_step_lr:  # mu of this step from the host's table
        asm.raw(f"ldw r{R_T0}, r0, {4 * P_MUTAB}")
        asm.raw(f"li r{R_T1}, 4")
        asm.raw(f"mul r{R_T1}, r{R_B}, r{R_T1}")
        asm.raw(f"add r{R_T0}, r{R_T0}, r{R_T1}")
        asm.raw(f"ldw r{R_MU}, r{R_T0}, 0")
    _batch_addr(asm, R_XB, lay.batch_x_bytes)
    asm.op("dmald", sp["A0"], Reg(R_T0), 1, lay.batch_x_bytes, lay.batch_x_bytes,
           lay.batch_x_bytes)
    _batch_addr(asm, R_TB, lay.batch_t_bytes)
    asm.op("dmald", sp["NT"], Reg(R_T0), 1, lay.batch_t_bytes, lay.batch_t_bytes,
           lay.batch_t_bytes)
    _forward(asm, lay, "train")
    _softmax(asm, lay)
    _backward(asm, lay)
    asm.label("train.stats", "store y and the round-off sums for the host")
    _batch_addr(asm, R_OB, lay.batch_y_bytes)
    asm.op("dmast", Reg(R_T0), sp["Y"], 1, lay.batch_y_bytes, lay.batch_y_bytes,
           lay.batch_y_bytes)
    _batch_addr(asm, R_RB, 4 * b)
    asm.op("dmastacc", Reg(R_T0), acc["RO"], 1, b, 4 * b)
    asm.raw(f"addi r{R_B}, r{R_B}, 1")
    asm.raw(f"blt r{R_B}, r{R_NB}, train.loop")
    asm.raw("jmp done")

    # ---------------------------------------------------------------- evaluation
    asm.label("eval.loop", "forward pass only; store the INT16 logits and their exponent")
    _batch_addr(asm, R_XB, lay.batch_x_bytes)
    asm.op("dmald", sp["A0"], Reg(R_T0), 1, lay.batch_x_bytes, lay.batch_x_bytes,
           lay.batch_x_bytes)
    _forward(asm, lay, "eval")
    asm.label("eval.store")
    _batch_addr(asm, R_OB, lay.batch_logit_bytes)
    asm.op("dmast", Reg(R_T0), sp["S"], 1, lay.batch_logit_bytes, lay.batch_logit_bytes,
           lay.batch_logit_bytes)
    asm.raw(f"addi r{R_B}, r{R_B}, 1")
    asm.raw(f"blt r{R_B}, r{R_NB}, eval.loop")

    asm.label("done", "weights back to DRAM for the host")
    _params_dma(asm, lay, store=True)
    asm.raw("halt")
    return asm.text(), lay


__all__ = ["MOMENTUM_FRAC_BITS", "Layout", "Region", "TEMPS", "compile_model", "plan"]
