"""The proxy stage: every mixture x every eval domain, references, outputs, bad input.

The shard models and token files are made directly (tiny, real text); the stage runs once through
``dvc repro`` (its dvc.yaml stage and heatmap plot are appended to the tmp project when the
repository's dvc.yaml has none yet) and otherwise in-process for the error cases.
"""

from __future__ import annotations

import csv
import inspect
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import dvc, write_params
from tests.test_pool import perturbed, tiny_llama

DOMAINS = {"code": textwrap, "prose": inspect, "legal": shutil}  # domain -> a module whose source is its text
TRAIN_TOKENS = {"code": 300, "prose": 100, "legal": 600}
MIXTURES = {"subsets": [{"k": 2}, {"k": 3}], "explicit": {"mostly_code": {"shards": ["code", "legal"], "ratios": [3, 1]}},
            "weighting": "tokens", "eval_tokens": 200, "at_once": 2}

PROXY_STAGE = {
    "cmd": "python -m pipeline.proxy",
    "deps": ["pipeline/proxy.py", "pipeline/merge.py", "pipeline/pool.py", "pipeline/evaluate.py",
             "models/base", "models/shards", "data/tokens/eval", "data/tokens/train"],
    "params": ["shards", "mixtures", "eval"],
    "metrics": [{"metrics/proxy.json": {"cache": False}}],
    "outs": [{"plots/proxy.csv": {"cache": False}}],
}
PROXY_PLOT = {"plots/proxy.csv": {"template": "heatmap", "x": "domain", "y": "mixture",
                                  "title": "Merged proxy: bits per byte relative to the seed, by mixture and eval domain"}}


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    """models/{base,shards/*} and data/tokens/{train,eval} of a tiny project, made once."""
    from pipeline.lib.tokens import write_token_file
    from pipeline.lib.encode import bytes_per_token
    from pipeline.tokenize import train_tokenizer

    root = tmp_path_factory.mktemp("artefacts")
    texts = {d: inspect.getsource(m) for d, m in DOMAINS.items()}
    tok = train_tokenizer(list(texts.values()), vocab_size=320)
    seed = tiny_llama(vocab=len(tok), hidden=16)
    seed.save_pretrained(root / "models/base")
    tok.save_pretrained(root / "models/base")
    for i, d in enumerate(DOMAINS):
        perturbed(seed, i).save_pretrained(root / "models/shards" / d)
    for d, text in texts.items():
        enc = tok(text[:6000], return_offsets_mapping=True)
        ids = np.asarray([tok.eos_token_id, *enc["input_ids"]], dtype=np.uint16)
        nbytes = np.asarray([0, *bytes_per_token(text[:6000], enc["offset_mapping"])])
        train = np.zeros(TRAIN_TOKENS[d], np.uint16)
        for split, arr, tb in (("eval", ids, nbytes), ("train", train, np.ones_like(train))):
            (root / "data/tokens" / split).mkdir(parents=True, exist_ok=True)
            write_token_file(root / "data/tokens" / split / d, arr, np.array([0, arr.size]), tb, {"dtype": "uint16"})
    return root


def fill(root: Path, artefacts: Path, params: dict) -> Path:
    for sub in ("models", "data"):
        shutil.copytree(artefacts / sub, root / sub)
    write_params(root / "params.yaml", {**params, "mixtures": MIXTURES})
    return root


@pytest.fixture
def proj(tmp_path: Path, artefacts: Path, tiny_params) -> Path:
    """A folder with params.yaml and the artefacts: enough for the stage run in-process."""
    return fill(tmp_path, artefacts, tiny_params)


def add_stage(root: Path) -> None:
    """Append the proxy stage, its plot and the heatmap template, unless the repository has them."""
    from pipeline.proxy import HEATMAP_TEMPLATE

    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    if "proxy" not in spec["stages"]:
        spec["stages"]["proxy"] = PROXY_STAGE
        spec.setdefault("plots", []).append(PROXY_PLOT)
        (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    template = root / ".dvc/plots/heatmap.json"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(json.dumps(HEATMAP_TEMPLATE, indent=2))


PROXY_ARGS = ["--base", "models/base", "--shards-dir", "models/shards", "--tokens", "data/tokens",
              "--out", "metrics/proxy.json", "--plot", "plots/proxy.csv"]


def run_proxy(root: Path, monkeypatch, *args: str) -> int:
    from pipeline.proxy import cli

    monkeypatch.chdir(root)
    return cli([*PROXY_ARGS, *args])


def assert_no_outputs(root: Path) -> None:
    assert not (root / "metrics/proxy.json").exists() and not (root / "plots/proxy.csv").exists()
    leftovers = [p.name for d in ("metrics", "plots") if (root / d).exists() for p in (root / d).iterdir()]
    assert not leftovers, leftovers


def test_proxy_stage_through_dvc(project: Path, artefacts: Path, tiny_params):
    proj = fill(project, artefacts, tiny_params)
    add_stage(proj)
    dvc(proj, "repro", "--single-item", "proxy")
    m = json.loads((proj / "metrics/proxy.json").read_text())
    assert set(m["mixtures"]) == {"mostly_code", "code+prose", "code+legal", "prose+legal", "code+prose+legal"}
    assert set(m["shards"]) == set(DOMAINS) and set(m["seed"]["eval"]) == set(DOMAINS)
    for name, e in m["mixtures"].items():
        assert set(e["eval"]) == set(DOMAINS) and abs(sum(e["weights"]) - 1) < 1e-5, name
        assert all(s["ppl"] > 1 and s["bpb"] > 0 for s in e["eval"].values())
    assert m["mixtures"]["mostly_code"]["weights"] == [0.75, 0.25]
    assert m["mixtures"]["code+prose"]["weights"] == pytest.approx([0.75, 0.25], abs=1e-6)  # 300 : 100 tokens
    assert all(t == 200 for t in m["eval"]["tokens"].values())  # eval_tokens caps every domain
    rows = list(csv.DictReader(open(proj / "plots/proxy.csv")))
    assert len(rows) == (1 + 3 + 5) * 3 and set(rows[0]) == {"mixture", "k", "domain", "ppl", "bpb", "bpb_vs_seed"}
    assert {(r["k"], r["bpb_vs_seed"]) for r in rows if r["mixture"] == "(seed)"} == {("0", "1.0")}
    shown = json.loads(dvc(proj, "plots", "show", "--json").stdout)["data"]["plots/proxy.csv"][0]["content"]
    assert shown["mark"]["type"] == "rect" and len(shown["data"]["values"]) == len(rows)
    assert "proxy" not in dvc(proj, "status", "proxy").stdout.replace("Data and pipelines are up to date.", "")


def test_proxy_scores_equal_scoring_the_models_directly(proj: Path, monkeypatch):
    from pipeline.lib.scoring import evaluate, load_eval_sets
    from pipeline.lib.models import load_model

    assert run_proxy(proj, monkeypatch) == 0
    m = json.loads((proj / "metrics/proxy.json").read_text())
    sets = load_eval_sets(Path("data/tokens"), sorted(DOMAINS), 64, limit=200)
    legal = evaluate(load_model("models/shards/legal"), sets, 8)
    for d in DOMAINS:
        assert m["shards"]["legal"]["eval"][d]["ppl"] == pytest.approx(legal[d]["ppl"], rel=1e-5)
    # code+legal by token weights 300 : 600, averaged by hand
    a, b = load_model("models/shards/code"), load_model("models/shards/legal")
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters()):
            p.mul_(1 / 3).add_(q, alpha=2 / 3)
    mixed = evaluate(a, sets, 3)
    for d in DOMAINS:
        assert m["mixtures"]["code+legal"]["eval"][d]["ppl"] == pytest.approx(mixed[d]["ppl"], rel=1e-5)
        assert m["mixtures"]["code+legal"]["eval"][d]["bpb"] == pytest.approx(mixed[d]["bpb"], rel=1e-4)


def test_validation_mixtures_are_scored_and_flagged(proj: Path, monkeypatch, caplog):
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["validation"] = {"mixtures": {"code+prose": {"shards": ["code", "prose"]},  # also a candidate
                                         "legal+code": {"shards": ["legal", "code"], "ratios": [1, 1]}}}
    write_params(proj / "params.yaml", params)
    assert run_proxy(proj, monkeypatch) == 0
    m = json.loads((proj / "metrics/proxy.json").read_text())["mixtures"]
    assert m["legal+code"]["validation"] and m["legal+code"]["weights"] == [0.5, 0.5]
    assert m["code+prose"]["validation"] and not m["code+legal"]["validation"] and len(m) == 6
    (proj / "metrics/proxy.json").unlink()
    (proj / "plots/proxy.csv").unlink()
    params["validation"]["mixtures"]["code+legal"] = {"shards": ["code", "legal"], "ratios": [1, 1]}  # clashes
    write_params(proj / "params.yaml", params)
    assert run_proxy(proj, monkeypatch) == 2
    assert "validation.mixtures.code+legal has weights [0.5, 0.5] but the candidate mixture" in caplog.text
    assert_no_outputs(proj)


def _missing(root: Path) -> str:
    shutil.rmtree(root / "models/shards/prose")
    return "models/shards/prose: checkpoint folder not found"


def _truncated(root: Path) -> str:
    f = root / "models/shards/legal/model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return "models/shards/legal/model.safetensors: truncated"


def _other_architecture(root: Path) -> str:
    shutil.rmtree(root / "models/shards/code")
    tiny_llama(vocab=320, hidden=32).save_pretrained(root / "models/shards/code")
    return "models/shards/code/config.json describes a different architecture"


def _missing_tensor(root: Path) -> str:
    from safetensors.torch import load_file, save_file

    f = root / "models/shards/code/model.safetensors"
    sd = load_file(f)
    del sd["model.norm.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    return "models/shards/code/model.safetensors: tensor model.norm.weight is missing"


def _unknown_shard(root: Path) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mixtures"]["explicit"]["oops"] = {"shards": ["code", "poetry"]}
    write_params(root / "params.yaml", params)
    return "mixtures.explicit.oops.shards: unknown shard(s) ['poetry']"


def _bad_ratio(root: Path) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mixtures"]["explicit"]["mostly_code"]["ratios"] = [3, -1]
    write_params(root / "params.yaml", params)
    return "mixtures.explicit.mostly_code.ratios.1"


def _at_once_too_large(root: Path, monkeypatch) -> str:
    import pipeline.lib.device as device

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mixtures"]["at_once"] = 3
    write_params(root / "params.yaml", params)
    monkeypatch.setattr(device, "host_free_bytes", lambda *a, **k: 100_000)  # 100 kB free
    return "mixtures.at_once: 3 needs"


def _not_layer_streamable(root: Path, monkeypatch) -> str:
    from pipeline.lib import layerstream

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mixtures"]["stream"] = "layers"
    write_params(root / "params.yaml", params)
    real = layerstream.skeleton

    def no_layers(base):  # the seed's class without .layers, as a GPT-2 or Falcon has
        model, depth = real(base)
        model.model.blocks = model.model.layers
        del model.model.layers
        return model, depth

    monkeypatch.setattr(layerstream, "skeleton", no_layers)
    return "LlamaForCausalLM: layer streaming walks decoders whose base model has its blocks in .layers"


@pytest.mark.parametrize("breakage", [_missing, _truncated, _other_architecture, _missing_tensor, _unknown_shard, _bad_ratio,
                                      _at_once_too_large, _not_layer_streamable])
def test_bad_input_is_a_clear_error_and_writes_nothing(proj: Path, monkeypatch, caplog, breakage):
    expected = breakage(proj, monkeypatch) if "monkeypatch" in inspect.signature(breakage).parameters else breakage(proj)
    assert run_proxy(proj, monkeypatch) == 2
    assert expected in caplog.text, caplog.text
    assert_no_outputs(proj)


def test_failure_while_scoring_writes_nothing(proj: Path, monkeypatch, caplog):
    from pipeline.lib import sweep as ev
    from pipeline.lib.runtime import StageError

    calls = {"n": 0}
    real = ev.evaluate

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise StageError("simulated failure in the 6th scoring")
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate", flaky)
    assert run_proxy(proj, monkeypatch) == 2
    assert "simulated failure" in caplog.text and calls["n"] == 6
    assert_no_outputs(proj)
