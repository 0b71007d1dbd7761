"""Benchmarks of shardmix: ``python -m pipeline.bench <name> [args]`` runs ``pipeline.bench.<name>``.

Each benchmark module has ``main(argv) -> int`` and prints, as its LAST line, one JSON object of
its figures. Results of full runs are kept as CSV files in ``pipeline/bench/results/``, a row per run
(``--csv PATH`` appends one).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["RESULTS", "append_row", "emit", "interleaved_medians", "seconds"]

RESULTS = Path(__file__).resolve().parent / "results"  # the kept CSV files, one per benchmark


def seconds(t: float) -> float:
    """A time in seconds to 4 significant digits: a fixed number of decimals would print a quick
    run's fractions of a millisecond as 0."""
    return float(f"{t:.4g}")


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                        sync: Callable[[], object] | None = None) -> dict[str, float]:
    """Median wall seconds of each function, timing them round-robin.

    Every repetition runs each function once in turn, so slow phases of a shared, noisy machine
    hit all of them alike and their ratios stay meaningful. ``sync`` (``torch.cuda.synchronize``
    for GPU work) runs before the clock starts and before it stops, so queued kernels are counted.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def append_row(path: Path, row: dict) -> Path:
    """Append ``row`` (with the date first) to the CSV at ``path``, one run per row. When the columns
    changed, the file is rewritten (atomically) with the union of the columns, the file's own first
    and in their order (a row without some keys, a run without mergekit say, moves no column), so
    earlier runs stay beside the new one. Dict values are stored as JSON."""
    from pipeline.lib.outputs import write_text_atomic

    flat = {"date": time.strftime("%Y-%m-%d %H:%M"), **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()}}
    rows, header = [], []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), list(reader.fieldnames or [])
    fields = list(dict.fromkeys([*header, *flat]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows([*rows, flat])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buf.getvalue())
    return path


def emit(result: dict, *, csv_path: Path | None, table: bool) -> None:
    """Append ``result`` as a row to a CSV (if asked: :func:`append_row`), print it as a table (if
    asked), then print it as one JSON object: always the last line, which scripts and CI parse."""
    if csv_path is not None:
        append_row(csv_path, result)
    if table:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:>{width}}: {value}")
    print(json.dumps(result))
