"""Stage report: how well each proxy predicts the models actually trained on mixtures.

For every validation mixture we have the truth (a model trained on the union of its shards; its
per-token NLL ``data/nll/truth/<mixture>.npz``) and four proxies of its log-perplexity on each eval domain:

* ``merged`` — the weighted parameter average of the shard models (``metrics/proxy.json``);
* ``mean_shard_ppl`` — the mixture-weighted mean of the shard models' own log-perplexities;
* ``best_shard`` — the lowest log-perplexity among the mixture's shard models;
* ``ensemble`` — the output-space ensemble: per token, the weighted mean of the shard models'
  probabilities of the target (from their per-token NLL, ``data/nll/shards/<shard>.npz``).

With ``--replicate DIR`` (per-token NLL of the truth models trained again with another data
order: ``python -m pipeline.replicate``), a fifth row, ``truth_replicate``, scores the replicate as
if it were a proxy: the noise ceiling, the best a proxy can be expected to do.

Per eval domain, across validation mixtures: Pearson and Spearman correlation of proxy and truth
log-perplexity and pairwise ranking accuracy (of all mixture pairs, how often the proxy orders
them as the truth does). Means over all domains, over *seen* domains (some shard covers them)
and *unseen* ones, and a pooled within-domain correlation (each domain centred, then pooled).
The means get 95% bootstrap intervals (``report.bootstrap`` resamples of the validation mixtures),
and so does the difference merged minus mean_shard_ppl. Two diagnostics say where a proxy
misses: pairwise accuracy split by how many of a pair's mixtures cover the eval domain, and the
out-of-mixture shift (how much worse than the seed each model is on the domains its mixture
does not cover, i.e. how much it forgets).

Without validation mixtures (proxy only) it ranks the candidates by the merged proxy instead.
Either way it says how non-linear the merge is here: the quadratic surrogate's error on the scored
mixtures it was not fitted to (:func:`pipeline.lib.surrogate.regime`).

Writes ``metrics/report.json``, ``plots/report_scatter.csv``, ``plots/report_correlation.csv``,
``reports/proxy/summary.md`` and PNG renders beside it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from pipeline.params.core import StageParams
from pipeline.params.mixtures import ValidationConfig
from pipeline.params.report import ReportConfig
from pipeline.params.shards import Shards
from pipeline.lib import surrogate
from pipeline.lib.outputs import read_json, write_json, write_text_atomic
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.stats import METRICS, PAIR_KINDS, REPLICATE, analyse, proxies_in

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- proxies


class Params(StageParams):
    """The params report reads (``seed``: of the bootstrap; ``shards``: which domains a mixture covers)."""

    seed: int = 0
    shards: Shards
    validation: ValidationConfig = ValidationConfig()
    report: ReportConfig = ReportConfig()


def ensemble_logppl(nll: dict[str, dict[str, np.ndarray]], shards: list[str], weights: list[float], domain: str, n: int | None = None) -> float:
    """Mean over the first ``n`` tokens of -log sum_k w_k exp(-nll_k): the weighted output-space ensemble."""
    stack = np.stack([nll[s][domain][:n].astype(np.float64) for s in shards])  # [K, T]
    logw = np.log(np.asarray(weights, np.float64))[:, None]
    m = (logw - stack).max(axis=0)
    lse = m + np.log(np.exp(logw - stack - m).sum(axis=0))
    return float(-lse.mean())


def load_nll(path: Path, what: str, fix: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise StageError(f"{path}: per-token NLL of {what} not found; rerun '{fix}'")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def prefix_logppl(nll: dict[str, np.ndarray], path: Path, domain: str, n: int, fix: str) -> float:
    """Mean NLL over the first ``n`` tokens of ``domain``: the tokens the proxy scored.

    Per-token NLL files hold the predicted tokens in order, so their first ``n`` entries are the
    first ``n`` predicted tokens that :func:`pipeline.lib.tokens.eval_windows` cuts for the proxy.
    """
    have = len(nll.get(domain, ()))
    if have < n:
        raise StageError(f"{path}: {have} tokens for {domain}, the proxy scored {n}; rerun '{fix}'")
    return float(nll[domain][:n].astype(np.float64).mean())


def collect(cfg: Params, args) -> list[dict]:
    """Truth and proxy log-perplexities per validation mixture and eval domain.

    Everything is measured on the same tokens: the proxy stage may score a prefix of each eval set
    (``mixtures.eval_tokens``), so the truth and the shard baselines are taken from their
    per-token NLL over exactly that prefix.
    """
    proxy = read_json(args.proxy, "proxy metrics")
    scored = proxy["eval"]["tokens"]
    shard_nll: dict[str, dict[str, np.ndarray]] = {}
    rows = []
    for name in cfg.validation.mixtures:
        if name not in proxy["mixtures"]:
            raise StageError(f"{args.proxy}: no proxy score for validation mixture {name!r}; rerun 'dvc repro proxy'")
        entry = proxy["mixtures"][name]
        shards, weights = list(entry["shards"]), list(entry["weights"])
        truth_path = args.truth_nll / f"{name}.npz"
        truth = load_nll(truth_path, f"the model trained on {name}", f"dvc repro evaluate_mixture@{name}")
        replicate = None
        if args.replicate is not None:
            rep_path = args.replicate / f"{name}.npz"
            replicate = load_nll(rep_path, f"the replicate of {name}", f"python -m pipeline.replicate --mixtures {name}")
        for s in shards:
            if s not in shard_nll:
                shard_nll[s] = load_nll(args.nll / f"{s}.npz", f"shard {s}", f"dvc repro evaluate@{s}")
        for d, n in scored.items():
            logs = [prefix_logppl(shard_nll[s], args.nll / f"{s}.npz", d, n, f"dvc repro evaluate@{s}") for s in shards]
            row = {
                "mixture": name, "k": len(shards), "domain": d,
                "covers": any(cfg.shards[s].domain == d for s in shards),
                "seed": math.log(proxy["seed"]["eval"][d]["ppl"]),
                "truth": prefix_logppl(truth, truth_path, d, n, "dvc repro"),
                "merged": math.log(entry["eval"][d]["ppl"]),
                "mean_shard_ppl": float(np.dot(weights, logs)),
                "best_shard": min(logs),
                "ensemble": ensemble_logppl(shard_nll, shards, weights, d, n),
            }
            if replicate is not None:
                row[REPLICATE] = prefix_logppl(replicate, rep_path, d, n, "python -m pipeline.replicate")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- outputs


def fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def summary_markdown(res: dict) -> str:
    lines = ["# shardmix report: proxies vs models trained on the mixtures", "",
             f"{res['mixtures']} validation mixtures; {len(res['domains']['seen'])} eval domains covered by a shard "
             f"(seen), {len(res['domains']['unseen'])} covered by none (unseen: {', '.join(res['domains']['unseen']) or 'none'}).",
             "Correlations are between proxy and truth log-perplexity across the validation mixtures, per eval domain, then averaged.", "",
             "| proxy | Pearson (mean / seen / unseen) | Spearman (mean) | pairwise acc (mean) | pooled within-domain r | mean abs error (nats) |",
             "|---|---|---|---|---|---|"]
    for p, e in res["proxies"].items():
        pe = " / ".join([with_ci(e, "pearson")] + [fmt(e[k]["pearson"] if e[k] else None) for k in ("seen", "unseen")])
        lines.append(f"| {p} | {pe} | {with_ci(e, 'spearman')} | {with_ci(e, 'pairwise_acc')} | {fmt(e['pooled_within_domain_pearson'])} | {fmt(e['mean_abs_error_nats'])} |")
    boot = res.get("bootstrap")
    if boot:
        lines += ["", f"In brackets: 95% bootstrap intervals of the means ({boot['resamples']} resamples of the validation mixtures, "
                  "drawn with replacement). They are wide because each domain's scores rest on one small set of mixtures."]
        gap = boot.get("merged_minus_mean_shard_ppl")
        if gap:
            point = {m: res["proxies"]["merged"]["mean"][m] - res["proxies"]["mean_shard_ppl"]["mean"][m] for m in METRICS}
            cells = [f"{m} {point[m]:+.3f} [{gap[m]['ci95'][0]:+.3f}, {gap[m]['ci95'][1]:+.3f}], ahead in {gap[m]['share_above_0']:.0%} of resamples"
                     for m in METRICS]
            lines += ["", "merged minus mean_shard_ppl, on the same resamples: " + "; ".join(cells) + "."]
    if REPLICATE in res["proxies"]:
        lines += ["", f"`{REPLICATE}` is no proxy: the same mixtures trained again with another data order, scored as if it were one. "
                  "It is the noise ceiling: what a perfect proxy would reach against truth models this noisy."]
    sizes = sorted({k for e in res["proxies"].values() for k in e.get("by_size", {})}, key=int)
    if len(sizes) > 1:
        lines += ["", "Within mixtures of one size only (mean over domains of Pearson / Spearman / pairwise acc):", "",
                  "| proxy | " + " | ".join(f"k = {k}" for k in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for p, e in res["proxies"].items():
            cells = [" / ".join(fmt(e["by_size"][k][m]) for m in METRICS) if k in e["by_size"] else "–" for k in sizes]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if "pairs" in res["proxies"]["merged"]:
        first = res["proxies"]["merged"]["pairs"]
        lines += ["", "## Where the proxies miss", "",
                  "Pairwise accuracy over all pairs of validation mixtures, pooled over eval domains, by how many of the two "
                  "mixtures cover the eval domain (have a shard cut from it):", "",
                  "| proxy | " + " | ".join(f"{k.replace('_', ' ')} ({first[k]['pairs']} pairs)" for k in PAIR_KINDS) + " |",
                  "|---|" + "---|" * len(PAIR_KINDS)]
        for p, e in res["proxies"].items():
            lines.append(f"| {p} | " + " | ".join(fmt(e["pairs"][k]["pairwise_acc"]) for k in PAIR_KINDS) + " |")
    shift = res.get("out_of_mixture_shift")
    if shift:
        ks = sorted({k for v in shift.values() for k in v}, key=int)
        lines += ["", "On the eval domains a mixture does not cover: mean log-perplexity minus the seed model's, in nats "
                  "(positive: worse than the seed, i.e. forgetting), by mixture size:", "",
                  "| | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for c, v in shift.items():
            lines.append(f"| {c} | " + " | ".join(f"{v[k]:+.4f}" if k in v else "–" for k in ks) + " |")
    lines += ["", "## Per eval domain (merged proxy)", "", "| domain | seen | Pearson | Spearman | pairwise acc |", "|---|---|---|---|---|"]
    for d, s in res["proxies"]["merged"]["domains"].items():
        lines.append(f"| {d} | {'yes' if d in res['domains']['seen'] else 'no'} | {fmt(s['pearson'])} | {fmt(s['spearman'])} | {fmt(s['pairwise_acc'])} |")
    lines += ["", "![proxy vs truth](scatter.png)", "", "![correlation by proxy](correlation.png)", ""]
    return "\n".join(lines)


def with_ci(entry: dict, metric: str) -> str:
    ci = entry.get("mean_ci95", {}).get(metric)
    return fmt(entry["mean"][metric]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    text = ",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    write_text_atomic(path, text)


def render_png(rows: list[dict], res: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted({r["domain"] for r in rows})
    cols = 4
    nrows = math.ceil(len(domains) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, d in zip(axes.flat, domains):
        rs = [r for r in rows if r["domain"] == d]
        t = [r["truth"] for r in rs]
        for p, mk in (("merged", "o"), ("mean_shard_ppl", "x")):
            ax.scatter(t, [r[p] for r in rs], s=14, marker=mk, label=p)
        lo = min(min(t), *(r[p] for r in rs for p in ("merged", "mean_shard_ppl")))
        hi = max(max(t), *(r[p] for r in rs for p in ("merged", "mean_shard_ppl")))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        r_m = res["proxies"]["merged"]["domains"][d]["pearson"]
        ax.set_title(f"{d}{'' if d in res['domains']['seen'] else ' (unseen)'}  r={fmt(r_m)}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(domains):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("truth: log-perplexity of the model trained on the mixture")
    fig.supylabel("proxy log-perplexity")
    fig.tight_layout()
    fig.savefig(out_dir / "scatter.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.25
    names = list(res["proxies"])
    for i, m in enumerate(METRICS):
        vals = np.array([res["proxies"][p]["mean"][m] for p in names])
        yerr = None
        if all("mean_ci95" in res["proxies"][p] for p in names):  # 95% bootstrap intervals as error bars
            ci = np.array([res["proxies"][p]["mean_ci95"][m] for p in names])
            yerr = np.clip(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
        ax.bar(np.arange(len(names)) + (i - 1) * width, vals, width, label=m, yerr=yerr, capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(np.arange(len(names)), names, fontsize=8 if len(names) > 4 else None)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(min(0, *(res["proxies"][p]["mean"][m] for p in names for m in METRICS if not math.isnan(res["proxies"][p]["mean"][m]))) - 0.05, 1.0)
    ax.legend(fontsize=8)
    ax.set_title("agreement with truth, mean over eval domains" + (" (95% intervals)" if "bootstrap" in res else ""))
    fig.tight_layout()
    fig.savefig(out_dir / "correlation.png", dpi=90)
    plt.close(fig)


def ranking(proxy: dict, top: int = 10) -> dict:
    """Without truth models: the candidates ranked by the merged proxy, per eval domain and overall
    (mean over domains of log-perplexity relative to the seed's: < 0 is better than the seed)."""
    seed = {d: math.log(v["ppl"]) for d, v in proxy["seed"]["eval"].items()}
    rel = {m: {d: math.log(v["ppl"]) - seed[d] for d, v in e["eval"].items()} for m, e in proxy["mixtures"].items()}
    overall = sorted(rel, key=lambda m: (float(np.mean(list(rel[m].values()))), m))
    per_domain = {d: [{"mixture": m, "nats_vs_seed": round(rel[m][d], 5)} for m in sorted(rel, key=lambda m: (rel[m][d], m))[:top]]
                  for d in seed}
    return {"mixtures": len(rel), "overall": [{"mixture": m, "mean_nats_vs_seed": round(float(np.mean(list(rel[m].values()))), 5)}
                                              for m in overall[:top]], "per_domain": per_domain}


def ranking_markdown(res: dict) -> str:
    lines = ["# shardmix report: candidate mixtures ranked by the merged proxy", "",
             f"{res['mixtures']} candidate mixtures; no validation mixtures, so no model was trained to check the proxy "
             "(list some under validation.mixtures for that). Log-perplexity of the merged model minus the seed's, in nats "
             "(negative: better than the seed).", "", "## Best overall (mean over eval domains)", "",
             "| rank | mixture | nats vs seed |", "|---|---|---|"]
    lines += [f"| {i} | {r['mixture']} | {r['mean_nats_vs_seed']:+.4f} |" for i, r in enumerate(res["overall"], 1)]
    lines += ["", "## Best per eval domain", "", "| domain | first | second | third |", "|---|---|---|---|"]
    for d, rs in res["per_domain"].items():
        lines.append(f"| {d} | " + " | ".join(f"{r['mixture']} ({r['nats_vs_seed']:+.4f})" for r in rs[:3]) + " |")
    return "\n".join(lines) + "\n"


def main(args, cfg: Params) -> None:
    args.reports.mkdir(parents=True, exist_ok=True)
    if not cfg.validation.mixtures:  # proxy only: rank the candidates, nothing to correlate with
        proxy = read_json(args.proxy, "proxy metrics")
        res = {"mode": "proxy_only", "ranking": ranking(proxy), "surrogate": surrogate.regime(proxy)}
        write_csv(args.plots / "report_scatter.csv", ["mixture", "k", "domain", "truth", "merged"], [])
        write_csv(args.plots / "report_correlation.csv", ["proxy", "metric", "value"], [])
        write_text_atomic(args.reports / "summary.md", ranking_markdown(res["ranking"]) + surrogate.regime_markdown(res["surrogate"]))
        write_json(args.out, res)
        log.info("proxy only: %d candidates ranked; best overall %s", res["ranking"]["mixtures"], res["ranking"]["overall"][0]["mixture"])
        return
    rows = collect(cfg, args)
    seen = {spec.domain for spec in cfg.shards.values()}
    res = analyse(rows, seen, n_boot=cfg.report.bootstrap, seed=cfg.seed)
    names = proxies_in(rows)
    write_csv(args.plots / "report_scatter.csv", ["mixture", "k", "domain", "truth", *names],
              [[r["mixture"], r["k"], r["domain"], *(round(r[c], 5) for c in ("truth", *names))] for r in rows])
    write_csv(args.plots / "report_correlation.csv", ["proxy", "metric", "value"],
              [[p, m, round(res["proxies"][p]["mean"][m], 4)] for p in names for m in METRICS])
    res["surrogate"] = surrogate.regime(read_json(args.proxy, "proxy metrics"))
    render_png(rows, res, args.reports)
    write_text_atomic(args.reports / "summary.md", summary_markdown(res) + surrogate.regime_markdown(res["surrogate"]))
    write_json(args.out, res)
    m = res["proxies"]["merged"]["mean"]
    log.info("merged proxy vs truth (mean over %d domains): pearson %.3f spearman %.3f pairwise %.3f",
             len(res["proxies"]["merged"]["domains"]), m["pearson"], m["spearman"], m["pairwise_acc"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--proxy", type=Path, required=True, help="the proxy stage's metrics JSON")
    p.add_argument("--truth-nll", type=Path, required=True, help="folder of the truth models' per-token NLL (.npz)")
    p.add_argument("--nll", type=Path, required=True, help="folder of the shard models' per-token NLL (.npz)")
    p.add_argument("--out", type=Path, required=True, help="report metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder for the plot CSVs")
    p.add_argument("--reports", type=Path, required=True, help="folder for summary.md and the PNGs")
    p.add_argument("--replicate", type=Path, default=None,
                   help="per-token NLL of replicate truth models (python -m pipeline.replicate): adds the noise-ceiling row")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
