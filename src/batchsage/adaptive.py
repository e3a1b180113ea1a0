"""Grow the batch during training as the gradient noise scale grows.

The noise scale ``B_noise`` grows as the loss falls (McCandlish et al. 2018; ≥ 10× over a run),
so a batch that is right at the start is too small at the end. Growing the batch with it does
what a learning-rate decay does, in fewer steps (Smith et al. 2018, "Don't Decay the Learning
Rate, Increase the Batch Size"; Pollux, Qiao et al. 2021).

:class:`AdaptiveBatch` is a :class:`~batchsage.engine.TrainingHook` that owns a
:class:`~batchsage.noise.NoiseScaleMonitor`. Every few new noise measurements it reads the
current estimate, calibrates it (``B_noise = calibration · B_simple``: B_simple is off the
critical batch by a task-dependent factor, DESIGN.md pitfalls; 1.0 unless a Recommendation
measured it) and re-plans:

- grow only, one step of ``growth_factor`` (default ×2) at a time, never beyond the data set;
- hysteresis: grow only when the *lower* end of the 95 % interval of the calibrated noise scale
  says the larger batch is better, so estimation noise never triggers a change;
- "better" is the planner's rule: with a step-time model ``t(B)`` (from a throughput probe or a
  :class:`~batchsage.decide.Recommendation`), the larger batch must cut the predicted time per
  unit of progress, ``t(B)·(1 + B_noise/B)``, by more than ``tolerance``; without one, the batch
  follows the critical batch: grow while B_noise is above the current batch (below B_noise a step
  is limited by gradient noise, and a larger batch buys almost proportionally fewer steps);
- the estimate is recent: the measurements since half the steps so far (:func:`recent_estimate`),
  as the noise scale grows roughly as a power of the step;
- above the memory ceiling the batch runs as micro-batches × accumulation
  (:func:`plan.split_for_memory`);
- the learning rate follows the recommender's rule :func:`plan.scaled_lr` with the current noise
  estimate, relating the new batch to the batch and lr in use; optionally ramped over
  ``rewarmup_steps``;
- a raise of the lr that makes the training loss climb is undone and the lr is capped there for
  the rest of the run: it hit the stability limit (≈ 2/λ_max for SGD), which the noise scale
  cannot see. The larger batch is kept and the batch goes on growing with the noise scale at the
  capped lr: at a fixed lr a larger batch only lowers the gradient noise, which is what "increase
  the batch size instead of decaying the lr" (Smith et al. 2018) relies on;
- the monitor starts measuring only after ``2·(m − 1)/budget`` steps, and deciding stays within
  1 % of the training time, so short runs pay nothing and long ones a bounded share.

Nothing is recompiled or restarted: the shared loop accepts a new batch size, accumulation and lr
between steps, and its data stream never repeats a sample before every other one was seen.

In a plain PyTorch loop use :class:`AdaptiveBatchSampler` (a ``batch_sampler`` for ``DataLoader``)
or :class:`AdaptiveBatchLoader`, with ``adaptive.backward(...)`` and ``adaptive.step(optimizer)``::

    adaptive = AdaptiveBatch(64, 0.05, dataset_size=len(train_set), max_batch_size=512)
    for epoch in range(10):
        for batch in AdaptiveBatchLoader(train_set, adaptive, seed=epoch):
            optimizer.zero_grad()
            adaptive.backward(model, batch, loss_fn)   # accumulation + noise measurement
            adaptive.step(optimizer)                   # optimiser step, then lr and batch updates
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sized
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from batchsage import plan
from batchsage.data import batch_len, gather
from batchsage.engine import (
    StepUpdate,
    TrainingHook,
    TrainResult,
    TrainState,
    accumulate_gradients,
    train,
)
from batchsage.errors import ConfigError

if TYPE_CHECKING:
    from batchsage.decide import Recommendation
    from batchsage.task import LossFn, Task

#: Calibration used without a Recommendation: B_noise = B_simple. McCandlish et al. (2018) find
#: B_crit ≈ B_simple up to a task-dependent factor (B_simple over-estimates on their classifiers,
#: under-estimates elsewhere); only pilots can measure the factor, which ``from_recommendation`` does.
DEFAULT_CALIBRATION = 1.0
#: Each change multiplies the batch by this (powers of two, as the seeds' doubling procedure).
DEFAULT_GROWTH_FACTOR = 2.0
#: New noise measurements between two decisions: the estimate must have moved before we look again.
DEFAULT_MEASUREMENTS_PER_DECISION = 4
#: The monitor's overhead budget: decisions need measurements often enough to follow the growth.
DEFAULT_MONITOR_OVERHEAD = 0.1
#: Training losses kept to compare before and after an lr raise.
LOSS_WINDOW = 16
#: The guard looks at the median of this many losses since the raise ...
GUARD_LOSSES = 5
#: ... and calls the raise unstable when that median is this many times the largest of the
#: LOSS_WINDOW losses before it (the largest, not the median: a loss near zero fluctuates by
#: factors from batch to batch, and those fluctuations must not look like a climb).
#: The lr rule assumes the lr stays below the stability limit (≈ 2/λ_max for SGD), which the noise
#: scale cannot see; a raise past it makes the loss grow geometrically, far beyond this factor
#: within a few steps, while a stable raise after a larger batch lowers the loss. An lr that cannot
#: rise has reached the stability limit, whatever the batch: the lr is capped there, and the batch
#: may still grow (it lowers the noise at that lr and never destabilises it).
GUARD_FACTOR = 2.0
#: Micro-batches of a measured step of the controller's monitor (the monitor's default, ≥ 8 keeps
#: the per-step estimate stable, DESIGN.md pitfalls).
DEFAULT_MONITOR_MICRO_BATCHES = 8
#: See ``AdaptiveBatch(measure_after_steps=...)``.
DEFAULT_MEASURE_AFTER_STEPS = math.ceil(2 * (DEFAULT_MONITOR_MICRO_BATCHES - 1) / DEFAULT_MONITOR_OVERHEAD)
#: The estimate at step s averages the measurements since step RECENT_FRACTION · s. The noise scale
#: grows roughly as a power of the step, so a window proportional to the step lags by a constant
#: factor (2^β for growth ∝ s^β), where a window of a fixed count of measurements would lag more and
#: more as measurements thin out, and an average over the whole run would lag behind ever more.
RECENT_FRACTION = 0.5
#: Fewer measurements than this in the window: take the latest this many instead.
MIN_RECENT_MEASUREMENTS = 4
#: At most this many (the latest) measurements in the window: bounds one decision's bootstrap.
MAX_RECENT_MEASUREMENTS = 256
#: Deciding (a bootstrap over the window) may take at most this fraction of the training seconds so
#: far; where the monitor measures nearly every step, this, not the measurement count, spaces the
#: decisions, so their total cost stays proportional to the run instead of growing faster.
DECISION_BUDGET = 0.01


@dataclass(frozen=True)
class ScheduleEntry:
    """One batch-size setting of the schedule, from ``step`` (optimiser steps done) on."""

    step: int
    samples: int
    batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    lr: float
    b_noise: float | None
    b_noise_ci95: tuple[float, float] | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["b_noise_ci95"] = list(self.b_noise_ci95) if self.b_noise_ci95 is not None else None
        return data


@dataclass(frozen=True)
class NoiseReading:
    """What the controller read at a decision: B_simple, its calibrated B_noise and interval."""

    step: int
    samples: int
    batch_size: int
    b_simple: float
    b_noise: float
    b_noise_low: float
    b_noise_high: float
    grew: bool
    seconds: float = 0.0  #: what reading the estimate and deciding took (outside the loop's step clock)


class AdaptiveBatch(TrainingHook):
    """Grows the batch (and rescales the lr) as the measured gradient noise scale grows.

    Args:
        batch_size: global batch to start from.
        lr: learning rate to start from.
        lr_scaling: "linear" (SGD-like) or "sqrt" (Adam-like), as :func:`plan.scaled_lr`.
        base_batch_size, base_lr: a fixed anchor for the lr rule. Default: the batch and lr in use
            at each change, since the rule relates two batch sizes at one noise scale, and the
            noise scale at the start no longer holds later.
        max_batch_size: memory ceiling of one micro-batch; larger batches use accumulation
            (None: no ceiling).
        dataset_size: the batch never grows beyond this (a step would repeat samples).
        calibration: B_noise = calibration · B_simple (default :data:`DEFAULT_CALIBRATION`).
        monitor: the noise monitor the controller drives (default: a new NoiseScaleMonitor);
            pass only the controller in ``hooks``, never the monitor as well. Any TrainingHook
            with a ``measurements`` count and either ``statistics.measurements`` (the raw
            measurements, see :func:`recent_estimate`) or ``estimate()`` will do.
        step_seconds: ``t(micro_batch)`` in seconds, e.g. from a throughput probe; enables the
            time rule, otherwise the batch follows the critical batch.
        growth_factor: each change multiplies the batch by this (≥ 1.5).
        measurements_per_decision: new noise measurements between decisions.
        rewarmup_steps: ramp the lr linearly to its new value over this many steps after a change.
        tolerance: with ``step_seconds``, the predicted gain a change must exceed (fraction).
        measure_after_steps: the monitor starts measuring after this many steps. Default with the
            controller's own monitor: ``2·(m − 1)/budget`` for m micro-batches and its overhead
            budget, so that its first measurements (each may cost m plain steps on a model whose
            step is all fixed overhead) stay within the budget however short the run; 0 with a
            monitor passed in. The start is the least useful time to measure: the starting batch
            is taken as right for the start, and decisions use only the recent measurements.
    """

    def __init__(
        self,
        batch_size: int,
        lr: float,
        *,
        lr_scaling: plan.LrScaling = "linear",
        base_batch_size: int | None = None,
        base_lr: float | None = None,
        max_batch_size: int | None = None,
        dataset_size: int | None = None,
        calibration: float | None = None,
        monitor: Any = None,
        step_seconds: Callable[[int], float] | None = None,
        growth_factor: float = DEFAULT_GROWTH_FACTOR,
        measurements_per_decision: int = DEFAULT_MEASUREMENTS_PER_DECISION,
        rewarmup_steps: int = 0,
        tolerance: float = 0.03,
        measure_after_steps: int | None = None,
    ) -> None:
        _check_positive_int("batch_size", batch_size)
        _check_positive_number("lr", lr)
        for name, value in (("base_batch_size", base_batch_size), ("max_batch_size", max_batch_size),
                            ("dataset_size", dataset_size)):
            if value is not None:
                _check_positive_int(name, value)
        if base_lr is not None:
            _check_positive_number("base_lr", base_lr)
        if calibration is not None:
            _check_positive_number("calibration", calibration)
        if lr_scaling not in ("linear", "sqrt"):
            raise ConfigError(f"lr_scaling must be 'linear' or 'sqrt', got {lr_scaling!r}")
        if not isinstance(growth_factor, int | float) or not growth_factor >= 1.5:
            raise ConfigError(f"growth_factor must be a number ≥ 1.5, got {growth_factor!r}")
        _check_positive_int("measurements_per_decision", measurements_per_decision)
        if measure_after_steps is not None:
            _check_non_negative_int("measure_after_steps", measure_after_steps)
        _check_non_negative_int("rewarmup_steps", rewarmup_steps)
        if not isinstance(tolerance, int | float) or not 0.0 <= tolerance < 1.0:
            raise ConfigError(f"tolerance must be a fraction in [0, 1), got {tolerance!r}")
        if dataset_size is not None and batch_size > dataset_size:
            raise ConfigError(f"batch_size {batch_size} exceeds dataset_size {dataset_size}")

        self.lr_scaling: plan.LrScaling = lr_scaling
        self.base_batch_size = base_batch_size
        self.base_lr = base_lr
        self.max_batch_size = max_batch_size
        self.dataset_size = dataset_size
        self.calibration = float(calibration) if calibration is not None else DEFAULT_CALIBRATION
        self.monitor = monitor if monitor is not None else _default_monitor()
        if measure_after_steps is None:
            measure_after_steps = 0 if monitor is not None else DEFAULT_MEASURE_AFTER_STEPS
        self.measure_after_steps = measure_after_steps
        self._monitoring = False
        self.step_seconds = step_seconds
        self.growth_factor = float(growth_factor)
        self.measurements_per_decision = measurements_per_decision
        self.rewarmup_steps = rewarmup_steps
        self.tolerance = float(tolerance)

        self.batch_size = batch_size
        self.micro_batch_size, self.accumulation_steps = self._split(batch_size)
        self.lr = float(lr)  # the rule's lr for the current batch (the ramp's end)
        self.current_lr = float(lr)  # what the next step uses (differs during a ramp)
        self._ramp: tuple[int, float, float] | None = None  # (start step, from lr, to lr)
        self._losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        #: After an lr raise: (largest recent loss before it, lr before, losses since).
        self._guard: tuple[float, float, int] | None = None
        #: The largest lr known to be stable: a raise above it made the loss climb (None until then).
        self.lr_cap: float | None = None
        self._next_decision = measurements_per_decision
        #: Seconds spent deciding (reading the estimate and its interval); the training loop's step
        #: clock does not include hooks, so this is the controller's overhead on top of the monitor's.
        self.decision_seconds = 0.0
        self.readings: list[NoiseReading] = []
        self.schedule: list[ScheduleEntry] = [
            ScheduleEntry(0, 0, batch_size, self.micro_batch_size, self.accumulation_steps, self.lr,
                          None, None, "start")
        ]
        self._plain: _PlainLoopState | None = None

    # ---- constructors -----------------------------------------------------------------------

    @classmethod
    def for_task(cls, task: Task, batch_size: int | None = None, lr: float | None = None,
                 **options: Any) -> AdaptiveBatch:
        """A controller for ``task``: its lr rule and data-set size; start at its base (B, lr)."""
        options.setdefault("lr_scaling", task.resolved_lr_scaling())
        options.setdefault("dataset_size", task.num_train_samples)
        return cls(batch_size or task.base_batch_size, lr or task.base_lr, **options)

    @classmethod
    def from_recommendation(cls, rec: Recommendation, task: Task, **options: Any) -> AdaptiveBatch:
        """Start at the recommended (B, lr), with its calibration, memory ceiling and t(B).

        The recommender measured how far B_simple is from the critical batch on this task
        (``rec.noise_scale.calibration``); the controller uses the same factor.
        """
        if rec.noise_scale.calibration is not None:
            options.setdefault("calibration", rec.noise_scale.calibration)
        ceiling = rec.memory.get("max_batch_size")
        if ceiling:
            options.setdefault("max_batch_size", int(ceiling))
        if rec.throughput:
            from batchsage.probe.throughput import ThroughputCurve, ThroughputPoint

            points = [ThroughputPoint(p["batch_size"], p["step_seconds_median"], p["samples_per_second"])
                      for p in rec.throughput]
            options.setdefault("step_seconds", ThroughputCurve(points).step_seconds)
        return cls.for_task(task, rec.batch_size, rec.lr, **options)

    # ---- running ----------------------------------------------------------------------------

    def train(self, task: Task, **train_options: Any) -> TrainResult:
        """Run :func:`batchsage.engine.train` from this controller's start (one run per controller).

        ``train_options`` go to ``train`` (device, seed, max_samples, max_seconds, hooks...).
        """
        hooks = [self, *train_options.pop("hooks", ())]
        return train(task, self.batch_size, self.current_lr, accumulation_steps=self.accumulation_steps,
                     hooks=hooks, **train_options)

    def describe(self) -> str:
        """One line: the batch sizes the run went through, with the noise scale that moved them."""
        steps = [f"B={self.schedule[0].batch_size} (lr {self.schedule[0].lr:.3g})"]
        steps += [f"step {e.step}: B={e.batch_size} (lr {e.lr:.3g}, B_noise ≈ {e.b_noise:.0f})"
                  for e in self.schedule[1:]]
        if len(steps) == 1:
            last = self.readings[-1] if self.readings else None
            noise = f", last B_noise ≈ {last.b_noise:.0f}" if last else ", no noise estimate yet"
            return f"adaptive batch: stayed at {steps[0]}{noise}"
        capped = (f" (lr capped at {self.lr_cap:.3g}: a raise above it made the loss climb)"
                  if self.lr_cap else "")
        return "adaptive batch: " + " → ".join(steps) + capped

    def schedule_dicts(self) -> list[dict[str, Any]]:
        """The schedule as JSON-ready dicts (``step``, ``batch_size``, ``lr``, ``b_noise``, ...)."""
        return [entry.to_dict() for entry in self.schedule]

    # ---- TrainingHook: forward to the monitor, decide after the step ------------------------

    def micro_batches(self, state: TrainState, accumulation_steps: int) -> int:
        # The monitor sees only the steps from measure_after_steps on (its step count starts there).
        self._monitoring = state.step >= self.measure_after_steps
        if not self._monitoring:
            return accumulation_steps
        return max(accumulation_steps, self.monitor.micro_batches(state, accumulation_steps))

    def on_micro_backward(self, model: nn.Module, index: int, parts: int, batch_size: int) -> None:
        if self._monitoring:
            self.monitor.on_micro_backward(model, index, parts, batch_size)

    def on_gradients(self, model: nn.Module, state: TrainState, loss: float) -> None:
        if self._monitoring:
            self.monitor.on_gradients(model, state, loss)

    def on_eval(self, state: TrainState, metric: float) -> None:
        self.monitor.on_eval(state, metric)

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        monitor_update = self.monitor.on_step_end(state) if self._monitoring else None
        guard_update = self._watch_loss(state)
        if guard_update is not None:
            return guard_update
        ramping = self._ramp is not None  # no decision until a step has run at the ramp's end
        update = self._advance_ramp(state.step)
        affordable = self.decision_seconds <= DECISION_BUDGET * state.train_seconds
        if (not ramping and affordable
                and self.monitor.measurements >= self._next_decision):
            self._next_decision = self.monitor.measurements + self.measurements_per_decision
            started = time.perf_counter()
            update = self._decide(state) or update
            self.decision_seconds += time.perf_counter() - started
            if self.readings and self.readings[-1].step == state.step:
                self.readings[-1] = replace(self.readings[-1], seconds=time.perf_counter() - started)
        if monitor_update is not None and monitor_update.stop:
            update = update or StepUpdate()
            update.stop, update.reason = True, monitor_update.reason
        return update

    # ---- the decision -----------------------------------------------------------------------

    def _decide(self, state: TrainState) -> StepUpdate | None:
        estimate = recent_estimate(self.monitor, state.step - self.measure_after_steps)
        if estimate is None:
            return None
        b_simple, ci95 = estimate
        b_noise = self.calibration * b_simple
        low, high = (self.calibration * bound for bound in ci95)
        new_batch = self._next_batch(low)
        self.readings.append(NoiseReading(state.step, state.samples, self.batch_size, b_simple,
                                          b_noise, low, high, new_batch is not None))
        if new_batch is None:
            return None
        return self._grow(state, new_batch, b_noise, (low, high))

    def _next_batch(self, b_noise_low: float) -> int | None:
        """The next rung if the noise scale's lower bound says it is better, else None."""
        current = self.batch_size
        candidate = round(current * self.growth_factor)
        if self.dataset_size is not None:
            candidate = min(candidate, self.dataset_size)
        if candidate < 1.5 * current:
            return None  # at the data-set size: nothing left to grow into
        if self.step_seconds is None:
            return candidate if b_noise_low > current else None
        now, grown = plan.plan_candidates(
            [current, candidate], s_min=1.0, b_noise=b_noise_low, step_seconds=self.step_seconds,
            max_batch_size=self.max_batch_size or candidate, base_batch_size=current,
            base_lr=self.lr, scaling=self.lr_scaling,
        )
        return candidate if grown.predicted_seconds < (1.0 - self.tolerance) * now.predicted_seconds else None

    def _grow(self, state: TrainState, batch_size: int, b_noise: float,
              ci95: tuple[float, float]) -> StepUpdate:
        anchor_batch, anchor_lr = self.base_batch_size or self.batch_size, self.base_lr or self.lr
        lr = plan.scaled_lr(batch_size, anchor_batch, anchor_lr, self.lr_scaling, b_noise)
        if self.lr_cap is not None:
            lr = min(lr, self.lr_cap)
        self.batch_size = batch_size
        self.micro_batch_size, self.accumulation_steps = self._split(batch_size)
        self.schedule.append(ScheduleEntry(state.step, state.samples, batch_size, self.micro_batch_size,
                                           self.accumulation_steps, lr, b_noise, ci95, "noise scale grew"))
        previous, self.lr = self.current_lr, lr
        raised = lr > previous and bool(self._losses)
        self._guard = (max(self._losses), previous, 0) if raised else None
        if self.rewarmup_steps > 0 and lr > previous:
            self._ramp = (state.step, previous, lr)
            self._advance_ramp(state.step)
        else:
            self.current_lr = lr
        return StepUpdate(batch_size=batch_size, accumulation_steps=self.accumulation_steps,
                          lr=self.current_lr)

    def _watch_loss(self, state: TrainState) -> StepUpdate | None:
        """After an lr raise: if the loss climbs, the lr goes back and is capped there; the batch stays."""
        if not math.isfinite(state.last_loss):
            return None
        self._losses.append(state.last_loss)
        if self._guard is None:
            return None
        before, previous_lr, since = self._guard
        self._guard = (before, previous_lr, since + 1)
        if since + 1 < GUARD_LOSSES:
            return None
        recent = statistics.median(list(self._losses)[-GUARD_LOSSES:])
        if recent <= GUARD_FACTOR * before:
            return None
        self._guard, self._ramp = None, None
        reason = (f"loss rose {recent / before:.1f}× after the lr raise to {self.lr:.3g}: lr back to "
                  f"{previous_lr:.3g} and capped there (stability limit); B={self.batch_size} kept")
        self.lr_cap = self.lr = self.current_lr = previous_lr
        last = self.schedule[-1]
        self.schedule.append(ScheduleEntry(state.step, state.samples, self.batch_size, self.micro_batch_size,
                                           self.accumulation_steps, previous_lr, last.b_noise,
                                           last.b_noise_ci95, reason))
        return StepUpdate(lr=previous_lr)

    def _advance_ramp(self, step: int) -> StepUpdate | None:
        """The ramped lr for the next step, while a re-warmup is running."""
        if self._ramp is None:
            return None
        start, low, high = self._ramp
        fraction = min(1.0, (step - start + 1) / self.rewarmup_steps)
        self.current_lr = low + fraction * (high - low)
        if fraction >= 1.0:
            self._ramp = None
        return StepUpdate(lr=self.current_lr)

    def _split(self, batch_size: int) -> tuple[int, int]:
        if self.max_batch_size is None:
            return batch_size, 1
        return plan.split_for_memory(batch_size, self.max_batch_size)

    # ---- plain PyTorch loop -----------------------------------------------------------------

    def backward(self, model: nn.Module, batch: Any, loss_fn: LossFn) -> float:
        """Backpropagate ``batch``'s mean loss as micro-batches (accumulation, noise measurement).

        Call ``optimizer.zero_grad()`` before, as usual, and :meth:`step` after. Returns the loss.
        """
        plain = self._plain_state()
        plain.started_at = time.perf_counter()
        size = batch_len(batch)
        plain.state.batch_size = size
        parts = min(self.micro_batches(plain.state, self.accumulation_steps), size)

        def callback(index: int, parts: int, micro_size: int) -> None:
            self.on_micro_backward(model, index, parts, micro_size)

        loss = accumulate_gradients(model, batch, loss_fn, parts, callback)
        self.on_gradients(model, plain.state, loss)
        plain.loss, plain.batch_len = loss, size
        return loss

    def step(self, optimizer: torch.optim.Optimizer) -> StepUpdate | None:
        """Set the lr, step the optimiser (skipped on a non-finite loss), then re-plan.

        After it, :attr:`batch_size` (read by the sampler) and :attr:`current_lr` are the next step's.
        """
        plain = self._plain_state()
        _set_lr(optimizer, self.current_lr, plain)
        if math.isfinite(plain.loss):
            optimizer.step()
        state = plain.state
        state.step += 1
        state.samples += plain.batch_len
        state.last_loss = plain.loss
        state.lr = self.current_lr
        if plain.started_at is not None:
            state.train_seconds += time.perf_counter() - plain.started_at
        update = self.on_step_end(state)
        state.batch_size, state.accumulation_steps = self.batch_size, self.accumulation_steps
        return update

    def _plain_state(self) -> _PlainLoopState:
        if self._plain is None:
            self._plain = _PlainLoopState(TrainState(batch_size=self.batch_size,
                                                     accumulation_steps=self.accumulation_steps,
                                                     lr=self.current_lr))
        return self._plain


@dataclass
class _PlainLoopState:
    state: TrainState
    loss: float = math.nan
    batch_len: int = 0
    started_at: float | None = None
    group_ratios: list[float] | None = None


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, plain: _PlainLoopState) -> None:
    """Set every param group's lr, keeping the ratios the groups had at the first step."""
    if plain.group_ratios is None:
        top = max(group["lr"] for group in optimizer.param_groups) or 1.0
        plain.group_ratios = [group["lr"] / top for group in optimizer.param_groups]
    for group, ratio in zip(optimizer.param_groups, plain.group_ratios, strict=True):
        group["lr"] = lr * ratio


class AdaptiveBatchSampler(Sampler[list[int]]):
    """A ``batch_sampler`` whose batch size is read from the controller at every batch.

    One pass is one epoch of a seeded shuffle: every sample once, whatever the batch sizes (the
    last batch holds what is left unless ``drop_last``). Each pass reshuffles. With DataLoader
    workers, batches are sampled ``prefetch_factor`` ahead, so a change lands that much later.

    Args:
        data: the dataset (or its length).
        controller: anything with a ``batch_size`` attribute, normally an :class:`AdaptiveBatch`.
    """

    def __init__(self, data: Sized | int, controller: Any, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        self.size = data if isinstance(data, int) else len(data)
        _check_positive_int("dataset length", self.size)
        self.controller = controller
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=self.generator)
        else:
            order = torch.arange(self.size)
        position = 0
        while position < self.size:
            batch_size = int(self.controller.batch_size)
            if self.drop_last and position + batch_size > self.size:
                return
            yield order[position : position + batch_size].tolist()
            position += batch_size

    def __len__(self) -> int:
        """Batches left in a pass at the current batch size (the size may grow during it)."""
        batch_size = int(self.controller.batch_size)
        return self.size // batch_size if self.drop_last else math.ceil(self.size / batch_size)


class AdaptiveBatchLoader:
    """Iterates over one epoch of ``dataset`` in batches of the controller's current size.

    Like ``DataLoader(dataset, batch_sampler=AdaptiveBatchSampler(...))``, but tensor datasets are
    gathered with one index operation per batch instead of one call per sample.
    """

    def __init__(self, dataset: Dataset, controller: Any, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        self.dataset = dataset
        self.sampler = AdaptiveBatchSampler(dataset, controller, seed=seed, shuffle=shuffle,  # type: ignore[arg-type]
                                            drop_last=drop_last)

    def __iter__(self) -> Iterator[Any]:
        for indices in self.sampler:
            yield gather(self.dataset, torch.tensor(indices, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.sampler)


def recent_estimate(monitor: Any, step: int) -> tuple[float, tuple[float, float]] | None:
    """(B_simple, its 95 % interval) over the monitor's measurements since ``RECENT_FRACTION · step``.

    Uses the monitor's raw measurements (``monitor.statistics.measurements``) when it keeps them, else
    its own ``estimate()``. None while there is no interval (fewer than two measurements).
    """
    from batchsage.noise import bootstrap_ci, ratio_of_means

    stats = getattr(monitor, "statistics", None)
    if stats is None:
        estimate = monitor.estimate()
        if estimate is None or estimate.ci95 is None or math.isnan(estimate.b_simple):
            return None
        return estimate.b_simple, tuple(estimate.ci95)
    measurements = stats.measurements
    recent = [m for m in measurements if m.step >= RECENT_FRACTION * step][-MAX_RECENT_MEASUREMENTS:]
    if len(recent) < MIN_RECENT_MEASUREMENTS:
        recent = measurements[-MIN_RECENT_MEASUREMENTS:]
    trace_sigma = [m.trace_sigma for m in recent]
    grad_norm_sq = [m.grad_norm_sq for m in recent]
    ci95 = bootstrap_ci(trace_sigma, grad_norm_sq, seed=len(measurements))
    if ci95 is None:
        return None
    return ratio_of_means(trace_sigma, grad_norm_sq)[0], ci95


def controller_for_run(task: Task, batch_size: int, lr: float, accumulation_steps: int = 1,
                       max_batch_size: int | None = None, device: Any = "auto") -> AdaptiveBatch:
    """The controller ``batchsage train --adaptive`` uses, starting at the run's (B, lr).

    The memory ceiling is ``max_batch_size`` if given; else the micro-batch the user chose by
    accumulating (B / accumulation); else measured with :func:`batchsage.probe.memory.probe_memory`.
    """
    if max_batch_size is None and accumulation_steps > 1:
        max_batch_size = batch_size // accumulation_steps
    if max_batch_size is None:
        from batchsage.probe.memory import probe_memory

        max_batch_size = probe_memory(task, device=device).max_batch_size
    return AdaptiveBatch.for_task(task, batch_size, lr, max_batch_size=max_batch_size)


def _default_monitor() -> Any:
    from batchsage.noise import NoiseScaleMonitor

    return NoiseScaleMonitor(DEFAULT_MONITOR_MICRO_BATCHES, overhead_budget=DEFAULT_MONITOR_OVERHEAD)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def _check_positive_number(name: str, value: object) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value <= 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")

