"""benchmarks/task_times.py: per-batch-size times from result documents and the Markdown they give.

Pure functions on small hand-made documents; nothing is trained."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import task_times as tt  # noqa: E402


def grid_row(batch: int, lr: float, seed: int, seconds: float | None, *, steps_run: int | None = None,
             step_seconds: float = 0.1, diverged: bool = False) -> dict:
    """A ground-truth grid row: reached (seconds), cut after ``steps_run`` steps, or diverged."""
    return {"batch_size": batch, "lr": lr, "seed": seed, "reached_target": seconds is not None,
            "seconds_to_target": seconds, "censored": steps_run is not None, "steps_run": steps_run,
            "step_seconds": step_seconds, "diverged": diverged}


#: B=32: lr 0.01 reaches in 10 and 14 s (median 12), lr 0.02 in 8 s for one seed only (median inf).
#: B=128: lr 0.04 reaches in 3 and 5 s (the best, median 4); lr 0.08 is cut after 20 steps × 0.1 s.
#: B=512: nothing reaches; lr 0.16 is cut after 60 and 80 steps × 0.1 s (bound 7 s), 0.32 diverges.
#: B=2048: every run diverges.
GROUND_TRUTH = {
    "status": "complete", "date": "2026-11-23T10:00:00+00:00",
    "machine": {"cpu_count": 2, "processor": "AMD EPYC", "torch": "2.13.0+cpu", "torch_threads": 1},
    "protocol": {"seeds": [0, 1], "base_lr": 0.01, "lr_multipliers": [0.5, 1.0]},
    "grid": [
        grid_row(32, 0.01, 0, 10.0), grid_row(32, 0.01, 1, 14.0),
        grid_row(32, 0.02, 0, 8.0), grid_row(32, 0.02, 1, None, diverged=True),
        grid_row(128, 0.04, 0, 3.0), grid_row(128, 0.04, 1, 5.0),
        grid_row(128, 0.08, 0, None, steps_run=20), grid_row(128, 0.08, 1, None, steps_run=20),
        grid_row(512, 0.16, 0, None, steps_run=60), grid_row(512, 0.16, 1, None, steps_run=80),
        grid_row(512, 0.32, 0, None, diverged=True), grid_row(512, 0.32, 1, None, diverged=True),
        grid_row(2048, 0.5, 0, None, diverged=True), grid_row(2048, 0.5, 1, None, diverged=True),
    ],
}

INFO = tt.TaskInfo("toy", "a toy task", 1000, 100, "accuracy", 0.9, True, 32, 0.01, 50_000, "linear")


def rows_by_batch() -> dict[int, tt.BatchTime]:
    return {row.batch_size: row for row in tt.batch_times(tt.runs_from_ground_truth(GROUND_TRUTH))}


def test_each_batch_size_keeps_the_lr_with_the_smallest_median_over_seeds() -> None:
    rows = rows_by_batch()
    # lr 0.02 is faster for one seed but its other seed diverged: its median is infinite.
    assert rows[32].lr == 0.01 and rows[32].time.seconds == pytest.approx(12.0)
    assert rows[128].lr == 0.04 and rows[128].time.seconds == pytest.approx(4.0)


def test_a_cut_lr_with_a_bound_below_the_chosen_time_is_flagged() -> None:
    rows = rows_by_batch()
    assert rows[128].maybe_faster  # lr 0.08 was cut at 2 s, below 4 s
    assert not rows[32].maybe_faster


def test_a_batch_size_where_nothing_reached_gets_an_honest_lower_bound() -> None:
    rows = rows_by_batch()
    assert rows[512].lr is None and not rows[512].time.reached
    assert rows[512].time.at_least == pytest.approx(7.0)  # median of 6 s and 8 s; lr 0.32 diverged
    assert not rows[512].time.diverged
    assert rows[2048].time.diverged and math.isinf(rows[2048].time.at_least)
    assert tt.format_time(rows[512].time) == "≥ 7.0 s (cut before the target)"
    assert tt.format_time(rows[2048].time) == "diverged"


def test_best_and_poor_choice() -> None:
    runs = tt.runs_from_ground_truth(GROUND_TRUTH)
    rows = tt.batch_times(runs)
    best = tt.best_time(rows)
    assert best is not None and (best.batch_size, best.lr) == (128, 0.04)
    poor = tt.poor_choice(runs, GROUND_TRUTH, INFO)
    assert poor is not None and poor.seconds == pytest.approx(12.0)
    sentence = tt.summary_sentence(rows, poor, INFO)
    assert "B=128 at lr 0.04, 4.0 s" in sentence and "12.0 s, 3.00× as long" in sentence
    assert tt.goal_sentence(rows).endswith("4.0 s is 60 % under 10 s.")


def test_task_times_runs_use_their_own_clock_and_a_time_limit_is_a_lower_bound() -> None:
    document = {"runs": [
        {"batch_size": 32, "lr": 0.002, "seed": 0, "reached_target": True, "seconds_to_target": 16.0,
         "train_seconds": 16.0, "censored": False, "diverged": False},
        {"batch_size": 512, "lr": 0.008, "seed": 0, "reached_target": False, "seconds_to_target": None,
         "train_seconds": 401.5, "censored": True, "diverged": False},
    ]}
    rows = {row.batch_size: row for row in tt.batch_times(tt.runs_from_task_times(document))}
    assert rows[32].time.seconds == 16.0
    assert rows[512].time.at_least == 401.5
    assert tt.format_ratio(rows[512].time, 16.0) == "≥ 25.1×"


def test_section_and_compact_row_render_the_table() -> None:
    runs = tt.runs_from_ground_truth(GROUND_TRUTH)
    rows, poor = tt.batch_times(runs), tt.poor_choice(runs, GROUND_TRUTH, INFO)
    source = tt.Source("ground truth", "benchmarks/results/toy.json", "2026-11-23", 2, "note.")
    text = "\n".join(tt.task_section(INFO, rows, poor, source))
    assert "| 128 | 0.04 | 4.0 s † | 1.00× |" in text
    assert "| 512 | – (none reached) | ≥ 7.0 s (cut before the target) | ≥ 1.8× |" in text
    assert "accuracy ≥ 0.9" in text and "1,000 training / 100 validation" in text
    row = tt.compact_row(INFO, rows, poor, source)
    assert row == ("| `toy` | accuracy ≥ 0.9 | B=128, lr 0.04 | 4.0 s | 12.0 s | "
                   "`toy.json` (ground truth, 2026-11-23) |")
    assert "Not measured yet" in "\n".join(tt.task_section(INFO, None, None, None))


def test_a_partial_ground_truth_is_skipped_for_the_task_times_file(tmp_path: Path) -> None:
    tt.write_json(tmp_path / "toy.json", {**GROUND_TRUTH, "status": "partial"})
    assert tt.load_source("toy", tmp_path) is None
    tt.write_json(tt.times_path("toy", tmp_path), {"status": "complete", "date": "2026-11-23", "runs": [
        {"batch_size": 32, "lr": 0.01, "seed": 0, "reached_target": True, "seconds_to_target": 9.0,
         "train_seconds": 9.0, "censored": False}]})
    loaded = tt.load_source("toy", tmp_path)
    assert loaded is not None and loaded[1].kind == "task_times"
    tt.write_json(tmp_path / "toy.json", GROUND_TRUTH)
    loaded = tt.load_source("toy", tmp_path)
    assert loaded is not None and loaded[1].kind == "ground truth" and loaded[1].seeds == 2


def test_needs_run_skips_settled_runs_and_redoes_shorter_cuts() -> None:
    runs = [{"batch_size": 32, "lr": 0.002, "seed": 0, "reached_target": True, "censored": False,
             "max_seconds": 100.0},
            {"batch_size": 512, "lr": 0.008, "seed": 0, "reached_target": False, "censored": True,
             "max_seconds": 100.0}]
    assert not tt.needs_run(runs, 32, 0.002, 0, 400.0)
    assert not tt.needs_run(runs, 512, 0.008, 0, 100.0)
    assert tt.needs_run(runs, 512, 0.008, 0, 400.0)  # cut at 100 s: a 400 s limit may reach
    assert tt.needs_run(runs, 32, 0.002, 1, 400.0)  # another seed


def test_groups_section_names_every_task_in_its_group() -> None:
    text = "\n".join(tt.groups_section({"development": ("a", "b"), "evaluation": ("c",)}))
    assert "development tasks: `a`, `b`." in text
    assert "The evaluation tasks, `c`, are" in text
