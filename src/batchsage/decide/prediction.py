"""How sure the predicted time to target is: the model's error measured on the ground truth.

The plan's T(B) = S(B)·t(B) picks the batch well (the shape of S(B) over B is right) but its level
is not: steps to target are extrapolated from pilots that stop well before the target, and the
last stretch of a learning curve is the slowest. ``benchmarks/prediction_calibration.py`` measures
measured ÷ predicted over every ground-truth decision on the development tasks and stores here
(``prediction.json``) the level and an 80 % interval for a task not among them; ``recommend``
prints its prediction scaled by the level, with that interval.

Why per task: a task's decisions err alike (the same curve is extrapolated), so the 15 decisions
on 5 tasks are 5 observations of the error, not 15. The level is the geometric mean of the tasks'
median ratios; the interval is the Student-t prediction interval for one more task's log ratio,
centre ± t(0.9, n−1)·s·√(1 + 1/n). The same script reports, leaving one task out at a time, how
often that interval holds the measured time.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

CALIBRATION_PATH = Path(__file__).with_name("prediction.json")


@dataclass(frozen=True)
class Calibration:
    """Measured ÷ predicted time to target over ground-truth decisions: the level (geometric mean of
    the tasks' medians) and an 80 % prediction interval for a new task."""

    #: The level by which the model's time is multiplied: the geometric mean of the tasks' median
    #: ratios (the name is the stored files' key).
    median: float
    low: float
    high: float
    decisions: int
    tasks: tuple[str, ...] = ()
    date: str = ""

    @classmethod
    def from_tasks(cls, ratios_by_task: dict[str, list[float]], coverage: float = 0.8,
                   date: str = "") -> Calibration:
        """From measured ÷ predicted per task: the level and the ``coverage`` prediction interval
        for a new task (see the module docstring); with one task, its ratios' own range."""
        if not ratios_by_task or not all(ratios_by_task.values()):
            raise ValueError("a calibration needs at least one task with at least one ratio")
        logs = np.log([float(np.median(ratios)) for ratios in ratios_by_task.values()])
        count = len(logs)
        centre = float(np.mean(logs))
        if count >= 2:
            spread = float(np.std(logs, ddof=1))
            half = float(stats.t.ppf((1 + coverage) / 2, count - 1)) * spread * math.sqrt(1 + 1 / count)
            low, high = math.exp(centre - half), math.exp(centre + half)
        else:
            only = next(iter(ratios_by_task.values()))
            low, high = min(only), max(only)
        decisions = sum(len(ratios) for ratios in ratios_by_task.values())
        return cls(math.exp(centre), low, high, decisions, tuple(sorted(ratios_by_task)), date)

    def level(self, predicted_seconds: float) -> float:
        return predicted_seconds * self.median

    def interval(self, predicted_seconds: float) -> tuple[float, float]:
        return predicted_seconds * self.low, predicted_seconds * self.high

    def basis(self) -> str:
        return (f"the model's time × {self.median:.2g}; 80 % interval for a new task from measured ÷ "
                f"predicted on {len(self.tasks)} tasks ({self.decisions} ground-truth decisions, "
                f"{self.date})")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def load_calibration(path: Path = CALIBRATION_PATH) -> Calibration | None:
    """The stored calibration, or None where there is none (the model's time is then printed alone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Calibration(**{**data, "tasks": tuple(data.get("tasks", ()))})
