"""The import graph of ``pipeline/``, read statically (every ``import``, also inside functions), and
the C++/CUDA sources each kernel a module calls is built from. Used by tests/test_layout.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "pipeline"
CSRC = REPO / "csrc"

# The kernels' Python entry points and the csrc files that implement them (besides the shared ones).
KERNEL_OPS = {
    "merge": ({"weighted_sum", "multi_weighted_sum"}, ["merge_cpu.cpp", "merge_avx2.cpp", "merge_avx512.cpp", "merge_cuda.cu"]),
    "xent": ({"linear_cross_entropy"}, ["xent_cpu.cpp", "xent_cuda.cu"]),
    # the multi-dot's SIMD bodies live in the merge's per-ISA files
    "dot": ({"multi_dot"}, ["dot_ops.cpp", "dot_ops_cuda.cpp", "dot_cpu.cpp", "dot_cuda.cu", "merge_avx2.cpp", "merge_avx512.cpp"]),
}
KERNEL_COMMON = ["ops.cpp", "ops_cuda.cpp"]


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "pipeline":
        return None
    base = REPO.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """Modules of ``pipeline`` that ``path`` imports (and their parent packages), and the names it
    imports from ``pipeline.kernels``."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found, kernel_names = set(), set()
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}  # never run: not part of what the code runs
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base]
            for a in node.names:  # "from pipeline.lib import tokens" imports a module
                if module_file(f"{base}.{a.name}") is not None:
                    targets.append(f"{base}.{a.name}")
            if base == "pipeline.kernels":
                kernel_names |= {a.name for a in node.names}
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                if module_file(".".join(parts[:i])) is not None:
                    found.add(".".join(parts[:i]))
    if me == "pipeline.sources":  # the registry imports every source module by name
        found |= {module_name(p) for p in (PKG / "sources").glob("*.py")}
    found.discard(me)
    return found, kernel_names


def closure(module: str) -> tuple[set[Path], set[str]]:
    """Files of every module ``module`` imports, directly or not (itself included), and the kernel ops they call."""
    seen: set[str] = set()
    ops: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = module_file(m)
        deps, kernel_names = imports_of(f)
        for op, (entry, _) in KERNEL_OPS.items():
            if entry & kernel_names:
                ops.add(op)
        todo.extend(deps - seen)
    return {module_file(m) for m in seen}, ops


def includes(files: list[str]) -> set[str]:
    """``files`` and every csrc header they include, recursively."""
    out, todo = set(), list(files)
    while todo:
        f = todo.pop()
        if f in out:
            continue
        out.add(f)
        for inc in re.findall(r'#include\s+"([^"]+)"', (CSRC / f).read_text()):
            if (CSRC / inc).is_file():
                todo.append(inc)
    return out


def csrc_for(ops: set[str]) -> set[str]:
    if not ops:
        return set()
    return includes(KERNEL_COMMON + [f for op in sorted(ops) for f in KERNEL_OPS[op][1]])


def stage_code(module: str) -> set[str]:
    """Repository-relative paths of the code a stage runs: its import closure and its kernels' sources."""
    files, ops = closure(module)
    return {str(f.relative_to(REPO)) for f in files} | {f"csrc/{f}" for f in csrc_for(ops)}


if __name__ == "__main__":
    import sys

    for m in sys.argv[1:]:
        print(m)
        for f in sorted(stage_code(m)):
            print("  -", f)
