"""A stage process's end: ``exit_stage`` (objects frozen before exit) against a plain ``SystemExit``.

``python -m pipeline.bench teardown [--quick] [--json] [--reps N]``

Each arm is a fresh Python process that does what a model stage holds when its work is done:
imports torch and transformers' Llama, builds a small model and runs it once, then exits, one arm
through :func:`pipeline.lib.runtime.exit_stage`, the other (the plain reference, what stages did
before) through ``raise SystemExit(0)``. Wall seconds of the whole process, medians of arms timed
round-robin (:func:`pipeline.bench.interleaved_medians`); ``exit_stage_speedup`` = plain / ours.
Last line printed: one JSON object.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from pipeline.bench import RESULTS, emit, interleaved_medians, seconds
from pipeline.bench._fixtures import REPO

WORK = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2)
LlamaForCausalLM(cfg)(torch.zeros(1, 8, dtype=torch.long))
"""
ENDS = {"exit_stage": "from pipeline.lib.runtime import exit_stage\nexit_stage(0)\n", "plain": "raise SystemExit(0)\n"}


def _process(end: str):
    def run() -> None:
        subprocess.run([sys.executable, "-c", WORK + ENDS[end]], cwd=REPO, check=True)
    return run


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench teardown", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 9, quick 3)")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 9)
    secs = interleaved_medians({end: _process(end) for end in ENDS}, reps=reps)
    res = {"exit_stage_s": seconds(secs["exit_stage"]), "plain_s": seconds(secs["plain"]), "reps": reps,
           "exit_stage_speedup": round(secs["plain"] / secs["exit_stage"], 3),
           "saved_s_per_process": seconds(secs["plain"] - secs["exit_stage"])}
    emit(res, csv_path=None if args.quick else RESULTS / "teardown.csv", table=not args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
