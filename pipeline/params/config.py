"""The whole params file: every section, unknown top-level keys refused, the checks across sections.

The check stage (:mod:`pipeline.check`) validates it before any other stage runs under DVC, so
a typo in any section stops ``dvc repro`` at once, before DVC removes an output; a stage run by
hand validates the sections it reads (its own :class:`~pipeline.params.core.StageParams`).
"""

from __future__ import annotations

from pydantic import ConfigDict

from pipeline.params.core import DEFAULT_PARAMS, StageParams, Threads, load
from pipeline.params.data import PrepareConfig, TokenizeConfig
from pipeline.params.device import DeviceName, Precision, SaveDtype
from pipeline.params.evaluation import EvalConfig
from pipeline.params.mixtures import MixturesConfig, ValidationConfig
from pipeline.params.recommend import RecommendConfig
from pipeline.params.model import BaseConfig, ModelConfig, OptimConfig
from pipeline.params.report import ReportConfig
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
    recommend: RecommendConfig = RecommendConfig()


def load_config(path=DEFAULT_PARAMS) -> Config:
    """Read and validate the whole params file; ConfigError naming the file and key."""
    return load(path, Config)
