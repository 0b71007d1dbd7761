"""Fake (meta) kernels for the shardmix ops, so FakeTensor tracing and ``torch.library.opcheck``
work. Imported by :mod:`pipeline.kernels.build` right after the extension is loaded."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.register_fake("shardmix::weighted_sum_")
def _weighted_sum_fake(inputs: list[Tensor], weights: list[float], outs: list[Tensor]) -> None:
    return None


@torch.library.register_fake("shardmix::linear_xent")
def _linear_xent_fake(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    ignore_index: int,
    chunk_tokens: int,
    chunk_vocab: int,
) -> Tensor:
    return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)


@torch.library.register_fake("shardmix::multi_dot")
def _multi_dot_fake(inputs: list[Tensor], g: Tensor) -> Tensor:
    return g.new_empty((len(inputs),), dtype=torch.float64)


@torch.library.register_fake("shardmix::triad_")
def _triad_fake(a: Tensor, b: Tensor, c: Tensor, s: float, nontemporal: bool) -> None:
    return None
