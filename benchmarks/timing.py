"""The timer the benchmark scripts share: the best (shortest) wall time of ``runs`` calls."""
from __future__ import annotations

import time
from typing import Callable


def best_of(fn: Callable[[], object], runs: int) -> float:
    """Seconds of the fastest of ``runs`` calls of ``fn`` (at least one), by ``time.perf_counter``."""
    best = float("inf")
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
