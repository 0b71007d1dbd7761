"""Dispatcher: ``python -m pipeline.bench <name> [args]`` imports ``pipeline.bench.<name>`` and
calls its ``main(argv)``; any benchmark module added to this package is picked up by name."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pipeline.bench as bench_pkg


def _available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by argv[0] with the remaining arguments."""
    argv = sys.argv[1:] if argv is None else argv
    names = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m pipeline.bench <name> [args]   (names: {', '.join(names)})")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"pipeline.bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
