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

Writes ``metrics/report.json``, ``plots/report_scatter.csv``, ``plots/report_correlation.csv``,
``reports/summary.md`` and PNG renders in ``reports/``.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np

from pipeline.common import StageError, read_json, run_stage, stage_parser, write_json, write_text_atomic
from pipeline.config import Config

log = logging.getLogger("pipeline.report")

PROXIES = ("merged", "mean_shard_ppl", "best_shard", "ensemble")
REPLICATE = "truth_replicate"
METRICS = ("pearson", "spearman", "pairwise_acc")


# ---------------------------------------------------------------- statistics


def pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc**2).sum() * (yc**2).sum()))
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def ranks(x) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(x, y) -> float:
    return pearson(ranks(x), ranks(y))


def pairwise_accuracy(proxy, truth) -> float:
    """Of all pairs the truth orders strictly, the fraction the proxy orders the same way."""
    agree = total = 0
    for i, j in itertools.combinations(range(len(truth)), 2):
        t = np.sign(truth[i] - truth[j])
        if t == 0:
            continue
        total += 1
        agree += int(np.sign(proxy[i] - proxy[j]) == t)
    return agree / total if total else float("nan")


def scores(proxy, truth) -> dict[str, float]:
    return {"pearson": pearson(proxy, truth), "spearman": spearman(proxy, truth), "pairwise_acc": pairwise_accuracy(proxy, truth)}


def nanmean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def pooled_within(proxy_by_domain: dict[str, list[float]], truth_by_domain: dict[str, list[float]]) -> float:
    """Pearson over all (mixture, domain) points after centring proxy and truth within each domain."""
    px, tx = [], []
    for d in proxy_by_domain:
        p, t = np.asarray(proxy_by_domain[d]), np.asarray(truth_by_domain[d])
        px.extend(p - p.mean())
        tx.extend(t - t.mean())
    return pearson(px, tx)


# ---------------------------------------------------------------- proxies


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
    """Mean NLL over the first ``n`` tokens of ``domain``: the tokens the proxy scored."""
    have = len(nll.get(domain, ()))
    if have < n:
        raise StageError(f"{path}: {have} tokens for {domain}, the proxy scored {n}; rerun '{fix}'")
    return float(nll[domain][:n].astype(np.float64).mean())


def collect(cfg: Config, args) -> list[dict]:
    """Truth and proxy log-perplexities per validation mixture and eval domain.

    Everything is measured on the same tokens: the proxy stage may score a prefix of each eval set
    (``mixtures.eval_tokens``), so the truth and the shard baselines are taken from their
    per-token NLL over exactly that prefix.
    """
    proxy = read_json(args.proxy, "proxy metrics")
    if not cfg.validation.mixtures:
        raise StageError("params.yaml: validation.mixtures is empty; list the mixtures to train (python -m pipeline.validation sample)")
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
            logs = [float(shard_nll[s][d][:n].astype(np.float64).mean()) for s in shards]
            row = {
                "mixture": name, "k": len(shards), "domain": d,
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


def proxies_in(rows: list[dict]) -> list[str]:
    return [p for p in (*PROXIES, REPLICATE) if rows and p in rows[0]]


def analyse(rows: list[dict], seen_domains: set[str]) -> dict:
    domains = sorted({r["domain"] for r in rows})
    out: dict = {"proxies": {}, "domains": {"seen": [d for d in domains if d in seen_domains], "unseen": [d for d in domains if d not in seen_domains]},
                 "mixtures": len({r["mixture"] for r in rows})}
    for p in proxies_in(rows):
        per_domain, px, tx = {}, {}, {}
        for d in domains:
            rs = [r for r in rows if r["domain"] == d]
            px[d], tx[d] = [r[p] for r in rs], [r["truth"] for r in rs]
            per_domain[d] = scores(px[d], tx[d])
        entry = {"domains": per_domain}
        for label, ds in (("mean", domains), ("seen", out["domains"]["seen"]), ("unseen", out["domains"]["unseen"])):
            entry[label] = {m: nanmean([per_domain[d][m] for d in ds]) for m in METRICS} if ds else None
        entry["pooled_within_domain_pearson"] = pooled_within(px, tx)
        entry["by_size"] = by_size(rows, p, domains)
        entry["mean_abs_error_nats"] = float(np.mean([abs(r[p] - r["truth"]) for r in rows]))
        out["proxies"][p] = entry
    return out


def by_size(rows: list[dict], proxy: str, domains: list[str]) -> dict[str, dict[str, float]]:
    """Mean over domains of the scores among the mixtures of one size k only (when a size has >= 3).

    A diagnostic: across sizes, a truth model of k shards trains k units while a k-way average
    moves each shard's share 1/k of the way, so sizes can disagree where one size ranks well.
    """
    out = {}
    for k in sorted({r["k"] for r in rows}):
        per = []
        for d in domains:
            rs = [r for r in rows if r["domain"] == d and r["k"] == k]
            if len(rs) >= 3:
                per.append(scores([r[proxy] for r in rs], [r["truth"] for r in rs]))
        if per:
            out[str(k)] = {m: nanmean([s[m] for s in per]) for m in METRICS}
    return out


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
        pe = " / ".join(fmt(e[k]["pearson"] if e[k] else None) for k in ("mean", "seen", "unseen"))
        lines.append(f"| {p} | {pe} | {fmt(e['mean']['spearman'])} | {fmt(e['mean']['pairwise_acc'])} | {fmt(e['pooled_within_domain_pearson'])} | {fmt(e['mean_abs_error_nats'])} |")
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
    lines += ["", "## Per eval domain (merged proxy)", "", "| domain | seen | Pearson | Spearman | pairwise acc |", "|---|---|---|---|---|"]
    for d, s in res["proxies"]["merged"]["domains"].items():
        lines.append(f"| {d} | {'yes' if d in res['domains']['seen'] else 'no'} | {fmt(s['pearson'])} | {fmt(s['spearman'])} | {fmt(s['pairwise_acc'])} |")
    lines += ["", "![proxy vs truth](scatter.png)", "", "![correlation by proxy](correlation.png)", ""]
    return "\n".join(lines)


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
        vals = [res["proxies"][p]["mean"][m] for p in names]
        ax.bar(np.arange(len(names)) + (i - 1) * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8 if len(names) > 4 else None)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(min(0, *(res["proxies"][p]["mean"][m] for p in names for m in METRICS if not math.isnan(res["proxies"][p]["mean"][m]))) - 0.05, 1.0)
    ax.legend(fontsize=8)
    ax.set_title("agreement with truth, mean over eval domains")
    fig.tight_layout()
    fig.savefig(out_dir / "correlation.png", dpi=90)
    plt.close(fig)


def main(args, cfg: Config) -> None:
    rows = collect(cfg, args)
    seen = {spec.domain for spec in cfg.shards.values()}
    res = analyse(rows, seen)
    names = proxies_in(rows)
    write_csv(args.plots / "report_scatter.csv", ["mixture", "k", "domain", "truth", *names],
              [[r["mixture"], r["k"], r["domain"], *(round(r[c], 5) for c in ("truth", *names))] for r in rows])
    write_csv(args.plots / "report_correlation.csv", ["proxy", "metric", "value"],
              [[p, m, round(res["proxies"][p]["mean"][m], 4)] for p in names for m in METRICS])
    args.reports.mkdir(parents=True, exist_ok=True)
    render_png(rows, res, args.reports)
    write_text_atomic(args.reports / "summary.md", summary_markdown(res))
    write_json(args.out, res)
    m = res["proxies"]["merged"]["mean"]
    log.info("merged proxy vs truth (mean over %d domains): pearson %.3f spearman %.3f pairwise %.3f",
             len(res["proxies"]["merged"]["domains"]), m["pearson"], m["spearman"], m["pairwise_acc"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--proxy", type=Path, default=Path("metrics/proxy.json"))
    p.add_argument("--truth-nll", type=Path, default=Path("data/nll/truth"))
    p.add_argument("--nll", type=Path, default=Path("data/nll/shards"))
    p.add_argument("--out", type=Path, default=Path("metrics/report.json"))
    p.add_argument("--plots", type=Path, default=Path("plots"))
    p.add_argument("--reports", type=Path, default=Path("reports"))
    p.add_argument("--replicate", type=Path, default=None,
                   help="per-token NLL of replicate truth models (python -m pipeline.replicate): adds the noise-ceiling row")
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
