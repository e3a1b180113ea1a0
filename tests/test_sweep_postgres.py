"""Sweeps on PostgreSQL (Optuna's RDB storage, ``postgresql+psycopg://``), on a real server.

Every test here runs against the throwaway server of tests/pg.py (a fresh database each); the
storage-protocol tests of test_sweep.py run on it too. Nothing is mocked: the workers are real
processes, killed with a real SIGKILL, and the server is the Debian package's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from batchsage.sweep import StorageError, SweepStore, TrialKey, run_sweep
from pg import PASSWORD, PostgresServer, free_port
from sweep_worker import make_clock_task
from test_sweep import WORKER, _finished, _start_worker, _trials_by_key, _wait_for

GRID = ("--batch-sizes", "16,32,64,128", "--e-min", "1024", "--step-seconds", "0.02", "--no-prune")
KEYS = 4  # one lr (the rule's) per B, one seed
HEARTBEAT_SECONDS = 1  # the workers' (sweep_worker.py); the grace period is 4 × that
GRACE_SECONDS = 4 * HEARTBEAT_SECONDS


@pytest.mark.slow
def test_two_workers_one_killed_mid_trial_every_trial_completes_exactly_once(postgres_url: str) -> None:
    """Two workers share one study; one, on "another machine", is killed with SIGKILL mid-trial.

    The survivor cannot see the killed process (it records another host name, as a worker on a
    second machine does), so only the missing Optuna heartbeat tells it the trial is dead: it
    fails that trial once the grace period has passed, reruns its key, and the study ends with
    every (B, lr, seed) complete exactly once. Each trial lasts about a second.
    """
    url, study = postgres_url, "shared"
    # Both start at once on an empty database: they also race to create Optuna's tables.
    doomed = _start_worker(url, study, *GRID, "--host", "another-machine")
    survivor = _start_worker(url, study, *GRID)
    try:
        def doomed_trial_under_way(trials: list[optuna.trial.FrozenTrial]) -> Any:
            for trial in trials:
                worker = trial.user_attrs.get("worker") or {}
                if (trial.state == TrialState.RUNNING and worker.get("pid") == doomed.pid
                        and (datetime.now() - trial.datetime_start).total_seconds() > 0.1):
                    return trial
            assert len(_finished(trials)) < KEYS, "the survivor finished everything first"
            return None

        killed = _wait_for(doomed, url, study, doomed_trial_under_way)
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = datetime.now()
        doomed.communicate()
        stdout, stderr = survivor.communicate(timeout=120)
    finally:
        for process in (doomed, survivor):
            process.kill()
            process.communicate()
    assert doomed.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["finished"] == KEYS

    grouped = _trials_by_key(url, study)
    assert len(grouped) == KEYS
    for key, group in grouped.items():
        complete = [t for t in group if t.state == TrialState.COMPLETE]
        assert len(complete) == 1, f"{key}: {[t.state for t in group]}"
        assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in group)
    by_number = {t.number: t for group in grouped.values() for t in group}
    assert by_number[killed.number].state == TrialState.FAIL, "the killed trial is never counted"
    rerun = next(t for t in grouped[killed.user_attrs["key"]] if t.state == TrialState.COMPLETE)
    assert rerun.user_attrs["worker"]["pid"] == survivor.pid
    # Failed by its heartbeat: not before the grace period after its last beat (at most one
    # interval before the kill); a process seen dead would have been rerun within ~0.5 s.
    waited = (rerun.datetime_start - killed_at).total_seconds()
    assert waited >= GRACE_SECONDS - HEARTBEAT_SECONDS - 0.5, waited
    # Trials the killed worker finished before it died are kept; the survivor trained the rest.
    finished_by_doomed = sum(t.state == TrialState.COMPLETE and t.user_attrs["worker"]["pid"] == doomed.pid
                             for t in by_number.values())
    assert report["ran_here"] + finished_by_doomed == KEYS


def test_workers_starting_together_on_a_new_database_all_open_it(postgres_url: str) -> None:
    """Optuna creates its tables on first use without a guard (unguarded, 3 of 4 simultaneous
    openers failed with a duplicate key in pg_type): an advisory lock serialises that."""
    barrier = threading.Barrier(4)
    stores: list[SweepStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            stores.append(SweepStore(postgres_url, "together", heartbeat_seconds=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len({store.study_id for store in stores}) == 1
    key = TrialKey(16, 0.1, 0)
    claims = [store.claim([key]).claim for store in stores]
    assert sum(claim is not None for claim in claims) == 1, "one of the four runs the trial"


def test_wrong_password_and_missing_database_are_one_line_errors(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("exists")
    cases = [(postgres_server.url("exists", password="not-the-pw-x"), "password authentication failed"),
             (postgres_server.url("no_such_db"), 'database "no_such_db" does not exist')]
    for url, says in cases:
        with pytest.raises(StorageError) as info:
            SweepStore(url, "s")
        message = str(info.value)
        assert says in message and "\n" not in message, message
        assert "not-the-pw-x" not in message and PASSWORD not in message


def test_a_server_that_never_answers_times_out_with_one_line() -> None:
    """A port that accepts connections but never speaks (a hung server, a black-holing proxy)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://u:pw@127.0.0.1:{silent.getsockname()[1]}/sweeps?connect_timeout=1"
        started = time.monotonic()
        with pytest.raises(StorageError, match="connection timeout expired"):
            SweepStore(url, "s")
    assert time.monotonic() - started < 15


def test_a_server_lost_mid_sweep_ends_it_with_one_line(postgres_server: PostgresServer) -> None:
    """The database stops accepting connections while a trial trains: a StorageError line, not a
    traceback; the trial is left to its heartbeat (rerun by whoever looks after the grace period)."""
    database = "lost"
    url = postgres_server.create_database(database)
    base = make_clock_task()
    calls = {"n": 0}

    def losing_loss(model: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 10:
            postgres_server.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            postgres_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 f"WHERE datname = '{database}'")
        return base.loss_fn(model, batch)

    with pytest.raises(StorageError) as info:
        run_sweep(make_clock_task(loss_fn=losing_loss), batch_sizes=[16], lr_multipliers=(1,),
                  storage=url, study_name="s", progress=False, heartbeat_seconds=1)
    message = str(info.value)
    assert "failed during the sweep" in message and "\n" not in message, message
    assert "not currently accepting connections" in message or "terminat" in message, message
    postgres_server.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [TrialState.RUNNING]  # for the heartbeat to fail


def test_console_script_with_postgres_down_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The installed command in a real process: no traceback and no warning on stderr either."""
    url = f"postgresql+psycopg://sweeper:pw-not-shown@127.0.0.1:{free_port()}/sweeps"  # nothing listens
    script = Path(sys.executable).with_name("batchsage")
    command = [str(script)] if script.exists() else [sys.executable, "-c",
                                                      "from batchsage.cli import main; main()"]
    started = time.monotonic()
    completed = subprocess.run(
        [*command, "sweep", "--task", f"{WORKER}:make_clock_task", "--batch-sizes", "16", "--storage", url,
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("error: cannot open storage postgresql+psycopg://sweeper:***@127.0.0.1")
    assert "Connection refused" in lines[0] and "pw-not-shown" not in completed.stderr + completed.stdout
    assert time.monotonic() - started < 60
