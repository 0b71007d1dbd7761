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
import itertools
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


def sample(shards: Sequence[str], n: int, sizes: Sequence[int], seed: int, tries: int = 200) -> list[tuple[str, ...]]:
    """``n`` distinct mixtures, sizes cycling through ``sizes``, shards in params order; seeded.

    The draw is balanced, as a designed experiment would be: every shard is in (as nearly as
    possible) the same number of mixtures, and no pair of shards meets much more often than
    another. A per-domain correlation across mixtures contrasts the mixtures that hold the domain
    with those that do not; a shard drawn into one mixture of twelve leaves that contrast to a
    single point. Of ``tries`` seeded greedy draws (each shard picked among the least used so far,
    ties broken at random), the one with the smallest spread of shard counts, then of pair counts,
    is kept.
    """
    if not all(1 <= k <= len(shards) for k in sizes):
        raise ValueError(f"mixture sizes {list(sizes)} must be between 1 and the {len(shards)} shards")
    rng = random.Random(seed)
    best, best_key = None, None
    for _ in range(tries):
        draw = _greedy_draw(len(shards), n, sizes, rng)
        if draw is None:
            continue
        key = _imbalance(draw, len(shards))
        if best_key is None or key < best_key:
            best, best_key = draw, key
    if best is None:
        raise ValueError(f"cannot draw {n} distinct mixtures of sizes {list(sizes)} from {len(shards)} shards")
    return [tuple(shards[i] for i in pick) for pick in best]


def _greedy_draw(n_shards: int, n: int, sizes: Sequence[int], rng: random.Random) -> list[tuple[int, ...]] | None:
    use = [0] * n_shards
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    for i in range(n):
        k = sizes[i % len(sizes)]
        for _attempt in range(50):
            order = sorted(range(n_shards), key=lambda s: (use[s], rng.random()))
            pick = tuple(sorted(order[:k]))
            if pick not in seen:
                break
            # the least-used shards already form a drawn mixture: swap one for a random other
            rest = order[k:]
            if not rest:
                return None
            j = rng.randrange(k)
            pick = tuple(sorted(order[:j] + order[j + 1:k] + [rng.choice(rest)]))
            if pick not in seen:
                break
        else:
            return None
        seen.add(pick)
        out.append(pick)
        for s in pick:
            use[s] += 1
    return out


def _imbalance(draw: list[tuple[int, ...]], n_shards: int) -> tuple[int, int, int]:
    use = [0] * n_shards
    pairs: dict[tuple[int, int], int] = {}
    for pick in draw:
        for s in pick:
            use[s] += 1
        for p in itertools.combinations(pick, 2):
            pairs[p] = pairs.get(p, 0) + 1
    return max(use) - min(use), max(pairs.values(), default=0), sum(c * c for c in pairs.values())


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
