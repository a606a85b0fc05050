"""Fused execution of a hot instruction sequence (fast datapath only).

The lazy-update tail that the compiler emits for every weight tile,

    rqm   rU, rACC, rN, rMU, eA, eB, rnd=nearest|trunc, dt=i16   # U = requantized update
    vsub  rR, rR, rU, rN, dt=i16                                  # R = R - U (residual)
    vlazy rT, rR, rN, eT, eR                                      # theta, R = lazy(theta, R)

makes three passes over the tile (one through an int64 temporary) and three dispatches; fused,
it is one pass with about a third of the memory traffic and one dispatch. The fused handler
replaces the ``rqm`` at decode time and executes all three instructions only when doing so is
indistinguishable from executing them one by one:

* statically: the register wiring above (same count register, the ``vsub`` reads and writes
  the residual in place and subtracts the ``rqm`` destination, ``vlazy`` updates that
  residual), ``dt=i16`` for both, rounding ``nearest`` or ``trunc`` (no RNG draws);
* at run time, before any state changes: every operand check of the three instructions passes
  (counts, shifts, multiplier, bounds), the requantizer shift is positive, the three
  scratchpad ranges (U, R, theta) are pairwise disjoint, and neither the step budget, the
  cycle budget nor a break point falls inside the sequence.

Otherwise it executes the ``rqm`` alone and the machine goes on with the plain ``vsub`` and
``vlazy``. Values, flags and every per-instruction counter are identical either way; tests
compare fused, unfused and reference machines on random cases, adversarial aliasing included.
Runs with a tracer or with DMA overlap never fuse (they observe each instruction's timing).
The compiled interpreter fuses the same sequences under the same conditions
(:func:`emulator.vecops.exec_update`, marked statically by :func:`match_update`).
"""

from __future__ import annotations

from typing import Any

from emulator.counters import CYCLES, INSTRUCTIONS, N_COUNTERS, SATURATIONS
from emulator.reference import ROUND_NEAREST, ROUND_TRUNC
from emulator.state import FLAG_ALU_SATURATION, FLAG_RQ_SATURATION, State
from isa.spec import DTYPES

I16 = DTYPES.index("i16")


def match_update(decoded: list[tuple[Any, dict[str, int], Any]], pc: int) -> bool:
    """Whether pcs ``pc, pc+1, pc+2`` hold the lazy-update sequence, statically."""
    if pc + 2 >= len(decoded):
        return False
    (_, rq, i1), (_, sub, i2), (_, lz, i3) = decoded[pc : pc + 3]
    if (i1.mnemonic, i2.mnemonic, i3.mnemonic) != ("rqm", "vsub", "vlazy"):
        return False
    return (rq["dt"] == I16 and rq["rnd"] in (ROUND_NEAREST, ROUND_TRUNC)
            and sub["dt"] == I16 and sub["rd"] == sub["ra"] and sub["rb"] == rq["rd"]
            and sub["rn"] == rq["rn"] == lz["rn"] and lz["ra"] == sub["rd"])


def _disjoint(*ranges: tuple[int, int]) -> bool:
    spans = sorted(ranges)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def make_update_handler(plain, ops: tuple[dict[str, int], dict[str, int], dict[str, int]]):
    """The fused handler for the sequence starting at a matched pc; ``plain`` is the ``rqm``
    handler it falls back to."""
    rq, _, lz = ops
    r_u, r_acc, r_n, r_mul = rq["rd"], rq["racc"], rq["rn"], rq["rmul"]
    e_out, e_in, mode, relu = rq["eout"], rq["ein"], rq["rnd"], bool(rq["relu"])
    r_res, r_t, e_t, e_a = lz["ra"], lz["rt"], lz["et"], lz["ea"]

    def fused(m: State, o: dict[str, int]) -> int | None:
        r, e = m.r, m.e
        n, mul = r[r_n], r[r_mul]
        shift = e[e_out] - e[e_in]
        s = e[e_t] - e[e_a]
        u, res, t, acc = r[r_u], r[r_res], r[r_t], r[r_acc]
        pc = m.pc
        step_limit, cycle_limit, break_pc = m.limits
        if not (n >= 0 and 0 < shift <= 31 and 0 <= s <= 15 and -(1 << 31) <= mul < (1 << 31)
                and 0 <= acc and acc + n <= m.acc.size and min(u, res, t) >= 0
                and max(u + 2 * n, res + 2 * n, t + n) <= m.spad.size
                and _disjoint((u, u + 2 * n), (res, res + 2 * n), (t, t + n))
                and m.steps + 2 < step_limit and break_pc not in (pc + 1, pc + 2)):
            return plain(m, o)
        (d_rq, c_rq), (d_sub, c_sub), (d_lz, c_lz) = (
            m._cached_cost(("requant", n, 2)), m._cached_cost(("alu", n, 2, 2, False)),
            m._cached_cost(("lazy", n)))
        cyc_rq, cyc_sub = d_rq.get(CYCLES, 0), d_sub.get(CYCLES, 0)
        if m.cycles + cyc_rq >= cycle_limit or m.cycles + cyc_rq + cyc_sub >= cycle_limit:
            return plain(m, o)
        spad = m.spad
        n_rq, n_sub, n_lz = m.dp.update_into(
            spad[u : u + 2 * n].view("<i2"), m.acc[acc : acc + n],
            spad[res : res + 2 * n].view("<i2"), spad[t : t + n].view("i1"),
            mul, shift, mode, relu, s)
        mv = m._cmv
        for i, (cost, nsat, flag) in enumerate(((c_rq, n_rq, FLAG_RQ_SATURATION),
                                                (c_sub, n_sub, FLAG_ALU_SATURATION),
                                                (c_lz, n_lz, FLAG_ALU_SATURATION))):
            base = (pc + i) * N_COUNTERS
            for k, v in cost:
                mv[base + k] += v
            if nsat:
                mv[base + SATURATIONS] += nsat
                m.flags |= flag
            if i:  # the run loop counts the first instruction and its step
                mv[base + INSTRUCTIONS] += 1
        m.cycles += cyc_rq + cyc_sub + d_lz.get(CYCLES, 0)
        m.steps += 2
        m.fused_sequences += 1
        return pc + 3

    return fused
