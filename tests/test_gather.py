"""The recommend targets' text (the gather stage) and the recommend section's bad input: clear errors
naming the key and the fix, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.params.config import Config
from pipeline.params.core import ConfigError, load
from tests.conftest import TINY_PARAMS, run_module, write_jsonl, write_params


def params_with(tmp_path: Path, recommend: dict) -> Path:
    return write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "recommend": {**TINY_PARAMS["recommend"], **recommend}})


@pytest.mark.parametrize("recommend, says", [
    ({"budget": 0}, "recommend.budget: Input should be greater than 0"),
    ({"max_shards": 0}, "recommend.max_shards: Input should be greater than 0"),
    ({"scale": 0}, "recommend.scale: Input should be greater than 0"),
    ({"min_doc_tokens": 0}, "recommend.min_doc_tokens: Input should be greater than 0"),
    ({"targets": {"t": {"domains": {"prose": 0.0, "code": 0.0}}}}, "sum to 0: give at least one a weight > 0"),
    ({"targets": {"t": {"domains": {"prose": 1.0}, "file": "x.jsonl"}}}, "give exactly one of 'domains'"),
    ({"targets": {"t": {}}}, "give exactly one of 'domains'"),
    ({"targets": {"bad name": {"domains": {"prose": 1.0}}}}, "target name 'bad name' is not usable as a file name"),
    ({"dev_fraction": 1.0}, "recommend.dev_fraction: Input should be less than 1"),
])
def test_bad_recommend_params_name_the_key(tmp_path, recommend, says):
    path = params_with(tmp_path, recommend)
    with pytest.raises(ConfigError) as e:
        load(path, Config)
    assert str(path) in str(e.value) and says in str(e.value)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_rows) -> Path:
    """A tiny project with its corpus and tokenizer made (prepare, tokenize)."""
    root = tmp_path_factory.mktemp("gather")
    write_jsonl(root / "corpus.jsonl", corpus_rows)
    write_params(root / "params.yaml", TINY_PARAMS)
    run_module("pipeline.prepare", "--out", "data/corpus", "--metrics", "metrics/corpus.json", cwd=root)
    run_module("pipeline.tokenize", "--corpus", "data/corpus", "--out", "data/tokens", "--tokenizer-out", "tokenizer",
               "--metrics", "metrics/tokens.json", cwd=root)
    return root


def gather(root: Path, recommend: dict, check: bool = True):
    params_with(root, recommend)
    return run_module("pipeline.gather", "--corpus", "data/corpus", "--tokenizer", "tokenizer", "--out", "data/targets",
                      "--metrics", "metrics/targets.json", cwd=root, check=check)


def test_a_file_target_is_split_by_document_into_dev_and_test(prepared):
    docs = [{"text": f"Document {i}: " + "some words of the user's own text. " * (5 + i)} for i in range(12)]
    with open(prepared / "data/corpus/prose/train.jsonl") as f:
        in_corpus = {"text": json.loads(f.readline())["text"]}  # a shard's training document: left out
    write_jsonl(prepared / "mine.jsonl", docs + [{"text": None}, {"other": "no text"}, in_corpus])
    gather(prepared, {"targets": {"mine": {"file": "mine.jsonl"}, "prose": {"domains": {"prose": 1.0}}}, "max_tokens": 100000})
    rec = json.loads((prepared / "data/targets/mine/target.json").read_text())["domains"]["mine"]
    assert rec["weight"] == 1.0 and rec["dev"]["documents"] + rec["test"]["documents"] == 12
    assert rec["dev"]["documents"] >= 1 and rec["test"]["documents"] >= 1
    from pipeline.lib.tokens import TokenFile
    from pipeline.lib.models import load_tokenizer

    tok = load_tokenizer(prepared / "tokenizer")
    texts = {p: [] for p in ("dev", "test")}
    for part in texts:
        tf = TokenFile.open(prepared / f"data/targets/mine/{part}/mine.bin")
        ids, starts = tf.array(), tf.doc_starts()
        texts[part] = [tok.decode(ids[a + 1:b].tolist()) for a, b in zip(starts[:-1], starts[1:])]
        assert int(tf.token_bytes().sum()) == sum(len(t.encode()) for t in texts[part])
    assert not set(texts["dev"]) & set(texts["test"])
    assert sorted(texts["dev"] + texts["test"]) == sorted(d["text"].strip() for d in docs)
    summary = json.loads((prepared / "metrics/targets.json").read_text())
    assert set(summary["targets"]) == {"mine", "prose"}


@pytest.mark.parametrize("target, says", [
    ({"domains": {"no_such_domain": 1.0}}, "recommend.targets.t.domains: unknown domain 'no_such_domain'"),
    ({"file": "absent.jsonl"}, "recommend.targets.t.file: absent.jsonl not found"),
    ({"file": "empty.jsonl"}, "empty.jsonl: 0 document(s) with text"),
    ({"file": "latin1.jsonl"}, "latin1.jsonl: not UTF-8 text"),
    ({"file": "body.jsonl"}, "the file's fields are ['body', 'id'] (set recommend.targets.t.text_field)"),
])
def test_bad_targets_are_clear_errors_and_write_nothing(prepared, target, says):
    (prepared / "empty.jsonl").write_text("\n")
    write_jsonl(prepared / "body.jsonl", [{"id": i, "body": f"document {i}"} for i in range(3)])
    (prepared / "latin1.jsonl").write_bytes('{"text": "caf\\u00e9"}\n'.encode() + b'{"text": "caf\xe9"}\n')
    before = sorted(p.name for p in prepared.iterdir())
    proc = gather(prepared, {"targets": {"first": {"domains": {"prose": 1.0}}, "t": target}}, check=False)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-2000:]
    if "file" in target and "absent" in target["file"]:  # found before any target is built
        assert "first:" not in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in prepared.iterdir()) == before


def test_a_part_spreads_its_tokens_over_many_documents(prepared):
    """Long documents: with ``min_doc_tokens`` each gives an even share of the part (a contiguous span
    of its own tokens), so a part holds far more documents than whole documents would give it."""
    from pipeline.lib.models import load_tokenizer
    from pipeline.lib.tokens import TokenFile

    rng = np.random.default_rng(0)
    docs = [{"id": str(i), "text": f"Document {i}: " + " ".join(f"word{w}" for w in rng.integers(0, 97, 400))} for i in range(40)]
    write_jsonl(prepared / "long.jsonl", docs)
    tok = load_tokenizer(prepared / "tokenizer")
    whole = {d["text"]: "," + ",".join(map(str, tok(d["text"], add_special_tokens=False)["input_ids"])) + "," for d in docs}
    counts = {}
    for least in (None, 64):
        gather(prepared, {"targets": {"long": {"file": "long.jsonl"}}, "max_tokens": 2048, "min_doc_tokens": least})
        rec = json.loads((prepared / "data/targets/long/target.json").read_text())["domains"]["long"]
        counts[least] = rec["dev"]["documents"] + rec["test"]["documents"]
        seen = {}
        for part in ("dev", "test"):
            tf = TokenFile.open(prepared / f"data/targets/long/{part}/long.bin")
            ids, starts = tf.array(), tf.doc_starts()
            assert tf.tokens <= 2048 and rec[part]["tokens"] == tf.tokens
            share = rec[part]["tokens_per_document"]
            assert (share is None) == (least is None) and (share is None or share >= least)
            for a, b in zip(starts[:-1], starts[1:]):
                body = ids[a + 1:b].tolist()
                home = [t for t, full in whole.items() if "," + ",".join(map(str, body)) + "," in full]
                assert len(home) == 1, "every document's tokens are a span of one target document"
                assert not (share and len(body) + 1 > share)
                seen.setdefault(home[0], set()).add(part)
        assert all(len(parts) == 1 for parts in seen.values())  # no document in both parts
    assert counts[64] >= 4 * counts[None]  # 2048 / 65 per document against ~2048 / 800


def test_a_part_of_few_documents_is_warned_about(prepared):
    write_jsonl(prepared / "few.jsonl", [{"text": f"Document {i}: " + "word " * 50} for i in range(6)])
    proc = gather(prepared, {"targets": {"few": {"file": "few.jsonl"}}})
    assert "few: few gives" in proc.stderr and "a verdict on it rests on a handful of documents" in proc.stderr, proc.stderr[-2000:]
    write_jsonl(prepared / "many.jsonl", [{"text": f"Document {i}: " + "word " * 50} for i in range(60)])
    proc = gather(prepared, {"targets": {"many": {"file": "many.jsonl"}}, "max_tokens": 100000})
    assert "handful" not in proc.stderr, proc.stderr[-2000:]
