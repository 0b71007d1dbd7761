"""The whole params file: every section, unknown top-level keys refused, the checks across sections.

The check stage (:mod:`pipeline.check`) validates it before any other stage runs under DVC, so
a typo in any section stops ``dvc repro`` at once, before DVC removes an output; a stage run by
hand validates the sections it reads (its own :class:`~pipeline.params.core.StageParams`).
"""

from __future__ import annotations

from pydantic import ConfigDict, model_validator

from pipeline.params.core import DEFAULT_PARAMS, StageParams, Threads, load
from pipeline.params.data import PrepareConfig, TokenizeConfig
from pipeline.params.device import DeviceName, Precision, SaveDtype
from pipeline.params.evaluation import EvalConfig
from pipeline.params.infer import InferConfig
from pipeline.params.mixtures import MixturesConfig, ValidationConfig
from pipeline.params.rank import RankConfig
from pipeline.params.recommend import RecommendConfig
from pipeline.params.model import BaseConfig, ModelConfig, OptimConfig
from pipeline.params.report import ReportConfig
from pipeline.params.select import SelectConfig
from pipeline.params.shards import Shards


class Config(StageParams):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    threads: Threads = 0
    device: DeviceName = "cpu"
    precision: Precision = "fp32"
    save_dtype: SaveDtype = "float32"
    prepare: PrepareConfig
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    base: BaseConfig
    train: OptimConfig
    shards: Shards
    eval: EvalConfig = EvalConfig()
    mixtures: MixturesConfig = MixturesConfig()
    validation: ValidationConfig = ValidationConfig()
    report: ReportConfig = ReportConfig()
    rank: RankConfig = RankConfig()
    recommend: RecommendConfig = RecommendConfig()
    infer: InferConfig = InferConfig()
    select: SelectConfig = SelectConfig()

    @model_validator(mode="after")
    def _names_across_sections(self) -> Config:
        """Probes name shards or corpus domains; ``infer.models`` and ``select.models`` name known models;
        ``rank`` names shards and sizes that exist."""
        domains = None if self.prepare.local else list(self.prepare.domains)
        self.infer.check_names(list(self.shards), domains, list(self.validation.mixtures))
        self.select.check_names([*self.validation.mixtures, *self.infer.probes])
        self.rank.check_shards(list(self.shards))
        return self


def load_config(path=DEFAULT_PARAMS) -> Config:
    """Read and validate the whole params file; ConfigError naming the file and key."""
    return load(path, Config)
