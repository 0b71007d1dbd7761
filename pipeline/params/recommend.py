"""The ``recommend:`` section: the targets a researcher wants a model to do well on, and how the
mixture for each is found (gradient descent on the weight simplex through the merge) and confirmed
(trained for real against its rivals)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from pipeline.params.core import PositiveInt, Section, check_name

OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class TargetSpec(Section):
    """One target: eval domains of the corpus or registry sources, weighted; or a file of the user's own text.

    A domain of the corpus contributes its eval split (never trained on by any model); a registry
    source outside the corpus (``prepare.domains``) contributes its documents, without any that the
    corpus holds too. A file is JSON Lines (``text_field``) or plain text (one document, or
    documents separated by blank lines with ``.txt``).
    """

    domains: dict[str, Annotated[float, Field(ge=0)]] | None = None
    file: str | None = None
    text_field: str = "text"

    def file_problem(self) -> str | None:
        """Why ``file`` cannot be read as a target ("not found", "is a folder, not a file"); None when it
        can, or when the target is domains. Relative to the folder the stage runs in."""
        if self.file is None or Path(self.file).is_file():
            return None
        return "is a folder, not a file" if Path(self.file).is_dir() else "not found"

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if (self.domains is None) == (self.file is None):
            raise ValueError("give exactly one of 'domains' (eval domains or registry sources with weights) or 'file'")
        if self.domains is not None:
            if not self.domains:
                raise ValueError("'domains' is empty: name at least one domain with a weight > 0")
            if sum(self.domains.values()) <= 0:
                raise ValueError(f"the domain weights {dict(self.domains)} sum to 0: give at least one a weight > 0")
        return self


def _check_targets(targets: dict[str, TargetSpec]) -> dict[str, TargetSpec]:
    for name in targets:
        check_name(name, "target")
    return targets


class RecommendConfig(Section):
    targets: Annotated[dict[str, TargetSpec], AfterValidator(_check_targets)] = Field(default_factory=dict)
    budget: PositiveInt | None = None  # training tokens of each confirmed mixture (None: 3 x train.tokens)
    dev_fraction: OpenFraction = 0.5  # of a target's documents, the part the optimiser sees (by a hash of the id)
    max_tokens: PositiveInt = 16384  # per target and part (dev, test), shared among its domains by weight
    # a domain's share of a part spread evenly over its documents, none cut below this (None: whole documents)
    min_doc_tokens: PositiveInt | None = 256
    max_mb: Annotated[float, Field(gt=0)] = 1.0  # text read per registry source outside the corpus
    steps: PositiveInt = 30  # mirror-descent steps per start (fewer when it stalls)
    tol: Annotated[float, Field(ge=0)] = 1e-5  # a step that gains less dev loss (nats) than this counts as a stall
    lr: Annotated[float, Field(gt=0)] = 2.0  # first step: log-weight the worst shard loses against the best
    restarts: Annotated[int, Field(ge=0)] = 0  # seeded random starts besides the surrogate's optimum and uniform
    max_shards: PositiveInt | None = None  # keep at most this many shards in the answer
    # the merged proxy of weights w: seed + scale x (sum_k w_k theta_k - seed); 1 = the plain weighted average
    scale: Annotated[float, Field(gt=0)] = 1.0
