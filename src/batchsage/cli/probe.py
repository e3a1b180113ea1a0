"""``batchsage probe``: the memory ceiling and the throughput curve of a task on a device."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from batchsage.cli._app import (
    MEMORY_MARGIN_HELP,
    TASK_HELP,
    app,
    console,
    err_console,
    fmt,
    reports_errors,
    start_command,
)
from batchsage.device import DEVICE_HELP
from batchsage.errors import ConfigError
from batchsage.jsonio import write_json


@app.command("probe")
@reports_errors
def probe_command(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget",
        help="memory a training step may use, e.g. 2GiB or 800MiB (CPU: peak resident memory of the "
        "training process); default: what this process holds + available memory − 10 %",
    ),
    time_budget: float = typer.Option(20.0, "--time-budget", help="seconds for the throughput probe"),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", help="never probe beyond this"),
    memory_margin: float = typer.Option(0.05, "--memory-margin", min=0.0, max=0.9, help=MEMORY_MARGIN_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="write the result as JSON here"),
) -> None:
    """Measure how much memory a step needs per batch size, the largest batch that fits, and samples/s."""
    from batchsage.probe import probe
    from batchsage.units import parse_size

    budget_bytes = parse_size(memory_budget) if memory_budget is not None else None
    if time_budget <= 0:
        raise ConfigError(f"--time-budget must be positive, got {time_budget:g}")
    loaded, dev = start_command("probe", task, device)
    result = probe(
        loaded, device=dev, memory_budget_bytes=budget_bytes, time_budget_seconds=time_budget,
        max_batch_size_limit=max_batch_size, memory_margin=memory_margin, progress=True, console=err_console,
    )
    _print_result(result)
    write_json(json_path, result.to_dict())


def _print_result(result: object) -> None:
    from batchsage.probe import ProbeResult
    from batchsage.units import format_bytes

    assert isinstance(result, ProbeResult)
    memory = result.memory
    table = Table(title=f"memory on {result.device}: budget {format_bytes(memory.budget_bytes)}")
    for column in ("B", "role", "peak", "outcome", "steps", "seconds"):
        table.add_column(column, justify="right" if column != "outcome" else "left")
    for probe in memory.probes:
        peak = format_bytes(probe.peak_bytes) if probe.peak_bytes is not None else "-"
        colour = "green" if probe.fits else "red"
        table.add_row(str(probe.batch_size), probe.role, peak, f"[{colour}]{probe.outcome}[/]",
                      str(probe.steps), f"{probe.seconds:.2f}")
    console.print(table)
    checked = "measured" if memory.verified else "predicted, not run"
    console.print(
        f"mem(B) ≈ {format_bytes(memory.fixed_bytes)} + {format_bytes(memory.per_sample_bytes)}·B  "
        f"→ ceiling [bold]B={memory.max_batch_size}[/] (limited by {memory.limited_by}, {checked}; "
        f"{memory.measurements} batch sizes, {memory.steps_used} real steps, {memory.seconds:.1f} s)",
        highlight=False,
    )
    console.print(f"  margin: {memory.margin:.0%} of the budget kept free (steps held to "
                  f"{format_bytes(memory.effective_budget_bytes or memory.budget_bytes)}); checked in a "
                  f"{memory.checked_in}", highlight=False)
    for check in memory.fresh_checks:
        peak = format_bytes(check["peak_bytes"]) if check["peak_bytes"] else "out of memory"
        console.print(f"  fresh training process at B={check['batch_size']}: peak {peak} "
                      f"({'fits' if check['fits'] else 'over'})", highlight=False)
    for note in memory.notes:
        console.print(f"  note: {note}", highlight=False)
    curve = result.throughput
    table = Table(title=f"throughput on {result.device} ({curve.rounds} rounds, {curve.seconds:.1f} s)")
    for column in ("B", "median step (ms)", "samples/s", "timed steps", "IQR/median"):
        table.add_column(column, justify="right")
    for point in curve.points:
        table.add_row(
            str(point.batch_size), fmt(point.step_seconds_median * 1000, ".3f"),
            fmt(point.samples_per_second, ",.0f"), str(len(point.step_seconds)), fmt(point.spread, ".2f"),
        )
    console.print(table)
    if curve.skipped_batch_sizes:
        skipped = ", ".join(str(size) for size in curve.skipped_batch_sizes)
        console.print(f"  not timed (time budget): B={skipped}", highlight=False)
    console.print(f"probe took {result.probe_seconds:.1f} s", highlight=False)
