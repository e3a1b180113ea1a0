"""From pilot measurements to the planner's parameters: S_min and the run's effective noise scale.

Two pilots at different batch sizes give the critical batch B_crit where they were compared; the
noise monitor's B_simple and its growth along the first pilot carry it over the whole run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchsage import curves
from batchsage.decide.pilots import PILOT_BATCH_FACTOR, best_level, steps_to
from batchsage.decide.recommendation import NoiseSummary, PilotRun
from batchsage.task import Task


@dataclass
class FittedPlan:
    s_min: float
    #: The noise scale averaged over the run (what S(B) and the lr rule use).
    b_noise: float
    steps_at_pilot: float
    extrapolated: bool
    noise: NoiseSummary
    #: The calibrated noise scale at the level the lr races ran to (the pilots' B_crit), when the
    #: noise-scale growth was measured; None otherwise.
    b_noise_at_race: float | None = None


def fit_plan_parameters(task: Task, pilot_a: PilotRun, pilot_b: PilotRun | None,
                        noise: NoiseSummary, base_racer: PilotRun | None = None) -> FittedPlan:
    """S_min and the effective B_noise from the pilots and the noise trajectory.

    ``base_racer``: a run at the base batch with a better lr than pilot A's (it stopped at pilot A's
    best level). Steps to target at the base batch are then pilot A's × the ratio of the racer's
    steps to pilot A's for that level, and the critical batch is measured between the racer and
    pilot B. Pilot A's step axis still places B_simple's growth (B_simple follows the training
    state, not the lr).
    """
    steps_a, metrics_a = pilot_a.steps_and_metrics()
    to_target = curves.extrapolate_steps_to_target(steps_a, metrics_a, task.target, task.higher_is_better)
    total_steps = to_target.steps if to_target.reachable else task.max_samples / pilot_a.batch_size
    small = base_racer or pilot_a
    b_crit, level_step = critical_batch(task, small, pilot_b)
    step_ratio = 1.0  # the racer's steps ÷ pilot A's, for the same level
    if base_racer is not None:
        level = best_level(task, pilot_a)
        at_a, at_racer = steps_to(task, pilot_a, level), steps_to(task, base_racer, level)
        if math.isfinite(at_a) and math.isfinite(at_racer):
            step_ratio = at_racer / at_a
        if level_step is not None:
            level_step /= step_ratio  # in pilot A's steps
    growth = (
        curves.PowerLaw(noise.growth_scale, noise.growth_exponent)
        if noise.growth_scale is not None and noise.growth_exponent is not None
        else None
    )
    b_noise, calibration, method = _effective_noise(b_crit, level_step, growth, noise.b_simple,
                                                    total_steps, small, pilot_b)
    noise.b_crit_pilot = b_crit
    noise.calibration = calibration
    noise.b_noise = b_noise
    noise.method = method
    s_min = step_ratio * total_steps / (1.0 + b_noise / small.batch_size)
    at_race = calibration * growth(level_step) if calibration is not None and growth and level_step else None
    return FittedPlan(s_min, b_noise, step_ratio * total_steps, to_target.extrapolated, noise, at_race)


def critical_batch(task: Task, small: PilotRun,
                    large: PilotRun | None) -> tuple[float | None, float | None]:
    """B_crit from the steps both runs needed for the best level both reached, and ``small``'s steps."""
    if large is None or not large.history:
        return None, None
    best_small, best_large = best_level(task, small), best_level(task, large)
    if not (math.isfinite(best_small) and math.isfinite(best_large)):
        return None, None
    level = min(best_small, best_large) if task.higher_is_better else max(best_small, best_large)
    at_small, at_large = steps_to(task, small, level), steps_to(task, large, level)
    if math.isinf(at_small) or math.isinf(at_large):
        return None, None
    b_crit = curves.critical_batch_from_two_runs(small.batch_size, at_small, large.batch_size, at_large)
    return b_crit, at_small


#: ``NoiseSummary.method`` where the plan's noise scale extrapolates B_simple's measured growth.
NOISE_FROM_GROWTH = "pilot-calibrated B_simple, averaged over the run"


def _effective_noise(
    b_crit: float | None,
    level_step: float | None,
    growth: curves.PowerLaw | None,
    b_simple: float | None,
    total_steps: float,
    pilot_a: PilotRun,
    pilot_b: PilotRun | None,
) -> tuple[float, float | None, str]:
    """The noise scale the plan uses, with how it was obtained.

    Preferred: B_crit measured by the two pilots calibrates B_simple's level, and B_simple's growth
    carries it over the whole run. Fallbacks, each named in ``method``: calibration without growth;
    B_crit alone; raw B_simple (uncalibrated, known to over-estimate).
    """
    if b_crit is not None and math.isinf(b_crit) and pilot_b is not None:
        # Perfect scaling up to pilot B's batch: B_crit is at least several times that batch.
        b_crit = float(pilot_b.batch_size) * PILOT_BATCH_FACTOR
    if b_crit is not None and growth is not None and level_step is not None:
        b_simple_at_level = growth(level_step)
        calibration = b_crit / b_simple_at_level if b_simple_at_level > 0 else None
        if calibration is not None:
            return (calibration * curves.effective_noise_scale(growth, total_steps), calibration,
                    NOISE_FROM_GROWTH)
    if b_crit is not None:
        return b_crit, None, "critical batch from two pilots, no noise-scale growth measured"
    if b_simple is not None and math.isfinite(b_simple) and b_simple > 0:
        return b_simple, None, "uncalibrated B_simple: no second pilot fitted in memory"
    return float(pilot_a.batch_size), None, "no usable noise measurement: assumed B_noise = base batch"


