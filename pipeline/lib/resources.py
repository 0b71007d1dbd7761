"""What each job of ``pipeline.launch`` asks for (threads, GPUs), checked against this machine and the
engine before anything runs; the launch flags that only some engines take.

Threads: params ``threads`` > 0 is every job's count (a stage param: results depend on it);
``threads: 0`` becomes each job's share: this machine's cores / ``--jobs`` where the jobs share it,
``--threads`` (default 1) on a cluster. A GPU per job when params ``device`` is ``cuda`` (or
``auto`` on a machine with one), or ``--gpus-per-job``.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.lib.engines import local_gpus, need
from pipeline.lib.runtime import StageError, usable_cpus


@dataclass
class Resources:
    """What each job asks for, and how many run at once."""

    jobs: int
    threads: int
    gpus: int
    share: bool  # threads is this job's share of threads: 0 (the stages read SHARDMIX_THREADS)



def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 1")
    return n


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE (an sbatch option without its dashes, e.g. account=myproj)")
    return key, value


def params_of(path: Path) -> tuple[int, str]:
    """params ``threads`` and ``device`` (the stages validate the rest)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise StageError(f"{path}: cannot read the params ({e}); run from the project folder or pass --params") from None
    threads, device = raw.get("threads", 0), str(raw.get("device", "cpu"))
    if not isinstance(threads, int) or threads < 0:
        raise StageError(f"{path}: threads: {threads!r}: a whole number >= 0 (0 = every core)")
    return threads, device


def on_this_machine(args) -> bool:
    """Whether the jobs share this machine (so their cores and GPUs must fit it)."""
    return args.engine == "local" or (args.engine == "ray" and not args.address) or (args.engine == "submitit" and args.cluster == "local")


def resources(args, threads_param: int, device: str) -> Resources:
    here = on_this_machine(args)
    if threads_param:
        if args.threads and args.threads != threads_param:
            raise StageError(f"{args.params}: threads: {threads_param} is every job's thread count (a stage param); "
                             f"drop --threads {args.threads}, or set threads: 0 to give each job a share")
        threads, share = threads_param, False
    elif args.threads:
        threads, share = args.threads, True
    else:
        threads, share = (max(1, usable_cpus() // args.jobs) if here else 1), True
    if here and args.jobs * threads > usable_cpus():
        raise StageError(f"--jobs {args.jobs} x {threads} thread{'s' if threads > 1 else ''} each > the {usable_cpus()} cores here: the jobs would "
                         f"oversubscribe this machine; lower --jobs{'' if share else ' or params threads'}")
    gpus = args.gpus_per_job
    if gpus is None:
        gpus = 1 if device.startswith("cuda") or (device == "auto" and here and local_gpus()) else 0
    if gpus and device.startswith("cuda:"):
        raise StageError(f"{args.params}: device: {device} names one GPU, but each job gets GPUs of its own; set device: cuda")
    if gpus and here:
        have = local_gpus()
        where = "submitit's local executor" if args.engine == "submitit" else "this machine"
        if have < gpus * (1 if args.engine == "submitit" else args.jobs):
            need_n = gpus if args.engine == "submitit" else gpus * args.jobs
            asked = f"--gpus-per-job {gpus}" if args.gpus_per_job is not None else f"{args.params}: device: {device} (a GPU per job)"
            raise StageError(f"{asked}{'' if args.engine == 'submitit' else f' x --jobs {args.jobs}'}: {where} has {have} "
                             f"CUDA device(s), {need_n} needed; set device: cpu or --gpus-per-job 0, or run on a GPU host")
    return Resources(args.jobs, threads, gpus, share)


def check_flags(args) -> None:
    if args.address and args.engine != "ray":
        raise StageError(f"--address is a Ray cluster's; it has no meaning with --engine {args.engine}")
    slurm = [f for f, v in (("--partition", args.partition), ("--slurm-arg", args.slurm_arg)) if v]
    if args.engine != "submitit" and (slurm or args.cluster):
        raise StageError(f"{', '.join(slurm + (['--cluster'] if args.cluster else []))}: submitit's; use --engine submitit")
    if args.engine == "submitit" and args.cluster == "local" and slurm:
        raise StageError(f"{', '.join(slurm)}: Slurm's; submitit's local executor has none")
    if args.engine == "submitit" and args.cluster is None and shutil.which("srun") is None:  # submitit's own test
        raise StageError("--engine submitit: no Slurm here (no srun on PATH), so submitit would run every job on this "
                         "machine, ignoring --partition and the cores here; run from a Slurm login node, or pass "
                         "--cluster local to run the jobs here on purpose")
    if args.engine in ("ray", "submitit"):
        need(args.engine)
