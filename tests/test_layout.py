"""The house rules of the code: dvc.yaml lists exactly the code each stage runs; no import cycles;
no stage imports another; modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.imports import PKG, REPO, closure, imports_of, module_name, stage_code

MAX_MODULE_LINES = 350  # a longer module says why in its docstring ("Longer than ...")
MAX_FUNCTION_LINES = 60


def dvc_stages() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    vars_ = {k: v for d in spec.get("vars", []) for k, v in d.items()}
    out = {}
    for name, st in spec["stages"].items():
        body = st.get("do", st)
        text = yaml.safe_dump(body)
        for k, v in vars_.items():
            text = text.replace("${" + k + "}", str(v))
        out[name] = yaml.safe_load(text)
    return out


def code_deps(stage: dict) -> set[str]:
    """The stage's deps under pipeline/ and csrc/, folders expanded to their source files."""
    out = set()
    for d in stage.get("deps", []):
        if not d.startswith(("pipeline", "csrc")):
            continue
        p = REPO / d
        if p.is_dir():
            out |= {str(f.relative_to(REPO)) for f in p.rglob("*") if f.suffix in (".py", ".cpp", ".cu", ".h")}
        else:
            out.add(d)
    return out


STAGES = dvc_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_deps_are_exactly_the_code_the_stage_runs(name):
    stage = STAGES[name]
    module = re.search(r"python -m (pipeline\.[\w.]+)", stage["cmd"]).group(1)
    want, have = stage_code(module), code_deps(stage)
    assert have == want, (f"dvc.yaml stage {name}: missing {sorted(want - have)}, not run by it {sorted(have - want)}")


def all_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def test_no_import_cycles():
    graph = {module_name(p): imports_of(p)[0] for p in all_modules()}
    # a package's __init__ is imported by its own modules implicitly; that is no cycle
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _paths(entries) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_path_a_stage_reads_or_writes_is_a_dep_or_an_out(name):
    """DVC orders stages (and pipeline.launch schedules them) by these: a path the command is given
    that is in neither list lets the stage run before the stage that makes it."""
    stage = STAGES[name]
    known = _paths(stage.get("deps")) | {p for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key))}
    words = stage["cmd"].split()
    given = {w for flag, w in zip(words, words[1:]) if flag.startswith("--") and "/" in w and not w.startswith("-")}
    covered = lambda w: any(w == k or w.startswith(k.rstrip("/") + "/") or k.startswith(w.rstrip("/") + "/") for k in known)
    assert all(covered(w) for w in given), f"dvc.yaml stage {name}: {sorted(w for w in given if not covered(w))} in no deps or outs"


def stage_modules() -> set[str]:
    return {re.search(r"python -m (pipeline\.[\w.]+)", st["cmd"]).group(1) for st in STAGES.values()}


def test_no_module_imports_a_stage():
    stages = stage_modules()
    for p in all_modules():
        bad = imports_of(p)[0] & (stages - {module_name(p)})
        assert not bad, f"{p.relative_to(REPO)} imports the stage module(s) {sorted(bad)}: move what it needs into pipeline/lib"


def test_every_stage_process_ends_through_exit_stage():
    """A stage's ``__main__`` ends through ``pipeline.lib.runtime.exit_stage``, which spares teardown its garbage collections."""
    for mod in sorted(stage_modules()):
        path = REPO / (mod.replace(".", "/") + ".py")
        tail = path.read_text().rstrip().splitlines()[-2:]
        assert tail == ['if __name__ == "__main__":', "    exit_stage(cli())"], f"{path.relative_to(REPO)} ends {tail}"


def test_params_schema_imports_nothing_of_the_pipeline():
    for path in sorted((PKG / "params").glob("*.py")):
        deps, _ = imports_of(path)
        assert all(d == "pipeline" or d.startswith("pipeline.params") for d in deps), (path.name, deps)
    files, _ = closure("pipeline.lib.mixtures")  # mixtures: no torch, no files, only the schema of mixtures
    assert {str(f.relative_to(REPO)) for f in files} == {"pipeline/__init__.py", "pipeline/lib/mixtures.py",
                                                         "pipeline/params/__init__.py", "pipeline/params/core.py",
                                                         "pipeline/params/mixtures.py"}


def test_a_stage_holds_only_the_schemas_of_the_sections_it_reads():
    """An edit to one section's schema makes stale only the stages that read that section."""
    schema = {f"pipeline/params/{m}.py" for m in ("data", "model", "shards", "mixtures", "evaluation", "report", "rank",
                                                  "recommend", "infer", "select", "config")}
    want = {  # stage module -> the section schemas in its code
        "pipeline.check": schema,
        "pipeline.prepare": {"pipeline/params/data.py"},
        "pipeline.tokenize": {"pipeline/params/data.py", "pipeline/params/model.py"},
        "pipeline.base": {"pipeline/params/model.py"},
        "pipeline.train": {"pipeline/params/model.py", "pipeline/params/shards.py"},
        "pipeline.evaluate": {"pipeline/params/evaluation.py", "pipeline/params/shards.py"},
        "pipeline.plan": {"pipeline/params/mixtures.py", "pipeline/params/shards.py", "pipeline/params/infer.py"},  # probes
        "pipeline.proxy": {"pipeline/params/mixtures.py", "pipeline/params/shards.py", "pipeline/params/evaluation.py"},
        "pipeline.report": {"pipeline/params/mixtures.py", "pipeline/params/shards.py", "pipeline/params/report.py"},
        "pipeline.rank": {"pipeline/params/mixtures.py", "pipeline/params/shards.py", "pipeline/params/rank.py"},
        "pipeline.gather": {"pipeline/params/data.py", "pipeline/params/recommend.py"},
        "pipeline.recommend": {"pipeline/params/evaluation.py", "pipeline/params/recommend.py", "pipeline/params/shards.py"},
        "pipeline.confirm": {"pipeline/params/evaluation.py", "pipeline/params/model.py", "pipeline/params/recommend.py",
                             "pipeline/params/shards.py"},
        "pipeline.infer": {"pipeline/params/infer.py", "pipeline/params/mixtures.py", "pipeline/params/model.py",
                           "pipeline/params/shards.py"},
        "pipeline.select": {"pipeline/params/evaluation.py", "pipeline/params/model.py", "pipeline/params/select.py",
                            "pipeline/params/shards.py"},
        "pipeline.advise": {"pipeline/params/recommend.py"},
        "pipeline.report_weights": set(),
    }
    assert stage_modules() == set(want)
    for module, sections in want.items():
        assert stage_code(module) & schema == sections, module


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_are_short(path):
    text = path.read_text()
    tree = ast.parse(text)
    doc = ast.get_docstring(tree) or ""
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES or "Longer than" in doc, f"{path.name}: {lines} lines and no reason in its docstring"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            assert n <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name} is {n} lines (at most {MAX_FUNCTION_LINES})"


def test_dvc_lock_records_only_the_stages_dvc_yaml_defines():
    """An entry of a stage that is gone (a validation mixture renamed or dropped from params) stays in
    dvc.lock for good: DVC never prunes it, and rewrites it with the rest after every stage it runs."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        defined = {s.addressing for s in repo.index.stages}
    recorded = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert recorded <= defined, (f"dvc.lock: entries of stages dvc.yaml no longer defines: {sorted(recorded - defined)}; "
                                 "delete each one's block under 'stages:' in dvc.lock")
