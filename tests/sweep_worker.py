"""The sweep tests' "clock" task, and a subprocess entry point that runs a sweep on a storage.

The clock task makes a sweep's outcome known in advance: its metric is the fraction of the
samples it needs that it has seen, where the need follows the McCandlish model,
``E(B) = E_min · (1 + B / B_noise)``, times a penalty for a learning rate off the linear rule;
a step sleeps ``a + c·B`` seconds. So time to target is ``S(B)·t(B)`` with a known best, and
trials last as long as a test needs, whatever the machine's load does to real compute.

    python tests/sweep_worker.py sqlite:///x.db STUDY --batch-sizes 16,64 --seeds 1 --e-min 512

``--host NAME`` makes the worker record NAME as its host, as a worker on a second machine would:
the others then cannot see whether its process lives and must rely on its Optuna heartbeat.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from batchsage import Task

BASE_BATCH_SIZE = 16
BASE_LR = 0.1


class ClockModel(nn.Module):
    def __init__(self, e_min: float, b_noise: float, step_seconds: float, per_sample_seconds: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.e_min, self.b_noise = e_min, b_noise
        self.step_seconds, self.per_sample_seconds = step_seconds, per_sample_seconds
        self.samples = 0
        self.batch_size = 1

    def needed_samples(self) -> float:
        lr = getattr(self.w, "clock_lr", BASE_LR)
        rule = BASE_LR * self.batch_size / BASE_BATCH_SIZE
        lr_penalty = 1.0 + abs(math.log2(lr / rule))
        return self.e_min * (1.0 + self.batch_size / self.b_noise) * lr_penalty


class ClockOptimizer:
    """Does nothing, like the clock model's gradient; it is not a ``torch.optim.Optimizer`` only
    because creating the first one imports ``torch._dynamo``, seconds per test subprocess."""

    def __init__(self, params: list[nn.Parameter], lr: float) -> None:
        self.param_groups = [{"params": params, "lr": lr}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.param_groups[0]["params"]:
            param.grad = None

    def step(self) -> None:
        pass


def clock_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    (x,) = batch
    assert isinstance(model, ClockModel)
    model.batch_size = int(x.shape[0])
    model.samples += model.batch_size
    time.sleep(model.step_seconds + model.per_sample_seconds * model.batch_size)
    return (model.w * x).mean()


def clock_metric(model: nn.Module, data: Dataset) -> float:
    assert isinstance(model, ClockModel)
    return model.samples / model.needed_samples()


def make_clock_task(*, e_min: float = 512, b_noise: float = 64, step_seconds: float = 0.004,
                    per_sample_seconds: float = 0.0001, name: str = "clock", **overrides: Any) -> Task:
    """Time to target S(B)·t(B) is known; at lr ≠ the linear rule it takes 1 + |log2 ratio| × longer."""

    def make_model() -> nn.Module:
        return ClockModel(e_min, b_noise, step_seconds, per_sample_seconds)

    def make_optimizer(params: Any, lr: float) -> Any:
        params = list(params)
        params[0].clock_lr = lr  # the metric reads the lr from the parameter it trains
        return ClockOptimizer(params, lr)

    fields: dict[str, Any] = {
        "name": name,
        "make_model": make_model,
        "train_data": TensorDataset(torch.zeros(4096, 1)),
        "val_data": TensorDataset(torch.zeros(8, 1)),
        "loss_fn": clock_loss,
        "make_optimizer": make_optimizer,
        "metric_fn": clock_metric,
        "target": 1.0,
        "higher_is_better": True,
        "base_batch_size": BASE_BATCH_SIZE,
        "base_lr": BASE_LR,
        "max_samples": int(e_min * 40),
        "metric_name": "progress",
        "eval_every_samples": 64,
        "lr_scaling": "linear",
    }
    fields.update(overrides)
    return Task(**fields)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("study")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--multipliers", default="1")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--e-min", type=float, default=512)
    parser.add_argument("--step-seconds", type=float, default=0.004)
    parser.add_argument("--no-prune", action="store_true")
    parser.add_argument("--first", type=int, default=None, help="run this B (at the rule's lr) first")
    parser.add_argument("--host", default=None, help="the host name this worker records for its trials")
    args = parser.parse_args(argv)
    if args.host is not None:
        import socket

        socket.gethostname = lambda: args.host  # what the sweep records as this worker's machine
    from batchsage.sweep import rule_lr, run_sweep

    task = make_clock_task(e_min=args.e_min, step_seconds=args.step_seconds)
    print("started", flush=True)
    result = run_sweep(
        task,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        lr_multipliers=[float(m) for m in args.multipliers.split(",")],
        seeds=args.seeds,
        storage=args.storage,
        study_name=args.study,
        prune=not args.no_prune,
        first=[] if args.first is None else [(args.first, rule_lr(task, args.first))],
        progress=False,
        heartbeat_seconds=1,
    )
    print(json.dumps({"ran_here": sum(t.ran_here for t in result.trials),
                      "finished": sum(t.finished for t in result.trials)}), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    # Skip the interpreter's teardown of torch (seconds on a loaded machine): everything is
    # committed to the storage and flushed by now.
    os._exit(code)
