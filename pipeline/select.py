"""Stage select: which training examples made a model, by SELECT (Morris et al. 2025), checked by retraining.

``python -m pipeline.select --base models/base --models models/mixtures models/probes --tokens data/tokens
--out metrics/select.json --selected data/select``

For every model of ``select.models`` (validation truths or probes, whose data is known): a pool of
``select.pool_per_domain`` training windows of every corpus domain (in and outside the model's
mixture) is scored at the model's weights (each example's gradient, of ``select.gradients``: every
linear layer or the output embedding, sketched; its inner product with the model's update, exact),
and ``select.k`` examples are picked by SELECT's greedy
running-sum rule (one sum for all ``k``; or started again every ``select.batch`` picks), for comparison the
rule with a sum per training batch (``select_batched``: the paper code's ``greedy_batched``), and by its
baselines (top-k cosine, lowest loss, random)
(:mod:`pipeline.lib.selection`). Precision: the share of a method's examples from the model's true
domains. Recovery: the seed trained on SELECT's examples and on the random ones, with the model's
own recipe and token budget (``train``; the examples cycled in a seeded order), scored with the
model itself and the seed on the model's own domains' eval sets; recovery =
(ppl_random - ppl_select) / (ppl_random - ppl_model). The random examples (and their model) are
one seeded draw shared by models of the same budget. Selected ids go to ``--selected``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.params.device import ModelStageParams
from pipeline.params.evaluation import EvalConfig
from pipeline.params.model import OptimConfig
from pipeline.params.select import SelectConfig, sketch_shape
from pipeline.params.shards import Shards
from pipeline.lib.device import Placement, placement
from pipeline.lib.models import find_model, load_model
from pipeline.lib.outputs import RunRecord, atomic_dir, made_by, read_json, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.scoring import evaluate, load_eval_sets
from pipeline.lib.selection import (Gradients, Pool, domain_files, gradient_sketches, gram_matrix, greedy_select, layer_deltas,
                                    linear_modules, lowest_loss, make_pool, random_pick, sketch_maps, topk_cosine)
from pipeline.lib.training import train_model

log = logging.getLogger(__name__)

METHODS = ("select", "select_batched", "topk_cosine", "lowest_loss", "random")


class Params(ModelStageParams):
    """The params select reads (``train``: the retraining recipe; ``eval``: how the retrained models are scored)."""

    seed: int = 0
    train: OptimConfig
    shards: Shards
    eval: EvalConfig = EvalConfig()
    select: SelectConfig = SelectConfig()


def model_domains(meta: dict, shards: Shards) -> list[str]:
    """The corpus domains a model trained on (a probe's member that is no shard is a domain)."""
    return list(dict.fromkeys(shards[s].domain if s in shards else s for s in meta["shards"]))


def retrain(base: Path, pool: Pool, idx: np.ndarray, files, recipe: OptimConfig, tokens: int, seed: int, desc: str,
            place: Placement):
    """The seed trained on exactly the examples ``idx`` (each a one-window slice, equal weights) for ``tokens`` tokens."""
    model = load_model(base)
    slices = pool.slices(idx, files)
    with tempfile.TemporaryDirectory(prefix="select-live-") as live:
        train_model(model, slices, [1.0] * len(slices), recipe.model_copy(update={"tokens": tokens}), seed, Path(live), desc, place)
    return model


def mean_ppl(model, sets, batch_size: int, place: Placement) -> tuple[float, dict[str, float]]:
    scores = evaluate(model.to(place.device), sets, batch_size, place=place)
    per = {d: round(s["ppl"], 6) for d, s in scores.items()}
    return float(np.mean(list(per.values()))), per


class Cost:
    """Seconds spent by part, summed over the models (for the run record)."""

    PARTS = ("gradients", "selection", "retraining", "scoring")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)

    @contextlib.contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


def pick_examples(grads: Gradients, sc: SelectConfig, per_batch: int, seed: int) -> dict[str, np.ndarray]:
    """Each method's ``select.k`` examples (indices into the pool), in the order of :data:`METHODS`."""
    gram = gram_matrix(grads.sketches)  # the gradients' inner products, float64: all the rules read of them
    return {"select": greedy_select(gram, grads.align, sc.k, sc.batch),
            "select_batched": greedy_select(gram, grads.align, sc.k, per_batch),
            "topk_cosine": topk_cosine(gram, grads.align, sc.k),
            "lowest_loss": lowest_loss(grads.losses, sc.k), "random": random_pick(len(gram), sc.k, seed)}


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, params=args.params)
    run = RunRecord("select")
    sc = cfg.select
    # the check stage has checked the names against the validation mixtures and probes
    folders = {m: find_model(m, args.models, f"{args.params}: select.models", "name a validation mixture or a probe (infer.probes) and run "
                             "'dvc repro' to train it") for m in sc.models}
    files = domain_files(args.tokens)
    pool = make_pool(files, sc.pool_per_domain, cfg.train.seq_len, cfg.seed)
    if sc.k > len(pool):
        raise StageError(f"{args.params}: select.k = {sc.k} is more than the pool's {len(pool)} examples "
                         f"({sc.pool_per_domain} per domain x {len(files)} domains): lower select.k or raise select.pool_per_domain")
    seed_model = load_model(args.base)
    maps = sketch_maps(linear_modules(seed_model, sc.gradients), sketch_shape(sc.proj_dim), cfg.seed)
    rows, selected, randoms, cost = {}, {}, {}, Cost()
    for m, folder in folders.items():
        meta = read_json(folder / "shardmix.json", "model record")
        model = load_model(folder)
        deltas = layer_deltas(seed_model, model, sc.gradients)
        if not any(bool(d.any()) for d in deltas.values()):
            raise StageError(f"{folder}: its weights equal the seed's (no update to attribute): give a model fine-tuned from the seed")
        with cost.part("gradients"):
            grads = gradient_sketches(model.to(place.device), pool, sc.gradients, maps, deltas, cfg.eval.batch_size, place.device)
        with cost.part("selection"):
            picks = pick_examples(grads, sc, cfg.train.batch_size, cfg.seed)
            del grads  # ~570 MB at the default pool and sketch: not held through the retraining
        mine = set(model_domains(meta, cfg.shards))
        row = {"domains": sorted(mine), "tokens": meta["tokens"],
               "precision": {k: round(float(np.mean([d in mine for d in pool.domains[idx]])), 6) for k, idx in picks.items()},
               "pool_share": round(float(np.mean([d in mine for d in pool.domains])), 6)}
        budget = int(meta["tokens"])
        with cost.part("retraining"):
            if budget not in randoms:
                randoms[budget] = retrain(args.base, pool, picks["random"], files, cfg.train, budget, cfg.seed + 1, f"random {budget}", place)
            sel_model = retrain(args.base, pool, picks["select"], files, cfg.train, budget, cfg.seed + 1, f"select {m}", place)
        with cost.part("scoring"):
            sets = load_eval_sets(args.tokens, sorted(mine), cfg.eval.seq_len)
            ppl = {name: mean_ppl(mod, sets, cfg.eval.batch_size, place)
                   for name, mod in (("seed", seed_model), ("random", randoms[budget]), ("select", sel_model), ("model", model))}
        rows[m] = recovery_row(row, ppl)
        selected[m] = {k: pool.ids(idx) for k, idx in picks.items()}
        log.info("%s: precision %s (pool %.2f); ppl seed %.4f random %.4f select %.4f model %.4f: recovery %s", m,
                 row["precision"], row["pool_share"], *(row["ppl"][n] for n in ("seed", "random", "select", "model")), row["recovery"])
    rec = [r["recovery"] for r in rows.values() if r["recovery"] is not None]
    out = {"pool": {"examples": len(pool), "domains": sorted(files), "per_domain": sc.pool_per_domain, "seq_len": pool.seq_len},
           "k": sc.k, "batch": sc.batch, "batched_variant": cfg.train.batch_size, "gradients": sc.gradients, "sketch_per_layer": list(sketch_shape(sc.proj_dim)), "layers": len(maps),
           "summary": {"precision": {k: round(float(np.mean([r["precision"][k] for r in rows.values()])), 6) for k in METHODS} if rows else {},
                       "recovery": {"mean": round(float(np.mean(rec)), 6) if rec else None, "models": len(rec)}},
           "models": rows, "made_by": made_by("select", select=sc.model_dump(), **place.record())}
    with atomic_dir(args.selected) as tmp:
        for m, picks in selected.items():
            write_json(tmp / f"{m}.json", {"model": m, "k": sc.k, "selected": picks, "made_by": made_by("select", model=m)})
    write_json(args.out, out)
    log.info("%d models, pool %d: %s (seconds)", len(rows), len(pool), ", ".join(f"{p} {s:.0f}" for p, s in cost.seconds.items()))
    run.write(models=len(rows), pool=len(pool), cost={p: round(s, 1) for p, s in cost.seconds.items()}, **place.facts())


def recovery_row(row: dict, ppl: dict[str, tuple[float, dict[str, float]]]) -> dict:
    """``row`` with the mean perplexities (seed, random, select, model), by domain, and the recovery of the gap."""
    gap = ppl["random"][0] - ppl["model"][0]
    row["ppl"] = {name: round(v[0], 6) for name, v in ppl.items()}
    row["ppl_by_domain"] = {name: v[1] for name, v in ppl.items()}
    row["recovery"] = round((ppl["random"][0] - ppl["select"][0]) / gap, 6) if gap > 0 else None
    return row


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="folders holding the model folders, searched in order")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (training windows for the pool, eval sets)")
    p.add_argument("--out", type=Path, required=True, help="the metrics JSON to write")
    p.add_argument("--selected", type=Path, required=True, help="folder for each model's selected example ids")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
