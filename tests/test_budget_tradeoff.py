"""benchmarks/budget_tradeoff.py: which runs resume, what is collected, what the table says."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import budget_tradeoff as bench  # noqa: E402
import groundtruth  # noqa: E402


def _decision(batch_size: int, lr: float, regret: float | None, seconds: float) -> dict[str, Any]:
    return {"batch_size": batch_size, "lr": lr, "regret": regret, "decision_seconds": seconds,
            "decision_cost": seconds / 10.0, "per_seed_seconds": []}


def _full_result(budget: float | None, status: str = "complete") -> dict[str, Any]:
    """A ground-truth document as groundtruth.py leaves it, reduced to what the script reads."""
    decisions = [_decision(64, 0.01, 1.2, 12.0), _decision(128, 0.02, None, 10.0),
                 _decision(64, 0.012, 1.0, 14.0)]
    return {
        "task": "toy", "status": status, "date": "2026-11-24", "machine": {"cpu_count": 2},
        "protocol": {"batch_sizes": [16, 32, 64], "ceiling": 64},
        "best": {"batch_size": 64, "lr": 0.01, "seconds_to_target": 10.0},
        "decisions": {"recommendation": {"budget_seconds": budget, "lr_race": [], "phase_seconds": {},
                                         "b_noise": 40.0}},
        "strategies": {"batchsage": {"batch_size": 64, "lr": 0.01, "regret": 1.2, "decision_seconds": 12.0}},
        "batchsage_decisions": groundtruth.decision_spread(decisions[0], decisions[1:]),
        "repeat_decisions": [{"batch_size": 128, "lr": 0.02, "details": {"b_noise": 300.0}},
                             {"batch_size": 64, "lr": 0.012, "details": {"b_noise": 55.5}}],
    }


def test_a_copy_decided_at_the_budget_resumes_and_any_other_redecides() -> None:
    document = _full_result(None)
    fresh = bench.groundtruth_command("toy", document, 10.0, Path("o.json"), Path("w"), resume=False)
    resumed = bench.groundtruth_command("toy", document, 10.0, Path("o.json"), Path("w"), resume=True)
    assert "--redecide" in fresh and "--redecide" not in resumed
    assert fresh[fresh.index("--recommend-budget-seconds") + 1] == "10.0"
    # the ground truth's own grid: its smallest batch and its ceiling
    assert fresh[fresh.index("--min-batch-size") + 1] == "16"
    assert fresh[fresh.index("--max-batch-size") + 1] == "64"
    assert bench.decided_budget(_full_result(10.0)) == 10.0
    assert bench.decided_budget({"decisions": {}}) is None


def test_collect_keeps_finished_runs_decided_at_their_budget_only(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "toy_b10.json").write_text(json.dumps(_full_result(10.0)))
    (work / "toy_b40.json").write_text(json.dumps(_full_result(40.0, status="partial")))
    (work / "toy_b5.json").write_text(json.dumps(_full_result(None)))  # a copy not re-decided yet
    bench.collect(["toy"], work, out)
    assert sorted(p.name for p in out.iterdir()) == ["toy_b10.json"]
    compact = json.loads((out / "toy_b10.json").read_text())
    assert compact["budget_seconds"] == 10.0
    assert "grid" not in compact and compact["batchsage_decisions"]["decisions"][0]["regret"] == 1.2
    assert compact["fitted_b_noise"] == [40.0, 300.0, 55.5]


def test_summary_counts_unreached_decisions_and_the_cost_is_against_the_best() -> None:
    result = _full_result(10.0)
    row = bench.summary(result["batchsage_decisions"], result["best"])
    assert row["median_regret"] == pytest.approx(1.2)  # the unreached one counts as the slowest
    assert row["worst_regret"] == math.inf
    assert row["unreached"] == 1
    assert row["median_decision_seconds"] == pytest.approx(12.0)
    assert row["median_decision_cost"] == pytest.approx(1.2)


def test_render_lists_every_decision_and_the_median_per_budget() -> None:
    result = _full_result(10.0)
    summary = bench.summary(result["batchsage_decisions"], result["best"])
    rows = [{"task": "toy", "budget": budget, "b_noise": [40.0, None], **summary} for budget in (10.0, 20.0)]
    text = bench.render(rows)
    picks = "(64, 0.01) 1.20, (128, 0.02) not reached, (64, 0.012) 1.00"
    assert f"| toy | 10 | {picks} | 1.20 | not reached | 12 | 1.20 | 40, – |" in text
    assert "budget 10 s: median regret 1.20 over 3 decisions" in text
