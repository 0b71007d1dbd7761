"""Pure-torch reference implementations of the shardmix kernels.

These are the ground truth the tests compare every fast path against, and the fallback used when
the C++/CUDA extension cannot be built. They follow exactly the same contract as the public
functions in :mod:`pipeline.kernels` (fp32 accumulation, fp64 totals), favour clarity over speed,
and never write to their inputs. They are inference-only (no autograd support is intended).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["weighted_sum", "multi_weighted_sum", "multi_dot", "linear_cross_entropy_nll"]

# Token rows per chunk in the reference cross-entropy: bounds its memory to about
# chunk * V * 4 bytes (x2 for logsumexp's temporaries) without changing the result.
_REF_XENT_CHUNK = 256


def weighted_sum(inputs: Sequence[Tensor], weights: Tensor, out: Tensor) -> Tensor:
    """``out = sum_k weights[k] * inputs[k]`` accumulated in fp32, then stored into ``out``.

    ``weights`` is a 1-D fp32 CPU tensor of length ``len(inputs)``. ``out`` may alias an input:
    the whole sum is formed in a separate fp32 buffer before ``out`` is written.
    """
    acc = torch.zeros(out.shape, dtype=torch.float32, device=out.device)
    for w, x in zip(weights.tolist(), inputs):
        acc.add_(x.to(torch.float32), alpha=w)
    out.copy_(acc)
    return out


def multi_weighted_sum(inputs: Sequence[Tensor], weights: Tensor, outs: Sequence[Tensor]) -> list[Tensor]:
    """``outs[m] = sum_k weights[m, k] * inputs[k]`` for every row ``m`` of the [M, K] ``weights``.

    All sums are formed before any output is written, so an output may alias an input.
    """
    accs = []
    for row in weights:
        acc = torch.zeros(outs[0].shape, dtype=torch.float32, device=outs[0].device)
        for w, x in zip(row.tolist(), inputs):
            acc.add_(x.to(torch.float32), alpha=w)
        accs.append(acc)
    for acc, out in zip(accs, outs):
        out.copy_(acc)
    return list(outs)


def multi_dot(inputs: Sequence[Tensor], g: Tensor) -> Tensor:
    """``[sum_j g[j] * inputs[k][j] for k]`` as a float64 [K] tensor: operands in fp64, so every
    product is exact and only the fp64 sums round."""
    g64 = g.reshape(-1).to(torch.float64)
    return torch.stack([(x.reshape(-1).to(torch.float64) * g64).sum() for x in inputs]) if len(inputs) else g64.new_zeros(0)


def linear_cross_entropy_nll(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-token NLL ``[N]`` (fp32) of ``hidden @ weight.T (+ bias)`` against ``targets``.

    Computed in fp32 over token chunks of ``chunk_size`` rows (full vocabulary per chunk), with
    0.0 where ``targets == ignore_index``.
    """
    n = hidden.shape[0]
    chunk = chunk_size or _REF_XENT_CHUNK
    w32 = weight.to(torch.float32)
    b32 = None if bias is None else bias.to(torch.float32)
    nll = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    for start in range(0, n, chunk):
        h = hidden[start : start + chunk].to(torch.float32)
        t = targets[start : start + chunk]
        logits = h @ w32.T
        if b32 is not None:
            logits += b32
        keep = t != ignore_index
        safe_t = torch.where(keep, t, torch.zeros_like(t))
        picked = logits.gather(1, safe_t[:, None])[:, 0]
        chunk_nll = torch.logsumexp(logits, dim=1) - picked
        nll[start : start + chunk] = torch.where(keep, chunk_nll, torch.zeros_like(chunk_nll))
    return nll
