"""One training epoch timed in a child process (the epoch benchmarks of the suite and of
LeNet): set-up and epoch seconds and the peak resident memory, printed as one JSON line."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from typing import Any


def epoch_child(setup: Callable[[], tuple[Any, Any, Any]], samples: int,
                extra: Callable[[Any, Any], dict[str, Any]]) -> None:
    """``setup()`` gives (spec, config, dataset); ``extra(stats, trainer)`` adds fields."""
    from programs.host.driver import ChipTrainer

    t0 = time.perf_counter()
    spec, cfg, data = setup()
    tr = ChipTrainer(spec, cfg, data)
    t1 = time.perf_counter()
    st = tr.train_epoch()
    t2 = time.perf_counter()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"samples": samples, "setup_s": t1 - t0, "epoch_s": t2 - t1,
                      "peak_rss_mib": rss_kib / 1024, "train_accuracy": st.train_accuracy,
                      **extra(st, tr)}))
