"""Typical time to target per batch size for every built-in task: ``docs/tasks.md``.

    python benchmarks/task_times.py --render
    python benchmarks/task_times.py --task charlm --batch-sizes 32,128,512 --seeds 1 --max-seconds 400

``--render`` reads every complete ground truth ``benchmarks/results/<task>.json`` (groundtruth.py)
and, for a task without one, ``benchmarks/results/task_times_<task>.json`` (written by this script),
and writes ``docs/tasks.md``: per task its sizes, metric and target, and per batch size the lr with
the smallest median time to target over seeds. It prints a compact table for the README. Re-run it
when more ground truths are complete.

``--task`` measures a task that has no ground truth: one run per batch size and seed of the shared
training loop at the task's own lr rule (``scaled_lr`` from its base batch and lr; not tuned),
saved after every run (resumable: saved runs are skipped; Ctrl-C keeps what is done).

Times: a ground truth charges steps to target × t(B), timed interleaved for every B (robust to
load drift); a task_times run reports its own training clock (validation excluded), so it carries
the machine load of its moment (the load average is saved with it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from batchsage.engine import TrainingHook, TrainResult, TrainState, train
from batchsage.jsonio import write_json
from batchsage.plan import scaled_lr
from batchsage.task import Task, TaskError, load_task
from batchsage.tasks import BUILTIN_NAMES, GROUPS
from groundtruth import load_average, machine_info
from gt_regret import median_time, same_lr

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "tasks.md"
#: The issue's calibration goal for a well-chosen batch size on this 2-core CPU.
GOAL_SECONDS = (10.0, 120.0)
POOR_BATCH = 32

# --------------------------------------------------------------------------------------------------
# Measuring a task without a ground truth
# --------------------------------------------------------------------------------------------------


def times_path(task_name: str, results: Path = RESULTS) -> Path:
    return results / f"task_times_{task_name}.json"


def load_or_new(path: Path, task: Task) -> dict[str, Any]:
    """The saved document at ``path`` (to resume), or a fresh one."""
    if path.is_file():
        document = json.loads(path.read_text())
        if isinstance(document, dict) and document.get("task") == task.name:
            document.setdefault("runs", [])
            return document
    return {"task": task.name, "status": "partial", "runs": [],
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def needs_run(runs: Sequence[dict[str, Any]], batch_size: int, lr: float, seed: int,
              max_seconds: float | None) -> bool:
    """False when a saved run settles this (B, lr, seed): it reached the target, stopped for another
    reason than the time limit (diverged, sample budget), or was given at least as much time (a run
    cut at a shorter time limit is done again with the longer one)."""
    for run in runs:
        if run["batch_size"] != batch_size or run["seed"] != seed or not same_lr(run["lr"], lr):
            continue
        if not run.get("censored") or run.get("max_seconds") is None:
            return False
        if max_seconds is not None and run["max_seconds"] >= max_seconds:
            return False
    return True


class _ProgressHook(TrainingHook):
    """Shows the run's training seconds and last validation metric on the progress line."""

    def __init__(self, progress: Progress, row: Any, label: str) -> None:
        self.progress, self.row, self.label = progress, row, label

    def on_eval(self, state: TrainState, metric: float) -> None:
        self.progress.update(self.row, description=(
            f"{self.label}: {state.train_seconds:6.1f} s, step {state.step}, metric {metric:.4f}"))


def run_record(result: TrainResult, max_seconds: float | None,
               load_start: list[float] | None) -> dict[str, Any]:
    """What is saved of one run (the history is left out: the time to target is what matters)."""
    record = result.to_dict()
    record.update({"max_seconds": max_seconds, "censored": result.stop_reason == "time budget",
                   "load_average_start": load_start, "load_average_end": load_average()})
    return record


def measure(task_name: str, batch_sizes: Sequence[int], seeds: int, max_seconds: float | None,
            out: Path, console: Console) -> dict[str, Any]:
    """Train every (B, seed) not yet saved, saving after each run; on Ctrl-C the KeyboardInterrupt
    passes through with every finished run already saved (the interrupted one is lost)."""
    # Intra-op threads that wait for each other turn every scheduling delay on the shared cores into
    # a stalled step (groundtruth.py measured it); every run here uses one thread.
    torch.set_num_threads(1)
    task = load_task(task_name)
    document = load_or_new(out, task)
    rule = task.resolved_lr_scaling()
    document.update({"status": "partial", "machine": machine_info("cpu"), "protocol": {
        "lr_rule": rule, "base_batch_size": task.base_batch_size, "base_lr": task.base_lr,
        "target": task.target, "metric": task.metric_name, "max_samples": task.max_samples,
        "torch_threads": 1, "time_to_target": "the run's own training seconds (validation excluded)",
        "lr": "scaled_lr(B) from the task's base batch and lr with its own rule; not tuned"}})
    plan = [(b, scaled_lr(b, task.base_batch_size, task.base_lr, rule), task.seed + i)
            for b in batch_sizes for i in range(seeds)]
    todo = [p for p in plan if needs_run(document["runs"], *p, max_seconds)]
    console.print(f"[bold]{task.name}[/]: {len(plan) - len(todo)} of {len(plan)} runs saved, "
                  f"{len(todo)} to do (time limit {max_seconds} s each)")
    with Progress(console=console, transient=False) as progress:
        overall = progress.add_task("runs", total=len(plan), completed=len(plan) - len(todo))
        for batch_size, lr, seed in todo:
            _one_run(task, batch_size, lr, seed, max_seconds, document, out, progress)
            progress.advance(overall)
    document["status"] = "complete"
    write_json(out, document)
    return document


def _one_run(task: Task, batch_size: int, lr: float, seed: int, max_seconds: float | None,
             document: dict[str, Any], out: Path, progress: Progress) -> None:
    label = f"B={batch_size} lr={lr:.3g} seed={seed}"
    row = progress.add_task(label, total=None)
    load_start = load_average()
    hook = _ProgressHook(progress, row, label)
    result = train(task, batch_size, lr, seed=seed, max_seconds=max_seconds, hooks=[hook])
    record = run_record(result, max_seconds, load_start)
    document["runs"] = [r for r in document["runs"] if not (
        r["batch_size"] == batch_size and r["seed"] == seed and same_lr(r["lr"], lr))] + [record]
    write_json(out, document)
    shown = f"{result.seconds_to_target:.1f} s" if result.reached_target else result.stop_reason
    progress.update(row, description=f"{label}: {shown} ({result.steps_to_target or result.steps} "
                                     f"steps, final {task.metric_name} {result.final_metric:.4f})")


# --------------------------------------------------------------------------------------------------
# From result documents to per-batch-size times (pure: no torch, no files)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training run: its time to target, or for a run cut before it, the time it needs at least."""

    batch_size: int
    lr: float
    seed: int
    seconds: float | None
    at_least: float | None = None
    diverged: bool = False


@dataclass(frozen=True)
class Time:
    """A median time to target over seeds; when it is infinite, ``at_least`` bounds it from below
    (infinite too when the runs diverged or used up the sample budget)."""

    seconds: float
    at_least: float
    diverged: bool = False  # not reached because every run diverged

    @property
    def reached(self) -> bool:
        return math.isfinite(self.seconds)


@dataclass(frozen=True)
class BatchTime:
    """The best measured lr at one batch size; ``lr`` is None when no lr reached the target there.
    ``maybe_faster``: an lr cut before the target has a lower bound below this time, so it might
    have been faster at this B (the ground truth re-checks only the cut runs that could win overall)."""

    batch_size: int
    lr: float | None
    time: Time
    maybe_faster: bool = False


def runs_from_ground_truth(document: dict[str, Any]) -> list[Run]:
    """The grid rows of a ground truth: time = steps to target × t(B); a run cut before the target
    needs at least the steps it ran × t(B)."""
    runs = []
    for row in document["grid"]:
        seconds = row["seconds_to_target"] if row["reached_target"] else None
        at_least = None
        if row.get("censored") and row.get("steps_run") and row.get("step_seconds"):
            at_least = row["steps_run"] * row["step_seconds"]
        runs.append(Run(row["batch_size"], row["lr"], row["seed"], seconds, at_least,
                        bool(row.get("diverged"))))
    return runs


def runs_from_task_times(document: dict[str, Any]) -> list[Run]:
    """The runs of a task_times file: their own training clock; a run stopped by the time limit
    needs more than the seconds it trained."""
    runs = []
    for row in document["runs"]:
        seconds = row["seconds_to_target"] if row["reached_target"] else None
        at_least = row["train_seconds"] if row.get("censored") else None
        runs.append(Run(row["batch_size"], row["lr"], row["seed"], seconds, at_least,
                        bool(row.get("diverged"))))
    return runs


def median_over_seeds(runs: Sequence[Run]) -> Time:
    """Median over seeds, an unreached seed counting as infinitely slow (as the ground truth does).
    The median of the per-seed lower bounds bounds the median from below (the median is monotone)."""
    seconds = median_time([r.seconds if r.seconds is not None else math.inf for r in runs])
    bounds = [r.seconds if r.seconds is not None else (r.at_least if r.at_least is not None else math.inf)
              for r in runs]
    if math.isfinite(seconds):
        return Time(seconds, seconds)
    return Time(seconds, median_time(bounds), all(r.diverged for r in runs))


def config_time(runs: Sequence[Run], batch_size: int, lr: float) -> Time | None:
    """The median time of one (B, lr) configuration; None when it was not run."""
    chosen = [r for r in runs if r.batch_size == batch_size and same_lr(r.lr, lr)]
    return median_over_seeds(chosen) if chosen else None


def batch_times(runs: Sequence[Run]) -> list[BatchTime]:
    """Per batch size, the lr with the smallest median time to target over seeds."""
    by_config: dict[tuple[int, float], list[Run]] = defaultdict(list)
    for run in runs:
        by_config[(run.batch_size, float(f"{run.lr:.9g}"))].append(run)
    by_batch: dict[int, list[tuple[float, Time]]] = defaultdict(list)
    for (batch_size, lr), group in by_config.items():
        by_batch[batch_size].append((lr, median_over_seeds(group)))
    return [_best_at(batch_size, by_batch[batch_size]) for batch_size in sorted(by_batch)]


def _best_at(batch_size: int, configs: list[tuple[float, Time]]) -> BatchTime:
    reached = [(lr, time) for lr, time in configs if time.reached]
    if not reached:
        # No lr reached: the fastest lr at this B needs at least the smallest of their bounds.
        return BatchTime(batch_size, None, Time(math.inf, min(t.at_least for _, t in configs),
                                                all(t.diverged for _, t in configs)))
    lr, time = min(reached, key=lambda pair: pair[1].seconds)
    maybe = any(not t.reached and t.at_least < time.seconds for _, t in configs)
    return BatchTime(batch_size, lr, time, maybe)


def best_time(rows: Sequence[BatchTime]) -> BatchTime | None:
    """The batch size with the smallest finite median time (the smaller B on a tie)."""
    reached = [row for row in rows if row.time.reached]
    return min(reached, key=lambda row: (row.time.seconds, row.batch_size)) if reached else None


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    train_size: int
    val_size: int
    metric: str
    target: float
    higher_is_better: bool
    base_batch_size: int
    base_lr: float
    max_samples: int
    lr_rule: str


@dataclass(frozen=True)
class Source:
    """Where a task's times come from, said in one line."""

    kind: str  # "ground truth" or "task_times"
    path: str
    date: str
    seeds: int
    note: str


def format_time(time: Time | None) -> str:
    if time is None:
        return "not measured"
    if time.reached:
        return f"{time.seconds:.1f} s"
    if math.isfinite(time.at_least):
        return f"≥ {time.at_least:.1f} s (cut before the target)"
    return "diverged" if time.diverged else "not reached within the budget"


def format_ratio(time: Time | None, best: float) -> str:
    if time is None:
        return "–"
    if time.reached:
        return f"{time.seconds / best:.2f}×"
    return f"≥ {time.at_least / best:.1f}×" if math.isfinite(time.at_least) else "–"


def target_text(info: TaskInfo) -> str:
    return f"{info.metric} {'≥' if info.higher_is_better else '≤'} {info.target:g}"


def batch_table(rows: Sequence[BatchTime], best: float | None) -> list[str]:
    lines = ["| B | best lr measured | median seconds to target | vs the best |", "|---:|---:|---:|---:|"]
    for row in rows:
        lr = f"{row.lr:.4g}" if row.lr is not None else "– (none reached)"
        mark = " †" if row.maybe_faster else ""
        ratio = format_ratio(row.time, best) if best else "–"
        lines.append(f"| {row.batch_size} | {lr} | {format_time(row.time)}{mark} | {ratio} |")
    if any(row.maybe_faster for row in rows):
        lines += ["", "† an lr whose runs were cut before the target at this B might have been faster "
                      "(its lower bound is below this time)."]
    return lines


def summary_sentence(rows: Sequence[BatchTime], poor: Time | None, info: TaskInfo) -> str:
    best = best_time(rows)
    if best is None:
        return "No batch size reached the target in these runs."
    assert best.lr is not None
    text = f"Best measured: B={best.batch_size} at lr {best.lr:.4g}, {best.time.seconds:.1f} s to target. "
    if best.batch_size == min(row.batch_size for row in rows):
        text += "It is the smallest B measured, so a smaller B might be faster still. "
    poor_name = f"B={POOR_BATCH} at the base lr {info.base_lr:g} (the poor choice)"
    if poor is None:
        return text + f"{poor_name} was not measured."
    if poor.reached and best.batch_size == POOR_BATCH and math.isclose(poor.seconds, best.time.seconds):
        return text + f"{poor_name} is the best measured choice here: this task does not show it slower."
    if poor.reached:
        return text + f"{poor_name}: {poor.seconds:.1f} s, {poor.seconds / best.time.seconds:.2f}× as long."
    if math.isfinite(poor.at_least):
        return text + (f"{poor_name} was cut before the target: at least {poor.at_least:.1f} s, "
                       f"≥ {poor.at_least / best.time.seconds:.1f}× as long.")
    return text + f"{poor_name} did not reach the target within the budget."


def goal_sentence(rows: Sequence[BatchTime]) -> str:
    best = best_time(rows)
    low, high = GOAL_SECONDS
    aim = f"Calibration aim (a well-chosen B reaches the target in roughly {low:g}–{high:g} s)"
    if best is None:
        return f"{aim}: not measured."
    seconds = best.time.seconds
    if low <= seconds <= high:
        verdict = "met"
    elif seconds < low:
        verdict = f"{seconds:.1f} s is {100 * (1 - seconds / low):.0f} % under {low:g} s"
    else:
        verdict = f"{seconds:.1f} s is {100 * (seconds / high - 1):.0f} % over {high:g} s"
    return f"{aim}: {verdict}."


def task_section(info: TaskInfo, rows: Sequence[BatchTime] | None, poor: Time | None,
                 source: Source | None, pending: str = "") -> list[str]:
    lines = [f"## `{info.name}`", "", f"{info.description}.", "",
             f"- data: {info.train_size:,} training / {info.val_size:,} validation samples",
             f"- target: {target_text(info)}; budget {info.max_samples:,} samples",
             f"- base batch {info.base_batch_size}, base lr {info.base_lr:g}, lr rule {info.lr_rule}", ""]
    if rows is None or source is None:
        return [*lines, "Not measured yet: no complete ground truth and no task_times file. "
                f"`python benchmarks/task_times.py --task {info.name}` measures it.{pending}", ""]
    best = best_time(rows)
    lines += batch_table(rows, best.time.seconds if best else None)
    lines += ["", summary_sentence(rows, poor, info) + " " + goal_sentence(rows), "",
              f"Source: `{source.path}` ({source.kind}, {source.date}, {source.seeds} "
              f"seed{'' if source.seeds == 1 else 's'}). "
              f"{source.note}", ""]
    return lines


def compact_row(info: TaskInfo, rows: Sequence[BatchTime] | None, poor: Time | None,
                source: Source | None) -> str:
    best = best_time(rows) if rows else None
    best_cell = f"B={best.batch_size}, lr {best.lr:.4g}" if best and best.lr is not None else "–"
    seconds = f"{best.time.seconds:.1f} s" if best else "–"
    poor_cell = format_time(poor) if rows else "–"
    where = f"`{Path(source.path).name}` ({source.kind}, {source.date})" if source else "not measured yet"
    return f"| `{info.name}` | {target_text(info)} | {best_cell} | {seconds} | {poor_cell} | {where} |"


COMPACT_HEADER = ("| task | target | best B, lr | seconds at best | seconds at B=32, base lr | source |\n"
                  "|---|---|---|---:|---:|---|")


# --------------------------------------------------------------------------------------------------
# Reading the results and writing docs/tasks.md
# --------------------------------------------------------------------------------------------------


def task_info(task: Task) -> TaskInfo:
    return TaskInfo(task.name, task.description, task.num_train_samples, task.num_val_samples,
                    task.metric_name, task.target, task.higher_is_better, task.base_batch_size,
                    task.base_lr, task.max_samples, task.resolved_lr_scaling())


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _machine_text(document: dict[str, Any]) -> str:
    machine = document.get("machine") or {}
    load = document.get("load_average") or {}
    loads = [value[0] for value in load.values() if isinstance(value, list) and value]
    if "runs" in document:  # task_times: the load of each run
        loads = [run[key][0] for run in document["runs"]
                 for key in ("load_average_start", "load_average_end") if run.get(key)]
    shown = f"; 1-min load average {min(loads):.1f}–{max(loads):.1f}" if loads else ""
    arch = "x86-64 " if "x86_64" in str(machine.get("platform", "")) else ""
    gpu = machine.get("gpu") or "no GPU"
    threads = machine.get("torch_threads", "?")
    return (f"{machine.get('cpu_count', '?')} shared {arch}CPU cores ({machine.get('processor', '?')}), "
            f"{gpu}, torch {machine.get('torch', '?')}, {threads} torch "
            f"thread{'' if threads == 1 else 's'}{shown}")


def load_source(name: str, results: Path) -> tuple[list[Run], Source, dict[str, Any]] | None:
    """A complete ground truth if there is one, else the task_times file, else None."""
    path = results / f"{name}.json"
    document = _read(path)
    if document and document.get("status") == "complete" and document.get("grid"):
        protocol = document.get("protocol", {})
        top_up = len(protocol.get("top_up_seeds") or [])
        topped = (f"; every configuration within {protocol.get('top_up_within', 1.3):g}× of the best on "
                  f"{top_up} more seeds") if top_up else ""
        note = (f"Grid: every power-of-two B × lr = the scaled lr × "
                f"{{{', '.join(f'{m:g}' for m in protocol.get('lr_multipliers', []))}}} (widened at the "
                f"edges){topped}; time = steps to target × t(B), timed interleaved for every B; validation "
                f"excluded. Measured on {_machine_text(document)}.")
        seeds = len(protocol.get("seeds", [])) or len({row["seed"] for row in document["grid"]})
        return runs_from_ground_truth(document), Source(
            "ground truth", _relative(path), str(document.get("date", "?"))[:10], seeds, note), document
    path = times_path(name, results)
    document = _read(path)
    if document and document.get("runs"):
        partial = "" if document.get("status") == "complete" else " Partial: not every run is done."
        limits = sorted({run.get("max_seconds") for run in document["runs"] if run.get("max_seconds")})
        limit = f", time limit {', '.join(f'{value:g}' for value in limits)} s per run" if limits else ""
        note = ("One run per B at the task's own lr rule (scaled from the base batch and lr; not tuned, "
                f"so the \"best lr measured\" is the only lr measured){limit}; time = the run's own "
                "training clock, validation excluded, so it carries the load of its moment. Measured on "
                f"{_machine_text(document)}.{partial}")
        seeds = len({run["seed"] for run in document["runs"]})
        return runs_from_task_times(document), Source(
            "task_times", _relative(path), str(document.get("date", "?"))[:10], seeds, note), document
    return None


def pending_note(name: str, results: Path) -> str:
    """Says so when a ground truth for the task is under way (saved but not complete)."""
    path = results / f"{name}.json"
    document = _read(path)
    if document and document.get("status") != "complete" and "decisions" in document:
        started = str(document.get("date", "?"))[:10]
        return (f" Its ground truth `{_relative(path)}` is partial (started {started}): re-run "
                "`--render` when it is complete.")
    return ""


def poor_choice(runs: Sequence[Run], document: dict[str, Any], info: TaskInfo) -> Time | None:
    """B=32 at the base lr the results were measured with (the protocol's, else the task's)."""
    base_lr = document.get("protocol", {}).get("base_lr", info.base_lr)
    return config_time(runs, POOR_BATCH, base_lr)


DOC_HEADER = """# Built-in tasks: size, target and typical time to target

Each built-in task's size, target and typical time, with targets calibrated so that a well-chosen
batch size reaches the target in roughly 10–120 s on a 2-core CPU and a poor one is visibly
slower. This page is generated by `python benchmarks/task_times.py --render` from the
result files named in each section; re-run it when more ground truths are complete.

Per batch size B the table shows the learning rate with the smallest median time to target over
seeds and that median (a seed that did not reach the target counts as infinitely slow, as in the
ground truth). Where no lr reached the target at a B, "≥ x s" is what the fastest of them needs at
least (their runs were cut before the target, at a time limit or past a multiple of the best time
so far); "diverged" means every run there diverged, "not reached within the budget" that the runs
diverged or used up the task's sample budget. "vs the best" divides by the task's best time. Times
are training seconds; validation is excluded.
"""


def groups_section(groups: dict[str, tuple[str, ...]] = GROUPS) -> list[str]:
    """Which tasks batchsage is developed against and which it is only evaluated on."""
    def names(group: str) -> str:
        return ", ".join(f"`{name}`" for name in groups.get(group, ()))

    return ["## Development and evaluation tasks", "",
            f"batchsage's recommender and `fit` were developed and tuned against the development tasks: "
            f"{names('development')}. The evaluation tasks, {names('evaluation')}, are kinds the "
            "development set lacks: a transformer language model with a warmup, a net with BatchNorm "
            "(what it computes depends on the batch itself) and a regression with Adam whose best batch "
            "is large. They are only measured on, never tuned on: a change to batchsage is judged on the "
            "development tasks, and the evaluation tasks' ground truths then say how it does on problems "
            "it was not fitted to. The split is `batchsage.tasks.GROUPS`; `batchsage tasks` shows each "
            "task's group.", ""]


def render(results: Path = RESULTS, doc: Path = DOC, names: Sequence[str] = BUILTIN_NAMES) -> str:
    """Write ``doc`` and return the compact table for the README."""
    lines = [*DOC_HEADER.splitlines(), "", *groups_section()]
    compact = [COMPACT_HEADER]
    for name in names:
        try:
            info = task_info(load_task(name))
        except TaskError as exc:
            lines += [f"## `{name}`", "", f"Could not load the task: {exc}", ""]
            continue
        loaded = load_source(name, results)
        rows = poor = source = None
        if loaded is not None:
            runs, source, document = loaded
            rows, poor = batch_times(runs), poor_choice(runs, document, info)
        lines += task_section(info, rows, poor, source, pending_note(name, results))
        compact.append(compact_row(info, rows, poor, source))
    lines += ["## Summary", "", *compact, ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
    return "\n".join(compact)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true", help="write docs/tasks.md from the results")
    parser.add_argument("--task", help="measure this built-in task (no ground truth)")
    parser.add_argument("--batch-sizes", default="32,128,512", help="comma-separated, e.g. 32,128,512")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=400.0,
                        help="training-time limit per run (validation excluded)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    if not args.render and not args.task:
        parser.error("give --render or --task NAME")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.task:
        out = times_path(args.task, args.results)
        sizes = [int(part) for part in args.batch_sizes.split(",") if part.strip()]
        try:
            measure(args.task, sizes, args.seeds, args.max_seconds, out, console)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: the runs finished so far are saved in {out}")
            return 130
        console.print(f"saved {out}")
    if args.render:
        table = render(args.results, args.doc)
        console.print(f"wrote {args.doc}\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
