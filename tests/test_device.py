"""params device / precision / save_dtype: resolution and its errors, bf16-mixed against fp32, checkpoints
saved in bfloat16, shards resident on the device, and the CPU default unchanged by the plumbing.

Every numerical case runs on the CPU and, where torch sees one, on CUDA (skipped cleanly here).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lib.device import CPU, Placement, placement, resolve_device
from pipeline.lib.runtime import StageError
from pipeline.params.core import ConfigError, load
from pipeline.params.config import Config
from tests.conftest import REPO, TINY_PARAMS, make_project, project_env, run_module, write_params
from tests.test_pool import perturbed, tiny_llama

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
# The commit before the device and precision settings: CPU fp32 training must give the tensors it gave.
BEFORE_DEVICE = "c230d72f858b76e20bd7aa5e7d2bee787f79ef85"


# ---------------------------------------------------------------- params and resolution


@pytest.mark.parametrize("key, value, says", [
    ("device", "gpu", "'gpu' is not a device: write auto, cpu, cuda or cuda:N"),
    ("device", "cuda:x", "'cuda:x' is not a device"),
    ("precision", "bf16", "precision: Input should be 'fp32', 'bf16-mixed' or 'bf16-train'"),
    ("save_dtype", "float16", "save_dtype: Input should be 'float32' or 'bfloat16'"),
])
def test_bad_device_settings_name_the_key_and_the_choices(tmp_path, key, value, says):
    path = write_params(tmp_path / "params.yaml", {**TINY_PARAMS, key: value})
    with pytest.raises(ConfigError) as e:
        load(path, Config)
    assert str(path) in str(e.value) and f"{key}:" in str(e.value) and says in str(e.value)


@pytest.mark.skipif(HAS_CUDA, reason="checks a machine without CUDA")
def test_auto_is_the_cpu_here_and_cuda_is_a_clear_error():
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(StageError) as e:
            resolve_device(name, "my.yaml")
        msg = str(e.value)
        assert msg.startswith(f"my.yaml: device: '{name}' but ") and "set device: cpu, or auto" in msg


def test_a_cuda_index_past_the_last_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(StageError) as e:
        resolve_device("cuda:2", "params.yaml")
    assert "device: 'cuda:2' but this machine has 2 CUDA devices (cuda:0 to cuda:1); set device: cuda:1 or lower" in str(e.value)


@pytest.mark.skipif(HAS_CUDA, reason="checks a machine without CUDA")
def test_the_check_stage_stops_a_gpu_run_on_a_machine_without_one(tmp_path):
    write_params(tmp_path / "params.yaml", {**TINY_PARAMS, "device": "cuda"})
    proc = run_module("pipeline.check", "--out", "data/params.json", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "params.yaml: device: 'cuda' but this torch" in proc.stderr and "set device: cpu" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_provenance_names_only_what_is_not_the_default():
    assert CPU.record(saved=True) == {}
    assert Placement(torch.device("cpu"), "bf16-mixed", "bfloat16").record(saved=True) == {
        "device": "cpu", "precision": "bf16-mixed", "save_dtype": "bfloat16"}
    assert CPU.facts() == {"device": "cpu", "precision": "fp32"}


# ---------------------------------------------------------------- training and scoring


def token_slice(root: Path, vocab: int = 97, tokens: int = 6000):
    """A token file of real text (textwrap's source, bytes folded into ``vocab`` ids) and its slice."""
    from pipeline.lib.tokens import Slice, TokenFile, write_token_file

    raw = np.frombuffer(textwrap.__doc__.encode() * 50 + Path(textwrap.__file__).read_bytes(), np.uint8)[:tokens]
    ids = (raw.astype(np.uint16) % vocab).astype(np.uint16)
    root.mkdir(parents=True, exist_ok=True)
    write_token_file(root / "text", ids, np.array([0, ids.size]), np.ones(ids.size, np.uint32), {"dtype": "uint16"})
    tf = TokenFile.open(root / "text.bin")
    return Slice("text", tf, 0, tf.tokens)


def recipe(tokens: int = 4096, lr: float = 3e-3):
    from pipeline.params.model import OptimConfig

    return OptimConfig(tokens=tokens, lr=lr, batch_size=4, seq_len=32, log_every=4)


def train(tmp_path: Path, place: Placement, tag: str, steps_tokens: int = 4096):
    from pipeline.lib.training import train_model

    sl = token_slice(tmp_path / "tokens")
    model = tiny_llama(hidden=32)
    summary, _ = train_model(model, [sl], [1.0], recipe(steps_tokens), seed=0, live_dir=tmp_path / f"live-{tag}", desc=tag, place=place)
    return model, summary


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_mixed_trains_within_2_percent_of_fp32(tmp_path, device):
    _, fp32 = train(tmp_path, Placement(torch.device(device), "fp32"), "fp32")
    model, mixed = train(tmp_path, Placement(torch.device(device), "bf16-mixed"), "bf16")
    assert all(p.dtype == torch.float32 and p.device.type == device for p in model.parameters())  # fp32 master weights
    assert fp32["final_loss"] < 4.0 < np.log(97)  # it learned something: the recipe is not degenerate
    assert abs(mixed["final_loss"] - fp32["final_loss"]) <= 0.02 * fp32["final_loss"], (mixed["final_loss"], fp32["final_loss"])


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_mixed_scores_within_1_percent_of_fp32(tmp_path, device):
    from pipeline.lib.scoring import EvalSet, evaluate

    sl = token_slice(tmp_path / "tokens")
    sets = [EvalSet("text", sl.file, seq_len=32, limit=1024)]
    model, _ = train(tmp_path, Placement(torch.device(device)), "fp32")
    fp32 = evaluate(model, sets, batch_size=8, place=Placement(torch.device(device)))["text"]
    mixed = evaluate(model, sets, batch_size=8, place=Placement(torch.device(device), "bf16-mixed"))["text"]
    assert mixed["tokens"] == fp32["tokens"] == 1024
    assert mixed["nll"] == pytest.approx(fp32["nll"], rel=0.01) and mixed["nll"] != fp32["nll"]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_train_trains_in_bf16_and_scores_in_fp32(tmp_path, device):
    """bf16-train: the training steps under bf16 autocast through the chunked loss (close to fp32's
    training, not equal), every scoring pass exactly fp32's."""
    from pipeline.lib.scoring import EvalSet, evaluate

    _, fp32 = train(tmp_path, Placement(torch.device(device), "fp32"), "fp32")
    model, bf16 = train(tmp_path, Placement(torch.device(device), "bf16-train"), "bf16-train")
    _, mixed = train(tmp_path, Placement(torch.device(device), "bf16-mixed"), "bf16-mixed")
    assert all(p.dtype == torch.float32 and p.device.type == device for p in model.parameters())
    assert bf16["final_loss"] != fp32["final_loss"] and bf16["final_loss"] == mixed["final_loss"]  # the same training steps
    assert abs(bf16["final_loss"] - fp32["final_loss"]) <= 0.02 * fp32["final_loss"], (bf16["final_loss"], fp32["final_loss"])
    sets = [EvalSet("text", token_slice(tmp_path / "tokens").file, seq_len=32, limit=1024)]
    as_fp32 = evaluate(model, sets, batch_size=8, place=Placement(torch.device(device)))["text"]
    assert evaluate(model, sets, batch_size=8, place=Placement(torch.device(device), "bf16-train"))["text"] == as_fp32
    assert Placement(torch.device("cpu"), "bf16-train").record(saved=True) == {"device": "cpu", "precision": "bf16-train"}


def test_checkpoints_saved_in_bfloat16_are_bfloat16_and_merge(tmp_path):
    """save_dtype bfloat16: the weights file holds BF16 tensors, the record says so, and a pool of such
    shards merges into an fp32 resident model as fp32 shards do, to bfloat16's precision."""
    from pipeline.lib.checkpoint import read_header
    from pipeline.lib.merging import merge_into
    from pipeline.lib.models import load_model, save_model
    from pipeline.lib.pool import ShardPool

    place = Placement(torch.device("cpu"), "fp32", "bfloat16")
    seed = tiny_llama(hidden=32)
    a, b = perturbed(seed, 1), perturbed(seed, 2)
    folders = {}
    for name, model in (("base", seed), ("a", a), ("b", b)):
        folders[name] = tmp_path / name
        save_model(place.for_saving(copy.deepcopy(model)), folders[name], None, {"stage": "test", **place.record(saved=True)})
    header = read_header(folders["a"] / "model.safetensors", "")
    assert {i.dtype for i in header.values()} == {"BF16"}
    assert json.loads((folders["a"] / "shardmix.json").read_text())["save_dtype"] == "bfloat16"
    resident = load_model(folders["base"])
    with ShardPool({"a": folders["a"], "b": folders["b"]}, seed=folders["base"]) as pool:
        merge_into(resident, [0.25, 0.75], pool)
    for (n, p), pa, pb in zip(resident.named_parameters(), a.parameters(), b.parameters()):
        assert p.dtype == torch.float32
        want = 0.25 * pa.detach().bfloat16().float() + 0.75 * pb.detach().bfloat16().float()
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-6, msg=n)


@pytest.mark.parametrize("device", DEVICES)
def test_a_pool_resident_on_a_device_merges_as_the_memory_mapped_files_do(tmp_path, device):
    from pipeline.lib.merging import merge_many_into
    from pipeline.lib.pool import ShardPool
    from tests.test_pool import make_checkpoints

    seed_dir, shards = make_checkpoints(tmp_path, k=3, hidden=32)
    weights = [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]
    outs = {}
    for resident in (False, True):
        models = [tiny_llama(hidden=32).to(device) for _ in weights]
        with ShardPool(shards, seed=seed_dir) as pool:
            if resident:
                pool.load_to(device)
                assert pool.device.startswith(device) and pool.nbytes == 3 * (seed_dir / "model.safetensors").stat().st_size - 3 * _header_bytes(seed_dir)
            merge_many_into(models, weights, pool)
        outs[resident] = [[p.detach().cpu() for p in m.parameters()] for m in models]
    for a, b in zip(outs[False], outs[True]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def _header_bytes(folder: Path) -> int:
    with open(folder / "model.safetensors", "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_the_proxy_sweep_on_cuda_matches_the_cpu(tmp_path):
    from pipeline.lib.mixtures import Mixture
    from pipeline.lib.scoring import EvalSet
    from pipeline.lib.sweep import score_all
    from tests.test_pool import make_checkpoints

    seed_dir, shards = make_checkpoints(tmp_path, k=3, hidden=32)
    sl = token_slice(tmp_path / "tokens")
    sets = [EvalSet("text", sl.file, seq_len=32, limit=512)]
    mixes = [Mixture("s0+s1", ("s0", "s1"), (0.5, 0.5)), Mixture("s0+s1+s2", ("s0", "s1", "s2"), (0.2, 0.3, 0.5))]
    cpu = score_all(mixes, shards, seed_dir, sets, 8)
    gpu = score_all(mixes, shards, seed_dir, sets, 8, place=Placement(torch.device("cuda")))
    for m in cpu["mixtures"]:
        assert gpu["mixtures"][m]["eval"]["text"]["ppl"] == pytest.approx(cpu["mixtures"][m]["eval"]["text"]["ppl"], rel=1e-4)


# ---------------------------------------------------------------- the CPU default, before and after


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cpu_fp32_training_is_bit_identical_to_before_the_device_settings(tmp_path, corpus_rows, tiny_params):
    """The tiny config's seed and a shard, trained by the code before the device and precision settings
    existed (commit BEFORE_DEVICE) and by today's, on the same token files: identical tensors."""
    if _git("cat-file", "-e", f"{BEFORE_DEVICE}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {BEFORE_DEVICE[:7]} is not in this clone (a shallow clone): git fetch --unshallow to run this")
    from safetensors.torch import load_file

    now = make_project(tmp_path / "now", corpus_rows, tiny_params)
    for module, args in (("pipeline.check", ["--out", "data/params.json"]),
                         ("pipeline.prepare", ["--out", "data/corpus", "--metrics", "metrics/corpus.json"]),
                         ("pipeline.tokenize", ["--corpus", "data/corpus", "--out", "data/tokens", "--tokenizer-out", "tokenizer",
                                                "--metrics", "metrics/tokens.json"])):
        run_module(module, *args, cwd=now)
    before = tmp_path / "before"
    shutil.copytree(now, before, symlinks=False, ignore=shutil.ignore_patterns("pipeline", "csrc", ".dvc", ".git"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_DEVICE, "pipeline"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    for cmd in (["git", "init", "-q"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(cmd, cwd=before, check=True, env=project_env())
    tensors = {}
    for root in (before, now):
        run_module("pipeline.base", "--tokenizer", "tokenizer", "--tokens", "data/tokens/base", "--out", "models/base",
                   "--live", "metrics/base", cwd=root)
        run_module("pipeline.train", "--shard", "code", "--base", "models/base", "--tokens", "data/tokens", "--out",
                   "models/shards/code", "--live", "metrics/train/code", cwd=root)
        tensors[root] = {m: load_file(root / "models" / m / "model.safetensors") for m in ("base", "shards/code")}
    for m in ("base", "shards/code"):
        a, b = tensors[before][m], tensors[now][m]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m
    old = json.loads((before / "models/shards/code/shardmix.json").read_text())
    new = json.loads((now / "models/shards/code/shardmix.json").read_text())
    assert {k: v for k, v in old.items() if k != "versions"} == {k: v for k, v in new.items() if k != "versions"}


def test_placement_sets_threads_and_resolves():
    p = placement(1, "auto", "fp32")
    assert torch.get_num_threads() == 1 and p.device.type == ("cuda" if HAS_CUDA else "cpu")
