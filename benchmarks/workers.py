"""How many workers: predicted vs measured time to target at K = 1 and K = 2 data-parallel workers.

    python benchmarks/workers.py [--task fashion-mlp] [--seeds 3] [--budget-seconds 20] \
        [--workers-budget 10] [--out benchmarks/results/workers_fashion-mlp.json]

1. ``recommend`` (one process): S(B), lr and warmup per global batch, the memory profile.
2. ``recommend_workers``: step times at one and two worker processes (interleaved, one launch),
   the AdaptDL-style step-time model, and per K the best global batch with its predicted time to
   target and worker-seconds; the recommended K by the marginal-efficiency rule.
3. For K = 1 and K = 2, each at the (global batch, lr, warmup) the plan chose for that K, train to
   the target with ``--seeds`` seeds, interleaved (K=1 seed s, K=2 seed s, ...): K = 1 in this
   process, K = 2 on two worker processes started by torch's launcher. Time to target is training
   seconds (validation excluded, as predicted), rank 0's clock for K = 2.

Reported per K: predicted vs measured seconds (median over seeds) and their ratio, and the two
factors apart: steps (S(B)) and seconds per step (t(K, b)). One torch thread per process; on this
2-core machine the two workers also compete with each other and with any other load for the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def _train_rank(source: str, batch_size: int, lr: float, accumulation: int, warmup: int,
                seed: int) -> dict[str, Any]:
    """One rank of a K-worker training run (run by torch's launcher)."""
    from batchsage.engine.distributed import launched_world, process_group, rank_device, train_data_parallel
    from batchsage.task import load_task

    torch.set_num_threads(1)
    world = launched_world()
    assert world is not None
    task = load_task(source)
    device = rank_device("cpu", world)
    with process_group(world, device):
        result = train_data_parallel(task, batch_size, lr, accumulation_steps=accumulation,
                                     warmup_steps=warmup, seed=seed, device=device)
    return result.to_dict()


def _run(workers: int, source: str, option: Any, seed: int) -> dict[str, Any]:
    from batchsage.engine import train
    from batchsage.engine.distributed import launch
    from batchsage.task import load_task

    c = option.candidate
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if workers == 1:
        result = train(load_task(source), c.batch_size, c.lr, accumulation_steps=c.accumulation_steps,
                       warmup_steps=c.warmup_steps, seed=seed, device="cpu").to_dict()
    else:
        result = launch(_train_rank, workers, source, c.batch_size, c.lr, c.accumulation_steps,
                        c.warmup_steps, seed)[0]
    result["wall_seconds"] = time.perf_counter() - started
    result["workers"] = workers
    result["load_average_1min_before"] = load
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="fashion-mlp")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-seconds", type=float, default=20.0, help="recommend's budget")
    parser.add_argument("--workers-budget", type=float, default=10.0, help="seconds of timed steps")
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from batchsage.decide import recommend
    from batchsage.decide.workers import recommend_workers, rule_text
    from batchsage.jsonio import write_json
    from batchsage.task import load_task

    torch.set_num_threads(1)
    task = load_task(args.task)
    started = time.perf_counter()
    rec = recommend(task, device="cpu", budget_seconds=args.budget_seconds, progress=False)
    decided = time.perf_counter() - started
    print(f"recommend: B={rec.batch_size}, lr {rec.lr:.4g}, predicted {rec.predicted_seconds:.1f} s "
          f"({decided:.0f} s)", flush=True)
    workers = recommend_workers(task, rec, max_workers=args.max_workers, measure_workers=2,
                                budget_seconds=args.workers_budget, device="cpu", threads=1)
    print(f"workers: K={workers.workers}, B={workers.batch_size}", flush=True)
    options = {o.workers: o for o in workers.options}
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        for k in (1, 2):
            run = _run(k, task.source or args.task, options[k], seed)
            runs.append(run)
            print(f"K={k} seed {seed}: {run['seconds_to_target']} s to target "
                  f"({run['steps_to_target']} steps), wall {run['wall_seconds']:.1f} s", flush=True)
    comparison = []
    for k in (1, 2):
        option = options[k]
        mine = [r for r in runs if r["workers"] == k]
        reached = [r for r in mine if r["reached_target"]]
        seconds = statistics.median(r["seconds_to_target"] for r in reached) if reached else None
        steps = statistics.median(r["steps_to_target"] for r in reached) if reached else None
        step_seconds = statistics.median(r["step_seconds_median"] for r in mine)
        comparison.append({
            "workers": k, "batch_size": option.candidate.batch_size,
            "per_rank_batch_size": option.per_rank_batch_size,
            "micro_batch_size": option.candidate.micro_batch_size,
            "accumulation_steps": option.candidate.accumulation_steps, "lr": option.candidate.lr,
            "warmup_steps": option.candidate.warmup_steps,
            "predicted_seconds": option.predicted_seconds,
            "measured_seconds_median": seconds,
            "ratio_predicted_to_measured": option.predicted_seconds / seconds if seconds else None,
            "predicted_steps": option.candidate.predicted_steps, "measured_steps_median": steps,
            "predicted_step_seconds": option.candidate.step_seconds,
            "measured_step_seconds_median": step_seconds,
            "reached": f"{len(reached)}/{len(mine)}",
        })
    document = {
        "benchmark": "workers", "task": task.name,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "torch": torch.__version__, "threads_per_process": 1,
        "load_average_1min_at_end": os.getloadavg()[0],
        "recommendation": {"batch_size": rec.batch_size, "lr": rec.lr, "b_noise": rec.b_noise,
                           "s_min": rec.s_min, "predicted_seconds": rec.predicted_seconds,
                           "decision_seconds": decided},
        "recommended_workers": workers.workers, "rule": rule_text(workers.min_efficiency),
        "workers": workers.to_dict(), "comparison": comparison, "runs": runs,
    }
    out = args.out or RESULTS / f"workers_{task.name}.json"
    write_json(out, document)
    for row in comparison:
        print(f"K={row['workers']}: B={row['batch_size']} ({row['per_rank_batch_size']} per worker), "
              f"predicted {row['predicted_seconds']:.2f} s, measured {row['measured_seconds_median']} s, "
              f"ratio {row['ratio_predicted_to_measured']}", flush=True)
    print(f"recommended K = {workers.workers}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
