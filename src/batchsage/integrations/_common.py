"""What the framework integrations share.

- Training batches drawn by index: the task's training set is ``TensorDataset(arange(N))``, so a
  batch is a tensor of sample indices that the loss turns into the framework's own batch (the
  user's dataset items, collated by the user's collate function or data collator). batchsage's
  engine splits an index batch into micro-batches like any other, and each micro-batch is
  collated on its own, as a framework's gradient accumulation does.
- The caller's random state (Python, NumPy, torch) kept across a decision, so that the user's
  own training draws the same numbers as without batchsage.
- A cap on the micro-batch (Lightning's ``max_val``): the recommendation's candidates re-costed
  with accumulation from the step times batchsage measured.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from batchsage import plan
from batchsage.decide import Recommendation
from batchsage.errors import BatchsageError
from batchsage.task import Task, check_task_runs


class IntegrationError(BatchsageError):
    """A framework's objects cannot be adapted into a batchsage task (named in one line)."""


def index_dataset(dataset: Dataset, what: str) -> TensorDataset:
    """``TensorDataset(arange(len(dataset)))``: the training set as sample indices."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise IntegrationError(f"{what} is an iterable-style dataset ({type(dataset).__name__}); batchsage "
                               "draws batches of any size by index and needs a map-style dataset "
                               "(with __getitem__ and __len__)")
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise IntegrationError(f"{what} is empty")
    return TensorDataset(torch.arange(size))


def collated(dataset: Dataset, index_batch: Any, collate: Callable[[list[Any]], Any]) -> Any:
    """The batch ``collate`` makes of ``dataset``'s items at the indices of an index batch."""
    indices = index_batch[0] if isinstance(index_batch, list | tuple) else index_batch
    return collate([dataset[int(i)] for i in indices.tolist()])


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run the body and put Python's, NumPy's and torch's random state back as it was."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def check_adapted_task(task: Task) -> None:
    """The adapted task's loss runs and its validation metric is there: a wrong name or a loss
    that fails says so now, in one line, not after minutes of measuring."""
    with preserved_random_state():
        check_task_runs(task)
        probe = task.make_model()
        probe.eval()
        with torch.no_grad():
            task.metric_fn(probe, task.val_data)


def cap_micro_batch(rec: Recommendation, max_micro_batch_size: int,
                    tolerance: float = 0.03) -> Recommendation:
    """The recommendation with no micro-batch above ``max_micro_batch_size``.

    Candidates whose micro-batch is larger are split further (``plan.split_for_memory``) and their
    step time becomes accumulation × the measured t(micro-batch); ``plan.choose`` then picks again
    among all candidates. Unchanged where the recommended micro-batch is within the cap.
    """
    if max_micro_batch_size < 1:
        raise IntegrationError(f"max_val must be a positive integer, got {max_micro_batch_size!r}")
    if rec.micro_batch_size <= max_micro_batch_size:
        return rec
    step_seconds = plan.step_time_model([p["batch_size"] for p in rec.throughput],
                                        [p["step_seconds_median"] for p in rec.throughput])
    candidates = []
    for candidate in rec.candidates:
        if candidate.micro_batch_size <= max_micro_batch_size:
            candidates.append(candidate)
            continue
        micro, accumulation = plan.split_for_memory(candidate.batch_size, max_micro_batch_size)
        seconds = accumulation * step_seconds(micro)
        candidates.append(dataclasses.replace(
            candidate, micro_batch_size=micro, accumulation_steps=accumulation, step_seconds=seconds,
            predicted_seconds=candidate.predicted_steps * seconds, fits_memory=False))
    chosen = plan.choose(candidates, tolerance)
    return dataclasses.replace(
        rec, candidates=candidates, batch_size=chosen.batch_size, micro_batch_size=chosen.micro_batch_size,
        accumulation_steps=chosen.accumulation_steps, lr=chosen.lr, warmup_steps=chosen.warmup_steps,
        predicted_steps=chosen.predicted_steps, predicted_seconds=chosen.predicted_seconds,
        predicted_interval=None, interval_basis=None,
        why=[*rec.why, f"micro-batch capped at max_val={max_micro_batch_size}: B={chosen.batch_size} as "
                       f"{chosen.micro_batch_size} × {chosen.accumulation_steps} accumulation"])


class LinearWarmup:
    """Linear lr warmup on a torch optimiser, through its step hooks, composable with any scheduler.

    Before each of the first ``steps`` optimiser steps every group's lr is multiplied by
    ``(n + 1) / steps`` (as batchsage's engine warms up); right after the step it is put back, so a
    scheduler that steps afterwards reads and writes its own values. ``n`` counts the steps of all
    the given optimisers together (Lightning's automatic optimisation has one).
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], steps: int) -> None:
        self.steps = int(steps)
        self.done = 0
        self._saved: dict[int, list[float]] = {}
        self._handles: list[Any] = []
        if self.steps > 0:
            for optimizer in optimizers:
                self._handles.append(optimizer.register_step_pre_hook(self._before))
                self._handles.append(optimizer.register_step_post_hook(self._after))

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def factor(self) -> float:
        return min(1.0, (self.done + 1) / self.steps) if self.steps > 0 else 1.0

    def _before(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        factor = self.factor()
        self._saved[id(optimizer)] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor

    def _after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in zip(optimizer.param_groups, self._saved.pop(id(optimizer), []), strict=False):
            group["lr"] = lr
        self.done += 1
        if self.done >= self.steps:
            self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
