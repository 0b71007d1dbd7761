"""params.yaml validation: every mistake is an error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.params.config import load_config
from pipeline.params.core import ConfigError
from tests.conftest import REPO, write_params


def test_repository_params_are_valid():
    cfg = load_config(REPO / "params.yaml")
    assert len(cfg.shards) >= 10
    assert len(cfg.prepare.domains) >= 10
    assert all(s.domain in cfg.prepare.domains for s in cfg.shards.values())


def _error(tmp_path: Path, params: dict) -> str:
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    return msg


def test_unknown_key_names_the_key(tmp_path, tiny_params):
    tiny_params["train"]["learning_rate"] = 1e-3
    msg = _error(tmp_path, tiny_params)
    assert "train.learning_rate" in msg and "unknown key" in msg


def test_wrong_type_names_key_and_value(tmp_path, tiny_params):
    tiny_params["train"]["tokens"] = "lots"
    msg = _error(tmp_path, tiny_params)
    assert "train.tokens" in msg and "'lots'" in msg


def test_unknown_domain_in_shard(tmp_path, tiny_params):
    tiny_params["prepare"]["local"] = []
    tiny_params["prepare"]["domains"] = ["news_bbc"]
    tiny_params["shards"] = {"x": {"domain": "nope"}}
    tiny_params["validation"] = {"mixtures": {}}
    msg = _error(tmp_path, tiny_params)
    assert "shards.x.domain" in msg and "nope" in msg and "prepare.domains" in msg


def test_empty_selections(tmp_path, tiny_params):
    p = dict(tiny_params, shards={})
    assert "no shards" in _error(tmp_path, p)
    p = dict(tiny_params, prepare={**tiny_params["prepare"], "domains": [], "local": []})
    assert "no corpus selected" in _error(tmp_path, p)


def test_bad_piece_and_negative_lr(tmp_path, tiny_params):
    tiny_params["shards"]["code"] = {"domain": "code", "piece": 2, "of": 2}
    assert "shards.code" in _error(tmp_path, tiny_params)
    tiny_params["shards"]["code"] = {"domain": "code"}
    tiny_params["train"]["lr"] = -1
    assert "train.lr" in _error(tmp_path, tiny_params)


def test_same_data_twice_and_bad_name(tmp_path, tiny_params):
    tiny_params["prepare"]["local"] = []
    tiny_params["prepare"]["domains"] = ["news_bbc"]
    tiny_params["shards"] = {"a": {"domain": "news_bbc"}, "b": {"domain": "news_bbc"}}
    tiny_params["validation"] = {"mixtures": {}}
    assert "same data" in _error(tmp_path, tiny_params)
    tiny_params["shards"] = {"a b": {"domain": "news_bbc"}}
    assert "not usable as a file name" in _error(tmp_path, tiny_params)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_mixture_with_unknown_shard_names_the_key(tmp_path, tiny_params):
    tiny_params["validation"]["mixtures"]["code+nope"] = {"shards": ["code", "nope"]}
    msg = _error(tmp_path, tiny_params)
    assert "validation.mixtures.code+nope.shards" in msg and "nope" in msg


@pytest.mark.parametrize("edit, key, words", [
    (lambda p: p["select"].update(proj_dim=0), "select.proj_dim", "greater than 0"),
    (lambda p: p["select"].update(k=0), "select.k", "greater than 0"),
    (lambda p: p["select"].update(models=["nope"]), "select.models", "unknown model 'nope'"),
    (lambda p: p["infer"].update(models=["nope"]), "infer.models", "unknown model 'nope'"),
    (lambda p: p["infer"]["probes"].update(code={"shards": ["code"]}), "infer.probes.code", "rename the probe"),
    (lambda p: p["infer"].update(present=0), "infer.present", "greater than 0"),
    (lambda p: p["infer"].update(calibration=[]), "infer.adam_power", "calibrate needs probes"),
    (lambda p: p["infer"].update(calibration=["code+prose"]), "infer.calibration", "not a probe of shards only"),
    (lambda p: p["infer"].update(adam_power=2), "infer.adam_power", "less than or equal to 1"),
])
def test_from_weights_sections_name_the_key(tmp_path, tiny_params, edit, key, words):
    edit(tiny_params)
    msg = _error(tmp_path, tiny_params)
    assert key in msg and words in msg, msg


@pytest.mark.parametrize("edit, key, words", [
    (lambda p: p.update(rank={"mixtures": {"x": {"shards": ["code", "nope"]}}}), "rank.mixtures.x.shards", "unknown shard(s) ['nope']"),
    (lambda p: p.update(rank={"sizes": [4]}), "rank.sizes", "[4] is more than the 3 shards"),
    (lambda p: p.update(rank={"sizes": [2, 2]}), "rank.sizes", "listed twice"),
    (lambda p: p.update(rank={"top": 0}), "rank.top", "greater than 0"),
])
def test_the_whole_file_check_names_a_bad_rank_key(tmp_path, tiny_params, edit, key, words):
    """The check stage (pipeline.params.config) stops dvc repro on these before any stage runs."""
    edit(tiny_params)
    msg = _error(tmp_path, tiny_params)
    assert key in msg and words in msg, msg


def test_a_probe_of_an_unknown_domain_names_the_key(tmp_path, tiny_params):
    tiny_params["prepare"] = {**tiny_params["prepare"], "local": [], "domains": ["news_bbc", "email"]}
    tiny_params["shards"] = {"news_bbc": {"domain": "news_bbc"}, "email": {"domain": "email"}}
    tiny_params["validation"] = {"mixtures": {}}
    tiny_params["recommend"]["targets"] = {}
    tiny_params["select"]["models"] = []
    tiny_params["infer"]["probes"] = {"p": {"shards": ["news_bbc", "nope"]}}
    msg = _error(tmp_path, tiny_params)
    assert "infer.probes.p.shards" in msg and "'nope'" in msg, msg


def test_the_sections_every_stage_knows_are_the_whole_files():
    from pipeline.params.config import Config
    from pipeline.params.core import SECTIONS

    assert set(Config.model_fields) == SECTIONS


@pytest.mark.parametrize("stage", ["select", "plan", "gather", "proxy", "infer", "recommend"])
def test_a_misspelt_section_stops_a_stage_run_by_hand(tmp_path, tiny_params, stage):
    """A stage reads only its sections; a misspelt one (``selct:``) would leave it on its defaults
    (select with no models wrote an empty data/select, plan deleted the plans, gather the targets)."""
    import importlib

    from pipeline.params.core import load

    typo = {"select": "selct", "plan": "validaton", "gather": "recomend", "proxy": "mixture", "infer": "infr",
            "recommend": "recomend"}[stage]
    section = {"plan": "validation", "gather": "recommend", "proxy": "mixtures"}.get(stage, stage)
    tiny_params[typo] = tiny_params.pop(section, {})
    path = write_params(tmp_path / "params.yaml", tiny_params)
    with pytest.raises(ConfigError) as e:
        load(path, importlib.import_module(f"pipeline.{stage}").Params)
    msg = str(e.value)
    assert str(path) in msg and f"{typo}: unknown top-level key" in msg and f"did you mean {section!r}" in msg, msg


def test_a_misspelt_section_exits_2_and_writes_nothing(tmp_path, tiny_params, caplog):
    from pipeline import select

    tiny_params["selct"] = tiny_params.pop("select", {})
    path = write_params(tmp_path / "params.yaml", tiny_params)
    out, picked = tmp_path / "select.json", tmp_path / "select"
    picked.mkdir()
    (picked / "kept.json").write_text("{}")
    rc = select.cli(["--params", str(path), "--base", str(tmp_path / "base"), "--models", str(tmp_path / "m"),
                     "--tokens", str(tmp_path / "tokens"), "--out", str(out), "--selected", str(picked)])
    assert rc == 2 and not out.exists() and [p.name for p in picked.iterdir()] == ["kept.json"]
    assert "selct: unknown top-level key" in caplog.text


def test_a_value_no_branch_of_a_union_takes_is_one_line_under_its_key(tmp_path, tiny_params):
    """pydantic names a union's branches in the error's location (``at_once.constrained-int``,
    ``at_once.literal['auto']``): the message keeps the file's key, once."""
    tiny_params["mixtures"]["at_once"] = 0
    msg = _error(tmp_path, tiny_params)
    lines = [ln for ln in msg.splitlines() if "at_once" in ln]
    assert lines == ["  mixtures.at_once: Input should be greater than or equal to 1 or Input should be 'auto' (got 0)"], msg


def test_a_check_across_sections_is_under_the_key_it_names(tmp_path, tiny_params):
    tiny_params["mixtures"]["explicit"] = {"mine": {"shards": ["cod"]}}
    msg = _error(tmp_path, tiny_params)
    assert "\n  mixtures.explicit.mine.shards: unknown shard(s) ['cod']" in msg and "top level" not in msg and "Value error" not in msg, msg


def test_keys_named_like_a_union_branch_keep_their_names(tmp_path, tiny_params):
    """pydantic's branch names (``int``, ``str``...) are told apart from the file's keys by the file
    itself: two shards named ``int`` and ``str`` are two lines, each under its own name."""
    tiny_params["shards"].update({"int": {"domain": "code", "piece": 0, "of": 0}, "str": {"domain": "prose", "piece": 0, "of": -5}})
    msg = _error(tmp_path, tiny_params)
    assert "\n  shards.int.of: " in msg and "(got 0)" in msg and "\n  shards.str.of: " in msg and "(got -5)" in msg, msg
