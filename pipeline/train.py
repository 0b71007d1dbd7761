"""Stage train: continued pretraining of the seed model on one shard (or a mixture of shards).

``python -m pipeline.train --shard news_bbc`` reads ``models/base`` and the shard's tokens and
writes ``models/shards/news_bbc/`` (HF folder, safetensors, tokenizer, shardmix.json) and the
DVCLive curves ``metrics/train/news_bbc/`` (loss, lr, tokens/s by step).

The recipe is the paper's: AdamW at a constant learning rate, a token budget per shard from
``train.tokens``, a seeded data order. A mixture trains on the union of its shards, interleaved by
its weights, for (number of shards) x ``train.tokens`` tokens; a shard is a mixture of one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.common import StageError, atomic_dir, progress, provenance, run_stage, seed_everything, stage_parser
from pipeline.config import Config, OptimConfig
from pipeline.data import Slice, batches, mixture_schedule, shard_slice
from pipeline.model import count_params, load_model, load_tokenizer, save_model

log = logging.getLogger("pipeline.train")

BASE_DIR = Path("models/base")


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


def check_git_has_commit() -> None:
    """DVCLive fails on a git repository without commits; say how to fix it before training."""
    import subprocess

    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if inside.returncode == 0 and subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode != 0:
        raise StageError("this git repository has no commit yet, and DVCLive needs one to log training curves: "
                         "commit once (git add -A && git commit -m init), then rerun")


def train_model(model, slices: list[Slice], weights: list[float], ocfg: OptimConfig, seed: int, live_dir: Path, desc: str) -> dict:
    """Train ``model`` in place on ``slices`` mixed by ``weights``; log curves with DVCLive into ``live_dir``."""
    from dvclive import Live

    check_git_has_commit()
    seed_everything(seed)
    per_step = ocfg.batch_size * ocfg.seq_len
    steps = math.ceil(ocfg.tokens / per_step)
    schedule, info = mixture_schedule(slices, weights, steps * ocfg.batch_size, ocfg.seq_len, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=ocfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=ocfg.weight_decay)
    model.train()
    t0 = time.perf_counter()
    tokens_seen, losses = 0, []
    window_loss, window_tokens, window_t = 0.0, 0, time.perf_counter()
    with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.log_params({"tokens": ocfg.tokens, "lr": ocfg.lr, "steps": steps, "batch_size": ocfg.batch_size, "seq_len": ocfg.seq_len})
        bar = progress(total=steps, desc=desc, unit="step")
        for step, batch in enumerate(batches(slices, schedule, ocfg.seq_len, ocfg.batch_size)):
            lr = lr_at(step, steps, ocfg)
            for g in opt.param_groups:
                g["lr"] = lr
            x = torch.from_numpy(batch)
            loss = lm_loss(model, x)
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
                dt = time.perf_counter() - window_t
                live.log_metric("loss", window_loss / math.ceil(window_tokens / per_step))
                live.log_metric("lr", lr)
                live.log_metric("tokens_per_s", window_tokens / dt)
                live.log_metric("tokens", tokens_seen)
                live.next_step()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                window_loss, window_tokens, window_t = 0.0, 0, time.perf_counter()
        bar.close()
        elapsed = time.perf_counter() - t0
        summary = {"steps": steps, "tokens": tokens_seen, "seconds": round(elapsed, 2),
                   "tokens_per_s": round(tokens_seen / elapsed, 1),
                   "final_loss": float(np.mean(losses[-max(1, steps // 10):])), "data": info}
        for k in ("final_loss", "tokens_per_s", "seconds"):
            live.summary[k] = summary[k]
    model.eval()
    log.info("%s: %d steps, %d tokens in %.1fs (%.0f tok/s), final loss %.3f", desc, steps, tokens_seen, elapsed, tokens_seen / elapsed, summary["final_loss"])
    return summary


def continue_pretraining(cfg: Config, name: str, shards: list[str], weights: list[float] | None, out: Path, live_out: Path, base: Path, tokens_dir: Path) -> None:
    """Train the seed model on ``shards`` (weights: token-proportional when None) and save it."""
    unknown = [s for s in shards if s not in cfg.shards]
    if unknown:
        raise StageError(f"params.yaml: unknown shard(s) {unknown}; known: {sorted(cfg.shards)}")
    slices = [shard_slice(s, cfg.shards[s], tokens_dir) for s in shards]
    if weights is None:
        weights = [s.tokens for s in slices]
    ocfg = cfg.train.model_copy(update={"tokens": cfg.train.tokens * len(shards)})
    model = load_model(base)
    seed = cfg.seed + sum(map(ord, name))  # each model its own, reproducible data order
    with atomic_dir(live_out) as live_tmp:
        stats = train_model(model, slices, weights, ocfg, seed, live_tmp, desc=f"train {name}")
        meta = provenance("train", cfg, name=name, shards=shards, weights=[w / sum(weights) for w in weights],
                          seed_model=str(base), recipe=ocfg.model_dump(), params=count_params(model), **stats)
        save_model(model, out, load_tokenizer(base), meta)


def main(args, cfg: Config) -> None:
    if (args.shard is None) == (args.mixture is None):
        raise StageError("give exactly one of --shard NAME or --mixture NAME")
    if args.shard is not None:
        if args.shard not in cfg.shards:
            raise StageError(f"params.yaml: no shard named {args.shard!r} under 'shards'; known: {sorted(cfg.shards)}")
        name, shards, weights = args.shard, [args.shard], None
        out, live = Path("models/shards") / name, Path("metrics/train") / name
    else:
        from pipeline.merge import shard_token_counts
        from pipeline.validation import resolve_validation

        if args.mixture not in cfg.validation.mixtures:
            raise StageError(f"params.yaml: no mixture named {args.mixture!r} under 'validation.mixtures'; known: {sorted(cfg.validation.mixtures)}")
        members = cfg.validation.mixtures[args.mixture].shards
        tokens = shard_token_counts({s: cfg.shards[s] for s in members}, args.tokens)
        only = cfg.validation.model_copy(update={"mixtures": {args.mixture: cfg.validation.mixtures[args.mixture]}})
        (mix,) = resolve_validation(only, cfg.mixtures, list(cfg.shards), tokens)
        name, shards, weights = mix.name, list(mix.shards), list(mix.weights)
        out, live = Path("models/mixtures") / name, Path("metrics/train_mixtures") / name
    continue_pretraining(cfg, name, shards, weights, args.out or out, args.live or live, args.base, args.tokens)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--shard", help="shard name (a key of 'shards' in params.yaml)")
    p.add_argument("--mixture", help="validation mixture name (a key of 'validation.mixtures'): trains on the union of its shards")
    p.add_argument("--base", type=Path, default=BASE_DIR, help="seed model folder (default: %(default)s)")
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--out", type=Path, default=None, help="default: models/shards/<shard> or models/mixtures/<mixture>")
    p.add_argument("--live", type=Path, default=None, help="DVCLive folder; default: metrics/train/<shard> or metrics/train_mixtures/<mixture>")
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
