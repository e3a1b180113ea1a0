"""The planner: pure arithmetic on measurements, no torch.

Formulas (DESIGN.md "The model", McCandlish et al. 2018):

- steps to target        S(B) = S_min · (1 + B_noise / B)
- samples to target      E(B) = E_min · (1 + B / B_noise),  E_min = S_min · B_noise
- time to target         T(B) = S(B) · t(B)
- SGD learning rate      ε(B) = ε_max / (1 + B_noise / B), anchored at (base_batch_size, base_lr)
- Adam-like learning rate: the square root of the SGD ratio (Malladi et al. 2022)
- lr shift along a run    ε × (1 + B_noise_then/B) / (1 + B_noise_now/B), for every optimiser

Every function here takes numbers and returns numbers, so it is tested without training anything.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

LrScaling = Literal["linear", "sqrt"]


def steps_to_target(batch_size: float, s_min: float, b_noise: float) -> float:
    """S(B) = S_min · (1 + B_noise / B)."""
    return s_min * (1.0 + b_noise / batch_size)


def samples_to_target(batch_size: float, s_min: float, b_noise: float) -> float:
    """E(B) = B · S(B) = E_min · (1 + B / B_noise)."""
    return batch_size * steps_to_target(batch_size, s_min, b_noise)


def lr_ratio(batch_size: float, base_batch_size: float, b_noise: float | None) -> float:
    """ε(B)/ε(B0) for SGD: (1 + B_noise/B0) / (1 + B_noise/B); plain B/B0 when B_noise is unknown.

    Below B_noise this is close to linear scaling; above it the learning rate saturates at ε_max.
    """
    if b_noise is None or not math.isfinite(b_noise):
        return batch_size / base_batch_size
    b_noise = max(b_noise, 0.0)
    return (1.0 + b_noise / base_batch_size) / (1.0 + b_noise / batch_size)


def scaled_lr(
    batch_size: float,
    base_batch_size: float,
    base_lr: float,
    scaling: LrScaling,
    b_noise: float | None = None,
) -> float:
    """The learning rate for ``batch_size``, anchored at the task's (base_batch_size, base_lr).

    ``linear`` (SGD-like): base_lr · (1 + B_noise/B0)/(1 + B_noise/B).
    ``sqrt`` (Adam-like): base_lr · sqrt of that ratio.
    """
    return base_lr * _scaled(lr_ratio(batch_size, base_batch_size, b_noise), scaling)


def lr_noise_shift(batch_size: float, b_noise_from: float, b_noise_to: float) -> float:
    """How the best lr at ``batch_size`` moves when the noise scale goes from one value to another.

    ε_opt(B) = ε_max / (1 + B_noise/B) (McCandlish et al. 2018), so an lr found best where the
    noise scale was ``b_noise_from`` becomes best × (1 + from/B) / (1 + to/B) where it is
    ``b_noise_to``: lower as the noise grows during training.

    The same ratio for Adam-like optimisers, not its square root as across batch sizes: the
    square-root rule comes from Adam's second-moment average v ≈ G² + σ²/B, which differs
    between runs at different B. Within one run at one B, v is averaged over ≈ 1/(1 − β2) steps
    (1000 with PyTorch's default β2 = 0.999, longer than a pilot-sized run), so along the run
    Adam is SGD with a nearly fixed preconditioner, to which McCandlish's ratio applies as is.
    (Where v follows the gradient closely, β2 ≪ 0.999 on a long run, the best lr falls further
    still, with |G|; not modelled.)
    """
    return (1.0 + max(b_noise_from, 0.0) / batch_size) / (1.0 + max(b_noise_to, 0.0) / batch_size)


def _scaled(ratio: float, scaling: LrScaling) -> float:
    """An SGD-rule lr ratio as ``scaling`` applies it: as is (linear) or its square root (Adam-like)."""
    if scaling not in ("linear", "sqrt"):
        raise ValueError(f"scaling must be 'linear' or 'sqrt', got {scaling!r}")
    return ratio if scaling == "linear" else math.sqrt(ratio)


@dataclass(frozen=True)
class LrCalibration:
    """A measured correction to the lr rule: at ``batch_size`` the best lr was ``factor`` × the rule's.

    The user's base lr anchors the rule at the base batch, but how far the lr may grow with the
    batch is a property of the task (curvature, momentum, optimiser), so a short lr race at a
    larger batch measures it. The factor is 1 at the base batch, reaches ``factor`` at the
    measured batch (geometric interpolation in B) and stays there beyond it.
    """

    base_batch_size: int
    batch_size: int
    factor: float
    #: The race saw training diverge (NaN/inf) at this lr: a curvature limit, whatever the batch.
    diverged_lr: float | None = None

    def apply(self, batch_size: float, rule_lr: float, step: float = 2.0) -> float:
        """The rule's lr corrected by the factor, kept a ``step`` below an lr that diverged."""
        lr = rule_lr * self(batch_size)
        return lr if self.diverged_lr is None else min(lr, self.diverged_lr / step)

    def __call__(self, batch_size: float) -> float:
        if batch_size <= self.base_batch_size or self.batch_size <= self.base_batch_size:
            return 1.0
        if batch_size >= self.batch_size:
            return self.factor
        share = math.log(batch_size / self.base_batch_size) / math.log(self.batch_size / self.base_batch_size)
        return float(self.factor**share)


def warmup_steps_for(lr: float, base_lr: float, predicted_steps: float, fraction: float = 0.05) -> int:
    """Linear warmup (Goyal et al. 2017) when the lr is scaled above the user's base lr.

    The warmup covers ``fraction`` of the predicted steps, scaled by how far the lr grew
    (log2 of the ratio, capped at 1), so a mild increase gets a short ramp and none gets none.
    """
    ratio = lr / base_lr
    if ratio <= 1.0 + 1e-9 or not math.isfinite(predicted_steps):
        return 0
    strength = min(1.0, math.log2(ratio) / 4.0)
    return max(1, math.ceil(fraction * strength * predicted_steps))


@dataclass(frozen=True)
class Candidate:
    """One batch size's prediction."""

    batch_size: int
    micro_batch_size: int
    accumulation_steps: int
    lr: float
    warmup_steps: int
    predicted_steps: float
    step_seconds: float
    predicted_seconds: float
    fits_memory: bool


def split_for_memory(batch_size: int, max_batch_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation_steps) with micro ≤ ceiling and micro × accumulation = B."""
    if max_batch_size <= 0:
        raise ValueError("max_batch_size must be positive")
    if batch_size <= max_batch_size:
        return batch_size, 1
    accumulation = math.ceil(batch_size / max_batch_size)
    while batch_size % accumulation:
        accumulation += 1
    return batch_size // accumulation, accumulation


def plan_candidates(
    batch_sizes: Sequence[int],
    *,
    s_min: float,
    b_noise: float,
    step_seconds: Callable[[int], float],
    max_batch_size: int,
    base_batch_size: int,
    base_lr: float,
    scaling: LrScaling,
    lr_b_noise: float | None = None,
    lr_calibration: LrCalibration | None = None,
    sample_budget: int | None = None,
) -> list[Candidate]:
    """Predict steps, lr, step time and time-to-target for each batch size.

    ``step_seconds(micro_batch_size)`` is the measured time of one forward/backward/step at that
    micro-batch; a batch beyond the memory ceiling is run as micro-batches, so its step costs
    ``accumulation × t(micro)``. ``lr_b_noise`` is the noise scale the lr rule uses (default
    ``b_noise``); ``lr_calibration`` multiplies the rule's lr by what an lr race measured.
    """
    lr_noise = b_noise if lr_b_noise is None else lr_b_noise
    candidates = []
    for batch_size in sorted(set(batch_sizes)):
        micro, accumulation = split_for_memory(batch_size, max_batch_size)
        seconds_per_step = accumulation * step_seconds(micro)
        steps = steps_to_target(batch_size, s_min, b_noise)
        lr = scaled_lr(batch_size, base_batch_size, base_lr, scaling, lr_noise)
        if lr_calibration is not None:
            lr = lr_calibration.apply(batch_size, lr)
        candidates.append(
            Candidate(
                batch_size=batch_size,
                micro_batch_size=micro,
                accumulation_steps=accumulation,
                lr=lr,
                warmup_steps=warmup_steps_for(
                    lr, base_lr, min(steps, sample_budget / batch_size) if sample_budget else steps),
                predicted_steps=steps,
                step_seconds=seconds_per_step,
                predicted_seconds=steps * seconds_per_step,
                fits_memory=accumulation == 1,
            )
        )
    return candidates


def choose(candidates: Sequence[Candidate], tolerance: float = 0.03) -> Candidate:
    """The smallest batch whose predicted time is within ``tolerance`` of the minimum.

    Smaller batches generalise at least as well and leave memory free, so among near-ties the
    smallest wins (DESIGN.md: "prefer the smallest B within a few % of the minimum").
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    best = min(candidate.predicted_seconds for candidate in candidates)
    eligible = [c for c in candidates if c.predicted_seconds <= best * (1.0 + tolerance)]
    return min(eligible, key=lambda candidate: candidate.batch_size)


def power_of_two_grid(low: int, high: int) -> list[int]:
    """Powers of two from ``low`` up to ``high`` inclusive, plus ``high`` itself if it is not one."""
    if low <= 0 or high < low:
        raise ValueError(f"need 0 < low <= high, got {low}, {high}")
    grid = []
    value = 1 << max(0, math.ceil(math.log2(low)))
    while value <= high:
        grid.append(value)
        value *= 2
    if not grid or grid[-1] != high:
        grid.append(high)
    return grid


def non_decreasing(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool-adjacent-violators) of ``values``, in order.

    A training step never gets cheaper when the batch grows, so a measured t(B) that dips is
    noise (another process took the cores for a moment); pooling the violators removes the dip
    without discarding the measurements around it.
    """
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([float(value), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted: list[float] = []
    for total, count in blocks:
        fitted.extend([total / count] * int(count))
    return fitted


def step_time_model(batch_sizes: Sequence[int], step_seconds: Sequence[float]) -> Callable[[float], float]:
    """t(B) from measured medians: made non-decreasing, interpolated log-log between points.

    The one step-time model of batchsage (the recommender, ``fit``, the adaptive controller and
    ``ThroughputCurve.step_seconds`` all use it). Beyond the largest measured batch, step time
    grows linearly in B with the last two points' slope (the hardware is full there: each extra
    sample costs about the same); a flat tail (slope 0) becomes constant throughput. Below the
    smallest, the first two points' log-log slope, clamped to [0, 1] (a smaller batch is never
    slower, nor faster than proportionally). One point: proportional above, flat below.
    """
    if len(batch_sizes) != len(step_seconds) or not batch_sizes:
        raise ValueError("need one step time per batch size, and at least one")
    order = sorted(range(len(batch_sizes)), key=lambda i: batch_sizes[i])
    sizes = [float(batch_sizes[i]) for i in order]
    times = non_decreasing([float(step_seconds[i]) for i in order])

    def model(batch_size: float) -> float:
        b = float(batch_size)
        if b >= sizes[-1]:
            slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2]) if len(sizes) > 1 else 0.0
            if slope <= 0:
                slope = times[-1] / sizes[-1]
            return times[-1] + slope * (b - sizes[-1])
        if b <= sizes[0]:
            if len(sizes) == 1:
                return times[0]
            exponent = math.log(times[1] / times[0]) / math.log(sizes[1] / sizes[0])
            return times[0] * (b / sizes[0]) ** min(max(exponent, 0.0), 1.0)
        for (b0, t0), (b1, t1) in itertools.pairwise(zip(sizes, times, strict=True)):
            if b0 <= b <= b1:
                weight = (math.log(b) - math.log(b0)) / (math.log(b1) - math.log(b0))
                return math.exp((1 - weight) * math.log(t0) + weight * math.log(t1))
        return times[-1]

    return model
