"""Which trials a sweep runs, and in which order.

A trial is one (batch size, learning rate, seed). The grid is every batch size × its learning
rates × the seeds; the order puts the trials most likely to be fast first, because the first good
time-to-target found is what lets every later trial be cut early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batchsage.errors import ConfigError
from batchsage.plan import scaled_lr
from batchsage.task import Task

#: The seeds' practice starts the doubling here (DESIGN.md: "start at 32 or 64").
DOUBLING_START = 32
#: Default grid: powers of two from here to the memory ceiling.
GRID_LOW = 16
DEFAULT_LR_MULTIPLIERS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class TrialKey:
    """One trial's coordinates; ``id`` names it in the storage (repr keeps every float bit)."""

    batch_size: int
    lr: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.batch_size}|{self.lr!r}|{self.seed}"

    @property
    def config(self) -> tuple[int, float]:
        return self.batch_size, self.lr

    def label(self) -> str:
        return f"B={self.batch_size} lr={self.lr:.4g} seed={self.seed}"


def seed_list(task: Task, seeds: int | Sequence[int]) -> list[int]:
    """``seeds=N`` means the task's seed and the N−1 following it; a list is taken as given."""
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds must be a positive integer or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds <= 0:
            raise ConfigError(f"seeds must be a positive integer, got {seeds}")
        return [task.seed + index for index in range(seeds)]
    values = list(seeds)
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) for s in values):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    return list(dict.fromkeys(values))


def default_batch_sizes(ceiling: int, low: int = GRID_LOW) -> list[int]:
    """Powers of two from ``low`` up to ``ceiling`` (just ``[ceiling]`` when it is below ``low``)."""
    if ceiling < low:
        return [ceiling]
    sizes = []
    value = low
    while value <= ceiling:
        sizes.append(value)
        value *= 2
    return sizes


def rule_lr(task: Task, batch_size: int, anchor: tuple[int, float] | None = None) -> float:
    """The learning rate the task's scaling rule gives ``batch_size``, from ``anchor`` (B0, lr0).

    The anchor defaults to the task's (base_batch_size, base_lr); no noise scale is known here,
    so the rule is pure linear (SGD-like) or square-root (Adam-like) scaling.
    """
    base_batch, base_lr = anchor or (task.base_batch_size, task.base_lr)
    return scaled_lr(batch_size, base_batch, base_lr, task.resolved_lr_scaling(), b_noise=None)


def grid_trials(
    task: Task,
    batch_sizes: Sequence[int],
    *,
    lrs: Sequence[float] | None = None,
    lr_multipliers: Sequence[float] = DEFAULT_LR_MULTIPLIERS,
    seeds: int | Sequence[int] = 1,
    first: Sequence[tuple[int, float]] = (),
    anchor: tuple[int, float] | None = None,
) -> list[TrialKey]:
    """Every (B, lr, seed) of the grid, most promising first.

    Args:
        batch_sizes: the batch sizes to try.
        lrs: the same learning rates for every B; by default each B gets the rule's lr
            (see :func:`rule_lr`) times each of ``lr_multipliers``.
        seeds: number of seeds, or the seeds themselves.
        first: (B, lr) pairs run before everything else (e.g. the recommendation); added to the
            grid if they are not in it.
        anchor: (B0, lr0) the lr rule scales from (default: the task's base batch size and lr).

    Order: ``first`` (for each seed), then the first seed's whole grid before any replicate,
    and within a seed the trials closest to the anchor (in log2 of B and of the lr ratio to the
    rule) before those further away: a good time found early cuts every later trial short.
    """
    seed_values = seed_list(task, seeds)
    _checked_batch_sizes(task, list(batch_sizes) + [b for b, _ in first])
    anchor_batch = first[0][0] if first else (anchor or (task.base_batch_size, task.base_lr))[0]
    configs: dict[tuple[int, float], float] = {}  # (B, lr) -> distance from the anchor
    for batch_size in dict.fromkeys(int(b) for b in batch_sizes):
        rule = rule_lr(task, batch_size, anchor)
        for lr in _lrs_for(rule, lrs, lr_multipliers):
            distance = abs(math.log2(batch_size / anchor_batch)) + abs(math.log2(lr / rule))
            configs.setdefault((batch_size, lr), distance)
    ordered_first = [(int(b), _checked_lr(lr)) for b, lr in first]
    rest = sorted(
        (config for config in configs if config not in ordered_first),
        key=lambda config: (configs[config], config[0], config[1]),
    )
    keys = [TrialKey(b, lr, seed) for seed in seed_values for b, lr in ordered_first]
    keys += [TrialKey(b, lr, seed) for seed in seed_values for b, lr in rest]
    return list(dict.fromkeys(keys))


def nearest_first(keys: Sequence[TrialKey], *, pinned: int, best: dict[int, tuple[float, TrialKey]],
                  multiplier: Callable[[int, float], float]) -> list[TrialKey]:
    """Re-order ``keys[pinned:]`` around the best trials found so far (the first ``pinned`` stay).

    ``best`` maps a seed to (its best time to target, that trial's key). Seeds keep their order
    (every trial of a seed before the next seed's); within a seed, the trials nearest the best
    configuration so far — of that seed, else the fastest of any seed — come first, nearness
    being |log2 B/B*| + |log2 m/m*| with m the lr's multiple of the rule at its B. The sweep so
    walks towards the optimum the way the doubling does, but through the whole grid: good times
    are found early and the trials after them are cut sooner. Without a best yet, the order is
    unchanged.
    """
    head, tail = list(keys[:pinned]), list(keys[pinned:])
    if not best or not tail:
        return head + tail
    seed_rank = {seed: rank for rank, seed in enumerate(dict.fromkeys(key.seed for key in keys))}
    fastest = min(best.values(), key=lambda entry: entry[0])[1]

    def distance(key: TrialKey) -> float:
        ref = best[key.seed][1] if key.seed in best else fastest
        return abs(math.log2(key.batch_size / ref.batch_size)) + abs(
            math.log2(multiplier(key.batch_size, key.lr) / multiplier(ref.batch_size, ref.lr))
        )

    order = sorted(range(len(tail)), key=lambda i: (seed_rank[tail[i].seed], distance(tail[i]), i))
    return head + [tail[i] for i in order]


def _lrs_for(rule: float, lrs: Sequence[float] | None, multipliers: Sequence[float]) -> list[float]:
    if lrs is not None:
        values = [_checked_lr(lr) for lr in lrs]
    else:
        if not multipliers:
            raise ConfigError("lr_multipliers must not be empty")
        values = [_checked_lr(rule * _checked_multiplier(m)) for m in multipliers]
    if not values:
        raise ConfigError("the list of learning rates must not be empty")
    return list(dict.fromkeys(values))


def _checked_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"learning rates must be positive numbers, got {lr!r}")
    return float(lr)


def _checked_multiplier(multiplier: object) -> float:
    if (isinstance(multiplier, bool) or not isinstance(multiplier, int | float)
            or not math.isfinite(multiplier) or multiplier <= 0):
        raise ConfigError(f"lr multipliers must be positive numbers, got {multiplier!r}")
    return float(multiplier)


def _checked_batch_sizes(task: Task, sizes: list[object]) -> None:
    if not sizes:
        raise ConfigError("the list of batch sizes must not be empty")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"batch sizes must be positive integers, got {size!r}")
        if size > task.num_train_samples:
            raise ConfigError(
                f"batch size {size} exceeds the {task.num_train_samples} training samples of "
                f"task {task.name!r}"
            )
