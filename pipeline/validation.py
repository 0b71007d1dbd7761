"""Not a stage: ``python -m pipeline.validation sample`` prints a balanced, seeded draw of
validation mixtures in params format, to paste under ``validation:`` in params.yaml.

``python -m pipeline.validation sample --n 20 --sizes 2 3 --seed 0`` (see
:func:`pipeline.lib.mixtures.sample` for how the draw is balanced).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.params.config import load_config
from pipeline.params.core import ConfigError
from pipeline.lib.mixtures import sample, to_params


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print a fresh seeded sample of validation mixtures in params format.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="print validation mixtures to paste into params.yaml")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--n", type=int, default=20, help="how many mixtures (default: %(default)s)")
    s.add_argument("--sizes", type=int, nargs="+", default=[2, 3], help="mixture sizes, cycled (default: 2 3)")
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        shards = list(load_config(args.params).shards)
        bad = [k for k in args.sizes if not 1 <= k <= len(shards)]
        if bad:
            raise ValueError(f"--sizes {bad}: sizes must be between 1 and the {len(shards)} shards")
        sys.stdout.write(to_params(sample(shards, args.n, args.sizes, args.seed)))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
