"""batchsage: choose the batch size that reaches target quality in the least wall-clock time."""

from batchsage.adaptive import AdaptiveBatch
from batchsage.engine import StepUpdate, TrainingHook, TrainResult, TrainState, train
from batchsage.errors import BatchsageError, ConfigError
from batchsage.noise import NoiseEstimate, NoiseReport, NoiseScaleMonitor, exact_noise_scale, measure_noise
from batchsage.probe import MemoryProfile, ProbeResult, ThroughputCurve, probe_memory, probe_throughput
from batchsage.task import Task, TaskError, load_task

__all__ = [
    "AdaptiveBatch",
    "BatchsageError",
    "ConfigError",
    "MemoryProfile",
    "NoiseEstimate",
    "NoiseReport",
    "NoiseScaleMonitor",
    "ProbeResult",
    "StepUpdate",
    "Task",
    "TaskError",
    "ThroughputCurve",
    "TrainResult",
    "TrainState",
    "TrainingHook",
    "exact_noise_scale",
    "load_task",
    "measure_noise",
    "probe_memory",
    "probe_throughput",
    "train",
]
__version__ = "0.1.0"
