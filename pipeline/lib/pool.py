"""ShardPool: K shard checkpoints opened lazily as memory-mapped safetensors, validated up front.

Each checkpoint is a :class:`~pipeline.lib.checkpoint.Checkpoint` (a Hugging Face model folder).
Opening a pool reads only the JSON headers of the weight files. Before any tensor is read, the pool
checks that

- every weight file exists and is as long as its header says (else: truncated),
- each shard's ``config.json`` describes the same architecture as the seed's,
- every shard holds exactly the seed's tensors with the same shapes and dtypes;

and a failure is a :class:`~pipeline.lib.runtime.StageError` that names the tensor (or config key),
the two files involved and the fix.

Tensors are then read zero-copy: :meth:`ShardPool.views` returns ``torch.frombuffer`` views over
each weight file's mapping at the offsets of the header, without reading whole models
(``safetensors.safe_open(...).get_tensor`` copies each tensor into fresh memory instead; see
``python -m pipeline.bench proxy``). Pages that were read stay in the OS page cache but count in
this process's resident memory until :meth:`ShardPool.release` drops them (``madvise``), which
keeps the peak at one model plus the chunk being merged, whatever K is. Dropped pages are faulted
in again by the next pass, which halves the speed a merge reads them at
(``python -m pipeline.bench merge``: ``mmap_gbps`` against ``mmap_kept_gbps``).

Where the shards fit in memory, :meth:`ShardPool.hold` keeps them there: on the CPU
(:meth:`ShardPool.keep_mapped`) every mapped page stays mapped for the pool's life (no copy: the
pages are the page cache's, file-backed and clean, so the kernel can still reclaim them; they count
in RSS as file pages), and a merge reads them at the kernel's speed; on a GPU
(:meth:`ShardPool.load_to`) every shard's tensors are copied into device memory once, and views are
then those device tensors.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.lib.checkpoint import CONFIG, WEIGHTS, Checkpoint, TensorInfo, itemsize, tensor_view
from pipeline.lib.runtime import StageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FAULT_AROUND = 64 << 10  # Linux maps up to this much around a faulting page of a file mapping
# config.json keys that say how a folder was saved or used, not what the network computes.
CONFIG_IGNORED = frozenset({"transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype",
                            "use_cache", "architectures", "quantization_config", "_commit_hash", "output_attentions",
                            "output_hidden_states", "return_dict", "pad_token_id", "bos_token_id", "eos_token_id",
                            "generation_config", "transformers.js_config"})


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
        self.kept = False  # keep_mapped(): pages once read stay mapped, release is a no-op

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
                t = tensor_view(ck, info)
                self._resident[k, name] = t.to(device, copy=True)  # a copy on the CPU too: the mapping is closed below
            ck.close()  # the copies hold the data now; a later view of the file maps it again

    def keep_mapped(self) -> None:
        """Keep every page of the weight files mapped once read, for the rest of the pool's life: later
        passes read them at the kernel's speed instead of faulting them in again, and :meth:`release`
        does nothing. Costs no copy: the pages are the page cache's (clean, file-backed, reclaimable by
        the kernel under memory pressure), but resident memory grows to the K files' bytes as they are
        read. For shards that fit in memory (:meth:`hold`)."""
        self.kept = True

    def fits(self, device: torch.device | str, also: int = 0) -> bool:
        """Whether the K checkpoints (plus ``also`` bytes) fit in ``device``'s free memory: on a GPU
        with :data:`~pipeline.lib.device.HEADROOM` of its memory to spare, on the CPU within
        :data:`~pipeline.lib.device.MEMORY_SHARE` of what is free
        (:func:`~pipeline.lib.device.host_free_bytes`)."""
        import torch

        from pipeline.lib.device import HEADROOM, MEMORY_SHARE, host_free_bytes

        device = torch.device(device)
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            return self.nbytes + also <= free - HEADROOM * total
        return self.nbytes + also <= MEMORY_SHARE * host_free_bytes()

    def hold(self, device: torch.device | str, also: int = 0) -> bool:
        """Keep the K checkpoints where merges onto ``device`` read them fastest, if they fit there beside
        ``also`` bytes (:meth:`fits`): on a GPU copied into its memory once (:meth:`load_to`), on the CPU
        their mapped pages kept (:meth:`keep_mapped`: no copy). Returns whether it did; if not, every
        merge reads the mapped files chunk by chunk and drops their pages behind it."""
        import torch

        device = torch.device(device)
        if not self.fits(device, also):
            log.info("the %d checkpoints (%.2f GB) do not fit in the free memory of %s beside %.2f GB: every merge reads "
                     "them from their files", len(self), self.nbytes / 1e9, device, also / 1e9)
            return False
        if device.type == "cpu":
            self.keep_mapped()
            log.info("the %d checkpoints (%.2f GB) stay mapped in memory once read", len(self), self.nbytes / 1e9)
        else:
            self.load_to(device)
            log.info("the %d checkpoints (%.2f GB) are resident on %s", len(self), self.nbytes / 1e9, device)
        return True

    def reads_whole(self, device: torch.device | str) -> bool:
        """Whether a merge into tensors on ``device`` may read each shard tensor whole, in one kernel
        call: the shards are copies on that device (:meth:`load_to`) or, on the CPU, pages kept mapped
        (:meth:`keep_mapped`). Otherwise a merge goes chunk by chunk, dropping or copying each chunk's
        pages."""
        import torch

        device = torch.device(device)
        if self._resident:
            here = torch.device(self.device)
            return here.type == device.type and (device.index is None or here.index == device.index)
        return self.kept and device.type == "cpu"

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
        return tensor_view(self.checkpoints[k], self.checkpoints[k].tensors[name])

    def views(self, name: str, ks: list[int] | None = None) -> list[torch.Tensor]:
        """Tensor ``name`` of shards ``ks`` (default: all K), as zero-copy views."""
        return [self.view(k, name) for k in (range(len(self.checkpoints)) if ks is None else ks)]

    def seed_view(self, name: str) -> torch.Tensor:
        """The seed's tensor ``name`` (zero-copy); needs a pool opened with ``seed``."""
        if self.seed is None:
            raise ValueError("this pool was opened without a seed model")
        return tensor_view(self.seed, self.seed.tensors[name])

    def release(self, name: str, ks: list[int] | None = None, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of elements ``[start, stop)`` of tensor ``name`` (shards ``ks``) from this
        process's resident memory. Views stay valid: a later read faults the pages back in from the
        page cache. ``ks=[-1]`` means the seed. Nothing to do for a pool that :meth:`keep_mapped`."""
        if self.kept:
            return
        for k in range(len(self.checkpoints)) if ks is None else ks:
            if (k, name) in self._resident:
                continue
            ck = self.seed if k == -1 else self.checkpoints[k]
            info = ck.tensors[name]
            item = itemsize(info.dtype)
            lo = info.start + start * item
            hi = info.end if stop is None else min(info.end, info.start + stop * item)
            _drop(ck.map(info.file), lo, hi)

    def release_all(self) -> None:
        """Drop every mapped page of every open weight file from this process's resident memory (not
        for a pool that :meth:`keep_mapped`)."""
        if self.kept:
            return
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
