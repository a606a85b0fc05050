"""Where the exponents of activations and parameters live while the firmware runs.

Every tensor is ``(integers, exponent)``. The fixed-role registers (``E_S, E_G, E_DZ, E_T0,
E_T1`` = e11..e15 and the scratch e0) are not assigned here; e1..e10 are:

* **register mode** (at most 10 activation and parameter exponents): activation exponents
  ``a<pos>`` (``a0`` is the input's) from e1 in layer order, parameter exponents (weights
  ``w<pos>``, then biases ``b<pos>``) from e6 (or right after the activations when there are
  more than 5 of either), the constant ones set once at the program start;
* **memory mode** (deeper networks): the parameter exponents are constants, written into a
  scratch register with ``eset`` where an instruction needs them; each dynamic activation
  exponent has a 32-bit DRAM word (``stw`` after ``efit`` picked it, ``ldw`` + ``esetr`` where a
  later layer needs it). Depth is then limited by nothing but memory.

Max pooling and flatten keep their input's exponent (``alias``).

With ``bits.weight_exponent: dynamic`` the parameter exponents are state the chip changes
(``dyn``): each has a 32-bit word in the parameter area of DRAM (saved, restored and checkpointed
with the parameters). Register mode loads them into their registers with the weights
(:meth:`load_dyn`) and stores them back at the end (:meth:`store_dyn`); memory mode reads and
writes the word where it is used. ``words`` are further scratch words in DRAM (both modes).
"""

from __future__ import annotations

from programs.compiler.emit import R_T0, R_T1, Asm, ldw_abs, stw_abs

# memory-mode scratch registers
X_IN, X_OUT, X_W, X_B, X_UP = 1, 2, 3, 4, 5
FIRST_ACT_REG, FIRST_PARAM_REG, SLOTS = 1, 6, 5


class Exps:
    def __init__(self, acts: list[str], fixed: dict[str, int], alias: dict[str, str],
                 dram_base: int, dyn: dict[str, int] | None = None,
                 words: list[str] | None = None) -> None:
        """``acts``: activation exponent names in layer order, ``a0`` first (its value is in
        ``fixed``: the input grid); ``fixed``: the constant exponents (input, weights, biases)
        in preload order; ``alias``: names that share another's exponent; ``dyn``: parameter
        exponents the chip changes, with the DRAM address of each one's word; ``words``:
        scratch words placed after the activation words."""
        self.acts, self.fixed, self.alias = acts, fixed, alias
        self.dyn = dict(dyn or {})
        params = [n for n in fixed if n != "a0"] + list(self.dyn)
        self.register_mode = len(acts) + len(params) <= 2 * SLOTS
        self.regs: dict[str, int] = {}
        self.mem: dict[str, int] = {}
        if self.register_mode:
            first = (FIRST_PARAM_REG if len(acts) <= SLOTS and len(params) <= SLOTS
                     else FIRST_ACT_REG + len(acts))
            for i, n in enumerate(acts):
                self.regs[n] = FIRST_ACT_REG + i
            for i, n in enumerate(params):
                self.regs[n] = first + i
        else:
            for i, n in enumerate(a for a in acts if a not in fixed):
                self.mem[n] = dram_base + 4 * i
            self.mem.update(self.dyn)
        n_act = len([a for a in self.mem if a not in self.dyn])
        for i, n in enumerate(words or []):
            self.mem[n] = dram_base + 4 * (n_act + i)
        self._words = n_act + len(words or [])

    @property
    def dram_bytes(self) -> int:
        """Bytes of the exponent words after ``dram_base`` (the dynamic parameters' words live
        with the parameters)."""
        return 4 * self._words

    def load_dyn(self, asm: Asm) -> None:
        """Register mode: read the dynamic parameter exponents from their DRAM words."""
        if self.register_mode:
            for n, addr in self.dyn.items():
                ldw_abs(asm, R_T0, addr)
                asm.raw(f"esetr e{self.regs[n]}, r{R_T0}")

    def store_dyn(self, asm: Asm) -> None:
        """Register mode: write the dynamic parameter exponents back to their words."""
        if self.register_mode:
            for n, addr in self.dyn.items():
                asm.raw(f"emv r{R_T0}, e{self.regs[n]}")
                stw_abs(asm, R_T0, addr, R_T1)

    def bump(self, asm: Asm, name: str, delta: int) -> None:
        """Dynamic parameter exponent ``name`` += delta (in its register or its word)."""
        if name in self.regs:
            asm.raw(f"eaddi e{self.regs[name]}, e{self.regs[name]}, {delta}")
        else:
            ldw_abs(asm, R_T0, self.mem[name])
            asm.raw(f"addi r{R_T0}, r{R_T0}, {delta}")
            stw_abs(asm, R_T0, self.mem[name], R_T1)

    def save(self, asm: Asm, name: str, reg: int) -> None:
        """Store exponent register ``reg`` into the scratch word ``name``."""
        asm.raw(f"emv r{R_T0}, e{reg}")
        stw_abs(asm, R_T0, self.mem[name], R_T1)

    def _name(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def preload(self, asm: Asm) -> None:
        """Register mode: set every constant exponent once at the start."""
        if self.register_mode:
            for n, v in self.fixed.items():
                asm.raw(f"eset e{self.regs[n]}, {v}")

    def load(self, asm: Asm, name: str, scratch: int) -> int:
        """A register holding exponent ``name`` now (memory mode: loaded into ``scratch``)."""
        name = self._name(name)
        if name in self.regs:
            return self.regs[name]
        if name in self.fixed:
            asm.raw(f"eset e{scratch}, {self.fixed[name]}")
        else:
            ldw_abs(asm, R_T0, self.mem[name])
            asm.raw(f"esetr e{scratch}, r{R_T0}")
        return scratch

    def add(self, asm: Asm, dst: int, a: str | int, b: str | int, scratch: int = X_IN) -> None:
        """e[dst] = exponent a + exponent b; each is a name or an exponent register number."""
        vals: list[int | str] = []  # register numbers, or "#v" for a constant
        for x in (a, b):
            if isinstance(x, str):
                n = self._name(x)
                if n in self.regs:
                    vals.append(self.regs[n])
                elif n in self.fixed:
                    vals.append(f"#{self.fixed[n]}")
                else:
                    vals.append(self.load(asm, n, scratch))
            else:
                vals.append(x)
        p, q = vals
        if isinstance(p, str) and isinstance(q, str):
            asm.raw(f"eset e{dst}, {int(p[1:]) + int(q[1:])}")
        elif isinstance(p, str) or isinstance(q, str):
            reg, imm = (q, p) if isinstance(p, str) else (p, q)
            asm.raw(f"eaddi e{dst}, e{reg}, {int(str(imm)[1:])}")
        else:
            asm.raw(f"eadd e{dst}, e{p}, e{q}")

    def addi(self, asm: Asm, dst: int, name: str, imm: int) -> None:
        """e[dst] = exponent ``name`` + imm."""
        n = self._name(name)
        if n in self.regs:
            asm.raw(f"eaddi e{dst}, e{self.regs[n]}, {imm}")
        elif n in self.fixed:
            asm.raw(f"eset e{dst}, {self.fixed[n] + imm}")
        else:
            asm.raw(f"eaddi e{dst}, e{self.load(asm, n, dst)}, {imm}")

    def target(self, name: str) -> int:
        """The register to compute dynamic exponent ``name`` into (then :meth:`commit`)."""
        return self.regs.get(self._name(name), X_OUT)

    def commit(self, asm: Asm, name: str) -> None:
        """Memory mode: store the exponent just computed into :meth:`target` to its word."""
        n = self._name(name)
        if n in self.mem:
            asm.raw(f"emv r{R_T0}, e{X_OUT}")
            stw_abs(asm, R_T0, self.mem[n], R_T1)
