"""The engine's run: save, restore and fork continue exactly as the original would."""

from __future__ import annotations

import io

import pytest
import tiny_tasks
import torch
from torch import nn

from batchsage import ConfigError, Task
from batchsage.engine import Run


def dropout_task() -> Task:
    """A tiny task whose model draws random numbers every step (dropout) and uses Adam."""

    def make_model() -> nn.Module:
        return nn.Sequential(nn.Linear(tiny_tasks.NUM_FEATURES, 32), nn.ReLU(), nn.Dropout(0.3),
                             nn.Linear(32, 2))

    return tiny_tasks.make_task(make_model=make_model,
                                make_optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr))


def losses(run: Run, steps: int) -> list[float]:
    return [run.step() for _ in range(steps)]


def weights(run: Run) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.model.parameters()]


def test_a_fork_continues_exactly_as_the_original() -> None:
    run = Run(dropout_task(), 16, 0.01, seed=3)
    losses(run, 5)
    twin = run.fork()
    assert losses(twin, 7) == losses(run, 7)
    assert all(torch.equal(a, b) for a, b in zip(weights(run), weights(twin), strict=True))
    assert twin.state.step == run.state.step == 12
    assert twin.state.samples == run.state.samples


def test_a_fork_is_independent_of_the_original() -> None:
    run = Run(dropout_task(), 16, 0.01, seed=3)
    losses(run, 3)
    before = weights(run)
    twin = run.fork()
    twin.set_lr(0.1)
    twin.set_batch(32)
    losses(twin, 4)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
    assert run.batch_size == 16 and run.peak_lr == 0.01 and run.state.step == 3
    assert twin.state.samples == 3 * 16 + 4 * 32


def test_state_dict_round_trip_through_a_file_in_a_new_run() -> None:
    task = dropout_task()
    run = Run(task, 16, 0.01, seed=3)
    losses(run, 4)
    run.validate()
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    expected = losses(run, 6)

    restored = Run(task, 16, 0.5, seed=99)  # a different lr and seed: the state decides
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert restored.peak_lr == 0.01 and restored.seed == 3
    assert [p.metric for p in restored.history] == [p.metric for p in run.history]
    assert losses(restored, 6) == expected


def test_a_restored_optimiser_never_brings_back_its_own_lr() -> None:
    run = Run(tiny_tasks.make_task(), 16, 0.05)
    losses(run, 2)
    state = run.state_dict()
    run.set_lr(0.2)
    run.load_state_dict(state)
    run.set_lr(0.01)  # the lr chosen after loading is the one used
    run.step()
    assert all(group["lr"] == pytest.approx(0.01) for group in run.optimizer.param_groups)


def test_the_callers_random_state_is_untouched_by_runs_and_forks() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run = Run(dropout_task(), 16, 0.01)
    losses(run, 3)
    losses(run.fork(), 3)
    assert torch.equal(torch.rand(3), expected)


def test_state_of_another_task_is_refused() -> None:
    state = Run(tiny_tasks.make_task(), 16, 0.05).state_dict()
    other = Run(tiny_tasks.make_task(name="other"), 16, 0.05)
    with pytest.raises(ConfigError, match="task 'tiny'"):
        other.load_state_dict(state)


def test_train_until_honours_run_totals_and_resumes() -> None:
    run = Run(tiny_tasks.make_task(target=1.01), 16, 0.05, eval_every_samples=64)
    assert run.train_until(max_steps=10) == "step budget"
    assert run.state.step == 10
    assert [p.samples for p in run.history] == [64, 128]
    assert run.train_until(max_steps=20) == "step budget"
    assert run.state.step == 20
    assert [p.samples for p in run.history] == [64, 128, 192, 256, 320]
    assert run.eval_seconds > 0 and run.state.train_seconds > 0


def test_hold_weights_measures_at_one_point() -> None:
    run = Run(tiny_tasks.make_task(), 16, 0.05)
    run.hold_weights = True
    before = weights(run)
    losses(run, 3)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(run), strict=True))
