"""The ``report:`` section: how the report judges the proxies."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.params.core import Section


class ReportConfig(Section):
    bootstrap: Annotated[int, Field(ge=0)] = 1000  # resamples of the validation mixtures for 95% intervals (0: none)
