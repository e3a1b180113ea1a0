"""The calibration of the predicted time to target: level and interval from per-task errors."""

from __future__ import annotations

import math

import pytest

from batchsage.decide.prediction import Calibration, load_calibration


def test_the_level_is_the_geometric_mean_of_the_tasks_medians_and_one_task_counts_once() -> None:
    # Task "a" has many decisions; it still counts as one task's error.
    calibration = Calibration.from_tasks({"a": [2.0] * 9 + [100.0], "b": [8.0]})
    assert calibration.median == pytest.approx(4.0)  # sqrt(2 × 8)
    assert calibration.decisions == 11 and calibration.tasks == ("a", "b")


def test_the_interval_is_a_student_t_prediction_interval_for_a_new_task() -> None:
    ratios = {"a": [1.0], "b": [2.0], "c": [4.0], "d": [8.0]}
    calibration = Calibration.from_tasks(ratios, coverage=0.8)
    logs = [math.log(v[0]) for v in ratios.values()]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    half = 1.6377443572159062 * sd * math.sqrt(1 + 1 / 4)  # t(0.9, 3)
    assert calibration.low == pytest.approx(math.exp(mean - half))
    assert calibration.high == pytest.approx(math.exp(mean + half))
    assert calibration.interval(10.0) == pytest.approx((10 * calibration.low, 10 * calibration.high))
    # more tasks that agree narrow it
    narrow = Calibration.from_tasks({k: [3.0 * (1 + 0.01 * i)] for i, k in enumerate("abcdefgh")})
    assert narrow.high / narrow.low < 1.1


def test_the_stored_calibration_loads_and_brackets_its_level() -> None:
    stored = load_calibration()
    assert stored is not None and stored.low < stored.median < stored.high and len(stored.tasks) >= 2
