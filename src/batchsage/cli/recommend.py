"""``batchsage recommend``: a fixed batch size, lr, accumulation and warmup, decided before training."""

from __future__ import annotations

from pathlib import Path

import typer

from batchsage.cli._app import MEMORY_MARGIN_HELP, TASK_HELP, app, console, reports_errors, start_command
from batchsage.device import DEVICE_HELP
from batchsage.errors import InsufficientEvidence
from batchsage.jsonio import write_json
from batchsage.trackers import LOG_HELP


@app.command()
@reports_errors
def recommend(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", help="e.g. 2GiB, 800MiB (default: free memory minus a safety margin)"
    ),
    memory_margin: float = typer.Option(0.05, "--memory-margin", min=0.0, max=0.9, help=MEMORY_MARGIN_HELP),
    budget_seconds: float = typer.Option(
        20.0, "--budget-seconds", help="sizes the probes, pilots and lr races (the first pilot gets 35 %); "
        "the whole decision takes longer (about 1-4x this on the built-in tasks)"
    ),
    out: Path = typer.Option(Path("batchsage-out"), "--out", help="directory for JSON, plots, HTML"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the JSON document here"),
    details: bool = typer.Option(
        False, "--details", help="also print every candidate and the full explanation"
    ),
    log_specs: list[str] | None = typer.Option(None, "--log", help=LOG_HELP),
) -> None:
    """Measure memory, throughput and gradient noise; recommend batch size, lr, accumulation, warmup."""
    from batchsage.decide import recommend as run_recommend
    from batchsage.report import print_recommendation, write_report
    from batchsage.trackers import check_log_specs, log_after_command
    from batchsage.units import parse_size

    budget_bytes = parse_size(memory_budget) if memory_budget is not None else None
    trackers = check_log_specs(log_specs)
    loaded, dev = start_command("recommend", task, device)
    try:
        result = run_recommend(
            loaded, device=dev, memory_budget_bytes=budget_bytes, memory_margin=memory_margin,
            budget_seconds=budget_seconds, console=console,
        )
    except InsufficientEvidence as exc:  # keep what was measured
        write_json(out / "recommendation.json", exc.document)
        raise
    document = result.to_dict()
    result.save(out / "recommendation.json")
    if json_path is not None:
        result.save(json_path)
    paths = write_report(document, out)
    print_recommendation(document, console, details=details)
    console.print(f"report: {paths['html']}   JSON: {out / 'recommendation.json'}", highlight=False)
    log_after_command("recommend", document, trackers, out, console)
