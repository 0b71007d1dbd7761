"""Mixtures of shards: names, weight vectors, the candidates of params, the validation design.

A *mixture* is a set of shards with weights that sum to 1. The ``mixtures:`` section of
params.yaml lists candidates: explicit named mixtures (shards, optional ratios) and generated ones
(all k-subsets of the shards, or a seeded sample of them). Weights of a mixture without ratios
follow ``weighting``: ``tokens`` (proportional to each shard's training tokens, as a model trained
on the union of the shards' data would see them) or ``uniform``. A generated mixture is named by
its shards in params order joined by ``+`` (``a+b+c``).

The *validation mixtures* (``validation.mixtures``) also get a model trained on them; they are
listed in params because DVC's ``foreach`` needs them when it parses dvc.yaml. :func:`sample`
draws a balanced set of them (``python -m pipeline.validation sample``).

No torch here: training, the proxy and the report all use these definitions.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.params.core import SEP
from pipeline.params.mixtures import MixturesConfig, SubsetSpec, ValidationConfig


@dataclass(frozen=True)
class Mixture:
    """A named mixture: shards (params order) and normalised weights (sum 1)."""

    name: str
    shards: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def k(self) -> int:
        return len(self.shards)

    def vector(self, order: Sequence[str]) -> list[float]:
        """The weights as a vector over the shards ``order`` (0 for shards not in the mixture)."""
        w = dict(zip(self.shards, self.weights))
        return [w.get(s, 0.0) for s in order]


def normalise(ratios: Sequence[float]) -> tuple[float, ...]:
    """``ratios / sum(ratios)``; ValueError if a ratio is negative or not finite, or all are 0."""
    if any(not math.isfinite(r) or r < 0 for r in ratios):
        raise ValueError(f"ratios must be finite and >= 0, got {list(ratios)}")
    total = math.fsum(ratios)
    if total <= 0:
        raise ValueError(f"ratios sum to {total}: at least one must be positive")
    return tuple(r / total for r in ratios)


def _unrank(index: int, n: int, k: int) -> tuple[int, ...]:
    """The ``index``-th k-subset of range(n) in lexicographic order (as itertools.combinations)."""
    out, start = [], 0
    for slot in range(k, 0, -1):
        for i in range(start, n):
            c = math.comb(n - i - 1, slot - 1)
            if index < c:
                out.append(i)
                start = i + 1
                break
            index -= c
    return tuple(out)


def subsets(pool: Sequence[str], spec: SubsetSpec) -> list[tuple[str, ...]]:
    """The k-subsets of ``pool`` a SubsetSpec asks for, in lexicographic (params) order.

    With ``sample`` (< the number of subsets): ``sample`` distinct subsets drawn with
    ``random.Random(seed)`` over subset indices, so the draw depends only on the pool, k, sample
    and seed.
    """
    n, k = len(pool), spec.k
    total = math.comb(n, k)
    if spec.sample is None or spec.sample >= total:
        return [tuple(pool[i] for i in c) for c in itertools.combinations(range(n), k)]
    picked = sorted(random.Random(spec.seed).sample(range(total), spec.sample))
    return [tuple(pool[i] for i in _unrank(j, n, k)) for j in picked]


def mixture_weights(members: Sequence[str], ratios: Sequence[float] | None, key: str, weighting: str,
                    tokens: dict[str, int] | None) -> tuple[float, ...]:
    """Normalised weights of a mixture: its ``ratios``, else by ``weighting`` (``tokens``: in
    proportion to each shard's training tokens; ``uniform``). ValueError naming ``key`` if undefined."""
    if ratios is not None:
        return normalise(ratios)
    if weighting == "uniform":
        return normalise([1.0] * len(members))
    if tokens is None:
        raise ValueError(f"{key}: 'tokens' weighting needs the shards' token counts")
    counts = [float(tokens[s]) for s in members]
    if not all(c > 0 for c in counts):
        empty = [s for s, c in zip(members, counts) if c <= 0]
        raise ValueError(f"{key}: shard(s) {empty} have no training tokens, so 'tokens' weighting is undefined; "
                         f"give ratios or use weighting: uniform")
    return normalise(counts)


def resolve_mixtures(mcfg: MixturesConfig, shards: Sequence[str], tokens: dict[str, int] | None = None) -> list[Mixture]:
    """Every candidate mixture of ``mcfg``: explicit ones first, then generated ones, no duplicate names.

    Args:
        mcfg: the validated ``mixtures:`` section.
        shards: the shard names of params.yaml, in params order (this order names generated mixtures).
        tokens: shard -> training tokens; required when a mixture without ratios uses ``tokens`` weighting.

    Raises ValueError naming the params key (unknown shard, a shard with 0 tokens, ...).
    """
    shards = list(shards)
    mcfg.check_shards(shards)
    order = {s: i for i, s in enumerate(shards)}
    out: dict[str, Mixture] = {}
    for name, mix in mcfg.explicit.items():
        weights = mixture_weights(mix.shards, mix.ratios, f"mixtures.explicit.{name}", mcfg.weighting, tokens)
        out[name] = Mixture(name, tuple(mix.shards), weights)
    pool = sorted(mcfg.shards, key=order.__getitem__) if mcfg.shards is not None else shards
    for i, spec in enumerate(mcfg.subsets):
        for members in subsets(pool, spec):
            name = SEP.join(members)
            if name not in out:
                out[name] = Mixture(name, members, mixture_weights(members, None, f"mixtures.subsets.{i}", mcfg.weighting, tokens))
    return list(out.values())


def resolve_validation(vcfg: ValidationConfig, weighting: str, shards: Sequence[str], tokens: dict[str, int] | None) -> list[Mixture]:
    """The validation mixtures with their normalised weights, weighted as the candidate mixtures are
    (``weighting`` is ``mixtures.weighting``)."""
    vcfg.check_shards(list(shards))
    return [Mixture(name, tuple(mix.shards), mixture_weights(mix.shards, mix.ratios, f"validation.mixtures.{name}", weighting, tokens))
            for name, mix in vcfg.mixtures.items()]


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


