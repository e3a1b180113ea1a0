"""The sweep's Pareto plot: training seconds against the final validation metric, one point per trial.

Drawn from the ``sweep.json`` document, so a saved sweep can be re-plotted without re-training::

    from batchsage.report.pareto import plot_pareto
    plot_pareto(json.loads(Path("out/sweep.json").read_text()), Path("out/pareto.png"))

Colour is the batch size (log scale); the marker says how the trial ended (reached the target,
cut early, ran out its budget, diverged); each batch size's best trial is ringed and the sweep's
best configuration starred; the dashed line is the target and the step line the Pareto front (no
other trial is both faster and better). Built on :class:`matplotlib.figure.Figure` with the Agg
canvas, never ``pyplot``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from batchsage.report.console import finite

FIGURE_SIZE_INCHES = (7.5, 4.6)
DPI = 110
COLOR_TARGET = "#2ca02c"
COLOR_FRONT = "#7f7f7f"
COLOR_BEST = "#d62728"
MARKERS = {"reached": "o", "cut": "X", "budget": "s", "diverged": "^"}
LABELS = {"reached": "reached target", "cut": "cut early (pruned/censored)",
          "budget": "budget exhausted", "diverged": "diverged"}


_finite = finite


def _outcome(trial: Mapping[str, Any]) -> str:
    if trial.get("diverged"):
        return "diverged"
    if trial.get("state") in ("pruned", "censored"):
        return "cut"
    return "reached" if trial.get("reached_target") else "budget"


def plottable(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Finished trials with a finite training time and final metric, as (x, y) plus the trial."""
    points = []
    for trial in document.get("trials") or []:
        x, y = _finite(trial.get("train_seconds")), _finite(trial.get("final_metric"))
        finished = trial.get("state") in ("complete", "pruned", "censored")
        if finished and x is not None and y is not None and x > 0:
            points.append({**trial, "x": x, "y": y})
    return points


def pareto_front(points: Sequence[Mapping[str, Any]], higher_is_better: bool) -> list[tuple[float, float]]:
    """The (x, y) points no other point beats on both fewer seconds and a better metric."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    best = -math.inf
    for point in sorted(points, key=lambda p: (p["x"], -sign * p["y"])):
        if sign * point["y"] > best:
            best = sign * point["y"]
            front.append((point["x"], point["y"]))
    return front


def pareto_figure(document: Mapping[str, Any]) -> Figure:
    metric = document.get("metric") or {}
    higher = bool(metric.get("higher_is_better", True))
    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(f"Sweep of {document.get('task', '?')}: training time vs final validation metric",
                   fontsize=11, loc="left")
    axes.grid(True, alpha=0.3)
    points = plottable(document)
    if not points:
        axes.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=axes.transAxes)
        return figure
    sizes = [p["batch_size"] for p in points]
    norm = LogNorm(vmin=min(sizes), vmax=max(max(sizes), min(sizes) * 2))
    scatter = None
    for outcome, marker in MARKERS.items():
        group = [p for p in points if _outcome(p) == outcome]
        if group:
            scatter = axes.scatter([p["x"] for p in group], [p["y"] for p in group],
                                   c=[p["batch_size"] for p in group], cmap="viridis", norm=norm,
                                   marker=marker, s=42, edgecolors="black", linewidths=0.4,
                                   label=LABELS[outcome], zorder=3)
    if scatter is not None:
        colorbar = figure.colorbar(scatter, ax=axes)
        colorbar.set_label("batch size B")
    _highlight_best(axes, document, points)
    front = pareto_front(points, higher)
    if len(front) > 1:
        axes.step(*zip(*front, strict=True), where="post", color=COLOR_FRONT, linewidth=1, zorder=2,
                  label="Pareto front")
    target = _finite(metric.get("target"))
    if target is not None:
        axes.axhline(target, color=COLOR_TARGET, linestyle="--", linewidth=1.2, label=f"target {target:.4g}")
    xs = [p["x"] for p in points]
    if max(xs) / min(xs) > 20:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("training seconds (validation excluded)")
    axes.set_ylabel(f"final {metric.get('name', 'metric')}")
    axes.legend(fontsize=8, loc="best")
    return figure


def _highlight_best(axes: Axes, document: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> None:
    """Ring each batch size's best trial (``best_per_batch_size``); star and label the overall best."""
    by_number = {p.get("number"): p for p in points}
    rings = [by_number[row.get("number")] for row in document.get("best_per_batch_size") or []
             if row.get("number") in by_number]
    if rings:
        axes.scatter([p["x"] for p in rings], [p["y"] for p in rings], s=190, facecolors="none",
                     edgecolors=COLOR_BEST, linewidths=1.6, zorder=4, label="best trial of its B")
    best = document.get("best") or {}
    chosen = [p for p in rings if p["batch_size"] == best.get("batch_size") and p["lr"] == best.get("lr")]
    if chosen:
        point = chosen[0]
        axes.scatter([point["x"]], [point["y"]], marker="*", s=320, color=COLOR_BEST, edgecolors="black",
                     linewidths=0.6, zorder=5, label=f"best: B={point['batch_size']}, lr={point['lr']:.3g}")


def plot_pareto(document: Mapping[str, Any], path: Path) -> Path:
    """Write the Pareto plot of a sweep document as PNG (atomically: temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    pareto_figure(document).savefig(partial, format="png", dpi=DPI)
    partial.replace(path)
    return path
