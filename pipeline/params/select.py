"""The ``select:`` section: which training examples made a model, by SELECT (Morris et al. 2025)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.params.core import PositiveInt, Section


class SelectConfig(Section):
    """SELECT: per-example gradients at the model's weights, projected, greedily matched to its update."""

    models: list[str] = Field(default_factory=list)  # validation mixtures or probes to select data for
    pool_per_domain: PositiveInt = 100  # training windows per corpus domain in the pool (seeded)
    k: PositiveInt = 100  # examples each method selects
    gradients: Literal["linear", "head"] = "linear"  # every linear layer, or the output embedding only (the paper's default)
    proj_dim: PositiveInt = 4096  # sketch size per layer: a x b, b the largest divisor of it up to its square root
    # picks per running sum: 0 = one running sum for all k (the paper's SELECT); n > 0 = the sum started again every n
    # picks (the paper code's greedy_batched; reported beside it with n = train.batch_size as select_batched)
    batch: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"select.models lists a model twice: {self.models}")
        return self

    def check_names(self, known: list[str]) -> None:
        for m in self.models:
            if m not in known:
                raise ValueError(f"select.models: unknown model {m!r}; known: validation mixtures and probes {known}")


def sketch_shape(proj_dim: int) -> tuple[int, int]:
    """``(a, b)``, ``a * b == proj_dim``, ``b`` the largest divisor of ``proj_dim`` not above its square root."""
    b = max(d for d in range(1, math.isqrt(proj_dim) + 1) if proj_dim % d == 0)
    return proj_dim // b, b
