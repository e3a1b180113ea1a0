"""``batchsage tasks`` and ``batchsage train``: output, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchsage.cli import app

runner = CliRunner()


def _train_args(task: str, *extra: str, batch_size: str = "16", lr: str = "0.1") -> list[str]:
    return ["train", "--task", task, "--batch-size", batch_size, "--lr", lr, *extra]


def _assert_one_line_error(result: object, needle: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert lines[0].startswith("error:")
    assert needle in lines[0]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_file.py:TASK", "task file not found"),
        ("tiny_tasks.py:MISSING", "has no attribute 'MISSING'"),
        ("tiny_tasks.py:NOT_A_TASK", "not a batchsage.Task"),
        ("tiny_tasks.py:vector_loss_task", "loss_fn must return a scalar tensor"),
        ("failing_import_task.py:TASK", "ImportError"),
    ],
)
def test_bad_task_is_one_line_and_exit_2(fixtures_dir: Path, spec: str, needle: str) -> None:
    result = runner.invoke(app, _train_args(str(fixtures_dir / spec)))
    _assert_one_line_error(result, needle)


def test_unknown_builtin_is_one_line_and_exit_2() -> None:
    _assert_one_line_error(runner.invoke(app, _train_args("no-such-task")), "unknown task 'no-such-task'")


@pytest.mark.parametrize(
    ("batch_size", "lr", "needle"),
    [
        ("0", "0.1", "batch size must be a positive integer, got 0"),
        ("-4", "0.1", "batch size must be a positive integer, got -4"),
        ("16", "0", "learning rate must be a positive number, got 0.0"),
        ("16", "-0.5", "learning rate must be a positive number, got -0.5"),
        ("100000", "0.1", "exceeds the 512 training samples"),
    ],
)
def test_bad_run_arguments_are_one_line_and_exit_2(tiny_task_spec: str, batch_size: str, lr: str,
                                                    needle: str) -> None:
    result = runner.invoke(app, _train_args(tiny_task_spec, batch_size=batch_size, lr=lr))
    _assert_one_line_error(result, needle)


def test_accumulation_that_does_not_divide_is_one_line(tiny_task_spec: str) -> None:
    result = runner.invoke(app, _train_args(tiny_task_spec, "--accumulation", "3"))
    _assert_one_line_error(result, "not divisible by accumulation steps 3")


def test_train_reaches_target_and_writes_json(tiny_task_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "run" / "result.json"
    result = runner.invoke(app, _train_args(tiny_task_spec, "--json", str(out), "--accumulation", "2"))
    assert result.exit_code == 0, result.output
    assert "reached target" in result.stdout
    document = json.loads(out.read_text())
    assert document["reached_target"] is True
    assert document["diverged"] is False
    assert document["task"] == "tiny"
    assert document["accumulation_steps"] == 2
    assert document["samples_to_target"] == document["steps_to_target"] * 16
    assert document["seconds_to_target"] > 0
    assert not list(out.parent.glob("*.tmp"))


def test_diverging_run_is_reported_not_a_crash(fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "diverged.json"
    spec = f"{fixtures_dir / 'tiny_tasks.py'}:SQUARED_TASK"
    result = runner.invoke(app, _train_args(spec, "--json", str(out), lr="1e6"))
    assert result.exit_code == 0, result.output
    assert "diverged" in result.stdout
    assert "Traceback" not in result.output
    document = json.loads(out.read_text())
    assert document["diverged"] is True
    assert document["reached_target"] is False
    assert document["stop_reason"] == "diverged"


def test_tasks_json_lists_every_builtin_with_its_group() -> None:
    result = runner.invoke(app, ["tasks", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == [
        "linreg", "digits-mlp", "fashion-mlp", "fashion-cnn", "charlm", "doclm", "fashion-bncnn", "waves-mlp"
    ]
    groups = {row["name"]: row["group"] for row in rows}
    assert groups["charlm"] == "development" and groups["doclm"] == groups["waves-mlp"] == "evaluation"
    for row in rows:
        if not row["available"]:  # e.g. Fashion-MNIST not installed: listed with the reason
            assert row["error"]
            continue
        assert row["train_samples"] > row["base_batch_size"] > 0
        assert row["val_samples"] > 0 and row["base_lr"] > 0 and row["max_samples"] > 0
        assert row["metric"] and row["description"]
    assert {row["name"] for row in rows if row["available"]} >= {"linreg", "digits-mlp"}


def test_tasks_table_names_each_task() -> None:
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    for name in ("linreg", "digits-mlp", "charlm", "doclm", "waves-mlp"):
        assert name in result.stdout
    assert "evaluation" in result.stdout and "development" in result.stdout


def test_console_script_reports_one_line_and_exit_2(tmp_path: Path) -> None:
    """The installed entry point, in a real process: one stderr line, exit 2, no traceback."""
    script = Path(sys.executable).with_name("batchsage")
    fallback = [sys.executable, "-c", "from batchsage.cli import main; main()"]
    command = [str(script)] if script.exists() else fallback
    completed = subprocess.run(
        [*command, *_train_args(str(tmp_path / "missing.py:TASK"))],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert completed.returncode == 2, completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert "task file not found" in completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
