"""Shared fixtures: a tiny corpus of real text found on any Python machine, and tiny params.

The corpus needs no network: three domains built from the Python installation itself
(:func:`pipeline.bench._fixtures.stdlib_corpus_rows`: ``code``, ``prose``, ``legal``), written as a
JSONL file the pipeline reads as the user's own corpus.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.bench._fixtures import stdlib_corpus_rows
from pipeline.lib.runtime import interpreter_first_path

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the longest first (``@pytest.mark.slow(minutes=...)``, 1 where unsaid),
    the rest in their order: with ``-n auto --dist worksteal`` (``make test``) a worker starts
    the longest test at once and the others take the short ones from its queue, so the run lasts
    about half the work rather than the longest test plus whatever was queued before it."""
    def minutes(item) -> float:
        marks = list(item.iter_markers("slow"))
        return max((m.kwargs.get("minutes", 1) for m in marks), default=0)

    items.sort(key=lambda item: -minutes(item))  # stable: the same order on every worker


@pytest.fixture(scope="session")
def corpus_rows() -> list[dict]:
    rows = stdlib_corpus_rows()
    assert {r["domain"] for r in rows} == {"code", "prose", "legal"}, "the test corpus needs all three domains"
    return rows


TINY_PARAMS = {
    "seed": 0,
    "threads": 1,
    "device": "cpu",
    "precision": "fp32",
    "save_dtype": "float32",
    "prepare": {"domains": [], "local": [{"path": "corpus.jsonl", "text_field": "text", "domain_field": "domain", "id_field": "id"}],
                "max_mb": 0.3, "min_chars": 100, "eval_fraction": 0.1, "base_fraction": 0.3},
    "tokenize": {"vocab_size": 512, "sample_mb_per_domain": 0.1, "eval_tokens": 1024, "num_proc": 1},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128},
    "base": {"init": "scratch", "pretrained_path": None, "tokens": 8192, "lr": 3e-3, "batch_size": 4, "seq_len": 64, "log_every": 4},
    "train": {"tokens": 2048, "lr": 1e-3, "batch_size": 4, "seq_len": 64, "log_every": 2},
    "shards": {"code": {"domain": "code"}, "prose": {"domain": "prose"}, "legal": {"domain": "legal"}},
    "eval": {"domains": None, "seq_len": 64, "batch_size": 8},
    "mixtures": {"weighting": "tokens", "subsets": [{"k": 2}]},
    "report": {"bootstrap": 1000},
    "rank": {"top": 10, "sizes": None, "mixtures": {}},
    "recommend": {"targets": {"prose": {"domains": {"prose": 1.0}}}, "budget": None, "dev_fraction": 0.5,
                  "max_tokens": 1024, "min_doc_tokens": 64, "max_mb": 1.0, "steps": 6, "tol": 1e-5, "lr": 2.0, "restarts": 0, "max_shards": None, "scale": 2.0},
    "validation": {"mixtures": {"code+prose": {"shards": ["code", "prose"]}, "prose+legal": {"shards": ["prose", "legal"]},
                                "code+prose+legal": {"shards": ["code", "prose", "legal"]}}},
    "infer": {"probes": {"skewed": {"shards": ["code", "prose"], "ratios": [3, 1]}, "cal": {"shards": ["prose", "code"], "ratios": [3, 1]}},
              "models": None, "moment_batches": 2, "adam_power": "calibrate", "calibration": ["cal"], "present": 0.05,
              "max_unexplained": 0.6, "max_coords": 4000000},
    "select": {"models": ["code+prose"], "pool_per_domain": 8, "k": 8, "gradients": "linear", "proj_dim": 4},
}


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def project_env() -> dict[str, str]:
    """Environment for commands run in a test project: this venv's python first on PATH, the
    repository's kernel build cache (no rebuild per copy), offline hubs."""
    return {
        **os.environ,
        "PATH": interpreter_first_path(),
        "SHARDMIX_EXTENSIONS_DIR": os.environ.get("SHARDMIX_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")),
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }


def run_module(module: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def project(tmp_path: Path, corpus_rows, tiny_params) -> Path:
    """The repository's pipeline in a fresh git + DVC project with the tiny corpus and params."""
    return make_project(tmp_path / "proj", corpus_rows, tiny_params)


def make_project(root: Path, corpus_rows: list[dict], params: dict) -> Path:
    """``root``: the repository's pipeline in a fresh git + DVC project with ``corpus_rows`` and ``params``."""
    root.mkdir()
    # The code is linked, not copied: the kernels then resolve to the repository's csrc/ and reuse
    # its cached build instead of compiling again for every test project.
    for code in ("pipeline", "csrc"):
        (root / code).symlink_to(REPO / code, target_is_directory=True)
    for f in ("dvc.yaml", ".gitignore", ".dvcignore", "metrics/recommend/.gitkeep"):  # what a clone has (advise's folder dep)
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, root / f)
    write_jsonl(root / "corpus.jsonl", corpus_rows)
    write_params(root / "params.yaml", params)
    env = project_env()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    for args in (["init", "-q"], ["config", "core.analytics", "false"], ["config", "cache.type", "hardlink,symlink"]):
        dvc(root, *args)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)  # DVCLive needs a commit
    subprocess.run(["git", "commit", "-qm", "test project"], cwd=root, check=True, env=env)
    return root


@contextlib.contextmanager
def edited_params(root: Path, edit):
    """``root``'s params.yaml with ``edit(params)`` applied for the ``with`` block, then restored."""
    path = root / "params.yaml"
    text = path.read_text()
    params = yaml.safe_load(text)
    edit(params)
    write_params(path, params)
    try:
        yield
    finally:
        path.write_text(text)


def dvc(root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env={**project_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=project_env(), check=True, capture_output=True, timeout=60)
