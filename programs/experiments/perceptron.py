"""The quantized Perceptron (Paper 000, section 3.3) as firmware.

Integer data ``x_i`` (INT16) with labels ``y_i`` in {-1, +1}. For each sample in order:
``m = y_i * <w, x_i>`` is an integer dot product on the MAC array (an INT16 x INT16 GEMM, 4
byte-passes); if ``m <= 0`` the sample is a mistake and ``w <- w + y_i x_i`` by a saturating INT16
vector add or subtract (the "quantized add": the result is the nearest representable point).
The paper writes the mistake test as ``< 0``; with ``w_0 = 0`` that would never update, so the
usual ``<= 0`` is used. After each update the firmware appends ``w`` to a log in DRAM.

On an integer lattice that contains every iterate (no saturation), the program's weights equal
an exact integer Perceptron's after every update (000, Theorem 2); the tests check this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator.config import Config
from emulator.machine import Machine
from isa.asm import assemble

X_ADDR = 0x1000  # DRAM: samples [n, d] int16
Y_ADDR = 0x100  # DRAM: labels int32 (n <= 900 here; checked)
W_LOG = 0x100000  # DRAM: w after each update, [updates, d] int16
SP_W, SP_X = 0, 0x4000


def perceptron_asm(n: int, d: int, epochs: int) -> str:
    row = 2 * d
    return f"""
# quantized Perceptron: {n} samples x {d} features, {epochs} epochs
.equ N, {n}
.equ D, {d}
.equ ROW, {row}
.equ EPOCHS, {epochs}
start:
    li   r1, {SP_W}           # w (INT16) in the scratchpad, starts at 0
    li   r2, {SP_X}           # current sample
    li   r3, 0                # accumulator address of the dot product
    li   r4, 1
    li   r5, D
    li   r6, ROW
    li   r10, 0               # epoch
    li   r13, 0               # updates so far
    li   r14, {W_LOG}
epoch:
    li   r11, 0               # sample index
sample:
    li   r15, ROW
    mul  r16, r11, r15
    li   r17, {X_ADDR}
    add  r16, r16, r17
    dmald r2, r16, r4, r6, r6, r6           # x_i -> scratchpad
dot:
    gemm r3, r2, r1, r4, r5, r4, da=i16, db=i16   # <x_i, w>: [1,D] @ [D,1]
    accrd r18, r3
    li   r15, 4
    mul  r16, r11, r15
    ldw  r19, r16, {Y_ADDR}                 # y_i
    mul  r18, r18, r19                      # y_i <w, x_i>
    blt  r0, r18, next                      # correct with margin > 0: no update
update:
    blt  r19, r0, minus
    vadd r1, r1, r2, r5, dt=i16
    jmp  logw
minus:
    vsub r1, r1, r2, r5, dt=i16
logw:
    mul  r16, r13, r6
    add  r16, r16, r14
    dmast r16, r1, r4, r6, r6, r6           # append w to the log
    addi r13, r13, 1
next:
    addi r11, r11, 1
    li   r15, N
    blt  r11, r15, sample
    addi r10, r10, 1
    li   r15, EPOCHS
    blt  r10, r15, epoch
    li   r16, 0
    stw  r13, r16, 0                        # number of updates
    halt
"""


@dataclass
class PerceptronRun:
    weights: np.ndarray  # final w
    trajectory: np.ndarray  # [updates, d]: w after every update
    machine: Machine


def run_perceptron(x: np.ndarray, y: np.ndarray, epochs: int, cfg: Config | None = None
                   ) -> PerceptronRun:
    x = np.asarray(x)
    n, d = x.shape
    if n > (X_ADDR - Y_ADDR) // 4:
        raise ValueError(f"at most {(X_ADDR - Y_ADDR) // 4} samples")
    if not np.all(np.isin(y, (-1, 1))):
        raise ValueError("labels must be -1 or +1")
    cfg = cfg or Config()
    m = Machine(cfg, assemble(perceptron_asm(n, d, epochs), "perceptron.s"))
    m.load_dram(X_ADDR, x.astype("<i2"))
    m.load_dram(Y_ADDR, np.asarray(y, "<i4"))
    m.run()
    updates = int(np.frombuffer(m.read_dram(0, 4), "<i4")[0])
    traj = np.frombuffer(m.read_dram(W_LOG, updates * 2 * d), "<i2").reshape(updates, d)
    w = m.sp_elems(SP_W, d, 2).astype(np.int64)
    return PerceptronRun(w, traj.astype(np.int64), m)


def exact_perceptron(x: np.ndarray, y: np.ndarray, epochs: int) -> list[list[int]]:
    """The infinite-precision Perceptron in Python integers: w after every update."""
    w = [0] * x.shape[1]
    out = []
    for _ in range(epochs):
        for xi, yi in zip(x.tolist(), np.asarray(y).tolist(), strict=True):
            if yi * sum(a * b for a, b in zip(w, xi, strict=True)) <= 0:
                w = [a + yi * b for a, b in zip(w, xi, strict=True)]
                out.append(list(w))
    return out
