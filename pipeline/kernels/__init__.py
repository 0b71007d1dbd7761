"""shardmix kernels: fused weighted parameter averaging and streaming cross-entropy.

Public API (stable; other modules code against it):

- :func:`weighted_sum` -- ``out = sum_k w[k] * inputs[k]`` in one pass, fp32 accumulation.
- :func:`multi_weighted_sum` -- ``out_m = sum_k W[m, k] * inputs[k]``, each input read once.
- :func:`multi_dot` -- ``dots[k] = sum_j g[j] * inputs[k][j]`` (the merge's adjoint), fp64, each input read once.
- :func:`linear_cross_entropy` -- per-token NLL of ``hidden @ weight.T`` without the [N, V] logits.
- :func:`available_impls` -- which implementations this process can use.

``impl`` selects the implementation: ``"auto"`` (CUDA op for CUDA tensors, C++ op on CPU, the
pure-torch reference when the extension cannot be built -- one warning, never a crash),
``"reference"``, ``"cpu"`` or ``"cuda"`` (forcing an unavailable one raises ``RuntimeError``).
The extension is built lazily on the first call that needs it (or by
``python -m pipeline.kernels.build``); importing this package does no work.

All functions are for inference: they run under ``torch.no_grad()`` and do not support autograd.
Inputs are only ever read, so they may be zero-copy tensors over read-only memory-mapped files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from . import _ext, reference

__all__ = ["XentResult", "available_impls", "linear_cross_entropy", "multi_dot", "multi_weighted_sum", "weighted_sum"]

log = logging.getLogger(__name__)

IMPLS = ("auto", "reference", "cpu", "cuda")
MERGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Vocabulary rows per GEMM tile in the C++/CUDA cross-entropy (see pipeline/bench/xent.py).
XENT_VOCAB_CHUNK = 2048
# Default token rows per chunk for the fast cross-entropy paths.
XENT_TOKEN_CHUNK = 4096


class XentResult(NamedTuple):
    """Result of :func:`linear_cross_entropy`."""

    nll: Tensor  # [N] float32 per-token NLL (nats); 0.0 where target == ignore_index
    total: float  # fp64 sum of nll over counted tokens
    count: int  # number of counted tokens (target != ignore_index)


def available_impls() -> list[str]:
    """Implementations usable in this process, e.g. ``["reference", "cpu"]``.

    Builds/loads the extension if that has not been tried yet.
    """
    impls = ["reference"]
    if _ext.load_ops() is not None:
        impls.append("cpu")
        if _ext.has_cuda_kernels() and torch.cuda.is_available():
            impls.append("cuda")
    return impls


def _resolve_impl(impl: str, device: torch.device) -> str:
    """Map ``impl`` (possibly "auto") to a concrete, usable implementation for ``device``."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    if impl == "reference":
        return impl
    if impl == "auto":
        if device.type not in ("cpu", "cuda") or _ext.load_ops() is None:
            return "reference"
        if device.type == "cuda" and not _ext.has_cuda_kernels():
            log.debug("extension built without CUDA kernels; using the reference on %s", device)
            return "reference"
        return device.type
    if device.type != impl:
        raise ValueError(f"impl={impl!r} needs {impl} tensors, got tensors on {device}")
    if _ext.load_ops() is None:
        raise RuntimeError(f"impl={impl!r} unavailable: {_ext.load_error()}")
    if impl == "cuda" and not _ext.has_cuda_kernels():
        raise RuntimeError("impl='cuda' unavailable: the extension was built without CUDA kernels "
                           "(needs a CUDA build of torch and a CUDA toolkit)")
    return impl


def _tensor_list(inputs: Sequence[Tensor], purpose: str) -> list[Tensor]:
    """``inputs`` as a list: non-empty, all tensors (``purpose`` completes the error for an empty one)."""
    xs = list(inputs)
    if not xs:
        raise ValueError(f"inputs is empty: need at least one tensor {purpose}")
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs[{i}] is a {type(x).__name__}, expected a torch.Tensor")
    return xs


def _check_dtype(name: str, t: Tensor) -> None:
    if t.dtype not in MERGE_DTYPES:
        raise ValueError(f"{name} has dtype {t.dtype}; supported: float32, bfloat16, float16")


def _check_merge_tensors(inputs: Sequence[Tensor], outs: Sequence[Tensor] | None) -> tuple[list[Tensor], torch.device]:
    """Validate inputs (and outs): non-empty, same shape and device, supported dtypes."""
    xs = _tensor_list(inputs, "to average")
    first = xs[0]
    named = [(f"inputs[{i}]", x) for i, x in enumerate(xs)] + [(f"out[{m}]", o) for m, o in enumerate(outs or [])]
    for name, t in named:
        _check_dtype(name, t)
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but inputs[0] has {tuple(first.shape)}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but inputs[0] is on {first.device}: move them to one device")
    return xs, first.device


def _check_contiguous(tensors: Sequence[Tensor], what: str) -> None:
    for i, t in enumerate(tensors):
        if not t.is_contiguous():
            raise ValueError(
                f"{what}[{i}] is not contiguous (shape {tuple(t.shape)}, stride {t.stride()}); the fused "
                f"kernels need contiguous memory: pass .contiguous() or use impl='reference'"
            )


def _weight_matrix(weights: Tensor | Sequence, k: int, rows: int | None, *, single: bool) -> Tensor:
    """Weights as a float32 CPU [M, K] tensor: [K] -> [1, K] when ``single``; ``rows`` checks M."""
    w = weights.detach() if isinstance(weights, Tensor) else torch.as_tensor(weights, dtype=torch.float64)
    w = w.to(device="cpu", dtype=torch.float32)
    if single and w.dim() == 1:
        w = w[None]
    if w.dim() != 2 or w.shape[1] != k or (rows is not None and w.shape[0] != rows) or (single and w.shape[0] != 1):
        want = f"[{k}]" if single else f"[{rows if rows is not None else 'M'}, {k}]"
        raise ValueError(f"weights have shape {tuple(w.shape)}, expected {want} for {k} inputs")
    return w.contiguous()


def weighted_sum(
    inputs: Sequence[Tensor],
    weights: Sequence[float] | Tensor,
    out: Tensor | None = None,
    *,
    impl: str = "auto",
) -> Tensor:
    """Return ``out = sum_k weights[k] * inputs[k]``, computed in one pass with fp32 accumulation.

    Args:
        inputs: K >= 1 tensors of one shape and device; dtypes float32/bfloat16/float16, mixed
            allowed. Never written to (read-only mmap'd tensors are fine). The fast paths need
            them contiguous (``ValueError`` otherwise).
        weights: K floats (or a [K] tensor), applied in fp32. Zero and negative weights are fine.
        out: destination (float32/bfloat16/float16, same shape); None -> a new float32 tensor.
            It may alias one of the inputs or be a live ``nn.Parameter``'s ``.data`` (in place).
        impl: "auto" | "reference" | "cpu" | "cuda".

    Returns:
        ``out``. Inference only: no autograd.
    """
    xs, device = _check_merge_tensors(inputs, None if out is None else [out])
    w = _weight_matrix(weights, len(xs), rows=1, single=True)
    if out is None:
        out = torch.empty(xs[0].shape, dtype=torch.float32, device=device)
    _merge(xs, w, [out], impl)
    return out


def multi_weighted_sum(
    inputs: Sequence[Tensor],
    weights: Tensor | Sequence[Sequence[float]],
    outs: Sequence[Tensor] | None = None,
    *,
    impl: str = "auto",
) -> list[Tensor]:
    """Return ``[sum_k weights[m, k] * inputs[k] for m in range(M)]``, reading each input once.

    Args:
        inputs: as in :func:`weighted_sum`.
        weights: [M, K] mixture weights (tensor or nested sequence), applied in fp32.
        outs: M destinations (float32/bfloat16/float16, same shape); None -> M new float32 tensors.
            An output may alias an input. Outputs must not alias each other.
        impl: "auto" | "reference" | "cpu" | "cuda".

    Returns:
        The list of M outputs. Inference only: no autograd.
    """
    xs, device = _check_merge_tensors(inputs, outs)
    w = _weight_matrix(weights, len(xs), rows=None if outs is None else len(outs), single=False)
    if outs is None:
        outs = [torch.empty(xs[0].shape, dtype=torch.float32, device=device) for _ in range(w.shape[0])]
    outs = list(outs)
    _merge(xs, w, outs, impl)
    return outs


def _merge(xs: list[Tensor], w: Tensor, outs: list[Tensor], impl: str) -> None:
    """Dispatch a validated merge to the chosen implementation."""
    chosen = _resolve_impl(impl, xs[0].device)
    with torch.no_grad():
        if chosen == "reference":
            reference.multi_weighted_sum(xs, w, outs)
            return
        _check_contiguous(xs, "inputs")
        _check_contiguous(outs, "out")
        if xs[0].numel() == 0:
            return
        _ext.load_ops().weighted_sum_(xs, w.flatten().tolist(), outs)


def multi_dot(inputs: Sequence[Tensor], g: Tensor, *, impl: str = "auto") -> Tensor:
    """Return ``[sum_j g[j] * inputs[k][j] for k in range(K)]`` as a float64 [K] tensor, one pass.

    The adjoint of :func:`multi_weighted_sum`: with ``g`` the gradient of a loss with respect to a
    merged tensor ``sum_k w_k * inputs[k]``, ``dots`` is the gradient with respect to the weights.

    Args:
        inputs: K >= 1 tensors with as many elements as ``g`` (shapes may differ), one device;
            dtypes float32/bfloat16/float16. Never written (read-only mmap'd tensors are fine).
        g: float32 tensor (any other float dtype is converted: a copy).
        impl: "auto" | "reference" | "cpu" | "cuda".

    Every product is exact (fp32 operands in fp64) and the sums are fp64. Inference only.
    """
    xs = _tensor_list(inputs, "to dot with g")
    for i, x in enumerate(xs):
        _check_dtype(f"inputs[{i}]", x)
        if x.numel() != g.numel():
            raise ValueError(f"inputs[{i}] has {x.numel()} elements but g has {g.numel()}")
        if x.device != g.device:
            raise ValueError(f"inputs[{i}] is on {x.device} but g is on {g.device}: move them to one device")
    chosen = _resolve_impl(impl, g.device)
    with torch.no_grad():
        if chosen == "reference":
            return reference.multi_dot(xs, g)
        _check_contiguous(xs, "inputs")
        g32 = g.detach().to(torch.float32).contiguous()
        return _ext.load_ops().multi_dot([x.reshape(-1) for x in xs], g32.reshape(-1))


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    impl: str = "auto",
) -> XentResult:
    """Per-token NLL of ``logits = hidden @ weight.T (+ bias)`` without materialising [N, V].

    Tokens are processed in chunks of ``chunk_size`` rows; the vocabulary is streamed in tiles with
    an online log-sum-exp and a fused target-logit gather. Math in fp32; totals in fp64.

    Args:
        hidden: [N, d] float tensor (fp32/bf16/fp16; computed in fp32). Non-contiguous arguments
            are copied to contiguous memory first (cheap next to the GEMM).
        weight: [V, d] output embedding (same device).
        targets: [N] integer class ids in [0, V), or ``ignore_index``.
        bias: optional [V].
        ignore_index: targets equal to this are not counted (their nll is 0.0).
        chunk_size: token rows per chunk (None -> implementation default).
        impl: "auto" | "reference" | "cpu" | "cuda".

    Returns:
        :class:`XentResult` (nll [N] float32, total fp64 sum, count). Inference only: no autograd.
    """
    _check_xent(hidden, weight, targets, bias)
    targets = targets.to(torch.int64)
    n, v = hidden.shape[0], weight.shape[0]
    keep = targets != ignore_index
    bad = keep & ((targets < 0) | (targets >= v))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{i}] = {int(targets[i])} is outside [0, {v}) and is not ignore_index={ignore_index}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chosen = _resolve_impl(impl, hidden.device)
    with torch.no_grad():
        if chosen == "reference" or n == 0:
            nll = reference.linear_cross_entropy_nll(
                hidden, weight, targets, bias, ignore_index=ignore_index, chunk_size=chunk_size
            )
        else:
            # Copies of non-contiguous arguments are small next to the GEMM (weight is usually contiguous).
            nll = _ext.load_ops().linear_xent(
                hidden.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
                targets.contiguous(), ignore_index, chunk_size or XENT_TOKEN_CHUNK, XENT_VOCAB_CHUNK,
            )
        return XentResult(nll=nll, total=float(nll.double().sum()), count=int(keep.sum()))


def _check_xent(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None) -> None:
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, d] and weight [V, d]; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden is [N, {hidden.shape[1]}] but weight is [V, {weight.shape[1]}]: d must match")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets must be [N={hidden.shape[0]}], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class ids, got dtype {targets.dtype}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_dtype(name, t)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("targets", targets), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}: move them to one device")
