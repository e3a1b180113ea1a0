"""``run_sweep``: train a grid of (B, lr, seed) trials to target on an Optuna storage.

Flow: build the ordered grid (or walk the doubling procedure), then loop: claim the next trial
from the storage, train it with the shared training loop and a :class:`CutHook`, store the
result; when nothing is left to claim but other processes still run trials of this sweep, wait
for them; finally collect one result per key and write ``sweep.json`` and the Pareto plot.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from batchsage.device import Device, is_out_of_memory, resolve_device
from batchsage.engine import TrainState, train
from batchsage.errors import BatchsageError, ConfigError
from batchsage.sweep._cut import CutHook, estimate_full_steps
from batchsage.sweep._grid import (
    DEFAULT_LR_MULTIPLIERS,
    DOUBLING_START,
    TrialKey,
    default_batch_sizes,
    grid_trials,
    nearest_first,
    rule_lr,
    seed_list,
)
from batchsage.sweep._result import (
    SweepResult,
    SweepTrial,
    best_config,
    saved_compute,
)
from batchsage.sweep._store import (
    FINISHED_STATES,
    Claim,
    SweepStore,
    display_url,
    result_of,
    storage_failures,
)
from batchsage.task import Task, load_task

Procedure = Literal["grid", "doubling"]
#: Wall seconds between looks at the storage while other processes finish their trials.
WAIT_POLL_SECONDS = 0.5
#: While a sweep runs, ``sweep.json`` is rewritten at most this often (and when it ends or is
#: interrupted); the storage, not the JSON, is what a rerun resumes from.
JSON_EVERY_SECONDS = 10.0


class SweepError(BatchsageError):
    """A trial failed for a reason other than the batch not fitting in memory."""


def run_sweep(
    task: Task | str,
    *,
    batch_sizes: Sequence[int] | None = None,
    lrs: Sequence[float] | None = None,
    lr_multipliers: Sequence[float] = DEFAULT_LR_MULTIPLIERS,
    seeds: int | Sequence[int] = 1,
    storage: str | None = None,
    study_name: str | None = None,
    procedure: Procedure = "grid",
    prune: bool = True,
    censor_factor: float | None = None,
    first: Sequence[tuple[int, float]] = (),
    anchor: tuple[int, float] | None = None,
    device: str | Device = "auto",
    max_batch_size: int | None = None,
    progress: bool = True,
    out_dir: Path | None = None,
    heartbeat_seconds: int = 5,
    console: Console | None = None,
) -> SweepResult:
    """Train every (B, lr, seed) to the task's target; return the fastest and what was saved.

    Args:
        batch_sizes: default powers of two from 16 to the memory ceiling.
        lrs / lr_multipliers: the same lrs for every B, or the task's lr rule at each B times
            each multiplier (default ½, 1, 2).
        seeds: how many seeds (from the task's seed on), or the seeds themselves.
        storage / study_name: an Optuna storage URL (``sqlite:///sweep.db``) and study; rerunning
            resumes, several processes share the work. None: in memory.
        procedure: ``grid``, or ``doubling`` (the seeds' practice, as a baseline: start at 32,
            double while time-to-target improves; never cut).
        prune: cut a trial once it has trained longer than the best time-to-target of its
            seed, and at successive-halving rungs where even its fastest pace cannot win.
        censor_factor: with ``prune=False``, cut a trial past this × the best (state censored).
        first: (B, lr) pairs to run first, e.g. the recommendation.
        anchor: (B0, lr0) the lr rule scales from (default: the task's base batch and lr).
        max_batch_size: ceiling of the default grid and of the doubling.
        out_dir: write ``sweep.json`` (every ten seconds, at the end, on interrupt) and ``pareto.png``.
        heartbeat_seconds: Optuna heartbeat interval; a trial silent for 4× this is rerun.
    """
    started = time.perf_counter()
    loaded = load_task(task)
    _check_options(procedure, censor_factor, heartbeat_seconds)
    dev = resolve_device(device)
    name = study_name or f"batchsage-{loaded.name}-{procedure}"
    # A database error anywhere below (server down, connection lost) is one StorageError line.
    with storage_failures(storage):
        store = SweepStore(storage, name, heartbeat_seconds=heartbeat_seconds)
        store.check_identity(_identity(loaded))
        ceiling: dict[str, Any] = {}
        if batch_sizes is None or procedure == "doubling":
            ceiling = _ceiling(loaded, dev, max_batch_size)
        sweeper = _Sweeper(loaded, store, dev, prune=prune and procedure == "grid",
                           censor_factor=censor_factor if procedure == "grid" else None,
                           view=_View(console, progress), out_dir=out_dir, started=started,
                           procedure=procedure, ceiling=ceiling)
        try:
            with sweeper.view:
                if procedure == "doubling":
                    start = DOUBLING_START if loaded.num_train_samples >= DOUBLING_START else min(
                        loaded.base_batch_size, loaded.num_train_samples)
                    keys, doubling = sweeper.run_doubling(start, ceiling["max_batch_size"],
                                                          seed_list(loaded, seeds))
                else:
                    sizes = list(batch_sizes) if batch_sizes is not None else default_batch_sizes(
                        ceiling["max_batch_size"])
                    keys = grid_trials(loaded, sizes, lrs=lrs, lr_multipliers=lr_multipliers, seeds=seeds,
                                       first=first, anchor=anchor)
                    doubling = None
                    first_configs = {(int(b), float(lr)) for b, lr in first}
                    pinned = sum(key.config in first_configs for key in keys)  # they lead the list
                    sweeper.run_keys(keys, reorder=sweeper.nearest_first_order(pinned, anchor))
        except BaseException:  # Ctrl-C or a failed trial: leave sweep.json with what is finished
            with contextlib.suppress(Exception):
                sweeper.write(sweeper.result(sweeper.all_keys, None), plot=False)
            raise
        result = sweeper.result(keys, doubling)
        sweeper.write(result, plot=True)
        return result


def _check_options(procedure: str, censor_factor: float | None, heartbeat_seconds: int) -> None:
    if procedure not in ("grid", "doubling"):
        raise ConfigError(f"procedure must be 'grid' or 'doubling', got {procedure!r}")
    if censor_factor is not None and (not math.isfinite(censor_factor) or censor_factor < 1.0):
        raise ConfigError(f"censor_factor must be a number ≥ 1, got {censor_factor!r}")
    if (isinstance(heartbeat_seconds, bool) or not isinstance(heartbeat_seconds, int)
            or heartbeat_seconds <= 0):
        raise ConfigError(f"heartbeat_seconds must be a positive integer, got {heartbeat_seconds!r}")


def _identity(task: Task) -> dict[str, Any]:
    return {"task": task.name, "target": task.target, "higher_is_better": task.higher_is_better,
            "max_samples": task.max_samples, "metric": task.metric_name}


def _ceiling(task: Task, device: Device, max_batch_size: int | None) -> dict[str, Any]:
    """The largest batch the grid or the doubling may reach, and where that number came from."""
    data = task.num_train_samples
    if max_batch_size is not None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size <= 0:
            raise ConfigError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        return {"max_batch_size": min(max_batch_size, data), "source": "given"}
    try:
        from batchsage.probe.memory import probe_memory
    except ImportError:  # the memory probe is optional here: the data set bounds B anyway
        return {"max_batch_size": data, "source": "training set size"}
    memory = probe_memory(task, device=device)
    return {"max_batch_size": min(int(memory.max_batch_size), data), "source": "memory probe"}


@dataclass
class DoublingStep:
    batch_size: int
    improved: bool
    score: tuple[str, float]


def doubling_procedure(
    run_batch: Callable[[int], Sequence[SweepTrial]],
    *,
    start: int,
    ceiling: int,
    higher_is_better: bool,
) -> tuple[list[DoublingStep], int | None]:
    """The seeds' procedure: train at ``start``, double while it improves, keep the best.

    ``run_batch(B)`` trains B (one trial per seed) and returns the trials. B improves on the
    previous one when its median time-to-target is lower; a B that reaches the target beats one
    that does not; between two that do not, the better median final metric wins. The walk stops
    at the first B that does not improve, or when doubling would pass ``ceiling``. Returns the
    steps and the best B (None if nothing ran).
    """
    steps: list[DoublingStep] = []
    best: tuple[int, tuple[str, float]] | None = None
    batch_size = start
    while batch_size <= ceiling:
        score = batch_score(run_batch(batch_size), higher_is_better)
        improved = best is None or _better(score, best[1])
        steps.append(DoublingStep(batch_size, improved, score))
        if not improved:
            break
        best = (batch_size, score)
        batch_size *= 2
    return steps, None if best is None else best[0]


def batch_score(trials: Sequence[SweepTrial], higher_is_better: bool) -> tuple[str, float]:
    """("time", median seconds to target) if most seeds reached it, else ("metric", oriented loss)."""
    times = [t.seconds_to_target if t.reached_target and t.seconds_to_target is not None else math.inf
             for t in trials]
    median_time = statistics.median(times) if times else math.inf
    if math.isfinite(median_time):
        return "time", float(median_time)
    metrics = [t.final_metric if math.isfinite(t.final_metric) else math.nan for t in trials]
    finite = [m for m in metrics if math.isfinite(m)]
    if not finite:
        return "metric", math.inf
    median_metric = statistics.median(finite)
    return "metric", -median_metric if higher_is_better else median_metric


def _better(new: tuple[str, float], old: tuple[str, float]) -> bool:
    if new[0] != old[0]:
        return new[0] == "time"
    return new[1] < old[1]


class _Sweeper:
    """Runs keys on the store, one claimed trial at a time, and assembles the result."""

    def __init__(self, task: Task, store: SweepStore, device: Device, *, prune: bool,
                 censor_factor: float | None, view: _View, out_dir: Path | None, started: float,
                 procedure: str, ceiling: dict[str, Any]) -> None:
        self.task = task
        self.store = store
        self.device = device
        self.prune = prune
        self.censor_factor = censor_factor
        self.view = view
        self.out_dir = out_dir
        self.started = started
        self.procedure = procedure
        self.ceiling = ceiling
        self.all_keys: list[TrialKey] = []
        self.written_at = time.perf_counter()

    def run_keys(self, keys: Sequence[TrialKey],
                 reorder: Callable[[Sequence[TrialKey]], list[TrialKey]] | None = None) -> None:
        """Until every key has a finished trial: claim and run one, or wait for other processes.

        ``reorder`` re-ranks the keys before each claim (the grid walks towards its best)."""
        # Keys of earlier calls (the doubling's smaller B) are finished: calls return only then.
        done_before = len([key for key in self.all_keys if key not in keys])
        self.all_keys += [key for key in keys if key not in self.all_keys]
        self.view.set_total(len(self.all_keys))
        while True:
            claim, running_elsewhere, finished = self.store.claim(reorder(keys) if reorder else keys)
            self.view.set_done(done_before + finished)
            if claim is not None:
                self._run_trial(claim)
                if time.perf_counter() - self.written_at >= JSON_EVERY_SECONDS:
                    self.write(self.result(self.all_keys, None), plot=False)
                continue
            if running_elsewhere == 0:
                return
            self.view.waiting(running_elsewhere)
            time.sleep(WAIT_POLL_SECONDS)

    def nearest_first_order(self, pinned: int, anchor: tuple[int, float] | None
                            ) -> Callable[[Sequence[TrialKey]], list[TrialKey]]:
        @functools.cache
        def multiplier(batch_size: int, lr: float) -> float:
            return lr / rule_lr(self.task, batch_size, anchor)

        def reorder(keys: Sequence[TrialKey]) -> list[TrialKey]:
            return nearest_first(keys, pinned=pinned, best=self.store.best_by_seed(), multiplier=multiplier)

        return reorder

    def run_doubling(self, start: int, ceiling: int,
                     seeds: list[int]) -> tuple[list[TrialKey], dict[str, Any]]:
        def run_batch(batch_size: int) -> list[SweepTrial]:
            lr = rule_lr(self.task, batch_size)
            keys = [TrialKey(batch_size, lr, seed) for seed in seeds]
            self.run_keys(keys)
            return self.collect(keys)

        steps, best = doubling_procedure(run_batch, start=start, ceiling=ceiling,
                                         higher_is_better=self.task.higher_is_better)
        keys = list(self.all_keys)
        summary = {
            "start": start,
            "ceiling": ceiling,
            "steps": [{"batch_size": s.batch_size, "improved": s.improved, "score_kind": s.score[0],
                       "score": s.score[1]} for s in steps],
            "best_batch_size": best,
        }
        return keys, summary

    def _run_trial(self, claim: Claim) -> None:
        key = claim.key
        hook = CutHook(lambda: self.store.best_seconds(key.seed), target=self.task.target,
                       higher_is_better=self.task.higher_is_better, prune=self.prune,
                       censor_factor=self.censor_factor, on_eval=self.view.trial_eval)
        self.view.trial_started(key, hook)
        wall_start = time.perf_counter()
        try:
            with self.store.heartbeat(claim):
                result = train(self.task, key.batch_size, key.lr, seed=key.seed, device=self.device,
                               hooks=[hook])
        except Exception as exc:
            if is_out_of_memory(exc):
                self.device.empty_cache()
                record = _out_of_memory_record(key, time.perf_counter() - wall_start)
                self.store.finish(claim, self._stamp(record), TrialState.COMPLETE, math.inf)
                return
            self.store.abandon(claim, f"{type(exc).__name__}: {exc}")
            raise SweepError(f"trial {key.label()} failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:  # Ctrl-C: leave the storage consistent, the key is rerun next time
            self.store.abandon(claim, "interrupted")
            raise
        budget_steps = math.ceil(self.task.max_samples / key.batch_size)
        cut = hook.state_label != "complete"
        full_steps = (
            estimate_full_steps([(p.step, p.metric) for p in result.history], result.steps, budget_steps,
                                self.task.target, self.task.higher_is_better)
            if cut else result.steps
        )
        record = {
            "batch_size": key.batch_size, "lr": key.lr, "seed": key.seed, "state": hook.state_label,
            "reached_target": result.reached_target, "seconds_to_target": result.seconds_to_target,
            "steps_to_target": result.steps_to_target, "final_metric": result.final_metric,
            "diverged": result.diverged, "step_seconds_median": result.step_seconds_median,
            "train_seconds": result.train_seconds, "steps": result.steps, "stop_reason": result.stop_reason,
            # What it trained, plus the steps it was spared at its median step time.
            "estimated_full_seconds": result.train_seconds + (
                (full_steps - result.steps) * result.step_seconds_median if full_steps > result.steps else 0.0
            ),
            "out_of_memory": False, "wall_seconds": time.perf_counter() - wall_start,
        }
        if cut:
            state, value = TrialState.PRUNED, None
        else:
            state = TrialState.COMPLETE
            value = result.seconds_to_target if result.reached_target else math.inf
        if not self.store.finish(claim, self._stamp(record), state, value):
            self.view.note(f"{key.label()}: declared stale by another process meanwhile; its rerun counts")

    def _stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "worker": self.store.worker.as_dict(), "run_id": self.store.run_id}

    def collect(self, keys: Sequence[TrialKey]) -> list[SweepTrial]:
        """One SweepTrial per key: its finished trial, or its state if it has none yet."""
        canonical = self.store.canonical()
        trials = []
        for key in keys:
            frozen = canonical.get(key.id)
            record = result_of(frozen) if frozen is not None and frozen.state in FINISHED_STATES else None
            if record is None:
                state = frozen.state.name.lower() if frozen is not None else "missing"
                trials.append(SweepTrial(key.batch_size, key.lr, key.seed, state,
                                         number=frozen.number if frozen else None))
                continue
            trial = SweepTrial.from_dict(record)
            trial.number = frozen.number  # type: ignore[union-attr]
            trial.ran_here = record.get("run_id") == self.store.run_id
            trial.final_metric = math.nan if trial.final_metric is None else trial.final_metric
            trials.append(trial)
        return trials

    def result(self, keys: Sequence[TrialKey], doubling: dict[str, Any] | None) -> SweepResult:
        trials = self.collect(keys)
        saved, spent, full = saved_compute(trials)
        best = best_config(trials)
        if doubling is not None:
            best = _doubling_best(trials, doubling["best_batch_size"], self.task.higher_is_better)
        return SweepResult(
            task=self.task.name, procedure=self.procedure, trials=trials, best=best,
            saved_fraction=saved, spent_train_seconds=spent, estimated_full_train_seconds=full,
            wall_seconds=time.perf_counter() - self.started, study=self.store.study_name,
            storage=display_url(self.store.url), metric_name=self.task.metric_name,
            target=self.task.target, higher_is_better=self.task.higher_is_better,
            ceiling=self.ceiling, doubling=doubling,
        )

    def write(self, result: SweepResult, *, plot: bool) -> None:
        if self.out_dir is None:
            return
        from batchsage.jsonio import write_json

        self.written_at = time.perf_counter()
        document = result.to_dict()
        write_json(Path(self.out_dir) / "sweep.json", document)
        if plot and any(trial.finished for trial in result.trials):
            from batchsage.report.pareto import plot_pareto

            plot_pareto(document, Path(self.out_dir) / "pareto.png")


def _doubling_best(trials: Sequence[SweepTrial], batch_size: int | None,
                   higher_is_better: bool) -> dict[str, Any] | None:
    """The doubling's pick: the B it kept, with its median time to target (None if not reached)."""
    group = [t for t in trials if t.batch_size == batch_size and t.finished]
    if batch_size is None or not group:
        return None
    kind, score = batch_score(group, higher_is_better)
    return {"batch_size": batch_size, "lr": group[0].lr,
            "seconds_to_target": score if kind == "time" else None, "seeds": len(group)}


def _out_of_memory_record(key: TrialKey, wall_seconds: float) -> dict[str, Any]:
    return {
        "batch_size": key.batch_size, "lr": key.lr, "seed": key.seed, "state": "complete",
        "reached_target": False, "seconds_to_target": None, "steps_to_target": None,
        "final_metric": math.nan, "diverged": False, "step_seconds_median": math.nan,
        "train_seconds": 0.0, "steps": 0, "stop_reason": "out of memory",
        "estimated_full_seconds": 0.0, "out_of_memory": True, "wall_seconds": wall_seconds,
    }


class _View:
    """Rich progress: trials finished out of the grid, and the running trial's latest metric."""

    def __init__(self, console: Console | None, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console or Console(stderr=True), disable=not enabled,
        )
        self.task_id = self.progress.add_task("sweep", total=None)
        self._label = ""
        self._hook: CutHook | None = None

    def __enter__(self) -> _View:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def set_total(self, total: int) -> None:
        self.progress.update(self.task_id, total=total)

    def set_done(self, done: int) -> None:
        self.progress.update(self.task_id, completed=done)

    def trial_started(self, key: TrialKey, hook: CutHook) -> None:
        self._label, self._hook = key.label(), hook
        self.progress.update(self.task_id, description=f"{self._label}: starting")

    def trial_eval(self, state: TrainState, metric: float) -> None:
        best = self._hook.best() if self._hook is not None else None
        bar = f", best {best:.3g} s" if best is not None else ""
        self.progress.update(
            self.task_id,
            description=f"{self._label}: {state.train_seconds:.3g} s, metric {metric:.4g}{bar}",
        )

    def waiting(self, running: int) -> None:
        self.progress.update(self.task_id, description=f"waiting for {running} trial(s) in other processes")

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)

