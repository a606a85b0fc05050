"""The assembler's fast path for large files: a compiled scanner over the source bytes.

:func:`scan` reads every line of a UTF-8 source (as a uint8 array) and encodes the common ones
directly into preallocated arrays, never building a Python object per line. It handles a line
only when it is sure of the result: optional blanks, a mnemonic of the instruction table (any
case), operands that are registers (``r5``, ``e3``, ``r07``), integer literals (decimal
without leading zeros, ``0x``/``0b``/``0o``, optionally negated, no ``_``) in range for their
field, or ``key=value`` keywords (an enum choice or a flag ``0``/``1``), then an optional
comment. Everything else -- labels, ``.equ``, names, other integer spellings, bytes outside
printable ASCII and tab before the comment, and every line it finds invalid -- is marked *slow*
and assembled by the Python assembler (:func:`isa.asm.assemble`'s own line code), so the
semantics and error messages stay those of the Python assembler, which is the reference; the
tests compare the two on generated and edge-case programs, with the JIT on and off.

Encodings come from the instruction table (:data:`isa.spec.TABLE`) through :func:`tables`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from isa.spec import N_EXP_REGS, N_SCALAR_REGS, OPCODE_LO, TABLE

# positional operand kinds and keyword kinds as the scanner sees them
K_REG, K_EREG, K_SIMM, K_UIMM = 0, 1, 2, 3  # "target" is an unsigned index: K_UIMM
KW_FLAG, KW_ENUM = 0, 1
MAX_WIDTH = 62  # fields up to this width are parsed into int64 without overflow


@lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, ...]:
    """The instruction table as arrays for :func:`scan` (instructions with a non-ASCII name or
    a field wider than MAX_WIDTH are left out, so their lines take the slow path)."""
    kinds = {"reg": K_REG, "ereg": K_EREG, "simm": K_SIMM, "uimm": K_UIMM, "target": K_UIMM}
    ins_list = sorted((ins for ins in TABLE if ins.mnemonic.isascii()
                       and all(f.width <= MAX_WIDTH for f in ins.fields)),
                      key=lambda ins: ins.mnemonic.encode())
    n = len(ins_list)
    max_mn = max(len(ins.mnemonic) for ins in ins_list)
    max_pos = max(1, max(len(ins.positional) for ins in ins_list))
    max_kw = max(1, max(len(ins.keywords) for ins in ins_list))
    kws = [f for ins in ins_list for f in ins.keywords]
    max_kwname = max([1] + [len(f.name) for f in kws])
    max_ch = max([1] + [len(f.choices) for f in kws])
    max_chlen = max([1] + [len(c) for f in kws for c in f.choices])
    mn = np.zeros((n, max_mn), np.uint8)
    mn_len = np.zeros(n, np.int64)
    opcode = np.zeros(n, np.uint64)
    bucket = np.zeros((256, 2), np.int64)  # [first byte] -> [start, end) in the sorted table
    npos = np.zeros(n, np.int64)
    pos = np.zeros((n, max_pos, 3), np.int64)  # kind, lo, width
    nkw = np.zeros(n, np.int64)
    kw = np.zeros((n, max_kw, 4), np.int64)  # kind, lo, name length, number of choices
    kwname = np.zeros((n, max_kw, max_kwname), np.uint8)
    choice = np.zeros((n, max_kw, max_ch, max_chlen), np.uint8)
    choice_len = np.zeros((n, max_kw, max_ch), np.int64)
    for i, ins in enumerate(ins_list):
        raw = ins.mnemonic.encode()
        mn[i, : len(raw)] = np.frombuffer(raw, np.uint8)
        mn_len[i] = len(raw)
        opcode[i] = np.uint64(ins.opcode) << np.uint64(OPCODE_LO)
        if bucket[raw[0], 1] == 0:
            bucket[raw[0], 0] = i
        bucket[raw[0], 1] = i + 1
        npos[i] = len(ins.positional)
        for j, f in enumerate(ins.positional):
            pos[i, j] = (kinds[f.kind], f.lo, f.width)
        nkw[i] = len(ins.keywords)
        for j, f in enumerate(ins.keywords):
            name = f.name.encode()
            kw[i, j] = (KW_ENUM if f.kind == "enum" else KW_FLAG, f.lo, len(name),
                        len(f.choices))
            kwname[i, j, : len(name)] = np.frombuffer(name, np.uint8)
            for c, text in enumerate(f.choices):
                b = text.encode()
                choice[i, j, c, : len(b)] = np.frombuffer(b, np.uint8)
                choice_len[i, j, c] = len(b)
    return mn, mn_len, opcode, bucket, npos, pos, nkw, kw, kwname, choice, choice_len


def scan(buf: np.ndarray, words: np.ndarray, lines: np.ndarray, start: np.ndarray,
         end: np.ndarray, slow: np.ndarray) -> int:
    """Scan the source bytes ``buf`` (uint8) line by line (lines end at ``\\n``; one ``\\r``
    before it is dropped). Every line but blank and comment-only ones takes a slot, in order:
    ``lines[slot]`` is its 1-based line number; a handled line has ``slow[slot] = 0``, its
    instruction word in ``words[slot]`` and its text (comment and outer blanks removed) at
    bytes ``[start[slot], end[slot])``; any other line has ``slow[slot] = 1`` and its bytes
    (without the line end) at ``[start[slot], end[slot])``. The arrays need one entry per
    line. Returns the number of slots."""
    return _scan(buf, words, lines, start, end, slow, *tables())


@njit(cache=True)
def _is_blank(b) -> bool:
    return b == 32 or b == 9


@njit(cache=True)
def _scan(buf, words, lines, start, end, slow, mn, mn_len, opcode, bucket, npos, pos, nkw,
          kw, kwname, choice, choice_len):  # pragma: no cover - compiled (tested jit-off too)
    n = buf.shape[0]
    at = 0
    lineno = 1
    ns = 0
    while True:
        e = at
        while e < n and buf[e] != 10:
            e += 1
        r = e
        if r > at and buf[r - 1] == 13:
            r -= 1
        c = at  # end of the code: the first '#' or ';'
        plain = True
        while c < r:
            b = buf[c]
            if b == 35 or b == 59:
                break
            if (b < 32 and b != 9) or b >= 127 or b == 58:  # control, non-ASCII, ':'
                plain = False
                break
            c += 1
        s = at
        t = c
        if plain:
            while s < t and _is_blank(buf[s]):
                s += 1
            while t > s and _is_blank(buf[t - 1]):
                t -= 1
        if not plain or s < t:
            ok = False
            w = np.uint64(0)
            if plain:
                ok, w = _line(buf, s, t, mn, mn_len, opcode, bucket, npos, pos, nkw, kw,
                              kwname, choice, choice_len)
            lines[ns] = lineno
            if ok:
                words[ns] = w
                start[ns] = s
                end[ns] = t
                slow[ns] = 0
            else:
                words[ns] = 0
                start[ns] = at
                end[ns] = r
                slow[ns] = 1
            ns += 1
        if e >= n:
            return ns
        at = e + 1
        lineno += 1


@njit(cache=True)
def _line(buf, s, t, mn, mn_len, opcode, bucket, npos, pos, nkw, kw, kwname, choice,
          choice_len):  # pragma: no cover - compiled (tested jit-off too)
    """(handled, word) for the code ``buf[s:t]`` (no outer blanks, printable ASCII or tab)."""
    fail = (False, np.uint64(0))
    j = s
    while j < t and not _is_blank(buf[j]):
        j += 1
    m = j - s
    first = np.int64(buf[s])
    if 65 <= first <= 90:
        first += 32
    k = -1
    for i in range(bucket[first, 0], bucket[first, 1]):
        if mn_len[i] != m:
            continue
        same = True
        for q in range(m):
            b = np.int64(buf[s + q])
            if 65 <= b <= 90:
                b += 32
            if b != mn[i, q]:
                same = False
                break
        if same:
            k = i
            break
    if k < 0:
        return fail
    w = opcode[k]
    while j < t and _is_blank(buf[j]):
        j += 1
    n_pos = 0
    seen = 0  # keywords given, one bit each
    if j < t:
        p = j
        while True:
            q = p
            while q < t and buf[q] != 44:  # ','
                q += 1
            a = p
            b = q
            while a < b and _is_blank(buf[a]):
                a += 1
            while b > a and _is_blank(buf[b - 1]):
                b -= 1
            if a == b:
                return fail  # an empty operand
            eq = a
            while eq < b and buf[eq] != 61:  # '='
                eq += 1
            if eq < b:  # key=value
                ke = eq
                while ke > a and _is_blank(buf[ke - 1]):
                    ke -= 1
                vs = eq + 1
                while vs < b and _is_blank(buf[vs]):
                    vs += 1
                f = -1
                for i in range(nkw[k]):
                    if kw[k, i, 2] == ke - a:
                        same = True
                        for x in range(ke - a):
                            if buf[a + x] != kwname[k, i, x]:
                                same = False
                                break
                        if same:
                            f = i
                            break
                if f < 0 or (seen >> f) & 1:
                    return fail
                seen |= 1 << f
                v = -1
                if kw[k, f, 0] == KW_ENUM:
                    for c in range(kw[k, f, 3]):
                        if choice_len[k, f, c] == b - vs:
                            same = True
                            for x in range(b - vs):
                                if buf[vs + x] != choice[k, f, c, x]:
                                    same = False
                                    break
                            if same:
                                v = c
                                break
                elif b - vs == 1 and (buf[vs] == 48 or buf[vs] == 49):
                    v = np.int64(buf[vs]) - 48
                if v < 0:
                    return fail
                w |= np.uint64(v) << np.uint64(kw[k, f, 1])
            else:
                if n_pos >= npos[k]:
                    return fail
                kind = pos[k, n_pos, 0]
                lo = pos[k, n_pos, 1]
                width = pos[k, n_pos, 2]
                n_pos += 1
                if kind == K_REG or kind == K_EREG:
                    prefix = 114 if kind == K_REG else 101  # 'r', 'e'
                    limit = N_SCALAR_REGS if kind == K_REG else N_EXP_REGS
                    if buf[a] != prefix or b - a < 2 or b - a > 9:  # 1 to 8 digits
                        return fail
                    v = 0
                    for x in range(a + 1, b):
                        d = np.int64(buf[x])
                        if d < 48 or d > 57:
                            return fail
                        v = v * 10 + (d - 48)
                    if v >= limit:
                        return fail
                    w |= np.uint64(v) << np.uint64(lo)
                else:
                    ok, v = _literal(buf, a, b)
                    if not ok:
                        return fail
                    if kind == K_SIMM:
                        if v < -(1 << (width - 1)) or v > (1 << (width - 1)) - 1:
                            return fail
                    elif v < 0 or v > (1 << width) - 1:
                        return fail
                    w |= np.uint64(v & ((1 << width) - 1)) << np.uint64(lo)
            if q >= t:
                break
            p = q + 1
    if n_pos != npos[k]:
        return fail
    return True, w


@njit(cache=True)
def _literal(buf, a, b):  # pragma: no cover - compiled (tested jit-off too)
    """(ok, value) of an integer literal ``buf[a:b]``: ``-``? then ``0``, decimal digits not
    starting with 0 (at most 18), or 0x/0b/0o digits (at most 15, 62, 20); else not ok."""
    neg = buf[a] == 45  # '-'
    if neg:
        a += 1
    if a >= b:
        return False, 0
    base = 10
    most = 18
    if buf[a] == 48 and b - a >= 2:
        x = np.int64(buf[a + 1]) | 32  # lower case
        if x == 120:  # 'x'
            base, most = 16, 15
        elif x == 98:  # 'b'
            base, most = 2, 62
        elif x == 111:  # 'o'
            base, most = 8, 20
        else:
            return False, 0  # a leading zero
        a += 2
    if a >= b or b - a > most:
        return False, 0
    v = 0
    for i in range(a, b):
        d = np.int64(buf[i])
        if 48 <= d <= 57:
            d -= 48
        elif 97 <= (d | 32) <= 102:
            d = (d | 32) - 87
        else:
            return False, 0
        if d >= base:
            return False, 0
        v = v * base + d
    return True, -v if neg else v

