"""The one training loop every part of batchsage uses (sweeps, ground truth, adaptive training).

It trains a task at a batch size and learning rate, with optional gradient accumulation and
linear warmup, validates every ``eval_every_samples`` training samples (validation time is not
training time), and stops at the target, at the sample or time budget, on divergence (NaN/inf
loss), or when a hook asks it to. Hooks see micro-batch gradients (the noise-scale monitor) and
may change the batch size and learning rate between steps (adaptive batch sizes).

Read top to bottom: ``train`` sets up, ``_run`` is the loop, ``accumulate_gradients`` is one step's
forward and backward passes.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from batchsage.data import BatchStream, batch_len, move_to, split_batch
from batchsage.device import Device, resolve_device
from batchsage.errors import ConfigError
from batchsage.task import Task


@dataclass
class TrainState:
    """What the loop knows after a step; hooks read it."""

    step: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    batch_size: int = 0
    accumulation_steps: int = 1
    lr: float = 0.0
    last_loss: float = math.nan
    last_metric: float | None = None


@dataclass
class StepUpdate:
    """A hook's answer after a step: new batch size / lr / accumulation, or stop."""

    batch_size: int | None = None
    lr: float | None = None
    accumulation_steps: int | None = None
    stop: bool = False
    reason: str = ""


class TrainingHook:
    """Base class for objects that watch or steer the training loop. Every method is optional."""

    def micro_batches(self, state: TrainState, accumulation_steps: int) -> int:
        """How many micro-batches the coming step is split into (default: the accumulation)."""
        return accumulation_steps

    def on_micro_backward(self, model: nn.Module, index: int, parts: int, batch_size: int) -> None:
        """Called after micro-batch ``index`` of ``parts`` has been backpropagated."""

    def on_gradients(self, model: nn.Module, state: TrainState, loss: float) -> None:
        """Called with the full step's gradient in ``.grad``, before the optimiser step."""

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        """Called after the optimiser step; may change the next step or stop training."""
        return None

    def on_eval(self, state: TrainState, metric: float) -> None:
        """Called after each validation."""


@dataclass
class EvalPoint:
    step: int
    samples: int
    train_seconds: float
    metric: float
    train_loss: float
    batch_size: int
    lr: float


@dataclass
class TrainResult:
    """Outcome of one training run. Times are training seconds, validation excluded."""

    task: str
    batch_size: int
    lr: float
    seed: int
    accumulation_steps: int
    warmup_steps: int
    reached_target: bool
    steps_to_target: int | None
    samples_to_target: int | None
    seconds_to_target: float | None
    step_seconds_median: float
    final_metric: float
    diverged: bool
    steps: int
    samples: int
    train_seconds: float
    stop_reason: str
    history: list[EvalPoint] = field(default_factory=list)

    def to_dict(self, *, with_history: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_history:
            data.pop("history")
        return data


def validate_run_args(task: Task, batch_size: int, lr: float, accumulation_steps: int,
                      warmup_steps: int) -> None:
    """Reject impossible arguments with an error naming the argument."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    if not isinstance(accumulation_steps, int) or accumulation_steps <= 0:
        raise ConfigError(f"accumulation steps must be a positive integer, got {accumulation_steps!r}")
    if batch_size % accumulation_steps != 0:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by accumulation steps {accumulation_steps}"
        )
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"warmup steps must be a non-negative integer, got {warmup_steps!r}")
    if batch_size > task.num_train_samples:
        raise ConfigError(
            f"batch size {batch_size} exceeds the {task.num_train_samples} training samples of "
            f"task {task.name!r}"
        )


def train(
    task: Task,
    batch_size: int,
    lr: float,
    *,
    accumulation_steps: int = 1,
    warmup_steps: int = 0,
    seed: int | None = None,
    device: str | Device | None = "cpu",
    max_samples: int | None = None,
    max_seconds: float | None = None,
    stop_at_target: bool = True,
    eval_every_samples: int | None = None,
    eval_growth: float | None = None,
    hooks: Sequence[TrainingHook] = (),
) -> TrainResult:
    """Train ``task`` from a fresh model until the target, the budget, or divergence.

    Args:
        batch_size: global batch per optimiser step (micro-batch × accumulation_steps).
        lr: peak learning rate (after warmup).
        accumulation_steps: micro-batches per optimiser step.
        warmup_steps: linear warmup from lr/warmup_steps to lr.
        seed: model initialisation and data order (default: the task's seed).
        max_samples: sample budget (default: the task's ``max_samples``).
        max_seconds: training-time budget in seconds (validation excluded).
        stop_at_target: stop at the first validation that meets the target.
        eval_every_samples: validation interval (default: the task's).
        eval_growth: if set (> 1), validate on a geometric schedule instead: the first time after
            ``eval_every_samples`` samples, then whenever the samples seen grew by this factor.
            Pilots use it to locate level crossings to a fixed relative precision.
        hooks: observers/controllers, see :class:`TrainingHook`.

    The caller's global RNG state is restored afterwards.
    """
    validate_run_args(task, batch_size, lr, accumulation_steps, warmup_steps)
    run_seed = task.seed if seed is None else seed
    dev = resolve_device(device)
    devices = [dev.torch_device] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(run_seed)
        model = task.make_model().to(dev.torch_device)
        optimizer = task.make_optimizer(model.parameters(), lr)
        loop = _Loop(task, model, optimizer, dev, hooks, run_seed)
        return loop.run(
            batch_size=batch_size,
            lr=lr,
            accumulation_steps=accumulation_steps,
            warmup_steps=warmup_steps,
            max_samples=max_samples or task.max_samples,
            max_seconds=max_seconds,
            stop_at_target=stop_at_target,
            eval_every_samples=eval_every_samples or task.eval_interval_samples(),
            eval_growth=eval_growth,
        )


def accumulate_gradients(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    parts: int,
    on_micro_backward: Callable[[int, int, int], None] | None = None,
) -> float:
    """Forward and backward over ``parts`` micro-batches; ``.grad`` ends as the whole batch's mean.

    Each micro-batch loss is weighted by its share of the batch, so the accumulated gradient
    equals the gradient of the full batch's mean loss whatever the split. Returns the mean loss.
    """
    micro_batches = split_batch(batch, parts)
    sizes = [batch_len(micro) for micro in micro_batches]
    total = sum(sizes)
    loss_sum = 0.0
    for index, (micro, size) in enumerate(zip(micro_batches, sizes, strict=True)):
        loss = loss_fn(model, micro)
        (loss * (size / total)).backward()
        loss_sum += float(loss.detach()) * size
        if on_micro_backward is not None:
            on_micro_backward(index, parts, size)
    return loss_sum / total


def evaluate(task: Task, model: nn.Module) -> float:
    """The task's validation metric, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(task.metric_fn(model, task.val_data))
    finally:
        model.train(was_training)


class _Loop:
    def __init__(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: Device, hooks: Sequence[TrainingHook], seed: int) -> None:
        self.task = task
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.hooks = list(hooks)
        self.seed = seed
        self.stream = BatchStream(task.train_data, seed=seed)
        # Param groups may carry their own lr; keep their ratios to the lr we were given.
        base = max(group["lr"] for group in optimizer.param_groups) or 1.0
        self.group_ratios = [group["lr"] / base for group in optimizer.param_groups]

    def set_lr(self, lr: float) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.group_ratios, strict=True):
            group["lr"] = lr * ratio

    def run(self, *, batch_size: int, lr: float, accumulation_steps: int, warmup_steps: int,
            max_samples: int, max_seconds: float | None, stop_at_target: bool,
            eval_every_samples: int, eval_growth: float | None = None) -> TrainResult:
        task, model = self.task, self.model
        state = TrainState(batch_size=batch_size, accumulation_steps=accumulation_steps, lr=lr)
        step_times: list[float] = []
        history: list[EvalPoint] = []
        peak_lr = lr
        next_eval_samples = eval_every_samples
        reached_at: EvalPoint | None = None
        diverged = False
        stop_reason = "budget"
        model.train()
        while state.samples < max_samples:
            current_lr = peak_lr * min(1.0, (state.step + 1) / warmup_steps) if warmup_steps else peak_lr
            self.set_lr(current_lr)
            state.lr = current_lr
            loss, seconds = self._step(state)
            state.step += 1
            state.samples += state.batch_size
            state.train_seconds += seconds
            state.last_loss = loss
            step_times.append(seconds)
            if not math.isfinite(loss):
                diverged, stop_reason = True, "diverged"
                break
            update = self._after_step(state)
            if update is not None:
                if update.batch_size is not None:
                    state.batch_size = min(update.batch_size, task.num_train_samples)
                if update.accumulation_steps is not None:
                    state.accumulation_steps = update.accumulation_steps
                if update.lr is not None:
                    peak_lr = update.lr
                if update.stop:
                    stop_reason = update.reason or "stopped by hook"
                    break
            if max_seconds is not None and state.train_seconds >= max_seconds:
                stop_reason = "time budget"
                break
            if state.samples >= next_eval_samples or state.samples >= max_samples:
                next_eval_samples = _next_eval(state.samples, eval_every_samples, eval_growth)
                point = self._validate(state, history)
                if not math.isfinite(point.metric):
                    diverged, stop_reason = True, "diverged"
                    break
                if reached_at is None and task.reached(point.metric):
                    reached_at = point
                    if stop_at_target:
                        stop_reason = "target"
                        break
        if (not history or history[-1].step != state.step) and not diverged:
            self._validate(state, history)
        final_metric = history[-1].metric if history else math.nan
        return TrainResult(
            task=task.name,
            batch_size=state.batch_size,
            lr=peak_lr,
            seed=self.seed,
            accumulation_steps=state.accumulation_steps,
            warmup_steps=warmup_steps,
            reached_target=reached_at is not None,
            steps_to_target=reached_at.step if reached_at else None,
            samples_to_target=reached_at.samples if reached_at else None,
            seconds_to_target=reached_at.train_seconds if reached_at else None,
            step_seconds_median=statistics.median(step_times) if step_times else math.nan,
            final_metric=final_metric,
            diverged=diverged,
            steps=state.step,
            samples=state.samples,
            train_seconds=state.train_seconds,
            stop_reason=stop_reason,
            history=history,
        )

    def _step(self, state: TrainState) -> tuple[float, float]:
        """One optimiser step; returns (mean loss, seconds including data gathering)."""
        parts = state.accumulation_steps
        for hook in self.hooks:
            parts = max(parts, hook.micro_batches(state, state.accumulation_steps))
        parts = min(parts, state.batch_size)
        self.device.synchronize()
        start = time.perf_counter()
        batch = move_to(self.stream.next_batch(state.batch_size), self.device.torch_device)
        self.optimizer.zero_grad(set_to_none=True)
        callback = self._micro_callback() if self.hooks else None
        loss = accumulate_gradients(self.model, batch, self.task.loss_fn, parts, callback)
        for hook in self.hooks:
            hook.on_gradients(self.model, state, loss)
        if math.isfinite(loss):
            self.optimizer.step()
        self.device.synchronize()
        return loss, time.perf_counter() - start

    def _micro_callback(self) -> Callable[[int, int, int], None]:
        def callback(index: int, parts: int, size: int) -> None:
            for hook in self.hooks:
                hook.on_micro_backward(self.model, index, parts, size)

        return callback

    def _after_step(self, state: TrainState) -> StepUpdate | None:
        merged: StepUpdate | None = None
        for hook in self.hooks:
            update = hook.on_step_end(state)
            if update is not None:
                merged = update if merged is None else _merge(merged, update)
        return merged

    def _validate(self, state: TrainState, history: list[EvalPoint]) -> EvalPoint:
        metric = evaluate(self.task, self.model)
        state.last_metric = metric
        point = EvalPoint(state.step, state.samples, state.train_seconds, metric, state.last_loss,
                          state.batch_size, state.lr)
        history.append(point)
        for hook in self.hooks:
            hook.on_eval(state, metric)
        return point


def _next_eval(samples: int, interval: int, growth: float | None) -> int:
    """Samples at which to validate next: a fixed interval, or a geometric schedule."""
    if growth is not None and growth > 1.0:
        return max(samples + 1, math.ceil(samples * growth))
    return samples + interval


def _merge(first: StepUpdate, second: StepUpdate) -> StepUpdate:
    return StepUpdate(
        batch_size=second.batch_size if second.batch_size is not None else first.batch_size,
        lr=second.lr if second.lr is not None else first.lr,
        accumulation_steps=(
            second.accumulation_steps
            if second.accumulation_steps is not None
            else first.accumulation_steps
        ),
        stop=first.stop or second.stop,
        reason=first.reason or second.reason,
    )
