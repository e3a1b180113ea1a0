"""The batch-size strategies the ground truth compares, each making its own (timed) choice.

Each strategy is a function ``task -> Choice``: the batch size and lr it would train with, and the
wall-clock seconds it spent deciding. The peers are re-implemented from their documented
procedures, with real training steps on the task, so their decision time is measured, not assumed:

- ``default32``: B = 32 at the task's base lr; deciding costs nothing.
- ``memory_ceiling``: PyTorch Lightning's ``BatchSizeFinder`` (``mode="binsearch"``): from B = 2,
  run ``steps_per_trial`` = 3 training steps per trial and double while the step fits, capped at the
  training-set size; after the first batch that does not fit, bisect between it and the last one
  that did. The lr is then scaled linearly (Goyal et al. 2017), as a user of the finder would.
- ``max_throughput``: Ludwig's ``batch_size: auto`` (``BatchSizeEvaluator``): from B = 2, time 5
  training steps, double while B ≤ 20 % of the training set and fits, stop at the first drop in
  samples/s, keep the fastest; lr scaled linearly. DeepSpeed's autotuner also maximises samples/s.
- ``batchsage``: :func:`batchsage.decide.recommend`, its own ``decision_seconds``.
- ``doubling``: the seed articles' procedure, run by the sweep engine (``procedure="doubling"``); its
  whole sweep's wall-clock is the decision time.

"Fits" is judged by the memory model the probe measured for the task (CPU has no allocator that
raises out-of-memory at a budget): the emulated finder stops exactly where a real one would hit the
budget, and still pays for every real step it runs below it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from batchsage.data import BatchStream, move_to
from batchsage.device import Device, resolve_device
from batchsage.engine import accumulate_gradients
from batchsage.plan import scaled_lr
from batchsage.task import Task

STRATEGIES = ("batchsage", "default32", "memory_ceiling", "max_throughput", "doubling")

#: Lightning BatchSizeFinder defaults (init_val=2, steps_per_trial=3, max_trials=25).
LIGHTNING_INIT_BATCH = 2
LIGHTNING_STEPS_PER_TRIAL = 3
LIGHTNING_MAX_TRIALS = 25
#: Ludwig BatchSizeEvaluator defaults (MIN_POSSIBLE_BATCH_SIZE=2, TOTAL_STEPS=5, max_trials=20,
#: MAX_BATCH_SIZE_DATASET_FRACTION=0.2).
LUDWIG_INIT_BATCH = 2
LUDWIG_STEPS = 5
LUDWIG_MAX_TRIALS = 20
LUDWIG_DATASET_FRACTION = 0.2


@dataclass
class Choice:
    """What a strategy would train with, and what choosing cost."""

    name: str
    batch_size: int
    lr: float
    decision_seconds: float
    accumulation_steps: int = 1
    warmup_steps: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "lr": self.lr,
            "accumulation_steps": self.accumulation_steps,
            "warmup_steps": self.warmup_steps,
            "decision_seconds": self.decision_seconds,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Choice:
        return cls(name=name, batch_size=int(data["batch_size"]), lr=float(data["lr"]),
                   decision_seconds=float(data["decision_seconds"]),
                   accumulation_steps=int(data.get("accumulation_steps", 1)),
                   warmup_steps=int(data.get("warmup_steps", 0)), details=data.get("details", {}))


def linear_lr(task: Task, batch_size: int) -> float:
    """The linear scaling rule from the task's anchor, whatever its optimiser."""
    return scaled_lr(batch_size, task.base_batch_size, task.base_lr, "linear")


def choose_default32(task: Task) -> Choice:
    batch_size = min(32, task.num_train_samples)
    return Choice("default32", batch_size, task.base_lr, 0.0)


class StepRunner:
    """Real training steps on one model, as a finder runs them (one model across trials)."""

    def __init__(self, task: Task, device: str | Device | None = "cpu", seed: int | None = None) -> None:
        self.task = task
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task.seed if seed is None else seed)
            self.model = task.make_model().to(self.device.torch_device)
        self.optimizer = task.make_optimizer(self.model.parameters(), task.base_lr)
        self.stream = BatchStream(task.train_data, seed=task.seed)

    def step_seconds(self, batch_size: int, steps: int) -> list[float]:
        """Seconds of each of ``steps`` training steps at ``batch_size`` (data gathering included)."""
        times = []
        self.model.train()
        for _ in range(steps):
            self.device.synchronize()
            start = time.perf_counter()
            batch = move_to(self.stream.next_batch(batch_size), self.device.torch_device)
            self.optimizer.zero_grad(set_to_none=True)
            accumulate_gradients(self.model, batch, self.task.loss_fn, 1)
            self.optimizer.step()
            self.device.synchronize()
            times.append(time.perf_counter() - start)
        return times


def lightning_search(
    num_samples: int,
    fits: Callable[[int], bool],
    run_trial: Callable[[int], None],
    *,
    init: int = LIGHTNING_INIT_BATCH,
    max_trials: int = LIGHTNING_MAX_TRIALS,
) -> tuple[int, list[int]]:
    """Lightning's binsearch batch-size scaling; returns (chosen batch, batches tried in order).

    ``run_trial(B)`` runs the trial's real steps (only for batches that fit: a batch that does not
    fit fails at its first step). Doubling is capped at the training-set size, where it stops.
    """
    tried: list[int] = []
    low, high = 0, None
    batch = min(init, num_samples)
    while len(tried) < max_trials:
        tried.append(batch)
        if not fits(batch):
            high = batch
            break
        run_trial(batch)
        low = batch
        if batch >= num_samples:
            break
        batch = min(2 * batch, num_samples)
    while high is not None and high - low > 1 and len(tried) < max_trials:
        batch = (low + high) // 2
        tried.append(batch)
        if fits(batch):
            run_trial(batch)
            low = batch
        else:
            high = batch
    return max(low, 1), tried


def ludwig_search(
    num_samples: int,
    fits: Callable[[int], bool],
    samples_per_second: Callable[[int], float],
    *,
    init: int = LUDWIG_INIT_BATCH,
    max_trials: int = LUDWIG_MAX_TRIALS,
    dataset_fraction: float = LUDWIG_DATASET_FRACTION,
) -> tuple[int, list[dict[str, float]]]:
    """Ludwig's throughput search; returns (chosen batch, measured points in order)."""
    points: list[dict[str, float]] = []
    best_batch, best_rate = min(init, num_samples), 0.0
    batch = min(init, num_samples)
    while len(points) < max_trials and batch <= max(dataset_fraction * num_samples, init) and fits(batch):
        rate = samples_per_second(batch)
        points.append({"batch_size": batch, "samples_per_second": rate})
        if rate < best_rate:
            break  # Ludwig assumes throughput does not recover once it drops
        best_batch, best_rate = batch, rate
        batch *= 2
    return best_batch, points


def choose_memory_ceiling(task: Task, fits: Callable[[int], bool],
                          device: str | Device | None = "cpu") -> Choice:
    start = time.perf_counter()
    runner = StepRunner(task, device)
    chosen, tried = lightning_search(
        task.num_train_samples, fits, lambda b: runner.step_seconds(b, LIGHTNING_STEPS_PER_TRIAL)
    )
    seconds = time.perf_counter() - start
    return Choice("memory_ceiling", chosen, linear_lr(task, chosen), seconds,
                  details={"procedure": "Lightning BatchSizeFinder, binsearch", "tried": tried})


def choose_max_throughput(task: Task, fits: Callable[[int], bool],
                          device: str | Device | None = "cpu") -> Choice:
    start = time.perf_counter()
    runner = StepRunner(task, device)

    def rate(batch: int) -> float:
        return batch / statistics.median(runner.step_seconds(batch, LUDWIG_STEPS))

    chosen, points = ludwig_search(task.num_train_samples, fits, rate)
    seconds = time.perf_counter() - start
    return Choice("max_throughput", chosen, linear_lr(task, chosen), seconds,
                  details={"procedure": "Ludwig batch_size=auto (samples/s)", "points": points})


def choose_batchsage(task: Task, *, device: str | None = "cpu", memory_budget_bytes: int | None = None,
                     budget_seconds: float | None = None, progress: bool = True) -> tuple[Choice, Any]:
    """Run ``recommend`` and return its choice with the full Recommendation."""
    from batchsage.decide import recommend

    kwargs: dict[str, Any] = {"device": device, "memory_budget_bytes": memory_budget_bytes,
                              "progress": progress}
    if budget_seconds is not None:
        kwargs["budget_seconds"] = budget_seconds
    rec = recommend(task, **kwargs)
    r = rec.recommended
    choice = Choice("batchsage", rec.batch_size, rec.lr, rec.decision_seconds,
                    accumulation_steps=int(r.get("accumulation_steps", 1)),
                    warmup_steps=int(r.get("warmup_steps", 0)),
                    details={"predicted_seconds": r.get("predicted_seconds"),
                             "predicted_steps": r.get("predicted_steps"),
                             "b_noise": rec.b_noise, "s_min": rec.s_min})
    return choice, rec


@dataclass
class StepTiming:
    """Step time per batch size, measured interleaved: every round times every B, shuffled."""

    step_seconds: dict[int, float]
    rounds: list[dict[int, float]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_seconds": {str(b): s for b, s in sorted(self.step_seconds.items())},
            "rounds": [{str(b): s for b, s in sorted(r.items())} for r in self.rounds],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepTiming:
        return cls(
            step_seconds={int(b): float(s) for b, s in data["step_seconds"].items()},
            rounds=[{int(b): float(s) for b, s in r.items()} for r in data["rounds"]],
            seconds=float(data["seconds"]),
        )


def time_batch_sizes(task: Task, batch_sizes: list[int], *, rounds: int = 5, steps: int = 3,
                     long_step_seconds: float = 1.0, device: str | Device | None = "cpu",
                     seed: int = 0) -> StepTiming:
    """t(B) for every B: the median over ``rounds`` of the median of ``steps`` timed steps.

    Each round visits every B in a fresh random order (after one untimed warm-up step), so a
    change in the machine's load hits all batch sizes alike and the ratios between them — all
    that regret depends on — stay fair; the median over rounds discards the rounds a burst of
    load fell on. A B whose warm-up step took longer than ``long_step_seconds`` is timed on one
    step per round (a long step already averages over many scheduler slices).
    """
    import random

    start = time.perf_counter()
    order = sorted(set(batch_sizes))
    generator = random.Random(seed)
    measured: list[dict[int, float]] = []
    for _ in range(rounds):
        runner = StepRunner(task, device, seed=seed)  # fresh weights: no drift towards NaN
        generator.shuffle(order)
        this_round = {}
        for batch in order:
            warmup = runner.step_seconds(batch, 1)[0]
            count = 1 if warmup > long_step_seconds else steps
            this_round[batch] = statistics.median(runner.step_seconds(batch, count))
        measured.append(this_round)
    medians = {b: statistics.median(r[b] for r in measured) for b in order}
    return StepTiming(medians, measured, time.perf_counter() - start)
