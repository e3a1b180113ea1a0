"""Ground truth: is batchsage's recommendation right, and does it beat every peer strategy?

    python benchmarks/groundtruth.py --task digits-mlp [--seeds 2] [--memory-budget 4GiB] \
        --out benchmarks/results/digits-mlp.json

Protocol (DESIGN.md "Measuring whether a recommendation is right"; docs/groundtruth.md):

1. Decisions, each timed: batchsage's ``recommend``, Lightning's ceiling search (``memory_ceiling``),
   Ludwig's throughput search (``max_throughput``), the seed articles' doubling sweep (``doubling``),
   and the constant ``default32``.
2. The grid, through the sweep engine: every power-of-two B from ``--min-batch-size`` up to the
   memory ceiling (and the training-set size) × the task's scaled lr × {¼, ½, 1, 2}, plus every
   strategy's own plain (B, lr), for each seed, each to the target or the budget; where the fastest
   lr of a B within 2× of the best is at the edge of its range, the range is widened by 2× (up to
   twice, ``--lr-extensions``) so the grid brackets the optimum. batchsage's and
   default32's points run first (a good time early lets the censoring cut hopeless trials sooner),
   the rest in a seeded random order, so that machine-load drift does not favour one B. The sweep
   cuts a trial past ``--grid-cut-factor`` (1.5) × its seed's best clock time so far (censored);
   step 4 re-runs every cut trial that could still be the best, so nothing that could be the best
   is lost, and those of a configuration a strategy chose up to ``--censor-factor`` (3) × best.
3. Strategy choices that are not plain grid points (batchsage's warmup or accumulation) are trained
   for every seed with the same loop (after step 4's timing, cut at the censor bound in steps).
4. t(B) for every batch size used: interleaved timing rounds (every round visits every B in a new
   random order) pooled with the grid trials' own median step times (the median of both), fixed
   when the run first completes (a resume adds t(B) only for a new B). Time to
   target = steps to target × t(B); a grid trial the sweep cut on its clock that could still be
   the best (or that a strategy chose) is re-run, cut by steps × t(B). Best = the configuration
   with the smallest median over seeds; regret and decision cost per strategy.
5. The best configuration is re-trained on ``--heldout-seeds`` (2) seeds no grid trial used: the
   fastest of dozens of noisy medians is biased low, and its time on fresh seeds says by how much
   (``best_heldout.ratio_to_grid_best``); regret is still taken against the grid's best.
6. ``--repeat-decisions N``: N more batchsage decisions, each trained on the grid's seeds
   (``batchsage_decisions``: every decision's regret, their median and worst).
7. ``--top-up-seeds N``: before the scores, every configuration within ``--top-up-within`` (1.3)
   × the best is trained on N more seeds, and so is every strategy's pick; the best and every
   regret are then medians over the grid's seeds and these (the held-out seeds come after them).

Resumable: the sweeps live in an Optuna SQLite storage (``~/.cache/batchsage/groundtruth/<task>.db``,
outside the repository) and every decision and strategy run is saved in the output JSON as soon as it is made,
so stopping and re-running the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import gt_regret as regret_lib
import gt_strategies as strategies
from batchsage.engine import StepUpdate, TrainingHook, TrainState, train
from batchsage.errors import BatchsageError, ConfigError
from batchsage.jsonio import write_json
from batchsage.plan import scaled_lr
from batchsage.task import Task, load_task
from gt_regret import Trial
from gt_strategies import Choice

LR_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0)
#: The goal the issue sets for batchsage.
GOAL_MAX_REGRET = 1.10
GOAL_MEDIAN_REGRET = 1.05
GOAL_MAX_DECISION_COST = 0.10


@dataclass
class Settings:
    """Everything that defines one ground-truth run (saved in the JSON under ``protocol``)."""

    seeds: int = 2
    memory_budget_bytes: int | None = None
    device: str = "cpu"
    min_batch_size: int = 16
    max_batch_size: int | None = None
    lr_multipliers: tuple[float, ...] = LR_MULTIPLIERS
    censor_factor: float = 3.0
    grid_cut_factor: float = 1.5
    #: Strategies whose saved decision is discarded and made again on this run.
    redecide: tuple[str, ...] = ()
    recommend_budget_seconds: float | None = None
    strategies: tuple[str, ...] = strategies.STRATEGIES
    progress: bool = True
    storage_dir: Path | None = None
    shuffle_seed: int = 0
    threads: int | None = 1
    timing_rounds: int = 5
    lr_extensions: int = 2
    #: Fresh seeds the grid's best is re-trained on (0: none), to measure its selection luck.
    heldout_seeds: int = 2
    #: More seeds for every configuration within ``top_up_within`` × the best, and for every
    #: strategy's pick (0: none): the best and the regrets become medians over more seeds.
    top_up_seeds: int = 0
    top_up_within: float = 1.3
    #: Further independent batchsage decisions, each trained and scored like the first.
    repeat_decisions: int = 0

    def seed_list(self, task: Task) -> list[int]:
        return [task.seed + index for index in range(self.seeds)]

    def top_up_seed_list(self, task: Task) -> list[int]:
        return [task.seed + self.seeds + index for index in range(self.top_up_seeds)]

    def heldout_seed_list(self, task: Task) -> list[int]:
        first = task.seed + self.seeds + self.top_up_seeds
        return [first + index for index in range(self.heldout_seeds)]


# --------------------------------------------------------------------------------------------------
# The state saved in the output JSON (so a stopped run resumes)
# --------------------------------------------------------------------------------------------------


@dataclass
class State:
    path: Path
    document: dict[str, Any] = field(default_factory=dict)
    storage_dir: Path | None = None

    @classmethod
    def load(cls, path: Path, storage_dir: Path | None = None) -> State:
        """Resume the result at ``path`` (partial or complete: its decisions, timing and runs are
        kept and the scores recomputed); absent, start afresh."""
        import json

        if path.is_file():
            document = json.loads(path.read_text())
            if isinstance(document, dict) and "decisions" in document:
                return cls(path, document, storage_dir)
        return cls(path, {"status": "partial", "decisions": {}, "strategy_runs": []}, storage_dir)

    def save(self) -> None:
        write_json(self.path, self.document)

    @property
    def decisions(self) -> dict[str, Any]:
        return self.document.setdefault("decisions", {})

    def strategy_runs(self) -> list[Trial]:
        return [Trial.from_dict(run) for run in self.document.setdefault("strategy_runs", [])]

    def add_strategy_run(self, trial: Trial) -> None:
        self.document.setdefault("strategy_runs", []).append(trial.to_dict())
        self.save()

    def rechecks(self) -> list[Trial]:
        return [Trial.from_dict(run) for run in self.document.setdefault("rechecks", [])]

    def add_recheck(self, trial: Trial) -> None:
        self.document.setdefault("rechecks", []).append(trial.to_dict())
        self.save()


def machine_info(device: str) -> dict[str, Any]:
    """Where the numbers were measured."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# Phase 1: decisions
# --------------------------------------------------------------------------------------------------


def memory_ceiling(task: Task, settings: Settings) -> tuple[int, dict[str, Any]]:
    """Largest B whose step fits the budget (the probe's verified prediction), ≤ training-set size.

    Without the memory probe (not installed), the training-set size bounds B, as in the sweep.
    """
    try:
        from batchsage.probe.memory import probe_memory
    except ImportError:
        ceiling = task.num_train_samples
        details: dict[str, Any] = {"max_batch_size": ceiling, "source": "training set size"}
    else:
        probe = probe_memory(task, device=settings.device, budget_bytes=settings.memory_budget_bytes,
                             max_batch_size_limit=settings.max_batch_size)
        ceiling = min(int(probe.max_batch_size), task.num_train_samples)
        details = probe.to_dict() if hasattr(probe, "to_dict") else {}
        details["source"] = "memory probe"
    if settings.max_batch_size is not None:
        ceiling = min(ceiling, settings.max_batch_size)
    return ceiling, details


def make_decisions(task: Task, settings: Settings, state: State, console: Console) -> dict[str, Choice]:
    """Every strategy's timed choice; each is saved as soon as it is made and never re-made."""
    decisions = state.decisions
    for name in settings.redecide:
        if decisions.get("choices", {}).pop(name, None) is not None:
            console.print(f"[bold]discarding[/] {name}'s saved decision (--redecide)")
        if name == "batchsage":  # its repeats came from the same (older) recommender
            decisions.pop("recommendation", None)
            state.document.pop("repeat_decisions", None)
    if "ceiling" not in decisions:
        with console.status("probing the memory ceiling"):
            ceiling, memory = memory_ceiling(task, settings)
        decisions["ceiling"] = {"max_batch_size": ceiling, "memory": memory}
        state.save()
    ceiling = int(decisions["ceiling"]["max_batch_size"])

    def fits(batch_size: int) -> bool:
        return batch_size <= ceiling

    makers: dict[str, Callable[[], Choice]] = {
        "batchsage": lambda: _decide_batchsage(task, settings, state),
        "default32": lambda: strategies.choose_default32(task),
        "memory_ceiling": lambda: strategies.choose_memory_ceiling(task, fits, settings.device),
        "max_throughput": lambda: strategies.choose_max_throughput(task, fits, settings.device),
        "doubling": lambda: choose_doubling(task, settings, state, ceiling),
    }
    choices: dict[str, Choice] = {}
    for name in settings.strategies:
        saved = decisions.setdefault("choices", {}).get(name)
        if saved is None:
            console.print(f"[bold]deciding[/] {name}")
            choice = makers[name]()
            decisions["choices"][name] = choice.to_dict()
            state.save()
            console.print(f"  {name}: B={choice.batch_size}, lr={choice.lr:.4g}, "
                          f"decision {choice.decision_seconds:.1f} s")
        choices[name] = Choice.from_dict(name, decisions["choices"][name])
    return choices


def _decide_batchsage(task: Task, settings: Settings, state: State) -> Choice:
    choice, rec = strategies.choose_batchsage(
        task, device=settings.device, memory_budget_bytes=settings.memory_budget_bytes,
        budget_seconds=settings.recommend_budget_seconds, progress=settings.progress,
    )
    state.decisions["recommendation"] = rec.to_dict()
    return choice


def choose_doubling(task: Task, settings: Settings, state: State, ceiling: int) -> Choice:
    """The seeds' procedure (start at 32, double while time to target improves), by the sweep engine.

    One seed, as a practitioner runs it. Its decision time is the sweep's wall-clock; if the sweep
    was resumed (some trials ran in an earlier process), the sum of its trials' wall seconds.
    """
    from batchsage.sweep import run_sweep

    result = run_sweep(
        task, procedure="doubling", seeds=[task.seed], storage=_storage_url(state),
        study_name=f"{task.name}-doubling", device=settings.device, max_batch_size=ceiling,
        progress=settings.progress,
    )
    best = result.best
    if best is None:
        raise ConfigError(f"the doubling procedure found no batch size that trains {task.name!r}")
    trial_walls = [t.wall_seconds for t in result.trials if math.isfinite(t.wall_seconds)]
    resumed = not all(t.ran_here for t in result.trials)
    decision_seconds = sum(trial_walls) if resumed else result.wall_seconds
    return Choice("doubling", int(best["batch_size"]), float(best["lr"]), decision_seconds,
                  details={"procedure": "doubling from 32 while time to target improves (1 seed)",
                           "steps": (result.doubling or {}).get("steps"),
                           "tried": [_trial_brief(t) for t in result.trials]})


def _trial_brief(trial: Any) -> dict[str, Any]:
    return {key: getattr(trial, key, None)
            for key in ("batch_size", "lr", "reached_target", "steps_to_target", "seconds_to_target",
                        "final_metric")}


# --------------------------------------------------------------------------------------------------
# Phase 2: the grid
# --------------------------------------------------------------------------------------------------


def grid_batch_sizes(task: Task, ceiling: int, min_batch_size: int) -> list[int]:
    """Powers of two from ``min_batch_size`` up to the ceiling and the training-set size."""
    top = min(ceiling, task.num_train_samples)
    if min_batch_size > top:
        raise ConfigError(f"--min-batch-size {min_batch_size} exceeds the largest usable batch {top}")
    sizes, batch = [], 1 << max(0, math.ceil(math.log2(min_batch_size)))
    while batch <= top:
        sizes.append(batch)
        batch *= 2
    return sizes


def grid_configs(task: Task, batch_sizes: Sequence[int], multipliers: Sequence[float],
                 extra: Sequence[tuple[int, float]]) -> list[tuple[int, float, float | None]]:
    """(B, lr, multiplier) for the B × multiplier grid, then the extra points not already in it."""
    rule = task.resolved_lr_scaling()
    configs: list[tuple[int, float, float | None]] = []
    for batch in batch_sizes:
        anchor = scaled_lr(batch, task.base_batch_size, task.base_lr, rule)
        configs.extend((batch, anchor * m, m) for m in multipliers)
    for batch, lr in extra:
        if not any(b == batch and regret_lib.same_lr(other, lr) for b, other, _ in configs):
            configs.append((batch, lr, None))
    return configs


def run_grid(task: Task, batch_sizes: list[int], configs: list[tuple[int, float, float | None]],
             seeds: list[int], first: list[tuple[int, float]], settings: Settings,
             state: State) -> list[Trial]:
    """Train every configuration for every seed through the sweep engine (resumable storage).

    The sweep runs ``first`` in the order given (adding points that are not in its B × multiplier
    grid), so the whole grid is passed there: ``first``, then every other configuration shuffled
    with a fixed seed (the sweep's own order, nearest the anchor first, would run the far batch
    sizes last, when the machine's load may differ).
    """
    from batchsage.sweep import run_sweep

    rest = [(batch, lr) for batch, lr, _ in configs if (batch, lr) not in first]
    random.Random(settings.shuffle_seed).shuffle(rest)
    ordered_first = list(dict.fromkeys([*first, *rest]))
    result = run_sweep(
        task,
        batch_sizes=batch_sizes,
        lr_multipliers=settings.lr_multipliers,
        seeds=seeds,
        storage=_storage_url(state),
        study_name=f"{task.name}-grid",
        procedure="grid",
        prune=False,
        censor_factor=settings.grid_cut_factor,
        first=ordered_first,
        device=settings.device,
        progress=settings.progress,
    )
    unfinished = [t for t in result.trials if not t.finished]
    if unfinished:
        raise ConfigError(f"{len(unfinished)} grid trials did not finish; re-run to resume")
    multiplier = {regret_lib.config_key(b, lr): m for b, lr, m in configs}
    trials = [_from_sweep(t, "grid") for t in result.trials]
    for trial in trials:
        trial.extras["lr_multiplier"] = _multiplier_of(trial, configs, multiplier)
    return trials


def lr_bracket_extension(task: Task, grid: list[Trial], configs: list[tuple[int, float, float | None]],
                         near: float = 2.0) -> list[tuple[int, float, float]]:
    """Configurations that bracket the best lr where the grid did not.

    For every B whose fastest configuration (median over seeds, pooled step times) is within
    ``near`` × the best, if its fastest lr is the largest (smallest) multiplier tried at that B,
    the next one up (down) by 2× is proposed: otherwise the grid's best might not be the best.
    """
    step_seconds = regret_lib.step_seconds_by_batch(grid)
    summaries = regret_lib.summarise_configs(grid, step_seconds)
    best = regret_lib.best_config(summaries)
    if best is None:
        return []
    rule = task.resolved_lr_scaling()
    tried: dict[int, dict[float, float]] = {}  # B -> multiplier -> median seconds
    for b, lr, multiplier in configs:
        if multiplier is None:
            continue
        summary = next((x for x in summaries if x.batch_size == b and regret_lib.same_lr(x.lr, lr)), None)
        if summary is not None:
            tried.setdefault(b, {})[multiplier] = summary.seconds_to_target
    extra = []
    for b, times in sorted(tried.items()):
        fastest = min(times, key=lambda m: times[m])
        if not times[fastest] <= near * best.seconds_to_target:
            continue
        anchor = scaled_lr(b, task.base_batch_size, task.base_lr, rule)
        for edge, step in ((max(times), 2.0), (min(times), 0.5)):
            if fastest == edge:
                extra.append((b, anchor * edge * step, edge * step))
    return extra


def _multiplier_of(trial: Trial, configs: list[tuple[int, float, float | None]],
                   exact: dict[tuple[int, float, int, int], float | None]) -> float | None:
    if trial.key in exact:
        return exact[trial.key]
    for batch, lr, multiplier in configs:
        if batch == trial.batch_size and regret_lib.same_lr(lr, trial.lr):
            return multiplier
    return None


def _from_sweep(record: Any, source: str) -> Trial:
    state = str(getattr(record, "state", "") or "")
    stop = str(getattr(record, "stop_reason", "") or "")
    return Trial(
        batch_size=int(record.batch_size),
        lr=float(record.lr),
        seed=int(record.seed),
        reached_target=bool(record.reached_target),
        steps_to_target=record.steps_to_target,
        measured_seconds_to_target=record.seconds_to_target,
        trial_step_seconds=_float(getattr(record, "step_seconds_median", None)),
        censored=state == "censored",
        diverged=bool(getattr(record, "diverged", False)),
        stop_reason=stop or state,
        train_seconds=_float(getattr(record, "train_seconds", None)),
        final_metric=_float(getattr(record, "final_metric", None)),
        source=source,
        steps_run=getattr(record, "steps", None),
    )


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


#: Where the Optuna storages live by default: outside the working tree (a user cache directory), so
#: the SQLite files and their lock files are never committed, and no ``make clean`` or test that
#: empties ``out/`` can delete a run's state under it.
STORAGE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "batchsage" / "groundtruth"


def storage_path(out: Path, directory: Path | None = None) -> Path:
    """The SQLite file that holds a result's sweeps: ``<storage dir>/<result stem>.db``."""
    return (directory or STORAGE_DIR) / f"{out.stem}.db"


def _storage_url(state: State) -> str:
    path = storage_path(state.path, state.storage_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


# --------------------------------------------------------------------------------------------------
# Phase 3: strategy choices that are not plain grid points
# --------------------------------------------------------------------------------------------------


class StepBudget(TrainingHook):
    """Stops a run once steps × t(B) passes the censor bound: the clock-free version of the
    sweep's censoring, in the same units the scores use."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.cut = False

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        if state.step >= self.max_steps:
            self.cut = True
            return StepUpdate(stop=True, reason="censored: steps × t(B) past the bound")
        return None


def train_with_step_budget(task: Task, batch_size: int, lr: float, seed: int, settings: Settings,
                           *, max_steps: int | None, accumulation_steps: int = 1, warmup_steps: int = 0,
                           source: str) -> Trial:
    """One run of the shared training loop, cut (censored) after ``max_steps`` steps."""
    hook = StepBudget(max_steps) if max_steps is not None else None
    result = train(task, batch_size, lr, accumulation_steps=accumulation_steps,
                   warmup_steps=warmup_steps, seed=seed, device=settings.device,
                   hooks=[hook] if hook is not None else [])
    return Trial(
        batch_size=batch_size, lr=lr, seed=seed, reached_target=result.reached_target,
        steps_to_target=result.steps_to_target, measured_seconds_to_target=result.seconds_to_target,
        trial_step_seconds=result.step_seconds_median,
        censored=hook is not None and hook.cut and not result.reached_target,
        diverged=result.diverged, stop_reason=result.stop_reason,
        accumulation_steps=accumulation_steps, warmup_steps=warmup_steps,
        train_seconds=result.train_seconds, final_metric=result.final_metric, source=source,
        steps_run=result.steps,
    )


def _max_steps(bound_seconds: float, step_seconds: float) -> int | None:
    if not math.isfinite(bound_seconds) or not step_seconds > 0:
        return None
    return max(1, math.ceil(bound_seconds / step_seconds))


def recheck_censored(task: Task, grid: list[Trial], step_seconds: dict[int, float], best_seconds: float,
                     settings: Settings, state: State, console: Console,
                     strategy_keys: set[tuple[int, float, int, int]] = frozenset()) -> list[Trial]:
    """Re-run the grid trials the sweep cut on its clock that the scores still need.

    The sweep cuts on a trial's own training seconds, which include every load spike; the scores
    count steps × t(B). A cut trial is re-run, cut by steps × t(B) at ``censor_factor`` × best, when

    - its configuration might still be the best: the median over seeds of (reached: time; cut:
      the steps it ran × t(B)) is below the best time; or
    - a strategy chose its configuration and its steps × t(B) are under ``censor_factor`` × best
      (so that strategy's regret is a number, not a bound the clock drew).
    """
    bound = settings.censor_factor * best_seconds
    needed = _configs_that_could_win(grid, step_seconds, best_seconds) | set(strategy_keys)
    saved = {(t.key, t.seed): t for t in state.rechecks()}
    checked = []
    for trial in grid:
        if trial.censored and (trial.key, trial.seed) in saved:  # re-run earlier: always use it
            checked.append(saved[(trial.key, trial.seed)])
            continue
        if not (trial.censored and trial.steps_run is not None and trial.key in needed
                and regret_lib.censored_bound(trial, step_seconds) < bound):
            checked.append(trial)
            continue
        if (trial.key, trial.seed) not in saved:
            console.print(f"  re-checking B={trial.batch_size} lr={trial.lr:.4g} seed={trial.seed}: "
                          f"cut by the clock after {trial.steps_run} steps")
            run = train_with_step_budget(
                task, trial.batch_size, trial.lr, trial.seed, settings, source="recheck",
                max_steps=_max_steps(bound, regret_lib.trial_step_time(trial, step_seconds)))
            run.extras = {**trial.extras, "replaces": "censored grid trial"}
            state.add_recheck(run)
            saved[(run.key, run.seed)] = run
        checked.append(saved[(trial.key, trial.seed)])
    return checked


def _configs_that_could_win(grid: list[Trial], step_seconds: dict[int, float],
                            best_seconds: float) -> set[tuple[int, float, int, int]]:
    """Configurations with a cut trial whose optimistic median time is still below the best."""
    by_config: dict[tuple[int, float, int, int], list[float]] = {}
    censored = set()
    for trial in grid:
        if trial.reached_target:
            value = regret_lib.time_to_target(trial, step_seconds)
        elif trial.censored and trial.steps_run is not None:
            value = regret_lib.censored_bound(trial, step_seconds)
            censored.add(trial.key)
        else:
            value = math.inf
        by_config.setdefault(trial.key, []).append(value)
    return {key for key in censored if regret_lib.median_time(by_config[key]) < best_seconds}


def strategy_trials(choice: Choice, grid: list[Trial], state: State, seeds: list[int], task: Task,
                    settings: Settings, step_seconds: dict[int, float], best_seconds: float,
                    console: Console) -> tuple[list[Trial], bool]:
    """The strategy's runs, one per seed: grid trials when identical, else trained here (saved)."""
    key = regret_lib.config_key(choice.batch_size, choice.lr, choice.accumulation_steps,
                                choice.warmup_steps)
    from_grid = [t for t in grid if t.key == key]
    grid_seeds = {t.seed for t in from_grid}
    if grid_seeds >= set(seeds):
        return [t for t in from_grid if t.seed in seeds], True
    # A grid point needs runs only for the seeds the grid lacks (e.g. --top-up-seeds).
    runs = from_grid + [t for t in state.strategy_runs() if t.key == key and t.seed not in grid_seeds]
    micro = choice.batch_size // choice.accumulation_steps
    step = choice.accumulation_steps * step_seconds.get(micro, math.nan)
    for seed in seeds:
        if any(run.seed == seed for run in runs):
            continue
        console.print(f"  training {choice.name}: B={choice.batch_size}, lr={choice.lr:.4g}, "
                      f"accumulation {choice.accumulation_steps}, warmup {choice.warmup_steps}, "
                      f"seed {seed}")
        run = train_with_step_budget(
            task, choice.batch_size, choice.lr, seed, settings, source=choice.name,
            max_steps=_max_steps(settings.censor_factor * best_seconds, step),
            accumulation_steps=choice.accumulation_steps, warmup_steps=choice.warmup_steps)
        state.add_strategy_run(run)
        runs.append(run)
    return [run for run in runs if run.seed in seeds], False


def measure_step_times(task: Task, batch_sizes: list[int], settings: Settings, state: State,
                       console: Console) -> strategies.StepTiming:
    """Interleaved timing rounds for every batch size any trial uses (saved; measured once)."""
    saved = state.document.get("timing")
    if saved is not None:
        timing = strategies.StepTiming.from_dict(saved)
        if set(batch_sizes) <= set(timing.step_seconds):
            return timing
    with console.status(f"timing steps at {len(batch_sizes)} batch sizes, {settings.timing_rounds} "
                        "interleaved rounds"):
        timing = strategies.time_batch_sizes(task, batch_sizes, rounds=settings.timing_rounds,
                                             device=settings.device, seed=settings.shuffle_seed)
    state.document["timing"] = timing.to_dict()
    state.save()
    return timing


def combined_step_seconds(timing: strategies.StepTiming, grid: list[Trial]) -> dict[int, float]:
    """t(B) = the median over the timing rounds *and* the grid trials' own median step times.

    Both are fair to every B (the rounds are interleaved, the grid shuffled) and each alone is a
    handful of samples of a heavy-tailed load: pooled, a burst that hit one round or a few trials
    at one B no longer decides which B wins a flat optimum.
    """
    samples: dict[int, list[float]] = {b: [r[b] for r in timing.rounds if b in r]
                                       for b in timing.step_seconds}
    for trial in grid:
        if trial.accumulation_steps == 1 and math.isfinite(trial.trial_step_seconds):
            samples.setdefault(trial.batch_size, []).append(trial.trial_step_seconds)
    return {b: statistics.median(values) for b, values in samples.items() if values}


def frozen_step_seconds(document: dict[str, Any], pooled: dict[int, float]) -> dict[int, float]:
    """t(B) as the first completed run of this result fixed it; pooled only for a B it lacks.

    Trials added on a later resume (a re-decided strategy's new grid points, run under another
    load) would otherwise move the pooled median, and every time to target and the best with it:
    measured here, charlm's t(32) rose 8 % when one strategy point was added beside a busy peer.
    """
    saved = document.get("step_seconds_by_batch") or {}
    return {b: float(saved.get(str(b), seconds)) for b, seconds in pooled.items()}


# --------------------------------------------------------------------------------------------------
# Phase 4: results
# --------------------------------------------------------------------------------------------------


def grid_rows(trials: list[Trial], step_seconds: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    for trial in sorted(trials, key=lambda t: (t.batch_size, t.lr, t.seed)):
        seconds = regret_lib.time_to_target(trial, step_seconds)
        rows.append({
            "batch_size": trial.batch_size,
            "lr": trial.lr,
            "seed": trial.seed,
            "reached_target": trial.reached_target,
            "seconds_to_target": seconds if math.isfinite(seconds) else None,
            "steps_to_target": trial.steps_to_target,
            "step_seconds": regret_lib.trial_step_time(trial, step_seconds),
            "lr_multiplier": trial.extras.get("lr_multiplier"),
            "measured_seconds_to_target": trial.measured_seconds_to_target,
            "trial_step_seconds": trial.trial_step_seconds,
            "censored": trial.censored,
            "diverged": trial.diverged,
            "stop_reason": trial.stop_reason,
            "train_seconds": trial.train_seconds,
            "final_metric": trial.final_metric,
            "steps_run": trial.steps_run,
            "source": trial.source,
        })
    return rows


def strategy_result(choice: Choice, runs: list[Trial], reused: bool, step_seconds: dict[int, float],
                    best_seconds: float) -> dict[str, Any]:
    times = [regret_lib.time_to_target(run, step_seconds) for run in runs]
    median = regret_lib.median_time(times)
    regret = regret_lib.regret(median, best_seconds)
    cost = regret_lib.decision_cost(choice.decision_seconds, best_seconds)
    lower = None if math.isfinite(regret) else regret_lib.censored_lower_bound(runs, step_seconds,
                                                                               best_seconds)
    return {
        "batch_size": choice.batch_size,
        "lr": choice.lr,
        "seconds_to_target": median if math.isfinite(median) else None,
        "regret": regret if math.isfinite(regret) else None,
        "regret_at_least": lower,
        "decision_seconds": choice.decision_seconds,
        "decision_cost": cost,
        "score": regret + cost if math.isfinite(regret) else None,
        "accumulation_steps": choice.accumulation_steps,
        "warmup_steps": choice.warmup_steps,
        "reached_runs": sum(math.isfinite(t) for t in times),
        "runs": len(runs),
        "reused_grid_trials": reused,
        "per_seed_seconds": [t if math.isfinite(t) else None for t in times],
        "details": choice.details,
    }


def goal_check(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Did batchsage meet the issue's goal on this task?"""
    ours = results.get("batchsage")
    if ours is None:
        return {}
    regret = ours["regret"]
    others = {name: r["score"] for name, r in results.items() if name != "batchsage"}
    beats = all(regret is not None and (s is None or ours["score"] < s) for s in others.values())
    return {
        "regret_ok": regret is not None and regret <= GOAL_MAX_REGRET,
        "decision_cost_ok": ours["decision_cost"] <= GOAL_MAX_DECISION_COST,
        "beats_every_strategy": beats,
        "max_regret": GOAL_MAX_REGRET,
        "max_decision_cost": GOAL_MAX_DECISION_COST,
    }


def diagnose(recommendation: dict[str, Any] | None, trials: list[Trial],
             step_seconds: dict[int, float]) -> dict[str, Any]:
    """The recommender's predictions per B against what the grid measured.

    For every B both have: predicted vs measured step time (t(B)), predicted steps vs the steps the
    best lr at that B needed (S(B)), the planned lr vs the best grid lr (the lr rule), and the
    predicted time vs the best measured time at that B (T(B)).
    """
    if not recommendation:
        return {}
    by_batch: dict[int, list[regret_lib.ConfigSummary]] = {}
    for summary in regret_lib.summarise_configs([t for t in trials if t.accumulation_steps == 1],
                                                step_seconds):
        by_batch.setdefault(summary.batch_size, []).append(summary)
    rows = []
    for candidate in recommendation.get("candidates", []):
        batch = int(candidate["batch_size"])
        if batch not in by_batch or candidate.get("accumulation_steps", 1) != 1:
            continue
        best_here = min(by_batch[batch], key=lambda s: s.seconds_to_target)
        measured_steps = _median_steps(trials, batch, best_here.lr)
        measured_seconds = best_here.seconds_to_target
        rows.append({
            "batch_size": batch,
            "predicted_step_seconds": candidate["step_seconds"],
            "measured_step_seconds": step_seconds.get(batch),
            "predicted_steps": candidate["predicted_steps"],
            "measured_steps_at_best_lr": measured_steps,
            "planned_lr": candidate["lr"],
            "best_lr": best_here.lr if math.isfinite(measured_seconds) else None,
            "predicted_seconds": candidate["predicted_seconds"],
            "measured_best_seconds": measured_seconds if math.isfinite(measured_seconds) else None,
        })
    return {"per_batch": rows, "summary": _diagnosis_summary(rows)}


def _median_steps(trials: list[Trial], batch: int, lr: float) -> float | None:
    steps = [t.steps_to_target for t in trials
             if t.batch_size == batch and regret_lib.same_lr(t.lr, lr) and t.accumulation_steps == 1]
    finite = [float(s) if s is not None else math.inf for s in steps]
    value = regret_lib.median_time(finite)
    return value if math.isfinite(value) else None


def _log_ratio_spread(pairs: list[tuple[float | None, float | None]]) -> float | None:
    """Median |log2(predicted / measured)| over the pairs both sides have: 1.0 = off by 2×."""
    values = [abs(math.log2(p / m)) for p, m in pairs if p and m and p > 0 and m > 0
              and math.isfinite(p) and math.isfinite(m)]
    return statistics.median(values) if values else None


def _diagnosis_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if r["measured_best_seconds"] is not None]
    predicted_best = min(rows, key=lambda r: r["predicted_seconds"])["batch_size"] if rows else None
    measured_best = (min(measured, key=lambda r: r["measured_best_seconds"])["batch_size"]
                     if measured else None)
    return {
        "step_seconds_log2_error": _log_ratio_spread(
            [(r["predicted_step_seconds"], r["measured_step_seconds"]) for r in rows]),
        "steps_log2_error": _log_ratio_spread(
            [(r["predicted_steps"], r["measured_steps_at_best_lr"]) for r in rows]),
        "steps_shape_log2_error": _steps_shape_error(rows, measured_best),
        "lr_log2_error": _log_ratio_spread([(r["planned_lr"], r["best_lr"]) for r in rows]),
        "seconds_log2_error": _log_ratio_spread(
            [(r["predicted_seconds"], r["measured_best_seconds"]) for r in rows]),
        "predicted_best_batch_size": predicted_best,
        "measured_best_batch_size": measured_best,
    }


def _steps_shape_error(rows: list[dict[str, Any]], reference: int | None) -> float | None:
    """The S(B) error that moves the choice: steps relative to those at the measured best B.

    Predicted steps come from short pilots and are often off by a constant factor (S_min), which
    scales every T(B) alike and leaves the pick alone; how S(B) falls with B (the noise scale)
    decides the pick. Median |log2| of predicted ÷ measured, each as a ratio to its value at
    ``reference``.
    """
    at_reference = next((r for r in rows if r["batch_size"] == reference), None)
    if at_reference is None:
        return None
    predicted_ref, measured_ref = at_reference["predicted_steps"], at_reference["measured_steps_at_best_lr"]
    if not predicted_ref or not measured_ref:
        return None
    return _log_ratio_spread([
        (r["predicted_steps"] / predicted_ref if r["predicted_steps"] else None,
         r["measured_steps_at_best_lr"] / measured_ref if r["measured_steps_at_best_lr"] else None)
        for r in rows if r["batch_size"] != reference])


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


def run_groundtruth(task_spec: str | Task, out: Path, settings: Settings,
                    console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the whole protocol for one task and write ``out``; returns the document."""
    threads = torch.get_num_threads()
    try:
        return _run_groundtruth(task_spec, out, settings, console or Console())
    finally:
        torch.set_num_threads(threads)


def _run_groundtruth(task_spec: str | Task, out: Path, settings: Settings,
                     console: Console) -> dict[str, Any]:
    if settings.threads is not None:
        # On a shared CPU, intra-op threads that wait for each other turn every scheduling delay
        # into a stalled step (measured here under load 8 on 2 cores: the same step took 0.5 to
        # 450 ms with 2 threads, ±20 % with 1); every part of the run uses the same setting.
        torch.set_num_threads(settings.threads)
    task = load_task(task_spec)
    state = State.load(out, settings.storage_dir)
    document = state.document
    document.update({"task": task.name, "status": "partial"})
    document.setdefault("date", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    document["machine"] = machine_info(settings.device)
    # The load when the work began (a later resume that only re-scores must not replace it) and
    # at the end of the latest invocation.
    document.setdefault("load_average", {}).setdefault("start", load_average())
    seeds = settings.seed_list(task)

    choices = make_decisions(task, settings, state, console)
    ceiling = int(state.decisions["ceiling"]["max_batch_size"])
    batch_sizes = grid_batch_sizes(task, ceiling, settings.min_batch_size)
    plain = [(c.batch_size, c.lr) for c in choices.values()
             if c.accumulation_steps == 1 and c.warmup_steps == 0 and c.batch_size <= ceiling]
    configs = grid_configs(task, batch_sizes, settings.lr_multipliers, plain)
    document["protocol"] = _protocol(task, settings, seeds, ceiling, batch_sizes, len(configs))
    state.save()
    console.print(f"[bold]grid[/] {len(configs)} configurations × {len(seeds)} seeds "
                  f"(B = {batch_sizes[0]}…{batch_sizes[-1]}); {_estimate(state, configs, seeds)}")
    first = [(c.batch_size, c.lr) for name, c in choices.items() if name in ("batchsage", "default32")
             and (c.batch_size, c.lr) in plain]
    grid = run_grid(task, batch_sizes, configs, seeds, first, settings, state)
    for _ in range(settings.lr_extensions):
        extra = lr_bracket_extension(task, grid, configs)
        if not extra:
            break
        console.print("[bold]lr range extended[/] where the best lr of a near-best B was at the "
                      "edge: " + ", ".join(f"B={b} ×{m:g}" for b, _, m in extra))
        configs = configs + extra
        document["protocol"]["configurations"] = len(configs)
        grid = run_grid(task, batch_sizes, configs, seeds, first, settings, state)

    micro_sizes = {c.batch_size // c.accumulation_steps for c in choices.values()}
    timed = sorted({t.batch_size for t in grid} | micro_sizes)
    timing = measure_step_times(task, timed, settings, state, console)
    step_seconds = frozen_step_seconds(document, combined_step_seconds(timing, grid))
    best = _best_or_fail(task, grid, step_seconds)
    chosen = {regret_lib.config_key(c.batch_size, c.lr, c.accumulation_steps, c.warmup_steps)
              for c in choices.values()}
    grid = recheck_censored(task, grid, step_seconds, best.seconds_to_target, settings, state, console,
                            chosen)
    best = _best_or_fail(task, grid, step_seconds)
    grid = top_up_near_best(task, grid, best, state, settings, step_seconds, console)
    summaries = regret_lib.summarise_configs(grid, step_seconds)
    best = _best_or_fail(task, grid, step_seconds)
    seeds = seeds + settings.top_up_seed_list(task)
    results = {}
    for name, choice in choices.items():
        runs, reused = strategy_trials(choice, grid, state, seeds, task, settings, step_seconds,
                                       best.seconds_to_target, console)
        results[name] = strategy_result(choice, runs, reused, step_seconds, best.seconds_to_target)
    heldout = best_on_fresh_seeds(task, best, grid, state, settings, step_seconds, console)
    repeats = repeated_decisions(task, grid, state, seeds, settings, step_seconds, best.seconds_to_target,
                                 console)
    in_grid = {(trial.key, trial.seed) for trial in grid}  # top-ups are in both
    all_trials = grid + [run for run in state.strategy_runs() if (run.key, run.seed) not in in_grid]
    document.update({
        "grid": grid_rows(grid, step_seconds),
        "step_seconds_by_batch": {str(b): s for b, s in sorted(step_seconds.items())},
        "grid_step_seconds_by_batch": {
            str(b): s for b, s in sorted(regret_lib.step_seconds_by_batch(grid).items())},
        "configs": [_summary_row(s) for s in summaries],
        "best": {"batch_size": best.batch_size, "lr": best.lr,
                 "seconds_to_target": best.seconds_to_target},
        "best_heldout": heldout,
        "strategies": results,
        "batchsage_decisions": decision_spread(results.get("batchsage"), repeats),
        "goal": goal_check(results),
        "diagnosis": diagnose(state.decisions.get("recommendation"), all_trials, step_seconds),
        "status": "complete",
    })
    document["load_average"]["end"] = load_average()
    state.save()
    return document


def top_up_near_best(task: Task, grid: list[Trial], best: regret_lib.ConfigSummary, state: State,
                     settings: Settings, step_seconds: dict[int, float], console: Console) -> list[Trial]:
    """``grid`` plus runs on ``settings.top_up_seeds`` more seeds of every configuration near the best.

    Near: a median within ``top_up_within`` × the best's. With two seeds a configuration's median
    jitters by ±10-15 % here, so the best is partly picked for luck; more seeds where the best
    can be make the pick and every regret measured against it steadier, at the cost of a few
    configurations, not the whole grid. Runs are cut at the censor bound like a strategy's and
    saved as they finish (a resumed run reuses them, and any saved run of the same configuration
    and seed).
    """
    seeds = settings.top_up_seed_list(task)
    if not seeds:
        return grid
    near = sorted((summary for summary in regret_lib.summarise_configs(grid, step_seconds)
                   if summary.accumulation_steps == 1 and summary.warmup_steps == 0
                   and summary.seconds_to_target <= settings.top_up_within * best.seconds_to_target),
                  key=lambda summary: summary.seconds_to_target)
    multiplier = {trial.key: trial.extras.get("lr_multiplier") for trial in grid}
    topped: list[Trial] = []
    for summary in near:  # trained (or reused) like a strategy's pick on the extra seeds
        choice = Choice(name="top-up", batch_size=summary.batch_size, lr=summary.lr, decision_seconds=0.0)
        runs, _ = strategy_trials(choice, grid, state, seeds, task, settings, step_seconds,
                                  best.seconds_to_target, console)
        for run in runs:
            run.extras["lr_multiplier"] = multiplier.get(run.key)
        topped += runs
    return grid + topped


def best_on_fresh_seeds(task: Task, best: regret_lib.ConfigSummary, grid: list[Trial], state: State,
                        settings: Settings, step_seconds: dict[int, float],
                        console: Console) -> dict[str, Any] | None:
    """The grid's best (B, lr) re-trained on seeds no grid trial used.

    The best is the fastest of dozens of configurations, each a median of a few noisy seeds, so
    its grid time is biased low (the winner's curse) and every strategy's regret high by as much.
    Re-trained on fresh seeds, the same configuration's time says how large that bias is here:
    a regret below this ratio is within the grid's own noise.
    """
    seeds = settings.heldout_seed_list(task)
    if not seeds:
        return None
    choice = Choice(name="best, fresh seeds", batch_size=best.batch_size, lr=best.lr, decision_seconds=0.0)
    runs, reused = strategy_trials(choice, grid, state, seeds, task, settings, step_seconds,
                                   best.seconds_to_target, console)
    scored = strategy_result(choice, runs, reused, step_seconds, best.seconds_to_target)
    return {"batch_size": best.batch_size, "lr": best.lr, "seeds": seeds,
            "seconds_to_target": scored["seconds_to_target"],
            "per_seed_seconds": scored["per_seed_seconds"],
            "ratio_to_grid_best": scored["regret"]}  # its time ÷ the grid's best, as a regret is


def repeated_decisions(task: Task, grid: list[Trial], state: State, seeds: list[int], settings: Settings,
                       step_seconds: dict[int, float], best_seconds: float,
                       console: Console) -> list[dict[str, Any]]:
    """``settings.repeat_decisions`` more batchsage decisions, each trained on the grid's seeds.

    The recommender's pilots and races are short noisy runs, so two decisions on the same task
    can differ; one decision's regret is one draw. Each decision is saved as soon as it is made
    (a resumed run keeps them and adds any missing), its runs like a strategy's.
    """
    if "batchsage" not in settings.strategies:
        return []
    saved = state.document.setdefault("repeat_decisions", [])
    while len(saved) < settings.repeat_decisions:
        console.print(f"[bold]deciding[/] batchsage again ({len(saved) + 2} of "
                      f"{settings.repeat_decisions + 1})")
        choice, rec = strategies.choose_batchsage(
            task, device=settings.device, memory_budget_bytes=settings.memory_budget_bytes,
            budget_seconds=settings.recommend_budget_seconds, progress=settings.progress)
        if rec is not None:  # what a diagnosis of the spread needs, not the whole recommendation
            choice.details.update(lr_race=rec.lr_race, anchor=rec.anchor, lr_calibration=rec.lr_calibration)
        console.print(f"  batchsage: B={choice.batch_size}, lr={choice.lr:.4g}, "
                      f"decision {choice.decision_seconds:.1f} s")
        saved.append(choice.to_dict())
        state.save()
    results = []
    for index, data in enumerate(saved):
        choice = Choice.from_dict(f"batchsage #{index + 2}", data)
        runs, reused = strategy_trials(choice, grid, state, seeds, task, settings, step_seconds, best_seconds,
                                       console)
        results.append(strategy_result(choice, runs, reused, step_seconds, best_seconds))
    return results


def decision_spread(first: dict[str, Any] | None, repeats: list[dict[str, Any]]) -> dict[str, Any] | None:
    """batchsage's regret over every decision made on this task: the spread a user can expect."""
    if first is None or not repeats:
        return None
    decisions = [first, *repeats]
    regrets = [d["regret"] if d["regret"] is not None else math.inf for d in decisions]
    return {
        "decisions": [{key: d[key] for key in ("batch_size", "lr", "regret", "decision_seconds",
                                               "decision_cost", "per_seed_seconds")} for d in decisions],
        "median_regret": _finite_or_none(statistics.median(regrets)),  # None: not reached
        "worst_regret": _finite_or_none(max(regrets)),
        "median_decision_seconds": statistics.median(d["decision_seconds"] for d in decisions),
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _best_or_fail(task: Task, trials: list[Trial],
                  step_seconds: dict[int, float]) -> regret_lib.ConfigSummary:
    best = regret_lib.best_config(regret_lib.summarise_configs(trials, step_seconds))
    if best is None:
        raise ConfigError(f"no grid configuration of {task.name!r} reached the target: "
                          "raise the task's max_samples or lower its target")
    return best


def _summary_row(summary: regret_lib.ConfigSummary) -> dict[str, Any]:
    seconds = summary.seconds_to_target
    return {"batch_size": summary.batch_size, "lr": summary.lr,
            "seconds_to_target": seconds if math.isfinite(seconds) else None,
            "seeds": summary.seeds, "reached": summary.reached}


def _protocol(task: Task, settings: Settings, seeds: list[int], ceiling: int,
              batch_sizes: list[int], configs: int) -> dict[str, Any]:
    return {
        "seeds": seeds,
        "batch_sizes": batch_sizes,
        "lr_multipliers": list(settings.lr_multipliers),
        "lr_rule": task.resolved_lr_scaling(),
        "base_batch_size": task.base_batch_size,
        "base_lr": task.base_lr,
        "target": task.target,
        "metric": task.metric_name,
        "max_samples": task.max_samples,
        "ceiling": ceiling,
        "memory_budget_bytes": settings.memory_budget_bytes,
        "configurations": configs,
        "censor_factor": settings.censor_factor,
        "grid_cut_factor": settings.grid_cut_factor,
        "time_to_target": "steps_to_target × t(B); t(B) = median over interleaved timing rounds and "
                          "the grid trials' median step times at B; measured_seconds_to_target "
                          "keeps each trial's own clock, grid_step_seconds_by_batch the grid "
                          "trials' pooled medians, timing the rounds",
        "torch_threads": settings.threads,
        "timing_rounds": settings.timing_rounds,
        "top_up_seeds": settings.top_up_seed_list(task),
        "top_up_within": settings.top_up_within,
    }


def _estimate(state: State, configs: list[tuple[int, float, float | None]], seeds: list[int]) -> str:
    """A rough remaining-time estimate from the recommender's predicted time per B."""
    rec = state.decisions.get("recommendation")
    if not rec or not rec.get("candidates"):
        return "no estimate (no recommendation)"
    predicted = {int(c["batch_size"]): float(c["predicted_seconds"]) for c in rec["candidates"]}
    best = min(predicted.values())
    cap = 3.0 * best
    total = sum(min(predicted.get(b, cap), cap) for b, _, _ in configs) * len(seeds)
    return f"rough upper estimate {total / 60:.0f} min (from predicted T(B), cut at 3× best)"


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="built-in name or path/to/file.py:ATTR")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per configuration (≥ 2)")
    parser.add_argument("--memory-budget", default=None, help="e.g. 4GiB (default: free memory)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="cap the grid (and the finders) below the memory ceiling")
    parser.add_argument("--censor-factor", type=float, default=3.0,
                        help="strategy runs (and re-checks) are cut past this × the best time")
    parser.add_argument("--grid-cut-factor", type=float, default=1.5,
                        help="the sweep cuts a grid trial past this × its seed's best clock time; a "
                             "cut trial that could still win, or that a strategy chose, is re-run")
    parser.add_argument("--recommend-budget-seconds", type=float, default=None,
                        help="batchsage's decision budget (default: recommend's own default)")
    parser.add_argument("--strategies", default=",".join(strategies.STRATEGIES))
    parser.add_argument("--storage-dir", type=Path, default=None,
                        help=f"where the resumable SQLite storage goes (default {STORAGE_DIR})")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a saved partial run instead of resuming it")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stable timings on a shared CPU; "
                             "0 keeps torch's default)")
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="interleaved rounds of the step-time measurement")
    parser.add_argument("--lr-extensions", type=int, default=2,
                        help="times the lr range may be widened where a near-best B's best lr is "
                             "at its edge (0: the fixed grid only)")
    parser.add_argument("--redecide", default="",
                        help="comma-separated strategies whose saved decision is made again (e.g. "
                             "batchsage after a change to the recommender); the grid is kept")
    parser.add_argument("--heldout-seeds", type=int, default=2,
                        help="fresh seeds the grid's best is re-trained on, to measure how much its "
                             "grid time owes to selection among noisy configurations (0: skip)")
    parser.add_argument("--top-up-seeds", type=int, default=0,
                        help="more seeds for every configuration within --top-up-within x the best and "
                             "for every strategy's pick (0: none)")
    parser.add_argument("--top-up-within", type=float, default=1.3,
                        help="which configurations are topped up: median within this x the best")
    parser.add_argument("--repeat-decisions", type=int, default=0,
                        help="further independent batchsage decisions, each trained on the grid's "
                             "seeds: the spread of its regret from one decision to the next")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.strategies.split(",") if n.strip())
    redecide = tuple(n.strip() for n in args.redecide.split(",") if n.strip())
    unknown = sorted((set(names) | set(redecide)) - set(strategies.STRATEGIES))
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}: choose from {', '.join(strategies.STRATEGIES)}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if min(args.heldout_seeds, args.repeat_decisions, args.top_up_seeds) < 0:
        raise ConfigError("--heldout-seeds, --repeat-decisions and --top-up-seeds must be 0 or more")
    if args.top_up_within < 1.0:
        raise ConfigError(f"--top-up-within must be at least 1, got {args.top_up_within:g}")
    budget = _parse_size(args.memory_budget) if args.memory_budget else None
    settings = Settings(
        seeds=args.seeds, memory_budget_bytes=budget, device=args.device,
        min_batch_size=args.min_batch_size, max_batch_size=args.max_batch_size,
        censor_factor=args.censor_factor, grid_cut_factor=args.grid_cut_factor,
        recommend_budget_seconds=args.recommend_budget_seconds,
        strategies=names, progress=not args.no_progress, storage_dir=args.storage_dir,
        threads=args.threads or None, timing_rounds=args.timing_rounds,
        lr_extensions=args.lr_extensions, redecide=redecide, heldout_seeds=args.heldout_seeds,
        repeat_decisions=args.repeat_decisions, top_up_seeds=args.top_up_seeds,
        top_up_within=args.top_up_within,
    )
    return args, settings


def _parse_size(text: str) -> int:
    from batchsage.units import parse_size

    return parse_size(text)


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()
    out = None
    try:
        args, settings = parse_args(argv)
        out = args.out
        if args.fresh:
            for path in (args.out, storage_path(args.out, settings.storage_dir)):
                path.unlink(missing_ok=True)
        document = run_groundtruth(args.task, args.out, settings, console)
    except BatchsageError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print(f"interrupted: progress is saved; re-run the same command to resume ({out})")
        return 130
    _print_result(document, console)
    return 0


def _print_result(document: dict[str, Any], console: Console) -> None:
    best = document["best"]
    console.print(f"best: B={best['batch_size']}, lr={best['lr']:.4g}, "
                  f"{best['seconds_to_target']:.2f} s to target")
    for name, result in document["strategies"].items():
        regret = result["regret"]
        shown = f"{regret:.2f}" if regret is not None else (
            f"≥{result['regret_at_least']:.2f}" if result["regret_at_least"] else "not reached")
        console.print(f"  {name:15s} B={result['batch_size']:<6d} lr={result['lr']:<10.4g} "
                      f"regret {shown:>7s}  decision cost {result['decision_cost']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
