"""Cutting trials that cannot win, and estimating what a cut trial would have cost.

The objective is training seconds to target, and the best time-to-target found so far (same
seed) is a hard bar: a trial that has already trained that long cannot beat it. That cut is
exact, not a guess; it is what ``prune=True`` does first.

Successive-halving style rungs add earlier cuts, at training times ``best/η²`` and ``best/η``
(η = 3). Plain successive halving compares trials at equal budgets and keeps the top 1/η; for
time-to-target that is unsafe: at equal training seconds a larger batch with a scaled lr, or a
lower lr before it settles, can look worse and still reach the target first. So each rung asks a
question about the trial itself instead of ranking it against the others: *at the fastest pace
this trial has shown at any point (validation metric per training second), could it close its
remaining gap to the target before the best time?* Learning curves slow down as they converge,
so the fastest pace seen so far is an optimistic projection; a trial is cut only if even that
projection misses. A trial with fewer than three validations is never cut at a rung.

``censor_factor`` (with ``prune=False``) is the ground-truth benchmark's mode: nothing that could
be the best is cut; a trial past ``censor_factor ×`` the best time is stopped and marked censored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from batchsage.engine import StepUpdate, TrainingHook, TrainState

RUNG_ETA = 3.0
RUNG_FRACTIONS = (1.0 / RUNG_ETA**2, 1.0 / RUNG_ETA)
#: Validations a trial needs before a rung may cut it (two measured paces).
RUNG_MIN_VALIDATIONS = 3
#: How often (wall seconds) a running trial re-reads the best time from the storage, where other
#: processes may have improved it.
BEST_REFRESH_SECONDS = 1.0


def gap_to_target(metric: float, target: float, higher_is_better: bool) -> float:
    """How far a metric is from the target, in metric units (≤ 0: reached; NaN: diverged)."""
    return target - metric if higher_is_better else metric - target


class CutHook(TrainingHook):
    """Stops a trial once it cannot beat (``prune``) or is far behind (``censor_factor``) the best.

    ``best_seconds()`` returns the best time-to-target so far (None before any trial reached
    the target); it is called at most every ``BEST_REFRESH_SECONDS`` of wall time.
    """

    def __init__(self, best_seconds: Callable[[], float | None], *, target: float,
                 higher_is_better: bool, prune: bool = True, censor_factor: float | None = None,
                 on_eval: Callable[[TrainState, float], None] | None = None) -> None:
        self._best_seconds = best_seconds
        self.target = target
        self.higher_is_better = higher_is_better
        self.prune = prune
        self.censor_factor = censor_factor
        self._on_eval = on_eval
        self._best: float | None = None
        self._refreshed_at = -math.inf
        self._rungs_passed: set[float] = set()
        self.history: list[tuple[float, float]] = []  # (train_seconds, metric) per validation
        self.state_label = "complete"

    def best(self) -> float | None:
        now = time.monotonic()
        if now - self._refreshed_at >= BEST_REFRESH_SECONDS:
            self._best = self._best_seconds()
            self._refreshed_at = now
        return self._best

    def on_eval(self, state: TrainState, metric: float) -> None:
        self.history.append((state.train_seconds, metric))
        if self._on_eval is not None:
            self._on_eval(state, metric)

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        if not self.prune and self.censor_factor is None:
            return None
        best = self.best()
        if best is None:
            return None
        seconds = state.train_seconds
        if self.prune and seconds >= best:
            return self._stop("pruned", f"pruned: trained {seconds:.3g} s, the best reached the "
                                        f"target in {best:.3g} s")
        if not self.prune and self.censor_factor is not None and seconds > self.censor_factor * best:
            return self._stop("censored", f"censored: past {self.censor_factor:g} × the best "
                                          f"time ({best:.3g} s)")
        if self.prune:
            return self._rung_check(seconds, best)
        return None

    def _rung_check(self, seconds: float, best: float) -> StepUpdate | None:
        for fraction in RUNG_FRACTIONS:
            if fraction in self._rungs_passed or seconds < fraction * best:
                continue
            self._rungs_passed.add(fraction)
            projected = projected_seconds_to_target(
                self.history, seconds, self.target, self.higher_is_better
            )
            if projected is not None and projected > best:
                return self._stop(
                    "pruned",
                    f"pruned at rung {fraction:.2g}×best: even at its fastest pace it would need "
                    f"{projected:.3g} s, the best is {best:.3g} s",
                )
        return None

    def _stop(self, label: str, reason: str) -> StepUpdate:
        self.state_label = label
        return StepUpdate(stop=True, reason=reason)


def projected_seconds_to_target(history: Sequence[tuple[float, float]], seconds_now: float,
                                target: float, higher_is_better: bool) -> float | None:
    """Optimistic training seconds at which the target would be reached; None: too few points.

    Uses the fastest pace (gap closed per training second) between any two consecutive
    validations so far. ``inf`` when the trial never made progress, or its metric is not finite.
    """
    if len(history) < RUNG_MIN_VALIDATIONS:
        return None
    gaps = [gap_to_target(metric, target, higher_is_better) for _, metric in history]
    if not all(math.isfinite(gap) for gap in gaps):
        return math.inf
    if gaps[-1] <= 0:
        return seconds_now
    paces = [
        (gaps[i - 1] - gaps[i]) / (history[i][0] - history[i - 1][0])
        for i in range(1, len(history))
        if history[i][0] > history[i - 1][0]
    ]
    fastest = max(paces, default=0.0)
    if fastest <= 0:
        return math.inf
    return seconds_now + gaps[-1] / fastest


def estimate_full_steps(history: Sequence[tuple[int, float]], steps_run: int, budget_steps: int,
                        target: float, higher_is_better: bool) -> int:
    """Steps a cut trial would have run to its target or its budget (an estimate, not a bound).

    The validation gap to the target is fitted by a straight line in steps over the later half of
    the validations (over all of them if the later half shows no progress: validation metrics are
    noisy near the target) and extrapolated to zero. Learning curves decelerate, so the straight
    line reaches the target no later than the real curve would: the estimate errs short, and the
    saving computed from it errs low. Where no line can be drawn the trial is counted at what it
    ran, claiming no saving: fewer than three validations, a metric that never improved, or one
    running away (worse than at the first validation, or not finite: the training loop would soon
    have stopped it as diverged). Clamped to [steps_run, budget_steps].
    """
    points = [(step, gap_to_target(metric, target, higher_is_better))
              for step, metric in history if step > 0]
    budget_steps = max(budget_steps, steps_run)
    if len(points) < RUNG_MIN_VALIDATIONS:
        return steps_run
    gaps = [gap for _, gap in points]
    if not all(math.isfinite(gap) for gap in gaps) or gaps[-1] > gaps[0] or gaps[-1] <= 0:
        return steps_run  # running away, or reached at its last validation (about to stop anyway)
    later = points[len(points) // 2 :] if len(points) >= 4 else points[-2:]
    for window in (later, points):
        crossing = _zero_crossing(window)
        if crossing is not None:
            return int(min(budget_steps, max(steps_run, math.ceil(crossing))))
    return steps_run


def _zero_crossing(points: Sequence[tuple[int, float]]) -> float | None:
    """Step where a least-squares line through (step, gap) reaches zero; None if not falling."""
    steps = np.array([step for step, _ in points], dtype=float)
    gaps = np.array([gap for _, gap in points])
    if len(points) < 2 or np.ptp(steps) == 0:
        return None
    slope, intercept = np.polyfit(steps, gaps, 1)
    return None if slope >= 0 else float(-intercept / slope)
