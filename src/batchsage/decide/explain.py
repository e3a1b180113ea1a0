"""The recommendation in words: a paragraph for the report, and at most five short "why" lines.

Every number in them is taken from the measurements in the recommendation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from batchsage.decide.calibrate import NOISE_FROM_GROWTH
from batchsage.decide.pilots import best_metric
from batchsage.decide.recommendation import Recommendation

#: At most this many "why" lines under the answer on the console.
MAX_WHY_LINES = 5


def why_lines(rec: Recommendation, ceiling: int) -> list[str]:
    """Short reasons for the answer, most important first (at most MAX_WHY_LINES)."""
    lines = [
        f"gradient noise scale ≈ {rec.b_noise:.0f} samples: below it, halving the batch nearly "
        "doubles the steps; above it, extra samples per step are mostly wasted"
    ]
    lines.append(_lr_reason(rec))
    saturating = _throughput_saturation(rec.throughput)
    if saturating is not None:
        lines.append(f"samples/s on {rec.device} stop growing much beyond B≈{saturating}")
    margin = rec.memory.get("margin")
    where = (f"; {margin:.0%} margin, checked in a {rec.memory.get('checked_in')}"
             if margin is not None and rec.memory.get("limited_by") == "memory" else "")
    if rec.accumulation_steps > 1:
        lines.append(f"memory ceiling B={ceiling}{where}: run as {rec.accumulation_steps} accumulated "
                     f"micro-batches of {rec.micro_batch_size}")
    else:
        lines.append(f"fits in memory in one pass (ceiling B={ceiling}{where})")
    if rec.extrapolated and rec.pilot_coverage is not None:
        lines.append(f"the first pilot got {rec.pilot_coverage:.0%} of the way to the target; steps "
                     "beyond it are extrapolated (see the report)")
    return lines[:MAX_WHY_LINES]


def _lr_reason(rec: Recommendation) -> str:
    anchor = rec.anchor
    if anchor["lr"] != anchor["task_base_lr"]:
        return (f"lr {anchor['lr']:.3g} beat the task's {anchor['task_base_lr']:.3g} at "
                f"B={anchor['batch_size']} in a race; larger batches scale from it")
    calibration = rec.lr_calibration
    if calibration is not None and abs(math.log2(calibration["factor"])) > 0.01:
        return (f"a race at B={calibration['batch_size']} found {calibration['factor']:.2g}× the scaling "
                "rule's lr fastest")
    return (f"lr scaled from the task's {anchor['task_base_lr']:.3g} at B={anchor['batch_size']} "
            "by the scaling rule")


def explain(rec: Recommendation, ceiling: int, base_batch_size: int) -> str:
    """One paragraph in plain words, every number taken from the measurements."""
    r = rec.recommended
    parts = [
        f"Recommended batch size {r['batch_size']} at lr {r['lr']:.3g}"
        + (f" with {r['warmup_steps']} warmup steps" if r["warmup_steps"] else "")
        + f": predicted {r['predicted_seconds']:.1f} s of training to reach "
        f"{rec.metric_name} {'≥' if rec.higher_is_better else '≤'} {rec.target:g}"
        + (f" (80 % interval {rec.predicted_interval[0]:.1f}–{rec.predicted_interval[1]:.1f} s: "
           f"{rec.interval_basis})." if rec.predicted_interval else ".")
    ]
    parts.append(
        f"The gradient noise scale of this run is about {rec.b_noise:.0f} samples "
        f"[{rec.noise_scale.method}]; below it, each step is limited by gradient noise and "
        "halving the batch almost doubles the steps needed, above it extra samples per step are "
        "mostly wasted."
    )
    anchor = rec.anchor
    if anchor["lr"] != anchor["task_base_lr"]:
        parts.append(
            f"At the base batch {anchor['batch_size']}, lr {anchor['lr']:.3g} reached the first pilot's "
            f"level in fewer steps than the task's lr {anchor['task_base_lr']:.3g}, so the plan is "
            "anchored there."
        )
    else:
        unresolved = unresolved_base_race(rec)
        if unresolved is not None:
            lrs, cut_at, pilot_steps = unresolved
            parts.append(
                f"At the base batch {anchor['batch_size']} the lr race could not tell: the racers at lr "
                f"{', '.join(f'{lr:.3g}' for lr in lrs)} had not reached the first pilot's level when "
                f"cut at {cut_at} steps, where the pilot needed {pilot_steps:.0f}. The lr "
                f"{anchor['lr']:.3g} there is the task's, not a measured best: a racer less than "
                f"{pilot_steps / cut_at:.2g}× faster would not have shown."
            )
    shift, at_race = anchor.get("noise_shift", 1.0), anchor.get("b_noise_at_race")
    if at_race is not None and abs(shift - 1.0) > 0.01:
        parts.append(
            f"The lr races ran early in training, where the noise scale was about {at_race:.0f}; "
            f"over the whole run it averages about {rec.b_noise:.0f}, and the best lr falls as the "
            f"noise grows, so the plan's lr is {shift:.2g}× the raced one."
        )
    calibration = rec.lr_calibration
    if calibration is not None and abs(math.log2(calibration["factor"])) > 0.01:
        parts.append(
            f"A short lr race at B={calibration['batch_size']} found {calibration['factor']:.3g}× the "
            "rule's learning rate fastest, so the lr of larger batches is scaled by that much."
        )
    flat = _near_optimal_range(rec)
    if flat is not None:
        parts.append(
            f"Batch sizes {flat[0]}–{flat[1]} are all predicted within {NEAR_OPTIMAL:.0%} of the fastest: "
            "the optimum is flat there, and the pick within it rests on short, noisy pilots."
        )
    saturating = _throughput_saturation(rec.throughput)
    if saturating is not None:
        parts.append(
            f"The hardware's throughput stops growing much beyond B≈{saturating} "
            "(samples per second flatten), so larger batches buy little speed per sample."
        )
    if r["accumulation_steps"] > 1:
        parts.append(
            f"The memory ceiling is B={ceiling}, so run it as {r['accumulation_steps']} "
            f"accumulated micro-batches of {r['micro_batch_size']} (mixed precision or activation "
            "checkpointing would raise the ceiling)."
        )
    else:
        parts.append(f"It fits in memory (ceiling B={ceiling}).")
    baseline = rec.candidate(32) or rec.candidate(base_batch_size)
    chosen = rec.candidate(rec.batch_size)
    if (baseline is not None and chosen is not None and baseline.batch_size != rec.batch_size
            and chosen.predicted_seconds > 0):  # both in the plan's own unit, before calibration
        parts.append(
            f"The plan has it {baseline.predicted_seconds / chosen.predicted_seconds:.1f}× as fast as "
            f"B={baseline.batch_size}."
        )
    if rec.extrapolated:
        parts.append(_extrapolation_sentence(rec))
    subset = rec.pilot_validation
    if subset is not None:
        parts.append(
            f"A full validation pass took {subset['full_pass_seconds']:.2g} s, more than the pilots' "
            f"share of time allows, so they validated on a fixed random {subset['samples']} of the "
            f"{subset['of']} validation samples ({subset['subset_pass_seconds']:.2g} s a pass)."
        )
    parts.append(f"Deciding took {rec.decision_seconds:.1f} s.")
    return " ".join(parts)


def unresolved_base_race(rec: Recommendation) -> tuple[list[float], int, float] | None:
    """(challenger lrs, steps they were cut at, pilot A's steps) when the base-batch lr race judged nothing.

    That is when every challenger was cut before reaching pilot A's level without diverging: the
    race's margin (what the pilots' validations resolve) asked for more than any of them showed
    in its steps, so the anchor's lr is the task's by default. None when the race decided
    something, or did not run.
    """
    base = rec.anchor["batch_size"]
    racers = [r for r in rec.lr_race if r["batch_size"] == base]
    leader = next((r for r in racers if r["won"]), None)
    challengers = [r for r in racers if not r["won"]]
    if leader is None or leader["steps_to_level"] is None or not challengers:
        return None
    if any(r["steps_to_level"] is not None or r["diverged"] for r in challengers):
        return None
    cut_at = max(r["steps_run"] for r in challengers)
    if cut_at <= 0 or cut_at >= leader["steps_to_level"]:
        return None  # ran as long as the pilot and still slower: that is a judgement
    return [r["lr"] for r in challengers], cut_at, float(leader["steps_to_level"])


def pilot_coverage(rec: Recommendation) -> float | None:
    """How much of the way from its first validation to the target the first pilot's best one got.

    In the metric's own units (a loss's last stretch takes the most steps, so this overstates how
    much of the run the pilot saw). None where the pilot has no usable validations.
    """
    if not rec.pilots:
        return None
    metrics = [m for m in rec.pilots[0].steps_and_metrics()[1] if math.isfinite(m)]
    if len(metrics) < 2:
        return None
    first, best = metrics[0], best_metric(metrics, rec.higher_is_better)
    if first == rec.target:
        return 1.0
    return max(0.0, min(1.0, (best - first) / (rec.target - first)))


def _extrapolation_sentence(rec: Recommendation) -> str:
    sentence = ("The pilot did not reach the target, so steps to target were extrapolated from the "
                "validation trend; treat the predicted times as estimates.")
    coverage = pilot_coverage(rec)
    if coverage is None:
        return sentence
    grown = rec.noise_scale.method == NOISE_FROM_GROWTH
    return sentence + (
        f" The first pilot got {coverage:.0%} of the way from its first validation to the target "
        f"(in {rec.metric_name}; the last stretch takes the most steps) in {rec.pilots[0].steps} steps"
        + ("; the noise scale's growth, and with it the lr shift and the critical batch, is "
           "extrapolated the rest of the way" if grown else "")
        + "; a larger budget (--budget-seconds) lets the pilots see more of the run "
        "(docs/groundtruth.md, decision budget)."
    )


#: The explanation names the batch sizes predicted within this fraction of the fastest.
NEAR_OPTIMAL = 0.10


def _near_optimal_range(rec: Recommendation) -> tuple[int, int] | None:
    """Smallest and largest B predicted within NEAR_OPTIMAL of the fastest, if more than one is."""
    finite = [c for c in rec.candidates if math.isfinite(c.predicted_seconds)]
    if not finite:
        return None
    fastest = min(c.predicted_seconds for c in finite)
    near = sorted(c.batch_size for c in finite if c.predicted_seconds <= fastest * (1.0 + NEAR_OPTIMAL))
    return (near[0], near[-1]) if len(near) > 1 else None


def _throughput_saturation(points: list[dict[str, Any]], gain: float = 1.25) -> int | None:
    """Smallest measured B after which doubling-ish the batch adds < (gain−1) samples/s."""
    for current, following in itertools.pairwise(points):
        if following["samples_per_second"] < gain * current["samples_per_second"]:
            return int(current["batch_size"])
    return None


