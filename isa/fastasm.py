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
K_REG, K_EREG, K_SIMM, K_UIMM, K_TARGET = 0, 1, 2, 3, 4  # a target is an unsigned index
KW_FLAG, KW_ENUM = 0, 1
MAX_WIDTH = 62  # fields up to this width are parsed into int64 without overflow


@lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, ...]:
    """The instruction table as arrays for :func:`scan` (instructions with a non-ASCII name or
    a field wider than MAX_WIDTH are left out, so their lines take the slow path)."""
    kinds = {"reg": K_REG, "ereg": K_EREG, "simm": K_SIMM, "uimm": K_UIMM, "target": K_TARGET}
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


def label_mode_max_lines() -> int:
    """The most lines a source may have for :func:`scan` to handle labels (every pc then fits
    every target field), or 0 if it cannot (an instruction is missing from its table, whose
    mnemonics a label must not equal)."""
    mn = tables()[0]
    if len(mn) != len(TABLE):
        return 0
    widths = [f.width for ins in TABLE for f in ins.fields if f.kind == "target"]
    return (1 << min(widths)) - 1 if widths else 1 << 62


def scan(buf: np.ndarray, words: np.ndarray, lines: np.ndarray, start: np.ndarray,
         end: np.ndarray, slow: np.ndarray, labels: bool = False
         ) -> tuple[int, int, np.ndarray]:
    """Scan the source bytes ``buf`` (uint8) line by line (lines end at ``\\n``; one ``\\r``
    before it is dropped). Every line but blank, comment-only and (with ``labels``) label-only
    ones takes a slot, in order: ``lines[slot]`` is its 1-based line number; a handled line
    has ``slow[slot] = 0``, its instruction word in ``words[slot]`` and its text (labels,
    comment and outer blanks removed) at bytes ``[start[slot], end[slot])``; any other line has
    ``slow[slot] = 1`` and its bytes (without the line end) at ``[start[slot], end[slot])``.
    The arrays need one entry per line.

    With ``labels`` (for sources of at most :func:`label_mode_max_lines` lines), label
    definitions on handled lines and target operands naming a label are handled too; the pc of
    a label is the number of slots before it, which is its pc if no slow line turns out to
    have no instruction. Returns (slots, status, label table): status 0, or 1 if a label is
    defined twice or is a mnemonic or a target names no label defined on a handled line (then
    the result is void: scan again without ``labels``); the table is one row per label
    (first byte, length, pc) in order of definition."""
    ns, status, lab, nlab = _scan(buf, words, lines, start, end, slow, labels, *tables())
    return ns, status, lab[:nlab]


@njit(cache=True)
def _is_blank(b) -> bool:
    return b == 32 or b == 9


@njit(cache=True)
def _is_name_char(b, first) -> bool:
    """NAME_PATTERN's characters: [A-Za-z_] first, then also [0-9.]."""
    lower = b | 32
    return (97 <= lower <= 122) or b == 95 or (not first and (48 <= b <= 57 or b == 46))


@njit(cache=True)
def _hash(buf, s, n):
    h = 0
    for i in range(s, s + n):
        h = (h * 31 + np.int64(buf[i])) & 0x3FFFFFFF
    return h ^ (h >> 13)


@njit(cache=True)
def _find(buf, s, n, lab, table):
    """Index of the label named ``buf[s:s+n]`` in ``lab``, or -1; and its hash-table slot."""
    mask = table.shape[0] - 1
    h = _hash(buf, s, n) & mask
    while table[h] >= 0:
        i = table[h]
        if lab[i, 1] == n:
            same = True
            for x in range(n):
                if buf[lab[i, 0] + x] != buf[s + x]:
                    same = False
                    break
            if same:
                return i, h
        h = (h + 1) & mask
    return -1, h


@njit(cache=True)
def _scan(buf, words, lines, start, end, slow, labels, mn, mn_len, opcode, bucket, npos, pos,
          nkw, kw, kwname, choice, choice_len):  # pragma: no cover - compiled (tested jit-off)
    n = buf.shape[0]
    lab = np.empty((16, 3), np.int64)  # label: first byte, length, pc (grows)
    nlab = 0
    table = np.full(64, -1, np.int64)  # open addressing: label index per slot (grows)
    fwd = np.empty((16, 4), np.int64)  # target naming a later label: slot, lo, first, length
    nfwd = 0
    refs = np.empty((pos.shape[1], 4), np.int64)  # one line's targets naming labels
    line_labels = np.empty((16, 2), np.int64)  # one line's label definitions: first, length
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
        colon = False
        while c < r:
            b = buf[c]
            if b == 35 or b == 59:
                break
            if (b < 32 and b != 9) or b >= 127:  # control, non-ASCII
                plain = False
                break
            if b == 58:
                colon = True
                if not labels:
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
        nll = 0
        if plain and colon:  # labels at the start: NAME blanks ':' blanks, repeated
            while True:
                x = s
                if x < t and _is_name_char(buf[x], True):
                    x += 1
                    while x < t and _is_name_char(buf[x], False):
                        x += 1
                    y = x
                    while y < t and _is_blank(buf[y]):
                        y += 1
                    if y < t and buf[y] == 58:
                        if nll == line_labels.shape[0]:
                            line_labels = _grow(line_labels)
                        line_labels[nll, 0] = s
                        line_labels[nll, 1] = x - s
                        nll += 1
                        s = y + 1
                        while s < t and _is_blank(buf[s]):
                            s += 1
                        continue
                break
            for x in range(s, t):
                if buf[x] == 58:  # a ':' not in a label: Python words what it means
                    plain = False
                    nll = 0
                    break
        ok = False
        w = np.uint64(0)
        nref = 0
        if not plain or s < t:
            if plain:
                ok, w, nref = _line(buf, s, t, labels, refs, mn, mn_len, opcode, bucket, npos,
                                    pos, nkw, kw, kwname, choice, choice_len)
            lines[ns] = lineno
            if ok:
                start[ns] = s
                end[ns] = t
                slow[ns] = 0
            else:
                w = np.uint64(0)
                nll = 0
                start[ns] = at
                end[ns] = r
                slow[ns] = 1
        for i in range(nll):  # define this line's labels (it has no instruction or it is ok)
            ls = line_labels[i, 0]
            ln = line_labels[i, 1]
            if _is_mnemonic(buf, ls, ln, mn, mn_len, bucket):
                return ns, 1, lab, nlab
            if 2 * (nlab + 1) > table.shape[0]:
                table = np.full(2 * table.shape[0], -1, np.int64)
                for j in range(nlab):
                    _, h = _find(buf, lab[j, 0], lab[j, 1], lab, table)
                    table[h] = j
            j, h = _find(buf, ls, ln, lab, table)
            if j >= 0:
                return ns, 1, lab, nlab  # defined twice
            if nlab == lab.shape[0]:
                lab = _grow(lab)
            lab[nlab, 0] = ls
            lab[nlab, 1] = ln
            lab[nlab, 2] = ns
            table[h] = nlab
            nlab += 1
        if not plain or s < t:
            for i in range(nref):  # targets naming a label: known now, or at the end
                j, _ = _find(buf, refs[i, 2], refs[i, 3], lab, table)
                if j >= 0:
                    w |= np.uint64(lab[j, 2]) << np.uint64(refs[i, 0])
                else:
                    if nfwd == fwd.shape[0]:
                        fwd = _grow(fwd)
                    fwd[nfwd, 0] = ns
                    fwd[nfwd, 1] = refs[i, 0]
                    fwd[nfwd, 2] = refs[i, 2]
                    fwd[nfwd, 3] = refs[i, 3]
                    nfwd += 1
            words[ns] = w
            ns += 1
        if e >= n:
            break
        at = e + 1
        lineno += 1
    for i in range(nfwd):
        j, _ = _find(buf, fwd[i, 2], fwd[i, 3], lab, table)
        if j < 0:
            return ns, 1, lab, nlab  # no such label on a handled line
        words[fwd[i, 0]] |= np.uint64(lab[j, 2]) << np.uint64(fwd[i, 1])
    return ns, 0, lab, nlab


@njit(cache=True)
def _grow(a):
    b = np.empty((2 * a.shape[0], a.shape[1]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _is_mnemonic(buf, s, n, mn, mn_len, bucket):
    """Whether ``buf[s:s+n]`` is exactly a mnemonic (case counts: a label may be ``LI``)."""
    first = np.int64(buf[s])
    for i in range(bucket[first, 0], bucket[first, 1]):
        if mn_len[i] == n:
            same = True
            for q in range(n):
                if buf[s + q] != mn[i, q]:
                    same = False
                    break
            if same:
                return True
    return False


@njit(cache=True)
def _line(buf, s, t, labels, refs, mn, mn_len, opcode, bucket, npos, pos, nkw, kw, kwname,
          choice, choice_len):  # pragma: no cover - compiled (tested jit-off too)
    """(handled, word, n) for the code ``buf[s:t]`` (no outer blanks, printable ASCII or tab,
    no ':'); with ``labels``, target operands naming a label are left zero in the word and
    listed in ``refs[:n]`` (field lo, width, first byte, length)."""
    fail = (False, np.uint64(0), 0)
    nref = 0
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
                    if not ok and labels and kind == K_TARGET and _is_name_char(buf[a], True):
                        for x in range(a + 1, b):
                            if not _is_name_char(buf[x], False):
                                return fail
                        refs[nref, 0] = lo
                        refs[nref, 1] = width
                        refs[nref, 2] = a
                        refs[nref, 3] = b - a
                        nref += 1
                        ok, v = True, 0
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
    return True, w, nref


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

