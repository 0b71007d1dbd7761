"""SELECT (Morris et al. 2025): the training examples whose gradients add up to a model's update.

A pool of training windows (the unit training draws: ``seq_len + 1`` tokens of a domain's training
file) is scored at the fine-tuned weights ``theta_f``. Each example's gradient of its mean
next-token loss, with respect to the weights of every bias-free linear layer (``linear``:
attention, MLP and the output embedding) or of the output embedding alone (``head``, the paper's
default), comes from one forward and backward pass per batch through hooks: per layer it is
``sum_t d_t^T x_t`` (inputs ``x``, output gradients ``d``). It is sketched with seeded
Kronecker-structured Rademacher maps, ``U^T G W = (d U)^T (x W)`` (the LoGra projection of Choe et
al. 2024, never forming ``G``), an unbiased JL sketch of its inner products; its inner product with
the model's update ``theta_seed - theta_f`` (training moves against the gradient) is computed
exactly.

Selection, ``k`` examples: the paper's greedy rule (add the example that makes the running sum of
selected gradients most aligned, in cosine, with the update; optionally the sum started again every
``batch`` picks, the paper code's ``greedy_batched``), and its baselines: the ``k`` most
aligned gradients one at a time (top-k cosine, no running sum), the ``k`` lowest losses under
``theta_f``, and ``k`` drawn at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.lib.heap import kept_heap
from pipeline.lib.runtime import StageError, progress
from pipeline.lib.tokens import Slice, TokenFile, windows_in


@dataclass(frozen=True)
class Pool:
    """Pool examples: ``(domain, window)`` ids and their token windows ``[n, seq_len + 1]``."""

    domains: np.ndarray  # str per example
    windows: np.ndarray  # window index in the domain's training file
    tokens: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return int(self.windows.size)

    def ids(self, idx) -> list[str]:
        return [f"{self.domains[i]}:{int(self.windows[i])}" for i in idx]

    def slices(self, idx, files: dict[str, TokenFile]) -> list[Slice]:
        """One-window slices of the examples ``idx``, for training on exactly them."""
        out = []
        for i in idx:
            start = int(self.windows[i]) * self.seq_len
            out.append(Slice(f"{self.domains[i]}:{int(self.windows[i])}", files[self.domains[i]], start, start + self.seq_len + 1))
        return out


def make_pool(files: dict[str, TokenFile], per_domain: int, seq_len: int, seed: int) -> Pool:
    """``per_domain`` training windows of every domain (all of them where it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    doms, wins, toks = [], [], []
    for name in sorted(files):
        f = files[name]
        n = windows_in(Slice(name, f, 0, f.tokens), seq_len)
        pick = np.sort(rng.choice(n, size=min(per_domain, n), replace=False)) if n else np.zeros(0, np.int64)
        arr = f.array()
        for w in pick:
            doms.append(name)
            wins.append(int(w))
            toks.append(np.asarray(arr[w * seq_len : w * seq_len + seq_len + 1], dtype=np.int64))
    if not toks:
        raise StageError(f"the pool is empty: no domain has a training window of {seq_len + 1} tokens")
    return Pool(np.array(doms), np.array(wins, dtype=np.int64), np.stack(toks), seq_len)


def linear_modules(model, subset: str) -> dict[str, torch.nn.Linear]:
    """The layers whose weight gradients are sketched: ``head`` (the output embedding, the paper's
    default) or ``linear`` (every bias-free linear layer: attention, MLP and the head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise StageError(f"{type(model).__name__}: SELECT needs a causal LM with a bias-free linear output embedding (lm_head)")
    if subset == "head":
        return {"lm_head": head}
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.bias is None}


def sketch_maps(modules: dict[str, torch.nn.Linear], shape: tuple[int, int], seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, seeded Rademacher factors ``U`` [out, a] and ``W`` [in, b], scaled so that
    ``<U^T X W, U^T Y W> ~ <X, Y>`` in expectation; the same seed and shapes give the same maps."""
    gen = torch.Generator().manual_seed(seed)
    a, b = shape
    maps = {}
    for name, mod in modules.items():
        out_f, in_f = mod.weight.shape
        u = (torch.randint(0, 2, (out_f, a), generator=gen, dtype=torch.int8).float() * 2 - 1) / a ** 0.5
        w = (torch.randint(0, 2, (in_f, b), generator=gen, dtype=torch.int8).float() * 2 - 1) / b ** 0.5
        maps[name] = (u, w)
    return maps


@dataclass(frozen=True)
class Gradients:
    """Per pool example: its sketched gradient ``[n, layers * a * b]`` (float32), its exact inner
    product with the update ``[n]`` and its mean loss ``[n]``."""

    sketches: np.ndarray
    align: np.ndarray
    losses: np.ndarray


def layer_deltas(seed_model, model, subset: str) -> dict[str, torch.Tensor]:
    """``theta_seed - theta_model`` of each sketched layer's weight (training moves against the gradient)."""
    mine, theirs = linear_modules(model, subset), linear_modules(seed_model, subset)
    out = {}
    for name, mod in mine.items():
        if name not in theirs or theirs[name].weight.shape != mod.weight.shape:
            raise StageError(f"layer {name}: {tuple(mod.weight.shape)} against the seed's "
                             f"{tuple(theirs[name].weight.shape) if name in theirs else 'nothing'}: not fine-tuned from this seed")
        out[name] = theirs[name].weight.detach().float() - mod.weight.detach().float()
    return out


def _gradients_from_here(model, mods: dict[str, torch.nn.Linear], subset: str):
    """Where the backward starts to be needed: the output embedding's input for ``head`` (nothing below
    it is sketched, so the backward stops there), else the input embeddings' output. With no weight
    requiring a gradient, the backward then computes exactly the layers' output gradients the hooks
    read (the same operations as with weight gradients, so the same values) and skips the weight
    gradients, a third of a linear layer's backward and the whole body's backward for ``head``."""
    if subset == "head":
        return mods["lm_head"].register_forward_pre_hook(
            lambda mod, args: (args[0].detach().requires_grad_(), *args[1:]))
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, torch.nn.Module):
        raise StageError(f"{type(model).__name__}: SELECT's linear gradients need the model's input embeddings (get_input_embeddings)")
    return emb.register_forward_hook(lambda mod, args, out: out.requires_grad_())


def _layer_terms(g: torch.Tensor, x: torch.Tensor, u: torch.Tensor, w: torch.Tensor, d: torch.Tensor):
    """One layer's per-example sketch ``(g U)^T (x W)`` [b, a * c] and exact inner product with its
    update ``D`` [b] from its output gradients ``g`` [b, l, out] and inputs ``x`` [b, l, in].

    The inner product ``<sum_t g_t^T x_t, D>`` goes through the layer's narrower side, ``(g D) . x`` or
    ``g . (x D^T)``: for the head, ``g . (x D^T)`` sums l x vocab fp32 products per example (off by up
    to 2e-3 of its size against float64 on the default run's models), ``(g D) . x`` l x hidden (7e-6)."""
    sketch = torch.einsum("bla,blc->bac", g @ u, x @ w).flatten(1)
    align = torch.einsum("bli,bli->b", g @ d, x) if d.shape[0] >= d.shape[1] else torch.einsum("blo,blo->b", g, x @ d.T)
    return sketch, align


@kept_heap()
def gradient_sketches(model, pool: Pool, subset: str, maps: dict, deltas: dict[str, torch.Tensor], batch_size: int = 16,
                      device: torch.device = torch.device("cpu")) -> Gradients:
    """Each example's weight gradient of its mean next-token loss at ``model`` (on ``device``, fp32):
    sketched, and its exact inner product with ``deltas`` (the update, per layer).

    One forward and backward pass per batch: a layer's per-example gradient is ``sum_t d_t^T x_t``
    (``x``: its inputs, ``d``: the loss's gradient at its outputs, both per token; examples do not
    mix in a batch), sketched as ``(d U)^T (x W)`` without forming it (LoGra); its inner product
    with the layer's update ``D`` is ``sum_t d_t . (D x_t)``, exact. The exact inner product matters:
    a single example's gradient is nearly orthogonal to the update (cosines ~1e-2), below what a
    sketch of a few thousand dimensions resolves (measured on three truths: top-k cosine's precision
    0.38-0.55 from sketched inner products, 0.96-0.99 from exact ones).
    """
    mods = linear_modules(model, subset)
    maps = {n: (u.to(device), w.to(device)) for n, (u, w) in maps.items()}
    deltas = {n: d.to(device) for n, d in deltas.items()}
    inputs: dict[str, torch.Tensor] = {}
    parts: dict[str, torch.Tensor] = {}
    aligns: dict[str, torch.Tensor] = {}

    def on_grad(name):
        def hook(grad):
            parts[name], aligns[name] = _layer_terms(grad.float(), inputs[name].float(), *maps[name], deltas[name])
        return hook

    def keep_input(name):
        def hook(mod, args, out):
            inputs[name] = args[0].detach()
            out.register_hook(on_grad(name))
        return hook

    handles = [_gradients_from_here(model, mods, subset)]
    handles += [m.register_forward_hook(keep_input(n)) for n, m in mods.items()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # the backward computes the layers' output gradients only, never a weight's gradient
        p.requires_grad_(False)
    model.eval()
    sketches, align, losses = [], [], []
    try:
        for lo in progress(range(0, len(pool), batch_size), desc="gradients", unit="batch"):
            x = torch.from_numpy(pool.tokens[lo : lo + batch_size]).to(device)
            logits = model(input_ids=x[:, :-1]).logits.float()
            # over the vocabulary as the last dimension: the head's output gradient comes out contiguous, and the
            # log-softmax runs on its fast path (over a transposed [b, V, l] both cost as much as the rest of the pass)
            per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none").view(x.shape[0], -1).mean(1)
            per.sum().backward()  # each example's mean loss: the batch's sum keeps them apart
            losses.append(per.detach())
            sketches.append(torch.cat([parts[n] for n in mods], dim=1))
            align.append(sum(aligns[n].double() for n in mods))
            inputs.clear()
            parts.clear()
            aligns.clear()
    finally:
        for h in handles:
            h.remove()
        for p in trainable:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
    return Gradients(torch.cat(sketches).cpu().numpy(), torch.cat(align).cpu().numpy(), torch.cat(losses).double().cpu().numpy())


def update_sketch(deltas: dict[str, torch.Tensor], maps: dict) -> tuple[np.ndarray, float]:
    """The update in the examples' sketch space, and its exact norm."""
    parts = [(maps[n][0].T @ d.cpu() @ maps[n][1]).reshape(-1) for n, d in deltas.items()]
    norm = float(np.sqrt(sum(float((d.double() ** 2).sum()) for d in deltas.values())))
    return torch.cat(parts).double().numpy(), norm


def gram_matrix(g: np.ndarray, block: int = 8192) -> np.ndarray:
    """``<g_i, g_j>`` of the rows of ``g`` [n, dim] in float64, [n, n]: all the selection rules read of
    the gradients. Summed over blocks of ``block`` columns, so that float32 sketches are never held
    in float64 whole (1,200 x 118,784 by default: 1.1 GB, against 11 MB for the Gram matrix)."""
    n, dim = g.shape
    gram = np.zeros((n, n))
    for lo in range(0, dim, block):
        part = np.asarray(g[:, lo : lo + block], dtype=np.float64)
        gram += part @ part.T
    return gram


def greedy_select(gram: np.ndarray, align: np.ndarray, k: int, batch: int = 0) -> np.ndarray:
    """The paper's rule: ``k`` times, add the unselected example that makes the running sum ``S`` of
    selected gradients most aligned (cosine) with the update ``t``. ``align[i] = <g_i, t>`` (exact);
    ``gram`` (:func:`gram_matrix` of the sketched or exact ``g``) gives ``||S + g_i||``: ``<g_i, S>``
    is the sum of ``gram[i, j]`` over the selected ``j``. With ``batch`` > 0 the running sum starts again
    after every ``batch`` picks (the paper code's ``greedy_batched``): each batch is matched to the
    update the way one training step's minibatch moves it; ``batch`` 1 is top-k cosine, 0 (or >= k)
    one running sum for all ``k``. Returns indices in selection order."""
    n = len(gram)
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} examples from a pool of {n}: k must be between 1 and the pool size")
    if batch < 0:
        raise ValueError(f"batch = {batch}: give the picks per running sum (>= 1), or 0 for one running sum")
    gg = np.diag(gram).copy()
    chosen = np.zeros(n, dtype=bool)
    order: list[int] = []
    while len(order) < k:
        sg = np.zeros(n)  # <g_i, S> for every i
        dot_run, norm_run = 0.0, 0.0  # <S, t>, ||S||^2
        for _ in range(min(batch or k, k - len(order))):
            score = (dot_run + align) / np.sqrt(np.maximum(norm_run + 2 * sg + gg, 1e-300))
            score[chosen] = -np.inf
            i = int(np.argmax(score))
            order.append(i)
            chosen[i] = True
            dot_run, norm_run = dot_run + align[i], norm_run + 2 * sg[i] + gg[i]
            sg += gram[i]
    return np.array(order, dtype=np.int64)


def topk_cosine(gram: np.ndarray, align: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` examples whose own gradient is most aligned (cosine) with the update (no running sum)."""
    cos = align / np.maximum(np.sqrt(np.diag(gram)), 1e-300)
    return np.argsort(-cos, kind="stable")[:k]


def lowest_loss(losses: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` examples the model predicts best."""
    return np.argsort(losses, kind="stable")[:k]


def random_pick(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def domain_files(tokens_dir: Path) -> dict[str, TokenFile]:
    """Every corpus domain's training token file."""
    paths = sorted((Path(tokens_dir) / "train").glob("*.bin"))
    if not paths:
        raise StageError(f"{tokens_dir}/train: no token files (run 'dvc repro tokenize')")
    return {p.stem: TokenFile.open(p) for p in paths}
