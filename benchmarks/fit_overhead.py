"""What ``fit``'s machinery costs when it decides nothing: a pinned run against a plain one.

    python benchmarks/fit_overhead.py [--task digits-mlp ...] [--repeats 2]

For each task, side by side and alternating which goes first: a plain training run of the
engine (``batchsage.engine.Run``) at the task's base batch size and lr to its target, and
``batchsage.fit`` with ``FitOptions(decide=False)`` — the same run with fit's machinery on (the
noise-scale monitor at its 3 % budget, the ETA, the progress bookkeeping, checkpoints every 30 s
into a temporary directory) but no races. The overhead is the wall-clock seconds per optimiser step
outside validation, fit's over the plain run's, minus 1 (both validate on the same schedule; the
steps to the target can differ a little, as the monitor's micro-batches round differently).
Goal: ≤ 3 %.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from batchsage.engine import Run
from batchsage.jsonio import write_json
from batchsage.live import FitOptions, fit
from batchsage.task import load_task
from groundtruth import load_average, machine_info

HERE = Path(__file__).resolve().parent
TASKS = ("linreg", "digits-mlp", "fashion-mlp", "fashion-cnn", "charlm")


def plain(name: str, seed: int) -> float:
    """Seconds per step outside validation of a plain run to the target."""
    task = load_task(name)
    started = time.perf_counter()
    run = Run(task, task.base_batch_size, task.base_lr, seed=seed, device="cpu")
    run.train_until()
    return (time.perf_counter() - started - run.eval_seconds) / run.state.step


def pinned(name: str, seed: int) -> float:
    """Seconds per step outside validation of ``fit`` pinned to the task's base configuration."""
    task = load_task(name)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = fit(task, device="cpu", seed=seed, out=out, options=FitOptions(decide=False), progress=False)
        wall = time.perf_counter() - started
    return (wall - result.times.scheduled_validation_seconds) / result.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="append", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fit_overhead.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for name in args.task or TASKS:
        ratios = []
        for repeat in range(args.repeats):
            order = (plain, pinned) if repeat % 2 == 0 else (pinned, plain)
            seconds = {function.__name__: function(name, repeat) for function in order}
            ratios.append(seconds["pinned"] / seconds["plain"])
            print(f"{name} repeat {repeat}: plain {seconds['plain'] * 1e3:.2f} ms/step, "
                  f"pinned fit {seconds['pinned'] * 1e3:.2f} ms/step", flush=True)
        rows.append({"task": name, "ratios": ratios, "overhead": statistics.median(ratios) - 1.0})
    document = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "threads": 1,
                "machine": machine_info("cpu"), "load_average_at_end": load_average(),
                "tasks": rows, "median_overhead": statistics.median(r["overhead"] for r in rows)}
    write_json(args.out, document)
    print(f"median overhead {document['median_overhead']:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
