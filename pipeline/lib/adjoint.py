"""The merge's adjoint: the gradient of a loss on a merged model with respect to the mixture weights.

For a resident model holding ``theta(w) = sum_k w_k theta_k`` (:func:`pipeline.lib.merging.merge_into`)
and the gradient of a loss at it (``loss.backward()``), the chain rule through the merge gives
``dL/dw_k = sum over parameters of <dL/dtheta, theta_k>``: K dot products per parameter, computed
by the multi-dot kernel (:func:`pipeline.kernels.multi_dot`) straight from the memory-mapped shard
tensors of a :class:`~pipeline.lib.pool.ShardPool`, each read once, chunk by chunk. One forward and
backward pass plus this gives the whole gradient, whatever K is: what lets the recommend stage
descend on the weight simplex instead of enumerating subsets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.kernels import multi_dot
from pipeline.lib.merging import CHUNK_BYTES, chunk_step, merge_plan
from pipeline.lib.runtime import StageError

if TYPE_CHECKING:
    from pipeline.lib.pool import ShardPool


def merge_grad(model: torch.nn.Module, pool: ShardPool, *, impl: str = "auto", chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """``dL/dw``: float64 [K], ``sum over parameters of <p.grad, theta_k>`` for every shard k of ``pool``.

    A parameter shared by several names (tied embeddings) is counted once, with its whole gradient.
    Raises StageError when a parameter has no gradient.
    """
    plan = merge_plan(model, pool)
    dots = torch.zeros(len(pool), dtype=torch.float64)
    with torch.no_grad():
        for src, p in plan:
            if p.grad is None:
                raise StageError(f"parameter {src} has no gradient: run loss.backward() on the merged model first "
                                 f"(and keep requires_grad on every parameter)")
            g = p.grad.detach().reshape(-1)
            views = [v.view(-1) for v in pool.views(src)]
            n = g.numel()
            # the same chunks wherever the shards are: the fp64 sums' order, so the result, does not
            # depend on how much memory was free (a merge's result never does: it is elementwise)
            step = chunk_step(chunk_bytes, len(views), views[0].element_size())
            for a in range(0, n, step):
                b = min(n, a + step)
                dots += multi_dot([v[a:b].to(g.device) for v in views], g[a:b], impl=impl).cpu()
                pool.release(src, None, a, b)
            del views
    pool.release_all()
    return dots
