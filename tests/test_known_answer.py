"""Known answers, end to end: tasks whose step time is set by construction, so the right batch is known.

The task is a noisy linear regression whose every step also waits a time we choose: ``t(B) =
per_step + per_sample·B`` (a busy wait, so the throughput probe measures exactly that). With the
model's S(B) = S_min·(1 + B_noise/B), time to target is T(B) = S_min·(1 + B_noise/B)·t(B):

- **compute-bound** (per_step = 0): T(B) = S_min·per_sample·(B + B_noise) grows with B whatever the
  noise scale, so the right batch is the smallest candidate. The engine's own cost per step
  (a fraction of a millisecond, more on a loaded machine) is a real per_step term, so per_sample
  is set high enough (1 ms) that a step at the smallest batch costs many times that;
- **overhead-bound** (per_sample = 0): T(B) = S_min·per_step·(1 + B_noise/B) falls with B, so the
  right batch is large — far above the smallest, up to where the gain flattens.

``recommend`` must find both, from its own measurements.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchsage import Task, recommend

FEATURES = 16
PER_SAMPLE = 1e-3
PER_STEP = 3e-3


def priced_regression(per_step: float, per_sample: float) -> Task:
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(FEATURES, generator=generator)
    x = torch.randn(8192, FEATURES, generator=generator)
    y = x @ weights + 2.0 * torch.randn(8192, generator=generator)  # noise: B_noise well above 1

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        # A busy wait, not a sleep: a sleep of a fraction of a millisecond wakes up whenever the
        # scheduler gets to it, which on a loaded machine is milliseconds late.
        deadline = time.perf_counter() + per_step + per_sample * len(batch[0])
        while time.perf_counter() < deadline:
            pass
        return F.mse_loss(model(batch[0]).squeeze(1), batch[1])

    def mse(model: nn.Module, data: Any) -> float:
        inputs, targets = data.tensors
        return float(F.mse_loss(model(inputs).squeeze(1), targets))

    return Task(
        name="priced-regression", make_model=lambda: nn.Linear(FEATURES, 1),
        train_data=TensorDataset(x[:7168], y[:7168]), val_data=TensorDataset(x[7168:], y[7168:]),
        loss_fn=loss, make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        metric_fn=mse, target=4.4, higher_is_better=False, base_batch_size=32, base_lr=0.01,
        max_samples=2_000_000, metric_name="val_mse", eval_every_samples=1024,
    )


@pytest.fixture(scope="module")
def compute_bound() -> Any:
    return recommend(priced_regression(0.0, PER_SAMPLE), device="cpu", budget_seconds=6.0,
                     progress=False)


@pytest.fixture(scope="module")
def overhead_bound() -> Any:
    return recommend(priced_regression(PER_STEP, 0.0), device="cpu", budget_seconds=6.0,
                     progress=False)


def test_compute_bound_steps_want_the_smallest_batch(compute_bound: Any) -> None:
    smallest = min(c.batch_size for c in compute_bound.candidates)
    assert compute_bound.batch_size <= 2 * smallest, compute_bound


def test_overhead_bound_steps_want_a_large_batch(compute_bound: Any, overhead_bound: Any) -> None:
    smallest = min(c.batch_size for c in overhead_bound.candidates)
    assert overhead_bound.batch_size >= 8 * smallest, overhead_bound
    assert overhead_bound.batch_size >= 4 * compute_bound.batch_size


def test_the_measured_step_time_has_the_constructed_shape(compute_bound: Any, overhead_bound: Any) -> None:
    def spread(rec: Any) -> tuple[float, float]:
        points = sorted(rec.throughput, key=lambda p: p["batch_size"])
        first, last = points[0], points[-1]
        return (last["batch_size"] / first["batch_size"],
                last["step_seconds_median"] / first["step_seconds_median"])

    sizes, compute_growth = spread(compute_bound)
    assert compute_growth > sizes / 4  # nearly proportional to B: the per-sample wait dominates
    _, overhead_growth = spread(overhead_bound)
    assert overhead_growth < compute_growth / 4  # far flatter: the per-step wait dominates
