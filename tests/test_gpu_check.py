"""The prepared GPU check, in its CPU mode at toy sizes: the same steps the GPU run takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow(minutes=4)


def test_gpu_check_cpu_tiny_passes_and_reports_every_step(tmp_path: Path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--cpu", "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["mode"] == "cpu" and report["tiny"]
    steps = report["steps"]
    assert list(steps) == ["env", "build", "tests", "merge", "xent", "seed", "proxy", "pipeline"]
    assert all(s["rc"] == 0 for s in steps.values()), steps
    assert steps["tests"]["tests"]["passed"] > 0 and not steps["tests"]["failed_tests"]
    assert steps["build"]["result"]["ok"] and steps["env"]["result"]["device"] == "cpu"
    assert steps["merge"]["result"]["fused_gbps"] > 0 and steps["xent"]["result"]["max_abs_err"] < 1e-4
    assert steps["seed"]["result"]["weights"] == "random tiny Llama"
    proxy = steps["proxy"]["result"]
    assert proxy["device"] == "cpu" and proxy["max_ppl_rel_diff_vs_ours"]["naive"] < 1e-3 and proxy["ours_s_per_mixture"] > 0
    pipe = steps["pipeline"]["result"]
    assert pipe["ok"] and [s["stage"] for s in pipe["stages"]][:3] == ["check", "prepare", "tokenize"]
    assert pipe["stages"][-1]["stage"] == "report_weights" and "rank" in [s["stage"] for s in pipe["stages"]]
    assert len(pipe["stages"]) == 5 + 4 + 4 + 3 + 2 * 2 + 3 + 1 + 1 + 3  # proxy, plan, rank; ...; advise; infer, select, report_weights
    assert set(pipe["own_domain_ppl_ratio"]) == {"code_a", "code_b", "prose", "legal"}
    assert all(0 < r < 1 for r in pipe["own_domain_ppl_ratio"].values())  # every shard learned its domain
    assert pipe["proxy_cost"]["mixtures"] == 6 and set(pipe["report"]) == {"merged", "mean_shard_ppl", "best_shard", "ensemble"}
    assert report["figures"]["train_tokens_per_s_shard"] > 0 and report["figures"]["proxy_s_per_mixture"] > 0
    assert "===== tests" in (tmp_path / "gpu_check.log").read_text()
