"""The ``eval:`` section: which domains every model is scored on, and the windows it is scored with."""

from __future__ import annotations

from pipeline.params.core import ConfigError, PositiveInt, Section


class EvalConfig(Section):
    domains: list[str] | None = None
    seq_len: PositiveInt = 256
    batch_size: PositiveInt = 16

    def select(self, available: list[str]) -> list[str]:
        """The eval domains: as listed, or every domain that has an eval split (ConfigError if one is missing)."""
        if self.domains is None:
            return sorted(available)
        missing = [d for d in self.domains if d not in available]
        if missing:
            raise ConfigError(f"eval.domains: no eval data for {missing}; available: {sorted(available)}")
        return list(self.domains)
