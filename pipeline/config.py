"""params.yaml, validated in one place before any work starts.

Every section is a pydantic model with ``extra="forbid"``: an unknown key, a wrong type, an
unknown shard or domain name, or an empty selection is a :class:`ConfigError` that names the
file, the key and the fix. Stages call :func:`load_config` first and read only the sections
they declare in dvc.yaml.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.merge import MixturesConfig
from pipeline.validation import ValidationConfig

DEFAULT_PARAMS = Path("params.yaml")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            f"{what} name {name!r} is not usable as a file name: use letters, digits, '_', '.', '-', '+'"
        )
    return name


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


class ModelConfig(Section):
    """Architecture of a seed model trained from scratch (Llama-style)."""

    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 384
    max_position_embeddings: PositiveInt = 1024

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class OptimConfig(Section):
    tokens: PositiveInt
    lr: Annotated[float, Field(gt=0)]
    batch_size: PositiveInt = 8
    seq_len: PositiveInt = 256
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_fraction: Fraction = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_fraction: Fraction = 0.1
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    log_every: PositiveInt = 10


class BaseConfig(OptimConfig):
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


class EvalConfig(Section):
    domains: list[str] | None = None
    seq_len: PositiveInt = 256
    batch_size: PositiveInt = 16


class Config(Section):
    seed: int = 0
    threads: Annotated[int, Field(ge=0)] = 0
    prepare: PrepareConfig
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    base: BaseConfig
    train: OptimConfig
    shards: dict[str, ShardSpec]
    eval: EvalConfig = EvalConfig()
    mixtures: MixturesConfig = MixturesConfig()
    validation: ValidationConfig = ValidationConfig()

    @field_validator("shards")
    @classmethod
    def _shard_names(cls, shards: dict[str, ShardSpec]) -> dict[str, ShardSpec]:
        if not shards:
            raise ValueError("no shards: list at least one shard, e.g. 'news_bbc: {domain: news_bbc}'")
        for name in shards:
            check_name(name, "shard")
        return shards

    @model_validator(mode="after")
    def _cross(self) -> Config:
        known = set(self.prepare.domains)
        if not self.prepare.local:  # domains of local files are only known after reading them (prepare checks)
            for name, spec in self.shards.items():
                if spec.domain not in known:
                    raise ValueError(
                        f"shards.{name}.domain: unknown domain {spec.domain!r}; "
                        f"known: {sorted(known)} (add it to prepare.domains)"
                    )
            for d in self.eval.domains or []:
                if d not in known:
                    raise ValueError(f"eval.domains: unknown domain {d!r}; known: {sorted(known)}")
        self.mixtures.check_shards(list(self.shards))
        self.validation.check_shards(list(self.shards))
        pieces: dict[tuple[str, int], str] = {}
        for name, spec in self.shards.items():
            key = (spec.domain, spec.of, spec.piece)
            if key in pieces:
                raise ValueError(f"shards.{name} and shards.{pieces[key]} are the same data ({spec.domain} piece {spec.piece}/{spec.of})")
            pieces[key] = name
        return self

    def eval_domains(self, available: list[str]) -> list[str]:
        """The eval domains: as listed, or every domain that has an eval split."""
        if self.eval.domains is None:
            return sorted(available)
        missing = [d for d in self.eval.domains if d not in available]
        if missing:
            raise ConfigError(f"eval.domains: no eval data for {missing}; available: {sorted(available)}")
        return list(self.eval.domains)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml in the repository for the known keys)"
        elif e["type"] == "missing":
            msg = "missing required key"
        lines.append(f"  {key}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e.get("input"), dict) else ""))
    return "\n".join(lines)


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read and validate the whole params file; raise ConfigError naming the file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root or pass --params FILE)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None

