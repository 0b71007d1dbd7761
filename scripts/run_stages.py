"""Run dvc.yaml's stage commands in order, without DVC: for a machine where DVC is not installed.

``python scripts/run_stages.py [--dvc-yaml dvc.yaml] [--params params.yaml] [--list] [--only NAME ...]``
in a project folder expands dvc.yaml as DVC does for this pipeline (``vars``, ``foreach`` over a
params mapping with ``${key}`` and ``${item.x}``, ``${dotted.params}``), checks that its stages come
in an order where every dependency is made before it is read, and runs each command with this
Python (a leading ``python`` becomes ``sys.executable``). Nothing is cached or skipped: every stage
runs. The GPU check (``scripts/gpu_check.py``) runs the pipeline this way on a GPU host that has no
DVC; ``tests/test_gpu_check.py`` checks the expansion against DVC's own.

Prints one JSON line per stage (name, exit status, seconds); exits with the first failing stage's
status.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

VAR = re.compile(r"\$\{([^}]+)\}")


def _lookup(name: str, scope: dict[str, Any]) -> Any:
    value: Any = scope
    for part in name.strip().split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"${{{name}}}: not defined (dvc.yaml vars, params.yaml, or the foreach item)")
        value = value[part]
    return value


def _interpolate(node: Any, scope: dict[str, Any]) -> Any:
    if isinstance(node, str):
        whole = VAR.fullmatch(node.strip())
        if whole:  # a lone ${x} keeps its type (foreach's mapping)
            return _lookup(whole.group(1), scope)
        return VAR.sub(lambda m: str(_lookup(m.group(1), scope)), node)
    if isinstance(node, list):
        return [_interpolate(x, scope) for x in node]
    if isinstance(node, dict):
        return {k: _interpolate(v, scope) for k, v in node.items()}
    return node


def _paths(entries: list) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (entries are paths or one-key mappings)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def expand(dvc_yaml: Path, params: Path) -> list[dict[str, Any]]:
    """Every stage of ``dvc_yaml`` as ``{"name", "cmd", "deps", "outs"}``, foreach items expanded."""
    spec = yaml.safe_load(dvc_yaml.read_text())
    scope: dict[str, Any] = dict(yaml.safe_load(params.read_text()) or {})
    for v in spec.get("vars", []):
        scope.update(v)
    stages = []
    for name, st in spec["stages"].items():
        if "foreach" in st:
            items = _interpolate(st["foreach"], scope)
            if not isinstance(items, dict):
                raise ValueError(f"{dvc_yaml}: stage {name}: foreach must name a params mapping, got {type(items).__name__}")
            bodies = [(f"{name}@{key}", _interpolate(st["do"], {**scope, "key": key, "item": item})) for key, item in items.items()]
        else:
            bodies = [(name, _interpolate(st, scope))]
        for full, body in bodies:
            outs = [p for k in ("outs", "metrics", "plots") for p in _paths(body.get(k))]
            stages.append({"name": full, "cmd": " ".join(body["cmd"].split()), "deps": _paths(body.get("deps")), "outs": outs})
    _check_order(stages)
    return stages


def _check_order(stages: list[dict[str, Any]]) -> None:
    """Every dependency that a stage makes is made by an earlier stage."""
    made_at = {}
    for i, st in enumerate(stages):
        for out in st["outs"]:
            made_at[out.rstrip("/")] = i
    for i, st in enumerate(stages):
        for dep in st["deps"]:
            d = dep.rstrip("/")
            makers = [j for out, j in made_at.items() if d == out or d.startswith(out + "/") or out.startswith(d + "/")]
            late = [stages[j]["name"] for j in makers if j >= i]
            if late:
                raise ValueError(f"stage {st['name']} reads {dep}, which {late[0]} makes later: reorder dvc.yaml")


def run(stages: list[dict[str, Any]], cwd: Path) -> int:
    for st in stages:
        argv = shlex.split(st["cmd"])
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        t0 = time.perf_counter()
        rc = subprocess.run(argv, cwd=cwd).returncode
        print(json.dumps({"stage": st["name"], "rc": rc, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        if rc != 0:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--list", action="store_true", help="print the stages and their commands as JSON; run nothing")
    p.add_argument("--only", nargs="+", help="run just these stages (names as listed, e.g. train@news_bbc)")
    args = p.parse_args(argv)
    stages = expand(args.dvc_yaml, args.params)
    if args.only:
        unknown = sorted(set(args.only) - {s["name"] for s in stages})
        if unknown:
            p.error(f"--only: no stage named {unknown}; see --list")
        stages = [s for s in stages if s["name"] in args.only]
    if args.list:
        print(json.dumps([{"name": s["name"], "cmd": s["cmd"]} for s in stages], indent=1))
        return 0
    return run(stages, args.dvc_yaml.resolve().parent)


if __name__ == "__main__":
    raise SystemExit(main())
