"""The recommend search on tiny models: every method's scores are what the merged model scores, the
answer is the lowest dev loss of all the methods, the surrogate is fitted from the K + K(K-1)/2
lattice, and max_shards bounds the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from pipeline.lib import simplex
from pipeline.lib.merging import merge_into
from pipeline.lib.mixsearch import RIVALS, Search, SearchConfig
from pipeline.lib.models import load_model
from pipeline.lib.pool import ShardPool
from pipeline.lib.scoring import EvalSet
from pipeline.lib.targets import Target, loss, loss_backward
from pipeline.lib.tokens import TokenFile, write_token_file
from tests.test_pool import make_checkpoints

SEQ = 16


def token_set(folder: Path, domain: str, seed: int, windows: int = 4) -> EvalSet:
    ids = np.random.default_rng(seed).integers(0, 97, windows * SEQ + 1).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    write_token_file(folder / domain, ids, np.array([0, ids.size]), np.ones(ids.size), {"dtype": "uint16"})
    return EvalSet(domain, TokenFile.open(folder / f"{domain}.bin"), SEQ)


def tiny_target(root: Path) -> Target:
    weights = {"a": 0.7, "b": 0.3}
    sets = {part: [token_set(root / part, d, seed=10 * i + j) for j, d in enumerate(weights)]
            for i, part in enumerate(("dev", "test"))}
    return Target("t", weights, sets)


@pytest.fixture
def search_parts(tmp_path):
    seed_dir, shards = make_checkpoints(tmp_path, k=4, hidden=16)
    return seed_dir, shards, tiny_target(tmp_path / "target")


def run_search(seed_dir, shards, target, **over):
    cfg = SearchConfig(**{"steps": 8, "lr": 2.0, "tol": 1e-6, "restarts": 1, "max_shards": None, "seed": 0, "batch_size": 4, **over})
    names = list(shards)
    natural = np.array([1.0, 2.0, 3.0, 4.0])
    candidates = {"s0+s1": np.array([0.5, 0.5, 0, 0]), "s2+s3": np.array([0, 0, 0.5, 0.5])}
    with ShardPool(shards, seed=seed_dir) as pool:
        model = load_model(seed_dir)
        result = Search(pool, model, target, names, cfg).run(natural, candidates)
        # what each method's weights score, merged afresh
        fresh = {}
        for name, m in result["methods"].items():
            merge_into(model, [m["weights"][s] for s in names], pool)
            fresh[name] = (loss(model, target, "dev", 4)[0], loss(model, target, "test", 4)[0])
    return result, fresh


def test_the_answer_is_the_lowest_dev_loss_and_every_score_is_the_merged_models(search_parts):
    result, fresh = run_search(*search_parts)
    methods = result["methods"]
    assert set(methods) == {*RIVALS, "recommended"}
    for name, m in methods.items():
        assert sum(m["weights"].values()) == pytest.approx(1.0, abs=1e-5)
        # weights are stored rounded to 1e-6: the stored scores are those of the merge of the stored weights
        assert m["dev"] == pytest.approx(fresh[name][0], abs=1e-5), name
        assert m["test"] == pytest.approx(fresh[name][1], abs=1e-5), name
    assert all(methods["recommended"]["dev"] <= m["dev"] + 1e-12 for m in methods.values())
    assert methods["recommended"]["from"] in ("descent", *RIVALS)
    assert methods["natural"]["weights"] == pytest.approx({"s0": 0.1, "s1": 0.2, "s2": 0.3, "s3": 0.4})
    assert methods["best_candidate"]["candidate"] in ("s0+s1", "s2+s3")
    assert result["descent"]["dev"] <= min(result["descent"]["history"]) + 1e-12
    assert sorted(methods["best_single"]["weights"].values()) == [0.0, 0.0, 0.0, 1.0]
    # 4 singles and 6 pairs fix the surrogate (exact on them); then the candidates and the descent's points
    assert result["cost"]["merges_scored"] >= 10 and result["cost"]["gradient_steps"] >= 3  # 3 starts, a step each at least
    assert methods["surrogate"]["surrogate_dev"] == pytest.approx(methods["surrogate"]["dev"], abs=0.05)


def test_max_shards_bounds_the_answer_and_the_search_is_reproducible(search_parts):
    result, _ = run_search(*search_parts, max_shards=2)
    rec = result["methods"]["recommended"]["weights"]
    assert sum(w > 1e-6 for w in rec.values()) <= 2
    again, _ = run_search(*search_parts, max_shards=2)
    assert again["methods"] == result["methods"] and again["cost"] == result["cost"]


def test_descent_lowers_the_dev_loss_from_uniform(search_parts):
    seed_dir, shards, target = search_parts
    cfg = SearchConfig(steps=6, lr=2.0, tol=0.0, restarts=0, max_shards=None, seed=0, batch_size=4)
    with ShardPool(shards, seed=seed_dir) as pool:
        search = Search(pool, load_model(seed_dir), target, list(shards), cfg)
        uniform = search.merged(np.full(4, 0.25))
        best = search.descend([np.full(4, 0.25)])
    assert best.loss < uniform and search.gradient_steps == len(best.history)
    assert simplex.normalised(best.w).sum() == pytest.approx(1.0)


class ScaledReference(torch.nn.Module):
    """The model whose every parameter is seed + scale x (sum_k w_k theta_k - seed), built from the stored
    tensors on each call (``w`` a float64 tensor that autograd flows to)."""

    def __init__(self, seed_dir, shards: dict, w, scale: float):
        super().__init__()
        self.inner, self.w, self.scale = load_model(seed_dir), w, scale
        self.seed = {n: t.double() for n, t in load_file(seed_dir / "model.safetensors").items()}
        self.sds = [{n: t.double() for n, t in load_file(p / "model.safetensors").items()} for p in shards.values()]

    def forward(self, **kw):
        params = {n: (s + self.scale * (sum(self.w[k] * sd[n] for k, sd in enumerate(self.sds)) - s)).float()
                  for n, s in self.seed.items()}
        return functional_call(self.inner, params, args=(), kwargs=kw)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5])
def test_a_scaled_search_scores_and_descends_the_extrapolated_merge(tmp_path, scale):
    """With ``scale`` the proxy of w is seed + scale x (merge - seed): its scores and its gradient with
    respect to w equal those of that model built from the stored tensors, and MixMin still ensembles
    the shard models themselves."""
    seed_dir, shards = make_checkpoints(tmp_path, k=3, hidden=16)
    target = tiny_target(tmp_path / "target")
    cfg = SearchConfig(steps=4, lr=2.0, tol=0.0, restarts=0, max_shards=None, seed=0, batch_size=4, scale=scale)
    w = np.array([0.6, 0.3, 0.1])
    with ShardPool({**shards, "(seed)": seed_dir}, seed=seed_dir) as pool:
        search = Search(pool, load_model(seed_dir), target, list(shards), cfg)
        dev = search.merged(w)
        value, grad = search.value_and_grad(w)
        plain = {}
        search.merged(np.eye(3)[0], per_token=plain, scale=1.0)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    want = loss_backward(ScaledReference(seed_dir, shards, wt, scale), target, "dev", 4)
    assert dev == pytest.approx(want, rel=1e-6) and value == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(torch.from_numpy(grad), wt.grad, rtol=1e-5, atol=1e-7)
    # the shard alone at scale 1 is the shard model itself
    with ShardPool(shards, seed=seed_dir) as pool:
        alone = {}
        Search(pool, load_model(seed_dir), target, list(shards), SearchConfig(**{**cfg.__dict__, "scale": 1.0})).merged(
            np.eye(3)[0], per_token=alone)
    for d in alone:
        np.testing.assert_array_equal(alone[d], plain[d])


def test_a_scaled_search_needs_the_seed_in_its_pool(search_parts):
    seed_dir, shards, target = search_parts
    cfg = SearchConfig(steps=2, lr=2.0, tol=0.0, restarts=0, max_shards=None, seed=0, batch_size=4, scale=2.0)
    with ShardPool(shards, seed=seed_dir) as pool, pytest.raises(ValueError, match="needs the seed as the pool's last checkpoint"):
        Search(pool, load_model(seed_dir), target, list(shards), cfg).merged(np.full(4, 0.25))
