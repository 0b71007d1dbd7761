"""The proxy's sweep: layer-streamed scoring, shards in memory or mapped, the choice of M (``mixtures.at_once``, ``mixtures.stream``).

Layer streaming must give the resident path's scores (to 1e-6 relative) on tied and untied
models with an odd number of blocks and documents packed into windows; the rows of the sweep
(seed, shards, mixtures) must score as the checkpoints and the hand-averaged models do; a model
whose blocks cannot be walked, and an M that does not fit, are clear errors.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lib.mixtures import Mixture
from pipeline.lib.runtime import StageError
from tests.test_pool import make_checkpoints

MIXES = [Mixture("s0+s1", ("s0", "s1"), (0.5, 0.5)), Mixture("s0+s1+s2", ("s0", "s1", "s2"), (0.2, 0.3, 0.5)),
         Mixture("s2", ("s2",), (1.0,)), Mixture("s1+s2", ("s1", "s2"), (0.9, 0.1))]


def eval_sets(root: Path, vocab: int = 97):
    """Two eval domains of real text, several documents each (windows hold document restarts)."""
    from pipeline.lib.scoring import EvalSet
    from pipeline.lib.tokens import TokenFile, write_token_file

    raw = np.frombuffer(Path(textwrap.__file__).read_bytes(), np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    sets = []
    for name, ids in (("a", raw[:1500]), ("b", raw[1500:2600])):
        ids = (ids.astype(np.uint16) % vocab).astype(np.uint16)
        starts = np.array([0, 90, 400, 410, 900, ids.size]) if name == "a" else np.array([0, 333, ids.size])
        write_token_file(root / name, ids, starts, np.ones(ids.size, np.uint32), {"dtype": "uint16"})
        sets.append(EvalSet(name, TokenFile.open(root / f"{name}.bin"), seq_len=48))
    return sets


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def project(request, tmp_path):
    seed, shards = make_checkpoints(tmp_path, k=3, tie=request.param, hidden=32, layers=3)
    return seed, shards, eval_sets(tmp_path / "tokens")


def _ppl(metrics: dict) -> dict[tuple[str, str], tuple[float, float]]:
    out = {("(seed)", d): (s["ppl"], s["bpb"]) for d, s in metrics["seed"]["eval"].items()}
    for part in ("shards", "mixtures"):
        out |= {(n, d): (s["ppl"], s["bpb"]) for n, e in metrics[part].items() for d, s in e["eval"].items()}
    return out


def test_layer_streamed_scores_equal_the_resident_path(project):
    from pipeline.lib.layerstream import LayerStream
    from pipeline.lib.pool import ShardPool
    from pipeline.lib.sweep import score_all

    seed, shards, sets = project
    resident = score_all(MIXES, shards, seed, sets, 4, at_once=1)
    assert resident["cost"]["at_once"] == 1 and resident["cost"]["models_scored"] == 1 + 3 + 4
    for at_once in (1, 3, 8):
        for stream in ("resident", "layers"):
            got = score_all(MIXES, shards, seed, sets, 4, at_once=at_once, stream=stream)
            assert got["cost"]["at_once"] == at_once and got["cost"]["stream"] == stream
            want = _ppl(resident)
            for key, (ppl, bpb) in _ppl(got).items():
                assert ppl == pytest.approx(want[key][0], rel=1e-6) and bpb == pytest.approx(want[key][1], rel=1e-6), (stream, at_once, key)
    # unrounded: the layer-streamed NLL equals the resident one (before the metrics' rounding)
    from pipeline.lib.merging import merge_into
    from pipeline.lib.models import load_model
    from pipeline.lib.scoring import evaluate

    # the head in one vocabulary tile (97 rows: the default here), in ten (the last one short) and
    # in two (the last one a single row)
    with ShardPool(shards, seed=seed) as pool:
        rows = [[0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
        model = load_model(seed)
        wants = []
        for w in rows:
            merge_into(model, w, pool)
            wants.append(evaluate(model, sets, 4))
        for head_rows in (None, 10, 96):
            stream = LayerStream(seed, pool, 3, head_rows=head_rows)
            for w, got, want in zip(rows, stream.score(rows, sets, 4), wants):
                for d in want:
                    assert got[d]["tokens"] == want[d]["tokens"]
                    assert got[d]["nll"] == pytest.approx(want[d]["nll"], rel=1e-6, abs=0), (head_rows, w, d)
            assert stream.depth == 3 and len(stream.blocks) == 3


def test_the_layer_stream_footprint_covers_what_a_group_holds(project):
    """``mixtures.at_once: auto`` sizes M from :meth:`LayerStream.footprint`: the M block buffers,
    every row's activations and the head tiles a group allocates must fit in it, for any M."""
    from pipeline.lib.layerstream import LayerStream
    from pipeline.lib.pool import ShardPool

    seed, shards, sets = project
    tokens = sum(e.inputs.numel() for e in sets)
    with ShardPool(shards, seed=seed) as pool:
        for head_rows in (None, 10):
            for m in (1, 3, 8):
                stream = LayerStream(seed, pool, m, head_rows=head_rows)
                per_row, fixed = stream.footprint(sets)
                stream.score([[1 / 3] * 3] * m, sets, 4)
                block = sum(p.numel() * p.element_size() for p in stream.blocks[0].parameters())
                held = m * (block + 4 * stream.model.config.hidden_size * tokens) + stream.tile_bytes
                assert stream.tile_bytes > 0 and len(stream.blocks) == m
                assert held <= fixed + m * per_row <= 2 * held, (head_rows, m, held, fixed, per_row)


def test_the_seed_and_shard_rows_score_as_the_checkpoints_themselves(project):
    from pipeline.lib.models import load_model
    from pipeline.lib.scoring import evaluate
    from pipeline.lib.sweep import score_all

    seed, shards, sets = project
    got = score_all(MIXES[:1], shards, seed, sets, 4, at_once=3, stream="layers")
    for name, folder in [("(seed)", seed), ("s1", shards["s1"])]:
        want = evaluate(load_model(folder), sets, 4)
        have = got["seed"]["eval"] if name == "(seed)" else got["shards"][name]["eval"]
        for d in want:
            assert have[d]["ppl"] == pytest.approx(round(want[d]["ppl"], 4), rel=1e-6), (name, d)


def test_shards_kept_in_memory_score_as_the_files_read_and_dropped(project, monkeypatch, caplog):
    from pipeline.lib import sweep
    from pipeline.lib.pool import ShardPool

    seed, shards, sets = project
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(ShardPool, "fits", lambda self, device, also=0: False)  # no room: every pass reads the files
    mapped = sweep.score_all(MIXES, shards, seed, sets, 4, at_once=2)
    assert "the 4 checkpoints (" in caplog.text and "do not fit" in caplog.text  # 3 shards and the seed
    assert "stay mapped" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(ShardPool, "fits", lambda self, device, also=0: True)
    kept = sweep.score_all(MIXES, shards, seed, sets, 4, at_once=2)
    assert "stay mapped in memory once read" in caplog.text
    assert _ppl(kept) == _ppl(mapped)


def test_at_once_auto_leaves_the_kept_shards_pages_out_of_the_free_memory(project, monkeypatch):
    """Free memory counts the page cache; shard pages kept mapped are page cache that M models must
    not push out, so with the shards kept ``auto`` fits M into the free memory less their bytes."""
    import pipeline.lib.device as device
    from pipeline.lib import sweep
    from pipeline.lib.models import load_model, model_bytes
    from pipeline.lib.pool import ShardPool

    seed, shards, sets = project
    model = load_model(seed)
    per_model = model_bytes(model)
    work = sweep.working_bytes(model.config, sets, 4)
    with ShardPool({**shards, sweep.SEED_COLUMN: seed}, seed=seed) as pool:
        nbytes = pool.nbytes
    free = int((work + 3 * per_model + nbytes) / device.MEMORY_SHARE)
    monkeypatch.setattr(device, "host_free_bytes", lambda *a, **k: free)
    got = {}
    for kept in (False, True):
        monkeypatch.setattr(ShardPool, "fits", lambda self, d, also=0, kept=kept: kept)
        got[kept] = sweep.score_all(MIXES, shards, seed, sets, 4)["cost"]["at_once"]
    rows = 1 + len(shards) + len(MIXES)
    assert got[False] == sweep.resolve_at_once("auto", rows, per_model, work, free + per_model)
    assert got[True] == sweep.resolve_at_once("auto", rows, per_model, work, free + per_model - nbytes)
    assert 1 < got[True] < got[False] < rows


def test_a_model_whose_blocks_cannot_be_walked_is_a_clear_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.lib.sweep import score_all

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    model.save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "s0")
    sets = eval_sets(tmp_path / "tokens")
    with pytest.raises(StageError, match=r"GPT2LMHeadModel.*mixtures\.stream: resident"):
        score_all([], {"s0": tmp_path / "s0"}, tmp_path / "base", sets, 4, stream="layers")
    # the resident path scores it
    assert score_all([], {"s0": tmp_path / "s0"}, tmp_path / "base", sets, 4)["shards"]["s0"]["eval"]["a"]["ppl"] > 1


def test_at_once_auto_takes_what_fits_and_an_explicit_m_that_does_not_is_an_error(caplog):
    from pipeline.lib.device import MEMORY_SHARE
    from pipeline.lib.sweep import resolve_at_once

    caplog.set_level(logging.INFO)
    gb = 10**9
    assert resolve_at_once("auto", rows=76, per_row=gb, fixed=gb, free=11 * gb) == int(MEMORY_SHARE * 11) - 1
    assert resolve_at_once("auto", rows=5, per_row=gb, fixed=gb, free=100 * gb) == 5  # never more than the rows
    assert resolve_at_once("auto", rows=5, per_row=gb, fixed=gb, free=gb) == 1  # at least one
    assert "5 would need" in caplog.text
    assert resolve_at_once(64, rows=5, per_row=gb, fixed=0, free=10 * gb) == 5  # capped at the rows first
    assert resolve_at_once(3, rows=76, per_row=gb, fixed=0, free=10 * gb) == 3
    with pytest.raises(StageError, match=r"mixtures\.at_once: 16 needs 17\.00 GB .* set mixtures\.at_once: 7 or lower, or auto"):
        resolve_at_once(16, rows=76, per_row=gb, fixed=gb, free=10 * gb)


def test_free_memory_is_capped_by_the_cgroup_limit(tmp_path):
    from pipeline.lib.device import host_free_bytes

    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:   8000000 kB\n")
    for version, line, limit, used in (("v2", "0::/job", "memory.max", "memory.current"),
                                       ("v1", "4:memory:/job", "memory.limit_in_bytes", "memory.usage_in_bytes")):
        root = tmp_path / version
        folder = root / ("memory/job" if version == "v1" else "job")
        folder.mkdir(parents=True)
        (folder / limit).write_text(f"{3 * 2**30}\n")
        (folder / used).write_text(f"{2**30}\n")
        (root / "cgroup").write_text(f"9:cpu:/\n{line}\n")
        assert host_free_bytes(tmp_path / "meminfo", root / "cgroup", root) == 2 * 2**30, version
        (folder / limit).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")
        assert host_free_bytes(tmp_path / "meminfo", root / "cgroup", root) == 8000000 * 1024, version
    assert json.dumps(host_free_bytes()) and host_free_bytes() > 0  # this machine: a number
