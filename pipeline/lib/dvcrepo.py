"""The pipeline as DVC sees it, for ``pipeline.launch``: its stages in order, which are stale, and
recording a stage that ran elsewhere exactly as ``dvc repro`` would have.

Everything goes through DVC's Python API on one open repository. Its stage index is built once:
DVC's ``@locked`` repository methods (``repo.status``, ``repo.commit``) rebuild it after every call
(about 2 s here, per call), so :class:`Pipeline` calls the stage-level methods those are made of,
under the repository lock, as they do:

- stale: ``Stage.changed()`` (what ``dvc status`` reports: a dependency, a param, an output or
  the command differs from ``dvc.lock``);
- before a run: ``Stage.remove_outs()``, then DVC's run-cache (``dvc repro`` restores a stage whose
  dependencies and params it has seen before instead of running it);
- after a run: ``Stage.save()`` (hashes, and the run-cache entry), ``Stage.commit()`` (outputs into
  the cache) and the ``dvc.lock`` entry: what ``dvc commit --force <stage>`` does.

Each of these holds Ctrl-C and SIGTERM until it is done (:func:`pipeline.lib.runtime.deferred_interrupts`):
DVC writes its lock files and ``dvc.lock`` in place, and an interrupt in the middle left a
truncated ``.dvc/tmp/rwlock`` that every later ``dvc`` command refused.

Nothing here runs a stage's command: ``pipeline.launch`` hands those to an engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.lib.runtime import StageError, deferred_interrupts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageInfo:
    """One stage (a ``foreach`` item is a stage of its own: ``train@code``)."""

    name: str              # DVC's address of it: ``train@code``, ``proxy``
    cmd: str
    wdir: Path
    upstream: frozenset[str]  # the stages it reads outputs of, among those collected
    item: bool             # a ``foreach`` item: independent of its siblings


class Pipeline:
    """The stages ``dvc repro TARGETS`` would consider (every stage when no target is given), upstream first."""

    def __init__(self, root: Path, targets: Sequence[str] = ()):
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            self.repo = Repo(str(root))
        except DvcException as e:
            raise StageError(f"{root}: not a DVC project ({e}); run it in the repository (`dvc init` makes one)") from None
        index = self.repo.index
        if targets:
            collected = {}
            for t in targets:
                try:
                    found = self.repo.stage.collect(t, with_deps=True)
                except DvcException as e:
                    names = sorted({s.addressing.split("@")[0] for s in index.stages})
                    raise StageError(f"stage {t!r}: {e}; dvc.yaml's stages are {', '.join(names)}") from None
                collected.update({s.addressing: s for s in found})
        else:
            collected = {s.addressing: s for s in index.stages}
        self._stages = {a: s for a, s in collected.items() if getattr(s, "cmd", None) and not s.frozen}
        graph = index.graph
        self.info: dict[str, StageInfo] = {}
        for name, s in self._stages.items():
            ups = frozenset(u.addressing for u in graph.successors(s) if u.addressing in self._stages)
            cmd = s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd)
            self.info[name] = StageInfo(name, cmd, Path(s.wdir), ups, "@" in name)
        self.order = _upstream_first(self.info)

    def stale(self, name: str) -> bool:
        """Whether ``dvc status`` would list this stage as changed now."""
        with deferred_interrupts(), self.repo.lock:
            return bool(self._stages[name].changed())

    def prepare(self, name: str) -> bool:
        """Remove the stage's outputs as ``dvc repro`` does before running it, and restore them from the
        run-cache where DVC has one for these dependencies and params; True when restored (recorded:
        nothing to run)."""
        from dvc.stage.cache import RunCacheNotFoundError

        stage = self._stages[name]
        self.clear(name)
        with deferred_interrupts(), self.repo.lock:
            try:
                self.repo.stage_cache.restore(stage)
            except RunCacheNotFoundError:
                return False
        log.info("%s: restored from DVC's run-cache", name)
        self.record(name)
        return True

    def clear(self, name: str) -> None:
        """Remove the stage's outputs from the workspace, as ``dvc repro`` does before running it (an
        output linked to the cache is unlinked, never written through)."""
        with deferred_interrupts(), self.repo.lock:
            self._stages[name].remove_outs(ignore_remove=False, force=False)

    def record(self, name: str) -> None:
        """Record a stage whose command finished: hashes, cache, run-cache and ``dvc.lock``, as ``dvc commit --force`` does."""
        stage = self._stages[name]
        with deferred_interrupts(), self.repo.lock:
            stage.save()
            stage.commit()
            stage.dump(update_pipeline=False)

    def close(self) -> None:
        self.repo.close()


def _upstream_first(info: dict[str, StageInfo]) -> list[str]:
    """A topological order of the stages (upstream before downstream), otherwise in DVC's order."""
    order, placed = [], set()
    pending = list(info)
    while pending:
        ready = [n for n in pending if info[n].upstream <= placed]
        if not ready:  # DVC refuses cyclic pipelines before this point
            raise StageError(f"dvc.yaml: the stages {', '.join(pending)} depend on each other in a cycle")
        order += ready
        placed.update(ready)
        pending = [n for n in pending if n not in placed]
    return order
