"""The advise stage: every target's answer on one page, from made-up confirm outputs whose standings are known."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from pipeline import advise
from pipeline.lib import advice
from tests.test_advice import PROXY, TRAINED, figures


def confirm_output(trained, proxy, noise, same=None) -> dict:
    """What the confirm stage writes for one target: its methods (with ``trained_as``) and its verdict."""
    rec, conf = figures(trained, proxy, noise, same)
    return {**conf, "verdict": advice.summarise_target(rec, conf)}


def write_verdicts(tmp_path, outputs: dict[str, dict], targets=None):
    folder = tmp_path / "metrics" / "recommend"
    folder.mkdir(parents=True)
    for t, out in outputs.items():
        (folder / f"{t}.json").write_text(json.dumps(out))
    targets = list(outputs) if targets is None else targets
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"recommend": {"targets": {t: {"domains": {"x": 1.0}} for t in targets}}}))
    return folder, params


def run(tmp_path, folder, params) -> int:
    return advise.cli(["--params", str(params), "--verdicts", str(folder), "--out", str(tmp_path / "recommend.json"),
                       "--report", str(tmp_path / "recommend.md")])


def test_each_rival_stands_as_the_verdict_rules_say():
    # mixmin 0.0005 better than the answer (within the noise 0.002), best_candidate 0.0005 worse (within it),
    # best_single 0.01 worse (beaten, > 2 x noise), surrogate trained as the answer
    s = advise.target_summary(confirm_output(TRAINED, PROXY, 0.002, same={"surrogate": "recommended"}))
    assert s["standing"] == {"uniform": "beaten", "natural": "beaten", "best_single": "beaten",
                             "best_candidate": "within the noise", "mixmin": "within the noise", "surrogate": "same mixture"}
    assert s["same_as_recommended"] == ["surrogate"]
    assert s["test_ppl"] == pytest.approx(math.exp(4.85)) and s["margins"]["mixmin"] == pytest.approx(-0.0005)
    worse = advise.target_summary(confirm_output({**TRAINED, "mixmin": 4.84, "best_single": 4.853}, PROXY, 0.002))
    assert worse["standing"]["best_single"] == "not beaten by 2x the noise"  # 0.003 < 0.004
    assert worse["standing"]["mixmin"] == "ahead by more than the noise"  # 0.01 better than the answer
    assert worse["standing"]["best_candidate"] == "within the noise"  # 0.0005 worse
    clear = advise.target_summary(confirm_output({**TRAINED, "best_candidate": 4.856}, PROXY, 0.002))
    assert clear["standing"]["best_candidate"] == "beaten"  # 0.006 > the noise


def test_a_rival_of_the_answers_weights_is_the_same_mixture_not_a_margin():
    trained = {**TRAINED, "best_single": TRAINED["recommended"], "mixmin": TRAINED["recommended"]}
    s = advise.target_summary(confirm_output(trained, PROXY, 0.002, same={"best_single": "recommended", "mixmin": "recommended"}))
    assert s["standing"]["best_single"] == "same mixture" and s["standing"]["mixmin"] == "same mixture"
    row = next(line for line in advise.markdown(advise.summarise({"t": confirm_output(
        trained, PROXY, 0.002, same={"best_single": "recommended", "mixmin": "recommended"})})).splitlines() if line.startswith("| [t]"))
    assert row.count("same mixture") == 2 and "+0.0500 (beaten)" in row


def test_the_stage_writes_the_page_and_pools_the_targets(tmp_path):
    one = confirm_output(TRAINED, PROXY, 0.002, same={"surrogate": "recommended"})
    two = confirm_output({n: v + 0.3 for n, v in TRAINED.items()}, {n: v + 0.2 for n, v in PROXY.items()}, 0.001)
    folder, params = write_verdicts(tmp_path, {"one": one, "two": two})
    assert run(tmp_path, folder, params) == 0
    out = json.loads((tmp_path / "recommend.json").read_text())
    assert list(out["targets"]) == ["one", "two"]
    assert out["proxy_vs_trained"] == {"spearman": pytest.approx(advice.pooled_spearman([one["verdict"], two["verdict"]])),
                                       "models": 6 + 7}
    assert out["made_by"]["stage"] == "advise" and out["made_by"]["targets"] == ["one", "two"]
    md = (tmp_path / "recommend.md").read_text()
    assert "| [one](recommend/one.md) | a 70%, b 30% | 127.74 | 0.00200 |" in md
    assert "over the 13 distinct models trained for 2 targets" in md


def test_a_target_without_its_confirm_output_is_named_and_nothing_is_written(tmp_path, caplog):
    folder, params = write_verdicts(tmp_path, {"one": confirm_output(TRAINED, PROXY, 0.002)}, targets=["one", "missing"])
    assert run(tmp_path, folder, params) == 2
    assert "missing.json: no confirm output for target 'missing'" in caplog.text and "dvc repro confirm@missing" in caplog.text
    assert not (tmp_path / "recommend.json").exists() and not (tmp_path / "recommend.md").exists()


def test_a_file_that_is_not_confirms_is_refused(tmp_path, caplog):
    folder, params = write_verdicts(tmp_path, {"one": {"target": "one"}})
    assert run(tmp_path, folder, params) == 2
    assert "not the confirm stage's metrics" in caplog.text and not (tmp_path / "recommend.json").exists()


def test_no_targets_gives_a_page_that_says_so(tmp_path):
    folder, params = write_verdicts(tmp_path, {}, targets=[])
    assert run(tmp_path, folder, params) == 0
    assert "No targets" in (tmp_path / "recommend.md").read_text()
    assert json.loads((tmp_path / "recommend.json").read_text())["proxy_vs_trained"] == {"spearman": None, "models": 0}


def test_the_folder_advise_depends_on_is_in_git_even_without_targets():
    """dvc.yaml's advise stage depends on the folder confirm fills, one file per target; with
    ``recommend.targets: {}`` nothing fills it, and DVC refuses a missing dependency before the stage
    runs ("No such file or directory"), so git keeps the folder in every clone."""
    import subprocess

    from tests.test_layout import REPO, STAGES

    assert "metrics/recommend" in STAGES["advise"]["deps"]
    tracked = subprocess.run(["git", "ls-files", "metrics/recommend/.gitkeep"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout.strip() == "metrics/recommend/.gitkeep"
