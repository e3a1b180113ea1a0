"""The recommendation on a terminal: the answer in one bold line, then at most five "why" lines.

The candidates table (``candidates_table``) and the full explanation are for ``--details`` and the
HTML report.

Everything works from the document dict (``Recommendation.to_dict()`` or a saved
``recommendation.json``), where any number may be missing (``None``) or non-finite: such a value
prints as "-", never as a crash. The small formatting helpers here are shared with the HTML report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

MISSING = "-"


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt(value: Any, spec: str = ".3g") -> str:
    """A possibly missing number formatted with ``spec``; "-" when missing."""
    number = finite(value)
    return MISSING if number is None else format(number, spec)


def fmt_int(value: Any) -> str:
    number = finite(value)
    return MISSING if number is None else f"{round(number):,}"


def fmt_batch(value: Any) -> str:
    """A batch size as people write it: 1024, not 1,024."""
    number = finite(value)
    return MISSING if number is None else str(round(number))


def fmt_ms(seconds: Any) -> str:
    """Seconds as milliseconds with three significant digits, never in exponent notation."""
    value = finite(seconds)
    if value is None:
        return MISSING
    milliseconds = value * 1000.0
    return f"{milliseconds:,.0f}" if milliseconds >= 100 else f"{milliseconds:.3g}"


def fmt_seconds(value: Any) -> str:
    """Seconds in the unit a person reads best (ms below 1 s, minutes above 2 min)."""
    seconds = finite(value)
    if seconds is None:
        return MISSING
    if seconds < 1.0:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120.0:
        return f"{seconds:.1f} s"
    if seconds < 7200.0:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_bytes(value: Any) -> str:
    """Bytes in binary units (KiB, MiB, GiB), as memory budgets are usually given."""
    size = finite(value)
    if size is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024.0:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024.0
    return f"{size:.1f} TiB"


def fmt_split(item: Mapping[str, Any]) -> str:
    """"micro × accumulation" of a candidate or of the recommendation."""
    micro, accumulation = item.get("micro_batch_size"), item.get("accumulation_steps")
    if finite(micro) is None:
        return MISSING
    return f"{fmt_batch(micro)} × {fmt_batch(accumulation) if finite(accumulation) is not None else 1}"


def is_recommended(candidate: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    recommended = document.get("recommended") or {}
    size = candidate.get("batch_size")
    return size is not None and size == recommended.get("batch_size")


def answer_line(document: Mapping[str, Any]) -> str:
    """The recommendation in one sentence (plain text, no markup)."""
    r = document.get("recommended") or {}
    if finite(r.get("batch_size")) is None:
        return "No recommendation in this document."
    accumulation = finite(r.get("accumulation_steps")) or 1
    micro = fmt_batch(r.get("micro_batch_size"))
    steps = fmt_batch(accumulation)
    split = f" (micro-batch {micro} × {steps} accumulation steps)" if accumulation > 1 else ""
    warmup = finite(r.get("warmup_steps")) or 0
    return (
        f"Use batch size {fmt_batch(r['batch_size'])}{split}, lr {fmt(r.get('lr'), '.4g')}"
        + (f", {fmt_int(warmup)} warmup steps" if warmup > 0 else ", no warmup")
        + f": predicted {fmt_seconds(r.get('predicted_seconds'))} to target"
        + f" (decided in {fmt_seconds(document.get('decision_seconds'))})."
    )


def candidates_table(document: Mapping[str, Any]) -> Table:
    """One row per candidate batch size; the recommended one highlighted."""
    metric = document.get("metric") or {}
    title = f"{document.get('task') or 'task'} on {document.get('device') or 'unknown device'}"
    if metric.get("name") is not None:
        relation = "≥" if metric.get("higher_is_better", True) else "≤"
        title += f" — time to {metric['name']} {relation} {fmt(metric.get('target'), 'g')}"
    # Compact (no vertical rules, short headers): the table must fit an 80-column terminal.
    table = Table(
        title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, caption_justify="left",
        caption="steps, time: predicted to reach the target; step ms: time per optimiser step; "
        "fits: the batch fits in memory in one pass",
    )
    for header in ("B", "micro×acc", "lr", "warmup", "steps", "step ms", "time", "fits"):
        table.add_column(header, justify="left" if header in ("micro×acc", "fits") else "right", no_wrap=True)
    for candidate in document.get("candidates") or []:
        chosen = is_recommended(candidate, document)
        fits = candidate.get("fits_memory")
        table.add_row(
            ("→ " if chosen else "") + fmt_batch(candidate.get("batch_size")),
            fmt_split(candidate),
            fmt(candidate.get("lr"), ".3g"),
            fmt_int(candidate.get("warmup_steps")),
            fmt_int(candidate.get("predicted_steps")),
            fmt_ms(candidate.get("step_seconds")),
            fmt_seconds(candidate.get("predicted_seconds")),
            MISSING if fits is None else ("yes" if fits else "no"),
            style="bold green" if chosen else None,
        )
    return table


def print_recommendation(document: Mapping[str, Any], console: Console, *, details: bool = False) -> None:
    """The answer first, then the "why" lines; with ``details`` the candidates and the explanation."""
    console.print(Text(answer_line(document), style="bold"))
    interval = (document.get("recommended") or {}).get("predicted_interval")
    if interval and all(finite(bound) is not None for bound in interval):
        basis = (document.get("recommended") or {}).get("interval_basis") or ""
        console.print(Text(f"  predicted time to target: {fmt_seconds(interval[0])} – "
                           f"{fmt_seconds(interval[1])}" + (f" ({basis})" if basis else "")))
    for line in (document.get("why") or [])[:5]:
        console.print(Text(f"  • {line}"))
    if not details:
        return
    console.print()
    if document.get("candidates"):
        console.print(candidates_table(document))
    explanation = document.get("explanation")
    if explanation:
        # Text, not markup: the explanation may contain brackets that Rich would parse.
        console.print(Text(str(explanation)))
