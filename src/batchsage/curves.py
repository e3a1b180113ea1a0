"""Fits from pilot measurements to the planner's parameters: pure NumPy, no torch.

- :func:`steps_to_level`: when a run's validation curve first crossed a level (interpolated).
- :func:`critical_batch_from_two_runs`: B_crit from the steps two batch sizes needed to reach the
  same level, by solving S(B) = S_min·(1 + B_crit/B) through both points.
- :func:`extrapolate_steps_to_target`: steps to the target from a curve that has not reached it yet
  (a straight line in log(steps) through the recent validations; flagged as extrapolated).
- :func:`power_law_growth`: B_simple(s) ≈ k·s^β over a run, for the noise scale's growth.
- :func:`effective_noise_scale`: the step-weighted mean of a growing noise scale over a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import theilslopes


def _progress(values: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """Metric values oriented so that larger is better."""
    array = np.asarray(values, dtype=float)
    return array if higher_is_better else -array


def steps_to_level(
    steps: Sequence[float], metrics: Sequence[float], level: float, higher_is_better: bool
) -> float | None:
    """First step at which ``metrics`` reached ``level``, linearly interpolated between validations.

    Returns None if the level was never reached. ``steps`` are the steps at each validation.
    """
    progress = _progress(metrics, higher_is_better)
    goal = level if higher_is_better else -level
    previous_step, previous_value = 0.0, -math.inf
    for step, value in zip(steps, progress, strict=True):
        if math.isfinite(value) and value >= goal:
            if not math.isfinite(previous_value) or value == previous_value:
                return float(step)
            fraction = (goal - previous_value) / (value - previous_value)
            return float(previous_step + fraction * (step - previous_step))
        previous_step, previous_value = float(step), float(value)
    return None


def critical_batch_from_two_runs(
    small_batch: float, small_steps: float, large_batch: float, large_steps: float
) -> float:
    """B_crit such that S(B) = S_min·(1 + B_crit/B) passes through both (B, steps) points.

    From S_small/S_large = ρ: B_crit = (ρ − 1) / (1/B_small − ρ/B_large). ρ ≤ 1 (the larger batch
    needed as many steps) means no benefit from larger batches: B_crit = 0. ρ ≥ B_large/B_small
    (perfect scaling) means B_crit is beyond what was measured: +inf.
    """
    if small_batch >= large_batch:
        raise ValueError("small_batch must be smaller than large_batch")
    ratio = small_steps / large_steps
    if ratio <= 1.0:
        return 0.0
    denominator = 1.0 / small_batch - ratio / large_batch
    if denominator <= 0:
        return math.inf
    return (ratio - 1.0) / denominator


@dataclass(frozen=True)
class Extrapolation:
    steps: float
    extrapolated: bool
    reachable: bool


def extrapolate_steps_to_target(
    steps: Sequence[float],
    metrics: Sequence[float],
    target: float,
    higher_is_better: bool,
    recent_fraction: float = 0.5,
) -> Extrapolation:
    """Steps to reach ``target``: measured if the curve reached it, else extrapolated.

    The extrapolation fits metric = a + b·log(step) to the most recent ``recent_fraction`` of the
    validations (at least three) and solves for the target. Learning curves bend towards a floor,
    so a straight line in log-steps is optimistic only once the floor is near; it is the simplest
    model that does not assume where the floor is. If the trend does not move towards the target,
    the target is reported unreachable.
    """
    reached = steps_to_level(steps, metrics, target, higher_is_better)
    if reached is not None:
        return Extrapolation(reached, extrapolated=False, reachable=True)
    points = [(s, m) for s, m in zip(steps, metrics, strict=True) if s > 0 and math.isfinite(m)]
    if len(points) < 3:
        return Extrapolation(math.inf, extrapolated=True, reachable=False)
    keep = max(3, math.ceil(len(points) * recent_fraction))
    recent = points[-keep:]
    x = np.log([s for s, _ in recent])
    y = _progress([m for _, m in recent], higher_is_better)
    slope, intercept = np.polyfit(x, y, 1)
    goal = target if higher_is_better else -target
    if slope <= 0:
        return Extrapolation(math.inf, extrapolated=True, reachable=False)
    log_steps = (goal - intercept) / slope
    # Beyond e^50 steps the number means "never"; keep it finite for arithmetic.
    return Extrapolation(float(math.exp(min(log_steps, 50.0))), extrapolated=True, reachable=True)


def residual_std(x: Sequence[float], y: Sequence[float]) -> float:
    """Standard deviation of ``y`` around its straight-line trend in log(x) (0 with < 3 points).

    A validation curve bends slowly in log-steps, so over a few recent points this is the noise
    of the validations (sampling and run-to-run wobble) rather than their progress.
    """
    points = [(a, b) for a, b in zip(x, y, strict=True) if a > 0 and math.isfinite(b)]
    if len(points) < 3:
        return 0.0
    logs = np.log([a for a, _ in points])
    values = np.array([b for _, b in points])
    if np.ptp(logs) == 0:
        return float(np.std(values, ddof=1))
    slope, intercept = np.polyfit(logs, values, 1)
    residuals = values - (intercept + slope * logs)
    return float(math.sqrt(float(np.sum(residuals**2)) / (len(points) - 2)))


@dataclass(frozen=True)
class PowerLaw:
    """value(s) = scale · s^exponent."""

    scale: float
    exponent: float

    def __call__(self, step: float) -> float:
        return self.scale * step**self.exponent


def power_law_growth(
    steps: Sequence[float], values: Sequence[float], max_exponent: float = 1.0
) -> PowerLaw | None:
    """Robust (Theil–Sen) fit of log(value) = log(scale) + exponent·log(step) on positive values.

    Theil–Sen takes the median of pairwise slopes, so one window whose |G|² happened to be tiny
    (B_simple shooting up 50×) does not set the growth of the whole run.

    The exponent is clipped to [0, max_exponent]: the noise scale grows as the loss falls
    (McCandlish et al.), and a short noisy pilot must not extrapolate a decline or an explosion.
    """
    pairs = [(s, v) for s, v in zip(steps, values, strict=True) if s > 0 and v > 0 and math.isfinite(v)]
    if len(pairs) < 2:
        return None
    x = np.log([s for s, _ in pairs])
    y = np.log([v for _, v in pairs])
    if np.ptp(x) == 0:
        return PowerLaw(float(np.exp(y.mean())), 0.0)
    slope = float(theilslopes(y, x)[0])
    exponent = float(np.clip(slope, 0.0, max_exponent))
    # Refit the scale with the clipped exponent (median: robust, like the slope).
    scale = float(np.exp(np.median(y - exponent * x)))
    return PowerLaw(scale, exponent)


def effective_noise_scale(growth: PowerLaw, total_steps: float) -> float:
    """Mean of k·s^β over s ∈ [0, S]: k·S^β/(1 + β).

    Steps are spent uniformly along a run, so the batch size that best serves the whole run sees
    the step-average of the noise scale, not its starting (too small) or final (too large) value.
    """
    return growth.scale * total_steps**growth.exponent / (1.0 + growth.exponent)
