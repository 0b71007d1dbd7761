"""The prepared GPU check, in its CPU mode at toy sizes: the same steps the GPU run takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_gpu_check_cpu_tiny_passes_and_reports_every_step(tmp_path: Path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--cpu", "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["mode"] == "cpu" and report["tiny"]
    steps = report["steps"]
    assert list(steps) == ["env", "build", "kernels", "merge", "xent"]
    assert all(s["rc"] == 0 for s in steps.values()), steps
    assert steps["kernels"]["tests"]["passed"] > 0 and not steps["kernels"]["failed_tests"]
    assert steps["build"]["result"]["ok"] and steps["env"]["result"]["device"] == "cpu"
    assert steps["merge"]["result"]["fused_gbps"] > 0 and steps["xent"]["result"]["max_abs_err"] < 1e-4
    assert "===== kernels" in (tmp_path / "gpu_check.log").read_text()
