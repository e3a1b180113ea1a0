"""``batchsage fit``: train to the target, choosing batch size and lr while training."""

from __future__ import annotations

from pathlib import Path

import typer

from batchsage.cli._app import MEMORY_MARGIN_HELP, TASK_HELP, app, console, reports_errors, start_command
from batchsage.device import DEVICE_HELP
from batchsage.trackers import LOG_HELP


@app.command("fit")
@reports_errors
def fit_command(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    out: Path = typer.Option(Path("batchsage-fit"), "--out", help="directory for fit.json, model.pt, "
                             "checkpoint.pt and report.html"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int | None = typer.Option(None, "--seed", help="model initialisation and data order "
                                    "(default: the task's)"),
    max_seconds: float | None = typer.Option(None, "--max-seconds", help="stop after this many wall "
                                             "seconds (a checkpoint is written; --resume continues)"),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", help="e.g. 2GiB (default: free memory minus a safety margin)"
    ),
    memory_margin: float = typer.Option(0.05, "--memory-margin", min=0.0, max=0.9, help=MEMORY_MARGIN_HELP),
    checkpoint_seconds: float = typer.Option(30.0, "--checkpoint-seconds", min=0.0,
                                             help="wall seconds between checkpoints"),
    log_specs: list[str] | None = typer.Option(None, "--log", help=LOG_HELP),
) -> None:
    """Train to the task's target from scratch, deciding batch size and lr as the run goes.

    Exit code 0 when the target was reached, 1 when the run stopped before it (sample or time
    budget), 130 when interrupted (a checkpoint is written: run again with --resume).
    """
    from batchsage.live import FitOptions, fit
    from batchsage.report import write_fit_report
    from batchsage.trackers import check_log_specs, log_after_command
    from batchsage.units import parse_size

    budget_bytes = parse_size(memory_budget) if memory_budget is not None else None
    trackers = check_log_specs(log_specs)
    loaded, dev = start_command("fit", task, device)
    result = fit(loaded, device=dev, seed=seed, out=out, resume=resume, max_seconds=max_seconds,
                 memory_budget_bytes=budget_bytes, memory_margin=memory_margin,
                 options=FitOptions(checkpoint_seconds=checkpoint_seconds),
                 console=console)
    document = result.to_dict()
    report = write_fit_report(document, out)
    times = result.times
    metric = f"{result.metric_name} {result.final_metric:.4g}"
    relation = "≥" if result.higher_is_better else "≤"
    if result.reached_target:
        console.print(f"[bold green]reached[/] {metric} {relation} {result.target:g} in "
                      f"{times.end_to_end_seconds:.1f} s ({times.kept_train_seconds:.1f} s of kept training, "
                      f"{times.discarded_fork_seconds:.1f} s of raced forks); final B={result.batch_size}, "
                      f"lr {result.lr:.3g}", highlight=False)
    else:
        console.print(f"[bold yellow]stopped ({result.stop_reason})[/] at {metric} (target {relation} "
                      f"{result.target:g}) after {times.end_to_end_seconds:.1f} s", highlight=False)
    console.print(f"model: {out / 'model.pt'}   JSON: {out / 'fit.json'}   report: {report}", highlight=False)
    log_after_command("fit", document, trackers, out, console)
    if result.stop_reason == "interrupted":
        console.print(f"checkpoint written: batchsage fit --task {task} --out {out} --resume",
                      highlight=False)
        raise typer.Exit(130)
    if not result.reached_target:
        raise typer.Exit(1)
