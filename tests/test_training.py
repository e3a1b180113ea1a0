"""The one training loop: target, accumulation, warmup, timing, divergence, hooks, RNG hygiene."""

from __future__ import annotations

import time
from typing import Any

import pytest
import tiny_tasks
import torch
from torch import nn

from batchsage import ConfigError, StepUpdate, Task, TrainingHook, TrainState, train
from batchsage.data import BatchStream
from batchsage.engine import accumulate_gradients


def test_reaches_target_on_a_small_task(tiny_task: Task) -> None:
    result = train(tiny_task, 16, 0.1)
    assert result.reached_target
    assert result.stop_reason == "target"
    assert not result.diverged
    assert result.steps_to_target == result.steps
    assert result.samples_to_target == result.steps * 16
    assert 0 < result.seconds_to_target <= result.train_seconds
    assert tiny_task.reached(result.final_metric)
    assert result.history[-1].step == result.steps


def test_same_seed_same_run_different_seed_different_run(tiny_task: Task) -> None:
    first = train(tiny_task, 16, 0.05, seed=3, stop_at_target=False, max_samples=640)
    again = train(tiny_task, 16, 0.05, seed=3, stop_at_target=False, max_samples=640)
    other = train(tiny_task, 16, 0.05, seed=4, stop_at_target=False, max_samples=640)
    losses = [[point.train_loss for point in run.history] for run in (first, again, other)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_budget_exhausted_is_not_reached() -> None:
    task = tiny_tasks.make_task(target=1.01)  # accuracy can never exceed 1
    result = train(task, 32, 0.1, max_samples=640)
    assert not result.reached_target
    assert result.steps_to_target is None and result.seconds_to_target is None
    assert result.stop_reason == "budget"
    assert result.samples == 640


def test_without_stop_at_target_training_runs_to_the_budget(tiny_task: Task) -> None:
    result = train(tiny_task, 16, 0.1, stop_at_target=False, max_samples=1_200)
    assert result.reached_target
    assert result.samples >= 1_200
    assert result.steps > result.steps_to_target


def _batch(size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randn(size, 8, generator=generator), torch.randint(0, 2, (size,), generator=generator)]


@pytest.mark.parametrize(("batch_size", "parts"), [(32, 4), (30, 4), (7, 7)])
def test_accumulation_gives_the_full_batch_gradient(batch_size: int, parts: int) -> None:
    torch.manual_seed(0)
    model = tiny_tasks.make_model()
    batch = _batch(batch_size)
    loss_full = accumulate_gradients(model, batch, tiny_tasks.cross_entropy, parts=1)
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sizes: list[int] = []
    loss_split = accumulate_gradients(
        model, batch, tiny_tasks.cross_entropy, parts=parts,
        on_micro_backward=lambda index, count, size: sizes.append(size),
    )
    assert sum(sizes) == batch_size and len(sizes) == parts
    assert loss_split == pytest.approx(loss_full, abs=1e-6)
    for whole, accumulated in zip(full, model.parameters(), strict=True):
        torch.testing.assert_close(accumulated.grad, whole, atol=1e-5, rtol=1e-5)


class _GradientRecorder(TrainingHook):
    def __init__(self) -> None:
        self.first: list[torch.Tensor] | None = None

    def on_gradients(self, model: nn.Module, state: TrainState, loss: float) -> None:
        if self.first is None:
            self.first = [p.grad.clone() for p in model.parameters()]


def test_train_with_accumulation_sees_the_same_first_gradient(tiny_task: Task) -> None:
    plain, split = _GradientRecorder(), _GradientRecorder()
    train(tiny_task, 32, 0.1, max_samples=32, hooks=[plain])
    train(tiny_task, 32, 0.1, accumulation_steps=4, max_samples=32, hooks=[split])
    assert plain.first is not None and split.first is not None
    for whole, accumulated in zip(plain.first, split.first, strict=True):
        torch.testing.assert_close(accumulated, whole, atol=1e-5, rtol=1e-5)


class _Recorder(TrainingHook):
    """Records the state after every step; optionally stops or changes the batch."""

    def __init__(self, stop_at: int | None = None, grow_at: int | None = None, grow_to: int = 0) -> None:
        self.lrs: list[float] = []
        self.batch_sizes: list[int] = []
        self.samples: list[int] = []
        self.evals: list[float] = []
        self.stop_at, self.grow_at, self.grow_to = stop_at, grow_at, grow_to

    def on_step_end(self, state: TrainState) -> StepUpdate | None:
        self.lrs.append(state.lr)
        self.batch_sizes.append(state.batch_size)
        self.samples.append(state.samples)
        if state.step == self.stop_at:
            return StepUpdate(stop=True, reason="hook had enough")
        if state.step == self.grow_at:
            return StepUpdate(batch_size=self.grow_to)
        return None

    def on_eval(self, state: TrainState, metric: float) -> None:
        self.evals.append(metric)


def test_warmup_ramps_the_learning_rate_linearly(tiny_task: Task) -> None:
    recorder = _Recorder()
    peak, warmup = 0.08, 8
    train(tiny_task, 16, peak, warmup_steps=warmup, stop_at_target=False, max_samples=16 * 12,
          hooks=[recorder])
    expected = [peak * min(1.0, (step + 1) / warmup) for step in range(12)]
    assert recorder.lrs == pytest.approx(expected)
    assert recorder.lrs[0] == pytest.approx(peak / warmup)


def test_a_hook_can_stop_training(tiny_task: Task) -> None:
    recorder = _Recorder(stop_at=5)
    result = train(tiny_task, 16, 0.01, hooks=[recorder])
    assert result.steps == 5
    assert result.stop_reason == "hook had enough"
    assert not result.diverged


def test_a_hook_can_change_the_batch_size(tiny_task: Task) -> None:
    recorder = _Recorder(grow_at=3, grow_to=64)
    result = train(tiny_task, 16, 0.01, stop_at_target=False, max_samples=16 * 3 + 64 * 4,
                   hooks=[recorder])
    assert recorder.batch_sizes == [16, 16, 16, 64, 64, 64, 64]
    assert recorder.samples[-1] == result.samples == 16 * 3 + 64 * 4
    assert result.batch_size == 64


class _SlowClock:
    """``time.perf_counter`` plus a virtual offset that each validation advances.

    A real sleep on a shared 2-core machine is no reliable yardstick (a loaded step can take as
    long as the sleep), so each validation "takes" a virtual minute; counting even one of them in
    training time would be unmistakable.
    """

    VALIDATION_SECONDS = 60.0

    def __init__(self, real: Any) -> None:
        self.real, self.offset = real, 0.0

    def __call__(self) -> float:
        return self.real() + self.offset

    def slow_metric(self, model: nn.Module, data: Any) -> float:
        self.offset += self.VALIDATION_SECONDS
        return tiny_tasks.accuracy(model, data)


def test_validation_time_is_not_training_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _SlowClock(time.perf_counter)
    monkeypatch.setattr(time, "perf_counter", clock)
    task = tiny_tasks.make_task(metric_fn=clock.slow_metric, eval_every_samples=16, target=1.01)
    recorder = _Recorder()
    result = train(task, 16, 0.01, max_samples=16 * 12, hooks=[recorder])
    assert len(recorder.evals) == 12  # one validation per step, 12 virtual minutes
    assert clock.offset == 12 * _SlowClock.VALIDATION_SECONDS
    assert result.train_seconds < _SlowClock.VALIDATION_SECONDS
    assert [point.train_seconds for point in result.history] == sorted(
        point.train_seconds for point in result.history
    )


def test_seconds_to_target_excludes_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _SlowClock(time.perf_counter)
    monkeypatch.setattr(time, "perf_counter", clock)
    task = tiny_tasks.make_task(metric_fn=clock.slow_metric, eval_every_samples=16)
    result = train(task, 16, 0.1)
    assert result.reached_target
    assert clock.offset >= 2 * _SlowClock.VALIDATION_SECONDS  # several validations ran
    assert result.seconds_to_target < _SlowClock.VALIDATION_SECONDS


def test_huge_learning_rate_is_reported_as_diverged() -> None:
    task = tiny_tasks.make_task(loss_fn=tiny_tasks.squared_margin_loss)
    result = train(task, 16, 1e6)
    assert result.diverged
    assert result.stop_reason == "diverged"
    assert not result.reached_target
    assert result.steps < 100  # stopped at the first non-finite loss, not at the budget


def test_global_rng_state_is_restored(tiny_task: Task) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    train(tiny_task, 16, 0.1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)


def test_rng_state_is_restored_after_divergence() -> None:
    torch.manual_seed(99)
    before = torch.get_rng_state()
    train(tiny_tasks.make_task(loss_fn=tiny_tasks.squared_margin_loss), 16, 1e6)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch size must be a positive integer, got 0"),
        ({"batch_size": -8}, "batch size must be a positive integer"),
        ({"lr": 0.0}, "learning rate must be a positive number, got 0.0"),
        ({"lr": -0.5}, "learning rate must be a positive number"),
        ({"lr": float("nan")}, "learning rate must be a positive number"),
        ({"accumulation_steps": 0}, "accumulation steps must be a positive integer"),
        ({"accumulation_steps": 3}, "not divisible by accumulation steps 3"),
        ({"warmup_steps": -1}, "warmup steps must be a non-negative integer"),
        ({"batch_size": 10_000}, "exceeds the 512 training samples"),
    ],
)
def test_bad_run_arguments_raise_config_errors(tiny_task: Task, kwargs: dict[str, Any],
                                               message: str) -> None:
    arguments: dict[str, Any] = {"batch_size": 16, "lr": 0.1, **kwargs}
    batch_size, lr = arguments.pop("batch_size"), arguments.pop("lr")
    with pytest.raises(ConfigError, match=message):
        train(tiny_task, batch_size, lr, **arguments)


def test_time_budget_stops_training() -> None:
    task = tiny_tasks.make_task(target=1.01)
    result = train(task, 16, 0.01, max_seconds=0.05, max_samples=10_000_000)
    assert result.stop_reason == "time budget"
    assert 0.05 <= result.train_seconds < 5.0


def test_batch_stream_data_order_matches_the_run_seed(tiny_task: Task) -> None:
    """The loop draws batches from a BatchStream seeded by the run seed (reproducible order)."""
    seen: list[torch.Tensor] = []

    def recording_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(batch[0].clone())
        return tiny_tasks.cross_entropy(model, batch)

    task = tiny_tasks.make_task(loss_fn=recording_loss)
    train(task, 16, 0.01, seed=5, stop_at_target=False, max_samples=48)
    stream = BatchStream(task.train_data, seed=5)
    expected = [stream.next_batch(16)[0] for _ in range(3)]
    for got, want in zip(seen, expected, strict=True):
        assert torch.equal(got, want)
