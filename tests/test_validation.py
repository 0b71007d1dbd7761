"""Validation mixtures: the seeded sample command and its params format."""

from __future__ import annotations

import itertools
from collections import Counter

import yaml

from pipeline.params.mixtures import ValidationConfig
from pipeline.lib.mixtures import sample, to_params
from pipeline.validation import main
from tests.conftest import REPO


def test_sample_is_seeded_distinct_and_sized():
    shards = [f"s{i}" for i in range(10)]
    a = sample(shards, 12, [2, 3], seed=0)
    assert a == sample(shards, 12, [2, 3], seed=0) and a != sample(shards, 12, [2, 3], seed=1)
    assert len(set(a)) == 12 and [len(m) for m in a] == [2, 3] * 6
    assert all(list(m) == sorted(m, key=shards.index) for m in a)


def test_sample_is_balanced():
    """Every shard in the same number of mixtures (+-1), no pair of shards in more than two."""
    shards = [f"s{i}" for i in range(10)]
    for n, sizes in [(20, [2, 3]), (12, [2, 3]), (7, [2, 3, 4])]:
        mixes = sample(shards, n, sizes, seed=3)
        use = Counter(s for m in mixes for s in m)
        assert len(set(mixes)) == n and set(use) <= set(shards)
        assert max(use.values()) - min(use.get(s, 0) for s in shards) <= 1, (n, sizes, use)
        pairs = Counter(p for m in mixes for p in itertools.combinations(m, 2))
        assert max(pairs.values()) <= 2, pairs
    # an unbalanced draw of the old kind (plain random) would typically leave a shard in one mixture of 12
    assert min(Counter(s for m in sample(shards, 12, [2, 3], seed=0) for s in m).values()) >= 2


def test_all_subsets_can_be_drawn():
    shards = ["a", "b", "c", "d"]
    assert sorted(sample(shards, 6, [2], seed=0)) == sorted(itertools.combinations(shards, 2))


def test_printed_params_validate(capsys):
    assert main(["sample", "--params", str(REPO / "params.yaml"), "--n", "5", "--sizes", "2", "3", "4"]) == 0
    section = yaml.safe_load(capsys.readouterr().out)["validation"]
    cfg = ValidationConfig.model_validate(section)
    assert len(cfg.mixtures) == 5
    assert all("+".join(m.shards) == name for name, m in cfg.mixtures.items())


def test_impossible_request_is_an_error(capsys):
    assert main(["sample", "--params", str(REPO / "params.yaml"), "--sizes", "11"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert to_params([("a", "b")]).splitlines()[-1].strip() == "a+b: {shards: [a, b]}"
