"""The one training engine: a live run that steps, validates, saves, restores and forks.

Every part of batchsage trains through :class:`Run`: ``train`` (sweeps, ground truth, the CLI),
the recommender's pilots and races, ``fit``'s live run and its forks, the throughput and memory
probes and the noise measurement. A step is: gather the batch, move it to the device, zero the
gradients, forward and backward over the micro-batches (``accumulate_gradients``), the hooks'
look at the gradient, the optimiser step; the device is synchronised before each clock read, so
a step's seconds are the same thing wherever they are measured.

A run owns everything that makes its future: model, optimiser state, the position in its data
stream and its random-number state (dropout, data order). :meth:`Run.state_dict` captures all of
it, :meth:`Run.load_state_dict` puts it back (in this process or another one, which is how ``fit``
resumes after SIGKILL), and :meth:`Run.fork` makes an independent copy that continues exactly as
the original would: forks of a live run race a stretch on the same samples and the winner's state
becomes the live run.

Read top to bottom: construction, the step, validation, the loop (:meth:`Run.train_until`), state.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from batchsage.data import BatchStream, batch_len, move_to, split_batch
from batchsage.device import Device, resolve_device
from batchsage.engine.hooks import EvalPoint, StepUpdate, TrainingHook, TrainState
from batchsage.errors import ConfigError
from batchsage.task import Task

#: Version of :meth:`Run.state_dict`'s layout; a checkpoint of another version is refused.
STATE_VERSION = 1


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
    device: str = "cpu"

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
    # A model that synchronises gradients across processes (DistributedDataParallel) does it once,
    # on the last micro-batch: the others accumulate locally inside its no_sync().
    no_sync = getattr(model, "no_sync", None)
    for index, (micro, size) in enumerate(zip(micro_batches, sizes, strict=True)):
        deferred = no_sync is not None and index < len(micro_batches) - 1
        with no_sync() if deferred else nullcontext():
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


def _rng_devices(device: Device) -> list[torch.device]:
    return [device.torch_device] if device.type == "cuda" else []


def _get_rng(device: Device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device.torch_device)
    return state


def _set_rng(device: Device, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device.torch_device)


def _own_model(task: Task) -> nn.Module:
    """``task.make_model()``, copied, so that a factory handing out one shared instance is never
    trained by a run (the next run would start from where the last one stopped)."""
    model = task.make_model()
    try:
        return copy.deepcopy(model)
    except Exception:  # an uncopyable model: the factory is trusted to return a fresh one
        return model


class Run:
    """A live training run of ``task``: model, optimiser, data position, RNG, counters and hooks.

    Args:
        batch_size: global batch per optimiser step (micro-batch × accumulation_steps).
        lr: peak learning rate (after warmup).
        accumulation_steps: micro-batches per optimiser step.
        warmup_steps: linear warmup from lr/warmup_steps to lr over the run's first steps.
        seed: model initialisation, data order and the run's random stream (default: the task's).
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps" or a Device.
        hooks: observers/controllers, see :class:`TrainingHook`.
        eval_every_samples: validation interval for :meth:`train_until` (default: the task's).
        eval_growth: if set (> 1), validate on a geometric schedule instead: the first time after
            ``eval_every_samples`` samples, then whenever the samples seen grew by this factor.

    The caller's global random state is never changed: the run keeps its own and swaps it in
    only while it computes.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int,
        lr: float,
        *,
        accumulation_steps: int = 1,
        warmup_steps: int = 0,
        seed: int | None = None,
        device: str | Device | None = None,
        hooks: Sequence[TrainingHook] = (),
        eval_every_samples: int | None = None,
        eval_growth: float | None = None,
    ) -> None:
        validate_run_args(task, batch_size, lr, accumulation_steps, warmup_steps)
        self.task = task
        self.device = resolve_device(device)
        self.seed = task.seed if seed is None else seed
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            torch.manual_seed(self.seed)
            self.model = _own_model(task).to(self.device.torch_device)
            self.optimizer = task.make_optimizer(self.model.parameters(), lr)
            self._rng = _get_rng(self.device)
        self.model.train()
        self.stream = BatchStream(task.train_data, seed=self.seed)
        self.hooks = list(hooks)
        # Param groups may carry their own lr; keep their ratios to the lr we were given.
        top = max(group["lr"] for group in self.optimizer.param_groups) or 1.0
        self.group_ratios = [group["lr"] / top for group in self.optimizer.param_groups]
        self.state = TrainState(batch_size=batch_size, accumulation_steps=accumulation_steps, lr=lr)
        self.peak_lr = float(lr)
        self.warmup_steps = warmup_steps
        self.eval_every_samples = eval_every_samples or task.eval_interval_samples()
        self.eval_growth = eval_growth
        self.next_eval_samples = self.eval_every_samples
        self.history: list[EvalPoint] = []
        self.reached_at: EvalPoint | None = None
        self.diverged = False
        self.eval_seconds = 0.0
        #: (batch size, seconds, mean loss) of every step, in order.
        self.step_log: list[tuple[int, float, float]] = []
        self._active = 0
        self._stop_reason: str | None = None
        #: Never step the optimiser: every step measures at the same weights (noise at one point).
        self.hold_weights = False

    # ---- the random stream --------------------------------------------------------------------

    @contextmanager
    def activated(self) -> Iterator[None]:
        """Run the body with this run's random state; the caller's is restored afterwards."""
        if self._active:
            yield
            return
        outer = _get_rng(self.device)
        _set_rng(self.device, self._rng)
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._rng = _get_rng(self.device)
            _set_rng(self.device, outer)

    # ---- steering -----------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def set_lr(self, lr: float) -> None:
        """The peak lr from the next step on (a restored optimiser's own lr is never used)."""
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
        self.peak_lr = float(lr)

    def set_batch(self, batch_size: int, accumulation_steps: int = 1) -> None:
        """Batch size and accumulation from the next step on (the data stream continues)."""
        validate_run_args(self.task, batch_size, self.peak_lr, accumulation_steps, 0)
        self.state.batch_size = batch_size
        self.state.accumulation_steps = accumulation_steps

    def lr_at(self, step: int) -> float:
        """The lr of step ``step`` (0-based): the peak lr, ramped linearly during warmup."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        return self.peak_lr

    # ---- one step ------------------------------------------------------------------------------

    def step(self) -> float:
        """One optimiser step with the hooks; returns its mean loss (non-finite: diverged)."""
        with self.activated():
            state = self.state
            state.lr = self.lr_at(state.step)
            for group, ratio in zip(self.optimizer.param_groups, self.group_ratios, strict=True):
                group["lr"] = state.lr * ratio
            loss, seconds = self._timed_step()
            state.step += 1
            state.samples += state.batch_size
            state.train_seconds += seconds
            state.last_loss = loss
            self.step_log.append((state.batch_size, seconds, loss))
            if not math.isfinite(loss):
                self.diverged = True
                return loss
            self._apply(self._after_step())
        return loss

    def _timed_step(self) -> tuple[float, float]:
        state = self.state
        parts = state.accumulation_steps
        for hook in self.hooks:
            parts = max(parts, hook.micro_batches(state, state.accumulation_steps))
        parts = min(parts, state.batch_size)
        self.device.synchronize()
        start = time.perf_counter()
        batch = move_to(self.stream.next_batch(state.batch_size), self.device.torch_device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._backward(batch, parts)
        for hook in self.hooks:
            hook.on_gradients(self.model, state, loss)
        if math.isfinite(loss) and not self.hold_weights:
            self.optimizer.step()
        self.device.synchronize()
        return loss, time.perf_counter() - start

    def _backward(self, batch: Any, parts: int) -> float:
        for hook in self.hooks:
            loss = hook.replace_backward(self.model, batch, self.task.loss_fn)
            if loss is not None:
                return loss
        callback = self._micro_callback() if self.hooks else None
        return accumulate_gradients(self.model, batch, self.task.loss_fn, parts, callback)

    def _micro_callback(self) -> Callable[[int, int, int], None]:
        def callback(index: int, parts: int, size: int) -> None:
            for hook in self.hooks:
                hook.on_micro_backward(self.model, index, parts, size)

        return callback

    def _after_step(self) -> StepUpdate | None:
        merged: StepUpdate | None = None
        for hook in self.hooks:
            update = hook.on_step_end(self.state)
            if update is not None:
                merged = update if merged is None else merged.merged(update)
        return merged

    def _apply(self, update: StepUpdate | None) -> None:
        self._stop_reason = None
        if update is None:
            return
        if update.batch_size is not None:
            self.state.batch_size = min(update.batch_size, self.task.num_train_samples)
        if update.accumulation_steps is not None:
            self.state.accumulation_steps = update.accumulation_steps
        if update.lr is not None:
            self.peak_lr = update.lr
        if update.stop:
            self._stop_reason = update.reason or "stopped by hook"

    # ---- validation ----------------------------------------------------------------------------

    def validate(self) -> EvalPoint:
        """Evaluate the task's metric now (timed apart from training); record it; tell the hooks."""
        with self.activated():
            self.device.synchronize()
            start = time.perf_counter()
            metric = self._measure_metric()
            self.device.synchronize()
            self.eval_seconds += time.perf_counter() - start
        state = self.state
        state.last_metric = metric
        point = EvalPoint(state.step, state.samples, state.train_seconds, metric, state.last_loss,
                          state.batch_size, state.lr)
        self.history.append(point)
        if self.reached_at is None and self.task.reached(metric):
            self.reached_at = point
        if not math.isfinite(metric):
            self.diverged = True
        for hook in self.hooks:
            hook.on_eval(state, metric)
        return point

    def _measure_metric(self) -> float:
        """The task's metric of the model now (a data-parallel run measures it once, on rank 0)."""
        return evaluate(self.task, self.model)

    def _due_for_validation(self, max_samples: int) -> bool:
        samples = self.state.samples
        if samples < self.next_eval_samples and samples < max_samples:
            return False
        if self.eval_growth is not None and self.eval_growth > 1.0:
            self.next_eval_samples = max(samples + 1, math.ceil(samples * self.eval_growth))
        else:
            self.next_eval_samples = samples + self.eval_every_samples
        return True

    # ---- the loop -----------------------------------------------------------------------------

    def train_until(
        self,
        *,
        max_samples: int | None = None,
        max_steps: int | None = None,
        max_seconds: float | None = None,
        stop_at_target: bool = True,
        validate: bool = True,
        should_stop: Callable[[Run], str | None] | None = None,
    ) -> str:
        """Step until the target, a budget (run totals, not increments), divergence, or a hook stops.

        Validates on the run's schedule (``validate=False``: never); ``should_stop(run)`` is asked
        after each step and may return a reason to stop. Returns the stop reason: "target",
        "budget", "time budget", "step budget", "diverged", or a hook's reason.
        """
        sample_budget = self.task.max_samples if max_samples is None else max_samples
        with self.activated():
            while True:
                if self.state.samples >= sample_budget:
                    return "budget"
                if max_steps is not None and self.state.step >= max_steps:
                    return "step budget"
                self.step()
                if self.diverged:
                    return "diverged"
                if self._stop_reason is not None:
                    return self._stop_reason
                if max_seconds is not None and self.state.train_seconds >= max_seconds:
                    return "time budget"
                if validate and self._due_for_validation(sample_budget):
                    self.validate()
                    if self.diverged:
                        return "diverged"
                    if stop_at_target and self.reached_at is not None:
                        return "target"
                if should_stop is not None:
                    reason = should_stop(self)
                    if reason is not None:
                        return reason

    def result(self, stop_reason: str) -> TrainResult:
        """The run so far as a :class:`TrainResult` (validated once more at its end if need be)."""
        if (not self.history or self.history[-1].step != self.state.step) and not self.diverged:
            self.validate()
        reached = self.reached_at
        times = [entry[1] for entry in self.step_log]
        return TrainResult(
            task=self.task.name,
            batch_size=self.state.batch_size,
            lr=self.peak_lr,
            seed=self.seed,
            accumulation_steps=self.state.accumulation_steps,
            warmup_steps=self.warmup_steps,
            reached_target=reached is not None,
            steps_to_target=reached.step if reached else None,
            samples_to_target=reached.samples if reached else None,
            seconds_to_target=reached.train_seconds if reached else None,
            step_seconds_median=statistics.median(times) if times else math.nan,
            final_metric=self.history[-1].metric if self.history else math.nan,
            diverged=self.diverged,
            steps=self.state.step,
            samples=self.state.samples,
            train_seconds=self.state.train_seconds,
            stop_reason=stop_reason,
            history=list(self.history),
            device=str(self.device),
        )

    def step_seconds_median(self, batch_size: int | None = None, last: int | None = None) -> float:
        """Median seconds of the run's steps (at ``batch_size`` only, the ``last`` ones only)."""
        times = [s for b, s, _ in self.step_log if batch_size is None or b == batch_size]
        if last is not None:
            times = times[-last:]
        return statistics.median(times) if times else math.nan

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that makes this run's future, as tensors and plain values (``torch.save``-able).

        The tensors are copies: training on afterwards does not change a state taken before.
        """
        return {
            "version": STATE_VERSION,
            "task": self.task.name,
            "seed": self.seed,
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "stream": self.stream.state_dict(),
            "rng": copy.deepcopy(self._rng),
            "state": asdict(self.state),
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "eval_every_samples": self.eval_every_samples,
            "eval_growth": self.eval_growth,
            "next_eval_samples": self.next_eval_samples,
            "history": [asdict(point) for point in self.history],
            "reached_at": asdict(self.reached_at) if self.reached_at else None,
            "diverged": self.diverged,
            "eval_seconds": self.eval_seconds,
            "step_log": list(self.step_log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back a state from :meth:`state_dict` (of this run, a fork, or a checkpoint)."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"run state version {state.get('version')!r} is not {STATE_VERSION}")
        if state.get("task") != self.task.name:
            raise ConfigError(f"run state is of task {state.get('task')!r}, not {self.task.name!r}")
        self.model.load_state_dict(state["model"])
        # Moves the moments to the parameters' device; its lr is overwritten before each step.
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        self._rng = copy.deepcopy(state["rng"])
        self.seed = int(state["seed"])
        self.state = TrainState(**state["state"])
        self.peak_lr = float(state["peak_lr"])
        self.warmup_steps = int(state["warmup_steps"])
        self.eval_every_samples = int(state["eval_every_samples"])
        self.eval_growth = state["eval_growth"]
        self.next_eval_samples = int(state["next_eval_samples"])
        self.history = [EvalPoint(**point) for point in state["history"]]
        self.reached_at = EvalPoint(**state["reached_at"]) if state["reached_at"] else None
        self.diverged = bool(state["diverged"])
        self.eval_seconds = float(state["eval_seconds"])
        self.step_log = [(int(b), float(s), float(loss)) for b, s, loss in state["step_log"]]

    def fork(self, hooks: Sequence[TrainingHook] = ()) -> Run:
        """An independent copy that continues exactly as this run would (same samples, same RNG).

        The copy has its own model and optimiser (deep copies, on the same device) and the given
        hooks, not this run's: observers such as the noise monitor stay with the live run.
        """
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        twin.optimizer = self.task.make_optimizer(twin.model.parameters(), self.peak_lr)
        twin.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        twin.stream = self.stream.fork()
        twin.state = copy.copy(self.state)
        twin._rng = copy.deepcopy(self._rng)
        twin.history = list(self.history)
        twin.step_log = list(self.step_log)
        twin.hooks = list(hooks)
        twin._active = 0
        return twin


def train(
    task: Task,
    batch_size: int,
    lr: float,
    *,
    accumulation_steps: int = 1,
    warmup_steps: int = 0,
    seed: int | None = None,
    device: str | Device | None = None,
    max_samples: int | None = None,
    max_seconds: float | None = None,
    max_steps: int | None = None,
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
        device: "auto" (default: cuda, then mps, then cpu), "cpu", "cuda" or "mps".
        max_samples: sample budget (default: the task's ``max_samples``).
        max_seconds: training-time budget in seconds (validation excluded).
        max_steps: optimiser-step budget.
        stop_at_target: stop at the first validation that meets the target.
        eval_every_samples: validation interval (default: the task's).
        eval_growth: validate on a geometric schedule (see :class:`Run`).
        hooks: observers/controllers, see :class:`TrainingHook`.

    The caller's global RNG state is not changed.
    """
    run = Run(task, batch_size, lr, accumulation_steps=accumulation_steps, warmup_steps=warmup_steps,
              seed=seed, device=device, hooks=hooks, eval_every_samples=eval_every_samples,
              eval_growth=eval_growth)
    reason = run.train_until(max_samples=max_samples, max_seconds=max_seconds, max_steps=max_steps,
                             stop_at_target=stop_at_target)
    return run.result(reason)
