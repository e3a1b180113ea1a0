"""The three documents as tracker runs: what each logs, read from the JSON documents' keys only.

- ``recommend`` (``Recommendation.to_dict()``): the inputs as parameters; the answer under
  ``recommended/``; memory probes (``memory/peak_bytes``), t(B) (``throughput/...``) and the
  candidates' predictions against the batch size; the noise-scale trajectory
  (``noise_scale/...``) against the step; each pilot a child with its validation curve.
- ``fit`` (``FitResult.to_dict()``): the schedule taken (``schedule/batch_size``,
  ``schedule/lr``), the validation curve (``val/<metric>``), the noise scale and ETA against the
  step, the time breakdown (``times/...``); each raced fork a child with its outcome.
- ``sweep`` (``SweepResult.to_dict()``): the best configuration, compute saved, the best time per
  batch size; each trial a child.

Values that are not finite numbers (``null`` in the JSON) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from batchsage.trackers._base import Param, RunRecord, Series, TrackerError, finite

KINDS = ("recommend", "fit", "sweep")


def record_of(kind: str, document: Mapping[str, Any]) -> RunRecord:
    """The run ``kind``'s document logs (see the module docstring)."""
    builders = {"recommend": _recommend, "fit": _fit, "sweep": _sweep}
    if kind not in builders:
        raise TrackerError(f"unknown document kind {kind!r}: one of {', '.join(KINDS)}")
    try:
        return builders[kind](document)
    except (KeyError, TypeError, AttributeError) as exc:
        raise TrackerError(f"not a batchsage {kind} document: {type(exc).__name__}: {exc}") from None


# ---- helpers ------------------------------------------------------------------------------------


def _params(values: Mapping[str, Any]) -> dict[str, Param]:
    return {key: value for key, value in values.items()
            if isinstance(value, str | bool) or finite(value) is not None}


def _summary(values: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        number = finite(value)
        if number is not None:
            out[key] = number
    return out


def _prefixed(prefix: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    return {f"{prefix}/{key}": value for key, value in (values or {}).items()}


def _series(key: str, x_name: str, rows: Iterable[Mapping[str, Any]] | None, y_key: str) -> Series:
    points = []
    for row in rows or ():
        x, y = row.get(x_name), finite(row.get(y_key))
        if isinstance(x, int) and not isinstance(x, bool) and y is not None:
            points.append((x, y))
    return Series(key, x_name, points)


def _metric(document: Mapping[str, Any]) -> dict[str, Any]:
    metric = document["metric"]
    return {"metric": metric["name"], "target": metric["target"],
            "higher_is_better": metric["higher_is_better"]}


def _lr(value: Any) -> str:
    number = finite(value)
    return f"{number:.4g}" if number is not None else "?"


def redact(url: str) -> str:
    """A storage URL without its password (``postgresql://user:***@host/db``)."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


# ---- the documents ------------------------------------------------------------------------------


def _recommend(document: Mapping[str, Any]) -> RunRecord:
    answer = document["recommended"]
    noise = document.get("noise_scale") or {}
    memory = document.get("memory") or {}
    anchor = document.get("anchor") or {}
    metric_name = document["metric"]["name"]
    record = RunRecord(name=f"batchsage recommend {document['task']}", role="recommend")
    record.params = _params({
        "command": "recommend", "task": document["task"], "device": document["device"],
        "budget_seconds": document.get("budget_seconds"), **_metric(document),
        "anchor_batch_size": anchor.get("batch_size"), "anchor_lr": anchor.get("lr"),
        "task_base_lr": anchor.get("task_base_lr"),
    })
    record.summary = _summary({
        **_prefixed("recommended", {key: answer.get(key) for key in (
            "batch_size", "micro_batch_size", "accumulation_steps", "lr", "warmup_steps",
            "predicted_steps", "predicted_seconds")}),
        "decision_seconds": document.get("decision_seconds"), "s_min": document.get("s_min"),
        "b_noise": document.get("b_noise"), "b_simple": noise.get("b_simple"),
        "memory/max_batch_size": memory.get("max_batch_size"),
        "memory/budget_bytes": memory.get("budget_bytes"),
        **_prefixed("phase_seconds", document.get("phase_seconds")),
    })
    probes = memory.get("probes") or []
    throughput = document.get("throughput") or []
    candidates = document.get("candidates") or []
    trajectory = noise.get("trajectory") or []
    record.series = [
        _series("memory/peak_bytes", "batch_size", probes, "peak_bytes"),
        _series("throughput/step_seconds", "batch_size", throughput, "step_seconds_median"),
        _series("throughput/samples_per_second", "batch_size", throughput, "samples_per_second"),
        _series("candidates/predicted_seconds", "batch_size", candidates, "predicted_seconds"),
        _series("candidates/predicted_steps", "batch_size", candidates, "predicted_steps"),
        _series("candidates/lr", "batch_size", candidates, "lr"),
        _series("noise_scale/b_simple", "step", trajectory, "b_simple"),
        _series("noise_scale/train_loss", "step", trajectory, "train_loss"),
    ]
    record.text = {"why": "\n".join(document.get("why") or []),
                   "explanation": document.get("explanation") or ""}
    for index, pilot in enumerate(document.get("pilots") or [], start=1):
        child = RunRecord(name=f"pilot {index} B={pilot['batch_size']} lr={_lr(pilot['lr'])}", role="pilot")
        child.params = _params({"pilot": index, "batch_size": pilot["batch_size"], "lr": pilot["lr"]})
        child.summary = _summary({key: pilot.get(key) for key in (
            "steps", "train_seconds", "wall_seconds", "reached_target", "diverged")})
        history = pilot.get("history") or []
        child.series = [_series(f"val/{metric_name}", "step", history, "metric"),
                        _series("train_loss", "step", history, "train_loss")]
        record.children.append(child)
    return record


def _fit(document: Mapping[str, Any]) -> RunRecord:
    metric_name = document["metric"]["name"]
    record = RunRecord(name=f"batchsage fit {document['task']}", role="fit")
    record.params = _params({
        "command": "fit", "task": document["task"], "device": document["device"],
        "seed": document.get("seed"), **_metric(document), "resumed": document.get("resumed"),
        **_prefixed("options", document.get("options")),
    })
    record.summary = _summary({
        **{key: document.get(key) for key in (
            "reached_target", "final_metric", "steps", "samples", "batch_size", "lr")},
        **_prefixed("times", document.get("times")),
    })
    schedule = document.get("schedule") or []
    history = document.get("history") or []
    noise = document.get("noise") or []
    record.series = [
        _series("schedule/batch_size", "step", schedule, "batch_size"),
        _series("schedule/lr", "step", schedule, "lr"),
        _series("schedule/accumulation_steps", "step", schedule, "accumulation_steps"),
        _series(f"val/{metric_name}", "step", history, "metric"),
        _series("train_loss", "step", history, "train_loss"),
        _series("noise_scale/b_simple", "step", noise, "b_simple"),
        _series("noise_scale/train_loss", "step", noise, "train_loss"),
        _series("eta/eta_seconds", "step", document.get("eta"), "eta_seconds"),
    ]
    record.text = {
        "stop_reason": str(document.get("stop_reason") or ""),
        "schedule": "\n".join(
            f"step {row['step']}: B={row['batch_size']} (accumulation {row.get('accumulation_steps', 1)}), "
            f"lr {_lr(row['lr'])}: {row.get('reason', '')}" for row in schedule),
    }
    for race_index, race in enumerate(document.get("races") or [], start=1):
        for outcome in race.get("outcomes") or []:
            child = RunRecord(
                name=f"race {race_index} {outcome['role']} B={outcome['batch_size']} lr={_lr(outcome['lr'])}",
                role="fork")
            child.params = _params({
                "race": race_index, "race_kind": race.get("kind"), "race_step": race.get("step"),
                "fork_role": outcome["role"], "batch_size": outcome["batch_size"], "lr": outcome["lr"],
                "accumulation_steps": outcome.get("accumulation_steps"), "winner": race.get("winner") or "",
            })
            child.summary = _summary({key: outcome.get(key) for key in (
                "cooled_loss", "advantage_seconds", "advantage_se", "won", "steps", "samples",
                "train_seconds", "diverged")})
            record.children.append(child)
    return record


def _sweep(document: Mapping[str, Any]) -> RunRecord:
    best = document.get("best") or {}
    record = RunRecord(name=f"batchsage sweep {document['task']}", role="sweep")
    record.params = _params({
        "command": "sweep", "task": document["task"], "procedure": document.get("procedure"),
        "study": document.get("study"), "storage": redact(str(document.get("storage") or "")),
        **_metric(document),
    })
    record.summary = _summary({
        **_prefixed("best", {key: best.get(key) for key in ("batch_size", "lr", "seconds_to_target")}),
        **{key: document.get(key) for key in (
            "saved_fraction", "spent_train_seconds", "estimated_full_train_seconds", "wall_seconds",
            "trials_run_here", "trials_finished")},
    })
    per_batch = document.get("best_per_batch_size") or []
    record.series = [
        _series("best_per_batch_size/seconds_to_target", "batch_size", per_batch, "seconds_to_target"),
        _series("best_per_batch_size/lr", "batch_size", per_batch, "lr"),
    ]
    for index, trial in enumerate(document.get("trials") or []):
        number = trial.get("number", index)
        child = RunRecord(
            name=f"trial {number} B={trial['batch_size']} lr={_lr(trial['lr'])} seed={trial.get('seed', 0)}",
            role="trial")
        child.params = _params({
            "trial": number, "batch_size": trial["batch_size"], "lr": trial["lr"], "seed": trial.get("seed"),
            "state": trial.get("state"), "stop_reason": trial.get("stop_reason"),
        })
        child.summary = _summary({key: trial.get(key) for key in (
            "reached_target", "seconds_to_target", "steps_to_target", "final_metric", "train_seconds",
            "steps", "step_seconds_median", "estimated_full_seconds", "wall_seconds", "diverged",
            "out_of_memory")})
        record.children.append(child)
    return record
