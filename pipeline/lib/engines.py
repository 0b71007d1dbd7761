"""Where ``pipeline.launch`` runs stage commands: a local process pool, Ray, or Slurm through submitit.

Every engine runs a :class:`Job` (one stage's shell command, its working folder, environment, log
file, threads and GPUs) and reports each job's exit status when it ends; none of them knows DVC.

- :class:`LocalEngine` (``local``): processes on this machine, at most ``--jobs`` at once; GPUs (if
  asked) handed out one set per job through ``CUDA_VISIBLE_DEVICES``.
- :class:`RayEngine` (``ray``): a Ray task per job with ``num_cpus`` = its threads and ``num_gpus``
  = its GPUs, on a local Ray cluster started for the launch (``ray.init(num_cpus=...)``) or on an
  existing one (``--address``).
- :class:`SubmititEngine` (``submitit``): a Slurm job per stage (partition, time, CPUs and GPUs from
  the launch flags), or submitit's local executor (``--cluster local``: tests and laptops).

A job's command runs under ``$SHELL -c`` as DVC runs it, in a session of its own (a Ctrl-C at the
terminal reaches the launcher, which cancels the jobs: SIGTERM, the stages' atomic outputs keep
nothing half-written, then SIGKILL after a grace period), and it is told to die with the process
that started it (``PR_SET_PDEATHSIG``), so a cancelled Ray task or Slurm job leaves no orphan. When a
job's shell ends, whatever it left running in its session is stopped the same way: a shell that
forks its command rather than exec'ing it (dash, Debian's ``/bin/sh``) leaves the stage running on
when the shell alone is killed, and that stage would write its output after the launch had reported
it failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.lib.runtime import StageError, on_main_thread, raise_interrupt

log = logging.getLogger(__name__)

ENGINES = ("local", "ray", "submitit")
EXTRAS = {"ray": "ray", "submitit": "slurm"}  # engine -> pyproject extra that installs it
GRACE_S = 20.0  # between SIGTERM and SIGKILL when jobs are cancelled


@dataclass(frozen=True)
class Job:
    name: str                 # the stage's DVC address, e.g. train@code
    cmd: str
    cwd: str
    log: str                  # the file that receives the command's stdout and stderr
    threads: int = 1
    gpus: int = 0
    env: dict[str, str] = field(default_factory=dict)  # added to the environment the job starts in


# ---------------------------------------------------------------- one job's process


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux); elsewhere a no-op


def start(job: Job, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``job``'s command (``$SHELL -c``, as DVC runs it) in its own session, output to its log."""
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    shell = os.environ.get("SHELL") or "/bin/sh"
    env = {**os.environ, **job.env, **(extra_env or {})}
    with open(job.log, "w") as out:
        out.write(f"# {job.name}: {job.cmd}\n")
        out.flush()
        return subprocess.Popen([shell, "-c", job.cmd], cwd=job.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)


def stop(procs: list[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    """SIGTERM every job's process group (the stages drop their temporaries), SIGKILL what is left
    after ``grace_s``. A job whose shell has ended counts while anything it started still runs."""
    def running(p: subprocess.Popen) -> bool:
        return p.poll() is None or _group_alive(p.pid)

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if running(p)]
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
        deadline = time.monotonic() + wait
        while any(running(p) for p in alive) and time.monotonic() < deadline:
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    proc = Path("/proc")
    if not (proc / "self/stat").exists():  # not Linux: a zombie counts as alive
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]  # after "pid (comm)"
            if int(pgrp) == pgid and state != "Z":
                return True
    return False


def run_job(job: Job) -> int:
    """Run ``job`` to its end here and return its exit status (negative: killed by that signal).

    What a Ray task or a submitit job executes. Cancelled (KeyboardInterrupt, SIGTERM), it stops the
    command first."""
    previous = signal.signal(signal.SIGTERM, raise_interrupt) if on_main_thread() else None
    proc = start(job)
    try:
        while True:  # short waits: Ray delivers its cancellation (KeyboardInterrupt) between bytecodes, not inside waitpid
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = proc.wait(timeout=0.2)
                stop([proc])  # what the shell left running, if anything
                return status
    except BaseException:
        stop([proc])
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- engines


class Engine:
    """Runs jobs; ``poll()`` returns the ones that ended since the last call, with their exit status."""

    name = "engine"

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def poll(self) -> list[tuple[Job, int, str]]:
        """(job, exit status, a note when the engine, not the command, failed it) for each job that ended."""
        raise NotImplementedError

    def running(self) -> list[str]:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop every running job and wait for them; the next ``poll()`` reports how each ended (a job
        that finished just before is reported finished)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalEngine(Engine):
    """Processes on this machine; a job asking for GPUs gets its own through ``CUDA_VISIBLE_DEVICES``."""

    name = "local"

    def __init__(self, gpus: int = 0):
        self._procs: dict[str, tuple[Job, subprocess.Popen, list[int]]] = {}
        self._free_gpus = list(range(gpus))

    def submit(self, job: Job) -> None:
        extra, mine = {}, []
        if job.gpus:
            mine, self._free_gpus = self._free_gpus[:job.gpus], self._free_gpus[job.gpus:]
            extra["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, mine))
        self._procs[job.name] = (job, start(job, extra), mine)

    def poll(self) -> list[tuple[Job, int, str]]:
        ended = []
        for name, (job, proc, mine) in list(self._procs.items()):
            if proc.poll() is not None:
                stop([proc])  # what the shell left running, if anything
                del self._procs[name]
                self._free_gpus += mine
                ended.append((job, proc.returncode, ""))
        return ended

    def running(self) -> list[str]:
        return list(self._procs)

    def cancel(self) -> None:
        stop([p for _, p, _ in self._procs.values()])


class RayEngine(Engine):
    """A Ray task per job (``num_cpus`` = threads, ``num_gpus`` = GPUs) on a local cluster or ``address``."""

    name = "ray"

    def __init__(self, address: str | None, cpus: int, gpus: int):
        ray = need("ray")
        self._ray = ray
        if address and address != "auto":
            reachable(address)
        kw = {"address": address} if address else {"num_cpus": cpus, "num_gpus": gpus, "object_store_memory": 80 * 2**20}
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kw)
        self._task = ray.remote(max_retries=0)(run_job)
        self._refs: dict = {}

    def submit(self, job: Job) -> None:
        ref = self._task.options(num_cpus=job.threads, num_gpus=job.gpus, name=job.name).remote(job)
        self._refs[ref] = job

    def poll(self) -> list[tuple[Job, int, str]]:
        if not self._refs:
            return []
        done, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        ended = []
        for ref in done:
            job = self._refs.pop(ref)
            try:
                ended.append((job, int(self._ray.get(ref)), ""))
            except Exception as e:  # the worker died or Ray could not run the task
                ended.append((job, -1, f"Ray: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        return ended

    def running(self) -> list[str]:
        return [j.name for j in self._refs.values()]

    def cancel(self) -> None:
        for ref in list(self._refs):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)  # KeyboardInterrupt in the task: run_job stops its command
        _, left = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=GRACE_S + 5)
        for ref in left:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)  # the command dies with its worker (PR_SET_PDEATHSIG)
        self._ray.wait(left, num_returns=len(left), timeout=10)

    def close(self) -> None:
        self._ray.shutdown()


class SubmititEngine(Engine):
    """A Slurm job per stage through submitit, or submitit's local executor (``cluster="local"``)."""

    name = "submitit"

    def __init__(self, folder: Path, cluster: str | None, threads: int, gpus: int, time_min: int,
                 partition: str | None, slurm_args: dict[str, str]):
        submitit = need("submitit")
        self._executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.cluster = self._executor.cluster
        params = {"timeout_min": time_min, "gpus_per_node": gpus, "name": "shardmix"}
        if self.cluster == "slurm":
            params.update(cpus_per_task=threads, slurm_partition=partition, slurm_additional_parameters=slurm_args or None)
            params = {k: v for k, v in params.items() if v is not None}
        self._executor.update_parameters(**params)
        self._jobs: dict[str, tuple[Job, object]] = {}

    def submit(self, job: Job) -> None:
        self._jobs[job.name] = (job, self._executor.submit(run_job, job))
        log.info("%s: submitted as %s job %s", job.name, self.cluster, self._jobs[job.name][1].job_id)

    def poll(self) -> list[tuple[Job, int, str]]:
        ended = []
        for name, (job, sj) in list(self._jobs.items()):
            if not sj.done():
                continue
            del self._jobs[name]
            try:
                ended.append((job, int(sj.result()), ""))
            except Exception as e:  # the job was killed, timed out, or never started
                ended.append((job, -1, f"submitit {self.cluster} job {sj.job_id}: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''} (its logs: {sj.paths.folder})"))
        return ended

    def running(self) -> list[str]:
        return list(self._jobs)

    def cancel(self) -> None:
        for _, sj in self._jobs.values():
            with contextlib.suppress(Exception):
                sj.cancel(check=False)
        deadline = time.monotonic() + GRACE_S + 5
        while not all(sj.done() for _, sj in self._jobs.values()) and time.monotonic() < deadline:
            time.sleep(0.5)


# ---------------------------------------------------------------- checks before anything is launched


def need(engine: str):
    """The engine's package, or a clear error naming the extra that installs it."""
    try:
        return importlib.import_module(engine)
    except ImportError:
        raise StageError(f"--engine {engine} needs the {engine} package: pip install -e '.[{EXTRAS[engine]}]' "
                         f"(or pip install {engine})") from None


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """A Ray cluster address (``host:port`` or ``ray://host:port``) answers on its port, or a clear error."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StageError(f"--address {address!r}: expected host:port (the head node's GCS, port 6379 by default) "
                         "or ray://host:port, or 'auto' for a cluster started on this machine")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise StageError(f"--address {address}: the Ray cluster does not answer ({e}); start it with "
                         f"`ray start --head --port {port}` there, or leave --address out for a local cluster") from None


def local_gpus() -> int:
    """CUDA devices visible here (0 without a CUDA build of torch)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA setup counts as none
        return 0

