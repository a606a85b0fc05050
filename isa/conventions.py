"""Machine-wide facts every instruction relies on: the dither generator's constants, the
sticky flag bits, reset values and the requantizer's draw width.

They live in the lowest layer so that the emulator imports them (``emulator/rng.py``,
``emulator/state.py``) and ``docs/isa.md`` renders them (:mod:`isa.docs`): code and docs
cannot disagree. The prose of the "Machine state and conventions" section is
:func:`conventions_markdown`.
"""

from __future__ import annotations

# ------------------------------------------------------------------------- dither generator
# SplitMix64 (Steele, Lea, Flood 2014; Vigna's splitmix64.c) used as a counter-based generator
RNG_GAMMA = 0x9E3779B97F4A7C15
RNG_MIX1 = 0xBF58476D1CE4E5B9
RNG_MIX2 = 0x94D049BB133111EB
RNG_SHIFTS = (30, 27, 31)
DRAW_BITS = 64  # bits of one draw; the dithered requantizer uses at most all of them

# ------------------------------------------------------------------------- sticky flags
FLAG_ACC_OVERFLOW = 1  # bit 0
FLAG_RQ_SATURATION = 2  # bit 1
FLAG_ALU_SATURATION = 4  # bit 2
N_FLAG_BITS = 3

# which instructions can set which flag; the counter each event is added to
FLAG_SOURCES: dict[int, tuple[str, tuple[str, ...]]] = {
    FLAG_ACC_OVERFLOW: ("acc_overflows", ("gemm", "vrsum", "vtoacc", "vwmul", "dmaldacc",
                                          "conv", "vsumpool", "vunpool", "vbias")),
    FLAG_RQ_SATURATION: ("saturations", ("rq", "rqm", "vcvt")),
    FLAG_ALU_SATURATION: ("saturations", ("vadd", "vsub", "vmul", "vsll", "vsubrow",
                                          "vnormrow", "vlazy", "vrsqrt")),
}

# ------------------------------------------------------------------------- range folding
# Exponent differences are 32-bit differences, so shifts reach +-(2**32 - 1). The results of
# these instructions stop changing beyond the bounds below (proofs in conventions_markdown and
# the tests); implementations may clamp to them. (lo, hi) per instruction parameter.
RQ_SHIFT_FOLD = (-64, 128)  # rq / rqm / vcvt shift s (sources have at most 63 bits)
LAZY_SHIFT_FOLD = 16  # vlazy: every s >= 16 moves nothing
EXP_E_FOLD = (-25, 9)  # vexp input exponent
NORM_F_FOLD = (-17, 47)  # vnormrow fraction bits f = -e[eout]
RSQRT_K_FOLD = (-3, 46)  # vrsqrt K = -e[ein] - 2 e[eout]
# vbias s = e[eacc] - e[eb]: from s >= 16 every shifted INT16 bias rounds to 0; from s <= -33
# every nonzero one is at least 2**33 in magnitude, so a saturating sum lands on the limit of
# its sign and a wrapping one (bits <= 32) on the old value, both counted as an overflow
BIAS_SHIFT_FOLD = (-33, 16)


def _hex(v: int) -> str:
    return f"0x{v:016X}"


FLAG_NAMES = {FLAG_ACC_OVERFLOW: "accumulator overflow", FLAG_RQ_SATURATION:
              "requantizer saturation", FLAG_ALU_SATURATION: "vector-unit saturation"}


def _flag_rows() -> list[str]:
    rows = []
    for bit, (counter, mnemonics) in FLAG_SOURCES.items():
        ms = ", ".join(f"`{m}`" for m in mnemonics)
        rows.append(f"| {bit.bit_length() - 1} ({bit}) | {FLAG_NAMES[bit]} | {ms} | "
                    f"`{counter}` |")
    return rows


def conventions_markdown() -> str:
    """The "Machine state and conventions" section of docs/isa.md: what every instruction's
    pseudo-code relies on, precise enough to reimplement the machine to the bit."""
    g1, g2, g3 = RNG_SHIFTS
    lines = [
        "## Machine state and conventions",
        "",
        "### Architectural state and reset values",
        "",
        "A machine starts (reset) with every bit of state zero. The host may then write DRAM,",
        "the scratchpad and the accumulator before running; `halt` keeps all state, and a",
        "restarted program continues from it.",
        "",
        "| state | width | reset | notes |",
        "|---|---|---|---|",
        "| `dram` | `memory.dram_bytes` bytes | 0 | byte-addressed; the host's window |",
        "| `sp` scratchpad | `memory.scratchpad_bytes` bytes | 0 | INT8 and INT16 elements |",
        "| `acc` accumulator memory | `accumulator.entries` entries of `accumulator.bits` "
        "(<= 32) | 0 | addressed by entry; every write is `fit_acc`-ed first |",
        "| `r0`..`r31` | 64-bit two's complement | 0 | `r0` reads 0 and ignores writes |",
        "| `e0`..`e15` | 32-bit two's complement | 0 | a write outside the range faults |",
        "| `rng.seed`, `rng.counter` | 64-bit unsigned each | 0, 0 | the dither generator |",
        f"| `flags` | {N_FLAG_BITS} sticky bits | 0 | set by saturations, cleared by "
        "`clrflags` only |",
        "| `pc` | instruction index | 0 | `halt` leaves it on the `halt` |",
        "",
        "Counters (cycles, bytes, MACs, ...) are the emulator's measurements, not architectural",
        "state; they also start at 0.",
        "",
        "### Memory, elements, alignment and aliasing",
        "",
        "- INT8 elements are single bytes. INT16 elements are two bytes, little-endian (low",
        "  byte at the lower address), and may start at **any byte address**: there is no",
        "  alignment rule, and an odd address costs nothing extra. An instruction's INT16",
        "  operand of n elements at byte address a covers bytes [a, a + 2n).",
        "- Accumulator addresses and counts are in entries; DRAM and scratchpad addresses in",
        "  bytes. Every range an instruction touches is bounds-checked (and every count checked",
        "  to be >= 0) before any state changes: a faulting instruction leaves the machine as",
        "  it was (its counters included).",
        "- Every instruction reads all of its source elements before it writes any result, so",
        "  sources and destination may overlap in any way (identical, offset, partial) and the",
        "  result is that of reading first. `vlazy`, whose two ranges are both read and",
        "  written, writes all parameters and then all residuals: where its two ranges overlap,",
        "  the residual's bytes are the ones left. `vmaxpool` with `idx=1` writes all of Y and",
        "  then all indices: where those two ranges overlap, the indices' bytes are the ones",
        "  left.",
        "- An instruction with a zero count changes nothing (except `gemm` with K = 0 and",
        "  M, N > 0, which clears C unless `acc`, and likewise `conv` whose output is not",
        "  empty but whose sum is: C = 0 (fwd, dgrad), N = 0 (wgrad) or F = 0 (dgrad); a",
        "  `vunpool` with acc=0 clears dX). Its addresses must still lie in [0, size]",
        "  of their memory (an empty range may start at the very end), except a DMA",
        "  transfer's DRAM and scratchpad sides (see DMA rules). Its cost follows",
        "  `docs/timing.md`: an empty vector or DMA instruction still costs its latency, an",
        "  empty `gemm` nothing.",
        "",
        "### Sticky flags and saturation counters",
        "",
        "`flags` reads the sticky bits; each stays set until `clrflags`. Every element whose",
        "result is changed by saturation (or by wrapping, for the accumulator) sets its bit",
        "and adds one to its counter. No other instruction sets a flag; shifts that lose",
        "low bits (`vsra`, the requantizer's right shifts) are rounding, not saturation.",
        "",
        "| bit | meaning | set by | counter |",
        "|---|---|---|---|",
        *_flag_rows(),
        "",
        "`vlazy` counts a parameter that saturates at -128 or 127 (its residual keeps what",
        "did not move, so no value is lost). `vrsqrt` counts x <= 0 (an infinite result) and",
        "results above 32767. `vnormrow` and `vsubrow` count like the element-wise ALU.",
        "",
        "### The dither generator",
        "",
        "SplitMix64 (Steele, Lea and Flood 2014; Vigna's `splitmix64.c`) used as a counter-based",
        "generator. The state is two 64-bit unsigned words, `seed` and `counter`. Draw number n",
        "(0 <= n < 2**64) of the stream is (Python, unbounded integers):",
        "",
        "```python",
        "def draw_n(seed, n):",
        f"    x = (seed + (n + 1) * {_hex(RNG_GAMMA)}) % 2**64",
        f"    x = ((x ^ (x >> {g1})) * {_hex(RNG_MIX1)}) % 2**64",
        f"    x = ((x ^ (x >> {g2})) * {_hex(RNG_MIX2)}) % 2**64",
        f"    return x ^ (x >> {g3})                  # the draw z, 64 bits",
        "```",
        "",
        "i.e. the (n+1)-th output of SplitMix64 started from state `seed`. Known answers:",
        "seed 0 gives draws 0, 1, 2 = `0xE220A8397B1DCDAF`, `0x6E789E6AA1B965F4`,",
        "`0x06C45D188009454F` (more in `tests/data/rng_kat.json`).",
        "",
        "- `rngseed ra`: seed = r[ra] mod 2**64 (its two's complement bits), counter = 0.",
        "  `rngctr ra`: counter = r[ra] mod 2**64. `rngrd` reads either word as a signed",
        "  64-bit value (the same bits). Reset: seed = 0, counter = 0.",
        "- `draw()` in the pseudo-code returns draw number `counter` and then sets counter =",
        "  (counter + 1) mod 2**64: the counter wraps from 2**64 - 1 to 0, and the stream",
        "  continues (draw n depends only on seed and n mod 2**64).",
        "- Only `rq`, `rqm` and `vcvt` draw: exactly one draw per element, in ascending element",
        "  order (element i of an instruction that starts at counter c uses draw c + i), when",
        "  `rnd` is `uniform` or `triangular` and the shift s > 0. That includes elements whose",
        "  result then saturates, is clamped by `relu`, or does not depend on the draw (for",
        "  example s >= 128). Otherwise an instruction draws nothing. Every draw is counted in",
        "  `rng_draws`.",
        "",
        "### Requantizer rounding",
        "",
        "`rq`, `rqm` and `vcvt` turn an integer source `a` into `round_shift(a, s, rnd, z)`,",
        "then apply `relu`, then saturate. Sources: accumulator entries (`rq`, at most 32",
        "bits), the exact product of an entry and a 32-bit multiplier (`rqm`, |a| <= 2**62, a",
        "63-bit signed value), INT8/INT16 elements (`vcvt`). The shift s = e[eout] - e[ein]",
        "may be any difference of two 32-bit exponents. The definition is Python on unbounded",
        "integers (`//` is floor division, `%` is non-negative):",
        "",
        "```python",
        f"def round_shift(a, s, rnd, z):          # z: the element's {DRAW_BITS}-bit draw "
        "(0 if none)",
        "    if s <= 0:",
        "        return a * 2**-s                # exact; the saturation after it does the rest",
        "    if rnd == 'nearest':",
        "        return (a + 2**(s-1)) // 2**s   # ties toward +infinity",
        "    if rnd == 'trunc':",
        "        return a // 2**s                # toward -infinity",
        "    if rnd == 'triangular' and s < 64:",
        "        t = min(s, 63 - s)              # t = s when s <= 31",
        "        u = z % 2**s                    # draw bits [s-1 : 0]",
        "        v = (z >> s) % 2**t             # draw bits [s+t-1 : s]",
        "        b = (z >> (s + t)) & 1          # draw bit s+t",
        "        return (a + u + (v + b) * 2**(s-t) - 2**(s-1)) // 2**s",
        "    # uniform, and triangular with s >= 64",
        "    if s > 64:                          # round by the bits no draw can cover ...",
        "        a = (a + 2**(s-65)) // 2**(s-64)    # (to nearest, ties up)",
        "        s = 64",
        "    u = z % 2**s                        # ... then dither with all 64 draw bits",
        "    return (a + u) // 2**s",
        "```",
        "",
        "- **nearest** and **trunc** are exact for every s. From s >= 64 nearest gives 0 and,",
        "  from s >= 63, trunc gives 0 or -1 (the sign), because |a| <= 2**62.",
        "- **uniform**, s <= 64: u is uniform on the 2**s values [0, 2**s), so y = floor(a/2**s)",
        "  + 1 with probability exactly (a mod 2**s) / 2**s: **exactly unbiased**, E[y] = a/2**s.",
        "  (This is 004 eq. 4.5's non-subtractive mid-tread dither floor((a + d + 2**(s-1)) /",
        "  2**s) with d = u - 2**(s-1).)",
        "- **triangular**, s <= 31: d = u + v - 2**s + b, the sum of two independent",
        "  uniform dithers plus a fair bit: triangular (TPDF) dither, using 2s + 1 draw bits.",
        "  It is **exactly unbiased**: for each (v, b) the uniform u makes E[y] = (a + v + b -",
        "  2**(s-1)) / 2**s, and E[v + b] = 2**(s-1). For 32 <= s <= 63 only 63 - s bits are",
        "  left for v, so the second term (v + b) * 2**(s-t) - 2**(s-1) lives on a grid of",
        "  2**(s-t): still exactly zero-mean (E[v + b] = 2**(t-1)), so y stays **exactly",
        "  unbiased**, with a coarser triangle (at s = 63, t = 0: a symmetric two-point second",
        "  term). At s = 64 no bit is left beyond u: triangular equals uniform (exactly",
        "  unbiased).",
        "- **s > 64, both dither modes**: exact unbiasedness is impossible with one 64-bit draw:",
        "  E[y] is then a multiple of 2**-64, while a / 2**s is not unless 2**(s-64) divides a.",
        "  The definition rounds a to nearest by its s - 64 lowest bits and dithers the rest",
        "  exactly, so E[y] = round(a / 2**(s-64)) / 2**64 and |E[y] - a/2**s| <= 2**-65 (while",
        "  |a / 2**s| <= 2**-3 there). Every element still takes its one draw.",
        "- Left shifts (s <= 0) are exact and then saturate: every nonzero source saturates",
        "  once -s >= 16 (INT16) or -s >= 8 (INT8).",
        f"- Range folding: because |a| <= 2**62, every result and saturation count for s <= "
        f"{RQ_SHIFT_FOLD[0]}",
        f"  equals the one at s = {RQ_SHIFT_FOLD[0]}, and for s >= {RQ_SHIFT_FOLD[1]} the one "
        f"at s = {RQ_SHIFT_FOLD[1]} (0, or -1",
        "  for trunc of a negative source), so an implementation may clamp s to that range",
        "  (the draws do not change).",
        "",
        "### Exponent ranges of the other units",
        "",
        "No instruction faults because of an exponent value except where it would have to",
        "write an exponent outside the 32-bit range. Each unit's results stop changing beyond",
        "a bound, to which an implementation may clamp (the pseudo-code of each instruction",
        "gives the reason):",
        "",
        "| instruction | parameter | results constant for | fault |",
        "|---|---|---|---|",
        f"| `rq`, `rqm`, `vcvt` | s = e[eout] - e[ein] | s <= {RQ_SHIFT_FOLD[0]}, "
        f"s >= {RQ_SHIFT_FOLD[1]} | none |",
        f"| `vexp` | e[ea] | e <= {EXP_E_FOLD[0]}, e >= {EXP_E_FOLD[1]} | none |",
        f"| `vnormrow` | f = -e[eout] | f <= {NORM_F_FOLD[0]}, f >= {NORM_F_FOLD[1]} | none |",
        f"| `vrsqrt` | K = -e[ein] - 2 e[eout] | K <= {RSQRT_K_FOLD[0]}, "
        f"K >= {RSQRT_K_FOLD[1]} | none |",
        f"| `vbias` | s = e[eacc] - e[eb] | s <= {BIAS_SHIFT_FOLD[0]}, "
        f"s >= {BIAS_SHIFT_FOLD[1]} | none |",
        f"| `vlazy` | s = e[et] - e[ea] | s >= {LAZY_SHIFT_FOLD} (nothing moves) | s < 0 "
        "(a residual grid coarser than the parameter grid) |",
        "| `efit`, `eadd`, `eaddi`, `esetr` | the exponent written | - | result outside "
        "[-2**31, 2**31 - 1] |",
        "",
        "### DMA rules",
        "",
        "- Row i of a transfer covers [base + i * stride, base + i * stride + row bytes) in its",
        "  memory (`dmaldacc`/`dmastacc`: row bytes = 4 * cols in DRAM; the accumulator side is",
        "  `rows * cols` dense entries). Every row of both sides is bounds-checked before any",
        "  byte moves.",
        "- Strides must be >= 0 (a negative stride faults, whatever the row count). A stride",
        "  smaller than the row bytes makes rows overlap: allowed on the source side (stride 0",
        "  reads the same row again: a broadcast), a fault on the destination side when rows >",
        "  1 and row bytes > 0.",
        "- Source and destination are always in different memories, so they never overlap.",
        "- rows = 0 or row bytes (cols) = 0 moves nothing and checks no DRAM or scratchpad",
        "  address (the accumulator address of `dmaldacc`/`dmastacc` must still lie in",
        "  [0, entries]); it still costs the DMA latency (`docs/timing.md`).",
        "- `dmaldacc` fits each int32 to the accumulator width (`fit_acc`; overflows set flag",
        "  bit 0); `dmastacc` writes each entry as a little-endian int32 (it always fits).",
        "",
        "### Faults",
        "",
        "A fault (`ExecutionError`, or `MemoryAccessError` for an address; `docs/errors.md`)",
        "stops the program before the faulting instruction changes anything. The conditions:",
        "a negative count (elements, rows, columns, row bytes, M, K, N); an address range",
        "outside its memory; an exponent write outside 32 bits; an `rqm` multiplier outside",
        "32 bits; a negative `vsra`/`vsll` shift amount; `vrmax` of rows > 0 with 0 columns;",
        "a negative DMA stride or overlapping destination rows; a negative `vlazy` shift; a",
        "geometry register outside [0, 2**32), a zero window or stride, or a window larger",
        "than the padded input (`conv`, `vmaxpool`, `vsumpool`, `vunpool`); a `vmaxpool`",
        "window entirely in the padding, or `idx=1` with KH KW > 256; a `vunpool` index that",
        "is >= KH KW or selects a padding position; a pc outside the program; and the step or",
        "cycle budget running out (`BudgetExceeded`).",
    ]
    return "\n".join(lines) + "\n"
