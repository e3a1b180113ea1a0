"""How many data-parallel workers, with which per-worker batch: time to target and its cost per K.

K workers run a global batch ``B = K × micro × accumulation``. Two things change with K: the
steps to the target, ``S(B) = S_min·(1 + B_noise/B)``, which stop falling once B passes the noise
scale; and the step time, which gains the gradient all-reduce. So past B_noise more workers buy
little speed, and each costs as much as the first.

The step-time model follows AdaptDL's (Qiao et al. 2021, ``goodput.py``): compute and
communication are measured apart and combined with a fitted degree of overlap,

    t(K, micro, acc) = (acc − 1)·c·t_c(micro) + ((c·t_c(micro))^γ + t_n(K)^γ)^(1/γ),   K > 1,
    t(1, micro, acc) = acc·t_c(micro),

where ``t_c`` is the one-process step time (batchsage's one step-time model,
:func:`batchsage.plan.step_time_model`, on steps measured at K = 1), γ ∈ [1, 10] the overlap
(1: none, the times add; 10: nearly full, the larger wins) and ``t_n(K) = a·2(K−1)/K + β·(K−2)``
the all-reduce: a ring all-reduce sends 2(K−1)/K of the gradient per worker, and β ≥ 0 is
AdaptDL's "retrogression" with the number of workers, fitted only when a K > 2 was measured
(else 0: the bandwidth term alone, an optimistic extrapolation). Accumulated micro-batches do
not communicate (``no_sync``). ``c`` ≥ 1 is not in AdaptDL's model: how much slower a worker
computes when K run at once than one alone (workers sharing cores or memory bandwidth, as
processes on one CPU do; about 1 for one GPU per worker). It grows with the batch where the
all-reduce does not, so the timings at several batch sizes tell them apart; it is fitted at the
measured K and kept for larger K.

:func:`measure_worker_step_times` times steps at K = 1 and at each measured K on this machine,
interleaved (K = 1 on rank 0 while the other ranks wait, then all ranks), in one launch of
worker processes; :func:`fit_step_time` fits (a, γ, β); :func:`plan_workers` predicts, for each
K, the best global batch (steps from a :class:`~batchsage.decide.Recommendation`, lr and warmup
of its candidate at that global batch), its time to target and worker-seconds; and
:func:`choose_workers` applies the rule: add workers while each step up in K keeps a marginal
efficiency ``(T(K)/T(K')) / (K'/K)`` of at least ``min_efficiency`` (0.75: a doubling must cut
the time by 1.5×, so its extra worker-seconds are at most a third more), and take the last K
that passed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from batchsage import plan
from batchsage.errors import ConfigError
from batchsage.jsonio import write_json

#: Default rule: a doubling of workers must give at least a 1.5× speed-up.
DEFAULT_MIN_EFFICIENCY = 0.75
GAMMA_BOUNDS = (1.0, 10.0)


# --------------------------------------------------------------------------------------------
# The step-time model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTiming:
    """Median seconds of a step at ``workers`` workers with a per-worker batch of ``micro_batch_size``
    (no accumulation), from ``steps`` timed steps."""

    workers: int
    micro_batch_size: int
    step_seconds: float
    steps: int


def ring_factor(workers: int) -> float:
    """Gradient fraction each worker sends in a ring all-reduce, relative to two workers: 2(K−1)/K."""
    return 2.0 * (workers - 1) / workers


@dataclass(frozen=True)
class ParallelStepTime:
    """t(K, micro, accumulation) = (acc − 1)·t_c + (t_c^γ + t_n(K)^γ)^(1/γ) (module docstring).

    Attributes:
        compute_sizes, compute_seconds: the K = 1 measurements ``t_c`` interpolates.
        compute_slowdown: ``c``, a worker's compute time among K ÷ alone (≥ 1).
        network_seconds: ``a``, the all-reduce's seconds at K = 2.
        retrogression_seconds: ``β``, extra seconds per worker beyond 2 (0 unless fitted).
        gamma: overlap of compute and communication, in [1, 10].
        measured_workers: the K whose steps were timed (others are extrapolated).
    """

    compute_sizes: tuple[int, ...]
    compute_seconds: tuple[float, ...]
    network_seconds: float
    retrogression_seconds: float
    gamma: float
    measured_workers: tuple[int, ...]
    compute_slowdown: float = 1.0

    def compute(self) -> Callable[[float], float]:
        return plan.step_time_model(list(self.compute_sizes), list(self.compute_seconds))

    def network(self, workers: int) -> float:
        """t_n(K): 0 for one worker."""
        if workers <= 1:
            return 0.0
        return self.network_seconds * ring_factor(workers) + self.retrogression_seconds * (workers - 2)

    def __call__(self, workers: int, micro_batch_size: int, accumulation_steps: int = 1) -> float:
        compute = self.compute()(micro_batch_size)
        if workers <= 1:
            return accumulation_steps * compute
        compute *= self.compute_slowdown
        return (accumulation_steps - 1) * compute + _overlap(compute, self.network(workers), self.gamma)


def _overlap(compute: float, network: float, gamma: float) -> float:
    return float((compute**gamma + network**gamma) ** (1.0 / gamma))


def fit_step_time(timings: Sequence[StepTiming]) -> ParallelStepTime:
    """Fit a, γ, c (and β when a K > 2 was timed) to log step times; t_c from the K = 1 timings.

    Least squares on log seconds (AdaptDL fits the same way), γ and c bounded to [1, 10], a and
    β ≥ 0; c stays 1 unless several workers were timed at three or more batch sizes.
    Raises ConfigError without K = 1 timings or without timings at more than one worker.
    """
    single = sorted((t.micro_batch_size, t.step_seconds) for t in timings if t.workers == 1)
    multi = [t for t in timings if t.workers > 1 and math.isfinite(t.step_seconds) and t.step_seconds > 0]
    if not single:
        raise ConfigError("the worker model needs step times at one worker")
    if not multi:
        raise ConfigError("the worker model needs step times at two or more workers")
    sizes = tuple(size for size, _ in single)
    seconds = tuple(value for _, value in single)
    compute = plan.step_time_model(list(sizes), list(seconds))
    has_retrogression = any(t.workers > 2 for t in multi)
    has_slowdown = len({t.micro_batch_size for t in multi}) >= 3
    t_c = np.array([compute(t.micro_batch_size) for t in multi])
    measured = np.array([t.step_seconds for t in multi])
    ring = np.array([ring_factor(t.workers) for t in multi])
    beyond = np.array([t.workers - 2 for t in multi], dtype=float)
    # Starting point: all of the extra time as communication, no overlap.
    start_network = max(float(np.median(np.maximum(measured - t_c, 0.0) / ring)), 1e-6)

    def residuals(params: np.ndarray) -> np.ndarray:
        network = math.exp(params[0]) * ring + (params[2] * beyond if has_retrogression else 0.0)
        gamma = params[1]
        compute = t_c * (params[3] if has_slowdown else 1.0)
        predicted = (compute**gamma + network**gamma) ** (1.0 / gamma)
        return np.log(predicted) - np.log(measured)

    lower = [math.log(1e-9), GAMMA_BOUNDS[0], 0.0, 1.0]
    upper = [math.log(1e4), GAMMA_BOUNDS[1], 1e4, 10.0]
    x0 = [math.log(start_network), 1.0 + 1e-3, 0.0, 1.0 + 1e-3]
    fitted = least_squares(residuals, x0, bounds=(lower, upper))
    network_seconds = math.exp(float(fitted.x[0]))
    if network_seconds < 1e-8:
        network_seconds = 0.0
    return ParallelStepTime(
        compute_sizes=sizes,
        compute_seconds=seconds,
        network_seconds=network_seconds,
        retrogression_seconds=float(fitted.x[2]) if has_retrogression else 0.0,
        gamma=float(fitted.x[1]),
        measured_workers=tuple(sorted({1, *(t.workers for t in multi)})),
        compute_slowdown=float(fitted.x[3]) if has_slowdown else 1.0,
    )


# --------------------------------------------------------------------------------------------
# Planning K with B
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOption:
    """The best configuration at ``workers`` workers and what it is predicted to cost.

    ``candidate.batch_size`` is global; ``candidate.micro_batch_size`` per worker and pass;
    ``candidate.step_seconds`` from :class:`ParallelStepTime`. ``worker_seconds`` = workers ×
    predicted seconds (the bill); ``speedup`` against one worker; ``measured``: this K's steps
    were timed here (else extrapolated by the model).
    """

    workers: int
    candidate: plan.Candidate
    per_rank_batch_size: int
    per_rank_ceiling: int
    worker_seconds: float
    speedup: float
    measured: bool

    @property
    def predicted_seconds(self) -> float:
        return self.candidate.predicted_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, **asdict(self.candidate),
                "per_rank_batch_size": self.per_rank_batch_size, "per_rank_ceiling": self.per_rank_ceiling,
                "worker_seconds": self.worker_seconds, "speedup": self.speedup, "measured": self.measured}


def per_rank_ceiling(memory: dict[str, Any], workers: int, device_type: str) -> int:
    """The largest per-worker micro-batch at ``workers`` workers (0: one sample does not fit).

    On a GPU every worker has its own device: the one-device ceiling. On CPU the workers share
    the machine's memory: K·(fixed + per_sample·b) must stay within the budget the ceiling was
    found under, so b ≤ (budget/K − fixed)/per_sample, never above the one-process ceiling.
    """
    ceiling = int(memory["max_batch_size"])
    if device_type != "cpu" or workers <= 1:
        return ceiling
    budget = memory.get("effective_budget_bytes") or memory["budget_bytes"]
    per_sample = float(memory["per_sample_bytes"])
    if per_sample <= 0:
        return ceiling
    shared = (float(budget) / workers - float(memory["fixed_bytes"])) / per_sample
    return max(0, min(ceiling, math.floor(shared)))


def plan_workers(candidates: Sequence[plan.Candidate], step_time: ParallelStepTime,
                 worker_counts: Sequence[int], ceilings: Callable[[int], int],
                 tolerance: float = 0.03) -> list[WorkerOption]:
    """For each K, the global batch (of the recommendation's ``candidates``) fastest to the target.

    A global batch B is possible at K workers when K divides it; each worker runs B/K samples,
    as micro-batches within its ``ceilings(K)`` (:func:`batchsage.plan.split_for_memory`). Steps,
    lr and warmup are the candidate's (they depend on the global batch only); the step time is
    ``step_time(K, micro, accumulation)``. Among near-ties the smallest batch wins
    (:func:`batchsage.plan.choose`).
    """
    options: list[WorkerOption] = []
    for workers in sorted(set(worker_counts)):
        ceiling = ceilings(workers)
        if ceiling < 1:
            continue
        planned = []
        for candidate in candidates:
            if candidate.batch_size % workers or not math.isfinite(candidate.predicted_steps):
                continue
            per_rank = candidate.batch_size // workers
            micro, accumulation = plan.split_for_memory(per_rank, ceiling)
            seconds = step_time(workers, micro, accumulation)
            planned.append(plan.Candidate(
                batch_size=candidate.batch_size, micro_batch_size=micro, accumulation_steps=accumulation,
                lr=candidate.lr, warmup_steps=candidate.warmup_steps,
                predicted_steps=candidate.predicted_steps, step_seconds=seconds,
                predicted_seconds=candidate.predicted_steps * seconds, fits_memory=accumulation == 1,
            ))
        if not planned:
            continue
        chosen = plan.choose(planned, tolerance)
        options.append(WorkerOption(
            workers=workers, candidate=chosen, per_rank_batch_size=chosen.batch_size // workers,
            per_rank_ceiling=ceiling, worker_seconds=workers * chosen.predicted_seconds, speedup=math.nan,
            measured=workers in step_time.measured_workers,
        ))
    if options:
        base = next((o for o in options if o.workers == 1), options[0])
        options = [_with_speedup(o, base.predicted_seconds / o.predicted_seconds) for o in options]
    return options


def _with_speedup(option: WorkerOption, speedup: float) -> WorkerOption:
    return WorkerOption(option.workers, option.candidate, option.per_rank_batch_size, option.per_rank_ceiling,
                        option.worker_seconds, speedup, option.measured)


def marginal_efficiency(smaller: WorkerOption, larger: WorkerOption) -> float:
    """(T(K)/T(K')) / (K'/K): 1 when the extra workers pay for themselves fully, 0.5 for a doubling
    that saves nothing... below 1/ratio when they slow the run down."""
    return (smaller.predicted_seconds / larger.predicted_seconds) / (larger.workers / smaller.workers)


def choose_workers(options: Sequence[WorkerOption],
                   min_efficiency: float = DEFAULT_MIN_EFFICIENCY) -> WorkerOption:
    """Walk K upwards; keep the next K while its marginal efficiency is at least ``min_efficiency``;
    the last K kept is the answer (the fastest whose extra workers still earn their cost)."""
    if not options:
        raise ConfigError("no worker count fits: not even one sample per worker fits in memory")
    if not 0.0 < min_efficiency <= 1.0:
        raise ConfigError(f"min_efficiency must be in (0, 1], got {min_efficiency!r}")
    ordered = sorted(options, key=lambda option: option.workers)
    chosen = ordered[0]
    for option in ordered[1:]:
        if marginal_efficiency(chosen, option) < min_efficiency:
            break
        chosen = option
    return chosen


def worker_counts_up_to(max_workers: int) -> list[int]:
    """1, 2, 4, ... up to ``max_workers``, and ``max_workers`` itself."""
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")
    return plan.power_of_two_grid(1, max_workers)


# --------------------------------------------------------------------------------------------
# Measuring (worker processes on this machine)
# --------------------------------------------------------------------------------------------


def _time_steps(run: Any, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        run.step()
    start = len(run.step_log)
    for _ in range(steps):
        run.step()
    return statistics.median(seconds for _, seconds, _ in run.step_log[start:])


def time_ranks(task_source: str, sizes: Sequence[int], steps: Sequence[int], rounds: int,
               device: str, warmup: int = 2) -> dict[str, Any]:
    """On each launched worker: step times at K = 1 (rank 0 alone, the others waiting) and at K =
    world size, per-worker batch ``sizes[i]`` for ``steps[i]`` steps, interleaved over ``rounds``;
    and this rank's peak resident memory (in-process: no fork under a process group)."""
    import torch
    import torch.distributed as dist

    from batchsage.engine import Run
    from batchsage.engine.distributed import (
        DataParallelRun,
        launched_world,
        peak_resident_bytes,
        process_group,
        rank_device,
    )
    from batchsage.task import load_task

    world = launched_world()
    if world is None:
        raise ConfigError("time_ranks runs on launched workers")
    task = load_task(task_source)
    dev = rank_device(device, world)
    samples: dict[tuple[int, int], list[float]] = {}
    resident_before = peak_resident_bytes()
    with process_group(world, dev):
        for _ in range(rounds):
            for size, count in zip(sizes, steps, strict=True):
                if world.rank == 0:
                    alone = Run(task, size, task.base_lr, device=dev)
                    samples.setdefault((1, size), []).append(_time_steps(alone, count, warmup))
                    del alone
                dist.barrier()
                together = DataParallelRun(task, size * world.world_size, task.base_lr, device=dev)
                samples.setdefault((world.world_size, size), []).append(_time_steps(together, count, warmup))
                del together
                dist.barrier()
        peak = peak_resident_bytes()
        peaks = [0.0] * world.world_size
        if peak is not None:
            peaks[world.rank] = float(peak)
        tensor = torch.tensor(peaks, dtype=torch.float64,
                              device="cuda" if dev.type == "cuda" else "cpu")
        dist.all_reduce(tensor)
    return {
        "timings": [
            {"workers": workers, "micro_batch_size": size, "step_seconds": statistics.median(values),
             "steps": len(values) * steps[list(sizes).index(size)]}
            for (workers, size), values in sorted(samples.items())
        ],
        "peak_resident_bytes": [int(value) for value in tensor.cpu().tolist()],
        "resident_before_bytes": resident_before,
        "device": dev.type,
    }


@dataclass
class WorkerMeasurement:
    """Step times at one and more workers on this machine, and the ranks' peak memory."""

    workers: int
    timings: list[StepTiming]
    peak_resident_bytes: list[int]
    seconds: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "timings": [asdict(t) for t in self.timings],
                "peak_resident_bytes": self.peak_resident_bytes, "seconds": self.seconds,
                "threads": self.threads}


def measure_worker_step_times(task_source: str, sizes: Sequence[int], *, workers: int = 2,
                              step_seconds_hint: Callable[[int], float] | None = None,
                              budget_seconds: float = 10.0, rounds: int = 2, device: str = "cpu",
                              threads: int = 1) -> WorkerMeasurement:
    """Launch ``workers`` worker processes and time steps at K = 1 and K = ``workers`` (module
    docstring); ``step_seconds_hint(b)`` (e.g. the recommendation's t(B)) sizes the number of
    timed steps so that the whole measurement takes about ``budget_seconds`` of stepping."""
    from batchsage.engine.distributed import launch

    if workers < 2:
        raise ConfigError(f"measuring data-parallel steps needs at least 2 workers, got {workers}")
    if not sizes:
        raise ConfigError("no per-worker batch sizes to measure")
    share = budget_seconds / (2 * rounds * len(sizes))
    steps = []
    for size in sizes:
        guess = step_seconds_hint(size) if step_seconds_hint is not None else math.nan
        count = int(share / guess) if math.isfinite(guess) and guess > 0 else 10
        steps.append(min(max(count, 5), 200))
    started = time.perf_counter()
    reports = launch(time_ranks, workers, task_source, list(sizes), steps, rounds, device, threads=threads)
    report = reports[0]
    timings = [StepTiming(**timing) for timing in report["timings"]]
    return WorkerMeasurement(workers=workers, timings=timings,
                             peak_resident_bytes=report["peak_resident_bytes"],
                             seconds=time.perf_counter() - started, threads=threads)


# --------------------------------------------------------------------------------------------
# The whole decision
# --------------------------------------------------------------------------------------------


@dataclass
class WorkersRecommendation:
    """The number of workers with its per-worker batch, and the evidence."""

    task: str
    device: str
    workers: int
    batch_size: int
    per_rank_batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    lr: float
    warmup_steps: int
    predicted_seconds: float
    worker_seconds: float
    min_efficiency: float
    options: list[WorkerOption]
    step_time: ParallelStepTime
    measurement: WorkerMeasurement
    model_check: list[dict[str, float]] = field(default_factory=list)
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "device": self.device,
            "recommended": {
                "workers": self.workers, "batch_size": self.batch_size,
                "per_rank_batch_size": self.per_rank_batch_size, "micro_batch_size": self.micro_batch_size,
                "accumulation_steps": self.accumulation_steps, "lr": self.lr,
                "warmup_steps": self.warmup_steps, "predicted_seconds": self.predicted_seconds,
                "worker_seconds": self.worker_seconds,
            },
            "rule": self.rule, "min_efficiency": self.min_efficiency,
            "options": [option.to_dict() for option in self.options],
            "step_time_model": {**asdict(self.step_time),
                                "formula": "t = (acc-1)*c*t_c(micro) + ((c*t_c)^gamma + t_n(K)^gamma)"
                                           "^(1/gamma), t_n(K) = a*2(K-1)/K + beta*(K-2), K > 1"},
            "model_check": self.model_check,
            "measurement": self.measurement.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        write_json(target, self.to_dict())
        return target


def rule_text(min_efficiency: float) -> str:
    doubling = 2 * min_efficiency
    return (f"add workers while each step up in K keeps a marginal efficiency (speed-up ÷ worker ratio) "
            f"of at least {min_efficiency:.2f}, i.e. a doubling must be {doubling:.2f}× faster")


def measured_sizes(candidates: Sequence[plan.Candidate], ceiling: int, workers: int, dataset_size: int,
                   max_sizes: int = 5, within: float = 3.0) -> list[int]:
    """Per-worker batches to time: the micro-batches of the candidates predicted (in one process)
    within ``within`` × the fastest, at 1 and at ``workers`` workers; at most ``max_sizes`` of them,
    log-spaced. The step-time model interpolates between them and extrapolates beyond."""
    finite = [c for c in candidates if math.isfinite(c.predicted_seconds)]
    if not finite:
        raise ConfigError("the recommendation predicts no finite time to target for any batch size")
    best = min(c.predicted_seconds for c in finite)
    near = [c for c in finite if c.predicted_seconds <= within * best]
    largest = min(ceiling, dataset_size // workers)  # K workers at b: a global batch of K·b samples
    wanted = sorted({min(c.batch_size // k, largest) for c in near for k in (1, workers)
                     if c.batch_size // k >= 1})
    if len(wanted) <= max_sizes:
        return wanted
    picks = np.unique(np.round(np.geomspace(1, len(wanted), max_sizes)).astype(int) - 1)
    return [wanted[i] for i in picks]


def recommend_workers(task: Any, recommendation: Any, *, max_workers: int = 8, measure_workers: int = 2,
                      min_efficiency: float = DEFAULT_MIN_EFFICIENCY, budget_seconds: float = 10.0,
                      device: str = "auto", threads: int = 1, max_sizes: int = 5) -> WorkersRecommendation:
    """Time steps at 1 and ``measure_workers`` workers here, fit the step-time model, and choose K ≤
    ``max_workers`` with its batch from ``recommendation`` (a :class:`~batchsage.decide.Recommendation`
    of the same task: its S(B), lr and warmup per global batch, and its memory profile).

    ``task`` must have a ``source`` (a built-in name or ``file.py:ATTR``): the workers load it.
    """
    from batchsage.device import resolve_device

    if task.source is None:
        raise ConfigError("the workers load the task themselves: give it as a built-in name or file.py:ATTR")
    if recommendation.task != task.name:
        raise ConfigError(f"the recommendation is for task {recommendation.task!r}, not {task.name!r}")
    dev = resolve_device(device)
    if recommendation.device.split(":")[0] != dev.type:
        raise ConfigError(f"the recommendation was measured on {recommendation.device}, the workers "
                          f"would run on {dev.type}: decide on the device you train on")
    if isinstance(measure_workers, bool) or not isinstance(measure_workers, int) or measure_workers < 2:
        raise ConfigError(f"measure_workers must be an integer of at least 2, got {measure_workers!r}")
    counts = sorted({*worker_counts_up_to(max_workers), measure_workers})
    memory = recommendation.memory
    ceiling_measured = per_rank_ceiling(memory, measure_workers, dev.type)
    if ceiling_measured < 1:
        raise ConfigError(f"one sample per worker does not fit in memory at {measure_workers} workers")
    sizes = measured_sizes(recommendation.candidates, ceiling_measured, measure_workers,
                           task.num_train_samples, max_sizes)
    hint = plan.step_time_model([p["batch_size"] for p in recommendation.throughput],
                                [p["step_seconds_median"] for p in recommendation.throughput])
    measurement = measure_worker_step_times(task.source, sizes, workers=measure_workers,
                                            step_seconds_hint=hint, budget_seconds=budget_seconds,
                                            device=dev.type, threads=threads)
    step_time = fit_step_time(measurement.timings)
    options = plan_workers(recommendation.candidates, step_time, counts,
                           lambda k: per_rank_ceiling(memory, k, dev.type))
    chosen = choose_workers(options, min_efficiency)
    check = [{"workers": t.workers, "micro_batch_size": t.micro_batch_size,
              "measured_seconds": t.step_seconds, "model_seconds": step_time(t.workers, t.micro_batch_size)}
             for t in measurement.timings]
    candidate = chosen.candidate
    return WorkersRecommendation(
        task=task.name, device=dev.type, workers=chosen.workers, batch_size=candidate.batch_size,
        per_rank_batch_size=chosen.per_rank_batch_size, micro_batch_size=candidate.micro_batch_size,
        accumulation_steps=candidate.accumulation_steps, lr=candidate.lr, warmup_steps=candidate.warmup_steps,
        predicted_seconds=candidate.predicted_seconds, worker_seconds=chosen.worker_seconds,
        min_efficiency=min_efficiency, options=options, step_time=step_time, measurement=measurement,
        model_check=check, rule=rule_text(min_efficiency),
    )
