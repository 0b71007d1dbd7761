"""The quadratic surrogate: exact on a quadratic, its minimum on the simplex, errors, and its accuracy
on the committed proxy scores (fitted on shards and pairs, judged on the triples it never saw)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipeline.lib import surrogate
from tests.conftest import REPO


def known(k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = rng.normal(size=k)
    B = rng.normal(size=(k, k))
    B = B + B.T
    np.fill_diagonal(B, 0.0)
    return b, B


def lattice(names, f, a: float = 0.3):
    """Singletons and pairs of ``f`` (pairs merged at a, 1 - a, as token-proportional pairs are)."""
    k = len(names)
    singles = {n: f(np.eye(k)[i]) for i, n in enumerate(names)}
    pairs = []
    for j, l in itertools.combinations(range(k), 2):
        w = np.zeros(k)
        w[j], w[l] = a, 1 - a
        pairs.append((w, f(w)))
    return singles, pairs


def test_a_quadratic_is_recovered_exactly_from_its_lattice():
    names = [f"s{i}" for i in range(5)]
    b, B = known(5)
    f = lambda w: float(b @ w + 0.5 * w @ B @ w)  # noqa: E731
    q = surrogate.fit(names, *lattice(names, f))
    rng = np.random.default_rng(1)
    for w in rng.dirichlet(np.ones(5), size=20):
        assert q.predict(w) == pytest.approx(f(w), abs=1e-12)
    assert q.predict([2, 0, 0, 0, 2]) == pytest.approx(f(np.array([0.5, 0, 0, 0, 0.5])), abs=1e-12)  # normalised


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_its_minimum_on_the_simplex_is_found(seed):
    names = ["a", "b", "c"]
    b, B = known(3, seed)
    q = surrogate.Quadratic(tuple(names), b, B)
    w, value = q.minimize(seed=0)
    grid = [np.array([i, j, 60 - i - j]) / 60 for i in range(61) for j in range(61 - i)]
    best = min(q.predict(g) for g in grid)
    assert w.min() >= 0 and w.sum() == pytest.approx(1) and value == pytest.approx(q.predict(w))
    assert value <= best + 1e-9
    w2, v2 = q.minimize(seed=0, support=[0, 2])  # on a face: shard b excluded
    assert w2[1] == 0 and v2 >= value - 1e-12


def test_missing_or_repeated_lattice_points_are_named():
    names = ["a", "b", "c"]
    singles, pairs = lattice(names, lambda w: float(w.sum()))
    with pytest.raises(ValueError, match=r"no singleton \(shard alone\) for \['c'\]"):
        surrogate.fit(names, {"a": 1.0, "b": 1.0}, pairs)
    with pytest.raises(ValueError, match="no pair a\\+c"):
        surrogate.fit(names, singles, [p for p in pairs if p[0][2] == 0 or p[0][0] == 0])
    with pytest.raises(ValueError, match="the pair a\\+b is given twice"):
        surrogate.fit(names, singles, pairs + pairs[:1])


def test_on_the_committed_proxy_scores_it_predicts_the_triples_it_never_saw():
    """metrics/proxy.json of the default run, through the report's regime diagnostic: fitted on the
    10 shards and 45 pairs, the surrogate predicts every triple's merged log-perplexity to under
    1e-4 nats, far below the triples' spread and below the error of the linear (mean of shards) model."""
    proxy = json.loads((REPO / "metrics/proxy.json").read_text())
    reg = surrogate.regime(proxy)
    assert set(reg) == set(proxy["eval"]["domains"])
    for d, r in reg.items():
        err, spread, linear = r["max_abs_error"], r["spread"], r["linear_mean_abs_error"]
        assert r["held_out"] >= 10 and err < 1e-4 and err < spread / 20 and err < linear / 10, (d, r)


def test_best_subsets_rank_every_subset_by_its_predicted_value():
    """Against brute force: every subset of the sizes asked, uniform or token-proportional weights."""
    names = [f"s{i}" for i in range(6)]
    b, B = known(6, seed=3)
    f = lambda w: float(b @ (w / w.sum()) + 0.5 * (w / w.sum()) @ B @ (w / w.sum()))  # noqa: E731
    q = surrogate.fit(names, *lattice(names, f))
    tokens = {n: float(i + 1) for i, n in enumerate(names)}
    for weights in ("uniform", "tokens"):
        want = []
        for size in (2, 3):
            for combo in itertools.combinations(range(6), size):
                w = np.zeros(6)
                w[list(combo)] = [1.0 if weights == "uniform" else tokens[names[i]] for i in combo]
                want.append((tuple(names[i] for i in combo), f(w)))
        want.sort(key=lambda t: t[1])
        got = q.best_subsets([2, 3], base=None if weights == "uniform" else [tokens[n] for n in names], top=7)
        assert [g[0] for g in got] == [w[0] for w in want[:7]]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want[:7]], abs=1e-12)
