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
The means get 95% bootstrap intervals (``--bootstrap N`` resamples of the validation mixtures),
and so does the difference merged minus mean_shard_ppl. Two diagnostics say where a proxy
misses: pairwise accuracy split by how many of a pair's mixtures cover the eval domain, and the
out-of-mixture shift (how much worse than the seed each model is on the domains its mixture
does not cover, i.e. how much it forgets).

Writes ``metrics/report.json``, ``plots/report_scatter.csv``, ``plots/report_correlation.csv``,
``reports/summary.md`` and PNG renders in ``reports/``.
"""

from __future__ import annotations

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
    """Average ranks from 0 (ties share the mean of their positions), as Spearman's rho needs."""
    x = np.asarray(x, float)
    below = (x[None, :] < x[:, None]).sum(axis=1)
    equal = (x[None, :] == x[:, None]).sum(axis=1)
    return below + (equal - 1) / 2.0


def spearman(x, y) -> float:
    return pearson(ranks(x), ranks(y))


def pair_signs(proxy, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Over every pair ``i < j``: the sign of the proxy's and of the truth's difference, and ``i``, ``j``."""
    p, t = np.asarray(proxy, float), np.asarray(truth, float)
    i, j = np.triu_indices(len(t), 1)
    return np.sign(p[i] - p[j]), np.sign(t[i] - t[j]), i, j


def pairwise_accuracy(proxy, truth) -> float:
    """Of all pairs the truth orders strictly, the fraction the proxy orders the same way."""
    ps, ts, _, _ = pair_signs(proxy, truth)
    strict = ts != 0
    return float((ps[strict] == ts[strict]).mean()) if strict.any() else float("nan")


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


def proxies_in(rows: list[dict]) -> list[str]:
    return [p for p in (*PROXIES, REPLICATE) if rows and p in rows[0]]


def analyse(rows: list[dict], seen_domains: set[str], n_boot: int = 0, seed: int = 0) -> dict:
    """Every proxy's scores per domain and their means; with ``n_boot``, bootstrap intervals too.

    Rows that say whether their mixture ``covers`` the domain (and the ``seed`` model's
    log-perplexity) also get the by-pair-kind accuracies and the out-of-mixture shift.
    """
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
        if rows and "covers" in rows[0]:
            entry["pairs"] = pair_kinds(rows, p, domains)
        out["proxies"][p] = entry
    if rows and "seed" in rows[0]:
        out["out_of_mixture_shift"] = out_of_mixture_shift(rows, ["truth", *proxies_in(rows)])
    if n_boot > 0:
        boot = bootstrap(rows, proxies_in(rows), domains, n_boot, seed)
        for p, ci in boot.pop("ci").items():
            out["proxies"][p]["mean_ci95"] = ci
        out["bootstrap"] = boot
    return out


def _grid(rows: list[dict], key: str, domains: list[str], mixtures: list[str]) -> np.ndarray:
    """``[domain, mixture]`` array of ``row[key]``."""
    at = {(r["domain"], r["mixture"]): r[key] for r in rows}
    return np.array([[at[(d, m)] for m in mixtures] for d in domains], float)


def bootstrap(rows: list[dict], proxies: list[str], domains: list[str], n_boot: int, seed: int) -> dict:
    """95% percentile intervals of each proxy's mean scores, resampling validation mixtures.

    Each resample draws the validation mixtures with replacement (the same draws for every proxy
    and domain: mixtures are the sampled units), then scores as :func:`analyse` does. A pair of a
    mixture with its own copy is a tie in the truth and does not count for pairwise accuracy.
    Also the paired difference merged - mean_shard_ppl: its interval and how often it is > 0.
    """
    mixtures = sorted({r["mixture"] for r in rows})
    truth = _grid(rows, "truth", domains, mixtures)
    grids = {p: _grid(rows, p, domains, mixtures) for p in proxies}
    draws = np.random.default_rng(seed).integers(0, len(mixtures), size=(n_boot, len(mixtures)))
    means = {p: np.empty((n_boot, len(METRICS))) for p in proxies}
    for b, idx in enumerate(draws):
        for p in proxies:
            per = [scores(grids[p][i, idx], truth[i, idx]) for i in range(len(domains))]
            means[p][b] = [nanmean([x[m] for x in per]) for m in METRICS]

    def interval(v: np.ndarray) -> list[float]:
        return [float(x) for x in np.nanpercentile(v, [2.5, 97.5])]

    out: dict = {"resamples": n_boot, "seed": seed, "unit": "validation mixture",
                 "ci": {p: {m: interval(means[p][:, j]) for j, m in enumerate(METRICS)} for p in proxies}}
    if "merged" in means and "mean_shard_ppl" in means:
        diff = means["merged"] - means["mean_shard_ppl"]
        out["merged_minus_mean_shard_ppl"] = {m: {"ci95": interval(diff[:, j]), "share_above_0": float(np.mean(diff[:, j] > 0))}
                                              for j, m in enumerate(METRICS)}
    return out


PAIR_KINDS = ("both_cover", "one_covers", "neither_covers")


def pair_kinds(rows: list[dict], proxy: str, domains: list[str]) -> dict[str, dict[str, float]]:
    """Pairwise accuracy pooled over domains, split by how many of the pair's mixtures cover the domain.

    A mixture *covers* an eval domain when one of its shards is cut from it. Pairs where exactly
    one covers it are easy (training on a domain helps it most); pairs where neither does ask the
    proxy for the small differences of transfer and forgetting.
    """
    agree = {k: 0 for k in PAIR_KINDS}
    total = {k: 0 for k in PAIR_KINDS}
    for d in domains:
        rs = [r for r in rows if r["domain"] == d]
        ps, ts, i, j = pair_signs([r[proxy] for r in rs], [r["truth"] for r in rs])
        covers = np.array([r["covers"] for r in rs], int)
        kind = 2 - covers[i] - covers[j]  # index into PAIR_KINDS
        for k, name in enumerate(PAIR_KINDS):
            counted = (ts != 0) & (kind == k)
            total[name] += int(counted.sum())
            agree[name] += int((ps[counted] == ts[counted]).sum())
    return {k: {"pairwise_acc": agree[k] / total[k] if total[k] else float("nan"), "pairs": total[k]} for k in PAIR_KINDS}


def out_of_mixture_shift(rows: list[dict], columns: list[str]) -> dict[str, dict[str, float]]:
    """Mean log-perplexity minus the seed's on the domains a mixture does not cover, by mixture size.

    Positive: worse than the seed (forgetting). Shows whether a proxy forgets as the truth does.
    """
    out = {}
    for c in columns:
        out[c] = {}
        for k in sorted({r["k"] for r in rows}):
            v = [r[c] - r["seed"] for r in rows if r["k"] == k and not r["covers"]]
            if v:
                out[c][str(k)] = float(np.mean(v))
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


def main(args, cfg: Config) -> None:
    if args.bootstrap < 0:
        raise StageError(f"--bootstrap {args.bootstrap}: the number of resamples must be 0 (no intervals) or more")
    rows = collect(cfg, args)
    seen = {spec.domain for spec in cfg.shards.values()}
    res = analyse(rows, seen, n_boot=args.bootstrap, seed=cfg.seed)
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
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples of the validation mixtures for the 95%% intervals (0: none; default: %(default)s)")
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
