"""The Typer app and what every command shares: one-line errors, atomic JSON output."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from batchsage.errors import BatchsageError

if TYPE_CHECKING:
    from batchsage.device import Device
    from batchsage.task import Task

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Choose the batch size (and its lr, accumulation, warmup) that trains fastest to target.",
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

TASK_HELP = "built-in task name (see `batchsage tasks`) or path/to/file.py:ATTR"
MEMORY_MARGIN_HELP = ("fraction of the memory budget the ceiling keeps free (run-to-run differences of "
                      "a peak, other buffers)")


#: Commands that run on every worker of a data-parallel launch (torchrun); the others decide in
#: one process, and say so there.
DISTRIBUTED_COMMANDS = ("train", "tasks")


@app.callback()
def configure(
    ctx: typer.Context,
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="CPU threads for torch (default: torch's choice). On a machine shared with other "
        "busy processes, 1 avoids stalls of waiting threads that distort every timing.",
    ),
) -> None:
    """Options that apply to every command."""
    if threads is not None:
        from batchsage.device import set_cpu_threads

        set_cpu_threads(threads)
    if "WORLD_SIZE" in os.environ:
        _configure_rank(ctx.invoked_subcommand)


_SINGLE_PROCESS = {
    "recommend": "measures and decides in one process",
    "fit": "races forks of one live run, in one process",
    "workers": "launches its own worker processes",
    "sweep": "runs each trial in one process (start several sweep processes on one storage instead)",
}


def _configure_rank(command: str | None) -> None:
    """Under torchrun: rank 0 speaks for all ranks; commands that decide in one process refuse."""
    from batchsage.engine.distributed import launched_world, wait_for_main_rank

    try:
        world = launched_world()
    except BatchsageError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if world is None:
        return
    if not world.is_main:
        console.quiet = True
        err_console.quiet = True
    if world.world_size > 1 and command not in DISTRIBUTED_COMMANDS:
        why = _SINGLE_PROCESS.get(command or "", "runs in one process")
        err_console.print(
            f"[bold red]error:[/] batchsage {command} {why}, not on {world.world_size} torchrun workers: "
            "run it without torchrun, then train data-parallel with `batchsage train --nproc K` "
            "or torchrun (docs/scale.md)",
            highlight=False, soft_wrap=True,
        )
        wait_for_main_rank()
        raise typer.Exit(2)


def start_command(command: str, task_spec: str, device: str) -> tuple[Task, Device]:
    """Load the task and resolve the device once, and say which device this command measures."""
    from batchsage.device import resolve_device
    from batchsage.task import load_task

    loaded = load_task(task_spec)
    resolved = resolve_device(device)
    console.print(f"[bold]batchsage {command}[/] {loaded.name} on {resolved}", highlight=False)
    return loaded, resolved


def reports_errors(func: F) -> F:
    """Turn BatchsageError into one line on stderr and exit 2; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BatchsageError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            if "WORLD_SIZE" in os.environ:  # under torchrun: let rank 0 say it before the launcher
                from batchsage.engine.distributed import wait_for_main_rank  # stops the others

                wait_for_main_rank()
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def fmt(value: Any, spec: str = "") -> str:
    """Format a possibly missing number for a table cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)
