"""Side-by-side timing: interleaved repetitions in one process, medians, ratios only."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def interleaved(
    candidates: dict[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each candidate, the candidates taking turns.

    Taking turns spreads any drift of the machine (another process, thermal state) over all
    candidates alike, which is what makes the ratio between them meaningful.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
