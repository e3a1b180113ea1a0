"""The memory of training in the process the user will train in: a fresh Python process.

The ceiling search measures steps in forked children (cheap: no import, the task already built),
but a forked child's peak is not a training process's peak. The child starts from this process's
resident pages and allocator state; a fresh ``batchsage train`` process imports torch, builds the
task and its data itself, and grows its heap from nothing. Measured on a task with large
activations (20,000 samples of 64 features through a 32,768-wide tanh layer, SGD with momentum):
the forked child peaked at 886 MiB at B=1491, a fresh process training the same batch at 957-976
MiB, 8-10 % more.

So where memory sets the ceiling, the ceiling is checked by what it promises: a fresh process
(``python -m batchsage.probe.fresh``, with the command-line trainer's modules imported) loads the
task from its source (a built-in name or ``file.py:ATTR``), trains steps at the batch size through
the engine until its peak resident memory stops growing, validates once, and reports its whole peak
(VmHWM). A task object built in Python (a notebook) has no source to load in another process; there
the user trains in this very process, whose state the forked child inherits, and the fork's
measurement is the right one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from batchsage.probe.memory import ProbeError

#: A fresh process that has not answered after this long is killed and the check fails.
FRESH_TIMEOUT_SECONDS = 900.0


def fresh_peak_bytes(source: str, batch_size: int, limit_bytes: int,
                     timeout: float = FRESH_TIMEOUT_SECONDS) -> tuple[int | None, dict[str, Any]]:
    """Peak resident bytes of a fresh process that trains ``source`` at ``batch_size`` and then
    validates once (None: it ran out of memory under ``limit_bytes`` of data segment), and its
    report (``steps_peak``: the peak before the validation pass)."""
    command = [sys.executable, "-m", "batchsage.probe.fresh", source, str(batch_size),
               "--limit-bytes", str(limit_bytes)]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"the fresh-process memory check at batch size {batch_size} did not finish "
                           f"in {timeout:.0f} s") from exc
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    report["seconds"] = time.perf_counter() - started
    if report.get("outcome") == "finished":
        return int(report["peak"]), report
    if report.get("outcome") == "out of memory" or completed.returncode < 0:
        return None, report
    detail = report.get("error") or completed.stderr.strip().splitlines()[-1:] or ["no report"]
    raise ProbeError(f"the fresh-process memory check at batch size {batch_size} failed: {detail}")


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - runs in the fresh process
    parser = argparse.ArgumentParser(description="peak memory of training a task in this process")
    parser.add_argument("source")
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--limit-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (args.limit_bytes, hard))
        import torch

        # The command-line trainer's own imports (typer, rich, the report's modules) hold about
        # 10 MiB of the process that trains: the fresh process carries them too.
        import batchsage.cli  # noqa: F401
        from batchsage.device import Device, is_out_of_memory
        from batchsage.probe.memory import run_training_steps
        from batchsage.task import load_task

        torch.set_num_threads(1)
        try:
            task = load_task(args.source, check=False)
            steps_peak, steps = run_training_steps(task, args.batch_size, Device(torch.device("cpu")),
                                                   _peak_resident_bytes)
            report.update(steps_peak=steps_peak, steps=steps)
            from batchsage.engine import evaluate

            evaluate(task, task.make_model())  # the validation pass every training run makes
            report.update(outcome="finished", peak=max(steps_peak, _peak_resident_bytes()))
        except BaseException as exc:
            report["outcome"] = "out of memory" if is_out_of_memory(exc) else "error"
            report["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    except BaseException as exc:
        report.update(outcome="error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
