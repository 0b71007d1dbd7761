"""Continued pretraining: the one training loop of the seed, the shard models and the mixture models.

The recipe is the paper's: AdamW (``betas``, ``eps``, gradient clipping and the schedule all from
params), a token budget, a seeded data order (:func:`pipeline.lib.tokens.mixture_schedule`).
DVCLive (:mod:`pipeline.lib.curves`) logs loss and learning rate by step. Everything written into an output is fixed by the
inputs (the same model, data and seed give the same bytes on one machine); throughput and wall
time are returned apart, for the run record (:class:`pipeline.lib.outputs.RunRecord`). The model
trains where its :class:`~pipeline.lib.device.Placement` says, in its precision (fp32 on the CPU
by default: the same operations, in the same order, as before that setting existed; in bf16 the
loss goes through the output embedding in chunks, :class:`ChunkedLinearXent`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.lib.curves import curves
from pipeline.lib.device import CPU, Placement
from pipeline.lib.heap import kept_heap
from pipeline.lib.models import count_params, load_model, load_tokenizer, save_model
from pipeline.lib.outputs import atomic_dir, made_by
from pipeline.lib.runtime import StageError, progress, seed_everything
from pipeline.lib.tokens import Slice, batches, mixture_schedule, shard_slice

if TYPE_CHECKING:  # params sections, only read here
    from pipeline.params.model import OptimConfig
    from pipeline.params.shards import ShardSpec

log = logging.getLogger(__name__)


def lr_at(step: int, steps: int, ocfg: OptimConfig) -> float:
    warm = int(ocfg.warmup_fraction * steps)
    if step < warm:
        return ocfg.lr * (step + 1) / warm
    if ocfg.schedule == "constant":
        return ocfg.lr
    t = (step - warm) / max(1, steps - warm)
    lo = ocfg.lr * ocfg.min_lr_fraction
    return lo + (ocfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


def lm_loss(model, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of windows ``[B, L+1]``."""
    logits = model(input_ids=x[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))


class ChunkedLinearXent(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk`` rows at a time.

    The forward takes each chunk's logits, their log-sum-exp and, in the same pass, the chunk's
    gradient ``(softmax - onehot) / N`` times the weight and the hidden states, so no
    ``[N, vocabulary]`` tensor outlives a chunk; the backward scales the gradients it kept. Under
    autocast the matrix products run in its dtype; the log-sum-exp, the sums and the gradients it
    keeps are fp32. The same math as :func:`lm_loss` in another order (tests/test_training.py).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for lo in range(0, n, chunk):
            h, y = hidden[lo : lo + chunk], targets[lo : lo + chunk]
            z = (h @ weight.T).float()
            lse = torch.logsumexp(z, dim=1)
            total += (lse - z.gather(1, y[:, None])[:, 0]).sum(dtype=torch.float64)
            p = torch.exp_(z.sub_(lse[:, None]))
            p[torch.arange(len(y), device=y.device), y] -= 1.0
            p.mul_(1.0 / n)
            grad_h[lo : lo + chunk] = (p @ weight).float()
            grad_w += (p.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]), None, None


XENT_CHUNK = 512  # tokens per chunk: 512 x 8,192 fp32 logits (16 MB) stay in this CPU's L3
CHUNKABLE = ("llama", "mistral", "qwen2", "qwen3")  # plain heads: a bias-free linear layer on the final norm's output


def chunked_lm_loss(model, x: torch.Tensor) -> torch.Tensor:
    """:func:`lm_loss` through :class:`ChunkedLinearXent`, for the models of :data:`CHUNKABLE`."""
    hidden = model.base_model(input_ids=x[:, :-1]).last_hidden_state
    head = model.get_output_embeddings()
    return ChunkedLinearXent.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, x[:, 1:].reshape(-1), XENT_CHUNK)


def loss_for(model, place: Placement):
    """The training loss: in bf16 training (``place.train_mixed``) the chunked one where the model's head
    is a plain linear layer (1.16-1.24x over bf16 with full logits on this CPU, ``python -m pipeline.bench train``), else
    full logits (every fp32 run: the same operations as before the bf16 settings existed)."""
    head = model.get_output_embeddings()
    plain = getattr(model.config, "model_type", None) in CHUNKABLE and isinstance(head, torch.nn.Linear) and head.bias is None
    return chunked_lm_loss if place.train_mixed and plain else lm_loss


def optimizer(model, ocfg: OptimConfig, place: Placement) -> torch.optim.AdamW:
    """AdamW over ``model``'s (fp32) parameters as the recipe says; fused into one kernel per step on a GPU
    (the CPU keeps torch's default implementation, so CPU runs stay what they were)."""
    fused = {"fused": True} if place.device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=ocfg.lr, betas=(ocfg.adam_beta1, ocfg.adam_beta2), eps=ocfg.adam_eps,
                             weight_decay=ocfg.weight_decay, **fused)


@kept_heap()  # each step's logits and gradients reuse the last step's memory (pipeline/lib/heap.py)
def train_model(model, slices: list[Slice], weights: list[float], ocfg: OptimConfig, seed: int, live_dir: Path,
                desc: str, place: Placement = CPU) -> tuple[dict, dict]:
    """Train ``model`` in place on ``slices`` mixed by ``weights``; log curves into ``live_dir`` (DVCLive's files).

    The model is moved to ``place.device`` (and stays there) and its steps run under
    ``place.train_autocast()`` with :func:`loss_for`'s loss; weights and AdamW state stay fp32.

    Returns ``(summary, speed)``: what the run did (steps, tokens, final loss, data; fixed by the
    inputs) and how fast (seconds, tokens/s; for the run record only).
    """
    seed_everything(seed)
    per_step = ocfg.batch_size * ocfg.seq_len
    steps = math.ceil(ocfg.tokens / per_step)
    schedule, info = mixture_schedule(slices, weights, steps * ocfg.batch_size, ocfg.seq_len, seed)
    opt = optimizer(model.to(place.device), ocfg, place)
    loss_fn = loss_for(model, place)
    model.train()
    t0 = time.perf_counter()
    tokens_seen, losses = 0, []
    window_loss, window_tokens = 0.0, 0
    with curves(live_dir) as live:
        live.log_params({"tokens": ocfg.tokens, "lr": ocfg.lr, "steps": steps, "batch_size": ocfg.batch_size, "seq_len": ocfg.seq_len})
        bar = progress(total=steps, desc=desc, unit="step")
        for step, batch in enumerate(batches(slices, schedule, ocfg.seq_len, ocfg.batch_size)):
            lr = lr_at(step, steps, ocfg)
            for g in opt.param_groups:
                g["lr"] = lr
            x = place.put(torch.from_numpy(batch))
            with place.train_autocast():
                loss = loss_fn(model, x)
            if not torch.isfinite(loss):
                raise StageError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate (lr={ocfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.grad_clip)
            opt.step()
            n = x.shape[0] * ocfg.seq_len
            tokens_seen += n
            losses.append(loss.item())
            window_loss += loss.item()
            window_tokens += n
            bar.update(1)
            if (step + 1) % ocfg.log_every == 0 or step + 1 == steps:
                live.log_metric("loss", window_loss / math.ceil(window_tokens / per_step))
                live.log_metric("lr", lr)
                live.log_metric("tokens", tokens_seen)
                live.next_step()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                window_loss, window_tokens = 0.0, 0
        bar.close()
        elapsed = time.perf_counter() - t0
        summary = {"steps": steps, "tokens": tokens_seen,
                   "final_loss": float(np.mean(losses[-max(1, steps // 10):])), "data": info}
        speed = {"seconds": round(elapsed, 2), "tokens_per_s": round(tokens_seen / elapsed, 1)}
        live.summary["final_loss"] = summary["final_loss"]
    model.eval()
    log.info("%s: %d steps, %d tokens in %.1fs (%.0f tok/s), final loss %.3f", desc, steps, tokens_seen, elapsed, tokens_seen / elapsed, summary["final_loss"])
    return summary, speed


def continue_pretraining(seed: int, recipe: OptimConfig, name: str, specs: dict[str, ShardSpec], weights: list[float] | None,
                         out: Path, live_out: Path, base: Path, tokens_dir: Path, stage: str = "train",
                         place: Placement = CPU) -> dict:
    """Train the seed model on the shards ``specs`` (in order; weights token-proportional when None)
    for len(specs) x ``recipe.tokens`` tokens and save it; return its speed.

    ``seed`` and ``recipe`` are params ``seed`` and ``train``; the data comes from ``specs`` (a
    shard's own params entry, or a mixture's plan), so a stage reads no other shard's entry.
    """
    shards = list(specs)
    slices = [shard_slice(s, spec, tokens_dir) for s, spec in specs.items()]
    if weights is None:
        weights = [s.tokens for s in slices]
    ocfg = recipe.model_copy(update={"tokens": recipe.tokens * len(shards)})
    model = load_model(base)
    data_seed = seed + sum(map(ord, name))  # each model its own, reproducible data order
    with atomic_dir(live_out) as live_tmp:
        stats, speed = train_model(model, slices, weights, ocfg, data_seed, live_tmp, desc=f"train {name}", place=place)
        meta = made_by(stage, name=name, seed=seed, data_seed=data_seed, shards=shards, weights=[w / sum(weights) for w in weights],
                       seed_model=str(base), recipe=ocfg.model_dump(), params=count_params(model), **stats, **place.record(saved=True))
        save_model(place.for_saving(model), out, load_tokenizer(base), meta)
    return speed
