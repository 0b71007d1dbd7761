"""Which params a stage reads: a recording view of the validated params, for the test that checks
dvc.yaml's ``params:`` of every stage against what the stage really reads.

With ``SHARDMIX_TRACE_PARAMS=FILE`` in the environment, :func:`pipeline.lib.runtime.run_stage` hands
the stage ``traced(cfg)`` instead of ``cfg`` and, when the stage ends, appends one JSON line to FILE:
the stage's ``sys.argv`` and the dotted params keys it read (``train.lr``, ``shards.code``; a whole
section when it was read as a whole: iterated, dumped, copied). Without the variable nothing
changes. Membership tests (``name in cfg.shards``) read nothing: a stage that goes on to use the
entry reads it then.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from typing import Any

from pydantic import BaseModel

ENV = "SHARDMIX_TRACE_PARAMS"


class _Reads:
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def add(self, key: str) -> None:
        self.keys.add(key or "(all)")


def _wrap(value: Any, key: str, reads: _Reads) -> Any:
    if isinstance(value, BaseModel):
        return _Section(value, key, reads)
    if isinstance(value, dict):
        return _Mapping(value, key, reads)
    reads.add(key)
    return value


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


class _Section:
    """A params section: fields read one by one; its methods run with this view as ``self``."""

    def __init__(self, model: BaseModel, key: str, reads: _Reads):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str) -> Any:
        model, key, reads = self._model, self._key, self._reads
        if name in type(model).model_fields:
            return _wrap(getattr(model, name), _join(key, name), reads)
        own = getattr(type(model), name, None)
        if callable(own) and not hasattr(BaseModel, name):  # the schema's own helpers: they read through us
            return own.__get__(self)
        reads.add(key)  # model_dump, model_copy, ...: the whole section
        return getattr(model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("params are read-only")


class _Mapping:
    """A mapping section (``shards``, ``validation.mixtures``): entries read one by one."""

    def __init__(self, data: dict, key: str, reads: _Reads):
        self._data, self._key, self._reads = data, key, reads

    def __getitem__(self, name: str) -> Any:
        return _wrap(self._data[name], _join(self._key, name), self._reads)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._data else default

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def _all(self) -> dict:
        self._reads.add(self._key)
        return self._data

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def keys(self):
        return self._all().keys()

    def values(self):
        return self._all().values()

    def items(self):
        return self._all().items()


def traced(cfg: BaseModel) -> Any:
    """``cfg`` as a recording view when ``SHARDMIX_TRACE_PARAMS`` is set (else ``cfg`` itself)."""
    path = os.environ.get(ENV)
    if not path:
        return cfg
    reads = _Reads()

    def flush() -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"argv": sys.argv, "reads": sorted(reads.keys)}) + "\n")

    atexit.register(flush)
    return _Section(cfg, "", reads)
