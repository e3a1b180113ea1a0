"""``batchsage noise``: measure the gradient noise scale B_simple of a task at a batch size."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from batchsage.cli._app import TASK_HELP, app, console, fmt, reports_errors, start_command
from batchsage.device import DEVICE_HELP
from batchsage.errors import ConfigError
from batchsage.jsonio import write_json


@app.command("noise")
@reports_errors
def noise_command(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    batch_size: int | None = typer.Option(None, "--batch-size", help="B (default: the task's base batch)"),
    steps: int = typer.Option(200, "--steps", help="optimiser steps to run (or batches, with --at-init)"),
    method: str = typer.Option("estimator", "--method", help="estimator (micro-batches) or exact "
                               "(per-example gradients, small models)"),
    micro_batches: int = typer.Option(8, "--micro-batches", help="micro-batches of a measured step"),
    every: int = typer.Option(2, "--every", help="measure every K-th step; 0: as often as "
                              "--overhead-budget allows"),
    overhead_budget: float = typer.Option(0.03, "--overhead-budget", help="with --every 0: extra time "
                                          "allowed, as a fraction of training time"),
    variant: str = typer.Option("plain", "--variant", help="plain or adam-preconditioned"),
    lr: float | None = typer.Option(None, "--lr", help="learning rate (default: the task's base lr)"),
    at_init: bool = typer.Option(False, "--at-init", help="never step: measure every batch at the "
                                 "initial weights"),
    seed: int | None = typer.Option(None, "--seed", help="default: the task's seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="write the report as JSON here"),
) -> None:
    """Measure the simple noise scale B_simple = tr(Σ)/|G|² while training STEPS steps at B."""
    from batchsage.noise import METHODS, VARIANTS, measure_noise

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if every < 0:
        raise ConfigError(f"--every must be 0 (adaptive) or a positive integer, got {every}")
    loaded, dev = start_command("noise", task, device)
    report = measure_noise(
        loaded, batch_size, steps, method,  # type: ignore[arg-type]
        micro_batches=micro_batches, every=every or None, overhead_budget=overhead_budget,
        variant=variant, lr=lr, at_initial_point=at_init, device=dev,  # type: ignore[arg-type]
        seed=seed, progress=True,
    )
    document = report.to_dict()
    _print_report(document)
    write_json(json_path, document)
    if report.interrupted:
        raise typer.Exit(130)


def _print_report(document: dict) -> None:
    where = "at the initial point" if document["at_initial_point"] else f"over {document['steps']} steps"
    table = Table(title=f"noise scale of {document['task']} at B={document['batch_size']} ({where})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    low, high = document["ci95"]
    table.add_row("B_simple = tr Σ / |G|²", _number(document["b_simple"]))
    table.add_row("95 % interval", f"{_number(low)} – {_number(high)}")
    table.add_row("tr Σ", fmt(document["trace_sigma"], ".4g"))
    table.add_row("|G|²", fmt(document["grad_norm_sq"], ".4g"))
    table.add_row("method / variant", f"{document['method']} / {document['variant']}")
    table.add_row("micro-batch size b", fmt(document["micro_batch_size"], ".3g"))
    table.add_row("measured steps", f"{document['measurements']} (every {document['measure_every']})")
    table.add_row("overhead", fmt(100 * document["overhead_fraction"], ".1f") + " %")
    table.add_row("seconds", fmt(document["seconds"], ".1f"))
    if document["interrupted"]:
        table.add_row("[yellow]interrupted[/]", "partial result")
    console.print(table)
    points = document["trajectory"]
    if len(points) > 1 and not document["at_initial_point"]:
        trajectory = Table(title="trajectory (one row per report window)")
        for column in ("step", "train loss", "B_simple"):
            trajectory.add_column(column, justify="right")
        stride = max(1, math.ceil(len(points) / 12))
        for point in points[::stride]:
            loss = fmt(point["train_loss"], ".4f")
            trajectory.add_row(str(point["step"]), loss, _number(point["b_simple"]))
        console.print(trajectory)


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:.4g}"
