"""How many workers: the step-time model's fit, the plan per K and the rule (pure arithmetic), and
``batchsage workers`` end to end on two worker processes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchsage import plan
from batchsage.cli import app
from batchsage.decide.recommendation import NoiseSummary, Recommendation
from batchsage.decide.workers import (
    ParallelStepTime,
    StepTiming,
    choose_workers,
    fit_step_time,
    marginal_efficiency,
    per_rank_ceiling,
    plan_workers,
    recommend_workers,
)
from batchsage.errors import ConfigError

runner = CliRunner()
SIZES = (8, 16, 32, 64, 128, 256)


def _compute(b: float) -> float:
    return 1e-3 + 1e-5 * b


def _timings(network: float, gamma: float, workers: tuple[int, ...] = (2,),
             beta: float = 0.0, slowdown: float = 1.0) -> list[StepTiming]:
    rows = [StepTiming(1, b, _compute(b), 20) for b in SIZES]
    for k in workers:
        t_n = network * 2 * (k - 1) / k + beta * (k - 2)
        rows += [StepTiming(k, b, ((slowdown * _compute(b)) ** gamma + t_n**gamma) ** (1 / gamma), 20)
                 for b in SIZES]
    return rows


def test_fit_recovers_a_known_step_time_model() -> None:
    model = fit_step_time(_timings(network=2e-3, gamma=2.0))
    assert model.network_seconds == pytest.approx(2e-3, rel=0.02)
    assert model.gamma == pytest.approx(2.0, rel=0.05)
    assert model.retrogression_seconds == 0.0 and model.measured_workers == (1, 2)
    assert model.compute_slowdown == pytest.approx(1.0, abs=0.02)
    assert model(1, 64, 3) == pytest.approx(3 * _compute(64), rel=1e-6)  # accumulation, no all-reduce
    # Four workers: the ring all-reduce sends 1.5× what two do; accumulation adds plain passes.
    expected = 2 * _compute(32) + math.hypot(_compute(32), 1.5 * 2e-3)
    assert model(4, 32, 3) == pytest.approx(expected, rel=0.03)


def test_fit_separates_a_slower_compute_from_communication() -> None:
    # Two workers sharing the cores: each computes 1.5× slower, and the all-reduce costs 1 ms.
    model = fit_step_time(_timings(network=1e-3, gamma=1.0, slowdown=1.5))
    assert model.compute_slowdown == pytest.approx(1.5, rel=0.03)
    assert model.network_seconds == pytest.approx(1e-3, rel=0.05)
    assert model(2, 512) == pytest.approx(1.5 * _compute(512) + 1e-3, rel=0.02)


def test_fit_finds_retrogression_only_when_more_than_two_workers_were_timed() -> None:
    model = fit_step_time(_timings(network=2e-3, gamma=1.0, workers=(2, 4), beta=1e-3))
    assert model.retrogression_seconds == pytest.approx(1e-3, rel=0.1)
    assert model.network(8) == pytest.approx(2e-3 * 1.75 + 6e-3, rel=0.1)


def test_fit_needs_one_and_several_workers() -> None:
    with pytest.raises(ConfigError, match="at one worker"):
        fit_step_time([StepTiming(2, 8, 1e-3, 10)])
    with pytest.raises(ConfigError, match="two or more workers"):
        fit_step_time([StepTiming(1, 8, 1e-3, 10)])


def _candidates(b_noise: float, s_min: float = 100.0) -> list[plan.Candidate]:
    return plan.plan_candidates([8, 16, 32, 64, 128, 256, 512, 1024, 2048], s_min=s_min, b_noise=b_noise,
                                step_seconds=_compute, max_batch_size=2048, base_batch_size=16, base_lr=0.1,
                                scaling="linear")


def _model(network: float = 1e-4) -> ParallelStepTime:
    return ParallelStepTime(compute_sizes=SIZES, compute_seconds=tuple(_compute(b) for b in SIZES),
                            network_seconds=network, retrogression_seconds=0.0, gamma=1.0,
                            measured_workers=(1, 2))


@pytest.mark.parametrize(("b_noise", "network", "expected"), [
    (1e5, 1e-5, 8),   # gradients far from their noise floor, cheap all-reduce: every doubling pays
    (8.0, 1e-5, 1),   # the noise scale is tiny: a larger batch barely cuts the steps
    (1e5, 1.0, 1),    # the all-reduce dwarfs the step
])
def test_the_rule_adds_workers_while_they_earn_their_cost(b_noise: float, network: float,
                                                          expected: int) -> None:
    options = plan_workers(_candidates(b_noise), _model(network), [1, 2, 4, 8], lambda k: 2048)
    assert [o.workers for o in options] == [1, 2, 4, 8]
    chosen = choose_workers(options, 0.75)
    assert chosen.workers == expected
    for smaller, larger in itertools.pairwise(options):
        if larger.workers <= chosen.workers:
            assert marginal_efficiency(smaller, larger) >= 0.75
        elif smaller.workers == chosen.workers:
            assert marginal_efficiency(smaller, larger) < 0.75
    for option in options:  # the bill: workers × seconds; the global batch splits evenly
        assert option.worker_seconds == pytest.approx(option.workers * option.predicted_seconds)
        assert option.candidate.batch_size == option.workers * option.per_rank_batch_size
        assert option.candidate.predicted_steps == pytest.approx(
            plan.steps_to_target(option.candidate.batch_size, 100.0, b_noise))


def test_per_worker_ceiling_is_shared_memory_on_cpu_only() -> None:
    memory = {"max_batch_size": 1000, "budget_bytes": 10_000, "effective_budget_bytes": 9_000,
              "fixed_bytes": 1_000, "per_sample_bytes": 5.0}
    assert per_rank_ceiling(memory, 1, "cpu") == 1000
    assert per_rank_ceiling(memory, 2, "cpu") == 700     # (9000/2 − 1000)/5
    assert per_rank_ceiling(memory, 9, "cpu") == 0       # the fixed part alone fills a ninth
    assert per_rank_ceiling(memory, 8, "cuda") == 1000   # a device per worker
    options = plan_workers(_candidates(1e5), _model(), [1, 2, 4],
                           lambda k: per_rank_ceiling(memory, k, "cpu"))
    four = next(o for o in options if o.workers == 4)
    assert four.per_rank_ceiling == 250 and four.candidate.micro_batch_size <= 250


def _recommendation(task: Any, b_noise: float = 256.0, s_min: float = 30.0) -> Recommendation:
    candidates = plan.plan_candidates([8, 16, 32, 64, 128, 256, 512], s_min=s_min, b_noise=b_noise,
                                      step_seconds=lambda b: 2e-4 + 1e-6 * b, max_batch_size=512,
                                      base_batch_size=16, base_lr=0.1, scaling="linear")
    chosen = plan.choose(candidates)
    return Recommendation(
        task=task.name, device="cpu", batch_size=chosen.batch_size, micro_batch_size=chosen.micro_batch_size,
        accumulation_steps=1, lr=chosen.lr, warmup_steps=chosen.warmup_steps,
        predicted_steps=chosen.predicted_steps, predicted_seconds=chosen.predicted_seconds,
        candidates=candidates, s_min=s_min, b_noise=b_noise, steps_at_pilot=math.nan, extrapolated=False,
        noise_scale=NoiseSummary(None, None, None, None, None, None, b_noise, "given"),
        memory={"max_batch_size": 512, "budget_bytes": 8 << 30, "effective_budget_bytes": 7 << 30,
                "fixed_bytes": 400 << 20, "per_sample_bytes": 1000.0},
        throughput=[{"batch_size": b, "step_seconds_median": 2e-4 + 1e-6 * b, "samples_per_second": 0.0}
                    for b in (8, 64, 512)],
        pilots=[], lr_race=[], lr_calibration=None, anchor={}, explanation="", decision_seconds=0.0,
        phase_seconds={}, metric_name="accuracy", target=0.95, higher_is_better=True,
    )


def test_recommend_workers_refuses_another_task_or_device(tiny_task: Any, tiny_task_spec: str) -> None:
    from batchsage.task import load_task

    task = load_task(tiny_task_spec)
    other = _recommendation(tiny_task)
    other.task = "something-else"
    with pytest.raises(ConfigError, match="not 'tiny'"):
        recommend_workers(task, other)
    gpu = _recommendation(tiny_task)
    gpu.device = "cuda:0"
    with pytest.raises(ConfigError, match="measured on cuda:0"):
        recommend_workers(task, gpu, device="cpu")


def test_workers_command_times_two_workers_and_recommends(tiny_task: Any, tiny_task_spec: str,
                                                          tmp_path: Path) -> None:
    saved = _recommendation(tiny_task).save(tmp_path / "recommendation.json")
    out = tmp_path / "workers.json"
    result = runner.invoke(app, ["--threads", "1", "workers", "--task", tiny_task_spec, "--recommendation",
                                 str(saved), "--max-workers", "4", "--budget-seconds", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    options = {o["workers"]: o for o in document["options"]}
    assert sorted(options) == [1, 2, 4]
    assert options[1]["measured"] and options[2]["measured"] and not options[4]["measured"]
    assert document["recommended"]["workers"] in options
    timed = {(t["workers"], t["micro_batch_size"]) for t in document["measurement"]["timings"]}
    assert {k for k, _ in timed} == {1, 2} and len(timed) >= 4
    assert all(t["step_seconds"] > 0 for t in document["measurement"]["timings"])
    assert all(peak > 0 for peak in document["measurement"]["peak_resident_bytes"])  # per rank, in process
    assert document["step_time_model"]["gamma"] >= 1.0
    assert "marginal efficiency" in document["rule"]
    assert "batchsage train --task" in result.output
