"""The device layer: cpu, cuda and mps behind one interface.

Everything device-specific lives here: synchronisation before reading a clock, peak-memory
statistics, free memory, and recognising an out-of-memory error. No other module inspects error
strings or calls ``torch.cuda`` directly.

Exercised: the CPU path on every test run. The CUDA path (allocator peak statistics,
``torch.cuda.OutOfMemoryError``) follows PyTorch's documented APIs but has not been run on a GPU
by this project yet; see the README.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import psutil
import torch

from batchsage.errors import ConfigError

SUPPORTED = ("cpu", "cuda", "mps")
#: What ``--device`` accepts: a device type (with an index for cuda, "cuda:1"), or "auto".
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Device:
    """A torch device plus the operations batchsage needs on it."""

    torch_device: torch.device

    @property
    def type(self) -> str:
        return self.torch_device.type

    def __str__(self) -> str:
        return str(self.torch_device)

    def synchronize(self) -> None:
        """Wait for queued kernels, so that a clock read afterwards measures finished work."""
        if self.type == "cuda":
            torch.cuda.synchronize(self.torch_device)
        elif self.type == "mps":
            torch.mps.synchronize()

    def reset_peak_memory(self) -> None:
        if self.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)

    def peak_memory_bytes(self) -> int | None:
        """Peak allocator bytes since the last reset (None where the device has no such statistic)."""
        if self.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.torch_device))
        if self.type == "mps":
            return int(torch.mps.driver_allocated_memory())
        return None

    def available_memory_bytes(self) -> int:
        """Memory a training process could still use: free device memory, or available RAM on CPU."""
        if self.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.torch_device)
            return int(free)
        return int(psutil.virtual_memory().available)

    def empty_cache(self) -> None:
        gc.collect()
        if self.type == "cuda":
            torch.cuda.empty_cache()
        elif self.type == "mps":
            torch.mps.empty_cache()


def set_cpu_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's intra-op parallelism.

    With more threads than free cores (other busy processes), a parallel region waits for a
    descheduled thread and a 1 ms step can take 50 ms: measurements then describe the neighbours,
    not the model. Measured here under load: digits-mlp, 200 steps, 13.5 s with 2 threads, 0.6 s
    with 1.
    """
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def best_available() -> str:
    """The accelerator that is there: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str | torch.device | Device | None = None) -> Device:
    """Turn "auto" or None (the best available), "cpu", "cuda", "cuda:1" or "mps" into a Device.

    A tool that measures the user's hardware must measure the accelerator that is there, so
    every entry point defaults to "auto" and records which device it resolved to.
    """
    if isinstance(name, Device):
        return name
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        name = best_available()
    try:
        torch_device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be one of auto, {', '.join(SUPPORTED)}, got {name!r}") from exc
    if torch_device.type not in SUPPORTED:
        raise ConfigError(f"device must be one of auto, {', '.join(SUPPORTED)}, got {name!r}")
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but the MPS backend is not available")
    return Device(torch_device)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception means the device (or host) ran out of memory.

    The one place that classifies errors, as Accelerate's ``should_reduce_batch_size`` does.
    """
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    if isinstance(error, RuntimeError) and error.args:
        message = str(error.args[0])
        return any(
            marker in message
            for marker in (
                "CUDA out of memory",
                "CUBLAS_STATUS_ALLOC_FAILED",
                "CUDNN_STATUS_NOT_SUPPORTED",
                "MPS backend out of memory",
                "DefaultCPUAllocator: can't allocate memory",
                "DefaultCPUAllocator: not enough memory",
            )
        )
    return False
