"""select's gradient pass and selection rules against their plain forms, time and agreement.

``python -m pipeline.bench select [--quick] [--json] [--csv PATH] [-n 96] [--reps 3] [--pool 1200] [--dim 118784]``

Gradient pass, on a random Llama of the default model's shape (hidden 128, 4 layers, vocabulary
8,192, windows of 256 tokens, batches of 16, every linear layer sketched 64 x 64):
:func:`pipeline.lib.selection.gradient_sketches` against ``previous``, the batched pass it replaced
(weight gradients computed, the loss over a transposed ``[b, V, l]``, the inner product with the
update summed over each layer's outputs), timed round-robin; both inner products against the
previous pass run in float64 (not timed). Selection: SELECT's rule, its per-batch
form and top-k cosine on synthetic sketches of the default pool and size, through the Gram matrix
(what the stage runs) against the same rules on the float64 sketches (a matrix-vector product per
pick), and whether they pick the same. Last line printed: one JSON object.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.bench import emit, interleaved_medians, seconds
from pipeline.lib.selection import (Pool, gradient_sketches, gram_matrix, greedy_select, layer_deltas, linear_modules, sketch_maps,
                                    topk_cosine)


def default_shaped_model(seed: int = 0):
    """A random tied-embedding Llama of the default pipeline's model shape, and a nearby "seed"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    base = copy.deepcopy(model)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return model, base


def previous_pass(model, pool: Pool, maps: dict, deltas: dict, batch_size: int) -> np.ndarray:
    """The batched pass select ran before; returns its inner products (its sketches are made and dropped)."""
    mods = linear_modules(model, "linear")
    inputs, parts, aligns = {}, {}, {}

    def on_grad(name):
        def hook(g):
            x, (u, w) = inputs[name], maps[name]
            parts[name] = torch.einsum("bla,blc->bac", g @ u, x @ w).flatten(1)
            aligns[name] = torch.einsum("blo,blo->b", g, x @ deltas[name].T)
        return hook

    def keep(name):
        def hook(mod, args, out):
            inputs[name] = args[0].detach()
            out.register_hook(on_grad(name))
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in mods.items()]
    out = []
    try:
        for lo in range(0, len(pool), batch_size):
            x = torch.from_numpy(pool.tokens[lo : lo + batch_size])
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=x[:, :-1]).logits  # fp32, or float64 for the reference
            F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").mean(1).sum().backward()
            torch.cat([parts[n] for n in mods], dim=1)
            out.append(sum(aligns[n].double() for n in mods))
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return torch.cat(out).numpy()


def float64_aligns(model, pool: Pool, maps: dict, deltas: dict, batch_size: int) -> np.ndarray:
    """The same inner products with everything in float64: the reference both passes are held to."""
    m64 = copy.deepcopy(model).double()
    return previous_pass(m64, pool, {n: (u.double(), w.double()) for n, (u, w) in maps.items()},
                         {n: d.double() for n, d in deltas.items()}, batch_size)


def gradient_pass(n: int, reps: int, batch_size: int = 16, seq_len: int = 256) -> dict:
    model, base = default_shaped_model()
    toks = np.random.default_rng(0).integers(0, 8192, (n, seq_len + 1)).astype(np.int64)
    pool = Pool(np.array(["a"] * n), np.arange(n), toks, seq_len)
    maps = sketch_maps(linear_modules(model, "linear"), (64, 64), seed=0)
    deltas = layer_deltas(base, model, "linear")
    ref = float64_aligns(model, pool, maps, deltas, batch_size)
    ours = gradient_sketches(model, pool, "linear", maps, deltas, batch_size).align
    prev = previous_pass(model, pool, maps, deltas, batch_size)
    t = interleaved_medians({"previous": lambda: previous_pass(model, pool, maps, deltas, batch_size),
                             "ours": lambda: gradient_sketches(model, pool, "linear", maps, deltas, batch_size)}, reps)
    scale = float(np.abs(ref).max())
    return {"examples": n, "previous_s": seconds(t["previous"]), "ours_s": seconds(t["ours"]),
            "pass_speedup": round(t["previous"] / t["ours"], 3),
            "align_rel_err_previous": float(np.abs(prev - ref).max() / scale), "align_rel_err_ours": float(np.abs(ours - ref).max() / scale)}


def selection(pool: int, dim: int, k: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((pool, dim), dtype=np.float32)
    align = g.astype(np.float64) @ (g[:k].astype(np.float64).mean(0) + 0.1 * rng.standard_normal(dim))

    def plain():  # the rules on the float64 vectors: <g_i, S> by a matrix-vector product per pick
        g64 = g.astype(np.float64)
        gg = np.einsum("ij,ij->i", g64, g64)
        picks = []
        for batch in (0, 8):
            chosen, order = np.zeros(pool, dtype=bool), []
            while len(order) < k:
                running, dot_run, norm_run = np.zeros(dim), 0.0, 0.0
                for _ in range(min(batch or k, k - len(order))):
                    sg = g64 @ running
                    score = (dot_run + align) / np.sqrt(np.maximum(norm_run + 2 * sg + gg, 1e-300))
                    score[chosen] = -np.inf
                    i = int(np.argmax(score))
                    order.append(i)
                    chosen[i] = True
                    running += g64[i]
                    dot_run, norm_run = dot_run + align[i], norm_run + 2 * sg[i] + gg[i]
            picks.append(np.array(order))
        picks.append(np.argsort(-align / np.sqrt(gg), kind="stable")[:k])
        return picks

    def gram():
        gm = gram_matrix(g)
        return [greedy_select(gm, align, k, 0), greedy_select(gm, align, k, 8), topk_cosine(gm, align, k)]

    same = all(np.array_equal(a, b) for a, b in zip(plain(), gram()))
    t = interleaved_medians({"plain": plain, "gram": gram}, reps, warmup=0)
    return {"pool": pool, "dim": dim, "k": k, "selection_plain_s": seconds(t["plain"]), "selection_gram_s": seconds(t["gram"]),
            "selection_speedup": round(t["plain"] / t["gram"], 3), "same_picks": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench select", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (16 examples, a pool of 200 x 4,096, 1 rep)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("-n", type=int, default=None, help="examples through the gradient pass (default 96, quick 16)")
    parser.add_argument("--pool", type=int, default=None, help="pool for the selection rules (default 1,200, quick 200)")
    parser.add_argument("--dim", type=int, default=None, help="sketch length (default 118,784: 29 layers x 64 x 64; quick 4,096)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3, quick 1)")
    parser.add_argument("--csv", type=Path, default=None, help="also append the figures to this CSV")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    res = gradient_pass(args.n or (16 if args.quick else 96), reps)
    res.update(selection(args.pool or (200 if args.quick else 1200), args.dim or (4096 if args.quick else 118_784), 100 if not args.quick else 20, reps))
    emit(res, csv_path=args.csv, table=not args.json)
    return 0
