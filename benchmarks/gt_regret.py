"""Ground-truth arithmetic: time to target per trial, the best configuration, regret, decision cost.

Pure Python on trial records, no torch, so it is tested without training anything.

Definitions (DESIGN.md "Measuring whether a recommendation is right"):

- a trial's time to target = its steps to target × the step time t(B) at its batch size, measured
  for all batch sizes interleaved in the same run (``gt_strategies.time_batch_sizes``; or pooled
  over the grid's trials, :func:`step_seconds_by_batch`). On a shared machine one trial's own clock
  is noisy; steps do not depend on the clock at all. The trial's own measured seconds are kept
  beside it (``measured_seconds_to_target``).
- a configuration's time = the median over seeds of its trials' times; a seed that did not reach
  the target (budget, divergence, or cut at ``censor_factor`` × the best time so far) counts as
  infinitely slow, so a configuration half of whose seeds fail has no finite median.
- best = the grid configuration with the smallest median time.
- regret = a strategy's median time ÷ the best time (1.0 is perfect);
  decision cost = the seconds it spent choosing ÷ the best time.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Two learning rates closer than this (relative) are the same configuration.
LR_REL_TOL = 1e-6


@dataclass
class Trial:
    """One training run of one (batch size, lr, seed) configuration."""

    batch_size: int
    lr: float
    seed: int
    reached_target: bool
    steps_to_target: int | None
    measured_seconds_to_target: float | None
    trial_step_seconds: float
    censored: bool = False
    diverged: bool = False
    stop_reason: str = ""
    accumulation_steps: int = 1
    warmup_steps: int = 0
    train_seconds: float = math.nan
    final_metric: float = math.nan
    source: str = "grid"
    steps_run: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, float, int, int]:
        """What makes two trials the same configuration (seed aside)."""
        return config_key(self.batch_size, self.lr, self.accumulation_steps, self.warmup_steps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extras"))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        known = {name for name in cls.__dataclass_fields__ if name != "extras"}
        fields = {key: value for key, value in data.items() if key in known}
        extras = {key: value for key, value in data.items() if key not in known}
        for name in ("train_seconds", "final_metric", "trial_step_seconds"):
            if fields.get(name) is None:
                fields[name] = math.nan
        return cls(**fields, extras=extras)


def config_key(batch_size: int, lr: float, accumulation_steps: int = 1,
               warmup_steps: int = 0) -> tuple[int, float, int, int]:
    """A hashable configuration identity; the lr is rounded so 0.1·3 and 0.3 coincide."""
    return (int(batch_size), float(f"{lr:.9g}"), int(accumulation_steps), int(warmup_steps))


def same_lr(first: float, second: float) -> bool:
    return math.isclose(first, second, rel_tol=LR_REL_TOL)


def step_seconds_by_batch(trials: Iterable[Trial]) -> dict[int, float]:
    """Median step time per batch size over all plain trials (no accumulation) at that size."""
    pooled: dict[int, list[float]] = defaultdict(list)
    for trial in trials:
        if trial.accumulation_steps == 1 and math.isfinite(trial.trial_step_seconds):
            pooled[trial.batch_size].append(trial.trial_step_seconds)
    return {batch: statistics.median(times) for batch, times in pooled.items() if times}


def trial_step_time(trial: Trial, step_seconds: dict[int, float]) -> float:
    """The step time charged to a trial: t(micro-batch) × accumulation from ``step_seconds``,
    or the trial's own median step time when its micro-batch was not measured."""
    micro = trial.batch_size // trial.accumulation_steps
    if micro in step_seconds:
        return trial.accumulation_steps * step_seconds[micro]
    return trial.trial_step_seconds


def time_to_target(trial: Trial, step_seconds: dict[int, float]) -> float:
    """steps to target × the step time at the trial's batch size; inf when not reached."""
    if not trial.reached_target or trial.steps_to_target is None:
        return math.inf
    return trial.steps_to_target * trial_step_time(trial, step_seconds)


def median_time(times: Sequence[float]) -> float:
    """Median over seeds; an unreached seed is +inf (so 1 of 2 failing gives inf)."""
    if not times:
        return math.inf
    ordered = sorted(times)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    low, high = ordered[middle - 1], ordered[middle]
    return math.inf if math.isinf(high) else (low + high) / 2.0


@dataclass(frozen=True)
class ConfigSummary:
    batch_size: int
    lr: float
    accumulation_steps: int
    warmup_steps: int
    seconds_to_target: float
    seeds: int
    reached: int


def summarise_configs(trials: Iterable[Trial], step_seconds: dict[int, float]) -> list[ConfigSummary]:
    """Median time over seeds for every configuration among ``trials``."""
    groups: dict[tuple[int, float, int, int], list[Trial]] = defaultdict(list)
    for trial in trials:
        groups[trial.key].append(trial)
    summaries = []
    for group in groups.values():
        first = group[0]
        times = [time_to_target(trial, step_seconds) for trial in group]
        summaries.append(
            ConfigSummary(first.batch_size, first.lr, first.accumulation_steps, first.warmup_steps,
                          median_time(times), len(group), sum(math.isfinite(t) for t in times))
        )
    return sorted(summaries, key=lambda s: (s.batch_size, s.lr))


def best_config(summaries: Iterable[ConfigSummary]) -> ConfigSummary | None:
    """The configuration with the smallest finite median time (None if nothing reached)."""
    finite = [s for s in summaries if math.isfinite(s.seconds_to_target)]
    if not finite:
        return None
    return min(finite, key=lambda s: (s.seconds_to_target, s.batch_size))


def regret(seconds_to_target: float, best_seconds: float) -> float:
    """Time to target ÷ the best time to target; inf when the strategy never reached the target."""
    if not best_seconds > 0 or not math.isfinite(best_seconds):
        raise ValueError(f"best time to target must be a positive finite number, got {best_seconds}")
    return seconds_to_target / best_seconds


def decision_cost(decision_seconds: float, best_seconds: float) -> float:
    """Seconds spent choosing ÷ the best time to target."""
    if not best_seconds > 0 or not math.isfinite(best_seconds):
        raise ValueError(f"best time to target must be a positive finite number, got {best_seconds}")
    return decision_seconds / best_seconds


def censored_bound(trial: Trial, step_seconds: dict[int, float]) -> float:
    """What a cut trial is known to need at least: the steps it ran × its step time."""
    return (trial.steps_run or 0) * trial_step_time(trial, step_seconds)


def censored_lower_bound(trials: Sequence[Trial], step_seconds: dict[int, float],
                         best_seconds: float) -> float | None:
    """For a configuration whose median is inf because runs were cut: the regret it at least has.

    A cut run did ``steps_run`` steps without reaching the target, so its time to target is at
    least steps_run × its step time. Returns the median of these bounds ÷ best, or None.
    """
    bounds = []
    for trial in trials:
        if trial.reached_target:
            bounds.append(time_to_target(trial, step_seconds))
        elif trial.censored and trial.steps_run is not None:
            bounds.append(censored_bound(trial, step_seconds))
        else:
            return None  # diverged or out of budget: no finite bound says anything useful
    if not bounds:
        return None
    return statistics.median(bounds) / best_seconds


# -- when a decision pays for itself ----------------------------------------------------------------
#
# A strategy's wall clock to the target, decision included, as a function of how long the training
# is: T = the best configuration's seconds to target (a harder target or a bigger data set scales
# it). total(T) = fixed decision seconds + (regret + decision cost that grows with T) × T. The
# regrets are the ones measured at this task's T: the lines assume they hold at other lengths.

#: Strategies whose decision trains to the target (a sweep), so its seconds grow with the training.
DECISION_TRAINS_TO_TARGET = frozenset({"doubling"})


@dataclass(frozen=True)
class Totals:
    """total(T) = fixed_seconds + per_best_second × T; ``at_least``: the slope is a lower bound."""

    fixed_seconds: float
    per_best_second: float
    at_least: bool = False


def strategy_totals(name: str, regret_value: float | None, regret_at_least: float | None,
                    decision_seconds: float, decision_cost_value: float) -> Totals | None:
    """The strategy's total time as a line in T; None if it never reached the target (no bound)."""
    slope, at_least = regret_value, False
    if slope is None and regret_at_least is not None:
        slope, at_least = regret_at_least, True
    if slope is None or not math.isfinite(slope):
        return None
    if name in DECISION_TRAINS_TO_TARGET:
        return Totals(0.0, slope + decision_cost_value, at_least)
    return Totals(decision_seconds, slope, at_least)


@dataclass(frozen=True)
class Lead:
    """The training lengths T (seconds) over which ``ours`` reaches the target first, decision
    included: ``low`` ≤ T ≤ ``high`` (empty when low > high).

    ``low_is_upper_bound``: the other strategy's regret is a lower bound (its runs were cut), so the
    true ``low`` is at most this. ``unknown``: such a bound is no slower than ours, so the data
    cannot say.
    """

    low: float = 0.0
    high: float = math.inf
    low_is_upper_bound: bool = False
    unknown: bool = False

    @property
    def never(self) -> bool:
        return not self.unknown and self.low > self.high


NEVER = Lead(low=math.inf, high=0.0)


def lead(ours: Totals, other: Totals | None) -> Lead:
    """Where the line ``ours`` lies below ``other`` (None: the other never reaches the target)."""
    if other is None:
        return Lead()
    head_start = other.fixed_seconds - ours.fixed_seconds  # > 0: ours decides faster
    gain = other.per_best_second - ours.per_best_second    # > 0: ours trains faster
    if gain > 0:
        return Lead(low=max(0.0, -head_start / gain), low_is_upper_bound=other.at_least and head_start < 0)
    if other.at_least:
        return Lead(unknown=True)
    if head_start > 0:
        return Lead(high=head_start / -gain if gain < 0 else math.inf)
    return NEVER


def lead_over_all(leads: Iterable[Lead]) -> Lead:
    """The training lengths over which ``ours`` is ahead of every other strategy at once."""
    low, high, upper = 0.0, math.inf, False
    for each in leads:
        if each.unknown:
            return each
        if each.low >= low:
            low, upper = each.low, each.low_is_upper_bound
        high = min(high, each.high)
    return Lead(low, high, upper) if low <= high else NEVER
