"""Build, load and save causal LMs as Hugging Face folders (config.json + model.safetensors).

Any local ``AutoModelForCausalLM`` checkpoint works as a seed; models made here are Llama-style.
Every saved folder carries the tokenizer files and ``shardmix.json``, a record of what made it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.lib.outputs import atomic_dir, write_json
from pipeline.lib.checkpoint import Checkpoint
from pipeline.lib.runtime import StageError

if TYPE_CHECKING:  # the model section, only read here
    from pipeline.params.model import ModelConfig

log = logging.getLogger(__name__)

META_FILE = "shardmix.json"


def build_model(mcfg: ModelConfig, tokenizer, seed: int):
    """A freshly initialised Llama-style causal LM sized by ``mcfg`` (tied embeddings, fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=mcfg.hidden_size,
        intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers,
        num_attention_heads=mcfg.num_heads,
        num_key_value_heads=mcfg.num_heads,
        max_position_embeddings=mcfg.max_position_embeddings,
        rope_theta=mcfg.rope_theta,
        rms_norm_eps=mcfg.rms_norm_eps,
        initializer_range=mcfg.initializer_range,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.float()


def load_model(path: str | Path):
    """Load a local HF causal-LM folder in fp32 on the CPU; errors name the folder and the fix."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise StageError(f"{path}: not a model folder (no config.json); give a local Hugging Face checkpoint folder, or rerun the stage that makes it (dvc repro)")
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        # headers first: a truncated or damaged file is a clear error, not a SafetensorError traceback
        Checkpoint(path, "rerun the stage that makes it (dvc repro), or copy the checkpoint again")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise StageError(f"{path}: cannot load the model ({type(e).__name__}: {e}); check that the weights file is complete (rerun the stage that makes it)") from None
    model.eval()
    return model


def find_model(name: str, folders: Sequence[Path], key: str, fix: str) -> Path:
    """The first ``folder / name`` of ``folders`` that exists; a StageError naming ``key``, the folders
    searched and ``fix`` when none does."""
    found = next((Path(d) / name for d in folders if (Path(d) / name).is_dir()), None)
    if found is None:
        raise StageError(f"{key}: no model folder {name!r} in {[str(d) for d in folders]}; {fix}")
    return found


def load_tokenizer(path: str | Path):
    """The tokenizer stored in a model or tokenizer folder."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():  # transformers would read a missing folder as a hub repo id and say that is malformed
        raise StageError(f"{path}: no such folder (a relative path is relative to {Path.cwd()}); give a model or tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(Path(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise StageError(f"{path}: cannot load a tokenizer ({e}); the folder needs tokenizer.json or the files of a Hugging Face tokenizer") from None


def save_model(model, out: str | Path, tokenizer, meta: dict[str, Any]) -> None:
    """Write ``model`` to ``out`` atomically: safetensors weights, config, tokenizer, shardmix.json."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, meta)
    log.info("saved %s (%.2fM parameters)", out, count_params(model) / 1e6)


def count_params(model) -> int:
    """Parameters counted once even when tied."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def model_bytes(model) -> int:
    """Bytes of a model's parameters and buffers, a tensor shared by several names counted once."""
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in [*model.parameters(), *model.buffers()]}.values())
