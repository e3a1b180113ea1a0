"""``batchsage.recommend(task)``: measure, fit, plan, and recommend a batch size.

The flow is one-way (DESIGN.md): task → measurements (memory, t(B), noise) → plan → recommendation.

1. Probe memory (ceiling) and throughput (step time t(B) on a log grid up to the ceiling).
2. Pilot A: train at the task's base batch size and lr with the noise-scale monitor attached. It
   gives the validation curve (steps to target, measured or extrapolated) and the simple noise
   scale B_simple with its growth along the run. Then racers at the base batch with the lr ×2,
   ×4 … (or ÷2) train to the best level pilot A reached: the user's base lr is a guess, and the
   fastest lr there anchors the plan.
3. Pilot B: train at a batch several times larger until it reaches the level pilot A reached. Its
   learning rate comes from a second race (plain linear/square-root scaling from the anchor, then
   ×2 while the larger lr is faster, or ÷2 while the smaller is clearly faster): how far the lr
   may grow with the batch is measured, not assumed. The winner's steps and those at the base
   batch give the critical batch B_crit at that point of training, which calibrates B_simple (it
   over-estimates B_crit 2–8×; DESIGN.md pitfalls).
4. The effective noise scale of the whole run is the calibrated B_simple averaged over the steps
   to target (it grows as the loss falls). With it: S_min, S(B), lr(B) (the rule × the race's
   measured factor, kept below any lr that diverged), T(B) = S(B)·t(B) for every candidate B
   (beyond the memory ceiling via accumulation), and the smallest B within a few % of the
   fastest is recommended.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console

from batchsage import curves, plan
from batchsage.device import resolve_device
from batchsage.engine import StepUpdate, TrainingHook, TrainResult, TrainState, train
from batchsage.errors import ConfigError
from batchsage.task import Task, load_task

#: Pilot B's batch is this many times pilot A's (when memory and data allow): far enough apart
#: that the step counts differ measurably, close enough that B_crit is measured where it matters.
PILOT_BATCH_FACTOR = 8
#: Validations per pilot: enough points to interpolate the step at which a level was crossed.
PILOT_VALIDATIONS = 24


@dataclass
class PilotRun:
    """A short training run used to measure steps-to-level and the noise scale."""

    batch_size: int
    lr: float
    steps: int
    train_seconds: float
    wall_seconds: float
    reached_target: bool
    history: list[dict[str, float]]
    diverged: bool = False

    @classmethod
    def from_result(cls, result: TrainResult, wall_seconds: float) -> PilotRun:
        return cls(
            batch_size=result.batch_size,
            lr=result.lr,
            steps=result.steps,
            train_seconds=result.train_seconds,
            wall_seconds=wall_seconds,
            reached_target=result.reached_target,
            diverged=result.diverged,
            history=[
                {"step": p.step, "samples": p.samples, "train_seconds": p.train_seconds,
                 "metric": p.metric, "train_loss": p.train_loss}
                for p in result.history
            ],
        )

    def steps_and_metrics(self) -> tuple[list[float], list[float]]:
        return [p["step"] for p in self.history], [p["metric"] for p in self.history]


@dataclass
class NoiseSummary:
    """What the pilots measured about gradient noise, and what the plan used."""

    b_simple: float | None
    b_simple_ci95: tuple[float, float] | None
    growth_scale: float | None
    growth_exponent: float | None
    b_crit_pilot: float | None
    calibration: float | None
    b_noise: float
    method: str
    trajectory: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Recommendation:
    """The answer first (``recommended``), the evidence after."""

    task: str
    device: str
    recommended: dict[str, Any]
    candidates: list[plan.Candidate]
    s_min: float
    b_noise: float
    steps_at_pilot: float
    extrapolated: bool
    noise_scale: NoiseSummary
    memory: dict[str, Any]
    throughput: list[dict[str, Any]]
    pilots: list[PilotRun]
    lr_race: list[dict[str, Any]]
    lr_calibration: dict[str, Any] | None
    #: The (batch, lr) the lr rule is anchored at: the base batch at the best lr raced there.
    anchor: dict[str, Any]
    explanation: str
    decision_seconds: float
    phase_seconds: dict[str, float]
    metric_name: str
    target: float
    higher_is_better: bool
    #: Where a full validation pass did not fit the pilots' share of time: the pilots validated on
    #: a fixed random subset ({"samples", "of", "full_pass_seconds", "subset_pass_seconds"}).
    pilot_validation: dict[str, Any] | None = None
    #: The ``budget_seconds`` the decision was sized with.
    budget_seconds: float | None = None

    @property
    def batch_size(self) -> int:
        return int(self.recommended["batch_size"])

    @property
    def lr(self) -> float:
        return float(self.recommended["lr"])

    def candidate(self, batch_size: int) -> plan.Candidate | None:
        return next((c for c in self.candidates if c.batch_size == batch_size), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "device": self.device,
            "recommended": self.recommended,
            "candidates": [
                {
                    "batch_size": c.batch_size,
                    "micro_batch_size": c.micro_batch_size,
                    "accumulation_steps": c.accumulation_steps,
                    "lr": c.lr,
                    "warmup_steps": c.warmup_steps,
                    "predicted_steps": c.predicted_steps,
                    "step_seconds": c.step_seconds,
                    "predicted_seconds": c.predicted_seconds,
                    "fits_memory": c.fits_memory,
                }
                for c in self.candidates
            ],
            "s_min": self.s_min,
            "b_noise": self.b_noise,
            "extrapolated": self.extrapolated,
            "noise_scale": asdict(self.noise_scale),
            "memory": self.memory,
            "throughput": self.throughput,
            "pilots": [asdict(p) for p in self.pilots],
            "lr_race": self.lr_race,
            "lr_calibration": self.lr_calibration,
            "anchor": self.anchor,
            "explanation": self.explanation,
            "decision_seconds": self.decision_seconds,
            "phase_seconds": self.phase_seconds,
            "metric": {"name": self.metric_name, "target": self.target,
                       "higher_is_better": self.higher_is_better},
            "pilot_validation": self.pilot_validation,
            "budget_seconds": self.budget_seconds,
            "pilot_coverage": pilot_coverage(self),
        }

    def __repr__(self) -> str:  # what a notebook prints: the answer first
        r = self.recommended
        accumulation = (
            f" ({r['micro_batch_size']} × {r['accumulation_steps']} accumulation)"
            if r["accumulation_steps"] > 1 else ""
        )
        return (
            f"Recommendation(task={self.task!r}, batch_size={r['batch_size']}{accumulation}, "
            f"lr={r['lr']:.4g}, warmup_steps={r['warmup_steps']}, "
            f"predicted_seconds={r['predicted_seconds']:.1f}, decision_seconds={self.decision_seconds:.1f})"
        )


class _StopAtLevel(TrainingHook):
    """Stops training at the first validation that reaches ``level`` (or the target)."""

    def __init__(self, task: Task, level: float) -> None:
        self.task = task
        self.level = level
        self.reached = False

    def on_eval(self, state: TrainState, metric: float) -> None:
        better = metric >= self.level if self.task.higher_is_better else metric <= self.level
        self.reached = self.reached or (math.isfinite(metric) and better)

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        return StepUpdate(stop=True, reason="pilot level") if self.reached else None


class _Phases:
    """Rich status line per phase, and the seconds each phase took."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(description):
                yield
        self.seconds[name] = time.perf_counter() - start
        if self.console is not None:
            self.console.print(f"[green]✓[/] {description} ({self.seconds[name]:.1f} s)")


def recommend(
    task: Task | str,
    *,
    device: str | None = "cpu",
    memory_budget_bytes: int | None = None,
    budget_seconds: float = 20.0,
    tolerance: float = 0.03,
    min_batch_size: int = 8,
    progress: bool = True,
    console: Console | None = None,
) -> Recommendation:
    """Recommend batch size, lr, accumulation and warmup for ``task``.

    Args:
        task: a Task, a built-in name, or ``path/to/file.py:ATTR``.
        device: "cpu", "cuda" or "mps".
        memory_budget_bytes: memory a training step may use (default: free memory minus a margin).
        budget_seconds: sizes the decision's parts: the throughput probe gets 15 % of it, each
            pilot 35 %, each lr race about two pilots' worth (or three times its first racer's
            time, where that is longer). Not a hard limit: whole decisions took 0.9-3.9x it on
            the built-in tasks (docs/groundtruth.md). There, 10 s gave clearly worse picks than
            the default and 40 s no better ones (benchmarks/results/budget/TRADEOFF.md).
        tolerance: recommend the smallest B whose predicted time is within this fraction of the best.
        min_batch_size: smallest candidate batch size.
        progress: show Rich progress on ``console`` (default: stderr-free stdout console).
    """
    loaded = load_task(task) if not isinstance(task, Task) else task.validate()
    if budget_seconds <= 0:
        raise ConfigError(f"budget_seconds must be positive, got {budget_seconds}")
    if min_batch_size <= 0:
        raise ConfigError(f"min_batch_size must be positive, got {min_batch_size}")
    dev = resolve_device(device)
    phases = _Phases((console or Console()) if progress else None)
    started = time.perf_counter()

    from batchsage.probe.memory import probe_memory
    from batchsage.probe.throughput import probe_throughput

    with phases.phase("memory", "probing memory"):
        memory = probe_memory(loaded, device=dev, budget_bytes=memory_budget_bytes)
    ceiling = memory.max_batch_size
    grid = candidate_grid(loaded, ceiling, min_batch_size)
    measured_sizes = [b for b in grid if b <= ceiling]
    with phases.phase("throughput", f"timing steps at {len(measured_sizes)} batch sizes"):
        throughput = probe_throughput(
            loaded, device=dev, max_batch_size=ceiling, time_budget_seconds=0.15 * budget_seconds,
            batch_sizes=measured_sizes,
        )
    step_seconds = plan.step_time_model(
        [p.batch_size for p in throughput.points], [p.step_seconds_median for p in throughput.points]
    )
    schedule = _PilotSchedule(0.35 * budget_seconds, step_seconds, measure_validation_seconds(loaded, dev))
    pilot_task, schedule, pilot_validation = pilot_validation_subset(loaded, dev, schedule)
    with phases.phase("pilot_a", "pilot run at the base batch size, measuring gradient noise"):
        pilot_a, monitor = _pilot_a(pilot_task, dev, ceiling, schedule)
    noise = _noise_from_monitor(monitor)
    with phases.phase("base_lr", "racing learning rates at the base batch size"):
        base_winner, base_race = _race_base_lr(pilot_task, dev, pilot_a, schedule)
    # The plan is anchored where the lr was measured best at the base batch (the user's lr
    # unless a racer beat it).
    anchored = dataclasses.replace(pilot_task, base_batch_size=base_winner.batch_size,
                                   base_lr=base_winner.lr)
    with phases.phase("pilot_b", "pilot runs at larger batches, calibrating the critical batch"):
        larger = _larger_pilots(anchored, dev, ceiling, base_winner, _best_level(loaded, pilot_a), noise,
                                schedule)
    larger_pilots = larger.pilots
    pilot_b = larger_pilots[-1] if larger_pilots else None
    fitted = fit_plan_parameters(loaded, pilot_a, pilot_b, noise,
                                 base_winner if base_winner is not pilot_a else None)
    # The races found the best lrs at the pilots' level, where the noise scale was smaller than
    # over the whole run: the lr the plan scales from is shifted to the run's noise scale, and the
    # larger-batch race is compared with the rule at the noise scale it raced at.
    race_noise = fitted.b_noise_at_race if fitted.b_noise_at_race is not None else fitted.b_noise
    noise_shift = plan.lr_noise_shift(anchored.base_batch_size, race_noise, fitted.b_noise)
    lr_calibration = _lr_calibration(anchored, larger.race_winner, race_noise, larger.diverged_lr)
    candidates = plan.plan_candidates(
        grid,
        s_min=fitted.s_min,
        b_noise=fitted.b_noise,
        step_seconds=step_seconds,
        max_batch_size=ceiling,
        base_batch_size=anchored.base_batch_size,
        base_lr=anchored.base_lr * noise_shift,
        scaling=loaded.resolved_lr_scaling(),
        lr_calibration=lr_calibration,
    )
    chosen = plan.choose(candidates, tolerance)
    decision_seconds = time.perf_counter() - started
    recommendation = Recommendation(
        task=loaded.name,
        device=str(dev),
        recommended={
            "batch_size": chosen.batch_size,
            "micro_batch_size": chosen.micro_batch_size,
            "accumulation_steps": chosen.accumulation_steps,
            "lr": chosen.lr,
            "warmup_steps": chosen.warmup_steps,
            "predicted_steps": chosen.predicted_steps,
            "predicted_seconds": chosen.predicted_seconds,
        },
        candidates=candidates,
        s_min=fitted.s_min,
        b_noise=fitted.b_noise,
        steps_at_pilot=fitted.steps_at_pilot,
        extrapolated=fitted.extrapolated,
        noise_scale=fitted.noise,
        memory=memory.to_dict(),
        throughput=[
            {"batch_size": p.batch_size, "step_seconds_median": p.step_seconds_median,
             "samples_per_second": p.samples_per_second}
            for p in throughput.points
        ],
        pilots=[pilot_a, *larger_pilots],
        lr_race=base_race + larger.race,
        anchor={"batch_size": anchored.base_batch_size, "lr": anchored.base_lr,
                "task_base_lr": loaded.base_lr, "b_noise_at_race": fitted.b_noise_at_race,
                "noise_shift": noise_shift},
        lr_calibration=asdict(lr_calibration) if lr_calibration else None,
        explanation="",
        decision_seconds=decision_seconds,
        phase_seconds=phases.seconds,
        metric_name=loaded.metric_name,
        target=loaded.target,
        higher_is_better=loaded.higher_is_better,
        pilot_validation=pilot_validation,
        budget_seconds=budget_seconds,
    )
    recommendation.explanation = explain(recommendation, ceiling, loaded.base_batch_size)
    return recommendation


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


def pilot_validation_subset(task: Task, device: Any, schedule: _PilotSchedule
                            ) -> tuple[Task, _PilotSchedule, dict[str, Any] | None]:
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
    subset = _with_rows(task.val_data, tensors, order)
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


def _with_rows(data: Any, tensors: Sequence[Any], rows: Any) -> Any | None:
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
class _PilotSchedule:
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


def _pilot_a(task: Task, device: Any, ceiling: int, schedule: _PilotSchedule) -> tuple[PilotRun, Any]:
    from batchsage.noise import NoiseScaleMonitor

    batch_size = min(task.base_batch_size, ceiling)
    lr = plan.scaled_lr(batch_size, task.base_batch_size, task.base_lr, task.resolved_lr_scaling())
    # A pilot is short: spend up to half its time measuring, and report often, so that the
    # growth of B_simple along the run has several points to fit.
    monitor = NoiseScaleMonitor(overhead_budget=0.5, report_every=4, dataset_size=task.num_train_samples)
    start = time.perf_counter()
    result = train(
        task, batch_size, lr, device=device, **schedule.train_kwargs(batch_size),
        hooks=[monitor],
    )
    return PilotRun.from_result(result, time.perf_counter() - start), monitor


def _noise_from_monitor(monitor: Any) -> NoiseSummary:
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


@dataclass
class LargerPilots:
    """The pilots at larger batches, and what the lr race among them measured."""

    pilots: list[PilotRun]
    race: list[dict[str, Any]]
    #: (batch size, lr) that won the lr race, if one ran.
    race_winner: tuple[int, float] | None
    #: The smallest lr whose racer diverged, if any.
    diverged_lr: float | None = None


def _larger_pilots(task: Task, device: Any, ceiling: int, small: PilotRun, level: float,
                   noise: NoiseSummary, schedule: _PilotSchedule) -> LargerPilots:
    """Pilots at PILOT_BATCH_FACTOR× larger batches until scaling stops looking perfect.

    ``small`` is the base-batch run at the anchored lr, ``level`` the best level pilot A reached;
    each pilot runs until it reaches that level. The first larger batch races a few learning
    rates around the rule's (:func:`_race_lr`): the fastest sets the lr correction for every
    larger batch and is the pilot B that measures the critical batch. If the step counts say the
    critical batch lies beyond the larger batch (scaling still perfect there), the next pilot
    goes a factor further, while memory, data and the time budget allow.
    """
    pilots: list[PilotRun] = []
    race: list[dict[str, Any]] = []
    calibration: plan.LrCalibration | None = None
    if not small.history or not math.isfinite(level):
        return LargerPilots(pilots, race, None)
    remaining = schedule.seconds
    previous = small.batch_size
    while remaining > 0.1 * schedule.seconds:
        large = min(ceiling, previous * PILOT_BATCH_FACTOR, task.num_train_samples // 2)
        if large <= previous:
            break
        rule_lr = plan.scaled_lr(large, task.base_batch_size, task.base_lr, task.resolved_lr_scaling(),
                                 noise.b_simple)
        start = time.perf_counter()
        if calibration is None:
            pilot, race = _race_larger_batch(task, device, large, small, level, schedule,
                                             remaining + schedule.seconds)
            calibration = plan.LrCalibration(small.batch_size, large, pilot.lr / rule_lr,
                                             _diverged_lr(race))
        else:
            pilot = _level_run(task, device, large, calibration.apply(large, rule_lr), level,
                               schedule, remaining)
        remaining -= time.perf_counter() - start
        if pilot.diverged:  # says nothing about the critical batch; the lr was too large there
            break
        pilots.append(pilot)
        b_crit, _ = _critical_batch(task, small, pilot)
        if b_crit is None or b_crit < large or not pilot.history:
            break
        previous = large
    winner = (race[0]["batch_size"], pilots[0].lr) if race and pilots else None
    return LargerPilots(pilots, race, winner, calibration.diverged_lr if calibration else None)


def _race_larger_batch(task: Task, device: Any, large: int, small: PilotRun, level: float,
                       schedule: _PilotSchedule, seconds: float) -> tuple[PilotRun, list[dict[str, Any]]]:
    """The lr race at the first larger pilot batch.

    It starts from plain linear (SGD) / square-root (Adam) scaling of the anchor: the noise
    saturation needs a B_noise not yet calibrated, and the race finds any saturation. A larger
    batch never needs more steps than the base batch for the same level, so no racer runs past
    the base run's steps.
    """
    start_lr = plan.scaled_lr(large, task.base_batch_size, task.base_lr, task.resolved_lr_scaling())
    steps_small = _steps_to(task, small, level)
    cap = None if math.isinf(steps_small) else math.ceil(steps_small)
    return _race_lr(task, device, large, start_lr, level, schedule, seconds, cap)


#: The lr race multiplies or divides the rule's lr by this factor per round, up to LR_RACE_ROUNDS.
LR_RACE_STEP = 2.0
LR_RACE_ROUNDS = 3
#: The race may take at least this many times its first racer's wall time (so that, on a task
#: whose steps are expensive, the first challengers still run: each costs at most the first racer).
LR_RACE_MIN_RACERS = 3.0
#: A smaller lr must reach the level in this fraction of the best steps to win (a larger one only
#: needs fewer steps).
LR_RACE_MARGIN = 0.9


def _race_lr(task: Task, device: Any, batch_size: int, start_lr: float, level: float,
             schedule: _PilotSchedule, seconds: float, max_steps: int | None,
             first: PilotRun | None = None, clear_up: bool = False) -> tuple[PilotRun, list[dict[str, Any]]]:
    """Which lr to train ``batch_size`` with: ``start_lr`` or it ×/÷ LR_RACE_STEP, up to LR_RACE_ROUNDS times.

    Each racer trains until it reaches ``level``. Going up, a larger lr wins when it reaches the
    level in fewer steps than the best so far. The race is short, and its bias cuts both ways: at a
    large batch a larger lr pays off more by the target than early (measured on the built-in
    tasks' ground truths), at a small batch its higher noise floor can stall it near the target;
    so a larger lr must need fewer steps to win (clearly fewer with ``clear_up``, at the base
    batch). If the first step up loses, the lr goes down while each step down is clearly faster.
    Clearly: by more than the validations can resolve (:func:`_clear_margin`). A racer is
    cut once it can no longer win, so each challenger costs at most what the first racer did; the
    race takes ``seconds`` or LR_RACE_MIN_RACERS × the first racer's time, whichever is longer.
    ``first``: a run at ``start_lr`` made already (pilot A, which ran past the level); the race then
    takes ``seconds``. Returns the winning run and every racer's record (the winner's marked
    ``won``).
    """
    started = time.perf_counter()
    if first is None:
        leader = _level_run(task, device, batch_size, start_lr, level, schedule, seconds, max_steps)
        budget = max(seconds, LR_RACE_MIN_RACERS * leader.wall_seconds)
    else:
        leader, budget = first, seconds
    best_steps = _steps_to(task, leader, level)

    def left() -> float:
        return budget - (time.perf_counter() - started)

    records = [_race_record(leader, start_lr, best_steps)]
    clear = _clear_margin(schedule, batch_size)
    for direction, allowance in ((LR_RACE_STEP, clear if clear_up else 1.0), (1.0 / LR_RACE_STEP, clear)):
        moved = False
        lr = leader.lr
        for _ in range(LR_RACE_ROUNDS):
            lr *= direction
            if left() <= 0.05 * seconds:
                break
            cap = max_steps if math.isinf(best_steps) else math.ceil(allowance * best_steps)
            challenger = _level_run(task, device, batch_size, lr, level, schedule, left(), cap)
            steps = _steps_to(task, challenger, level)
            records.append(_race_record(challenger, start_lr, steps))
            if challenger.diverged and leader.diverged and direction < 1.0:
                continue  # still above the stability limit: keep halving
            if not steps < allowance * best_steps:
                break
            leader, best_steps, moved = challenger, min(best_steps, steps), True
        if moved:  # the lr went up: no need to look down
            break
    for record in records:
        record["won"] = record["lr"] == leader.lr and not leader.diverged
    return leader, records


def _clear_margin(schedule: _PilotSchedule | None, batch_size: int) -> float:
    """Step ratio below which a racer is clearly faster: LR_RACE_MARGIN, or finer than the
    validations resolve. Pilots validate on a geometric schedule (steps × eval_growth), so a
    level crossing is placed within one such interval; a smaller gain may be where it fell."""
    if schedule is None:
        return LR_RACE_MARGIN
    return min(LR_RACE_MARGIN, 1.0 / schedule.eval_growth(batch_size))


def _best_level(task: Task, run: PilotRun) -> float:
    """The best validation metric ``run`` reached (NaN if none was finite)."""
    return _best(run.steps_and_metrics()[1], task.higher_is_better)


def _race_base_lr(task: Task, device: Any, pilot_a: PilotRun,
                  schedule: _PilotSchedule) -> tuple[PilotRun, list[dict[str, Any]]]:
    """Race learning rates at the base batch against pilot A, to the best level pilot A reached.

    The user's base lr is a guess as often as the batch size is: a racer ×2 (and on) or ÷2 that
    reaches pilot A's level in clearly fewer steps (:func:`_clear_margin`) becomes the anchor of
    the plan. Clearly, in both directions: at the base batch the steps to an early level are often
    flat over a 4-8× range of lrs (gradient noise cancels what a larger lr gains), and near the
    target the larger lr's higher noise floor costs steps the race cannot see (digits-mlp's
    ground truth: flat race over 0.02-0.08, best lr for the target 0.01-0.02). Each challenger
    costs at most what pilot A needed for that level; the race takes up to two pilots' time.
    Returns the winner (pilot A itself when it stays) and the records.
    """
    level = _best_level(task, pilot_a)
    steps_a = _steps_to(task, pilot_a, level)
    if math.isinf(steps_a) or pilot_a.diverged:
        return pilot_a, []
    return _race_lr(task, device, pilot_a.batch_size, pilot_a.lr, level, schedule,
                    2.0 * schedule.seconds, math.ceil(steps_a), first=pilot_a, clear_up=True)


def _diverged_lr(race: list[dict[str, Any]]) -> float | None:
    return min((r["lr"] for r in race if r["diverged"]), default=None)


def _lr_calibration(task: Task, race_winner: tuple[int, float] | None, b_noise: float,
                    diverged_lr: float | None) -> plan.LrCalibration | None:
    """The race winner's lr ÷ the lr the rule gives at that batch, with ``b_noise`` where it raced."""
    if race_winner is None:  # no usable pilot B: keep only what divergence taught
        if diverged_lr is None:
            return None
        return plan.LrCalibration(task.base_batch_size, task.base_batch_size, 1.0, diverged_lr)
    batch_size, lr = race_winner
    rule_lr = plan.scaled_lr(batch_size, task.base_batch_size, task.base_lr, task.resolved_lr_scaling(),
                             b_noise)
    return plan.LrCalibration(min(task.base_batch_size, batch_size), batch_size, lr / rule_lr,
                              diverged_lr)


def _race_record(run: PilotRun, start_lr: float, steps: float) -> dict[str, Any]:
    return {"batch_size": run.batch_size, "lr": run.lr, "lr_factor_vs_start": run.lr / start_lr,
            "steps_to_level": None if math.isinf(steps) else steps, "steps_run": run.steps,
            "diverged": run.diverged,
            "seconds": run.wall_seconds}


def _level_run(task: Task, device: Any, batch_size: int, lr: float, level: float,
               schedule: _PilotSchedule, seconds: float, max_steps: int | None = None) -> PilotRun:
    """Train at (batch_size, lr) until ``level`` is reached, ``max_steps`` or ``seconds`` pass."""
    kwargs = schedule.train_kwargs(batch_size, seconds)
    if max_steps is not None:
        kwargs["max_samples"] = max_steps * batch_size
    start = time.perf_counter()
    result = train(task, batch_size, lr, device=device, hooks=[_StopAtLevel(task, level)], **kwargs)
    return PilotRun.from_result(result, time.perf_counter() - start)


def _steps_to(task: Task, run: PilotRun, level: float) -> float:
    """Steps ``run`` needed to reach ``level`` (interpolated between validations); inf if never."""
    steps, metrics = run.steps_and_metrics()
    reached = curves.steps_to_level(steps, metrics, level, task.higher_is_better)
    return float(reached) if reached is not None and reached > 0 else math.inf


def _best(metrics: list[float], higher_is_better: bool) -> float:
    finite = [m for m in metrics if math.isfinite(m)]
    if not finite:
        return math.nan
    return max(finite) if higher_is_better else min(finite)


@dataclass
class FittedPlan:
    s_min: float
    #: The noise scale averaged over the run (what S(B) and the lr rule use).
    b_noise: float
    steps_at_pilot: float
    extrapolated: bool
    noise: NoiseSummary
    #: The calibrated noise scale at the level the lr races ran to (the pilots' B_crit), when the
    #: noise-scale growth was measured; None otherwise.
    b_noise_at_race: float | None = None


def fit_plan_parameters(task: Task, pilot_a: PilotRun, pilot_b: PilotRun | None,
                        noise: NoiseSummary, base_racer: PilotRun | None = None) -> FittedPlan:
    """S_min and the effective B_noise from the pilots and the noise trajectory.

    ``base_racer``: a run at the base batch with a better lr than pilot A's (it stopped at pilot A's
    best level). Steps to target at the base batch are then pilot A's × the ratio of the racer's
    steps to pilot A's for that level, and the critical batch is measured between the racer and
    pilot B. Pilot A's step axis still places B_simple's growth (B_simple follows the training
    state, not the lr).
    """
    steps_a, metrics_a = pilot_a.steps_and_metrics()
    to_target = curves.extrapolate_steps_to_target(steps_a, metrics_a, task.target, task.higher_is_better)
    total_steps = to_target.steps if to_target.reachable else task.max_samples / pilot_a.batch_size
    small = base_racer or pilot_a
    b_crit, level_step = _critical_batch(task, small, pilot_b)
    step_ratio = 1.0  # the racer's steps ÷ pilot A's, for the same level
    if base_racer is not None:
        level = _best_level(task, pilot_a)
        at_a, at_racer = _steps_to(task, pilot_a, level), _steps_to(task, base_racer, level)
        if math.isfinite(at_a) and math.isfinite(at_racer):
            step_ratio = at_racer / at_a
        if level_step is not None:
            level_step /= step_ratio  # in pilot A's steps
    growth = (
        curves.PowerLaw(noise.growth_scale, noise.growth_exponent)
        if noise.growth_scale is not None and noise.growth_exponent is not None
        else None
    )
    b_noise, calibration, method = _effective_noise(b_crit, level_step, growth, noise.b_simple,
                                                    total_steps, small, pilot_b)
    noise.b_crit_pilot = b_crit
    noise.calibration = calibration
    noise.b_noise = b_noise
    noise.method = method
    s_min = step_ratio * total_steps / (1.0 + b_noise / small.batch_size)
    at_race = calibration * growth(level_step) if calibration is not None and growth and level_step else None
    return FittedPlan(s_min, b_noise, step_ratio * total_steps, to_target.extrapolated, noise, at_race)


def _critical_batch(task: Task, small: PilotRun,
                    large: PilotRun | None) -> tuple[float | None, float | None]:
    """B_crit from the steps both runs needed for the best level both reached, and ``small``'s steps."""
    if large is None or not large.history:
        return None, None
    best_small, best_large = _best_level(task, small), _best_level(task, large)
    if not (math.isfinite(best_small) and math.isfinite(best_large)):
        return None, None
    level = min(best_small, best_large) if task.higher_is_better else max(best_small, best_large)
    at_small, at_large = _steps_to(task, small, level), _steps_to(task, large, level)
    if math.isinf(at_small) or math.isinf(at_large):
        return None, None
    b_crit = curves.critical_batch_from_two_runs(small.batch_size, at_small, large.batch_size, at_large)
    return b_crit, at_small


#: ``NoiseSummary.method`` where the plan's noise scale extrapolates B_simple's measured growth.
NOISE_FROM_GROWTH = "pilot-calibrated B_simple, averaged over the run"


def _effective_noise(
    b_crit: float | None,
    level_step: float | None,
    growth: curves.PowerLaw | None,
    b_simple: float | None,
    total_steps: float,
    pilot_a: PilotRun,
    pilot_b: PilotRun | None,
) -> tuple[float, float | None, str]:
    """The noise scale the plan uses, with how it was obtained.

    Preferred: B_crit measured by the two pilots calibrates B_simple's level, and B_simple's growth
    carries it over the whole run. Fallbacks, each named in ``method``: calibration without growth;
    B_crit alone; raw B_simple (uncalibrated, known to over-estimate).
    """
    if b_crit is not None and math.isinf(b_crit) and pilot_b is not None:
        # Perfect scaling up to pilot B's batch: B_crit is at least several times that batch.
        b_crit = float(pilot_b.batch_size) * PILOT_BATCH_FACTOR
    if b_crit is not None and growth is not None and level_step is not None:
        b_simple_at_level = growth(level_step)
        calibration = b_crit / b_simple_at_level if b_simple_at_level > 0 else None
        if calibration is not None:
            return (calibration * curves.effective_noise_scale(growth, total_steps), calibration,
                    NOISE_FROM_GROWTH)
    if b_crit is not None:
        return b_crit, None, "critical batch from two pilots, no noise-scale growth measured"
    if b_simple is not None and math.isfinite(b_simple) and b_simple > 0:
        return b_simple, None, "uncalibrated B_simple: no second pilot fitted in memory"
    return float(pilot_a.batch_size), None, "no usable noise measurement: assumed B_noise = base batch"


def explain(rec: Recommendation, ceiling: int, base_batch_size: int) -> str:
    """One paragraph in plain words, every number taken from the measurements."""
    r = rec.recommended
    parts = [
        f"Recommended batch size {r['batch_size']} at lr {r['lr']:.3g}"
        + (f" with {r['warmup_steps']} warmup steps" if r["warmup_steps"] else "")
        + f": predicted {r['predicted_seconds']:.1f} s of training to reach "
        f"{rec.metric_name} {'≥' if rec.higher_is_better else '≤'} {rec.target:g}."
    ]
    parts.append(
        f"The gradient noise scale of this run is about {rec.b_noise:.0f} samples "
        f"[{rec.noise_scale.method}]; below it, each step is limited by gradient noise and "
        "halving the batch almost doubles the steps needed, above it extra samples per step are "
        "mostly wasted."
    )
    anchor = rec.anchor
    if anchor["lr"] != anchor["task_base_lr"]:
        parts.append(
            f"At the base batch {anchor['batch_size']}, lr {anchor['lr']:.3g} reached the first pilot's "
            f"level in fewer steps than the task's lr {anchor['task_base_lr']:.3g}, so the plan is "
            "anchored there."
        )
    else:
        unresolved = unresolved_base_race(rec)
        if unresolved is not None:
            lrs, cut_at, pilot_steps = unresolved
            parts.append(
                f"At the base batch {anchor['batch_size']} the lr race could not tell: the racers at lr "
                f"{', '.join(f'{lr:.3g}' for lr in lrs)} had not reached the first pilot's level when "
                f"cut at {cut_at} steps, where the pilot needed {pilot_steps:.0f}. The lr "
                f"{anchor['lr']:.3g} there is the task's, not a measured best: a racer less than "
                f"{pilot_steps / cut_at:.2g}× faster would not have shown."
            )
    shift, at_race = anchor.get("noise_shift", 1.0), anchor.get("b_noise_at_race")
    if at_race is not None and abs(shift - 1.0) > 0.01:
        parts.append(
            f"The lr races ran early in training, where the noise scale was about {at_race:.0f}; "
            f"over the whole run it averages about {rec.b_noise:.0f}, and the best lr falls as the "
            f"noise grows, so the plan's lr is {shift:.2g}× the raced one."
        )
    calibration = rec.lr_calibration
    if calibration is not None and abs(math.log2(calibration["factor"])) > 0.01:
        parts.append(
            f"A short lr race at B={calibration['batch_size']} found {calibration['factor']:.3g}× the "
            "rule's learning rate fastest, so the lr of larger batches is scaled by that much."
        )
    flat = _near_optimal_range(rec)
    if flat is not None:
        parts.append(
            f"Batch sizes {flat[0]}–{flat[1]} are all predicted within {NEAR_OPTIMAL:.0%} of the fastest: "
            "the optimum is flat there, and the pick within it rests on short, noisy pilots."
        )
    saturating = _throughput_saturation(rec.throughput)
    if saturating is not None:
        parts.append(
            f"The hardware's throughput stops growing much beyond B≈{saturating} "
            "(samples per second flatten), so larger batches buy little speed per sample."
        )
    if r["accumulation_steps"] > 1:
        parts.append(
            f"The memory ceiling is B={ceiling}, so run it as {r['accumulation_steps']} "
            f"accumulated micro-batches of {r['micro_batch_size']} (mixed precision or activation "
            "checkpointing would raise the ceiling)."
        )
    else:
        parts.append(f"It fits in memory (ceiling B={ceiling}).")
    baseline = rec.candidate(32) or rec.candidate(base_batch_size)
    if baseline is not None and baseline.batch_size != r["batch_size"] and r["predicted_seconds"] > 0:
        parts.append(
            f"That is {baseline.predicted_seconds / r['predicted_seconds']:.1f}× faster than "
            f"B={baseline.batch_size} ({baseline.predicted_seconds:.1f} s predicted)."
        )
    if rec.extrapolated:
        parts.append(_extrapolation_sentence(rec))
    subset = rec.pilot_validation
    if subset is not None:
        parts.append(
            f"A full validation pass took {subset['full_pass_seconds']:.2g} s, more than the pilots' "
            f"share of time allows, so they validated on a fixed random {subset['samples']} of the "
            f"{subset['of']} validation samples ({subset['subset_pass_seconds']:.2g} s a pass)."
        )
    parts.append(f"Deciding took {rec.decision_seconds:.1f} s.")
    return " ".join(parts)


def unresolved_base_race(rec: Recommendation) -> tuple[list[float], int, float] | None:
    """(challenger lrs, steps they were cut at, pilot A's steps) when the base-batch lr race judged nothing.

    That is when every challenger was cut before reaching pilot A's level without diverging: the
    race's margin (what the pilots' validations resolve) asked for more than any of them showed
    in its steps, so the anchor's lr is the task's by default. None when the race decided
    something, or did not run.
    """
    base = rec.anchor["batch_size"]
    racers = [r for r in rec.lr_race if r["batch_size"] == base]
    leader = next((r for r in racers if r["won"]), None)
    challengers = [r for r in racers if not r["won"]]
    if leader is None or leader["steps_to_level"] is None or not challengers:
        return None
    if any(r["steps_to_level"] is not None or r["diverged"] for r in challengers):
        return None
    cut_at = max(r["steps_run"] for r in challengers)
    if cut_at <= 0 or cut_at >= leader["steps_to_level"]:
        return None  # ran as long as the pilot and still slower: that is a judgement
    return [r["lr"] for r in challengers], cut_at, float(leader["steps_to_level"])


def pilot_coverage(rec: Recommendation) -> float | None:
    """How much of the way from its first validation to the target the first pilot's best one got.

    In the metric's own units (a loss's last stretch takes the most steps, so this overstates how
    much of the run the pilot saw). None where the pilot has no usable validations.
    """
    if not rec.pilots:
        return None
    metrics = [m for m in rec.pilots[0].steps_and_metrics()[1] if math.isfinite(m)]
    if len(metrics) < 2:
        return None
    first, best = metrics[0], _best(metrics, rec.higher_is_better)
    if first == rec.target:
        return 1.0
    return max(0.0, min(1.0, (best - first) / (rec.target - first)))


def _extrapolation_sentence(rec: Recommendation) -> str:
    sentence = ("The pilot did not reach the target, so steps to target were extrapolated from the "
                "validation trend; treat the predicted times as estimates.")
    coverage = pilot_coverage(rec)
    if coverage is None:
        return sentence
    grown = rec.noise_scale.method == NOISE_FROM_GROWTH
    return sentence + (
        f" The first pilot got {coverage:.0%} of the way from its first validation to the target "
        f"(in {rec.metric_name}; the last stretch takes the most steps) in {rec.pilots[0].steps} steps"
        + ("; the noise scale's growth, and with it the lr shift and the critical batch, is "
           "extrapolated the rest of the way" if grown else "")
        + "; a larger budget (--budget-seconds) lets the pilots see more of the run "
        "(docs/groundtruth.md, decision budget)."
    )


#: The explanation names the batch sizes predicted within this fraction of the fastest.
NEAR_OPTIMAL = 0.10


def _near_optimal_range(rec: Recommendation) -> tuple[int, int] | None:
    """Smallest and largest B predicted within NEAR_OPTIMAL of the fastest, if more than one is."""
    finite = [c for c in rec.candidates if math.isfinite(c.predicted_seconds)]
    if not finite:
        return None
    fastest = min(c.predicted_seconds for c in finite)
    near = sorted(c.batch_size for c in finite if c.predicted_seconds <= fastest * (1.0 + NEAR_OPTIMAL))
    return (near[0], near[-1]) if len(near) > 1 else None


def _throughput_saturation(points: list[dict[str, Any]], gain: float = 1.25) -> int | None:
    """Smallest measured B after which doubling-ish the batch adds < (gain−1) samples/s."""
    for current, following in itertools.pairwise(points):
        if following["samples_per_second"] < gain * current["samples_per_second"]:
            return int(current["batch_size"])
    return None

