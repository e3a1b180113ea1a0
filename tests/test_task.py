"""Loading and validating tasks: built-in names, file.py:ATTR, and one-line errors for bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tiny_tasks
import torch

from batchsage import Task, TaskError, load_task
from batchsage.tasks import BUILTIN_NAMES


def test_builtin_names_are_the_eight_tasks() -> None:
    assert set(BUILTIN_NAMES) == {
        "linreg", "digits-mlp", "fashion-mlp", "fashion-cnn", "charlm", "doclm", "fashion-bncnn", "waves-mlp"
    }


@pytest.mark.parametrize("name", ["linreg", "digits-mlp"])
def test_builtin_task_loads_and_validates(name: str) -> None:
    task = load_task(name)
    assert isinstance(task, Task)
    assert task.name == name
    assert task.num_train_samples > task.base_batch_size
    assert task.num_val_samples > 0
    assert math.isfinite(task.target)


def test_unknown_builtin_name_lists_the_known_ones() -> None:
    with pytest.raises(TaskError, match=r"unknown task 'no-such-task'.*linreg"):
        load_task("no-such-task")


def test_file_attr_that_is_a_task(fixtures_dir: Path) -> None:
    task = load_task(f"{fixtures_dir / 'tiny_tasks.py'}:TASK")
    assert task.name == "tiny"
    assert task.num_train_samples == tiny_tasks.NUM_TRAIN


def test_file_attr_that_is_a_zero_argument_function(fixtures_dir: Path) -> None:
    task = load_task(f"{fixtures_dir / 'tiny_tasks.py'}:make_task")
    assert task.name == "tiny"


def test_task_object_passes_through(tiny_task: Task) -> None:
    assert load_task(tiny_task) is tiny_task


@pytest.mark.parametrize(
    ("spec_suffix", "message"),
    [
        ("no_such_file.py:TASK", r"task file not found: .*no_such_file\.py"),
        ("tiny_tasks.py:MISSING", r"has no attribute 'MISSING'"),
        ("tiny_tasks.py:NOT_A_TASK", r"NOT_A_TASK is int, not a batchsage\.Task"),
        ("tiny_tasks.py:vector_loss_task", r"loss_fn must return a scalar tensor"),
        ("tiny_tasks.py:broken_factory", r"broken_factory\(\) failed: RuntimeError: the user's factory"),
        ("failing_import_task.py:TASK", r"importing .*failing_import_task\.py failed: ImportError"),
        ("tiny_tasks.py", r"must be path/to/file\.py:ATTR"),
    ],
)
def test_bad_task_files_raise_one_line_task_errors(fixtures_dir: Path, spec_suffix: str,
                                                   message: str) -> None:
    with pytest.raises(TaskError, match=message) as info:
        load_task(str(fixtures_dir / spec_suffix))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("base_batch_size", 0, r"base_batch_size must be a positive integer, got 0"),
        ("base_batch_size", -4, r"base_batch_size must be a positive integer"),
        ("max_samples", 1.5, r"max_samples must be a positive integer"),
        ("base_lr", 0.0, r"base_lr must be a positive number"),
        ("base_lr", -0.1, r"base_lr must be a positive number"),
        ("base_lr", math.nan, r"base_lr must be a positive number"),
        ("target", math.inf, r"target must be a finite number"),
        ("higher_is_better", 1, r"higher_is_better must be True or False"),
        ("lr_scaling", "cubic", r"lr_scaling must be"),
        ("eval_every_samples", 0, r"eval_every_samples must be a positive integer"),
        ("loss_fn", None, r"loss_fn must be callable"),
        ("name", "", r"task\.name must be a non-empty string"),
    ],
)
def test_invalid_fields_are_named(field: str, value: object, message: str) -> None:
    task = tiny_tasks.make_task(**{field: value})
    with pytest.raises(TaskError, match=message):
        task.validate()


def test_empty_dataset_is_rejected() -> None:
    empty = torch.utils.data.TensorDataset(torch.zeros(0, tiny_tasks.NUM_FEATURES), torch.zeros(0))
    with pytest.raises(TaskError, match="train_data is empty"):
        tiny_tasks.make_task(train_data=empty).validate()


def test_model_factory_that_returns_no_module_is_rejected() -> None:
    with pytest.raises(TaskError, match=r"make_model\(\) must return an nn\.Module"):
        load_task(tiny_tasks.make_task(make_model=lambda: "not a model"))


def test_reached_respects_direction_and_rejects_nan(tiny_task: Task) -> None:
    assert tiny_task.reached(tiny_task.target)
    assert tiny_task.reached(tiny_task.target + 0.01)
    assert not tiny_task.reached(tiny_task.target - 0.01)
    assert not tiny_task.reached(math.nan)
    lower = tiny_tasks.make_task(target=1.0, higher_is_better=False)
    assert lower.reached(0.5)
    assert not lower.reached(1.5)
    assert not lower.reached(-math.inf)


def test_lr_scaling_follows_the_optimiser(tiny_task: Task) -> None:
    assert tiny_task.resolved_lr_scaling() == "linear"
    adam = tiny_tasks.make_task(make_optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr))
    assert adam.resolved_lr_scaling() == "sqrt"
    forced = tiny_tasks.make_task(lr_scaling="sqrt")
    assert forced.resolved_lr_scaling() == "sqrt"


def test_eval_interval_defaults_to_a_hundredth_of_the_budget() -> None:
    task = tiny_tasks.make_task(eval_every_samples=None, max_samples=10_000, base_batch_size=16)
    assert task.eval_interval_samples() == 100
    small = tiny_tasks.make_task(eval_every_samples=None, max_samples=500, base_batch_size=16)
    assert small.eval_interval_samples() == 16
