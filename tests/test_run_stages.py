"""scripts/run_stages.py: dvc.yaml's stages expanded as DVC expands them, in an order that works."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("run_stages", REPO / "scripts" / "run_stages.py")
run_stages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_stages)


def dvc_commands(root: Path) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: " ".join(s.cmd.split()) for s in repo.index.stages}


@pytest.mark.parametrize("params", ["tiny", "default"])
def test_the_expansion_is_dvcs(project: Path, params: str):
    if params == "default":
        (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    mine = {s["name"]: s["cmd"] for s in run_stages.expand(project / "dvc.yaml", project / "params.yaml")}
    assert mine == dvc_commands(project)
    names = list(mine)
    assert names.index("check") == 0 and names[-1] == "report_weights" and names.index("plan") < names.index(next(n for n in names if n.startswith("train_mixture@")))


def test_an_order_that_reads_before_it_makes_is_refused(tmp_path: Path):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = spec["stages"]
    spec["stages"] = {"report": stages["report"], **{k: v for k, v in stages.items() if k != "report"}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with pytest.raises(ValueError, match=r"stage report reads metrics/proxy.json, which proxy makes later: reorder dvc.yaml"):
        run_stages.expand(tmp_path / "dvc.yaml", tmp_path / "params.yaml")


def test_an_undefined_variable_is_named(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  a:\n    cmd: python -m x --n ${nope.deeper}\n")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    with pytest.raises(KeyError, match=r"\$\{nope.deeper\}: not defined"):
        run_stages.expand(tmp_path / "dvc.yaml", tmp_path / "params.yaml")
