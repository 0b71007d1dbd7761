"""``python -m pipeline.kernels.build``: build the shardmix extension now (or report the cached
build) and print how long it took. The project's setup calls it so that a fresh machine needs no
manual step; without it the first kernel call builds (see :mod:`pipeline.kernels._ext`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pipeline.kernels._ext import load_ops, status


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or report the cached build) and print the time it took.

    Exits 0 even when the build fails (the reference path still works) unless ``--strict``.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.kernels.build", description="Build the shardmix C++/CUDA extension.")
    parser.add_argument("--verbose", action="store_true", help="show compiler commands")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the build fails")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        os.environ["SHARDMIX_BUILD_VERBOSE"] = "1"
    ops = load_ops()
    info = status()
    if args.json:
        print(json.dumps(info))
    elif ops is not None:
        print(f"shardmix kernels ready in {info['seconds']} s (cuda={info['with_cuda']}) at {info['dir']}")
    else:
        print(f"shardmix kernels NOT built after {info['seconds']} s: {info['error']}", file=sys.stderr)
        print("the pure-torch reference path will be used", file=sys.stderr)
    return 0 if ops is not None or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())

