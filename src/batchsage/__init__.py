"""batchsage: choose the batch size that reaches target quality in the least wall-clock time.

The two calls most users need::

    import batchsage
    result = batchsage.fit("digits-mlp")        # train to the target, deciding B and lr as it goes
    rec = batchsage.recommend("digits-mlp")     # or: a fixed (B, lr, accumulation, warmup) up front
"""

from batchsage.adaptive import AdaptiveBatch
from batchsage.decide import Recommendation, recommend
from batchsage.device import Device, resolve_device
from batchsage.engine import Run, StepUpdate, TrainingHook, TrainResult, TrainState, train
from batchsage.errors import BatchsageError, ConfigError, InsufficientEvidence
from batchsage.live import FitOptions, FitResult, fit
from batchsage.noise import NoiseEstimate, NoiseReport, NoiseScaleMonitor, exact_noise_scale, measure_noise
from batchsage.probe import MemoryProfile, ProbeResult, ThroughputCurve, probe_memory, probe_throughput
from batchsage.task import Task, TaskError, load_task

__all__ = [
    "AdaptiveBatch",
    "BatchsageError",
    "ConfigError",
    "Device",
    "FitOptions",
    "FitResult",
    "InsufficientEvidence",
    "MemoryProfile",
    "NoiseEstimate",
    "NoiseReport",
    "NoiseScaleMonitor",
    "ProbeResult",
    "Recommendation",
    "Run",
    "StepUpdate",
    "Task",
    "TaskError",
    "ThroughputCurve",
    "TrainResult",
    "TrainState",
    "TrainingHook",
    "exact_noise_scale",
    "fit",
    "load_task",
    "measure_noise",
    "probe_memory",
    "probe_throughput",
    "recommend",
    "resolve_device",
    "train",
]
__version__ = "0.2.0"
