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
necessarily convex: SLSQP from every vertex, the centre and seeded random starts).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
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

    def best_subsets(self, sizes: Sequence[int], weights: str = "uniform", tokens: Mapping[str, float] | None = None,
                     top: int = 10) -> list[tuple[tuple[str, ...], float]]:
        """The ``top`` subsets of the given sizes by predicted f (weights uniform, or token-proportional)."""
        out = []
        for size in sizes:
            for combo in itertools.combinations(range(len(self.names)), size):
                w = np.zeros(len(self.names))
                for i in combo:
                    w[i] = 1.0 if weights == "uniform" else float(tokens[self.names[i]])
                out.append((tuple(self.names[i] for i in combo), self.predict(w)))
        return sorted(out, key=lambda t: t[1])[:top]


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


def regime(proxy: dict) -> dict:
    """The surrogate as a regime diagnostic of the proxy stage's scores (``metrics/proxy.json``): per eval
    domain, fitted on the shards alone and the pairs, its error on every other merge the stage scored
    (triples, validation mixtures), against their spread and the linear (mean of shards) model's error.
    Empty when the stage scored no mixture beyond pairs, or not every pair."""
    import math

    names = list(proxy["shards"])
    out: dict = {}
    for d in proxy["eval"]["domains"]:
        singles = {s: math.log(proxy["shards"][s]["eval"][d]["ppl"]) for s in names}
        pairs, held = [], []
        for e in proxy["mixtures"].values():
            w = np.zeros(len(names))
            for s, x in zip(e["shards"], e["weights"]):
                w[names.index(s)] = x
            (pairs if e["k"] == 2 else held).append((w, math.log(e["eval"][d]["ppl"])))
        try:
            q = fit(names, singles, pairs)
        except ValueError:
            return {}
        if not held:
            return {}
        err = [abs(q.predict(w) - v) for w, v in held]
        lin = [abs(float(q.b @ (w / w.sum())) - v) for w, v in held]
        out[d] = {"held_out": len(held), "max_abs_error": max(err), "mean_abs_error": float(np.mean(err)),
                  "spread": max(v for _, v in held) - min(v for _, v in held), "linear_mean_abs_error": float(np.mean(lin))}
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
