"""Score many mixtures by merging: the seed, each shard alone, then every mixture, M at a time.

One resident model (the seed, fp32; M - 1 copies of it when ``at_once`` = M > 1). For each group
of mixtures, :func:`pipeline.lib.merging.merge_many_into` writes the weighted averages of the
memory-mapped shard tensors into their parameters in place (each shard tensor read once per
group), and :func:`pipeline.lib.scoring.evaluate` scores them with the streaming cross-entropy. A
shard alone is the merge with weight 1 on that shard. Used by the proxy stage and its benchmark.

On a GPU (a :class:`~pipeline.lib.device.Placement` on cuda) the resident models live in device
memory, and so do the K shards when they fit beside them with room for evaluation
(:func:`shards_fit`): the merge then reads device memory; otherwise it streams the memory-mapped
files to the device chunk by chunk.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.lib.device import CPU, Placement
from pipeline.lib.merging import merge_many_into
from pipeline.lib.mixtures import Mixture
from pipeline.lib.models import load_model
from pipeline.lib.pool import ShardPool
from pipeline.lib.runtime import progress
from pipeline.lib.scoring import evaluate

log = logging.getLogger(__name__)
HEADROOM = 0.15  # share of the device's memory kept free for evaluation when the shards are made resident


def _scores(result: dict[str, dict]) -> dict[str, dict[str, float]]:
    return {d: {"ppl": round(s["ppl"], 4), "bpb": round(s["bpb"], 5)} for d, s in result.items()}


def shards_fit(pool: ShardPool, device: torch.device) -> bool:
    """Whether ``pool``'s shards fit in ``device``'s free memory with :data:`HEADROOM` to spare (GPUs only)."""
    if device.type != "cuda":
        return False
    free, total = torch.cuda.mem_get_info(device)
    return pool.nbytes <= free - HEADROOM * total


def score_all(mixtures: list[Mixture], shard_dirs: dict[str, Path], base: Path, sets: list, batch_size: int,
              at_once: int = 1, impl: str = "auto", place: Placement = CPU) -> dict[str, Any]:
    """Score the seed, each shard alone and every mixture on ``sets``; return the metrics dict.

    Opens and validates the shard pool (StageError on a bad checkpoint) before scoring anything.
    The timings are under ``"cost"``: the stage moves them to its run record, out of the metrics.
    """
    names = list(shard_dirs)
    t_start = time.perf_counter()
    with ShardPool(shard_dirs, seed=base) as pool:
        model = load_model(base).to(place.device)
        models = [model] + [copy.deepcopy(model) for _ in range(min(at_once, len(mixtures)) - 1)]
        if shards_fit(pool, place.device):
            pool.load_to(place.device)
            log.info("proxy: the %d shards are resident on %s (%.2f GB)", len(pool), place.device, pool.nbytes / 1e9)
        bar = progress(total=1 + len(names) + len(mixtures), desc="proxy", unit="model")
        try:
            seed = _scores(evaluate(model, sets, batch_size, impl=impl, place=place))
            bar.update(1)
            shards = {}
            for k, s in enumerate(names):
                merge_many_into([model], [[float(j == k) for j in range(len(names))]], pool, impl=impl)
                shards[s] = {"shards": [s], "weights": [1.0], "k": 1,
                             "eval": _scores(evaluate(model, sets, batch_size, impl=impl, place=place))}
                bar.update(1)
            out, t_merge, t_eval = {}, 0.0, 0.0
            t_mix = time.perf_counter()
            for g in range(0, len(mixtures), len(models)):
                group = mixtures[g : g + len(models)]
                t0 = time.perf_counter()
                merge_many_into(models[: len(group)], [m.vector(names) for m in group], pool, impl=impl)
                place.sync()
                t1 = time.perf_counter()
                for mix, mdl in zip(group, models):
                    out[mix.name] = {"shards": list(mix.shards), "weights": [round(w, 6) for w in mix.weights], "k": mix.k,
                                     "eval": _scores(evaluate(mdl, sets, batch_size, impl=impl, place=place))}
                    bar.update(1)
                    bar.set_postfix(mixture=mix.name[:40], refresh=False)
                t_merge, t_eval = t_merge + (t1 - t0), t_eval + (time.perf_counter() - t1)
        finally:
            bar.close()
    n = max(1, len(mixtures))
    return {
        "mixtures": out,
        "shards": shards,
        "seed": {"model": str(base), "eval": seed},
        "eval": {"domains": [e.domain for e in sets], "tokens": {e.domain: e.predicted for e in sets},
                 "bytes": {e.domain: e.bytes for e in sets}},
        "cost": {"mixtures": len(mixtures), "models_scored": 1 + len(names) + len(mixtures),
                 "merge_s_per_mixture": round(t_merge / n, 4), "eval_s_per_mixture": round(t_eval / n, 4),
                 "s_per_mixture": round((time.perf_counter() - t_mix) / n, 4),
                 "seconds": round(time.perf_counter() - t_start, 2)},
    }
