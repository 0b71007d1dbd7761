"""Mixture inference from weights: NNLS and the Adam-scaled fit recover known weights from synthetic
updates; a model not made from the shards is flagged by its residual; bad models are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lib.mixfit import (POWERS, AdamModel, adam_fit, calibrate_power, coords_of, fit_power, model_update, nnls_weights, plain_fit, read_flat,
                                 shard_moments)
from pipeline.lib.runtime import StageError
from pipeline.lib.tokens import Slice, TokenFile, write_token_file
from tests.test_pool import make_checkpoints, tiny_llama


def synthetic(k=4, p=20000, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(k, p)) * rng.uniform(0.5, 2.0, size=(k, 1))
    v = rng.gamma(0.5, size=(k, p)) * rng.uniform(0.2, 5.0, size=(k, 1))  # shards with differently sized gradients
    return d, v


def test_nnls_recovers_known_weights_of_a_linear_update():
    d, _ = synthetic()
    c_true = np.array([0.0, 1.2, 0.6, 0.0])
    f = c_true @ d
    c, unexplained = nnls_weights(d, f)
    np.testing.assert_allclose(c, c_true, atol=1e-8)
    assert unexplained < 1e-12
    fit = plain_fit(d, f + np.random.default_rng(1).normal(size=f.shape) * 0.05)
    np.testing.assert_allclose(fit.weights, c_true / c_true.sum(), atol=0.01)


def test_adam_model_is_exact_for_one_shard_and_linear_for_equal_moments():
    d, v = synthetic()
    m = AdamModel(d, v)
    np.testing.assert_allclose(m.predict(np.array([0.0, 0.7, 0.0, 0.0])), 0.7 * d[1], rtol=1e-10)
    same = AdamModel(d, np.ones_like(v))
    c = np.array([0.3, 0.5, 0.0, 0.2])
    np.testing.assert_allclose(same.predict(c), c @ d, rtol=1e-10)
    np.testing.assert_allclose(AdamModel(d, v, power=0.0).predict(c), c @ d, rtol=1e-10)  # power 0: the plain model
    np.testing.assert_allclose(AdamModel(d, v, power=0.25).predict(np.array([0.0, 0.0, 1.3, 0.0])), 1.3 * d[2], rtol=1e-10)


@pytest.mark.parametrize("power", [0.5, 0.25, 0.0])
def test_adam_jacobian_matches_finite_differences(power):
    d, v = synthetic(p=500)
    m = AdamModel(d, v, power)
    f = np.random.default_rng(2).normal(size=500)
    c = np.array([0.4, 0.3, 0.8, 0.1])
    r, jac = m.residual_jacobian(c, f)
    eps = 1e-6
    num = np.stack([(m.residual_jacobian(c + eps * e, f)[0] - m.residual_jacobian(c - eps * e, f)[0]) / (2 * eps) for e in np.eye(4)])
    np.testing.assert_allclose(jac, num, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_blocked_normal_equations_equal_the_full_jacobians(chunk):
    """The fit's blocked ``||r||^2, J J^T, J r`` against the same from the whole residual and Jacobian,
    with blocks that do and do not divide the coordinates (and one larger than all of them)."""
    d, v = synthetic(p=5000)
    v[:, :40] = 0.0  # coordinates no shard reached: left out of both
    m = AdamModel(d, v, 0.3)
    f = np.random.default_rng(3).normal(size=5000)[m.keep]
    c = np.array([0.4, 0.0, 0.8, 0.1])
    r, jac = m.residual_jacobian(c, f)
    loss, jtj, jtr = m.normal_equations(c, f, chunk)
    np.testing.assert_allclose(loss, r @ r, rtol=1e-12)
    np.testing.assert_allclose(jtj, jac @ jac.T, rtol=1e-11, atol=1e-12 * np.abs(jac @ jac.T).max())
    np.testing.assert_allclose(jtr, jac @ r, rtol=1e-11, atol=1e-12 * np.abs(jac @ r).max())


@pytest.mark.parametrize("c_true", [[0.7, 0.2, 0.1, 0.0], [0.0, 0.5, 0.0, 1.5], [0.25, 0.25, 0.25, 0.25]])
def test_adam_fit_recovers_weights_where_the_plain_fit_is_biased(c_true):
    d, v = synthetic()
    c_true = np.array(c_true)
    f = AdamModel(d, v).predict(c_true)
    f_noisy = f + np.random.default_rng(3).normal(size=f.shape) * 0.1 * f.std()
    fit = adam_fit(AdamModel(d, v), d, f_noisy)
    w_true = c_true / c_true.sum()
    assert np.abs(fit.weights - w_true).sum() < 0.03
    assert fit.unexplained < 0.02
    plain = plain_fit(d, f_noisy)
    if np.count_nonzero(c_true) > 1:
        assert np.abs(plain.weights - w_true).sum() > np.abs(fit.weights - w_true).sum()


def test_an_update_from_elsewhere_is_left_unexplained():
    d, v = synthetic()
    other = np.random.default_rng(9).normal(size=d.shape[1])
    fit = adam_fit(AdamModel(d, v), d, other)
    assert fit.unexplained > 0.9


def _token_file(tmp_path: Path, vocab: int = 97, n: int = 4000) -> TokenFile:
    ids = np.random.default_rng(0).integers(0, vocab, n).astype(np.uint16)
    path = tmp_path / "dom.bin"
    write_token_file(path, ids, np.array([0, n], dtype=np.int64), np.ones(n, dtype=np.uint32), {"dtype": "uint16"})
    return TokenFile.open(path)


def test_moments_are_the_mean_squared_raw_minibatch_gradient(tmp_path):
    seed_dir, _ = make_checkpoints(tmp_path, k=1)
    model = tiny_llama()
    names = [n for n, _ in model.named_parameters()]
    coords = coords_of(seed_dir, names, 10**9, 0)
    f = _token_file(tmp_path)
    s = Slice("dom", f, 0, f.tokens)
    v = shard_moments(model, [s], 3, 2, 16, coords, seed=5)
    v2 = shard_moments(model, [s], 3, 2, 16, coords, seed=5)
    np.testing.assert_array_equal(v, v2)  # seeded
    assert v.shape == (1, coords.size) and (v >= 0).all() and v.sum() > 0
    # one batch by hand
    from pipeline.lib.tokens import batches, mixture_schedule
    from pipeline.lib.training import lm_loss

    order, _ = mixture_schedule([s], [1.0], 3 * 2, 16, 5)
    acc = 0
    params = dict(model.named_parameters())
    for x in batches([s], order, 16, 2):
        model.zero_grad()
        lm_loss(model, torch.from_numpy(x)).backward()  # not clipped: Adam's step does not see a run-wide scale
        acc = acc + torch.cat([params[n].grad.reshape(-1).double() for n in coords.names]) ** 2
    np.testing.assert_allclose(v[0], (acc / 3).numpy(), rtol=1e-5, atol=1e-14)


def test_sampled_coordinates_are_seeded_and_read_consistently(tmp_path):
    seed_dir, shards = make_checkpoints(tmp_path, k=1)
    names = [n for n, _ in tiny_llama().named_parameters()]
    full = coords_of(seed_dir, names, 10**9, 0)
    a, b = coords_of(seed_dir, names, 500, 0), coords_of(seed_dir, names, 500, 0)
    np.testing.assert_array_equal(a.sample, b.sample)
    assert a.size == 500 and full.sample is None
    np.testing.assert_array_equal(read_flat(shards["s0"], a), read_flat(shards["s0"], full)[a.sample])


def test_bad_models_are_clear_errors(tmp_path):
    seed_dir, _ = make_checkpoints(tmp_path, k=1)
    names = [n for n, _ in tiny_llama().named_parameters()]
    coords = coords_of(seed_dir, names, 10**9, 0)
    seed_flat = read_flat(seed_dir, coords)
    with pytest.raises(StageError, match="equal the seed"):
        model_update(seed_dir, seed_flat, coords)
    tiny_llama(hidden=32).save_pretrained(tmp_path / "wide")
    with pytest.raises(StageError, match="shape .* not a model fine-tuned from this seed"):
        model_update(tmp_path / "wide", seed_flat, coords)
    with pytest.raises(StageError, match="no safetensors checkpoint"):
        model_update(tmp_path / "nowhere", seed_flat, coords)


def test_calibration_finds_the_power_that_made_the_updates():
    d, v = synthetic()
    rng = np.random.default_rng(4)
    cases = []
    for c in ([0.8, 0.2, 0.0, 0.0], [0.0, 0.6, 0.3, 0.1]):
        c = np.array(c) * 2
        f = AdamModel(d, v, 0.25).predict(c)
        cases.append((f + rng.normal(size=f.shape) * 0.05 * f.std(), c / c.sum()))
    power, errors = calibrate_power(d, v, cases)
    assert power == 0.25 and len(errors) == 11 and errors[0.25] < errors[0.5] and errors[0.25] < errors[0.0]


def test_fit_power_finds_each_models_own_power_and_weights():
    """Updates made under different powers (one per model): each gets its own back, with its weights; the
    chosen fit leaves the least unexplained of all the powers tried."""
    d, v = synthetic()
    rng = np.random.default_rng(7)
    made = {"a": (0.1, [0.7, 0.2, 0.1, 0.0]), "b": (0.4, [0.0, 0.5, 0.0, 0.5]), "c": (0.0, [0.3, 0.3, 0.4, 0.0])}
    updates = {}
    for m, (p, w) in made.items():
        f = AdamModel(d, v, p).predict(np.array(w) * 2)
        updates[m] = f + rng.normal(size=f.shape) * 0.02 * f.std()
    best = fit_power(d, v, updates)
    for m, (p, w) in made.items():
        power, fit = best[m]
        assert power == p, (m, power)
        np.testing.assert_allclose(fit.weights, w, atol=0.02)
        assert all(fit.unexplained <= adam_fit(AdamModel(d, v, q), d, updates[m]).unexplained + 1e-12 for q in POWERS)


def test_fits_are_the_same_to_the_bit_side_by_side_and_on_any_number_of_blas_threads():
    """fit_power with 3 updates at a time equals one at a time, bit for bit, whatever BLAS's thread count
    outside (its long dot products split their sums among threads: the fits pin it to one), and BLAS's
    setting is given back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    d, v = synthetic(k=5, p=100_000, seed=3)
    rng = np.random.default_rng(11)
    updates = {m: AdamModel(d, v, 0.3).predict(rng.dirichlet(np.ones(5)) * 2) + rng.normal(size=100_000) * 0.05 for m in "abc"}
    powers = (0.0, 0.25, 0.5)
    before = [i["num_threads"] for i in threadpool_info()]
    with threadpool_limits(limits=2, user_api="blas"):
        one = fit_power(d, v, updates, powers, workers=1)
    with threadpool_limits(limits=1, user_api="blas"):
        three = fit_power(d, v, updates, powers, workers=3)
    assert [i["num_threads"] for i in threadpool_info()] == before
    for m in updates:
        assert one[m][0] == three[m][0]
        assert np.array_equal(one[m][1].coef, three[m][1].coef) and one[m][1].unexplained == three[m][1].unexplained


def test_fit_benchmark_compares_the_blocked_step_with_the_reference(capsys):
    """``python -m pipeline.bench mixfit``: JSON on the last line, the two paths timed and agreeing."""
    import json

    from pipeline.bench.mixfit import main

    assert main(["--json", "-P", "5000", "--reps", "1"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert res["P"] == 5000 and res["reference_s"] > 0 and res["blocked_s"] > 0 and res["jtj_max_rel_diff"] < 1e-12
    assert res["fits"] == 12 and res["fits_reference_s"] > 0 and res["fits_s"] > 0
    assert res["fits_same_powers"] is True and res["fits_max_weight_diff"] < 1e-9
