"""The throughput probe: interleaved timed rounds within a time budget, and t(B) interpolation.

Step times on this shared machine vary wildly, so the behavioural tests use a task whose loss
sleeps a known time per step (a floor no noise can lower), and check orderings, budgets and the
bookkeeping rather than absolute speeds.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchsage import Task
from batchsage.errors import ConfigError
from batchsage.probe.throughput import (
    ThroughputCurve,
    ThroughputPoint,
    log_spaced_batch_sizes,
    probe_throughput,
)

#: The sleeping task's step: a fixed 2 ms plus 1 ms per sample (a loaded machine wakes sleepers
#: late, tens of ms at times: the contrast between sizes must be larger than that).
FIXED_SECONDS = 0.002
PER_SAMPLE_SECONDS = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _optimizer_machinery_imported() -> None:
    """The first optimiser a process builds imports torch's optimiser machinery (seconds here);
    a task loaded through ``load_task`` has done so already. Do it before any timing."""
    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)


def sleeping_task(num_samples: int = 256) -> Task:
    x = torch.randn(num_samples, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(num_samples, dtype=torch.long)

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, labels = batch
        time.sleep(FIXED_SECONDS + PER_SAMPLE_SECONDS * len(inputs))
        return nn.functional.cross_entropy(model(inputs), labels)

    return Task(
        name="sleepy",
        make_model=lambda: nn.Linear(4, 2),
        train_data=TensorDataset(x, y),
        val_data=TensorDataset(x[:8], y[:8]),
        loss_fn=loss_fn,
        make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        metric_fn=lambda model, data: 0.0,
        target=1.0,
        higher_is_better=True,
        base_batch_size=8,
        base_lr=0.1,
        max_samples=1000,
    )


def sleep_floor(batch_size: int) -> float:
    return FIXED_SECONDS + PER_SAMPLE_SECONDS * batch_size


def test_probe_times_every_size_within_the_budget_and_orders_them() -> None:
    budget = 3.0
    curve = probe_throughput(sleeping_task(), max_batch_size=64, time_budget_seconds=budget,
                             batch_sizes=[1, 8, 64])

    assert [p.batch_size for p in curve.points] == [1, 8, 64]
    assert not curve.skipped_batch_sizes
    assert curve.seconds < budget + 1.0  # a block stops at the deadline
    assert curve.rounds >= 2  # interleaved, not one block per size
    for point in curve.points:
        assert len(point.step_seconds) >= 3
        assert point.step_seconds_median >= sleep_floor(point.batch_size)
        assert point.samples_per_second == pytest.approx(point.batch_size / point.step_seconds_median)
    # 66 ms of sleep at B=64 against 3 ms at B=1: the curve must show it.
    assert curve.points[-1].step_seconds_median > 1.5 * curve.points[0].step_seconds_median
    assert curve.points[-1].samples_per_second > curve.points[0].samples_per_second


def test_a_short_budget_skips_the_largest_sizes_but_measures_the_smallest() -> None:
    # 1 ms per sample: warming up and timing B=256 alone would take over a second, far over 0.3 s.
    curve = probe_throughput(sleeping_task(num_samples=512), max_batch_size=512, time_budget_seconds=0.3)
    assert curve.points and curve.points[0].batch_size == 1
    assert 512 in curve.skipped_batch_sizes and 256 in curve.skipped_batch_sizes
    assert max(p.batch_size for p in curve.points) < min(curve.skipped_batch_sizes)
    assert curve.seconds < 1.5


def test_explicit_batch_sizes_above_the_ceiling_are_dropped() -> None:
    curve = probe_throughput(sleeping_task(), max_batch_size=40, time_budget_seconds=1.0,
                             batch_sizes=[64, 8, 32, 8, 500])
    assert sorted([p.batch_size for p in curve.points] + curve.skipped_batch_sizes) == [8, 32]


def test_the_ceiling_is_capped_at_the_data_set_size() -> None:
    curve = probe_throughput(sleeping_task(num_samples=48), max_batch_size=10_000, time_budget_seconds=0.5)
    assert curve.points[-1].batch_size == 48 or 48 in curve.skipped_batch_sizes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 16, "time_budget_seconds": 0}, "time budget"),
        ({"max_batch_size": 16, "batch_sizes": [32, 64]}, "no batch size"),
        ({"max_batch_size": 16, "batch_sizes": [0, 4]}, "positive integers"),
        ({"max_batch_size": 16, "warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        probe_throughput(sleeping_task(), **kwargs)


def test_a_real_model_is_timed_and_serialises(tiny_task: Task) -> None:
    curve = probe_throughput(tiny_task, max_batch_size=64, time_budget_seconds=1.0)
    document = json.loads(json.dumps(curve.to_dict()))
    measured = [row["batch_size"] for row in document]
    assert measured + curve.skipped_batch_sizes == [1, 2, 4, 8, 16, 32, 64]
    assert measured[0] == 1
    assert all(row["step_seconds_median"] > 0 and row["timed_steps"] >= 1 for row in document)
    assert all({"batch_size", "step_seconds_median", "samples_per_second"} <= set(row) for row in document)


# --- t(B) for the planner: interpolation and extrapolation, no timing ------------------------------


def curve_of(pairs: list[tuple[int, float]]) -> ThroughputCurve:
    return ThroughputCurve([ThroughputPoint(b, t, b / t, [t]) for b, t in pairs])


def test_step_seconds_is_exact_at_measured_points_and_log_log_between() -> None:
    curve = curve_of([(8, 0.01), (32, 0.04), (128, 0.09)])
    assert curve.step_seconds(32) == pytest.approx(0.04)
    assert curve.step_seconds(16) == pytest.approx(math.sqrt(0.01 * 0.04))  # geometric midpoint
    assert curve.step_seconds(64) == pytest.approx(math.sqrt(0.04 * 0.09))
    assert curve.samples_per_second(16) == pytest.approx(16 / math.sqrt(0.01 * 0.04))


def test_step_seconds_extrapolates_linearly_beyond_the_largest_point() -> None:
    curve = curve_of([(8, 0.01), (32, 0.04), (128, 0.10)])
    slope = (0.10 - 0.04) / (128 - 32)
    assert curve.step_seconds(512) == pytest.approx(0.10 + slope * (512 - 128))


def test_a_noisy_falling_tail_extrapolates_at_constant_throughput() -> None:
    curve = curve_of([(8, 0.01), (32, 0.05), (64, 0.04)])
    # A step never gets cheaper with the batch: the dip is pooled (0.045 at 32 and 64).
    assert curve.step_seconds(128) == pytest.approx(0.045 * 2)


def test_below_the_smallest_point_smaller_batches_are_never_slower() -> None:
    curve = curve_of([(8, 0.01), (16, 0.015), (32, 0.02)])
    assert curve.step_seconds(4) < 0.01
    assert curve.step_seconds(4) >= 0.01 * 4 / 8  # no faster than proportional
    flat = curve_of([(8, 0.02), (16, 0.01)])  # noise made B=16 faster: pooled, constant below
    assert flat.step_seconds(2) == pytest.approx(0.015)


def test_a_single_point_curve_scales_proportionally_above_and_stays_flat_below() -> None:
    curve = curve_of([(16, 0.02)])
    assert curve.step_seconds(64) == pytest.approx(0.08)
    assert curve.step_seconds(4) == pytest.approx(0.02)
    with pytest.raises(ConfigError):
        curve.step_seconds(0)


def test_log_spaced_batch_sizes() -> None:
    assert log_spaced_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert log_spaced_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert log_spaced_batch_sizes(1) == [1]
    assert log_spaced_batch_sizes(100, smallest=8) == [8, 16, 32, 64, 100]
