"""Data-parallel training: sharding, the engine on a process group, the cross-worker noise scale
(against the one-process two-batch estimator on the same split), and the CLI under ``--nproc`` and
torchrun, with one-line errors for world sizes that do not fit the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

import distributed_worker
from batchsage.cli import app
from batchsage.data import BatchStream
from batchsage.engine import Run, train
from batchsage.engine.distributed import (
    CrossWorkerNoise,
    DataParallelRun,
    ShardedBatchStream,
    World,
    check_world_size,
    launch,
    launched_world,
)
from batchsage.errors import ConfigError
from batchsage.noise import NoiseScaleMonitor

runner = CliRunner()
#: Tolerance of the acceptance check: cross-worker vs one-process estimates, per measured step.
NOISE_TOLERANCE = 1e-4


def _one_line_error(result: Any, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


# -- the world size and the sharding (no processes) -------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "batch_size", "accumulation", "needle"),
    [
        (3, 64, 1, "not divisible by 3 workers × 1 accumulation steps"),
        (4, 2, 1, "smaller than 4 workers"),
        (2, 64, 3, "use 60 or 66"),
        (0, 64, 1, "positive integer"),
    ],
)
def test_world_size_must_divide_the_global_batch(workers: int, batch_size: int, accumulation: int,
                                                 needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("×", ".")):
        check_world_size(workers, batch_size, accumulation)
    assert check_world_size(4, 64, 2) == 16


@pytest.mark.parametrize("workers", [2, 4])
def test_ranks_slices_make_up_the_one_process_batches(tiny_task: Any, workers: int) -> None:
    single = BatchStream(tiny_task.train_data, seed=3)
    ranks = [ShardedBatchStream(tiny_task.train_data, seed=3, rank=rank, world_size=workers)
             for rank in range(workers)]
    for batch_size in (8, 64, 4 * 97, 16, 512):  # crosses epoch boundaries, changes size
        expected = single.next_indices(batch_size)
        got = torch.cat([stream.next_indices(batch_size) for stream in ranks])
        assert torch.equal(got, expected)


def test_launched_world_reads_torchruns_environment() -> None:
    assert launched_world({}) is None
    assert launched_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ConfigError, match="not within the world size"):
        launched_world({"RANK": "2", "WORLD_SIZE": "2"})


# -- the engine on a process group of one (in this process) --------------------------------------


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_data_parallel_run_of_one_rank_trains_as_the_engine(one_rank_group: None, tiny_task: Any) -> None:
    plain = train(tiny_task, 32, 0.2)
    run = DataParallelRun(tiny_task, 32, 0.2)
    parallel = run.result(run.train_until())
    assert parallel.reached_target and parallel.steps_to_target == plain.steps_to_target
    assert [p.metric for p in parallel.history] == [p.metric for p in plain.history]
    reference = Run(tiny_task, 32, 0.2)
    losses = [reference.step() for _ in range(len(run.step_log))]
    assert [loss for _, _, loss in run.step_log] == pytest.approx(losses, rel=1e-6)


def test_data_parallel_run_refuses_what_it_cannot_do(one_rank_group: None, tiny_task: Any) -> None:
    with pytest.raises(ConfigError, match="at least 2 workers"):
        DataParallelRun(tiny_task, 32, 0.2, hooks=[CrossWorkerNoise()])
    with pytest.raises(ConfigError, match="use CrossWorkerNoise"):
        DataParallelRun(tiny_task, 32, 0.2, hooks=[NoiseScaleMonitor(micro_batches=2)])
    with pytest.raises(ConfigError, match="cannot be forked"):
        DataParallelRun(tiny_task, 32, 0.2).fork()


def test_memory_probe_does_not_fork_under_a_process_group(one_rank_group: None, tiny_task: Any) -> None:
    from batchsage.probe.memory import probe_memory

    with pytest.raises(ConfigError, match="process group"):
        probe_memory(tiny_task, device="cpu")


def test_data_parallel_run_needs_a_process_group(tiny_task: Any) -> None:
    with pytest.raises(ConfigError, match="process group"):
        DataParallelRun(tiny_task, 32, 0.2)


# -- two worker processes (gloo, one thread each) -----------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(request: pytest.FixtureRequest) -> dict[int, dict[str, Any]]:
    """One launch of two workers: the cross-worker noise of the first steps and a training run."""
    spec = f"{Path(__file__).parent / 'fixtures' / 'tiny_tasks.py'}:TASK"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    reports = launch(distributed_worker.noise_and_training, 2, spec)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # the launcher cleaned up
    return reports


def _one_process_noise(task: Any) -> list[Any]:
    """The one-process two-batch estimator on the same split: B = 64 as 2 micro-batches of 32,
    micro-batch r holding exactly rank r's samples."""
    monitor = NoiseScaleMonitor(micro_batches=2, every=1, ema=None, dataset_size=task.num_train_samples)
    run = Run(task, distributed_worker.BATCH_SIZE, distributed_worker.LR, hooks=[monitor])
    for _ in range(distributed_worker.NOISE_STEPS):
        run.step()
    return monitor.statistics.measurements


@pytest.mark.parametrize("accumulation", [1, 2])
def test_cross_worker_noise_equals_the_one_process_estimator(two_ranks: dict[int, dict[str, Any]],
                                                             tiny_task: Any, accumulation: int) -> None:
    reference = _one_process_noise(tiny_task)
    assert len(reference) == distributed_worker.NOISE_STEPS
    for rank in (0, 1):
        measured = two_ranks[rank][f"noise_{accumulation}"]
        assert len(measured) == len(reference)
        for one, many in zip(reference, measured, strict=True):
            assert (many["batch_size"], many["micro_batch_size"]) == (64, 32.0)
            for key in ("grad_norm_sq", "trace_sigma"):
                value = getattr(one, key)
                assert abs(many[key] - value) <= NOISE_TOLERANCE * abs(value), (key, one, many)


def test_ranks_agree_and_reach_the_target_as_one_process(two_ranks: dict[int, dict[str, Any]],
                                                         tiny_task: Any) -> None:
    single = train(tiny_task, distributed_worker.BATCH_SIZE, distributed_worker.LR)
    first, second = two_ranks[0]["train"], two_ranks[1]["train"]
    assert first["reached_target"] and first["batch_size"] == distributed_worker.BATCH_SIZE
    assert first["history"] == second["history"]  # validated on rank 0, broadcast
    assert first["steps_to_target"] == single.steps_to_target
    assert first["samples_to_target"] == single.steps_to_target * distributed_worker.BATCH_SIZE
    assert [p["metric"] for p in first["history"]] == [p.metric for p in single.history]
    assert two_ranks[0]["loss_1"] == two_ranks[1]["loss_1"]  # the global batch's loss on every rank


# -- the command line ---------------------------------------------------------------------------------


def test_train_nproc_reaches_the_target_with_the_global_batch(tiny_task_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = runner.invoke(app, ["--threads", "1", "train", "--task", tiny_task_spec, "--batch-size", "64",
                                 "--lr", "0.2", "--accumulation", "2", "--nproc", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["world_size"] == 2 and document["batch_size"] == 64
    assert document["per_rank_batch_size"] == 32 and document["accumulation_steps"] == 2
    assert document["reached_target"] and document["samples_to_target"] == 64 * document["steps_to_target"]
    assert document["noise_scale"]["measurements"] == document["steps"]


def test_torchrun_train_reaches_the_target(tiny_task_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "batchsage", "--threads", "1",
               "train", "--task", tiny_task_spec, "--batch-size", "64", "--lr", "0.2", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr
    document = json.loads(out.read_text())
    assert document["world_size"] == 2 and document["batch_size"] == 64 and document["reached_target"]
    assert completed.stdout.count("reached target") == 1  # rank 0 reports, rank 1 is quiet


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "64", "--nproc", "3"], "not divisible by 3 workers"),
        (["--batch-size", "2", "--nproc", "4"], "smaller than 4 workers"),
        (["--batch-size", "64", "--nproc", "2", "--adaptive"], "--adaptive is not supported data-parallel"),
    ],
)
def test_nproc_that_does_not_fit_is_one_line(tiny_task_spec: str, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["train", "--task", tiny_task_spec, "--lr", "0.1", *args])
    _one_line_error(result, needle)


def test_torchrun_world_size_that_does_not_fit_is_one_line(tiny_task_spec: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 0 of a three-worker torchrun launch: refused before it joins the process group.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    result = runner.invoke(app, ["train", "--task", tiny_task_spec, "--batch-size", "64", "--lr", "0.1"])
    _one_line_error(result, "not divisible by 3 workers")
    result = runner.invoke(app, ["train", "--task", tiny_task_spec, "--batch-size", "63", "--lr", "0.1",
                                 "--nproc", "3"])
    _one_line_error(result, "drop --nproc")


@pytest.mark.parametrize(("command", "needle"), [("recommend", "decides in one process"),
                                                 ("fit", "forks of one live run"),
                                                 ("noise", "runs in one process")])
def test_single_process_commands_refuse_torchrun(tiny_task_spec: str, monkeypatch: pytest.MonkeyPatch,
                                                 command: str, needle: str) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, [command, "--task", tiny_task_spec])
    _one_line_error(result, needle)
    assert "batchsage train --nproc K" in result.stderr
