"""Hardware probes: the memory ceiling (``mem(B)``) and the throughput curve (``t(B)``).

>>> from batchsage.probe import probe
>>> result = probe("digits-mlp", time_budget_seconds=5)        # doctest: +SKIP
>>> result.memory.max_batch_size, result.throughput.step_seconds(256)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from batchsage.device import Device, resolve_device
from batchsage.probe.memory import (
    DEFAULT_SAFETY_MARGIN,
    MemoryBudgetError,
    MemoryProbe,
    MemoryProfile,
    ProbeError,
    probe_memory,
)
from batchsage.probe.throughput import ThroughputCurve, ThroughputPoint, probe_throughput
from batchsage.task import Task, load_task
from batchsage.units import format_bytes

__all__ = [
    "MemoryBudgetError",
    "MemoryProbe",
    "MemoryProfile",
    "ProbeError",
    "ProbeResult",
    "ThroughputCurve",
    "ThroughputPoint",
    "probe",
    "probe_memory",
    "probe_throughput",
]


@dataclass
class ProbeResult:
    """Both probes of one task on one device."""

    device: str
    memory: MemoryProfile
    throughput: ThroughputCurve
    probe_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """``{"device", "memory": {...}, "throughput": [...], "probe_seconds"}``."""
        return {
            "device": self.device,
            "memory": self.memory.to_dict(),
            "throughput": self.throughput.to_dict(),
            "probe_seconds": self.probe_seconds,
        }


def probe(
    task: Task | str,
    device: str | Device | None = "auto",
    memory_budget_bytes: int | None = None,
    time_budget_seconds: float = 20.0,
    *,
    max_batch_size_limit: int | None = None,
    memory_margin: float = DEFAULT_SAFETY_MARGIN,
    progress: bool = False,
    console: Console | None = None,
) -> ProbeResult:
    """Probe memory (ceiling under the budget), then time steps at log-spaced B up to it.

    Args:
        task: a Task, a built-in name, or ``path/to/file.py:ATTR``.
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps" or a Device.
        memory_budget_bytes: see :func:`~batchsage.probe.memory.probe_memory` (default: free memory
            minus a margin).
        time_budget_seconds: wall-clock budget of the throughput probe.
        max_batch_size_limit: never consider batches larger than this.
        memory_margin: the ceiling keeps this fraction of the memory budget free.
        progress: show Rich progress on ``console``.
    """
    start = time.perf_counter()
    loaded = load_task(task) if not isinstance(task, Task) else task.validate()
    dev = resolve_device(device)
    if not progress:
        memory = probe_memory(loaded, dev, memory_budget_bytes, max_batch_size_limit, margin=memory_margin)
        throughput = probe_throughput(loaded, dev, memory.max_batch_size, time_budget_seconds)
    else:
        memory, throughput = _probe_with_progress(
            loaded, dev, memory_budget_bytes, time_budget_seconds, max_batch_size_limit,
            console or Console(stderr=True), memory_margin,
        )
    return ProbeResult(str(dev), memory, throughput, time.perf_counter() - start)


def _probe_with_progress(task: Task, device: Device, budget_bytes: int | None, time_budget_seconds: float,
                         limit: int | None, console: Console,
                         margin: float) -> tuple[MemoryProfile, ThroughputCurve]:
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        memory_task = bar.add_task("memory: first probe", total=None)

        def on_probe(probe: MemoryProbe) -> None:
            peak = format_bytes(probe.peak_bytes) if probe.peak_bytes is not None else "-"
            bar.update(memory_task, description=f"memory: B={probe.batch_size} {probe.outcome} ({peak})")

        memory = probe_memory(task, device, budget_bytes, limit, on_probe=on_probe, margin=margin)
        bar.update(memory_task, total=1, completed=1,
                   description=f"memory: ceiling B={memory.max_batch_size} ({memory.steps_used} steps)")
        time_task = bar.add_task("throughput", total=1.0)

        def on_progress(fraction: float, text: str) -> None:
            bar.update(time_task, completed=fraction, description=f"throughput: {text}")

        throughput = probe_throughput(task, device, memory.max_batch_size, time_budget_seconds,
                                      on_progress=on_progress)
    return memory, throughput
