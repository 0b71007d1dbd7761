"""The verdict on a target, from made-up recommend and confirm figures whose answers are known."""

from __future__ import annotations

import pytest

from pipeline.lib import advice

SHARDS = ("a", "b", "c")


def weights(*w: float) -> dict[str, float]:
    return dict(zip(SHARDS, w))


def figures(trained: dict[str, float], proxy: dict[str, float], noise: float, same: dict[str, str] | None = None):
    """recommend's output and confirm's, for methods with these trained and predicted test losses;
    ``same`` maps a method to the one it was trained as (identical weights)."""
    same = same or {}
    w = {"uniform": weights(1 / 3, 1 / 3, 1 / 3), "natural": weights(0.2, 0.3, 0.5), "best_single": weights(1, 0, 0),
         "best_candidate": weights(0.5, 0.5, 0), "mixmin": weights(0.6, 0.4, 0), "surrogate": weights(0.7, 0.3, 0),
         "recommended": weights(0.7, 0.3, 0)}
    rec = {"methods": {n: {"weights": w[n], "test": proxy[n], "dev": proxy[n] - 0.1} for n in w},
           "descent": {"weights": weights(0.68, 0.32, 0), "dev": proxy["recommended"] - 0.1},
           "surrogate": {"held_out_merges": 4, "max_abs_error": 2e-5, "mean_abs_error": 1e-5, "dev_spread": 0.04},
           "cost": {"merges_scored": 60, "gradient_steps": 20}}
    rec["methods"]["recommended"]["from"] = "descent"
    conf = {"methods": {n: {"weights": w[n], "proxy_test": proxy[n], "test": trained[n], "trained_as": same.get(n, n)} for n in w},
            "noise": noise}
    return rec, conf


TRAINED = {"uniform": 4.90, "natural": 4.89, "best_single": 4.86, "best_candidate": 4.8505, "mixmin": 4.8495,
           "surrogate": 4.85, "recommended": 4.85}
PROXY = {"uniform": 4.91, "natural": 4.905, "best_single": 4.87, "best_candidate": 4.862, "mixmin": 4.859,
         "surrogate": 4.86, "recommended": 4.86}


def test_the_verdict_counts_margins_in_noises_and_each_trained_model_once():
    rec, conf = figures(TRAINED, PROXY, noise=0.002, same={"surrogate": "recommended"})
    s = advice.summarise_target(rec, conf)
    assert s["recommended"] == {"a": 0.7, "b": 0.3} and s["recommended_from"] == "descent"
    assert s["margin_over_recommended"]["uniform"] == pytest.approx(0.05)
    # beats: margin > 2 x noise (0.004); best_single's 0.01 is, natural's 0.04 is
    assert s["beats"] == {"uniform": True, "natural": True, "best_single": True}
    # not worse than by more than the noise: mixmin is 0.0005 better, within 0.002
    assert s["not_worse"] == {"best_candidate": True, "mixmin": True}
    assert s["predicted_gain_over_uniform"] == pytest.approx(0.05) and s["worth_having"]
    # surrogate was trained as recommended: 6 distinct models, ranked alike by proxy and training
    assert s["trained_models"] == ["uniform", "natural", "best_single", "best_candidate", "mixmin", "recommended"]
    assert s["proxy_vs_trained_spearman"] == pytest.approx(1.0)
    assert s["surrogate"]["l1_to_descent"] == pytest.approx(0.04)
    md = advice.markdown("t", s)
    assert "**To do well on t, train on:** a 70%, b 30%." in md and "6 distinct trained models" in md
    assert s["margin_over_documents"] == {}  # no per-document figures: no interval column filled


def test_the_interval_over_documents_is_shown_beside_each_margin():
    rec, conf = figures(TRAINED, PROXY, noise=0.002, same={"surrogate": "recommended"})
    conf["documents"] = {"mixmin": {"margin": -0.0005, "low": -0.0021, "high": 0.0009, "sd": 0.0008},
                         "uniform": {"margin": 0.05, "low": 0.041, "high": 0.06, "sd": 0.005}}
    s = advice.summarise_target(rec, conf)
    assert s["margin_over_documents"] == {"mixmin": [-0.0021, 0.0009], "uniform": [0.041, 0.06]}
    md = advice.markdown("t", s)
    assert "| mixmin | 127.677 | -0.00050 | -0.00210 to +0.00090 |" in md
    assert "| natural | 132.954 | +0.04000 |  |" in md  # a method without figures: an empty cell


def test_a_gain_within_the_noise_is_not_worth_having_and_a_loss_to_mixmin_is_reported():
    trained = {**TRAINED, "mixmin": 4.84, "best_single": 4.853}
    proxy = {**PROXY, "uniform": 4.862}
    rec, conf = figures(trained, proxy, noise=0.002)
    s = advice.summarise_target(rec, conf)
    assert s["beats"]["best_single"] is False  # 0.003 < 2 x 0.002
    assert s["not_worse"]["mixmin"] is False  # 0.01 worse than mixmin, more than the noise
    assert not s["worth_having"]  # predicted gain 0.002 < 4 x noise
    assert "not worth having" in advice.markdown("t", s)


def test_pooled_spearman_takes_each_target_relative_to_its_uniform(tmp_path):
    one = advice.summarise_target(*figures(TRAINED, PROXY, noise=0.002))
    shifted = {n: v + 1.0 for n, v in TRAINED.items()}  # another target's level: pooling must not see it
    two = advice.summarise_target(*figures(shifted, {n: v + 1.0 for n, v in PROXY.items()}, noise=0.002))
    assert advice.pooled_spearman([one, two]) == pytest.approx(
        advice.spearman([PROXY[n] for n in one["trained_models"]], [TRAINED[n] for n in one["trained_models"]]))
    advice.render_png("t", one, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["t.png"]
