"""Benchmarks of shardmix: ``python -m pipeline.bench <name> [args]`` runs ``pipeline.bench.<name>``.

Each benchmark module has ``main(argv) -> int`` and prints, as its LAST line, one JSON object of
its figures. Results of full runs are kept as CSV files in ``pipeline/bench/results/``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["interleaved_medians"]


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each function, timing them round-robin.

    Every repetition runs each function once in turn, so slow phases of a shared, noisy machine
    hit all of them alike and their ratios stay meaningful.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
