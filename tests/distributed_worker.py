"""What the data-parallel tests run on each of their worker processes (module-level, so that
torch's launcher can start it in a spawned process)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

#: Global batch, lr and measured steps of the cross-worker noise check.
BATCH_SIZE = 64
LR = 0.2
NOISE_STEPS = 6


def noise_and_training(task_spec: str) -> dict[str, Any]:
    """On this rank: the cross-worker noise scale of the first steps (without and with accumulation),
    the loss of each step, and a data-parallel training run to the target."""
    from batchsage.device import resolve_device
    from batchsage.engine.distributed import (
        CrossWorkerNoise,
        DataParallelRun,
        launched_world,
        process_group,
        train_data_parallel,
    )
    from batchsage.task import load_task

    torch.set_num_threads(1)
    world = launched_world()
    assert world is not None
    device = resolve_device("cpu")
    task = load_task(task_spec)
    report: dict[str, Any] = {"rank": world.rank, "world_size": world.world_size}
    with process_group(world, device):
        for accumulation in (1, 2):
            noise = CrossWorkerNoise(every=1, ema=None, dataset_size=task.num_train_samples)
            run = DataParallelRun(task, BATCH_SIZE, LR, accumulation_steps=accumulation, hooks=[noise],
                                  device=device)
            for _ in range(NOISE_STEPS):
                run.step()
            report[f"noise_{accumulation}"] = [asdict(m) for m in noise.measurements]
            report[f"loss_{accumulation}"] = [loss for _, _, loss in run.step_log]
        result = train_data_parallel(task, BATCH_SIZE, LR, device=device)
        report["train"] = result.to_dict(with_history=True)
    return report
