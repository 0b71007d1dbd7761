"""The report's statistics on hand-made numbers, and the ensemble proxy against a direct computation."""

from __future__ import annotations

import math

from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from pipeline.lib.stats import analyse, bootstrap, pairwise_accuracy, pearson, pooled_within, spearman
from pipeline.report import ensemble_logppl


def test_perfect_and_inverted_rankings():
    truth = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert pearson(truth, truth) == pytest.approx(1.0)
    assert spearman([10, 20, 30, 40, 50], truth) == pytest.approx(1.0)
    assert pairwise_accuracy([10, 20, 30, 40, 50], truth) == 1.0
    inv = [5.0, 4.0, 3.0, 2.0, 1.0]
    assert pearson(inv, truth) == pytest.approx(-1.0)
    assert spearman(inv, truth) == pytest.approx(-1.0)
    assert pairwise_accuracy(inv, truth) == 0.0
    # one swapped pair out of ten
    assert pairwise_accuracy([1, 3, 2, 4, 5], truth) == pytest.approx(0.9)


def test_statistics_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=0.5, size=30)
    x[3] = x[7]  # a tie
    assert pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_pairwise_accuracy_matches_a_loop_over_pairs():
    """The vectorised count against the definition, pair by pair, with ties on both sides."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        t, p = rng.integers(0, 6, size=12).astype(float), rng.integers(0, 6, size=12).astype(float)
        agree = total = 0
        for i in range(12):
            for j in range(i + 1, 12):
                if t[i] != t[j]:
                    total += 1
                    agree += int(np.sign(p[i] - p[j]) == np.sign(t[i] - t[j]))
        assert pairwise_accuracy(p, t) == pytest.approx(agree / total)
    assert math.isnan(pairwise_accuracy([1, 2], [3, 3]))  # the truth orders no pair


def test_pooled_within_domain_removes_domain_offsets():
    proxy = {"a": [1.0, 2.0, 3.0], "b": [101.0, 102.0, 103.0]}
    truth = {"a": [5.0, 6.0, 7.0], "b": [-5.0, -4.0, -3.0]}
    assert pooled_within(proxy, truth) == pytest.approx(1.0)


def test_ensemble_mixes_target_probabilities():
    nll = {"s1": {"d": np.array([0.1, 2.0, 3.0], np.float32)}, "s2": {"d": np.array([1.0, 0.5, 4.0], np.float32)}}
    w = [0.25, 0.75]
    direct = -np.mean(np.log(w[0] * np.exp(-nll["s1"]["d"].astype(float)) + w[1] * np.exp(-nll["s2"]["d"].astype(float))))
    assert ensemble_logppl(nll, ["s1", "s2"], w, "d") == pytest.approx(direct, rel=1e-12)
    # an ensemble of one model is that model
    assert ensemble_logppl(nll, ["s1"], [1.0], "d") == pytest.approx(float(nll["s1"]["d"].astype(float).mean()))


def test_analyse_structure_and_seen_split():
    rows = []
    for i in range(4):
        for d in ("seen_d", "unseen_d"):
            t = float(i) + (0 if d == "seen_d" else 10)
            rows.append({"mixture": f"m{i}", "k": 2, "domain": d, "truth": t, "merged": t * 2,
                         "mean_shard_ppl": -t, "best_shard": t, "ensemble": t})
    res = analyse(rows, {"seen_d"})
    assert set(res["proxies"]) == {"merged", "mean_shard_ppl", "best_shard", "ensemble"}
    merged = res["proxies"]["merged"]
    assert set(merged["domains"]) == {"seen_d", "unseen_d"}
    assert merged["mean"] == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0), "pairwise_acc": 1.0}
    assert res["proxies"]["mean_shard_ppl"]["mean"]["pairwise_acc"] == 0.0
    assert res["domains"] == {"seen": ["seen_d"], "unseen": ["unseen_d"]}


def test_by_size_ranks_within_each_size():
    """A proxy that ranks perfectly within each size but is offset between sizes: by_size sees 1.0."""
    rows = []
    for k in (2, 3):
        for i in range(4):
            t = float(i)
            rows.append({"mixture": f"m{k}{i}", "k": k, "domain": "d", "truth": t, "merged": t + (5.0 if k == 3 else 0.0),
                         "mean_shard_ppl": -t, "best_shard": t, "ensemble": t})
    res = analyse(rows, {"d"})
    merged = res["proxies"]["merged"]
    assert merged["by_size"] == {"2": {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0), "pairwise_acc": 1.0},
                                 "3": {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0), "pairwise_acc": 1.0}}
    # pooled over both sizes, the offset puts every triple above every pair: cross-size pairs are misordered
    assert merged["mean"]["pairwise_acc"] < 1.0
    assert res["proxies"]["mean_shard_ppl"]["by_size"]["2"]["spearman"] == pytest.approx(-1.0)


def _rows(n: int, noise: float, seed: int = 0) -> list[dict]:
    """n mixtures on two domains; merged = truth + noise, mean_shard = truth + 3 x that noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in ("a", "b"):
        for i in range(n):
            t = float(i) * 0.1
            e = rng.normal(scale=noise)
            rows.append({"mixture": f"m{i}", "k": 2, "domain": d, "truth": t, "merged": t + e, "mean_shard_ppl": t + 3 * e,
                         "best_shard": t, "ensemble": t})
    return rows


def test_bootstrap_intervals():
    # a perfect proxy: every resample scores 1, so the interval is [1, 1]
    perfect = bootstrap(_rows(10, 0.0), ["merged"], ["a", "b"], 200, seed=0)
    assert perfect["ci"]["merged"] == {m: [pytest.approx(1.0), pytest.approx(1.0)] for m in ("pearson", "spearman", "pairwise_acc")}
    # a noisy proxy: the interval holds the full-sample mean, and the same seed draws the same resamples
    rows = _rows(15, 0.15)
    res = analyse(rows, {"a"}, n_boot=300, seed=3)
    for p in ("merged", "mean_shard_ppl"):
        for m in ("pearson", "spearman", "pairwise_acc"):
            lo, hi = res["proxies"][p]["mean_ci95"][m]
            assert lo <= res["proxies"][p]["mean"][m] <= hi and lo < hi
    assert analyse(rows, {"a"}, n_boot=300, seed=3)["bootstrap"] == res["bootstrap"]
    # merged's errors are a third of mean_shard's: merged is ahead in (nearly) every resample
    gap = res["bootstrap"]["merged_minus_mean_shard_ppl"]
    assert gap["pearson"]["share_above_0"] > 0.95 and gap["pearson"]["ci95"][0] > 0
    assert "mean_ci95" not in analyse(rows, {"a"})["proxies"]["merged"]  # no resamples asked, none made


def test_pair_kinds_and_out_of_mixture_shift():
    """Domain d: m0 and m1 cover it, m2 and m3 do not. The proxy is right except between m2 and m3."""
    truth = {"m0": 1.0, "m1": 1.5, "m2": 3.0, "m3": 3.2}
    merged = {"m0": 1.1, "m1": 1.6, "m2": 2.7, "m3": 2.6}  # m2 and m3 swapped; forgets less than the truth
    rows = [{"mixture": m, "k": 2 + (m in ("m1", "m3")), "domain": "d", "covers": m in ("m0", "m1"), "seed": 2.5,
             "truth": truth[m], "merged": merged[m], "mean_shard_ppl": truth[m], "best_shard": truth[m], "ensemble": truth[m]}
            for m in truth]
    res = analyse(rows, {"d"})
    pairs = res["proxies"]["merged"]["pairs"]
    assert pairs == {"both_cover": {"pairwise_acc": 1.0, "pairs": 1}, "one_covers": {"pairwise_acc": 1.0, "pairs": 4},
                     "neither_covers": {"pairwise_acc": 0.0, "pairs": 1}}
    assert res["proxies"]["mean_shard_ppl"]["pairs"]["neither_covers"]["pairwise_acc"] == 1.0
    shift = res["out_of_mixture_shift"]
    assert shift["truth"] == {"2": pytest.approx(0.5), "3": pytest.approx(0.7)}  # m2 (k=2) and m3 (k=3)
    assert shift["merged"] == {"2": pytest.approx(0.2), "3": pytest.approx(0.1)}


def test_negative_bootstrap_is_a_clear_error(tmp_path, caplog):
    import yaml

    from pipeline.report import cli

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["report"] = {"bootstrap": -1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "never-written.json"
    assert cli(["--params", str(tmp_path / "params.yaml"), "--proxy", "p.json", "--truth-nll", "t", "--nll", "n",
                "--out", str(out), "--plots", str(tmp_path), "--reports", str(tmp_path)]) == 2
    assert "report.bootstrap" in caplog.text and not out.exists()
