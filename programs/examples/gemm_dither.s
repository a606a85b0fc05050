# A 64x300x50 INT8 GEMM with dynamic-exponent, uniform-dither requantization.
#
# Host layout (DRAM, bytes):
#   A      [64,300]  int8  at 0x00000   (--load programs/data/gemm_a.npy@0)
#   B      [300,50]  int8  at 0x10000   (--load programs/data/gemm_b.npy@0x10000)
#   Y      [64,50]   int8  at 0x20000   (result, --dump 0x20000:64x50:int8:y.npy)
#   e_out  int32           at 0x21000   (exponent of Y relative to A*B, --dump 0x21000:1:int32:e.npy)
#
# Y = requantize(A @ B) with the shift chosen by efit so the largest |value| fits INT8,
# rounded with uniform dither from the RNG seeded with SEED.

.equ M, 64
.equ K, 300
.equ N, 50
.equ SEED, 2024
.equ SP_A, 0x0000
.equ SP_B, 0x5000
.equ SP_Y, 0x9000

start:
    li   r1, SP_A
    li   r2, 0x00000          # DRAM A
    li   r3, M                # rows
    li   r4, K                # bytes per row
    dmald r1, r2, r3, r4, r4, r4
    li   r5, SP_B
    li   r6, 0x10000          # DRAM B
    li   r7, K
    li   r8, N
    dmald r5, r6, r7, r8, r8, r8

matmul:
    li   r10, 0               # accumulator address of C
    gemm r10, r1, r5, r3, r4, r8, sb=1

requantize:
    eset e1, 0                # exponent of the accumulator (A and B at exponent 0)
    li   r11, 3200            # M*N elements
    efit e2, r10, r11, e1, dt=i8
    li   r12, SEED
    rngseed r12
    li   r13, SP_Y
    rq   r13, r10, r11, e2, e1, rnd=uniform, dt=i8

store:
    li   r14, 0x20000
    dmast r14, r13, r3, r8, r8, r8
    emv  r15, e2
    li   r16, 0x21000
    stw  r15, r16, 0
    halt
