"""Stage check: the whole params file, validated before any other stage runs under DVC.

``python -m pipeline.check --out data/params.json`` validates every section of params.yaml
(:class:`pipeline.params.config.Config`: unknown keys, types, names across sections) and writes a
small record that is the same for every valid file. Every stage runs after it (prepare depends
on that record), so ``dvc repro`` or ``dvc exp run -S ...`` with a mistake anywhere in params.yaml
stops here, naming the key, before DVC removes a single output; and since the record does not
change, a params edit reruns only the stages that read the edited keys. Each stage run by hand
validates the sections it reads. It also checks that this machine has params ``device`` (a GPU
for ``cuda``), so a run meant for a GPU stops here on a machine without one.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lib.device import resolve_device
from pipeline.lib.outputs import made_by, write_json
from pipeline.lib.runtime import exit_stage, run_stage, stage_parser
from pipeline.params.config import Config


def main(args, cfg: Config) -> None:
    resolve_device(cfg.device, args.params)
    write_json(args.out, {"params": str(args.params), "valid": True, "made_by": made_by("check")})


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the record to write")
    return run_stage(main, p, Config, argv)


if __name__ == "__main__":
    exit_stage(cli())
