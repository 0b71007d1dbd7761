"""The training items of the default pipeline: ``pipeline.launch`` on an engine against a serial ``dvc repro``.

``python -m pipeline.bench launch [--engine ray] [--jobs 2] [--stages train train_mixture] [--json] [--csv PATH]``

Both arms run in one scratch clone of this repository's HEAD (``git clone --shared``; its DVC
cache is this repository's, outputs linked, so the clone's inputs need no copy), one after the
other, forced so that every item trains (no run-cache):

1. serial: ``dvc repro --force --single-item STAGES`` with params as committed (``threads: 0``:
   every core to each stage);
2. launch: ``python -m pipeline.launch --engine E --jobs N --force STAGES`` (``threads: 0``: each
   job gets cores / N).

Reports both wall times, their ratio, and the launch's per-item times. The clone is removed
afterwards (``--keep`` keeps it). On the default params the stages are the 10 shard models and the
20 truth models: 26 and 21 minutes on 2 cores (docs/launch.md). Commit first: the clone holds HEAD.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.bench import emit
from pipeline.lib.runtime import interpreter_first_path

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def sh(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, check=True, text=True, **kw)


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def scratch_clone(dest: Path) -> None:
    sh(["git", "clone", "-q", "--shared", str(REPO), str(dest)], cwd=REPO.parent)
    cache = sh(dvc("cache", "dir"), cwd=REPO, capture_output=True).stdout.strip()
    sh(dvc("cache", "dir", "--local", cache), cwd=dest)
    sh(dvc("config", "--local", "cache.type", "reflink,hardlink,symlink,copy"), cwd=dest)
    sh(dvc("checkout", "-q"), cwd=dest)


def timed(args: list[str], cwd: Path, log_path: Path) -> float:
    t0 = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}); its output: {log_path}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench launch", description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="ray", choices=("local", "ray", "submitit"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--stages", nargs="+", default=["train", "train_mixture"])
    p.add_argument("--json", action="store_true", help="only the JSON line (no table)")
    p.add_argument("--csv", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch clone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.update(PATH=interpreter_first_path(), DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")

    commit = sh(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).stdout.strip()
    dirty = bool(sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="shardmix-bench-launch-"))
    clone = work / "repo"
    try:
        log.info("scratch clone of %s%s in %s", commit[:9], " (the working tree has uncommitted changes: not benchmarked)" if dirty else "", clone)
        scratch_clone(clone)
        # the clone's kernels are built once here, untimed, into a folder removed with it (a build
        # folder is per checkout: the arms would otherwise compile inside the serial one)
        os.environ["SHARDMIX_EXTENSIONS_DIR"] = str(work / "torch_extensions")
        timed([sys.executable, "-m", "pipeline.kernels.build", "--strict"], clone, work / "build.log")
        log.info("serial: dvc repro --force --single-item %s", " ".join(args.stages))
        serial_s = timed(dvc("repro", "--force", "--single-item", *args.stages), clone, work / "serial.log")
        log.info("serial: %.0f s; launch: --engine %s --jobs %d", serial_s, args.engine, args.jobs)
        launch_s = timed([sys.executable, "-m", "pipeline.launch", "--engine", args.engine, "--jobs", str(args.jobs), "--force",
                          *args.stages], clone, work / "launch.log")
        summary = json.loads((clone / "runs/launch/launch.json").read_text())
        items = summary["launched"]
        item_s = [summary["seconds"][n] for n in items]
        result = {
            "bench": "launch", "engine": args.engine, "jobs": args.jobs, "threads_per_job": summary["threads_per_job"],
            "stages": " ".join(args.stages), "items": len(items), "serial_dvc_repro_s": round(serial_s, 1),
            "launch_s": round(launch_s, 1), "speedup": round(serial_s / launch_s, 3),
            "item_s_mean": round(sum(item_s) / max(len(item_s), 1), 1), "item_s_max": max(item_s, default=0.0),
            "cpus": os.cpu_count(), "host": platform.node(), "commit": commit, "dirty": dirty,
        }
    finally:
        if args.keep:
            log.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    emit(result, csv_path=args.csv, table=not args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
