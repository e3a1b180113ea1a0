"""The report's four plots, drawn from the recommendation document with Matplotlib.

Figures are built with :class:`matplotlib.figure.Figure` and its Agg canvas, never ``pyplot``: no
global backend switch, no figure registry growing in a long-lived process (a notebook, a sweep).
A plot whose data was not measured is still written, with "not measured" in it, so the report's
layout never depends on what a run managed to measure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullFormatter

from batchsage.report.console import finite, fmt, fmt_seconds

FIGURE_SIZE_INCHES = (7.0, 4.6)
DPI = 110
#: Above this max/min ratio a y axis goes logarithmic (times to target can span decades).
LOG_Y_RATIO = 20.0

COLOR_FITS = "#1f77b4"
COLOR_ACCUMULATE = "#ff7f0e"
COLOR_CHOSEN = "#2ca02c"
COLOR_CEILING = "#d62728"
COLOR_MUTED = "#7f7f7f"

Document = Mapping[str, Any]


def _figure(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11, loc="left")
    axes.grid(True, which="major", alpha=0.3)
    return figure, axes


def _legend_below(figure: Figure, axes_list: Sequence[Axes], columns: int = 2) -> None:
    """One legend for all axes, under the plot: inside, it would hide the curves it explains."""
    handles: list[Any] = []
    labels: list[str] = []
    for axes in axes_list:
        more_handles, more_labels = axes.get_legend_handles_labels()
        handles += more_handles
        labels += more_labels
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=9, frameon=False)


def _not_measured(axes: Axes, what: str) -> None:
    axes.text(0.5, 0.5, f"{what}: not measured", ha="center", va="center", fontsize=12,
              color=COLOR_MUTED, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _batch_axis(axes: Axes, label: str = "batch size B (samples per optimiser step)") -> None:
    """log2 x axis with plain integer tick labels (8, 16, ... rather than 2^3)."""
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_locator(LogLocator(base=2))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(label)


def _plain_log_y(axes: Axes) -> None:
    """log y axis labelled 30, 200 rather than 3×10¹, 2×10² (minor labels only where few decades)."""
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _maybe_log_y(axes: Axes, values: Sequence[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > LOG_Y_RATIO:
        _plain_log_y(axes)


def _points(rows: Sequence[Mapping[str, Any]] | None, x_key: str, y_key: str) -> list[tuple[float, float]]:
    """(x, y) pairs with both values finite, sorted by x."""
    pairs = []
    for row in rows or []:
        x, y = finite(row.get(x_key)), finite(row.get(y_key))
        if x is not None and y is not None:
            pairs.append((x, y))
    return sorted(pairs)


def _ceiling(document: Document) -> float | None:
    return finite((document.get("memory") or {}).get("max_batch_size"))


def _mark_ceiling(axes: Axes, ceiling: float | None, x_max: float) -> None:
    """A vertical line at the memory ceiling; the region beyond it shaded."""
    if ceiling is None:
        return
    axes.axvline(ceiling, color=COLOR_CEILING, linestyle="--", linewidth=1.2,
                 label=f"memory ceiling (B={ceiling:g})")
    if x_max > ceiling:
        axes.axvspan(ceiling, x_max * 1.5, color=COLOR_CEILING, alpha=0.06, linewidth=0)


def time_to_target(document: Document) -> Figure:
    """Predicted time to target vs B; memory ceiling; accumulation candidates; the recommendation."""
    figure, axes = _figure("Predicted time to target")
    candidates = [
        c for c in document.get("candidates") or []
        if finite(c.get("batch_size")) is not None and finite(c.get("predicted_seconds")) is not None
    ]
    if not candidates:
        _not_measured(axes, "predicted time to target")
        return figure
    candidates.sort(key=lambda c: float(c["batch_size"]))
    xs = [float(c["batch_size"]) for c in candidates]
    ys = [float(c["predicted_seconds"]) for c in candidates]
    axes.plot(xs, ys, color=COLOR_MUTED, linewidth=1, zorder=1)
    fits = [(x, y) for x, y, c in zip(xs, ys, candidates, strict=True) if c.get("fits_memory") is not False]
    beyond = [(x, y) for x, y, c in zip(xs, ys, candidates, strict=True) if c.get("fits_memory") is False]
    if fits:
        axes.scatter(*zip(*fits, strict=True), color=COLOR_FITS, zorder=2, label="fits in memory")
    if beyond:
        axes.scatter(*zip(*beyond, strict=True), facecolors="white", edgecolors=COLOR_ACCUMULATE,
                     marker="s", linewidths=1.5, zorder=2, label="micro-batches + accumulation")
    _mark_ceiling(axes, _ceiling(document), max(xs))
    _mark_recommendation(axes, document)
    _batch_axis(axes)
    _maybe_log_y(axes, ys)
    axes.set_ylabel("predicted seconds to target")
    axes.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    _legend_below(figure, [axes])
    return figure


def _mark_recommendation(axes: Axes, document: Document) -> None:
    recommended = document.get("recommended") or {}
    x, y = finite(recommended.get("batch_size")), finite(recommended.get("predicted_seconds"))
    if x is None or y is None:
        return
    axes.scatter([x], [y], marker="*", s=260, color=COLOR_CHOSEN, edgecolors="black", linewidths=0.6,
                 zorder=3, label=f"recommended B={x:g}")
    axes.annotate(f"B={x:g}\n{fmt_seconds(y)}", (x, y), textcoords="offset points", xytext=(0, 14),
                  ha="center", fontsize=9, color=COLOR_CHOSEN, fontweight="bold")


def throughput(document: Document) -> Figure:
    """Samples per second vs B: the measured points, and the step-time model the plan used."""
    figure, axes = _figure("Throughput")
    points = _points(document.get("throughput"), "batch_size", "samples_per_second")
    # The plan's t(B) covers every candidate (fitted between and beyond the measured sizes;
    # accumulation candidates at their effective rate): drawn so a reader sees what was measured.
    model = [
        (b, b / t) for b, t in _points(document.get("candidates"), "batch_size", "step_seconds") if t > 0
    ]
    if not points and not model:
        _not_measured(axes, "throughput")
        return figure
    if model:
        axes.plot(*zip(*model, strict=True), linestyle="--", color=COLOR_MUTED, linewidth=1.2,
                  label="step-time model used by the plan")
    if points:
        axes.plot(*zip(*points, strict=True), marker="o", color=COLOR_FITS, label="measured (median step)")
    else:
        axes.text(0.5, 0.5, "no throughput measured", ha="center", va="center", color=COLOR_MUTED,
                  transform=axes.transAxes)
    xs = [x for x, _ in points + model]
    _mark_ceiling(axes, _ceiling(document), max(xs))
    chosen = finite((document.get("recommended") or {}).get("batch_size"))
    if chosen is not None:
        axes.axvline(chosen, color=COLOR_CHOSEN, linestyle=":", linewidth=1.5,
                     label=f"recommended B={chosen:g}")
    _batch_axis(axes)
    axes.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    axes.set_ylim(bottom=0)
    axes.set_ylabel("training samples per second")
    _legend_below(figure, [axes])
    return figure


def noise_scale(document: Document) -> Figure:
    """B_simple along pilot A with its power-law fit, the B_noise the plan used, train loss (twin axis)."""
    figure, axes = _figure("Gradient noise scale during the pilot run")
    noise = document.get("noise_scale") or {}
    trajectory = noise.get("trajectory") or []
    points = _points(trajectory, "step", "b_simple")
    positive = [(s, b) for s, b in points if b > 0]
    b_noise = finite(noise.get("b_noise")) or finite(document.get("b_noise"))
    b_simple = finite(noise.get("b_simple"))
    if not positive and b_noise is None and b_simple is None:
        _not_measured(axes, "gradient noise scale")
        return figure
    if positive:
        steps, values = zip(*positive, strict=True)
        axes.plot(steps, values, marker="o", linestyle="-", color=COLOR_FITS, label="B_simple (measured)")
        _growth_lines(axes, noise, steps)
        axes.set_xlabel("training step of the pilot run")
    else:
        _overall_b_simple(axes, b_simple, noise.get("b_simple_ci95"))
    if len(positive) < len(points):
        axes.text(0.01, 0.02, f"{len(points) - len(positive)} non-positive estimates not shown",
                  transform=axes.transAxes, fontsize=8, color=COLOR_MUTED)
    if b_noise is not None:
        axes.axhline(b_noise, color=COLOR_CHOSEN, linewidth=1.5,
                     label=f"B_noise used by the plan ({fmt(b_noise, '.3g')})")
    _plain_log_y(axes)
    _pad_y_to_lines(axes)
    axes.set_ylabel("noise scale (samples)")
    twin = _loss_twin(axes, trajectory)
    _legend_below(figure, [axes] if twin is None else [axes, twin], columns=3)
    return figure


def _pad_y_to_lines(axes: Axes, factor: float = 1.5) -> None:
    """y limits around every drawn line and band, with a margin (autoscale ignores axhspan)."""
    values: list[float] = []
    for line in axes.get_lines():
        values += [float(v) for v in line.get_ydata() if finite(v) is not None and float(v) > 0]
    for patch in axes.patches:
        extent = patch.get_extents().transformed(axes.transData.inverted())
        values += [v for v in (extent.y0, extent.y1) if v > 0]
    if values:
        axes.set_ylim(min(values) / factor, max(values) * factor)


def _overall_b_simple(axes: Axes, b_simple: float | None, ci95: Any) -> None:
    """No trajectory recorded: the run's single B_simple estimate and its 95 % interval, if any."""
    axes.set_xticks([])
    axes.set_xlabel("no trajectory over the pilot's steps was recorded")
    if b_simple is None or b_simple <= 0:
        return
    axes.axhline(b_simple, color=COLOR_FITS, linestyle="--", linewidth=1.5,
                 label=f"B_simple over the pilot ({b_simple:.3g})")
    if isinstance(ci95, list | tuple) and len(ci95) == 2:
        low, high = finite(ci95[0]), finite(ci95[1])
        if low is not None and high is not None and 0 < low < high:
            axes.axhspan(low, high, color=COLOR_FITS, alpha=0.12, linewidth=0, label="95 % interval")


def _growth_lines(axes: Axes, noise: Mapping[str, Any], steps: Sequence[float]) -> None:
    """The fitted growth B_simple(s) = a·s^k and, when calibrated, c·a·s^k (the critical batch)."""
    scale, exponent = finite(noise.get("growth_scale")), finite(noise.get("growth_exponent"))
    positive_steps = [s for s in steps if s > 0]
    if scale is None or exponent is None or not positive_steps:
        return
    low, high = min(positive_steps), max(positive_steps)
    grid = [low * (high / low) ** (i / 49) for i in range(50)] if high > low else [low]
    fitted = [scale * s**exponent for s in grid]
    axes.plot(grid, fitted, linestyle="--", color=COLOR_FITS, alpha=0.7,
              label=f"fit {scale:.3g}·step^{exponent:.2f}")
    calibration = finite(noise.get("calibration"))
    if calibration is not None and calibration > 0:
        axes.plot(grid, [calibration * v for v in fitted], linestyle="--", color=COLOR_ACCUMULATE,
                  label=f"calibrated to pilots' B_crit (×{calibration:.2g})")


def _loss_twin(axes: Axes, trajectory: Sequence[Mapping[str, Any]]) -> Axes | None:
    losses = _points(trajectory, "step", "train_loss")
    if not losses:
        return None
    twin = axes.twinx()
    steps, values = zip(*losses, strict=True)
    twin.plot(steps, values, color=COLOR_MUTED, linewidth=1, alpha=0.8, label="train loss")
    twin.set_ylabel("train loss", color=COLOR_MUTED)
    twin.tick_params(axis="y", colors=COLOR_MUTED)
    return twin


def pilots(document: Document) -> Figure:
    """The pilot runs' validation metric vs samples seen, with the target line."""
    metric = document.get("metric") or {}
    name = metric.get("name") or "validation metric"
    figure, axes = _figure("Pilot runs: validation curves")
    drawn = 0
    for index, pilot in enumerate(document.get("pilots") or []):
        curve = _points(pilot.get("history"), "samples", "metric")
        if not curve:
            continue
        xs, ys = zip(*curve, strict=True)
        label = f"B={fmt(pilot.get('batch_size'), 'g')}, lr {fmt(pilot.get('lr'), '.3g')}"
        if pilot.get("reached_target"):
            label += " (reached target)"
        axes.plot(xs, ys, marker="o", markersize=3, color=f"C{index}", label=label)
        drawn += 1
    if not drawn:
        _not_measured(axes, "pilot validation curves")
        return figure
    target = finite(metric.get("target"))
    if target is not None:
        relation = "≥" if metric.get("higher_is_better", True) else "≤"
        axes.axhline(target, color=COLOR_CEILING, linestyle="--", linewidth=1.2,
                     label=f"target {name} {relation} {target:g}")
    axes.set_xlabel("training samples seen")
    axes.set_ylabel(str(name))
    _legend_below(figure, [axes])
    return figure


#: File name → figure builder, in the order the report shows them.
PLOTS: dict[str, Callable[[Document], Figure]] = {
    "time_to_target.png": time_to_target,
    "throughput.png": throughput,
    "noise_scale.png": noise_scale,
    "pilots.png": pilots,
}


def write_plots(document: Document, plots_dir: Path) -> dict[str, Path]:
    """Write every plot as PNG under ``plots_dir``; returns file name → path."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, build in PLOTS.items():
        path = plots_dir / name
        # Temp file + rename: an interrupt never leaves a truncated PNG behind.
        partial = path.with_name(path.name + ".tmp")
        build(document).savefig(partial, format="png", dpi=DPI)
        partial.replace(path)
        paths[name] = path
    return paths
