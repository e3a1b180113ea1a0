"""``batchsage tasks`` and ``batchsage train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from batchsage.cli._app import TASK_HELP, app, console, fmt, reports_errors, start_command
from batchsage.device import DEVICE_HELP
from batchsage.errors import BatchsageError
from batchsage.jsonio import write_json


@app.command()
@reports_errors
def tasks(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the built-in tasks: group, sizes, metric, target, base batch size and lr."""
    from batchsage.tasks import BUILTIN_NAMES, build_builtin, group_of

    rows = []
    for name in BUILTIN_NAMES:
        try:
            task = build_builtin(name)
        except BatchsageError as exc:
            rows.append({"name": name, "group": group_of(name), "available": False, "error": str(exc)})
            continue
        rows.append(
            {
                "name": name,
                "group": group_of(name),
                "available": True,
                "train_samples": task.num_train_samples,
                "val_samples": task.num_val_samples,
                "metric": task.metric_name,
                "target": task.target,
                "higher_is_better": task.higher_is_better,
                "base_batch_size": task.base_batch_size,
                "base_lr": task.base_lr,
                "max_samples": task.max_samples,
                "description": task.description,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in tasks")
    columns = ("name", "group", "train", "val", "metric", "target", "base B", "base lr", "description")
    for column in columns:
        table.add_column(column)
    for row in rows:
        if not row["available"]:
            table.add_row(row["name"], row["group"], "-", "-", "-", "-", "-", "-", f"[red]{row['error']}[/]")
            continue
        goal = ("≥ " if row["higher_is_better"] else "≤ ") + f"{row['target']:.4g}"
        table.add_row(
            row["name"], row["group"], str(row["train_samples"]), str(row["val_samples"]), row["metric"],
            goal, str(row["base_batch_size"]), f"{row['base_lr']:g}", row["description"],
        )
    console.print(table)


@app.command("train")
@reports_errors
def train_command(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    batch_size: int = typer.Option(..., "--batch-size", help="global batch per optimiser step"),
    lr: float = typer.Option(..., "--lr", help="peak learning rate"),
    accumulation: int = typer.Option(1, "--accumulation", help="micro-batches per step"),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="linear warmup steps"),
    seed: int | None = typer.Option(None, "--seed", help="default: the task's seed"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="write the result as JSON here"),
    adaptive: bool = typer.Option(False, "--adaptive", help="grow the batch as the noise scale grows"),
    max_batch_size: int | None = typer.Option(
        None, "--max-batch-size", help="with --adaptive: memory ceiling of a micro-batch (default: probed)"
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1,
                                         help="stop after this many optimiser steps (the task's "
                                         "sample budget applies too)"),
) -> None:
    """Train one (batch size, lr) to the task's target and report time to target."""
    from batchsage.engine import train, validate_run_args

    loaded, dev = start_command("train", task, device)
    validate_run_args(loaded, batch_size, lr, accumulation, warmup_steps)
    controller = None
    if adaptive:
        from batchsage.adaptive import controller_for_run

        controller = controller_for_run(loaded, batch_size, lr, accumulation, max_batch_size, dev)
    with console.status(f"training {loaded.name} at B={batch_size}, lr={lr:g}"):
        result = train(
            loaded, batch_size, lr, accumulation_steps=accumulation, warmup_steps=warmup_steps,
            seed=seed, device=dev, hooks=[controller] if controller else [],
            max_steps=max_steps,
        )
    document = {
        key: value
        for key, value in result.to_dict().items()
        if key in TRAIN_JSON_KEYS
    }
    if controller is not None:
        document["schedule"] = controller.schedule_dicts()
    _print_train_result(document, loaded.metric_name)
    if controller is not None:
        console.print(controller.describe(), highlight=False)
    write_json(json_path, document)


TRAIN_JSON_KEYS = (
    "task", "batch_size", "lr", "seed", "reached_target", "steps_to_target", "samples_to_target",
    "seconds_to_target", "step_seconds_median", "final_metric", "diverged", "accumulation_steps",
    "warmup_steps", "steps", "samples", "train_seconds", "stop_reason", "device",
)


def _print_train_result(document: dict[str, Any], metric_name: str) -> None:
    table = Table(title=f"{document['task']}: B={document['batch_size']}, lr={document['lr']:g}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    if document["diverged"]:
        outcome = "[red]diverged[/]"
    elif document["reached_target"]:
        outcome = "[green]reached target[/]"
    else:
        outcome = "[yellow]budget exhausted[/]"
    table.add_row("outcome", outcome)
    table.add_row("steps to target", fmt(document["steps_to_target"]))
    table.add_row("samples to target", fmt(document["samples_to_target"]))
    table.add_row("seconds to target", fmt(document["seconds_to_target"], ".2f"))
    table.add_row("median step (ms)", fmt(document["step_seconds_median"] * 1000, ".3f"))
    table.add_row(f"final {metric_name}", fmt(document["final_metric"], ".4f"))
    table.add_row("steps run", str(document["steps"]))
    console.print(table)


