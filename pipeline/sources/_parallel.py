"""Order-preserving parallel map over files for the CPU-bound parsers (HTML, e-mail, reST).

Uses worker processes (forked: the functions and arguments are module-level and small, the
results are strings). ``SHARDMIX_SOURCE_WORKERS`` sets the number of workers (1 = serial, handy
for debugging); the default is the number of cores, at most 4. Small inputs are done serially.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def workers() -> int:
    env = os.environ.get("SHARDMIX_SOURCE_WORKERS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"SHARDMIX_SOURCE_WORKERS must be a whole number, not {env!r}") from None
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def pmap(fn: Callable[[T], R], items: Sequence[T], chunksize: int = 16, min_items: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in worker processes, results in input order; serial below ``min_items``
    items (default ``4 * chunksize``)."""
    n = workers()
    if n <= 1 or len(items) < (4 * chunksize if min_items is None else min_items) or "fork" not in mp.get_all_start_methods():
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("fork")) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)
