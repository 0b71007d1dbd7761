"""ShardPool: zero-copy views equal the stored tensors; bad checkpoints are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.lib.runtime import StageError
from pipeline.lib.pool import ShardPool


def tiny_llama(seed: int = 0, tie: bool = True, hidden: int = 16, vocab: int = 97, layers: int = 2):
    """A random tiny Llama causal LM in fp32 (eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


def perturbed(model, seed: int, scale: float = 0.05):
    """A copy of ``model`` with seeded Gaussian noise on every parameter (a stand-in shard model)."""
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


def make_checkpoints(root: Path, k: int = 3, tie: bool = True, **kw) -> tuple[Path, dict[str, Path]]:
    """Save a seed model and ``k`` perturbed shard models as HF folders under ``root``."""
    base = tiny_llama(tie=tie, **kw)
    base.save_pretrained(root / "base")
    shards = {}
    for i in range(k):
        perturbed(base, i).save_pretrained(root / f"s{i}")
        shards[f"s{i}"] = root / f"s{i}"
    return root / "base", shards


@pytest.fixture
def ckpts(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    return make_checkpoints(tmp_path)


def test_views_equal_stored_tensors_and_tied_head_is_absent(ckpts):
    base, shards = ckpts
    with ShardPool(shards, seed=base) as pool:
        assert len(pool) == 3 and pool.names == ["s0", "s1", "s2"]
        assert "lm_head.weight" not in pool and "model.embed_tokens.weight" in pool
        for k, folder in enumerate(shards.values()):
            stored = load_file(folder / "model.safetensors")
            assert set(stored) == set(pool.tensor_names)
            for name, t in stored.items():
                v = pool.view(k, name)
                assert v.dtype == t.dtype and v.shape == t.shape and torch.equal(v, t), name
        seed = load_file(base / "model.safetensors")
        assert torch.equal(pool.seed_view("model.norm.weight"), seed["model.norm.weight"])
        # dropping pages never changes what a view reads
        name = "model.embed_tokens.weight"
        before = pool.view(1, name).clone()
        pool.release(name)
        pool.release(name, [0, 2], 5, 50)
        assert torch.equal(pool.view(1, name), before)


def test_sharded_checkpoint_with_index_is_read(tmp_path: Path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    perturbed(base, 0).save_pretrained(tmp_path / "s0", max_shard_size="20KB")
    assert (tmp_path / "s0" / "model.safetensors.index.json").is_file()
    with ShardPool({"s0": tmp_path / "s0"}, seed=tmp_path / "base") as pool:
        ref = perturbed(base, 0).state_dict()
        for name in pool.tensor_names:
            assert torch.equal(pool.view(0, name), ref[name])


def rss_file_kb(kind: str = "RssFile") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1])
    pytest.skip(f"no {kind} in /proc/self/status")


def test_release_returns_mapped_pages(tmp_path: Path):
    big = torch.randn(8 << 20)  # 32 MB
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_file({"w": big}, tmp_path / d / "model.safetensors")
    with ShardPool({"a": tmp_path / "a", "b": tmp_path / "b"}) as pool:
        before = rss_file_kb()
        assert float(pool.view(1, "w").sum()) == pytest.approx(float(big.sum()), rel=1e-4)
        touched = rss_file_kb()
        pool.release("w", [1])
        after = rss_file_kb()
    assert touched - before > 24_000, (before, touched)
    assert touched - after > 24_000, (touched, after)


def test_a_kept_pool_keeps_its_pages_and_reads_tensors_whole(tmp_path: Path, monkeypatch):
    big = torch.randn(8 << 20)  # 32 MB
    (tmp_path / "a").mkdir()
    save_file({"w": big}, tmp_path / "a" / "model.safetensors")
    with ShardPool({"a": tmp_path / "a"}) as pool:
        cpu = torch.device("cpu")
        assert not pool.reads_whole(cpu)
        monkeypatch.setattr(pool, "fits", lambda device, also=0: True)
        before, anon = rss_file_kb(), rss_file_kb("RssAnon")
        assert pool.hold(cpu) and pool.kept and pool.reads_whole(cpu) and pool.reads_whole("cpu")
        assert not pool.reads_whole(torch.device("meta"))
        assert float(pool.view(0, "w").sum()) == pytest.approx(float(big.sum()), rel=1e-4)
        pool.release("w")
        pool.release_all()
        after, anon_after = rss_file_kb(), rss_file_kb("RssAnon")
    assert after - before > 24_000, (before, after)  # the pages stayed
    assert anon_after - anon < 8_000, (anon, anon_after)  # and nothing was copied


def test_hold_keeps_nothing_where_the_shards_do_not_fit(ckpts, monkeypatch):
    import pipeline.lib.device as device

    base, shards = ckpts
    with ShardPool(shards, seed=base) as pool:
        monkeypatch.setattr(device, "host_free_bytes", lambda *a, **k: int(pool.nbytes / device.MEMORY_SHARE) + 1024)
        assert pool.fits(torch.device("cpu")) and not pool.fits(torch.device("cpu"), also=2048)
        assert not pool.hold(torch.device("cpu"), also=2048) and not pool.kept


def test_hold_copies_to_a_gpu_with_headroom_left(ckpts, monkeypatch):
    """The GPU branch, without a GPU: the free device memory minus HEADROOM of the total must hold the
    shards and ``also``; then the shards are copied there (load_to), never kept mapped."""
    import math

    from pipeline.lib.device import HEADROOM

    base, shards = ckpts
    total = 1 << 30
    with ShardPool(shards, seed=base) as pool:
        room = math.ceil(HEADROOM * total) + pool.nbytes + 100
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (room, total))
        copied = []
        monkeypatch.setattr(pool, "load_to", lambda device: copied.append(device))
        gpu = torch.device("cuda", 0)
        assert pool.fits(gpu, also=100) and not pool.fits(gpu, also=101) and pool.fits("cuda:0")
        assert not pool.hold(gpu, also=101) and copied == []
        assert pool.hold(gpu, also=100) and copied == [gpu] and not pool.kept


def test_missing_checkpoint_names_file_and_fix(ckpts):
    base, shards = ckpts
    shutil.rmtree(shards["s1"])
    with pytest.raises(StageError, match=r"s1: checkpoint folder not found.*dvc repro train@s1"):
        ShardPool(shards, seed=base)
    shards["s1"].mkdir()
    with pytest.raises(StageError, match=r"s1/model.safetensors: not found.*dvc repro train@s1"):
        ShardPool(shards, seed=base)


@pytest.mark.parametrize("keep", [4, 100, -7])
def test_truncated_checkpoint_is_named(ckpts, keep):
    base, shards = ckpts
    f = shards["s2"] / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep])
    with pytest.raises(StageError, match=r"s2/model.safetensors: truncated.*dvc repro train@s2"):
        ShardPool(shards, seed=base)


def test_different_architecture_names_key_and_both_files(tmp_path: Path):
    base, shards = make_checkpoints(tmp_path, k=2)
    tiny_llama(hidden=32).save_pretrained(tmp_path / "s1")  # overwrite: another width
    with pytest.raises(StageError) as e:
        ShardPool(shards, seed=base)
    msg = str(e.value)
    assert "hidden_size" in msg and "s1/config.json" in msg and "base/config.json" in msg, msg
    # without config.json, the tensors' shapes still disagree: tensor and both files named
    (tmp_path / "s1" / "config.json").unlink()
    with pytest.raises(StageError) as e:
        ShardPool(shards, seed=base)
    msg = str(e.value)
    assert "tensor model." in msg and "s1/model.safetensors" in msg and "base/model.safetensors" in msg, msg


def test_missing_tensor_names_tensor_and_both_files(ckpts):
    base, shards = ckpts
    f = shards["s0"] / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(StageError) as e:
        ShardPool(shards, seed=base)
    msg = str(e.value)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "s0/model.safetensors" in msg and "base/model.safetensors" in msg


def test_dtype_mismatch_and_extra_tensor(ckpts):
    base, shards = ckpts
    f = shards["s0"] / "model.safetensors"
    sd = load_file(f)
    save_file({**sd, "model.norm.weight": sd["model.norm.weight"].bfloat16()}, f, metadata={"format": "pt"})
    with pytest.raises(StageError, match=r"tensor model.norm.weight: .*BF16.*s0.*F32.*base"):
        ShardPool(shards, seed=base)
    save_file({**sd, "lm_head.weight": sd["model.embed_tokens.weight"].clone()}, f, metadata={"format": "pt"})
    with pytest.raises(StageError, match=r"lm_head.weight is not in .*base/model.safetensors"):
        ShardPool(shards, seed=base)


def test_corrupt_header_and_config(ckpts):
    base, shards = ckpts
    f = shards["s0"] / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    f.write_bytes(bytes(data))
    with pytest.raises(StageError, match=r"s0/model.safetensors: the safetensors header is not valid JSON"):
        ShardPool(shards, seed=base)
    (shards["s1"] / "config.json").write_text("{not json")
    with pytest.raises(StageError, match=r"s1/config.json: not valid JSON"):
        ShardPool({"s1": shards["s1"]}, seed=base)
    json.loads((base / "config.json").read_text())  # the seed is untouched
