"""Side-by-side timing on the host: interleaved repetitions in one process, medians, ratios.

Method. The candidates take turns: round ``r`` calls every candidate once, in a fixed order,
before round ``r + 1`` starts. A drift of the machine (another process waking up, frequency
changes, a page cache being evicted) therefore lands on all candidates alike, and the ratio of
their medians stays meaningful even when the absolute times move. The median (not the mean)
ignores the odd round that a neighbour disturbed.

``before`` gives a candidate an untimed preparation that runs just before each of its timed
calls (the next latent for a c-sign update, a fresh ``deepcopy`` of a model to patch); it keeps
the preparation's cost out of the measurement without keeping a long list of prepared inputs
in memory. ``gc.collect()`` also runs untimed before every call, so that a collection
triggered by one candidate's garbage is not charged to the next one.

Only ratios and shares are headline numbers (see ``benchmarks/__main__.py``); the medians in
seconds are kept in the JSON file as raw data.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_samples(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 7,
    warmup: int = 1,
    before: Mapping[str, Callable[[], object]] | None = None,
    collect: bool = True,
) -> dict[str, list[float]]:
    """Seconds of every timed call of each candidate, the candidates taking turns
    (``collect=False`` skips the untimed ``gc.collect()``, for candidates that make no
    garbage: a full collection costs a good fraction of a second with torch loaded)."""
    before = before or {}
    for _ in range(warmup):
        for name, fn in candidates.items():
            if name in before:
                before[name]()
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if name in before:
                before[name]()
            if collect:
                gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 7,
    warmup: int = 1,
    before: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each candidate, the candidates taking turns."""
    samples = interleaved_samples(candidates, repeats=repeats, warmup=warmup, before=before)
    return {name: statistics.median(values) for name, values in samples.items()}
