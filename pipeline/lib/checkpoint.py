"""Checkpoint: one Hugging Face model folder's safetensors weights, headers read at once, data mapped on demand.

A checkpoint is a model folder: ``model.safetensors`` (or the shards listed in
``model.safetensors.index.json``) and ``config.json``. :func:`read_header` reads a weight file's
JSON header only (a few KB: every tensor's name, dtype, shape and byte range) and checks that the
file holds every byte it promises; :class:`Checkpoint` reads a folder's headers and config and maps
each weight file once (``mmap``, private, copy-on-write, so nothing can ever write to the file) on
first use; :func:`tensor_view` is a zero-copy ``torch.frombuffer`` view of one tensor over that
mapping. A failure is a :class:`~pipeline.lib.runtime.StageError` that names the file and the fix.
:class:`~pipeline.lib.pool.ShardPool` holds K of them for merging.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.lib.runtime import StageError

if TYPE_CHECKING:
    import torch

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header (100 MB)
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: ``file`` bytes ``[start, end)`` hold ``shape`` elements of ``dtype``."""

    name: str
    dtype: str  # safetensors code: F32, BF16, ...
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offsets in ``file``
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: Path, fix: str) -> dict[str, TensorInfo]:
    """Parse one safetensors file's header; check the file holds every byte the header promises.

    Raises StageError naming ``path`` and ``fix`` when the file is missing, not safetensors, or
    truncated. Reads only the first 8 + header-length bytes.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise StageError(f"{path}: truncated ({size} bytes, not even a safetensors header); {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise StageError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size}); {fix}")
            raw = f.read(n)
    except FileNotFoundError:
        raise StageError(f"{path}: not found; {fix}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: the safetensors header is not valid JSON ({e}); {fix}") from None
    if not isinstance(header, dict):
        raise StageError(f"{path}: the safetensors header is not a JSON object; {fix}")
    base, out = 8 + n, {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(x) for x in e["data_offsets"])
            info = TensorInfo(name, str(e["dtype"]), tuple(int(s) for s in e["shape"]), path, base + lo, base + hi)
        except (KeyError, TypeError, ValueError):
            raise StageError(f"{path}: malformed header entry for tensor {name!r}; {fix}") from None
        if info.dtype not in DTYPE_NAMES:
            raise StageError(f"{path}: tensor {name} has dtype {info.dtype}, which shardmix cannot merge; {fix}")
        if info.end > size:
            raise StageError(f"{path}: truncated: tensor {name} needs bytes up to {info.end} but the file has {size}; {fix}")
        if hi - lo != info.numel * itemsize(info.dtype):
            raise StageError(f"{path}: tensor {name} spans {hi - lo} bytes, not {info.numel} x {info.dtype}; {fix}")
        out[name] = info
    return out


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors dtype code."""
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(code, 1)


class Checkpoint:
    """One model folder's weights and config, headers read at once, data mapped on demand."""

    def __init__(self, folder: str | Path, fix: str):
        self.folder, self.fix = Path(folder), fix
        if not self.folder.is_dir():
            raise StageError(f"{self.folder}: checkpoint folder not found; {fix}")
        index = self.folder / INDEX
        if (self.folder / WEIGHTS).exists() or not index.exists():
            files = [self.folder / WEIGHTS]
        else:
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise StageError(f"{index}: not a valid safetensors index ({e!r}); {fix}") from None
            files = [self.folder / f for f in sorted(set(weight_map.values()))]
        self.tensors: dict[str, TensorInfo] = {}
        for f in files:
            self.tensors.update(read_header(f, fix))
        self.config: dict | None = None
        cfg = self.folder / CONFIG
        if cfg.is_file():
            try:
                self.config = json.loads(cfg.read_text())
            except json.JSONDecodeError as e:
                raise StageError(f"{cfg}: not valid JSON ({e}); {fix}") from None
        self._maps: dict[Path, mmap.mmap] = {}

    def map(self, path: Path) -> mmap.mmap:
        """The private, copy-on-write mapping of one weight file (made on first use)."""
        m = self._maps.get(path)
        if m is None:
            with open(path, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[path] = m
        return m

    def close(self) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # a tensor view is still alive: the mapping goes with it
                pass
        self._maps.clear()


def tensor_view(ck: Checkpoint, info: TensorInfo) -> torch.Tensor:
    """Tensor ``info`` of ``ck`` as a zero-copy view over the file's mapping (a copy where the file
    stores it unaligned, which the safetensors library never does)."""
    import torch

    dtype = getattr(torch, DTYPE_NAMES[info.dtype])
    if info.numel == 0:
        return torch.empty(info.shape, dtype=dtype)
    m = ck.map(info.file)
    if info.start % itemsize(info.dtype):  # unaligned (not written by the safetensors library): copy
        return torch.frombuffer(bytearray(m[info.start:info.end]), dtype=dtype).view(info.shape)
    return torch.frombuffer(m, dtype=dtype, count=info.numel, offset=info.start).view(info.shape)
