"""Every instruction of the table, one or more cases each: exact result values (computed here from
the documented semantics) and the exact counter row of the instruction (hand-derived from
docs/timing.md for the small config below), on both datapaths. A meta-test fails when an
instruction has no case."""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from emulator.config import config_from_dict
from emulator.counters import COUNTERS, energy_breakdown
from emulator.machine import Machine
from emulator.reference import EXP_LUT
from emulator.rng import draw_ref
from isa import assemble
from isa.spec import TABLE

# L = 4 lanes, lat_alu = 2, BW = 8 B/cycle, lat_dma = 3, Ba = 4 bytes, 4x4 weight-stationary
CFG = config_from_dict({
    "array": {"rows": 4, "cols": 4},
    "alu": {"lanes": 4, "latency_cycles": 2},
    "dma": {"bytes_per_cycle": 8, "latency_cycles": 3},
    "accumulator": {"bits": 32, "entries": 256},
    "memory": {"dram_bytes": 4096, "scratchpad_bytes": 4096},
})
SCALAR = {"instructions": 1, "cycles": 1}
M64 = (1 << 64) - 1


def s64(v: int) -> int:
    v &= M64
    return v - (1 << 64) if v >> 63 else v


@dataclass
class Case:
    name: str
    src: str  # the instruction under test is the last one before the final halt
    counts: dict[str, int]
    check: Callable[[Machine], None] = lambda m: None
    setup: Callable[[Machine], None] = lambda m: None
    pc: int | None = None  # pc under test if not the last before halt


def i8(m: Machine, addr: int, n: int) -> list[int]:
    return m.sp_elems(addr, n, 1).tolist()


def i16(m: Machine, addr: int, n: int) -> list[int]:
    return m.sp_elems(addr, n, 2).tolist()


def put8(addr: int, vals: list[int]) -> Callable[[Machine], None]:
    def f(m: Machine) -> None:
        m.sp_elems(addr, len(vals), 1)[...] = vals
    return f


def put16(addr: int, vals: list[int]) -> Callable[[Machine], None]:
    def f(m: Machine) -> None:
        m.sp_elems(addr, len(vals), 2)[...] = vals
    return f


def both(*fs: Callable[[Machine], None]) -> Callable[[Machine], None]:
    def f(m: Machine) -> None:
        for g in fs:
            g(m)
    return f


A8 = [-128, -1, 0, 1, 127, 100, -100, 50, 3]
B8 = [1, -128, 5, 127, 127, 100, -100, -50, -7]
A16 = [-32768, -1, 0, 1, 32767, 20000, -20000, 300, 7]
B16 = [1, -32768, 5, 32767, 32767, 20000, -20000, -300, -9]
N = 9  # elements: ceil(9 / 4) = 3 lane groups


def sat(v: int, bits: int) -> int:
    return min(max(v, -(1 << (bits - 1))), (1 << (bits - 1)) - 1)


def vec_case(op: str, dt: str, f: Callable[[int, int], int]) -> Case:
    bits, b = (8, 1) if dt == "i8" else (16, 2)
    a, bb = (A8, B8) if dt == "i8" else (A16, B16)
    want = [sat(f(x, y), bits) for x, y in zip(a, bb, strict=True)]
    nsat = sum(1 for x, y, w in zip(a, bb, want, strict=True) if f(x, y) != w)
    passes = b * b if op == "vmul" else b
    counts = {"instructions": 1, "cycles": 2 + passes * 3, "alu_ops": N,
              "alu_mul_passes" if op == "vmul" else "alu_passes": passes * N,
              "spad_rd_bytes": 2 * N * b, "spad_wr_bytes": N * b}
    if nsat:
        counts["saturations"] = nsat
    put = put8 if dt == "i8" else put16
    get = i8 if dt == "i8" else i16
    return Case(
        f"{op}.{dt}",
        f"li r1, 0\nli r2, 64\nli r3, 128\nli r4, {N}\n{op} r3, r1, r2, r4, dt={dt}\n",
        counts,
        check=lambda m: (get(m, 128, N) == want) or pytest.fail(f"{get(m, 128, N)} != {want}"),
        setup=both(put(0, a), put(64, bb)),
    )


def unary_case(op: str, dt: str, f: Callable[[int], int], shift: int | None = None) -> Case:
    bits, b = (8, 1) if dt == "i8" else (16, 2)
    a = A8 if dt == "i8" else A16
    want = [sat(f(x), bits) for x in a]
    nsat = sum(1 for x, w in zip(a, want, strict=True) if f(x) != w)
    counts = {"instructions": 1, "cycles": 2 + b * 3, "alu_ops": N, "alu_passes": b * N,
              "spad_rd_bytes": N * b, "spad_wr_bytes": N * b}
    if nsat:
        counts["saturations"] = nsat
    put = put8 if dt == "i8" else put16
    get = i8 if dt == "i8" else i16
    operands = "r3, r1, r5, r4" if shift is not None else "r3, r1, r4"
    return Case(
        f"{op}.{dt}",
        f"li r1, 0\nli r5, {shift or 0}\nli r3, 128\nli r4, {N}\n{op} {operands}, dt={dt}\n",
        counts,
        check=lambda m: (get(m, 128, N) == want) or pytest.fail(f"{get(m, 128, N)} != {want}"),
        setup=put(0, a),
    )


def reg_check(**want: int) -> Callable[[Machine], None]:
    def f(m: Machine) -> None:
        got = {k: m.r[int(k[1:])] for k in want}
        assert got == want
    return f


SCALAR_CASES = [
    Case("nop", "nop\n", SCALAR),
    Case("halt", "", SCALAR, pc=0),
    Case("li", "li r1, -5\n", SCALAR, reg_check(r1=-5)),
    Case("lih", "li r1, -1\nlih r1, 305419896\n", SCALAR,
         reg_check(r1=s64((0x12345678 << 32) | 0xFFFFFFFF))),
    Case("addi.wrap", "li r1, -1\nlih r1, 2147483647\naddi r2, r1, 1\n", SCALAR,
         reg_check(r1=(1 << 63) - 1, r2=-(1 << 63))),
    Case("add", "li r1, -6\nli r2, 4\nadd r3, r1, r2\n", SCALAR, reg_check(r3=-2)),
    Case("sub", "li r1, -6\nli r2, 4\nsub r3, r1, r2\n", SCALAR, reg_check(r3=-10)),
    Case("mul", "li r1, -6\nli r2, 4\nmul r3, r1, r2\n", SCALAR, reg_check(r3=-24)),
    Case("mul.wrap", "li r1, 1\nlih r1, 1073741824\nli r2, 4\nmul r3, r1, r2\n", SCALAR,
         reg_check(r3=s64(((1 << 62) + 1) * 4))),
    Case("and", "li r1, -6\nli r2, 12\nand r3, r1, r2\n", SCALAR, reg_check(r3=-6 & 12)),
    Case("or", "li r1, -6\nli r2, 4\nor r3, r1, r2\n", SCALAR, reg_check(r3=-6 | 4)),
    Case("xor", "li r1, -6\nli r2, 4\nxor r3, r1, r2\n", SCALAR, reg_check(r3=-6 ^ 4)),
    Case("sll", "li r1, -6\nli r2, 68\nsll r3, r1, r2\n", SCALAR, reg_check(r3=-96)),  # 68&63=4
    Case("sra", "li r1, -6\nli r2, 4\nsra r3, r1, r2\n", SCALAR, reg_check(r3=-1)),
    Case("srl", "li r1, -6\nli r2, 4\nsrl r3, r1, r2\n", SCALAR,
         reg_check(r3=((1 << 64) - 6) >> 4)),
    Case("slt", "li r1, -6\nli r2, 4\nslt r3, r1, r2\nslt r4, r2, r1\n", SCALAR,
         reg_check(r3=1, r4=0)),
    Case("eset", "eset e3, -7\n", SCALAR, lambda m: m.e[3] == -7 or pytest.fail()),
    Case("eadd", "eset e1, -7\neset e2, 3\neadd e3, e1, e2\n", SCALAR,
         lambda m: m.e[3] == -4 or pytest.fail()),
    Case("eaddi", "eset e1, -7\neaddi e3, e1, 10\n", SCALAR,
         lambda m: m.e[3] == 3 or pytest.fail()),
    Case("emv", "eset e1, -7\nemv r3, e1\n", SCALAR, reg_check(r3=-7)),
    Case("esetr", "li r1, 12\nesetr e5, r1\n", SCALAR, lambda m: m.e[5] == 12 or pytest.fail()),
    Case("rngseed", "li r1, 99\nrngctr r1\nli r2, 42\nrngseed r2\n", SCALAR,
         lambda m: m.rng == [42, 0] or pytest.fail(str(m.rng))),
    Case("rngctr", "li r1, 77\nrngctr r1\n", SCALAR,
         lambda m: m.rng == [0, 77] or pytest.fail(str(m.rng))),
    Case("rngrd", "li r1, 77\nrngctr r1\nli r2, -1\nrngseed r2\nrngctr r1\n"
         "rngrd r3, sel=seed\nrngrd r4, sel=counter\n", SCALAR, reg_check(r3=-1, r4=77)),
    Case("clrflags", "clrflags\n", SCALAR,
         lambda m: m.flags == 0 or pytest.fail(), setup=lambda m: setattr(m, "flags", 7)),
    Case("flags", "flags r3\n", SCALAR, reg_check(r3=5),
         setup=lambda m: setattr(m, "flags", 5)),
    Case("accrd", "li r1, 3\naccrd r2, r1\n", {"instructions": 1, "cycles": 1,
                                              "acc_rd_bytes": 4},
         reg_check(r2=-77), setup=lambda m: m.acc.__setitem__(3, -77)),
    # ldw/stw: lat_dma + 1 = 4 cycles, 4 DRAM bytes
    Case("ldw", "li r1, 8\nldw r2, r1, -4\n", {"instructions": 1, "cycles": 4,
                                             "dram_rd_bytes": 4},
         reg_check(r2=-559038737),  # 0xDEADBEEF as int32
         setup=lambda m: m.load_dram(4, np.array([0xDEADBEEF], "<u4"))),
    Case("stw", "li r1, -2\nli r2, 16\nstw r1, r2, 4\n", {"instructions": 1, "cycles": 4,
                                                        "dram_wr_bytes": 4},
         lambda m: m.read_dram(20, 4) == b"\xfe\xff\xff\xff" or pytest.fail()),
]


def _branch_cases() -> list[Case]:
    out = []
    for op, a, b, taken in [("beq", 3, 3, True), ("beq", 3, 4, False), ("bne", 3, 4, True),
                            ("bne", 3, 3, False), ("blt", -3, 2, True), ("blt", 2, 2, False),
                            ("bge", 2, 2, True), ("bge", -3, 2, False)]:
        src = (f"li r1, {a}\nli r2, {b}\n{op} r1, r2, skip\nli r3, 1\nskip:\nhalt\n")
        out.append(Case(f"{op}.{'taken' if taken else 'not'}", src, SCALAR,
                        reg_check(r3=0 if taken else 1), pc=2))
    out.append(Case("jmp", "jmp over\nli r3, 1\nover:\nhalt\n", SCALAR, reg_check(r3=0), pc=0))
    return out


def _memory_cases() -> list[Case]:
    dram = np.arange(256, dtype=np.uint8)

    def load(m: Machine) -> None:
        m.load_dram(0, dram)

    spad_block = bytes(range(100, 150))

    def spad(m: Machine) -> None:
        m.spad[0:50] = np.frombuffer(spad_block, np.uint8)

    want_ld = [dram[10 + 8 * i : 10 + 8 * i + 5].tolist() for i in range(3)]
    ints = np.array([5, -6, 7, 2**31 - 1, -(2**31), 0, 1, 2], dtype="<i4")
    return [
        # 3 rows x 5 bytes = 15 bytes: 3 + ceil(15/8) = 5 cycles
        Case("dmald", "li r1, 200\nli r2, 10\nli r3, 3\nli r4, 5\nli r5, 8\nli r6, 6\n"
             "dmald r1, r2, r3, r4, r5, r6\n",
             {"instructions": 1, "cycles": 5, "dram_rd_bytes": 15, "spad_wr_bytes": 15},
             lambda m: [m.spad[200 + 6 * i : 205 + 6 * i].tolist() for i in range(3)] == want_ld
             or pytest.fail(), setup=load),
        Case("dmast", "li r1, 300\nli r2, 0\nli r3, 2\nli r4, 7\nli r5, 10\nli r6, 20\n"
             "dmast r1, r2, r3, r4, r5, r6\n",
             {"instructions": 1, "cycles": 3 + 2, "spad_rd_bytes": 14, "dram_wr_bytes": 14},
             lambda m: (m.read_dram(300, 7) == spad_block[0:7]
                        and m.read_dram(310, 7) == spad_block[20:27]) or pytest.fail(),
             setup=spad),
        # 2 rows x 3 int32 = 24 DRAM bytes: 3 + 3 = 6 cycles; 6 entries x 4 bytes
        Case("dmaldacc", "li r1, 10\nli r2, 512\nli r3, 2\nli r4, 3\nli r5, 16\n"
             "dmaldacc r1, r2, r3, r4, r5\n",
             {"instructions": 1, "cycles": 6, "dram_rd_bytes": 24, "acc_wr_bytes": 24},
             # row 1 starts 16 bytes on: ints[4:7]
             lambda m: m.acc[10:16].tolist() == [5, -6, 7, -(2**31), 0, 1] or pytest.fail(),
             setup=lambda m: m.load_dram(512, ints)),
        Case("dmastacc", "li r1, 640\nli r2, 4\nli r3, 2\nli r4, 2\nli r5, 12\n"
             "dmastacc r1, r2, r3, r4, r5\n",
             {"instructions": 1, "cycles": 3 + 2, "acc_rd_bytes": 16, "dram_wr_bytes": 16},
             lambda m: (np.frombuffer(m.read_dram(640, 8), "<i4").tolist() == [-9, 2**31 - 1]
                        and np.frombuffer(m.read_dram(652, 8), "<i4").tolist() == [-(2**31), 3])
             or pytest.fail(),
             setup=lambda m: m.acc.__setitem__(slice(4, 8), [-9, 2**31 - 1, -(2**31), 3])),
    ]


GA = [[0, 1, -2, 0, 3], [4, 0, 0, 0, -5], [0, 0, 0, 0, 0]]  # M=3, K=5
GB = [[1, 2], [0, 0], [3, -4], [5, 0], [-6, 7]]  # K=5, N=2


def _gemm_case(flags: str, sa: bool, sb: bool, acc: bool) -> Case:
    m_, k_, n_ = 3, 5, 2
    prod = [[sum(GA[i][t] * GB[t][j] for t in range(k_)) for j in range(n_)] for i in range(m_)]
    pre = [10, -20, 30, -40, 50, -60]
    want = [p + (pre[i * n_ + j] if acc else 0) for i in range(m_) for j, p in
            enumerate(prod[i])]
    skipped = sum(1 for i in range(m_) for t in range(k_) for j in range(n_)
                  if (sa and GA[i][t] == 0) or (sb and GB[t][j] == 0))
    macs = m_ * k_ * n_ - skipped
    # WS 4x4: X = K = 5 (2 folds), Y = N = 2 (1 fold), S = M = 3, F = 2*4 + 4 - 2 = 10
    # A read M*K*ceil(N/C) = 15, B read K*N = 10; partial sums M*N*ceil(K/R) = 12 entries
    counts = {"instructions": 1, "cycles": 2 * (10 + 3), "array_cycles": 2 * (10 + 3),
              "macs": macs, "mac_ops": macs,
              "mac_passes": 1, "spad_rd_bytes": 25, "gemm_a_rd_bytes": 15,
              "gemm_b_rd_bytes": 10, "acc_wr_bytes": 12 * 4,
              "acc_rd_bytes": (12 - 6 + (6 if acc else 0)) * 4}
    if skipped:
        counts["macs_skipped"] = skipped
    ta = "ta=1" in flags
    tb = "tb=1" in flags
    a_store = np.array(GA, np.int8).T if ta else np.array(GA, np.int8)
    b_store = np.array(GB, np.int8).T if tb else np.array(GB, np.int8)

    def setup(m: Machine) -> None:
        m.spad[0:15] = np.ascontiguousarray(a_store).view(np.uint8).ravel()
        m.spad[64:74] = np.ascontiguousarray(b_store).view(np.uint8).ravel()
        m.acc[8:14] = pre

    return Case(f"gemm[{flags}]", "li r1, 8\nli r2, 0\nli r3, 64\nli r4, 3\nli r5, 5\nli r6, 2\n"
                f"gemm r1, r2, r3, r4, r5, r6{flags}\n", counts,
                lambda m: m.acc[8:14].tolist() == want or pytest.fail(str(m.acc[8:14])),
                setup=setup)


def _requant_cases() -> list[Case]:
    vals = [1000, -1000, 123456, -7, 0, 99999, 6, -6, 2]
    out = []
    for rnd in ("nearest", "trunc", "uniform", "triangular"):
        s = 3

        def rs(a: int, i: int, rnd: str = rnd) -> int:
            if rnd == "nearest":
                return (a + 4) >> 3
            if rnd == "trunc":
                return a >> 3
            z = draw_ref(11, i)
            u = z & 7
            if rnd == "uniform":
                return (a + u - 4 + 4) >> 3
            v, bit = (z >> 3) & 7, (z >> 6) & 1
            return (a + u + v - 8 + bit + 4) >> 3

        want = [sat(rs(a, i), 8) for i, a in enumerate(vals)]
        nsat = sum(1 for i, a in enumerate(vals) if rs(a, i) != sat(rs(a, i), 8))
        # lat_alu + b*ceil(9/4) = 2 + 3; acc read 9 x 4 bytes; 9 bytes written
        counts = {"instructions": 1, "cycles": 5, "rq_elems": 9, "acc_rd_bytes": 36,
                  "spad_wr_bytes": 9}
        if rnd in ("uniform", "triangular"):
            counts["rng_draws"] = 9
        if nsat:
            counts["saturations"] = nsat
        out.append(Case(
            f"rq.{rnd}", f"li r9, 11\nrngseed r9\neset e1, 0\neset e2, {s}\nli r1, 100\n"
            f"li r2, 0\nli r3, 9\nrq r1, r2, r3, e2, e1, rnd={rnd}, dt=i8\n", counts,
            lambda m, want=want: i8(m, 100, 9) == want or pytest.fail(str(i8(m, 100, 9))),
            setup=lambda m: m.acc.__setitem__(slice(0, 9), vals)))
    # rqm: multiplier -3, nearest, shift 2, INT16 out: 2 + 2*3 cycles, 18 bytes written
    want_m = [sat((a * -3 + 2) >> 2, 16) for a in vals]
    nsat_m = sum(1 for a in vals if (a * -3 + 2) >> 2 != sat((a * -3 + 2) >> 2, 16))
    assert nsat_m == 2  # 123456 and 99999 times -3, over 4, leave INT16
    out.append(Case(
        "rqm", "eset e1, 0\neset e2, 2\nli r1, 100\nli r2, 0\nli r3, 9\nli r4, -3\n"
        "rqm r1, r2, r3, r4, e2, e1, rnd=nearest, dt=i16\n",
        {"instructions": 1, "cycles": 8, "rq_elems": 9, "acc_rd_bytes": 36,
         "spad_wr_bytes": 18, "saturations": nsat_m},
        lambda m: i16(m, 100, 9) == want_m or pytest.fail(str(i16(m, 100, 9))),
        setup=lambda m: m.acc.__setitem__(slice(0, 9), vals)))
    # vcvt INT16 -> INT8 by shift 4, nearest, relu: 2 + max(2,1)*3 cycles
    want_c = [sat(max((a + 8) >> 4, 0), 8) for a in A16]
    nsat_c = sum(1 for a in A16 if max((a + 8) >> 4, 0) > 127)
    c_counts = {"instructions": 1, "cycles": 8, "rq_elems": 9, "spad_rd_bytes": 18,
                "spad_wr_bytes": 9, "saturations": nsat_c}
    out.append(Case(
        "vcvt", "eset e1, 0\neset e2, 4\nli r1, 100\nli r2, 0\nli r3, 9\n"
        "vcvt r1, r2, r3, e2, e1, rnd=nearest, sdt=i16, ddt=i8, relu=1\n", c_counts,
        lambda m: i8(m, 100, 9) == want_c or pytest.fail(str(i8(m, 100, 9))),
        setup=put16(0, A16)))
    # efit: nbits = max(bitlen(100), bitlen(~-300 = 299), bitlen(5)) = 9; e = 2 + 9 - 7
    out.append(Case(
        "efit", "eset e1, 2\nli r1, 0\nli r2, 3\nefit e4, r1, r2, e1, dt=i8\n",
        {"instructions": 1, "cycles": 2 + 1, "acc_rd_bytes": 12},
        lambda m: m.e[4] == 4 or pytest.fail(str(m.e[4])),
        setup=lambda m: m.acc.__setitem__(slice(0, 3), [100, -300, 5])))
    return out


def _vector_cases() -> list[Case]:
    out = [
        vec_case("vadd", "i8", lambda x, y: x + y), vec_case("vadd", "i16", lambda x, y: x + y),
        vec_case("vsub", "i8", lambda x, y: x - y), vec_case("vsub", "i16", lambda x, y: x - y),
        vec_case("vmul", "i8", lambda x, y: x * y), vec_case("vmul", "i16", lambda x, y: x * y),
        vec_case("vmin", "i8", min), vec_case("vmax", "i16", max),
        vec_case("vcmpgt", "i8", lambda x, y: int(x > y)),
        unary_case("vsra", "i16", lambda x: x >> 3, shift=3),
        unary_case("vsll", "i8", lambda x: x << 2, shift=2),
        unary_case("vrelu", "i8", lambda x: max(x, 0)),
        unary_case("vrelumask", "i16", lambda x: int(x > 0)),
    ]
    mask = [1, 0, 0, 5, 0, -1, 0, 0, 1]
    want_sel = [a if k else b for k, a, b in zip(mask, A8, B8, strict=True)]
    out.append(Case(
        "vsel", "li r1, 0\nli r2, 64\nli r3, 128\nli r4, 9\nli r5, 192\n"
        "vsel r3, r5, r1, r2, r4, dt=i8\n",
        {"instructions": 1, "cycles": 2 + 3, "alu_ops": 9, "alu_passes": 9,
         "spad_rd_bytes": 27, "spad_wr_bytes": 9},
        lambda m: i8(m, 128, 9) == want_sel or pytest.fail(),
        setup=both(put8(0, A8), put8(64, B8), put8(192, mask))))
    rows = [A16[0:3], A16[3:6], A16[6:9]]
    out.append(Case(
        "vrmax", "li r1, 0\nli r2, 3\nli r3, 100\nvrmax r3, r1, r2, r2, dt=i16\n",
        # 2 + b*ceil(9/4) = 2 + 6; 9 x 2 bytes read; 3 x 2 bytes written
        {"instructions": 1, "cycles": 8, "alu_ops": 9, "alu_passes": 18,
         "spad_rd_bytes": 18, "spad_wr_bytes": 6},
        lambda m: i16(m, 100, 3) == [max(r) for r in rows] or pytest.fail(),
        setup=put16(0, A16)))
    out.append(Case(
        "vrsum", "li r1, 0\nli r2, 3\nli r3, 20\nvrsum r3, r1, r2, r2, dt=i16\n",
        {"instructions": 1, "cycles": 8, "alu_ops": 9, "alu_passes": 18,
         "spad_rd_bytes": 18, "acc_wr_bytes": 12},
        lambda m: m.acc[20:23].tolist() == [sum(r) for r in rows] or pytest.fail(),
        setup=put16(0, A16)))
    for accf in (0, 1):
        pre = [1000] * 9
        want = [a + (1000 if accf else 0) for a in A8]
        counts = {"instructions": 1, "cycles": 2 + 3, "alu_ops": 9, "alu_passes": 9,
                  "spad_rd_bytes": 9, "acc_wr_bytes": 36}
        if accf:
            counts["acc_rd_bytes"] = 36
        out.append(Case(
            f"vtoacc.acc{accf}", f"li r1, 0\nli r2, 30\nli r3, 9\nvtoacc r2, r1, r3, dt=i8, "
            f"acc={accf}\n", counts,
            lambda m, want=want: m.acc[30:39].tolist() == want or pytest.fail(),
            setup=both(put8(0, A8), lambda m, pre=pre: m.acc.__setitem__(slice(30, 39), pre))))
    per_row = [100, -100, 7]
    want_sr = [sat(A8[i * 3 + j] - per_row[i], 8) for i in range(3) for j in range(3)]
    nsat_sr = sum(1 for i in range(3) for j in range(3)
                  if A8[i * 3 + j] - per_row[i] != want_sr[i * 3 + j])
    out.append(Case(
        "vsubrow", "li r1, 0\nli r2, 64\nli r3, 100\nli r4, 3\n"
        "vsubrow r3, r1, r2, r4, r4, dt=i8\n",
        {"instructions": 1, "cycles": 2 + 3, "alu_ops": 9, "alu_passes": 9,
         "spad_rd_bytes": 9 + 3, "spad_wr_bytes": 9, "saturations": nsat_sr},
        lambda m: i8(m, 100, 9) == want_sr or pytest.fail(str(i8(m, 100, 9))),
        setup=both(put8(0, A8), put8(64, per_row))))
    xs = [0, -1, -100, -1000, -32768, 5, -7, -256, -3000]

    def exp_ref(x: int, e: int) -> int:  # the documented algorithm, step by step
        x = min(x, 0)
        t = x * 94548
        sh = 8 - e
        u = (t + (1 << (sh - 1))) >> sh if sh > 0 else t << -sh
        n, f = (-u) >> 8, (-u) & 255
        lut = round(2**14 * 2 ** (-f / 256))
        assert lut == EXP_LUT[f]
        if n == 0:
            return lut
        return (lut + (1 << (n - 1))) >> n if n < 31 else 0

    want_e = [exp_ref(x, -8) for x in xs]
    out.append(Case(
        "vexp", "eset e1, -8\nli r1, 0\nli r2, 100\nli r3, 9\nvexp r2, r1, r3, e1\n",
        # 2 + 4*3 cycles; 4n multiply passes + n add passes; 2n read, 2n written
        {"instructions": 1, "cycles": 14, "alu_ops": 9, "alu_mul_passes": 36,
         "alu_passes": 9, "spad_rd_bytes": 18, "spad_wr_bytes": 18},
        lambda m: i16(m, 100, 9) == want_e or pytest.fail(str(i16(m, 100, 9))),
        setup=put16(0, xs)))
    # sanity of the documented algorithm itself against math.exp (Q14, e = -8)
    assert abs(want_e[3] - 2**14 * math.exp(-1000 / 256)) <= 2
    ps = [16384, 8000, 0, 300, 300, 300, 1, 2, 3]
    sums = [24384, 900, 0]
    want_n = []
    for i in range(3):
        for j in range(3):
            p, s_ = ps[i * 3 + j], sums[i]
            want_n.append(sat((p * 2**16 + s_) // (2 * s_), 16) if s_ > 0 else 0)
    out.append(Case(
        "vnormrow", "eset e1, -15\nli r1, 0\nli r2, 100\nli r3, 40\nli r4, 3\n"
        "vnormrow r2, r1, r3, r4, r4, e1, dt=i16\n",
        # 2 + 8*b*ceil(9/4) = 2 + 48; 8*b*n add passes; 2n read, rows*Ba acc read
        {"instructions": 1, "cycles": 50, "alu_ops": 9, "alu_passes": 144,
         "spad_rd_bytes": 18, "acc_rd_bytes": 12, "spad_wr_bytes": 18},
        lambda m: i16(m, 100, 9) == want_n or pytest.fail(str(i16(m, 100, 9))),
        setup=both(put16(0, ps), lambda m: m.acc.__setitem__(slice(40, 43), sums))))
    theta = [-128, -1, 0, 1, 127, 100, -100, 50, 3]
    resid = [-32768, -600, 300, 255, 32767, 128, -129, 0, -1]
    s = 8
    want_t, want_r, nsat_lz = [], [], 0
    for t, a in zip(theta, resid, strict=True):
        d = (a + (1 << (s - 1))) >> s
        tn = min(max(t + d, -128), 127)
        nsat_lz += tn != t + d
        want_t.append(tn)
        want_r.append(a - ((tn - t) << s))
    assert nsat_lz == 2  # -128 - 128 and 127 + 128 saturate
    out.append(Case(
        "vlazy", "eset e1, -4\neset e2, -12\nli r1, 0\nli r2, 64\nli r3, 9\n"
        "vlazy r1, r2, r3, e1, e2\n",
        {"instructions": 1, "cycles": 2 + 12, "alu_ops": 9, "alu_passes": 36,
         "spad_rd_bytes": 27, "spad_wr_bytes": 27, "saturations": nsat_lz},
        lambda m: ((i8(m, 0, 9), i16(m, 64, 9), m.flags) == (want_t, want_r, 4)
                   or pytest.fail()),
        setup=both(put8(0, theta), put16(64, resid))))
    out += _adam_cases()
    return out


def _rsqrt_decimal(x: int, k: int) -> int:
    """round-half-up(sqrt(2**k / x)) by 60-digit decimal arithmetic (independent of the
    integer square root the machine is specified with); no tie is near at these inputs."""
    ctx = decimal.Context(prec=60)
    r = ctx.sqrt(ctx.divide(decimal.Decimal(2) ** k, decimal.Decimal(x)))
    y = int(r.to_integral_value(rounding=decimal.ROUND_FLOOR))
    frac = r - y
    assert abs(frac - decimal.Decimal("0.5")) > decimal.Decimal("1e-30")
    return y + (frac > decimal.Decimal("0.5"))


def _adam_cases() -> list[Case]:
    xs = [0, 1, 2, 3, 4, 100, 32767, -5, 16384]
    k = 4 + 16  # e[ein] = -4, e[eout] = -8: y = sqrt(2**20 / x) = 1024 / sqrt(x)
    want = [min(_rsqrt_decimal(x, k), 32767) if x > 0 else 32767 for x in xs]
    assert want == [32767, 1024, 724, 591, 512, 102, 6, 32767, 8]
    out = [Case(
        "vrsqrt", "eset e1, -4\neset e2, -8\nli r1, 0\nli r2, 100\nli r3, 9\n"
        "vrsqrt r2, r1, r3, e2, e1\n",
        # 2 + 48 * ceil(9 / 4); 48 passes per element; 2n read, 2n written; x <= 0 saturates
        {"instructions": 1, "cycles": 2 + 48 * 3, "alu_ops": 9, "alu_passes": 48 * 9,
         "spad_rd_bytes": 18, "spad_wr_bytes": 18, "saturations": 2},
        lambda m: ((i16(m, 100, 9), m.flags) == (want, 4)
                   or pytest.fail(str(i16(m, 100, 9)))),
        setup=put16(0, xs))]
    # INT16 x INT8 into the accumulator, accumulating; one sum passes 2**31 - 1 and saturates
    pre = [2**31 - 1, 2**31 - 100, 0, 7, -(2**31), 2**31 - 1999999, 1, 2, -(2**31)]
    exact = [p + a * b for p, a, b in zip(pre, A16, B8, strict=True)]
    want_w = [min(max(v, -(2**31)), 2**31 - 1) for v in exact]
    nover = sum(1 for v, w in zip(exact, want_w, strict=True) if v != w)
    assert nover == 3  # elements 1, 5 and 8 leave the 32-bit accumulator
    out.append(Case(
        "vwmul.i16xi8.acc", "li r1, 0\nli r2, 64\nli r3, 20\nli r4, 9\n"
        "vwmul r3, r1, r2, r4, da=i16, db=i8, acc=1\n",
        # 2 + (2 * 1) * 3 cycles; 18 multiply passes; 9 * (2 + 1) read; 36 + 36 acc bytes
        {"instructions": 1, "cycles": 8, "alu_ops": 9, "alu_mul_passes": 18,
         "spad_rd_bytes": 27, "acc_wr_bytes": 36, "acc_rd_bytes": 36,
         "acc_overflows": nover},
        lambda m: ((m.acc[20:29].tolist(), m.flags) == (want_w, 1)
                   or pytest.fail(str(m.acc[20:29]))),
        setup=both(put16(0, A16), put8(64, B8),
                   lambda m: m.acc.__setitem__(slice(20, 29), pre))))
    want_8 = [a * b for a, b in zip(A8, B8, strict=True)]
    out.append(Case(
        "vwmul.i8xi8", "li r1, 0\nli r2, 64\nli r3, 20\nli r4, 9\n"
        "vwmul r3, r1, r2, r4\n",
        {"instructions": 1, "cycles": 2 + 3, "alu_ops": 9, "alu_mul_passes": 9,
         "spad_rd_bytes": 18, "acc_wr_bytes": 36},
        lambda m: m.acc[20:29].tolist() == want_8 or pytest.fail(str(m.acc[20:29])),
        setup=both(put8(0, A8), put8(64, B8),
                   lambda m: m.acc.__setitem__(slice(20, 29), [77] * 9))))
    return out


def _empty_gemm_cases() -> list[Case]:
    """Empty GEMMs cost nothing (docs/timing.md), except that K = 0 without acc clears C."""
    pre = [10, -20, 30, -40, 50, -60]
    src = "li r1, 8\nli r2, 0\nli r3, 64\nli r4, {m}\nli r5, {k}\nli r6, {n}\n" \
          "gemm r1, r2, r3, r4, r5, r6{flags}\n"
    setup = lambda m: m.acc.__setitem__(slice(8, 14), pre)  # noqa: E731
    kept = lambda m: m.acc[8:14].tolist() == pre or pytest.fail(str(m.acc[8:14]))  # noqa: E731
    out = [Case(f"gemm.empty.m{m_}k{k_}n{n_}{flags}",
                src.format(m=m_, k=k_, n=n_, flags=flags), {"instructions": 1}, kept,
                setup=setup)
           for m_, k_, n_, flags in [(0, 5, 2, ""), (3, 5, 0, ""), (0, 0, 0, ""),
                                     (3, 0, 2, ", acc=1"), (0, 0, 2, ", da=i16, db=i16")]]
    # K = 0: C = 0; 6 entries through the 4-wide output port: ceil(6 / 4) = 2 cycles
    out.append(Case("gemm.empty.k0.clear", src.format(m=3, k=0, n=2, flags=", da=i16"),
                    {"instructions": 1, "cycles": 2, "acc_wr_bytes": 24},
                    lambda m: m.acc[8:14].tolist() == [0] * 6 or pytest.fail(),
                    setup=setup))
    return out


# ------------------------------------------------------------------------ conv and pooling
def _geo(n, c, h, w, kh, kw, sh, sw, ph, pw, f) -> str:
    """li r4..r7 with the geometry registers rsz, rhw, rkw, rpf."""
    return (f"li r4, {n | c << 16}\nli r5, {h | w << 16}\n"
            f"li r6, {kh | kw << 8 | sh << 16 | sw << 24}\nli r7, {ph | pw << 8 | f << 16}\n")


def _win(oh, ow, kh, kw, sh, sw, ph, pw):
    """(kh, kw, ih, iw) of every window position of output pixel (oh, ow), in scan order."""
    return [(a, b, oh * sh + a - ph, ow * sw + b - pw) for a in range(kh) for b in range(kw)]


def _col(x, n, c, h, w, kh, kw, sh, sw, ph, pw):
    """col(X) as a list of rows, straight from the documented definition."""
    oh_n, ow_n = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = []
    for b in range(n):
        for oh in range(oh_n):
            for ow in range(ow_n):
                rows.append([x[((b * h + ih) * w + iw) * c + ch]
                             if 0 <= ih < h and 0 <= iw < w else 0
                             for _, _, ih, iw in _win(oh, ow, kh, kw, sh, sw, ph, pw)
                             for ch in range(c)])
    return rows


CX = [3, -1, 0, 2, 5, -4, 1, 1, 0, -2, 7, 3, -6, 0, 2, 2, -1, 4]  # [1,3,3,2]
CW = [1, 0, -2, 3, 1, 0, 0, 0, 4, -1, 2, 1, 2, -3, 0, 1, 1, 1, 0, 5, -1, 2, 0, 3]  # [8,3]


def _conv_cases() -> list[Case]:
    out = []
    geo = (1, 2, 3, 3, 2, 2, 1, 1, 0, 0)  # N C H W KH KW SH SW PH PW; F = 3: M = 4, K = 8
    col = _col(CX, *geo)
    wm = [CW[k * 3 : k * 3 + 3] for k in range(8)]
    fwd = [sum(col[i][k] * wm[k][j] for k in range(8)) for i in range(4) for j in range(3)]
    skipped = sum(1 for i in range(4) for k in range(8) for j in range(3)
                  if col[i][k] == 0 or wm[k][j] == 0)
    # GEMM (4, 8, 3) WS 4x4: 2 x 1 folds of (2R + C - 2 = 10) + 4 cycles; A read M K = 32,
    # B read K N = 24; partial sums M N ceil(K/R) = 24 entries
    out.append(Case(
        "conv.fwd", "li r1, 100\nli r2, 0\nli r3, 64\n" + _geo(*geo, 3)
        + "conv r1, r2, r3, r4, r5, r6, r7, sa=1, sb=1\n",
        {"instructions": 1, "cycles": 28, "array_cycles": 28, "macs": 96 - skipped,
         "macs_skipped": skipped,
         "mac_ops": 96 - skipped, "mac_passes": 1, "spad_rd_bytes": 56, "gemm_a_rd_bytes": 32,
         "gemm_b_rd_bytes": 24, "acc_wr_bytes": 96, "acc_rd_bytes": 48},
        lambda m: m.acc[100:112].tolist() == fwd or pytest.fail(str(m.acc[100:112])),
        setup=both(put8(0, CX), put8(64, CW))))
    dz = [2, 0, -1, 1, 3, 0, 0, -2, 1, 4, 1, 1]  # [M=4, F=3]
    pre = list(range(-12, 12))
    wg = [sum(col[i][k] * dz[i * 3 + j] for i in range(4)) + pre[k * 3 + j]
          for k in range(8) for j in range(3)]
    # GEMM (K=8, M=4, F=3): rows <- 4 (1 fold), cols <- 3 (1 fold), stream 8: 10 + 8 cycles;
    # A read 8 * 4 = 32, B read 4 * 3 = 12; 24 entries written and (acc=1) read
    out.append(Case(
        "conv.wgrad", "li r1, 100\nli r2, 0\nli r3, 64\n" + _geo(*geo, 3)
        + "conv r1, r2, r3, r4, r5, r6, r7, mode=wgrad, acc=1\n",
        {"instructions": 1, "cycles": 18, "array_cycles": 18, "macs": 96, "mac_ops": 96,
         "mac_passes": 1,
         "spad_rd_bytes": 44, "gemm_a_rd_bytes": 32, "gemm_b_rd_bytes": 12,
         "acc_wr_bytes": 96, "acc_rd_bytes": 96},
        lambda m: m.acc[100:124].tolist() == wg or pytest.fail(str(m.acc[100:124])),
        setup=both(put8(0, CX), put8(64, dz), lambda m: m.acc.__setitem__(slice(100, 124),
                                                                         pre))))
    # 3x3 windows, stride 2, padding 1 on a 3x3 input: OH = OW = 2, M = 4, K = 9; every
    # window has 5 padding positions, so with sa=1 and no zero in X: 4 * 5 * F skipped
    g2 = (1, 1, 3, 3, 3, 3, 2, 2, 1, 1)
    x2 = [1, -2, 3, 4, 5, -6, 7, 8, 9]
    w2 = [1, 2, 0, -1, 3, 1, 2, 2, -2]  # [9, 1]
    col2 = _col(x2, *g2)
    fwd2 = [sum(col2[i][k] * w2[k] for k in range(9)) for i in range(4)]
    # GEMM (4, 9, 1): 3 x 1 folds of 10 + 4; A read 36, B read 9; 4 * 3 partial sums
    out.append(Case(
        "conv.fwd.pad", "li r1, 100\nli r2, 0\nli r3, 64\n" + _geo(*g2, 1)
        + "conv r1, r2, r3, r4, r5, r6, r7, sa=1\n",
        {"instructions": 1, "cycles": 42, "array_cycles": 42, "macs": 16, "macs_skipped": 20,
         "mac_ops": 16,
         "mac_passes": 1, "spad_rd_bytes": 45, "gemm_a_rd_bytes": 36, "gemm_b_rd_bytes": 9,
         "acc_wr_bytes": 48, "acc_rd_bytes": 32},
        lambda m: m.acc[100:104].tolist() == fwd2 or pytest.fail(str(m.acc[100:104])),
        setup=both(put8(0, x2), put8(64, w2))))
    # dgrad on that geometry, F = 2, INT16 dZ: dX[ih, iw] sums dZ[m] . W[k] over windows
    dz2 = [300, -1, 0, 2, -7, 1000, 4, 0]  # [M=4, F=2]
    w3 = [1, 0, -2, 1, 3, 3, 0, 1, -1, 2, 1, 1, 2, 0, 0, -4, 5, 1]  # [K=9, F=2]
    dx = [0] * 9
    for i in range(4):
        oh, ow = divmod(i, 2)
        for kh, kw, ih, iw in _win(oh, ow, 3, 3, 2, 2, 1, 1):
            if 0 <= ih < 3 and 0 <= iw < 3:
                k = kh * 3 + kw
                dx[ih * 3 + iw] += sum(dz2[i * 2 + f] * w3[k * 2 + f] for f in range(2))
    # GEMM (M=4, F=2, K=9): rows <- 2 (1 fold), cols <- 9 (3 folds), stream 4: 3 * 14 cycles
    # plus clearing 9 entries (acc=0): ceil(9/4) = 3; P = 2 (INT16 x INT8): cycles 2 * 42 + 3;
    # A read P M F ceil(K/C) = 2 * 24, B read P F K = 2 * 18; partial sums P M K = 72 entries
    # accumulated (read-modify-write) plus 9 cleared
    out.append(Case(
        "conv.dgrad", "li r1, 100\nli r2, 0\nli r3, 64\n" + _geo(*g2, 2)
        + "conv r1, r2, r3, r4, r5, r6, r7, mode=dgrad, da=i16\n",
        # the array is busy for the 2 * 42 cycles of the passes, not the 3 clearing ones
        {"instructions": 1, "cycles": 87, "array_cycles": 84, "macs": 72, "mac_ops": 144,
         "mac_passes": 2,
         "spad_rd_bytes": 84, "gemm_a_rd_bytes": 48, "gemm_b_rd_bytes": 36,
         "acc_wr_bytes": 72 * 4 + 36, "acc_rd_bytes": 72 * 4},
        lambda m: m.acc[100:109].tolist() == dx or pytest.fail(str(m.acc[100:109])),
        setup=both(put16(0, dz2), put8(64, w3), lambda m: m.acc.__setitem__(
            slice(100, 109), 99))))
    # pooling: 2x2 windows, stride 2, padding 1 on [1,3,3,2]: OH = OW = 2, 8 outputs of 4
    # window positions (1 to 4 of them inside the input)
    gp = (1, 2, 3, 3, 2, 2, 2, 2, 1, 1)
    ymax, imax, ysum = [], [], []
    for oh in range(2):
        for ow in range(2):
            for ch in range(2):
                pos = [(kh * 2 + kw, CX[(ih * 3 + iw) * 2 + ch])
                       for kh, kw, ih, iw in _win(oh, ow, 2, 2, 2, 2, 1, 1)
                       if 0 <= ih < 3 and 0 <= iw < 3]
                best = max(v for _, v in pos)
                ymax.append(best)
                imax.append(next(code for code, v in pos if v == best))
                ysum.append(sum(v for _, v in pos))
    out.append(Case(
        "vmaxpool", "li r1, 64\nli r2, 0\nli r3, 96\n" + _geo(*gp, 0)
        + "vmaxpool r1, r2, r3, r4, r5, r6, r7, idx=1\n",
        # 2 + 1 * ceil(32 / 4); 32 reads; 8 values + 8 index bytes written
        {"instructions": 1, "cycles": 10, "alu_ops": 32, "alu_passes": 32, "spad_rd_bytes": 32,
         "spad_wr_bytes": 16},
        lambda m: (i8(m, 64, 8), m.spad[96:104].tolist()) == (ymax, imax) or pytest.fail(),
        setup=put8(0, CX)))
    out.append(Case(
        "vsumpool", "li r1, 100\nli r2, 0\n" + _geo(*gp, 0)
        + "vsumpool r1, r2, r4, r5, r6, r7, dt=i16\n",
        {"instructions": 1, "cycles": 18, "alu_ops": 32, "alu_passes": 64, "spad_rd_bytes": 64,
         "acc_wr_bytes": 32},
        lambda m: m.acc[100:108].tolist() == ysum or pytest.fail(str(m.acc[100:108])),
        setup=put16(0, CX)))
    dy = [5, -3, 2, 0, 1, 7, -1, 4]  # [1, 2, 2, 2]
    umax, usum = [0] * 18, [50] * 18
    for e, (v, code) in enumerate(zip(dy, imax, strict=True)):
        (oh, ow), ch = divmod(e // 2, 2), e % 2
        kh, kw = divmod(code, 2)
        umax[((oh * 2 + kh - 1) * 3 + ow * 2 + kw - 1) * 2 + ch] += v
        for _, _, ih, iw in _win(oh, ow, 2, 2, 2, 2, 1, 1):
            if 0 <= ih < 3 and 0 <= iw < 3:
                usum[(ih * 3 + iw) * 2 + ch] += v
    out.append(Case(
        "vunpool.max", "li r1, 100\nli r2, 0\nli r3, 64\n" + _geo(*gp, 0)
        + "vunpool r1, r2, r3, r4, r5, r6, r7\n",
        # 8 adds: 2 + ceil(8/4) + clearing ceil(18/4); dY and index bytes read; 8 RMW + 18
        {"instructions": 1, "cycles": 9, "alu_ops": 8, "alu_passes": 8, "spad_rd_bytes": 16,
         "acc_rd_bytes": 32, "acc_wr_bytes": 32 + 72},
        lambda m: m.acc[100:118].tolist() == umax or pytest.fail(str(m.acc[100:118])),
        setup=both(put8(0, dy), put8(64, imax), lambda m: m.acc.__setitem__(
            slice(100, 118), 50))))
    out.append(Case(
        "vunpool.sum", "li r1, 100\nli r2, 0\n" + _geo(*gp, 0)
        + "vunpool r1, r2, r0, r4, r5, r6, r7, mode=sum, acc=1, dt=i16\n",
        # 32 adds (whole windows): 2 + 2 * ceil(32/4); 8 x 2 bytes read; 32 RMW entries
        {"instructions": 1, "cycles": 18, "alu_ops": 32, "alu_passes": 64, "spad_rd_bytes": 16,
         "acc_rd_bytes": 128, "acc_wr_bytes": 128},
        lambda m: m.acc[100:118].tolist() == usum or pytest.fail(str(m.acc[100:118])),
        setup=both(put16(0, dy), lambda m: m.acc.__setitem__(slice(100, 118), 50))))
    bias = [5, -6, 7, 2, -2]
    acc0 = list(range(-7, 8))
    for s, (eacc, eb) in ((2, (0, -2)), (-3, (-4, -1))):
        sh = [(v + 2) >> 2 if s == 2 else v << 3 for v in bias]  # ties (v = 2, -6, -2) up
        want = [acc0[i * 5 + j] + sh[j] for i in range(3) for j in range(5)]
        out.append(Case(
            f"vbias.s{s}", f"li r1, 100\nli r2, 0\nli r3, 3\nli r4, 5\neset e1, {eacc}\n"
            f"eset e2, {eb}\nvbias r1, r2, r3, r4, e1, e2\n",
            # 2 + ceil(15/4); 5 bias bytes; 15 entries read and written
            {"instructions": 1, "cycles": 6, "alu_ops": 15, "alu_passes": 15,
             "spad_rd_bytes": 5, "acc_rd_bytes": 60, "acc_wr_bytes": 60},
            lambda m, want=want: m.acc[100:115].tolist() == want or pytest.fail(),
            setup=both(put8(0, bias), lambda m: m.acc.__setitem__(slice(100, 115), acc0))))
    return out


def _qbp_cases() -> list[Case]:
    """vqstep and vtopk (tests/test_qbp_isa.py checks them against exact fractions)."""
    out = []
    blk = [3, -5, 0, 7, -1, 2]
    # asum with a mask: |3| + |0| + |7| + |-1| = 11, D = 11 * 5 * 2**-2 = 13.75 = 56320 2**-12
    out.append(Case(
        "vqstep.asum", "li r1, 100\nli r2, 0\nli r3, 2\nli r4, 3\nli r5, 5\neset e1, -2\n"
        "vqstep r10, r11, r1, r2, r3, r4, r5, e5, e1, e0, e0, mode=asum, mask=1\n",
        # 2 + ceil(6/4) + 32; 6 entries and 6 mask bytes read
        {"instructions": 1, "cycles": 36, "alu_ops": 7, "alu_passes": 38, "spad_rd_bytes": 6,
         "acc_rd_bytes": 24},
        lambda m: (m.r[10], m.e[5], m.r[11]) == (56320, 3, 1249445032) or pytest.fail(),
        setup=both(put8(0, [1, 0, 1, 1, 1, 0]),
                   lambda m: m.acc.__setitem__(slice(100, 106), blk))))
    # var: Q = min((80 - 40/4) / (3*2), (80 - 100/4) / (5*2)) = 5.5, D = 2 sqrt(5.5)
    out.append(Case(
        "vqstep.var", "li r1, 100\nli r2, 120\nli r3, 2\nli r4, 3\nli r5, 80\neset e1, -2\n"
        "eset e2, 1\nvqstep r10, r11, r1, r2, r3, r4, r5, e5, e1, e2, e0, mode=var\n",
        # 2 + ceil(6/4) + 32 + 32 ceil(2/4) + 16; 6 + 2 entries read
        {"instructions": 1, "cycles": 84, "alu_ops": 9, "alu_passes": 118, "acc_rd_bytes": 32},
        lambda m: (m.r[10], m.e[5], m.r[11]) == (38423, 2, 1831422434) or pytest.fail(),
        setup=lambda m: (m.acc.__setitem__(slice(100, 106), [12, 40, -8, 100, 4, 0]),
                         m.acc.__setitem__(slice(120, 122), [3, 5]))))
    x = [5, -9, 9, 1, 0, -128, 127, 3]
    out.append(Case(
        "vtopk", "li r1, 16\nli r2, 0\nli r3, 2\nli r4, 4\nli r5, 2\n"
        "vtopk r1, r2, r3, r4, r5, dt=i8\n",
        # 2 + (8 + 1) ceil(8/4)
        {"instructions": 1, "cycles": 20, "alu_ops": 8, "alu_passes": 72, "spad_rd_bytes": 8,
         "spad_wr_bytes": 8},
        lambda m: m.sp_elems(16, 8, 1).tolist() == [0, -9, 9, 0, 0, -128, 127, 0]
        or pytest.fail(str(m.sp_elems(16, 8, 1))),
        setup=put8(0, x)))
    return out


CASES = (SCALAR_CASES + _branch_cases() + _memory_cases()
         + [_gemm_case("", False, False, False), _gemm_case(", sa=1", True, False, False),
            _gemm_case(", sb=1, acc=1", False, True, True),
            _gemm_case(", ta=1, tb=1, sa=1, sb=1", True, True, False)]
         + _empty_gemm_cases() + _requant_cases() + _vector_cases() + _conv_cases()
         + _qbp_cases())


def _mnemonic_under_test(c: Case) -> str:
    prog = assemble(c.src + "halt\n", "c.s")
    pc = c.pc if c.pc is not None else len(prog.words) - 2
    from isa.encoding import decode

    return decode(prog.words[pc])[0].mnemonic


def test_every_instruction_has_a_case():
    covered = {_mnemonic_under_test(c) for c in CASES}
    assert covered == {i.mnemonic for i in TABLE}, {i.mnemonic for i in TABLE} - covered


@pytest.mark.parametrize("datapath", ["fast", "reference"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_instruction_values_and_exact_counters(case: Case, datapath: str):
    prog = assemble(case.src + "halt\n", f"{case.name}.s")
    m = Machine(CFG, prog, datapath=datapath)
    case.setup(m)
    m.run()
    case.check(m)
    pc = case.pc if case.pc is not None else len(prog.words) - 2
    row = {name: int(m.counts[pc, i]) for i, name in enumerate(COUNTERS) if m.counts[pc, i]}
    assert row == case.counts


def test_energy_of_a_mixed_program_is_events_times_the_table():
    src = ("li r1, 0\nli r2, 64\nli r3, 9\nli r9, 11\nrngseed r9\nvmul r2, r1, r2, r3, dt=i16\n"
           "eset e1, 0\neset e2, 3\nrq r1, r1, r3, e2, e1, rnd=uniform, dt=i8\n"
           "li r4, 3\nli r5, 5\nli r6, 2\ngemm r1, r1, r2, r4, r5, r6, sa=1\n"
           "dmast r1, r1, r4, r4, r4, r4\nhalt\n")
    m = Machine(CFG, assemble(src, "mix.s"))
    m.sp_elems(0, 9, 2)[...] = A16
    m.sp_elems(64, 9, 2)[...] = B16
    m.acc[0:9] = [5, 0, -3, 7, 0, 1, 2, 3, 4]
    m.run()
    c = {name: int(m.counts[:, i].sum()) for i, name in enumerate(COUNTERS)}
    e = CFG.energy
    # SRAM below 8 KiB: the 8 KiB -> 32 KiB power law (10 -> 20 pJ for 4x: exponent 1/2)
    # extended down; the 4 KiB scratchpad and the 1 KiB accumulator memory (256 x 4 B)
    sram_4k, sram_1k = 10.0 * (4096 / 8192) ** 0.5, 10.0 * (1024 / 8192) ** 0.5
    want = {
        "multiply": c["mac_ops"] * e.mult_int8,
        "accumulate": c["mac_ops"] * e.add_int32,
        "scratchpad": (c["spad_rd_bytes"] + c["spad_wr_bytes"]) / 8 * sram_4k,
        "accumulator": (c["acc_rd_bytes"] + c["acc_wr_bytes"]) / 8 * sram_1k,
        "dram": (c["dram_rd_bytes"] + c["dram_wr_bytes"]) / 8 * e.dram_per_64b,
        "rng": c["rng_draws"] * e.rng_draw,
        "alu": c["alu_passes"] * e.add_int8 + c["alu_mul_passes"] * e.mult_int8
        + c["rq_elems"] * e.requant_element,
        "control": c["instructions"] * e.instruction,
    }
    got = energy_breakdown(m.counts, CFG)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    # and the events are what the program did: 9 INT16 multiplies (4 passes each), 9 draws
    assert c["alu_mul_passes"] == 36 and c["rng_draws"] == 9 and c["instructions"] == 15
