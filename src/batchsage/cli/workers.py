"""``batchsage workers``: how many data-parallel workers, with which per-worker batch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from batchsage.cli._app import TASK_HELP, app, console, fmt, reports_errors
from batchsage.device import DEVICE_HELP


@app.command("workers")
@reports_errors
def workers_command(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    recommendation: Path = typer.Option(
        ..., "--recommendation", help="a recommendation of this task (batchsage recommend --out DIR: "
        "the DIR or its recommendation.json): steps to target, lr and memory per batch size"),
    max_workers: int = typer.Option(8, "--max-workers", min=1, help="largest number of workers to consider"),
    measure_workers: int = typer.Option(2, "--measure-workers", min=2,
                                        help="workers to time steps at here (besides one)"),
    min_efficiency: float = typer.Option(
        0.75, "--min-efficiency", min=0.01, max=1.0,
        help="add workers while speed-up ÷ worker ratio stays at least this (0.75: a doubling must be 1.5× "
        "faster)"),
    budget_seconds: float = typer.Option(10.0, "--budget-seconds", min=1.0,
                                         help="seconds of timed steps (launching the workers comes on top)"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_path: Path | None = typer.Option(None, "--json", help="write the result as JSON here"),
) -> None:
    """Time steps at one and two workers here, and recommend the number of workers with its batch."""
    from batchsage.decide.recommendation import Recommendation
    from batchsage.decide.workers import recommend_workers
    from batchsage.device import resolve_device
    from batchsage.task import load_task

    loaded = load_task(task)
    rec = Recommendation.load(recommendation)
    dev = resolve_device(device)
    threads = ctx.find_root().params.get("threads") or 1
    console.print(f"[bold]batchsage workers[/] {loaded.name} on {dev}: timing steps at 1 and "
                  f"{measure_workers} workers ({threads} torch thread{'s' if threads > 1 else ''} each)",
                  highlight=False, soft_wrap=True)
    result = recommend_workers(loaded, rec, max_workers=max_workers, measure_workers=measure_workers,
                               min_efficiency=min_efficiency, budget_seconds=budget_seconds, device=dev.type,
                               threads=threads)
    table = Table(title=f"{loaded.name}: time to {rec.metric_name} "
                        f"{'≥' if rec.higher_is_better else '≤'} {rec.target:g} per number of workers")
    for column in ("K", "global B", "per worker", "lr", "steps", "step ms", "time", "worker·s", "speed-up",
                   "step time"):
        table.add_column(column, justify="right")
    for option in result.options:
        c = option.candidate
        per_worker = f"{c.micro_batch_size} × {c.accumulation_steps}" if c.accumulation_steps > 1 \
            else str(c.micro_batch_size)
        marker = "→ " if option.workers == result.workers else ""
        table.add_row(f"{marker}{option.workers}", str(c.batch_size), per_worker, f"{c.lr:.3g}",
                      fmt(c.predicted_steps, ",.0f"), fmt(c.step_seconds * 1000, ",.3g"),
                      fmt(c.predicted_seconds, ",.1f") + " s", fmt(option.worker_seconds, ",.1f"),
                      fmt(option.speedup, ".2f") + "×", "measured" if option.measured else "model")
    console.print(table)
    model = result.step_time
    console.print(
        f"Step time model: all-reduce {model.network_seconds * 1000:.3g} ms at 2 workers, overlap γ "
        f"{model.gamma:.2f}, a worker computes {model.compute_slowdown:.2f}× slower among several than "
        f"alone; K beyond {max(model.measured_workers)} extrapolated (one device per worker, "
        f"ring all-reduce). Rule: {result.rule}.", highlight=False, soft_wrap=True)
    accumulation = f" --accumulation {result.accumulation_steps}" if result.accumulation_steps > 1 else ""
    warmup = f" --warmup-steps {result.warmup_steps}" if result.warmup_steps else ""
    nproc = f" --nproc {result.workers}" if result.workers > 1 else ""
    console.print(
        f"Use {result.workers} worker{'s' if result.workers > 1 else ''} × {result.per_rank_batch_size} "
        f"(global batch {result.batch_size}), lr {result.lr:.4g}: predicted {result.predicted_seconds:.1f} s "
        f"to target, {result.worker_seconds:.1f} worker-seconds.\n"
        f"  batchsage train --task {task} --batch-size {result.batch_size} --lr {result.lr:.4g}"
        f"{accumulation}{warmup}{nproc}", highlight=False, soft_wrap=True)
    if json_path is not None:
        result.save(json_path)
        console.print(f"JSON: {json_path}", highlight=False)
