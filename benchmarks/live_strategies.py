"""Strategies that decide while training, scored against a committed ground truth.

    python benchmarks/live_strategies.py benchmarks/results/digits-mlp.json [--seeds 0,1,2,3]
    python benchmarks/live_strategies.py benchmarks/results/digits-mlp.json \
        --rerun batchsage_fit --rerun best_rerun      # after a change to fit: its clock reference too

For each seed of the ground truth (its grid and top-up seeds), three runs side by side, in an order
that rotates with the seed:

- ``batchsage_fit``: :func:`batchsage.live.controller` from the task's base batch and lr to the target;
- ``adaptive``: the adaptive-batch controller (:class:`batchsage.AdaptiveBatch`) from the task's
  base batch and lr, growing the batch as the noise scale grows;
- ``best_rerun``: the ground truth's best fixed (B, lr), trained again now, on the same machine
  and seed — the clock reference for the measured ratio below.

What is counted for ``batchsage_fit``: every optimiser step of every branch — the kept run, the
forks that lost, the cooldowns that judged the races — priced at the ground truth's t(B) (steps ×
t(B), the unit every grid time is in), plus the measured seconds of scoring races on validation
loss, of copying runs for forks and of memory probes. Not counted, as for the grid's runs: the
scheduled validations. ``end_to_end`` = the median over seeds of that ÷ the ground truth's best
time. ``end_to_end_measured`` is the same ratio on the clock of this run: fit's measured seconds ÷
the best configuration's measured seconds to target when re-trained beside it.

The ETA: at the first ETA estimate made once fit had spent 25 % of its final kept training time,
|ETA − the kept training time that was actually left| ÷ what was left.

Results go into the ground truth's JSON under ``strategies.batchsage_fit`` / ``strategies.adaptive``
(and each run under ``live_runs``, saved as it finishes: a stopped run resumes). Every strategy's
``end_to_end`` (regret + decision cost where it decided up front) is written beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from batchsage import AdaptiveBatch, plan
from batchsage.engine import train
from batchsage.jsonio import write_json
from batchsage.live import fit
from batchsage.task import Task, load_task
from groundtruth import machine_info

#: Where the ETA is evaluated: once this share of the final kept training time has passed.
ETA_AT = 0.25


def step_time_table(document: dict[str, Any]) -> Callable[[int], float]:
    """t(B) from the ground truth's timing (the one step-time model between its points)."""
    table = {int(b): float(s) for b, s in document["step_seconds_by_batch"].items()}
    return plan.step_time_model(list(table), list(table.values()))


def clock_free_seconds(steps_by_batch: dict[str, int], step_seconds: Callable[[int], float]) -> float:
    return sum(count * step_seconds(int(batch)) for batch, count in steps_by_batch.items())


def run_fit(task: Task, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    result = fit(task, device="cpu", seed=seed, progress=False)
    document = result.to_dict()
    return {
        "strategy": "batchsage_fit", "seed": seed, "reached_target": result.reached_target,
        "final_batch_size": result.batch_size, "final_lr": result.lr, "races": len(result.races),
        "races_won": sum(1 for r in result.races if r["winner"] != "incumbent"),
        "steps_by_batch": result.steps_by_batch, "times": document["times"],
        "schedule": document["schedule"], "eta": document["eta"],
        "wall_seconds": time.perf_counter() - started,
    }


def run_adaptive(task: Task, seed: int) -> dict[str, Any]:
    controller = AdaptiveBatch.for_task(task)
    result = controller.train(task, seed=seed, device="cpu")
    steps = _steps_by_batch(controller.schedule_dicts(), result.steps)
    return {"strategy": "adaptive", "seed": seed, "reached_target": result.reached_target,
            "steps_to_target": result.steps_to_target, "steps_by_batch": steps,
            "measured_seconds": result.seconds_to_target, "schedule": controller.schedule_dicts(),
            "final_batch_size": controller.batch_size, "final_lr": controller.lr}


def _steps_by_batch(schedule: list[dict[str, Any]], total_steps: int) -> dict[str, int]:
    """Steps at each batch size from a controller's change points."""
    counts: dict[str, int] = {}
    for entry, following in zip(schedule, [*schedule[1:], None], strict=True):
        end = following["step"] if following is not None else total_steps
        key = str(entry["batch_size"])
        counts[key] = counts.get(key, 0) + max(0, end - entry["step"])
    return counts


def run_best(task: Task, seed: int, best: dict[str, Any]) -> dict[str, Any]:
    result = train(task, int(best["batch_size"]), float(best["lr"]), seed=seed, device="cpu")
    return {"strategy": "best_rerun", "seed": seed, "reached_target": result.reached_target,
            "steps_to_target": result.steps_to_target, "measured_seconds": result.seconds_to_target,
            "batch_size": best["batch_size"], "lr": best["lr"]}


def fit_seconds(run: dict[str, Any], step_seconds: Callable[[int], float]) -> tuple[float, float]:
    """(clock-free seconds, measured seconds) of a fit run; inf where it missed the target."""
    if not run["reached_target"]:
        return math.inf, math.inf
    times = run["times"]
    measured_overheads = (times["race_validation_seconds"] + times["fork_seconds"] + times["probe_seconds"])
    steps = {**run["steps_by_batch"]["kept"]}
    for batch, count in run["steps_by_batch"]["discarded"].items():
        steps[batch] = steps.get(batch, 0) + count
    return clock_free_seconds(steps, step_seconds) + measured_overheads, times["end_to_end_seconds"]


def eta_error(run: dict[str, Any]) -> float | None:
    """|ETA − actual remaining| ÷ actual remaining, at ETA_AT of the final kept training time."""
    if not run["reached_target"] or not run["eta"]:
        return None
    total = run["times"]["kept_train_seconds"]
    later = [e for e in run["eta"] if e["train_seconds"] >= ETA_AT * total]
    if not later:
        return None
    estimate = later[0]
    remaining = total - estimate["train_seconds"]
    return abs(estimate["eta_seconds"] - remaining) / remaining if remaining > 0 else None


def score(document: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    step_seconds = step_time_table(document)
    best_seconds = float(document["best"]["seconds_to_target"])
    by = {name: [r for r in runs if r["strategy"] == name]
          for name in ("batchsage_fit", "adaptive", "best_rerun")}
    best_measured = _median([r["measured_seconds"] if r["reached_target"] else math.inf
                             for r in by["best_rerun"]])
    fit_pairs = [fit_seconds(r, step_seconds) for r in by["batchsage_fit"]]
    fit_clock_free = _median([p[0] for p in fit_pairs])
    fit_measured = _median([p[1] for p in fit_pairs])
    etas = [e for e in (eta_error(r) for r in by["batchsage_fit"]) if e is not None]
    adaptive = _median([clock_free_seconds(r["steps_by_batch"], step_seconds) if r["reached_target"]
                        else math.inf for r in by["adaptive"]])
    default32 = (document.get("strategies") or {}).get("default32") or {}
    results = {
        "batchsage_fit": {
            "end_to_end": _ratio(fit_clock_free, best_seconds),
            "end_to_end_measured": _ratio(fit_measured, best_measured),
            "seconds_to_target": _finite(fit_clock_free),
            "per_seed_seconds": [_finite(p[0]) for p in fit_pairs],
            "per_seed_end_to_end": [_ratio(p[0], best_seconds) for p in fit_pairs],
            "reached_runs": sum(r["reached_target"] for r in by["batchsage_fit"]),
            "runs": len(by["batchsage_fit"]),
            "eta_error_at_25_percent": statistics.median(etas) if etas else None,
            "beats_default32": beats(fit_clock_free, default32, best_seconds),
            "waste_share": _waste_share(by["batchsage_fit"], step_seconds),
            "final_configs": [(r["final_batch_size"], r["final_lr"]) for r in by["batchsage_fit"]],
        },
        "adaptive": {
            "end_to_end": _ratio(adaptive, best_seconds),
            "seconds_to_target": _finite(adaptive),
            "reached_runs": sum(r["reached_target"] for r in by["adaptive"]),
            "runs": len(by["adaptive"]),
        },
        "best_rerun": {"measured_seconds": _finite(best_measured),
                       "ratio_to_grid_best": _ratio(best_measured, best_seconds)},
    }
    return results


def beats(seconds: float, default32: dict[str, Any], best_seconds: float) -> bool:
    """Whether ``seconds`` is less than default32's time, or than the bound default32's cut runs
    had already passed when they were stopped before the target."""
    if default32.get("seconds_to_target") is not None:
        return seconds < default32["seconds_to_target"]
    at_least = default32.get("regret_at_least")
    return at_least is not None and seconds < at_least * best_seconds


def _waste_share(runs: list[dict[str, Any]], step_seconds: Callable[[int], float]) -> float | None:
    shares = []
    for run in runs:
        total, _ = fit_seconds(run, step_seconds)
        if math.isfinite(total) and total > 0:
            kept = clock_free_seconds(run["steps_by_batch"]["kept"], step_seconds)
            shares.append(1.0 - kept / total)
    return statistics.median(shares) if shares else None


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if math.isfinite(value) and math.isfinite(reference) and reference > 0 else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def add_end_to_end(strategies: dict[str, dict[str, Any]]) -> None:
    """``end_to_end`` = regret + decision cost for the strategies that decide before training
    (``end_to_end_at_least`` where the runs were cut before the target)."""
    for result in strategies.values():
        if "regret" in result and result.get("end_to_end") is None:
            regret, cost = result.get("regret"), result.get("decision_cost") or 0.0
            result["end_to_end"] = regret + cost if regret is not None else None
            if regret is None and result.get("regret_at_least") is not None:
                result["end_to_end_at_least"] = result["regret_at_least"] + cost


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a ground truth's JSON (benchmarks/results/<task>.json)")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the ground truth's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="discard earlier live runs in the file")
    parser.add_argument("--rerun", action="append", default=[], metavar="STRATEGY",
                        help="discard earlier runs of this strategy only (after a change to it; repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    document = json.loads(args.results.read_text())
    task = load_task(document["task"])
    protocol = document["protocol"]
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else list(protocol["seeds"]) + list(protocol.get("top_up_seeds") or []))
    runs: list[dict[str, Any]] = [] if args.fresh else [
        r for r in document.get("live_runs") or [] if r["strategy"] not in args.rerun]
    makers: dict[str, Callable[[int], dict[str, Any]]] = {
        "batchsage_fit": lambda seed: run_fit(task, seed),
        "adaptive": lambda seed: run_adaptive(task, seed),
        "best_rerun": lambda seed: run_best(task, seed, document["best"]),
    }
    names = list(makers)
    for index, seed in enumerate(seeds):
        order = names[index % len(names):] + names[:index % len(names)]  # rotate: no strategy always first
        for name in order:
            if any(r["strategy"] == name and r["seed"] == seed for r in runs):
                continue
            print(f"{task.name}: {name}, seed {seed}", flush=True)
            runs.append(makers[name](seed))
            document["live_runs"] = runs
            write_json(args.results, document)
    strategies = document.setdefault("strategies", {})
    strategies.update(score(document, [r for r in runs if r["seed"] in seeds]))
    add_end_to_end(strategies)
    document["live_protocol"] = {"seeds": seeds, "threads": args.threads, "eta_at": ETA_AT,
                                 "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                 "machine": machine_info("cpu")}
    write_json(args.results, document)
    fit_result = strategies["batchsage_fit"]
    print(json.dumps({k: fit_result[k] for k in ("end_to_end", "end_to_end_measured", "per_seed_end_to_end",
                                                  "eta_error_at_25_percent", "waste_share")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
