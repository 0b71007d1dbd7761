"""The real pipeline end to end: `dvc repro` on a tiny config, per-shard invalidation, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.lib.mixfit import POWERS
from tests.conftest import dvc, git, run_module, write_jsonl, write_params

pytestmark = pytest.mark.slow

PREPARE_ARGS = ("--out", "data/corpus", "--metrics", "metrics/corpus.json")


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def git_status(root: Path) -> str:
    import subprocess

    return subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def git_diff(root: Path) -> str:
    """What changed in tracked files (dvc.lock: the stages whose outputs came out with other hashes)."""
    import subprocess

    return subprocess.run(["git", "diff", "--stat", "-p", "--", "dvc.lock"], cwd=root, capture_output=True, text=True, check=True).stdout[-4000:]


# declared params a stage reads only in a setting the tiny config does not use
READ_ONLY_WHEN = {"tokenize": {"base.pretrained_path"},  # base.init: pretrained (tests/test_recipes.py)
                  "check": {"base.pretrained_path", "prepare.domains"},  # base.init: pretrained; a corpus of registry sources (tests/test_check.py)
                  "gather": {"prepare.min_chars"}}  # a target of a registry source outside the corpus (tests/test_gather.py)


def assert_params_declared_as_read(project: Path, trace: Path) -> None:
    """Each stage's ``params:`` in dvc.yaml (as dvc.lock records them) are exactly the params keys it
    read while it ran (pipeline/lib/paramtrace.py): nothing read that a change would not rerun it
    for, nothing declared that it never reads."""
    read: dict[str, set[str]] = {}
    for line in trace.read_text().splitlines():
        rec = json.loads(line)
        prog = Path(rec["argv"][0]).with_suffix("").parts
        module = ".".join(prog[prog.index("pipeline"):])
        read[" ".join(["python", "-m", module, *rec["argv"][1:]])] = set(rec["reads"])
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for name, st in stages.items():
        reads = read[" ".join(st["cmd"].split())]
        declared = set(st.get("params", {}).get("params.yaml", {}))
        undeclared = {r for r in reads if not any(r == d or r.startswith(d + ".") for d in declared)}
        unread = {d for d in declared if not any(r == d or r.startswith(d + ".") or d.startswith(r + ".") for r in reads)}
        unread -= READ_ONLY_WHEN.get(name, set())
        assert not undeclared and not unread, f"dvc.yaml stage {name}: reads undeclared {sorted(undeclared)}, declares unread {sorted(unread)}"


def assert_recommend_outputs(project: Path, target: str) -> None:
    """gather, recommend and confirm for a target: dev and test apart, every method trained and judged."""
    t = json.loads((project / f"data/targets/{target}/target.json").read_text())
    assert set(t["domains"]) == {"prose"} and abs(sum(e["weight"] for e in t["domains"].values()) - 1) < 1e-9
    rec = json.loads((project / f"data/recommend/{target}.json").read_text())
    assert set(rec["methods"]) == {"uniform", "natural", "best_single", "best_candidate", "mixmin", "surrogate", "recommended"}
    for m in rec["methods"].values():
        assert abs(sum(m["weights"].values()) - 1) < 1e-4 and min(m["weights"].values()) >= 0
    assert rec["methods"]["recommended"]["dev"] <= min(m["dev"] for m in rec["methods"].values()) + 1e-12
    conf = json.loads((project / f"metrics/recommend/{target}.json").read_text())
    assert set(conf["methods"]) == set(rec["methods"]) and conf["noise"] >= 0
    assert set(conf["verdict"]["beats"]) == {"uniform", "natural", "best_single"}
    others = {n for n, m in conf["methods"].items() if m["trained_as"] != conf["methods"]["recommended"]["trained_as"]}
    assert set(conf["documents"]) == others  # every rival trained apart from the answer has its interval over documents
    for n in others:
        d = conf["documents"][n]
        assert d["low"] <= d["high"] and abs(d["margin"] - (conf["methods"][n]["test"] - conf["methods"]["recommended"]["test"])) < 1e-9
    assert f"**To do well on {target}, train on:**" in (project / f"reports/recommend/{target}.md").read_text()
    assert (project / f"plots/recommend/{target}.png").stat().st_size > 0


def assert_from_weights_outputs(project: Path) -> None:
    """infer estimated every truth and the probe with both methods; select picked k examples per method."""
    inf = json.loads((project / "metrics/infer.json").read_text())
    assert set(inf["models"]) == {"code+prose", "prose+legal", "code+prose+legal", "skewed", "cal"}
    assert inf["models"]["cal"]["kind"] == "calibration" and inf["summary"]["calibration"]["adam"]["models"] == 1
    errors = inf["calibration"]["mean_l1_by_power"]
    assert len(errors) == 11 and errors[str(inf["adam_power"])] == min(errors.values())
    skewed = inf["models"]["skewed"]
    assert skewed["kind"] == "probe" and skewed["true"] == pytest.approx({"code": 0.75, "prose": 0.25}, abs=1e-6)
    for row in inf["models"].values():
        for method in ("adam", "plain"):
            assert sum(row[method]["weights"].values()) == pytest.approx(1.0, abs=1e-5) and 0 <= row[method]["l1"] <= 2
    assert inf["summary"]["validation"]["adam"]["models"] == 3 and inf["summary"]["probes"]["adam"]["models"] == 1
    sel = json.loads((project / "metrics/select.json").read_text())
    assert set(sel["summary"]["precision"]) == {"select", "select_batched", "topk_cosine", "lowest_loss", "random"}
    assert sel["batch"] == 0 and sel["batched_variant"] == 4  # one running sum; the comparison's sum per training batch
    row = sel["models"]["code+prose"]
    assert row["domains"] == ["code", "prose"] and set(row["ppl"]) == {"seed", "random", "select", "model"}
    picks = json.loads((project / "data/select/code+prose.json").read_text())["selected"]
    assert all(len(v) == 8 and len(set(v)) == 8 for v in picks.values())
    text = (project / "reports/from_weights/from_weights.md").read_text()
    assert "| validation | 3 |" in text and "| code+prose |" in text
    assert (project / "reports/from_weights/from_weights.png").stat().st_size > 0

    # bad input: k beyond the pool, a model that is the seed, a model not there; nothing written
    params = yaml.safe_load((project / "params.yaml").read_text())
    select_args = ["--base", "models/base", "--models", "models/mixtures", "models/probes", "models", "--tokens", "data/tokens"]
    for name, edit, message in (
        ("k", lambda p: p["select"].update(k=10_000), "select.k = 10000 is more than the pool's"),
        ("seed", lambda p: p["select"].update(models=["base"]), "models/base: its weights equal the seed's"),
        ("missing", lambda p: p["select"].update(models=["nowhere"]), "no model folder 'nowhere'"),
    ):
        bad = project.parent / f"bad-{name}.yaml"
        edited = json.loads(json.dumps(params))
        edit(edited)
        write_params(bad, edited)
        proc = run_module("pipeline.select", "--params", str(bad), *select_args, "--out", str(project.parent / f"{name}.json"),
                          "--selected", str(project.parent / f"sel-{name}"), cwd=project, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert not (project.parent / f"{name}.json").exists() and not (project.parent / f"sel-{name}").exists()
    edited = json.loads(json.dumps(params))
    edited["infer"].update(models=["skewed"], adam_power=0.5, calibration=[])
    write_params(project.parent / "one.yaml", edited)
    (project.parent / "seedcopy").mkdir()
    import shutil

    shutil.copytree(project / "models/base", project.parent / "seedcopy/skewed")
    proc = run_module("pipeline.infer", "--params", str(project.parent / "one.yaml"), "--base", "models/base", "--shards-dir",
                      "models/shards", "--models", str(project.parent / "seedcopy"), "--tokens", "data/tokens", "--out",
                      str(project.parent / "inf.json"), cwd=project, check=False)
    assert proc.returncode == 2 and "equal the seed's" in proc.stderr and not (project.parent / "inf.json").exists(), proc.stderr
    # a researcher's own model, of unknown data: estimated, nothing to judge it against
    shutil.copytree(project / "models/probes/skewed", project.parent / "mine")
    (project.parent / "mine/shardmix.json").unlink()
    run_module("pipeline.infer", "--base", "models/base", "--shards-dir", "models/shards", "--model", str(project.parent / "mine"),
               "--models", "models/probes", "--tokens", "data/tokens", "--out", str(project.parent / "mine.json"), cwd=project)
    mine = json.loads((project.parent / "mine.json").read_text())["models"]["mine"]
    assert mine["kind"] == "model" and mine["true"] is None and mine["adam"]["l1"] is None
    assert mine["adam"]["weights"] == inf["models"]["skewed"]["adam"]["weights"]
    # adam_power: fit (the default): the model's own power, fitted with its weights; it leaves no more of the
    # update unexplained than the calibrated power (one of the powers it tried)
    edited = json.loads(json.dumps(params))
    edited["infer"].update(adam_power="fit")
    write_params(project.parent / "fit.yaml", edited)
    run_module("pipeline.infer", "--params", str(project.parent / "fit.yaml"), "--base", "models/base", "--shards-dir", "models/shards",
               "--model", str(project.parent / "mine"), "--tokens", "data/tokens", "--out", str(project.parent / "fit.json"), cwd=project)
    fitted = json.loads((project.parent / "fit.json").read_text())
    assert fitted["adam_power"] == "fit" and fitted["models"]["mine"]["adam"]["power"] in POWERS
    assert fitted["models"]["mine"]["adam"]["unexplained"] <= mine["adam"]["unexplained"] + 1e-9


@pytest.mark.slow(minutes=13)  # three runs of the whole tiny pipeline
def test_dvc_repro_tiny_end_to_end(project: Path):
    trace = project.parent / "params-read.jsonl"
    out = dvc(project, "repro", env={"SHARDMIX_TRACE_PARAMS": str(trace)}).stdout
    ran = stages_run(out)
    assert_params_declared_as_read(project, trace)
    assert {"prepare", "tokenize", "base", "evaluate_base", "train@code", "train@prose", "train@legal", "proxy",
            "train_mixture@code+prose", "evaluate_mixture@code+prose+legal", "rank", "report", "gather", "recommend@prose",
            "confirm@prose", "advise", "train_probe@skewed", "train_probe@cal", "infer", "select", "report_weights"} <= set(ran), out

    # outputs load: corpus, tokens, models (HF folders, safetensors, tokenizer, provenance)
    manifest = json.loads((project / "data/corpus/manifest.json").read_text())
    assert set(manifest["domains"]) == {"code", "prose", "legal"}
    for d in manifest["domains"]:
        ids = {s: {json.loads(line)["id"] for line in open(project / f"data/corpus/{d}/{s}.jsonl")} for s in ("train", "base", "eval")}
        assert ids["eval"] and ids["train"] and not (ids["eval"] & ids["train"]) and not (ids["eval"] & ids["base"])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("base", "shards/code", "shards/prose", "shards/legal"):
        folder = project / "models" / name
        assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
        meta = json.loads((folder / "shardmix.json").read_text())
        assert meta["stage"] in ("base", "train")
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.vocab_size == len(tok)

    # every shard model learned its own domain: lower perplexity there than the seed
    for shard in ("code", "prose", "legal"):
        own = json.loads((project / f"metrics/eval/shards/{shard}.json").read_text())["own_domain"]
        assert own["learned"] and own["ppl"] < own["seed_ppl"], own
    curves = project / "metrics/train/code/plots/metrics/loss.tsv"
    assert curves.is_file() and len(curves.read_text().splitlines()) >= 2

    # the proxy scored every candidate and validation mixture; the report has the documented shape
    proxy = json.loads((project / "metrics/proxy.json").read_text())
    assert {"code+prose", "code+legal", "prose+legal", "code+prose+legal"} <= set(proxy["mixtures"])
    assert set(proxy["shards"]) == {"code", "prose", "legal"} and proxy["seed"]["eval"]
    report = json.loads((project / "metrics/report.json").read_text())
    assert set(report["proxies"]) == {"merged", "mean_shard_ppl", "best_shard", "ensemble"}
    for entry in report["proxies"].values():
        assert set(entry["domains"]) == {"code", "prose", "legal"}
        assert set(entry["mean"]) == {"pearson", "spearman", "pairwise_acc"}
        assert set(entry["mean_ci95"]) == set(entry["mean"]) and set(entry["pairs"]) == {"both_cover", "one_covers", "neither_covers"}
    assert report["mixtures"] == 3 and report["bootstrap"]["resamples"] == 1000
    assert set(report["out_of_mixture_shift"]) == {"truth", "merged", "mean_shard_ppl", "best_shard", "ensemble"}
    for f in ("summary.md", "scatter.png", "correlation.png"):
        assert (project / "reports/proxy" / f).stat().st_size > 0
    assert "| merged |" in (project / "reports/proxy/summary.md").read_text()
    rank = json.loads((project / "metrics/rank.json").read_text())  # all 7 subsets of 3 shards listed; the triple held out
    top = rank["ranking"]["code"]["top"]
    assert rank["subsets_ranked"] == len(top) == 7 and set(rank["trust"]) == {"code", "prose", "legal"}
    assert all(abs(e["merged"] - e["nats_vs_seed"]) < 1e-5 for e in top if len(e["shards"]) < 3)  # the lattice, fitted exactly
    assert "## How far to trust it" in (project / "reports/rank/subsets.md").read_text()
    assert_recommend_outputs(project, "prose")
    summary = json.loads((project / "metrics/recommend.json").read_text())  # advise: the targets on one page
    verdict = json.loads((project / "metrics/recommend/prose.json").read_text())["verdict"]
    assert list(summary["targets"]) == ["prose"] and summary["proxy_vs_trained"]["models"] == len(verdict["trained_models"])
    assert summary["targets"]["prose"]["recommended"] == verdict["recommended"]
    assert "| [prose](recommend/prose.md) |" in (project / "reports/recommend.md").read_text()
    assert_from_weights_outputs(project)

    # nothing is stale after a run
    assert json.loads(dvc(project, "status", "--json").stdout) == {}

    # nothing that git tracks changes between two runs of the same inputs: commit the run, then a
    # clone with the run's DVC cache reruns nothing (`dvc repro --pull` checks out what the cache
    # holds: DVC keeps no run-cache for stages with persist outputs), and a clone without it reruns
    # everything to the same bytes (same dvc.lock, same metrics), leaving `git status` clean in both
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first run")
    for name, shared_cache in (("with-cache", True), ("from-scratch", False)):
        clone = project.parent / name
        git(project.parent, "clone", "-q", str(project), str(clone))  # the code comes along as the project's links
        if shared_cache:
            dvc(clone, "cache", "dir", "--local", str(project / ".dvc/cache"))
        ran = stages_run(dvc(clone, "repro", *(["--pull"] if shared_cache else [])).stdout)
        if shared_cache:
            assert ran == [], ran
        else:  # every stage with DVC-cached outputs reruns; those whose outputs are all in git (metrics,
            # plots) and whose inputs came out byte-identical have nothing to redo
            assert set(stages_run(out)) - set(ran) == {"evaluate_base", "proxy", "rank", "report", "confirm@prose", "advise",
                                                       "infer", "select", "report_weights"}, ran
        assert json.loads(dvc(clone, "status", "--json").stdout) == {}
        # seeds make runs reproducible: from scratch, every model and metric came out bit for bit
        # what the first run made (dvc.lock holds each output's hash), so git sees no change
        assert git_status(clone) == "", f"{name}: {git_status(clone)}\n{git_diff(clone)}"
        assert (clone / "runs").is_dir() or shared_cache  # run records exist, untracked

    # the noise ceiling: the truth models again with another data order, scored as a fifth row
    rep = project.parent / "replicate"
    run_module("pipeline.replicate", "--seed-offset", "1", "--out", str(rep), cwd=project)
    meta = json.loads((rep / "models/code+prose/shardmix.json").read_text())
    truth_meta = json.loads((project / "models/mixtures/code+prose/shardmix.json").read_text())
    assert meta["data_seed"] == truth_meta["data_seed"] + 1 and meta["recipe"] == truth_meta["recipe"] and meta["weights"] == truth_meta["weights"]
    with np.load(rep / "nll/code+prose.npz") as a, np.load(project / "data/nll/truth/code+prose.npz") as b:
        assert a["code"].shape == b["code"].shape and not np.array_equal(a["code"], b["code"])  # another data order
    again = run_module("pipeline.replicate", "--seed-offset", "1", "--out", str(rep), cwd=project)
    assert again.stderr.count("done already") == 3, again.stderr  # resumes: nothing retrained
    report_args = ["--proxy", "metrics/proxy.json", "--truth-nll", "data/nll/truth", "--nll", "data/nll/shards"]
    run_module("pipeline.report", *report_args, "--replicate", str(rep / "nll"), "--out", str(rep / "report.json"),
               "--plots", str(rep / "plots"), "--reports", str(rep / "reports"), cwd=project)
    with_rep = json.loads((rep / "report.json").read_text())
    assert set(with_rep["proxies"]) == {"merged", "mean_shard_ppl", "best_shard", "ensemble", "truth_replicate"}
    assert with_rep["proxies"]["merged"] == report["proxies"]["merged"]  # the other rows are unchanged
    assert "| truth_replicate |" in (rep / "reports/summary.md").read_text()
    assert "truth_replicate" in (rep / "plots/report_scatter.csv").read_text().splitlines()[0]
    (rep / "empty").mkdir()
    bad = run_module("pipeline.report", *report_args, "--replicate", str(rep / "empty"), "--out", str(rep / "bad.json"),
                     "--plots", str(rep / "plots"), "--reports", str(rep / "reports"), cwd=project, check=False)
    assert bad.returncode == 2 and "empty/code+prose.npz" in bad.stderr and "pipeline.replicate" in bad.stderr, bad.stderr
    assert not (rep / "bad.json").exists()
    assert json.loads(dvc(project, "status", "--json").stdout) == {}

    # adding one shard trains only that shard (the proxy and the report then rescore)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["shards"]["code-b"] = {"domain": "code", "piece": 1, "of": 2}
    write_params(project / "params.yaml", params)
    status = dvc(project, "status", "--json").stdout
    stale = set(json.loads(status))
    # the report reads `shards` too (which eval domains a mixture covers), and rank (what it ranks); check and plan read the
    # whole file and `shards`, and write what they wrote before: no truth model is retrained. A new
    # shard is a new choice for every target: recommend and confirm rerun; and a new term of every
    # model's update: infer reruns (select too: it reads `shards` to map a model's shards to domains)
    assert stale == {"check", "plan", "train@code-b", "evaluate@code-b", "proxy", "rank", "report", "recommend@prose",
                     "confirm@prose", "infer", "select"}, status
    ran = stages_run(dvc(project, "repro").stdout)
    assert sorted(ran) == ["advise", "check", "confirm@prose", "evaluate@code-b", "infer", "plan", "proxy", "rank", "recommend@prose",
                           "report", "report_weights", "select", "train@code-b"], ran

    # the experiment workflow of the README: a changed recipe, then compare
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline")
    before = json.loads((project / "metrics/report.json").read_text())
    out = dvc(project, "exp", "run", "-S", "train.lr=0.002", "-n", "lr-test").stdout
    assert {"train@code", "train_mixture@code+prose", "proxy", "report"} <= set(stages_run(out)), out
    assert {"prepare", "tokenize", "base"}.isdisjoint(stages_run(out)), out
    shown = dvc(project, "exp", "show", "--json").stdout
    assert "lr-test" in shown and '"lr": 0.002' in shown
    diff = dvc(project, "exp", "diff", "--md").stdout
    assert "metrics/report.json" in diff and "train.lr" in diff, diff
    assert json.loads((project / "metrics/report.json").read_text()) != before


def test_truncated_corpus_file_is_a_clear_error_and_writes_nothing(project: Path):
    corpus = project / "corpus.jsonl"
    data = corpus.read_bytes()
    corpus.write_bytes(data[: len(data) // 2 + 7])  # cut inside a line
    proc = run_module("pipeline.prepare", *PREPARE_ARGS, cwd=project, check=False)
    assert proc.returncode != 0
    assert "corpus.jsonl" in proc.stderr, proc.stderr
    assert not (project / "data/corpus").exists() and not (project / "metrics/corpus.json").exists()
    assert not list((project / "data").glob(".corpus.tmp-*")) if (project / "data").exists() else True


def test_params_type_error_exits_2_naming_the_key(project: Path, tiny_params):
    tiny_params["prepare"]["max_mb"] = "big"
    write_params(project / "params.yaml", tiny_params)
    proc = run_module("pipeline.prepare", *PREPARE_ARGS, cwd=project, check=False)
    assert proc.returncode == 2
    assert "prepare.max_mb" in proc.stderr and "params.yaml" in proc.stderr
    assert not (project / "data").exists()


def test_unknown_names_are_clear_errors(project: Path, tiny_params):
    proc = run_module("pipeline.train", "--shard", "nope", "--base", "models/base", "--tokens", "data/tokens",
                      "--out", "models/shards/nope", "--live", "metrics/train/nope", cwd=project, check=False)
    assert proc.returncode == 2 and "no shard named 'nope'" in proc.stderr and "code" in proc.stderr
    tiny_params["prepare"]["domains"] = ["no_such_domain"]
    write_params(project / "params.yaml", tiny_params)
    proc = run_module("pipeline.prepare", *PREPARE_ARGS, cwd=project, check=False)
    assert proc.returncode == 2 and "no_such_domain" in proc.stderr and "known domains" in proc.stderr


def test_empty_domain_and_empty_shard(project: Path, tiny_params, corpus_rows):
    # a domain whose every document is too short leaves nothing: prepare refuses, names it
    rows = corpus_rows + [{"id": f"short/{i}", "domain": "short", "text": "tiny"} for i in range(5)]
    write_jsonl(project / "corpus.jsonl", rows)
    tiny_params["shards"]["short"] = {"domain": "short"}
    write_params(project / "params.yaml", tiny_params)
    proc = run_module("pipeline.prepare", *PREPARE_ARGS, cwd=project, check=False)
    assert proc.returncode == 2 and "domain short: no documents left" in proc.stderr, proc.stderr
    assert not (project / "data/corpus").exists()

    # a shard piece too small for one training window: train refuses, no model folder is left
    write_jsonl(project / "corpus.jsonl", corpus_rows)
    tiny_params["shards"] = {"code": {"domain": "code"}, "sliver": {"domain": "prose", "piece": 0, "of": 100000}}
    tiny_params["validation"] = {"mixtures": {}}
    tiny_params["infer"], tiny_params["select"] = {"probes": {}}, {"models": []}  # no models to explain
    write_params(project / "params.yaml", tiny_params)
    dvc(project, "repro", "base")
    proc = run_module("pipeline.train", "--shard", "sliver", "--base", "models/base", "--tokens", "data/tokens",
                      "--out", "models/shards/sliver", "--live", "metrics/train/sliver", cwd=project, check=False)
    assert proc.returncode == 2 and "shard sliver" in proc.stderr and "less than one window" in proc.stderr, proc.stderr
    assert not (project / "models/shards/sliver").exists()
    assert not (project / "metrics/train/sliver").exists()
