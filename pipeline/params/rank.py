"""The ``rank:`` section: what the rank stage lists of the quadratic surrogate's predictions."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated

from pydantic import Field, field_validator

from pipeline.params.core import PositiveInt, Section
from pipeline.params.mixtures import ExplicitMixture, check_members, check_mixture_names

MAX_RANKED = 1_000_000  # subsets predicted per eval domain: past this, name the sizes to rank


class RankConfig(Section):
    top: PositiveInt = 10  # subsets listed per eval domain and overall
    sizes: list[Annotated[int, Field(ge=1)]] | None = None  # subset sizes ranked (null: every size that fits MAX_RANKED)
    mixtures: dict[str, ExplicitMixture] = Field(default_factory=dict)  # any weights to predict, named

    @field_validator("mixtures")
    @classmethod
    def _names(cls, mixtures: dict[str, ExplicitMixture]) -> dict[str, ExplicitMixture]:
        return check_mixture_names(mixtures)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None:
            if not sizes:
                raise ValueError("empty list: give at least one subset size, or null for every size")
            if len(set(sizes)) != len(sizes):
                raise ValueError(f"a size is listed twice in {sizes}")
        return sizes

    def sizes_for(self, shards: int) -> list[int]:
        """The sizes ranked: ``sizes``, else every size while the count stays within MAX_RANKED (all 2^K - 1
        subsets up to K = 19; beyond, the smallest sizes)."""
        if self.sizes is not None:
            return sorted(self.sizes)
        out, total = [], 0
        for size in range(1, shards + 1):
            total += math.comb(shards, size)
            if total > MAX_RANKED:
                break
            out.append(size)
        return out

    def check_shards(self, known: Iterable[str]) -> None:
        """Raise ValueError naming the params key: an unknown shard, a size past the shards, too many subsets asked for."""
        known = list(known)
        check_members(self.mixtures, "rank.mixtures", known)
        sizes = self.sizes_for(len(known))
        big = [s for s in sizes if s > len(known)]
        if big:
            raise ValueError(f"rank.sizes: {big} is more than the {len(known)} shards")
        n = sum(math.comb(len(known), s) for s in sizes)
        if n > MAX_RANKED:
            raise ValueError(f"rank.sizes: {n} subsets of {len(known)} shards at sizes {sizes} is more than {MAX_RANKED}; "
                             f"list the sizes to rank, e.g. [1, 2, 3, {len(known) - 1}, {len(known)}]")
