"""What a tracker is told: a run's parameters, single numbers, series against a step, text, files.

A document (recommendation, fit result, sweep result) becomes one :class:`RunRecord` (see
``_documents``); each tracker module implements :class:`Tracker` and :func:`write_record` walks
the record into it. Children (pilots, raced forks, sweep trials) go to ``tracker.child(...)``:
a run of their own where the tracker has nested runs, a key prefix where it has not.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchsage.errors import BatchsageError

Param = str | int | float | bool


class TrackerError(BatchsageError):
    """A ``--log`` spec is malformed, its tracker package is missing, or logging to it failed."""


@dataclass
class Series:
    """Values of one quantity against an integer x (``x_name``: "step" or "batch_size")."""

    key: str
    x_name: str
    points: list[tuple[int, float]]


@dataclass
class Artifact:
    """A file to upload: ``path`` on disk, stored under ``name`` (a relative path) by the tracker."""

    path: Path
    name: str


@dataclass
class RunRecord:
    """Everything one run logs.

    Attributes:
        name: the run's name (a child's: unique among its siblings).
        role: what the run is ("recommend", "fit", "sweep", "pilot", "fork", "trial").
        params: configuration and inputs (strings, numbers, booleans).
        summary: single numbers (the answer, times); booleans as 0/1.
        series: measured curves.
        text: longer text (the explanation, why lines) by key.
        children: runs that belong to this one.
    """

    name: str
    role: str
    params: dict[str, Param] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)
    children: list[RunRecord] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)


class Tracker(ABC):
    """One run in an experiment tracker (or, for a child, a run or key prefix inside it)."""

    @abstractmethod
    def log_params(self, params: Mapping[str, Param]) -> None:
        """Record configuration values."""

    @abstractmethod
    def log_summary(self, values: Mapping[str, float]) -> None:
        """Record single numbers (finite)."""

    @abstractmethod
    def log_series(self, series: Series) -> None:
        """Record a curve (finite points, integer x)."""

    @abstractmethod
    def log_text(self, key: str, text: str) -> None:
        """Record a piece of text."""

    @abstractmethod
    def log_artifacts(self, artifacts: Sequence[Artifact]) -> None:
        """Store files with the run, where the tracker keeps files."""

    @abstractmethod
    def child(self, record: RunRecord) -> Tracker:
        """The tracker a child record is written to."""

    def close(self) -> None:  # noqa: B027 - optional
        """Finish the run (flush, mark it finished)."""

    @property
    def location(self) -> str:
        """Where to look: a directory, a run id or URL (for the command's last line)."""
        return ""


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number (booleans as 0/1), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def write_record(tracker: Tracker, record: RunRecord) -> None:
    """Write ``record`` and its children, each child through ``tracker.child``."""
    if record.params:
        tracker.log_params(record.params)
    if record.summary:
        tracker.log_summary(record.summary)
    for series in record.series:
        if series.points:
            tracker.log_series(series)
    for key, text in record.text.items():
        if text:
            tracker.log_text(key, text)
    if record.artifacts:
        tracker.log_artifacts(record.artifacts)
    for child_record in record.children:
        child = tracker.child(child_record)
        try:
            write_record(child, child_record)
        finally:
            child.close()
