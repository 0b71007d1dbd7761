"""Streaming perplexity and bits-per-byte of a causal LM over the eval sets.

The eval token file of a domain is read as fixed, non-overlapping windows: window i feeds tokens
``[iL, iL+L)`` and predicts ``[iL+1, iL+L+1)``, so every token but the first (an end-of-text
token) is predicted exactly once, whatever the batch size. The last window may be shorter; it is
padded on the right with targets that are ignored, and causal attention keeps padding from
touching real positions. The model's backbone gives hidden states and the streaming
cross-entropy kernel scores them against the output embedding without materialising the
``[tokens, vocab]`` logits; sums are fp64.

Token perplexity = exp(total nats / predicted tokens); bits-per-byte = total nats / (ln 2 x UTF-8
bytes of the text the tokens encode), comparable across tokenizers.

``python -m pipeline.evaluate --model models/base --out metrics/eval/base.json``
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from pipeline.common import StageError, progress, provenance, read_json, run_stage, stage_parser, write_json
from pipeline.config import Config
from pipeline.data import TokenFile

log = logging.getLogger("pipeline.evaluate")

IGNORE = -100


class EvalSet:
    """One domain's eval tokens, cut into windows once and reused for every model."""

    def __init__(self, domain: str, file: TokenFile, seq_len: int):
        self.domain, self.seq_len = domain, seq_len
        self.bytes = int(file.meta["bytes"])
        tokens = torch.from_numpy(np.asarray(file.array(), dtype=np.int64))
        n_pred = tokens.numel() - 1
        n_win = math.ceil(n_pred / seq_len)
        inputs = torch.zeros(n_win, seq_len, dtype=torch.long)
        targets = torch.full((n_win, seq_len), IGNORE, dtype=torch.long)
        for i in range(n_win):
            lo, hi = i * seq_len, min((i + 1) * seq_len, n_pred)
            inputs[i, : hi - lo] = tokens[lo:hi]
            targets[i, : hi - lo] = tokens[lo + 1 : hi + 1]
        self.inputs, self.targets = inputs, targets
        self.predicted = n_pred


def load_eval_sets(tokens_dir: Path, domains: list[str], seq_len: int) -> list[EvalSet]:
    return [EvalSet(d, TokenFile.open(tokens_dir / "eval" / f"{d}.bin"), seq_len) for d in domains]


def available_eval_domains(tokens_dir: Path) -> list[str]:
    return sorted(p.stem for p in (tokens_dir / "eval").glob("*.bin"))


def streaming_supported(model) -> bool:
    """True when logits are exactly ``hidden @ W.T (+ b)``; models that scale or cap logits are not."""
    cfg = model.config
    head = model.get_output_embeddings()
    special = any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return isinstance(head, torch.nn.Linear) and not special


@torch.no_grad()
def nll_batch(model, inputs: torch.Tensor, targets: torch.Tensor, impl: str = "auto") -> tuple[float, torch.Tensor]:
    """fp64 sum of NLL and the per-token NLL (float32, predicted positions only, in order) of one batch."""
    from pipeline.kernels import linear_cross_entropy

    flat_targets = targets.reshape(-1)
    mask = flat_targets != IGNORE
    if impl == "logits" or not streaming_supported(model):
        logits = model(input_ids=inputs).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), flat_targets, ignore_index=IGNORE, reduction="none")
        return float(nll[mask].double().sum()), nll[mask]
    hidden = model.base_model(input_ids=inputs).last_hidden_state
    head = model.get_output_embeddings()
    res = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight, flat_targets, head.bias, ignore_index=IGNORE, impl=impl)
    return res.total, res.nll[mask]


@torch.no_grad()
def evaluate(model, eval_sets: list[EvalSet], batch_size: int, impl: str = "auto", desc: str | None = None,
             per_token: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """Perplexity and bits-per-byte of ``model`` on each eval set.

    When ``per_token`` is a dict, it receives each domain's per-token NLL (float32, in token
    order): what an output-space ensemble of models needs, since it only mixes the probabilities
    of the targets.
    """
    model.eval()
    out = {}
    total_windows = sum(len(e.inputs) for e in eval_sets)
    bar = progress(total=total_windows, desc=desc, unit="win", leave=False) if desc else None
    for e in eval_sets:
        nats, parts = 0.0, []
        for b in range(0, len(e.inputs), batch_size):
            s, nll = nll_batch(model, e.inputs[b : b + batch_size], e.targets[b : b + batch_size], impl)
            nats += s
            parts.append(nll)
            if bar is not None:
                bar.update(min(batch_size, len(e.inputs) - b))
        count = sum(p.numel() for p in parts)
        assert count == e.predicted, (count, e.predicted)
        if per_token is not None:
            per_token[e.domain] = torch.cat(parts).numpy().astype(np.float32)
        out[e.domain] = {
            "ppl": math.exp(nats / count),
            "bpb": nats / (math.log(2) * e.bytes),
            "nll": nats / count,
            "tokens": count,
            "bytes": e.bytes,
        }
    if bar is not None:
        bar.close()
    return out


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to ``path`` atomically (temporary name, then rename)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(args, cfg: Config) -> None:
    from pipeline.model import load_model

    domains = cfg.eval_domains(available_eval_domains(args.tokens))
    sets = load_eval_sets(args.tokens, domains, cfg.eval.seq_len)
    model = load_model(args.model)
    per_token: dict[str, np.ndarray] | None = {} if args.save_nll else None
    scores = evaluate(model, sets, cfg.eval.batch_size, desc=f"evaluate {args.model}", per_token=per_token)
    if args.save_nll:
        save_npz(args.save_nll, per_token)
    result: dict = {"model": str(args.model), "eval": {d: {"ppl": round(s["ppl"], 4), "bpb": round(s["bpb"], 5)} for d, s in scores.items()}}
    if args.shard:
        if args.shard not in cfg.shards:
            raise StageError(f"params.yaml: no shard named {args.shard!r}; known: {sorted(cfg.shards)}")
        domain = cfg.shards[args.shard].domain
        seed = read_json(args.seed_metrics, "seed model metrics")["eval"].get(domain)
        if seed is None:
            raise StageError(f"{args.seed_metrics}: no score for domain {domain}; rerun 'dvc repro evaluate_base'")
        mine = scores[domain]["ppl"]
        result["own_domain"] = {"domain": domain, "ppl": round(mine, 4), "seed_ppl": seed["ppl"],
                                "ppl_ratio": round(mine / seed["ppl"], 4), "learned": bool(mine < seed["ppl"])}
        log.info("%s on its own domain %s: ppl %.2f (seed %.2f)", args.shard, domain, mine, seed["ppl"])
    result["totals"] = {d: {"nll_sum": s["nll"] * s["tokens"], "tokens": s["tokens"], "bytes": s["bytes"]} for d, s in scores.items()}
    result["made_by"] = provenance("evaluate", cfg, eval=cfg.eval.model_dump())
    write_json(args.out, result)
    for d, s in scores.items():
        log.info("%-20s ppl %9.3f  bpb %.4f", d, s["ppl"], s["bpb"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="model folder (HF format)")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--shard", help="the shard this model was trained on: adds its own-domain ppl next to the seed's")
    p.add_argument("--save-nll", type=Path, help="also write each domain's per-token NLL here (.npz)")
    p.add_argument("--seed-metrics", type=Path, default=Path("metrics/eval/base.json"))
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
