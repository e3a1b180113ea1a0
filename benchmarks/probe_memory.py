"""Memory ceiling: batchsage's probe against a Lightning-style search, on the same budget, in one run.

    python benchmarks/probe_memory.py [--task fashion-cnn --task charlm] [--memory-budget 1GiB] \
        [--out benchmarks/results/probe_memory.json]

For each task, three searches for the largest batch size whose training step fits the budget,
all measuring a step the same way (:class:`batchsage.probe.memory.ForkedPeakRSSMeter`: a forked
child runs steps at B until its peak resident memory stops growing, limited so the parent
survives):

* **batchsage** — :func:`batchsage.probe.memory.probe_memory`: two small probes, a fitted line,
  a verified prediction, corrections.
* **lightning-binsearch** — what PyTorch Lightning's ``BatchSizeFinder(mode="binsearch")`` does
  (``_run_binary_scaling``): start at ``init_val=2``, double until a trial fails, then bisect
  between the last success and the first failure until they are 1 apart (``max_trials=25``).
  Lightning runs ``steps_per_trial=3`` steps per trial by default; here each trial is one
  measurement with the shared meter, so the steps it reports are the meter's.
* **exact** — bisection over [1, data-set size] to the exact largest fitting B: the truth both
  are judged against.

Reported per method: measurements (batch sizes tried), real training steps, wall-clock seconds,
the ceiling found and its ratio to the exact one. The three run one after the other in the same
process (same fork baseline); seconds on a shared machine are indicative, counts are exact.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from batchsage.jsonio import write_json
from batchsage.probe.memory import ForkedPeakRSSMeter, MemoryProbe, probe_memory
from batchsage.task import Task, load_task
from batchsage.units import format_bytes, parse_size

console = Console()


class CountingMeter:
    """Wraps the shared meter; counts measurements and steps and keeps each probe."""

    def __init__(self, meter: ForkedPeakRSSMeter, budget_bytes: int, label: str) -> None:
        self.meter = meter
        self.budget_bytes = budget_bytes
        self.label = label
        self.probes: list[MemoryProbe] = []

    def __call__(self, batch_size: int) -> MemoryProbe:
        probe = self.meter.measure(batch_size, self.budget_bytes)
        self.probes.append(probe)
        peak = format_bytes(probe.peak_bytes) if probe.peak_bytes is not None else "-"
        console.print(f"  {self.label:>20}: B={batch_size:<6} {probe.outcome:<13} {peak:>10} "
                      f"{probe.steps} steps {probe.seconds:6.2f} s", highlight=False)
        return probe


def lightning_binsearch(measure: Callable[[int], MemoryProbe], cap: int, init_val: int = 2,
                        max_trials: int = 25) -> int:
    """Lightning's ``_run_binary_scaling``: double until failure, then bisect (low starts at 1).

    Like Lightning, the batch size is capped at the data set size, and the search stops when the
    size cannot change any more.
    """
    low, high = 1, None
    size = min(init_val, cap)
    count = 0
    while True:
        if measure(size).fits:
            count += 1
            if count > max_trials:
                break
            low = size
            if high is not None:
                if high - low <= 1:
                    break
                new_size = (high + low) // 2
            else:
                new_size = min(size * 2, cap)
            if new_size == size:  # at the data set size: nothing left to try
                break
            size = new_size
        else:
            high = size
            size = (high + low) // 2
            if high - low <= 1:
                break
    return low


def exact_ceiling(measure: Callable[[int], MemoryProbe], cap: int) -> int:
    """Largest B in [1, cap] whose step fits, by bisection (memory grows with B)."""
    if measure(cap).fits:
        return cap
    low, high = 0, cap  # invariant: low fits (0 trivially), high does not
    while high - low > 1:
        middle = (low + high) // 2
        if measure(middle).fits:
            low = middle
        else:
            high = middle
    return low


def summarise(label: str, probes: list[MemoryProbe], seconds: float, ceiling: int) -> dict[str, Any]:
    return {
        "method": label,
        "ceiling": ceiling,
        "measurements": len(probes),
        "steps": sum(p.steps for p in probes),
        "seconds": seconds,
        "batch_sizes": [p.batch_size for p in probes],
    }


def run_task(task: Task, budget_bytes: int) -> dict[str, Any]:
    meter = ForkedPeakRSSMeter(task)
    cap = task.num_train_samples
    rows: list[dict[str, Any]] = []
    console.rule(f"{task.name}: budget {format_bytes(budget_bytes)}, {cap} training samples")

    counting = CountingMeter(meter, budget_bytes, "batchsage")
    start = time.perf_counter()

    class _Meter:
        name = meter.name

        def measure(self, batch_size: int, budget: int) -> MemoryProbe:
            return counting(batch_size)

        def default_budget_bytes(self) -> tuple[int, str]:
            return budget_bytes, "given"

    profile = probe_memory(task, budget_bytes=budget_bytes, meter=_Meter())
    rows.append(summarise("batchsage", counting.probes, time.perf_counter() - start, profile.max_batch_size))
    rows[-1]["limited_by"] = profile.limited_by
    rows[-1]["fixed_bytes"] = profile.fixed_bytes
    rows[-1]["per_sample_bytes"] = profile.per_sample_bytes

    counting = CountingMeter(meter, budget_bytes, "lightning-binsearch")
    start = time.perf_counter()
    found = lightning_binsearch(counting, cap)
    rows.append(summarise("lightning-binsearch", counting.probes, time.perf_counter() - start, found))

    counting = CountingMeter(meter, budget_bytes, "exact")
    start = time.perf_counter()
    truth = exact_ceiling(counting, cap)
    rows.append(summarise("exact", counting.probes, time.perf_counter() - start, truth))

    for row in rows:
        row["ratio_to_exact"] = row["ceiling"] / truth
    return {
        "task": task.name,
        "budget_bytes": budget_bytes,
        "dataset_size": cap,
        "exact_ceiling": truth,
        "methods": rows,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    table = Table(title="memory ceiling: batchsage vs Lightning-style binsearch (same budget, same meter)")
    for column in ("task", "budget", "method", "ceiling", "÷ exact", "measurements", "steps", "seconds"):
        table.add_column(column, justify="left" if column in ("task", "method") else "right")
    for result in results:
        for row in result["methods"]:
            table.add_row(
                result["task"], format_bytes(result["budget_bytes"]), row["method"], str(row["ceiling"]),
                f"{row['ratio_to_exact']:.3f}", str(row["measurements"]), str(row["steps"]),
                f"{row['seconds']:.1f}",
            )
    console.print(table)


def markdown(document: dict[str, Any]) -> str:
    lines = [
        f"Measured {document['date']} on {document['machine']} (torch {document['torch']}, "
        f"{document['cpu_count']} CPUs, load average {document['load_average_start']} at the start).",
        "",
        "| task | budget | method | ceiling | ÷ exact | measurements | steps | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in document["results"]:
        for row in result["methods"]:
            lines.append(
                f"| {result['task']} | {format_bytes(result['budget_bytes'])} | {row['method']} | "
                f"{row['ceiling']} | {row['ratio_to_exact']:.3f} | {row['measurements']} | {row['steps']} | "
                f"{row['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", help="task name or file.py:ATTR (repeatable)")
    parser.add_argument("--memory-budget", default="1GiB", help="peak resident memory budget")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_memory.json"))
    args = parser.parse_args(argv)
    budget = parse_size(args.memory_budget)
    document: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.system()}",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "memory_budget": args.memory_budget,
        "results": [],
    }
    for name in args.task or ["fashion-cnn", "charlm"]:
        document["results"].append(run_task(load_task(name), budget))
        write_json(args.out, document)  # after each task: an interrupt keeps what was measured
    document["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, document)
    args.out.with_suffix(".md").write_text(markdown(document))
    print_table(document["results"])


if __name__ == "__main__":
    main()
