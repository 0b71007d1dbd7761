"""Stage train: continued pretraining of the seed model on one shard (or a validation mixture).

``python -m pipeline.train --shard news_bbc --base models/base --tokens data/tokens --out models/shards/news_bbc
--live metrics/train/news_bbc`` writes the model folder (HF format, safetensors, tokenizer,
shardmix.json) and its DVCLive curves (loss and learning rate by step).

The recipe is the paper's: AdamW at a constant learning rate, a token budget per shard from
``train.tokens``, a seeded data order (:mod:`pipeline.lib.training`). A validation mixture
(``--plan data/plans/<mixture>.json``, written by the plan stage) trains on the union of its shards,
interleaved by its weights, for (number of shards) x ``train.tokens`` tokens; a shard is a mixture
of one. Of params, a shard model reads ``seed``, ``threads``, ``device``, ``precision``,
``save_dtype``, ``train`` and its own ``shards`` entry; a mixture model the same but its plan
instead of ``shards``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params.device import ModelStageParams, SaveDtype
from pipeline.params.model import OptimConfig
from pipeline.params.shards import Shards
from pipeline.lib.outputs import RunRecord
from pipeline.lib.device import placement
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.plans import read_plan
from pipeline.lib.training import continue_pretraining


class Params(ModelStageParams):
    """The params train reads (``shards``: with ``--shard``, that shard's entry)."""

    seed: int = 0
    save_dtype: SaveDtype = "float32"
    train: OptimConfig
    shards: Shards


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, cfg.save_dtype, args.params)
    if (args.shard is None) == (args.plan is None):
        raise StageError("give exactly one of --shard NAME or --plan FILE")
    if args.shard is not None:
        if args.shard not in cfg.shards:
            raise StageError(f"{args.params}: no shard named {args.shard!r} under 'shards'; known: {sorted(cfg.shards)}")
        name, specs, weights, stage = args.shard, {args.shard: cfg.shards[args.shard]}, None, "train"
    else:
        (name, specs, weights), stage = read_plan(args.plan), "train_mixture"
    run = RunRecord(stage, name)
    speed = continue_pretraining(cfg.seed, cfg.train, name, specs, weights, args.out, args.live, args.base, args.tokens, stage=stage,
                                 place=place)
    run.write(**speed, **place.facts())


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--shard", help="shard name (a key of 'shards' in params.yaml)")
    p.add_argument("--plan", type=Path, help="a validation mixture's plan (data/plans/<mixture>.json): trains on the union of its shards")
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--live", type=Path, required=True, help="DVCLive folder for the training curves")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
