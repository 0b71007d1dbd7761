"""Token files: the training order (seeded, exact budgets, upsampling, even interleaving, shard pieces),
the document index and per-token bytes, and evaluation windows that never cross a document."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib.runtime import StageError
from pipeline.params.shards import ShardSpec
from pipeline.lib.tokens import IGNORE, Slice, TokenFile, batches, eval_windows, mixture_schedule, shard_slice, write_token_file


def make_file(dirpath: Path, name: str, n: int, offset: int = 0) -> TokenFile:
    dirpath.mkdir(parents=True, exist_ok=True)
    (np.arange(n, dtype=np.uint16) + offset).tofile(dirpath / f"{name}.bin")
    (dirpath / f"{name}.json").write_text(json.dumps({"tokens": n, "dtype": "uint16", "bytes": 4 * n}))
    return TokenFile.open(dirpath / f"{name}.bin")


def test_schedule_is_seeded_and_exact(tmp_path):
    a = Slice("a", make_file(tmp_path, "a", 1000), 0, 1000)
    b = Slice("b", make_file(tmp_path, "b", 1000, 5000), 0, 1000)
    s1, info = mixture_schedule([a, b], [3, 1], 40, 10, seed=1)
    s2, _ = mixture_schedule([a, b], [3, 1], 40, 10, seed=1)
    s3, _ = mixture_schedule([a, b], [3, 1], 40, 10, seed=2)
    assert s1 == s2 and s1 != s3
    assert Counter(i for i, _ in s1) == {0: 30, 1: 10}
    assert info["a"]["windows"] == 30 and info["b"]["epochs"] == 1
    # evenly interleaved: every quarter of the schedule holds a's and b's in the ratio 3:1
    for q in range(4):
        assert Counter(i for i, _ in s1[q * 10 : (q + 1) * 10]) == {0: 7, 1: 3} or Counter(i for i, _ in s1[q * 10 : (q + 1) * 10]) == {0: 8, 1: 2}


def test_small_slice_is_upsampled_in_fresh_orders(tmp_path):
    a = Slice("a", make_file(tmp_path, "a", 41), 0, 41)  # 4 windows of 10+1
    sched, info = mixture_schedule([a], [1.0], 10, 10, seed=0)
    wins = [w for _, w in sched]
    assert info["a"]["epochs"] == 3
    assert sorted(wins[:4]) == [0, 1, 2, 3] and sorted(wins[4:8]) == [0, 1, 2, 3]


def test_batches_are_contiguous_windows(tmp_path):
    f = make_file(tmp_path, "a", 200)
    s = Slice("a", f, 50, 150)
    sched, _ = mixture_schedule([s], [1.0], 9, 10, seed=0)
    out = list(batches([s], sched, 10, 4))
    assert [b.shape for b in out] == [(4, 11), (4, 11), (1, 11)]
    for b in out:
        for row in b:
            assert np.all(np.diff(row) == 1) and 50 <= row[0] and row[-1] < 150


def test_shard_pieces_partition_the_domain(tmp_path):
    make_file(tmp_path / "train", "d", 1001)
    pieces = [shard_slice(f"d-{i}", ShardSpec(domain="d", piece=i, of=3), tmp_path) for i in range(3)]
    assert pieces[0].start == 0 and pieces[-1].end == 1001
    assert all(p.end == q.start for p, q in zip(pieces, pieces[1:]))
    assert max(p.tokens for p in pieces) - min(p.tokens for p in pieces) <= 1


def test_truncated_token_file_is_a_clear_error(tmp_path):
    make_file(tmp_path, "a", 100)
    with open(tmp_path / "a.bin", "r+b") as f:
        f.truncate(50)
    with pytest.raises(StageError, match="truncated.*dvc repro tokenize"):
        TokenFile.open(tmp_path / "a.bin")


def test_slice_too_small_for_one_window(tmp_path):
    s = Slice("tiny", make_file(tmp_path, "a", 5), 0, 5)
    with pytest.raises(StageError, match="less than one window"):
        mixture_schedule([s], [1.0], 3, 10, seed=0)


# ---------------------------------------------------------------- documents and evaluation windows


def write_docs(dirpath: Path, lens: list[int], seed: int = 0, vocab: int = 50) -> TokenFile:
    """A token file of documents of ``lens`` tokens, each opened by token 0 (end-of-text)."""
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[0], rng.integers(1, vocab, n - 1)]) for n in lens]
    ids = np.concatenate(docs).astype(np.uint16)
    nbytes = np.where(ids == 0, 0, 3)
    write_token_file(dirpath / "d", ids, np.concatenate([[0], np.cumsum(lens)]), nbytes, {"dtype": "uint16"})
    return TokenFile.open(dirpath / "d.bin")


def test_token_file_index_round_trips(tmp_path):
    f = write_docs(tmp_path, [5, 13, 2])
    assert f.meta["documents"] == 3 and f.tokens == 20 and f.meta["bytes"] == 3 * 17
    assert f.doc_starts().tolist() == [0, 5, 18, 20]
    assert int(f.token_bytes().sum()) == f.meta["bytes"]


def test_missing_document_index_is_a_clear_error(tmp_path):
    f = make_file(tmp_path, "a", 100)  # an old-style file: tokens only
    with pytest.raises(StageError, match="a.docs.npy.*dvc repro tokenize"):
        eval_windows(TokenFile(f.path, {**f.meta, "documents": 1}), 8)


@pytest.mark.parametrize("limit", [None, 1, 17, 10_000])
def test_eval_windows_predict_each_token_from_its_own_document(tmp_path, limit):
    """Every target is the next token of its input's document; positions restart at documents and windows;
    ``limit`` keeps the first N predicted tokens; bytes are those of the predicted tokens."""
    lens, L = [5, 13, 2, 9, 20], 8
    f = write_docs(tmp_path, lens)
    ids = np.asarray(f.array(), np.int64)
    starts = f.doc_starts()
    w = eval_windows(f, L, limit)
    # the plain reference: walk the stream token by token
    expected_targets, expected_pos = [], []
    for j in range(ids.size - 1):
        doc = np.searchsorted(starts, j, side="right") - 1
        same = j + 1 < starts[doc + 1]
        expected_targets.append(int(ids[j + 1]) if same else IGNORE)
        expected_pos.append(j - max(j // L * L, starts[doc]))
    scored = [i for i, t in enumerate(expected_targets) if t != IGNORE]
    keep = scored if limit is None else scored[:limit]
    expected_targets = [t if i in keep else IGNORE for i, t in enumerate(expected_targets)]
    flat_t = w.targets.reshape(-1)
    n = len(expected_targets)
    assert flat_t[:n].tolist() == expected_targets[: flat_t[:n].size] and (flat_t[n:] == IGNORE).all()
    assert w.positions.reshape(-1)[: min(n, w.positions.size)].tolist() == expected_pos[: w.positions.size]
    assert w.inputs.reshape(-1)[: min(n, w.inputs.size)].tolist() == ids[:-1][: w.inputs.size].tolist()
    assert w.predicted == len(keep) == int((w.targets != IGNORE).sum())
    assert w.bytes == 3 * len(keep)  # every predicted token is a 3-byte token; end-of-text tokens are never targets
    assert len(w.inputs) == -(-(keep[-1] + 1) // L)  # no window after the last predicted token


def test_scores_equal_each_document_scored_alone(tmp_path):
    """The packed windows give every token exactly the NLL the model gives it with only its own
    document's preceding tokens (within the window) as context."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.lib.scoring import EvalSet, evaluate

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).float().eval()
    lens, L = [5, 13, 2, 9, 20], 8
    f = write_docs(tmp_path, lens)
    ids, starts = np.asarray(f.array(), np.int64), f.doc_starts()
    per: dict = {}
    evaluate(model, [EvalSet("d", f, L)], batch_size=3, per_token=per)
    ref = []
    for j in range(ids.size - 1):
        doc = np.searchsorted(starts, j, side="right") - 1
        if j + 1 >= starts[doc + 1]:
            continue
        ctx = torch.from_numpy(ids[max(j // L * L, starts[doc]) : j + 1])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ctx).logits[0, -1].double(), -1)
        ref.append(-float(logp[ids[j + 1]]))
    np.testing.assert_allclose(per["d"], ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("text", ["plain ascii text, with  two spaces\nand a line", "Ünïcödé — “quotes” and 漢字 and 🙂 emoji"])
def test_bytes_per_token_sum_to_the_text_bytes(text):
    from pipeline.lib.encode import bytes_per_token
    from pipeline.tokenize import train_tokenizer

    tok = train_tokenizer([text * 3, "other words for the merges"], vocab_size=300)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    counts = bytes_per_token(text, enc["offset_mapping"])
    assert len(counts) == len(enc["input_ids"]) and min(counts) >= 0
    assert sum(counts) == len(text.encode())
    if text.isascii():  # a prefix of the tokens counts the bytes of the text it decodes to
        k = len(counts) // 2
        assert sum(counts[:k]) == len(tok.decode(enc["input_ids"][:k]).encode())


@pytest.mark.parametrize("lengths, budget, least, share", [
    ([10, 20, 30], 100, 1, None),        # everything fits whole
    ([10, 20, 30], 45, 1, 17),           # 10 + 17 + 17 = 44 <= 45 < 10 + 18 + 18
    ([100] * 8, 400, 1, 50),             # even lengths: the budget split evenly
    ([100] * 8, 400, 64, 64),            # never below the floor (then fewer documents fill the budget)
    ([5, 5, 500], 110, 1, 100),          # short documents whole, the long one takes the rest
])
def test_even_share_is_the_largest_cap_the_budget_allows(lengths, budget, least, share):
    from pipeline.lib.encode import even_share

    got = even_share(lengths, budget, least)
    assert got == share
    if share is not None and share > least:  # the largest: one more token per document overflows the budget
        assert sum(min(n, share) for n in lengths) <= budget < sum(min(n, share + 1) for n in lengths)


def test_a_document_cap_keeps_a_contiguous_span_where_asked():
    from pipeline.lib.encode import encode_documents
    from pipeline.tokenize import train_tokenizer

    texts = [" ".join(f"w{i}_{j}" for j in range(60)) for i in range(3)] + ["short one"]
    tok = train_tokenizer(texts * 3, vocab_size=400)
    whole = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    for at in (0.0, 0.5, 0.999):
        ids, starts, nbytes = encode_documents(tok, texts, doc_cap=11, span_at=[at] * len(texts))
        for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            doc = ids[a:b].tolist()
            assert doc[0] == tok.eos_token_id and nbytes[a] == 0
            body, full = doc[1:], whole[i]
            if len(full) <= 10:
                assert body == full  # short documents whole
                continue
            assert len(body) == 10
            start = next(s for s in range(len(full) - 9) if full[s:s + 10] == body)  # a contiguous span of the document
            room = len(full) - 10
            assert abs(start - at * room) <= 1  # at fraction `at` of where it could start
    first = encode_documents(tok, texts, doc_cap=11)  # no span_at: each document's first tokens
    assert first[0][1:11].tolist() == whole[0][:10]
    capped = encode_documents(tok, texts, cap=25, doc_cap=11, span_at=[0.5] * len(texts))
    assert capped[0].size == 25 and capped[1][-1] == 25  # the part's cap still cuts the last document


def test_a_seed_folder_that_is_not_there_is_named_as_such(tmp_path):
    """transformers reads a missing folder as a hub repo id ("Repo id must use alphanumeric chars")."""
    from pipeline.lib.models import load_tokenizer
    from pipeline.lib.runtime import StageError
    from pipeline.tokenize import seed_tokenizer

    with pytest.raises(StageError, match=r"base\.pretrained_path: \.\./my-model does not exist"):
        seed_tokenizer("../my-model")
    with pytest.raises(StageError, match="no such folder"):
        load_tokenizer(tmp_path / "absent")
