"""A target's per-document figures: the documents of the predicted tokens, each document's summed NLL
(which add up to the target loss), and the paired bootstrap over documents that gives each margin
its interval (the judge's own noise)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.lib.models import load_model
from pipeline.lib.scoring import EvalSet
from pipeline.lib.targets import Target, document_bootstrap, loss
from pipeline.lib.tokens import TokenFile, write_token_file
from tests.test_pool import make_checkpoints

SEQ = 16


def target_with_documents(root, lengths: dict[str, list[int]]) -> Target:
    rng = np.random.default_rng(0)
    sets = {}
    for part in ("dev", "test"):
        sets[part] = []
        for d, docs in lengths.items():
            ids = rng.integers(1, 97, sum(docs)).astype(np.uint16)
            starts = np.concatenate([[0], np.cumsum(docs)])
            ids[starts[:-1]] = 0  # each document opens with its end-of-text token
            (root / part).mkdir(parents=True, exist_ok=True)
            write_token_file(root / part / d, ids, starts, np.ones(ids.size), {"dtype": "uint16"})
            sets[part].append(EvalSet(d, TokenFile.open(root / part / f"{d}.bin"), SEQ))
    return Target("t", {d: w for d, w in zip(lengths, (0.6, 0.4))}, sets, root)


def test_document_sums_add_up_to_the_target_loss_and_count_each_documents_tokens(tmp_path):
    seed_dir, _ = make_checkpoints(tmp_path, k=2, hidden=16)
    lengths = {"a": [5, 40, 2, 23], "b": [30, 7, 19]}  # documents across window edges, one of a single prediction
    target = target_with_documents(tmp_path / "target", lengths)
    per_token: dict = {}
    total, per_domain = loss(load_model(seed_dir), target, "test", 4, per_token=per_token)
    sums = target.document_sums("test", per_token)
    for d, docs in lengths.items():
        nll, tokens = sums[d]
        assert tokens.tolist() == [n - 1 for n in docs]  # every token but a document's first is predicted
        assert nll.sum() / tokens.sum() == pytest.approx(per_domain[d], rel=1e-6)
    assert target.combine({d: s[0].sum() / s[1].sum() for d, s in sums.items()}) == pytest.approx(total, rel=1e-6)


def hand_sums(per_doc: dict[str, list[float]], tokens: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    t = np.array(tokens)
    return {d: (np.array(v) * t, t) for d, v in per_doc.items()}


def test_the_bootstrap_interval_is_zero_wide_when_every_document_agrees_and_spans_a_lone_document(tmp_path):
    target = Target("t", {"a": 1.0}, {}, tmp_path)
    ref = hand_sums({"a": [3.0, 4.0, 5.0]}, [10, 20, 30])
    same_gap = hand_sums({"a": [3.1, 4.1, 5.1]}, [10, 20, 30])  # 0.1 nats worse on every document
    out = document_bootstrap(target, {"ref": ref, "x": same_gap}, "ref", 500, 0)["x"]
    assert out["margin"] == pytest.approx(0.1) and out["low"] == pytest.approx(0.1) and out["high"] == pytest.approx(0.1)
    assert out["sd"] == pytest.approx(0.0, abs=1e-12)
    # worse on one of two equal documents only: the resamples are 0, delta/2 and delta
    ref2, lone = hand_sums({"a": [3.0, 4.0]}, [50, 50]), hand_sums({"a": [3.2, 4.0]}, [50, 50])
    out = document_bootstrap(target, {"ref": ref2, "x": lone}, "ref", 2000, 1)["x"]
    assert out["margin"] == pytest.approx(0.1) and out["low"] == pytest.approx(0.0) and out["high"] == pytest.approx(0.2)


def test_the_bootstrap_is_paired_weighted_by_domain_and_seeded(tmp_path):
    target = Target("t", {"a": 0.75, "b": 0.25}, {}, tmp_path)
    rng = np.random.default_rng(3)
    tokens = [int(n) for n in rng.integers(20, 200, 12)]
    base = {d: list(rng.normal(4.0, 0.5, 12)) for d in ("a", "b")}
    gap = {d: list(rng.normal(0.01, 0.02, 12)) for d in ("a", "b")}
    ref = hand_sums(base, tokens)
    x = hand_sums({d: [u + g for u, g in zip(base[d], gap[d])] for d in base}, tokens)
    one = document_bootstrap(target, {"ref": ref, "x": x}, "ref", 1000, 7)["x"]
    assert one == document_bootstrap(target, {"ref": ref, "x": x}, "ref", 1000, 7)["x"]  # seeded
    # a document that is hard for every model moves no margin: add the same shift to both
    shift = {d: list(rng.normal(0, 3.0, 12)) for d in base}
    ref_s = hand_sums({d: [u + s for u, s in zip(base[d], shift[d])] for d in base}, tokens)
    x_s = hand_sums({d: [u + g + s for u, g, s in zip(base[d], gap[d], shift[d])] for d in base}, tokens)
    two = document_bootstrap(target, {"ref": ref_s, "x": x_s}, "ref", 1000, 7)["x"]
    assert two == pytest.approx(one, rel=1e-9, abs=1e-12)
    expected = sum(w * np.dot(gap[d], tokens) / sum(tokens) for d, w in target.weights.items())
    assert one["margin"] == pytest.approx(expected, rel=1e-9) and one["low"] < one["margin"] < one["high"]
