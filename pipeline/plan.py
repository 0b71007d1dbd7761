"""Stage plan: what each validation mixture's model (and each probe's) trains on, resolved from params once.

``python -m pipeline.plan --tokens data/tokens --out data/plans`` writes one
``data/plans/<mixture>.json`` per key of ``validation.mixtures`` and of ``infer.probes`` (models
trained only to check the inference from weights): its shards, their data (domain, piece, of;
training tokens) and normalised weights (:mod:`pipeline.lib.plans`). A probe's member that is no
shard is a whole corpus domain (data outside the shards). Each
``train_mixture`` stage depends on its own plan file only, so adding or editing a shard retrains
just the truths that use it. The stage takes a second or two; it reruns whenever ``shards:``,
``validation.mixtures`` or the token files change, and rewrites every plan byte-identically when
its content is the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.lib.mixtures import mixture_weights, resolve_validation
from pipeline.lib.outputs import atomic_dir, made_by, write_json
from pipeline.lib.plans import PLAN_VERSION
from pipeline.lib.runtime import exit_stage, run_stage, stage_parser
from pipeline.lib.tokens import shard_token_counts
from pipeline.params.core import ConfigError, StageParams
from pipeline.params.infer import InferConfig
from pipeline.params.mixtures import MixturesConfig, ValidationConfig
from pipeline.params.shards import Shards, ShardSpec

log = logging.getLogger(__name__)


class Params(StageParams):
    """The params plan reads (of ``mixtures``: the weighting)."""

    shards: Shards
    mixtures: MixturesConfig = MixturesConfig()
    validation: ValidationConfig = ValidationConfig()
    infer: InferConfig = InferConfig()


def _plan(name: str, members: list[str], weights, specs: dict[str, ShardSpec], tokens: dict[str, int], weighting: str) -> dict[str, Any]:
    return {"version": PLAN_VERSION, "name": name, "shards": members, "weights": list(weights),
            "data": {s: {**specs[s].model_dump(), "tokens": tokens[s]} for s in members}, "weighting": weighting}


def probe_plans(cfg: Params, tokens_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> plan of every ``infer.probes`` model (ValueError naming the key when one cannot be resolved)."""
    cfg.infer.check_probes(list(cfg.shards), None, list(cfg.validation.mixtures))
    plans = {}
    for name, probe in cfg.infer.probes.items():
        specs = {}
        for m in probe.shards:
            if m not in cfg.shards and not (tokens_dir / "train" / f"{m}.bin").is_file():
                have = sorted(p.stem for p in (tokens_dir / "train").glob("*.bin"))
                raise ValueError(f"infer.probes.{name}.shards: {m!r} is neither a shard {list(cfg.shards)} nor a corpus domain {have}")
            specs[m] = cfg.shards[m] if m in cfg.shards else ShardSpec(domain=m)
        tokens = shard_token_counts(specs, tokens_dir)
        weights = mixture_weights(probe.shards, probe.ratios, f"infer.probes.{name}", cfg.mixtures.weighting, tokens)
        plans[name] = _plan(name, list(probe.shards), weights, specs, tokens, cfg.mixtures.weighting)
    return plans


def make_plans(cfg: Params, tokens_dir: Path) -> dict[str, dict[str, Any]]:
    """name -> plan of every validation mixture (ValueError naming the params key when one cannot be resolved)."""
    vmix = cfg.validation.mixtures
    members = list(dict.fromkeys(s for name in vmix for s in vmix[name].shards))
    specs = {s: cfg.shards[s] for s in members}
    tokens = shard_token_counts(specs, tokens_dir)
    plans = {}
    for mix in resolve_validation(cfg.validation, cfg.mixtures.weighting, list(cfg.shards), tokens):
        plans[mix.name] = _plan(mix.name, list(mix.shards), mix.weights, specs, tokens, cfg.mixtures.weighting)
    return {**plans, **probe_plans(cfg, tokens_dir)}


def main(args, cfg: Params) -> None:
    try:
        plans = make_plans(cfg, args.tokens)
    except ValueError as e:
        raise ConfigError(f"{args.params}: {e}") from None
    with atomic_dir(args.out) as tmp:
        for name, plan in plans.items():
            write_json(tmp / f"{name}.json", {**plan, "made_by": made_by("plan")})
    log.info("plan: %d validation mixtures and %d probes in %s", len(cfg.validation.mixtures), len(cfg.infer.probes), args.out)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's)")
    p.add_argument("--out", type=Path, required=True, help="folder of plan files to write")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
