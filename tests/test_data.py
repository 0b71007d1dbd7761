"""The training data order: seeded, exact budgets, upsampling, even interleaving, shard pieces."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib.runtime import StageError
from pipeline.config import ShardSpec
from pipeline.lib.tokens import Slice, TokenFile, batches, mixture_schedule, shard_slice


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
