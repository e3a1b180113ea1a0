"""Races: which learning rate (and how far the batch scales) is fastest to a level of the metric.

Every racer trains until it reaches a level of the validation metric the first pilot reached, and
the racers are compared by the steps they needed. Racers start where the runner puts them: from
scratch for ``recommend``, from a fork of the live run for ``fit``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from batchsage import plan
from batchsage.decide.calibrate import critical_batch
from batchsage.decide.pilots import PILOT_BATCH_FACTOR, PilotSchedule, Runner, best_level, level_run, steps_to
from batchsage.decide.recommendation import NoiseSummary, PilotRun
from batchsage.task import Task


@dataclass
class LargerPilots:
    """The pilots at larger batches, and what the lr race among them measured."""

    pilots: list[PilotRun]
    race: list[dict[str, Any]]
    #: (batch size, lr) that won the lr race, if one ran.
    race_winner: tuple[int, float] | None
    #: The smallest lr whose racer diverged, if any.
    diverged_lr: float | None = None


def larger_pilots(runner: Runner, ceiling: int, small: PilotRun, level: float,
                  noise: NoiseSummary) -> LargerPilots:
    """Pilots at PILOT_BATCH_FACTOR× larger batches until scaling stops looking perfect.

    ``small`` is the base-batch run at the anchored lr, ``level`` the best level pilot A reached;
    each pilot runs until it reaches that level. The first larger batch races a few learning
    rates around the rule's (:func:`race_lr`): the fastest sets the lr correction for every
    larger batch and is the pilot B that measures the critical batch. If the step counts say the
    critical batch lies beyond the larger batch (scaling still perfect there), the next pilot
    goes a factor further, while memory, data and the time budget allow.
    """
    task, schedule = runner.task, runner.schedule
    pilots: list[PilotRun] = []
    race: list[dict[str, Any]] = []
    calibration: plan.LrCalibration | None = None
    if not small.history or not math.isfinite(level):
        return LargerPilots(pilots, race, None)
    remaining = schedule.seconds
    previous = small.batch_size
    while remaining > 0.1 * schedule.seconds:
        large = min(ceiling, previous * PILOT_BATCH_FACTOR, task.num_train_samples // 2)
        if large <= previous:
            break
        rule_lr = plan.scaled_lr(large, task.base_batch_size, task.base_lr, task.resolved_lr_scaling(),
                                 noise.b_simple)
        start = time.perf_counter()
        if calibration is None:
            pilot, race = race_larger_batch(runner, large, small, level, remaining + schedule.seconds)
            calibration = plan.LrCalibration(small.batch_size, large, pilot.lr / rule_lr,
                                             diverged_lr(race))
        else:
            pilot = level_run(runner, large, calibration.apply(large, rule_lr), level, remaining)
        remaining -= time.perf_counter() - start
        if pilot.diverged:  # says nothing about the critical batch; the lr was too large there
            break
        pilots.append(pilot)
        b_crit, _ = critical_batch(task, small, pilot)
        if b_crit is None or b_crit < large or not pilot.history:
            break
        previous = large
    winner = (race[0]["batch_size"], pilots[0].lr) if race and pilots else None
    return LargerPilots(pilots, race, winner, calibration.diverged_lr if calibration else None)


def race_larger_batch(runner: Runner, large: int, small: PilotRun, level: float,
                      seconds: float) -> tuple[PilotRun, list[dict[str, Any]]]:
    """The lr race at the first larger pilot batch.

    It starts from plain linear (SGD) / square-root (Adam) scaling of the anchor: the noise
    saturation needs a B_noise not yet calibrated, and the race finds any saturation. A larger
    batch never needs more steps than the base batch for the same level, so no racer runs past
    the base run's steps.
    """
    task = runner.task
    start_lr = plan.scaled_lr(large, task.base_batch_size, task.base_lr, task.resolved_lr_scaling())
    steps_small = steps_to(task, small, level)
    cap = None if math.isinf(steps_small) else math.ceil(steps_small)
    return race_lr(runner, large, start_lr, level, seconds, cap)


#: The lr race multiplies or divides the rule's lr by this factor per round, up to LR_RACE_ROUNDS.
LR_RACE_STEP = 2.0
LR_RACE_ROUNDS = 3
#: The race may take at least this many times its first racer's wall time (so that, on a task
#: whose steps are expensive, the first challengers still run: each costs at most the first racer).
LR_RACE_MIN_RACERS = 3.0
#: A smaller lr must reach the level in this fraction of the best steps to win (a larger one only
#: needs fewer steps).
LR_RACE_MARGIN = 0.9


def race_lr(runner: Runner, batch_size: int, start_lr: float, level: float, seconds: float,
            max_steps: int | None, first: PilotRun | None = None,
            clear_up: bool = False) -> tuple[PilotRun, list[dict[str, Any]]]:
    """Which lr to train ``batch_size`` with: ``start_lr`` or it ×/÷ LR_RACE_STEP, up to LR_RACE_ROUNDS times.

    Each racer trains until it reaches ``level``. Going up, a larger lr wins when it reaches the
    level in fewer steps than the best so far. The race is short, and its bias cuts both ways: at a
    large batch a larger lr pays off more by the target than early (measured on the built-in
    tasks' ground truths), at a small batch its higher noise floor can stall it near the target;
    so a larger lr must need fewer steps to win (clearly fewer with ``clear_up``, at the base
    batch). If the first step up loses, the lr goes down while each step down is clearly faster.
    Clearly: by more than the validations can resolve (:func:`clear_margin`). A racer is
    cut once it can no longer win, so each challenger costs at most what the first racer did; the
    race takes ``seconds`` or LR_RACE_MIN_RACERS × the first racer's time, whichever is longer.
    ``first``: a run at ``start_lr`` made already (pilot A, which ran past the level); the race then
    takes ``seconds``. Returns the winning run and every racer's record (the winner's marked
    ``won``).
    """
    task = runner.task
    started = time.perf_counter()
    if first is None:
        leader = level_run(runner, batch_size, start_lr, level, seconds, max_steps)
        budget = max(seconds, LR_RACE_MIN_RACERS * leader.wall_seconds)
    else:
        leader, budget = first, seconds
    best_steps = steps_to(task, leader, level)

    def left() -> float:
        return budget - (time.perf_counter() - started)

    records = [_race_record(leader, start_lr, best_steps)]
    clear = clear_margin(runner.schedule, batch_size)
    for direction, allowance in ((LR_RACE_STEP, clear if clear_up else 1.0), (1.0 / LR_RACE_STEP, clear)):
        moved = False
        lr = leader.lr
        for _ in range(LR_RACE_ROUNDS):
            lr *= direction
            if left() <= 0.05 * seconds:
                break
            cap = max_steps if math.isinf(best_steps) else math.ceil(allowance * best_steps)
            challenger = level_run(runner, batch_size, lr, level, left(), cap)
            steps = steps_to(task, challenger, level)
            records.append(_race_record(challenger, start_lr, steps))
            if challenger.diverged and leader.diverged and direction < 1.0:
                continue  # still above the stability limit: keep halving
            if not steps < allowance * best_steps:
                break
            leader, best_steps, moved = challenger, min(best_steps, steps), True
        if moved:  # the lr went up: no need to look down
            break
    for record in records:
        record["won"] = record["lr"] == leader.lr and not leader.diverged
    return leader, records


def clear_margin(schedule: PilotSchedule | None, batch_size: int) -> float:
    """Step ratio below which a racer is clearly faster: LR_RACE_MARGIN, or finer than the
    validations resolve. Pilots validate on a geometric schedule (steps × eval_growth), so a
    level crossing is placed within one such interval; a smaller gain may be where it fell."""
    if schedule is None:
        return LR_RACE_MARGIN
    return min(LR_RACE_MARGIN, 1.0 / schedule.eval_growth(batch_size))


def race_base_lr(runner: Runner, pilot_a: PilotRun) -> tuple[PilotRun, list[dict[str, Any]]]:
    """Race learning rates at the base batch against pilot A, to the best level pilot A reached.

    The user's base lr is a guess as often as the batch size is: a racer ×2 (and on) or ÷2 that
    reaches pilot A's level in clearly fewer steps (:func:`clear_margin`) becomes the anchor of
    the plan. Clearly, in both directions: at the base batch the steps to an early level are often
    flat over a 4-8× range of lrs (gradient noise cancels what a larger lr gains), and near the
    target the larger lr's higher noise floor costs steps the race cannot see (digits-mlp's
    ground truth: flat race over 0.02-0.08, best lr for the target 0.01-0.02). Each challenger
    costs at most what pilot A needed for that level; the race takes up to two pilots' time.
    Returns the winner (pilot A itself when it stays) and the records.
    """
    task = runner.task
    level = best_level(task, pilot_a)
    steps_a = steps_to(task, pilot_a, level)
    if math.isinf(steps_a) or pilot_a.diverged:
        return pilot_a, []
    return race_lr(runner, pilot_a.batch_size, pilot_a.lr, level, 2.0 * runner.schedule.seconds,
                   math.ceil(steps_a), first=pilot_a, clear_up=True)


def diverged_lr(race: list[dict[str, Any]]) -> float | None:
    return min((r["lr"] for r in race if r["diverged"]), default=None)


def lr_calibration(task: Task, race_winner: tuple[int, float] | None, b_noise: float,
                    diverged_lr: float | None) -> plan.LrCalibration | None:
    """The race winner's lr ÷ the lr the rule gives at that batch, with ``b_noise`` where it raced."""
    if race_winner is None:  # no usable pilot B: keep only what divergence taught
        if diverged_lr is None:
            return None
        return plan.LrCalibration(task.base_batch_size, task.base_batch_size, 1.0, diverged_lr)
    batch_size, lr = race_winner
    rule_lr = plan.scaled_lr(batch_size, task.base_batch_size, task.base_lr, task.resolved_lr_scaling(),
                             b_noise)
    return plan.LrCalibration(min(task.base_batch_size, batch_size), batch_size, lr / rule_lr,
                              diverged_lr)


def _race_record(run: PilotRun, start_lr: float, steps: float) -> dict[str, Any]:
    return {"batch_size": run.batch_size, "lr": run.lr, "lr_factor_vs_start": run.lr / start_lr,
            "steps_to_level": None if math.isinf(steps) else steps, "steps_run": run.steps,
            "diverged": run.diverged,
            "seconds": run.wall_seconds}
