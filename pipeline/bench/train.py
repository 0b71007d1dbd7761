"""The recipe's training step on the default model's shape: where its time goes, and what two candidate changes would gain.

``python -m pipeline.bench train [--quick] [--json] [--csv PATH] [--reps 5]``

Every model the pipeline makes on the CPU is trained by one step (:mod:`pipeline.lib.training`):
the full ``[tokens, vocabulary]`` logits, their cross-entropy, backward, gradient clipping and AdamW,
in fp32. On the default shape (hidden 128, 4 layers, vocabulary 8,192, tied embeddings; batches of
8 x 256 tokens) the output embedding is most of the arithmetic, and its ``[2048, 8192]`` logits are
written, read and differentiated through memory. This benchmark times, round-robin on a random model
of that shape (each variant its own copy and optimizer, the same batch):

- ``recipe``: the step the stages run (``lm_loss``, backward, clip, AdamW, inside
  :func:`pipeline.lib.heap.kept_heap` as :func:`~pipeline.lib.training.train_model` runs it), and its
  parts: forward and loss, backward, clip and optimizer; and the output embedding with its
  cross-entropy alone;
- ``default_heap``: the same step with glibc's default allocation, which maps every block above
  32 MiB afresh and unmaps it when freed (the logits, their log-softmax and gradients: each step
  faults its pages in again). Each repetition enters and leaves ``kept_heap`` (leaving returns the
  memory), so the recipe's first step of every repetition pays those faults too: ``kept_heap_speedup``
  understates what a run of thousands of steps gains;
- ``chunked``: the same step with the loss taken through the output embedding a chunk of 512
  tokens at a time, its gradients computed in the same pass (no ``[tokens, vocabulary]`` logits
  are kept): :func:`pipeline.lib.training.chunked_lm_loss`, the same math in another order;
- ``bf16``: the recipe's step under CPU bf16 autocast (fp32 weights and optimizer; this machine's
  AVX512-BF16 runs bf16 matrix products at about twice the fp32 rate);
- ``chunked_bf16``: both: the step of ``precision: bf16-train`` (and ``bf16-mixed``).

Each candidate's loss and gradients at the same weights are compared with the recipe's (fp32).
The default stays fp32: a model trained another way differs in its bits, so changing it means
rerunning every training stage (``docs/results.md``, "Time of a full run"). Last line printed:
one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.bench import emit, interleaved_medians, seconds
from pipeline.lib.device import Placement
from pipeline.lib.heap import kept_heap
from pipeline.lib.training import ChunkedLinearXent, chunked_lm_loss, lm_loss, optimizer
from pipeline.params.model import OptimConfig

SHAPES = {  # vocabulary, hidden, intermediate, layers, heads, batch, tokens per window
    "default": (8192, 128, 384, 4, 4, 8, 256),
    "quick": (512, 32, 64, 2, 2, 2, 32),
}


def random_model(shape: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, inter, layers, heads, _, seq = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2 * seq,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float().train()


VARIANTS = {  # name: (loss function, bf16 autocast, glibc's allocation kept between steps)
    "recipe": (lm_loss, False, True),
    "default_heap": (lm_loss, False, False),
    "chunked": (chunked_lm_loss, False, True),
    "bf16": (lm_loss, True, True),
    "chunked_bf16": (chunked_lm_loss, True, True),
}
SPEEDUP_KEYS = {"default_heap": "kept_heap_speedup"}  # recipe over it, not it over the recipe


class Trainer:
    """One variant's model, the training library's AdamW and autocast for the train recipe's defaults, and its step."""

    def __init__(self, model, name: str):
        self.model = copy.deepcopy(model)
        self.loss_fn, bf16, self.kept = VARIANTS[name]
        place = Placement(torch.device("cpu"), "bf16-train" if bf16 else "fp32")
        self.ctx = place.train_autocast
        self.recipe = OptimConfig(tokens=1, lr=1e-3)
        self.opt = optimizer(self.model, self.recipe, place)

    def grads(self, x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        self.model.zero_grad(set_to_none=True)
        with self.heap(), self.ctx():
            loss = self.loss_fn(self.model, x)
            loss.backward()
        return loss.item(), {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}

    def step(self, x: torch.Tensor, parts: dict[str, list[float]] | None = None) -> None:
        t0 = time.perf_counter()
        with self.ctx():
            loss = self.loss_fn(self.model, x)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.opt.step()
        if parts is not None:
            for key, dt in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", time.perf_counter() - t2)):
                parts[key].append(dt)


    def heap(self):
        """:func:`kept_heap`, or nothing for the variant that keeps glibc's default allocation."""
        return kept_heap() if self.kept else contextlib.nullcontext()

    def steps(self, x: torch.Tensor, n: int, parts: dict[str, list[float]] | None = None) -> None:
        """``n`` steps; inside :func:`kept_heap` unless the variant keeps glibc's default allocation."""
        with self.heap():
            for _ in range(n):
                self.step(x, parts)


def agreement(ref: tuple[float, dict], got: tuple[float, dict]) -> dict:
    """Loss difference and the largest gradient difference relative to the largest gradient, over tensors."""
    rel = max(float((got[1][n] - g).abs().max() / g.abs().max().clamp_min(1e-30)) for n, g in ref[1].items())
    return {"loss_abs_diff": abs(got[0] - ref[0]), "grad_max_rel_diff": rel}


def head_alone(shape: str, reps: int) -> dict:
    """The output embedding and its cross-entropy, forward and backward, on the step's tokens: full logits against chunks."""
    vocab, hidden, *_, batch, seq = SHAPES[shape]
    n = batch * seq
    torch.manual_seed(1)
    h = (torch.randn(n, hidden) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (n,))

    def full():
        F.cross_entropy(h @ w.T, y).backward()

    def chunked():
        ChunkedLinearXent.apply(h, w, y, 512).backward()

    t = interleaved_medians({"full": full, "chunked": chunked}, reps)
    return {"head_xent_s": seconds(t["full"]), "head_xent_chunked_s": seconds(t["chunked"])}


def gemm_rates(shape: str, reps: int) -> dict:
    """GFLOP/s of the output embedding's forward product on the step's tokens, fp32 and bf16."""
    vocab, hidden, *_, batch, seq = SHAPES[shape]
    a, b = torch.randn(batch * seq, hidden), torch.randn(hidden, vocab)
    a16, b16 = a.bfloat16(), b.bfloat16()
    t = interleaved_medians({"fp32": lambda: a @ b, "bf16": lambda: a16 @ b16}, max(reps, 5))
    flops = 2 * a.shape[0] * hidden * vocab
    return {"head_gemm_gflops_fp32": round(flops / t["fp32"] / 1e9, 1), "head_gemm_gflops_bf16": round(flops / t["bf16"] / 1e9, 1)}


def bench(shape: str, reps: int, steps: int) -> dict:
    vocab, *_, batch, seq = SHAPES[shape]
    model = random_model(shape)
    x = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(2))
    trainers = {name: Trainer(model, name) for name in VARIANTS}
    ref = trainers["recipe"].grads(x)
    out: dict = {"shape": shape, "tokens_per_step": batch * seq, "threads": torch.get_num_threads()}
    for name, tr in trainers.items():
        if name != "recipe":
            out |= {f"{name}_{k}": v for k, v in agreement(ref, tr.grads(x)).items()}
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    t = interleaved_medians({name: (lambda tr=tr: tr.steps(x, steps, parts if tr is trainers["recipe"] else None))
                             for name, tr in trainers.items()}, reps)
    for name in VARIANTS:
        per_step = t[name] / steps
        out[f"{name}_step_s"] = seconds(per_step)
        out[f"{name}_tokens_per_s"] = round(batch * seq / per_step)
        if name in SPEEDUP_KEYS:
            out[SPEEDUP_KEYS[name]] = round(t[name] / t["recipe"], 3)
        elif name != "recipe":
            out[f"{name}_speedup"] = round(t["recipe"] / t[name], 3)
    total = sum(sum(v) for v in parts.values())
    out |= {f"recipe_{k}_share": round(sum(v) / total, 3) for k, v in parts.items()}
    out |= head_alone(shape, reps)
    out["head_xent_share_of_step"] = round(out["head_xent_s"] / out["recipe_step_s"], 3)
    out |= gemm_rates(shape, reps)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (vocabulary 512, hidden 32): seconds")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions of each variant (default 5, quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per repetition (default 4, quick 2)")
    parser.add_argument("--csv", type=Path, default=None, help="also append the figures to this CSV")
    args = parser.parse_args(argv)
    res = bench("quick" if args.quick else "default", args.reps or (1 if args.quick else 5), args.steps or (2 if args.quick else 4))
    emit(res, csv_path=args.csv, table=not args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
