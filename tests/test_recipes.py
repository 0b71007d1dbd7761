"""The README's recipes, run as written: each one's params fragment and commands, on the tiny corpus.

A recipe in README.md is an HTML comment ``<!-- recipe: NAME -->`` followed by a ```yaml block (a
fragment of params.yaml) and a ```bash block (the commands, run from the repository root). Each
test merges the fragment into the tiny params the way the README tells a user to edit params.yaml
(keys set one by one; a list, an empty map, or a map of named entries replaces its section whole),
makes the files the recipe names, runs the commands and checks what the recipe promises.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, dvc, run_module, write_jsonl, write_params

pytestmark = pytest.mark.slow

RECIPES = ("own-corpus", "own-model", "proxy-only", "gpu")
# maps whose keys are names the user chooses: a fragment's version replaces the section whole
NAMED_ENTRIES = {("shards",), ("validation", "mixtures"), ("mixtures", "explicit"), ("infer", "probes"), ("recommend", "targets")}
PROXIES = {"merged", "mean_shard_ppl", "best_shard", "ensemble"}


def recipe(name: str) -> tuple[dict, list[list[str]]]:
    """The params fragment and the commands (argument lists) of README recipe ``name``."""
    text = (REPO / "README.md").read_text()
    marker = f"<!-- recipe: {name} -->"
    assert text.count(marker) == 1, f"README.md: expected one {marker!r}"
    body = text.split(marker, 1)[1].split("<!-- recipe:", 1)[0]
    block = {lang: re.search(rf"^```{lang}\n(.*?)^```", body, re.S | re.M) for lang in ("yaml", "bash")}
    assert block["yaml"] and block["bash"], f"README.md recipe {name}: needs a ```yaml and a ```bash block"
    assert block["yaml"].start() < block["bash"].start(), f"README.md recipe {name}: the yaml block comes first"
    fragment = yaml.safe_load(block["yaml"].group(1))
    assert isinstance(fragment, dict) and fragment, f"README.md recipe {name}: the yaml block is not a params fragment"
    lines = block["bash"].group(1).replace("\\\n", " ").splitlines()
    commands = [cmd for cmd in (shlex.split(line, comments=True) for line in lines) if cmd]
    assert commands, f"README.md recipe {name}: no commands"
    return fragment, commands


def merged(params: dict, fragment: dict, at: tuple[str, ...] = ()) -> dict:
    """``params`` with ``fragment`` applied: maps merged key by key, except empty maps and maps of
    named entries, which replace; lists and scalars replace."""
    out = copy.deepcopy(params)
    for key, value in fragment.items():
        here = (*at, key)
        if isinstance(value, dict) and value and isinstance(out.get(key), dict) and here not in NAMED_ENTRIES:
            out[key] = merged(out[key], value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_commands(root: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run the recipe's commands in ``root`` as a user would with the venv active."""
    done = []
    for cmd in commands:
        if cmd[0] == "dvc":
            done.append(dvc(root, *cmd[1:]))
        elif cmd[:2] == ["python", "-m"] and len(cmd) > 2:
            done.append(run_module(cmd[2], *cmd[3:], cwd=root))
        else:
            raise AssertionError(f"README.md recipe command {shlex.join(cmd)!r}: neither `dvc ...` nor `python -m ...`")
    return done


def stages_run(procs: list[subprocess.CompletedProcess]) -> list[str]:
    return [s for p in procs for s in re.findall(r"Running stage '([^']+)'", p.stdout)]


def load(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text())


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fits_the_default_params(name, tmp_path):
    """Applied to the repository's own params.yaml, every fragment gives a valid params file."""
    from pipeline.params.config import load_config
    from pipeline.params.core import read_params

    fragment, _ = recipe(name)
    load_config(write_params(tmp_path / "params.yaml", merged(read_params(REPO / "params.yaml"), fragment)))


@pytest.mark.slow(minutes=3)
def test_own_corpus(project: Path, tiny_params, corpus_rows):
    fragment, commands = recipe("own-corpus")
    params = merged(tiny_params, fragment)
    (project / "corpus.jsonl").unlink()  # the fixture's corpus: only the recipe's file may be read
    for src in params["prepare"]["local"]:
        rows = [{src["text_field"]: r["text"], src["domain_field"]: r["domain"]} for r in corpus_rows]
        write_jsonl(project / src["path"], rows)
    write_params(project / "params.yaml", params)
    domains = {r["domain"] for r in corpus_rows}
    assert params["prepare"]["domains"] == [] and {s["domain"] for s in params["shards"].values()} == domains

    procs = run_commands(project, commands)

    assert set(load(project, "data/corpus/manifest.json")["domains"]) == domains
    for shard, spec in params["shards"].items():
        assert (project / f"models/shards/{shard}/model.safetensors").is_file()
        assert load(project, f"metrics/eval/shards/{shard}.json")["own_domain"]["domain"] == spec["domain"]
    report = load(project, "metrics/report.json")
    assert set(report["proxies"]) == PROXIES and report["mixtures"] == len(params["validation"]["mixtures"])
    for entry in report["proxies"].values():
        assert set(entry["domains"]) == domains and set(entry["mean"]) == {"pearson", "spearman", "pairwise_acc"}
    # the validation draw the recipe prints is in params format, over the recipe's shards
    drawn = yaml.safe_load(procs[[c[:3] for c in commands].index(["python", "-m", "pipeline.validation"])].stdout)
    assert {s for m in drawn["validation"]["mixtures"].values() for s in m["shards"]} <= set(params["shards"])
    assert (project / "reports/recommend/prose.md").is_file()  # the recipe's target, of the user's own domain
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def tiny_hf_model(folder: Path, texts: list[str]):
    """A randomly initialised Llama with its own fast byte-level BPE tokenizer, saved as a HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.tokenize import train_tokenizer

    tok = train_tokenizer(texts, vocab_size=512)
    torch.manual_seed(1234)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()
    return tok


def check_bits_per_byte(root: Path, scores: dict) -> None:
    """Bits-per-byte in an evaluate stage's metrics against the token files' document index and byte counts."""
    from pipeline.lib.tokens import TokenFile

    assert set(scores["totals"]) == set(scores["eval"])
    for domain, tot in scores["totals"].items():
        tf = TokenFile.open(root / f"data/tokens/eval/{domain}.bin")
        starts, nbytes = tf.doc_starts(), tf.token_bytes().astype("int64")
        assert (nbytes[starts[:-1]] == 0).all()  # each document opens with the end-of-text marker: no text
        assert tot["tokens"] == tf.tokens - (len(starts) - 1)  # every token but those markers is predicted
        assert tot["bytes"] == int(nbytes.sum()) == tf.meta["bytes"]
        texts = [json.loads(line)["text"] for line in open(root / f"data/corpus/{domain}/eval.jsonl")]
        for i in range(len(starts) - 2):  # whole documents (the last one may be cut by tokenize.eval_tokens)
            assert int(nbytes[starts[i]:starts[i + 1]].sum()) == len(texts[i].encode()), (domain, i)
        ev = scores["eval"][domain]
        assert ev["bpb"] * math.log(2) * tot["bytes"] == pytest.approx(tot["nll_sum"], rel=1e-4), domain
        assert ev["ppl"] == pytest.approx(math.exp(tot["nll_sum"] / tot["tokens"]), rel=1e-4), domain


@pytest.mark.slow(minutes=3)
def test_own_model(project: Path, tiny_params, corpus_rows):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    fragment, commands = recipe("own-model")
    params = merged(tiny_params, fragment)
    assert params["base"]["init"] == "pretrained" and params["base"]["tokens"] == 0
    given = (project / params["base"]["pretrained_path"]).resolve()
    tok = tiny_hf_model(given, [r["text"] for r in corpus_rows])
    write_params(project / "params.yaml", params)

    procs = run_commands(project, commands)
    assert "base" in stages_run(procs)

    # the seed is the given model, weights unchanged
    theirs, ours = load_file(given / "model.safetensors"), load_file(project / "models/base/model.safetensors")
    assert set(ours) == set(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and ours[k].equal(theirs[k]) for k in theirs)
    assert load(project, "models/base/shardmix.json")["origin"].startswith("pretrained checkpoint")
    # the tokenizer is the given model's own
    for folder in ("tokenizer", "models/base", "models/shards/code"):
        assert AutoTokenizer.from_pretrained(project / folder).get_vocab() == tok.get_vocab(), folder
    assert load(project, "metrics/tokens.json")["vocab_size"] == len(tok)
    # bits-per-byte of the seed from the token files' byte counts, every token from its own document
    check_bits_per_byte(project, load(project, "metrics/eval/base.json"))
    assert set(load(project, "metrics/report.json")["proxies"]) == PROXIES


@pytest.mark.slow(minutes=2)
def test_proxy_only(project: Path, tiny_params):
    fragment, commands = recipe("proxy-only")
    params = merged(tiny_params, fragment)
    assert params["validation"]["mixtures"] == {}
    write_params(project / "params.yaml", params)

    ran = stages_run(run_commands(project, commands))

    assert {"proxy", "report"} <= set(ran), ran
    assert not [s for s in ran if s.startswith(("train_mixture", "evaluate_mixture"))], ran
    assert not [s for s in ran if s.startswith(("recommend@", "confirm@"))], ran  # no target: nothing to confirm
    assert not list(project.glob("models/mixtures/*")) and not list(project.glob("metrics/truth/*"))
    proxy, report = load(project, "metrics/proxy.json"), load(project, "metrics/report.json")
    assert report["mode"] == "proxy_only"
    ranking = report["ranking"]
    assert ranking["mixtures"] == len(proxy["mixtures"]) > 0
    assert ranking["overall"] and {r["mixture"] for r in ranking["overall"]} <= set(proxy["mixtures"])
    assert set(ranking["per_domain"]) == set(proxy["seed"]["eval"])
    assert "ranked by the merged proxy" in (project / "reports/proxy/summary.md").read_text()
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_gpu(project: Path, tiny_params, corpus_rows):
    """The GPU recipe: the SmolLM2 seed folder from the convert helper, then dvc repro with its params.
    Without a GPU (here) the run stops at the check stage, naming the key and the fix, before any
    other stage (tests/test_locks.py: so before DVC removes an output); with one,
    scripts/gpu_check.sh runs the same settings at a small size."""
    import torch

    fragment, commands = recipe("gpu")
    assert commands[0][:4] == ["python", "-m", "pipeline.convert", "smollm2"] and commands[1:] == [["dvc", "repro"]]
    params = merged(tiny_params, fragment)
    assert (params["device"], params["precision"], params["base"]["init"]) == ("cuda", "bf16-mixed", "pretrained")
    assert params["base"]["pretrained_path"] == commands[0][commands[0].index("--out") + 1]
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: scripts/gpu_check.sh runs these settings (this test checks the CPU-only refusal)")
    tiny_hf_model(project / params["base"]["pretrained_path"], [r["text"] for r in corpus_rows])
    write_params(project / "params.yaml", params)
    proc = dvc(project, "repro", check=False)
    assert proc.returncode != 0 and "device: 'cuda' but this torch" in proc.stdout + proc.stderr
    assert "set device: cpu" in proc.stdout + proc.stderr
    assert stages_run([proc]) == ["check"] and not (project / "data").exists()
