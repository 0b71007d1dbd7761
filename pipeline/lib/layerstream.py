"""Layer-streamed scoring: M merged mixtures evaluated one decoder block at a time, in the memory of a few blocks.

The resident path (:mod:`pipeline.lib.sweep`) holds M whole merged models. :class:`LayerStream`
holds one *skeleton* (the model built with a single decoder block: embeddings, that block, the final
norm, the head) and M block buffers (the skeleton's block and M - 1 copies), so that a model of any
depth is proxied in the memory of its embeddings and M blocks. For a group of M weight rows:

1. Embeddings, row by row: the rows of the row's merged input embedding for the tokens the eval
   sets hold (a few thousand of the vocabulary: :func:`compact_ids`) are merged into a small table
   that stands in for the skeleton's embedding, and each eval batch (its token ids renumbered)
   runs through the skeleton up to its block, where a forward pre-hook takes the block's input
   (the embeddings as the model computes them, scaled where it scales them) and the keyword
   arguments the model gives its blocks (attention mask, rotary position embeddings, position
   ids), and stops the forward. Those arguments do not depend on the weights: they are kept once.
2. Block by block: :func:`pipeline.lib.merging.merge_tensors` writes block i of all M rows into
   the M buffers (each shard tensor read once for the group), and each row's activations go
   through its buffer.
3. The head, all rows at once: each row's merged final norm goes into the skeleton and its last
   activations through it; then the output embedding (the input embedding again for tied models)
   is merged a vocabulary tile at a time for all M rows (the M tiles together one block's size,
   at least 512 rows each: each checkpoint's head is read once for the group, not once per row,
   in the memory of one block), and every row's logits for the tile update its log-sum-exp and
   pick up its target logits: a cross-entropy that streams the vocabulary as the resident path's
   kernel does, in fp32, the tiles combined in fp64.

The merges are the resident path's kernel on the same inputs, element for element (bit for bit
where the head's tiles start and end on the kernel's 64-element tiles, as with every hidden size
here; otherwise a tile's last elements can differ by an ulp), and the blocks run the same
operations on the same batches; the cross-entropy sums its vocabulary tiles in another order:
the scores equal the resident path's to 1e-6 relative (tested). Peak memory: skeleton + (M - 1)
blocks + the M head tiles (one block) + M x (eval tokens x hidden) activations + one batch's
working memory.

Walks decoders whose base model keeps its blocks in ``.layers`` (an ``nn.ModuleList`` of one
block type, one attention type for all layers) with ``.norm`` after them and plain
linear output embeddings: Llama, SmolLM2, Mistral, Qwen2 and their kind. Any other model is a
StageError naming its class (:func:`walkable`).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.kernels import multi_weighted_sum
from pipeline.lib.device import CPU, Placement
from pipeline.lib.merging import check_target, merge_tensors
from pipeline.lib.runtime import StageError, progress
from pipeline.lib.scoring import EvalSet, batches, domain_scores, streaming_supported
from pipeline.lib.tokens import IGNORE

if TYPE_CHECKING:
    from pipeline.lib.pool import ShardPool

log = logging.getLogger(__name__)

FIX = "set mixtures.stream: resident (the whole merged model in memory)"
MIN_HEAD_ROWS = 512  # a head tile's vocabulary rows at least: the logits GEMM stays efficient


class _Stop(Exception):
    """Raised by the capture hook to end the skeleton's forward at its first block."""


def skeleton(base: str | Path):
    """The model of folder ``base`` built with ONE decoder block, fp32 on the CPU, and its depth.

    Its weights are placeholders (the merge overwrites every parameter before use); buffers such
    as rotary frequencies are computed from the config, as when the model is loaded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(Path(base), local_files_only=True)
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int) or depth < 1:
        raise StageError(f"{base}/config.json: no num_hidden_layers; layer streaming needs a decoder of stacked blocks; {FIX}")
    one = copy.deepcopy(config)
    one.num_hidden_layers = 1
    types = getattr(config, "layer_types", None)
    if types:
        if len(set(types)) > 1:
            raise StageError(f"{base}: {config.architectures or type(config).__name__} mixes attention types "
                             f"({sorted(set(types))}): layer streaming passes every block the same mask; {FIX}")
        one.layer_types = list(types[:1])
    model = AutoModelForCausalLM.from_config(one, dtype=torch.float32)
    model.eval()
    return model, depth


def walkable(model) -> tuple[str, torch.nn.Module]:
    """``(checkpoint prefix of the blocks, e.g. "model.layers", the first block)`` of a one-block
    skeleton; StageError naming the model's class when layer streaming cannot walk it."""
    cls = type(model).__name__
    base = model.base_model
    layers, norm = getattr(base, "layers", None), getattr(base, "norm", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != 1 or not isinstance(norm, torch.nn.Module):
        raise StageError(f"{cls}: layer streaming walks decoders whose base model has its blocks in .layers and a "
                         f"final .norm (Llama, SmolLM2, Mistral, Qwen2, ...); {cls} has not; {FIX}")
    if not isinstance(model.get_input_embeddings(), torch.nn.Embedding) or not streaming_supported(model):
        raise StageError(f"{cls}: layer streaming needs an nn.Embedding input embedding and a plain linear output "
                         f"embedding (no logit scaling or capping); {FIX}")
    prefix = next(name for name, mod in model.named_modules() if mod is layers)
    return prefix, layers[0]


def compact_ids(sets: list[EvalSet], batch_list: list[tuple[int, slice]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The token ids the batches hold (sorted, unique) and each batch's inputs renumbered into them."""
    inputs = [sets[i].inputs[sl] for i, sl in batch_list]
    uniq, inverse = torch.unique(torch.cat([x.reshape(-1) for x in inputs]), return_inverse=True)
    return uniq, list(inverse.split([x.numel() for x in inputs]))


class LayerStream:
    """Scores groups of up to ``at_once`` weight rows over ``pool`` layer by layer (module docstring).

    ``pool`` holds the checkpoints the rows weight (shards, and the seed as a column when the
    seed itself is scored); ``base`` is the seed folder whose config the skeleton is built from.
    """

    def __init__(self, base: str | Path, pool: ShardPool, at_once: int, place: Placement = CPU, impl: str = "auto",
                 head_rows: int | None = None):
        model, self.depth = skeleton(base)
        self.prefix, block = walkable(model)
        self.model = model.to(place.device)
        self.place, self.impl, self.pool = place, impl, pool
        block = self.model.base_model.layers[0]
        self.blocks = [block] + [copy.deepcopy(block) for _ in range(at_once - 1)]
        self.local = [n for n, _ in block.named_parameters()]
        for i in range(self.depth):  # every block of the checkpoints, checked before anything is merged
            for n, p in block.named_parameters():
                check_target(pool, f"{self.prefix}.{i}.{n}", p)
        if f"{self.prefix}.{self.depth}.{self.local[0]}" in pool:
            raise StageError(f"{pool.reference.folder}: the checkpoints have more than the {self.depth} blocks its config.json "
                             f"gives (num_hidden_layers); the config and the weights are of different models")
        self.embed_plan, self.norm_plan, self.head_plan = self._outer_plans(pool)
        self.head_rows = head_rows  # vocabulary rows per head tile; None: the M tiles together one block's size
        self._block_numel = sum(p.numel() for p in block.parameters())
        self.block_bytes = sum(p.numel() * p.element_size() for p in block.parameters())  # one block buffer
        head = self.head_plan[0][1]
        self._vocab, self._width = head.shape[0], head[0].numel()
        self._head_row = sum(p[0].numel() * p.element_size() for _, p in self.head_plan)  # one vocabulary row, bias included
        self.seconds = {"merge": 0.0, "eval": 0.0}
        self.tile_bytes = 0  # the head tiles of the last group scored

    def footprint(self, sets: list[EvalSet]) -> tuple[int, int]:
        """``(per row, fixed)`` bytes a group holds beyond the skeleton, M rows holding at most
        ``fixed + M x per_row`` (the module docstring's peak, less one batch's working memory): per
        row, a block buffer, the activations of every eval token (fp32), a head tile of at least
        :data:`MIN_HEAD_ROWS` rows and the fp64 log-sum-exp and target logit of every token; fixed,
        the rest of the M head tiles, which together take one block's size when that is more."""
        tokens = sum(e.inputs.numel() for e in sets)
        acts = 4 * self.model.config.hidden_size * tokens
        # M x _tile_rows(M) <= M x min(vocab, MIN_HEAD_ROWS) + one block's worth of rows
        shared = 0 if self.head_rows else self._block_numel // self._width * self._head_row
        per_row_tile = min(self._vocab, self.head_rows or MIN_HEAD_ROWS) * self._head_row
        return self.block_bytes + acts + per_row_tile + 2 * 8 * tokens, shared

    def _tile_rows(self, at_once: int) -> int:
        """Vocabulary rows per head tile for a group of ``at_once`` rows: ``head_rows``, or as many as
        make the M tiles together one block's size, at least :data:`MIN_HEAD_ROWS`."""
        return min(self._vocab, self.head_rows or max(MIN_HEAD_ROWS, self._block_numel // (self._width * at_once)))

    def widen(self, at_once: int) -> None:
        """Hold ``at_once`` block buffers (groups of up to that many rows)."""
        self.blocks += [copy.deepcopy(self.blocks[0]) for _ in range(at_once - len(self.blocks))]

    def _outer_plans(self, pool: ShardPool) -> tuple[list, list, list]:
        """The skeleton's parameters outside its block: ``(embedding, final norm, head)`` plans, the
        head's weight first (then its bias, if any)."""
        m = self.model
        embed = m.get_input_embeddings().weight
        head = m.get_output_embeddings()
        norm = {id(p) for p in m.base_model.norm.parameters()}
        head_ids = {id(head.weight)} | ({id(head.bias)} if head.bias is not None else set())
        block = f"{self.prefix}.0."
        names: dict[int, list[str]] = {}
        params: dict[int, torch.Tensor] = {}
        for name, p in m.named_parameters(remove_duplicate=False):
            if not name.startswith(block):
                names.setdefault(id(p), []).append(name)
                params[id(p)] = p
        embed_plan, norm_plan, head_plan = [], [], []
        for pid, ns in names.items():
            p = params[pid]
            src = next((n for n in ns if n in pool), ns[0])  # a tied pair is stored under one of its names
            if p is embed or pid in norm or pid in head_ids:
                check_target(pool, src, p)
            else:
                raise StageError(f"{type(m).__name__}: parameter {ns[0]} is outside the decoder blocks, the embeddings, the "
                                 f"final norm and the head: layer streaming cannot place it; {FIX}")
            if p is embed:
                embed_plan.append((src, p))
            if pid in norm:
                norm_plan.append((src, p))
            if pid in head_ids:  # tied: the head reads the input embedding, merged again for it
                head_plan.append((src, p))
        head_plan.sort(key=lambda plan: plan[1] is not head.weight)
        return embed_plan, norm_plan, head_plan

    def _merge(self, plans: list, rows: list[list[float]], first_row: int = 0) -> None:
        t0 = time.perf_counter()
        merge_tensors(plans, rows, self.pool, impl=self.impl, first_row=first_row)
        self.place.sync()
        self.seconds["merge"] += time.perf_counter() - t0

    def _embedding_rows(self, w: list[float], ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the input embedding merged with weights ``w``: the same kernel and inputs as
        the whole table's merge, on the rows the eval sets need."""
        t0 = time.perf_counter()
        (src, table), = self.embed_plan
        ks = [k for k, wk in enumerate(w) if wk != 0]
        rows = torch.empty(len(ids), table.shape[1], dtype=table.dtype, device=table.device)
        if ks:
            views = [self.pool.view(k, src) for k in ks]
            xs = [v.index_select(0, ids.to(v.device)).to(table.device) for v in views]
            multi_weighted_sum(xs, [[float(w[k]) for k in ks]], [rows], impl=self.impl)
            del views
            self.pool.release(src, ks)
        else:
            rows.zero_()
        self.place.sync()
        self.seconds["merge"] += time.perf_counter() - t0
        return rows

    def _capture(self, sets: list[EvalSet], batch_list: list[tuple[int, slice]], ids: list[torch.Tensor],
                 table: torch.Tensor, keep_kwargs: bool) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """The first block's input (and, when ``keep_kwargs``, its keyword arguments) for every batch,
        with ``table`` as the input embedding and ``ids`` as each batch's token ids into it."""
        got: dict[str, Any] = {}

        def hook(module, args, kwargs):
            got["args"], got["kwargs"] = args, kwargs
            raise _Stop

        hidden, kwargs = [], []
        embedding = self.model.get_input_embeddings()
        whole = embedding.weight  # also the head's weight when tied: put back below
        embedding.weight = torch.nn.Parameter(table, requires_grad=False)
        handle = self.model.base_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for (i, sl), x in zip(batch_list, ids):
                e = sets[i]
                kw = {"input_ids": self.place.put(x.view(e.inputs[sl].shape)), "position_ids": self.place.put(e.positions[sl]),
                      "use_cache": False}
                try:
                    with self.place.autocast():
                        self.model.base_model(**kw)
                except _Stop:
                    pass
                args, kws = got.pop("args"), dict(got.pop("kwargs"))
                hidden.append(args[0] if args else kws.pop("hidden_states"))
                if keep_kwargs:
                    kwargs.append(kws)
        finally:
            handle.remove()
            embedding.weight = whole
        return hidden, kwargs

    @torch.no_grad()
    def score(self, rows: list[list[float]], sets: list[EvalSet], batch_size: int) -> list[dict[str, dict]]:
        """Scores of each weight row on ``sets`` (as :func:`pipeline.lib.scoring.evaluate` gives them)."""
        if not 0 < len(rows) <= len(self.blocks):
            raise ValueError(f"{len(rows)} rows for a stream of {len(self.blocks)} blocks")
        batch_list = batches(sets, batch_size)
        uniq, ids = compact_ids(sets, batch_list)
        acts, kwargs = [], []
        for r, w in enumerate(rows):
            table = self._embedding_rows(w, uniq)
            t0 = time.perf_counter()
            hidden, kws = self._capture(sets, batch_list, ids, table, keep_kwargs=r == 0)
            acts.append(hidden)
            kwargs = kwargs or kws
            self.seconds["eval"] += time.perf_counter() - t0
        blocks = self.blocks[: len(rows)]
        for i in progress(range(self.depth), desc=f"{len(rows)} mixtures, block by block", unit="block", leave=False):
            self._merge([[(f"{self.prefix}.{i}.{n}", p) for n, p in b.named_parameters()] for b in blocks], rows)
            t0 = time.perf_counter()
            for r, b in enumerate(blocks):
                with self.place.autocast():
                    acts[r] = [_out(b(h, **kw)) for h, kw in zip(acts[r], kwargs)]
            self.place.sync()
            self.seconds["eval"] += time.perf_counter() - t0
        return self._heads(rows, acts, sets, batch_list)

    def _heads(self, rows: list[list[float]], acts: list, sets: list[EvalSet], batch_list: list[tuple[int, slice]]
               ) -> list[dict[str, dict]]:
        """Final norm and cross-entropy of every row's last activations, summed per eval set; the head
        merged a vocabulary tile at a time for all rows (module docstring, step 3)."""
        targets = [self.place.put(sets[i].targets[sl]).reshape(-1) for i, sl in batch_list]
        keep = [t != IGNORE for t in targets]
        hidden = []  # per row, per batch: the final norm's output, fp32 [tokens, hidden]
        for r, w in enumerate(rows):
            self._merge([self.norm_plan], [w])
            t0 = time.perf_counter()
            with self.place.autocast():
                hidden.append([self.model.base_model.norm(h).reshape(-1, h.size(-1)).float() for h in acts[r]])
            acts[r] = None
            self.seconds["eval"] += time.perf_counter() - t0
        vocab, tile = self._vocab, self._tile_rows(len(rows))
        bufs = [[torch.empty((tile, *p.shape[1:]), dtype=p.dtype, device=p.device) for _, p in self.head_plan] for _ in rows]
        self.tile_bytes = sum(b.numel() * b.element_size() for row in bufs for b in row)  # what footprint() bounds
        lse = [[torch.full((t.numel(),), -torch.inf, dtype=torch.float64, device=t.device) for t in targets] for _ in rows]
        picked = [[torch.zeros(t.numel(), dtype=torch.float64, device=t.device) for t in targets] for _ in rows]
        for v0 in range(0, vocab, tile):
            v1 = min(vocab, v0 + tile)
            parts = [[b[: v1 - v0] for b in row] for row in bufs]
            self._merge([[(src, t) for (src, _), t in zip(self.head_plan, row)] for row in parts], rows, first_row=v0)
            t0 = time.perf_counter()
            for r, (weight, *bias) in enumerate(parts):
                weight = weight.float()
                for b, (h, t) in enumerate(zip(hidden[r], targets)):
                    logits = h @ weight.T
                    if bias:
                        logits += bias[0].float()
                    lse[r][b] = torch.logaddexp(lse[r][b], torch.logsumexp(logits, 1).double())
                    inside = keep[b] & (t >= v0) & (t < v1)  # each kept target is in one tile
                    got = logits.gather(1, (t - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1)
                    picked[r][b] += torch.where(inside, got.double(), 0.0)
            self.place.sync()
            self.seconds["eval"] += time.perf_counter() - t0
        out = []
        for r in range(len(rows)):
            nats, counts = [0.0] * len(sets), [0] * len(sets)
            for b, (i, _) in enumerate(batch_list):
                nats[i] += float((lse[r][b] - picked[r][b])[keep[b]].sum())
                counts[i] += int(keep[b].sum())
            out.append({e.domain: domain_scores(e, nats[i], counts[i]) for i, e in enumerate(sets)})
        return out


def _out(result) -> torch.Tensor:
    """A block's hidden states, whether it returns them or a tuple that starts with them."""
    return result[0] if isinstance(result, tuple) else result
