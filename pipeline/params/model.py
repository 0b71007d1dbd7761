"""The ``model:``, ``base:`` and ``train:`` sections: the seed's architecture and the training recipes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.params.core import Fraction, PositiveInt, Section


class ModelConfig(Section):
    """Architecture of a seed model trained from scratch (Llama-style)."""

    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 384
    max_position_embeddings: PositiveInt = 1024
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0
    rms_norm_eps: Annotated[float, Field(gt=0)] = 1e-6
    initializer_range: Annotated[float, Field(gt=0)] = 0.02  # std of the normal initialisation

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class OptimConfig(Section):
    """A training recipe: token budget, AdamW and its schedule (the ``train:`` section)."""

    tokens: PositiveInt
    lr: Annotated[float, Field(gt=0)]
    batch_size: PositiveInt = 8
    seq_len: PositiveInt = 256
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_fraction: Fraction = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_fraction: Fraction = 0.1
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    adam_beta1: Fraction = 0.9
    adam_beta2: Fraction = 0.95
    adam_eps: Annotated[float, Field(gt=0)] = 1e-8
    log_every: PositiveInt = 10


class BaseConfig(OptimConfig):
    """The seed model (the ``base:`` section): trained from scratch, or a local HF checkpoint."""

    tokens: Annotated[int, Field(ge=0)]
    init: Literal["scratch", "pretrained"] = "scratch"
    pretrained_path: str | None = None
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_fraction: Fraction = 0.05

    @model_validator(mode="after")
    def _check(self) -> BaseConfig:
        if self.init == "pretrained" and not self.pretrained_path:
            raise ValueError("init is 'pretrained' but pretrained_path is empty: set base.pretrained_path to a local HF model folder")
        if self.init == "scratch" and self.tokens == 0:
            raise ValueError("init is 'scratch' but tokens is 0: a seed trained from scratch needs base.tokens > 0")
        return self
