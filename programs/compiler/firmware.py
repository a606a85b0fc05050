"""Compile a model spec into firmware for the lpemu machine.

One program holds two entry paths selected by the host through the PARAMS block in DRAM:
``mode 0`` trains one epoch (forward, INT16 softmax + cross-entropy gradient, QBP backward,
update) over the batches the host put in DRAM; ``mode 1`` runs the forward pass over test
batches and stores the logits. Weights live in DRAM between runs and are resident in the
scratchpad during one (loaded when PARAMS.load_weights is set, stored back at the end).

Layout conventions (all layers): activations and backward gradients of hidden layers are stored
transposed, ``[features, batch]``, so every operand tile of a weight matrix ``W[n_in, n_out]``
is a contiguous row range. The logits, softmax and last-layer gradient are ``[batch, classes]``.

Labels name layer and phase (``train.fwd.l1``, ``train.softmax``, ``train.bwd.l3``,
``train.upd.l3``, ``eval.fwd.l2`` ...), so counters can be attributed per layer and phase.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from emulator.config import Config
from emulator.errors import ConfigError
from programs.compiler.spec import ModelSpec

# PARAMS block (int32 words at DRAM address 0)
P_MODE, P_NBATCH, P_MU, P_SEED, P_XBASE, P_TBASE, P_OBASE, P_RBASE, P_LOADW = range(9)
PARAMS_BYTES = 64
MODE_TRAIN, MODE_EVAL = 0, 1

# scalar registers
R_B, R_NB, R_MU, R_MODE, R_XB, R_TB, R_OB, R_RB, R_T0, R_T1 = 20, 21, 22, 23, 24, 25, 26, 27, 28, 29
TEMPS = tuple(range(1, 20))  # r1..r19: constants and addresses, reused across ops
# exponent registers
E_IN = 1  # e1..e5: activation exponents a_0..a_4


def E_ACT(layer: int) -> int:  # noqa: N802 - register name
    return 1 + layer


def E_W(layer: int) -> int:  # noqa: N802
    return 5 + layer  # layers 1..5 -> e6..e10


E_S, E_G, E_DZ, E_T0, E_T1 = 11, 12, 13, 14, 15
E_LZ = E_S  # the logits' exponent is dead during the update: reused for the fine grid
VEXP_MIN_E = -24


@dataclass
class Region:
    name: str
    addr: int
    size: int


@dataclass
class Allocator:
    """Bump allocator for one memory; every region is recorded for the layout report."""

    memory: str
    capacity: int
    align: int = 64
    top: int = 0
    regions: list[Region] = field(default_factory=list)

    def take(self, name: str, size: int) -> int:
        addr = self.top
        self.top += -(-max(size, 1) // self.align) * self.align
        self.regions.append(Region(name, addr, size))
        return addr

    def check(self, hint: str, need: int | None = None, what: str = "the model") -> None:
        """ConfigError (on the config key of this memory) when the space taken so far, or
        ``need`` if given, exceeds the capacity; the message says how much is needed."""
        need = self.top if need is None else need
        if need > self.capacity:
            unit = "bytes" if self.memory.endswith("bytes") else "entries"
            raise ConfigError(
                f"{what} needs {need:,} {unit}, {self.capacity:,} available; {hint}",
                self.memory,
            )


@dataclass
class Layout:
    """Where everything lives. Built from the spec and hardware config by :func:`plan`."""

    spec: ModelSpec
    sp: dict[str, int]
    acc: dict[str, int]
    dram: dict[str, int]
    sizes: dict[str, int]
    gbytes: int  # bytes of one classifier-gradient element (1 for BW <= 8, else 2)
    mu_shift: int  # lr/B = mu * 2**-mu_shift
    weight_exp: list[int]
    streamed: bool = False  # weights live in DRAM and pass through the scratchpad in row tiles
    tiles: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # layer -> row ranges

    @property
    def batch_x_bytes(self) -> int:
        return self.spec.layers[0] * self.spec.batch_size

    @property
    def batch_t_bytes(self) -> int:
        return self.spec.batch_size * self.spec.classes * self.gbytes

    @property
    def batch_y_bytes(self) -> int:
        return self.spec.batch_size * self.spec.classes * self.gbytes

    @property
    def batch_logit_bytes(self) -> int:
        return self.spec.batch_size * self.spec.classes * 2


def init_bound(n_in: int) -> float:
    """He-uniform bound for ReLU layers: U(-b, b), b = sqrt(6 / n_in)."""
    return math.sqrt(6.0 / n_in)


def weight_exponents(spec: ModelSpec) -> list[int]:
    """Fixed INT8 weight exponent per layer: the init bound times the headroom fits in 127."""
    out = []
    for n_in in spec.layers[:-1]:
        top = init_bound(n_in) * spec.weight_headroom
        out.append(math.ceil(math.log2(top / 127 * 128)) - 7)
    return out


def mu_shift(spec: ModelSpec) -> int:
    """Shift t with lr/B = mu * 2**-t and mu in [2**12, 2**13) at the initial learning rate."""
    x = spec.update.lr / spec.batch_size
    return 12 - math.floor(math.log2(x))


MOMENTUM_FRAC_BITS = 15  # the momentum factor is a Q15 multiplier: beta_q = round(beta 2**15)


def has_momentum(spec: ModelSpec) -> bool:
    return spec.update.momentum != 0


def momentum_q15(spec: ModelSpec) -> int:
    return round(spec.update.momentum * 2**MOMENTUM_FRAC_BITS)


def lr_multiplier(spec: ModelSpec, layout: Layout, epoch: int) -> int:
    return max(1, round(spec.lr_at(epoch) / spec.batch_size * 2**layout.mu_shift))


def _row_tiles(rows: int, tile: int) -> list[tuple[int, int]]:
    return [(k, min(k + tile, rows)) for k in range(0, rows, tile)]


CAPACITY_KEYS = {"memory.scratchpad_bytes": ("memory", "scratchpad_bytes", "bytes"),
                 "accumulator.entries": ("accumulator", "entries", "entries")}


def plan(spec: ModelSpec, cfg: Config) -> Layout:
    """Place every buffer. Weights stay resident in the scratchpad when everything fits;
    otherwise they are streamed from DRAM in row tiles sized to the space that is left.

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
    n, b, c = spec.layers, spec.batch_size, spec.classes
    nl = spec.n_weight_layers
    bw = spec.bits.classifier
    gbytes = 1 if bw <= 8 else 2
    sp = Allocator("memory.scratchpad_bytes", cfg.memory.scratchpad_bytes)
    acc = Allocator("accumulator.entries", cfg.accumulator.entries, align=16)
    s: dict[str, int] = {}
    a: dict[str, int] = {}
    s["A0"] = sp.take("A0", n[0] * b)
    for l in range(1, nl):
        s[f"A{l}"] = sp.take(f"A{l}", n[l] * b)
        s[f"DZ{l}"] = sp.take(f"DZ{l}", n[l] * b)
    s[f"DZ{nl}"] = sp.take(f"DZ{nl}", b * c)
    hidden = max(n[1:-1], default=1)
    s["MASK"] = sp.take("MASK", hidden * b)
    for name in ("S", "XS", "P"):
        s[name] = sp.take(name, 2 * b * c)
    s["MX"] = sp.take("MX", 2 * b)
    for name in ("Y", "NT", "G"):
        s[name] = sp.take(name, gbytes * b * c)
    sp.check("use a smaller batch or a larger scratchpad", what="the activation buffers alone")
    wsizes = [n[i] * n[i + 1] for i in range(nl)]
    mom = has_momentum(spec)
    # bytes per weight on chip: W (1) + LZ (2) [+ velocity VL (2)]; one update buffer U (2)
    per_weight = 5 if mom else 3
    resident_bytes = (sum(-(-per_weight * w // sp.align) * sp.align for w in wsizes)
                      + 2 * max(wsizes))
    streamed = sp.top + resident_bytes + nl * 2 * sp.align > sp.capacity
    # the accumulator holds dW one row tile at a time: as many rows as fit
    a["Z"] = acc.take("Z", max(max(n[1:]) * b, b * c))
    a["DA"] = acc.take("DA", max(n[:-1]) * b)
    a["SUM"] = acc.take("SUM", b)
    a["RO"] = acc.take("RO", b)
    a["TMP"] = acc.take("TMP", b * c)
    acc_rows = (acc.capacity - acc.top - acc.align) // max(n[1:])
    # at least one row of dW (plus alignment) after the buffers above
    acc.check("use a config with more accumulator entries", need=acc.top + acc.align
              + max(n[1:]), what="one row of dW with the buffers")
    tile_rows = acc_rows
    if streamed:
        # one tile of W (1 byte), LZ (2), U (2) [and VL (2)] per weight, x rows x n_out
        reserve = (4 if mom else 3) * sp.align  # alignment of the tile buffers
        per_row = (per_weight + 2) * max(n[1:])  # one row of every tile buffer
        room = sp.capacity - sp.top - reserve
        tile_rows = min(tile_rows, room // per_row)
        sp.check("use a larger scratchpad or narrower layers", need=sp.top + reserve + per_row,
                 what="one row of the widest weight matrix in tiles, with the buffers,")
    tiles = {l: _row_tiles(n[l - 1], min(tile_rows, n[l - 1])) for l in range(1, nl + 1)}
    tmax = max((k1 - k0) * n[l] for l, ts in tiles.items() for k0, k1 in ts)
    if not streamed:
        for l in range(1, nl + 1):
            s[f"W{l}"] = sp.take(f"W{l}", wsizes[l - 1])
            s[f"LZ{l}"] = sp.take(f"LZ{l}", 2 * wsizes[l - 1])
            if mom:
                s[f"VL{l}"] = sp.take(f"VL{l}", 2 * wsizes[l - 1])
    else:
        s["WT"] = sp.take("WT", tmax)
        s["LZT"] = sp.take("LZT", 2 * tmax)
        if mom:
            s["VLT"] = sp.take("VLT", 2 * tmax)
    s["U"] = sp.take("U", 2 * tmax)
    sp.check("weights do not fit even in tiles")
    a["DW"] = acc.take("DW", tmax)
    acc.check("use a config with more accumulator entries")
    d: dict[str, int] = {"PARAMS": 0}
    top = PARAMS_BYTES
    for l in range(1, nl + 1):
        d[f"W{l}"] = top
        top += -(-n[l - 1] * n[l] // 64) * 64
        d[f"LZ{l}"] = top
        top += -(-2 * n[l - 1] * n[l] // 64) * 64
        if mom:
            d[f"VL{l}"] = top
            top += -(-2 * n[l - 1] * n[l] // 64) * 64
    d["DATA"] = -(-top // 4096) * 4096
    sizes = {"sp_used": sp.top, "acc_used": acc.top}
    return Layout(spec, s, a, d, sizes, gbytes, mu_shift(spec), weight_exponents(spec),
                  streamed, tiles)


# ------------------------------------------------------------------------------- emitter
class Reg(int):
    """An operand that is already a register number (not a constant to load)."""


class Asm:
    """Assembly text builder that loads constants into temporaries, reusing known values."""

    def __init__(self, targets: set[str] | None = None) -> None:
        self.lines: list[str] = []
        self.known: dict[int, int] = {}  # temp register -> value it holds
        self.targets = targets  # labels some branch jumps to; None: assume every label

    def label(self, name: str, comment: str = "") -> None:
        if self.targets is None or name in self.targets:
            self.known.clear()  # control may arrive from elsewhere
        self.lines.append(f"{name}:" + (f"    # {comment}" if comment else ""))

    def comment(self, text: str) -> None:
        self.lines.append(f"    # {text}")

    def raw(self, text: str) -> None:
        self.lines.append(f"    {text}")

    def const(self, value: int, avoid: set[int]) -> int:
        """A temporary holding ``value``: reused if one does, else loaded into a free or the
        least recently used temporary (``known`` is kept in use order)."""
        for r, v in self.known.items():
            if v == value:  # reading one register for several operands is fine
                del self.known[r]
                self.known[r] = v  # most recently used
                return r
        free = [r for r in TEMPS if r not in self.known and r not in avoid]
        if free:
            r = free[0]
        else:
            r = next(r for r in self.known if r not in avoid)
            del self.known[r]
        self.lines.append(f"    li r{r}, {value}")
        self.known[r] = value
        return r

    def op(self, mnemonic: str, *regs: int, **kw: object) -> None:
        """Emit ``mnemonic`` with register operands; plain ints are constants to load."""
        chosen: list[int] = []
        used: set[int] = {int(x) for x in regs if isinstance(x, Reg)}
        for x in regs:
            if isinstance(x, Reg):
                chosen.append(int(x))
            else:
                r = self.const(int(x), used)
                used.add(r)
                chosen.append(r)
        ops = [f"r{r}" for r in chosen]
        ops += [f"{k}={v}" for k, v in kw.items()]
        self.lines.append(f"    {mnemonic} {', '.join(ops)}".rstrip())

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _dither(spec: ModelSpec) -> str:
    return {"uniform": "uniform", "triangular": "triangular", "none": "nearest"}[spec.qbp.dither]


def _clamp_exp_min(asm: Asm, ereg: int, lo: int, tag: str) -> None:
    """e[ereg] = max(e[ereg], lo) with scalar code (the vexp unit needs e >= -24)."""
    asm.raw(f"emv r{R_T0}, e{ereg}")
    asm.raw(f"li r{R_T1}, {lo}")
    asm.raw(f"bge r{R_T0}, r{R_T1}, {tag}.ok")
    asm.raw(f"esetr e{ereg}, r{R_T1}")
    asm.label(f"{tag}.ok")


def _update_state(lay: Layout) -> list[str]:
    """The per-weight INT16 update state next to W: LZ (lazy residual or shadow copy) and, with
    momentum, the velocity VL."""
    return ["LZ", "VL"] if has_momentum(lay.spec) else ["LZ"]


def _tile_in(asm: Asm, lay: Layout, l: int, k0: int, k1: int,
             with_state: bool) -> dict[str, int]:
    """Scratchpad addresses of rows k0:k1 of W_l (and its update state, ``LZ`` [``VL``]);
    DMA them in when streamed."""
    n_out = lay.spec.layers[l]
    names = ["W"] + (_update_state(lay) if with_state else [])
    if not lay.streamed:
        return {x: lay.sp[f"{x}{l}"] + (1 if x == "W" else 2) * k0 * n_out for x in names}
    nb = (k1 - k0) * n_out
    for x in names:
        size = nb if x == "W" else 2 * nb
        base = lay.dram[f"{x}{l}"] + (1 if x == "W" else 2) * k0 * n_out
        asm.op("dmald", lay.sp[f"{x}T"], base, 1, size, size, size)
    return {x: lay.sp[f"{x}T"] for x in names}


def _tile_out(asm: Asm, lay: Layout, l: int, k0: int, k1: int) -> None:
    if not lay.streamed:
        return
    n_out = lay.spec.layers[l]
    nb = (k1 - k0) * n_out
    for x in ["W"] + _update_state(lay):
        size = nb if x == "W" else 2 * nb
        base = lay.dram[f"{x}{l}"] + (1 if x == "W" else 2) * k0 * n_out
        asm.op("dmast", base, lay.sp[f"{x}T"], 1, size, size, size)


def _forward(asm: Asm, lay: Layout, prefix: str) -> None:
    spec = lay.spec
    n, b, c = spec.layers, spec.batch_size, spec.classes
    nl = spec.n_weight_layers
    sp, acc = lay.sp, lay.acc
    for l in range(1, nl + 1):
        asm.label(f"{prefix}.fwd.l{l}", f"layer {l}: {n[l - 1]} -> {n[l]}")
        a_in = sp[f"A{l - 1}"]
        chunks = lay.tiles[l] if lay.streamed else [(0, n[l - 1])]
        for k0, k1 in chunks:  # K-chunks (rows of W), accumulated
            w = _tile_in(asm, lay, l, k0, k1, with_state=False)["W"]
            kw = {"ta": 1, "acc": 1} if k0 else {"ta": 1}
            if l < nl:
                # z^T [n_l, B] += W[k0:k1]^T @ a^T[k0:k1]
                asm.op("gemm", acc["Z"], w, a_in + k0 * b, n[l], k1 - k0, b, **kw)
            else:
                # logits s [B, C] += a[:, k0:k1] @ W[k0:k1]
                asm.op("gemm", acc["Z"], a_in + k0 * b, w, b, k1 - k0, c, **kw)
        asm.raw(f"eadd e{E_T0}, e{E_W(l)}, e{E_ACT(l - 1)}")
        if l < nl:
            asm.lines.append(_efit(E_ACT(l), asm, acc["Z"], n[l] * b, E_T0, "i8"))
            _rq(asm, sp[f"A{l}"], acc["Z"], n[l] * b, E_ACT(l), E_T0, "nearest", "i8", relu=1)
        else:
            # INT16 logits with a dynamic exponent
            asm.lines.append(_efit(E_S, asm, acc["Z"], b * c, E_T0, "i16"))
            _clamp_exp_min(asm, E_S, VEXP_MIN_E, f"{prefix}.fwd.l{l}.clamp")
            _rq(asm, sp["S"], acc["Z"], b * c, E_S, E_T0, "nearest", "i16")


def _efit(ed: int, asm: Asm, acc_addr: int, count: int, ein: int, dt: str) -> str:
    r1 = asm.const(acc_addr, set())
    r2 = asm.const(count, {r1})
    return f"    efit e{ed}, r{r1}, r{r2}, e{ein}, dt={dt}"


def _rq(asm: Asm, dst: int, src: int, count: int, eout: int, ein: int, rnd: str, dt: str,
        relu: int = 0, mnemonic: str = "rq", mul: int | None = None) -> None:
    keep = set() if mul is None else {mul}  # the multiplier's register stays loaded
    r1 = asm.const(dst, keep)
    r2 = asm.const(src, keep | {r1})
    r3 = asm.const(count, keep | {r1, r2})
    extra = f", r{mul}" if mul is not None else ""
    kw = f", rnd={rnd}, dt={dt}" + (", relu=1" if relu else "")
    asm.raw(f"{mnemonic} r{r1}, r{r2}, r{r3}{extra}, e{eout}, e{ein}{kw}")


def _vcvt(asm: Asm, dst: int, src: int, count: int, eout: int, ein: int, rnd: str, sdt: str,
          ddt: str) -> None:
    r1 = asm.const(dst, set())
    r2 = asm.const(src, {r1})
    r3 = asm.const(count, {r1, r2})
    asm.raw(f"vcvt r{r1}, r{r2}, r{r3}, e{eout}, e{ein}, rnd={rnd}, sdt={sdt}, ddt={ddt}")


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
    # round-off sum of dL/ds per sample (the exact gradient sums to zero)
    asm.op("vrsum", acc["RO"], sp["G"], b, c, dt=gdt)


def _quantize_dz(asm: Asm, lay: Layout, l: int, src_acc: int | None, src_sp: int | None,
                 ein: int, sdt: str) -> None:
    """dz~ of layer l to INT8 at exponent e[E_DZ]: QBP fixed step with dither, or dynamic."""
    spec = lay.spec
    steps = spec.qbp_steps()
    dst = lay.sp[f"DZ{l}"]
    count = (spec.batch_size * spec.classes if l == spec.n_weight_layers
             else spec.layers[l] * spec.batch_size)
    if steps is not None:
        asm.raw(f"eset e{E_DZ}, {steps[l - 1]}")
        rnd = _dither(spec)
    else:
        rnd = "nearest"
        if src_acc is None:  # bring the INT16 gradient to the accumulator to scan its maximum
            asm.op("vtoacc", lay.acc["TMP"], src_sp, count, dt=sdt)
            src_acc = lay.acc["TMP"]
        asm.lines.append(_efit(E_DZ, asm, src_acc, count, ein, "i8"))
    if src_acc is not None:
        _rq(asm, dst, src_acc, count, E_DZ, ein, rnd, "i8")
    else:
        _vcvt(asm, dst, src_sp, count, E_DZ, ein, rnd, sdt, "i8")


def _update(asm: Asm, lay: Layout, l: int, at: dict[str, int], nw: int, tag: str) -> None:
    """SGD step for nw weights at ``at["W"]`` (INT16 state at ``at["LZ"]``, velocity at
    ``at["VL"]``) from dW in the accumulator (exponent e[E_T0]) scaled by lr/B = mu * 2**-t."""
    spec = lay.spec
    sp = lay.sp
    mode = spec.update.mode
    w = at["W"]
    asm.label(f"train.upd.l{l}{tag}", f"{mode} update of W{l}{tag}"
              + (f", momentum {spec.update.momentum}" if has_momentum(spec) else ""))
    asm.raw(f"eaddi e{E_T1}, e{E_T0}, {-lay.mu_shift}")  # exponent of dW * mu
    if mode in ("lazy", "shadow"):
        lz = at["LZ"]
        asm.raw(f"eaddi e{E_LZ}, e{E_W(l)}, {-spec.update.acc_shift}")  # the fine grid
        # U = round(lr g) on the fine grid
        _rq(asm, sp["U"], lay.acc["DW"], nw, E_LZ, E_T1, "nearest", "i16", mnemonic="rqm",
            mul=R_MU)
        step = sp["U"]
        if has_momentum(spec):
            # VL = round_dither(beta VL) + U on the fine grid. dW in the accumulator is dead:
            # VL passes through it for the Q15 multiply. Dithered rounding lets small
            # velocities decay to zero (round-to-nearest would hold +-1 forever).
            vl = at["VL"]
            asm.op("vtoacc", lay.acc["DW"], vl, nw, dt="i16")
            asm.raw(f"eaddi e{E_T1}, e{E_LZ}, {MOMENTUM_FRAC_BITS}")
            beta = asm.const(momentum_q15(spec), set())
            _rq(asm, vl, lay.acc["DW"], nw, E_T1, E_LZ, "uniform", "i16", mnemonic="rqm",
                mul=beta)
            asm.op("vadd", vl, vl, sp["U"], nw, dt="i16")
            step = vl
        asm.op("vsub", lz, lz, step, nw, dt="i16")
        if mode == "lazy":
            r = [asm.const(v, set()) for v in (w, lz, nw)]
            asm.raw(f"vlazy r{r[0]}, r{r[1]}, r{r[2]}, e{E_W(l)}, e{E_LZ}")
        else:
            _vcvt(asm, w, lz, nw, E_W(l), E_LZ, "nearest", "i16", "i8")
    else:
        rnd = "nearest" if mode == "plain" else "uniform"
        _rq(asm, sp["U"], lay.acc["DW"], nw, E_W(l), E_T1, rnd, "i8", mnemonic="rqm", mul=R_MU)
        asm.op("vsub", w, w, sp["U"], nw, dt="i8")


def _backward(asm: Asm, lay: Layout) -> None:
    spec = lay.spec
    n, b, c = spec.layers, spec.batch_size, spec.classes
    nl = spec.n_weight_layers
    sp, acc = lay.sp, lay.acc
    gdt = "i8" if lay.gbytes == 1 else "i16"
    for l in range(nl, 0, -1):
        asm.label(f"train.bwd.l{l}", f"QBP backward of layer {l}")
        if l == nl:
            _quantize_dz(asm, lay, l, None, sp["G"], E_G, gdt)
        else:
            # dz^T = Q(da^T) * relu'(z): quantize, then mask with a_l > 0
            asm.raw(f"eadd e{E_T0}, e{E_W(l + 1)}, e{E_DZ}")
            _quantize_dz(asm, lay, l, acc["DA"], None, E_T0, "i8")
            asm.op("vrelumask", sp["MASK"], sp[f"A{l}"], n[l] * b, dt="i8")
            asm.op("vmul", sp[f"DZ{l}"], sp[f"DZ{l}"], sp["MASK"], n[l] * b, dt="i8")
        tiles = lay.tiles[l]
        for t, (k0, k1) in enumerate(tiles):
            tag = f".t{t}" if len(tiles) > 1 else ""
            if t:
                asm.label(f"train.bwd.l{l}{tag}", f"rows {k0}:{k1} of W{l}")
            at = _tile_in(asm, lay, l, k0, k1, with_state=True)
            w = at["W"]
            a_rows = sp[f"A{l - 1}"] + k0 * b
            rows = k1 - k0
            if l == nl:
                # dW [rows, C] = a^T [rows, B] @ dz [B, C]             (zero-skip on dz)
                asm.op("gemm", acc["DW"], a_rows, sp[f"DZ{l}"], rows, b, c, sb=1)
                if l > 1:
                    # da^T [rows, B] = W [rows, C] @ dz^T   (dz stored [B, C]: tb=1)
                    asm.op("gemm", acc["DA"] + k0 * b, w, sp[f"DZ{l}"], rows, c, b, tb=1, sb=1)
            else:
                # dW [rows, n_l] = a^T [rows, B] @ dz [B, n_l]  (dz stored [n_l, B]: tb=1)
                asm.op("gemm", acc["DW"], a_rows, sp[f"DZ{l}"], rows, b, n[l], tb=1, sb=1)
                if l > 1:
                    # da^T [rows, B] = W [rows, n_l] @ dz^T [n_l, B]
                    asm.op("gemm", acc["DA"] + k0 * b, w, sp[f"DZ{l}"], rows, n[l], b, sb=1)
            asm.raw(f"eadd e{E_T0}, e{E_ACT(l - 1)}, e{E_DZ}")  # exponent of dW
            _update(asm, lay, l, at, rows * n[l], tag)
            _tile_out(asm, lay, l, k0, k1)


def _weights_dma(asm: Asm, lay: Layout, store: bool) -> None:
    if lay.streamed:
        return  # streamed weights never stay on chip
    spec = lay.spec
    n = spec.layers
    for l in range(1, spec.n_weight_layers + 1):
        for x in ["W"] + _update_state(lay):
            name, size = f"{x}{l}", (1 if x == "W" else 2) * n[l - 1] * n[l]
            if store:
                asm.op("dmast", lay.dram[name], lay.sp[name], 1, size, size, size)
            else:
                asm.op("dmald", lay.sp[name], lay.dram[name], 1, size, size, size)


def _batch_addr(asm: Asm, base_reg: int, stride: int) -> None:
    """r[R_T0] = r[base_reg] + r[R_B] * stride."""
    asm.raw(f"li r{R_T1}, {stride}")
    asm.raw(f"mul r{R_T0}, r{R_B}, r{R_T1}")
    asm.raw(f"add r{R_T0}, r{base_reg}, r{R_T0}")


_BRANCH = re.compile(r"^\s*(?:beq|bne|blt|bge|jmp)\b.*?([A-Za-z_][\w.]*)\s*$")


def branch_targets(text: str) -> set[str]:
    """Labels named as the target of a branch or jump in assembly text."""
    return {m.group(1) for line in text.splitlines() if (m := _BRANCH.match(line))}


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


def _compile(spec: ModelSpec, cfg: Config, targets: set[str] | None) -> tuple[str, Layout]:
    lay = plan(spec, cfg)
    n, b, _c = spec.layers, spec.batch_size, spec.classes
    nl = spec.n_weight_layers
    sp, acc = lay.sp, lay.acc
    asm = Asm(targets)
    asm.comment(f"lpemu firmware for {spec.name}: layers {n}, batch {b}, "
                f"update {spec.update.mode}, QBP step {spec.qbp.step_log2} "
                f"({spec.qbp.dither} dither), classifier INT{spec.bits.classifier}")
    asm.comment("generated by programs/compiler/firmware.py; PARAMS block at DRAM 0 (int32 words): "
                "mode, n_batches, mu, seed, x_base, t_base, out_base, roundoff_base, load_weights")
    asm.label("start")
    for idx, reg in ((P_MODE, R_MODE), (P_NBATCH, R_NB), (P_MU, R_MU), (P_XBASE, R_XB),
                     (P_TBASE, R_TB), (P_OBASE, R_OB), (P_RBASE, R_RB)):
        asm.raw(f"ldw r{reg}, r0, {4 * idx}")
    asm.raw(f"ldw r{R_T0}, r0, {4 * P_SEED}")
    asm.raw(f"rngseed r{R_T0}")
    asm.raw(f"eset e{E_IN}, {spec.input_exponent}")
    for l in range(1, nl + 1):
        asm.raw(f"eset e{E_W(l)}, {lay.weight_exp[l - 1]}")
    asm.raw(f"eset e{E_G}, {-(spec.bits.classifier - 1)}")
    asm.raw(f"ldw r{R_T0}, r0, {4 * P_LOADW}")
    asm.raw(f"beq r{R_T0}, r0, start.loaded")
    asm.label("start.load_weights")
    _weights_dma(asm, lay, store=False)
    asm.label("start.loaded")
    asm.raw(f"li r{R_B}, 0")
    asm.raw(f"li r{R_T0}, {MODE_EVAL}")
    asm.raw(f"beq r{R_MODE}, r{R_T0}, eval.loop")

    # ---------------------------------------------------------------- training epoch
    asm.label("train.loop", "one batch per iteration")
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
    _weights_dma(asm, lay, store=True)
    asm.raw("halt")
    return asm.text(), lay
