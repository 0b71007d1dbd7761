"""pipeline.launch: the stale foreach items on an engine, recorded as dvc repro would have.

The end-to-end tests run the tiny pipeline's ``evaluate`` stages (prepare, tokenize, base, the three
shard models and their evaluations) once with a serial ``dvc repro`` and once through each engine,
and compare every output hash in dvc.lock (on one machine the models are bit-identical).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.lib import engines
from pipeline.lib.runtime import StageError, deferred_interrupts, interpreter_first_path, raise_interrupt, resolved_threads, usable_cpus
from tests.conftest import REPO, TINY_PARAMS, dvc, edited_params, make_project, project_env

TARGETS = ["evaluate"]
ITEMS = {"train@code", "train@prose", "train@legal", "evaluate@code", "evaluate@prose", "evaluate@legal"}


def launch(root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.launch", *args], cwd=root, env=project_env(), capture_output=True,
                          text=True, timeout=timeout)


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def out_hashes(root: Path) -> dict[str, dict[str, str]]:
    """Every stage's output hashes in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: {o["path"]: o.get("md5") for o in entry.get("outs", [])} for name, entry in lock.items()}


def stale(root: Path, *targets: str) -> dict:
    return json.loads(dvc(root, "status", "--json", *targets).stdout or "{}")


@pytest.fixture(scope="session")
def serial(tmp_path_factory, corpus_rows) -> dict[str, dict[str, str]]:
    """The output hashes of a serial ``dvc repro``: made once per run, also when pytest-xdist sends
    the tests that compare with it to different workers (they share the run's base temp folder)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "launch-serial.json"
    with FileLock(f"{shared}.lock"):
        if not shared.is_file():
            root = make_project(tmp_path_factory.mktemp("serial") / "proj", corpus_rows, TINY_PARAMS)
            dvc(root, "repro", *TARGETS)
            shared.write_text(json.dumps(out_hashes(root)))
    return json.loads(shared.read_text())


# ---------------------------------------------------------------- the same record as dvc repro, per engine


@pytest.mark.slow(minutes=3)
@pytest.mark.parametrize("engine", [["local"], ["ray"], ["submitit", "--cluster", "local"]], ids=lambda e: e[0])
def test_launch_leaves_what_a_serial_dvc_repro_leaves(engine, serial, tmp_path, corpus_rows):
    pytest.importorskip(engine[0]) if engine[0] != "local" else None
    root = make_project(tmp_path / "proj", corpus_rows, TINY_PARAMS)
    proc = launch(root, "--engine", *engine, "--jobs", "2", *TARGETS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    s = summary_of(proc)
    assert set(s["launched"]) == ITEMS, s              # every item ran on the engine...
    assert {"prepare", "tokenize", "base"} <= set(s["ran_here"]), s  # ...the stages they need, here, before them
    assert s["failed"] == [] and s["final_dvc_repro"] == 0 and s["threads_per_job"] == 1
    assert out_hashes(root) == serial                   # dvc.lock: the same output hashes
    assert stale(root, *TARGETS) == {}                  # dvc status: clean
    for item in ITEMS:
        log = (root / "runs/launch" / f"{item}.log").read_text()
        assert log.startswith(f"# {item}: python -m pipeline.")
    run = json.loads((root / "runs/train/code.json").read_text())
    assert run["torch_threads"] == 1

    again = launch(root, "--engine", *engine, "--jobs", "2", *TARGETS)  # nothing stale: nothing launched
    assert again.returncode == 0 and summary_of(again)["launched"] == [], again.stderr[-3000:]
    if engine == ["local"]:  # --force: the item trains again (no run-cache), bit-identical; its evaluation is then up to date
        forced = launch(root, "--engine", "local", "--force", "train@code")
        assert forced.returncode == 0 and summary_of(forced)["launched"] == ["train@code"], forced.stderr[-3000:]
        assert out_hashes(root) == serial and stale(root, *TARGETS) == {}


# ---------------------------------------------------------------- a job killed mid-run


def _find_job(root: Path, name_part: str, timeout_s: float = 120.0) -> int:
    """The pid of a training job of the project ``root`` (its working folder): not one of another
    test's, nor of a pipeline someone runs beside the tests."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "pipeline.train" in cmd and name_part in cmd and p.info["cwd"] and Path(p.info["cwd"]) == root.resolve():
                return p.info["pid"]
        time.sleep(0.02)
    raise AssertionError(f"no job of {name_part} started in {root}")


@pytest.mark.slow
def test_a_killed_job_is_named_the_others_are_recorded_and_the_rerun_trains_only_it(tmp_path, corpus_rows):
    root = make_project(tmp_path / "proj", corpus_rows, TINY_PARAMS)
    dvc(root, "repro", "base")
    # /bin/sh: where it is dash (Debian), it forks the stage and the first process found is the job's shell
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.launch", "--engine", "local", "--jobs", "2", "train"], cwd=root,
                            env={**project_env(), "SHELL": "/bin/sh"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.kill(_find_job(root, "--out models/shards/prose"), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    s = json.loads(out.strip().splitlines()[-1])
    assert [f["stage"] for f in s["failed"]] == ["train@prose"] and s["failed"][0]["log"] == "runs/launch/train@prose.log"
    assert "FAILED train@prose: runs/launch/train@prose.log" in err
    assert s["final_dvc_repro"] is None                   # no serial retry of the failed item
    assert set(stale(root, "train")) == {"train@prose"}   # the others are recorded
    assert not (root / "models/shards/prose").exists()    # nothing half-written

    rerun = launch(root, "--engine", "local", "--jobs", "2", "train")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert summary_of(rerun)["launched"] == ["train@prose"]
    assert stale(root, "train") == {}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_ctrl_c_cancels_the_jobs_and_leaves_nothing_half_written(engine, tmp_path, corpus_rows):
    import psutil

    if engine == "ray":
        pytest.importorskip("ray")
    # shard jobs of ~30x the tiny budget: still running when the Ctrl-C is handled, also on a loaded
    # machine (with the tiny budget a full run here once saw the job found end first: nothing to cancel)
    params = copy.deepcopy(TINY_PARAMS)
    params["train"]["tokens"] *= 32
    root = make_project(tmp_path / "proj", corpus_rows, params)
    dvc(root, "repro", "base")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.launch", "--engine", engine, "--jobs", "2", "train"], cwd=root,
                            env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = psutil.Process(_find_job(root, "pipeline.train"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["interrupted"] and s["cancelled"] and s["final_dvc_repro"] is None and s["failed"] == [], s
    assert "interrupted: cancelling" in err
    with pytest.raises(psutil.NoSuchProcess):
        job.wait(timeout=30)
        job.status()  # gone, not a zombie of a live parent
    unrecorded = set(stale(root, "train"))
    assert set(s["cancelled"]) <= unrecorded and set(s["launched"]) - set(s["cancelled"]) <= {"train@code", "train@prose", "train@legal"} - unrecorded
    for item in unrecorded:  # an item that did not finish left no output, and no temporary
        shard = item.split("@")[1]
        assert not (root / "models/shards" / shard).exists()
    assert not list((root / "models").rglob(".*.tmp-*")) and not list((root / "metrics").rglob(".*.tmp-*"))


@pytest.mark.parametrize("signum, handler", [(signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, raise_interrupt)],
                         ids=["SIGINT", "SIGTERM"])
def test_deferred_interrupts_deliver_the_signal_when_the_block_ends(signum, handler):
    previous = signal.signal(signum, handler)
    try:
        after = []
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                signal.raise_signal(signum)  # to this thread: its handler has run when this returns
                after.append("the block went on")
        assert after == ["the block went on"] and signal.getsignal(signum) is handler
        with deferred_interrupts():  # nothing came: nothing raised
            pass
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)


_RECORD_WITH_CTRL_C = """
import signal, sys
from dvc.stage import Stage
from pipeline.lib.dvcrepo import Pipeline

real_dump = Stage.dump

def interrupted_dump(self, *args, **kwargs):
    signal.raise_signal(signal.SIGINT)  # Ctrl-C lands while dvc.lock is being written
    return real_dump(self, *args, **kwargs)

Stage.dump = interrupted_dump
signal.signal(signal.SIGINT, signal.default_int_handler)  # as pipeline.launch sets it
pipe = Pipeline(sys.argv[1], ["make"])
try:
    pipe.record("make")
except KeyboardInterrupt:
    print("interrupted after the record")
finally:
    pipe.close()
"""


def test_a_ctrl_c_while_a_stage_is_recorded_leaves_dvc_files_whole(tmp_path):
    """Ctrl-C in the middle of recording a stage (DVC writes .dvc/tmp/rwlock and dvc.lock in place)
    stops launch after the record, not half-way: both files stay readable. In a fresh interpreter, as
    launch runs: in the test worker's own process, a full run's earlier tests could leave its signal
    state otherwise (two full runs here: DID NOT RAISE; alone it passed)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo hi > out.txt\n    outs:\n      - out.txt\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    (root / "out.txt").write_text("hi\n")  # what the engine's job wrote
    proc = subprocess.run([sys.executable, "-c", _RECORD_WITH_CTRL_C, str(root)], cwd=root, env=project_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == ["interrupted after the record"], proc.stdout + proc.stderr
    assert "make" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    rwlock = root / ".dvc/tmp/rwlock"
    assert not rwlock.exists() or json.loads(rwlock.read_text()) is not None
    assert stale(root) == {}


def test_a_failing_stage_run_here_stops_what_needs_it(project: Path):
    with edited_params(project, lambda p: p["train"].update(lr=-1.0)):  # the check stage refuses it
        proc = launch(project, "--engine", "local", "train", timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["failed"] == [{"stage": "check", "status": 255, "log": "runs/launch/check.log"}] and s["launched"] == [], s
    assert {"prepare", "train@code"} <= set(s["not_reached"]) and s["final_dvc_repro"] is None
    assert "train.lr" in (project / "runs/launch/check.log").read_text()
    assert "| " in proc.stderr and "train.lr" in proc.stderr.split("check failed", 1)[1], proc.stderr[-3000:]  # shown, not only logged


def test_error_lines_are_the_errors_of_a_log(tmp_path):
    from pipeline.launch import error_lines

    log = tmp_path / "job.log"
    log.write_text("INFO x: started\n  not an error\n2026-12-08 ERROR __main__: params.yaml: invalid parameters\n"
                   "  train.lr: must be > 0\n\nERROR: failed to reproduce 'check'\nINFO done\n")
    assert error_lines(log) == ("\n  | 2026-12-08 ERROR __main__: params.yaml: invalid parameters\n  |   train.lr: must be > 0"
                                "\n  | ERROR: failed to reproduce 'check'")
    assert error_lines(tmp_path / "absent.log") == ""
    crash = tmp_path / "crash.log"  # a stage that died of an exception: its last line, then DVC's
    crash.write_text("12:00:00 INFO x: started\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n"
                     "    f()\nRuntimeError: CUDA out of memory\nERROR: failed to reproduce 'train@code'\n")
    assert error_lines(crash) == "\n  | RuntimeError: CUDA out of memory\n  | ERROR: failed to reproduce 'train@code'"
    many = tmp_path / "many.log"  # more keys than lines shown: the line naming the file stays
    many.write_text("x" * 300_000 + "\n12:00:01 ERROR __main__: params.yaml: invalid parameters\n"
                    + "".join(f"  k{i}: bad\n" for i in range(20)) + "12:00:02 INFO an ERROR word in a message\n")
    shown = error_lines(many, most=5).splitlines()
    assert shown[1:] == ["  | 12:00:01 ERROR __main__: params.yaml: invalid parameters"] + [f"  |   k{i}: bad" for i in range(4)]


# ---------------------------------------------------------------- bad input: a clear error, nothing launched


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--engine", "slurm"], "invalid choice: 'slurm'"),
    (["--jobs", "0"], "--jobs: 0: must be at least 1"),
    (["--engine", "ray", "--address", f"127.0.0.1:{_closed_port()}"], "the Ray cluster does not answer"),
    (["--engine", "submitit", "--cluster", "local", "--gpus-per-job", "1"], "--gpus-per-job 1: submitit's local executor has 0 CUDA device(s)"),
    (["--jobs", "3"], "oversubscribe"),
    (["--address", "127.0.0.1:6379"], "--address is a Ray cluster's"),
    (["no_such_stage"], "stage 'no_such_stage'"),
    (["--engine", "submitit", "--partition", "gpu"], "no Slurm here (no srun on PATH)"),
], ids=["engine", "jobs0", "ray-address", "submitit-gpu", "oversubscribe", "address-local", "stage", "submitit-no-slurm"])
def test_bad_input_is_a_clear_error_and_launches_nothing(project: Path, args, message):
    if "ray" in args:
        pytest.importorskip("ray")
    if "submitit" in args:
        pytest.importorskip("submitit")
    if args == ["--jobs", "3"] and usable_cpus() >= 3:
        pytest.skip("this machine has 3 cores or more")
    if "--gpus-per-job" in args and engines.local_gpus():
        pytest.skip("this machine has a GPU")
    if "--partition" in args and shutil.which("srun"):
        pytest.skip("this machine has Slurm")
    proc = launch(project, *args, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not (project / "runs").exists() and not (project / "data").exists() and not (project / "dvc.lock").exists()


def test_threads_share_and_params_threads(project: Path, tiny_params):
    from pipeline.launch import parser
    from pipeline.lib.resources import resources

    args = parser().parse_args(["--jobs", "2"])
    assert resources(args, 0, "cpu").threads == max(1, usable_cpus() // 2)  # threads: 0 -> each job's share
    assert resources(args, 1, "cpu").share is False                                  # threads: 1 -> every job's 1
    with pytest.raises(StageError, match="drop --threads 2"):
        resources(parser().parse_args(["--jobs", "1", "--threads", "2"]), 1, "cpu")
    with pytest.raises(StageError, match="set device: cuda"):
        resources(parser().parse_args(["--engine", "ray", "--address", "h:1", "--gpus-per-job", "1"]), 0, "cuda:1")
    assert resources(parser().parse_args(["--engine", "ray", "--address", "h:1"]), 0, "cuda").gpus == 1  # a GPU per job on a cluster


def test_exit_stage_ends_with_the_code_after_every_atexit_handler_and_frozen_objects():
    """What a stage's process does last: ``atexit`` handlers (logging, temporary folders) still run,
    the exit status is the stage's, and the objects are frozen so that teardown skips their traversal."""
    code = ("import atexit, gc, tempfile, pathlib\n"
            "from pipeline.lib.runtime import exit_stage\n"
            "d = tempfile.TemporaryDirectory()\n"
            "pathlib.Path(d.name, 'f').write_text('x')\n"
            "atexit.register(lambda: print('atexit ran, frozen', gc.get_freeze_count() > 0, flush=True))\n"
            "print(d.name, flush=True)\n"
            "exit_stage(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    folder, last = proc.stdout.splitlines()
    assert last == "atexit ran, frozen True" and not Path(folder).exists(), proc.stdout


def test_resolved_threads_takes_the_launchers_share_only_for_threads_0(monkeypatch):
    monkeypatch.setenv("SHARDMIX_THREADS", "3")
    assert resolved_threads(0) == 3 and resolved_threads(2) == 2
    monkeypatch.setenv("SHARDMIX_THREADS", "zero")
    with pytest.raises(StageError, match="SHARDMIX_THREADS='zero'"):
        resolved_threads(0)
    monkeypatch.delenv("SHARDMIX_THREADS")
    assert resolved_threads(0) == usable_cpus()


def test_a_missing_engine_names_its_extra(monkeypatch):
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name in ("ray", "submitit") else real(name, *a))
    with pytest.raises(StageError, match=r"pip install -e '\.\[ray\]'"):
        engines.need("ray")
    with pytest.raises(StageError, match=r"pip install -e '\.\[slurm\]'"):
        engines.need("submitit")


# ---------------------------------------------------------------- one job's process


def test_run_job_returns_the_status_and_writes_the_log(tmp_path):
    job = engines.Job("x@y", "echo out; echo err >&2; exit 3", str(tmp_path), str(tmp_path / "logs/x@y.log"), env={"V": "7"})
    assert engines.run_job(job) == 3
    assert (tmp_path / "logs/x@y.log").read_text().splitlines() == ["# x@y: echo out; echo err >&2; exit 3", "out", "err"]
    assert engines.run_job(engines.Job("e", "test \"$V\" = 7", str(tmp_path), str(tmp_path / "e.log"), env={"V": "7"})) == 0


def test_local_engine_runs_jobs_and_cancel_stops_them(tmp_path):
    eng = engines.LocalEngine()
    eng.submit(engines.Job("quick", "true", str(tmp_path), str(tmp_path / "q.log")))
    eng.submit(engines.Job("slow", f"trap 'echo term > {tmp_path}/t; exit 143' TERM; touch {tmp_path}/ready; sleep 60 & wait",
                           str(tmp_path), str(tmp_path / "s.log")))
    deadline = time.monotonic() + 30
    ended = []
    while not ended and time.monotonic() < deadline:
        ended = eng.poll()
        time.sleep(0.05)
    assert [(j.name, status) for j, status, _ in ended] == [("quick", 0)] and eng.running() == ["slow"]
    while not (tmp_path / "ready").exists():  # the trap is set (a fixed wait raced a loaded machine)
        assert time.monotonic() < deadline, "the slow job did not start"
        time.sleep(0.02)
    eng.cancel()
    assert [(j.name, status) for j, status, _ in eng.poll()] == [("slow", 143)] and eng.running() == []
    assert (tmp_path / "t").read_text() == "term\n"  # SIGTERM first: the job could clean up


def _live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("via", ["local", "run_job"])
def test_a_job_whose_shell_is_killed_leaves_nothing_running(via, tmp_path, monkeypatch):
    """dash (Debian's /bin/sh) forks a stage's command instead of exec'ing it: killing the shell alone
    must not leave the stage running on to write its output after the launch reported it failed."""
    monkeypatch.setenv("SHELL", "/bin/sh")
    job = engines.Job("orphan", f"sleep 60 & echo $! > {tmp_path}/child; wait", str(tmp_path), str(tmp_path / "o.log"))
    if via == "local":
        eng = engines.LocalEngine()
        eng.submit(job)
        shell = eng._procs["orphan"][1].pid
    else:
        import threading

        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(engines.run_job(job)))
        worker.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "child").exists() or not (tmp_path / "child").read_text().strip():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    child = int((tmp_path / "child").read_text())
    assert _live(child)
    if via == "local":
        os.kill(shell, signal.SIGKILL)
        ended = []
        while not ended and time.monotonic() < deadline:
            ended = eng.poll()
            time.sleep(0.05)
        assert [(j.name, status) for j, status, _ in ended] == [("orphan", -signal.SIGKILL)]
    else:
        os.kill(os.getpgid(child), signal.SIGKILL)  # the shell: it leads the job's process group
        worker.join(timeout=30)
        assert result == [-signal.SIGKILL]
    assert not _live(child)  # SIGTERMed with the job's process group once the shell had ended


def test_child_processes_find_this_interpreters_tools_first(monkeypatch):
    """The PATH launch and the tests give jobs: this interpreter's folder (its dvc, ninja) ahead of the rest."""
    here = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    assert interpreter_first_path().split(os.pathsep) == [here, "/usr/bin", "/bin"]
    monkeypatch.delenv("PATH")
    assert interpreter_first_path() == here


def test_a_ctrl_c_while_a_job_starts_is_delivered_once_the_engine_knows_the_job(tmp_path):
    """Ctrl-C after the job's shell is forked but before the engine records it: held until submit
    returns, so the job is known, and cancelled; without the hold it would be raised in between and
    the job would run on with nobody to stop it (seen: test_ctrl_c_cancels_... found nothing cancelled)."""
    from pipeline.launch import submit

    class Racy(engines.LocalEngine):
        def submit(self, job):
            proc = engines.start(job)
            os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C lands here
            self._procs[job.name] = (job, proc, [])

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        eng = Racy()
        with pytest.raises(KeyboardInterrupt):
            submit(eng, engines.Job("slow", "sleep 60", str(tmp_path), str(tmp_path / "s.log")))
        assert eng.running() == ["slow"]  # the interrupt came after the engine kept the job
        eng.cancel()
        assert [j.name for j, _, _ in eng.poll()] == ["slow"] and eng.running() == []
    finally:
        signal.signal(signal.SIGINT, previous)
