"""Data-parallel training on ``torch.distributed``: the engine's run, one process per worker.

Launch the standard way, one process per worker, each running the same command::

    torchrun --standalone --nproc-per-node 2 -m batchsage train --task T --batch-size 64 --lr 0.1
    batchsage train --task T --batch-size 64 --lr 0.1 --nproc 2      # the same, through torch's
                                                                     # elastic launcher API

or from Python, :func:`launch` (a function on each worker) inside one script. The pieces:

- :class:`World`, :func:`launched_world`: where this process stands in a launch (the variables
  torchrun sets); :func:`check_world_size`: the global batch is workers × per-worker batch ×
  accumulation, so the world size must divide it.
- :class:`ShardedBatchStream`: every rank draws the same seeded global batch and keeps its own
  contiguous slice of it, so the samples of a global batch are exactly those of the one-process
  run with the same seed (rank r holds what micro-batch r of a K-way split would hold).
- :class:`DataParallelRun`: the engine's :class:`~batchsage.engine.Run` with the model wrapped in
  ``DistributedDataParallel`` (gloo on CPU, nccl on GPUs, the same code). Accumulation
  synchronises once per step (``no_sync`` on the other micro-batches). The step's loss is the
  global batch's, and its seconds rank 0's (which include waiting for the slowest rank), agreed
  by one all-reduce of two numbers per step; rank 0 validates and broadcasts the metric. Every
  rank therefore records the same history and stops at the same step.
- :class:`CrossWorkerNoise`: the gradient noise scale for free. Each rank's local gradient is a
  small batch (b = B/K) and the all-reduced gradient the large one (B): a DDP communication hook
  reads |g_local|² from the bucket before it is reduced, and the run's end-of-step all-reduce
  carries it (one more number in a collective the step makes anyway) to give the ranks' mean;
  McCandlish's two-batch estimators do the rest. No extra forward or backward pass, no extra
  collective. With accumulation, DDP's hook fires only on the synchronising
  micro-batch, when the bucket holds the rank's whole accumulated gradient: still one local
  gradient of B/K samples per rank.

Everything here runs inside an initialised process group (:func:`process_group`); the memory
probe, which forks, refuses to run there (a fork does not survive the group's threads).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from batchsage.data import BatchStream
from batchsage.device import Device, resolve_device
from batchsage.engine.hooks import TrainingHook, TrainState
from batchsage.engine.run import Run, TrainResult
from batchsage.errors import ConfigError
from batchsage.task import Task

#: Offset between the random streams of ranks (dropout and other random ops differ per rank;
#: rank 0 keeps the one-process run's stream).
RANK_SEED_STRIDE = 1_000_003


# --------------------------------------------------------------------------------------------
# Where this process stands
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes files and validates."""
        return self.rank == 0


def launched_world(environ: dict[str, str] | None = None) -> World | None:
    """The launch this process is part of (from torchrun's RANK, WORLD_SIZE, LOCAL_RANK), or None."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    except ValueError as exc:
        raise ConfigError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers: {exc}") from None
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ConfigError(f"rank {world.rank} is not within the world size {world.world_size}")
    return world


def check_world_size(world_size: int, batch_size: int, accumulation_steps: int = 1) -> int:
    """The per-worker batch of a global ``batch_size`` on ``world_size`` workers; raises ConfigError
    unless every worker gets the same whole number of samples per micro-batch."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"the number of workers must be a positive integer, got {world_size!r}")
    if batch_size < world_size * accumulation_steps:
        raise ConfigError(
            f"batch size {batch_size} is smaller than {world_size} workers × {accumulation_steps} "
            f"accumulation steps: every worker needs at least one sample per micro-batch"
        )
    step = world_size * accumulation_steps
    if batch_size % step:
        below, above = batch_size - batch_size % step, batch_size - batch_size % step + step
        raise ConfigError(
            f"batch size {batch_size} is not divisible by {world_size} workers × {accumulation_steps} "
            f"accumulation steps (the global batch is workers × per-worker batch × accumulation): "
            f"use {below} or {above}"
        )
    return batch_size // world_size


def rank_device(device: str | Device | None, world: World) -> Device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per worker)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.torch_device.index is None:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {world.local_rank} has no GPU: this machine has "
                              f"{torch.cuda.device_count()}; launch at most that many workers per machine")
        resolved = Device(torch.device("cuda", world.local_rank))
    return resolved


def backend_for(device: Device) -> str:
    """nccl for GPUs, gloo for everything else."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(world: World, device: Device) -> Iterator[None]:
    """Join the launch's process group for the duration of the block (torchrun's env:// rendezvous)."""
    if device.type == "cuda":
        torch.cuda.set_device(device.torch_device)
    dist.init_process_group(backend_for(device), rank=world.rank, world_size=world.world_size)
    try:
        yield
    finally:
        _quiesce()
        dist.destroy_process_group()


def _quiesce() -> None:
    """Let the group's worker threads finish with every collective before the group goes.

    gloo drops a finished collective's tensors on its own thread, which takes the GIL when the last
    reference to a tensor Python created goes there; the group's destructor joins those threads
    while holding the GIL. A barrier and a moment without the GIL leave nothing pending, so the
    destructor (here, or when the last DDP wrapper is freed) cannot deadlock.
    """
    try:
        dist.barrier()
    except Exception:  # a peer is gone: nothing left to wait for
        return
    time.sleep(0.05)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The sum over ranks of each value (one all-reduce of a float64 vector)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_from_main(value: float) -> float:
    """Rank 0's ``value``, on every rank."""
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def peak_resident_bytes() -> int | None:
    """This process's peak resident memory so far (VmHWM; ru_maxrss where /proc is missing).

    The in-process measure for ranks: forking a child to measure one step (what the CPU probe
    does) is unsafe once a process group's threads exist.
    """
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------------------------
# Data: a rank's slice of every global batch
# --------------------------------------------------------------------------------------------


class ShardedBatchStream(BatchStream):
    """The one-process stream's global batches, of which this rank keeps slice ``rank`` of ``world_size``.

    ``next_batch(B)`` draws the global batch B (same seed, same order on every rank) and returns
    its contiguous slice ``[rank·B/K, (rank+1)·B/K)``.
    """

    def __init__(self, dataset: Any, *, seed: int, rank: int, world_size: int) -> None:
        super().__init__(dataset, seed=seed)
        self.rank = rank
        self.world_size = world_size

    def next_indices(self, batch_size: int) -> torch.Tensor:
        indices = super().next_indices(batch_size)
        if batch_size % self.world_size:
            raise ConfigError(f"batch size {batch_size} is not divisible by {self.world_size} workers")
        share = batch_size // self.world_size
        return indices[self.rank * share : (self.rank + 1) * share]


# --------------------------------------------------------------------------------------------
# The noise scale across workers
# --------------------------------------------------------------------------------------------


class CrossWorkerNoise(TrainingHook):
    """Gradient noise scale from the ranks' local gradients (b = B/K) and their mean (B).

    Pass it in a :class:`DataParallelRun`'s hooks; the run registers :meth:`comm_hook` as its DDP
    communication hook. On a measured step (every ``every`` steps, the same steps on every rank)
    the hook adds up |g_local|² over the buckets before they are all-reduced; after the backward
    pass ``on_gradients`` reads |G|² of the reduced gradient, the run's end-of-step all-reduce sums
    the local values (:meth:`pending_scalars`, :meth:`finish_step`), and McCandlish's unbiased
    two-batch estimators give |G|² and tr Σ
    (:func:`batchsage.noise.step_estimates`, K equal micro-batches of size B/K). Estimates are
    averaged as :class:`~batchsage.noise.NoiseStatistics` does (numerator and denominator apart).

    Args:
        every: measure every this many steps (1: every step; the cost is two vector norms).
        ema, window, report_every, seed: averaging, as :class:`~batchsage.noise.NoiseStatistics`.
        dataset_size: training samples N, for the finite-population correction of |G|².
    """

    def __init__(self, every: int = 1, *, ema: float | None = 0.95, window: int | None = None,
                 report_every: int = 8, dataset_size: int | None = None, seed: int = 0) -> None:
        from batchsage.noise import NoiseStatistics

        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.dataset_size = dataset_size
        self.statistics = NoiseStatistics(ema=ema, window=window, report_every=report_every, seed=seed)
        self._measuring = False
        self._local_sq: torch.Tensor | None = None
        self._buckets = 0
        self._pending: tuple[int, int, float, float] | None = None

    # ---- the DDP communication hook -------------------------------------------------------------

    def comm_hook(self, state, bucket):  # type: ignore[no-untyped-def]
        """DDP's default all-reduce, after adding the bucket's local |g|² on measured steps.

        (Unannotated: DDP checks the annotations' values, and postponed annotations are strings.)
        """
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        if self._measuring:
            flat = bucket.buffer().detach().reshape(-1).float()
            square = torch.dot(flat, flat).double()
            self._local_sq = square if self._local_sq is None else self._local_sq + square
            self._buckets += 1
        return allreduce_hook(state, bucket)

    # ---- TrainingHook ---------------------------------------------------------------------------

    def micro_batches(self, state: TrainState, accumulation_steps: int) -> int:
        self._measuring = state.step % self.every == 0
        self._local_sq = None
        self._buckets = 0
        return accumulation_steps

    def on_gradients(self, model: nn.Module, state: TrainState, loss: float) -> None:
        self.statistics.add_loss(state.step, loss)
        if not self._measuring:
            return
        self._measuring = False
        local = float(self._local_sq) if self._local_sq is not None else math.nan
        grads = [p.grad.detach().reshape(-1).float() for p in model.parameters() if p.grad is not None]
        global_sq = float(sum(torch.dot(g, g).double() for g in grads)) if grads else math.nan
        self._pending = (state.step, state.batch_size, local, global_sq)

    def pending_scalars(self) -> list[float]:
        """This rank's |g_local|² of the step just taken, for the run's end-of-step all-reduce
        (empty on steps not measured: the same steps on every rank)."""
        return [] if self._pending is None else [self._pending[2]]

    def finish_step(self, total_local_sq: float, world_size: int) -> None:
        """Record the step measured, given the sum over ranks of |g_local|² (from the all-reduce)."""
        from batchsage.noise import Measurement, step_estimates

        if self._pending is None:
            return
        step, batch_size, _local, global_sq = self._pending
        self._pending = None
        mean_local = total_local_sq / world_size
        if not (math.isfinite(mean_local) and math.isfinite(global_sq)):
            return  # a non-finite value on any rank makes the sum non-finite on all of them
        small = batch_size // world_size
        # K equal local batches: the mean of their |g|² is all the two-batch estimator needs.
        gsq, trace, _ = step_estimates([mean_local] * world_size, [small] * world_size, global_sq,
                                       self.dataset_size)
        self.statistics.add(Measurement(step, gsq, trace, batch_size, float(small)))

    # ---- what callers read ----------------------------------------------------------------------

    def estimate(self) -> Any:
        """The current :class:`~batchsage.noise.NoiseEstimate` (None before the first measurement)."""
        return self.statistics.estimate()

    @property
    def measurements(self) -> list[Any]:
        """Every measured step's :class:`~batchsage.noise.Measurement`."""
        return self.statistics.measurements


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class DataParallelRun(Run):
    """A :class:`~batchsage.engine.Run` on this rank of an initialised process group.

    ``batch_size`` is the global batch (workers × per-worker batch × accumulation); the rank trains
    on its slice (:class:`ShardedBatchStream`) through ``DistributedDataParallel``. Every rank
    must construct the run with the same arguments and step it the same number of times (the
    engine's loop does: its stop decisions rest on values agreed across ranks).

    Hooks see this rank's micro-batches and, in ``on_gradients``, the all-reduced gradient. The
    one-process noise monitor, which reads micro-batch gradients, is refused: use
    :class:`CrossWorkerNoise`. Hooks that change the batch must change it on every rank alike.
    """

    def __init__(self, task: Task, batch_size: int, lr: float, *, accumulation_steps: int = 1,
                 **kwargs: Any) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("a data-parallel run needs an initialised torch.distributed process group "
                              "(launch with torchrun or batchsage train --nproc)")
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.per_rank_batch_size = check_world_size(self.world_size, batch_size, accumulation_steps)
        hooks = list(kwargs.get("hooks", ()))
        _refuse_local_monitors(hooks)
        super().__init__(task, batch_size, lr, accumulation_steps=accumulation_steps, **kwargs)
        self.stream = ShardedBatchStream(task.train_data, seed=self.seed, rank=self.rank,
                                         world_size=self.world_size)
        if self.rank:
            with self.activated():  # dropout masks differ between ranks; rank 0 keeps the seed's
                torch.manual_seed(self.seed + RANK_SEED_STRIDE * self.rank)
        device_ids = [self.device.torch_device] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        noise_hooks = [hook for hook in hooks if isinstance(hook, CrossWorkerNoise)]
        if len(noise_hooks) > 1:
            raise ConfigError("one CrossWorkerNoise per run (DDP takes one communication hook)")
        self.noise: CrossWorkerNoise | None = noise_hooks[0] if noise_hooks else None
        if self.noise is not None:
            if self.world_size < 2:
                raise ConfigError("the noise scale across workers needs at least 2 workers")
            self.ddp.register_comm_hook(None, self.noise.comm_hook)

    def set_batch(self, batch_size: int, accumulation_steps: int = 1) -> None:
        check_world_size(self.world_size, batch_size, accumulation_steps)
        super().set_batch(batch_size, accumulation_steps)

    def _backward(self, batch: Any, parts: int) -> float:
        from batchsage.engine.run import accumulate_gradients

        callback = self._micro_callback() if self.hooks else None
        return accumulate_gradients(self.ddp, batch, self.task.loss_fn, parts, callback)

    def _timed_step(self) -> tuple[float, float]:
        loss, seconds = super()._timed_step()
        # One all-reduce per step: the global batch's mean loss (equal shares), rank 0's seconds,
        # and on a measured step the cross-worker noise scale's |g_local|².
        extra = self.noise.pending_scalars() if self.noise is not None else []
        main_seconds = seconds if self.rank == 0 else 0.0
        total_loss, main_seconds, *sums = all_reduce_sum([loss / self.world_size, main_seconds, *extra])
        if self.noise is not None and sums:
            self.noise.finish_step(sums[0], self.world_size)
        return total_loss, main_seconds

    def _measure_metric(self) -> float:
        value = super()._measure_metric() if self.rank == 0 else math.nan
        return broadcast_from_main(value)

    def fork(self, hooks: Sequence[TrainingHook] = ()) -> Run:
        raise ConfigError("a data-parallel run cannot be forked (its model is shared with the other ranks)")


def _refuse_local_monitors(hooks: Sequence[TrainingHook]) -> None:
    from batchsage.noise import NoiseScaleMonitor

    if any(isinstance(hook, NoiseScaleMonitor) for hook in hooks):
        raise ConfigError("NoiseScaleMonitor reads micro-batch gradients of one process; under data "
                          "parallelism the last one is already all-reduced: use CrossWorkerNoise")


def train_data_parallel(
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
    hooks: Sequence[TrainingHook] = (),
) -> TrainResult:
    """:func:`batchsage.engine.train` on this rank of an initialised process group.

    ``batch_size`` is global; every rank returns the same result (rank 0's step seconds).
    """
    run = DataParallelRun(task, batch_size, lr, accumulation_steps=accumulation_steps,
                          warmup_steps=warmup_steps, seed=seed, device=device, hooks=hooks,
                          eval_every_samples=eval_every_samples)
    reason = run.train_until(max_samples=max_samples, max_seconds=max_seconds, max_steps=max_steps,
                             stop_at_target=stop_at_target)
    return run.result(reason)


# --------------------------------------------------------------------------------------------
# Launching workers on this machine (torch's elastic launcher, as torchrun --standalone)
# --------------------------------------------------------------------------------------------


def standalone_config(nproc: int) -> Any:
    """torchrun --standalone --nproc-per-node ``nproc`` as a LaunchConfig: one machine, a c10d
    rendezvous on a free local port, no restarts."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                        monitor_interval=0.1)


@contextmanager
def _quiet_agent() -> Iterator[None]:
    """The elastic agent logs its progress and each worker's failure; batchsage reports failures
    itself (a worker's own one-line error is already on stderr). The agent also leaves its signal
    handlers installed: the caller's are put back afterwards."""
    handled = [getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
               if hasattr(signal, name)]
    handlers = {sig: signal.getsignal(sig) for sig in handled}
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def launch(function: Callable[..., Any], nproc: int, *args: Any, threads: int = 1) -> dict[int, Any]:
    """Run ``function(*args)`` on ``nproc`` worker processes of this machine; returns {rank: value}.

    Each worker is started by torch's elastic launcher (spawned, so ``function`` and ``args`` must
    pickle: a module-level function, and a task by its ``source``), with torchrun's environment
    (RANK, WORLD_SIZE, MASTER_ADDR...) and ``threads`` torch threads; it joins the process group
    itself (:func:`process_group`). A failed worker raises :class:`WorkerFailed`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    with _threads_env(threads), _quiet_agent():
        try:
            return dict(elastic_launch(standalone_config(nproc), function)(*args))
        except ChildFailedError as exc:
            raise WorkerFailed.from_child_failure(exc) from None


def launch_command(argv: Sequence[str], nproc: int, *, threads: int = 1) -> int:
    """Run ``python -m batchsage ARGV`` on ``nproc`` workers, as ``torchrun --standalone
    --nproc-per-node NPROC -m batchsage ARGV`` would; returns 0, or the failed worker's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    sys.stdout.flush()
    sys.stderr.flush()
    with _threads_env(threads), _quiet_agent():
        try:
            elastic_launch(standalone_config(nproc), sys.executable)("-m", "batchsage", *argv)
        except ChildFailedError as exc:
            return WorkerFailed.from_child_failure(exc).exit_code
    return 0


@contextmanager
def _threads_env(threads: int) -> Iterator[None]:
    """OMP_NUM_THREADS for the workers (torchrun sets 1 for several workers per machine)."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


class WorkerFailed(ConfigError):
    """A launched worker exited with an error (its own message is on stderr above)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def from_child_failure(cls, error: Any) -> WorkerFailed:
        rank, failure = min(error.failures.items())
        code = int(failure.exitcode) if failure.exitcode is not None else 1
        detail = ""
        message = failure.message if isinstance(failure.message, dict) else {}
        extra = message.get("message", {}) if isinstance(message, dict) else {}
        if isinstance(extra, dict) and extra.get("py_callstack"):
            detail = ": " + str(extra["py_callstack"]).strip().splitlines()[-1]
        elif failure.error_file_data and isinstance(failure.error_file_data, dict):
            inner = failure.error_file_data.get("message", {})
            if isinstance(inner, dict) and inner.get("message"):
                detail = ": " + str(inner["message"]).strip().splitlines()[-1]
        return cls(f"worker rank {rank} failed (exit code {code}){detail}", code if code > 0 else 1)


def wait_for_main_rank(seconds: float = 2.0) -> None:
    """On ranks other than 0, pause before exiting on an error, so that rank 0 (which reports it)
    is not stopped by the launcher before it has said why; a no-op on rank 0 and outside launches."""
    try:
        world = launched_world()
    except ConfigError:
        return
    if world is not None and world.rank > 0:
        time.sleep(seconds)
