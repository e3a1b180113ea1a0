"""``batchsage tasks`` and ``batchsage train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from batchsage.cli._app import TASK_HELP, app, console, fmt, reports_errors, start_command
from batchsage.device import DEVICE_HELP
from batchsage.errors import BatchsageError, ConfigError
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
    ctx: typer.Context,
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
    nproc: int | None = typer.Option(
        None, "--nproc", min=1, help="train data-parallel on this many worker processes of this machine "
        "(torch's launcher, as torchrun --standalone --nproc-per-node N); --batch-size stays global"),
) -> None:
    """Train one (batch size, lr) to the task's target and report time to target.

    Data-parallel: `--nproc K`, or `torchrun --standalone --nproc-per-node K -m batchsage train ...`
    (the batch size is global: K workers × per-worker batch × accumulation).
    """
    from batchsage.engine import train, validate_run_args
    from batchsage.engine.distributed import check_world_size, launched_world

    world = launched_world()
    if nproc is not None and world is not None:
        raise ConfigError("--nproc launches its own workers; under torchrun the world size is "
                          "torchrun's --nproc-per-node: drop --nproc")
    workers = nproc if nproc is not None else (world.world_size if world is not None else 1)
    if workers > 1:
        if adaptive:
            raise ConfigError("--adaptive is not supported data-parallel yet: train adaptively in one "
                              "process, or data-parallel at a fixed batch size")
        check_world_size(workers, batch_size, accumulation)
    if nproc is not None and nproc > 1:
        from batchsage.engine.distributed import World, rank_device
        from batchsage.task import load_task

        validate_run_args(load_task(task), batch_size, lr, accumulation, warmup_steps)
        rank_device(device, World(nproc - 1, nproc, nproc - 1))  # a GPU for every worker, if on GPUs
        _launch_workers(ctx, nproc, task, batch_size, lr, accumulation, warmup_steps, seed, device,
                        json_path, max_steps)
        return
    if world is not None and world.world_size > 1:
        _train_data_parallel(task, batch_size, lr, accumulation, warmup_steps, seed, device, json_path,
                             max_steps)
        return
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
    document.update(world_size=1, per_rank_batch_size=batch_size)
    if controller is not None:
        document["schedule"] = controller.schedule_dicts()
    _print_train_result(document, loaded.metric_name)
    if controller is not None:
        console.print(controller.describe(), highlight=False)
    write_json(json_path, document)


def _launch_workers(ctx: typer.Context, nproc: int, task: str, batch_size: int, lr: float,
                    accumulation: int, warmup_steps: int, seed: int | None, device: str,
                    json_path: Path | None, max_steps: int | None) -> None:
    """``train`` again on ``nproc`` workers (each a ``python -m batchsage train`` under torchrun's
    environment, started by torch's elastic launcher); exit with the first failed worker's code."""
    from batchsage.engine.distributed import launch_command

    threads = ctx.find_root().params.get("threads") or 1
    argv = ["--threads", str(threads), "train", "--task", task, "--batch-size", str(batch_size),
            "--lr", repr(float(lr)), "--accumulation", str(accumulation), "--warmup-steps", str(warmup_steps),
            "--device", device]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if json_path is not None:
        argv += ["--json", str(json_path.resolve())]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    console.print(f"[bold]batchsage train[/] launching {nproc} workers ({threads} torch "
                  f"thread{'s' if threads > 1 else ''} each)", highlight=False)
    code = launch_command(argv, nproc, threads=threads)
    if code:
        raise typer.Exit(code)


def _train_data_parallel(task: str, batch_size: int, lr: float, accumulation: int, warmup_steps: int,
                         seed: int | None, device: str, json_path: Path | None,
                         max_steps: int | None) -> None:
    """This rank's part of a data-parallel ``train`` (under torchrun); rank 0 reports."""
    from batchsage.engine import validate_run_args
    from batchsage.engine.distributed import (
        CrossWorkerNoise,
        backend_for,
        launched_world,
        process_group,
        rank_device,
        train_data_parallel,
    )
    from batchsage.task import load_task

    world = launched_world()
    assert world is not None
    loaded = load_task(task)
    validate_run_args(loaded, batch_size, lr, accumulation, warmup_steps)
    dev = rank_device(device, world)
    backend = backend_for(dev)
    console.print(f"[bold]batchsage train[/] {loaded.name} data-parallel on {world.world_size} workers "
                  f"({backend}, {dev.type})", highlight=False)
    noise = CrossWorkerNoise(dataset_size=loaded.num_train_samples, ema=None)
    split = f"{world.world_size} × {batch_size // world.world_size}"
    with process_group(world, dev), console.status(f"training {loaded.name} at B={batch_size} ({split}), "
                                                   f"lr={lr:g}"):
        result = train_data_parallel(loaded, batch_size, lr, accumulation_steps=accumulation,
                                     warmup_steps=warmup_steps, seed=seed, device=dev,
                                     hooks=[noise], max_steps=max_steps)
    if not world.is_main:
        return
    document = {key: value for key, value in result.to_dict().items() if key in TRAIN_JSON_KEYS}
    document.update(world_size=world.world_size, per_rank_batch_size=batch_size // world.world_size,
                    backend=backend, device=dev.type, noise_scale=_noise_document(noise))
    _print_train_result(document, loaded.metric_name)
    write_json(json_path, document)


def _noise_document(noise: Any) -> dict[str, Any] | None:
    """The cross-worker noise scale of the whole run (every step measured, averaged over all)."""
    estimate = noise.estimate()
    if estimate is None:
        return None
    return {"b_simple": estimate.b_simple, "ci95": list(estimate.ci95) if estimate.ci95 else None,
            "trace_sigma": estimate.trace_sigma, "grad_norm_sq": estimate.grad_norm_sq,
            "measurements": estimate.measurements, "per_rank_batch_size": estimate.micro_batch_size,
            "method": "cross-worker (local vs all-reduced gradient)"}


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


