"""The ``infer:`` section: which shards made a model, from its weights (Morris et al. 2025), checked
on models whose data is known (the validation truths and the probes here)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pipeline.params.core import PositiveInt, Section, check_name
from pipeline.params.mixtures import ExplicitMixture

Share = Annotated[float, Field(gt=0.0, lt=1.0)]


class ProbeMixture(ExplicitMixture):
    """A model trained only to check the inference: like a validation mixture (``k x train.tokens``
    tokens), but its members may also be corpus domains that are no shard (data outside the pool)."""


def _check_probes(probes: dict[str, ProbeMixture]) -> dict[str, ProbeMixture]:
    for name in probes:
        check_name(name, "probe")
    return probes


class InferConfig(Section):
    """Mixture inference: each model's update on the shard updates, with Adam's per-coordinate scaling."""

    probes: Annotated[dict[str, ProbeMixture], AfterValidator(_check_probes)] = Field(default_factory=dict)
    models: list[str] | None = None  # models to infer (validation mixtures or probes); null = all of both
    moment_batches: PositiveInt = 64  # training batches per shard for its Adam second moments at the seed
    # 0.5: Adam's root; 0: plain; fit: per model, the least unexplained (0 to 0.5); calibrate: least L1 on calibration probes
    adam_power: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["fit", "calibrate"] = "fit"
    calibration: list[str] = Field(default_factory=list)  # probes that fix adam_power: calibrate (then never judged)
    present: Share = 0.05  # an estimated weight at least this judges a shard present
    max_unexplained: Share = 0.6  # a larger unexplained share of the update: not made from these shards
    max_coords: PositiveInt = 4_000_000  # a seeded sample of this many coordinates on larger models

    def check_probes(self, shards: list[str], domains: list[str] | None, validation: list[str]) -> None:
        """ValueError naming the key when a probe names neither a shard nor (when known) a domain, or
        shares a name with a validation mixture or a shard (reads ``probes`` only)."""
        for name, probe in self.probes.items():
            if name in validation or name in shards:
                raise ValueError(f"infer.probes.{name}: the name of a validation mixture or shard; rename the probe")
            bad = [m for m in probe.shards if m not in shards and domains is not None and m not in domains]
            if bad:
                raise ValueError(f"infer.probes.{name}.shards: {bad} are neither shards {shards} nor corpus domains {domains}")

    def check_names(self, shards: list[str], domains: list[str] | None, validation: list[str]) -> None:
        """The probes (:meth:`check_probes`); ``models`` and ``calibration`` name known models, and
        ``adam_power: calibrate`` has calibration probes."""
        self.check_probes(shards, domains, validation)
        known = list(validation) + list(self.probes)
        for m in self.models or []:
            if m not in known:
                raise ValueError(f"infer.models: unknown model {m!r}; known: validation mixtures and probes {known}")
        for m in self.calibration:
            if m not in self.probes or any(s not in shards for s in self.probes[m].shards):
                raise ValueError(f"infer.calibration: {m!r} is not a probe of shards only; list probes of infer.probes whose "
                                 f"members are all shards")
        if self.adam_power == "calibrate" and not self.calibration:
            raise ValueError("infer.adam_power: calibrate needs probes under infer.calibration (models of known, unequal "
                             "mixtures); or give a number (0.5: Adam's square root)")
        if self.adam_power == "calibrate" and self.models is not None and not set(self.calibration) <= set(self.models):
            raise ValueError(f"infer.models must include the calibration probes {self.calibration}")
