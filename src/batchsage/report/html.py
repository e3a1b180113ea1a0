"""``report.html``: one self-contained page (CSS inline, plots as data: URIs) a person opens offline.

The page is rendered from the recommendation document alone, so a saved ``recommendation.json``
can be re-rendered later (:func:`render_report`). Jinja2 autoescaping escapes every text value;
this module turns numbers into display strings so the template stays free of logic.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from batchsage.errors import ConfigError
from batchsage.report import plots
from batchsage.report.console import (
    MISSING,
    answer_line,
    finite,
    fmt,
    fmt_batch,
    fmt_bytes,
    fmt_int,
    fmt_ms,
    fmt_seconds,
    fmt_split,
    is_recommended,
)

TEMPLATE_NAME = "recommendation.html"
TEMPLATES_DIR = Path(__file__).parent / "templates"

#: What each plot shows and how to read it, in the order of plots.PLOTS.
PLOT_CAPTIONS: dict[str, tuple[str, str]] = {
    "time_to_target.png": (
        "Predicted time to target",
        "Predicted steps to target × measured step time, for each candidate batch size. Small batches "
        "need many steps; large ones pay more per step and gain few steps once past the noise scale. "
        "Squares beyond the dashed memory ceiling run as micro-batches with gradient accumulation.",
    ),
    "throughput.png": (
        "Throughput",
        "Training samples per second measured at each probed batch size (points, median over timed "
        "steps) and the step-time model the plan used for every candidate (dashed). Where the curve "
        "flattens, the hardware is full and a larger batch no longer speeds up each sample.",
    ),
    "noise_scale.png": (
        "Gradient noise scale",
        "The simple noise scale B_simple measured during the pilot run (it grows as the loss falls), "
        "its fitted growth, the same curve calibrated to the critical batch measured by the two "
        "pilots, and the B_noise the plan used for the whole run.",
    ),
    "pilots.png": (
        "Pilot runs",
        "Validation metric against training samples for the short pilot runs, with the target. "
        "The steps each needed for the same level give the critical batch size.",
    ),
}


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _answer_cards(document: Mapping[str, Any]) -> list[dict[str, str]]:
    r = document.get("recommended") or {}
    accumulation = finite(r.get("accumulation_steps")) or 1
    return [
        {"label": "batch size", "value": fmt_batch(r.get("batch_size")),
         "note": "samples per optimiser step"},
        {"label": "micro-batch × accumulation", "value": fmt_split(r),
         "note": "accumulate gradients" if accumulation > 1 else "no accumulation needed"},
        {"label": "learning rate", "value": fmt(r.get("lr"), ".4g"), "note": _lr_note(document)},
        {"label": "warmup", "value": fmt_int(r.get("warmup_steps")), "note": "steps of linear warmup"},
        {"label": "predicted time to target", "value": fmt_seconds(r.get("predicted_seconds")),
         "note": f"{fmt_int(r.get('predicted_steps'))} steps"},
        {"label": "decision time", "value": fmt_seconds(document.get("decision_seconds")),
         "note": "probes and pilots"},
    ]


def _candidate_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in document.get("candidates") or []:
        fits = c.get("fits_memory")
        rows.append({
            "recommended": is_recommended(c, document),
            "cells": [
                fmt_batch(c.get("batch_size")), fmt_split(c), fmt(c.get("lr"), ".3g"),
                fmt_int(c.get("warmup_steps")), fmt_int(c.get("predicted_steps")),
                fmt_ms(c.get("step_seconds")), fmt_seconds(c.get("predicted_seconds")),
                MISSING if fits is None else ("yes" if fits else "no: accumulate"),
            ],
        })
    return rows


def _noise_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    noise = document.get("noise_scale") or {}
    ci = noise.get("b_simple_ci95")
    ci_text = f"{fmt(ci[0])} – {fmt(ci[1])}" if isinstance(ci, list | tuple) and len(ci) == 2 else MISSING
    growth = (
        f"{fmt(noise.get('growth_scale'))} · step^{fmt(noise.get('growth_exponent'), '.2f')}"
        if finite(noise.get("growth_scale")) is not None else MISSING
    )
    return [
        ("B_simple at the end of pilot A", fmt(noise.get("b_simple"))),
        ("B_simple 95 % interval", ci_text),
        ("growth of B_simple", growth),
        ("critical batch measured by the pilots", fmt(noise.get("b_crit_pilot"))),
        ("calibration B_crit / B_simple", fmt(noise.get("calibration"), ".2g")),
        ("B_noise used by the plan", fmt(noise.get("b_noise", document.get("b_noise")))),
        ("S_min (minimal steps to target)", fmt_int(document.get("s_min"))),
        ("how B_noise was obtained", str(noise.get("method") or MISSING)),
        ("steps to target", _steps_to_target_text(document)),
    ]


def _steps_to_target_text(document: Mapping[str, Any]) -> str:
    if not document.get("extrapolated"):
        return "measured by the pilot"
    coverage = finite(document.get("pilot_coverage"))
    reach = f" (the first pilot got {coverage:.0%} of the way to the target)" if coverage is not None else ""
    return "extrapolated from the pilot's trend" + reach


def _pilot_rows(document: Mapping[str, Any]) -> list[list[str]]:
    return [
        [fmt_batch(p.get("batch_size")), fmt(p.get("lr"), ".3g"), fmt_int(p.get("steps")),
         fmt_seconds(p.get("train_seconds")), fmt_seconds(p.get("wall_seconds")),
         "yes" if p.get("reached_target") else "no"]
        for p in document.get("pilots") or []
    ]


def _lr_note(document: Mapping[str, Any]) -> str:
    """Where the lr comes from: the rule scaled from the anchor the base-batch race measured."""
    anchor = document.get("anchor") or {}
    lr, base_lr = finite(anchor.get("lr")), finite(anchor.get("task_base_lr"))
    if lr is None or base_lr is None:
        return "scaled from the task's base lr"
    if lr == base_lr:
        note = f"scaled from the task's base lr {fmt(base_lr, '.3g')} (the lr races kept it)"
    else:
        note = (f"scaled from lr {fmt(lr, '.3g')} at B={fmt_batch(anchor.get('batch_size'))}, "
                f"which beat the task's {fmt(base_lr, '.3g')} in the lr race")
    shift, at_race = finite(anchor.get("noise_shift")), finite(anchor.get("b_noise_at_race"))
    if shift is not None and at_race is not None and abs(shift - 1.0) > 0.01:
        note += (f", × {fmt(shift, '.2g')} because the noise scale grows from ≈{fmt(at_race, '.0f')} "
                 f"where the races ran to ≈{fmt(document.get('b_noise'), '.0f')} over the run")
    return note


def _race_rows(document: Mapping[str, Any]) -> list[list[str]]:
    """The lr race at the larger pilot batch: each racer's lr and the steps it needed."""
    rows = []
    for racer in document.get("lr_race") or []:
        steps = racer.get("steps_to_level")
        outcome = ("diverged" if racer.get("diverged") else
                   "cut: could no longer win" if steps is None else fmt(steps, ".0f"))
        rows.append([fmt_batch(racer.get("batch_size")), fmt(racer.get("lr"), ".3g"),
                     fmt(racer.get("lr_factor_vs_start"), ".3g") + "×", outcome,
                     fmt_seconds(racer.get("seconds")), "◀ chosen" if racer.get("won") else ""])
    return rows


def _format_by_unit(key: str, value: Any) -> str:
    """A scalar shown by the unit its key names (``_bytes``, ``_seconds``)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "bytes" or key.endswith("_bytes"):
        return fmt_bytes(value)
    if key == "seconds" or key.endswith("_seconds"):
        return fmt_seconds(value)
    if isinstance(value, int | float) or value is None:
        return fmt(value, ",.6g")
    return str(value)


MEMORY_LABELS = {
    "budget_bytes": "memory budget",
    "fixed_bytes": "fixed memory (model, optimiser, framework)",
    "per_sample_bytes": "memory per sample in the batch",
    "max_batch_size": "memory ceiling (largest batch that fits)",
}


def _memory_rows(memory: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Known keys first with plain labels, then any other scalar the probe reported."""
    rows = [(label, _format_by_unit(key, memory.get(key))) for key, label in MEMORY_LABELS.items()]
    for key, value in memory.items():
        if key not in MEMORY_LABELS and not isinstance(value, list | dict):
            rows.append((key.replace("_", " "), _format_by_unit(key, value)))
    return rows


def _probe_rows(memory: Mapping[str, Any]) -> list[list[str]]:
    """B, peak memory, fits, and the probe's role (a fit probe or the ceiling's verification)."""
    return [
        [fmt_batch(p.get("batch_size")), fmt_bytes(p.get("peak_bytes")),
         MISSING if p.get("fits") is None else ("yes" if p.get("fits") else "no (out of memory)"),
         str(p.get("role") or "")]
        for p in memory.get("probes") or []
    ]


def _memory_notes(memory: Mapping[str, Any]) -> list[str]:
    notes = memory.get("notes")
    return [str(note) for note in notes] if isinstance(notes, list) else []


PHASE_LABELS = {
    "memory": "memory probe",
    "throughput": "throughput probe",
    "pilot_a": "pilot A (base batch, noise scale)",
    "base_lr": "lr race at the base batch",
    "pilot_b": "pilot B (larger batch, calibration)",
}


def _phase_rows(document: Mapping[str, Any]) -> list[dict[str, str]]:
    phases = document.get("phase_seconds") or {}
    total = finite(document.get("decision_seconds")) or sum(filter(None, map(finite, phases.values())))
    rows = []
    for name, seconds in phases.items():
        value = finite(seconds)
        share = 100.0 * value / total if value is not None and total else 0.0
        rows.append({"name": PHASE_LABELS.get(name, name.replace("_", " ")), "seconds": fmt_seconds(value),
                     "share": f"{share:.0f} %", "width": f"{min(share, 100.0):.1f}"})
    return rows


def report_context(document: Mapping[str, Any], images: Mapping[str, str]) -> dict[str, Any]:
    """Everything the template shows, as display strings; ``images`` maps plot file name → URI."""
    from batchsage import __version__

    metric = document.get("metric") or {}
    target = (
        f"{metric.get('name') or 'metric'} {'≥' if metric.get('higher_is_better', True) else '≤'} "
        f"{fmt(metric.get('target'), 'g')}"
    )
    memory = document.get("memory") or {}
    return {
        "task": str(document.get("task") or "unknown task"),
        "device": str(document.get("device") or "unknown device"),
        "target": target,
        "answer": answer_line(document),
        "cards": _answer_cards(document),
        "explanation": str(document.get("explanation") or ""),
        "plots": [
            {"title": PLOT_CAPTIONS[name][0], "caption": PLOT_CAPTIONS[name][1], "file": name, "uri": uri}
            for name, uri in images.items()
        ],
        "candidate_headers": ["B", "micro × acc", "lr", "warmup", "predicted steps", "step ms",
                              "predicted time", "fits memory"],
        "candidates": _candidate_rows(document),
        "noise": _noise_rows(document),
        "pilots": _pilot_rows(document),
        "race": _race_rows(document),
        "memory": _memory_rows(memory),
        "probes": _probe_rows(memory),
        "memory_notes": _memory_notes(memory),
        "phases": _phase_rows(document),
        "decision": fmt_seconds(document.get("decision_seconds")),
        "version": __version__,
        "rendered": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def render_html(document: Mapping[str, Any], images: Mapping[str, str]) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every value is text from the document: escape it all
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template(TEMPLATE_NAME).render(**report_context(document, images))


def write_report(document: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``plots/*.png`` and ``report.html`` under ``out_dir``; returns name → path.

    Names: ``time_to_target``, ``throughput``, ``noise_scale``, ``pilots`` (PNGs) and ``html``.
    The JSON document itself is the caller's to write.
    """
    out_dir = Path(out_dir)
    png_paths = plots.write_plots(document, out_dir / "plots")
    images = {name: _data_uri(path) for name, path in png_paths.items()}
    html_path = out_dir / "report.html"
    partial = html_path.with_name(html_path.name + ".tmp")
    partial.write_text(render_html(document, images), encoding="utf-8")
    partial.replace(html_path)  # atomic: an interrupt never leaves half a page
    paths = {Path(name).stem: path for name, path in png_paths.items()}
    paths["html"] = html_path
    return paths


def render_report(json_path: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Re-render the plots and HTML from a saved ``recommendation.json`` (default: beside it)."""
    json_path = Path(json_path)
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recommendation file not found: {json_path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read recommendation file {json_path}: {exc}") from None
    if not isinstance(document, dict) or "recommended" not in document:
        raise ConfigError(f"{json_path} is not a batchsage recommendation (no 'recommended' key)")
    return write_report(document, out_dir if out_dir is not None else json_path.parent)
