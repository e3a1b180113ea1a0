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


def _contender(branch: Branch, advantage: float, se: float) -> object:
    from batchsage.live.race import BranchOutcome, _Contender

    outcome = BranchOutcome(branch.role, branch.batch_size, branch.lr, 1, steps=10, samples=160,
                            train_seconds=1.0, cooled_loss=1.0, diverged=False,
                            advantage_seconds=advantage, advantage_se=se)
    return _Contender(branch, run=None, start_step=0, start_samples=0, outcome=outcome)  # type: ignore[arg-type]


@pytest.mark.parametrize(("advantage", "on_doubt"), [(0.5, True), (-0.5, True), (3.0, False)])
def test_a_favoured_raise_not_clearly_ahead_wins_on_doubt(advantage: float, on_doubt: bool) -> None:
    from batchsage.live.race import RaceRecord, _conclude

    record = RaceRecord("round", 0, 0, 1.0, 160, loss_rate=0.1)
    incumbent = _contender(Branch("incumbent", 16, 0.01), 0.0, 0.0)
    raise_ = _contender(Branch("lr×2", 16, 0.02, favoured=True), advantage, se=1.0)
    _conclude(record, [incumbent, raise_])  # type: ignore[list-item]
    assert record.winner == "lr×2" and record.won_on_doubt is on_doubt


def test_a_raise_won_on_doubt_is_raced_against_the_lr_it_left_at_the_next_decision() -> None:
    from batchsage.device import resolve_device
    from batchsage.live.controller import _Controller
    from batchsage.live.race import RaceRecord

    controller = _Controller(tiny_tasks.noisy_task(), resolve_device("cpu"), seed=0, out=None,
                               memory_budget_bytes=None, options=FitOptions(), console=None)
    live = controller.live
    live.set_lr(0.02)
    controller.decisions.append({})  # inside the first decision
    controller.doubt = {"lr": 0.02, "decision": len(controller.decisions)}
    roles = [b.role for b in controller._challengers()]
    assert "lr×2" in roles and "lr÷2" not in roles  # the same decision: only its transient would show
    controller.decisions.append({})  # the next decision
    challengers = controller._challengers()
    halved = [b for b in challengers if b.role == "lr÷2"]
    assert len(halved) == 1 and halved[0].lr == pytest.approx(0.01) and not halved[0].favoured
    assert not any(b.role.startswith("lr×") for b in challengers)  # instead of raising again
    # A race that tried it settles the doubt, whoever won.
    record = RaceRecord("round", 0, 0, 1.0, 160)
    controller._settle_doubt(record, live, halved)
    assert controller.doubt is None


def test_on_a_plateau_the_lr_branch_halves_the_lr() -> None:
    from batchsage.device import resolve_device
    from batchsage.live.controller import _Controller

    controller = _Controller(tiny_tasks.noisy_task(), resolve_device("cpu"), seed=0, out=None,
                             memory_budget_bytes=None, options=FitOptions(), console=None)
    controller.val_loss_log = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]  # falling
    assert [b.role for b in controller._challengers()][0] == "lr×2"
    controller.val_loss_log = [(1.0, 2.0), (2.0, 1.99), (3.0, 2.01)]  # flat
    assert [b.role for b in controller._challengers()][0] == "lr÷2"
    # The first race surveys upwards whatever the trend: the run is young.
    assert [b.role for b in controller._challengers(lr_rungs=3)][:3] == ["lr×2", "lr×4", "lr×8"]
