"""The throughput curve: median step time t(B) of a training step at log-spaced batch sizes.

A step is the engine's step (``batchsage.engine.Run.step``), timed as every training run times it:
gather the batch, move it to the device, zero the gradients, forward and backward, optimiser step,
device synchronised before each clock read. The probe

1. climbs the batch sizes in ascending order with ``warmup_steps`` untimed steps each (first
   steps pay one-off costs: allocator growth, kernel selection), estimating each step's cost;
   a batch size whose warm-up and timed steps would not fit in the time budget is skipped, and so
   is every larger one (the planner extrapolates beyond the largest measured point);
2. then runs timed rounds: each round visits every batch size once (ascending, then descending
   the next round, so slow drifts of a shared machine hit all sizes alike) and runs a block of
   steps there, each timed alone. Rounds continue while the time budget lasts.

The median over all timed steps at a batch size is its step time; samples/s is B over it.
Everything runs in this process on a fresh run of the task: the caller's model, optimiser and
random state are not touched.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchsage import plan
from batchsage.device import Device, resolve_device
from batchsage.engine import Run
from batchsage.errors import ConfigError
from batchsage.task import Task

#: Rounds the timed phase aims for (more if time allows, up to ``MAX_ROUNDS``).
TARGET_ROUNDS = 5
MAX_ROUNDS = 50
#: A block never runs more than this many steps in a row at one batch size.
MAX_BLOCK_STEPS = 64


@dataclass
class ThroughputPoint:
    """Step time at one batch size: the median of ``step_seconds`` (every timed step)."""

    batch_size: int
    step_seconds_median: float
    samples_per_second: float
    step_seconds: list[float] = field(default_factory=list)

    @property
    def spread(self) -> float:
        """Interquartile range of the step times over their median (0 with fewer than 4 steps)."""
        if len(self.step_seconds) < 4:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.step_seconds, n=4)
        return (q3 - q1) / self.step_seconds_median

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "step_seconds_median": self.step_seconds_median,
            "samples_per_second": self.samples_per_second,
            "timed_steps": len(self.step_seconds),
            "spread": self.spread,
        }


@dataclass
class ThroughputCurve:
    """Measured step times, and t(B) for any B by interpolation (for the planner).

    Attributes:
        points: one per measured batch size, ascending.
        skipped_batch_sizes: requested sizes the time budget did not allow.
        rounds: timed rounds run (each visits every measured size once).
        seconds: wall-clock time of the probe.
    """

    points: list[ThroughputPoint]
    device: str = "cpu"
    skipped_batch_sizes: list[int] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    def step_seconds(self, batch_size: float) -> float:
        """t(B): the planner's one step-time model over these points (:func:`plan.step_time_model`),
        so the recommender, ``fit`` and the adaptive controller price a batch the same way."""
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if not self.points:
            raise ConfigError("the throughput curve has no measured points")
        model = plan.step_time_model([p.batch_size for p in self.points],
                                     [p.step_seconds_median for p in self.points])
        return model(batch_size)

    def samples_per_second(self, batch_size: float) -> float:
        return batch_size / self.step_seconds(batch_size)

    def to_dict(self) -> list[dict[str, Any]]:
        return [point.to_dict() for point in self.points]


def log_spaced_batch_sizes(max_batch_size: int, smallest: int = 1) -> list[int]:
    """Powers of two from ``smallest`` up to ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = []
    size = max(1, smallest)
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


class _Stepper:
    """A training run on the device whose batch size changes per step; ``step(B)`` times one step."""

    def __init__(self, task: Task, device: Device) -> None:
        self.run = Run(task, 1, task.base_lr, device=device)

    def step(self, batch_size: int) -> float:
        # The engine's own step: the same work, in the same order, as every training run's.
        self.run.set_batch(batch_size)
        self.run.step()
        return self.run.step_log[-1][1]


def probe_throughput(
    task: Task,
    device: str | Device | None = "auto",
    max_batch_size: int | None = None,
    time_budget_seconds: float = 20.0,
    batch_sizes: Sequence[int] | None = None,
    *,
    warmup_steps: int = 2,
    on_progress: Callable[[float, str], None] | None = None,
) -> ThroughputCurve:
    """Median step time at log-spaced batch sizes up to ``max_batch_size``, within a time budget.

    Args:
        task: the training problem (a fresh model is built; nothing of the caller's is touched).
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps" or a Device.
        max_batch_size: largest batch size to time (default: the number of training samples);
            usually the memory ceiling.
        time_budget_seconds: wall-clock budget for the whole probe; larger sizes are skipped and
            fewer rounds run when it is short. At least one step at the smallest size always runs.
        batch_sizes: sizes to time (default: powers of two up to ``max_batch_size`` and
            ``max_batch_size``); sizes above ``max_batch_size`` are dropped.
        warmup_steps: untimed steps per batch size before timing.
        on_progress: called with (fraction of the time budget used, description).
    """
    start = time.perf_counter()
    sizes = _requested_sizes(task, max_batch_size, batch_sizes)
    if not (isinstance(time_budget_seconds, int | float) and time_budget_seconds > 0):
        raise ConfigError(f"time budget must be a positive number of seconds, got {time_budget_seconds!r}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    dev = resolve_device(device)
    deadline = start + time_budget_seconds

    def report(text: str) -> None:
        if on_progress is not None:
            on_progress(min((time.perf_counter() - start) / time_budget_seconds, 1.0), text)

    stepper = _Stepper(task, dev)
    estimates = _warm_up(stepper, sizes, warmup_steps, deadline, report)
    measured = sorted(estimates)
    timings, rounds = _timed_rounds(stepper, estimates, deadline, report)
    points = [
        ThroughputPoint(
            batch_size=size,
            step_seconds_median=statistics.median(timings[size]),
            samples_per_second=size / statistics.median(timings[size]),
            step_seconds=timings[size],
        )
        for size in measured
    ]
    report("done")
    return ThroughputCurve(
        points=points,
        device=str(dev),
        skipped_batch_sizes=[size for size in sizes if size not in estimates],
        rounds=rounds,
        seconds=time.perf_counter() - start,
    )


def _requested_sizes(task: Task, max_batch_size: int | None, batch_sizes: Sequence[int] | None) -> list[int]:
    largest = task.num_train_samples if max_batch_size is None else max_batch_size
    if isinstance(largest, bool) or not isinstance(largest, int) or largest <= 0:
        raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    largest = min(largest, task.num_train_samples)
    if batch_sizes is None:
        return log_spaced_batch_sizes(largest)
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"batch sizes must be positive integers, got {size!r}")
    sizes = sorted({size for size in batch_sizes if size <= largest})
    if not sizes:
        raise ConfigError(f"no batch size in {list(batch_sizes)} is ≤ max_batch_size {largest}")
    return sizes


def _warm_up(stepper: _Stepper, sizes: list[int], warmup_steps: int, deadline: float,
             report: Callable[[str], None]) -> dict[int, float]:
    """Warm up each size, ascending; returns {size: estimated step seconds} for the admitted ones.

    A size is admitted only if its warm-up and one timed step for it and for every size already
    admitted still fit before the deadline. Its cost is extrapolated from the
    two largest sizes so far along their log-log slope (clamped to [0, 1]: a larger batch is never
    faster, nor slower than proportionally), or proportionally from a single one.
    """
    estimates: dict[int, float] = {}
    for size in sizes:
        if estimates:
            guess = _extrapolate(estimates, size)
            needed = guess * (warmup_steps + 1) + sum(estimates.values())
            if time.perf_counter() + needed > deadline:
                break
        report(f"warming up B={size}")
        seconds = [stepper.step(size) for _ in range(max(warmup_steps, 1))]
        # The fastest warm-up step: the first pays one-off costs, and a shared machine only ever
        # makes a step slower, so the minimum is the least noisy estimate of the cost.
        estimates[size] = min(seconds)
    return estimates


def _extrapolate(estimates: dict[int, float], size: int) -> float:
    known = sorted(estimates)
    last = known[-1]
    exponent = 1.0
    if len(known) >= 2:
        previous = known[-2]
        ratio = estimates[last] / max(estimates[previous], 1e-12)
        exponent = min(max(math.log(max(ratio, 1e-12)) / math.log(last / previous), 0.0), 1.0)
    return estimates[last] * (size / last) ** exponent


def _timed_rounds(stepper: _Stepper, estimates: dict[int, float], deadline: float,
                  report: Callable[[str], None]) -> tuple[dict[int, list[float]], int]:
    """Interleaved rounds of timed blocks until the deadline; at least one timed step per size.

    Each round splits the time left evenly over the rounds still aimed for and the sizes; a block
    stops early at the deadline (a shared machine can make steps far slower than estimated).
    """
    sizes = sorted(estimates)
    timings: dict[int, list[float]] = {size: [] for size in sizes}
    rounds = 0
    while rounds < MAX_ROUNDS:
        remaining = deadline - time.perf_counter()
        if rounds > 0 and remaining < sum(estimates.values()):
            break
        block_seconds = max(remaining, 0.0) / (max(TARGET_ROUNDS - rounds, 1) * len(sizes))
        order = sizes if rounds % 2 == 0 else sizes[::-1]
        for size in order:
            report(f"round {rounds + 1}: timing B={size}")
            steps = min(max(int(block_seconds / max(estimates[size], 1e-9)), 1), MAX_BLOCK_STEPS)
            for _ in range(steps):
                timings[size].append(stepper.step(size))
                if time.perf_counter() > deadline:
                    break
            estimates[size] = statistics.median(timings[size])
        rounds += 1
        if time.perf_counter() > deadline:
            break
    return timings, rounds
