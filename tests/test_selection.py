"""SELECT's parts: per-example gradients against autograd one example at a time, the seeded sketch,
the greedy rule on hand-made vectors, and the pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.lib.selection import (Pool, gradient_sketches, gram_matrix, greedy_select, layer_deltas, linear_modules, lowest_loss, make_pool,
                                    random_pick, sketch_maps, topk_cosine, update_sketch)
from pipeline.lib.runtime import StageError
from tests.test_mixfit import _token_file
from tests.test_pool import perturbed, tiny_llama


def _pool(n=5, length=17, vocab=97, seed=0) -> Pool:
    toks = np.random.default_rng(seed).integers(0, vocab, (n, length)).astype(np.int64)
    return Pool(np.array(["a"] * n), np.arange(n), toks, length - 1)


def _per_example_grads(model, pool: Pool, names: list[str]) -> list[dict[str, torch.Tensor]]:
    params = dict(model.named_parameters())
    out = []
    for x in torch.from_numpy(pool.tokens):
        model.zero_grad()
        logits = model(input_ids=x[None, :-1]).logits
        F.cross_entropy(logits[0], x[1:]).backward()
        # the hooked layers' own weight gradients (a tied head's is its output side only: read it from the module's input)
        out.append({n: params[n + ".weight"].grad.clone() for n in names})
    return out


@pytest.mark.parametrize("subset", ["linear", "head"])
def test_sketches_and_alignments_equal_autograd_one_example_at_a_time(subset):
    model = tiny_llama(tie=False, hidden=16, vocab=97)
    seed = perturbed(model, 3, scale=0.02)
    pool = _pool()
    mods = linear_modules(model, subset)
    names = list(mods)
    assert (names == ["lm_head"]) if subset == "head" else (len(names) == 2 * 7 + 1)
    maps = sketch_maps(mods, (4, 3), seed=0)
    deltas = layer_deltas(seed, model, subset)
    got = gradient_sketches(model, pool, subset, maps, deltas, batch_size=2)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # the pass turns weight gradients off, then on again
    want = _per_example_grads(model, pool, names)
    for i, grads in enumerate(want):
        sketch = torch.cat([(maps[n][0].T @ grads[n] @ maps[n][1]).reshape(-1) for n in names])
        np.testing.assert_allclose(got.sketches[i], sketch.numpy(), rtol=1e-4, atol=1e-6)
        align = sum(float((grads[n].double() * deltas[n].double()).sum()) for n in names)
        np.testing.assert_allclose(got.align[i], align, rtol=1e-4, atol=1e-9)
    with torch.no_grad():
        losses = [float(F.cross_entropy(model(input_ids=x[None, :-1]).logits[0], x[1:])) for x in torch.from_numpy(pool.tokens)]
    np.testing.assert_allclose(got.losses, losses, rtol=1e-5)
    t, norm = update_sketch(deltas, maps)
    assert t.shape == got.sketches.shape[1:] and norm > 0


def test_sketch_maps_are_seeded_and_preserve_inner_products_on_average():
    mods = {"l": torch.nn.Linear(64, 48, bias=False)}
    a = sketch_maps(mods, (8, 8), seed=1)["l"]
    b = sketch_maps(mods, (8, 8), seed=1)["l"]
    c = sketch_maps(mods, (8, 8), seed=2)["l"]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 64, generator=g), torch.randn(48, 64, generator=g)
    y = x + 0.5 * y  # correlated: inner product far from zero
    est = [float(((u.T @ x @ w) * (u.T @ y @ w)).sum()) for u, w in (sketch_maps(mods, (8, 8), seed=s)["l"] for s in range(200))]
    exact = float((x * y).sum())
    assert abs(np.mean(est) - exact) < 0.05 * exact


def test_greedy_follows_the_running_sum_rule_on_hand_made_vectors():
    t = np.array([1.0, 1.0, 0.0])
    g = np.array([[1.0, 0.0, 0.0],   # 0: half of the target
                  [0.0, 1.0, 0.0],   # 1: the other half
                  [0.9, 0.9, 0.0],   # 2: the best alone
                  [1.0, 0.9, 0.0],   # 3: close to 2
                  [0.0, 0.0, 5.0]])  # 4: orthogonal
    align, gram = g @ t, gram_matrix(g)
    order = greedy_select(gram, align, 3)
    # step 1: the best cosine alone (2); step 2: S + g_i most aligned: 2 + 3 -> (1.9, 1.8) beats 2 + 0 -> (1.9, 0.9)
    assert list(order[:2]) == [2, 3]
    # by brute force at every step
    s = np.zeros(3)
    chosen = []
    for _ in range(3):
        cands = [i for i in range(5) if i not in chosen]
        best = max(cands, key=lambda i: (s + g[i]) @ t / np.linalg.norm(s + g[i]))
        chosen.append(best)
        s += g[best]
    assert list(order) == chosen
    assert list(topk_cosine(gram, align, 2)) == [2, 3]
    assert list(lowest_loss(np.array([3.0, 1.0, 2.0]), 2)) == [1, 2]
    np.testing.assert_array_equal(random_pick(10, 4, 7), random_pick(10, 4, 7))
    with pytest.raises(ValueError, match="k must be between 1 and the pool size"):
        greedy_select(gram, align, 6)


def test_batched_greedy_starts_the_running_sum_again_every_batch():
    """``batch`` picks per running sum (the paper code's greedy_batched), by brute force on random vectors;
    ``batch`` 1 is top-k cosine and ``batch`` >= k (or 0) the one-sum rule."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(40, 6))
    t = rng.normal(size=6)
    align, gram = g @ t, gram_matrix(g)
    for batch in (2, 3, 7):
        chosen: list[int] = []
        while len(chosen) < 10:
            s = np.zeros(6)
            for _ in range(min(batch, 10 - len(chosen))):
                best = max((i for i in range(40) if i not in chosen), key=lambda i: (s + g[i]) @ t / np.linalg.norm(s + g[i]))
                chosen.append(best)
                s += g[best]
        assert list(greedy_select(gram, align, 10, batch)) == chosen
    assert list(greedy_select(gram, align, 10, 1)) == list(topk_cosine(gram, align, 10))
    np.testing.assert_array_equal(greedy_select(gram, align, 10, 10), greedy_select(gram, align, 10))
    np.testing.assert_array_equal(greedy_select(gram, align, 10, 25), greedy_select(gram, align, 10, 0))
    assert not np.array_equal(greedy_select(gram, align, 10, 3), greedy_select(gram, align, 10))  # the reset changes the picks here
    with pytest.raises(ValueError, match="picks per running sum"):
        greedy_select(gram, align, 10, -1)


def test_the_gram_matrix_is_summed_block_by_block_in_float64():
    g = np.random.default_rng(1).normal(size=(7, 50)).astype(np.float32)
    want = g.astype(np.float64) @ g.astype(np.float64).T
    for block in (1, 8, 50, 8192):
        np.testing.assert_allclose(gram_matrix(g, block), want, rtol=1e-13, atol=1e-13)
    assert gram_matrix(g).dtype == np.float64


def test_pool_takes_seeded_windows_of_every_domain(tmp_path):
    f = _token_file(tmp_path, n=2000)
    p1 = make_pool({"x": f, "y": f}, 5, 16, seed=0)
    p2 = make_pool({"x": f, "y": f}, 5, 16, seed=0)
    assert len(p1) == 10 and list(p1.domains) == ["x"] * 5 + ["y"] * 5
    np.testing.assert_array_equal(p1.tokens, p2.tokens)
    arr = f.array()
    w = int(p1.windows[0])
    np.testing.assert_array_equal(p1.tokens[0], arr[w * 16 : w * 16 + 17])
    (s,) = p1.slices([0], {"x": f, "y": f})
    assert s.tokens == 17 and s.start == w * 16
    with pytest.raises(StageError, match="pool is empty"):
        make_pool({"x": f}, 5, 5000, seed=0)


def test_a_model_without_a_linear_head_is_named():
    class NoHead(torch.nn.Module):
        def get_output_embeddings(self):
            return None

    with pytest.raises(StageError, match="NoHead: SELECT needs a causal LM"):
        linear_modules(NoHead(), "head")


def test_a_model_of_other_shapes_is_named():
    with pytest.raises(StageError, match="not fine-tuned from this seed"):
        layer_deltas(tiny_llama(hidden=16), tiny_llama(hidden=32), "linear")


def test_the_heads_alignment_holds_to_float64_over_a_real_vocabulary():
    """A single example's gradient is nearly orthogonal to the update, so its inner product is a sum of
    seq_len x vocab terms that mostly cancel: summed in fp32 over the head's outputs it was off by up to
    3e-5 of its size here and 2e-3 on the default run's models (vocabulary 8,192); through the head's
    inputs (a vocabulary-long dot product per hidden unit, then seq_len x hidden terms) 3e-7 here."""
    import copy

    model = tiny_llama(tie=False, hidden=16, vocab=8192)
    seed = perturbed(model, 3, scale=0.02)
    pool = _pool(n=4, length=129, vocab=8192)
    maps = sketch_maps(linear_modules(model, "head"), (4, 3), seed=0)
    got = gradient_sketches(model, pool, "head", maps, layer_deltas(seed, model, "head"), batch_size=4)
    m64, s64 = copy.deepcopy(model).double(), copy.deepcopy(seed).double()
    delta = s64.lm_head.weight.detach() - m64.lm_head.weight.detach()
    want = []
    for x in torch.from_numpy(pool.tokens):
        m64.zero_grad()
        F.cross_entropy(m64(input_ids=x[None, :-1]).logits[0], x[1:]).backward()
        want.append(float((m64.lm_head.weight.grad * delta).sum()))
    np.testing.assert_allclose(got.align, want, rtol=3e-6)  # through the outputs: up to 3e-5 here


def test_select_benchmark_times_the_pass_and_the_rules_against_their_plain_forms(capsys):
    """``python -m pipeline.bench select``: JSON on the last line; the fast paths agree with the plain ones."""
    import json

    from pipeline.bench.select import main

    assert main(["--quick", "--json", "-n", "4", "--pool", "60", "--dim", "300"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert res["examples"] == 4 and res["previous_s"] > 0 and res["ours_s"] > 0 and res["selection_gram_s"] > 0
    assert res["same_picks"] is True and res["align_rel_err_ours"] < 1e-4
