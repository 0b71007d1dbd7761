"""ShardPool: K shard checkpoints opened lazily as memory-mapped safetensors, validated up front.

A checkpoint is a Hugging Face model folder: ``model.safetensors`` (or the shards listed in
``model.safetensors.index.json``) and ``config.json``. Opening a pool reads only the JSON headers
of the weight files (a few KB each): every tensor's name, dtype, shape and byte range. Before any
tensor is read, the pool checks that

- every weight file exists and is as long as its header says (else: truncated),
- each shard's ``config.json`` describes the same architecture as the seed's,
- every shard holds exactly the seed's tensors with the same shapes and dtypes;

and a failure is a :class:`~pipeline.lib.runtime.StageError` that names the tensor (or config key),
the two files involved and the fix.

Tensors are then read zero-copy: each weight file is mapped once (``mmap``, private,
copy-on-write, so nothing can ever write to the file) on first use, and :meth:`ShardPool.views`
returns ``torch.frombuffer`` views at the offsets of the header, without reading whole models
(``safetensors.safe_open(...).get_tensor`` copies each tensor into fresh memory instead; see
``python -m pipeline.bench proxy``). Pages that were read stay in the OS page cache but count in
this process's resident memory until :meth:`ShardPool.release` drops them (``madvise``), which
keeps the peak at one model plus the chunk being merged, whatever K is.

On a GPU with room for them, :meth:`ShardPool.load_to` copies every shard's tensors into device
memory once; views are then those device tensors, and a merge reads device memory, not the files.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.lib.runtime import StageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header (100 MB)
FAULT_AROUND = 64 << 10  # Linux maps up to this much around a faulting page of a file mapping
# config.json keys that say how a folder was saved or used, not what the network computes.
CONFIG_IGNORED = frozenset({"transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype",
                            "use_cache", "architectures", "quantization_config", "_commit_hash", "output_attentions",
                            "output_hidden_states", "return_dict", "pad_token_id", "bos_token_id", "eos_token_id",
                            "generation_config", "transformers.js_config"})
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
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
        if info.dtype not in _DTYPE_NAMES:
            raise StageError(f"{path}: tensor {name} has dtype {info.dtype}, which shardmix cannot merge; {fix}")
        if info.end > size:
            raise StageError(f"{path}: truncated: tensor {name} needs bytes up to {info.end} but the file has {size}; {fix}")
        if hi - lo != info.numel * _itemsize(info.dtype):
            raise StageError(f"{path}: tensor {name} spans {hi - lo} bytes, not {info.numel} x {info.dtype}; {fix}")
        out[name] = info
    return out


def _itemsize(code: str) -> int:
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


class ShardPool:
    """K shard checkpoints (plus, optionally, the seed they must match), validated, mapped lazily.

    Args:
        shards: shard name -> model folder, in the order that defines index k of the weight vectors.
        seed: the seed model folder every shard must match (names, shapes, dtypes, config); when
            None the first shard is the reference.
        fix: what the user should do when a shard checkpoint is bad; ``{shard}`` is replaced by
            the shard's name.

    Raises StageError (naming the file, the tensor or key, and the fix) on any mismatch.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, shards: dict[str, str | Path], seed: str | Path | None = None,
                 fix: str = "rerun the stage that makes it (dvc repro train@{shard})"):
        if not shards:
            raise StageError("no shard checkpoints given: a pool needs at least one shard model")
        self.names = list(shards)
        self.seed = Checkpoint(seed, "rerun the stage that makes it (dvc repro base)") if seed is not None else None
        self.checkpoints = [Checkpoint(path, fix.format(shard=name)) for name, path in shards.items()]
        self._validate()
        self._resident: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def reference(self) -> Checkpoint:
        return self.seed if self.seed is not None else self.checkpoints[0]

    def _validate(self) -> None:
        ref = self.reference
        ref_w = ref.folder / WEIGHTS
        for ck in self.checkpoints:
            if ck is ref:
                continue
            _compare_configs(ref, ck)
            for name, info in ref.tensors.items():
                mine = ck.tensors.get(name)
                if mine is None:
                    raise StageError(f"{ck.folder / WEIGHTS}: tensor {name} is missing (it is in {ref_w}); "
                                     f"the checkpoint is incomplete or of another model; {ck.fix}")
                if mine.shape == info.shape and mine.dtype != info.dtype:
                    raise StageError(f"tensor {name}: stored as {mine.dtype} in {mine.file} but as {info.dtype} in {info.file}: "
                                     f"the checkpoints were saved in different precisions (the shapes match); save every "
                                     f"shard in the seed's precision ({info.dtype}), e.g. model.float().save_pretrained(...); {ck.fix}")
                if mine.shape != info.shape:
                    raise StageError(f"tensor {name}: {list(mine.shape)} {mine.dtype} in {mine.file} but {list(info.shape)} "
                                     f"{info.dtype} in {info.file}; the shard was not trained from this seed model; {ck.fix}")
            extra = sorted(set(ck.tensors) - set(ref.tensors))
            if extra:
                raise StageError(f"{ck.folder / WEIGHTS}: tensor {extra[0]} is not in {ref_w} ({len(extra)} such); "
                                 f"the shard is of another architecture; {ck.fix}")

    @property
    def tensor_names(self) -> list[str]:
        """Tensor names of the checkpoints (the seed's order)."""
        return list(self.reference.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.reference.tensors

    def info(self, name: str, k: int | None = None) -> TensorInfo:
        """Location of tensor ``name`` in shard ``k`` (None: in the reference checkpoint)."""
        ck = self.reference if k is None else self.checkpoints[k]
        return ck.tensors[name]

    @property
    def nbytes(self) -> int:
        """Bytes of the K shards' tensors (what :meth:`load_to` puts on a device)."""
        return sum(info.end - info.start for ck in self.checkpoints for info in ck.tensors.values())

    def load_to(self, device: torch.device | str) -> None:
        """Copy every shard tensor to ``device`` once; views are then those copies (never write to them)."""
        for k, ck in enumerate(self.checkpoints):
            for name, info in ck.tensors.items():
                t = _view(ck, info)
                self._resident[k, name] = t.to(device, copy=True)  # a copy on the CPU too: the mapping is closed below
            ck.close()  # the copies hold the data now; a later view of the file maps it again

    @property
    def device(self) -> str:
        """Where views live: ``cpu`` (the memory-mapped files) or the device of :meth:`load_to`."""
        return str(next(iter(self._resident.values())).device) if self._resident else "cpu"

    def view(self, k: int, name: str) -> torch.Tensor:
        """Shard ``k``'s tensor ``name``: a zero-copy tensor over the file's mapping, or its copy on the
        device of :meth:`load_to` (never write to it)."""
        resident = self._resident.get((k, name))
        if resident is not None:
            return resident
        return _view(self.checkpoints[k], self.checkpoints[k].tensors[name])

    def views(self, name: str, ks: list[int] | None = None) -> list[torch.Tensor]:
        """Tensor ``name`` of shards ``ks`` (default: all K), as zero-copy views."""
        return [self.view(k, name) for k in (range(len(self.checkpoints)) if ks is None else ks)]

    def seed_view(self, name: str) -> torch.Tensor:
        """The seed's tensor ``name`` (zero-copy); needs a pool opened with ``seed``."""
        if self.seed is None:
            raise ValueError("this pool was opened without a seed model")
        return _view(self.seed, self.seed.tensors[name])

    def release(self, name: str, ks: list[int] | None = None, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of elements ``[start, stop)`` of tensor ``name`` (shards ``ks``) from this
        process's resident memory. Views stay valid: a later read faults the pages back in from the
        page cache. ``ks=[-1]`` means the seed."""
        for k in range(len(self.checkpoints)) if ks is None else ks:
            if (k, name) in self._resident:
                continue
            ck = self.seed if k == -1 else self.checkpoints[k]
            info = ck.tensors[name]
            item = _itemsize(info.dtype)
            lo = info.start + start * item
            hi = info.end if stop is None else min(info.end, info.start + stop * item)
            _drop(ck.map(info.file), lo, hi)

    def release_all(self) -> None:
        """Drop every mapped page of every open weight file from this process's resident memory."""
        for ck in [*self.checkpoints, *([self.seed] if self.seed else [])]:
            for m in ck._maps.values():
                _drop(m, 0, len(m))

    def close(self) -> None:
        self._resident.clear()
        for ck in [*self.checkpoints, *([self.seed] if self.seed else [])]:
            ck.close()

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.checkpoints)


def _view(ck: Checkpoint, info: TensorInfo) -> torch.Tensor:
    import torch

    dtype = getattr(torch, _DTYPE_NAMES[info.dtype])
    if info.numel == 0:
        return torch.empty(info.shape, dtype=dtype)
    m = ck.map(info.file)
    if info.start % _itemsize(info.dtype):  # unaligned (not written by the safetensors library): copy
        return torch.frombuffer(bytearray(m[info.start:info.end]), dtype=dtype).view(info.shape)
    return torch.frombuffer(m, dtype=dtype, count=info.numel, offset=info.start).view(info.shape)


def _drop(m: mmap.mmap, lo: int, hi: int) -> None:
    """madvise(DONTNEED) on the pages that hold bytes [lo, hi) of a private, never-written mapping,
    widened by the kernel's fault-around window (a read fault also maps up to 64 KiB of neighbours).

    Pages shared with a neighbouring tensor are dropped too: harmless, they fault back in on use.
    """
    page = mmap.PAGESIZE
    a = max(0, lo - FAULT_AROUND) // page * page
    b = min(-(-(hi + FAULT_AROUND) // page) * page, len(m))
    if b > a:
        m.madvise(mmap.MADV_DONTNEED, a, b - a)


def _compare_configs(ref: Checkpoint, ck: Checkpoint) -> None:
    if ref.config is None or ck.config is None:
        return
    diffs = [f"{key} {ck.config.get(key)!r} vs {ref.config.get(key)!r}"
             for key in sorted(set(ref.config) | set(ck.config))
             if key not in CONFIG_IGNORED and ref.config.get(key) != ck.config.get(key)]
    if diffs:
        raise StageError(f"{ck.folder / CONFIG} describes a different architecture than {ref.folder / CONFIG}: "
                         f"{'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}; "
                         f"the shard was not trained from this seed model; {ck.fix}")
