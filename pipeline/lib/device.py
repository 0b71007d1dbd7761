"""Where a stage's models run and in what precision: params ``device``, ``precision``, ``save_dtype`` made real.

:func:`placement` resolves the params on this machine (a :class:`~pipeline.lib.runtime.StageError`
naming the key and the fix when the machine lacks the device), sets torch's threads, and returns a
:class:`Placement`, which the training, scoring and merging libraries take:

- ``fp32`` (the default) runs every operation as before the setting existed: on the CPU the same
  operations in the same order, so outputs are bit-identical to a run without it.
- ``bf16-mixed`` runs the forward pass under ``torch.autocast(dtype=bfloat16)``: matrix products in
  bfloat16, weights, gradients and AdamW state in fp32 (no loss scaling is needed for bfloat16);
  on CUDA it also turns TF32 on for the fp32 matrix products that remain. Allowed on the CPU too
  (CPUs without native bfloat16 run it several times slower than fp32).
- ``bf16-train`` runs only the training steps so (:meth:`Placement.train_autocast`); scoring,
  merging, select's gradients and infer's moments stay fp32, where the effects they measure are
  small. On a CPU with native bfloat16 (AVX512-BF16) a training step runs 1.3-1.5x faster than fp32
  (``python -m pipeline.bench train``), and the model differs from the fp32 one by about 1/70 of
  what another data order makes (docs/results.md, "Time of a full run").
- ``save_dtype`` casts a model for saving only (:meth:`Placement.for_saving`): training never
  sees it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.lib.runtime import StageError, configure_threads

log = logging.getLogger(__name__)

FIX = "set device: cpu, or auto (the GPU where torch sees one, else the CPU)"
HEADROOM = 0.15  # share of a GPU's memory kept free for evaluation when shard checkpoints are put there
MEMORY_SHARE = 0.8  # share of the free memory that at_once: auto and resident shards may fill


@dataclass(frozen=True)
class Placement:
    """A resolved ``device``, the ``precision`` models run in, and the dtype checkpoints are saved in."""

    device: torch.device
    precision: str = "fp32"
    save_dtype: str = "float32"

    @property
    def mixed(self) -> bool:
        """Every forward pass in bf16 autocast (``bf16-mixed``)."""
        return self.precision == "bf16-mixed"

    @property
    def train_mixed(self) -> bool:
        """Training steps in bf16 autocast (``bf16-mixed`` or ``bf16-train``)."""
        return self.precision in ("bf16-mixed", "bf16-train")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes that score, merge or take gradients run in: bf16 autocast for
        ``bf16-mixed``, nothing otherwise."""
        return self._bf16() if self.mixed else contextlib.nullcontext()

    def train_autocast(self) -> contextlib.AbstractContextManager:
        """The context training steps run in: bf16 autocast for ``bf16-mixed`` and ``bf16-train``."""
        return self._bf16() if self.train_mixed else contextlib.nullcontext()

    def _bf16(self) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on this device (the tensor itself when it is there already)."""
        return t if t.device == self.device else t.to(self.device, non_blocking=True)

    def sync(self) -> None:
        """Wait for the device's queued work (GPU work is asynchronous; time it only after this)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def free_bytes(self) -> int:
        """Memory this process can still take where its models live: the GPU's free memory, or on
        the CPU ``MemAvailable`` capped by the cgroup's limit (a Slurm job, a container)."""
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0])
        return host_free_bytes()

    def for_saving(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` cast to ``save_dtype`` (in place; the model is not trained further after this)."""
        return model.to(getattr(torch, self.save_dtype))

    def facts(self) -> dict[str, str]:
        """Where and how a run computed, for its run record (always, the default too)."""
        out = {"device": str(self.device), "precision": self.precision}
        if self.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out

    def record(self, saved: bool = False) -> dict[str, str]:
        """What an output's provenance says of where and how it was computed (``saved``: a checkpoint,
        so also its dtype). Empty for the default, cpu and fp32 (and float32 weights): outputs of the
        default run stay byte for byte what they were before these settings existed."""
        out: dict[str, str] = {}
        if self.device.type != "cpu" or self.precision != "fp32":
            out |= self.facts()
        if saved and self.save_dtype != "float32":
            out["save_dtype"] = self.save_dtype
        return out


CPU = Placement(torch.device("cpu"))


def host_free_bytes(meminfo: Path = Path("/proc/meminfo"), cgroups: Path = Path("/proc/self/cgroup"),
                    root: Path = Path("/sys/fs/cgroup")) -> int:
    """``MemAvailable`` of the host, or less when this process's memory cgroup (v2 ``memory.max``,
    v1 ``memory.limit_in_bytes``: a Slurm job, a container) has less left under its limit.

    Off Linux (no /proc/meminfo): what ``os.sysconf`` says is free.
    """
    try:
        free = next(int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(0, min(free, _cgroup_room(cgroups, root)))


def _cgroup_room(cgroups: Path, root: Path) -> int:
    """Bytes left under this process's memory cgroup limit (a huge number when there is none)."""
    unlimited = 1 << 62
    try:
        lines = cgroups.read_text().splitlines()
    except OSError:
        return unlimited
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            folder, limit_file, used_file = root / path.lstrip("/"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            folder, limit_file, used_file = root / "memory" / path.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit != "max" and int(limit) < unlimited:
                return int(limit) - int((folder / used_file).read_text())
        except (OSError, ValueError):
            continue
    return unlimited


def resolve_device(name: str, params: str | Path = "params.yaml") -> torch.device:
    """params ``device`` on this machine: ``auto`` -> cuda when torch sees a GPU, else cpu.

    Raises StageError naming ``params``, the key and the fix for ``cuda`` on a machine without
    CUDA and for an index past the last GPU.
    """
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise StageError(f"{params}: device: {name!r} is not a device; write auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is a CPU build" if torch.version.cuda is None
               else "torch sees no CUDA device (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)")
        raise StageError(f"{params}: device: {name!r} but {why}; {FIX}")
    count = torch.cuda.device_count()
    index = int(name.split(":", 1)[1]) if ":" in name else torch.cuda.current_device()
    if index >= count:
        raise StageError(f"{params}: device: {name!r} but this machine has {count} CUDA device{'s' if count > 1 else ''} "
                         f"(cuda:0 to cuda:{count - 1}); set device: cuda:{count - 1} or lower, or cuda")
    return torch.device("cuda", index)


def _native_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX512, best with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def placement(threads: int, device: str = "cpu", precision: str = "fp32", save_dtype: str = "float32",
              params: str | Path = "params.yaml") -> Placement:
    """Set torch's threads and resolve the device for a stage; see the module docstring."""
    configure_threads(threads)
    dev = resolve_device(device, params)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        tf32 = precision == "bf16-mixed"  # fp32 stays strict fp32 on the GPU too
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    elif precision != "fp32" and not _native_bf16():
        log.warning("precision %s on the CPU: correct, but oneDNN has no bfloat16 kernels for this CPU: slower than fp32", precision)
    p = Placement(dev, precision, save_dtype)
    log.info("models run on %s in %s%s", dev, precision, f" ({p.record()['gpu']})" if dev.type == "cuda" else "")
    return p
