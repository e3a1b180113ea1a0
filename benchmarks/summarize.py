"""Render every ground-truth result into one Markdown table and one plot per task.

    python benchmarks/summarize.py [--results benchmarks/results]

Reads ``<results>/*.json`` written by ``groundtruth.py``, writes ``<results>/SUMMARY.md`` (the
table the README shows: regret and decision cost per task per strategy, with date and machine) and
``<results>/<task>.png`` (time to target against B, one line per lr multiplier, each strategy's
pick marked), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchsage.tasks import GROUPS
from gt_regret import Lead, Totals, lead, lead_over_all, strategy_totals

STRATEGY_ORDER = ("batchsage", "default32", "memory_ceiling", "max_throughput", "doubling")
MARKERS = {"batchsage": "*", "default32": "o", "memory_ceiling": "s", "max_throughput": "^",
           "doubling": "D"}


def group_of(task: str) -> str:
    """The task's group (batchsage.tasks.GROUPS), "other" for a task outside the built-in ones."""
    return next((group for group, names in GROUPS.items() if task in names), "other")


GROUP_ORDER = (*GROUPS, "other")


def load_results(directory: Path) -> list[dict[str, Any]]:
    """Every result document with strategies: the development tasks, then the evaluation tasks,
    then any other, each sorted by task name."""
    documents = []
    for path in sorted(directory.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(document, dict) and document.get("strategies") and document.get("best") and (
                "grid" in document and "decisions" in document):
            documents.append(document)
    return sorted(documents, key=lambda d: (GROUP_ORDER.index(group_of(d["task"])), d["task"]))


def format_cell(result: dict[str, Any] | None) -> str:
    """``regret / decision cost (B)``; a run cut before the target shows ``≥ bound``."""
    if result is None:
        return "–"
    regret = result.get("regret")
    if regret is not None:
        shown = f"{regret:.2f}"
    elif result.get("regret_at_least") is not None:
        shown = f"≥ {result['regret_at_least']:.1f}"
    else:
        shown = "not reached"
    return f"{shown} / {result['decision_cost']:.2f} (B={result['batch_size']})"


def machine_label(machine: dict[str, Any]) -> str:
    parts = [f"{machine.get('cpu_count', '?')} CPU"]
    if machine.get("gpu"):
        parts.append(str(machine["gpu"]))
    parts.append(f"torch {machine.get('torch', '?')}")
    return ", ".join(parts)


def render_table(documents: Sequence[dict[str, Any]]) -> str:
    """The Markdown table: one row per task, one column per strategy."""
    # Fixed-configuration strategies only: fit and the adaptive controller, which change B as they
    # train, are in the end-to-end table.
    fixed = {n for d in documents for n, r in d["strategies"].items() if "batch_size" in r}
    names = [n for n in STRATEGY_ORDER if n in fixed]
    names += sorted(fixed - set(names))
    header = ["task", "best (B, lr, s to target)", "best on fresh seeds", *names, "goal met", "date",
              "machine"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for document in documents:
        best = document["best"]
        status = "" if document.get("status") == "complete" else " (partial)"
        group = group_of(document["task"])
        row = [
            document["task"] + (" (evaluation)" if group == "evaluation" else "") + status,
            f"B={best['batch_size']}, lr={best['lr']:.3g}, {best['seconds_to_target']:.3g} s",
            heldout_cell(document.get("best_heldout")),
            *[format_cell(document["strategies"].get(name)) for name in names],
            _goal_cell(document.get("goal", {})),
            str(document.get("date", ""))[:10],
            machine_label(document.get("machine", {})),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def heldout_cell(heldout: dict[str, Any] | None) -> str:
    """The best configuration re-trained on fresh seeds, as a ratio to its grid time."""
    if not heldout:
        return "–"
    ratio = heldout.get("ratio_to_grid_best")
    return "not reached" if ratio is None else f"{ratio:.2f}×"


def _goal_cell(goal: dict[str, Any]) -> str:
    if not goal:
        return "–"
    checks = [("regret ≤ 1.10", goal.get("regret_ok")), ("cost ≤ 0.10", goal.get("decision_cost_ok")),
              ("beats all", goal.get("beats_every_strategy"))]
    missed = [label for label, ok in checks if not ok]
    return "yes" if not missed else "no: " + ", ".join(missed)


def render_summary(documents: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Ground truth: regret and decision cost per task",
        "",
        "Each cell: **regret / decision cost (chosen B)**. Regret = the strategy's median time to target "
        "over seeds ÷ the best grid configuration's; decision cost = seconds spent choosing ÷ that best "
        "time (1.00 / 0.00 would be a free, perfect choice). Time to target = steps to target × the "
        "step time at that B, timed for all B interleaved in the same run (training time; validation "
        "excluded). \"≥ x\": the runs were cut at 3× the best time before reaching the target. "
        "\"Best on fresh seeds\": the best configuration re-trained on seeds the grid did not use, ÷ its "
        "grid time: the best of dozens of noisy medians is picked partly for luck, and a regret "
        "below this ratio is within the grid's own noise. "
        "Protocol: docs/groundtruth.md.",
        "",
        render_table(documents),
        "",
    ]
    regret_line = _regret_line(documents)
    if regret_line:
        lines += [regret_line, ""]
    spread = render_decision_spread(documents)
    if spread:
        lines += ["batchsage decided more than once (each decision trained on the grid's seeds; the "
                  "table shows the first):", "", spread, ""]
    payoff = render_payoff(documents)
    if payoff:
        lines += [
            "When batchsage's decision pays for itself: the lengths of training (T = the best "
            "configuration's seconds to target) for which batchsage, decision included, reaches the "
            "target before each other strategy, decision included — if the regrets measured here "
            "held at other lengths. batchsage's decision takes the same seconds whatever the "
            "target (its pilots run for a fixed budget); the doubling sweep's grows with T. "
            "batchsage: the median regret and decision seconds of its decisions; "
            "\"≤\": the other's runs were cut, so it pays off sooner; (×) = T ÷ this task's T.",
            "",
            payoff,
            "",
        ]
    diagnosis = render_diagnosis(documents)
    if diagnosis:
        lines += [
            "Where batchsage's model is off (median |log2(predicted ÷ measured)| over the batch sizes "
            "of the grid: 0 = exact, 1 = off by 2×; steps are compared with the steps the best lr "
            "at that B needed):",
            "",
            diagnosis,
            "",
        ]
    end_to_end = render_end_to_end(documents)
    if end_to_end:
        lines += [
            "End to end: everything a strategy spent until the model reached the target, decision "
            "included, ÷ the best fixed configuration's time to target (the headline: 1.00 would be "
            "as fast as the best configuration found in hindsight, with no decision cost). "
            "default32 and batchsage (recommend, then train): regret + decision cost. batchsage_fit: "
            "every step of the kept run, the losing forks and the cooldowns priced at the ground "
            "truth's t(B), plus the measured seconds of scoring, forking and memory probes (median "
            "over seeds; in brackets the same on this run's clock, ÷ the best configuration re-trained "
            "beside it). adaptive: the adaptive-batch controller from the task's base, steps × t(B). "
            "ETA: |ETA − actual| ÷ actual remaining time, at 25 % of fit's run (median over seeds). "
            "\"≥ x\": the runs were cut at 3× the best time before the target; x is the ratio they had "
            "passed (medians and worsts that include one are lower bounds). "
            "Produced by benchmarks/live_strategies.py.",
            "",
            end_to_end,
            "",
        ]
    machines = {json.dumps(d.get("machine", {}), sort_keys=True) for d in documents}
    lines.append("Machines:")
    lines.extend(f"- `{m}`" for m in sorted(machines))
    lines.append("")
    return "\n".join(lines)


def _regret_line(documents: Sequence[dict[str, Any]]) -> str:
    """batchsage's median and worst regret, per group where the tasks span more than one."""
    by_group: dict[str, list[float]] = defaultdict(list)
    for document in documents:
        regret = document["strategies"].get("batchsage", {}).get("regret")
        if regret is not None:
            by_group[group_of(document["task"])].append(regret)
    groups = [group for group in GROUP_ORDER if by_group[group]]
    parts = [f"median regret {statistics.median(by_group[group]):.2f}, worst {max(by_group[group]):.2f} "
             f"over {len(by_group[group])} task(s)" for group in groups]
    if len(parts) <= 1:
        return f"batchsage: {parts[0]}." if parts else ""
    labels = {"development": "on the development tasks",
              "evaluation": "on the evaluation tasks (never tuned on)", "other": "on other tasks"}
    return "batchsage " + "; ".join(f"{labels[group]}: {part}"
                                   for group, part in zip(groups, parts, strict=True)) + "."


def render_end_to_end(documents: Sequence[dict[str, Any]]) -> str:
    """Per task (development first): the end-to-end ratio of every strategy; medians per group."""
    rows, by_group = [], defaultdict(lambda: defaultdict(list))
    for document in documents:
        strategies = document.get("strategies") or {}
        fit = strategies.get("batchsage_fit")
        if not fit:
            continue
        group = group_of(document["task"])
        cells = {}
        for name in ("default32", "batchsage", "batchsage_fit", "adaptive"):
            result = strategies.get(name) or {}
            value = result.get("end_to_end")
            cells[name] = value if value is not None else _at_least_text(result.get("end_to_end_at_least"))
            # A cut run counts at its bound: the median and worst are then lower bounds too.
            bound = value if value is not None else result.get("end_to_end_at_least")
            if bound is not None:
                by_group[group][name].append(bound)
        measured = fit.get("end_to_end_measured")
        eta = fit.get("eta_error_at_25_percent")
        rows.append(
            f"| {document['task']} | {group} | {document['best']['seconds_to_target']:.1f} s | "
            f"{_ratio_text(cells['default32'])} | {_ratio_text(cells['batchsage'])} | "
            f"{_ratio_text(cells['batchsage_fit'])} ({_ratio_text(measured)}) | "
            f"{_ratio_text(cells['adaptive'])} | {'yes' if fit.get('beats_default32') else 'no'} | "
            f"{'-' if eta is None else f'{eta:.0%}'} | {fit.get('reached_runs')}/{fit.get('runs')} |")
    if not rows:
        return ""
    table = _markdown_table(["task", "group", "best fixed", "default32", "batchsage (recommend)",
                             "batchsage_fit", "adaptive", "fit beats default32", "ETA error at 25 %",
                             "fit reached"], rows)
    medians = []
    for group, values in by_group.items():
        parts = [f"{name} {statistics.median(v):.2f} (worst {max(v):.2f})"
                 for name, v in values.items() if v]
        tasks = len(values.get("batchsage_fit", []))
        medians.append(f"- {group} ({tasks} tasks), median: " + "; ".join(parts))
    return table + "\n\n" + "\n".join(medians)


def _ratio_text(value: float | str | None) -> str:
    if isinstance(value, str):
        return value
    return "not reached" if value is None else f"{value:.2f}"


def _at_least_text(bound: float | None) -> str | None:
    """A run cut before the target, shown as the ratio it had passed (None: no bound known)."""
    return None if bound is None else f"≥ {bound:.2f}"


def render_decision_spread(documents: Sequence[dict[str, Any]]) -> str:
    """One row per task with repeated decisions: each decision's (B, lr) and regret, and their median."""
    rows = []
    for document in documents:
        spread = document.get("batchsage_decisions")
        if not spread:
            continue
        picks = ", ".join(f"B={d['batch_size']} lr={d['lr']:.3g}: {_regret_text(d['regret'])}"
                          for d in spread["decisions"])
        rows.append(f"| {document['task']} | {len(spread['decisions'])} | {picks} | "
                    f"{_regret_text(spread['median_regret'])} | {_regret_text(spread['worst_regret'])} | "
                    f"{spread['median_decision_seconds']:.0f} |")
    if not rows:
        return ""
    header = "| task | decisions | each decision: regret | median regret | worst | median decision s |"
    return "\n".join([header, "|---|---:|---|---:|---:|---:|", *rows])


def _regret_text(regret: float | None) -> str:
    return "not reached" if regret is None else f"{regret:.2f}"


def render_diagnosis(documents: Sequence[dict[str, Any]]) -> str:
    """One row per task: the recommender's predicted vs measured best B and its factor errors."""
    header = ["task", "predicted best B", "measured best B", "t(B) error", "S(B) error",
              "S(B) shape error", "lr error", "T(B) error"]
    rows = []
    for document in documents:
        summary = (document.get("diagnosis") or {}).get("summary")
        if not summary:
            continue
        rows.append("| " + " | ".join([
            document["task"],
            str(summary.get("predicted_best_batch_size")),
            str(summary.get("measured_best_batch_size")),
            *[_log2(summary.get(key)) for key in ("step_seconds_log2_error", "steps_log2_error",
                                                  "steps_shape_log2_error", "lr_log2_error",
                                                  "seconds_log2_error")],
        ]) + " |")
    return _markdown_table(header, rows)


def render_payoff(documents: Sequence[dict[str, Any]]) -> str:
    """One row per task: from which training length batchsage is ahead of each strategy and of all."""
    names = [n for n in STRATEGY_ORDER[1:] if any(n in d["strategies"] for d in documents)]
    header = ["task", "batchsage: regret, decision s", *[f"vs {n}" for n in names], "vs all",
              "decision cost ≤ 0.10 from"]
    rows = []
    for document in documents:
        ours = _batchsage_median(document)
        if ours is None:
            continue
        regret_value, decision_seconds = ours
        totals = strategy_totals("batchsage", regret_value, None, decision_seconds, 0.0)
        best_seconds = document["best"]["seconds_to_target"]
        leads = {name: lead(totals, _totals(name, document["strategies"][name]))
                 for name in names if name in document["strategies"]}
        cells = [_lead_text(leads[n], best_seconds) if n in leads else "–" for n in names]
        rows.append("| " + " | ".join([
            document["task"], f"{regret_value:.2f}, {decision_seconds:.0f} s", *cells,
            _lead_text(lead_over_all(leads.values()), best_seconds),
            _lead_text(Lead(low=10.0 * decision_seconds), best_seconds),
        ]) + " |")
    return _markdown_table(header, rows)


def _batchsage_median(document: dict[str, Any]) -> tuple[float, float] | None:
    """batchsage's regret and decision seconds: the medians over its decisions where it decided
    more than once, else its one decision; None if it did not reach the target."""
    spread = document.get("batchsage_decisions")
    if spread and spread.get("median_regret") is not None:
        return spread["median_regret"], spread["median_decision_seconds"]
    single = document["strategies"].get("batchsage")
    if not single or single.get("regret") is None:
        return None
    return single["regret"], single["decision_seconds"]


def _totals(name: str, result: dict[str, Any]) -> Totals | None:
    return strategy_totals(name, result.get("regret"), result.get("regret_at_least"),
                           result["decision_seconds"], result["decision_cost"])


def _lead_text(each: Lead, best_seconds: float) -> str:
    def length(seconds: float) -> str:
        shown = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"
        return f"{shown} s ({seconds / best_seconds:.1f}×)"

    if each.unknown:
        return "? (runs cut)"
    if each.never:
        return "never"
    bound = "≤ " if each.low_is_upper_bound else ""
    if each.low <= 0 and math.isinf(each.high):
        return "always"
    if math.isinf(each.high):
        return f"from {bound}{length(each.low)}"
    if each.low <= 0:
        return f"until {length(each.high)}"
    return f"{bound}{length(each.low)} to {length(each.high)}"


def _markdown_table(header: list[str], rows: list[str]) -> str:
    """Header and separator above ``rows`` (already rendered); "" when there are no rows."""
    if not rows:
        return ""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])


def _log2(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def plot_task(document: dict[str, Any], path: Path) -> None:
    """Time to target vs B, one line per lr multiplier, each strategy's pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    for multiplier, points in sorted(_lines(document["grid"]).items()):
        xs = [b for b, s in points if s is not None]
        ys = [s for _, s in points if s is not None]
        axes.plot(xs, ys, marker=".", label=f"lr = rule × {multiplier:g}", alpha=0.8)
    extra = _extra_points(document["grid"])
    if extra:
        axes.scatter([b for b, _ in extra], [s for _, s in extra], color="grey", s=14,
                     label="other (B, lr) tried", zorder=2)
    ceiling = _plot_ceiling(document)
    same_batch: dict[int, int] = defaultdict(int)
    for name, result in document["strategies"].items():
        if "batch_size" not in result:  # fit and the adaptive controller change B as they train
            continue
        seconds = result.get("seconds_to_target")
        shown = seconds if seconds is not None else ceiling
        # Picks at the same B are nudged sideways so that none hides another.
        nudge = 1.06 ** same_batch[result["batch_size"]]
        same_batch[result["batch_size"]] += 1
        label = f"{name}: regret {result['regret']:.2f}" if result.get("regret") is not None else (
            f"{name}: not reached")
        axes.scatter([result["batch_size"] * nudge], [shown], marker=MARKERS.get(name, "P"), s=110,
                     edgecolors="black", linewidths=0.8, zorder=5, label=label)
    best = document["best"]
    axes.axhline(best["seconds_to_target"], color="black", linestyle=":", linewidth=0.8,
                 label=f"best: B={best['batch_size']}, {best['seconds_to_target']:.3g} s")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("batch size B")
    axes.set_ylabel("seconds to target (median over seeds)")
    axes.set_title(f"{document['task']}: time to target ({str(document.get('date', ''))[:10]})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _median_by_config(grid: list[dict[str, Any]]) -> dict[tuple[int, float, Any], float | None]:
    """Median over seeds per (B, lr); None when the median run did not reach the target."""
    groups: dict[tuple[int, float], list[float]] = defaultdict(list)
    multipliers: dict[tuple[int, float], Any] = {}
    for row in grid:
        config = (int(row["batch_size"]), float(f"{row['lr']:.9g}"))
        seconds = row.get("seconds_to_target")
        groups[config].append(math.inf if seconds is None else float(seconds))
        if row.get("lr_multiplier") is not None:  # top-up rows of a grid point carry none
            multipliers[config] = row["lr_multiplier"]
    medians: dict[tuple[int, float, Any], float | None] = {}
    for config, values in groups.items():
        key = (*config, multipliers.get(config))
        ordered = sorted(values)
        middle = len(ordered) // 2
        value = ordered[middle] if len(ordered) % 2 else (
            math.inf if math.isinf(ordered[middle]) else (ordered[middle - 1] + ordered[middle]) / 2)
        medians[key] = value if math.isfinite(value) else None
    return medians


def _lines(grid: list[dict[str, Any]]) -> dict[float, list[tuple[int, float | None]]]:
    lines: dict[float, list[tuple[int, float | None]]] = defaultdict(list)
    for (batch, _, multiplier), seconds in sorted(_median_by_config(grid).items()):
        if multiplier is not None:
            lines[float(multiplier)].append((batch, seconds))
    return lines


def _extra_points(grid: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(batch, seconds) for (batch, _, multiplier), seconds in _median_by_config(grid).items()
            if multiplier is None and seconds is not None]


def _plot_ceiling(document: dict[str, Any]) -> float:
    """Where an unreached strategy's marker goes: above the slowest finite time."""
    times = [r["seconds_to_target"] for r in document["grid"] if r.get("seconds_to_target")]
    return 1.5 * max(times) if times else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render ground-truth results: table and plots.")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    documents = load_results(args.results)
    if not documents:
        print(f"no ground-truth results in {args.results}", file=sys.stderr)
        return 1
    for document in documents:
        plot_task(document, args.results / f"{document['task']}.png")
    summary = render_summary(documents)
    (args.results / "SUMMARY.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
