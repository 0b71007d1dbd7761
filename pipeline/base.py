"""Stage base: the seed model every shard model continues from.

``base.init: scratch`` (default) trains a Llama-style model sized by ``model`` from scratch on the
base split of every domain (disjoint from shard training data and from eval data), mixed in
proportion to their tokens, with warmup and a cosine schedule. ``base.init: pretrained`` takes a
local Hugging Face checkpoint folder (``base.pretrained_path``) as the seed, and continues it on
the base split when ``base.tokens`` > 0.

``python -m pipeline.base --tokenizer tokenizer --tokens data/tokens/base --out models/base --live metrics/base``
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.params.device import ModelStageParams, SaveDtype
from pipeline.params.model import BaseConfig, ModelConfig
from pipeline.lib.models import build_model, count_params, load_model, load_tokenizer, save_model
from pipeline.lib.outputs import RunRecord, atomic_dir, made_by, write_json
from pipeline.lib.device import placement
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.tokens import Slice, TokenFile
from pipeline.lib.training import train_model

log = logging.getLogger(__name__)


class Params(ModelStageParams):
    """The params base reads."""

    seed: int = 0
    save_dtype: SaveDtype = "float32"
    model: ModelConfig = ModelConfig()
    base: BaseConfig


def base_slices(base_dir: Path) -> list[Slice]:
    files = sorted(base_dir.glob("*.bin"))
    if not files:
        raise StageError(f"{base_dir}: no base-split token files; raise prepare.base_fraction above 0 or bring a pretrained seed (base.init: pretrained)")
    slices = []
    for f in files:
        tf = TokenFile.open(f)
        slices.append(Slice(f"base/{f.stem}", tf, 0, tf.tokens))
    return slices


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, cfg.save_dtype, args.params)
    run = RunRecord("base")
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
    stats, speed = {}, {}
    with atomic_dir(args.live) as live_tmp:
        if cfg.base.tokens > 0:
            slices = base_slices(args.tokens)
            stats, speed = train_model(model, slices, [s.tokens for s in slices], cfg.base, cfg.seed, live_tmp, desc="base", place=place)
        else:
            write_json(live_tmp / "metrics.json", {"note": "seed used as given (base.tokens = 0)"})
        meta = made_by("base", origin=origin, seed=cfg.seed, recipe=cfg.base.model_dump(), model=cfg.model.model_dump(),
                       params=count_params(model), **stats, **place.record(saved=True))
        save_model(place.for_saving(model), args.out, tokenizer, meta)
    run.write(**speed, **place.facts())


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder (the tokenize stage's)")
    p.add_argument("--tokens", type=Path, required=True, help="folder of base-split token files")
    p.add_argument("--out", type=Path, required=True, help="seed model folder to write")
    p.add_argument("--live", type=Path, required=True, help="DVCLive folder for the training curves")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
