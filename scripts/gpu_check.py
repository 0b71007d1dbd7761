"""The prepared GPU check: build the CUDA kernels, test them against the reference, benchmark them.

``bash scripts/gpu_check.sh`` on a machine with one NVIDIA GPU (written for the device tool's H200:
16 cores, Python 3.12 with torch 2.11+cu130, no package registry), or ``--cpu --tiny`` anywhere
(the test suite runs that mode, so the script cannot rot). Steps, each in its own process so that
one failing does not hide the others:

1. ``env``: torch and CUDA versions, the device, its memory.                      (seconds)
2. ``build``: ``python -m pipeline.kernels.build --strict`` (CUDA + C++ kernels).   (~1-3 min on 16 cores)
3. ``kernels``: ``pytest tests/test_kernels.py``, the CUDA cases (``-k cuda``; ``generic`` on the
   CPU): every kernel against the pure-torch reference, aliasing, opcheck.        (~1 min)
4. ``merge``: ``python -m pipeline.bench merge --device cuda --json``: GB/s against the
   device's own copy bandwidth, measured in the same run.                         (~30 s)
5. ``xent``: ``python -m pipeline.bench xent --device cuda --json``: streaming cross-entropy
   against full logits (time, peak memory) and the same GEMM alone (TFLOP/s).     (~30 s)

Budget: under 10 minutes on one H200 (each step has a timeout; the whole run ~5 min). Writes
``$OUT/gpu_check.json`` (every step's exit status, seconds and figures; ``ok`` when all passed)
and ``$OUT/gpu_check.log`` (their output), ``$OUT`` defaulting to ``.cache/gpu_check/``. Exits 0
only when every step passed. Not yet here (issue 13): the proxy benchmark and a mini pipeline on
the GPU, which need the device and precision settings in the stages.
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
    if tiny:
        merge += ["--quick", "--numel", str(1 << 18), "-K", "3", "--reps", "2"]
        xent += ["--quick", "-T", "128", "-D", "64", "-V", "1000", "--reps", "2"]
    pick = "generic" if cpu else "cuda"
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests/test_kernels.py"), "-k", pick]
    if tiny:
        tests += ["-x", "-k", f"{pick} and (shapes or aliases)"]
    return [("env", [py, "-c", env_code], 60), ("build", [py, "-m", "pipeline.kernels.build", "--strict", "--json"], 900),
            ("kernels", tests, 600), ("merge", merge, 300), ("xent", xent, 300)]


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
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"{(e.stdout or b'')!s}\n{(e.stderr or b'')!s}\ntimed out after {timeout} s"
    seconds = round(time.perf_counter() - t0, 1)
    log.write(f"===== {name} (rc {rc}, {seconds} s): {' '.join(cmd)}\n{out}\n")
    log.flush()
    rec: dict = {"rc": rc, "seconds": seconds}
    if name == "kernels":
        rec["tests"] = pytest_counts(out)
        rec["failed_tests"] = re.findall(r"^FAILED (\S+)", out, flags=re.M)[:20]
    else:
        rec["result"] = last_json(out)
    if rc != 0:
        rec["tail"] = out.strip().splitlines()[-15:]
    print(f"gpu_check: {name}: rc {rc} in {seconds} s", flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run the steps on the CPU (no GPU needed)")
    p.add_argument("--tiny", action="store_true", help="toy sizes: seconds, not minutes")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or REPO / ".cache" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    if not args.cpu:
        os.environ.setdefault("SHARDMIX_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions_gpu"))
    t0 = time.perf_counter()
    report: dict = {"mode": "cpu" if args.cpu else "cuda", "tiny": args.tiny, "host": os.uname().nodename, "steps": {}}
    with open(out / "gpu_check.log", "w") as log:
        for name, cmd, timeout in steps(args.cpu, args.tiny):
            report["steps"][name] = run_step(name, cmd, timeout, log)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    kernels = report["steps"]["kernels"].get("tests", {})
    report["ok"] = all(s["rc"] == 0 for s in report["steps"].values()) and kernels.get("passed", 0) > 0
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "gpu_check.json")
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
