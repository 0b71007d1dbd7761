"""Stage check: the whole params file, validated before any other stage runs under DVC.

``python -m pipeline.check --out data/params.json`` validates every section of params.yaml
(:class:`pipeline.params.config.Config`: unknown keys, types, names across sections) and writes a
small record that is the same for every valid file. Every stage runs after it (prepare depends
on that record), so ``dvc repro`` or ``dvc exp run -S ...`` with a mistake anywhere in params.yaml
stops here, naming the key, before DVC removes a single output; and since the record does not
change, a params edit reruns only the stages that read the edited keys. Each stage run by hand
validates the sections it reads. It also checks that this machine has params ``device`` (a GPU
for ``cuda``), so a run meant for a GPU stops here on a machine without one, and what the file
names outside itself: the pretrained seed's folder, each target's file, each target domain (a
domain of the corpus or a registry source; with a local corpus, whose domains are known only once
prepare reads it, gather checks them). Those stages would stop on them too, but only after
DVC had removed their outputs (the tokenizer, every target's token files).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lib.device import resolve_device
from pipeline.lib.outputs import made_by, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.params.config import Config
from pipeline.sources import SOURCES

ROOT_NOTE = "a relative path is relative to the folder the stage runs in (under DVC, the repository root)"


def missing_inputs(cfg: Config) -> list[str]:
    """``key: problem and fix`` for each file, folder or domain the params name that is not there."""
    out = []
    if cfg.base.init == "pretrained":
        path = Path(cfg.base.pretrained_path)
        if path.is_file():
            out.append(f"base.pretrained_path: {path} is a file, not a model folder (a GGUF? `python -m pipeline.convert "
                       f"gguf {path} --out DIR` makes the folder)")
        elif not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            out.append(f"base.pretrained_path: {path} {what}: give a Hugging Face model folder (config.json, weights, "
                       f"tokenizer; `python -m pipeline.convert` makes one); {ROOT_NOTE}")
    known = None if cfg.prepare.local else set(cfg.prepare.domains) | set(SOURCES)  # a local corpus' domains are known once read
    for name, spec in cfg.recommend.targets.items():
        if (problem := spec.file_problem()) is not None:
            out.append(f"recommend.targets.{name}.file: {spec.file} {problem}: give a .jsonl or .txt file; {ROOT_NOTE}")
        for domain in (spec.domains or {}) if known is not None else ():
            if domain not in known:
                out.append(f"recommend.targets.{name}.domains: unknown domain {domain!r}: neither a domain of the corpus "
                           f"(prepare.domains) nor a registry source ({', '.join(sorted(SOURCES))}); fix the name or "
                           f"give the text as a file target")
    return out


def main(args, cfg: Config) -> None:
    resolve_device(cfg.device, args.params)
    problems = missing_inputs(cfg)
    if problems:
        raise StageError("\n".join([f"{args.params}: names what is not there"] + [f"  {p}" for p in problems]))
    write_json(args.out, {"params": str(args.params), "valid": True, "made_by": made_by("check")})


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the record to write")
    return run_stage(main, p, Config, argv)


if __name__ == "__main__":
    exit_stage(cli())
