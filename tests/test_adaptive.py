"""The adaptive batch controller: growth rule, lr rule, accumulation, CLI schedule, plain-loop loader."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tiny_tasks
import torch
from torch import nn
from typer.testing import CliRunner

from batchsage import ConfigError, Task, TrainingHook, TrainState, plan
from batchsage.adaptive import (
    DECISION_BUDGET,
    AdaptiveBatch,
    AdaptiveBatchLoader,
    AdaptiveBatchSampler,
    controller_for_run,
    recent_estimate,
)
from batchsage.cli import app


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: a second torch thread only waits for the first.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeMonitor(TrainingHook):
    """A noise monitor whose estimate is scripted: one measurement per step, b_simple = f(step)."""

    def __init__(self, b_simple: Callable[[int], float], relative_halfwidth: float = 0.1) -> None:
        self.b_simple = b_simple
        self.relative_halfwidth = relative_halfwidth
        self.measurements = 0

    def on_step_end(self, state: TrainState) -> None:
        self.measurements += 1

    def estimate(self) -> Any:
        value = self.b_simple(self.measurements)
        ci = (value * (1 - self.relative_halfwidth), value * (1 + self.relative_halfwidth))
        return SimpleNamespace(b_simple=value, ci95=ci)


def _drive(controller: AdaptiveBatch, steps: int) -> list[int]:
    """Call the controller as the training loop would, without training; batch size per step."""
    state = TrainState(batch_size=controller.batch_size, lr=controller.current_lr)
    sizes = []
    for _ in range(steps):
        controller.micro_batches(state, 1)
        state.step += 1
        state.train_seconds += 1.0  # deciding must stay a small share of training time
        state.samples += state.batch_size
        update = controller.on_step_end(state)
        if update is not None and update.batch_size is not None:
            state.batch_size = update.batch_size
        sizes.append(state.batch_size)
    return sizes


def test_grows_in_steps_as_the_noise_scale_grows_and_never_shrinks() -> None:
    # b_simple rises to 400 by step 40, then collapses: the batch follows it up, never down.
    def b_simple(step: int) -> float:
        return 10.0 * step if step <= 40 else 5.0

    controller = AdaptiveBatch(16, 0.1, monitor=FakeMonitor(b_simple), measurements_per_decision=2)
    sizes = _drive(controller, 80)
    assert all(later >= earlier for earlier, later in itertools.pairwise(sizes))
    grown = [entry.batch_size for entry in controller.schedule]
    assert grown == [16, 32, 64, 128, 256, 512]  # one doubling per decision, powers of two
    assert sizes[-1] == 512
    # Each change happened only once the interval's lower end was above the current batch.
    for entry, previous in zip(controller.schedule[1:], grown, strict=False):
        assert entry.b_noise_ci95 is not None
        assert entry.b_noise_ci95[0] > previous
    # ... and at the first decision where it was: the readings before each change did not grow.
    for reading in controller.readings:
        assert reading.grew == (reading.b_noise_low > reading.batch_size)


def test_lr_follows_the_recommenders_rule_with_the_current_noise_scale() -> None:
    controller = AdaptiveBatch(32, 0.05, lr_scaling="sqrt", monitor=FakeMonitor(lambda step: 500.0),
                               measurements_per_decision=1)
    _drive(controller, 3)
    for entry in controller.schedule[1:]:
        expected = plan.scaled_lr(entry.batch_size, 32, 0.05, "sqrt", entry.b_noise)
        assert entry.lr == pytest.approx(expected)
    assert controller.current_lr == pytest.approx(controller.schedule[-1].lr)
    assert controller.current_lr > 0.05


def test_wide_interval_means_no_change() -> None:
    # Point estimate 100 ≫ 16, but the interval reaches down to 0: hysteresis keeps the batch.
    monitor = FakeMonitor(lambda step: 100.0, relative_halfwidth=1.0)
    controller = AdaptiveBatch(16, 0.1, monitor=monitor, measurements_per_decision=1)
    assert _drive(controller, 20) == [16] * 20
    assert len(controller.readings) == 20
    assert not any(reading.grew for reading in controller.readings)


def test_never_grows_beyond_the_data_set() -> None:
    controller = AdaptiveBatch(64, 0.1, dataset_size=200, monitor=FakeMonitor(lambda step: 1e6),
                               measurements_per_decision=1)
    sizes = _drive(controller, 10)
    assert max(sizes) == 200
    assert [entry.batch_size for entry in controller.schedule] == [64, 128, 200]


def test_accumulation_above_the_memory_ceiling() -> None:
    controller = AdaptiveBatch(16, 0.1, max_batch_size=32, monitor=FakeMonitor(lambda step: 1e4),
                               measurements_per_decision=1)
    _drive(controller, 3)
    splits = [(e.batch_size, e.micro_batch_size, e.accumulation_steps) for e in controller.schedule]
    assert splits == [(16, 16, 1), (32, 32, 1), (64, 32, 2), (128, 32, 4)]


def test_time_rule_grows_only_where_larger_steps_are_cheap() -> None:
    noise = FakeMonitor(lambda step: 200.0)
    flat = AdaptiveBatch(16, 0.1, monitor=noise, step_seconds=lambda b: 1e-3, measurements_per_decision=1)
    proportional = AdaptiveBatch(16, 0.1, monitor=FakeMonitor(lambda step: 200.0),
                                 step_seconds=lambda b: 1e-5 * b, measurements_per_decision=1)
    assert _drive(flat, 5)[-1] > 16  # same step time, more samples per step: grow
    assert _drive(proportional, 5)[-1] == 16  # time ∝ B: a bigger batch only costs more


def test_rewarmup_ramps_the_lr_linearly_after_a_change() -> None:
    controller = AdaptiveBatch(16, 0.1, monitor=FakeMonitor(lambda step: 1e4), measurements_per_decision=1,
                               rewarmup_steps=4)
    state = TrainState(batch_size=16, lr=0.1)
    lrs = []
    for step in range(1, 5):
        controller.micro_batches(state, 1)
        state.step = step
        state.train_seconds = float(step)
        update = controller.on_step_end(state)
        lrs.append(update.lr if update is not None else None)
    target = controller.schedule[1].lr
    assert lrs == pytest.approx([0.1 + (target - 0.1) * k / 4 for k in range(1, 5)])
    assert len(controller.schedule) == 2  # no decision while ramping
    controller.micro_batches(state, 1)
    state.step = 5
    state.train_seconds = 5.0
    update = controller.on_step_end(state)  # one step ran at the ramp's end: decide again
    assert len(controller.schedule) == 3
    assert update is not None
    assert update.lr == pytest.approx(target + (controller.schedule[2].lr - target) / 4)


def test_training_loop_follows_the_schedule(tiny_task: Task) -> None:
    class Recorder(TrainingHook):
        def __init__(self) -> None:
            self.sizes: list[int] = []
            self.parts: list[int] = []
            self.lrs: list[float] = []

        def on_micro_backward(self, model: nn.Module, index: int, parts: int, batch_size: int) -> None:
            if index == 0:
                self.parts.append(parts)

        def on_step_end(self, state: TrainState) -> None:
            self.sizes.append(state.batch_size)
            self.lrs.append(state.lr)

    task = tiny_tasks.make_task(target=1.01, max_samples=2_000)  # never reached: run the whole budget
    controller = AdaptiveBatch.for_task(task, 8, 0.05, max_batch_size=16,
                                        monitor=FakeMonitor(lambda step: 8.0 * step),
                                        measurements_per_decision=3)
    recorder = Recorder()
    result = controller.train(task, hooks=[recorder])
    assert len(controller.schedule) > 2
    for entry in controller.schedule[1:]:
        if entry.step == len(recorder.sizes):
            continue  # changed after the last step
        # The step after a change runs at the new batch, split for memory, at the new lr.
        assert recorder.sizes[entry.step] == entry.batch_size
        assert recorder.parts[entry.step] == entry.accumulation_steps
        assert recorder.lrs[entry.step] == pytest.approx(entry.lr)
    assert controller.schedule[-1].accumulation_steps > 1
    assert result.batch_size == controller.batch_size


def test_real_monitor_measures_and_decides(tiny_task: Task) -> None:
    from batchsage.noise import NoiseScaleMonitor

    task = tiny_tasks.make_task(target=1.01, max_samples=4_000)

    controller = AdaptiveBatch.for_task(task, 16, 0.05, monitor=NoiseScaleMonitor(every=2),
                                        measurements_per_decision=4)
    result = controller.train(task)
    assert controller.monitor.measurements > 20
    assert len(controller.readings) >= 2
    # Deciding stays within its budget of the training time (give or take the decision that crossed it).
    slowest = max(reading.seconds for reading in controller.readings)
    assert controller.decision_seconds <= DECISION_BUDGET * result.train_seconds + slowest
    assert all(r.b_noise_low <= r.b_noise <= r.b_noise_high for r in controller.readings)
    for previous, entry in itertools.pairwise(controller.schedule):
        if entry.batch_size == previous.batch_size:  # an undone lr raise: the lr goes back, capped
            assert controller.lr_cap is not None and entry.lr == pytest.approx(controller.lr_cap)
        else:
            assert entry.batch_size == 2 * previous.batch_size


def test_cli_train_adaptive_writes_the_schedule(tmp_path: Path, tiny_task_spec: str) -> None:
    # The tiny task, not linreg: built-in tasks may be recalibrated to longer runs.
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["train", "--task", tiny_task_spec, "--adaptive", "--batch-size", "16",
                                      "--lr", "0.025", "--max-batch-size", "64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "adaptive batch" in result.output
    document = json.loads(out.read_text())
    schedule = document["schedule"]
    assert schedule[0] == {**schedule[0], "step": 0, "batch_size": 16, "lr": 0.025, "b_noise": None}
    assert all({"step", "batch_size", "lr", "b_noise"} <= set(entry) for entry in schedule)
    assert document["batch_size"] == schedule[-1]["batch_size"]


def test_cli_rejects_a_bad_ceiling_in_one_line(tiny_task_spec: str) -> None:
    result = CliRunner().invoke(app, ["train", "--task", tiny_task_spec, "--adaptive", "--batch-size", "16",
                                      "--lr", "0.1", "--max-batch-size", "0"])
    assert result.exit_code == 2
    assert "max_batch_size must be a positive integer" in result.stderr


def test_controller_for_run_takes_the_ceiling_from_accumulation(tiny_task: Task) -> None:
    controller = controller_for_run(tiny_task, 64, 0.1, accumulation_steps=4, max_batch_size=None)
    assert controller.max_batch_size == 16
    assert (controller.micro_batch_size, controller.accumulation_steps) == (16, 4)


def test_sampler_changes_batch_size_mid_epoch_without_repeating() -> None:
    controller = SimpleNamespace(batch_size=4)
    sampler = AdaptiveBatchSampler(50, controller, seed=3)
    for _epoch in range(2):
        seen: list[int] = []
        sizes = []
        for batch in sampler:
            seen += batch
            sizes.append(len(batch))
            if len(sizes) == 3:
                controller.batch_size = 16  # grows in the middle of the epoch
        assert sorted(seen) == list(range(50))  # every sample exactly once
        controller.batch_size = 4
    assert sizes[:4] == [4, 4, 4, 16]


def test_plain_loop_with_loader_backward_and_step() -> None:
    task = tiny_tasks.make_task()
    torch.manual_seed(0)
    model = task.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    controller = AdaptiveBatch(8, 0.05, max_batch_size=16, dataset_size=task.num_train_samples,
                               monitor=FakeMonitor(lambda step: 4.0 * step), measurements_per_decision=2)
    batch_sizes, losses = [], []
    for epoch in range(3):
        for batch in AdaptiveBatchLoader(task.train_data, controller, seed=epoch):
            optimizer.zero_grad()
            losses.append(controller.backward(model, batch, task.loss_fn))
            controller.step(optimizer)
            batch_sizes.append(len(batch[0]))
    assert len(controller.schedule) > 2
    assert max(batch_sizes) > 8
    # The last step ran at the lr of the last change made before it (a change after it waits).
    last_step = len(batch_sizes)
    in_force = [entry for entry in controller.schedule if entry.step < last_step][-1]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(in_force.lr)
    assert sum(losses[-3:]) < sum(losses[:3])  # it trained


def test_from_recommendation_uses_its_calibration_ceiling_and_step_times(tiny_task: Task) -> None:
    rec = SimpleNamespace(
        batch_size=32, lr=0.2, noise_scale=SimpleNamespace(calibration=0.25),
        memory={"max_batch_size": 64},
        throughput=[{"batch_size": 16, "step_seconds_median": 0.01, "samples_per_second": 1600.0},
                    {"batch_size": 64, "step_seconds_median": 0.02, "samples_per_second": 3200.0}],
    )
    controller = AdaptiveBatch.from_recommendation(rec, tiny_task, monitor=FakeMonitor(lambda step: 10.0))
    assert (controller.batch_size, controller.lr, controller.calibration) == (32, 0.2, 0.25)
    assert controller.max_batch_size == 64
    assert controller.lr_scaling == "linear"
    assert controller.step_seconds is not None
    assert controller.step_seconds(32) == pytest.approx(0.01 * 2**0.5)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"growth_factor": 1.2}, "growth_factor must be a number ≥ 1.5"),
        ({"lr_scaling": "cubic"}, "lr_scaling must be"),
        ({"calibration": 0.0}, "calibration must be a positive number"),
        ({"dataset_size": 8}, "exceeds dataset_size"),
        ({"rewarmup_steps": -1}, "rewarmup_steps must be"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs: dict[str, Any], needle: str) -> None:
    arguments: dict[str, Any] = {"batch_size": 16, "lr": 0.1, "monitor": FakeMonitor(lambda step: 1.0)}
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=needle):
        AdaptiveBatch(**arguments)


def test_recent_estimate_follows_the_latest_half_of_the_run() -> None:
    from batchsage.noise import Measurement, NoiseStatistics

    # B_simple is 10 for the first 100 steps, then 1000: the whole-run average sits in between.
    statistics = NoiseStatistics(ema=None)
    noise = torch.Generator().manual_seed(0)
    for step in range(0, 200, 2):
        b_simple = 10.0 if step < 100 else 1000.0
        grad_norm_sq = 1.0 + 0.1 * float(torch.randn(1, generator=noise))
        statistics.add(Measurement(step, grad_norm_sq, b_simple * grad_norm_sq, 32, 4.0))
    whole_run = statistics.estimate()
    assert whole_run is not None and whole_run.b_simple < 600
    estimate = recent_estimate(SimpleNamespace(statistics=statistics), 200)
    assert estimate is not None
    b_simple, (low, high) = estimate
    assert b_simple == pytest.approx(1000.0, rel=0.05)
    assert 900.0 < low <= b_simple <= high


def test_monitor_starts_measuring_only_after_the_first_steps(tiny_task: Task) -> None:
    from batchsage.adaptive import DEFAULT_MEASURE_AFTER_STEPS
    from batchsage.noise import NoiseScaleMonitor

    assert AdaptiveBatch(16, 0.1).measure_after_steps == DEFAULT_MEASURE_AFTER_STEPS > 0

    class Parts(TrainingHook):
        def __init__(self) -> None:
            self.parts: list[int] = []

        def on_micro_backward(self, model: nn.Module, index: int, parts: int, batch_size: int) -> None:
            if index == 0:
                self.parts.append(parts)

    task = tiny_tasks.make_task(target=1.01, max_samples=16 * 30)
    controller = AdaptiveBatch.for_task(task, 16, 0.05, monitor=NoiseScaleMonitor(every=1),
                                        measure_after_steps=10)
    parts = Parts()
    controller.train(task, hooks=[parts])
    assert parts.parts[:10] == [1] * 10  # plain steps: nothing measured, nothing paid
    assert set(parts.parts[10:]) == {8}
    assert controller.monitor.measurements == 20


def test_controller_for_run_probes_memory_without_a_ceiling(tiny_task: Task,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import batchsage.probe.memory as memory

    calls: list[Any] = []

    def fake_probe(task: Task, device: Any = "cpu", **kwargs: Any) -> SimpleNamespace:
        calls.append((task.name, device))
        return SimpleNamespace(max_batch_size=48)

    monkeypatch.setattr(memory, "probe_memory", fake_probe)
    controller = controller_for_run(tiny_task, 16, 0.1, device="cpu")
    assert calls == [("tiny", "cpu")]
    assert controller.max_batch_size == 48
    assert controller_for_run(tiny_task, 16, 0.1, max_batch_size=32).max_batch_size == 32
    assert len(calls) == 1  # a given ceiling is not probed


def test_an_lr_raise_that_makes_the_loss_climb_is_undone_and_the_lr_capped_while_the_batch_grows() -> None:
    monitor = FakeMonitor(lambda step: 1e4)
    controller = AdaptiveBatch(16, 0.1, monitor=monitor, measurements_per_decision=10)
    state = TrainState(batch_size=16, lr=0.1)

    def step(loss: float) -> Any:
        controller.micro_batches(state, 1)
        state.step += 1
        state.train_seconds += 1.0  # deciding must stay a small share of training time
        state.last_loss = loss
        return controller.on_step_end(state)

    for _ in range(9):
        assert step(1.0) is None
    grown = step(1.0)  # the 10th measurement: grow to 32 with a larger lr
    assert grown is not None and grown.batch_size == 32 and grown.lr > 0.1
    for loss in (1.5, 3.0, 5.0, 9.0):
        assert step(loss) is None  # fewer than GUARD_LOSSES losses since the raise: wait
    undone = step(20.0)  # median of the last five, 5.0, is above 2 × 1.0 (the largest before)
    assert undone is not None and undone.batch_size is None  # the batch stays at 32
    assert undone.lr == pytest.approx(0.1) and controller.lr_cap == pytest.approx(0.1)
    assert (controller.batch_size, controller.current_lr) == (32, pytest.approx(0.1))
    assert "capped" in controller.schedule[-1].reason
    updates = [step(1.0) for _ in range(30)]  # the noise scale still says grow: at the capped lr
    grown_again = [u for u in updates if u is not None and u.batch_size is not None]
    assert grown_again and grown_again[0].batch_size == 64
    assert all(u.lr == pytest.approx(0.1) for u in grown_again)
    assert "lr capped at 0.1" in controller.describe()


def test_a_stable_lr_raise_is_kept() -> None:
    controller = AdaptiveBatch(16, 0.1, monitor=FakeMonitor(lambda step: 1e4), measurements_per_decision=10)
    state = TrainState(batch_size=16, lr=0.1)
    for index in range(20):
        controller.micro_batches(state, 1)
        state.step += 1
        state.train_seconds += 1.0  # deciding must stay a small share of training time
        state.last_loss = 1.0 / (1 + index)  # falling loss
        controller.on_step_end(state)
    assert controller.lr_cap is None
    assert controller.current_lr > 0.1
