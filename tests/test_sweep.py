"""``batchsage sweep``: grid and order, cutting trials, the doubling baseline, and the storage
protocol (exactly once across resumes, SIGKILL, Ctrl-C and two processes).

The storage-protocol tests run on SQLite and on a throwaway PostgreSQL server (``storage_url``;
see tests/pg.py); PostgreSQL-only behaviour is in test_sweep_postgres.py.

Most tests train the "clock" task of ``sweep_worker.py``, whose time to target is known in
advance (steps sleep; progress follows E(B) = E_min·(1 + B/B_noise)), so they check orderings
and decisions without depending on how fast this machine computes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from batchsage.cli import app
from batchsage.engine import TrainState
from batchsage.errors import BatchsageError, ConfigError
from batchsage.report.pareto import pareto_front, plot_pareto
from batchsage.sweep import (
    CutHook,
    StorageError,
    SweepStore,
    SweepTrial,
    TrialKey,
    best_config,
    default_batch_sizes,
    doubling_procedure,
    estimate_full_steps,
    grid_trials,
    nearest_first,
    projected_seconds_to_target,
    rule_lr,
    run_sweep,
)

sys.path.insert(0, str(Path(__file__).parent))
from sweep_worker import make_clock_task

WORKER = Path(__file__).parent / "sweep_worker.py"
runner = CliRunner()


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sweep.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return _sqlite(tmp_path)
    return str(request.getfixturevalue("postgres_url"))


def _trials_by_key(url: str, study: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    grouped: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        grouped.setdefault(trial.user_attrs["key"], []).append(trial)
    return grouped


def _finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# -- the grid and its order ----------------------------------------------------------------------


def test_grid_uses_the_lr_rule_puts_first_first_and_seed_replicates_last() -> None:
    task = make_clock_task()
    keys = grid_trials(task, [16, 64], seeds=2, first=[(32, 0.3)])
    assert keys[:2] == [TrialKey(32, 0.3, 0), TrialKey(32, 0.3, 1)]
    rest = keys[2:]
    assert len(rest) == 2 * 2 * 3 and len(set(rest)) == len(rest)
    seeds = [key.seed for key in rest]
    assert seeds == sorted(seeds), "every seed-0 trial comes before any replicate"
    # The rule's lr at the anchor B comes first; ×½ and ×2 of the rule at every B are in the grid.
    assert rest[0] == TrialKey(16, 0.1, 0)
    lrs_64 = sorted(key.lr for key in rest if key.batch_size == 64 and key.seed == 0)
    assert lrs_64 == pytest.approx([0.2, 0.4, 0.8])
    assert rule_lr(task, 64) == pytest.approx(0.4)


def test_next_trials_are_those_nearest_the_best_so_far() -> None:
    task = make_clock_task()
    keys = grid_trials(task, [16, 64, 256, 1024], seeds=2, first=[(32, 0.2)])
    multiplier = lambda b, lr: lr / rule_lr(task, b)  # noqa: E731
    assert nearest_first(keys, pinned=2, best={}, multiplier=multiplier) == keys  # nothing known yet
    best = TrialKey(256, rule_lr(task, 256), 0)
    order = nearest_first(keys, pinned=2, best={0: (1.0, best)}, multiplier=multiplier)
    assert order[:2] == keys[:2] and sorted(order, key=keys.index) == keys  # same keys, head kept
    seed0 = [key for key in order[2:] if key.seed == 0]
    assert order[2:2 + len(seed0)] == seed0, "seed 0 still comes before its replicates"
    assert seed0[0] == best
    assert {(k.batch_size, round(k.lr / rule_lr(task, k.batch_size), 3)) for k in seed0[1:5]} == {
        (256, 0.5), (256, 2.0), (64, 1.0), (1024, 1.0)}  # one step away, in B or in lr
    assert seed0[-1].batch_size == 16  # the farthest
    replicates = order[2 + len(seed0):]
    assert replicates[0] == TrialKey(256, best.lr, 1)  # seed 1 starts from seed 0's best


def test_grid_with_given_lrs_and_errors() -> None:
    task = make_clock_task()
    keys = grid_trials(task, [16, 32], lrs=[0.05, 0.2])
    assert {(k.batch_size, k.lr) for k in keys} == {(16, 0.05), (16, 0.2), (32, 0.05), (32, 0.2)}
    with pytest.raises(ConfigError, match="exceeds the 4096 training samples"):
        grid_trials(task, [16, 8192])
    with pytest.raises(ConfigError, match="positive integers"):
        grid_trials(task, [0])
    with pytest.raises(ConfigError, match="learning rates must be positive"):
        grid_trials(task, [16], lrs=[-1.0])
    with pytest.raises(ConfigError, match="seeds"):
        grid_trials(task, [16], seeds=0)
    assert default_batch_sizes(300) == [16, 32, 64, 128, 256]
    assert default_batch_sizes(10) == [10]


# -- cutting trials ------------------------------------------------------------------------------


def _state(seconds: float) -> TrainState:
    return TrainState(step=1, samples=16, train_seconds=seconds)


def test_cut_hook_prunes_at_the_best_time_and_censors_past_the_factor() -> None:
    pruning = CutHook(lambda: 1.0, target=1.0, higher_is_better=True, prune=True)
    assert pruning.on_step_end(_state(0.5)) is None  # no validations yet: no rung can cut
    update = pruning.on_step_end(_state(1.0))
    assert update is not None and update.stop and pruning.state_label == "pruned"

    censoring = CutHook(lambda: 1.0, target=1.0, higher_is_better=True, prune=False, censor_factor=3.0)
    assert censoring.on_step_end(_state(2.9)) is None  # could still be slower but useful: kept
    update = censoring.on_step_end(_state(3.1))
    assert update is not None and update.stop and censoring.state_label == "censored"

    neither = CutHook(lambda: 1.0, target=1.0, higher_is_better=True, prune=False)
    assert neither.on_step_end(_state(100.0)) is None
    no_best_yet = CutHook(lambda: None, target=1.0, higher_is_better=True)
    assert no_best_yet.on_step_end(_state(100.0)) is None


def test_rungs_cut_only_trials_that_cannot_win_even_at_their_fastest_pace() -> None:
    # Loss-like metric (lower is better), target 0.1, best time so far 10 s.
    slow = [(0.0, 1.0), (1.0, 0.95), (2.0, 0.9), (3.4, 0.86)]  # 0.05/s at best: needs ~15 s more
    fast_then_flat = [(0.0, 1.0), (1.0, 0.5), (2.0, 0.45), (3.4, 0.44)]  # 0.5/s once: ~0.7 s more
    assert projected_seconds_to_target(slow, 3.4, 0.1, False) > 10.0
    assert projected_seconds_to_target(fast_then_flat, 3.4, 0.1, False) < 10.0
    assert projected_seconds_to_target(slow[:2], 1.0, 0.1, False) is None  # too few points

    def hook_with(history: list[tuple[float, float]]) -> CutHook:
        hook = CutHook(lambda: 10.0, target=0.1, higher_is_better=False, prune=True)
        for seconds, metric in history:
            hook.on_eval(_state(seconds), metric)
        return hook

    slow_hook = hook_with(slow)
    update = slow_hook.on_step_end(_state(3.4))  # past the rung at 10/3 s
    assert update is not None and update.stop and "rung" in update.reason
    assert hook_with(fast_then_flat).on_step_end(_state(3.4)) is None


def test_full_cost_estimate_extrapolates_the_trend_and_claims_nothing_without_one() -> None:
    linear = [(10, 0.1), (20, 0.2), (30, 0.3), (40, 0.4)]  # reaches 1.0 at step 100
    assert estimate_full_steps(linear, 40, 1000, 1.0, True) == 100
    assert estimate_full_steps(linear, 40, 60, 1.0, True) == 60  # capped at the budget
    noisy_near_target = [(10, 0.6), (20, 0.7), (30, 0.8), (40, 0.78)]  # later half: no progress
    assert 40 < estimate_full_steps(noisy_near_target, 40, 1000, 0.96, True) < 100  # whole-run trend
    flat = [(10, 0.5), (20, 0.5), (30, 0.5)]
    assert estimate_full_steps(flat, 30, 1000, 1.0, True) == 30  # no line to draw: no saving claimed
    exploding = [(10, 1.0), (20, 5.0), (30, 1e6)]  # a loss (lower is better) running away
    assert estimate_full_steps(exploding, 30, 1000, 0.1, False) == 30  # would diverge: no saving
    assert estimate_full_steps(linear[:2], 20, 1000, 1.0, True) == 20  # unknown: no saving claimed


# -- choosing ------------------------------------------------------------------------------------


def _trial(batch_size: int, seconds: float | None, *, seed: int = 0, lr: float = 0.1,
           metric: float = 0.5, state: str = "complete") -> SweepTrial:
    return SweepTrial(batch_size, lr, seed, state, reached_target=seconds is not None,
                      seconds_to_target=seconds, final_metric=metric,
                      train_seconds=seconds if seconds is not None else 1.0)


def test_doubling_doubles_while_time_to_target_improves_and_keeps_the_best() -> None:
    times = {32: 10.0, 64: 6.0, 128: 7.0, 256: 1.0}
    ran: list[int] = []

    def run_batch(batch_size: int) -> list[SweepTrial]:
        ran.append(batch_size)
        return [_trial(batch_size, times[batch_size])]

    steps, best = doubling_procedure(run_batch, start=32, ceiling=256, higher_is_better=True)
    assert ran == [32, 64, 128] and best == 64  # stops at the first non-improvement
    assert [s.improved for s in steps] == [True, True, False]

    # Not reached → reached is an improvement; the ceiling ends the walk.
    outcomes = {32: _trial(32, None, metric=0.8), 64: _trial(64, 5.0), 128: _trial(128, 4.0)}
    steps, best = doubling_procedure(lambda b: [outcomes[b]], start=32, ceiling=128, higher_is_better=True)
    assert [s.batch_size for s in steps] == [32, 64, 128] and best == 128
    # Neither reached: the better final metric (loss: lower) wins.
    losses = {32: _trial(32, None, metric=0.9), 64: _trial(64, None, metric=0.95)}
    steps, best = doubling_procedure(lambda b: [losses[b]], start=32, ceiling=64, higher_is_better=False)
    assert best == 32


def test_best_config_takes_the_median_over_seeds() -> None:
    trials = [
        _trial(32, 1.0, seed=0), _trial(32, 9.0, seed=1), _trial(32, 8.0, seed=2),  # median 8
        _trial(64, 3.0, seed=0), _trial(64, 4.0, seed=1), _trial(64, 5.0, seed=2),  # median 4
        _trial(128, None, seed=0),
    ]
    best = best_config(trials)
    assert best is not None and best["batch_size"] == 64 and best["seconds_to_target"] == 4.0
    assert best_config([_trial(16, None)]) is None


def test_pareto_front_keeps_points_no_other_beats_on_both_axes(tmp_path: Path) -> None:
    points = [{"x": 1.0, "y": 0.5}, {"x": 2.0, "y": 0.3}, {"x": 3.0, "y": 0.4}, {"x": 4.0, "y": 0.1}]
    assert pareto_front(points, higher_is_better=False) == [(1.0, 0.5), (2.0, 0.3), (4.0, 0.1)]
    assert pareto_front(points, higher_is_better=True) == [(1.0, 0.5)]
    empty = plot_pareto({"task": "t", "trials": [], "metric": {"name": "m"}}, tmp_path / "p.png")
    assert empty.stat().st_size > 0  # a sweep with nothing finished still gets its plot


# -- whole sweeps, in memory ---------------------------------------------------------------------


def test_sweep_finds_the_known_best_and_cuts_only_slower_trials(tmp_path: Path) -> None:
    task = make_clock_task()
    result = run_sweep(task, batch_sizes=[16, 64, 256], progress=False, out_dir=tmp_path)
    assert len(result.trials) == 9 and all(t.finished for t in result.trials)
    # Known by construction: S(B)·t(B) is least at B=64 with the rule's lr.
    assert result.best is not None
    assert (result.best["batch_size"], result.best["lr"]) == (64, pytest.approx(rule_lr(task, 64)))
    best = result.best["seconds_to_target"]
    cut = [t for t in result.trials if t.state == "pruned"]
    assert cut, "slower trials are cut"
    for trial in cut:
        assert not trial.reached_target
        if "rung" not in trial.stop_reason:
            assert trial.train_seconds >= best  # it had already trained longer than the best
    assert 0.0 < result.saved_fraction < 1.0
    assert result.spent_train_seconds < result.estimated_full_train_seconds

    document = json.loads((tmp_path / "sweep.json").read_text())
    assert set(document) >= {"task", "trials", "best", "saved_fraction"}
    assert set(document["best"]) >= {"batch_size", "lr", "seconds_to_target"}
    assert set(document["trials"][0]) >= {
        "batch_size", "lr", "seed", "state", "reached_target", "seconds_to_target", "steps_to_target",
        "final_metric", "diverged",
    }
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_censor_mode_cuts_nothing_that_could_be_best() -> None:
    # lr × 1/8 needs 4× the samples: ~4× the best time; the rule's lr is within 1.5× of it.
    result = run_sweep(make_clock_task(), batch_sizes=[64, 16], lr_multipliers=(1.0, 0.125),
                       prune=False, censor_factor=3.0, progress=False)
    def trial(batch_size: int, lr: float) -> SweepTrial:
        return next(t for t in result.trials if t.batch_size == batch_size and t.lr == pytest.approx(lr))

    best = result.best["seconds_to_target"]  # type: ignore[index]
    assert trial(64, 0.4).state == trial(16, 0.1).state == "complete"
    for cut in (trial(64, 0.05), trial(16, 0.0125)):
        assert cut.state == "censored" and cut.train_seconds > 3.0 * best
    assert all(t.state != "pruned" for t in result.trials)


def test_doubling_procedure_on_a_task() -> None:
    task = make_clock_task()
    result = run_sweep(task, procedure="doubling", max_batch_size=256, progress=False)
    sizes = [step["batch_size"] for step in result.doubling["steps"]]  # type: ignore[index]
    assert sizes[0] == 32 and sizes == [32 * 2**i for i in range(len(sizes))]
    assert all(t.state == "complete" for t in result.trials), "the baseline never cuts a trial"
    assert result.best is not None and result.best["batch_size"] in sizes
    assert result.saved_fraction == 0.0


# -- the storage: errors, resume, interrupt, kill, two processes ----------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Storage URLs that cannot be opened, and what the one-line error says about each.
BAD_STORAGES = [
    ("sqlite:////nonexistent/dir/x.db", "does not exist"),
    ("not a url", "expected a URL"),
    ("sqlite:///" + os.sep, "cannot open storage"),
    # A PostgreSQL that is down (nothing listens on the port), with a password not to show.
    (f"postgresql+psycopg://u:hunter2pw@127.0.0.1:{_closed_port()}/sweeps", "Connection refused"),
    ("postgresql+psycopg://u:hunter2pw@db.example:notaport/sweeps", "not a database URL"),
    ("nosuchdialect://host/sweeps", "nosuchdialect"),
    ("postgresql+nosuchdriver://u@127.0.0.1/sweeps", "nosuchdriver"),
]


@pytest.mark.parametrize(("url", "says"), BAD_STORAGES)
def test_storage_that_cannot_be_opened_is_a_one_line_error(url: str, says: str) -> None:
    with pytest.raises(StorageError) as info:
        run_sweep(make_clock_task(), batch_sizes=[16], storage=url, progress=False)
    message = str(info.value)
    assert isinstance(info.value, BatchsageError) and "\n" not in message
    assert says in message and "hunter2pw" not in message


@pytest.mark.parametrize(("url", "says"), BAD_STORAGES[:1] + BAD_STORAGES[3:])
def test_cli_storage_error_is_one_line_with_exit_2(url: str, says: str) -> None:
    spec = f"{WORKER}:make_clock_task"
    result = runner.invoke(app, ["sweep", "--task", spec, "--batch-sizes", "16", "--storage", url])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage"), result.stderr
    assert says in lines[0] and "hunter2pw" not in result.stderr + result.stdout


def test_cli_heartbeat_must_be_a_positive_integer() -> None:
    spec = f"{WORKER}:make_clock_task"
    result = runner.invoke(app, ["sweep", "--task", spec, "--batch-sizes", "16", "--heartbeat-seconds", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: heartbeat_seconds must be a positive integer, got 0"


def test_rerun_reuses_finished_trials_and_refuses_another_task(storage_url: str) -> None:
    url = storage_url
    first = run_sweep(make_clock_task(), batch_sizes=[16, 64], lr_multipliers=(1,), storage=url,
                      study_name="s", progress=False)
    again = run_sweep(make_clock_task(), batch_sizes=[16, 64], lr_multipliers=(1,), storage=url,
                      study_name="s", progress=False)
    assert sum(t.ran_here for t in first.trials) == 2 and sum(t.ran_here for t in again.trials) == 0
    assert [t.number for t in again.trials] == [t.number for t in first.trials]
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 2
    with pytest.raises(ConfigError, match="was made for target"):
        run_sweep(make_clock_task(target=0.5), batch_sizes=[16], storage=url, study_name="s",
                  progress=False)


def test_ctrl_c_leaves_the_storage_consistent_and_the_rerun_completes(storage_url: str) -> None:
    url = storage_url
    calls = {"n": 0}
    base = make_clock_task()

    def interrupting_loss(model: Any, batch: Any) -> Any:
        calls["n"] += 1
        # Call 1 checks the task on load, B=16 takes the next 40 steps, B=64 the 16 after them.
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return base.loss_fn(model, batch)

    grid: dict[str, Any] = {"batch_sizes": [64, 16], "lr_multipliers": (1,), "storage": url,
                            "study_name": "s", "progress": False, "prune": False}
    with pytest.raises(KeyboardInterrupt):
        run_sweep(make_clock_task(loss_fn=interrupting_loss), **grid)
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]  # nothing left RUNNING
    result = run_sweep(make_clock_task(), **grid)
    assert all(t.finished for t in result.trials) and sum(t.ran_here for t in result.trials) == 1
    assert all(len(_finished(group)) == 1 for group in _trials_by_key(url, "s").values())


def test_stale_trials_of_silent_processes_are_failed_and_rerun(storage_url: str) -> None:
    """The heartbeat path: RUNNING trials whose process (on another host) stopped beating, or
    died while claiming, before it wrote who runs the trial."""
    url = storage_url
    keys = [TrialKey(16, 0.1, 0), TrialKey(32, 0.2, 0)]
    elsewhere = SweepStore(url, "s", heartbeat_seconds=1, grace_seconds=2)
    beating = elsewhere.claim(keys).claim
    unnamed = elsewhere.claim(keys).claim
    assert beating is not None and unnamed is not None
    elsewhere.storage.set_trial_user_attr(beating.trial_id, "worker",
                                          {"host": "another-host", "pid": 1, "started": 0.0})
    elsewhere.storage.set_trial_user_attr(unnamed.trial_id, "worker", None)
    here = SweepStore(url, "s", heartbeat_seconds=1, grace_seconds=2)
    assert here.claim(keys) == (None, 2, 0)  # within the grace period: running elsewhere
    time.sleep(3.0)
    rerun = here.claim(keys).claim
    assert rerun is not None and rerun.key == keys[0] and rerun.number not in (0, 1)
    states = {t.number: t.state for t in here.trials()}
    assert states[beating.number] == states[unnamed.number] == TrialState.FAIL
    assert sorted(key_of_trial for key_of_trial in _trials_by_key(url, "s")) == sorted(k.id for k in keys)


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_runs_every_trial_exactly_once(tmp_path: Path) -> None:
    url, study = _sqlite(tmp_path), "killed"
    # B=64 first (~0.4 s), then B=16 (~3 s at 20 ms a step): killed while B=16 runs.
    process = _start_worker(url, study, "--batch-sizes", "16,64", "--first", "64", "--e-min", "1024",
                            "--step-seconds", "0.02", "--no-prune")
    try:
        finished_before = _wait_for(process, url, study, lambda trials: {
            t.number for t in trials if t.state == TrialState.COMPLETE
        } if any(t.state == TrialState.RUNNING for t in trials) and len(trials) == 2 else None)
        time.sleep(0.3)  # well inside the ~3 s trial
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    task = make_clock_task(e_min=1024, step_seconds=0.02)
    result = run_sweep(task, batch_sizes=[16, 64], lr_multipliers=(1,), first=[(64, rule_lr(task, 64))],
                       storage=url, study_name=study, prune=False, progress=False, heartbeat_seconds=1)
    assert all(t.finished for t in result.trials)
    assert sum(t.ran_here for t in result.trials) == 1  # only the killed trial ran again
    grouped = _trials_by_key(url, study)
    assert all(len(_finished(group)) == 1 for group in grouped.values())
    assert [t.state for t in grouped[TrialKey(16, 0.1, 0).id]] == [TrialState.FAIL, TrialState.COMPLETE]
    finished_now = {t.number for group in grouped.values() for t in _finished(group)}
    assert finished_before and finished_before <= finished_now, "nothing finished is lost"


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study_without_repeating_a_trial(tmp_path: Path) -> None:
    """A worker subprocess and this test process sweep the same SQLite study at the same time."""
    url, study = _sqlite(tmp_path), "shared"
    grid = ("--batch-sizes", "16,32,64,128", "--multipliers", "0.5,1,2", "--no-prune")
    process = _start_worker(url, study, *grid)
    try:
        # Join once the worker is busy, so that both processes claim from the same queue.
        _wait_for(process, url, study, lambda trials: any(t.state == TrialState.RUNNING for t in trials))
        here = run_sweep(make_clock_task(), batch_sizes=[16, 32, 64, 128], lr_multipliers=(0.5, 1, 2),
                         prune=False, storage=url, study_name=study, progress=False, heartbeat_seconds=1)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    there = json.loads(stdout.strip().splitlines()[-1])
    ran_here = sum(t.ran_here for t in here.trials)
    assert there["finished"] == 12 and all(t.finished for t in here.trials)
    assert ran_here >= 1 and there["ran_here"] >= 1, "both processes took trials"
    assert ran_here + there["ran_here"] == 12, "each trial was trained by exactly one process"
    grouped = _trials_by_key(url, study)
    assert len(grouped) == 12
    assert all(len(group) == 1 and _finished(group) for group in grouped.values())


def _start_worker(url: str, study: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(WORKER), url, study, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(process: subprocess.Popen[str], url: str, study: str,
              condition: Callable[[list[optuna.trial.FrozenTrial]], Any]) -> Any:
    """Poll the study until ``condition(trials)`` is truthy; return that value."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
        except Exception:  # the worker has not created the study yet
            trials = []
        value = condition(trials)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("the worker subprocess never got there")


# -- the command line ----------------------------------------------------------------------------


def test_cli_sweep_around_a_recommendation(tmp_path: Path) -> None:
    (tmp_path / "recommendation.json").write_text(json.dumps({"recommended": {"batch_size": 64, "lr": 0.3}}))
    spec = f"{WORKER}:make_clock_task"
    result = runner.invoke(app, ["sweep", "--task", spec, "--around-recommendation", "--lr-multipliers", "1",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "sweep.json").read_text())
    configs = [(t["batch_size"], t["lr"]) for t in document["trials"]]
    assert configs[0] == (64, 0.3)  # the recommendation runs first
    assert {b for b, _ in configs} == {32, 64, 128}
    assert dict(configs)[128] == pytest.approx(0.6)  # the lr rule, anchored at the recommendation
    assert "best:" in result.output and (tmp_path / "pareto.png").exists()

    missing = runner.invoke(app, ["sweep", "--task", spec, "--around-recommendation",
                                  "--recommendation", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "recommendation file not found" in missing.stderr
    assert math.isfinite(document["saved_fraction"])
