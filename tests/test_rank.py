"""The rank stage: every subset ranked by the quadratic surrogate, on the committed proxy scores (the
default run's metrics/proxy.json) and on hand-made ones; bad input names the key and writes nothing."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import rank
from pipeline.lib import surrogate
from tests.conftest import REPO, write_params

PROXY = json.loads((REPO / "metrics/proxy.json").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def run(tmp_path: Path, params: dict, proxy: dict | None = None, tokens: Path = REPO / "metrics/tokens.json") -> tuple[int, Path]:
    out = tmp_path / "out"
    write_params(tmp_path / "params.yaml", params)
    (tmp_path / "proxy.json").write_text(json.dumps(PROXY if proxy is None else proxy))
    code = rank.cli(["--params", str(tmp_path / "params.yaml"), "--proxy", str(tmp_path / "proxy.json"), "--tokens",
                     str(tokens), "--out", str(out / "rank.json"), "--reports", str(out / "rank")])
    return code, out


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> dict:
    """The stage on the default run's scores, with two mixtures of the user's own."""
    params = copy.deepcopy(PARAMS)
    params["rank"]["mixtures"] = {"perl_heavy": {"shards": ["docs_perl", "news_bbc"], "ratios": [3, 1]},
                                  "all": {"shards": list(params["shards"])}}
    code, out = run(tmp_path_factory.mktemp("rank"), params)
    assert code == 0
    return json.loads((out / "rank.json").read_text()) | {"_md": (out / "rank/subsets.md").read_text()}


def test_the_rank_stage_lists_every_subset_and_the_real_merges_it_saw(committed):
    names = list(PROXY["shards"])
    assert committed["subsets_ranked"] == 2 ** len(names) - 1 and committed["sizes"] == list(range(1, len(names) + 1))
    assert set(committed["ranking"]) == {*PROXY["eval"]["domains"], rank.MEAN}
    seen_merged = 0
    for key, r in committed["ranking"].items():
        values = [e["nats_vs_seed"] for e in r["top"]]
        assert values == sorted(values) and len(values) == PARAMS["rank"]["top"]
        # no subset beats the best weights of all, and the best weights beat or tie the best scored merge
        assert r["optimum"]["nats_vs_seed"] <= values[0] + 1e-9
        assert r["optimum"]["nats_vs_seed"] <= r["best_scored"]["nats_vs_seed"] + 1e-5
        for e in r["top"]:
            if e["merged"] is not None:  # the shards alone and the pairs are the lattice: fitted exactly
                seen_merged += 1
                assert abs(e["merged"] - e["nats_vs_seed"]) < (1e-5 if len(e["shards"]) <= 2 else 1e-4), (key, e)
    assert seen_merged >= len(PROXY["eval"]["domains"])  # each domain's own shard is near its top


def test_its_values_are_the_surrogate_of_the_proxy_scores_minus_the_seed(committed):
    """One domain's first subset and a user mixture, recomputed by hand from metrics/proxy.json."""
    names = list(PROXY["shards"])
    tokens = json.loads((REPO / "metrics/tokens.json").read_text())["domains"]
    t = np.array([tokens[PARAMS["shards"][s]["domain"]]["train_tokens"] for s in names], dtype=float)
    fitted = surrogate.fit_proxy(PROXY)
    d = "fortunes"
    seed = math.log(PROXY["seed"]["eval"][d]["ppl"])
    first = committed["ranking"][d]["top"][0]
    w = np.array([t[i] if s in first["shards"] else 0.0 for i, s in enumerate(names)])
    assert first["nats_vs_seed"] == pytest.approx(fitted.models[d].predict(w) - seed, abs=1e-6)
    # brute force over every subset for this domain
    best = min(fitted.models[d].predict(np.array([t[i] if i in c else 0.0 for i in range(len(names))])) - seed
               for size in range(1, len(names) + 1) for c in itertools.combinations(range(len(names)), size))
    assert first["nats_vs_seed"] == pytest.approx(best, abs=1e-6)
    for e in committed["ranking"][d]["best_of_size"]:  # the best of each size, by brute force over that size
        want = min((fitted.models[d].predict(np.array([t[i] if i in c else 0.0 for i in range(len(names))])) - seed, c)
                   for c in itertools.combinations(range(len(names)), e["size"]))
        assert e["nats_vs_seed"] == pytest.approx(want[0], abs=1e-6) and e["shards"] == [names[i] for i in want[1]]
    assert [e["size"] for e in committed["ranking"][d]["best_of_size"]] == list(range(1, len(names) + 1))
    w = np.zeros(len(names))
    w[names.index("docs_perl")], w[names.index("news_bbc")] = 0.75, 0.25
    got = committed["mixtures"]["perl_heavy"]
    assert got["weights"] == {"news_bbc": 0.25, "docs_perl": 0.75}
    assert got["nats_vs_seed"][d] == pytest.approx(fitted.models[d].predict(w) - seed, abs=1e-6)
    mean = np.mean([fitted.models[k].predict(w) - math.log(PROXY["seed"]["eval"][k]["ppl"]) for k in fitted.models])
    assert got["nats_vs_seed"][rank.MEAN] == pytest.approx(mean, abs=1e-6)
    assert sum(committed["mixtures"]["all"]["weights"].values()) == pytest.approx(1, abs=1e-4)  # token weights, unnamed ratios


def test_its_trust_table_is_the_error_on_the_merges_it_was_not_fitted_to(committed):
    reg = surrogate.regime(PROXY)
    for d, t in committed["trust"].items():
        assert t["held_out"] == reg[d]["held_out"] and t["max_abs_error"] == pytest.approx(reg[d]["max_abs_error"])
        assert t["spearman"] > 0.9  # the default run: errors of 1e-5 against spreads of 1e-2
    md = committed["_md"]
    assert "## How far to trust it" in md and "a tie that only real merges" in md and "## Your mixtures" in md
    assert "## The best subset of each size" in md


def test_the_fast_ranking_equals_brute_force_across_chunks():
    """rank_subsets (vectorised, in chunks) against every subset scored one by one, several models at once."""
    names = tuple(f"s{i}" for i in range(7))
    rng = np.random.default_rng(5)
    quads = {}
    for m in ("a", "b"):
        B = rng.normal(size=(7, 7))
        B = B + B.T
        np.fill_diagonal(B, 0)
        quads[m] = surrogate.Quadratic(names, rng.normal(size=7), B)
    base = rng.uniform(1, 5, size=7)
    sizes = [1, 3, 4, 7]
    got = surrogate.rank_subsets(quads, sizes, base, top=9, chunk=5)  # 7 + 35 + 35 + 1 subsets: many chunks
    for m, q in quads.items():
        want = sorted(((tuple(names[i] for i in c), q.predict(np.where(np.isin(np.arange(7), c), base, 0.0)))
                       for size in sizes for c in itertools.combinations(range(7), size)), key=lambda t: t[1])[:9]
        assert [g[0] for g in got[m]] == [w[0] for w in want]
        assert [g[1] for g in got[m]] == pytest.approx([w[1] for w in want], abs=1e-12)
    assert surrogate.mean_of(list(quads.values())).predict(base) == pytest.approx(np.mean([q.predict(base) for q in quads.values()]))


def test_uniform_weighting_and_chosen_sizes(tmp_path):
    params = copy.deepcopy(PARAMS)
    params["mixtures"]["weighting"] = "uniform"
    params["rank"].update(sizes=[3, 2], top=4)
    code, out = run(tmp_path, params)
    res = json.loads((out / "rank.json").read_text())
    assert code == 0 and res["sizes"] == [2, 3] and res["subsets_ranked"] == 45 + 120
    assert all(len(e["shards"]) in (2, 3) for r in res["ranking"].values() for e in r["top"])
    # the proxy stage scored its pairs by tokens: at uniform weights no ranked pair is one of its merges
    assert all(e["merged"] is None for r in res["ranking"].values() for e in r["top"])


def bad(edit):
    params = copy.deepcopy(PARAMS)
    edit(params)
    return params


@pytest.mark.parametrize("params, words", [
    (bad(lambda p: p["rank"].update(mixtures={"x": {"shards": ["docs_perl", "nope"]}})), "rank.mixtures.x.shards: unknown shard"),
    (bad(lambda p: p["rank"].update(sizes=[2, 11])), "rank.sizes: [11] is more than the 10 shards"),
    (bad(lambda p: p["rank"].update(sizes=[])), "rank.sizes"),
    (bad(lambda p: p["rank"].update(top=0)), "rank.top"),
])
def test_bad_params_name_the_key_and_write_nothing(tmp_path, caplog, params, words):
    code, out = run(tmp_path, params)
    assert code == 2 and words in caplog.text and not out.exists()


def test_scores_without_every_pair_or_tokens_say_why_and_the_fix(tmp_path, caplog):
    proxy = copy.deepcopy(PROXY)
    del proxy["mixtures"]["news_bbc+email"]
    (tmp_path / "a").mkdir()
    code, out = run(tmp_path / "a", PARAMS, proxy)  # not an error: the proxy's scores stand without a ranking
    why = json.loads((out / "rank.json").read_text())["unavailable"]
    assert code == 0 and "no pair news_bbc+email" in why and "{k: 2} under mixtures.subsets" in why
    assert why in (out / "rank/subsets.md").read_text() and "no ranking" in caplog.text
    (tmp_path / "b").mkdir()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"domains": {}}))
    code, out = run(tmp_path / "b", PARAMS, tokens=tokens)
    assert code == 2 and "no train_tokens for domain 'news_bbc'" in caplog.text and not out.exists()
    (tmp_path / "c").mkdir()
    params = bad(lambda p: p["shards"].pop("email"))
    code, out = run(tmp_path / "c", params)
    assert code == 2 and "rerun 'dvc repro proxy'" in caplog.text and not out.exists()


def test_a_second_merge_of_a_pair_is_held_out_not_an_error():
    """An explicit mixture of two shards at other weights beside the generated pair: the first fits, the second is judged."""
    proxy = copy.deepcopy(PROXY)
    first = next(e for e in proxy["mixtures"].values() if e["k"] == 2)
    proxy["mixtures"]["again"] = {**copy.deepcopy(first), "weights": [0.9, 0.1]}
    fitted = surrogate.fit_proxy(proxy)
    d = PROXY["eval"]["domains"][0]
    assert "again" in fitted.held[d] and len(fitted.held[d]) == len(surrogate.fit_proxy(PROXY).held[d]) + 1
    assert surrogate.regime(proxy)[d]["held_out"] == surrogate.regime(PROXY)[d]["held_out"] + 1


def test_the_default_sizes_stay_within_the_limit_and_explicit_ones_past_it_are_an_error():
    """Many shards with ``sizes: null`` rank the smallest sizes that fit, not an error for a section left alone."""
    from pipeline.params.rank import MAX_RANKED, RankConfig

    assert RankConfig().sizes_for(10) == list(range(1, 11)) and RankConfig().sizes_for(19) == list(range(1, 20))
    names = [f"s{i}" for i in range(25)]
    assert RankConfig().sizes_for(25) == list(range(1, 8))  # 726,205 subsets; with size 8, 1.8 million
    assert sum(math.comb(25, s) for s in range(1, 8)) <= MAX_RANKED < sum(math.comb(25, s) for s in range(1, 9))
    RankConfig().check_shards(names)
    with pytest.raises(ValueError, match=r"rank.sizes: 5200300 subsets of 25 shards at sizes \[12\]"):
        RankConfig(sizes=[12]).check_shards(names)


def test_a_shard_without_training_tokens_is_an_error_under_token_weighting(tmp_path, caplog):
    tokens = json.loads((REPO / "metrics/tokens.json").read_text())
    tokens["domains"]["email"]["train_tokens"] = 0
    (tmp_path / "tokens.json").write_text(json.dumps(tokens))
    code, out = run(tmp_path, PARAMS, tokens=tmp_path / "tokens.json")
    assert code == 2 and "mixtures.weighting: shard(s) ['email'] have no training tokens" in caplog.text and not out.exists()
