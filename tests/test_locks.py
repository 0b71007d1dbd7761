"""Locks on user errors: each case exits non-zero (2 for a user error) with a message that names the
file, the key or row, and the fix, and leaves nothing half-written (no output, no ``.*.tmp-*``).

Cases 1-5 run one stage in a bare folder (no git, no DVC): the params file is checked before any
work starts. Cases 6-9 share one tiny DVC project, reproduced once up to the proxy stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_PARAMS, dvc, edited_params, make_project, project_env, run_module, write_jsonl, write_params

PREPARE = ("pipeline.prepare", "--out", "data/corpus", "--metrics", "metrics/corpus.json")
TMP_NAME = re.compile(r"^\..+\.tmp-")


def leftovers(root: Path) -> list[str]:
    """Temporaries (``.NAME.tmp-*``) anywhere under ``root``, links (the code) not followed."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", ".dvc")]
        found += [str(Path(dirpath, n).relative_to(root)) for n in dirs + files if TMP_NAME.match(n)]
    return found


@pytest.fixture
def workdir(tmp_path: Path, corpus_rows, tiny_params) -> Path:
    """The pipeline's code, the tiny corpus and params; no git, no DVC (enough for one stage)."""
    root = tmp_path / "work"
    root.mkdir()
    (root / "pipeline").symlink_to(REPO / "pipeline", target_is_directory=True)
    write_jsonl(root / "corpus.jsonl", corpus_rows)
    write_params(root / "params.yaml", tiny_params)
    return root


def assert_prepare_wrote_nothing(root: Path) -> None:
    assert not (root / "data/corpus").exists() and not (root / "metrics/corpus.json").exists()
    assert leftovers(root) == []


# --- 1, 2: the user's own corpus ---------------------------------------------------------------


def test_local_jsonl_invalid_utf8_names_file_and_line(workdir: Path):
    corpus = workdir / "corpus.jsonl"
    lines = corpus.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6][:60] + b"\xff\xfe" + lines[6][60:]  # inside the text of row 6, line 7
    corpus.write_bytes(b"".join(lines))
    proc = run_module(*PREPARE, cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "corpus.jsonl: line 7: not valid UTF-8" in proc.stderr and "save the file as UTF-8" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_prepare_wrote_nothing(workdir)


def test_local_rows_without_text_are_an_error_not_dropped(workdir: Path, corpus_rows):
    rows = [dict(r) for r in corpus_rows]
    del rows[3]["text"]  # no text field
    rows[8]["text"] = None  # "text": null
    write_jsonl(workdir / "corpus.jsonl", rows)
    proc = run_module(*PREPARE, cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stderr
    want = (f"corpus.jsonl: 2 of {len(rows)} rows have no text (field 'text' absent or null): row 3 (line 4), "
            f"row 8 (line 9). Fix: add the text to these rows, or remove the rows from the file")
    assert want in proc.stderr, proc.stderr
    assert_prepare_wrote_nothing(workdir)


# --- 3, 4, 5: params.yaml ------------------------------------------------------------------------


PROXY = ("pipeline.proxy", "--base", "models/base", "--shards-dir", "models/shards", "--tokens", "data/tokens",
         "--out", "metrics/proxy.json", "--plot", "plots/proxy.csv")


def assert_proxy_wrote_nothing(root: Path) -> None:
    assert not (root / "metrics").exists() and not (root / "plots").exists()
    assert leftovers(root) == []


@pytest.mark.parametrize("section", ["validation.mixtures", "mixtures.explicit"])
def test_mixture_named_twice_is_a_config_error_naming_key_and_line(workdir: Path, tiny_params, section: str):
    tiny_params["mixtures"]["explicit"] = {"favourite": {"shards": ["code", "legal"]}}
    tiny_params["validation"]["mixtures"]["favourite"] = {"shards": ["code", "legal"]}
    text = yaml.safe_dump(tiny_params, sort_keys=False)
    # the same name again right after the first, in the section under test: YAML keeps the last one
    head, sub = section.split(".")
    start = text.index(f"  {sub}:\n", text.index(f"\n{head}:\n"))
    first = text.index("\n    favourite:\n", start) + 1
    text = text[:first] + "    favourite:\n      shards:\n      - prose\n" + text[first:]
    (workdir / "params.yaml").write_text(text)
    line = text[:first].count("\n") + 1  # where the first one was written
    proc = run_module(*PROXY, cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "params.yaml" in proc.stderr and f"key 'favourite' appears twice (first at line {line})" in proc.stderr, proc.stderr
    assert "remove or rename one of them" in proc.stderr
    assert_proxy_wrote_nothing(workdir)


def test_ratios_whose_sum_overflows_are_a_config_error(workdir: Path, tiny_params):
    tiny_params["mixtures"]["explicit"] = {"heavy": {"shards": ["code", "prose"], "ratios": [1e308, 1e308]}}
    write_params(workdir / "params.yaml", tiny_params)
    proc = run_module(*PROXY, cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "params.yaml" in proc.stderr and "mixtures.explicit.heavy" in proc.stderr, proc.stderr
    assert "sum to inf" in proc.stderr and "scale them down" in proc.stderr, proc.stderr
    assert_proxy_wrote_nothing(workdir)


def test_boolean_token_count_is_an_error_not_one_token(workdir: Path, tiny_params):
    tiny_params["train"]["tokens"] = True
    write_params(workdir / "params.yaml", tiny_params)
    proc = run_module("pipeline.train", "--shard", "code", "--base", "models/base", "--tokens", "data/tokens",
                      "--out", "models/shards/code", "--live", "metrics/train/code", cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "params.yaml" in proc.stderr and "train.tokens" in proc.stderr, proc.stderr
    assert "is a boolean" in proc.stderr and "write a number" in proc.stderr, proc.stderr
    assert not (workdir / "models").exists() and not (workdir / "metrics").exists() and leftovers(workdir) == []


# --- 6-9: a reproduced tiny project ----------------------------------------------------------------


@pytest.fixture(scope="module")
def repro(tmp_path_factory, corpus_rows) -> Path:
    """A tiny DVC project reproduced up to the proxy stage: two shards (code, prose), fp32."""
    params = json.loads(json.dumps(TINY_PARAMS))
    params["shards"] = {"code": {"domain": "code"}, "prose": {"domain": "prose"}}
    params["validation"] = {"mixtures": {"code+prose": {"shards": ["code", "prose"]}}}
    root = make_project(tmp_path_factory.mktemp("locks") / "proj", corpus_rows, params)
    dvc(root, "repro", "proxy", "evaluate_base")
    return root


@pytest.mark.slow
def test_evaluate_truncated_checkpoint_exits_2_naming_the_file(repro: Path, tmp_path: Path):
    model = tmp_path / "trunc"
    shutil.copytree(repro / "models/base", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    proc = run_module("pipeline.evaluate", "--model", str(model), "--tokens", "data/tokens", "--out", str(out / "trunc.json"),
                      cwd=repro, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{weights}: truncated" in proc.stderr and "rerun the stage that makes it" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "trunc.json").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_fp16_shard_beside_fp32_names_the_precision(repro: Path, tmp_path: Path):
    import torch
    from safetensors.torch import load_file, save_file

    shards = tmp_path / "shards"
    for name in ("code", "prose"):
        shutil.copytree(repro / "models/shards" / name, shards / name)
    weights = shards / "prose/model.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    out = tmp_path / "out"
    proc = run_module("pipeline.proxy", "--base", "models/base", "--shards-dir", str(shards), "--tokens", "data/tokens",
                      "--out", str(out / "proxy.json"), "--plot", str(out / "proxy.csv"), cwd=repro, check=False)
    assert proc.returncode == 2, proc.stderr
    assert str(weights) in proc.stderr and "F16" in proc.stderr and "F32" in proc.stderr, proc.stderr
    assert "saved in different precisions" in proc.stderr and "save every shard in the seed's precision" in proc.stderr
    assert not out.exists() and leftovers(tmp_path) == []


# The train stage itself, paused inside its model's temporary folder (after the last file is written
# there, before the rename) so that the SIGKILL lands there every time, not by luck of timing.
PAUSED_TRAIN = """
import importlib, runpy, sys, time
models = importlib.import_module(sys.argv[1])
write_json = models.write_json

def write_then_pause(path, obj):
    write_json(path, obj)
    if path.name == "shardmix.json":
        print("PAUSED", flush=True)
        time.sleep(600)

models.write_json = write_then_pause
sys.argv[1:2] = []
runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
"""


def kill_train_while_saving(root: Path, shard: str, models_module: str = "pipeline.lib.models") -> int:
    """Start ``pipeline.train --shard SHARD``, SIGKILL it inside its model's temporary folder; its pid."""
    cmd = [sys.executable, "-c", PAUSED_TRAIN, models_module, "--shard", shard, "--base", "models/base",
           "--tokens", "data/tokens", "--out", f"models/shards/{shard}", "--live", f"metrics/train/{shard}"]
    with open(root / f"train-{shard}.log", "w+") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=project_env(), stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            paused = proc.stdout.readline().strip() == "PAUSED"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
        log.seek(0)
        assert paused, f"the train stage ended before saving its model:\n{log.read()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


@pytest.mark.slow
def test_sigkilled_stage_temporary_is_ignored_by_dvc_and_removed_by_the_next_run(repro: Path):
    model = repro / "models/shards/code/model.safetensors"
    before = model.read_bytes()
    pid = kill_train_while_saving(repro, "code")
    left = [p.name for p in (repro / "models/shards").iterdir() if p.name.startswith(f".code.tmp-{pid}-")]
    assert len(left) == 1 and (repro / "models/shards" / left[0] / "model.safetensors").is_file(), left
    assert model.read_bytes() == before  # the model in place is untouched

    # (a) DVC does not hash it: the proxy (models/shards is its dependency) and the shard are not stale
    status = dvc(repro, "status", "--json", "proxy", "train@code").stdout
    assert json.loads(status) == {}, status

    # (b) the next run of the stage removes the temporaries the killed one left
    dvc(repro, "repro", "--force", "--single-item", "train@code")
    assert leftovers(repro / "models") == [] and leftovers(repro / "metrics") == []


@pytest.mark.slow
def test_stage_failing_on_params_under_dvc_keeps_its_previous_metrics(repro: Path):
    metrics = repro / "metrics/eval/base.json"
    before = metrics.read_text()
    with edited_params(repro, lambda p: p["eval"].update(domains=["no_such_domain"])):  # checked by the stage when it runs
        proc = dvc(repro, "repro", "evaluate_base", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "eval.domains" in out and "no_such_domain" in out and "available" in out, out
    assert metrics.is_file() and metrics.read_text() == before
    assert leftovers(repro / "metrics") == []


@pytest.mark.slow
def test_params_mistake_stops_dvc_repro_at_the_check_stage_before_any_output_is_removed(repro: Path):
    """The check stage validates the whole file first: a mistake in the section of a stage that
    would rerun (train) stops `dvc repro` before DVC removes that stage's outputs."""
    model = repro / "models/shards/code/model.safetensors"
    before = model.read_bytes()
    with edited_params(repro, lambda p: p["train"].update(lr=-1.0)):
        proc = dvc(repro, "repro", "train@code", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "failed to reproduce 'check'" in out and "train.lr" in out and "greater than 0" in out, out
    assert "Running stage 'train@code'" not in out
    assert model.is_file() and model.read_bytes() == before
    assert json.loads(dvc(repro, "status", "--json", "train@code").stdout).keys() <= {"check"}
