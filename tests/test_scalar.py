"""The compiled scalar interpreter (emulator/scalar.py) against the Python handlers and the
spec's pseudo-code: values on edge operands, counters, faults, budgets, break points, the
wall-time budget, decoding and its memory, with numba's JIT on and off."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from emulator import decoding, scalar
from emulator.config import config_from_dict
from emulator.errors import BudgetExceeded, LpemuError
from emulator.machine import Machine
from isa.asm import assemble
from isa.encoding import decode, encode
from isa.spec import BY_MNEMONIC, TABLE

ROOT = Path(__file__).resolve().parents[1]
MASK = (1 << 64) - 1
SMALL = {"memory": {"dram_bytes": 4096, "scratchpad_bytes": 1024},
         "accumulator": {"entries": 16}, "dma": {"latency_cycles": 3}}
EDGE = [0, 1, -1, 2, 63, 64, 65, 2**31 - 1, -(2**31), 2**32, 2**62, 2**63 - 1, -(2**63),
        0x0123456789ABCDEF, -7]


def s64(v: int) -> int:
    v &= MASK
    return v - (1 << 64) if v >> 63 else v


def li64(reg: int, value: int) -> list[str]:
    value = s64(value)
    lo = value & 0xFFFFFFFF
    lo_s = lo - (1 << 32) if lo >> 31 else lo
    return [f"li r{reg}, {lo_s}", f"lih r{reg}, {(value >> 32) & 0xFFFFFFFF}"]


def machine(src: str, mode: str, budget: dict | None = None, datapath: str = "fast") -> Machine:
    cfg = config_from_dict(dict(SMALL, budget=budget or {}))
    m = Machine(cfg, assemble(src, "t.s"), datapath=datapath, scalar=mode)
    m.dram[:] = np.arange(m.dram.size, dtype=np.uint32).astype(np.uint8) * np.uint8(37)
    m.acc[:] = np.arange(m.acc.size, dtype=np.int32) * -123457
    return m


def outcome(m: Machine, **run) -> tuple:
    fault = None
    try:
        m.run(**run)
    except LpemuError as e:
        fault = (type(e).__name__, getattr(e, "pc", None), str(e))
    return (list(m.r), list(m.e), list(m.rng), m.flags, m.pc, m.halted, m.steps, m.cycles,
            m.counts.tobytes(), m.digest(), fault)


def both(src: str, **run) -> tuple:
    """The outcome with the compiled interpreter, checked equal to the Python handlers' (on
    the fast and the reference datapath)."""
    got = outcome(machine(src, "compiled"), **run)
    assert got == outcome(machine(src, "python"), **run)
    assert got == outcome(machine(src, "python", datapath="reference"), **run)
    return got


# ------------------------------------------------------------------ values: the spec's oracle
ALU = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
    "sll": lambda a, b: a << (b & 63), "sra": lambda a, b: a >> (b & 63),
    "srl": lambda a, b: (a & MASK) >> (b & 63), "slt": lambda a, b: int(a < b),
}


@pytest.mark.parametrize("op", sorted(ALU))
def test_alu_ops_on_every_edge_pair(op):
    lines, want = ["li r5, 32"], []
    for i, a in enumerate(EDGE):
        for j, b in enumerate(EDGE):
            k = 8 * (i * len(EDGE) + j)  # both halves of each result go to DRAM
            lines += li64(1, a) + li64(2, b) + [f"{op} r3, r1, r2", f"stw r3, r0, {k}",
                                                "sra r4, r3, r5", f"stw r4, r0, {k + 4}"]
            want.append(s64(ALU[op](a, b)))
    src = "\n".join(lines) + "\nhalt\n"
    assert both(src)[-1] is None
    m = machine(src, "compiled")
    m.run()
    w = np.frombuffer(m.dram[: 8 * len(want)].tobytes(), "<u4").tolist()
    assert [s64(w[2 * i] | (w[2 * i + 1] << 32)) for i in range(len(want))] == want


@pytest.mark.parametrize("v", EDGE)
def test_immediate_forms(v):
    imm = ((v + (1 << 31)) % (1 << 32)) - (1 << 31)
    uimm = v & 0xFFFFFFFF
    src = "\n".join(li64(1, v) + [f"addi r2, r1, {imm}", f"lih r3, {uimm}", "li r4, -1",
                                  f"lih r4, {uimm}", f"addi r0, r1, {imm}", "halt"])
    got = both(src)
    r = got[0]
    assert r[2] == s64(v + imm) and r[3] == s64(uimm << 32) and r[0] == 0
    assert r[4] == s64((uimm << 32) | 0xFFFFFFFF)


def test_exponents_rng_flags_and_memory_words():
    src = """
        eset e1, -32768
        eaddi e2, e1, 32767
        eadd e3, e1, e2
        li r1, 2147483647
        esetr e4, r1
        emv r2, e4
        emv r0, e4
        li r3, -5
        lih r3, 4294967295
        rngseed r3
        li r4, 77
        rngctr r4
        rngrd r5, sel=seed
        rngrd r6, sel=counter
        flags r7
        clrflags
        flags r8
        li r9, 4
        accrd r10, r9
        ldw r11, r9, 4
        stw r3, r9, 100
        ldw r12, r9, 100
        nop
        halt
    """
    m0 = machine(src, "compiled")
    m0.flags = 6
    got = outcome(m0)
    m1 = machine(src, "python")
    m1.flags = 6
    assert got == outcome(m1)
    r, e, rng = got[0], got[1], got[2]
    assert e[1:4] == [-32768, -1, -32769] and e[4] == 2**31 - 1 and r[2] == 2**31 - 1
    assert rng == [s64(-5) & MASK, 77] and r[5] == -5 and r[6] == 77
    assert r[7] == 6 and r[8] == 0 and got[3] == 0
    assert r[10] == 4 * -123457
    word = bytes((x * 37) & 0xFF for x in range(8, 12))
    assert r[11] == int.from_bytes(word, "little", signed=True) and r[12] == -5
    c = np.frombuffer(got[8], np.int64).reshape(-1, m0.counts.shape[1])
    assert c[:, 0].sum() == got[6] == 24  # one per instruction, the halt included
    assert got[7] == 24 - 3 + 3 * 4  # ldw/stw cost latency + 1 = 4 cycles each


@pytest.mark.parametrize("src", [
    "li r1, 4093\nldw r2, r1, 0\nhalt",  # the word crosses DRAM's end
    "li r1, -1\nldw r2, r1, 0\nhalt",
    "li r1, 0\nlih r1, 1073741824\nldw r2, r1, 4\nhalt",  # 2**62 + 4
    "li r1, 0\nlih r1, 2147483648\nstw r2, r1, -4\nhalt",  # -2**63 - 4
    "li r1, 4096\nstw r1, r1, -3\nhalt",
    "li r1, 16\naccrd r2, r1\nhalt",
    "li r1, -1\naccrd r2, r1\nhalt",
    "li r1, 2147483647\nesetr e1, r1\neaddi e2, e1, 1\nhalt",
    "eset e1, -32768\nli r1, -2147483648\nesetr e2, r1\neadd e3, e1, e2\nhalt",
    "li r1, 0\nlih r1, 1\nesetr e1, r1\nhalt",
    "jmp 99\n",
    "li r1, 1\nli r2, 1\nbeq r1, r2, 100\nhalt",
])
def test_faults_name_the_same_pc_and_leave_the_state(src):
    got = both(src)
    assert got[-1] is not None and got[-1][1] == got[4]
    assert not got[5]


LOOP = """
    li r1, 0
    li r2, 40
    li r9, 8
top:
    addi r1, r1, 1
    ldw r3, r9, 0
    mul r4, r1, r1
    eaddi e1, e1, 1
    blt r1, r2, top
    li r5, 7
    vrelu r9, r9, r0
    jmp tail
    nop
tail:
    halt
"""


@pytest.mark.parametrize("budget", [{"max_steps": s} for s in (1, 2, 3, 4, 5, 7, 9, 50, 203,
                                                                205, 206)]
                         + [{"max_cycles": c} for c in (1, 3, 4, 5, 6, 7, 8, 9, 60, 301)])
def test_budgets_stop_at_the_same_instruction(budget):
    got = both(LOOP, **budget)
    assert got[-1] is not None and got[-1][0] == BudgetExceeded.__name__


@pytest.mark.parametrize("label,after", [("top", 1), ("top", 3), ("top", 40), ("tail", 1),
                                         ("top", 41)])
def test_break_points_and_continuing(label, after):
    outs = []
    for mode in ("compiled", "python"):
        m = machine(LOOP, mode)
        seq = []
        while not m.halted:
            seq.append(outcome(m, break_pc=m.program.labels[label], break_after=after))
        outs.append(seq)
    assert outs[0] == outs[1] and len(outs[0]) >= 1


def test_hot_marks():
    coarse = "gemm r0, r0, r0, r0, r0, r0"
    src = (f"li r1, 1\nli r2, 2\nli r3, 3\nli r4, 4\n{coarse}\nli r5, 5\n"
           f"{coarse}\nli r6, 6\nbne r6, r0, 9\nhalt\n")
    prog = decoding.decode_program(assemble(src, "h.s").words)
    hot = decoding.hot_marks(prog, 4).tolist()
    # a 4-long run, its tail (shorter), a coarse pc, a lone li, a run ending in a branch
    assert hot == [True, False, False, False, False, False, False, True, True, True]
    assert decoding.hot_marks(prog, 1).tolist() == [k != 0 for k in prog[:, 0].tolist()]


def test_decode_program_matches_decode_for_every_instruction():
    rng = np.random.default_rng(5)
    words = []
    for ins in TABLE:
        for _ in range(40):
            ops = {}
            for f in ins.fields:
                if f.kind == "simm":
                    ops[f.name] = int(rng.integers(-(1 << (f.width - 1)), 1 << (f.width - 1)))
                elif f.kind == "enum":
                    ops[f.name] = int(rng.integers(0, len(f.choices)))
                else:
                    ops[f.name] = int(rng.integers(0, 1 << f.width))
            words.append(encode(ins, ops))
    prog = decoding.decode_program(words)
    for w, row in zip(words, prog.tolist(), strict=True):
        ins, ops = decode(w)
        assert row[4] == 0  # the cost-row column, the machine's to fill
        if ins.mnemonic in decoding.PACK:
            regs, eregs, opts = decoding.PACK[ins.mnemonic]
            # the packing names every field of the instruction exactly once
            assert sorted(regs + eregs + opts) == sorted(f.name for f in ins.fields)
            assert row[:4] == [decoding.KIND[ins.mnemonic],
                               sum(ops[f] << (5 * i) for i, f in enumerate(regs)),
                               sum(ops[f] << (4 * i) for i, f in enumerate(eregs)),
                               sum(ops[f] << (4 * i) for i, f in enumerate(opts))]
        elif ins.mnemonic in decoding.FIELDS:
            cols = decoding.FIELDS[ins.mnemonic]
            assert row[0] == decoding.KIND[ins.mnemonic]
            packed = sum(ops[reg] << (5 * i) for i, reg in enumerate(decoding.DMA_REGS)) \
                if "*" in cols else None
            assert row[1:4] == [packed if c == "*" else ops[c] if c else 0 for c in cols]
        else:
            assert row == [0, 0, 0, 0, 0]
    for bad in (words[:3] + [0xFF << 56], words[:1] + [(BY_MNEMONIC["li"].opcode << 56)
                                                       | (1 << 50)]):
        with pytest.raises(ValueError) as a:
            decoding.decode_program(bad)
        with pytest.raises(ValueError) as b:
            decode(bad[-1])
        assert str(a.value) == str(b.value)


def test_decoded_program_costs_at_most_64_bytes_per_instruction():
    n = 100_000
    body = "\n".join(("li r1, 5", "addi r2, r1, 3", "vrelu r3, r4, r5", "eaddi e1, e1, 0")
                     * (n // 4))
    prog = assemble(body + "\nhalt\n", "big.s")
    cfg = config_from_dict(SMALL)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    m = Machine(cfg, prog)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    own = after - before - m.counts.nbytes - m.dram.nbytes - m.spad.nbytes - m.acc.nbytes
    assert own / len(prog) <= 64, own / len(prog)


def test_host_assigned_register_lists_are_used():
    m = machine("add r3, r1, r2\nrngrd r4, sel=counter\nhalt\n", "compiled")
    m.r = [0, 5, 6] + [0] * 29
    m.rng = [1, 2]
    m.run()
    assert m.r[3] == 11 and m.r[4] == 2 and m.r == [0, 5, 6, 11, 2] + [0] * 27


@pytest.mark.parametrize("mode", ["compiled", "python"])
def test_wall_time_budget_stops_a_runaway(mode):
    m = machine("top: jmp top\n", mode)
    with pytest.raises(BudgetExceeded, match="wall-time budget of 0.05 s"):
        m.run(max_steps=10**15, max_seconds=0.05)
    assert m.steps > 0 and m.pc == 0


def test_default_budgets_stop_a_runaway_and_are_documented():
    from emulator.config import Config

    b = Config().budget
    assert b.max_seconds > 0 and b.max_steps <= 10**9
    text = (ROOT / "configs" / "default.yaml").read_text()
    assert "max_seconds" in text and "max_seconds" in (ROOT / "README.md").read_text()


def test_planted_interpreter_bug_is_found_by_the_differential_tester(monkeypatch):
    from programs.verify import difftest

    real = scalar.run_scalar

    def planted(prog, kcost, ccost, rowof, r, *rest):  # corrupts r12 after the interpreter
        out = real(prog, kcost, ccost, rowof, r, *rest)
        if r[12] != 0:
            r[12] ^= 1
        return out

    monkeypatch.setattr(scalar, "run_scalar", planted)
    for seed in range(0, 200, 2):  # even seeds run the interpreter on the fast leg
        case = difftest.make_case(seed)
        if difftest.mismatch(case):
            div = difftest.first_divergence(case)
            assert div["step"] is not None
            return
    pytest.fail("the planted interpreter bug was never detected")


JIT_OFF_CHILD = """
import hashlib, json, sys
sys.path.insert(0, {root!r})
from tests.test_scalar import LOOP, ALU, EDGE, li64, machine, outcome
h = hashlib.sha256()
srcs = [LOOP] + ["\\n".join(li64(1, a) + li64(2, b) + [f"{{op}} r3, r1, r2", "halt"])
                 for op in sorted(ALU) for a in EDGE[::3] for b in EDGE[::2]]
for src in srcs:
    for run in ({{}}, {{"max_steps": 9}}, {{"max_cycles": 60}}):
        h.update(repr(outcome(machine(src, "compiled"), **run)).encode())
print(json.dumps({{"jit_disabled": __import__("numba").config.DISABLE_JIT, "h": h.hexdigest()}}))
"""


def test_interpreter_source_gives_the_same_results_with_the_jit_off():
    code = JIT_OFF_CHILD.format(root=str(ROOT))
    h = hashlib.sha256()
    srcs = [LOOP] + ["\n".join(li64(1, a) + li64(2, b) + [f"{op} r3, r1, r2", "halt"])
                     for op in sorted(ALU) for a in EDGE[::3] for b in EDGE[::2]]
    for src in srcs:
        for run in ({}, {"max_steps": 9}, {"max_cycles": 60}):
            h.update(repr(outcome(machine(src, "compiled"), **run)).encode())
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ans = json.loads(res.stdout.strip().splitlines()[-1])
    assert ans["jit_disabled"] and ans["h"] == h.hexdigest()


@pytest.mark.parametrize("op", ["dmald", "dmast"])
@pytest.mark.parametrize("rows,nbytes,dstride,sstride,dram,sp", [
    (1, 16, 16, 16, 8, 4), (3, 5, 5, 5, 100, 7), (3, 5, 9, 6, 1, 2), (4, 3, 0, 3, 0, 0),
    (4, 3, 3, 0, 0, 0), (0, 9, 0, 0, -5, -5), (7, 0, 0, 0, 9999, 9999), (2, 8, 7, 8, 0, 0),
    (2, 8, 8, 7, 0, 0), (1, 1, 0, 0, 4095, 1023), (1, 2, 0, 0, 4095, 0), (1, 2, 0, 0, 0, 1023),
    (2, 4, -4, 4, 64, 64), (-1, 4, 4, 4, 0, 0), (3, -2, 4, 4, 0, 0), (2, 4, 4096, 4, 0, 0),
    (2**40, 1, 1, 1, 0, 0), (3, 4, 2**62, 4, 0, 0), (1, 4, 0, 0, 2**63 - 1, 0),
])
def test_dma_in_the_interpreter(op, rows, nbytes, dstride, sstride, dram, sp):
    regs = "r1, r2" if op == "dmald" else "r2, r1"
    lines = li64(1, sp) + li64(2, dram) + li64(3, rows) + li64(4, nbytes) + li64(5, dstride) \
        + li64(6, sstride) + [f"{op} {regs}, r3, r4, r5, r6", "li r7, 1", "halt"]
    outs = []
    for mode in ("compiled", "python"):
        m = machine("\n".join(lines), mode)
        m.spad[:] = np.arange(m.spad.size, dtype=np.uint32).astype(np.uint8) * np.uint8(11)
        outs.append(outcome(m))
    assert outs[0] == outs[1]


def test_wall_time_budget_leaves_out_compile_time(monkeypatch):
    """Time numba spends compiling (a first run after an install) is not charged to the
    wall-time budget: here every clock check finds 0.1 s more compiling than before."""
    from emulator import tiering

    spent = [0.0]

    def compiling() -> float:
        spent[0] += 0.1
        return spent[0]

    monkeypatch.setattr(tiering, "compile_seconds", compiling)
    m = machine("li r1, 0\nli r2, 100000\ntop: addi r1, r1, 1\nblt r1, r2, top\nhalt\n",
                "python")
    m.run(max_seconds=0.05)  # runs far longer than 0.05 s of counted time would allow
    assert m.halted and m.r[1] == 100000


# ------------------------------------------------ gemm's per-pc plan never holds stale values
GEMM_LOOP = """
    li r1, 0            # A (M x K) at scratchpad 0
    li r2, 256          # B (K x N) at scratchpad 256
    li r3, 0            # C at accumulator 0
    li r4, 3            # M
    li r5, 8            # K
    li r6, 7            # N
    li r8, 0            # DRAM offset of A's next bytes
    li r9, 0            # outer pass
    li r10, 7           # outer passes
    li r11, 3           # rows of A
    li r12, 8           # bytes per row of A
    li r13, 56          # bytes of B
    li r15, 3
    li r20, 40
    li r21, 0
    li r22, 1
    li r23, 2
    li r24, 3
    li r25, 4
    gemm r20, r1, r2, r4, r5, r6, sa=1      # the same registers in every run
outer:
    li r14, 0
inner:                                      # the same registers for three passes
    gemm r3, r1, r2, r4, r5, r6, acc=1, sa=1, sb=1
    dmald r1, r8, r11, r12, r12, r12        # A's bytes replaced from DRAM
    addi r8, r8, 24
    vadd r2, r2, r2, r13                    # B's bytes changed in place (saturating)
    addi r14, r14, 1
    blt r14, r15, inner
    beq r9, r21, newc                       # then exactly one register the gemm reads
    beq r9, r22, newn
    beq r9, r23, newa
    beq r9, r24, newb
    beq r9, r25, newk
    addi r4, r4, -1                         # another M
    jmp next
newc:
    addi r3, r3, 1                          # another C
    jmp next
newn:
    addi r6, r6, -1                         # another N
    jmp next
newa:
    addi r1, r1, 128                        # A elsewhere
    jmp next
newb:
    addi r2, r2, 64                         # B elsewhere
    jmp next
newk:
    addi r5, r5, -3                         # another K
next:
    addi r9, r9, 1
    blt r9, r10, outer
    halt
"""


def _gemm_outcome(mode: str, datapath: str, second_spad: np.ndarray) -> tuple:
    cfg = config_from_dict(dict(SMALL, accumulator={"entries": 64}))
    m = Machine(cfg, assemble(GEMM_LOOP, "g.s"), datapath=datapath, scalar=mode)
    m.dram[:] = (np.arange(m.dram.size) * 37 % 11).astype(np.uint8)  # zeros among them
    m.spad[256:384] = (np.arange(128) % 5).astype(np.uint8)
    first = outcome(m)
    m.spad[:] = second_spad  # the host writes in place between runs, as the training driver
    m.pc, m.halted = 0, False
    return first, outcome(m)


@pytest.mark.parametrize("vnni_on", [True, False])
def test_gemm_plan_at_one_pc_follows_every_change(monkeypatch, vnni_on):
    """The per-pc gemm plan (semantics.SPECIALIZE: checked operand views and the static cost,
    kept while the six registers it reads are unchanged) sees operand bytes written by DMA, by
    a vector instruction and by the host between runs, and each of C, N, A, B, K and M changed
    alone: the outcome is the plain handler's on both datapaths. The plan holds views of the
    live memories and no converted copy, so a changed byte is always read."""
    from emulator import kernels, semantics
    from emulator import machine as mach

    monkeypatch.setattr(kernels, "USE_VNNI", vnni_on and kernels.USE_VNNI)
    planned = [0]
    real = semantics._gemm_operands

    def counting(m, o):
        planned[0] += 1
        return real(m, o)

    monkeypatch.setattr(semantics, "_gemm_operands", counting)
    second = (np.arange(1024) * 13 % 7).astype(np.uint8)
    got = _gemm_outcome("compiled", "fast", second)
    # plans made: the first gemm's once (run 2 reads the same registers, so run 1's plan
    # serves the host's new bytes); the inner gemm's once per outer pass in each run (each
    # pass starts with one register changed, and run 2 starts from run 1's first values,
    # not its last), never within the three inner passes
    assert planned[0] == 1 + 2 * 7
    assert got == _gemm_outcome("python", "fast", second)
    monkeypatch.setattr(mach, "SPECIALIZE", {})  # no plan: the plain handler every time
    assert got == _gemm_outcome("python", "fast", second)
    assert got == _gemm_outcome("python", "reference", second)
    assert got[0][-1] is None and got[1][-1] is None  # both runs reached halt
    # not vacuous: other host bytes give another second run
    assert got[1] != _gemm_outcome("python", "reference", second + 1)[1]
