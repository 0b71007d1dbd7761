"""The quadratic surrogate of the merged proxy: a function of the mixture weights fixed by singletons and pairs.

On the weight simplex (``w >= 0``, ``sum w = 1``) Scheffe's quadratic mixture model is

    f(w) = sum_k b_k w_k + sum_{j<k} b_jk w_j w_k

and is fixed exactly by Scheffe's {K, 2} lattice: ``b_k`` is the merged proxy of shard k alone, and a
pair (j, k) merged at weights (a, 1 - a) gives ``b_jk = (f_jk - a b_j - (1 - a) b_k) / (a (1 - a))``.
The proxy stage scores every shard and every pair, so after K (K + 1) / 2 merges this model predicts
the merged proxy of every other mixture for free. Its error on merges it was not fitted to (the
triples, the validation mixtures) says how non-linear the regime is: small, the quadratic regime
(trust it to rank all 2^K subsets and to optimise weights); large, higher-order effects (trust only
real merges). Here ``f`` is a log-perplexity (nats per token), per eval domain or per target.

:meth:`Quadratic.minimize` finds its minimum on the simplex (a small quadratic program, not
necessarily convex: SLSQP from every vertex, the centre and seeded random starts);
:func:`rank_subsets` predicts every subset of the shards at once (vectorised, in chunks), for any
number of models (eval domains); :func:`fit_proxy` fits one per eval domain of the proxy stage's scores.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quadratic:
    """``f(w) = b @ w + sum_{j<k} B[j, k] w_j w_k`` over the shards ``names`` (B symmetric, zero diagonal)."""

    names: tuple[str, ...]
    b: np.ndarray
    B: np.ndarray

    def predict(self, w: Sequence[float] | np.ndarray) -> float:
        """f at ``w`` (normalised to sum 1 first)."""
        w = _simplex(w, len(self.names))
        return float(self.b @ w + 0.5 * w @ self.B @ w)

    def grad(self, w: np.ndarray) -> np.ndarray:
        return self.b + self.B @ w

    def minimize(self, seed: int = 0, restarts: int = 8, support: Sequence[int] | None = None) -> tuple[np.ndarray, float]:
        """The lowest f found on the simplex (or on the face of shards ``support``): (weights, value)."""
        from scipy.optimize import minimize

        k = len(self.names)
        idx = list(range(k)) if support is None else list(support)
        n = len(idx)
        rng = np.random.default_rng(seed)
        starts = [np.eye(n)[i] for i in range(n)] + [np.full(n, 1 / n)] + [rng.dirichlet(np.ones(n)) for _ in range(restarts)]
        b, B = self.b[idx], self.B[np.ix_(idx, idx)]
        fun = lambda v: float(b @ v + 0.5 * v @ B @ v)  # noqa: E731
        jac = lambda v: b + B @ v  # noqa: E731
        best_v, best_f = None, np.inf
        for x0 in starts:
            res = minimize(fun, x0, jac=jac, method="SLSQP", bounds=[(0.0, 1.0)] * n,
                           constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones_like(v)}],
                           options={"ftol": 1e-14, "maxiter": 500})
            v = _simplex(np.clip(res.x, 0.0, None), n)
            if fun(v) < best_f:
                best_v, best_f = v, fun(v)
        w = np.zeros(k)
        w[idx] = best_v
        return w, best_f

    def predict_many(self, W: np.ndarray) -> np.ndarray:
        """f at each row of ``W`` (rows already on the simplex)."""
        return W @ self.b + 0.5 * np.einsum("ij,ij->i", W @ self.B, W)

    def best_subsets(self, sizes: Sequence[int], base: Sequence[float] | None = None, top: int = 10) -> list[tuple[tuple[str, ...], float]]:
        """The ``top`` subsets of the given sizes by predicted f: :func:`rank_subsets` of this model alone."""
        return rank_subsets({"f": self}, sizes, base, top)["f"]


def mean_of(quads: Sequence[Quadratic]) -> Quadratic:
    """The mean of models over the same shards (a mean of quadratics is the quadratic of the mean)."""
    names = quads[0].names
    if any(q.names != names for q in quads):
        raise ValueError("the models are over different shards")
    return Quadratic(names, np.mean([q.b for q in quads], axis=0), np.mean([q.B for q in quads], axis=0))


def subsets(k: int, sizes: Sequence[int], chunk: int = 1 << 16) -> Iterator[np.ndarray]:
    """Every subset of ``range(k)`` of the given sizes, in that order and then lexicographic, as 0/1 rows in chunks."""
    for size in sizes:
        combos = itertools.combinations(range(k), size)
        while block := list(itertools.islice(combos, chunk)):
            rows = np.zeros((len(block), k))
            np.put_along_axis(rows, np.array(block, dtype=np.int64).reshape(len(block), size), 1.0, axis=1)
            yield rows


def rank_subsets(quads: Mapping[str, Quadratic], sizes: Sequence[int], base: Sequence[float] | None = None,
                 top: int = 10, chunk: int = 1 << 16) -> dict[str, list[tuple[tuple[str, ...], float]]]:
    """Per model, the ``top`` subsets of the shards of the given sizes by predicted f, lowest first (ties:
    in subset order). A subset's weights are ``base`` over its shards (each shard's token count for the
    ``tokens`` weighting; None: uniform), normalised. Every model is over the same shards. ``chunk``:
    subsets predicted at a time (memory: ``chunk`` x K floats)."""
    names = next(iter(quads.values())).names
    k = len(names)
    base = np.ones(k) if base is None else np.asarray(base, dtype=np.float64)
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {m: (np.empty((0, k)), np.empty(0)) for m in quads}
    for rows in subsets(k, sizes, chunk):
        W = rows * base
        W /= W.sum(axis=1, keepdims=True)
        for m, q in quads.items():
            keep_rows, keep_vals = best[m]
            rows_m = np.concatenate([keep_rows, rows])
            vals = np.concatenate([keep_vals, q.predict_many(W)])
            idx = np.argsort(vals, kind="stable")[:top]
            best[m] = rows_m[idx], vals[idx]
    return {m: [(tuple(names[i] for i in np.flatnonzero(r)), float(v)) for r, v in zip(*best[m])] for m in quads}


def _simplex(w: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.size != k:
        raise ValueError(f"weights have {w.size} entries, expected {k}")
    s = w.sum()
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"weights must have a positive sum, got {w.tolist()}")
    return w / s


def fit(names: Sequence[str], singles: Mapping[str, float], pairs: Sequence[tuple[Sequence[float], float]]) -> Quadratic:
    """The model fixed by ``singles`` (shard -> f of that shard alone) and ``pairs`` ((weight vector over
    ``names`` with two non-zero entries, f of that merge)); every pair of shards exactly once.

    Raises ValueError naming what is missing or duplicated.
    """
    names = tuple(names)
    k = len(names)
    missing = [n for n in names if n not in singles]
    if missing:
        raise ValueError(f"no singleton (shard alone) for {missing}: the surrogate needs every shard scored alone")
    b = np.array([float(singles[n]) for n in names])
    B = np.full((k, k), np.nan)
    np.fill_diagonal(B, 0.0)
    for w, value in pairs:
        w = _simplex(w, k)
        nz = np.flatnonzero(w > 0)
        if nz.size != 2:
            raise ValueError(f"a pair has {nz.size} non-zero weights: {w.tolist()}")
        j, l = nz
        if not np.isnan(B[j, l]):
            raise ValueError(f"the pair {names[j]}+{names[l]} is given twice")
        a = w[j]
        B[j, l] = B[l, j] = (float(value) - a * b[j] - (1 - a) * b[l]) / (a * (1 - a))
    if np.isnan(B).any():
        j, l = np.argwhere(np.isnan(B))[0]
        raise ValueError(f"no pair {names[j]}+{names[l]}: the surrogate needs every pair of shards merged once")
    return Quadratic(names, b, B)


def mixture_vectors(proxy: dict, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The mixtures the proxy stage scored (``metrics/proxy.json``) as weight vectors over ``names``.
    ValueError naming a mixture with a shard outside ``names``."""
    names = list(names)
    out = {}
    for mix, entry in proxy["mixtures"].items():
        if not set(entry["shards"]) <= set(names):
            raise ValueError(f"mixture {mix} has shards outside {names}: {entry['shards']}")
        w = np.zeros(len(names))
        for s, x in zip(entry["shards"], entry["weights"]):
            w[names.index(s)] = x
        out[mix] = w
    return out


@dataclass(frozen=True)
class Fitted:
    """Per eval domain of the proxy stage's scores: the surrogate of the merged log-perplexity, fitted on the
    shards alone and the pairs, and the merges it was not fitted to (mixture -> (weights, log-perplexity))."""

    names: tuple[str, ...]
    models: dict[str, Quadratic]
    held: dict[str, dict[str, tuple[np.ndarray, float]]]


def fit_proxy(proxy: dict) -> Fitted:
    """The surrogates of ``metrics/proxy.json``, each pair's first merge the one fitted (another merge of
    the same pair, at other weights, is held out); ValueError naming what is missing (a shard alone, a pair)."""
    names = tuple(proxy["shards"])
    vectors = mixture_vectors(proxy, names)
    lattice, seen = set(), set()
    for mix, e in proxy["mixtures"].items():
        if e["k"] == 2 and frozenset(e["shards"]) not in seen:
            seen.add(frozenset(e["shards"]))
            lattice.add(mix)
    models, held = {}, {}
    for d in proxy["eval"]["domains"]:
        singles = {s: math.log(proxy["shards"][s]["eval"][d]["ppl"]) for s in names}
        values = {mix: math.log(e["eval"][d]["ppl"]) for mix, e in proxy["mixtures"].items()}
        models[d] = fit(names, singles, [(vectors[m], values[m]) for m in proxy["mixtures"] if m in lattice])
        held[d] = {m: (vectors[m], v) for m, v in values.items() if m not in lattice}
    return Fitted(names, models, held)


def judged(fitted: Fitted) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per eval domain with held-out merges: their real values and the surrogate's predictions."""
    out = {}
    for d, q in fitted.models.items():
        held = list(fitted.held[d].values())
        if held:
            out[d] = np.array([v for _, v in held]), np.array([q.predict(w) for w, _ in held])
    return out


def regime(proxy: dict) -> dict:
    """The surrogate as a regime diagnostic of the proxy stage's scores (``metrics/proxy.json``): per eval
    domain, fitted on the shards alone and the pairs, its error on every other merge the stage scored
    (triples, validation mixtures), against their spread and the linear (mean of shards) model's error.
    Empty when the stage scored no mixture beyond pairs, or not every pair."""
    try:
        fitted = fit_proxy(proxy)
    except ValueError:
        return {}
    held = judged(fitted)
    if set(held) != set(fitted.models):
        return {}
    out: dict = {}
    for d, (real, pred) in held.items():
        q = fitted.models[d]
        err = np.abs(pred - real)
        lin = [abs(float(q.b @ (w / w.sum())) - v) for w, v in fitted.held[d].values()]
        out[d] = {"held_out": len(real), "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                  "spread": float(real.max() - real.min()), "linear_mean_abs_error": float(np.mean(lin))}
    return out


def regime_markdown(reg: dict) -> str:
    if not reg:
        return ""
    worst = max(reg.values(), key=lambda r: r["max_abs_error"])
    lines = ["", "## The regime: how non-linear is the merge?", "",
             "A quadratic in the weights fixed by the shards alone and the pairs (pipeline/lib/surrogate.py) predicts the "
             "merged log-perplexity of every other scored mixture to within "
             f"{worst['max_abs_error']:.1e} nats (worst domain), against a spread of those mixtures of "
             f"{min(r['spread'] for r in reg.values()):.4f}-{max(r['spread'] for r in reg.values()):.4f} nats and a linear "
             "(mean of shards) model's mean error of "
             f"{min(r['linear_mean_abs_error'] for r in reg.values()):.1e}-{max(r['linear_mean_abs_error'] for r in reg.values()):.1e}. "
             "Small: the quadratic regime (its ranking of any mixture can be trusted); large: higher-order effects.", "",
             "| domain | held-out merges | max error | mean error | spread | linear mean error |", "|---|---|---|---|---|---|"]
    lines += [f"| {d} | {r['held_out']} | {r['max_abs_error']:.1e} | {r['mean_abs_error']:.1e} | {r['spread']:.4f} | "
              f"{r['linear_mean_abs_error']:.1e} |" for d, r in reg.items()]
    return "\n".join(lines) + "\n"
