"""Stage base: the seed model every shard model continues from.

``base.init: scratch`` (default) trains a Llama-style model sized by ``model`` from scratch on the
base split of every domain (disjoint from shard training data and from eval data), mixed in
proportion to their tokens, with warmup and a cosine schedule. ``base.init: pretrained`` takes a
local Hugging Face checkpoint folder (``base.pretrained_path``) as the seed, and continues it on
the base split when ``base.tokens`` > 0.

Writes ``models/base/`` (HF folder, safetensors, tokenizer, shardmix.json) and the DVCLive curves
``metrics/base/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.common import StageError, atomic_dir, provenance, run_stage, stage_parser, write_json
from pipeline.config import Config
from pipeline.data import Slice, TokenFile
from pipeline.model import build_model, count_params, load_model, load_tokenizer, save_model
from pipeline.train import train_model

log = logging.getLogger("pipeline.base")


def base_slices(tokens_dir: Path) -> list[Slice]:
    files = sorted((tokens_dir / "base").glob("*.bin"))
    if not files:
        raise StageError(f"{tokens_dir / 'base'}: no base-split token files; raise prepare.base_fraction above 0 or bring a pretrained seed (base.init: pretrained)")
    slices = []
    for f in files:
        tf = TokenFile.open(f)
        slices.append(Slice(f"base/{f.stem}", tf, 0, tf.tokens))
    return slices


def main(args, cfg: Config) -> None:
    tokenizer = load_tokenizer(args.tokenizer)
    if cfg.base.init == "pretrained":
        model = load_model(cfg.base.pretrained_path)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise StageError(f"{cfg.base.pretrained_path}: the model's vocabulary ({model.get_input_embeddings().weight.shape[0]}) is smaller than its tokenizer's ({len(tokenizer)})")
        origin = f"pretrained checkpoint {cfg.base.pretrained_path}"
    else:
        model = build_model(cfg.model, tokenizer, cfg.seed)
        origin = "trained from scratch"
    log.info("seed model: %s, %.2fM parameters", origin, count_params(model) / 1e6)
    stats: dict = {}
    with atomic_dir(args.live) as live_tmp:
        if cfg.base.tokens > 0:
            slices = base_slices(args.tokens)
            stats = train_model(model, slices, [s.tokens for s in slices], cfg.base, cfg.seed, live_tmp, desc="base")
        else:
            write_json(live_tmp / "metrics.json", {"note": "seed used as given (base.tokens = 0)"})
        meta = provenance("base", cfg, origin=origin, recipe=cfg.base.model_dump(), params=count_params(model), **stats)
        save_model(model, args.out, tokenizer, meta)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, default=Path("tokenizer"))
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--out", type=Path, default=Path("models/base"))
    p.add_argument("--live", type=Path, default=Path("metrics/base"))
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
