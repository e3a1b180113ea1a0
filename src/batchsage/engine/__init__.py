"""The one training engine every part of batchsage steps through (see :mod:`batchsage.engine.run`)."""

from batchsage.engine.hooks import EvalPoint, StepUpdate, TrainingHook, TrainState
from batchsage.engine.run import (
    Run,
    TrainResult,
    accumulate_gradients,
    evaluate,
    train,
    validate_run_args,
)

__all__ = [
    "EvalPoint",
    "Run",
    "StepUpdate",
    "TrainResult",
    "TrainState",
    "TrainingHook",
    "accumulate_gradients",
    "evaluate",
    "train",
    "validate_run_args",
]
