"""Training curves without DVC: PlainCurves writes the files DVCLive writes, for the same calls."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.lib.curves import STEP_SIGNAL_FILE, PlainCurves, curves


def committed_repository(path: Path) -> None:
    """A git repository with one commit at ``path`` (DVCLive needs one)."""
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"], check=True)


def log_a_run(live) -> None:
    with live:
        live.log_params({"tokens": 4096, "lr": 0.001, "steps": 3})
        for step in range(3):
            live.log_metric("loss", 5.0 / (step + 1))
            live.log_metric("lr", 0.001)
            live.next_step()
        live.summary["final_loss"] = 1.75


def test_plain_curves_write_what_dvclive_writes(tmp_path: Path):
    from dvclive import Live

    committed_repository(tmp_path)
    log_a_run(Live(dir=str(tmp_path / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None))
    log_a_run(PlainCurves(tmp_path / "plain"))
    files = {p.relative_to(tmp_path / "dvclive") for p in (tmp_path / "dvclive").rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    assert files == {Path("metrics.json"), Path("params.yaml"), Path("plots/metrics/loss.tsv"), Path("plots/metrics/lr.tsv")}
    for f in files:
        a, b = (tmp_path / "dvclive" / f).read_text(), (tmp_path / "plain" / f).read_text()
        if f.suffix == ".json":
            assert json.loads(a) == json.loads(b), f
        elif f.suffix == ".yaml":
            assert yaml.safe_load(a) == yaml.safe_load(b), f
        else:
            assert a == b, f


def test_training_without_dvclive_writes_the_curves_and_needs_no_git(tmp_path: Path, monkeypatch):
    """On a machine without DVC (a GPU host, a cluster node), a stage's training still logs its curves."""
    import sys

    from pipeline.lib.device import CPU
    from tests.test_device import train

    monkeypatch.setitem(sys.modules, "dvclive", None)  # import dvclive -> ImportError
    monkeypatch.chdir(tmp_path)  # no git repository here
    from pipeline.lib.curves import curves

    assert isinstance(curves(tmp_path / "x"), PlainCurves)
    _, summary = train(tmp_path, CPU, "plain")
    metrics = json.loads((tmp_path / "live-plain" / "metrics.json").read_text())
    assert metrics["final_loss"] == summary["final_loss"] and metrics["step"] == 7  # 32 steps, a point every 4
    assert len((tmp_path / "live-plain/plots/metrics/loss.tsv").read_text().splitlines()) == 1 + 8


def test_two_jobs_that_end_together_in_one_repository_both_finish(tmp_path: Path, monkeypatch):
    """DVCLive's end checks that the repository's step-signal file exists, then removes it. A job beside it
    (pipeline.launch --jobs 2) can remove it in between: that must not fail the job whose training is done."""
    committed_repository(tmp_path)
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    exists, raced = os.path.exists, []

    def the_other_job_removes_it_right_after_the_check(path) -> bool:
        found = exists(path)
        if found and Path(path).name == STEP_SIGNAL_FILE:
            os.remove(path)
            raced.append(path)
        return found

    first, second = curves(tmp_path / "a"), curves(tmp_path / "b")
    with first, second:
        for live in (first, second):
            live.log_metric("loss", 1.0)
            live.next_step()
        assert (tmp_path / ".dvc/tmp/exps/run" / STEP_SIGNAL_FILE).exists()
        monkeypatch.setattr(os.path, "exists", the_other_job_removes_it_right_after_the_check)
    assert raced, "the race was not reproduced: DVCLive no longer checks for the signal file before removing it"
    for name in ("a", "b"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["loss"] == 1.0


def test_other_missing_files_still_fail_the_job(tmp_path: Path, monkeypatch):
    from dvclive import Live

    committed_repository(tmp_path)
    monkeypatch.chdir(tmp_path)

    def lost(self):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "a" / "metrics.json"))

    monkeypatch.setattr(Live, "sync", lost)
    live = curves(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        with live:
            live.log_metric("loss", 1.0)
