"""Stage recommend: the mixture to train on for one target, by gradient descent through the merge, with its rivals.

``python -m pipeline.recommend --target bible_web --base models/base --shards-dir models/shards --tokens
data/tokens --targets data/targets --proxy metrics/proxy.json --out data/recommend/bible_web.json``

On the target's dev part (the gather stage's; the optimiser never sees the test part) it scores
the merged proxy of every shard alone and every pair (the quadratic surrogate's lattice), picks the
rivals (uniform, natural, best single shard, best of the proxy stage's candidates, MixMin, the
surrogate's minimum) and descends on the weight simplex from the surrogate's minimum, uniform and
seeded random starts (:mod:`pipeline.lib.mixsearch`). The merged proxy is taken to the size of a
model trained for the confirm budget, ``seed + recommend.scale x (merge - seed)`` (the seed joins
the pool as its last row when the scale is not 1). Writes every method's weights, its merged
dev and test losses (nats per token, the proxy's prediction of what training on it gives) and the
surrogate's prediction, the descent's own optimum and history, and the cost in merges scored and
gradient steps (the seconds go to ``runs/recommend/<target>.json``: timings would make every rerun
a new output). The confirm stage trains them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.params.device import ModelStageParams
from pipeline.params.evaluation import EvalConfig
from pipeline.params.recommend import RecommendConfig
from pipeline.params.shards import Shards
from pipeline.lib.device import placement
from pipeline.lib.mixsearch import Search, SearchConfig
from pipeline.lib.models import load_model, model_bytes
from pipeline.lib.outputs import RunRecord, made_by, read_json, write_json
from pipeline.lib.pool import ShardPool
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.surrogate import mixture_vectors
from pipeline.lib.targets import load_target
from pipeline.lib.tokens import shard_token_counts

log = logging.getLogger(__name__)
SEED_ROW = "(seed)"  # the seed as the pool's last checkpoint, for a scaled merge (no shard name starts with "(")


class Params(ModelStageParams):
    """The params recommend reads (of ``recommend``: the optimiser's settings, and this target's entry)."""

    seed: int = 0
    shards: Shards
    eval: EvalConfig = EvalConfig()
    recommend: RecommendConfig = RecommendConfig()


def proxy_candidates(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The proxy stage's candidate mixtures as weight vectors over ``names``."""
    try:
        return mixture_vectors(read_json(path, "the proxy stage's metrics"), names)
    except ValueError as e:
        raise StageError(f"{path}: {e} ('shards' in params.yaml); rerun 'dvc repro proxy'") from None


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, params=args.params)
    run = RunRecord("recommend", args.target)
    if args.target not in cfg.recommend.targets:
        raise StageError(f"{args.params}: no target {args.target!r} under recommend.targets; known: {sorted(cfg.recommend.targets)}")
    names = list(cfg.shards)
    rc = cfg.recommend
    target = load_target(args.targets, args.target, cfg.eval.seq_len)
    tokens = shard_token_counts(cfg.shards, args.tokens)
    natural = np.array([tokens[s] for s in names], dtype=np.float64)
    search_cfg = SearchConfig(steps=rc.steps, lr=rc.lr, tol=rc.tol, restarts=rc.restarts, max_shards=rc.max_shards, seed=cfg.seed,
                              batch_size=cfg.eval.batch_size, scale=rc.scale)
    checkpoints = {s: args.shards_dir / s for s in names} | ({SEED_ROW: args.base} if rc.scale != 1.0 else {})
    with ShardPool(checkpoints, seed=args.base) as pool:
        model = load_model(args.base).to(place.device)
        # in memory where they fit beside the model, its gradient and an evaluation's activations (2x slack)
        pool.hold(place.device, also=4 * model_bytes(model))
        result = Search(pool, model, target, names, search_cfg, place).run(natural, proxy_candidates(args.proxy, names))
    seconds = result.pop("seconds")  # not in the output: a rerun writes the same bytes, and confirm stays fresh
    out = {"target": args.target, "shards": names, "domains": target.weights, **result,
           "made_by": made_by("recommend", target=args.target, search=search_cfg.__dict__, **place.record())}
    write_json(args.out, out)
    run.write(cost=result["cost"], seconds=seconds, **place.facts())
    rec = result["methods"]["recommended"]
    log.info("%s: recommended (%s) %s: dev %.5f (uniform %.5f), test prediction %.5f; %d merges scored, %d gradient "
             "steps, %.0f s", args.target, rec["from"], json.dumps({s: w for s, w in rec["weights"].items() if w >= 0.01}),
             rec["dev"], result["methods"]["uniform"]["dev"], rec["test"], result["cost"]["merges_scored"],
             result["cost"]["gradient_steps"], seconds["total"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="a key of recommend.targets")
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--shards-dir", type=Path, required=True, help="folder of the shard model folders")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's: shard sizes)")
    p.add_argument("--targets", type=Path, required=True, help="the gather stage's folder of target token files")
    p.add_argument("--proxy", type=Path, required=True, help="the proxy stage's metrics (its candidate mixtures)")
    p.add_argument("--out", type=Path, required=True, help="the JSON to write")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
