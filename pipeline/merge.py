"""Mixtures of shards and their weight vectors; ``merge_into``: the weighted average, in place.

A *mixture* is a set of shards with weights that sum to 1. The ``mixtures:`` section of
params.yaml (:class:`MixturesConfig`) lists them: explicit named mixtures (shards, optional
ratios) and generated ones (all k-subsets of the shards, or a seeded sample of them). Weights of a
mixture without ratios follow ``weighting``: ``tokens`` (proportional to each shard's training
tokens, as a model trained on the union of the shards' data would see them) or ``uniform``.
A generated mixture is named by its shards in params order joined by ``+`` (``a+b+c``).

:func:`merge_into` writes ``sum_k w_k * theta_k`` into a resident model's parameters, tensor by
tensor and chunk by chunk, straight from the memory-mapped shard files of a
:class:`~pipeline.pool.ShardPool` through the fused kernel (:func:`pipeline.kernels.multi_weighted_sum`):
no merged state dict, no per-shard model. Shards with weight 0 are never read. A parameter shared
by several names (tied input/output embeddings) is written once; buffers are never touched, so
they stay as the resident (seed) model has them. :func:`merge_many_into` does the same for M
models and M weight vectors at once, reading each shard tensor once.

Importing this module imports neither torch nor the pipeline's config (params validation uses it).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    import torch

    from pipeline.pool import ShardPool

log = logging.getLogger(__name__)

MAX_GENERATED = 100_000  # more candidate mixtures than this is a params mistake, not a plan
CHUNK_BYTES = 64 << 20  # shard bytes read per fused-kernel call (bounds resident mmap pages)
SEP = "+"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # mixture names: file-safe, '+' allowed


# ---------------------------------------------------------------- params


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Ratio = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class ExplicitMixture(_Section):
    """A named mixture: its shards and, optionally, their ratios (any positive scale)."""

    shards: list[str]
    ratios: list[Ratio] | None = None

    @model_validator(mode="after")
    def _check(self) -> ExplicitMixture:
        if not self.shards:
            raise ValueError("empty mixture: list at least one shard under 'shards'")
        dup = sorted({s for s in self.shards if self.shards.count(s) > 1})
        if dup:
            raise ValueError(f"shard(s) {dup} listed twice: list each shard once (use ratios to weight it)")
        if self.ratios is not None:
            if len(self.ratios) != len(self.shards):
                raise ValueError(f"{len(self.ratios)} ratios for {len(self.shards)} shards: give one ratio per shard, in the same order")
            if sum(self.ratios) <= 0:
                raise ValueError("ratios sum to 0: give at least one positive ratio")
        return self


class SubsetSpec(_Section):
    """Generated mixtures: every k-subset of the shards, or ``sample`` of them drawn with ``seed``."""

    k: Annotated[int, Field(ge=1)]
    sample: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0


class MixturesConfig(_Section):
    """The ``mixtures:`` section of params.yaml: the candidate mixtures the proxy stage scores.

    Validated on its own (names, ratios, duplicates); :meth:`check_shards` checks the shard names
    against the ``shards:`` section.
    """

    weighting: Literal["tokens", "uniform"] = Field("tokens", description="weights of mixtures without ratios")
    explicit: dict[str, ExplicitMixture] = Field(default_factory=dict, description="named mixtures")
    subsets: list[SubsetSpec] = Field(default_factory=lambda: [SubsetSpec(k=2)], description="generated mixtures")
    shards: list[str] | None = Field(None, description="shards the subsets are drawn from (null = all, in params order)")
    eval_tokens: Annotated[int, Field(ge=1)] | None = Field(None, description="proxy scores use the first N tokens of each eval domain (null = all)")
    at_once: Annotated[int, Field(ge=1)] = Field(1, description="mixtures merged per pass over the shard files (M resident models)")

    @field_validator("explicit")
    @classmethod
    def _names(cls, explicit: dict[str, ExplicitMixture]) -> dict[str, ExplicitMixture]:
        for name, mix in explicit.items():
            if not NAME_RE.match(name):
                raise ValueError(f"mixture name {name!r} is not usable as a file name: use letters, digits, '_', '.', '-', '+'")
            if SEP in name and name.split(SEP) != list(mix.shards):
                raise ValueError(f"mixture name {name!r} has '{SEP}' but its shards are {list(mix.shards)}: a name with "
                                 f"'{SEP}' must be its shards joined by '{SEP}' (in the same order); or drop the '{SEP}'")
        return explicit

    @field_validator("shards")
    @classmethod
    def _pool(cls, shards: list[str] | None) -> list[str] | None:
        if shards is not None:
            if not shards:
                raise ValueError("empty shard list: give at least one shard, or null for all shards")
            dup = sorted({s for s in shards if shards.count(s) > 1})
            if dup:
                raise ValueError(f"shard(s) {dup} listed twice")
        return shards

    @model_validator(mode="after")
    def _some(self) -> MixturesConfig:
        if not self.explicit and not self.subsets:
            raise ValueError("no mixtures: list named mixtures under 'explicit' or generated ones under 'subsets'")
        return self

    def check_shards(self, known: Iterable[str]) -> None:
        """Raise ValueError naming the params key when a mixture names an unknown shard."""
        known = list(known)
        for name, mix in self.explicit.items():
            bad = [s for s in mix.shards if s not in known]
            if bad:
                raise ValueError(f"mixtures.explicit.{name}.shards: unknown shard(s) {bad}; known: {known}")
            if name in known:
                raise ValueError(f"mixtures.explicit.{name}: a mixture cannot have the name of a shard; rename it")
        pool = self.shards if self.shards is not None else known
        bad = [s for s in pool if s not in known]
        if bad:
            raise ValueError(f"mixtures.shards: unknown shard(s) {bad}; known: {known}")
        for i, spec in enumerate(self.subsets):
            if spec.k > len(pool):
                raise ValueError(f"mixtures.subsets.{i}.k: {spec.k} is more than the {len(pool)} shards to choose from")
            if spec.sample is None and math.comb(len(pool), spec.k) > MAX_GENERATED:
                raise ValueError(f"mixtures.subsets.{i}: {math.comb(len(pool), spec.k)} subsets of size {spec.k}; "
                                 f"set 'sample' to draw fewer")


def load_mixtures_config(section: object, params: str = "params.yaml") -> MixturesConfig:
    """The validated ``mixtures:`` section (a MixturesConfig already, a raw dict, or None: defaults).

    Raises pipeline.config.ConfigError naming the file and the key.
    """
    from pipeline.config import ConfigError

    if isinstance(section, MixturesConfig):
        return section
    try:
        return MixturesConfig.model_validate(section or {})
    except ValidationError as e:
        lines = [f"{params}: invalid parameters"]
        for err in e.errors():
            key = ".".join(["mixtures", *(str(p) for p in err["loc"])])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


# ---------------------------------------------------------------- mixtures


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

    def default_weights(members: Sequence[str], key: str) -> tuple[float, ...]:
        if mcfg.weighting == "uniform":
            return normalise([1.0] * len(members))
        if tokens is None:
            raise ValueError(f"{key}: 'tokens' weighting needs the shards' token counts")
        counts = [float(tokens[s]) for s in members]
        if not all(c > 0 for c in counts):
            empty = [s for s, c in zip(members, counts) if c <= 0]
            raise ValueError(f"{key}: shard(s) {empty} have no training tokens, so 'tokens' weighting is undefined; "
                             f"give ratios or use weighting: uniform")
        return normalise(counts)

    out: dict[str, Mixture] = {}
    for name, mix in mcfg.explicit.items():
        key = f"mixtures.explicit.{name}"
        weights = normalise(mix.ratios) if mix.ratios is not None else default_weights(mix.shards, key)
        out[name] = Mixture(name, tuple(mix.shards), weights)
    pool = sorted(mcfg.shards, key=order.__getitem__) if mcfg.shards is not None else shards
    for i, spec in enumerate(mcfg.subsets):
        for members in subsets(pool, spec):
            name = SEP.join(members)
            if name not in out:
                out[name] = Mixture(name, members, default_weights(members, f"mixtures.subsets.{i}"))
    return list(out.values())


def shard_token_counts(shards: dict, tokens_dir) -> dict[str, int]:
    """Training tokens of each shard (``pipeline.data.shard_slice``): the ``tokens`` weighting."""
    from pipeline.data import shard_slice

    return {name: shard_slice(name, spec, tokens_dir).tokens for name, spec in shards.items()}


# ---------------------------------------------------------------- merging


def merge_plan(model: torch.nn.Module, pool: ShardPool) -> list[tuple[str, torch.Tensor]]:
    """``(checkpoint tensor name, parameter)`` for every distinct parameter of ``model``.

    A parameter with several names (tied embeddings) appears once, under the name the checkpoints
    store (a tied model's safetensors file has no ``lm_head.weight``). Raises StageError when a
    parameter is in no checkpoint or has another shape.
    """
    import torch

    from pipeline.common import StageError

    names: dict[int, list[str]] = {}
    params: dict[int, torch.Tensor] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
        params[id(p)] = p
    ref = pool.reference.folder
    plan = []
    for pid, ns in names.items():
        src = next((n for n in ns if n in pool), None)
        p = params[pid]
        if src is None:
            raise StageError(f"parameter {ns[0]} of the resident model is in no checkpoint of {ref}: the resident model "
                             f"must be loaded from the seed folder the shards were trained from")
        info = pool.info(src)
        if tuple(p.shape) != info.shape:
            raise StageError(f"parameter {src}: {list(p.shape)} in the resident model but {list(info.shape)} in {info.file}: "
                             f"the resident model must be loaded from the seed folder {ref}")
        if p.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not p.is_contiguous():
            raise StageError(f"parameter {src} is {p.dtype}{'' if p.is_contiguous() else ', not contiguous'}: "
                             f"load the resident model in float32 (pipeline.model.load_model)")
        plan.append((src, p))
    return plan


def merge_into(model: torch.nn.Module, weights: Sequence[float], pool: ShardPool, *, impl: str = "auto",
               chunk_bytes: int = CHUNK_BYTES) -> None:
    """Set every parameter of ``model`` to ``sum_k weights[k] * theta_k`` (shard k of ``pool``), in place.

    ``weights`` has one entry per shard of the pool (normalise them first for an average). The
    model's buffers are left as they are. Peak extra memory: about ``chunk_bytes`` of mapped shard
    pages, whatever K is.
    """
    merge_many_into([model], [list(weights)], pool, impl=impl, chunk_bytes=chunk_bytes)


def merge_many_into(models: Sequence[torch.nn.Module], weights: Sequence[Sequence[float]], pool: ShardPool, *,
                    impl: str = "auto", chunk_bytes: int = CHUNK_BYTES) -> None:
    """``merge_into`` for M models and an [M, K] weight matrix, reading each shard tensor once.

    The models must be distinct objects with the same architecture as the pool's checkpoints.
    """
    import torch

    from pipeline.kernels import multi_weighted_sum

    w = torch.as_tensor([list(map(float, row)) for row in weights], dtype=torch.float64)
    if w.dim() != 2 or w.shape[0] != len(models) or w.shape[1] != len(pool):
        raise ValueError(f"weights must be [{len(models)} models, {len(pool)} shards], got {list(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    ks = [k for k in range(len(pool)) if bool((w[:, k] != 0).any())]  # shards nobody uses are never read
    w = w[:, ks].to(torch.float32)
    plans = [merge_plan(m, pool) for m in models]
    with torch.no_grad():
        for i, (src, _) in enumerate(plans[0]):
            outs = [plan[i][1].data.view(-1) for plan in plans]
            if not ks:
                for o in outs:
                    o.zero_()
                continue
            views = [v.view(-1) for v in pool.views(src, ks)]
            n = outs[0].numel()
            step = max(4096, chunk_bytes // (len(ks) * views[0].element_size()))
            for a in range(0, n, step):
                b = min(n, a + step)
                multi_weighted_sum([v[a:b] for v in views], w, [o[a:b] for o in outs], impl=impl)
                pool.release(src, ks, a, b)
            del views
    pool.release_all()
