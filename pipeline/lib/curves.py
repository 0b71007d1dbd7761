"""Training curves: DVCLive where it is installed, else the same files written plainly.

:func:`curves` opens a logger with DVCLive's interface (``log_params``, ``log_metric``,
``next_step``, ``summary``). With DVCLive (every machine ``scripts/setup.sh`` made) it is DVCLive's
``Live``, created so that it never touches dvc.yaml or the experiments. A machine without DVC (a
GPU host or a cluster node that runs stage commands without DVC: ``scripts/run_stages.py``) gets
:class:`PlainCurves`, which writes the files DVCLive writes, in its layout: ``params.yaml``,
``metrics.json`` (the last value of each metric, ``step`` and the summary) and
``plots/metrics/<name>.tsv`` (``step`` and value per logged step).
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.lib.runtime import StageError

STEP_SIGNAL_FILE = "DVCLIVE_STEP_COMPLETED"  # DVCLive's step signal for DVC's VS Code extension, one per repository


class PlainCurves:
    """DVCLive's files without DVCLive; the files are written when the ``with`` block ends."""

    def __init__(self, folder: str | Path):
        self.folder, self.step = Path(folder), 0
        self.summary: dict[str, Any] = {}
        self._rows: dict[str, list[tuple[int, float]]] = {}
        self._params: dict[str, Any] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        self._params.update(params)

    def log_metric(self, name: str, value: float) -> None:
        self._rows.setdefault(name, []).append((self.step, value))

    def next_step(self) -> None:
        self.step += 1

    def __enter__(self) -> PlainCurves:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        plots = self.folder / "plots" / "metrics"
        plots.mkdir(parents=True, exist_ok=True)
        for name, rows in self._rows.items():
            (plots / f"{name}.tsv").write_text("step\t" + name + "\n" + "".join(f"{s}\t{v}\n" for s, v in rows))
        last = {name: rows[-1][1] for name, rows in self._rows.items()}
        steps = [rows[-1][0] for rows in self._rows.values()]
        metrics = {**last, **({"step": max(steps)} if steps else {}), **self.summary}
        (self.folder / "metrics.json").write_text(json.dumps(metrics, indent=4) + "\n")
        (self.folder / "params.yaml").write_text(yaml.safe_dump(self._params, sort_keys=False))


def check_git_has_commit() -> None:
    """DVCLive fails on a git repository without commits; say how to fix it before training."""
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if inside.returncode == 0 and subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode != 0:
        raise StageError("this git repository has no commit yet, and DVCLive needs one to log training curves: "
                         "commit once (git add -A && git commit -m init), then rerun")


def curves(folder: str | Path):
    """A curve logger writing into ``folder``: DVCLive's ``Live`` when installed, else :class:`PlainCurves`."""
    try:
        from dvclive import Live
    except ImportError:
        return PlainCurves(folder)
    check_git_has_commit()
    return _shared_repo_live(Live)(dir=str(folder), dvcyaml=None, save_dvc_exp=False, report=None)


@functools.cache
def _shared_repo_live(live_class):
    """DVCLive's ``Live``, safe for training jobs that run side by side in one repository.

    Each ``next_step`` writes ``.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED`` (a signal for DVC's VS Code
    extension), one file for the whole repository, and ``end`` removes it by checking that it exists and
    then removing it. Two jobs that end together (``pipeline.launch --jobs 2``) both see it and the second
    removal fails (FileNotFoundError) after its training is done. That file gone is exactly what the
    removal wanted, so this error, and only for that file, is not an error.
    """

    class SharedRepoLive(live_class):
        def end(self) -> None:
            try:
                super().end()  # removing the signal file is the last thing it does
            except FileNotFoundError as e:
                if Path(e.filename or "").name != STEP_SIGNAL_FILE:
                    raise

    return SharedRepoLive
