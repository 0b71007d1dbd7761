"""The ``mixtures:`` section (the candidates the proxy scores) and ``validation:`` (those also trained)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.params.core import NAME_CHARS, NAME_RE, SEP, Section

MAX_GENERATED = 100_000  # more candidate mixtures than this is a params mistake, not a plan

Ratio = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


def check_mixture_names(mixtures: dict[str, ExplicitMixture]) -> dict[str, ExplicitMixture]:
    """Names usable as folder names; a name with '+' is its shards joined by '+'."""
    for name, mix in mixtures.items():
        if not NAME_RE.match(name):
            raise ValueError(f"mixture name {name!r} is not usable as a file name: use {NAME_CHARS}")
        if SEP in name and name.split(SEP) != list(mix.shards):
            raise ValueError(f"mixture name {name!r} has '{SEP}' but its shards are {list(mix.shards)}: a name with "
                             f"'{SEP}' must be its shards joined by '{SEP}' (in the same order); or drop the '{SEP}'")
    return mixtures


def check_members(mixtures: dict[str, ExplicitMixture], key: str, known: list[str]) -> None:
    """ValueError naming ``key.<name>`` when a mixture names an unknown shard or has a shard's name."""
    for name, mix in mixtures.items():
        bad = [s for s in mix.shards if s not in known]
        if bad:
            raise ValueError(f"{key}.{name}.shards: unknown shard(s) {bad}; known: {known}")
        if name in known:
            raise ValueError(f"{key}.{name}: a mixture cannot have the name of a shard; rename it")


class ExplicitMixture(Section):
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
            total = sum(self.ratios)
            if not math.isfinite(total):
                raise ValueError(f"ratios {list(self.ratios)} sum to {total}: only their proportions matter, so scale them down "
                                 f"(e.g. 7, 2, 1)")
            if total <= 0:
                raise ValueError("ratios sum to 0: give at least one positive ratio")
        return self


class SubsetSpec(Section):
    """Generated mixtures: every k-subset of the shards, or ``sample`` of them drawn with ``seed``."""

    k: Annotated[int, Field(ge=1)]
    sample: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0


class MixturesConfig(Section):
    """The ``mixtures:`` section of params.yaml: the candidate mixtures the proxy stage scores.

    Validated on its own (names, ratios, duplicates); :meth:`check_shards` checks the shard names
    against the ``shards:`` section.
    """

    weighting: Literal["tokens", "uniform"] = Field("tokens", description="weights of mixtures without ratios")
    explicit: dict[str, ExplicitMixture] = Field(default_factory=dict, description="named mixtures")
    subsets: list[SubsetSpec] = Field(default_factory=lambda: [SubsetSpec(k=2)], description="generated mixtures")
    shards: list[str] | None = Field(None, description="shards the subsets are drawn from (null = all, in params order)")
    eval_tokens: Annotated[int, Field(ge=1)] | None = Field(None, description="proxy scores use the first N tokens of each eval domain (null = all)")
    at_once: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="models merged per pass over the shard files (M); auto: as many as fit in free memory")
    stream: Literal["resident", "layers"] = Field(
        "resident", description="resident: M whole merged models; layers: one decoder block at a time (any depth, a few blocks of memory)")

    # how the scores are computed, not what they are: kept out of the metrics' provenance
    EXECUTION: ClassVar[frozenset[str]] = frozenset({"at_once", "stream"})

    @field_validator("explicit")
    @classmethod
    def _names(cls, explicit: dict[str, ExplicitMixture]) -> dict[str, ExplicitMixture]:
        return check_mixture_names(explicit)

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
        check_members(self.explicit, "mixtures.explicit", known)
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


class ValidationConfig(Section):
    """The ``validation:`` section: the mixtures that also get a model trained on them (the truth)."""

    mixtures: dict[str, ExplicitMixture] = Field(default_factory=dict)

    @field_validator("mixtures")
    @classmethod
    def _names(cls, mixtures: dict[str, ExplicitMixture]) -> dict[str, ExplicitMixture]:
        return check_mixture_names(mixtures)

    def check_shards(self, known: Iterable[str]) -> None:
        check_members(self.mixtures, "validation.mixtures", list(known))
