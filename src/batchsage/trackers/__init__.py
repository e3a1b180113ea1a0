"""Experiment trackers: a finished command's document logged to TensorBoard, MLflow or W&B.

Trackers only read the documents the commands already produce (``Recommendation.to_dict()``,
``FitResult.to_dict()``, ``SweepResult.to_dict()``), after the command has written its own
output, so a tracker failure never loses a result::

    from batchsage.trackers import log
    rec = batchsage.recommend(task)
    log(rec, "tensorboard:runs", "mlflow:sqlite:///mlflow.db", "wandb:my-project")

A spec is ``tensorboard:DIR``, ``mlflow[:URI]`` or ``wandb[:PROJECT]`` (:func:`parse_log_spec`);
each tracker is an optional extra (``pip install 'batchsage[tensorboard]'``, ``[mlflow]``,
``[wandb]``). What each document logs: ``_documents``; how each tracker stores it: the modules
``tensorboard``, ``mlflow`` and ``wandb``.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsage.jsonio import write_json
from batchsage.trackers._base import Artifact, RunRecord, Series, Tracker, TrackerError, write_record
from batchsage.trackers._documents import KINDS, record_of

__all__ = [
    "KINDS",
    "LOG_HELP",
    "TRACKERS",
    "Artifact",
    "LogSpec",
    "RunRecord",
    "Series",
    "Tracker",
    "TrackerError",
    "log",
    "log_document",
    "parse_log_spec",
    "record_of",
]

#: Tracker name → (the package it needs, the batchsage extra that installs it).
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
SPEC_FORMS = "tensorboard:DIR, mlflow[:URI] or wandb[:PROJECT]"
LOG_HELP = (f"also log the result to an experiment tracker, after the command's own output (repeatable): "
            f"{SPEC_FORMS}, e.g. mlflow:sqlite:///mlflow.db; W&B offline with WANDB_MODE=offline")

#: The JSON document's file name, and the report files a command writes beside it, per kind.
DOCUMENT_NAMES = {"recommend": "recommendation.json", "fit": "fit.json", "sweep": "sweep.json"}
REPORT_FILES = {"recommend": ("report.html", "plots/*.png"), "fit": ("report.html",),
                "sweep": ("pareto.png",)}


@dataclass(frozen=True)
class LogSpec:
    """Where to log: ``tracker`` (tensorboard, mlflow, wandb) and its ``target`` (directory,
    tracking URI, project; None for the tracker's default)."""

    tracker: str
    target: str | None = None

    def __str__(self) -> str:
        return self.tracker if self.target is None else f"{self.tracker}:{self.target}"

    def require(self) -> None:
        """Raise TrackerError (one line naming the extra to install) if the package is missing."""
        package, extra = TRACKERS[self.tracker]
        if importlib.util.find_spec(package) is None:
            raise TrackerError(f"--log {self.tracker} needs the {package} package: "
                               f"pip install 'batchsage[{extra}]'")


def parse_log_spec(text: str | LogSpec) -> LogSpec:
    """``tensorboard:DIR``, ``mlflow[:URI]`` or ``wandb[:PROJECT]`` as a LogSpec (TrackerError if not)."""
    if isinstance(text, LogSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise TrackerError(f"empty --log spec: use {SPEC_FORMS}")
    name, colon, target = text.strip().partition(":")
    name = name.lower()
    if name not in TRACKERS:
        raise TrackerError(f"--log {text!r}: unknown tracker {name!r}; use {SPEC_FORMS}")
    if colon and not target:
        raise TrackerError(f"--log {text!r}: nothing after ':'; use {SPEC_FORMS}")
    if name == "tensorboard" and not target:
        raise TrackerError("--log tensorboard needs a directory: tensorboard:DIR")
    return LogSpec(name, target or None)


def _artifacts(kind: str, document: Mapping[str, Any], report_dir: Path | None,
               scratch: Path) -> list[Artifact]:
    """The document as JSON (written from ``document``), then the report files found in ``report_dir``."""
    json_path = scratch / DOCUMENT_NAMES[kind]
    write_json(json_path, dict(document))
    artifacts = [Artifact(json_path, json_path.name)]
    if report_dir is not None:
        for pattern in REPORT_FILES[kind]:
            for path in sorted(Path(report_dir).glob(pattern)):
                if path.is_file():
                    artifacts.append(Artifact(path, path.relative_to(report_dir).as_posix()))
    return artifacts


def log_document(kind: str, document: Mapping[str, Any], spec: str | LogSpec,
                 report_dir: str | Path | None = None) -> str:
    """Log a ``recommend``, ``fit`` or ``sweep`` document to one tracker; returns where it went.

    Args:
        kind: "recommend", "fit" or "sweep".
        document: the command's JSON document (``result.to_dict()``).
        spec: ``tensorboard:DIR``, ``mlflow[:URI]`` or ``wandb[:PROJECT]``.
        report_dir: the command's output directory; its report files (HTML, plots) are logged
            as artifacts beside the JSON document.

    Raises TrackerError (one line) for a bad spec, a missing package or a failure of the tracker.
    """
    parsed = parse_log_spec(spec)
    parsed.require()
    record: RunRecord = record_of(kind, document)
    module = importlib.import_module(f"batchsage.trackers.{parsed.tracker}")
    with tempfile.TemporaryDirectory(prefix="batchsage-log-") as scratch:
        record.artifacts = _artifacts(kind, document, Path(report_dir) if report_dir else None, Path(scratch))
        try:
            tracker: Tracker = module.open_run(parsed.target, record)
            try:
                write_record(tracker, record)
            finally:
                tracker.close()
        except TrackerError:
            raise
        except Exception as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            hint = " (without a W&B account, set WANDB_MODE=offline)" if parsed.tracker == "wandb" else ""
            raise TrackerError(f"logging to {parsed} failed: {type(exc).__name__}: {message}{hint}") from exc
    return tracker.location


def _kind_of(result: Any) -> str:
    from batchsage.decide import Recommendation
    from batchsage.live import FitResult
    from batchsage.sweep import SweepResult

    for kind, cls in (("recommend", Recommendation), ("fit", FitResult), ("sweep", SweepResult)):
        if isinstance(result, cls):
            return kind
    raise TrackerError(f"cannot log a {type(result).__name__}: "
                       "pass a Recommendation, FitResult or SweepResult")


def log(result: Any, *specs: str | LogSpec, report_dir: str | Path | None = None) -> list[str]:
    """Log a Recommendation, FitResult or SweepResult to each tracker in ``specs``; returns where."""
    kind = _kind_of(result)
    document = result.to_dict()
    return [log_document(kind, document, spec, report_dir) for spec in specs]


# ---- what the commands call -----------------------------------------------------------------------


def check_log_specs(texts: Sequence[str] | None) -> list[LogSpec]:
    """Parse the ``--log`` options and check their packages, before the command starts."""
    specs = [parse_log_spec(text) for text in texts or ()]
    for spec in specs:
        spec.require()
    return specs


def log_after_command(kind: str, document: Mapping[str, Any], specs: Sequence[LogSpec],
                      report_dir: Path | None, console: Any) -> None:
    """Log ``document`` to every tracker; print where; raise one TrackerError naming every failure."""
    failures = []
    for spec in specs:
        try:
            where = log_document(kind, document, spec, report_dir)
        except TrackerError as exc:
            failures.append(str(exc))
            continue
        console.print(f"logged to {spec}: {where}", highlight=False, soft_wrap=True)
    if failures:
        raise TrackerError("; ".join(failures))
