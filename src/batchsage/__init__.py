"""batchsage: choose the batch size that reaches target quality in the least wall-clock time."""

from batchsage.adaptive import AdaptiveBatch
from batchsage.errors import BatchsageError, ConfigError
from batchsage.task import Task, TaskError, load_task
from batchsage.training import StepUpdate, TrainingHook, TrainResult, TrainState, train

__all__ = [
    "AdaptiveBatch",
    "BatchsageError",
    "ConfigError",
    "StepUpdate",
    "Task",
    "TaskError",
    "TrainResult",
    "TrainState",
    "TrainingHook",
    "load_task",
    "train",
]
__version__ = "0.1.0"
