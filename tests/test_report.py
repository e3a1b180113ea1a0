"""The recommendation report: console table, PNG plots, self-contained HTML, re-rendering from JSON.

The document is built by hand with the keys of ``Recommendation.to_dict()``, its numbers computed
from the planner's formulas (S(B) = S_min·(1 + B_noise/B), T = S·t), so no training runs here.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from batchsage.errors import BatchsageError
from batchsage.report import print_recommendation, render_report, write_report

PLOT_NAMES = ("time_to_target", "throughput", "noise_scale", "pilots")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_document(ceiling: int = 256, chosen: int = 128) -> dict[str, Any]:
    """A realistic document: candidates 8…1024, memory ceiling ``ceiling``, recommendation ``chosen``."""
    s_min, b_noise, base_b, base_lr = 120.0, 150.0, 32, 0.05

    def step_seconds(b: int) -> float:  # fixed overhead + per-sample cost, saturating hardware
        micro = min(b, ceiling)
        return (b // micro) * (0.004 + 0.00002 * micro)

    candidates = []
    for b in (8, 16, 32, 64, 128, 256, 512, 1024):
        micro = min(b, ceiling)
        steps = s_min * (1 + b_noise / b)
        candidates.append({
            "batch_size": b, "micro_batch_size": micro, "accumulation_steps": b // micro,
            "lr": base_lr * b / base_b / (1 + b / b_noise), "warmup_steps": 0 if b <= 64 else b // 8,
            "predicted_steps": steps, "step_seconds": step_seconds(b),
            "predicted_seconds": steps * step_seconds(b), "fits_memory": b <= ceiling,
        })
    best = next(c for c in candidates if c["batch_size"] == chosen)
    trajectory = [
        {"step": s, "train_loss": 2.3 * math.exp(-s / 80) + 0.1, "b_simple": 60 * (s / 10) ** 0.45}
        for s in range(10, 330, 20)
    ]
    trajectory[1]["b_simple"] = -12.0  # the per-window estimate can be negative: must not break a log axis

    def history(b: int, lr: float, n: int, rate: float) -> list[dict[str, float]]:
        return [
            {"step": i * 10, "samples": i * 10 * b, "train_seconds": i * 10 * step_seconds(b),
             "metric": 0.97 - 0.87 * math.exp(-rate * i), "train_loss": 2.3 * math.exp(-rate * i)}
            for i in range(1, n + 1)
        ]

    return {
        "task": "digits-mlp <script>alert('x')</script>",
        "device": "cpu",
        "recommended": {key: best[key] for key in (
            "batch_size", "micro_batch_size", "accumulation_steps", "lr", "warmup_steps",
            "predicted_steps", "predicted_seconds")},
        "candidates": candidates,
        "s_min": s_min,
        "b_noise": b_noise,
        "extrapolated": False,
        "noise_scale": {
            "b_simple": 270.0, "b_simple_ci95": [210.0, 340.0], "growth_scale": 21.5,
            "growth_exponent": 0.45, "b_crit_pilot": 95.0, "calibration": 0.7, "b_noise": b_noise,
            "method": "pilot-calibrated B_simple, averaged over the run", "trajectory": trajectory,
        },
        "memory": {
            "budget_bytes": 2 * 1024**3, "fixed_bytes": 180 * 1024**2, "per_sample_bytes": 5.5 * 1024**2,
            "max_batch_size": ceiling, "verified": True,
            "probes": [{"batch_size": 16, "peak_bytes": 268 * 1024**2, "fits": True},
                       {"batch_size": 64, "peak_bytes": 532 * 1024**2, "fits": True}],
        },
        "throughput": [
            {"batch_size": c["batch_size"], "step_seconds_median": c["step_seconds"],
             "samples_per_second": c["batch_size"] / c["step_seconds"]}
            for c in candidates if c["fits_memory"]
        ],
        "pilots": [
            {"batch_size": 32, "lr": 0.05, "steps": 320, "train_seconds": 1.6, "wall_seconds": 2.4,
             "reached_target": True, "history": history(32, 0.05, 32, 0.12)},
            {"batch_size": 256, "lr": 0.25, "steps": 90, "train_seconds": 1.1, "wall_seconds": 1.5,
             "reached_target": False, "history": history(256, 0.25, 9, 0.3)},
        ],
        "explanation": (
            f"Recommended batch size {chosen} [bold]because[/bold] the gradient noise scale is about "
            f"{b_noise:.0f} samples & the hardware saturates beyond B≈128 <em>here</em>."
        ),
        "decision_seconds": 7.9,
        "phase_seconds": {"memory": 1.2, "throughput": 2.1, "pilot_a": 2.9, "pilot_b": 1.6},
        "metric": {"name": "accuracy", "target": 0.95, "higher_is_better": True},
    }


class _Sources(HTMLParser):
    """Collects every src/href and the inline <style>/<script> blocks of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.references += [value or "" for name, value in attrs if name in ("src", "href")]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Path]]:
    document = make_document()
    return document, write_report(document, tmp_path_factory.mktemp("report"))


def test_writes_non_empty_pngs(report: tuple[dict[str, Any], dict[str, Path]]) -> None:
    _, paths = report
    for name in PLOT_NAMES:
        path = paths[name]
        assert path.parent.name == "plots" and path.name == f"{name}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not list(paths["html"].parent.rglob("*.tmp"))  # atomic writes left no temp files


def test_html_is_self_contained(report: tuple[dict[str, Any], dict[str, Path]]) -> None:
    _, paths = report
    page = paths["html"].read_text(encoding="utf-8")
    parser = _Sources()
    parser.feed(page)
    images = [ref for ref in parser.references if ref.startswith("data:image/png;base64,")]
    assert len(images) == len(PLOT_NAMES)
    assert parser.references == images  # no link, stylesheet or script fetched from anywhere
    assert "link" not in parser.tags and "style" in parser.tags
    assert "url(" not in page and "@import" not in page


def test_html_shows_answer_and_escapes_text(report: tuple[dict[str, Any], dict[str, Path]]) -> None:
    _, paths = report
    page = paths["html"].read_text(encoding="utf-8")
    assert "Use batch size 128," in page
    assert re.search(r'class="value">128<', page)  # the batch-size card
    assert re.search(r'<tr class="recommended"><td>→ 128</td>', page)
    # the explanation is there, escaped: markup in a document is text, never HTML
    assert "&lt;em&gt;here&lt;/em&gt;" in page and "<em>" not in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "samples &amp; the hardware" in page
    # sections in the promised order: answer, explanation, plots, candidates, memory, phases
    markers = ["Use batch size", "Why", "Evidence", "Candidates", "Memory probes", "decision time went"]
    positions = [page.index(marker) for marker in markers]
    assert positions == sorted(positions)


def _table_batch_sizes(text: str) -> list[int]:
    """The B column of the candidates table (rows are the lines with "micro × acc" in them)."""
    rows = [line.split() for line in text.splitlines() if re.search(r"\d+ × \d+", line)]
    return [int(row[1] if row[0] == "→" else row[0]) for row in rows]


@pytest.mark.parametrize("width", [160, 80])
def test_console_table_lists_candidates_and_answer(width: int) -> None:
    document = make_document()
    document["candidates"][-1]["step_seconds"] = 1.2345  # ms ≥ 1000 prints as "1,234", never 1.23e+03
    console = Console(record=True, width=width, color_system=None)
    print_recommendation(document, console, details=True)
    text = console.export_text()
    assert _table_batch_sizes(text) == [8, 16, 32, 64, 128, 256, 512, 1024]  # one line per row, no wrap
    assert "…" not in text and "e+" not in text
    assert "→ 128" in text and "1,234" in text
    assert "256 × 2" in text and "256 × 4" in text  # accumulation beyond the ceiling of 256
    assert "[bold]because[/bold]" in text  # explanation printed as text, not parsed as Rich markup
    answer = " ".join(text.strip().split("\n\n")[0].split())
    assert answer.startswith("Use batch size 128, lr")
    assert "(decided in 7.9 s)." in answer


def test_console_shows_the_answer_first_then_at_most_five_reasons() -> None:
    document = make_document()
    document["why"] = [f"reason {index}" for index in range(7)]
    console = Console(record=True, width=100, color_system=None)
    print_recommendation(document, console)
    lines = console.export_text().strip().splitlines()
    assert lines[0].startswith("Use batch size 128, lr")
    assert lines[1:] == [f"  • reason {index}" for index in range(5)]


def test_accumulated_recommendation_is_stated() -> None:
    document = make_document(ceiling=64, chosen=256)
    console = Console(record=True, width=160, color_system=None)
    print_recommendation(document, console)
    assert "(micro-batch 64 × 4 accumulation steps)" in console.export_text()


def test_missing_measurements_do_not_crash(tmp_path: Path) -> None:
    document = make_document()
    document["noise_scale"] = None
    document["throughput"] = []
    document["pilots"] = [{"batch_size": 32, "lr": None, "history": None}]
    document["memory"] = {"max_batch_size": None, "probes": None}
    document["phase_seconds"] = None
    document["decision_seconds"] = None
    document["b_noise"] = None
    for candidate in document["candidates"][:3]:
        candidate["predicted_seconds"] = float("nan")
        candidate["step_seconds"] = None
    paths = write_report(document, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert "Use batch size 128" in page and "No phase timings recorded." in page
    assert all(paths[name].stat().st_size > 0 for name in PLOT_NAMES)
    console = Console(record=True, width=160, color_system=None)
    print_recommendation(document, console)
    assert "decided in -" in console.export_text()


def test_empty_document_still_renders(tmp_path: Path) -> None:
    paths = write_report({"recommended": {}}, tmp_path)
    assert "No recommendation in this document." in paths["html"].read_text(encoding="utf-8")
    console = Console(record=True, width=120, color_system=None)
    print_recommendation({"recommended": None}, console, details=True)
    assert "No recommendation in this document." in console.export_text()


def test_render_report_from_saved_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import batchsage.report.html as html_module

    calls: list[tuple[dict[str, Any], Path]] = []
    monkeypatch.setattr(html_module, "write_report", lambda doc, out: calls.append((doc, out)) or {})
    document = make_document()
    document["candidates"][0]["predicted_seconds"] = None  # as write_json turns NaN into null
    json_path = tmp_path / "recommendation.json"
    json_path.write_text(json.dumps(document))
    render_report(json_path)
    render_report(json_path, tmp_path / "again")
    assert calls == [(document, tmp_path), (document, tmp_path / "again")]  # default: beside the JSON


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"task": "x"}'])
def test_render_report_rejects_bad_files(tmp_path: Path, content: str) -> None:
    json_path = tmp_path / "recommendation.json"
    json_path.write_text(content)
    with pytest.raises(BatchsageError, match="recommendation"):
        render_report(json_path)
    with pytest.raises(BatchsageError, match="not found"):
        render_report(tmp_path / "missing.json")


def test_lr_race_rows_mark_the_winner_and_how_each_racer_ended() -> None:
    from batchsage.report.html import _race_rows

    document = {
        "pilots": [{"batch_size": 32, "lr": 0.01}, {"batch_size": 256, "lr": 0.16}],
        "lr_calibration": {"batch_size": 256, "factor": 2.0},
        "lr_race": [
            {"batch_size": 256, "lr": 0.08, "lr_factor_vs_start": 1.0, "steps_to_level": 100.0,
             "diverged": False, "seconds": 2.0},
            {"batch_size": 256, "lr": 0.16, "lr_factor_vs_start": 2.0, "steps_to_level": 95.0,
             "diverged": False, "seconds": 1.5, "won": True},
            {"batch_size": 256, "lr": 0.32, "lr_factor_vs_start": 4.0, "steps_to_level": None,
             "diverged": True, "seconds": 0.1},
        ],
    }
    rows = _race_rows(document)
    assert [row[-1] for row in rows] == ["", "◀ chosen", ""]
    assert rows[0][3] == "100" and rows[2][3] == "diverged"


def test_lr_card_says_where_the_lr_was_anchored() -> None:
    from batchsage.report.html import _lr_note

    raced = {"anchor": {"batch_size": 32, "lr": 0.04, "task_base_lr": 0.01}}
    assert "beat the task's 0.01" in _lr_note(raced)
    assert "kept it" in _lr_note({"anchor": {"batch_size": 32, "lr": 0.01, "task_base_lr": 0.01}})
    assert _lr_note({}) == "scaled from the task's base lr"  # an older document
    shifted = {"anchor": {"batch_size": 32, "lr": 0.01, "task_base_lr": 0.01, "noise_shift": 0.4,
                          "b_noise_at_race": 20.0}, "b_noise": 270.0}
    assert "× 0.4 because the noise scale grows from ≈20" in _lr_note(shifted)
    assert "≈270 over the run" in _lr_note(shifted)


def test_steps_to_target_row_says_how_far_the_pilot_got() -> None:
    from batchsage.report.html import _steps_to_target_text

    assert _steps_to_target_text({"extrapolated": False}) == "measured by the pilot"
    assert _steps_to_target_text({"extrapolated": True, "pilot_coverage": 0.87}) == (
        "extrapolated from the pilot's trend (the first pilot got 87% of the way to the target)")
    assert _steps_to_target_text({"extrapolated": True}) == "extrapolated from the pilot's trend"
