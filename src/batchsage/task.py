"""The task contract: the user's training problem, written once in plain PyTorch.

Every part of batchsage takes a :class:`Task`; nothing else knows how the model is built.
A task is loaded from a built-in name (``digits-mlp``) or from ``path/to/file.py:ATTR`` where
ATTR is a Task or a zero-argument function returning one. It is validated once, on load, and
each problem is named in a one-line :class:`TaskError`.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from batchsage.errors import BatchsageError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
MetricFn = Callable[[nn.Module, Dataset], float]

#: Optimisers whose effective step is normalised by a running second moment; their learning rate
#: scales with the square root of the batch size (Malladi et al. 2022) instead of linearly.
ADAPTIVE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
    torch.optim.Adadelta,
)


class TaskError(BatchsageError):
    """A task could not be loaded or is not a valid training problem."""


@dataclass
class Task:
    """A training problem: model, data, loss, optimiser, validation metric and target.

    Attributes:
        name: short identifier used in reports and file names.
        make_model: returns a freshly initialised ``nn.Module`` (seeded by the caller).
        train_data, val_data: map-style datasets; a batch is what a default DataLoader yields.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss over the batch.
        make_optimizer: ``make_optimizer(params, lr) -> Optimizer``.
        metric_fn: ``metric_fn(model, val_data) -> float`` evaluated without gradients.
        target: the validation metric value that counts as "trained".
        higher_is_better: True for accuracy-like metrics, False for losses.
        base_batch_size, base_lr: a batch size and learning rate known to train; they anchor
            the learning-rate rules when batchsage proposes other batch sizes.
        max_samples: training budget in samples; a run that has not reached the target by then stops.
        seed: seed for model initialisation and data order.
        metric_name: how the metric is called in reports (e.g. "accuracy", "val_loss").
        eval_every_samples: validate roughly every this many training samples.
        lr_scaling: "linear" (SGD-like) or "sqrt" (Adam-like); None derives it from the optimiser.
        description: one line for ``batchsage tasks``.
        source: set by :func:`load_task`: what another process loads to get the same task.
    """

    name: str
    make_model: Callable[[], nn.Module]
    train_data: Dataset
    val_data: Dataset
    loss_fn: LossFn
    make_optimizer: Callable[..., torch.optim.Optimizer]
    metric_fn: MetricFn
    target: float
    higher_is_better: bool
    base_batch_size: int
    base_lr: float
    max_samples: int
    seed: int = 0
    metric_name: str = "metric"
    eval_every_samples: int | None = None
    lr_scaling: Literal["linear", "sqrt"] | None = None
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    #: How the task was loaded (a built-in name or ``/abs/path/file.py:ATTR``), so another process
    #: can load it too; None for a Task built in Python.
    source: str | None = None

    @property
    def num_train_samples(self) -> int:
        return len(self.train_data)  # type: ignore[arg-type]

    @property
    def num_val_samples(self) -> int:
        return len(self.val_data)  # type: ignore[arg-type]

    def eval_interval_samples(self) -> int:
        """Samples between validations (default: 1/100 of the budget, at least one batch)."""
        if self.eval_every_samples is not None:
            return self.eval_every_samples
        return max(self.base_batch_size, self.max_samples // 100)

    def reached(self, metric: float) -> bool:
        """Whether a validation metric value meets the target."""
        if not math.isfinite(metric):
            return False
        return metric >= self.target if self.higher_is_better else metric <= self.target

    def resolved_lr_scaling(self) -> Literal["linear", "sqrt"]:
        """The learning-rate scaling rule this task's optimiser calls for."""
        if self.lr_scaling is not None:
            return self.lr_scaling
        probe = nn.Linear(1, 1)
        optimizer = self.make_optimizer(probe.parameters(), self.base_lr)
        return "sqrt" if isinstance(optimizer, ADAPTIVE_OPTIMIZERS) else "linear"

    def validate(self) -> Task:
        """Check every part of the contract; raise TaskError naming the first problem."""
        _validate_fields(self)
        return self


def _validate_fields(task: Task) -> None:
    where = f"task {task.name!r}" if isinstance(task.name, str) and task.name else "task"
    if not isinstance(task.name, str) or not task.name:
        raise TaskError("task.name must be a non-empty string")
    for attr in ("make_model", "loss_fn", "make_optimizer", "metric_fn"):
        if not callable(getattr(task, attr, None)):
            raise TaskError(f"{where}: {attr} must be callable")
    for attr in ("train_data", "val_data"):
        data = getattr(task, attr, None)
        if data is None or not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
            raise TaskError(f"{where}: {attr} must be a map-style Dataset (with __getitem__ and __len__)")
        if len(data) == 0:
            raise TaskError(f"{where}: {attr} is empty")
    for attr in ("base_batch_size", "max_samples"):
        value = getattr(task, attr)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TaskError(f"{where}: {attr} must be a positive integer, got {value!r}")
    if not _is_positive_number(task.base_lr):
        raise TaskError(f"{where}: base_lr must be a positive number, got {task.base_lr!r}")
    if not isinstance(task.target, int | float) or not math.isfinite(task.target):
        raise TaskError(f"{where}: target must be a finite number, got {task.target!r}")
    if not isinstance(task.higher_is_better, bool):
        raise TaskError(f"{where}: higher_is_better must be True or False")
    if task.lr_scaling not in (None, "linear", "sqrt"):
        raise TaskError(f"{where}: lr_scaling must be 'linear', 'sqrt' or None")
    if task.eval_every_samples is not None and (
        not isinstance(task.eval_every_samples, int) or task.eval_every_samples <= 0
    ):
        raise TaskError(f"{where}: eval_every_samples must be a positive integer or None")


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_task_runs(task: Task) -> None:
    """Run one forward pass of the loss on two samples and check it is a finite-or-not scalar.

    Raises TaskError when the model cannot be built, the loss fails, or it is not a scalar.
    Called on load so that a broken task fails in one line before any long work starts.
    """
    from batchsage.data import BatchStream  # local import: data imports task for typing only

    where = f"task {task.name!r}"
    try:
        model = task.make_model()
    except Exception as exc:  # the user's code: report, never trace back
        raise TaskError(f"{where}: make_model() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise TaskError(f"{where}: make_model() must return an nn.Module, got {type(model).__name__}")
    batch = BatchStream(task.train_data, seed=task.seed).next_batch(min(2, task.num_train_samples))
    try:
        loss = task.loss_fn(model, batch)
    except Exception as exc:
        raise TaskError(f"{where}: loss_fn failed on a batch: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TaskError(f"{where}: loss_fn must return a scalar tensor (mean loss), got {shape}")
    try:
        task.make_optimizer(model.parameters(), task.base_lr)
    except Exception as exc:
        raise TaskError(f"{where}: make_optimizer failed: {type(exc).__name__}: {exc}") from exc


def load_task(spec: str | Task, *, check: bool = True) -> Task:
    """Load a task from a built-in name, ``path/to/file.py:ATTR``, or pass a Task through.

    Args:
        spec: built-in name (see ``batchsage tasks``), ``file.py:ATTR``, or a Task.
        check: also build the model once and check the loss is a scalar.
    """
    if isinstance(spec, Task):
        task = spec
    elif ":" in spec or spec.endswith(".py"):
        task = _load_from_file(spec)
        if task.source is None:
            path, _, attr = spec.rpartition(":")
            task.source = f"{Path(path).resolve()}:{attr}"
    else:
        from batchsage.tasks import build_builtin

        task = build_builtin(spec)
        task.source = task.source or spec
    task.validate()
    if check:
        check_task_runs(task)
    return task


def _load_from_file(spec: str) -> Task:
    path_text, _, attr = spec.rpartition(":")
    if not path_text:
        path_text, attr = spec, ""
    if not attr:
        raise TaskError(f"task spec {spec!r} must be path/to/file.py:ATTR")
    path = Path(path_text)
    if not path.is_file():
        raise TaskError(f"task file not found: {path}")
    module_name = f"batchsage_user_task_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise TaskError(f"cannot import task file {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise TaskError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise TaskError(f"{path} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if isinstance(obj, Task):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise TaskError(f"{path}:{attr}() failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(obj, Task):
            return obj
    raise TaskError(
        f"{path}:{attr} is {type(obj).__name__}, not a batchsage.Task "
        "or a zero-argument function returning one"
    )
