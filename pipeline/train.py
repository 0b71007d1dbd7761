"""Stage train: continued pretraining of the seed model on one shard (or a validation mixture).

``python -m pipeline.train --shard news_bbc --base models/base --tokens data/tokens --out models/shards/news_bbc
--live metrics/train/news_bbc`` writes the model folder (HF format, safetensors, tokenizer,
shardmix.json) and its DVCLive curves (loss and learning rate by step).

The recipe is the paper's: AdamW at a constant learning rate, a token budget per shard from
``train.tokens``, a seeded data order (:mod:`pipeline.lib.training`). A mixture (``--mixture``, a
key of ``validation.mixtures``) trains on the union of its shards, interleaved by its weights, for
(number of shards) x ``train.tokens`` tokens; a shard is a mixture of one.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.lib.outputs import RunRecord
from pipeline.lib.runtime import StageError, configure_threads, run_stage, stage_parser
from pipeline.lib.training import continue_pretraining, mixture_members


def main(args, cfg: Config) -> None:
    configure_threads(cfg.threads)
    if (args.shard is None) == (args.mixture is None):
        raise StageError("give exactly one of --shard NAME or --mixture NAME")
    if args.shard is not None:
        if args.shard not in cfg.shards:
            raise StageError(f"params.yaml: no shard named {args.shard!r} under 'shards'; known: {sorted(cfg.shards)}")
        name, shards, weights, stage = args.shard, [args.shard], None, "train"
    else:
        name, stage = args.mixture, "train_mixture"
        shards, weights = mixture_members(cfg, name, args.tokens)
    run = RunRecord(stage, name)
    speed = continue_pretraining(cfg, name, shards, weights, args.out, args.live, args.base, args.tokens, stage=stage)
    run.write(**speed)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--shard", help="shard name (a key of 'shards' in params.yaml)")
    p.add_argument("--mixture", help="validation mixture name (a key of 'validation.mixtures'): trains on the union of its shards")
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--live", type=Path, required=True, help="DVCLive folder for the training curves")
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
