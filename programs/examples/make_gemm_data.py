"""Regenerate the example GEMM operands (seeded): python programs/examples/make_gemm_data.py"""

from pathlib import Path

import numpy as np

here = Path(__file__).parent
rng = np.random.default_rng(20261122)
a = rng.integers(-128, 128, size=(64, 300), dtype=np.int8)
b = rng.integers(-128, 128, size=(300, 50), dtype=np.int8)
b[rng.random(b.shape) < 0.3] = 0  # some zeros so zero-skipping shows in the counters
np.save(here / "gemm_a.npy", a)
np.save(here / "gemm_b.npy", b)
