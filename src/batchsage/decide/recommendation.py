"""What ``recommend`` returns: the answer as typed attributes, the evidence behind it, save/load.

The answer is what a user acts on: ``rec.batch_size``, ``rec.lr``, ``rec.accumulation_steps``
(``rec.micro_batch_size`` per pass), ``rec.warmup_steps`` and ``rec.predicted_seconds``. The rest
(candidates, pilots, races, noise scale, memory, throughput) is the evidence, in the JSON document
and the HTML report. ``rec.save(path)`` writes the document; ``Recommendation.load(path)`` reads it
back (this schema version or an older one).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from batchsage import plan
from batchsage.engine import TrainResult
from batchsage.errors import ConfigError
from batchsage.jsonio import write_json

#: Version of the JSON document. 1: the answer only under "recommended"; 2: also a
#: "schema_version", "why" lines and the prediction's interval.
SCHEMA_VERSION = 2


@dataclass
class PilotRun:
    """A short training run used to measure steps-to-level and the noise scale."""

    batch_size: int
    lr: float
    steps: int
    train_seconds: float
    wall_seconds: float
    reached_target: bool
    history: list[dict[str, float]]
    diverged: bool = False

    @classmethod
    def from_result(cls, result: TrainResult, wall_seconds: float) -> PilotRun:
        return cls(
            batch_size=result.batch_size,
            lr=result.lr,
            steps=result.steps,
            train_seconds=result.train_seconds,
            wall_seconds=wall_seconds,
            reached_target=result.reached_target,
            diverged=result.diverged,
            history=[
                {"step": p.step, "samples": p.samples, "train_seconds": p.train_seconds,
                 "metric": p.metric, "train_loss": p.train_loss}
                for p in result.history
            ],
        )

    def steps_and_metrics(self) -> tuple[list[float], list[float]]:
        return [p["step"] for p in self.history], [_number(p["metric"]) for p in self.history]


@dataclass
class NoiseSummary:
    """What the pilots measured about gradient noise, and what the plan used."""

    b_simple: float | None
    b_simple_ci95: tuple[float, float] | None
    growth_scale: float | None
    growth_exponent: float | None
    b_crit_pilot: float | None
    calibration: float | None
    b_noise: float
    method: str
    trajectory: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Recommendation:
    """The answer first, the evidence after.

    Attributes (the answer):
        batch_size: global batch per optimiser step.
        micro_batch_size, accumulation_steps: how a step is run (micro × accumulation = batch_size;
            accumulation above 1 only where the batch does not fit in memory in one pass).
        lr: peak learning rate. warmup_steps: linear warmup to it (0: none).
        predicted_steps, predicted_seconds: predicted optimiser steps and training seconds to the
            target (validation excluded); the seconds are the plan's (``model_seconds``) calibrated
            on the ground truth, ``predicted_interval`` their 80 % interval (see
            :mod:`batchsage.decide.prediction`).
    """

    task: str
    device: str
    batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    lr: float
    warmup_steps: int
    predicted_steps: float
    predicted_seconds: float
    candidates: list[plan.Candidate]
    s_min: float
    b_noise: float
    steps_at_pilot: float
    extrapolated: bool
    noise_scale: NoiseSummary
    memory: dict[str, Any]
    throughput: list[dict[str, Any]]
    pilots: list[PilotRun]
    lr_race: list[dict[str, Any]]
    lr_calibration: dict[str, Any] | None
    #: The (batch, lr) the lr rule is anchored at: the base batch at the best lr raced there.
    anchor: dict[str, Any]
    explanation: str
    decision_seconds: float
    phase_seconds: dict[str, float]
    metric_name: str
    target: float
    higher_is_better: bool
    #: Where a full validation pass did not fit the pilots' share of time: the pilots validated on
    #: a fixed random subset ({"samples", "of", "full_pass_seconds", "subset_pass_seconds"}).
    pilot_validation: dict[str, Any] | None = None
    #: The ``budget_seconds`` the decision was sized with.
    budget_seconds: float | None = None
    #: How far the first pilot got from its first validation to the target (0-1), see explain.
    pilot_coverage: float | None = None
    #: At most five short lines: why this answer (the console prints them under it).
    why: list[str] = field(default_factory=list)
    #: (low, high) training seconds to the target, and how the interval was obtained.
    predicted_interval: tuple[float, float] | None = None
    interval_basis: str | None = None
    #: The plan's own T(B) at the chosen batch, before calibration (the candidates' unit).
    model_seconds: float | None = None

    @property
    def recommended(self) -> dict[str, Any]:
        """The answer as one dict (the JSON document's "recommended" block)."""
        return {
            "batch_size": self.batch_size,
            "micro_batch_size": self.micro_batch_size,
            "accumulation_steps": self.accumulation_steps,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "predicted_steps": self.predicted_steps,
            "predicted_seconds": self.predicted_seconds,
            "predicted_interval": list(self.predicted_interval) if self.predicted_interval else None,
            "interval_basis": self.interval_basis,
            "model_seconds": self.model_seconds,
        }

    def candidate(self, batch_size: int) -> plan.Candidate | None:
        return next((c for c in self.candidates if c.batch_size == batch_size), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (what ``save`` writes and the reports render)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "device": self.device,
            "recommended": self.recommended,
            "why": list(self.why),
            "candidates": [asdict(c) for c in self.candidates],
            "s_min": self.s_min,
            "b_noise": self.b_noise,
            "steps_at_pilot": self.steps_at_pilot,
            "extrapolated": self.extrapolated,
            "noise_scale": asdict(self.noise_scale),
            "memory": self.memory,
            "throughput": self.throughput,
            "pilots": [asdict(p) for p in self.pilots],
            "lr_race": self.lr_race,
            "lr_calibration": self.lr_calibration,
            "anchor": self.anchor,
            "explanation": self.explanation,
            "decision_seconds": self.decision_seconds,
            "phase_seconds": self.phase_seconds,
            "metric": {"name": self.metric_name, "target": self.target,
                       "higher_is_better": self.higher_is_better},
            "pilot_validation": self.pilot_validation,
            "budget_seconds": self.budget_seconds,
            "pilot_coverage": self.pilot_coverage,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Recommendation:
        """Rebuild a recommendation from its JSON document (schema version 1 or 2)."""
        version = document.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ConfigError(f"recommendation schema version {version!r} is newer than this batchsage "
                              f"reads ({SCHEMA_VERSION}): upgrade batchsage")
        try:
            answer = document["recommended"]
            metric = document["metric"]
            interval = answer.get("predicted_interval")
            return cls(
                task=document["task"],
                device=document["device"],
                batch_size=int(answer["batch_size"]),
                micro_batch_size=int(answer["micro_batch_size"]),
                accumulation_steps=int(answer["accumulation_steps"]),
                lr=float(answer["lr"]),
                warmup_steps=int(answer["warmup_steps"]),
                predicted_steps=_number(answer["predicted_steps"], math.inf),
                predicted_seconds=_number(answer["predicted_seconds"], math.inf),
                candidates=[_candidate(c) for c in document["candidates"]],
                s_min=_number(document["s_min"]),
                b_noise=_number(document["b_noise"]),
                steps_at_pilot=_number(document.get("steps_at_pilot")),
                extrapolated=bool(document["extrapolated"]),
                noise_scale=_noise_summary(document["noise_scale"]),
                memory=document["memory"],
                throughput=document["throughput"],
                pilots=[PilotRun(**p) for p in document["pilots"]],
                lr_race=document["lr_race"],
                lr_calibration=document["lr_calibration"],
                anchor=document["anchor"],
                explanation=document["explanation"],
                decision_seconds=_number(document["decision_seconds"]),
                phase_seconds=document["phase_seconds"],
                metric_name=metric["name"],
                target=float(metric["target"]),
                higher_is_better=bool(metric["higher_is_better"]),
                pilot_validation=document.get("pilot_validation"),
                budget_seconds=document.get("budget_seconds"),
                pilot_coverage=document.get("pilot_coverage"),
                why=list(document.get("why") or []),
                predicted_interval=(float(interval[0]), float(interval[1])) if interval else None,
                interval_basis=answer.get("interval_basis"),
                model_seconds=answer.get("model_seconds"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"not a batchsage recommendation document: {type(exc).__name__}: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write the JSON document to ``path`` (atomically); returns the path."""
        target = Path(path)
        write_json(target, self.to_dict())
        return target

    @classmethod
    def load(cls, path: str | Path) -> Recommendation:
        """Read a recommendation saved by :meth:`save` (or ``batchsage recommend --out``)."""
        source = Path(path)
        if source.is_dir():
            source = source / "recommendation.json"
        try:
            document = json.loads(source.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read recommendation {source}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigError(f"{source} is not a batchsage recommendation document")
        return cls.from_dict(document)

    def __repr__(self) -> str:  # what a notebook prints: the answer first
        accumulation = (f" ({self.micro_batch_size} × {self.accumulation_steps} accumulation)"
                        if self.accumulation_steps > 1 else "")
        return (
            f"Recommendation(task={self.task!r}, batch_size={self.batch_size}{accumulation}, "
            f"lr={self.lr:.4g}, warmup_steps={self.warmup_steps}, "
            f"predicted_seconds={self.predicted_seconds:.1f}, decision_seconds={self.decision_seconds:.1f})"
        )


def _number(value: Any, missing: float = math.nan) -> float:
    """A JSON number as a float; null (written for NaN or infinity) as ``missing``."""
    return missing if value is None else float(value)


def _candidate(data: dict[str, Any]) -> plan.Candidate:
    names = {f.name for f in fields(plan.Candidate)}
    values = {key: value for key, value in data.items() if key in names}
    for key in ("predicted_steps", "step_seconds", "predicted_seconds"):
        values[key] = _number(values.get(key), math.inf)
    return plan.Candidate(**values)


def _noise_summary(data: dict[str, Any]) -> NoiseSummary:
    values = dict(data)
    if values.get("b_simple_ci95") is not None:
        values["b_simple_ci95"] = tuple(values["b_simple_ci95"])
    values["b_noise"] = _number(values.get("b_noise"))
    return NoiseSummary(**values)
