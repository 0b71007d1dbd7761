"""The ``shards:`` section: the units of training data, each a domain or an equal-size piece of one."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from pipeline.params.core import PositiveInt, Section, check_name


class ShardSpec(Section):
    """A unit of training data: a whole domain, or piece ``piece`` of ``of`` equal-size pieces."""

    domain: str
    piece: Annotated[int, Field(ge=0)] = 0
    of: PositiveInt = 1

    @model_validator(mode="after")
    def _check(self) -> ShardSpec:
        if self.piece >= self.of:
            raise ValueError(f"piece {self.piece} is out of range for of={self.of} (pieces count from 0)")
        return self


def _check_shards(shards: dict[str, ShardSpec]) -> dict[str, ShardSpec]:
    if not shards:
        raise ValueError("no shards: list at least one shard, e.g. 'news_bbc: {domain: news_bbc}'")
    pieces: dict[tuple[str, int, int], str] = {}
    for name, spec in shards.items():
        check_name(name, "shard")
        key = (spec.domain, spec.of, spec.piece)
        if key in pieces:
            raise ValueError(f"shards.{name} and shards.{pieces[key]} are the same data ({spec.domain} piece {spec.piece}/{spec.of})")
        pieces[key] = name
    return shards


Shards = Annotated[dict[str, ShardSpec], AfterValidator(_check_shards)]
