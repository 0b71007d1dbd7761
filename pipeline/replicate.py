"""Replicate the truth: train every validation mixture again with another data order, and evaluate it.

How well can any proxy predict the truth? No better than a second training run of the same
mixture predicts the first. ``python -m pipeline.replicate --seed-offset 1`` trains each
validation mixture exactly as ``train_mixture`` does (same seed model, recipe, token budget, and
its plan ``data/plans/<mixture>.json`` for the data and weights), only with params ``seed`` shifted
by the offset (so a different data order), then evaluates it as ``evaluate_mixture`` does. Then

    python -m pipeline.report --proxy metrics/proxy.json --truth-nll data/nll/truth --nll data/nll/shards \\
        --replicate data/replicates/seed-offset-1/nll --out ... --plots ... --reports ...

adds the replicate to the report as one more "proxy", ``truth_replicate``: the noise ceiling.

Not a DVC stage: a diagnostic of the default run (about as long as its truth models: ~25 min).
Writes ``<out>/models/<mixture>/``, ``<out>/nll/<mixture>.npz``, ``<out>/metrics/<mixture>.json``
and ``<out>/replicate.json``; a mixture already done is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.params.config import Config
from pipeline.lib.models import load_model
from pipeline.lib.outputs import made_by, save_npz, write_json
from pipeline.lib.device import placement
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.scoring import available_eval_domains, evaluate, load_eval_sets
from pipeline.lib.plans import read_plan
from pipeline.lib.training import continue_pretraining

log = logging.getLogger(__name__)


def main(args, cfg: Config) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, cfg.save_dtype, args.params)
    if args.seed_offset == 0:
        raise StageError("--seed-offset 0 would retrain the very same models; give another offset, e.g. --seed-offset 1")
    names = args.mixtures or list(cfg.validation.mixtures)
    unknown = [n for n in names if n not in cfg.validation.mixtures]
    if unknown:
        raise StageError(f"--mixtures {unknown}: not under 'validation.mixtures' in {args.params}; known: {sorted(cfg.validation.mixtures)}")
    if not names:
        raise StageError(f"{args.params}: validation.mixtures is empty; nothing to replicate")
    out = args.out or Path("data/replicates") / f"seed-offset-{args.seed_offset}"
    data_seed = cfg.seed + args.seed_offset
    sets = load_eval_sets(args.tokens, cfg.eval.select(available_eval_domains(args.tokens)), cfg.eval.seq_len)
    for i, name in enumerate(names, 1):
        model_dir, nll = out / "models" / name, out / "nll" / f"{name}.npz"
        if nll.is_file() and (model_dir / "config.json").is_file():
            log.info("[%d/%d] %s: done already (%s)", i, len(names), name, nll)
            continue
        log.info("[%d/%d] %s: training the replicate", i, len(names), name)
        _, specs, weights = read_plan(args.plans / f"{name}.json")
        continue_pretraining(data_seed, cfg.train, name, specs, weights, model_dir, out / "curves" / name, args.base, args.tokens,
                             stage="replicate", place=place)
        per_token: dict = {}
        scores = evaluate(load_model(model_dir).to(place.device), sets, cfg.eval.batch_size, desc=f"evaluate {name}",
                          per_token=per_token, place=place)
        write_json(out / "metrics" / f"{name}.json", {"model": str(model_dir), "eval": {d: {"ppl": round(s["ppl"], 4), "bpb": round(s["bpb"], 5)} for d, s in scores.items()}})
        save_npz(nll, per_token)
    write_json(out / "replicate.json", made_by("replicate", seed_offset=args.seed_offset, data_seed_base=data_seed,
                                               mixtures=names, seed_model=str(args.base)))
    log.info("replicates of %d mixtures in %s; compare: python -m pipeline.report --proxy metrics/proxy.json --truth-nll data/nll/truth "
             "--nll data/nll/shards --replicate %s --out %s --plots %s --reports %s",
             len(names), out, out / "nll", out / "report.json", out / "plots", out / "reports")


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--seed-offset", type=int, default=1, help="added to params seed for the data order (default: %(default)s)")
    p.add_argument("--mixtures", nargs="+", help="only these validation mixtures (default: all)")
    p.add_argument("--base", type=Path, default=Path("models/base"), help="seed model folder (default: %(default)s, as dvc.yaml makes it)")
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"), help="token files (default: %(default)s, as dvc.yaml makes them)")
    p.add_argument("--plans", type=Path, default=Path("data/plans"), help="the validation mixtures' training plans (default: %(default)s, as dvc.yaml makes them)")
    p.add_argument("--out", type=Path, default=None, help="default: data/replicates/seed-offset-<N>")
    return run_stage(main, p, Config, argv)


if __name__ == "__main__":
    exit_stage(cli())
