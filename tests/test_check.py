"""The check stage: what params.yaml names outside itself (the pretrained seed's folder, target files,
target domains) is checked before any stage runs, so that DVC removes no output for a typo."""

from __future__ import annotations

import copy
import json

from pipeline import check
from pipeline.params.core import read_params
from tests.conftest import REPO, TINY_PARAMS, write_params


def _run(tmp_path, monkeypatch, params: dict) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", params)
    rc = check.cli(["--params", "params.yaml", "--out", "data/params.json"])
    return rc, (tmp_path / "data" / "params.json").read_text() if (tmp_path / "data" / "params.json").exists() else ""


def test_the_repository_params_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert check.cli(["--out", str(tmp_path / "params.json")]) == 0
    assert json.loads((tmp_path / "params.json").read_text())["valid"] is True


def test_a_pretrained_seed_folder_that_is_not_there(tmp_path, monkeypatch, caplog):
    params = copy.deepcopy(TINY_PARAMS)
    params["base"].update(init="pretrained", pretrained_path="../my-model")
    rc, written = _run(tmp_path, monkeypatch, params)
    assert rc == 2 and written == ""
    assert "base.pretrained_path: ../my-model does not exist" in caplog.text and "under DVC, the repository root" in caplog.text
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    params["base"]["pretrained_path"] = "model.gguf"
    caplog.clear()
    assert _run(tmp_path, monkeypatch, params)[0] == 2 and "model.gguf is a file, not a model folder (a GGUF?" in caplog.text
    (tmp_path / "seed").mkdir()
    params["base"]["pretrained_path"] = "seed"
    caplog.clear()
    assert _run(tmp_path, monkeypatch, params)[0] == 2 and "seed has no config.json" in caplog.text
    (tmp_path / "seed" / "config.json").write_text("{}")
    assert _run(tmp_path, monkeypatch, params)[0] == 0


def test_a_target_file_that_is_not_there(tmp_path, monkeypatch, caplog):
    params = copy.deepcopy(TINY_PARAMS)
    params["recommend"]["targets"]["mine"] = {"file": "my_text.jsonl"}
    rc, written = _run(tmp_path, monkeypatch, params)
    assert rc == 2 and written == ""
    assert "recommend.targets.mine.file: my_text.jsonl not found" in caplog.text
    (tmp_path / "my_text.jsonl").mkdir()
    caplog.clear()
    assert _run(tmp_path, monkeypatch, params)[0] == 2 and "my_text.jsonl is a folder, not a file" in caplog.text


def test_a_misspelt_target_domain(tmp_path, monkeypatch, caplog):
    params = read_params(REPO / "params.yaml")
    name, spec = next(iter(params["recommend"]["targets"].items()))
    spec["domains"] = {"docs_pyhton": 1.0}
    rc, written = _run(tmp_path, monkeypatch, params)
    assert rc == 2 and written == ""
    assert f"recommend.targets.{name}.domains: unknown domain 'docs_pyhton'" in caplog.text and "bible_web" in caplog.text


def test_registry_sources_outside_the_corpus_are_targets(tmp_path, monkeypatch):
    from pipeline.sources import SOURCES

    params = read_params(REPO / "params.yaml")
    outside = sorted(set(SOURCES) - set(params["prepare"]["domains"]))
    assert outside, "every registry source is in the default corpus"
    params["recommend"]["targets"] = {"t": {"domains": {outside[0]: 1.0}}}
    assert _run(tmp_path, monkeypatch, params)[0] == 0


def test_a_local_corpus_leaves_domains_to_gather(tmp_path, monkeypatch):
    """A local corpus' domains are known only once prepare reads it: gather checks them."""
    params = copy.deepcopy(TINY_PARAMS)
    params["recommend"]["targets"] = {"t": {"domains": {"not_read_yet": 1.0}}}
    assert _run(tmp_path, monkeypatch, params)[0] == 0
