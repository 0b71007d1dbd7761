"""The ``prepare:`` and ``tokenize:`` sections: which text makes the corpus, and how it becomes tokens."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from pipeline.params.core import Fraction, PositiveInt, Section


class LocalSource(Section):
    """The user's own corpus: JSONL or Parquet files with a text field and a domain field."""

    path: str
    text_field: str = "text"
    domain_field: str = "domain"
    id_field: str | None = None
    sub_field: str | None = None


class PrepareConfig(Section):
    domains: list[str] = Field(default_factory=list, description="registry sources by domain name")
    local: list[LocalSource] = Field(default_factory=list)
    max_mb: Annotated[float, Field(gt=0)] = 3.0
    min_chars: Annotated[int, Field(ge=0)] = 100
    eval_fraction: Fraction = 0.05
    base_fraction: Fraction = 0.3

    @model_validator(mode="after")
    def _check(self) -> PrepareConfig:
        if not self.domains and not self.local:
            raise ValueError("no corpus selected: list registry domains in 'domains' or files in 'local'")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"'domains' lists a domain twice: {self.domains}")
        if self.eval_fraction + self.base_fraction >= 1.0:
            raise ValueError("eval_fraction + base_fraction must leave a training split (sum < 1)")
        return self


class TokenizeConfig(Section):
    vocab_size: Annotated[int, Field(ge=256, le=1 << 20)] = 8192
    sample_mb_per_domain: Annotated[float, Field(gt=0)] = 1.0
    eval_tokens: PositiveInt = 16384
    num_proc: PositiveInt = 2
