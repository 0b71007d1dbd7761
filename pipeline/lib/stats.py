"""Statistics of proxy against truth: correlations, pairwise ranking, bootstrap intervals, diagnostics.

The inputs are *rows*, one per (validation mixture, eval domain): the truth's log-perplexity, each
proxy's, whether the mixture ``covers`` the domain and the ``seed``'s log-perplexity.
:func:`analyse` scores every proxy per domain (Pearson, Spearman, pairwise ranking accuracy),
averages over all, seen and unseen domains, pools within domains, and with ``n_boot`` adds 95%
bootstrap intervals over validation mixtures. Plain numpy; no file is read or written here.
"""

from __future__ import annotations

import math

import numpy as np

PROXIES = ("merged", "mean_shard_ppl", "best_shard", "ensemble")
REPLICATE = "truth_replicate"
METRICS = ("pearson", "spearman", "pairwise_acc")


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
