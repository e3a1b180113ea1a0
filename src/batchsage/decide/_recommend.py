"""``batchsage.recommend(task)``: measure, fit, plan, and recommend a fixed batch size and lr.

The flow is one-way: task → measurements (memory, t(B), noise) → plan → recommendation.

1. Probe memory (ceiling) and throughput (step time t(B) on a log grid up to the ceiling).
2. Pilot A: train at the task's base batch size and lr with the noise-scale monitor attached. It
   gives the validation curve (steps to target, measured or extrapolated) and the simple noise
   scale B_simple with its growth along the run. Then racers at the base batch with the lr ×2,
   ×4 … (or ÷2) train to the best level pilot A reached: the user's base lr is a guess, and the
   fastest lr there anchors the plan.
3. Pilot B: train at a batch several times larger until it reaches the level pilot A reached. Its
   learning rate comes from a second race (plain linear/square-root scaling from the anchor, then
   ×2 while the larger lr is faster, or ÷2 while the smaller is clearly faster): how far the lr
   may grow with the batch is measured, not assumed. The winner's steps and those at the base
   batch give the critical batch B_crit at that point of training, which calibrates B_simple (it
   over-estimates B_crit 2–8×; DESIGN.md pitfalls).
4. The effective noise scale of the whole run is the calibrated B_simple averaged over the steps
   to target (it grows as the loss falls). With it: S_min, S(B), lr(B) (the rule × the race's
   measured factor, kept below any lr that diverged), T(B) = S(B)·t(B) for every candidate B
   (beyond the memory ceiling via accumulation), and the smallest B within a few % of the
   fastest is recommended.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from rich.console import Console

from batchsage import plan
from batchsage.data import nonfinite_values
from batchsage.decide.calibrate import fit_plan_parameters
from batchsage.decide.explain import explain, pilot_coverage, why_lines
from batchsage.decide.pilots import (
    FromScratch,
    PilotSchedule,
    best_level,
    candidate_grid,
    measure_validation_seconds,
    noise_from_monitor,
    pilot_validation_subset,
    run_pilot_a,
)
from batchsage.decide.prediction import load_calibration
from batchsage.decide.races import larger_pilots, lr_calibration, race_base_lr
from batchsage.decide.recommendation import PilotRun, Recommendation
from batchsage.device import resolve_device
from batchsage.errors import ConfigError, InsufficientEvidence
from batchsage.probe.memory import DEFAULT_SAFETY_MARGIN
from batchsage.task import Task, load_task


class _Phases:
    """Rich status line per phase, and the seconds each phase took."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, description: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(description):
                yield
        self.seconds[name] = time.perf_counter() - start
        if self.console is not None:
            self.console.print(f"[green]✓[/] {description} ({self.seconds[name]:.1f} s)")


def recommend(
    task: Task | str,
    *,
    device: str | None = "auto",
    memory_budget_bytes: int | None = None,
    memory_margin: float = DEFAULT_SAFETY_MARGIN,
    budget_seconds: float = 20.0,
    tolerance: float = 0.03,
    min_batch_size: int = 8,
    progress: bool = True,
    console: Console | None = None,
) -> Recommendation:
    """Recommend batch size, lr, accumulation and warmup for ``task``.

    Args:
        task: a Task, a built-in name, or ``path/to/file.py:ATTR``.
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda" or "mps".
        memory_budget_bytes: memory a training step may use (default: free memory minus a margin).
        memory_margin: the memory ceiling keeps this fraction of the budget free.
        budget_seconds: sizes the decision's parts: the throughput probe gets 15 % of it, each
            pilot 35 %, each lr race about two pilots' worth (or three times its first racer's
            time, where that is longer). Not a hard limit: whole decisions took 0.8-4.0x it on
            the built-in tasks (docs/groundtruth.md). There, 10 s gave clearly worse picks than
            the default and 40 s no better ones (benchmarks/results/budget/TRADEOFF.md).
        tolerance: recommend the smallest B whose predicted time is within this fraction of the best.
        min_batch_size: smallest candidate batch size.
        progress: show Rich progress on ``console`` (default: stderr-free stdout console).
    """
    loaded = load_task(task) if not isinstance(task, Task) else task.validate()
    if budget_seconds <= 0:
        raise ConfigError(f"budget_seconds must be positive, got {budget_seconds}")
    if min_batch_size <= 0:
        raise ConfigError(f"min_batch_size must be positive, got {min_batch_size}")
    dev = resolve_device(device)
    phases = _Phases((console or Console()) if progress else None)
    started = time.perf_counter()

    from batchsage.probe.memory import probe_memory
    from batchsage.probe.throughput import probe_throughput

    with phases.phase("memory", "probing memory"):
        memory = probe_memory(loaded, device=dev, budget_bytes=memory_budget_bytes, margin=memory_margin)
    ceiling = memory.max_batch_size
    grid = candidate_grid(loaded, ceiling, min_batch_size)
    measured_sizes = [b for b in grid if b <= ceiling]
    with phases.phase("throughput", f"timing steps at {len(measured_sizes)} batch sizes"):
        throughput = probe_throughput(
            loaded, device=dev, max_batch_size=ceiling, time_budget_seconds=0.15 * budget_seconds,
            batch_sizes=measured_sizes,
        )
    step_seconds = plan.step_time_model(
        [p.batch_size for p in throughput.points], [p.step_seconds_median for p in throughput.points]
    )
    schedule = PilotSchedule(0.35 * budget_seconds, step_seconds, measure_validation_seconds(loaded, dev))
    pilot_task, schedule, pilot_validation = pilot_validation_subset(loaded, dev, schedule)
    runner = FromScratch(pilot_task, dev, schedule)
    with phases.phase("pilot_a", "pilot run at the base batch size, measuring gradient noise"):
        pilot_a, monitor = run_pilot_a(runner, ceiling)
    check_evidence(loaded, pilot_a, {"task": loaded.name, "device": str(dev), "memory": memory.to_dict(),
                                     "throughput": throughput.to_dict(), "pilots": [asdict(pilot_a)],
                                     "phase_seconds": phases.seconds})
    noise = noise_from_monitor(monitor)
    with phases.phase("base_lr", "racing learning rates at the base batch size"):
        base_winner, base_race = race_base_lr(runner, pilot_a)
    # The plan is anchored where the lr was measured best at the base batch (the user's lr
    # unless a racer beat it).
    anchored = dataclasses.replace(pilot_task, base_batch_size=base_winner.batch_size,
                                   base_lr=base_winner.lr)
    with phases.phase("pilot_b", "pilot runs at larger batches, calibrating the critical batch"):
        larger = larger_pilots(FromScratch(anchored, dev, schedule), ceiling, base_winner,
                               best_level(loaded, pilot_a), noise)
    pilot_b = larger.pilots[-1] if larger.pilots else None
    fitted = fit_plan_parameters(loaded, pilot_a, pilot_b, noise,
                                 base_winner if base_winner is not pilot_a else None)
    # The races found the best lrs at the pilots' level, where the noise scale was smaller than
    # over the whole run: the lr the plan scales from is shifted to the run's noise scale, and the
    # larger-batch race is compared with the rule at the noise scale it raced at.
    race_noise = fitted.b_noise_at_race if fitted.b_noise_at_race is not None else fitted.b_noise
    noise_shift = plan.lr_noise_shift(anchored.base_batch_size, race_noise, fitted.b_noise)
    calibration = lr_calibration(anchored, larger.race_winner, race_noise, larger.diverged_lr)
    candidates = plan.plan_candidates(
        grid,
        s_min=fitted.s_min,
        b_noise=fitted.b_noise,
        step_seconds=step_seconds,
        max_batch_size=ceiling,
        base_batch_size=anchored.base_batch_size,
        base_lr=anchored.base_lr * noise_shift,
        scaling=loaded.resolved_lr_scaling(),
        lr_calibration=calibration,
        sample_budget=loaded.max_samples,
    )
    chosen = plan.choose(candidates, tolerance)
    decision_seconds = time.perf_counter() - started
    recommendation = Recommendation(
        task=loaded.name,
        device=str(dev),
        batch_size=chosen.batch_size,
        micro_batch_size=chosen.micro_batch_size,
        accumulation_steps=chosen.accumulation_steps,
        lr=chosen.lr,
        warmup_steps=chosen.warmup_steps,
        predicted_steps=chosen.predicted_steps,
        predicted_seconds=chosen.predicted_seconds,
        model_seconds=chosen.predicted_seconds,
        candidates=candidates,
        s_min=fitted.s_min,
        b_noise=fitted.b_noise,
        steps_at_pilot=fitted.steps_at_pilot,
        extrapolated=fitted.extrapolated,
        noise_scale=fitted.noise,
        memory=memory.to_dict(),
        throughput=[
            {"batch_size": p.batch_size, "step_seconds_median": p.step_seconds_median,
             "samples_per_second": p.samples_per_second}
            for p in throughput.points
        ],
        pilots=[pilot_a, *larger.pilots],
        lr_race=base_race + larger.race,
        anchor={"batch_size": anchored.base_batch_size, "lr": anchored.base_lr,
                "task_base_lr": loaded.base_lr, "b_noise_at_race": fitted.b_noise_at_race,
                "noise_shift": noise_shift},
        lr_calibration=asdict(calibration) if calibration else None,
        explanation="",
        decision_seconds=decision_seconds,
        phase_seconds=phases.seconds,
        metric_name=loaded.metric_name,
        target=loaded.target,
        higher_is_better=loaded.higher_is_better,
        pilot_validation=pilot_validation,
        budget_seconds=budget_seconds,
    )
    calibration = load_calibration()
    if calibration is not None and math.isfinite(chosen.predicted_seconds):
        recommendation.predicted_seconds = calibration.level(chosen.predicted_seconds)
        recommendation.predicted_interval = calibration.interval(chosen.predicted_seconds)
        recommendation.interval_basis = calibration.basis()
    recommendation.pilot_coverage = pilot_coverage(recommendation)
    recommendation.explanation = explain(recommendation, ceiling, loaded.base_batch_size)
    recommendation.why = why_lines(recommendation, ceiling)
    return recommendation




#: Fewest finite validations of the first pilot a plan can be fitted to.
MIN_VALIDATIONS = 3


def check_evidence(task: Task, pilot: PilotRun, measured: dict[str, object]) -> None:
    """Raise InsufficientEvidence, with what was measured, when the first pilot cannot support a plan."""
    if pilot.reached_target:
        return  # steps to the target itself were measured
    metrics = [p["metric"] for p in pilot.history if math.isfinite(p["metric"])]
    bad_values = nonfinite_values(task.train_data) if pilot.diverged else None
    if bad_values:
        cause = (f"the first pilot diverged (NaN/inf loss) at step {pilot.steps}, and the training data "
                 f"hold {bad_values} NaN/inf value(s): clean the data")
    elif pilot.diverged and len(metrics) < MIN_VALIDATIONS:
        cause = (f"the first pilot (B={pilot.batch_size}, lr {pilot.lr:.3g}) diverged (NaN/inf loss) at step "
                 f"{pilot.steps}: check the training data for NaN/inf values, or lower the task's base_lr")
    elif len(metrics) < MIN_VALIDATIONS:
        cause = (f"the first pilot validated only {len(metrics)} time(s) with a finite {task.metric_name} "
                 "(at least 3 are needed to fit a trend): raise --budget-seconds or validate more often "
                 "(eval_every_samples)")
    elif max(metrics) == min(metrics):
        cause = (f"{task.metric_name} never changed over the first pilot's {len(metrics)} validations "
                 f"({metrics[0]:g}): the model is not learning at lr {pilot.lr:.3g}, or the metric "
                 "ignores it")
    else:
        return
    raise InsufficientEvidence(f"no recommendation for {task.name!r}: {cause}",
                               {**measured, "status": "no recommendation", "reason": cause})
