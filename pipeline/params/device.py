"""The top-level keys ``device``, ``precision`` and ``save_dtype``: where models run, in what precision, stored how.

- ``device``: ``cpu`` (the default), ``cuda``, ``cuda:N`` or ``auto`` (``cuda`` when torch sees a
  GPU, else ``cpu``). Whether the machine has that device is checked when a stage starts
  (:func:`pipeline.lib.device.resolve_device`), not here: the schema holds on any machine.
- ``precision``: ``fp32`` (the default: every stage bit-identical run to run on one machine),
  ``bf16-mixed`` (autocast to bfloat16 for the matrix products, fp32 master weights and optimizer
  state, TF32 on CUDA) or ``bf16-train`` (bfloat16 autocast in the training steps only; scoring,
  merging and gradient passes in fp32). Merging and the streaming cross-entropy accumulate in
  fp32/fp64 either way.
- ``save_dtype``: the dtype of saved checkpoints, ``float32`` (the default) or ``bfloat16`` (half
  the disk and half the bytes the proxy's merge reads; the merge still accumulates in fp32).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

from pipeline.params.core import StageParams, Threads

DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N (N: a GPU index, 0 for the first)"


def _check_device(value: str) -> str:
    if not DEVICE_RE.match(value):
        raise ValueError(f"{value!r} is not a device: write {DEVICE_CHOICES}")
    return value


DeviceName = Annotated[str, AfterValidator(_check_device)]
Precision = Literal["fp32", "bf16-mixed", "bf16-train"]
SaveDtype = Literal["float32", "bfloat16"]


class ModelStageParams(StageParams):
    """The params of every stage that runs a model: torch ``threads`` (0 = all cores), ``device``, ``precision``."""

    threads: Threads = 0
    device: DeviceName = "cpu"
    precision: Precision = "fp32"
