"""``batchsage sweep``: train a grid of batch sizes × learning rates × seeds to target, cheaply.

State lives in an Optuna storage (``--storage sqlite:///sweep.db``, or a PostgreSQL URL for
workers on several machines): rerunning the same command resumes, and several processes started
with the same storage and study share the trials.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from batchsage.cli._app import TASK_HELP, app, console, fmt, reports_errors
from batchsage.device import DEVICE_HELP
from batchsage.errors import ConfigError
from batchsage.trackers import LOG_HELP


@app.command()
@reports_errors
def sweep(
    task: str = typer.Option(..., "--task", help=TASK_HELP),
    batch_sizes: str | None = typer.Option(
        None, "--batch-sizes", help="comma-separated, e.g. 16,32,64 (default: powers of two from 16 "
        "to the memory ceiling)"
    ),
    lrs: str | None = typer.Option(
        None, "--lrs", help="comma-separated learning rates for every B (default: the task's lr rule "
        "at each B times each --lr-multipliers)"
    ),
    lr_multipliers: str = typer.Option("0.5,1,2", "--lr-multipliers", help="multiples of the rule's lr"),
    seeds: int = typer.Option(1, "--seeds", help="seeds per configuration (from the task's seed on)"),
    procedure: str = typer.Option(
        "grid", "--procedure", help="grid, or doubling (the seeds' practice: start at 32, double "
        "while time to target improves)"
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="Optuna storage URL, e.g. sqlite:///sweep.db, or "
        "postgresql+psycopg://user:password@host/database for workers on several machines "
        "(default: in memory)"
    ),
    study: str | None = typer.Option(None, "--study", help="study name (default: from task and procedure)"),
    around_recommendation: bool = typer.Option(
        False, "--around-recommendation", help="sweep B/2, B, 2B around a `batchsage recommend` result"
    ),
    recommendation: Path | None = typer.Option(
        None, "--recommendation", help="recommendation JSON (default: OUT/recommendation.json)"
    ),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="cut trials that can no longer win"),
    censor_factor: float | None = typer.Option(
        None, "--censor-factor", help="with --no-prune: cut trials past this × the best time (censored)"
    ),
    max_batch_size: int | None = typer.Option(
        None, "--max-batch-size", help="ceiling for the default grid and the doubling"
    ),
    heartbeat_seconds: int = typer.Option(
        5, "--heartbeat-seconds", help="Optuna heartbeat interval of a running trial; a trial silent "
        "for 4× this (its worker killed) is failed and rerun by another worker"
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out: Path = typer.Option(Path("batchsage-out"), "--out", help="directory for sweep.json and pareto.png"),
    log_specs: list[str] | None = typer.Option(None, "--log", help=LOG_HELP),
) -> None:
    """Train batch sizes × learning rates × seeds to target; report the fastest and what was saved."""
    from batchsage.sweep import grid_trials, run_sweep
    from batchsage.task import load_task
    from batchsage.trackers import check_log_specs, log_after_command

    trackers = check_log_specs(log_specs)
    loaded = load_task(task)
    sizes = _int_list(batch_sizes, "--batch-sizes")
    lr_values = _float_list(lrs, "--lrs")
    multipliers = _float_list(lr_multipliers, "--lr-multipliers") or []
    if procedure == "doubling" and (sizes is not None or lr_values is not None or around_recommendation):
        raise ConfigError("--procedure doubling chooses its own batch sizes and lr (start 32, double, "
                          "lr by the task's rule); bound it with --max-batch-size")
    first: list[tuple[int, float]] = []
    anchor = None
    if around_recommendation:
        if sizes is not None:
            raise ConfigError("--around-recommendation chooses the batch sizes: drop --batch-sizes")
        rec_batch, rec_lr = read_recommendation(recommendation or out / "recommendation.json")
        sizes = [b for b in (rec_batch // 2, rec_batch, rec_batch * 2) if 1 <= b <= loaded.num_train_samples]
        first, anchor = [(rec_batch, rec_lr)], (rec_batch, rec_lr)
    if procedure == "grid" and sizes is not None:
        grid_trials(loaded, sizes, lrs=lr_values, lr_multipliers=multipliers, seeds=seeds, first=first,
                    anchor=anchor)  # validate the grid before opening any storage
    console.print(f"[bold]batchsage sweep[/] {loaded.name} ({procedure}) on {device}")
    result = run_sweep(
        loaded, batch_sizes=sizes, lrs=lr_values, lr_multipliers=multipliers, seeds=seeds,
        storage=storage, study_name=study, procedure=procedure,  # type: ignore[arg-type]
        prune=prune, censor_factor=censor_factor, first=first, anchor=anchor, device=device,
        max_batch_size=max_batch_size, progress=True, out_dir=out, console=console,
        heartbeat_seconds=heartbeat_seconds,
    )
    document = result.to_dict()
    print_sweep(document, console)
    console.print(f"JSON:   {out / 'sweep.json'}")
    if (out / "pareto.png").exists():
        console.print(f"plot:   {out / 'pareto.png'}")
    log_after_command("sweep", document, trackers, out, console)


def read_recommendation(path: Path) -> tuple[int, float]:
    """(batch_size, lr) from a ``batchsage recommend`` JSON document (``recommended.*``)."""
    try:
        document = json.loads(Path(path).read_text())
        recommended = document["recommended"]
        batch_size, lr = int(recommended["batch_size"]), float(recommended["lr"])
    except FileNotFoundError:
        raise ConfigError(
            f"recommendation file not found: {path} (run `batchsage recommend` first)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a recommendation JSON with recommended.batch_size and recommended.lr "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if batch_size <= 0 or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{path}: recommended batch_size {batch_size} / lr {lr} must be positive")
    return batch_size, lr


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None


def _float_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None


def print_sweep(document: dict[str, Any], out: Console) -> None:
    """The trials, fastest to target first; then the best and the compute saved."""
    metric = document["metric"]
    goal = f"{metric['name']} {'≥' if metric['higher_is_better'] else '≤'} {metric['target']:.4g}"
    table = Table(title=f"sweep of {document['task']} ({document['procedure']}): {goal}")
    for column in ("B", "lr", "seed", "state", "s to target", "steps to target", f"final {metric['name']}",
                   "trained s", "ms/step"):
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    best = document.get("best") or {}

    def order(trial: dict[str, Any]) -> tuple[float, float]:
        seconds = trial.get("seconds_to_target")
        return (seconds if seconds is not None else math.inf, trial.get("train_seconds") or 0.0)

    for trial in sorted(document["trials"], key=order):
        is_best = trial["batch_size"] == best.get("batch_size") and trial["lr"] == best.get("lr")
        state = trial["state"] + (" (diverged)" if trial.get("diverged") else "")
        step_ms = trial.get("step_seconds_median")
        table.add_row(
            str(trial["batch_size"]), f"{trial['lr']:.4g}", str(trial["seed"]), state,
            fmt(trial.get("seconds_to_target"), ".3g"), fmt(trial.get("steps_to_target")),
            fmt(trial.get("final_metric"), ".4g"), fmt(trial.get("train_seconds"), ".3g"),
            fmt(step_ms * 1000 if step_ms is not None else None, ".3g"),
            style="bold green" if is_best else None,
        )
    out.print(table)
    if best:
        out.print(f"[bold]best:[/] B={best['batch_size']}, lr={best['lr']:.4g}, "
                  f"{fmt(best.get('seconds_to_target'), '.3g')} s to target "
                  f"(median over {best.get('seeds', 1)} seed(s))")
    else:
        out.print("[yellow]no configuration reached the target[/]")
    out.print(
        f"compute: trained {document['spent_train_seconds']:.3g} s of an estimated "
        f"{document['estimated_full_train_seconds']:.3g} s had every trial run to its end "
        f"(saved {100 * document['saved_fraction']:.0f} %); wall {document['wall_seconds']:.3g} s; "
        f"{document['trials_run_here']} of {len(document['trials'])} trials trained by this run "
        "(the rest reused from the storage or run by other processes)"
    )
