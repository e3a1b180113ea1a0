"""Overhead of the noise-scale monitor: step time with the monitor on vs off, interleaved in one run.

    python benchmarks/noise_overhead.py [--task fashion-mlp] [--batch-size 128] [--steps 12000] \
        [--switch-every 2] [--budget 0.03] [--out benchmarks/results/noise_overhead.json]

One training run (``batchsage.engine.train``) at B with the task's base lr. Its steps alternate
every ``--switch-every`` steps between monitor on (a :class:`NoiseScaleMonitor` whose period
adapts to the overhead budget) and monitor off (the monitor is not called at all), so both see
the same machine load and the same phase of training. Every step's seconds, as the loop measures
them (validation excluded), are kept with its kind: off, on-plain (monitor attached, step not
measured) or on-instrumented (split into micro-batches).

The overhead is the extra seconds the monitor added to its steps ÷ what those steps cost without
it, with t̄ the 10 %-trimmed mean seconds of a kind of step:

    overhead = [n_on_plain·(t̄_on_plain − t̄_off) + n_instr·(t̄_instr − t̄_off)] / (n_on·t̄_off)

Trimmed means, because step times on a shared machine are a mixture (running, or waiting for a
core; ~2 ms or ~6 ms here for the same step) with rare long stalls: a median jumps between the
modes, a plain mean follows the stalls. The run is cut into ``--segments`` consecutive segments,
each evaluated the same way, for the spread. The untrimmed mean of on-steps over off-steps is
saved too.

One intra-op thread by default: on a 2-core machine shared with other jobs, two torch threads
spin against the other processes and step times swing by 10× (measured here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from batchsage.engine import StepUpdate, TrainingHook, TrainState, train
from batchsage.jsonio import write_json
from batchsage.noise import NoiseScaleMonitor, trimmed_mean
from batchsage.task import load_task

console = Console()

OFF, ON_PLAIN, ON_INSTRUMENTED = "off", "on_plain", "on_instrumented"


class Switch(TrainingHook):
    """Forwards to the monitor on "on" steps only, and keeps each step's seconds and kind."""

    def __init__(self, monitor: NoiseScaleMonitor, switch_every: int, steps: int) -> None:
        self.monitor = monitor
        self.switch_every = switch_every
        self.steps = steps
        self.on = True
        self.records: list[tuple[str, float]] = []
        self._last_train_seconds = 0.0

    def micro_batches(self, state: TrainState, accumulation_steps: int) -> int:
        return self.monitor.micro_batches(state, accumulation_steps) if self.on else accumulation_steps

    def on_micro_backward(self, model: torch.nn.Module, index: int, parts: int, batch_size: int) -> None:
        if self.on:
            self.monitor.on_micro_backward(model, index, parts, batch_size)

    def on_gradients(self, model: torch.nn.Module, state: TrainState, loss: float) -> None:
        if self.on:
            self.monitor.on_gradients(model, state, loss)

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        kind = OFF
        if self.on:
            self.monitor.on_step_end(state)
            kind = ON_INSTRUMENTED if self.monitor.last_step_instrumented else ON_PLAIN
        self.records.append((kind, state.train_seconds - self._last_train_seconds))
        self._last_train_seconds = state.train_seconds
        if state.step % self.switch_every == 0:
            self.on = not self.on
        if state.step >= self.steps:
            return StepUpdate(stop=True, reason="benchmark done")
        return None


def overhead_of(records: list[tuple[str, float]]) -> dict[str, float]:
    """The formula in the module docstring, on one list of (kind, seconds)."""
    by_kind = {kind: [s for k, s in records if k == kind] for kind in (OFF, ON_PLAIN, ON_INSTRUMENTED)}
    off = trimmed_mean(by_kind[OFF])
    on_plain = trimmed_mean(by_kind[ON_PLAIN])
    n_plain, n_instr = len(by_kind[ON_PLAIN]), len(by_kind[ON_INSTRUMENTED])
    extra = n_plain * (on_plain - off)
    instrumented = trimmed_mean(by_kind[ON_INSTRUMENTED]) if n_instr else off
    extra += n_instr * (instrumented - off)
    return {
        "overhead_fraction": extra / ((n_plain + n_instr) * off),
        "off_step_seconds": off,
        "on_plain_step_seconds": on_plain,
        "instrumented_step_seconds": instrumented,
        "instrumented_steps": n_instr,
        "on_steps": n_plain + n_instr,
        "off_steps": len(by_kind[OFF]),
    }


def run(task_name: str, batch_size: int, steps: int, switch_every: int, budget: float, threads: int,
        warmup_steps: int, segments: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    task = load_task(task_name)
    monitor = NoiseScaleMonitor(overhead_budget=budget, dataset_size=task.num_train_samples)
    switch = Switch(monitor, switch_every, steps)
    with console.status(f"{task.name} at B={batch_size}: {steps} steps, monitor on/off every {switch_every}"):
        # No validation until the end: the step after one runs on cold caches, and with a period
        # that divides the on/off pattern it would always fall on the same kind of step.
        train(task, batch_size, task.base_lr, hooks=[switch], stop_at_target=False,
              max_samples=batch_size * (steps + 1), eval_every_samples=batch_size * (steps + 1))
    timed = switch.records[warmup_steps:]
    overall = overhead_of(timed)
    size = len(timed) // segments
    parts = [overhead_of(timed[i * size : (i + 1) * size])["overhead_fraction"]
             for i in range(segments)]
    on = [s for k, s in timed if k != OFF]
    off = [s for k, s in timed if k == OFF]
    estimate = monitor.estimate()
    return {
        "benchmark": "noise_overhead",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": threads,
        "load_average_1min": os.getloadavg()[0],
        "task": task.name,
        "batch_size": batch_size,
        "lr": task.base_lr,
        "micro_batches": monitor.micro_batches_per_step,
        "overhead_budget": budget,
        "steps": len(switch.records),
        "warmup_steps_excluded": warmup_steps,
        "switch_every": switch_every,
        **overall,
        "segment_overhead_fractions": parts,
        "mean_ratio_on_vs_off": (sum(on) / len(on)) / (sum(off) / len(off)),
        "monitor": {
            "overhead_fraction": monitor.overhead_fraction,
            "cost_ratio_instrumented_vs_plain": monitor.cost_ratio,
            "period_steps": monitor.period,
            "measurements": monitor.measurements,
            "b_simple": estimate.b_simple if estimate else None,
            "ci95": list(estimate.ci95) if estimate and estimate.ci95 else None,
        },
        "goal_overhead_fraction": budget,
        "goal_met": overall["overhead_fraction"] <= budget,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--switch-every", type=int, default=2, help="steps per on / off stretch")
    parser.add_argument("--budget", type=float, default=0.03, help="the monitor's overhead budget")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--warmup-steps", type=int, default=64, help="first steps left out")
    parser.add_argument("--segments", type=int, default=8, help="segments for the spread")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/noise_overhead.json"))
    args = parser.parse_args(argv)
    doc = run(args.task, args.batch_size, args.steps, args.switch_every, args.budget, args.threads,
              args.warmup_steps, args.segments)
    monitor = doc["monitor"]
    console.print(
        f"{doc['task']} B={doc['batch_size']}, {doc['steps']} steps interleaved on/off: overhead "
        f"{100 * doc['overhead_fraction']:.2f} % (segments {min(doc['segment_overhead_fractions']) * 100:.2f}"
        f" … {max(doc['segment_overhead_fractions']) * 100:.2f} %; mean on/off ratio "
        f"{doc['mean_ratio_on_vs_off']:.3f}); plain step {1000 * doc['off_step_seconds']:.2f} ms, "
        f"monitor attached but idle {1000 * doc['on_plain_step_seconds']:.2f} ms, "
        f"instrumented {1000 * doc['instrumented_step_seconds']:.2f} ms × {doc['instrumented_steps']}"
    )
    console.print(
        f"monitor's own account: instrumented step = {monitor['cost_ratio_instrumented_vs_plain']:.2f}× "
        f"a plain one, one measurement per {monitor['period_steps']} steps, overhead "
        f"{100 * monitor['overhead_fraction']:.2f} %, {monitor['measurements']} measurements, "
        f"B_simple {monitor['b_simple']:.4g}"
    )
    verdict = "met" if doc["goal_met"] else "NOT met"
    console.print(f"goal ≤ {100 * doc['goal_overhead_fraction']:.0f} %: {verdict}")
    write_json(args.out, doc)
    console.print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
