"""The Typer app and what every command shares: one-line errors, atomic JSON output."""

from __future__ import annotations

import functools
import math
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


@app.callback()
def configure(
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
