"""Mixtures from params, and merge_into: the in-place weighted average equals the reference."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import yaml

from pipeline.params.config import load_config
from pipeline.params.core import ConfigError
from pipeline.params.mixtures import MixturesConfig, SubsetSpec
from pipeline.lib.merging import merge_into, merge_many_into
from pipeline.lib.mixtures import Mixture, resolve_mixtures, subsets
from pipeline.lib.pool import ShardPool
from tests.test_pool import make_checkpoints

SHARDS = ["a", "b", "c", "d"]
TOKENS = {"a": 100, "b": 300, "c": 600, "d": 1000}


# ---------------------------------------------------------------- mixtures from params


def test_generated_pairs_and_sample_are_named_in_params_order():
    mcfg = MixturesConfig.model_validate({"subsets": [{"k": 2}, {"k": 3, "sample": 2, "seed": 5}]})
    mixes = resolve_mixtures(mcfg, SHARDS, TOKENS)
    pairs = [m.name for m in mixes if m.k == 2]
    assert pairs == ["a+b", "a+c", "a+d", "b+c", "b+d", "c+d"]
    triples = [m for m in mixes if m.k == 3]
    assert len(triples) == 2 and all(m.name == "+".join(sorted(m.shards, key=SHARDS.index)) for m in triples)
    again = resolve_mixtures(mcfg, SHARDS, TOKENS)
    assert [m.name for m in again] == [m.name for m in mixes]  # seeded: stable
    ab = next(m for m in mixes if m.name == "a+b")
    assert ab.weights == pytest.approx((0.25, 0.75)) and ab.vector(SHARDS) == pytest.approx([0.25, 0.75, 0, 0])


def test_subset_sampling_matches_combinations():
    pool = [f"s{i}" for i in range(7)]
    allc = list(itertools.combinations(pool, 3))
    assert subsets(pool, SubsetSpec(k=3)) == allc
    picked = subsets(pool, SubsetSpec(k=3, sample=10, seed=1))
    assert len(set(picked)) == 10 and set(picked) <= set(allc) and picked == sorted(picked, key=allc.index)
    assert subsets(pool, SubsetSpec(k=3, sample=10, seed=2)) != picked
    assert subsets(pool, SubsetSpec(k=3, sample=1000)) == allc


def test_weighting_uniform_tokens_and_explicit_ratios():
    raw = {"weighting": "uniform", "subsets": [],
           "explicit": {"heavy": {"shards": ["d", "a"], "ratios": [3, 1]}, "plain": {"shards": ["b", "c", "d"]}}}
    mixes = {m.name: m for m in resolve_mixtures(MixturesConfig.model_validate(raw), SHARDS, TOKENS)}
    assert mixes["heavy"] == Mixture("heavy", ("d", "a"), (0.75, 0.25))
    assert mixes["plain"].weights == pytest.approx((1 / 3,) * 3)
    raw["weighting"] = "tokens"
    mixes = {m.name: m for m in resolve_mixtures(MixturesConfig.model_validate(raw), SHARDS, TOKENS)}
    assert mixes["plain"].weights == pytest.approx((300 / 1900, 600 / 1900, 1000 / 1900))
    assert math.fsum(mixes["plain"].weights) == pytest.approx(1.0, abs=1e-15)
    # an explicit mixture named like a generated one replaces it
    over = MixturesConfig.model_validate({"explicit": {"a+b": {"shards": ["a", "b"], "ratios": [1, 1]}}, "subsets": [{"k": 2}]})
    mixes = resolve_mixtures(over, SHARDS, TOKENS)
    assert [m.name for m in mixes].count("a+b") == 1 and mixes[0].weights == (0.5, 0.5)
    restricted = MixturesConfig.model_validate({"shards": ["d", "b", "a"], "subsets": [{"k": 2}]})
    assert [m.name for m in resolve_mixtures(restricted, SHARDS, TOKENS)] == ["a+b", "a+d", "b+d"]


@pytest.mark.parametrize("raw, key, words", [
    ({"explicit": {"x": {"shards": []}}}, "mixtures.explicit.x", "empty mixture"),
    ({"explicit": {"x": {"shards": ["a", "a"]}}}, "mixtures.explicit.x", "twice"),
    ({"explicit": {"x": {"shards": ["a", "b"], "ratios": [1, -1]}}}, "mixtures.explicit.x.ratios.1", "greater than or equal to 0"),
    ({"explicit": {"x": {"shards": ["a", "b"], "ratios": [1, float("nan")]}}}, "mixtures.explicit.x.ratios.1", "finite"),
    ({"explicit": {"x": {"shards": ["a", "b"], "ratios": [1]}}}, "mixtures.explicit.x", "1 ratios for 2 shards"),
    ({"explicit": {"x": {"shards": ["a"], "ratios": [0]}}}, "mixtures.explicit.x", "sum to 0"),
    ({"explicit": {"bad name": {"shards": ["a"]}}}, "mixtures.explicit", "not usable"),
    ({"explicit": {"a+b": {"shards": ["b", "a"]}}}, "mixtures.explicit", "must be its shards joined by '+'"),
    ({"subsets": [{"k": 0}]}, "mixtures.subsets.0.k", "greater than or equal to 1"),
    ({"subsets": [], "explicit": {}}, "mixtures", "no mixtures"),
    ({"weighting": "by-vibes"}, "mixtures.weighting", "'tokens' or 'uniform'"),
    ({"typo": 1}, "mixtures.typo", "unknown key"),
])
def test_invalid_mixtures_name_the_key(raw, key, words, tmp_path):
    params = {"prepare": {"domains": SHARDS}, "base": {"tokens": 1, "lr": 1e-3}, "train": {"tokens": 1, "lr": 1e-3},
              "shards": {s: {"domain": s} for s in SHARDS}, "mixtures": raw}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "params.yaml")
    assert key in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("raw, words", [
    ({"explicit": {"x": {"shards": ["a", "zz"]}}}, "mixtures.explicit.x.shards: unknown shard(s) ['zz']"),
    ({"shards": ["a", "zz"]}, "mixtures.shards: unknown shard(s) ['zz']"),
    ({"subsets": [{"k": 5}]}, "mixtures.subsets.0.k: 5 is more than the 4 shards"),
    ({"explicit": {"a": {"shards": ["b"]}}}, "mixtures.explicit.a: a mixture cannot have the name of a shard"),
])
def test_unknown_shards_are_errors(raw, words):
    with pytest.raises(ValueError) as e:
        resolve_mixtures(MixturesConfig.model_validate(raw), SHARDS, TOKENS)
    assert words in str(e.value), str(e.value)


def test_tokens_weighting_needs_tokens():
    with pytest.raises(ValueError, match="no training tokens"):
        resolve_mixtures(MixturesConfig(), SHARDS, {**TOKENS, "b": 0})


# ---------------------------------------------------------------- merge_into


def reference_average(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The plain way: load every state dict, average in fp64."""
    sds = [load_file(f / "model.safetensors") for f in folders]
    return {n: sum(w * sd[n].double() for w, sd in zip(weights, sds)).float() for n in sds[0]}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpts"), k=4)


WEIGHTS = [[0.25, 0.25, 0.25, 0.25], [0.7, 0.3, 0.0, 0.0], [0.0, 0.1, 0.0, 0.9], [1.0, 0.0, 0.0, 0.0], [0.2, -0.1, 0.5, 0.4]]


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_merge_into_equals_reference_average(ckpts, impl):
    from pipeline.lib.models import load_model

    base, shards = ckpts
    model = load_model(base)
    seed_buffers = {n: b.clone() for n, b in model.named_buffers()}
    with ShardPool(shards, seed=base) as pool:
        for w in WEIGHTS:
            merge_into(model, w, pool, impl=impl, chunk_bytes=4096)  # tiny chunks: many kernel calls per tensor
            ref = reference_average(list(shards.values()), w)
            sd = model.state_dict()
            for n, t in ref.items():
                torch.testing.assert_close(sd[n], t, rtol=0, atol=1e-6, msg=lambda m: f"{n} w={w}: {m}")
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
            for n, b in model.named_buffers():
                assert torch.equal(b, seed_buffers[n]), n


def test_a_kept_pool_merges_each_tensor_in_one_call_to_the_same_bits(tmp_path: Path, monkeypatch):
    import pipeline.lib.merging as merging
    from pipeline.lib.models import load_model

    base, shards = make_checkpoints(tmp_path, k=2, hidden=64)  # tensors of more than one chunk (CHUNK_ALIGN elements)
    calls = []
    real = merging.multi_weighted_sum
    monkeypatch.setattr(merging, "multi_weighted_sum", lambda xs, *a, **k: calls.append(xs[0].numel()) or real(xs, *a, **k))
    got = {}
    for kept in (False, True):
        model = load_model(base)
        with ShardPool(shards, seed=base) as pool:
            if kept:
                pool.keep_mapped()
            calls.clear()
            merge_into(model, [0.3, 0.7], pool, chunk_bytes=4096)
        got[kept] = {n: p.detach().clone() for n, p in model.named_parameters()}
        numels = [p.numel() for p in {id(p): p for p in model.parameters()}.values()]
        assert (sorted(calls) == sorted(numels)) == kept, kept  # dropped behind: in chunks of 4096 elements
    for n, t in got[False].items():
        assert torch.equal(t, got[True][n]), n


def test_untied_model_merges_its_head(tmp_path: Path):
    from pipeline.lib.models import load_model

    base, shards = make_checkpoints(tmp_path, k=2, tie=False)
    model = load_model(base)
    with ShardPool(shards, seed=base) as pool:
        assert "lm_head.weight" in pool
        merge_into(model, [0.4, 0.6], pool)
    ref = reference_average(list(shards.values()), [0.4, 0.6])
    torch.testing.assert_close(model.lm_head.weight.data, ref["lm_head.weight"], rtol=0, atol=1e-6)


def test_merge_many_equals_one_at_a_time_and_skips_unused_shards(ckpts, monkeypatch):
    import copy

    from pipeline.lib.models import load_model

    base, shards = ckpts
    models = [load_model(base) for _ in range(3)]
    rows = [[0.5, 0.5, 0.0, 0.0], [0.1, 0.0, 0.0, 0.9], [0.3, 0.3, 0.0, 0.4]]
    with ShardPool(shards, seed=base) as pool:
        read = set()
        real = pool.views

        def spy(name, ks=None):
            read.update(ks)
            return real(name, ks)

        monkeypatch.setattr(pool, "views", spy)
        merge_many_into(models, rows, pool)
        assert read == {0, 1, 3}  # shard 2 has weight 0 everywhere: never read
        for m, w in zip(models, rows):
            one = copy.deepcopy(models[0])
            merge_into(one, w, pool)
            for (n, p), q in zip(m.named_parameters(), one.parameters()):
                assert torch.equal(p, q), n
    with pytest.raises(ValueError, match=r"weights must be \[3 models, 4 shards\]"):
        merge_many_into(models, rows[:2], pool)


def test_merge_tensors_from_a_row_writes_those_rows_and_no_further(ckpts):
    from pipeline.lib.merging import merge_tensors

    base, shards = ckpts
    name, rows = "model.embed_tokens.weight", [[0.2, 0.3, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0]]
    with ShardPool(shards, seed=base) as pool:
        vocab, width = pool.info(name).shape
        whole = [torch.empty(vocab, width) for _ in rows]
        merge_tensors([[(name, o)] for o in whole], rows, pool)
        # rows 8..15 start and end on the kernels' 64-element tiles (width 16): the same bits as the
        # whole tensor's merge; the last 7 rows end in a partial tile (another summation): to an ulp
        for first, count, exact in ((8, 8, True), (vocab - 7, 7, False)):
            outs = [torch.empty(count, width) for _ in rows]
            merge_tensors([[(name, o)] for o in outs], rows, pool, first_row=first, chunk_bytes=4096)
            for o, w in zip(outs, whole):
                if exact:
                    assert torch.equal(o, w[first:first + count])
                else:
                    torch.testing.assert_close(o, w[first:first + count], rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match=rf"{name}: {7 * width} elements from row {vocab - 6} run past"):
            merge_tensors([[(name, torch.empty(7, width))]], rows[:1], pool, first_row=vocab - 6)


@pytest.mark.parametrize("kept", [False, True])
def test_empty_tensors_merge_to_nothing(tmp_path: Path, kept):
    """Tensors with no elements (a first or a later dimension of 0) merge without reading anything,
    whether the pool reads whole tensors or chunks."""
    from safetensors.torch import save_file

    from pipeline.lib.merging import merge_tensors

    for i in range(2):
        (tmp_path / f"s{i}").mkdir()
        save_file({"a": torch.zeros(2, 0), "b": torch.zeros(0, 3), "c": torch.full((5,), float(i))},
                  tmp_path / f"s{i}" / "model.safetensors")
    with ShardPool({f"s{i}": tmp_path / f"s{i}" for i in range(2)}) as pool:
        if kept:
            pool.keep_mapped()
        outs = {"a": torch.empty(2, 0), "b": torch.empty(0, 3), "c": torch.empty(5)}
        merge_tensors([list(outs.items())], [[0.25, 0.75]], pool)
    assert torch.equal(outs["c"], torch.full((5,), 0.75))


def test_merge_into_rejects_another_model(ckpts, tmp_path: Path):
    from pipeline.lib.runtime import StageError
    from tests.test_pool import tiny_llama

    base, shards = ckpts
    with ShardPool(shards, seed=base) as pool, pytest.raises(StageError, match="must be loaded from the seed folder"):
        merge_into(tiny_llama(hidden=32), [1, 0, 0, 0], pool)


def test_merge_matches_mergekit_linear(ckpts, tmp_path: Path):
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    from pipeline.lib.models import load_model

    base, shards = ckpts
    model = load_model(base)
    with ShardPool(shards, seed=base) as pool:
        for i, w in enumerate([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.5, 0.0]]):
            cfg = MergeConfiguration.model_validate({
                "merge_method": "linear", "dtype": "float32", "parameters": {"normalize": True},
                "models": [{"model": str(p), "parameters": {"weight": x}} for p, x in zip(shards.values(), w) if x]})
            out = tmp_path / f"mk{i}"
            run_merge(cfg, str(out), MergeOptions(copy_tokenizer=False, quiet=True, write_model_card=False))
            theirs = load_file(out / "model.safetensors")
            merge_into(model, w, pool)
            sd = model.state_dict()
            assert set(theirs) <= set(sd)
            for n, t in theirs.items():
                torch.testing.assert_close(sd[n], t, rtol=0, atol=1e-6, msg=lambda m: f"{n}: {m}")


# ---------------------------------------------------------------- streaming perplexity of a merged model


def test_streaming_perplexity_of_merged_model_equals_full_logits(ckpts, tmp_path: Path):
    from pipeline.lib.models import load_model
    from pipeline.lib.scoring import EvalSet, evaluate
    from pipeline.lib.tokens import TokenFile, write_token_file

    base, shards = ckpts
    model = load_model(base)
    L, n_win = 16, 6
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, n_win * L + 1).astype(np.uint16)
    write_token_file(tmp_path / "d", ids, np.array([0, ids.size]), np.ones(ids.size), {"dtype": "uint16"})  # one document
    eset = EvalSet("d", TokenFile.open(tmp_path / "d.bin"), L)
    windows = torch.from_numpy(np.stack([ids[i * L : i * L + L + 1] for i in range(n_win)]).astype(np.int64))
    with ShardPool(shards, seed=base) as pool:
        for w in WEIGHTS[:3]:
            merge_into(model, w, pool)
            ours = evaluate(model, [eset], batch_size=4)["d"]
            with torch.no_grad():
                loss = model(input_ids=windows, labels=windows).loss  # predicts tokens 1..L of each window
            assert ours["tokens"] == n_win * L
            assert ours["ppl"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
