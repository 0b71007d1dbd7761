"""Validation mixtures: the mixtures that also get a model actually trained on them ("truth").

They are listed explicitly under ``validation.mixtures`` in params.yaml, because DVC's
``foreach`` needs them when it parses dvc.yaml. Each is a set of shards with optional ratios
(weights otherwise follow ``mixtures.weighting``, token-proportional by default), named by its
shards joined with ``+``.

``python -m pipeline.validation sample --n 12 --sizes 2 3 --seed 0`` prints a fresh seeded sample
of distinct mixtures in params format, to paste under ``validation:``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from pipeline.merge import SEP, ExplicitMixture, Mixture, MixturesConfig, resolve_mixtures


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mixtures: dict[str, ExplicitMixture] = Field(default_factory=dict)

    def check_shards(self, known: Sequence[str]) -> None:
        for name, mix in self.mixtures.items():
            bad = [s for s in mix.shards if s not in known]
            if bad:
                raise ValueError(f"validation.mixtures.{name}.shards: unknown shard(s) {bad}; known: {list(known)}")


def resolve_validation(vcfg: ValidationConfig, mcfg: MixturesConfig, shards: Sequence[str], tokens: dict[str, int]) -> list[Mixture]:
    """The validation mixtures with their normalised weights, weighted as the candidate mixtures are."""
    if not vcfg.mixtures:
        return []
    only = MixturesConfig(weighting=mcfg.weighting, explicit=vcfg.mixtures, subsets=[])
    return resolve_mixtures(only, shards, tokens)


def sample(shards: Sequence[str], n: int, sizes: Sequence[int], seed: int) -> list[tuple[str, ...]]:
    """``n`` distinct mixtures, sizes cycling through ``sizes``, shards in params order; seeded."""
    rng = random.Random(seed)
    out: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    attempts = 0
    while len(out) < n:
        k = sizes[len(out) % len(sizes)]
        pick = tuple(sorted(rng.sample(range(len(shards)), k)))
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {n} distinct mixtures of sizes {list(sizes)} from {len(shards)} shards")
        if pick in seen:
            continue
        seen.add(pick)
        out.append(tuple(shards[i] for i in pick))
    return out


def to_params(mixtures: list[tuple[str, ...]]) -> str:
    lines = ["validation:", "  mixtures:"]
    lines += [f"    {SEP.join(m)}: {{shards: [{', '.join(m)}]}}" for m in mixtures]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError, load_config

    p = argparse.ArgumentParser(description="Print a fresh seeded sample of validation mixtures in params format.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="print validation mixtures to paste into params.yaml")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--n", type=int, default=12, help="how many mixtures (default: %(default)s)")
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
