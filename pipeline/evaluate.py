"""Stage evaluate: token perplexity and bits-per-byte of one model on every eval domain.

``python -m pipeline.evaluate --model models/base --tokens data/tokens --out metrics/eval/base.json``
scores the model with :func:`pipeline.lib.scoring.evaluate` (every eval token predicted from its
own document; streaming cross-entropy). With ``--shard NAME`` (and ``--seed-metrics``, the seed's
scores) it adds the shard's own-domain perplexity next to the seed's; with ``--save-nll FILE`` it
also writes each domain's per-token NLL (what the report's ensemble baseline needs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.params.device import ModelStageParams
from pipeline.params.evaluation import EvalConfig
from pipeline.params.shards import Shards
from pipeline.lib.models import load_model
from pipeline.lib.outputs import RunRecord, made_by, read_json, save_npz, write_json
from pipeline.lib.device import placement
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.scoring import available_eval_domains, evaluate, load_eval_sets

log = logging.getLogger(__name__)


class Params(ModelStageParams):
    """The params evaluate reads (``shards``: with ``--shard``, which domain is the shard's own)."""

    eval: EvalConfig = EvalConfig()
    shards: Shards


def own_domain(cfg: Params, shard: str, scores: dict, seed_metrics: Path | None) -> dict:
    """The shard model's perplexity on its own domain next to the seed's."""
    if shard not in cfg.shards:
        raise StageError(f"params.yaml: no shard named {shard!r}; known: {sorted(cfg.shards)}")
    if seed_metrics is None:
        raise StageError("--shard needs --seed-metrics: the seed model's scores (metrics/eval/base.json)")
    domain = cfg.shards[shard].domain
    seed = read_json(seed_metrics, "seed model metrics")["eval"].get(domain)
    if seed is None:
        raise StageError(f"{seed_metrics}: no score for domain {domain}; rerun 'dvc repro evaluate_base'")
    mine = scores[domain]["ppl"]
    log.info("%s on its own domain %s: ppl %.2f (seed %.2f)", shard, domain, mine, seed["ppl"])
    return {"domain": domain, "ppl": round(mine, 4), "seed_ppl": seed["ppl"], "ppl_ratio": round(mine / seed["ppl"], 4),
            "learned": bool(mine < seed["ppl"])}


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, params=args.params)
    run = RunRecord("evaluate", str(args.out))
    domains = cfg.eval.select(available_eval_domains(args.tokens))
    sets = load_eval_sets(args.tokens, domains, cfg.eval.seq_len)
    model = load_model(args.model).to(place.device)
    per_token: dict[str, np.ndarray] | None = {} if args.save_nll else None
    scores = evaluate(model, sets, cfg.eval.batch_size, desc=f"evaluate {args.model}", per_token=per_token, place=place)
    result: dict = {"model": str(args.model), "eval": {d: {"ppl": round(s["ppl"], 4), "bpb": round(s["bpb"], 5)} for d, s in scores.items()}}
    if args.shard:
        result["own_domain"] = own_domain(cfg, args.shard, scores, args.seed_metrics)
    result["totals"] = {d: {"nll_sum": s["nll"] * s["tokens"], "tokens": s["tokens"], "bytes": s["bytes"]} for d, s in scores.items()}
    result["made_by"] = made_by("evaluate", eval=cfg.eval.model_dump(), **place.record())
    if args.save_nll:
        save_npz(args.save_nll, per_token)
    write_json(args.out, result)
    run.write(**place.facts())
    for d, s in scores.items():
        log.info("%-20s ppl %9.3f  bpb %.4f", d, s["ppl"], s["bpb"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="model folder (HF format)")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's)")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--shard", help="the shard this model was trained on: adds its own-domain ppl next to the seed's")
    p.add_argument("--seed-metrics", type=Path, help="the seed model's metrics JSON (with --shard)")
    p.add_argument("--save-nll", type=Path, help="also write each domain's per-token NLL here (.npz)")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
