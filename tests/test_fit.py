"""``fit``: decide while training — races of forks, outputs, checkpoints, resume after SIGKILL, Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_tasks
import torch
from typer.testing import CliRunner

from batchsage.cli import app
from batchsage.engine import Run
from batchsage.live import FitOptions, FitResult, fit
from batchsage.live.checkpoint import CHECKPOINT_NAME, load_checkpoint
from batchsage.live.race import Branch, Judge, race

FIXTURES = Path(__file__).parent / "fixtures"
NOISY_SPEC = f"{FIXTURES / 'tiny_tasks.py'}:noisy_task"
SLOW_SPEC = f"{FIXTURES / 'tiny_tasks.py'}:slow_task"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FitResult, Path]:
    out = tmp_path_factory.mktemp("fit")
    torch.set_num_threads(1)
    return fit(tiny_tasks.noisy_task(), device="cpu", out=out, progress=False), out


def test_fit_reaches_the_target_from_the_tasks_base(fitted: tuple[FitResult, Path]) -> None:
    result, _ = fitted
    task = tiny_tasks.noisy_task()
    assert result.reached_target and result.stop_reason == "target"
    assert task.reached(result.final_metric)
    assert result.schedule[0]["batch_size"] == task.base_batch_size
    assert result.schedule[0]["lr"] == task.base_lr
    assert result.device == "cpu"


def test_fit_races_forks_and_accounts_for_every_second(fitted: tuple[FitResult, Path]) -> None:
    result, _ = fitted
    assert result.races, "the run should have raced at least once"
    times = result.times
    assert times.discarded_fork_seconds > 0
    assert times.end_to_end_seconds == pytest.approx(
        times.kept_train_seconds + times.discarded_fork_seconds + times.race_validation_seconds
        + times.fork_seconds + times.probe_seconds)
    for record in result.races:
        winners = [o for o in record["outcomes"] if o["won"]]
        assert len(winners) == 1 and winners[0]["role"] == record["winner"]
    # Every change of the schedule after the start is a race won.
    assert all(s["reason"].startswith("round race: ") for s in result.schedule[1:])


def test_fit_writes_json_and_a_model_plain_pytorch_loads(fitted: tuple[FitResult, Path]) -> None:
    result, out = fitted
    document = json.loads((out / "fit.json").read_text())
    assert document["schema_version"] == 1
    assert document["reached_target"] and document["times"]["end_to_end_seconds"] > 0
    model = tiny_tasks.noisy_task().make_model()
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    task = tiny_tasks.noisy_task()
    model.eval()
    with torch.no_grad():
        assert task.reached(task.metric_fn(model, task.val_data)) or math.isclose(
            task.metric_fn(model, task.val_data), result.final_metric)


def test_a_clearly_faster_challenger_wins_and_a_diverging_one_loses() -> None:
    task = tiny_tasks.noisy_task()
    live = Run(task, 16, 0.0005, seed=0)
    for _ in range(64):
        live.step()
    judge = Judge(task, live.model, torch.device("cpu"))

    def configure(run: Run, branch: Branch) -> None:
        run.set_batch(branch.batch_size)
        run.set_lr(branch.lr)

    winner, record = race(live, [Branch("fast", 16, 0.01), Branch("huge", 16, 1e6)], 1024, "lr",
                          configure=configure, judge=judge, loss_rate=1e-3)
    outcomes = {o.role: o for o in record.outcomes}
    assert record.winner == "fast" and winner.peak_lr == 0.01
    assert outcomes["huge"].diverged and not outcomes["huge"].won
    assert outcomes["fast"].advantage_seconds > 2 * outcomes["fast"].advantage_se
    # The winner continues from the race's end: the live run's samples plus the stretch.
    assert winner.state.samples == 64 * 16 + record.stretches * record.stretch_samples


def test_a_pinned_run_never_races() -> None:
    result = fit(tiny_tasks.noisy_task(), device="cpu", options=FitOptions(decide=False), progress=False)
    assert result.races == [] and len(result.schedule) == 1
    assert result.times.discarded_fork_seconds == 0


def _fit_process(out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "batchsage", "--threads", "1", "fit", "--task", SLOW_SPEC,
               "--device", "cpu", "--out", str(out), "--checkpoint-seconds", "0.2", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})


def _wait_for(path: Path, process: subprocess.Popen[str], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"the run ended before writing {path.name}: {process.stdout.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"no {path.name} after {seconds} s"
        time.sleep(0.05)


def test_killed_with_sigkill_the_same_command_with_resume_reaches_the_target(tmp_path: Path) -> None:
    first = _fit_process(tmp_path)
    _wait_for(tmp_path / CHECKPOINT_NAME, first)
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    run_state, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME, tiny_tasks.slow_task())
    assert run_state["state"]["step"] > 0
    second = _fit_process(tmp_path, "--resume")
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    document = json.loads((tmp_path / "fit.json").read_text())
    assert document["reached_target"] and document["resumed"] == 1
    assert document["steps"] >= run_state["state"]["step"]


def test_ctrl_c_stops_at_a_step_boundary_with_a_loadable_checkpoint(tmp_path: Path) -> None:
    process = _fit_process(tmp_path)
    _wait_for(tmp_path / CHECKPOINT_NAME, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run reached its target before the interrupt arrived")
    assert process.returncode == 130, output
    assert "--resume" in output
    run_state, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME, tiny_tasks.slow_task())
    assert json.loads((tmp_path / "fit.json").read_text())["stop_reason"] == "interrupted"
    assert run_state["state"]["step"] > 0


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["fit", "--task", NOISY_SPEC, "--out", str(tmp_path), "--resume"])
    assert missing.exit_code == 2 and "no checkpoint to resume" in missing.output
    unknown = runner.invoke(app, ["fit", "--task", "no-such-task", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown task" in unknown.output
    assert "Traceback" not in missing.output + unknown.output
