"""Training plans: what a model trained on a validation mixture reads, resolved from params once.

A plan is one small JSON file (``data/plans/<mixture>.json``, written by :mod:`pipeline.plan`): the
mixture's shards in order, each shard's data (``domain``, ``piece``, ``of``) and training tokens,
and the normalised weights, by ``mixtures.weighting`` exactly as the proxy weights the same
mixture. The train stage of a mixture reads its plan instead of params' ``shards:``, so DVC
reruns it when *its* shards' data or weights change, not when another shard is added or edited.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lib.outputs import read_json
from pipeline.lib.runtime import StageError
from pipeline.params.shards import ShardSpec

PLAN_VERSION = 1


def read_plan(path: Path) -> tuple[str, dict[str, ShardSpec], list[float]]:
    """(mixture name, shard -> its data spec in mixture order, weights) of the plan at ``path``."""
    plan = read_json(path, "training plan")
    try:
        if plan.get("version") != PLAN_VERSION:
            raise ValueError(f"version {plan.get('version')!r}, expected {PLAN_VERSION}")
        specs = {s: ShardSpec(**{k: v for k, v in plan["data"][s].items() if k != "tokens"}) for s in plan["shards"]}
        weights = [float(w) for w in plan["weights"]]
        if len(weights) != len(specs):
            raise ValueError(f"{len(weights)} weights for {len(specs)} shards")
        return str(plan["name"]), specs, weights
    except (KeyError, TypeError, ValueError) as e:
        raise StageError(f"{path}: not a training plan of this version ({e}); rerun 'dvc repro plan'") from None
