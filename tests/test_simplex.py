"""Optimisers on the weight simplex: mirror descent finds a known minimum, sparsify keeps the largest,
MixMin's EM reaches the convex optimum (checked against a fine grid and against scipy)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.lib.simplex import ensemble_loss, mirror_descent, mixmin, normalised, sparsify


def test_mirror_descent_finds_the_minimum_of_a_convex_quadratic():
    target = np.array([0.6, 0.3, 0.1, 0.0])
    A = np.diag([2.0, 1.0, 3.0, 1.5])

    def f(w):
        d = w - target
        return float(d @ A @ d), 2 * A @ d

    res = mirror_descent(f, np.full(4, 0.25), steps=400, lr=1.0)
    assert res.loss == min(res.history) < 1e-5 and res.w.sum() == pytest.approx(1)
    np.testing.assert_allclose(res.w, target, atol=2e-3)  # the zero weight is approached multiplicatively


def test_mirror_descent_keeps_the_best_iterate_and_stops_on_a_flat_gradient():
    res = mirror_descent(lambda w: (1.0, np.ones(3)), np.array([1.0, 2.0, 1.0]), steps=50, lr=1.0, interior=0.0)
    assert len(res.history) == 1 and res.w.tolist() == [0.25, 0.5, 0.25]
    with pytest.raises(ValueError, match="not finite"):
        mirror_descent(lambda w: (1.0, np.array([0.0, np.nan])), np.ones(2), steps=3, lr=1.0)


def test_sparsify_and_normalised():
    np.testing.assert_allclose(sparsify(np.array([0.1, 0.5, 0.15, 0.25]), 2), [0, 2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(sparsify(np.array([0.2, 0.8]), 5), [0.2, 0.8])
    with pytest.raises(ValueError, match="positive sum"):
        normalised(np.zeros(3))


def test_mixmin_reaches_the_optimum_of_the_ensemble_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 400, 5))
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = rng.integers(0, 5, 400)
    logp = logp_all[:, np.arange(400), labels]  # [K, T]: each model's log-prob of the target token
    w = mixmin(logp)
    grid = [np.array([i, j, 100 - i - j]) / 100 for i in range(101) for j in range(101 - i)]
    best = min(ensemble_loss(logp, g) for g in grid)
    assert ensemble_loss(logp, w) <= best + 1e-9
    from scipy.optimize import minimize

    res = minimize(lambda v: ensemble_loss(logp, normalised(np.abs(v))), np.full(3, 1 / 3), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 5000})
    assert ensemble_loss(logp, w) <= res.fun + 1e-9


def test_mixmin_token_weights_shift_the_answer_toward_the_weighted_tokens():
    logp = np.log(np.array([[0.9, 0.1], [0.1, 0.9]]))  # model 0 is good on token 0, model 1 on token 1
    assert mixmin(logp, np.array([1.0, 1.0]))[0] == pytest.approx(0.5, abs=1e-6)
    assert mixmin(logp, np.array([3.0, 1.0]))[0] > 0.7


def test_mirror_descent_leaves_a_vertex_and_stops_when_it_stalls():
    """From a vertex (the surrogate's optimum often is one) the descent still moves: the start is
    pulled slightly inside. A loss that only rises stops the descent after `patience` failures."""
    target = np.array([0.2, 0.8])
    res = mirror_descent(lambda w: (float(((w - target) ** 2).sum()), 2 * (w - target)), np.array([1.0, 0.0]), steps=200, lr=1.0)
    np.testing.assert_allclose(res.w, target, atol=1e-3)
    calls = []

    def rising(w):
        calls.append(1)
        return float(len(calls)), np.array([1.0, -1.0])

    assert len(mirror_descent(rising, np.array([0.5, 0.5]), steps=100, lr=1.0, patience=3).history) == 4


def test_mirror_descent_stops_when_gains_fall_below_tol_and_keeps_the_best():
    """Gains that shrink geometrically never stop a descent with tol=0 before `steps`; with tol,
    the descent stops after `patience` steps in a row that gain less, yet keeps their (better) point."""
    calls = []

    def shrinking(w):
        calls.append(1)
        return 1.0 + 0.5 ** len(calls), np.array([1.0, -1.0])

    assert len(mirror_descent(shrinking, np.array([0.5, 0.5]), steps=30, lr=1.0).history) == 30
    calls.clear()
    res = mirror_descent(shrinking, np.array([0.5, 0.5]), steps=30, lr=1.0, patience=3, tol=1e-3)
    # step n gains 2^-n; the first below 1e-3 is step 10 (2^-10 = 9.8e-4); three in a row end at step 12
    assert len(res.history) == 12 and res.loss == min(res.history) == 1.0 + 0.5 ** 12
