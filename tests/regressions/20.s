; lpemu differential regression, seed 20: found by a planted off-by-one in the fast INT16 vsub (detector self-test); first divergence at step 112, vsub r1, r2, r3, r4, dt=i16
; config: {"accumulator": {"bits": 32, "entries": 4096, "overflow": "saturate"}, "alu": {"lanes": 16, "latency_cycles": 1}, "array": {"cols": 8, "dataflow": "weight_stationary", "rows": 8, "skip": "row"}, "budget": {"max_steps": 20000}, "dma": {"bytes_per_cycle": 16, "latency_cycles": 0, "overlap": true}, "memory": {"dram_bytes": 65536, "scratchpad_bytes": 16384}}
; init_seed: 4150552012
li r1, 3184
li r2, 726
li r3, 726
li r4, 31
vsub r1, r2, r3, r4, dt=i16
halt
