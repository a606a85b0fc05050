"""Count-only mode: the counters of a run from the closed forms, without running the datapath.

VTA's idea: every instruction's cycles and traffic are a closed-form function of its operands
(:mod:`emulator.timing`), so a program whose counters do not depend on the values it computes
can be *counted* instead of run. :class:`CountOnlyMachine` steps the program with the same
semantics functions as :class:`~emulator.machine.Machine` (the same operand checks, faults,
costs and control flow), but on a *null datapath* that computes no matrix, requantizer or
vector-ALU values, and it follows which state is **known** (holds exactly what a full run
would hold) and which is **unknown** (would hold datapath results):

* known: immediates; host-loaded memory; registers computed from known registers; bytes that
  DMA, ``stw`` or ``dmastacc`` copy from known state; the RNG state (its counter advances by
  the draw count, which the rules below keep exact);
* unknown: every result of the matrix unit, the requantizer and the vector ALU (their
  destination bytes or accumulator entries), the exponent ``efit`` picks, ``flags``, and
  whatever is loaded from or computed with unknown state (byte-exact taint for the scratchpad
  and DRAM, per entry for the accumulator).

The run is **refused** with :class:`CountOnlyError` naming the pc and instruction where a
counter, a fault or the control flow would depend on unknown state:

1. a branch (``beq``/``bne``/``blt``/``bge``) on an unknown register;
2. an unknown register as an address, count, stride, shift amount or multiplier of ``ldw``,
   ``stw``, ``accrd``, a DMA, matrix or vector instruction (shapes and addresses set cycles,
   traffic and faults);
3. zero-skipping (``gemm``/``conv`` ``sa=1`` / ``sb=1``) on an operand with any unknown
   byte: skipped MACs, ``skip_cycles_saved`` and energy depend on its zeros (a known operand,
   e.g. host data, is fine: its skips are counted exactly);
4. an unknown exponent read by ``rq``/``rqm``/``vcvt`` (the shift decides the dither draws and
   can fault), ``vexp``, ``vnormrow``, ``vlazy``, ``vrsqrt`` or ``efit`` (range checks), or by
   ``eadd``/``eaddi``/``esetr`` (the 32-bit range check); ``efit`` itself is refused only if
   its result could leave the 32-bit range;
5. ``vunpool mode=max`` on indices with any unknown byte (an index outside its window faults);
6. ``vqstep`` with an unknown constant ``r[rc]`` (or, with a combine, ``r[rd]``): a negative one
   faults; in mode=var also unknown ``e[ea]`` or ``e[ec]`` (too far apart faults). Its outputs
   ``r[rd]``, ``r[rr]``, ``e[ed]`` are unknown.

Everything else is counted exactly: cycles, instructions, MACs, skipped MACs, byte-passes,
every traffic counter, ALU passes, requantized elements, RNG draws, DMA stalls, array cycles,
energy. ``acc_overflows`` and ``saturations`` count value events and are **not** produced
(:data:`emulator.counters.UNCOUNTED`). The rule is dynamic (it follows the path actually
taken) and conservative (any unknown input makes a result unknown, even ``xor r1, r1, r1``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from emulator import kernels
from emulator.config import Config
from emulator.counters import UNCOUNTED  # noqa: F401 - re-exported
from emulator.errors import CountOnlyError
from emulator.machine import Machine
from emulator.semantics import ELEM_BYTES, EXP_MAX, EXP_MIN, Handler
from isa.asm import format_instruction
from isa.encoding import Program
from isa.spec import Instr


def _none(*_a: object, **_k: object) -> int:
    return 0


# The null datapath: the same interface as emulator/kernels.py, computing nothing. Results land
# only in destinations the taint rules mark unknown. ``fit_acc`` stays real (it is O(n) and
# keeps DMA into the accumulator exact for known data).
NULL_DATAPATH = SimpleNamespace(
    gemm_into=_none,
    requant_into=_none,
    alu_into=_none,
    lazy_update_into=_none,
    sign_bits_needed=_none,
    fit_acc=kernels.fit_acc,
    select=lambda mask, a, b: a,
    row_max=lambda x: np.zeros(x.shape[0], dtype=x.dtype),
    row_sum=lambda x: np.zeros(x.shape[0], dtype=np.int64),
    sub_rows=lambda a, b, bits: (a, 0),
    exp_q14=lambda x, e: x,
    norm_rows=lambda p, sums, f, bits: (p, 0),
    rsqrt_q=lambda x, k: (x, 0),
    wmul_into=_none,
    conv_into=_none,
    maxpool_into=_none,
    sumpool_into=_none,
    unpool_into=_none,
    bias_into=_none,
    vqstep=lambda *a: (0, 0, 0),
    topk=lambda x, k, col: x,
    bad_unpool_index=kernels.bad_unpool_index,  # a fault check: stays real (known indices)
)

_SCALAR_SOURCES = ("ra", "rb", "rs")
_BRANCHES = ("beq", "bne", "blt", "bge")
_EXP_READERS = {"rq": ("eout", "ein"), "rqm": ("eout", "ein"), "vcvt": ("eout", "ein"),
                "vexp": ("ea",), "vnormrow": ("eout",), "vlazy": ("et", "ea"),
                "vrsqrt": ("eout", "ein"),
                "efit": ("ein",), "eadd": ("ea", "eb"), "eaddi": ("ea",)}


def _operand_regs(mn: str, o: dict[str, int], regs: list[str]) -> list[str]:
    """The registers whose values decide an instruction's costs or faults. vqstep: not its
    destinations (r[rd] is read, for its sign, only with min=1); its constant r[rc] is (a
    negative one faults)."""
    if mn == "vqstep":
        return [f for f in regs if f != "rr" and (f != "rd" or o["combine"])]
    return regs


def _strided(buf: np.ndarray, base: int, rows: int, nbytes: int, stride: int) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(buf[base:], shape=(rows, nbytes),
                                           strides=(stride, 1), writeable=True)


class CountOnlyMachine(Machine):
    """A :class:`Machine` that counts instead of computing (see the module docstring).

    After ``run`` every counter except :data:`UNCOUNTED` equals a full run's, per pc; memory
    the rules call unknown holds stale values, so ``digest()`` is not comparable."""

    count_only = True

    def __init__(self, cfg: Config, program: Program) -> None:
        super().__init__(cfg, program, datapath="reference", fuse=False)
        self.dp = NULL_DATAPATH  # type: ignore[assignment]
        self.t_dram = np.zeros(self.dram.size, dtype=bool)  # True = unknown
        self.t_spad = np.zeros(self.spad.size, dtype=bool)
        self.t_acc = np.zeros(self.acc.size, dtype=bool)
        self.rt = [False] * 32
        self.et = [False] * 16
        self.t_rng = False
        names = {pc: name for name, pc in program.labels.items()}
        self.decoded = [(self._wrap(h, ops, ins, names), ops, ins)
                        for h, ops, ins in self.decoded]
        self.decoded_fused = list(self.decoded)

    def load_dram(self, addr: int, data: bytes | np.ndarray) -> None:
        """Host data is known."""
        super().load_dram(addr, data)
        n = len(data) if isinstance(data, bytes) else data.nbytes
        self.t_dram[addr : addr + n] = False

    # ------------------------------------------------------------------ rules
    def _refuse(self, why: str, ins: Instr, ops: dict[str, int], names) -> CountOnlyError:
        return CountOnlyError(why, self.pc, format_instruction(ins, ops, names))

    def _wrap(self, handler: Handler, ops: dict[str, int], ins: Instr, names) -> Handler:
        mn = ins.mnemonic
        kinds = {f.name: f.kind for f in ins.fields}
        regs = [n for n, k in kinds.items() if k == "reg"]
        m = self

        def refuse(why: str) -> CountOnlyError:
            return m._refuse(why, ins, ops, names)

        def need_regs(fields: list[str], what: str) -> None:
            for f in fields:
                if m.rt[ops[f]]:
                    raise refuse(f"the {what} register r{ops[f]} ({f}) holds a value "
                                 "computed from data")

        def need_exps() -> None:
            readers = _EXP_READERS.get(mn, ())
            if mn == "vqstep":  # mode=var faults when e[ec] and e[ea] are far apart
                readers = ("ea", "ec") if ops["mode"] == 1 else ()
            for f in readers:
                if m.et[ops[f]]:
                    dither = mn in ("rq", "rqm", "vcvt") and ops["rnd"] >= 2
                    raise refuse(f"exponent e{ops[f]} ({f}) was picked from data (efit), and "
                                 f"{mn} checks its range" + (" and draws dither by its shift"
                                                             if dither else ""))

        post: Callable[[], None] | None = None
        pre: Callable[[], None] | None = None
        if mn in _BRANCHES:
            def pre() -> None:
                need_regs(["ra", "rb"], "branch")
        elif ins.unit in ("dma", "matrix", "vector"):
            def pre() -> None:
                need_regs(_operand_regs(mn, ops, regs), "operand")
                need_exps()
                if mn == "gemm":
                    m._check_skip_operands(ops, refuse)
                elif mn == "conv":
                    m._check_conv_skip_operands(ops, refuse)
                elif mn == "vunpool" and ops["mode"] == 0:
                    g = m._geometry(ops)
                    a = m.r[ops["ri"]]
                    if 0 <= a and m.t_spad[a : a + g.m * g.c].any():
                        raise refuse("vunpool mode=max reads indices the datapath computed: "
                                     "whether one is outside its window (a fault) depends "
                                     "on their values")
                elif mn == "efit":
                    e, bits = m.e[ops["ein"]], 8 * ELEM_BYTES[ops["dt"]]
                    if not (EXP_MIN <= e - (bits - 1) and e + 32 - (bits - 1) <= EXP_MAX):
                        raise refuse("the exponent efit picks from data could leave the "
                                     "32-bit range")
            post = m._destination_rule(mn, ops)
        elif mn in ("ldw", "stw", "accrd"):
            def pre() -> None:
                need_regs(["racc" if mn == "accrd" else "ra"], "address")
        elif mn in ("eadd", "eaddi"):
            pre = need_exps
        elif mn == "esetr":
            def pre() -> None:
                need_regs(["ra"], "exponent source")
        if mn not in _BRANCHES and ins.unit not in ("dma", "matrix", "vector"):
            post = m._scalar_rule(mn, ops)
        if post is None:
            post = _noop
        if pre is None:
            pre = _noop

        def wrapped(st, o):
            pre()
            before = m._before(mn, ops)
            nxt = handler(st, o)
            post() if before is None else post(before)  # type: ignore[call-arg]
            return nxt

        return wrapped

    def _before(self, mn: str, o: dict[str, int]):
        """Taint read before the instruction runs (its destination may be its source)."""
        r = self.r
        if mn == "ldw":
            a = r[o["ra"]] + o["imm"]
            return bool(self.t_dram[max(a, 0) : a + 4].any())
        if mn == "stw":
            return r[o["ra"]] + o["imm"]
        if mn == "accrd":
            a = r[o["racc"]]
            return bool(self.t_acc[a]) if 0 <= a < self.t_acc.size else False
        return None

    def _scalar_rule(self, mn: str, o: dict[str, int]) -> Callable[..., None]:
        rt, et = self.rt, self.et

        def set_rd(v: bool) -> None:
            if o["rd"]:
                rt[o["rd"]] = v

        if mn == "li":
            return lambda: set_rd(False)
        if mn == "lih":
            return lambda: set_rd(rt[o["rd"]])
        if mn == "addi":
            return lambda: set_rd(rt[o["ra"]])
        if "rd" in o and "ra" in o and "rb" in o:  # register-register arithmetic
            return lambda: set_rd(rt[o["ra"]] or rt[o["rb"]])
        if mn == "flags":
            return lambda: set_rd(True)
        if mn in ("ldw", "accrd"):
            return lambda before: set_rd(before)
        if mn == "stw":
            def stw(addr: int) -> None:
                self.t_dram[addr : addr + 4] = rt[o["rs"]]
            return stw
        if mn in ("eset", "eadd", "eaddi", "esetr"):
            def clear() -> None:
                et[o["ed"]] = False
            return clear
        if mn == "emv":
            return lambda: set_rd(et[o["ea"]])
        if mn == "rngseed":
            def seed() -> None:
                self.t_rng = rt[o["ra"]]
            return seed
        if mn == "rngctr":
            def ctr() -> None:
                self.t_rng = self.t_rng or rt[o["ra"]]
            return ctr
        if mn == "rngrd":
            return lambda: set_rd(self.t_rng)
        return _noop  # nop, halt, jmp, clrflags

    def _check_skip_operands(self, o: dict[str, int], refuse) -> None:
        r = self.r
        mm, kk, nn = r[o["rm"]], r[o["rk"]], r[o["rn"]]
        for flag, reg, rows, cols, dt, name in (("sa", "ra", mm, kk, "da", "A"),
                                                ("sb", "rb", kk, nn, "db", "B")):
            if not o[flag]:
                continue
            a, n = r[o[reg]], max(rows, 0) * max(cols, 0) * ELEM_BYTES[o[dt]]
            if n and 0 <= a and self.t_spad[a : a + n].any():
                raise refuse(f"zero-skipping on {name} ({flag}=1), whose values come from the "
                             "datapath: skipped MACs and saved cycles depend on its zeros")

    def _geometry(self, o: dict[str, int]):
        from emulator.geometry import unpack

        return unpack(*(self.r[o[n]] for n in ("rsz", "rhw", "rkw", "rpf")))

    def _check_conv_skip_operands(self, o: dict[str, int], refuse) -> None:
        from emulator.geometry import CONV_DGRAD, CONV_FWD

        if not (o["sa"] or o["sb"]):
            return
        g = self._geometry(o)
        # operands as the conv semantics read them: fwd X, W[K,F]; wgrad X, dZ[M,F];
        # dgrad dZ[M,F], W[K,F]
        a_n = g.m * g.f if o["mode"] == CONV_DGRAD else g.inputs
        b_n = (g.k if o["mode"] in (CONV_FWD, CONV_DGRAD) else g.m) * g.f
        for flag, reg, n, dt, name in (("sa", "rx", a_n, "da", "the input (A)"),
                                       ("sb", "rw", b_n, "db", "the second operand (B)")):
            a, nb = self.r[o[reg]], n * ELEM_BYTES[o[dt]]
            if o[flag] and nb and 0 <= a and self.t_spad[a : a + nb].any():
                raise refuse(f"zero-skipping on {name} ({flag}=1), whose values come from the "
                             "datapath: skipped MACs and saved cycles depend on its zeros")

    def _destination_rule(self, mn: str, o: dict[str, int]) -> Callable[[], None]:
        """After a DMA, matrix or vector instruction: copy taint (DMA) or mark its outputs
        unknown (everything the datapath computes)."""
        r, sp, acc, dram = self.r, self.t_spad, self.t_acc, self.t_dram

        def span(arr: np.ndarray, addr_field: str, n: int) -> None:
            a = r[o[addr_field]]
            arr[a : a + n] = True

        def elem(dt: str = "dt") -> int:
            return ELEM_BYTES[o[dt]]

        if mn in ("dmald", "dmast"):
            def dma() -> None:
                rows, nb = r[o["rrows"]], r[o["rbytes"]]
                if rows and nb:
                    d = _strided(dram, r[o["rdram"]], rows, nb, r[o["rdstride"]])
                    s = _strided(sp, r[o["rsp"]], rows, nb, r[o["rsstride"]])
                    if mn == "dmald":
                        s[...] = d
                    else:
                        d[...] = s
            return dma
        if mn in ("dmaldacc", "dmastacc"):
            def dma_acc() -> None:
                rows, cols = r[o["rrows"]], r[o["rcols"]]
                if rows and cols:
                    d = _strided(dram, r[o["rdram"]], rows, 4 * cols, r[o["rdstride"]])
                    a = acc[r[o["racc"]] : r[o["racc"]] + rows * cols].reshape(rows, cols)
                    if mn == "dmaldacc":
                        a[...] = d.reshape(rows, cols, 4).any(axis=2)
                    else:
                        d[...] = np.repeat(a, 4, axis=1)
            return dma_acc
        if mn == "gemm":
            return lambda: span(acc, "rc", max(r[o["rm"]], 0) * max(r[o["rn"]], 0))
        if mn in ("rq", "rqm"):
            return lambda: span(sp, "rd", r[o["rn"]] * elem())
        if mn == "vcvt":
            return lambda: span(sp, "rd", r[o["rn"]] * elem("ddt"))
        if mn == "efit":
            def efit() -> None:
                self.et[o["ed"]] = True
            return efit
        if mn == "vrmax":
            return lambda: span(sp, "rd", r[o["rrows"]] * elem())
        if mn == "vrsum":
            return lambda: span(acc, "racc", r[o["rrows"]])
        if mn == "vtoacc":
            return lambda: span(acc, "racc", r[o["rn"]])
        if mn in ("vsubrow", "vnormrow"):
            return lambda: span(sp, "rd", r[o["rrows"]] * r[o["rcols"]] * elem())
        if mn == "vexp":
            return lambda: span(sp, "rd", 2 * r[o["rn"]])
        if mn == "vlazy":
            def lazy() -> None:
                span(sp, "rt", r[o["rn"]])
                span(sp, "ra", 2 * r[o["rn"]])
            return lazy
        if mn == "vrsqrt":
            return lambda: span(sp, "rd", 2 * r[o["rn"]])
        if mn == "vwmul":
            return lambda: span(acc, "racc", r[o["rn"]])
        if mn == "vbias":
            return lambda: span(acc, "racc", r[o["rrows"]] * r[o["rcols"]])
        if mn == "vtopk":
            return lambda: span(sp, "rd", r[o["rrows"]] * r[o["rcols"]] * elem())
        if mn == "vqstep":
            def qstep() -> None:
                for f in ("rd", "rr"):
                    if o[f]:
                        self.rt[o[f]] = True
                self.et[o["ed"]] = True
            return qstep
        if mn in ("conv", "vmaxpool", "vsumpool", "vunpool"):
            def geo() -> None:
                from emulator.geometry import CONV_DGRAD, CONV_FWD

                g = self._geometry(o)
                if mn == "conv":
                    n = (g.inputs if o["mode"] == CONV_DGRAD
                         else (g.m if o["mode"] == CONV_FWD else g.k) * g.f)
                    span(acc, "rc", n)
                elif mn == "vmaxpool":
                    span(sp, "rd", g.m * g.c * elem())
                    if o["idx"]:
                        span(sp, "ri", g.m * g.c)
                elif mn == "vsumpool":
                    span(acc, "racc", g.m * g.c)
                else:
                    span(acc, "racc", g.inputs)
            return geo
        if "rd" in o and "rn" in o and "dt" in o:  # elementwise ALU ops
            return lambda: span(sp, "rd", r[o["rn"]] * elem())
        raise AssertionError(f"count-only mode has no rule for {mn}")  # pragma: no cover


def _noop(*_a: object) -> None:
    return None
