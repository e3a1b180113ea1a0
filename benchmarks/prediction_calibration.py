"""How far ``recommend``'s predicted time to target is from the measured one, and the interval it prints.

    python benchmarks/prediction_calibration.py [--results benchmarks/results] [--write]

Every ground-truth decision (the first and the repeated ones) has a predicted time (the plan's
T(B) at the chosen batch) and a measured one (the median over the grid's seeds of the chosen
configuration's time to target). Their ratio measured ÷ predicted is the model's error.

The printed prediction is the model's T(B) × the level (the geometric mean of the tasks' median
ratios), with the 80 % Student-t prediction interval for a new task from the spread between
tasks (``batchsage.decide.prediction``). Judged honestly, leave one task out: each task's
decisions are predicted with the ratios of the other tasks only, and the report gives the median
|error| of the corrected level and how many measured times fall inside their interval. ``--write``
stores the ratios of all development tasks in the package (``batchsage/decide/prediction.json``),
where ``recommend`` reads them. Evaluation tasks (``batchsage.tasks.GROUPS``) are never used to
calibrate; they are reported separately, predicted with the development tasks' ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchsage.decide.prediction import CALIBRATION_PATH, Calibration
from batchsage.jsonio import write_json

HERE = Path(__file__).resolve().parent


def decisions(document: dict[str, Any]) -> list[tuple[float, float]]:
    """(predicted seconds, measured median seconds) of every decision of a ground truth."""
    pairs = []
    first = (document.get("decisions") or {}).get("recommendation")
    measured = (document.get("strategies") or {}).get("batchsage") or {}
    if first and measured.get("seconds_to_target"):
        pairs.append((float(first["recommended"]["predicted_seconds"]), float(measured["seconds_to_target"])))
    spread = (document.get("batchsage_decisions") or {}).get("decisions") or []
    for repeat, result in zip(document.get("repeat_decisions") or [], spread[1:], strict=False):
        seconds = [s for s in result.get("per_seed_seconds") or [] if s is not None]
        predicted = (repeat.get("details") or {}).get("predicted_seconds")
        if predicted and len(seconds) == len(result.get("per_seed_seconds") or []) and seconds:
            pairs.append((float(predicted), statistics.median(seconds)))
    return pairs


def evaluate(by_task: dict[str, list[tuple[float, float]]], held_out: dict[str, list[tuple[float, float]]]
             ) -> dict[str, Any]:
    """Leave-one-task-out over ``by_task``; ``held_out`` tasks predicted with all of ``by_task``."""
    rows = []
    for task, pairs in {**by_task, **held_out}.items():
        others = {name: [m / p for p, m in ps] for name, ps in by_task.items() if name != task}
        calibration = Calibration.from_tasks(others)
        for predicted, measured in pairs:
            low, high = calibration.interval(predicted)
            level = calibration.level(predicted)
            rows.append({"task": task, "group": "evaluation" if task in held_out else "development",
                         "predicted_model": predicted, "predicted": level, "low": low, "high": high,
                         "measured": measured, "error": abs(level - measured) / measured,
                         "inside": low <= measured <= high})
    summary = {}
    for group in ("development", "evaluation"):
        members = [r for r in rows if r["group"] == group]
        if members:
            summary[group] = {
                "decisions": len(members),
                "median_level_error": statistics.median(r["error"] for r in members),
                "model_median_error": statistics.median(
                    abs(r["predicted_model"] - r["measured"]) / r["measured"] for r in members),
                "coverage": sum(r["inside"] for r in members) / len(members),
            }
    return {"rows": rows, "summary": summary}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--write", action="store_true",
                        help="store the development tasks' ratios in the package")
    args = parser.parse_args(argv)
    from batchsage.tasks import GROUPS

    development, evaluation = {}, {}
    for path in sorted(args.results.glob("*.json")):
        document = json.loads(path.read_text())
        if not isinstance(document, dict) or document.get("status") != "complete":
            continue
        pairs = decisions(document)
        if not pairs:
            continue
        (evaluation if document["task"] in GROUPS["evaluation"] else development)[document["task"]] = pairs
    report = evaluate(development, evaluation)
    report["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(args.results / "prediction_calibration.json", report)
    print(json.dumps(report["summary"], indent=1))
    if args.write:
        by_task = {task: [m / p for p, m in pairs] for task, pairs in development.items()}
        calibration = Calibration.from_tasks(by_task, date=report["date"][:10])
        calibration.save(CALIBRATION_PATH)
        print(f"wrote {CALIBRATION_PATH} from {calibration.decisions} decisions on {len(by_task)} tasks "
              f"(level {calibration.median:.2f}, interval {calibration.low:.2f}-{calibration.high:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
