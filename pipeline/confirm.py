"""Stage confirm: train the recommended mixture for one target and every rival's, and judge them on the test part.

``python -m pipeline.confirm --target bible_web --recommend data/recommend/bible_web.json --base models/base
--tokens data/tokens --targets data/targets --out metrics/recommend/bible_web.json --report
reports/recommend/bible_web.md --plot reports/recommend/bible_web.png``

Each method's weights (the recommend stage's) become sampling proportions over its shards' training
data, and the seed is trained on them with the truth recipe (params ``train``: the same LR, batch
and schedule as the validation mixtures' models) for ``recommend.budget`` tokens (default: 3 x
``train.tokens``). Every trained model is scored on the target's test part, which nothing before
this stage has seen; the recommended mixture is trained a second time with another data order, and
the gap between the two is the noise a difference must clear. The other noise of the verdict is the
judge's own: each rival's margin over the recommended mixture is also given with a 95% interval
over the test part's documents (resampled, the same draw for every model), which says whether
another set of documents of the target could have reversed it. Methods whose weights coincide (within
0.02 in L1) are trained once. The models themselves are not kept: the figures are the output, with the verdict
(:mod:`pipeline.lib.advice`: which rivals the recommendation beats, by how many noises) in the
metrics, a page in words and a plot.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path


from pipeline.params.device import ModelStageParams
from pipeline.params.evaluation import EvalConfig
from pipeline.params.model import OptimConfig
from pipeline.params.recommend import RecommendConfig
from pipeline.params.shards import Shards
from pipeline.lib import advice
from pipeline.lib.device import placement
from pipeline.lib.models import load_model
from pipeline.lib.outputs import RunRecord, made_by, read_json, write_json, write_text_atomic
from pipeline.lib.runtime import exit_stage, run_stage, stage_parser
from pipeline.lib.targets import document_bootstrap, load_target, loss
from pipeline.lib.tokens import shard_slice
from pipeline.lib.training import train_model

log = logging.getLogger(__name__)


class Params(ModelStageParams):
    """The params confirm reads."""

    seed: int = 0
    train: OptimConfig
    shards: Shards
    eval: EvalConfig = EvalConfig()
    recommend: RecommendConfig = RecommendConfig()


SAME = 0.02  # weights closer than this (L1) are the same data to 1 part in 100: trained once
BOOTSTRAP = 2000  # resamples of the test part's documents for each margin's interval


def distinct_mixtures(methods: dict[str, dict]) -> dict[str, list[str]]:
    """Methods grouped by their weights (within :data:`SAME` of the group's first, in L1): each group
    is trained once, as its first method."""
    groups: dict[str, list[str]] = {}
    for name, m in methods.items():
        w = m["weights"]
        home = next((g for g in groups if sum(abs(w[s] - methods[g]["weights"][s]) for s in w) <= SAME), None)
        groups.setdefault(home or name, []).append(name)
    return groups


def train_and_score(cfg: Params, args, weights: dict[str, float], data_seed: int, desc: str, target, place) -> dict:
    """The seed trained on ``weights`` for the budget; its target loss on test (and dev)."""
    used = {s: w for s, w in weights.items() if w > 0}
    slices = [shard_slice(s, cfg.shards[s], args.tokens) for s in used]
    budget = cfg.recommend.budget or 3 * cfg.train.tokens
    model = load_model(args.base)
    with tempfile.TemporaryDirectory() as live:
        summary, speed = train_model(model, slices, list(used.values()), cfg.train.model_copy(update={"tokens": budget}),
                                     data_seed, Path(live), desc=desc, place=place)
    per_token: dict = {}
    test, test_domains = loss(model, target, "test", cfg.eval.batch_size, place, per_token=per_token)
    dev, _ = loss(model, target, "dev", cfg.eval.batch_size, place)
    return {"test": test, "dev": dev, "test_domains": test_domains, "tokens": summary["tokens"],
            "final_loss": summary["final_loss"], "seconds": speed["seconds"],
            "documents": target.document_sums("test", per_token)}


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, params=args.params)
    run = RunRecord("confirm", args.target)
    rec = read_json(args.recommend, "the recommend stage's output")
    target = load_target(args.targets, args.target, cfg.eval.seq_len)
    trained, groups = {}, distinct_mixtures(rec["methods"])
    for first, same in groups.items():
        seed = cfg.seed + sum(map(ord, f"{args.target}/{first}"))
        res = train_and_score(cfg, args, rec["methods"][first]["weights"], seed, f"confirm {args.target} {first}", target, place)
        for name in same:
            trained[name] = {**res, "trained_as": first}
        log.info("%s: %s: test %.5f (proxy predicted %.5f)", args.target, "=".join(same), res["test"], rec["methods"][first]["test"])
    first = next(f for f, same in groups.items() if "recommended" in same)
    seed = cfg.seed + sum(map(ord, f"{args.target}/{first}")) + 1
    replicate = train_and_score(cfg, args, rec["methods"]["recommended"]["weights"], seed, f"confirm {args.target} replicate", target, place)
    noise = abs(replicate["test"] - trained["recommended"]["test"])
    documents = document_bootstrap(target, {f: trained[f]["documents"] for f in groups}, first, BOOTSTRAP, cfg.seed)
    for res in (*trained.values(), replicate):
        res.pop("documents", None)
    out = {"target": args.target, "budget": cfg.recommend.budget or 3 * cfg.train.tokens,
           "methods": {n: {"weights": m["weights"], "proxy_test": m["test"], "proxy_dev": m["dev"], **trained[n]}
                       for n, m in rec["methods"].items()},
           "replicate": replicate, "noise": noise,
           "documents": {n: documents[trained[n]["trained_as"]] for n in trained if trained[n]["trained_as"] != first}}
    out["verdict"] = advice.summarise_target(rec, out)
    out["made_by"] = made_by("confirm", target=args.target, recipe=cfg.train.model_dump(), **place.record())
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    advice.render_png(args.target, out["verdict"], args.plot)
    write_text_atomic(args.report, advice.markdown(args.target, out["verdict"]))
    write_json(args.out, out)
    run.write(trainings=len(groups) + 1, **place.facts())
    margins = {n: m["test"] - trained["recommended"]["test"] for n, m in trained.items() if n != "recommended"}
    log.info("%s: recommended test %.5f, noise %.5f; rivals minus recommended: %s", args.target, trained["recommended"]["test"],
             noise, {n: round(v, 5) for n, v in margins.items()})


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="a key of recommend.targets")
    p.add_argument("--recommend", type=Path, required=True, help="the recommend stage's JSON for this target")
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the shards' training data)")
    p.add_argument("--targets", type=Path, required=True, help="the gather stage's folder of target token files")
    p.add_argument("--out", type=Path, required=True, help="the metrics JSON to write")
    p.add_argument("--report", type=Path, required=True, help="the page in words to write (.md)")
    p.add_argument("--plot", type=Path, required=True, help="the figure to write (.png)")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
