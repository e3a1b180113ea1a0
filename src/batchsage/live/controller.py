"""``batchsage.fit(task)``: train to the target, deciding batch size and lr while training.

The run starts at the task's base batch size and lr with the noise-scale monitor attached, and that
run is kept: there are no pilots from scratch. Each time the run's training time has doubled, it
races forks of itself (:mod:`batchsage.live.race`): first the lr (×2 and ÷2, and on in the
winning direction), then the batch (2B with the lr the scaling rule gives it, and B/2 when the
measured noise scale says the batch is above what gradient noise needs). Forks start from the live
state (weights, optimiser moments, data position, random state), train the same seconds and are
judged on the validation metric; the winner becomes the live run and only the losers' seconds are
wasted. A race runs for a fixed share of the training done so far, so racing costs a bounded
fraction of the run, and no race starts once the estimated remaining time would not repay it.

Everything spent is accounted for (:class:`TimeBreakdown`): kept training, discarded forks, their
judging validations, memory probes, forking, and the live run's scheduled validations (which, as in
the ground truth's fixed runs, are not counted as training time).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from batchsage import curves, plan
from batchsage.device import Device, resolve_device
from batchsage.engine import Run
from batchsage.errors import ConfigError, InsufficientEvidence
from batchsage.jsonio import write_json
from batchsage.live.checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    load_checkpoint,
    save_atomic,
    save_checkpoint,
)
from batchsage.live.race import COOLDOWN_FRACTION, Branch, BranchOutcome, Judge, RaceRecord, race
from batchsage.noise import NoiseScaleMonitor
from batchsage.probe.memory import DEFAULT_SAFETY_MARGIN
from batchsage.task import Task, load_task

FIT_SCHEMA_VERSION = 1
#: A race's stretch is never shorter than this many steps of the live batch.
MIN_STRETCH_STEPS = 8
#: A race validates its best cooled copy (to see whether annealing now reaches the target) whenever a
#: validation costs at most this share of a branch's stretch; a costlier one only where the live
#: run's (loss, metric) pairs say the copy may reach it.
CHEAP_VALIDATION = 0.1
#: A race goes on for at most this many stretches while a challenger is ahead but not clearly.
MAX_STRETCHES = 3
#: The first decision comes after this many steps of the live run.
FIRST_DECISION_STEPS = 32
#: The judge scores the live run at a scheduled validation once its training time has grown by
#: this factor since the last score: a handful of points per doubling, a bounded cost.
JUDGE_SPACING = 1.5
#: A judge's pass costs at most about this many of the live run's steps (fewer samples otherwise).
JUDGE_STEPS = 2


@dataclass(frozen=True)
class FitOptions:
    """How ``fit`` races. The defaults are derived from costs, not tuned to any task.

    Attributes:
        stretch_fraction: a race's first look at the evidence comes after each branch trained this
            share of the training time so far; it goes on, a chunk at a time, until the race is
            clear or its budget is spent.
        race_share: a decision's challengers may train at most this share of the training time so
            far. With decisions at every doubling of the training time, all races together cost at
            most about this share of the whole run.
        lr_factor: the lr challenger trains at the live lr × this.
        survey_rungs: the first race also tries the lr × factor², … up to × factor^survey_rungs: it
            runs whatever the budget (the run is young, so it is cheap, and a wrong base lr slows
            the whole run).
        max_rounds: races per decision (another one follows while a challenger won the last).
        min_batch_size: the batch never goes below this.
        monitor_overhead: the noise monitor's overhead budget (fraction of training time).
        checkpoint_seconds: wall seconds between checkpoints (with ``out``).
        decide: race and follow the noise scale; False pins the run to the task's base batch and lr
            (the machinery's overhead alone: monitor, checkpoints, bookkeeping).
    """

    stretch_fraction: float = 0.1
    race_share: float = 0.3
    lr_factor: float = 2.0
    survey_rungs: int = 3
    max_rounds: int = 3
    min_batch_size: int = 8
    monitor_overhead: float = 0.03
    checkpoint_seconds: float = 30.0
    decide: bool = True


@dataclass
class TimeBreakdown:
    """Where ``fit``'s seconds went. ``end_to_end_seconds`` counts all but the scheduled validations."""

    kept_train_seconds: float = 0.0
    discarded_fork_seconds: float = 0.0
    race_validation_seconds: float = 0.0
    fork_seconds: float = 0.0
    probe_seconds: float = 0.0
    scheduled_validation_seconds: float = 0.0
    monitor_overhead_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def end_to_end_seconds(self) -> float:
        """Everything the user waits for, except the validations a fixed run would make too."""
        return (self.kept_train_seconds + self.discarded_fork_seconds + self.race_validation_seconds
                + self.fork_seconds + self.probe_seconds)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "end_to_end_seconds": self.end_to_end_seconds}


@dataclass
class FitResult:
    """What ``fit`` did: the outcome, the schedule taken, every race, where the time went."""

    task: str
    device: str
    seed: int
    reached_target: bool
    stop_reason: str
    final_metric: float
    metric_name: str
    target: float
    higher_is_better: bool
    steps: int
    samples: int
    batch_size: int
    lr: float
    schedule: list[dict[str, Any]]
    races: list[dict[str, Any]]
    history: list[dict[str, Any]]
    eta: list[dict[str, float]]
    times: TimeBreakdown
    noise: list[dict[str, float]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    #: Each decision point: where it was, the noise scale, the seconds its races could spend.
    decisions: list[dict[str, Any]] = field(default_factory=list)
    #: Optimiser steps by batch size: {"kept": {B: steps of the kept run}, "discarded": {B: steps
    #: of losing forks and cooldowns}} (batch sizes as strings, as JSON keys are).
    steps_by_batch: dict[str, dict[str, int]] = field(default_factory=dict)
    model_path: str | None = None
    checkpoint_path: str | None = None
    resumed: int = 0
    #: The trained model (the live run's), in this process; not part of the JSON document.
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def end_to_end_seconds(self) -> float:
        return self.times.end_to_end_seconds

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        data = asdict(self.__class__(**data))  # nested dataclasses as dicts
        data.pop("model", None)
        data["times"] = self.times.to_dict()
        data["schema_version"] = FIT_SCHEMA_VERSION
        data["metric"] = {"name": data.pop("metric_name"), "target": data.pop("target"),
                          "higher_is_better": data.pop("higher_is_better")}
        return data

    def __repr__(self) -> str:
        outcome = "reached the target" if self.reached_target else f"stopped ({self.stop_reason})"
        return (f"FitResult(task={self.task!r}, {outcome}, final {self.metric_name}={self.final_metric:.4g}, "
                f"B={self.batch_size}, lr={self.lr:.4g}, end_to_end_seconds={self.end_to_end_seconds:.1f})")


class FitError(InsufficientEvidence):
    """The run cannot support a decision (diverged at the start, a metric that never moves)."""


def fit(
    task: Task | str,
    *,
    device: str | Device | None = "auto",
    seed: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    max_seconds: float | None = None,
    memory_budget_bytes: int | None = None,
    memory_margin: float = DEFAULT_SAFETY_MARGIN,
    options: FitOptions | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> FitResult:
    """Train ``task`` to its target, choosing batch size and lr while it trains.

    Args:
        task: a Task, a built-in name, or ``path/to/file.py:ATTR``.
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda" or "mps".
        seed: model initialisation and data order (default: the task's).
        out: directory for ``fit.json``, ``model.pt`` (the trained weights, a plain state_dict) and
            ``checkpoint.pt`` (written every ``options.checkpoint_seconds`` and on Ctrl-C).
        resume: continue from ``out/checkpoint.pt``.
        max_seconds: stop after this many wall seconds (a checkpoint is written).
        memory_budget_bytes: memory a training step may use (default: free memory minus a margin).
        memory_margin: the memory ceiling keeps this fraction of the budget free.
        options: how races run (:class:`FitOptions`).
        progress: show a progress line on ``console``.
    """
    loaded = load_task(task) if not isinstance(task, Task) else task.validate()
    if max_seconds is not None and not max_seconds > 0:
        raise ConfigError(f"max_seconds must be positive, got {max_seconds}")
    out_dir = Path(out) if out is not None else None
    if resume and out_dir is None:
        raise ConfigError("--resume needs the --out directory of the run to continue")
    controller = _Controller(loaded, resolve_device(device), seed, out_dir, memory_budget_bytes,
                             options or FitOptions(), console if progress else None, memory_margin)
    if resume:
        assert out_dir is not None
        controller.restore(out_dir / CHECKPOINT_NAME)
    return controller.run(max_seconds)


class _Controller:
    """The live run and the decisions about it (see the module docstring)."""

    def __init__(self, task: Task, device: Device, seed: int | None, out: Path | None,
                 memory_budget_bytes: int | None, options: FitOptions, console: Console | None,
                 memory_margin: float = DEFAULT_SAFETY_MARGIN) -> None:
        self.task = task
        self.device = device
        self.out = out
        self.options = options
        self.console = console
        self.memory_budget_bytes = memory_budget_bytes
        self.memory_margin = memory_margin
        self.monitor = NoiseScaleMonitor(overhead_budget=options.monitor_overhead,
                                         dataset_size=task.num_train_samples)
        self.live = Run(task, task.base_batch_size, task.base_lr, seed=seed, device=device,
                        hooks=[self.monitor])
        self.times = TimeBreakdown()
        self.races: list[RaceRecord] = []
        self.schedule: list[dict[str, Any]] = []
        self.eta_log: list[dict[str, float]] = []
        self.noise_log: list[dict[str, float]] = []
        self.decisions: list[dict[str, Any]] = []
        self.next_decision_seconds: float | None = None
        self.diverged_lr: float | None = None
        self.memory_ceiling: int | None = None
        self.judge: Judge | None = None
        #: (training seconds, the judge's validation loss) at each scheduled validation.
        self.val_loss_log: list[tuple[float, float]] = []
        #: (the judge's loss, the task's metric) of the live run at the same validations.
        self.loss_metric_pairs: list[tuple[float, float]] = []
        self.resumed = 0
        self._wall_before = 0.0  # wall seconds of earlier processes (resume)
        self._interrupted = False
        self._last_checkpoint = self._run_started = time.perf_counter()
        #: The largest batch measured to fit (the base batch runs, so it fits), and the ceiling where
        #: a measurement found memory binding.
        self.fits_up_to = task.base_batch_size
        self._meter: Any = None
        self._validations_seen = 0
        self._note_schedule("start")

    # ---- the loop ------------------------------------------------------------------------------

    def run(self, max_seconds: float | None) -> FitResult:
        started = self._run_started = self._last_checkpoint = time.perf_counter()
        with self._sigint_stops(), self._progress() as status:
            reason = "budget"
            while True:
                reason = self.live.train_until(should_stop=self._should_stop(started, max_seconds, status))
                if reason == "decide":
                    self._decide()
                    if self.live.reached_at is not None:  # a race's cooled copy reached the target
                        reason = "target"
                        break
                    continue
                if reason == "checkpoint":
                    self._checkpoint()
                    continue
                break
        self.times.wall_seconds = self._wall_before + time.perf_counter() - started
        result = self._result(reason)
        if reason == "diverged" and not self.races:
            self._write(result)
            raise FitError(f"task {self.task.name!r} diverged at step {self.live.state.step} at its base "
                           f"lr {self.task.base_lr:g} before any decision: lower base_lr "
                           "(what was measured is in fit.json)" if self.out else
                           f"task {self.task.name!r} diverged at its base lr {self.task.base_lr:g}")
        if reason in ("interrupted", "time budget"):
            self._checkpoint()
        self._write(result)
        return result

    def _should_stop(self, started: float, max_seconds: float | None, status: Any) -> Any:
        last_shown = [0.0]

        def check(run: Run) -> str | None:
            now = time.perf_counter()
            if self._interrupted:
                return "interrupted"
            if max_seconds is not None and self._wall_before + now - started >= max_seconds:
                return "time budget"
            if self.options.decide and not self.val_loss_log and run.state.step >= 1:
                self._score_live(run)  # the starting line: the judge's loss after the first step
            if len(run.history) != self._validations_seen:
                self._validations_seen = len(run.history)
                self._on_validation(run)
            if status is not None and now - last_shown[0] > 0.5:
                last_shown[0] = now
                status.update(self._status_line())
            if self.out is not None and now - self._last_checkpoint >= self.options.checkpoint_seconds:
                return "checkpoint"
            if self._decision_due(run):
                return "decide"
            return None

        return check

    def _decision_due(self, run: Run) -> bool:
        if not self.options.decide:
            return False
        if self.next_decision_seconds is None:
            # The first decision after a few steps (the judge scored the start, so a rate exists).
            if run.state.step >= FIRST_DECISION_STEPS:
                self.next_decision_seconds = run.state.train_seconds
            else:
                return False
        return run.state.train_seconds >= self.next_decision_seconds

    # ---- decisions -------------------------------------------------------------------------------

    def _decide(self) -> None:
        """One decision point: race forks of the live run while they win and it pays.

        Each round races lr × factor and 2B (with the lr the scaling rule gives it), and B/2 where the
        measured noise scale is below the batch, against the live run; a round won by a challenger
        is followed by another from the new state, while the decision's budget lasts.
        """
        live = self.live
        elapsed = live.state.train_seconds
        self.next_decision_seconds = 2.0 * elapsed
        if not self.val_loss_log or self.val_loss_log[-1][0] < elapsed:
            self._score_live(live)  # a fresh point for the loss rate the races convert with
        affordable = self.options.race_share * elapsed
        # A race pays back over the rest of the run: none once the validation trend says less is
        # left than a race would cost.
        remaining = self.eta_log[-1]["eta_seconds"] if self.eta_log else math.inf
        self.decisions.append({"step": live.state.step, "train_seconds": elapsed,
                               "b_simple": self._recent_b_simple(), "affordable_seconds": affordable})
        spent = 0.0
        for _ in range(self.options.max_rounds):
            live = self.live
            step_seconds = live.step_seconds_median(live.batch_size, last=64)
            share = self.options.stretch_fraction * elapsed
            steps = max(MIN_STRETCH_STEPS, round(share / max(step_seconds, 1e-9)))
            survey = not self.races  # the first race: the run is young, a wrong lr slows all of it
            branches = self._challengers(lr_rungs=self.options.survey_rungs if survey else 1)
            waste = steps * step_seconds * (len(branches) + (len(branches) + 1) * COOLDOWN_FRACTION)
            if not branches or (spent + waste > min(affordable, remaining) and not survey):
                break
            winner, record = self._race(branches, steps * live.batch_size, "round", affordable - spent)
            spent += record.discarded_seconds
            if winner is None or self.live.reached_at is not None:
                break
        self.next_decision_seconds = max(self.next_decision_seconds, 2.0 * elapsed)

    def _challengers(self, lr_rungs: int = 1) -> list[Branch]:
        """The forks worth racing from the live run now: the lr × factor (and × factor², … up to
        ``lr_rungs`` rungs), 2B, and B/2 where the noise scale is below the batch."""
        live = self.live
        branches: list[Branch] = []
        for rung in range(1, lr_rungs + 1):
            factor = self.options.lr_factor**rung
            if self._lr_allowed(live.peak_lr * factor):
                branches.append(Branch(f"lr×{factor:g}", live.batch_size, live.peak_lr * factor,
                                       live.state.accumulation_steps, favoured=True))
        b_simple = self._recent_b_simple()
        if 2 * live.batch_size <= self.task.num_train_samples:
            branches.append(self._batch_branch("2B", 2 * live.batch_size, b_simple))
        smaller = live.batch_size // 2
        if smaller >= self.options.min_batch_size and b_simple is not None and b_simple < live.batch_size:
            branches.append(self._batch_branch("B/2", smaller, b_simple))
        return branches

    def _batch_branch(self, role: str, batch_size: int, b_simple: float | None) -> Branch:
        """A branch at ``batch_size`` with the lr the scaling rule gives it from the live (B, lr)."""
        live = self.live
        lr = plan.scaled_lr(batch_size, live.batch_size, live.peak_lr, self.task.resolved_lr_scaling(),
                            b_simple)
        if self.diverged_lr is not None:
            lr = min(lr, self.diverged_lr / self.options.lr_factor)
        micro, accumulation = plan.split_for_memory(batch_size, self._ceiling(batch_size))
        return Branch(role, batch_size, lr, accumulation if micro * accumulation == batch_size else 1)

    def _lr_allowed(self, lr: float) -> bool:
        return self.diverged_lr is None or lr < self.diverged_lr

    def _race(self, branches: list[Branch], stretch: int, kind: str,
              affordable: float) -> tuple[Branch | None, RaceRecord]:
        """Race ``branches`` against the live run and adopt the winner (None: the live run stayed).

        The race may go on for as many stretches as ``affordable`` seconds of waste pay for.
        """
        stretch_seconds = stretch / self.live.batch_size * self.live.step_seconds_median(
            self.live.batch_size, last=64)
        waste = stretch_seconds * (len(branches) + (len(branches) + 1) * COOLDOWN_FRACTION)
        stretches = max(1, min(MAX_STRETCHES, int(affordable / max(waste, 1e-9))))
        validation_seconds = self.live.eval_seconds / max(len(self.live.history), 1)
        cheap = validation_seconds <= CHEAP_VALIDATION * stretch_seconds
        winner, record = race(self.live, branches, stretch, kind, configure=_configure, judge=self._judge(),
                              loss_rate=self._val_loss_rate(), max_stretches=stretches,
                              may_finish=(lambda loss: True) if cheap else self._may_finish)
        self.races.append(record)
        self.times.discarded_fork_seconds += record.discarded_seconds
        self.times.race_validation_seconds += record.judge_seconds
        self.times.fork_seconds += record.fork_seconds
        for outcome in record.outcomes:
            if outcome.diverged:
                self.diverged_lr = min(self.diverged_lr or math.inf, outcome.lr)
        self._say(record)
        if winner is self.live:
            return None, record
        winner.hooks = self.live.hooks
        self.live = winner
        self._note_schedule(f"{kind} race: {record.winner}"
                            + (", annealed: its cooled copy reached the target" if record.finished else ""))
        if record.finished:
            return None, record
        return next(b for b in branches if b.role == record.winner), record

    def _ceiling(self, batch_size: int) -> int:
        """The largest micro-batch known to fit at ``batch_size``: measured once per new size.

        A batch up to the largest measured to fit needs nothing more; a larger one is measured
        alone (one step in the meter's child, not a search); only where it does not fit is the
        ceiling searched for (then known for good).
        """
        if batch_size <= self.fits_up_to:
            return batch_size
        if self.memory_ceiling is not None:
            return self.memory_ceiling
        from batchsage.probe.memory import make_meter, probe_memory

        started = time.perf_counter()
        try:
            meter = self._meter or make_meter(self.task, self.device)
            self._meter = meter
            budget = self.memory_budget_bytes or meter.default_budget_bytes()[0]
            if meter.measure(batch_size, int(budget * (1.0 - self.memory_margin))).fits:
                self.fits_up_to = batch_size
                return batch_size
            profile = probe_memory(self.task, device=self.device, budget_bytes=budget,
                                   margin=self.memory_margin, max_batch_size_limit=batch_size)
            self.memory_ceiling = profile.max_batch_size
            return self.memory_ceiling
        finally:
            self.times.probe_seconds += time.perf_counter() - started

    # ---- measurements ------------------------------------------------------------------------------

    def _judge(self) -> Judge:
        if self.judge is None:
            step_seconds = self.live.step_seconds_median(self.live.batch_size, last=64)
            self.judge = Judge(self.task, self.live.model, self.device.torch_device, seed=self.live.seed,
                               max_seconds=JUDGE_STEPS * step_seconds)
        return self.judge

    def _on_validation(self, run: Run) -> None:
        """After a scheduled validation: the ETA, and the judge's loss (the races' exchange rate
        between loss and seconds) where the run has trained JUDGE_SPACING × longer since the last."""
        self._eta()
        if not self.options.decide or (
                self.val_loss_log and run.state.train_seconds < JUDGE_SPACING * self.val_loss_log[-1][0]):
            return
        self._score_live(run)

    def _score_live(self, run: Run) -> None:
        judge = self._judge()
        before = judge.seconds
        loss = float(np.mean(judge.losses(run.model)))
        self.val_loss_log.append((run.state.train_seconds, loss))
        last = run.history[-1] if run.history else None
        if last is not None and last.step == run.state.step and math.isfinite(last.metric):
            self.loss_metric_pairs.append((loss, last.metric))
        self.times.race_validation_seconds += judge.seconds - before

    def _may_finish(self, cooled_loss: float) -> bool:
        """Whether a cooled copy with this validation loss may reach the target: the metric the live
        run's recent (loss, metric) pairs predict for it, within two standard deviations of their
        scatter, is at the target. With too few pairs to say (early in the run), it is not tried."""
        pairs = self.loss_metric_pairs[-8:]
        if len(pairs) < 3 or np.ptp([loss for loss, _ in pairs]) == 0:
            return False
        slope, intercept = np.polyfit([loss for loss, _ in pairs], [m for _, m in pairs], 1)
        scatter = [m - (intercept + slope * loss) for loss, m in pairs]
        predicted = intercept + slope * cooled_loss
        spread = 2.0 * float(np.std(scatter, ddof=1))
        best_case = predicted + spread if self.task.higher_is_better else predicted - spread
        return self.task.reached(best_case)

    def _val_loss_rate(self) -> float:
        """How fast the live run's validation loss has been falling, per training second (≥ 0), over
        the latter half of the run (at least its last three validations)."""
        elapsed = self.live.state.train_seconds
        points = [(t, loss) for t, loss in self.val_loss_log if math.isfinite(loss)]
        recent = [p for p in points if p[0] >= elapsed / 2]
        if len(recent) < 3:
            recent = points[-3:]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        slope = float(np.polyfit([t for t, _ in recent], [loss for _, loss in recent], 1)[0])
        return max(-slope, 0.0)

    def _recent_b_simple(self) -> float | None:
        """B_simple over the monitor's measurements of the latter half of the run (None: too few)."""
        from batchsage.noise import ratio_of_means

        step = self.live.state.step
        recent = [m for m in self.monitor.statistics.measurements if m.step >= step / 2]
        if len(recent) < 4:
            return None
        value = ratio_of_means([m.trace_sigma for m in recent], [m.grad_norm_sq for m in recent])[0]
        return value if math.isfinite(value) and value > 0 else None

    def _eta(self) -> float | None:
        """Estimated training seconds still needed to reach the target (None: no trend yet)."""
        live = self.live
        points = [(p.train_seconds, p.metric) for p in live.history if p.train_seconds > 0]
        if len(points) < 3:
            return None
        estimate = curves.extrapolate_steps_to_target([t for t, _ in points], [m for _, m in points],
                                                      self.task.target, self.task.higher_is_better)
        if not estimate.reachable:
            return None
        remaining = max(estimate.steps - live.state.train_seconds, 0.0)
        self.eta_log.append({"train_seconds": live.state.train_seconds, "eta_seconds": remaining,
                             "step": live.state.step})
        return remaining

    # ---- output --------------------------------------------------------------------------------

    def _note_schedule(self, reason: str) -> None:
        live = self.live
        self.schedule.append({"step": live.state.step, "samples": live.state.samples,
                              "train_seconds": live.state.train_seconds, "batch_size": live.batch_size,
                              "accumulation_steps": live.state.accumulation_steps, "lr": live.peak_lr,
                              "reason": reason})

    def _result(self, reason: str) -> FitResult:
        live = self.live
        live_times = self.times
        live_times.kept_train_seconds = live.state.train_seconds
        live_times.scheduled_validation_seconds = live.eval_seconds
        live_times.monitor_overhead_seconds = self.monitor.overhead_fraction * live.state.train_seconds
        self.noise_log = [{"step": p.step, "b_simple": p.b_simple, "train_loss": p.train_loss}
                          for p in self.monitor.trajectory]
        reached = live.reached_at is not None
        return FitResult(
            task=self.task.name, device=str(self.device), seed=live.seed, reached_target=reached,
            stop_reason="target" if reached else reason,
            final_metric=live.history[-1].metric if live.history else math.nan,
            metric_name=self.task.metric_name, target=self.task.target,
            higher_is_better=self.task.higher_is_better, steps=live.state.step, samples=live.state.samples,
            batch_size=live.batch_size, lr=live.peak_lr, schedule=list(self.schedule),
            races=[r.to_dict() for r in self.races],
            history=[asdict(p) for p in live.history], eta=list(self.eta_log), times=live_times,
            noise=self.noise_log, options=asdict(self.options),
            model_path=str(self.out / MODEL_NAME) if self.out else None,
            checkpoint_path=str(self.out / CHECKPOINT_NAME) if self.out else None,
            resumed=self.resumed, model=live.model, steps_by_batch=self._steps_by_batch(),
            decisions=list(self.decisions),
        )

    def _steps_by_batch(self) -> dict[str, dict[str, int]]:
        kept: dict[str, int] = {}
        for batch, _seconds, _loss in self.live.step_log:
            kept[str(batch)] = kept.get(str(batch), 0) + 1
        discarded: dict[str, int] = {}
        for record in self.races:
            for batch, steps in record.discarded_steps.items():
                discarded[batch] = discarded.get(batch, 0) + steps
        return {"kept": kept, "discarded": discarded}

    def _write(self, result: FitResult) -> None:
        if self.out is None:
            return
        save_atomic(self.live.model.state_dict(), self.out / MODEL_NAME)
        write_json(self.out / "fit.json", result.to_dict())

    def _say(self, record: RaceRecord) -> None:
        if self.console is None:
            return
        parts = [f"{o.role} (B={o.batch_size}, lr {o.lr:.3g})"
                 + (" diverged" if o.diverged else
                    f" {o.advantage_seconds:+.2f}±{o.advantage_se:.2f} s" if o.role != "incumbent" else "")
                 for o in record.outcomes]
        self.console.print(f"  {record.kind} race at {record.train_seconds:.1f} s (step {record.step}, "
                           f"{record.stretch_samples} samples): {', '.join(parts)} → {record.winner}",
                           highlight=False)

    def _status_line(self) -> str:
        live = self.live
        metric = live.history[-1].metric if live.history else math.nan
        estimate = self.monitor.estimate()
        eta = self.eta_log[-1]["eta_seconds"] if self.eta_log else None
        b_simple = "-" if estimate is None else f"{estimate.b_simple:.0f}"
        return (f"step {live.state.step} · B={live.batch_size} · lr {live.peak_lr:.3g} · "
                f"B_simple {b_simple} · "
                f"{self.task.metric_name} {metric:.4g} → {self.task.target:g} · "
                f"ETA {'-' if eta is None else f'{eta:.0f} s'}")

    @contextmanager
    def _progress(self) -> Iterator[Any]:
        if self.console is None:
            yield None
            return
        with self.console.status(f"training {self.task.name}", refresh_per_second=4) as status:
            yield status

    @contextmanager
    def _sigint_stops(self) -> Iterator[None]:
        """The first Ctrl-C stops at the next step boundary (checkpoint written); a second one aborts."""
        def handler(signum: int, frame: Any) -> None:
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Ctrl-C is not ours to handle
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # ---- checkpoints ----------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        self._last_checkpoint = time.perf_counter()
        if self.out is None:
            return
        started = time.perf_counter()
        controller = {
            "times": asdict(self.times), "races": [r.to_dict() for r in self.races],
            "schedule": self.schedule, "eta": self.eta_log,
            "next_decision_seconds": self.next_decision_seconds,
            "diverged_lr": self.diverged_lr, "memory_ceiling": self.memory_ceiling,
            "fits_up_to": self.fits_up_to, "resumed": self.resumed, "options": asdict(self.options),
            "val_loss_log": self.val_loss_log, "loss_metric_pairs": self.loss_metric_pairs,
            "decisions": self.decisions,
            "wall_seconds": self._wall_before + (time.perf_counter() - self._run_started),
        }
        save_checkpoint(self.out / CHECKPOINT_NAME, self.task, self.live.state_dict(), controller)
        self.times.checkpoint_seconds += time.perf_counter() - started

    def restore(self, path: Path) -> None:
        run_state, controller = load_checkpoint(path, self.task)
        self.live.load_state_dict(run_state)
        self.times = TimeBreakdown(**controller["times"])
        self.races = [RaceRecord(**{**r, "outcomes": [_outcome(o) for o in r["outcomes"]]})
                      for r in controller["races"]]
        self.schedule = controller["schedule"]
        self.eta_log = controller["eta"]
        self.next_decision_seconds = controller["next_decision_seconds"]
        self.diverged_lr = controller["diverged_lr"]
        self.memory_ceiling = controller["memory_ceiling"]
        self.fits_up_to = int(controller["fits_up_to"])
        self.val_loss_log = [tuple(point) for point in controller["val_loss_log"]]  # type: ignore[misc]
        self.loss_metric_pairs = [tuple(pair) for pair in controller["loss_metric_pairs"]]  # type: ignore[misc]
        self.decisions = controller["decisions"]
        self.resumed = int(controller["resumed"]) + 1
        self._wall_before = float(controller["wall_seconds"])


def _outcome(data: dict[str, Any]) -> BranchOutcome:
    return BranchOutcome(**data)


def _configure(run: Run, branch: Branch) -> None:
    run.set_batch(branch.batch_size, branch.accumulation_steps)
    run.set_lr(branch.lr)
    run.warmup_steps = 0
