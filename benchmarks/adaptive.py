"""Adaptive batch size against the best fixed (B, lr): time to target, interleaved, several seeds.

    python benchmarks/adaptive.py --task fashion-mlp [--seeds 5] [--groundtruth results.json]

Protocol (docs/adaptive.md):

1. The best fixed (B, lr): the ``best`` entry of the ground-truth results file when there is one
   (benchmarks/groundtruth.py), else a small grid run here (powers of two from base/4 to base × 32,
   × the scaled lr × {½, 1, 2}, seed 0, each cut at ``--censor-factor`` × the best time so far,
   picked on the timed table of step 3).
2. Per seed, in an order rotated from seed to seed: the best fixed (B, lr); the adaptive schedule
   started at that same (B, lr); the adaptive schedule started at the task's base (B, lr), the
   point a user starts from when nothing has been measured. The controller uses the calibration of
   ``--calibration`` (default: batchsage's documented default) or, with ``--recommend``, that of
   ``batchsage.recommend`` (run once, its decision seconds reported).
3. Time to target, two ways: measured training seconds, and "timed" seconds, where every step
   counts the median time of its kind (batch size × micro-batches), timed afterwards in short bursts
   interleaved round-robin over all kinds, plus the controller's decision seconds. It is the ground
   truth's protocol (steps × interleaved t(B)) extended to schedules whose batch changes: on a
   shared 2-core machine single runs swing by ±50 % with the load, and a kind run only early or
   only late would otherwise carry that load. The headline uses the training thread's CPU clock
   (one torch thread: what the wall clock shows on an idle machine), because under load a long step
   is stretched by other jobs while a short one often is not; the wall-clock table is reported too.
   Instrumented steps (the noise monitor's micro-batches) are timed as such, so the monitor's cost
   is counted.
4. Median and spread (min–max) over seeds; ratio adaptive/fixed of the medians and per seed.

The JSON is written after every run (atomically), so Ctrl-C leaves a valid partial file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from batchsage.adaptive import DEFAULT_CALIBRATION, AdaptiveBatch
from batchsage.engine import TrainingHook, TrainResult, TrainState, train
from batchsage.errors import BatchsageError
from batchsage.jsonio import write_json
from batchsage.plan import power_of_two_grid, scaled_lr
from batchsage.task import Task, load_task

FIXED = "fixed (best of grid)"
ADAPTIVE_FROM_BEST = "adaptive from best fixed"
ADAPTIVE_FROM_BASE = "adaptive from task base"
ADAPTIVE_FROM_SMALL = "adaptive from a smaller batch"
GRID_LR_MULTIPLIERS = (0.5, 1.0, 2.0)
GRID_DOUBLINGS = 5
#: The clock of the timed step table that the headline numbers use (see time_step_kinds).
PRIMARY_CLOCK = "cpu"


class StepTimes(TrainingHook):
    """Per step: (batch size, micro-batches, wall seconds from the loop's clock, CPU seconds).

    CPU seconds are this thread's (``time.thread_time``) between two step ends: the step and the
    hooks, without the time other processes held the core.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, float]] = []
        self.cpu_seconds: list[float] = []
        self._parts = 1
        self._seconds = 0.0
        self._cpu = time.thread_time()

    def on_micro_backward(self, model: nn.Module, index: int, parts: int, batch_size: int) -> None:
        if index == 0:
            self._parts = parts

    def on_step_end(self, state: TrainState) -> None:
        self.rows.append((state.batch_size, self._parts, state.train_seconds - self._seconds))
        self._seconds = state.train_seconds
        now = time.thread_time()
        self.cpu_seconds.append(now - self._cpu)
        self._cpu = now


@dataclass
class Run:
    strategy: str
    seed: int
    start_batch_size: int
    start_lr: float
    result: dict[str, Any]
    steps: list[tuple[int, int, float]]
    history: list[dict[str, float]]
    schedule: list[dict[str, Any]] = field(default_factory=list)
    readings: list[dict[str, Any]] = field(default_factory=list)
    monitor_overhead: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "seed": self.seed, "start_batch_size": self.start_batch_size,
            "start_lr": self.start_lr, "result": self.result, "history": self.history,
            "schedule": self.schedule, "readings": self.readings, "monitor_overhead": self.monitor_overhead,
            "step_kinds": _step_kinds(self.steps),
        }


def _step_kinds(steps: list[tuple[int, int, float]]) -> list[list[int]]:
    """Run-length encoding of (batch size, micro-batches) per step: [[B, parts, count], ...]."""
    encoded: list[list[int]] = []
    for batch_size, parts, _ in steps:
        if encoded and encoded[-1][:2] == [batch_size, parts]:
            encoded[-1][2] += 1
        else:
            encoded.append([batch_size, parts, 1])
    return encoded


def run_one(task: Task, strategy: str, batch_size: int, lr: float, seed: int, device: str,
            calibration: float, max_seconds: float | None = None,
            step_seconds: Callable[[int], float] | None = None) -> Run:
    timer = StepTimes()
    controller = None
    if strategy == FIXED or strategy == "grid":
        result = train(task, batch_size, lr, seed=seed, device=device, max_seconds=max_seconds,
                       hooks=[timer])
    else:
        controller = AdaptiveBatch.for_task(task, batch_size, lr, calibration=calibration,
                                            step_seconds=step_seconds)
        result = controller.train(task, seed=seed, device=device, max_seconds=max_seconds, hooks=[timer])
    return Run(
        strategy=strategy, seed=seed, start_batch_size=batch_size, start_lr=lr,
        result=_result_dict(result), steps=timer.rows,
        history=[{"step": p.step, "samples": p.samples, "train_seconds": p.train_seconds,
                  "metric": p.metric} for p in result.history],
        schedule=controller.schedule_dicts() if controller else [],
        readings=[asdict(r) for r in controller.readings] if controller else [],
        monitor_overhead=controller.monitor.overhead_fraction if controller else None,
    )


def _result_dict(result: TrainResult) -> dict[str, Any]:
    keys = ("reached_target", "steps_to_target", "samples_to_target", "seconds_to_target",
            "final_metric", "diverged", "steps", "samples", "train_seconds", "stop_reason")
    return {key: getattr(result, key) for key in keys}


# ------------------------------------------------------------------------------------------------
# Time to target: measured, and from step times timed interleaved
# ------------------------------------------------------------------------------------------------

StepKind = tuple[int, int]  # (batch size, micro-batches); more than one micro-batch = instrumented


def step_kinds(runs: list[Run]) -> list[StepKind]:
    return sorted({(batch_size, parts) for run in runs for batch_size, parts, _ in run.steps})


def time_step_kinds(task: Task, kinds: list[StepKind], device: str, rounds: int = 7,
                    steps: int = 6, seed: int = 0) -> dict[str, dict[StepKind, float]]:
    """Median seconds of one step of each kind, timed in short bursts interleaved round-robin.

    Two clocks: "wall" (the loop's) and "cpu" (the training thread's CPU time; with one torch
    thread, what the wall clock shows on an idle machine). Under load a long step is stretched by
    the share of the core other processes take while a short one often fits between them, so the
    wall clock favours small batches; the CPU clock does not. A kind with several micro-batches is
    timed as the noise monitor runs it (every step instrumented), so it carries the monitor's cost.
    The first step of each burst is left out.
    """
    from batchsage.noise import NoiseScaleMonitor

    order = random.Random(seed)
    bursts: dict[str, dict[StepKind, list[float]]] = {"wall": defaultdict(list), "cpu": defaultdict(list)}
    for _ in range(rounds):
        shuffled = list(kinds)
        order.shuffle(shuffled)
        for batch_size, parts in shuffled:
            timer = StepTimes()
            hooks: list[TrainingHook] = [timer]
            if parts > 1:
                hooks.insert(0, NoiseScaleMonitor(micro_batches=parts, every=1))
            train(task, batch_size, task.base_lr, seed=seed, device=device, stop_at_target=False,
                  max_samples=batch_size * (steps + 1), eval_every_samples=1 << 60, hooks=hooks)
            bursts["wall"][(batch_size, parts)].append(statistics.median(row[2] for row in timer.rows[1:]))
            bursts["cpu"][(batch_size, parts)].append(statistics.median(timer.cpu_seconds[1:]))
    return {clock: {kind: statistics.median(values) for kind, values in by_kind.items()}
            for clock, by_kind in bursts.items()}


def timed_seconds_to_target(run: Run, table: dict[StepKind, float]) -> float:
    """Σ over the steps to target of their kind's timed seconds, plus the controller's decisions."""
    steps = run.result["steps_to_target"]
    if not run.result["reached_target"] or steps is None:
        return math.inf
    deciding = sum(reading["seconds"] for reading in run.readings if reading["step"] <= steps)
    return sum(table[(batch_size, parts)] for batch_size, parts, _ in run.steps[:steps]) + deciding


def summarize(runs: list[Run], tables: dict[str, dict[StepKind, float]]) -> dict[str, Any]:
    """Per strategy: median and spread of each time measure; ratios to the fixed (B, lr)."""
    table = tables[PRIMARY_CLOCK]
    by_strategy: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.strategy != "grid":
            by_strategy[run.strategy].append(run)
    summary: dict[str, Any] = {}
    for strategy, group in by_strategy.items():
        measured = [r.result["seconds_to_target"] if r.result["reached_target"] else math.inf for r in group]
        summary[strategy] = {
            "seeds": [r.seed for r in group],
            "reached": sum(r.result["reached_target"] for r in group),
            "seconds_timed": _stats([timed_seconds_to_target(r, table) for r in group]),
            "seconds_timed_wall": _stats([timed_seconds_to_target(r, tables["wall"]) for r in group]),
            "seconds_measured": _stats(measured),
            "samples_to_target": _stats([r.result["samples_to_target"] or math.inf for r in group]),
            "steps_to_target": _stats([r.result["steps_to_target"] or math.inf for r in group]),
            "final_batch_size": _stats([r.schedule[-1]["batch_size"] if r.schedule else r.start_batch_size
                                        for r in group]),
            "decision_seconds": _stats([sum(x["seconds"] for x in r.readings) for r in group]),
        }
    fixed = summary.get(FIXED)
    if fixed:
        reference = {run.seed: timed_seconds_to_target(run, table) for run in by_strategy[FIXED]}
        for strategy, entry in summary.items():
            if strategy == FIXED:
                continue
            entry["ratio_to_fixed"] = {
                kind: _ratio(entry[kind]["median"], fixed[kind]["median"])
                for kind in ("seconds_timed", "seconds_timed_wall", "seconds_measured", "samples_to_target",
                             "steps_to_target")
            }
            entry["ratio_to_fixed_per_seed"] = [
                _ratio(timed_seconds_to_target(run, table), reference[run.seed])
                for run in by_strategy[strategy] if run.seed in reference
            ]
            # Same seed, same initialisation and data order: the paired ratio's median is the
            # less noisy comparison; the headline stays the ratio of the medians.
            # A run that missed the target is infinitely slow; a seed whose fixed run missed it is
            # not comparable (NaN) and left out.
            paired = [r for r in entry["ratio_to_fixed_per_seed"] if not math.isnan(r)]
            entry["ratio_to_fixed_paired_median"] = statistics.median(paired) if paired else None
    return summary


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def _ratio(value: float, reference: float) -> float:
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return math.inf if math.isfinite(reference) else math.nan
    return value / reference


# ------------------------------------------------------------------------------------------------
# The best fixed (B, lr)
# ------------------------------------------------------------------------------------------------


def best_from_groundtruth(path: Path | None) -> dict[str, Any] | None:
    """The ground truth's best (B, lr), if its results file has one."""
    if path is None or not path.is_file():
        return None
    best = json.loads(path.read_text()).get("best")
    if not best or "batch_size" not in best or "lr" not in best:
        return None
    return {"batch_size": int(best["batch_size"]), "lr": float(best["lr"]),
            "source": _relative(path), "seconds_to_target": best.get("seconds_to_target")}


def _relative(path: Path) -> str:
    """``path`` relative to the repository where it is inside it (results never hold this machine's paths)."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return Path(path).name


def grid_configs(task: Task, batch_sizes: list[int] | None = None) -> list[tuple[int, float]]:
    """Powers of two from base/4 to base × 32 × scaled lr × {½, 1, 2}, near base × 4 first.

    The order only makes the censoring cut earlier (a good time is known sooner); a cut run is at
    least ``censor_factor`` times slower than one already measured, so it cannot be the best.
    """
    scaling = task.resolved_lr_scaling()
    low = max(1, task.base_batch_size // 4)
    high = min(task.base_batch_size << GRID_DOUBLINGS, task.num_train_samples)
    sizes = batch_sizes or [b for b in power_of_two_grid(low, high) if b <= task.num_train_samples]
    middle = math.log2(task.base_batch_size * 4)
    sizes.sort(key=lambda b: abs(math.log2(b) - middle))
    return [(b, m * scaled_lr(b, task.base_batch_size, task.base_lr, scaling))
            for b in sizes for m in GRID_LR_MULTIPLIERS]


def best_from_grid(task: Task, device: str, censor_factor: float, runs: list[Run],
                   save: Callable[[], None], progress: Progress,
                   batch_sizes: list[int] | None = None) -> dict[str, Any]:
    """Run the small grid (seed 0) and pick the (B, lr) with the least timed time to target."""
    configs = grid_configs(task, batch_sizes)
    bar = progress.add_task("small fixed grid (seed 0)", total=len(configs))
    grid: list[Run] = []
    best_measured = math.inf
    for batch_size, lr in configs:
        limit = censor_factor * best_measured if math.isfinite(best_measured) else None
        run = run_one(task, "grid", batch_size, lr, task.seed, device, DEFAULT_CALIBRATION, limit)
        grid.append(run)
        runs.append(run)
        save()
        if run.result["reached_target"]:
            best_measured = min(best_measured, run.result["seconds_to_target"])
        progress.advance(bar)
    table = time_step_kinds(task, step_kinds(grid), device)[PRIMARY_CLOCK]
    best = min(grid, key=lambda run: timed_seconds_to_target(run, table))
    if not best.result["reached_target"]:
        raise BatchsageError(f"no (B, lr) of the grid reached the target of task {task.name!r}")
    return {"batch_size": best.start_batch_size, "lr": best.start_lr,
            "source": "grid in this benchmark (seed 0, steps × interleaved step times)",
            "seconds_to_target": timed_seconds_to_target(best, table),
            "grid": [{"batch_size": r.start_batch_size, "lr": r.start_lr,
                      "timed_seconds_to_target": timed_seconds_to_target(r, table),
                      "seconds_to_target": r.result["seconds_to_target"]} for r in grid]}


# ------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------


def plot(document: dict[str, Any], runs: list[Run], table: dict[StepKind, float], path: Path) -> None:
    """Left: batch size over steps (every seed thin, the median run bold) with the calibrated noise
    scale and its 95 % interval read at each decision of the median run. Right: the validation
    metric against timed seconds for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {FIXED: "tab:gray", ADAPTIVE_FROM_BEST: "tab:blue", ADAPTIVE_FROM_BASE: "tab:orange",
              ADAPTIVE_FROM_SMALL: "tab:green"}
    sizes = [entry["batch_size"] for run in runs for entry in run.schedule]
    top = max([*sizes, document["best_fixed"]["batch_size"]])
    for strategy in (ADAPTIVE_FROM_BEST, ADAPTIVE_FROM_BASE, ADAPTIVE_FROM_SMALL):
        group = [r for r in runs if r.strategy == strategy]
        if not group:
            continue
        median = _median_run(group, table)
        for run in group:
            steps = [e["step"] for e in run.schedule] + [run.result["steps"]]
            sizes = [e["batch_size"] for e in run.schedule]
            bold = run is median
            left.step(steps, [*sizes, sizes[-1]], where="post", color=colors[strategy],
                      lw=2.0 if bold else 0.7, alpha=1.0 if bold else 0.35,
                      label=f"B, {strategy} (median run: seed {run.seed})" if bold else None)
        _plot_readings(left, median.readings, colors[strategy], 8 * top)
    best = document["best_fixed"]
    left.axhline(best["batch_size"], color=colors[FIXED], ls="--", label=f"best fixed B={best['batch_size']}")
    left.set_yscale("log", base=2)
    left.set_ylim(top=8 * top)
    left.set_xlabel("optimiser step")
    left.set_ylabel("batch size (samples)")
    left.set_title(f"{document['task']}: adaptive schedule")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=2)
    for run in runs:
        cumulative = _timed_cumulative(run, table)
        xs = [cumulative[min(p["step"], len(cumulative)) - 1] if p["step"] else 0.0 for p in run.history]
        right.plot(xs, [p["metric"] for p in run.history], color=colors[run.strategy], alpha=0.5, lw=1,
                   label=run.strategy if run.seed == document["seeds"][0] else None)
    right.axhline(document["target"], color="black", lw=0.8, ls=":", label="target")
    right.set_xlabel("training seconds (steps × interleaved step times)")
    right.set_ylabel(document["metric"])
    right.set_title("validation metric, every seed")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_readings(axis: Any, readings: list[dict[str, Any]], color: str, ceiling: float) -> None:
    """Calibrated B_noise (dot) and its 95 % interval (bar); unbounded values drawn at ``ceiling``."""
    if not readings:
        return
    steps = [r["step"] for r in readings]
    low = [min(r["b_noise_low"], ceiling) for r in readings]
    high = [min(r["b_noise_high"], ceiling) for r in readings]
    point = [min(r["b_noise"], ceiling) for r in readings]
    axis.vlines(steps, low, high, color=color, alpha=0.35, lw=1.5)
    axis.plot(steps, point, "o", ms=3, color=color, alpha=0.8, label="calibrated B_noise, 95 % interval")


def _median_run(group: list[Run], table: dict[StepKind, float]) -> Run:
    ordered = sorted(group, key=lambda run: timed_seconds_to_target(run, table))
    return ordered[(len(ordered) - 1) // 2]


def _timed_cumulative(run: Run, table: dict[StepKind, float]) -> list[float]:
    total, cumulative = 0.0, []
    for batch_size, parts, _ in run.steps:
        total += table[(batch_size, parts)]
        cumulative.append(total)
    return cumulative or [0.0]


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def runs_from_document(document: dict[str, Any]) -> list[Run]:
    """The compared runs of a results file (step kinds expanded, seconds unknown; null = unbounded)."""
    runs = []
    for data in document["runs"]:
        if data["strategy"] == "grid":
            continue
        steps = [(b, p, math.nan) for b, p, count in data["step_kinds"] for _ in range(count)]
        readings = [{key: math.inf if value is None and key.startswith("b_") else value
                     for key, value in reading.items()} for reading in data["readings"]]
        runs.append(Run(data["strategy"], data["seed"], data["start_batch_size"], data["start_lr"],
                        data["result"], steps, data["history"], data["schedule"], readings,
                        data["monitor_overhead"]))
    return runs


def replot(results: Path, path: Path | None) -> None:
    """Draw the plot again from a complete results file."""
    document = json.loads(results.read_text())
    table = {(row["batch_size"], row["micro_batches"]): row[f"{document['primary_clock']}_seconds"]
             for row in document["step_seconds"]}
    plot(document, runs_from_document(document), table, path or results.with_suffix(".png"))


def git_commit() -> str | None:
    """The commit the benchmark ran at (with '+changes' when the working tree differs)."""
    import subprocess

    root = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks/adaptive.py"],
                               cwd=root.parent, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


def machine_info(device: str) -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "device": device}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="built-in task name or path/to/file.py:ATTR")
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the plot of this results file")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per strategy (≥ 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are task.seed + first-seed + 0, 1, …: a replication on fresh seeds")
    parser.add_argument("--groundtruth", type=Path, default=None,
                        help="ground-truth results (default: benchmarks/results/<task>.json if present)")
    parser.add_argument("--starts", default="best,base",
                        help="adaptive runs to compare, comma-separated: 'best' (start at the best "
                             "fixed B, lr), 'base' (start at the task's base B, lr), 'small' (start at "
                             "--small-batch, the best fixed lr scaled to it by the task's rule)")
    parser.add_argument("--small-batch", type=int, default=None,
                        help="the start batch of 'small' (default: a quarter of the best fixed B)")
    parser.add_argument("--own-grid", action="store_true",
                        help="run the small grid here even when a ground-truth results file exists")
    parser.add_argument("--grid-batch-sizes", default=None,
                        help="batch sizes of the small grid, comma-separated (default: base/4 … base×32)")
    parser.add_argument("--calibration", type=float, default=None,
                        help=f"B_noise = calibration × B_simple (default {DEFAULT_CALIBRATION})")
    parser.add_argument("--time-rule", action="store_true",
                        help="probe t(B) once and let the controller grow only when "
                             "t(B)·(1 + B_noise/B) falls (for compute-bound models)")
    parser.add_argument("--recommend", action="store_true",
                        help="take the calibration from batchsage.recommend (run once)")
    parser.add_argument("--censor-factor", type=float, default=3.0, help="grid: cut runs past this × best")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine a 2nd thread stalls)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/adaptive_<task>.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: the --out path with .png")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be positive")
    if args.task is None and args.replot is None:
        parser.error("--task is required")
    if not args.starts or any(name not in ("best", "base", "small") for name in args.starts.split(",")):
        parser.error("--starts takes 'best', 'base' and 'small', comma-separated")
    if args.small_batch is not None and args.small_batch < 1:
        parser.error("--small-batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        replot(args.replot, args.plot)
        return 0
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    try:
        task = load_task(args.task)
    except BatchsageError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    results_dir = Path(__file__).parent / "results"
    out = args.out or results_dir / f"adaptive_{task.name}.json"
    plot_path = args.plot or out.with_suffix(".png")
    groundtruth = args.groundtruth or results_dir / f"{task.name}.json"
    document: dict[str, Any] = {
        "status": "partial", "task": task.name, "metric": task.metric_name, "target": task.target,
        "higher_is_better": task.higher_is_better,
        "seeds": [task.seed + args.first_seed + i for i in range(args.seeds)],
        "task_definition": {"train_samples": task.num_train_samples, "val_samples": task.num_val_samples,
                            "base_batch_size": task.base_batch_size, "base_lr": task.base_lr,
                            "max_samples": task.max_samples, "description": task.description},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_info(args.device),
        "load_average_start": list(os.getloadavg()), "git_commit": git_commit(),
        "arguments": {key: _relative(value) if isinstance(value, Path) else value
                      for key, value in vars(args).items()},
    }
    runs: list[Run] = []

    def save() -> None:
        document["runs"] = [run.to_dict() for run in runs]
        write_json(out, document)

    try:
        with Progress(console=console, transient=False) as progress:
            _run_benchmark(task, args, groundtruth, document, runs, save, progress, console)
    except KeyboardInterrupt:
        save()
        console.print(f"interrupted: partial results in {out}")
        return 130
    compared = [run for run in runs if run.strategy != "grid"]
    with console.status("timing every step kind, interleaved"):
        tables = time_step_kinds(task, step_kinds(compared), args.device)
    document["step_seconds"] = [{"batch_size": b, "micro_batches": p, "cpu_seconds": t,
                                 "wall_seconds": tables["wall"][(b, p)]}
                                for (b, p), t in sorted(tables["cpu"].items())]
    document["primary_clock"] = PRIMARY_CLOCK
    document["summary"] = summarize(compared, tables)
    document["status"] = "complete"
    document["load_average_end"] = list(os.getloadavg())
    save()
    plot(document, compared, tables[PRIMARY_CLOCK], plot_path)
    print_summary(document, console)
    console.print(f"results: {out}\nplot: {plot_path}")
    return 0


def _run_benchmark(task: Task, args: argparse.Namespace, groundtruth: Path, document: dict[str, Any],
                   runs: list[Run], save: Callable[[], None], progress: Progress, console: Console) -> None:
    calibration = args.calibration if args.calibration is not None else DEFAULT_CALIBRATION
    document["calibration"] = {"value": calibration, "source": "argument" if args.calibration else "default"}
    if args.recommend:
        from batchsage.decide import recommend

        rec = recommend(task, device=args.device, progress=False)
        if rec.noise_scale.calibration is not None:
            calibration = rec.noise_scale.calibration
            document["calibration"] = {"value": calibration, "source": "recommend",
                                       "decision_seconds": rec.decision_seconds}
    best = None if args.own_grid else best_from_groundtruth(groundtruth)
    if best is None:
        sizes = [int(b) for b in args.grid_batch_sizes.split(",")] if args.grid_batch_sizes else None
        best = best_from_grid(task, args.device, args.censor_factor, runs, save, progress, sizes)
    document["best_fixed"] = best
    step_seconds = None
    starts = start_points(task, best, args.small_batch or max(1, best["batch_size"] // 4))
    strategies = [(FIXED, best["batch_size"], best["lr"])]
    strategies += [starts[name] for name in args.starts.split(",")]
    if args.time_rule:  # t(B) from the smallest of the best, the base and any start batch
        start = min(task.base_batch_size, *(batch_size for _, batch_size, _ in strategies))
        step_seconds = _probe_step_seconds(task, start, args.device, document)
    save()
    bar = progress.add_task("fixed vs adaptive, interleaved", total=len(strategies) * args.seeds)
    for index, seed in enumerate(document["seeds"]):
        shift = index % len(strategies)
        for strategy, batch_size, lr in strategies[shift:] + strategies[:shift]:
            runs.append(run_one(task, strategy, batch_size, lr, seed, args.device, calibration,
                                step_seconds=step_seconds))
            save()
            progress.advance(bar)


def start_points(task: Task, best: dict[str, Any], small_batch: int) -> dict[str, tuple[str, int, float]]:
    """Where each adaptive run starts: (strategy name, B, lr) for 'best', 'base' and 'small'.

    'small' keeps the best fixed run's lr per the task's scaling rule (linear or square root), so
    that it differs from the best fixed run only in the batch it starts from."""
    small_lr = scaled_lr(small_batch, best["batch_size"], best["lr"], task.resolved_lr_scaling())
    return {"best": (ADAPTIVE_FROM_BEST, best["batch_size"], best["lr"]),
            "base": (ADAPTIVE_FROM_BASE, task.base_batch_size, task.base_lr),
            "small": (ADAPTIVE_FROM_SMALL, small_batch, small_lr)}


def _probe_step_seconds(task: Task, start: int, device: str,
                        document: dict[str, Any]) -> Callable[[int], float]:
    """t(B) from the throughput probe, from the smallest start batch to 32× it (the controller's reach)."""
    from batchsage.probe.throughput import probe_throughput

    sizes = [b for b in (start << k for k in range(6)) if b <= task.num_train_samples]
    curve = probe_throughput(task, device=device, batch_sizes=sizes, time_budget_seconds=10.0)
    document["time_rule"] = [{"batch_size": p.batch_size, "step_seconds": p.step_seconds_median}
                             for p in curve.points]
    return curve.step_seconds


def print_summary(document: dict[str, Any], console: Console) -> None:
    best = document["best_fixed"]
    table = Table(title=f"{document['task']}: time to target, median [min–max] over {len(document['seeds'])} "
                        f"seeds (best fixed B={best['batch_size']}, lr={best['lr']:.4g})")
    for column in ("strategy", "reached", "timed s", "measured s", "samples", "final B", "ratio (timed)",
                   "per seed"):
        table.add_column(column)
    for strategy, entry in document["summary"].items():
        timed, measured = entry["seconds_timed"], entry["seconds_measured"]
        ratio = entry.get("ratio_to_fixed", {}).get("seconds_timed")
        table.add_row(
            strategy, f"{entry['reached']}/{len(entry['seeds'])}",
            f"{timed['median']:.2f} [{timed['min']:.2f}–{timed['max']:.2f}]",
            f"{measured['median']:.2f} [{measured['min']:.2f}–{measured['max']:.2f}]",
            f"{entry['samples_to_target']['median']:.0f}", f"{entry['final_batch_size']['median']:.0f}",
            "-" if ratio is None else f"{ratio:.2f}",
            "-" if entry.get("ratio_to_fixed_paired_median") is None
            else f"{entry['ratio_to_fixed_paired_median']:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
