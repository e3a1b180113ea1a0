"""Pilot runs: where they start (a :class:`Runner`), how long they run and how often they validate.

A pilot is a short training run that measures steps to a level of the validation metric (and, for
the first pilot, the gradient noise scale along the way). Pilots run through a runner: from
scratch (``recommend``: a fresh model, as a user's training would start) or forked from a live run
(``fit``: the pilot is the training itself), so that the races built on them work either way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from batchsage import curves, plan
from batchsage.decide.recommendation import NoiseSummary, PilotRun
from batchsage.device import Device, resolve_device
from batchsage.engine import Run, TrainingHook
from batchsage.task import Task

#: Pilot B's batch is this many times pilot A's (when memory and data allow): far enough apart
#: that the step counts differ measurably, close enough that B_crit is measured where it matters.
PILOT_BATCH_FACTOR = 8
#: Validations per pilot: enough points to interpolate the step at which a level was crossed.
PILOT_VALIDATIONS = 24


def candidate_grid(task: Task, ceiling: int, min_batch_size: int) -> list[int]:
    """Powers of two from ``min_batch_size`` to the data-set size, plus the memory ceiling.

    Batches beyond the memory ceiling stay candidates (run with accumulation); batches beyond the
    training set do not (a step would see a sample twice).
    """
    largest = task.num_train_samples
    low = min(min_batch_size, largest)
    grid = set(plan.power_of_two_grid(low, largest))
    grid.discard(largest)  # a whole-data-set "batch" only if it is a power of two
    if largest & (largest - 1) == 0:
        grid.add(largest)
    if ceiling <= largest:
        grid.add(ceiling)
    return sorted(grid)


def measure_validation_seconds(task: Task, device: Any) -> float:
    """Seconds of one validation pass on a fresh model (the median of two; caller's RNG kept)."""
    import torch

    from batchsage.engine import evaluate

    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[dev.torch_device] if dev.type == "cuda" else []):
        torch.manual_seed(task.seed)
        model = task.make_model().to(dev.torch_device)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        evaluate(task, model)
        times.append(time.perf_counter() - start)
    return min(times)


#: The fewest validation samples a pilot's subset keeps: an accuracy measured on 2048 samples has a
#: standard error of at most 1.1 % (at 50 %), finer than the steps between pilot validations.
MIN_PILOT_VALIDATION_SAMPLES = 2048


def pilot_validation_subset(task: Task, device: Any, schedule: PilotSchedule
                            ) -> tuple[Task, PilotSchedule, dict[str, Any] | None]:
    """A task whose validation set fits the pilots' share of time, and the schedule for it.

    A pilot validates at least every doubling of its steps (the coarsest schedule the races can
    read) and may spend ``schedule.eval_share`` of its time on it. Where full passes do not fit
    (a large or slow validation set), the pilots validate on a fixed random subset just large
    enough to fit, never below MIN_PILOT_VALIDATION_SAMPLES; the recommendation's S(B) and lr
    are then measured on the subset's metric, whose small offset from the full set's is common
    to every pilot. Only datasets that hold tensors (``TensorDataset``-like: a ``tensors``
    attribute) are subset, as a shallow copy of the same type, so that a task's ``metric_fn``
    gets what it expects; where that cannot be done, or the metric fails on the subset, the
    pilots validate on the full set.
    """
    needed = schedule.validations_at_coarsest(task.base_batch_size)
    allowed_seconds = schedule.eval_share * schedule.seconds
    tensors = getattr(task.val_data, "tensors", None)
    if needed * schedule.eval_seconds <= allowed_seconds or tensors is None:
        return task, schedule, None
    full = task.num_val_samples
    size = max(MIN_PILOT_VALIDATION_SAMPLES,
               math.ceil(full * allowed_seconds / (needed * schedule.eval_seconds)))
    if size >= full:
        return task, schedule, None
    import torch

    order = torch.randperm(full, generator=torch.Generator().manual_seed(task.seed))[:size]
    subset = with_rows(task.val_data, tensors, order)
    if subset is None:
        return task, schedule, None
    subset_task = dataclasses.replace(task, val_data=subset)
    try:
        subset_seconds = measure_validation_seconds(subset_task, device)
    except Exception:  # the subset only saves time; the full set is always right
        return task, schedule, None
    return subset_task, dataclasses.replace(schedule, eval_seconds=subset_seconds), {
        "samples": size, "of": full, "full_pass_seconds": schedule.eval_seconds,
        "subset_pass_seconds": subset_seconds}


def with_rows(data: Any, tensors: Sequence[Any], rows: Any) -> Any | None:
    """A shallow copy of ``data`` (same type, same other attributes) holding only ``rows`` of its
    tensors; None where its tensors are not one row per sample or cannot be replaced."""
    import copy

    if any(len(t) != len(data) for t in tensors):
        return None
    subset = copy.copy(data)
    try:
        subset.tensors = tuple(t[rows] for t in tensors)
    except (AttributeError, TypeError, IndexError):
        return None
    return subset if len(subset) == len(rows) else None


@dataclass
class PilotSchedule:
    """How long pilots may run and how often they validate, from measured costs.

    Validations follow a geometric schedule (a fixed relative precision on the step at which a
    level is crossed), as dense as allowed by spending at most ``eval_share`` of the pilot's time
    on validation.
    """

    seconds: float
    step_seconds: Callable[[int], float]
    eval_seconds: float
    eval_share: float = 0.25
    first_eval_steps: int = 4

    def expected_steps(self, batch_size: int) -> float:
        """Steps a pilot at ``batch_size`` makes in its time (at least 2)."""
        return max(self.seconds / max(self.step_seconds(batch_size), 1e-9), 2.0)

    def eval_growth(self, batch_size: int) -> float:
        expected_steps = self.expected_steps(batch_size)
        affordable = max(4.0, self.eval_share * self.seconds / max(self.eval_seconds, 1e-6))
        span = max(expected_steps / self.first_eval_steps, 1.0 + 1e-9)
        return float(min(2.0, max(1.05, span ** (1.0 / min(affordable, PILOT_VALIDATIONS)))))

    def validations_at_coarsest(self, batch_size: int) -> int:
        """Validations a pilot at ``batch_size`` makes when they are ×2 apart (at least 4)."""
        span = self.expected_steps(batch_size) / self.first_eval_steps
        return max(4, math.ceil(math.log2(max(span, 2.0))))

    def train_kwargs(self, batch_size: int, seconds: float | None = None) -> dict[str, Any]:
        return {
            "max_seconds": self.seconds if seconds is None else seconds,
            "eval_every_samples": self.first_eval_steps * batch_size,
            "eval_growth": self.eval_growth(batch_size),
        }


def run_pilot_a(runner: Runner, ceiling: int) -> tuple[PilotRun, Any]:
    """Pilot A: the task's base batch and lr with the noise-scale monitor, for the pilots' time."""
    from batchsage.noise import NoiseScaleMonitor

    task = runner.task
    batch_size = min(task.base_batch_size, ceiling)
    lr = plan.scaled_lr(batch_size, task.base_batch_size, task.base_lr, task.resolved_lr_scaling())
    # A pilot is short: spend up to half its time measuring, and report often, so that the
    # growth of B_simple along the run has several points to fit.
    monitor = NoiseScaleMonitor(overhead_budget=0.5, report_every=4, dataset_size=task.num_train_samples)
    start = time.perf_counter()
    run = runner.start(batch_size, lr, hooks=[monitor])
    reason = run.train_until(max_seconds=run.state.train_seconds + runner.schedule.seconds)
    return PilotRun.from_result(run.result(reason), time.perf_counter() - start), monitor


def noise_from_monitor(monitor: Any) -> NoiseSummary:
    monitor.flush()
    estimate = monitor.estimate()
    trajectory = [
        {"step": p.step, "train_loss": p.train_loss, "b_simple": p.b_simple}
        for p in getattr(monitor, "trajectory", [])
    ]
    growth = curves.power_law_growth([p["step"] for p in trajectory], [p["b_simple"] for p in trajectory])
    b_simple = estimate.b_simple if estimate is not None else None
    return NoiseSummary(
        b_simple=b_simple,
        b_simple_ci95=tuple(estimate.ci95) if estimate is not None and estimate.ci95 else None,
        growth_scale=growth.scale if growth else None,
        growth_exponent=growth.exponent if growth else None,
        b_crit_pilot=None,
        calibration=None,
        b_noise=math.nan,
        method="",
        trajectory=trajectory,
    )


class Runner(Protocol):
    """Where a pilot or racer starts: ``start(B, lr)`` returns a run ready to train on."""

    task: Task
    schedule: PilotSchedule

    def start(self, batch_size: int, lr: float, hooks: Sequence[TrainingHook] = ()) -> Run: ...


@dataclass
class FromScratch:
    """Each run starts from a fresh model (the task's seed), as the user's training would."""

    task: Task
    device: Device
    schedule: PilotSchedule

    def start(self, batch_size: int, lr: float, hooks: Sequence[TrainingHook] = ()) -> Run:
        return Run(self.task, batch_size, lr, device=self.device, hooks=hooks,
                   eval_every_samples=self.schedule.first_eval_steps * batch_size,
                   eval_growth=self.schedule.eval_growth(batch_size))


@dataclass
class FromLive:
    """Each run is a fork of ``live`` (same weights, optimiser state, data position and RNG)
    continued at its own batch size and lr: a race that costs only its losers."""

    live: Run
    schedule: PilotSchedule

    @property
    def task(self) -> Task:
        return self.live.task

    def start(self, batch_size: int, lr: float, hooks: Sequence[TrainingHook] = ()) -> Run:
        run = self.live.fork(hooks)
        run.set_batch(batch_size)
        run.set_lr(lr)
        run.warmup_steps = 0
        run.eval_every_samples = self.schedule.first_eval_steps * batch_size
        run.eval_growth = None
        run.next_eval_samples = run.state.samples + run.eval_every_samples
        return run


def level_run(runner: Runner, batch_size: int, lr: float, level: float, seconds: float,
              max_steps: int | None = None) -> PilotRun:
    """Train at (batch_size, lr) until ``level`` is reached, ``max_steps`` or ``seconds`` pass."""
    start = time.perf_counter()
    run = runner.start(batch_size, lr)
    begin_step, begin_samples, begin_seconds = run.state.step, run.state.samples, run.state.train_seconds

    def at_level(current: Run) -> str | None:
        point = current.history[-1] if current.history else None
        if point is None or point.samples <= begin_samples:
            return None
        return "pilot level" if reaches(runner.task, point.metric, level) else None

    reason = run.train_until(
        max_samples=begin_samples + max_steps * batch_size if max_steps is not None else None,
        max_seconds=begin_seconds + seconds, should_stop=at_level,
    )
    pilot = PilotRun.from_result(run.result(reason), time.perf_counter() - start)
    if begin_step == 0:
        return pilot
    # A fork of a live run: its own stretch only, counted from where it started.
    pilot.history = [
        {**p, "step": p["step"] - begin_step, "samples": p["samples"] - begin_samples,
         "train_seconds": p["train_seconds"] - begin_seconds}
        for p in pilot.history if p["samples"] > begin_samples
    ]
    pilot.steps -= begin_step
    pilot.train_seconds -= begin_seconds
    return pilot


def reaches(task: Task, metric: float, level: float) -> bool:
    """Whether ``metric`` is at ``level`` or better (never for a non-finite metric)."""
    if not math.isfinite(metric):
        return False
    return metric >= level if task.higher_is_better else metric <= level


def steps_to(task: Task, run: PilotRun, level: float) -> float:
    """Steps ``run`` needed to reach ``level`` (interpolated between validations); inf if never."""
    steps, metrics = run.steps_and_metrics()
    reached = curves.steps_to_level(steps, metrics, level, task.higher_is_better)
    return float(reached) if reached is not None and reached > 0 else math.inf


def best_metric(metrics: list[float], higher_is_better: bool) -> float:
    finite = [m for m in metrics if math.isfinite(m)]
    if not finite:
        return math.nan
    return max(finite) if higher_is_better else min(finite)


def best_level(task: Task, run: PilotRun) -> float:
    """The best validation metric ``run`` reached (NaN if none was finite)."""
    return best_metric(run.steps_and_metrics()[1], task.higher_is_better)
