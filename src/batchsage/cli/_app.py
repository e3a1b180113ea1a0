"""The Typer app and what every command shares: one-line errors, atomic JSON output."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from batchsage.errors import BatchsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Choose the batch size (and its lr, accumulation, warmup) that trains fastest to target.",
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

TASK_HELP = "built-in task name (see `batchsage tasks`) or path/to/file.py:ATTR"


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


def reports_errors(func: F) -> F:
    """Turn BatchsageError into one line on stderr and exit 2; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BatchsageError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def write_json(path: Path | None, document: dict[str, Any]) -> None:
    """Write ``document`` atomically (temp file + rename), so an interrupt never leaves half a file."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False)
    tmp.write_text(text + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN and inf become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def fmt(value: Any, spec: str = "") -> str:
    """Format a possibly missing number for a table cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)
