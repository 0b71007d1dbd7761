"""Run the stale items of the pipeline on a local process pool, Ray or Slurm (submitit); DVC keeps the record.

``python -m pipeline.launch [--engine local|ray|submitit] [--jobs N] [STAGE ...]``

DVC runs stages one after another and has no cluster backend. This asks DVC which of the stages
``dvc repro STAGE ...`` would consider are stale (every stage without STAGE), runs the independent
``foreach`` items among them (``train@*``, ``evaluate@*``, ``train_mixture@*``, ``train_probe@*``...)
as jobs on the engine, at most ``--jobs`` at once, each with its share of threads (and a GPU each
when params ``device`` asks for CUDA), records each finished item the way ``dvc commit`` does
(``dvc.lock``, the cache, the run-cache: what ``dvc repro`` would have left), and finishes the rest
with ``dvc repro``. A stage that is not an item but that items need (``tokenize``, ``plan``...)
runs here with ``dvc repro --single-item`` when its turn comes.

Threads: params ``threads`` > 0 is every job's thread count (it is a stage param: results depend on
it). ``threads: 0`` ("every core") becomes each job's share: the machine's cores / ``--jobs`` on
this machine, ``--threads`` on a cluster; the stage reads it from ``SHARDMIX_THREADS``. Jobs on
this machine never ask for more cores than it has.

A failed item names its stage and its log (``runs/launch/<stage>.log``); the items that finished are
recorded anyway, and a rerun launches only what is still stale. Ctrl-C cancels the engine's jobs;
the stages' outputs are written under temporary names, so nothing half-written is left.
The last line printed is a JSON summary (also in ``runs/launch/launch.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.lib.dvcrepo import Pipeline
from pipeline.lib.engines import ENGINES, Engine, Job, LocalEngine, RayEngine, SubmititEngine, local_gpus
from pipeline.lib.outputs import write_json
from pipeline.lib.resources import Resources, check_flags, key_value, on_this_machine, params_of, positive, resources
from pipeline.lib.runtime import (THREADS_ENV, StageError, deferred_interrupts, interpreter_first_path, raise_interrupt,
                                  setup_logging, usable_cpus)

log = logging.getLogger("pipeline.launch")
POLL_S = 0.5


@dataclass
class Outcome:
    launched: list[str] = field(default_factory=list)
    here: list[str] = field(default_factory=list)      # non-item stages run with dvc repro -s
    restored: list[str] = field(default_factory=list)  # from DVC's run-cache
    up_to_date: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    not_reached: list[str] = field(default_factory=list)  # downstream of a failure
    cancelled: list[str] = field(default_factory=list)  # stopped by an interrupt
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- the launch


def make_engine(args, res: Resources, root: Path) -> Engine:
    if args.engine == "local":
        return LocalEngine(gpus=local_gpus() if res.gpus else 0)
    if args.engine == "ray":
        return RayEngine(args.address, cpus=usable_cpus(), gpus=local_gpus() if res.gpus else 0)
    return SubmititEngine(root / args.logs / "submitit", args.cluster, res.threads, res.gpus, args.time_min, args.partition,
                          dict(args.slurm_arg or []))




class Launch:
    def __init__(self, root: Path, pipe: Pipeline, engine: Engine, res: Resources, logs: Path, force: bool, shares_machine: bool):
        self.root, self.pipe, self.engine, self.res, self.logs, self.force = root, pipe, engine, res, logs, force
        self.shares_machine = shares_machine
        self.out = Outcome()
        self.done: set[str] = set()
        self.started: dict[str, float] = {}
        info = pipe.info
        below: dict[str, set[str]] = {n: set() for n in info}  # stages downstream of each
        for n in reversed(pipe.order):
            for u in info[n].upstream:
                below[u] |= below[n] | {n}
        self.needed_here = {n for n in info if not info[n].item and any(info[d].item for d in below[n])}

    def job(self, name: str) -> Job:
        info = self.pipe.info[name]
        env = {"DVC_ROOT": str(self.root), "DVC_STAGE": name, "OMP_NUM_THREADS": str(self.res.threads),
               "PATH": interpreter_first_path()}
        if self.res.share:
            env[THREADS_ENV] = str(self.res.threads)
        return Job(name, info.cmd, str(info.wdir), str(self.logs / f"{name}.log"), self.res.threads, self.res.gpus, env)

    def run(self) -> Outcome:
        pending = list(self.pipe.order)
        blocked: set[str] = set()
        while True:
            self.collect()
            for name in sorted(pending, key=lambda n: self.pipe.info[n].item):  # what items wait for, first
                info = self.pipe.info[name]
                if info.upstream & (blocked | {f["stage"] for f in self.out.failed}):
                    pending.remove(name)
                    blocked.add(name)
                    self.out.not_reached.append(name)
                elif info.upstream <= self.done:
                    if info.item and len(self.engine.running()) >= self.res.jobs:
                        continue
                    if not info.item and name not in self.needed_here:
                        pending.remove(name)  # left to the final dvc repro
                        continue
                    pending.remove(name)
                    self.start(name)
            running = self.engine.running()
            if not running and not any(self.pipe.info[n].upstream <= self.done for n in pending):
                return self.out
            time.sleep(POLL_S)

    def start(self, name: str) -> None:
        info = self.pipe.info[name]
        forced = self.force and info.item
        if not forced and not self.pipe.stale(name):
            self.out.up_to_date.append(name)
            self.done.add(name)
            return
        if not info.item:
            self.here(name)
            return
        if not forced and self.pipe.prepare(name):
            self.out.restored.append(name)
            self.done.add(name)
            return
        if forced:
            self.pipe.clear(name)
        self.started[name] = time.monotonic()
        submit(self.engine, self.job(name))
        self.out.launched.append(name)
        log.info("%s: launched on %s (%d thread%s%s); log %s", name, self.engine.name, self.res.threads,
                 "s" if self.res.threads > 1 else "", f", {self.res.gpus} GPU" if self.res.gpus else "",
                 (self.logs / f"{name}.log").relative_to(self.root))

    def here(self, name: str) -> None:
        if self.shares_machine and self.engine.running():  # it takes every core: the jobs here end first
            log.info("%s: waiting for the running jobs to end before running it here", name)
            while self.engine.running():
                time.sleep(POLL_S)
                self.collect()
        path = self.logs / f"{name}.log"
        log.info("%s: not a foreach item; running it here: dvc repro --single-item %s (log %s)", name, name, path.relative_to(self.root))
        t0 = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as out:
            proc = None
            try:
                with deferred_interrupts():  # as in submit: a Ctrl-C in the fork would be lost
                    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", name], cwd=self.root,
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                status = proc.wait()
            except BaseException:  # interrupted: DVC stops its stage on SIGINT
                if proc is not None:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=60)
                raise
        self.out.seconds[name] = round(time.monotonic() - t0, 1)
        if status:
            self.out.failed.append({"stage": name, "status": status, "log": str(path.relative_to(self.root))})
            log.error("%s failed (dvc repro exit %d); its log: %s%s", name, status, path.relative_to(self.root), error_lines(path))
        else:
            self.out.here.append(name)
            self.done.add(name)

    def collect(self, cancelled: bool = False) -> None:
        """Record the jobs that finished; name the ones that failed (or, ``cancelled``, that were stopped)."""
        for job, status, note in self.engine.poll():
            self.out.seconds[job.name] = round(time.monotonic() - self.started.pop(job.name), 1)
            rel = str(Path(job.log).relative_to(self.root))
            if status == 0:
                self.pipe.record(job.name)
                self.done.add(job.name)
                log.info("%s: finished in %.0f s; recorded in dvc.lock", job.name, self.out.seconds[job.name])
            elif cancelled:
                self.out.cancelled.append(job.name)
                log.error("%s: cancelled; nothing of it is recorded (its log: %s)", job.name, rel)
            else:
                how = f"killed by signal {-status}" if status < 0 and not note else f"exit status {status}"
                self.out.failed.append({"stage": job.name, "status": status, "log": rel, **({"engine": note} if note else {})})
                log.error("%s failed (%s%s); its log: %s%s", job.name, how, f"; {note}" if note else "", rel, error_lines(Path(job.log)))


ERROR_LINE = re.compile(r"^(?:[\d:,.-]+ ){0,2}ERROR\b")  # a stage's "12:00:01 ERROR name: ..." or DVC's "ERROR: ..."
TAIL_BYTES = 256 * 1024  # a job's errors are at the end of its log


def error_lines(path: Path, most: int = 12) -> str:
    """The errors a job's log ends with, each on a new line: what the user needs, without opening
    the log. An error is an ERROR line with the indented lines under it (a params error lists its
    keys so), or the last line of a traceback (the exception); the last ``most`` lines of them, each
    error's first line kept. Only the end of the log is read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    groups: list[list[str]] = []
    current, in_traceback = None, False
    for line in text.splitlines():
        if ERROR_LINE.match(line):
            current, in_traceback = [line], False
            groups.append(current)
        elif line.startswith("Traceback (most recent call last)"):
            current, in_traceback = None, True
        elif in_traceback and line.strip() and not line[0].isspace():
            groups.append([line])  # the exception that ended the traceback
            current, in_traceback = None, False
        elif current is not None and line[:1] in (" ", "\t") and line.strip():
            current.append(line)
        elif not in_traceback:
            current = None
    out: list[str] = []
    for group in reversed(groups):
        room = most - len(out)
        if room <= 0:
            break
        out = group[:room] + out
    return "".join(f"\n  | {line}" for line in out)


def submit(engine: Engine, job: Job) -> None:
    """``engine.submit(job)`` with Ctrl-C and SIGTERM held until the engine has recorded the job, then
    delivered. Python forks the job's shell in there: an interrupt raised in the fork's own handlers
    (logging's lock release) is swallowed, and one raised after the fork but before the engine keeps
    the process leaves a job that nobody cancels."""
    with deferred_interrupts():
        engine.submit(job)


def launch(args) -> int:
    root = Path.cwd()
    check_flags(args)
    threads_param, device = params_of(root / args.params)
    res = resources(args, threads_param, device)
    pipe = Pipeline(root, args.stages)
    logs = root / args.logs
    engine = make_engine(args, res, root)
    t0 = time.monotonic()
    run = Launch(root, pipe, engine, res, logs, args.force, on_this_machine(args))
    # Ctrl-C and SIGTERM cancel the jobs, also where SIGINT came in ignored (a background job of a script)
    previous = signal.signal(signal.SIGTERM, raise_interrupt), signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = False
    try:
        out = run.run()
    except KeyboardInterrupt:
        interrupted, out = True, run.out
        names = engine.running()
        log.error("interrupted: cancelling %d running job(s): %s", len(names), ", ".join(names) or "none")
        engine.cancel()
        run.collect(cancelled=True)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        engine.close()
        pipe.close()
    finished = None
    if not interrupted and not out.failed:
        log.info("finishing with dvc repro %s", " ".join(args.stages))
        finished = subprocess.run([sys.executable, "-m", "dvc", "repro", *args.stages], cwd=root).returncode
    summary = {"engine": args.engine, "jobs": res.jobs, "threads_per_job": res.threads, "gpus_per_job": res.gpus,
               "stages": args.stages, "launched": out.launched, "ran_here": out.here, "restored": out.restored,
               "up_to_date": len(out.up_to_date), "failed": out.failed, "not_reached": out.not_reached, "cancelled": out.cancelled,
               "interrupted": interrupted, "final_dvc_repro": finished, "seconds": out.seconds,
               "wall_s": round(time.monotonic() - t0, 1)}
    write_json(logs / "launch.json", summary)
    for f in out.failed:
        log.error("FAILED %s: %s; rerun `python -m pipeline.launch` to launch only what is still stale", f["stage"], f["log"])
    print(json.dumps(summary))
    if interrupted:
        return 130
    return 1 if out.failed else (finished or 0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__.splitlines()[0])
    p.add_argument("stages", nargs="*", metavar="STAGE", help="dvc.yaml stages or foreach groups, as for dvc repro (default: all)")
    p.add_argument("--engine", choices=ENGINES, default="local", help="where the jobs run (default: %(default)s)")
    p.add_argument("--jobs", type=positive, default=2, help="jobs at once (default: %(default)s)")
    p.add_argument("--threads", type=positive, help="threads per job where params threads is 0 (default: cores / --jobs here, 1 on a cluster)")
    p.add_argument("--gpus-per-job", type=int, choices=range(0, 9), metavar="G",
                   help="GPUs per job (default: 1 when params device is cuda, else 0)")
    p.add_argument("--address", help="ray: an existing cluster (host:port, ray://host:port, or auto); default: a local one")
    p.add_argument("--cluster", choices=("slurm", "local"), help="submitit: Slurm, or its local executor (default: Slurm; an error where there is no srun)")
    p.add_argument("--partition", help="submitit on Slurm: the partition")
    p.add_argument("--time-min", type=positive, default=240, help="submitit: each job's time limit in minutes (default: %(default)s)")
    p.add_argument("--slurm-arg", type=key_value, action="append", metavar="KEY=VALUE", help="submitit on Slurm: another sbatch option (repeatable)")
    p.add_argument("--force", action="store_true", help="run the foreach items even if up to date, without the run-cache (dvc repro -f -s for each)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    p.add_argument("--logs", type=Path, default=Path("runs/launch"), help="folder of the jobs' logs (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("dvc").setLevel(logging.WARNING)
    try:
        return launch(args)
    except StageError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
