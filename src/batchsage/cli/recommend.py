"""``batchsage recommend``: the main job."""

from __future__ import annotations

from pathlib import Path

import typer

from batchsage.cli._app import TASK_HELP, app, console, reports_errors, write_json


@app.command()
@reports_errors
def recommend(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or mps"),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", help="e.g. 2GiB, 800MiB (default: free memory minus a safety margin)"
    ),
    budget_seconds: float = typer.Option(
        20.0, "--budget-seconds", help="sizes the probes, pilots and lr races (the first pilot gets 35 %); "
        "the whole decision takes longer: 0.9-3.9x this on the built-in tasks. There, 10 s gave "
        "clearly worse picks and 40 s no better ones (benchmarks/results/budget/TRADEOFF.md)"
    ),
    out: Path = typer.Option(Path("batchsage-out"), "--out", help="directory for JSON, plots, HTML"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the JSON document here"),
) -> None:
    """Measure memory, throughput and gradient noise; recommend batch size, lr, accumulation, warmup."""
    from batchsage.recommend import recommend as run_recommend
    from batchsage.report import print_recommendation, write_report
    from batchsage.task import load_task
    from batchsage.units import parse_size

    budget_bytes = parse_size(memory_budget) if memory_budget is not None else None
    loaded = load_task(task)
    console.print(f"[bold]batchsage recommend[/] {loaded.name} on {device}")
    result = run_recommend(
        loaded, device=device, memory_budget_bytes=budget_bytes, budget_seconds=budget_seconds,
        console=console,
    )
    document = result.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "recommendation.json", document)
    write_json(json_path, document)
    paths = write_report(document, out)
    print_recommendation(document, console)
    console.print(f"JSON:   {out / 'recommendation.json'}")
    for name, path in paths.items():
        console.print(f"{name}: {path}")
