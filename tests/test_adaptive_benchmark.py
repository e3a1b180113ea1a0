"""benchmarks/adaptive.py's summary: ratios of the medians and the paired per-seed ratio."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import adaptive as bench  # noqa: E402


def _run(strategy: str, seed: int, steps: int | None) -> bench.Run:
    """A run of ``steps`` steps at B=32 to the target (None: it never reached it)."""
    ran = steps if steps is not None else 50
    result = {"reached_target": steps is not None, "steps_to_target": steps,
              "seconds_to_target": None if steps is None else 0.01 * steps,
              "samples_to_target": None if steps is None else 32 * steps}
    return bench.Run(strategy, seed, 32, 0.1, result, [(32, 1, 0.01)] * ran, [])


def test_summary_gives_the_ratio_of_medians_and_the_paired_median() -> None:
    fixed = {0: 100, 1: 200, 2: 300}
    adaptive = {0: 90, 1: 230, 2: 270}  # per seed 0.9, 1.15, 0.9
    runs = [_run(bench.FIXED, s, n) for s, n in fixed.items()]
    runs += [_run("adaptive from best fixed", s, n) for s, n in adaptive.items()]
    table = {(32, 1): 0.01}
    summary = bench.summarize(runs, {"cpu": table, "wall": table})
    entry = summary["adaptive from best fixed"]
    assert entry["ratio_to_fixed"]["seconds_timed"] == pytest.approx(230 / 200)
    assert entry["ratio_to_fixed_per_seed"] == pytest.approx([0.9, 1.15, 0.9])
    assert entry["ratio_to_fixed_paired_median"] == pytest.approx(0.9)


def test_a_missed_target_is_infinitely_slow_in_the_paired_median() -> None:
    runs = [_run(bench.FIXED, s, 100) for s in range(3)]
    runs += [_run("adaptive from best fixed", 0, None), _run("adaptive from best fixed", 1, None),
             _run("adaptive from best fixed", 2, 50)]
    table = {(32, 1): 0.01}
    entry = bench.summarize(runs, {"cpu": table, "wall": table})["adaptive from best fixed"]
    assert math.isinf(entry["ratio_to_fixed_paired_median"])


def test_the_small_start_keeps_the_best_lr_by_the_tasks_rule() -> None:
    from types import SimpleNamespace

    best = {"batch_size": 128, "lr": 0.16}
    sgd = SimpleNamespace(base_batch_size=32, base_lr=0.01, resolved_lr_scaling=lambda: "linear")
    adam = SimpleNamespace(base_batch_size=32, base_lr=0.002, resolved_lr_scaling=lambda: "sqrt")
    assert bench.start_points(sgd, best, 32)["small"] == (bench.ADAPTIVE_FROM_SMALL, 32, pytest.approx(0.04))
    assert bench.start_points(adam, best, 32)["small"][2] == pytest.approx(0.08)
    assert bench.start_points(sgd, best, 32)["base"] == (bench.ADAPTIVE_FROM_BASE, 32, 0.01)


def test_starts_are_checked_on_the_command_line() -> None:
    assert bench.parse_args(["--task", "linreg", "--starts", "best,small"]).starts == "best,small"
    with pytest.raises(SystemExit):
        bench.parse_args(["--task", "linreg", "--starts", "largest"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--task", "linreg", "--small-batch", "0"])
