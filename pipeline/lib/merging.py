"""``merge_into``: the weighted average of K shard checkpoints, written in place into a resident model.

:func:`merge_into` writes ``sum_k w_k * theta_k`` into a resident model's parameters, tensor by
tensor, straight from the memory-mapped shard files of a :class:`~pipeline.lib.pool.ShardPool`
(or the copies it holds on a GPU) through the fused kernel
(:func:`pipeline.kernels.multi_weighted_sum`): no merged state dict, no per-shard model. Shards with
weight 0 are never read. A parameter shared by several names (tied input/output embeddings) is
written once; buffers are never touched, so they stay as the resident (seed) model has them.
:func:`merge_many_into` does the same for M models and M weight vectors at once, reading each
shard tensor once; :func:`merge_tensors` for any M lists of ``(checkpoint name, tensor)`` targets
(layer-streamed evaluation merges one decoder block of M mixtures at a time with it). Shard
tensors are read chunk by chunk, each chunk's mapped pages dropped after use (on a GPU, each chunk
copied over), unless the pool holds the shards on the models' device (copies on the GPU, mapped
pages kept on the CPU): then each tensor is read in place, in one kernel call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pipeline.kernels import multi_weighted_sum
from pipeline.lib.runtime import StageError

if TYPE_CHECKING:
    from pipeline.lib.pool import ShardPool

CHUNK_BYTES = 64 << 20  # shard bytes read per fused-kernel call from files whose pages are dropped behind
# Chunk lengths are multiples of this many elements, so that a chunk of an aligned tensor starts
# aligned (the kernels' vector paths need 16-byte alignment; 4096 elements is a 4 KiB page at least).
CHUNK_ALIGN = 4096


def chunk_step(chunk_bytes: int, k: int, itemsize: int) -> int:
    """Elements of each of ``k`` inputs per kernel call so that a call reads about ``chunk_bytes``
    (a multiple of :data:`CHUNK_ALIGN`, at least one)."""
    return max(1, chunk_bytes // (k * itemsize) // CHUNK_ALIGN) * CHUNK_ALIGN


def check_target(pool: ShardPool, src: str, p: torch.Tensor) -> None:
    """Raise StageError unless ``p`` can receive the merge of checkpoint tensor ``src``: same shape,
    a float dtype the kernels write, contiguous."""
    ref = pool.reference.folder
    if src not in pool:
        raise StageError(f"tensor {src} is in no checkpoint of {ref}: the model must be made from the seed folder the "
                         f"shards were trained from")
    info = pool.info(src)
    if tuple(p.shape) != info.shape:
        raise StageError(f"parameter {src}: {list(p.shape)} in the resident model but {list(info.shape)} in {info.file}: "
                         f"the resident model must be loaded from the seed folder {ref}")
    if p.dtype not in (torch.float32, torch.bfloat16, torch.float16) or not p.is_contiguous():
        raise StageError(f"parameter {src} is {p.dtype}{'' if p.is_contiguous() else ', not contiguous'}: "
                         f"load the resident model in float32 (pipeline.lib.models.load_model)")


def merge_plan(model: torch.nn.Module, pool: ShardPool) -> list[tuple[str, torch.Tensor]]:
    """``(checkpoint tensor name, parameter)`` for every distinct parameter of ``model``.

    A parameter with several names (tied embeddings) appears once, under the name the checkpoints
    store (a tied model's safetensors file has no ``lm_head.weight``). Raises StageError when a
    parameter is in no checkpoint or has another shape.
    """
    names: dict[int, list[str]] = {}
    params: dict[int, torch.Tensor] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
        params[id(p)] = p
    plan = []
    for pid, ns in names.items():
        src = next((n for n in ns if n in pool), None)
        if src is None:
            raise StageError(f"parameter {ns[0]} of the resident model is in no checkpoint of {pool.reference.folder}: the "
                             f"resident model must be loaded from the seed folder the shards were trained from")
        check_target(pool, src, params[pid])
        plan.append((src, params[pid]))
    return plan


def merge_into(model: torch.nn.Module, weights: Sequence[float], pool: ShardPool, *, impl: str = "auto",
               chunk_bytes: int = CHUNK_BYTES) -> None:
    """Set every parameter of ``model`` to ``sum_k weights[k] * theta_k`` (shard k of ``pool``), in place.

    ``weights`` has one entry per shard of the pool (normalise them first for an average). The
    model's buffers are left as they are. Peak extra memory: about ``chunk_bytes`` of mapped shard
    pages, whatever K is, unless the pool holds the shards in memory (:meth:`ShardPool.hold`).
    """
    merge_many_into([model], [list(weights)], pool, impl=impl, chunk_bytes=chunk_bytes)


def merge_many_into(models: Sequence[torch.nn.Module], weights: Sequence[Sequence[float]], pool: ShardPool, *,
                    impl: str = "auto", chunk_bytes: int = CHUNK_BYTES) -> None:
    """``merge_into`` for M models and an [M, K] weight matrix, reading each shard tensor once.

    The models must be distinct objects with the same architecture as the pool's checkpoints.
    """
    merge_tensors([merge_plan(m, pool) for m in models], weights, pool, impl=impl, chunk_bytes=chunk_bytes)


def merge_tensors(plans: Sequence[Sequence[tuple[str, torch.Tensor]]], weights: Sequence[Sequence[float]],
                  pool: ShardPool, *, impl: str = "auto", chunk_bytes: int = CHUNK_BYTES, first_row: int = 0) -> None:
    """Write ``sum_k weights[m][k] * pool[k][src]`` into ``dst`` for every ``(src, dst)`` of ``plans[m]``.

    ``plans`` holds one list per weight row, the same checkpoint names in the same order (the
    targets differ: M models, or M copies of one decoder block); see :func:`merge_plan` and
    :func:`check_target`. Each shard tensor is read once for all M rows: whole where the pool holds
    the shards in memory (:meth:`ShardPool.reads_whole`), else chunk by chunk, its mapped pages
    dropped after use. With ``first_row`` each ``dst`` receives the rows of
    ``src`` (along its first dimension) from that one on, as many as ``dst`` holds: a vocabulary
    tile of an embedding, say.
    """
    w = torch.as_tensor([list(map(float, row)) for row in weights], dtype=torch.float64)
    if w.dim() != 2 or w.shape[0] != len(plans) or w.shape[1] != len(pool):
        raise ValueError(f"weights must be [{len(plans)} models, {len(pool)} shards], got {list(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if any([n for n, _ in plan] != [n for n, _ in plans[0]] for plan in plans):
        raise ValueError("every plan must list the same checkpoint tensors in the same order")
    ks = [k for k in range(len(pool)) if bool((w[:, k] != 0).any())]  # shards nobody uses are never read
    w = w[:, ks].to(torch.float32)
    with torch.no_grad():
        for i, (src, _) in enumerate(plans[0] if plans else []):
            outs = [plan[i][1].data.view(-1) for plan in plans]
            if not ks:
                for o in outs:
                    o.zero_()
                continue
            views = [v.view(-1) for v in pool.views(src, ks)]
            n, device = outs[0].numel(), outs[0].device
            shape = pool.info(src).shape
            off = first_row * (views[0].numel() // shape[0] if shape and shape[0] else 1)
            if off + n > views[0].numel():
                raise ValueError(f"{src}: {n} elements from row {first_row} run past its {list(shape)}")
            step = max(1, n) if pool.reads_whole(device) else chunk_step(chunk_bytes, len(ks), views[0].element_size())
            for a in range(off, off + n, step):
                b = min(off + n, a + step)
                multi_weighted_sum([v[a:b].to(device) for v in views], w, [o[a - off:b - off] for o in outs], impl=impl)
                pool.release(src, ks, a, b)
            del views
    pool.release_all()
