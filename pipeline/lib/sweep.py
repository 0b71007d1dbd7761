"""Score many mixtures by merging: the seed, each shard alone, then every mixture, M at a time.

Every model scored is a weight row over a pool of the K shards plus the seed (column K): the seed
is the row with weight 1 on its column, a shard alone the row with 1 on its own, a mixture its
weights (the one-hot merge is an exact copy, so references score as the checkpoints themselves).
Rows go in groups of M (``at_once``), each shard tensor read once per group:

- ``stream: resident``: M resident models (the seed, fp32, and M - 1 copies);
  :func:`pipeline.lib.merging.merge_many_into` writes the group's averages into them and
  :func:`pipeline.lib.scoring.evaluate` scores each with the streaming cross-entropy.
- ``stream: layers``: :class:`pipeline.lib.layerstream.LayerStream` merges and runs one decoder
  block at a time for the whole group: memory of a few blocks, whatever the depth; same scores.

``at_once: auto`` takes the largest M whose models (or blocks and activations) fit in 80% of the
memory that is free where they live (:meth:`Placement.free_bytes`), at most the number of rows;
an explicit M that does not fit is a StageError naming the key.

With ``stream: resident`` the pool's checkpoints stay in the models' memory when they fit there
beside two models and the evaluation (:meth:`ShardPool.hold`): on a GPU copied there once, on the
CPU their mapped file pages kept (no copy), so every pass reads memory at the merge kernel's speed.
Otherwise each pass reads the memory-mapped files (on a GPU, copied over chunk by chunk), whose
pages are mapped and dropped again on every pass: resident memory stays at the models', at about
half the kernel's speed on this machine's CPU (``python -m pipeline.bench merge``: ``mmap_gbps``).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from pipeline.lib.device import CPU, MEMORY_SHARE, Placement
from pipeline.lib.layerstream import LayerStream
from pipeline.lib.merging import merge_many_into
from pipeline.lib.mixtures import Mixture
from pipeline.lib.models import load_model, model_bytes
from pipeline.lib.pool import ShardPool
from pipeline.lib.runtime import StageError, progress
from pipeline.lib.scoring import EvalSet, evaluate

log = logging.getLogger(__name__)
SEED_COLUMN = "(seed)"  # the seed's name in the pool: cannot collide, shard names start with a letter or digit


def _scores(result: dict[str, dict]) -> dict[str, dict[str, float]]:
    return {d: {"ppl": round(s["ppl"], 4), "bpb": round(s["bpb"], 5)} for d, s in result.items()}


def working_bytes(config, sets: list[EvalSet], batch_size: int) -> int:
    """Rough peak of one evaluation batch beyond the weights: activations of one block (MLP, attention
    scores) and the cross-entropy's tile, x2 for the allocator's slack."""
    seq = max((e.seq_len for e in sets), default=1)
    tokens = batch_size * seq
    hidden = getattr(config, "hidden_size", 0)
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = getattr(config, "num_attention_heads", 1)
    return 2 * 4 * (tokens * (8 * hidden + 3 * inter) + batch_size * heads * seq * seq + 4096 * 2048)


def resolve_at_once(at_once: int | str, rows: int, per_row: int, fixed: int, free: int, key: str = "mixtures.at_once") -> int:
    """M for ``rows`` models: ``auto`` -> as many as fit in :data:`MEMORY_SHARE` of ``free`` bytes
    (``fixed`` + M x ``per_row``), at least 1; an explicit M is capped at ``rows`` and must fit."""
    budget = int(MEMORY_SHARE * free) - fixed
    fit = max(0, budget // max(1, per_row))
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    if at_once == "auto":
        m = max(1, min(rows, fit))
        log.info("%s: auto -> %d (%s per model, %s free)%s", key, m, gb(per_row), gb(free),
                 "" if m == rows else f"; {rows} would need {gb(fixed + rows * per_row)}")
        return m
    m = min(int(at_once), rows)
    if m > max(1, fit):
        raise StageError(f"{key}: {at_once} needs {gb(fixed + m * per_row)} ({m} x {gb(per_row)} + {gb(fixed)}) but "
                         f"{gb(free)} is free here and {MEMORY_SHARE:.0%} of it may be used; set {key}: {max(1, fit)} "
                         f"or lower, or auto")
    return m


def _rows(mixtures: list[Mixture], names: list[str]) -> list[tuple[str, list[float]]]:
    """(name, weights over the K shards + the seed column) of the seed, each shard, every mixture."""
    k = len(names)
    rows = [(SEED_COLUMN, [0.0] * k + [1.0])]
    rows += [(s, [float(j == i) for j in range(k)] + [0.0]) for i, s in enumerate(names)]
    rows += [(m.name, [*m.vector(names), 0.0]) for m in mixtures]
    return rows


def score_all(mixtures: list[Mixture], shard_dirs: dict[str, Path], base: Path, sets: list[EvalSet], batch_size: int,
              at_once: int | str = "auto", stream: str = "resident", impl: str = "auto", place: Placement = CPU,
              key: str = "mixtures.at_once") -> dict[str, Any]:
    """Score the seed, each shard alone and every mixture on ``sets``; return the metrics dict.

    Opens and validates the pool (StageError on a bad checkpoint) before scoring anything. The
    timings (per model scored: seed, shards and mixtures) and the M used are under ``"cost"``: the
    stage moves them to its run record.
    """
    names = list(shard_dirs)
    rows = _rows(mixtures, names)
    t_start = time.perf_counter()
    scores: dict[str, dict] = {}
    with ShardPool({**shard_dirs, SEED_COLUMN: base}, seed=base) as pool:
        if stream == "layers":
            m, score_group, timer = _layers(pool, base, rows, sets, batch_size, at_once, impl, place, key)
        else:
            m, score_group, timer = _resident(pool, base, rows, sets, batch_size, at_once, impl, place, key)
        bar = progress(total=len(rows), desc="proxy", unit="model")
        try:
            for g in range(0, len(rows), m):
                group = rows[g : g + m]
                for (name, _), result in zip(group, score_group([w for _, w in group])):
                    scores[name] = _scores(result)
                    bar.update(1)
                    bar.set_postfix(model=name[:40], refresh=False)
        finally:
            bar.close()
    n = len(rows)
    merge_s, eval_s = timer()
    return {
        "mixtures": {mx.name: {"shards": list(mx.shards), "weights": [round(w, 6) for w in mx.weights], "k": mx.k,
                               "eval": scores[mx.name]} for mx in mixtures},
        "shards": {s: {"shards": [s], "weights": [1.0], "k": 1, "eval": scores[s]} for s in names},
        "seed": {"model": str(base), "eval": scores[SEED_COLUMN]},
        "eval": {"domains": [e.domain for e in sets], "tokens": {e.domain: e.predicted for e in sets},
                 "bytes": {e.domain: e.bytes for e in sets}},
        "cost": {"mixtures": len(mixtures), "models_scored": n, "at_once": m, "stream": stream,
                 "merge_s_per_model": round(merge_s / n, 4), "eval_s_per_model": round(eval_s / n, 4),
                 "s_per_model": round((time.perf_counter() - t_start) / n, 4),
                 "seconds": round(time.perf_counter() - t_start, 2)},
    }


def _resident(pool, base, rows, sets, batch_size, at_once, impl, place, key):
    """(M, score a group, (merge s, eval s)) with M whole resident models."""
    model = load_model(base).to(place.device)
    per_model = model_bytes(model)
    work = working_bytes(model.config, sets, batch_size)
    pool.hold(place.device, also=per_model + work)  # where there is room for the shards and at least M = 2
    # the first model is loaded already: the free memory is for the other M - 1 (+ evaluation); shard
    # pages kept mapped are page cache, which the free memory counts: M models must leave it be
    free = place.free_bytes() + per_model - (pool.nbytes if pool.kept else 0)
    m = resolve_at_once(at_once, len(rows), per_model, work, free, key)
    models = [model] + [copy.deepcopy(model) for _ in range(m - 1)]
    seconds = [0.0, 0.0]

    def score_group(weights: list[list[float]]) -> Iterator[dict]:
        t0 = time.perf_counter()
        merge_many_into(models[: len(weights)], weights, pool, impl=impl)
        place.sync()
        seconds[0] += time.perf_counter() - t0
        for mdl in models[: len(weights)]:  # each model's scores as soon as they are known (the progress bar)
            t1 = time.perf_counter()
            result = evaluate(mdl, sets, batch_size, impl=impl, place=place)
            seconds[1] += time.perf_counter() - t1
            yield result

    return m, score_group, lambda: tuple(seconds)


def _layers(pool, base, rows, sets, batch_size, at_once, impl, place, key):
    """(M, score a group, (merge s, eval s)) with a :class:`LayerStream`."""
    stream = LayerStream(base, pool, 1, place, impl)
    per_row, fixed = stream.footprint(sets)
    work = working_bytes(stream.model.config, sets, batch_size)
    # the stream holds one block buffer already: one of the M
    m = resolve_at_once(at_once, len(rows), per_row, fixed + work, place.free_bytes() + stream.block_bytes, key)
    stream.widen(m)
    return m, lambda weights: stream.score(weights, sets, batch_size), lambda: (stream.seconds["merge"], stream.seconds["eval"])
