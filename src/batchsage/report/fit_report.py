"""The report of a ``fit`` run: the schedule it took, its races, where its time went.

Rendered from the ``fit.json`` document alone (so a saved run can be re-rendered), with the same
page style as the recommendation's report.
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.figure import Figure

from batchsage.report.console import MISSING, finite, fmt, fmt_batch, fmt_seconds

TEMPLATE_NAME = "fit.html"
TEMPLATES_DIR = Path(__file__).parent / "templates"

#: The time breakdown's rows: (key in fit.json "times", what it is).
TIME_PARTS = (
    ("kept_train_seconds", "training of the kept run"),
    ("discarded_fork_seconds", "raced forks that lost, and cooldowns"),
    ("race_validation_seconds", "scoring races (validation loss)"),
    ("fork_seconds", "copying the run for forks"),
    ("probe_seconds", "memory probes"),
    ("scheduled_validation_seconds", "scheduled validations (not counted end to end)"),
    ("checkpoint_seconds", "checkpoints (not counted end to end)"),
)


def schedule_plot(document: Mapping[str, Any]) -> Figure:
    """Metric, batch size and lr of the kept run against its training seconds."""
    figure = Figure(figsize=(9.0, 6.4), dpi=110, layout="constrained")
    metric_axes, batch_axes, lr_axes = figure.subplots(3, 1, sharex=True, height_ratios=(2.2, 1, 1))
    history = [p for p in document.get("history") or [] if finite(p.get("metric")) is not None]
    metric = document.get("metric") or {}
    if history:
        metric_axes.plot([p["train_seconds"] for p in history], [p["metric"] for p in history],
                         marker=".", color="#1f77b4", label=metric.get("name") or "metric")
    if finite(metric.get("target")) is not None:
        metric_axes.axhline(metric["target"], color="#2ca02c", linestyle="--", label="target")
    metric_axes.set_ylabel(metric.get("name") or "metric")
    metric_axes.legend(loc="best", fontsize=9)
    schedule = _steps(document)
    for axes, key, label in ((batch_axes, "batch_size", "batch size"), (lr_axes, "lr", "learning rate")):
        if schedule:
            axes.step([s["train_seconds"] for s in schedule], [s[key] for s in schedule], where="post",
                      color="#ff7f0e")
        axes.set_yscale("log", base=2 if key == "batch_size" else 10)
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    metric_axes.grid(True, alpha=0.3)
    lr_axes.set_xlabel("training seconds of the kept run")
    return figure


def _steps(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The schedule, extended to the end of the run so the last setting shows."""
    schedule = list(document.get("schedule") or [])
    end = finite((document.get("times") or {}).get("kept_train_seconds"))
    if schedule and end is not None:
        schedule.append({**schedule[-1], "train_seconds": end})
    return schedule


def _figure_uri(figure: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _outcome(document: Mapping[str, Any]) -> str:
    metric = document.get("metric") or {}
    relation = "≥" if metric.get("higher_is_better", True) else "≤"
    seconds = fmt_seconds((document.get("times") or {}).get("end_to_end_seconds"))
    if document.get("reached_target"):
        return (f"Reached {metric.get('name')} {fmt(document.get('final_metric'), '.4g')} {relation} "
                f"{fmt(metric.get('target'), 'g')} in {seconds} end to end.")
    target = f"{relation} {fmt(metric.get('target'), 'g')}"
    return (f"Stopped ({document.get('stop_reason')}) at {metric.get('name')} "
            f"{fmt(document.get('final_metric'), '.4g')}, target {target}, after {seconds}.")


def _cards(document: Mapping[str, Any]) -> list[dict[str, str]]:
    times = document.get("times") or {}
    races = document.get("races") or []
    won = sum(1 for race in races if race.get("winner") != "incumbent")
    return [
        {"label": "end to end", "value": fmt_seconds(times.get("end_to_end_seconds")),
         "note": "training, forks, scoring, probes"},
        {"label": "final batch", "value": fmt_batch(document.get("batch_size")), "note": "samples per step"},
        {"label": "final lr", "value": fmt(document.get("lr"), ".3g"), "note": "peak learning rate"},
        {"label": "races", "value": str(len(races)), "note": f"{won} won by a challenger"},
    ]


def _schedule_rows(document: Mapping[str, Any]) -> list[list[str]]:
    return [[str(s.get("step")), fmt(s.get("train_seconds"), ".1f"), fmt_batch(s.get("batch_size")),
             f"{fmt_batch(s.get('batch_size') // max(s.get('accumulation_steps') or 1, 1))} × "
             f"{s.get('accumulation_steps') or 1}", fmt(s.get("lr"), ".3g"), str(s.get("reason") or "")]
            for s in document.get("schedule") or []]


def _race_rows(document: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for race in document.get("races") or []:
        for outcome in race.get("outcomes") or []:
            incumbent = outcome.get("role") == "incumbent"
            advantage = (f"{fmt(outcome.get('advantage_seconds'), '+.2f')} ± "
                         f"{fmt(outcome.get('advantage_se'), '.2f')}")
            rows.append([
                fmt(race.get("train_seconds"), ".1f"), str(race.get("kind")), str(outcome.get("role")),
                fmt_batch(outcome.get("batch_size")), fmt(outcome.get("lr"), ".3g"),
                str(outcome.get("samples")), fmt(outcome.get("cooled_loss"), ".4g"),
                MISSING if incumbent else ("diverged" if outcome.get("diverged") else advantage),
                "won" if outcome.get("won") else "",
            ])
    return rows


def _time_rows(times: Mapping[str, Any]) -> list[dict[str, str]]:
    values = [(label, finite(times.get(key)) or 0.0) for key, label in TIME_PARTS]
    total = sum(value for _, value in values) or 1.0
    return [{"name": label, "seconds": fmt(value, ".2f"), "share": f"{value / total:.0%}",
             "width": f"{100 * value / total:.1f}"} for label, value in values]


def render_fit_html(document: Mapping[str, Any], plot_uri: str) -> str:
    from batchsage import __version__

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    metric = document.get("metric") or {}
    relation = "≥" if metric.get("higher_is_better", True) else "≤"
    return environment.get_template(TEMPLATE_NAME).render(
        task=document.get("task"), device=document.get("device"), seed=document.get("seed"),
        target=f"{metric.get('name')} {relation} {fmt(metric.get('target'), 'g')}",
        outcome=_outcome(document), cards=_cards(document), schedule_plot=plot_uri,
        schedule=_schedule_rows(document), races=_race_rows(document),
        times=_time_rows(document.get("times") or {}), version=__version__,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_fit_report(document: Mapping[str, Any], out_dir: Path | str) -> Path:
    """Write ``plots/schedule.png`` and ``report.html`` under ``out_dir``; returns the page's path."""
    out_dir = Path(out_dir)
    uri = _figure_uri(schedule_plot(document), out_dir / "plots" / "schedule.png")
    page = out_dir / "report.html"
    partial = page.with_name(page.name + ".tmp")
    partial.write_text(render_fit_html(document, uri), encoding="utf-8")
    partial.replace(page)
    return page



