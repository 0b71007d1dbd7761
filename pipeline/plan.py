"""Stage plan: what each validation mixture's model trains on, resolved from params once.

``python -m pipeline.plan --tokens data/tokens --out data/plans`` writes one
``data/plans/<mixture>.json`` per key of ``validation.mixtures``: its shards, their data (domain,
piece, of; training tokens) and normalised weights (:mod:`pipeline.lib.plans`). Each
``train_mixture`` stage depends on its own plan file only, so adding or editing a shard retrains
just the truths that use it. The stage takes a second or two; it reruns whenever ``shards:``,
``validation.mixtures`` or the token files change, and rewrites every plan byte-identically when
its content is the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.lib.mixtures import resolve_validation
from pipeline.lib.outputs import atomic_dir, made_by, write_json
from pipeline.lib.plans import PLAN_VERSION
from pipeline.lib.runtime import run_stage, stage_parser
from pipeline.lib.tokens import shard_token_counts
from pipeline.params.core import ConfigError, StageParams
from pipeline.params.mixtures import MixturesConfig, ValidationConfig
from pipeline.params.shards import Shards

log = logging.getLogger(__name__)


class Params(StageParams):
    """The params plan reads (of ``mixtures``: the weighting)."""

    shards: Shards
    mixtures: MixturesConfig = MixturesConfig()
    validation: ValidationConfig = ValidationConfig()


def make_plans(cfg: Params, tokens_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> plan of every validation mixture (ValueError naming the params key when one cannot be resolved)."""
    vmix = cfg.validation.mixtures
    members = list(dict.fromkeys(s for name in vmix for s in vmix[name].shards))
    specs = {s: cfg.shards[s] for s in members}
    tokens = shard_token_counts(specs, tokens_dir)
    plans = {}
    for mix in resolve_validation(cfg.validation, cfg.mixtures.weighting, list(cfg.shards), tokens):
        plans[mix.name] = {
            "version": PLAN_VERSION,
            "name": mix.name,
            "shards": list(mix.shards),
            "weights": list(mix.weights),
            "data": {s: {**specs[s].model_dump(), "tokens": tokens[s]} for s in mix.shards},
            "weighting": cfg.mixtures.weighting,
        }
    return plans


def main(args, cfg: Params) -> None:
    try:
        plans = make_plans(cfg, args.tokens)
    except ValueError as e:
        raise ConfigError(f"{args.params}: {e}") from None
    with atomic_dir(args.out) as tmp:
        for name, plan in plans.items():
            write_json(tmp / f"{name}.json", {**plan, "made_by": made_by("plan")})
    log.info("plan: %d validation mixtures in %s", len(plans), args.out)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's)")
    p.add_argument("--out", type=Path, required=True, help="folder of plan files to write")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
