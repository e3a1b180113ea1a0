"""What the engine tells its hooks, and what hooks may answer.

A hook watches or steers a :class:`~batchsage.engine.Run`: it sees every micro-batch's gradient
(the noise-scale monitor), the whole step's gradient before the optimiser step, each validation,
and after each step it may change the batch size, accumulation and lr, or stop the run (adaptive
batch sizes, level stops, sweep cuts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class TrainState:
    """What the engine knows after a step; hooks read it."""

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

    def merged(self, later: StepUpdate) -> StepUpdate:
        """This update with ``later``'s fields where it sets them (a stop from either stops)."""
        return StepUpdate(
            batch_size=later.batch_size if later.batch_size is not None else self.batch_size,
            lr=later.lr if later.lr is not None else self.lr,
            accumulation_steps=(
                later.accumulation_steps if later.accumulation_steps is not None else self.accumulation_steps
            ),
            stop=self.stop or later.stop,
            reason=self.reason or later.reason,
        )


class TrainingHook:
    """Base class for objects that watch or steer the engine. Every method is optional."""

    def micro_batches(self, state: TrainState, accumulation_steps: int) -> int:
        """How many micro-batches the coming step is split into (default: the accumulation)."""
        return accumulation_steps

    def replace_backward(self, model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], Any]
                         ) -> float | None:
        """Do the coming step's forward and backward in place of the engine (return the batch's
        mean loss, with ``.grad`` its gradient), or None to leave it to the engine."""
        return None

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
    """One validation of a run: where it was (step, samples, training seconds) and what it measured."""

    step: int
    samples: int
    train_seconds: float
    metric: float
    train_loss: float
    batch_size: int
    lr: float
