"""How sure the predicted time to target is: the model's error measured on the ground truth.

The plan's T(B) = S(B)·t(B) picks the batch well (the shape of S(B) over B is right) but its level
is not: steps to target are extrapolated from pilots that stop well before the target, and the
last stretch of a learning curve is the slowest. ``benchmarks/prediction_calibration.py`` measures
measured ÷ predicted over every ground-truth decision on the development tasks and stores the
ratios' median and 10th-90th percentiles here (``prediction.json``); ``recommend`` prints its
prediction scaled by the median, with that interval. The same script reports, leaving one task
out at a time, how often the interval holds the measured time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CALIBRATION_PATH = Path(__file__).with_name("prediction.json")


@dataclass(frozen=True)
class Calibration:
    """Measured ÷ predicted time to target over ground-truth decisions: median and 10th-90th percentiles."""

    median: float
    low: float
    high: float
    decisions: int
    tasks: tuple[str, ...] = ()
    date: str = ""

    @classmethod
    def from_ratios(cls, ratios: list[float], tasks: list[str] | tuple[str, ...] = (),
                    date: str = "") -> Calibration:
        values = np.asarray(ratios, dtype=float)
        return cls(float(np.median(values)), float(np.percentile(values, 10)),
                   float(np.percentile(values, 90)), len(values), tuple(tasks), date)

    def level(self, predicted_seconds: float) -> float:
        return predicted_seconds * self.median

    def interval(self, predicted_seconds: float) -> tuple[float, float]:
        return predicted_seconds * self.low, predicted_seconds * self.high

    def basis(self) -> str:
        return (f"the model's time × {self.median:.2g}; 80 % interval from measured ÷ predicted over "
                f"{self.decisions} ground-truth decisions on {len(self.tasks)} tasks ({self.date})")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def load_calibration(path: Path = CALIBRATION_PATH) -> Calibration | None:
    """The stored calibration, or None where there is none (the model's time is then printed alone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Calibration(**{**data, "tasks": tuple(data.get("tasks", ()))})
