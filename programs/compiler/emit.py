"""What every part of the compiler emits with: register conventions, the assembly builder that
loads constants into temporaries, the bump allocators of the memory plan and small helpers for
the requantizer instructions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from emulator.errors import ConfigError

# scalar registers
R_B, R_NB, R_MU, R_MODE, R_XB, R_TB, R_OB, R_RB, R_T0, R_T1 = 20, 21, 22, 23, 24, 25, 26, 27, 28, 29
TEMPS = tuple(range(1, 20))  # r1..r19: constants and addresses, reused across ops
R_X0, R_X1 = 30, 31  # scratch of multi-instruction sequences (dither counter, exponent scans)
R_CTR = R_X0

# exponent registers with a fixed role (e1..e10 hold activation and parameter exponents, see
# programs/compiler/exps.py)
E_S, E_G, E_DZ, E_T0, E_T1 = 11, 12, 13, 14, 15
E_LZ = E_S  # the logits' exponent is dead during the update: reused for the fine grid
E_X = 0  # scratch for short-lived exponent arithmetic (average-pooling scales)
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

    def pack(self, items: list[tuple[str, int, int, int]]) -> dict[str, int]:
        """Place buffers that are live only during [t0, t1] (inclusive) of a training step: two
        may share addresses when their live ranges do not meet. Largest first, each at the
        lowest aligned address free for its whole range; the block ends ``top``."""
        base = self.top
        placed: list[tuple[int, int, int, int]] = []  # (addr, end, t0, t1)
        out: dict[str, int] = {}
        for name, size, t0, t1 in sorted(items, key=lambda x: (-x[1], x[0])):
            size_al = -(-max(size, 1) // self.align) * self.align
            busy = sorted((a, e) for a, e, s0, s1 in placed if s0 <= t1 and t0 <= s1)
            addr = base
            for a, e in busy:
                if addr + size_al <= a:
                    break
                addr = max(addr, e)
            placed.append((addr, addr + size_al, t0, t1))
            out[name] = addr
            self.regions.append(Region(name, addr, size))
        self.top = max([base] + [e for _, e, _, _ in placed])
        return out

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


class Reg(int):
    """An operand that is already a register number (not a constant to load)."""


class Asm:
    """Assembly text builder that loads constants into temporaries, reusing known values."""

    def __init__(self, targets: set[str] | None = None) -> None:
        self.lines: list[str] = []
        self.known: dict[int, int] = {}  # temp register -> value it holds
        self.targets = targets  # labels some branch jumps to; None: assume every label
        self.temps = TEMPS  # the temporaries constants may take (fewer when some are reserved)

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
        least recently used temporary (``known`` is kept in use order). Values in
        [2**31, 2**32) (geometry registers) take ``li`` of the sign-extended word and ``lih 0``."""
        for r, v in self.known.items():
            if v == value:  # reading one register for several operands is fine
                del self.known[r]
                self.known[r] = v  # most recently used
                return r
        free = [r for r in self.temps if r not in self.known and r not in avoid]
        if free:
            r = free[0]
        else:
            r = next(r for r in self.known if r not in avoid)
            del self.known[r]
        if 2**31 <= value < 2**32:
            self.lines.append(f"    li r{r}, {value - 2**32}")
            self.lines.append(f"    lih r{r}, 0")
        else:
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


IMM_LIMIT = 1 << 23  # ldw/stw take a signed 24-bit offset


def ldw_abs(asm: Asm, rd: int, addr: int) -> None:
    """r[rd] = the DRAM word at ``addr`` (through rd itself when addr is past the offset's
    range)."""
    if addr < IMM_LIMIT:
        asm.raw(f"ldw r{rd}, r0, {addr}")
    else:
        asm.raw(f"li r{rd}, {addr}")
        asm.raw(f"ldw r{rd}, r{rd}, 0")


def stw_abs(asm: Asm, rs: int, addr: int, tmp: int) -> None:
    """The DRAM word at ``addr`` = r[rs] (``tmp`` holds a far address)."""
    if addr < IMM_LIMIT:
        asm.raw(f"stw r{rs}, r0, {addr}")
    else:
        asm.raw(f"li r{tmp}, {addr}")
        asm.raw(f"stw r{rs}, r{tmp}, 0")


def efit(asm: Asm, ed: int, acc_addr: int, count: int, ein: int, dt: str) -> None:
    r1 = asm.const(acc_addr, set())
    r2 = asm.const(count, {r1})
    asm.raw(f"efit e{ed}, r{r1}, r{r2}, e{ein}, dt={dt}")


def rq(asm: Asm, dst: int, src: int, count: int, eout: int, ein: int, rnd: str, dt: str,
       relu: int = 0, mnemonic: str = "rq", mul: int | None = None) -> None:
    keep = set() if mul is None else {mul}  # the multiplier's register stays loaded
    r1 = asm.const(dst, keep)
    r2 = asm.const(src, keep | {r1})
    r3 = asm.const(count, keep | {r1, r2})
    extra = f", r{mul}" if mul is not None else ""
    kw = f", rnd={rnd}, dt={dt}" + (", relu=1" if relu else "")
    asm.raw(f"{mnemonic} r{r1}, r{r2}, r{r3}{extra}, e{eout}, e{ein}{kw}")


def vcvt(asm: Asm, dst: int, src: int, count: int, eout: int, ein: int, rnd: str, sdt: str,
         ddt: str) -> None:
    r1 = asm.const(dst, set())
    r2 = asm.const(src, {r1})
    r3 = asm.const(count, {r1, r2})
    asm.raw(f"vcvt r{r1}, r{r2}, r{r3}, e{eout}, e{ein}, rnd={rnd}, sdt={sdt}, ddt={ddt}")


def clamp_exp_min(asm: Asm, ereg: int, lo: int, tag: str) -> None:
    """e[ereg] = max(e[ereg], lo) with scalar code (the vexp unit needs e >= -24)."""
    asm.raw(f"emv r{R_T0}, e{ereg}")
    asm.raw(f"li r{R_T1}, {lo}")
    asm.raw(f"bge r{R_T0}, r{R_T1}, {tag}.ok")
    asm.raw(f"esetr e{ereg}, r{R_T1}")
    asm.label(f"{tag}.ok")


_BRANCH = re.compile(r"^\s*(?:beq|bne|blt|bge|jmp)\b.*?([A-Za-z_][\w.]*)\s*$")


def branch_targets(text: str) -> set[str]:
    """Labels named as the target of a branch or jump in assembly text."""
    return {m.group(1) for line in text.splitlines() if (m := _BRANCH.match(line))}
