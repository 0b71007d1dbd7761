"""Stage rank: every subset of the shards, and any weights, ranked by the quadratic surrogate of the merged proxy.

``python -m pipeline.rank --proxy metrics/proxy.json --tokens metrics/tokens.json --out metrics/rank.json --reports reports/rank``

The proxy stage merges every shard alone and every pair; the quadratic surrogate fitted to those
scores (:mod:`pipeline.lib.surrogate`) predicts the merged proxy of any other mixture at no cost.
This stage ranks all subsets of the K shards with it (2^K - 1, or the sizes ``rank.sizes`` names),
each weighted as the proxy stage weights its candidates (``mixtures.weighting``), per eval domain and
on the mean over the domains; it finds the best weights of all (the surrogate's minimum on the
simplex) and predicts the mixtures listed under ``rank.mixtures``. Values are log-perplexities
of the merged model minus the seed's, in nats (negative: better than the seed).

How far to trust it: per domain, its error on the merges the proxy stage scored beyond the pairs
(triples, validation mixtures) against their spread, and the Spearman correlation of its prediction
with those real merges. Two subsets whose predictions differ by less than that error are a tie.

Writes ``metrics/rank.json`` and ``reports/rank/subsets.md``. No model is loaded: it takes seconds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from pydantic import model_validator

from pipeline.params.core import StageParams
from pipeline.params.mixtures import MixturesConfig
from pipeline.params.rank import RankConfig
from pipeline.params.shards import Shards
from pipeline.lib import surrogate
from pipeline.lib.mixtures import mixture_weights
from pipeline.lib.outputs import atomic_dir, made_by, read_json, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.stats import spearman
from pipeline.lib.tokens import shard_token_counts_in

log = logging.getLogger(__name__)

MEAN = "mean"  # the key of the mean over eval domains, beside the domains' own
SAME_WEIGHTS = 1e-4  # proxy.json stores weights to 5 decimals: a scored mixture within this is the subset ranked


class Params(StageParams):
    """The params rank reads (``seed``: of the surrogate minimum's random starts; of ``mixtures``: the weighting)."""

    seed: int = 0
    shards: Shards
    mixtures: MixturesConfig = MixturesConfig()
    rank: RankConfig = RankConfig()

    @model_validator(mode="after")
    def _rank_names_shards(self) -> Params:
        self.rank.check_shards(list(self.shards))
        return self


class Weights:
    """A mixture's weights as the proxy stage weights its candidates (:func:`pipeline.lib.mixtures.mixture_weights`):
    its ratios, else ``mixtures.weighting`` (the shards' training tokens, from the tokenize stage's metrics)."""

    def __init__(self, cfg: Params, tokens: Path):
        self.names, self.path, self.weighting = list(cfg.shards), tokens, cfg.mixtures.weighting
        self.counts = shard_token_counts_in(tokens, cfg.shards) if self.weighting == "tokens" else None

    def of(self, members, ratios=None, key: str = "mixtures.weighting") -> np.ndarray:
        """The weights of ``members`` as a vector over all shards (0 elsewhere); StageError naming ``key``."""
        try:
            w = mixture_weights(members, ratios, key, self.weighting, self.counts)
        except ValueError as e:
            raise StageError(f"{self.path}: {e}") from None
        out = np.zeros(len(self.names))
        out[[self.names.index(s) for s in members]] = w
        return out


def fitted(proxy: dict, path: Path, names: list[str]) -> surrogate.Fitted | str:
    """The surrogates, or why there are none: the candidates did not hold every shard alone and every pair
    (not an error: the proxy stage's scores stand without this stage's ranking)."""
    if list(proxy["shards"]) != names:
        raise StageError(f"{path}: scored the shards {list(proxy['shards'])}, params.yaml has {names}; rerun 'dvc repro proxy'")
    try:
        return surrogate.fit_proxy(proxy)
    except ValueError as e:
        return f"{path}: {e}. To rank every subset, score every pair: {{k: 2}} under mixtures.subsets"


def relative(fit: surrogate.Fitted, seed: dict[str, float]) -> dict[str, surrogate.Quadratic]:
    """Per domain and for the mean over domains: the surrogate of log-perplexity minus the seed's."""
    rel = {d: surrogate.Quadratic(q.names, q.b - seed[d], q.B) for d, q in fit.models.items()}
    return {**rel, MEAN: surrogate.mean_of(list(rel.values()))}


def scored_values(proxy: dict, names: list[str], seed: dict[str, float]) -> list[tuple[np.ndarray, dict[str, float]]]:
    """Every merge the proxy stage scored (shards alone included): its weights, and its nats vs seed per domain and mean."""
    vecs = [(np.eye(len(names))[i], proxy["shards"][s]["eval"]) for i, s in enumerate(names)]
    vecs += [(w, proxy["mixtures"][m]["eval"]) for m, w in surrogate.mixture_vectors(proxy, names).items()]
    out = []
    for w, ev in vecs:
        rel = {d: math.log(ev[d]["ppl"]) - seed[d] for d in seed}
        out.append((w / w.sum(), {**rel, MEAN: float(np.mean(list(rel.values())))}))
    return out


def merged_value(scored, w: np.ndarray, key: str) -> float | None:
    """The real merge's value at weights ``w`` if the proxy stage scored it, else None."""
    for v, values in scored:
        if np.abs(v - w).max() < SAME_WEIGHTS:
            return values[key]
    return None


def trust(fit: surrogate.Fitted) -> dict:
    """Per domain: the surrogate against the real merges it was not fitted to (empty: none scored)."""
    out = {}
    for d, (real, pred) in surrogate.judged(fit).items():
        out[d] = {"held_out": len(real), "max_abs_error": float(np.abs(pred - real).max()), "spread": float(np.ptp(real)),
                  "spearman": spearman(pred, real) if len(real) >= 3 and np.ptp(real) > 0 else None}
    return out


def weights_dict(names, w: np.ndarray) -> dict[str, float]:
    return {s: round(float(x), 5) for s, x in zip(names, w) if x >= 5e-6}


def rank(cfg: Params, proxy: dict, path: Path, weights: Weights) -> dict:
    names = list(cfg.shards)
    fit = fitted(proxy, path, names)
    if isinstance(fit, str):
        log.warning("no ranking: %s", fit)
        return {"shards": names, "unavailable": fit}
    seed = {d: math.log(proxy["seed"]["eval"][d]["ppl"]) for d in fit.models}
    quads = relative(fit, seed)
    scored = scored_values(proxy, names, seed)
    sizes = cfg.rank.sizes_for(len(names))
    base = weights.of(names)  # each shard's weight in any subset, before the subset is normalised
    by_size = {size: surrogate.rank_subsets(quads, [size], base, cfg.rank.top) for size in sizes}  # the overall top: merged from these
    ranked = {key: sorted((e for r in by_size.values() for e in r[key]), key=lambda e: e[1])[:cfg.rank.top] for key in quads}

    def entry(key: str, shards: tuple[str, ...], value: float) -> dict:
        w = np.array([base[i] if s in shards else 0.0 for i, s in enumerate(names)])
        return {"shards": list(shards), "nats_vs_seed": round(value, 6), "merged": _round(merged_value(scored, w / w.sum(), key))}

    out = {}
    for key, q in quads.items():
        w, value = q.minimize(seed=cfg.seed)
        best = min(scored, key=lambda t: t[1][key])
        out[key] = {"top": [entry(key, s, v) for s, v in ranked[key]],
                    "best_of_size": [{"size": size, **entry(key, *r[key][0])} for size, r in by_size.items()],
                    "optimum": {"weights": weights_dict(names, w), "nats_vs_seed": round(value, 6)},
                    "best_scored": {"weights": weights_dict(names, best[0]), "nats_vs_seed": round(best[1][key], 6)}}
    mixtures = {}
    for name, mix in cfg.rank.mixtures.items():
        w = weights.of(mix.shards, mix.ratios, f"rank.mixtures.{name}")
        mixtures[name] = {"weights": weights_dict(names, w), "nats_vs_seed": {k: round(q.predict(w), 6) for k, q in quads.items()}}
    return {"shards": names, "weighting": cfg.mixtures.weighting, "sizes": sizes,
            "subsets_ranked": sum(math.comb(len(names), s) for s in sizes), "trust": trust(fit),
            "ranking": out, "mixtures": mixtures}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def fmt_weights(w: dict[str, float]) -> str:
    return ", ".join(f"{s} {x:.0%}" for s, x in sorted(w.items(), key=lambda t: -t[1]) if x >= 0.005)


def markdown(res: dict) -> str:
    if "unavailable" in res:
        return f"# No subsets ranked\n\nThe quadratic surrogate could not be fitted: {res['unavailable']}.\n"
    names, rk = res["shards"], res["ranking"]
    lines = [f"# Every subset of the {len(names)} shards, ranked by the quadratic surrogate", "",
             f"The surrogate is fitted to the merged proxy of each shard alone and each pair (the proxy stage's scores); it "
             f"predicts the {res['subsets_ranked']} subsets of sizes {res['sizes']} here, weighted by {res['weighting']}. "
             "Values: log-perplexity of the merged model minus the seed's, in nats (negative: better than the seed); "
             "'merged' is the real merge where the proxy stage scored that subset.", "", "## How far to trust it", ""]
    if res["trust"]:
        lines += ["Its error on the merges the proxy stage scored beyond the pairs. Subsets whose predictions differ by less "
                  "than the max error are a tie.", "", "| domain | held-out merges | max error | their spread | Spearman |",
                  "|---|---|---|---|---|"]
        lines += [f"| {d} | {t['held_out']} | {t['max_abs_error']:.1e} | {t['spread']:.4f} | "
                  f"{'-' if t['spearman'] is None else format(t['spearman'], '.3f')} |" for d, t in res["trust"].items()]
    else:
        lines.append("Untested: the proxy stage scored no mixture beyond the pairs. Add triples (`{k: 3, sample: 10}` under "
                     "`mixtures.subsets`) to measure its error before trusting the ranking.")
    top = rk[MEAN]["top"]
    bound = max((t["max_abs_error"] for t in res["trust"].values()), default=None)
    lines += ["", "## Best on the mean over eval domains", ""]
    if bound is not None:
        ties = sum(e["nats_vs_seed"] - top[0]["nats_vs_seed"] <= bound for e in top)
        lines += [f"The first {ties} are within the surrogate's largest error ({bound:.1e} nats) of the first: a tie that "
                  "only real merges (or training) can break." if ties > 1 else
                  f"The first is ahead of the rest by more than the surrogate's largest error ({bound:.1e} nats).", ""]
    lines += ["| rank | subset | predicted | merged |", "|---|---|---|---|"]
    lines += [f"| {i} | {'+'.join(e['shards'])} | {e['nats_vs_seed']:+.5f} | "
              f"{'-' if e['merged'] is None else format(e['merged'], '+.5f')} |" for i, e in enumerate(top, 1)]
    lines += ["", "## The best subset of each size, on the mean over eval domains", "",
              "If you can train on k shards only. 'vs best': how much worse than the best subset of any size.", "",
              "| size | subset | predicted | vs best | merged |", "|---|---|---|---|---|"]
    lines += [f"| {e['size']} | {'+'.join(e['shards'])} | {e['nats_vs_seed']:+.5f} | {e['nats_vs_seed'] - top[0]['nats_vs_seed']:+.5f} | "
              f"{'-' if e['merged'] is None else format(e['merged'], '+.5f')} |" for e in rk[MEAN]["best_of_size"]]
    lines += ["", "## Best per eval domain", "",
              "Best weights: the surrogate's minimum over all weights; best scored: the best merge the proxy stage scored.", "",
              "| domain | first | second | third | best weights | best scored |", "|---|---|---|---|---|---|"]
    for key, r in rk.items():
        cells = [f"{'+'.join(e['shards'])} ({e['nats_vs_seed']:+.4f})" for e in r["top"][:3]]
        cells += [""] * (3 - len(cells))
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {fmt_weights(r['optimum']['weights'])} "
                     f"({r['optimum']['nats_vs_seed']:+.4f}) | {fmt_weights(r['best_scored']['weights'])} "
                     f"({r['best_scored']['nats_vs_seed']:+.4f}) |")
    if res["mixtures"]:
        keys = list(rk)
        lines += ["", "## Your mixtures (rank.mixtures)", "", "| mixture | weights | " + " | ".join(keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        lines += [f"| {name} | {fmt_weights(m['weights'])} | " + " | ".join(f"{m['nats_vs_seed'][k]:+.4f}" for k in keys) + " |"
                  for name, m in res["mixtures"].items()]
    return "\n".join(lines) + "\n"


def main(args, cfg: Params) -> None:
    proxy = read_json(args.proxy, "the proxy stage's metrics")
    res = rank(cfg, proxy, args.proxy, Weights(cfg, args.tokens))
    with atomic_dir(args.reports) as tmp:
        (tmp / "subsets.md").write_text(markdown(res))
    write_json(args.out, {**res, "made_by": made_by("rank", proxy=str(args.proxy))})
    if "unavailable" in res:
        return
    top = res["ranking"][MEAN]["top"][0]
    log.info("%d subsets ranked; best on the mean over %d eval domains: %s (%+.5f nats vs seed)", res["subsets_ranked"],
             len(res["ranking"]) - 1, "+".join(top["shards"]), top["nats_vs_seed"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--proxy", type=Path, required=True, help="the proxy stage's metrics (shards alone, pairs, and more)")
    p.add_argument("--tokens", type=Path, required=True, help="the tokenize stage's metrics (shard sizes, for 'tokens' weighting)")
    p.add_argument("--out", type=Path, required=True, help="the JSON to write")
    p.add_argument("--reports", type=Path, required=True, help="folder for subsets.md")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
