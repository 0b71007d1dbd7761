"""params.yaml, validated in one place before any work starts.

Every section is a pydantic model with ``extra="forbid"``: an unknown key, a wrong type (a
boolean where a number belongs, too), a key written twice, an unknown shard or domain name, or an
empty selection is a :class:`ConfigError` that names the file, the key and the fix. Stages call
:func:`load_config` first (through ``pipeline.lib.runtime.run_stage``), so the whole file is
checked before any stage writes anything; each stage then uses only the sections it declares
under ``params:`` in dvc.yaml.

This module imports nothing of the pipeline: every other module may import it. Longer than
350 lines because the whole schema reads best in one place, section by section, in the order of
params.yaml.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # shard and mixture names: file-safe, '+' allowed
SEP = "+"  # a generated mixture is named by its shards joined by SEP
MAX_GENERATED = 100_000  # more candidate mixtures than this is a params mistake, not a plan


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the fix."""


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return any(_admits_bool(a) for a in getattr(annotation, "__args__", ()) or ())


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's ``true`` is not 1: a boolean is accepted only where the key is a yes/no."""
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{value!r} is a boolean, not a {cls.model_fields[info.field_name].annotation}: write a number "
                             f"(booleans are not counts)")
        return value


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
    adam_beta1: Fraction = 0.9
    adam_beta2: Fraction = 0.95
    adam_eps: Annotated[float, Field(gt=0)] = 1e-8
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


Ratio = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


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


class ValidationConfig(Section):
    """The ``validation:`` section: the mixtures that also get a model trained on them (the truth)."""

    mixtures: dict[str, ExplicitMixture] = Field(default_factory=dict)

    def check_shards(self, known: Iterable[str]) -> None:
        known = list(known)
        for name, mix in self.mixtures.items():
            bad = [s for s in mix.shards if s not in known]
            if bad:
                raise ValueError(f"validation.mixtures.{name}.shards: unknown shard(s) {bad}; known: {known}")


class EvalConfig(Section):
    domains: list[str] | None = None
    seq_len: PositiveInt = 256
    batch_size: PositiveInt = 16


class ReportConfig(Section):
    bootstrap: Annotated[int, Field(ge=0)] = 1000  # resamples of the validation mixtures for 95% intervals (0: none)


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
    report: ReportConfig = ReportConfig()

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; a params file that says a thing twice is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first at line {seen[key].start_mark.line + 1}): "
                    f"YAML would keep only the last one; remove or rename one of them", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_params(path: str | Path) -> Any:
    """The params file as plain data; duplicate keys are an error."""
    return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read and validate the whole params file; raise ConfigError naming the file and key."""
    path = Path(path)
    try:
        raw = read_params(path)
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

