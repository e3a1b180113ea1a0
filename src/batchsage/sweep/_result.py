"""What a sweep returns: one :class:`SweepTrial` per (B, lr, seed), the best, the compute saved."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: States of a trial in the report. ``complete``: ran to its target, budget or divergence;
#: ``pruned``: cut because it could no longer beat the best; ``censored``: cut past
#: censor_factor × the best; ``waiting``/``running``: not finished (an interrupted sweep).
CUT_STATES = ("pruned", "censored")
FINISHED = ("complete", *CUT_STATES)

#: Keys of each trial in ``sweep.json`` (the issue's schema first, then the extras).
TRIAL_JSON_KEYS = (
    "batch_size", "lr", "seed", "state", "reached_target", "seconds_to_target", "steps_to_target",
    "final_metric", "diverged", "step_seconds_median", "train_seconds", "steps", "stop_reason",
    "estimated_full_seconds", "out_of_memory", "wall_seconds", "number", "ran_here",
)


@dataclass
class SweepTrial:
    """One trial's outcome. Seconds are training seconds (validation excluded) unless named wall.

    ``estimated_full_seconds`` is what the trial would have cost run to its target or budget:
    its own training seconds when it was not cut, an extrapolation when it was (see
    :func:`batchsage.sweep._cut.estimate_full_steps`). ``ran_here``: trained by this
    ``run_sweep`` call (False: reused from the storage, or run by another process).
    """

    batch_size: int
    lr: float
    seed: int
    state: str
    reached_target: bool = False
    seconds_to_target: float | None = None
    steps_to_target: int | None = None
    final_metric: float = math.nan
    diverged: bool = False
    step_seconds_median: float = math.nan
    train_seconds: float = 0.0
    steps: int = 0
    stop_reason: str = ""
    estimated_full_seconds: float = math.nan
    out_of_memory: bool = False
    wall_seconds: float = math.nan
    number: int | None = None
    ran_here: bool = False

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def config(self) -> tuple[int, float]:
        return self.batch_size, self.lr

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: data[key] for key in TRIAL_JSON_KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepTrial:
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**known)

    def time_score(self) -> float:
        """Seconds to target; a cut trial counts at its lower bound (the seconds it trained)."""
        if self.reached_target and self.seconds_to_target is not None:
            return float(self.seconds_to_target)
        if self.state in CUT_STATES:
            return self.train_seconds
        return math.inf


@dataclass
class SweepResult:
    """The sweep's answer: the fastest (B, lr) to target, every trial, and the compute saved.

    ``saved_fraction`` = 1 − spent ÷ estimated full cost, over finished trials, where the full
    cost runs every trial to its target or budget (cut trials: extrapolated, see SweepTrial).
    """

    task: str
    procedure: str
    trials: list[SweepTrial]
    best: dict[str, Any] | None
    saved_fraction: float
    spent_train_seconds: float
    estimated_full_train_seconds: float
    wall_seconds: float
    study: str
    storage: str
    metric_name: str
    target: float
    higher_is_better: bool
    ceiling: dict[str, Any] = field(default_factory=dict)
    doubling: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "procedure": self.procedure,
            "trials": [trial.to_dict() for trial in self.trials],
            "best": self.best,
            "saved_fraction": self.saved_fraction,
            "spent_train_seconds": self.spent_train_seconds,
            "estimated_full_train_seconds": self.estimated_full_train_seconds,
            "wall_seconds": self.wall_seconds,
            "trials_run_here": sum(trial.ran_here for trial in self.trials),
            "trials_finished": sum(trial.finished for trial in self.trials),
            "best_per_batch_size": best_per_batch_size(self.trials, self.higher_is_better),
            "study": self.study,
            "storage": self.storage,
            "metric": {"name": self.metric_name, "target": self.target,
                       "higher_is_better": self.higher_is_better},
            "ceiling": self.ceiling,
            "doubling": self.doubling,
        }

    def __repr__(self) -> str:
        best = self.best
        answer = (f"batch_size={best['batch_size']}, lr={best['lr']:.4g}, "
                  f"seconds_to_target={best['seconds_to_target']}") if best else "no trial reached the target"
        return (f"SweepResult(task={self.task!r}, {answer}, trials={len(self.trials)}, "
                f"saved_fraction={self.saved_fraction:.2f})")


def saved_compute(trials: Sequence[SweepTrial]) -> tuple[float, float, float]:
    """(saved_fraction, spent, estimated full) training seconds over the finished trials."""
    finished = [trial for trial in trials if trial.finished]
    spent = sum(trial.train_seconds for trial in finished)
    full = sum(
        trial.estimated_full_seconds if math.isfinite(trial.estimated_full_seconds) else trial.train_seconds
        for trial in finished
    )
    saved = 1.0 - spent / full if full > 0 else 0.0
    return max(0.0, saved), spent, full


def best_config(trials: Sequence[SweepTrial]) -> dict[str, Any] | None:
    """The (B, lr) with the lowest median time-to-target over its seeds.

    Configs whose every seed reached the target come first; if there are none, configs with at
    least one seed that did, counting a cut seed at its lower bound. Ties go to the smaller B.
    """
    by_config: dict[tuple[int, float], list[SweepTrial]] = defaultdict(list)
    for trial in trials:
        if trial.finished:
            by_config[trial.config].append(trial)
    for eligible in (
        {c: ts for c, ts in by_config.items() if all(t.reached_target for t in ts)},
        {c: ts for c, ts in by_config.items() if any(t.reached_target for t in ts)},
    ):
        scored = [
            (statistics.median(t.time_score() for t in ts), config, len(ts))
            for config, ts in eligible.items()
        ]
        scored = [entry for entry in scored if math.isfinite(entry[0])]
        if scored:
            seconds, (batch_size, lr), seeds = min(scored, key=lambda e: (e[0], e[1][0], e[1][1]))
            return {"batch_size": batch_size, "lr": lr, "seconds_to_target": seconds, "seeds": seeds}
    return None


def best_per_batch_size(trials: Sequence[SweepTrial], higher_is_better: bool) -> list[dict[str, Any]]:
    """For each B its best trial: fastest to target, or (none reached) best final metric."""
    rows = []
    for batch_size in sorted({trial.batch_size for trial in trials if trial.finished}):
        group = [t for t in trials if t.finished and t.batch_size == batch_size]
        winner = pick_best_trial(group, higher_is_better)
        rows.append({"batch_size": batch_size, "lr": winner.lr, "seed": winner.seed,
                     "number": winner.number, "reached_target": winner.reached_target,
                     "seconds_to_target": winner.seconds_to_target,
                     "final_metric": winner.final_metric})
    return rows


def pick_best_trial(group: Sequence[SweepTrial], higher_is_better: bool) -> SweepTrial:
    reached = [t for t in group if t.reached_target and t.seconds_to_target is not None]
    if reached:
        return min(reached, key=lambda t: t.seconds_to_target)  # type: ignore[arg-type,return-value]
    sign = -1.0 if higher_is_better else 1.0

    def badness(trial: SweepTrial) -> float:
        return sign * trial.final_metric if math.isfinite(trial.final_metric) else math.inf

    return min(group, key=badness)
