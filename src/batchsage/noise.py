"""The gradient noise scale: how many samples per step are still useful.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training") define the simple noise
scale ``B_simple = tr(Σ) / |G|²``: G is the true gradient and Σ the per-example gradient
covariance. Below B_simple a larger batch buys an almost proportionally better step; above it,
mostly wasted samples.

Three pieces, from the inside out:

- :func:`step_estimates`: the unbiased two-batch-size estimators of one training step. The
  micro-batches of the step (size b) and the full batch (size B) give
  ``|G|² ≈ (B·|G_B|² − b·|G_b|²)/(B − b)`` and ``tr Σ ≈ (|G_b|² − |G_B|²)/(1/b − 1/B)``, where
  ``|G_b|²`` is the mean over the micro-batches. No extra forward pass: the micro-batch gradients
  are read off the accumulated ``.grad`` between micro backward passes.
- :class:`NoiseStatistics`: per-step estimates are noisy (``|G|²`` is often negative on its
  own), so numerator and denominator are averaged separately (EMA, window, or all) and only then
  divided. The 95 % interval is a Bayesian bootstrap (Rubin 1981) over the per-step
  (tr Σ, |G|²) pairs, weighted as the average is.
- :class:`NoiseScaleMonitor`: a :class:`~batchsage.engine.TrainingHook` (or a drop-in for
  ``loss.backward()`` in a plain loop) that splits every k-th step into micro-batches, and picks k
  from the measured cost of an instrumented step against a plain one, so that the overhead stays
  under a budget.

:func:`exact_noise_scale` is the reference: per-example gradients with ``torch.func``
(``vmap(grad(...))``). :func:`measure_noise` runs a short training (or holds the weights at the
initial point) and returns a :class:`NoiseReport`, the document ``batchsage noise`` writes.

Two variants: ``plain`` (the gradient itself) and ``adam-preconditioned`` (each coordinate
divided by Adam's ``sqrt(v̂) + eps``, the geometry an Adam step actually sees).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map

from batchsage.data import batch_len
from batchsage.engine import Run, TrainingHook, TrainState, accumulate_gradients, validate_run_args
from batchsage.errors import BatchsageError, ConfigError
from batchsage.task import Task, load_task

Variant = Literal["plain", "adam-preconditioned"]
Method = Literal["estimator", "exact"]
VARIANTS: tuple[str, ...] = ("plain", "adam-preconditioned")
METHODS: tuple[str, ...] = ("estimator", "exact")
LossFn = Callable[[nn.Module, Any], torch.Tensor]

#: Bootstrap replicates for the confidence interval; 2,000 puts the 2.5 % percentile on 50 draws.
BOOTSTRAP_SAMPLES = 2_000
#: Memory bound for one chunk of per-example gradients in the exact reference.
EXACT_CHUNK_BYTES = 64 << 20


class NoiseError(BatchsageError):
    """The noise scale cannot be measured (unsupported model, optimiser or batch)."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseEstimate:
    """A noise-scale estimate from one or more measured steps.

    Attributes:
        b_simple: tr Σ / |G|² in samples; ``inf`` when the averaged |G|² is not positive (the
            gradient is buried in noise at this batch size).
        trace_sigma: tr Σ, the summed per-example gradient variance.
        grad_norm_sq: |G|², the squared norm of the true (expected) gradient.
        ci95: 95 % interval of b_simple (Bayesian bootstrap over measurements); None from a
            single measurement.
        measurements: measured steps behind the estimate.
        batch_size: full batch size B of the measured steps.
        micro_batch_size: micro-batch size b (harmonic mean when the split is uneven; 1 for the
            exact per-example reference).
        variant: "plain" or "adam-preconditioned".
    """

    b_simple: float
    trace_sigma: float
    grad_norm_sq: float
    ci95: tuple[float, float] | None
    measurements: int
    batch_size: int
    micro_batch_size: float
    variant: str = "plain"


@dataclass(frozen=True)
class Measurement:
    """Unbiased per-step estimates from one measured step (``step`` = optimiser steps before it)."""

    step: int
    grad_norm_sq: float
    trace_sigma: float
    batch_size: int
    micro_batch_size: float


@dataclass(frozen=True)
class TrajectoryPoint:
    """The noise scale over one report window (consecutive measurements, averaged as a block).

    ``step`` is the last step of the window; ``train_loss`` the mean training loss of every step
    in it (measured or not).
    """

    step: int
    train_loss: float
    b_simple: float
    trace_sigma: float
    grad_norm_sq: float
    measurements: int


def ratio_of_means(trace_sigma: Sequence[float], grad_norm_sq: Sequence[float],
                   weights: Sequence[float] | None = None) -> tuple[float, float, float]:
    """(b_simple, mean tr Σ, mean |G|²): numerator and denominator averaged first, then divided."""
    tr = np.asarray(trace_sigma, dtype=float)
    gsq = np.asarray(grad_norm_sq, dtype=float)
    w = np.ones_like(tr) if weights is None else np.asarray(weights, dtype=float)
    mean_tr = float(np.sum(w * tr) / np.sum(w))
    mean_gsq = float(np.sum(w * gsq) / np.sum(w))
    return _ratio(mean_tr, mean_gsq), mean_tr, mean_gsq


def _ratio(trace_sigma: float, grad_norm_sq: float) -> float:
    # A non-positive |G|² means the signal is below the noise: any batch is "small" -> inf.
    if grad_norm_sq <= 0.0:
        return math.inf
    return max(trace_sigma, 0.0) / grad_norm_sq


def bootstrap_ci(trace_sigma: Sequence[float], grad_norm_sq: Sequence[float],
                 weights: Sequence[float] | None = None, *, confidence: float = 0.95,
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the ratio of weighted means, by Bayesian bootstrap.

    Each replicate reweights the measurements by independent Exp(1) draws (Rubin 1981) on top of
    the averaging weights; the normalisation cancels in the ratio. Replicates whose |G|² is not
    positive count as an unbounded B_simple, so the upper end may be ``inf``. None for fewer than
    two measurements.
    """
    tr = np.asarray(trace_sigma, dtype=float)
    gsq = np.asarray(grad_norm_sq, dtype=float)
    if len(tr) < 2:
        return None
    w = np.ones_like(tr) if weights is None else np.asarray(weights, dtype=float)
    rng = np.random.default_rng(seed)
    ratios = np.empty(samples)
    rows = max(1, (1 << 20) // len(tr))  # bound the replicate matrix to ~8 MB
    for start in range(0, samples, rows):
        count = min(rows, samples - start)
        draws = rng.exponential(size=(count, len(tr))) * w
        numerator = draws @ tr
        denominator = draws @ gsq
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(denominator > 0, np.maximum(numerator, 0.0) / denominator, np.inf)
        ratios[start : start + count] = ratio
    ratios.sort()
    tail = (1.0 - confidence) / 2.0
    low = ratios[math.floor(tail * (samples - 1))]
    high = ratios[math.ceil((1.0 - tail) * (samples - 1))]
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# One step's estimate, and averaging over steps
# --------------------------------------------------------------------------------------------


def step_estimates(micro_norms_sq: Sequence[float], micro_sizes: Sequence[int],
                   full_norm_sq: float, dataset_size: int | None = None) -> tuple[float, float, float]:
    """Unbiased (|G|², tr Σ, b) from one step's micro-batch gradients.

    Args:
        micro_norms_sq: |g_i|² of each micro-batch's mean-loss gradient.
        micro_sizes: their sizes b_i (summing to the full batch B).
        full_norm_sq: |G_B|² of the full batch's mean-loss gradient.
        dataset_size: N of the training set, for the finite-population correction (see below).

    With E|g_i|² = |G|² + tr Σ/b_i, the mean over micro-batches has expectation |G|² + tr Σ/b for
    b = the harmonic mean of the b_i, so uneven splits stay unbiased.
    """
    if len(micro_norms_sq) < 2 or len(micro_norms_sq) != len(micro_sizes):
        raise ValueError("need at least two micro-batches, one size per norm")
    full = float(sum(micro_sizes))
    small = len(micro_sizes) / sum(1.0 / size for size in micro_sizes)
    small_norm_sq = float(np.mean(micro_norms_sq))
    grad_norm_sq = (full * full_norm_sq - small * small_norm_sq) / (full - small)
    trace_sigma = (small_norm_sq - full_norm_sq) / (1.0 / small - 1.0 / full)
    return finite_population(grad_norm_sq, trace_sigma, dataset_size), trace_sigma, small


def finite_population(grad_norm_sq: float, trace_sigma: float, dataset_size: int | None) -> float:
    """|G|² of the training set's own gradient, from an estimate that assumed infinite data.

    Batches drawn without replacement from N samples have Var = tr Σ·(1/b − 1/N), so both the
    two-batch and the per-example estimators return |G|² − tr Σ/N (tr Σ with the N−1
    denominator) for the training-set gradient G that the optimiser actually follows. Adding
    tr Σ/N back matters once B_simple approaches N (a small training set, late in training).
    Without N the estimate is that of the data distribution's |G|² instead.
    """
    if dataset_size is None:
        return grad_norm_sq
    return grad_norm_sq + trace_sigma / dataset_size


class NoiseStatistics:
    """Per-step measurements, averaged into the current estimate and a trajectory.

    Args:
        ema: decay per measurement of an exponential moving average (e.g. 0.95 ≈ the last 39
            measurements); None for a plain mean over ``window`` (or all) measurements.
        window: with ``ema=None``, average the last ``window`` measurements (None: all).
        report_every: measurements per trajectory point (non-overlapping windows).
        seed: seed of the bootstrap, so that the same measurements give the same interval.
    """

    def __init__(self, *, ema: float | None = None, window: int | None = None,
                 report_every: int = 8, seed: int = 0) -> None:
        if ema is not None and not 0.0 < ema < 1.0:
            raise ConfigError(f"ema must be between 0 and 1 (exclusive) or None, got {ema!r}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ConfigError(f"window must be a positive integer or None, got {window!r}")
        if not isinstance(report_every, int) or report_every < 1:
            raise ConfigError(f"report_every must be a positive integer, got {report_every!r}")
        self.ema = ema
        self.window = window
        self.report_every = report_every
        self.seed = seed
        self.measurements: list[Measurement] = []
        self.trajectory: list[TrajectoryPoint] = []
        self._pending: list[Measurement] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._last_step = -1

    def add_loss(self, step: int, loss: float) -> None:
        """Record a step's training loss (for the trajectory's train_loss)."""
        self._last_step = max(self._last_step, step)
        if math.isfinite(loss):
            self._loss_sum += loss
            self._loss_count += 1

    def add(self, measurement: Measurement) -> None:
        """Record one measured step; closes a trajectory point every ``report_every``."""
        self.measurements.append(measurement)
        self._pending.append(measurement)
        self._last_step = max(self._last_step, measurement.step)
        if len(self._pending) >= self.report_every:
            self.flush()

    def flush(self, minimum: int = 1) -> None:
        """Close the open trajectory window if it holds at least ``minimum`` measurements."""
        if len(self._pending) < max(1, minimum):
            return
        ratio, tr, gsq = ratio_of_means([m.trace_sigma for m in self._pending],
                                        [m.grad_norm_sq for m in self._pending])
        loss = self._loss_sum / self._loss_count if self._loss_count else math.nan
        self.trajectory.append(TrajectoryPoint(self._last_step, loss, ratio, tr, gsq, len(self._pending)))
        self._pending = []
        self._loss_sum, self._loss_count = 0.0, 0

    def _current(self) -> tuple[list[Measurement], np.ndarray]:
        if self.ema is None:
            chosen = self.measurements if self.window is None else self.measurements[-self.window :]
            return chosen, np.ones(len(chosen))
        # Weights below 1e-6 of the newest no longer matter; cut them so cost stays bounded.
        horizon = math.ceil(math.log(1e-6) / math.log(self.ema))
        chosen = self.measurements[-horizon:]
        ages = np.arange(len(chosen) - 1, -1, -1, dtype=float)
        return chosen, self.ema**ages

    def estimate(self) -> NoiseEstimate | None:
        """The current estimate (None before the first measurement)."""
        if not self.measurements:
            return None
        chosen, weights = self._current()
        tr = [m.trace_sigma for m in chosen]
        gsq = [m.grad_norm_sq for m in chosen]
        ratio, mean_tr, mean_gsq = ratio_of_means(tr, gsq, weights)
        ci = bootstrap_ci(tr, gsq, weights, seed=self.seed)
        latest = chosen[-1]
        return NoiseEstimate(ratio, mean_tr, mean_gsq, ci, len(chosen), latest.batch_size,
                             latest.micro_batch_size)


# --------------------------------------------------------------------------------------------
# When to measure: k from the measured cost of an instrumented step against a plain one
# --------------------------------------------------------------------------------------------


def trimmed_mean(values: Sequence[float], proportion: float = 0.1) -> float:
    """Mean without the ``proportion`` smallest and largest values (nan for no values).

    Step times on a shared machine are a mixture (running, or waiting for a core) with rare
    long stalls: the mean follows the mixture, which is what a run pays; the trim drops stalls.
    A median would jump between the mixture's modes.
    """
    ordered = sorted(values)
    cut = int(len(ordered) * proportion)
    kept = ordered[cut : len(ordered) - cut] or ordered
    return sum(kept) / len(kept) if kept else math.nan


class _Schedule:
    """Decides which steps are instrumented, and accounts for the time they cost.

    Fixed ``every``: steps 0, every, 2·every, ... Adaptive (``every=None``): measure step 0 (the
    initial point), calibrate with plain steps and one more instrumented step, then measure a step
    only if the extra time spent so far, plus what this step is expected to cost, stays within
    ``budget`` × the plain time of all steps so far. The monitor's own bookkeeping on plain steps
    (microseconds) is charged too.

    Time is counted in plain steps: an instrumented step that took t seconds when a plain step
    took p cost t/p − 1 extra, as measured at that time (so a quiet spell on a shared machine
    cannot re-price the past). Its expected cost is r − 1, r = instrumented ÷ plain step seconds;
    in the long run that is one measurement every ceil((r − 1)/budget) steps, and the calibration
    steps are paid back before the next one. p and r use trimmed means (:func:`trimmed_mean`) of
    the latest ``TIMING_WINDOW`` steps of each kind, so they follow drift; the first step of each
    kind is a warm-up, left out (and priced at r − 1).
    """

    TIMING_WINDOW = 127
    #: Recompute the plain step's trimmed mean after this many new plain steps (sorting costs µs).
    REFRESH_EVERY = 8

    def __init__(self, every: int | None, budget: float) -> None:
        self.every = every
        self.budget = budget
        self.steps = 0
        self.instrumented_steps = 0
        self._seconds: dict[bool, deque[float]] = {
            True: deque(maxlen=self.TIMING_WINDOW), False: deque(maxlen=self.TIMING_WINDOW)
        }
        self._warm: dict[bool, bool] = {True: False, False: False}
        self._typical: dict[bool, float] = {True: math.nan, False: math.nan}
        self._stale: dict[bool, int] = {True: 0, False: 0}
        self._spent = 0.0  # extra plain-step units of the priced instrumented steps
        self._unpriced = 0  # instrumented steps timed before a plain step was

    def decide(self) -> bool:
        if self.every is not None:
            return self.steps % self.every == 0
        if self.steps == 0:
            return True
        if len(self._seconds[False]) == 0:
            return False  # calibrate the plain step first
        if len(self._seconds[True]) == 0:
            return True
        return self.spent() + self.cost_ratio() - 1.0 <= self.budget * (self.steps + 1)

    def record_seconds(self, instrumented: bool, seconds: float) -> None:
        warm_up = not self._warm[instrumented]
        self._warm[instrumented] = True  # the first step of its kind pays allocations, caches
        if instrumented:
            plain = self._seconds_of(False)
            if warm_up or not math.isfinite(plain):
                self._unpriced += 1
            else:
                self._spent += seconds / plain - 1.0
        if not warm_up:
            self._seconds[instrumented].append(seconds)
            self._stale[instrumented] += 1

    def _seconds_of(self, instrumented: bool) -> float:
        """Typical seconds of a step of this kind, refreshed every few new steps."""
        window = self._seconds[instrumented]
        if not window:
            return math.nan
        stale = self._stale[instrumented]
        if stale and (math.isnan(self._typical[instrumented]) or instrumented or stale >= self.REFRESH_EVERY):
            self._typical[instrumented] = trimmed_mean(window)
            self._stale[instrumented] = 0
        return self._typical[instrumented]

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of the monitor's own work on a plain step as overhead."""
        plain = self._seconds_of(False)
        if math.isfinite(plain):
            self._spent += seconds / plain

    def cost_ratio(self) -> float:
        """Seconds of an instrumented step ÷ a plain one (nan until both are measured)."""
        return self._seconds_of(True) / self._seconds_of(False)

    def spent(self) -> float:
        """Extra time of the instrumented steps so far, in plain steps (nan before calibration)."""
        if self._unpriced == 0:
            return self._spent
        return self._spent + self._unpriced * (self.cost_ratio() - 1.0)

    def advance(self, instrumented: bool) -> None:
        self.steps += 1
        self.instrumented_steps += int(instrumented)

    def period(self) -> int:
        """Steps between measurements that keep the overhead under the budget (in the long run)."""
        if self.every is not None:
            return self.every
        ratio = self.cost_ratio()
        if not math.isfinite(ratio):
            return 1
        return max(1, math.ceil((ratio - 1.0) / self.budget))

    def overhead_fraction(self) -> float:
        """Extra seconds of the instrumented steps ÷ seconds of all steps run plain."""
        if self.instrumented_steps == 0:
            return 0.0
        if self.steps == 0:
            return math.nan
        return self.spent() / self.steps


# --------------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------------


def _flat_grad(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """A float32 copy of all gradients as one vector (a missing .grad counts as zeros)."""
    return torch.cat([
        p.grad.detach().reshape(-1).float() if p.grad is not None
        else torch.zeros(p.numel(), device=p.device)
        for p in params
    ])


def adam_preconditioner(optimizer: torch.optim.Optimizer,
                        params: Sequence[nn.Parameter]) -> torch.Tensor | None:
    """1/(sqrt(v̂)+eps) for every coordinate of ``params``, flattened; None before Adam's first step.

    Raises NoiseError when the optimiser keeps no second moment (``exp_avg_sq``).
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    parts = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            if not state and "betas" in groups.get(id(p), {}):
                return None  # Adam-like, but no step taken yet
            raise NoiseError(
                f"the adam-preconditioned variant needs an Adam-like optimiser (with exp_avg_sq "
                f"state); {type(optimizer).__name__} keeps none"
            )
        group = groups[id(p)]
        beta2 = group["betas"][1]
        step = float(state["step"])
        second = state.get("max_exp_avg_sq") if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = second.detach().float() / (1.0 - beta2**step)
        parts.append((1.0 / (v_hat.sqrt() + group["eps"])).reshape(-1))
    return torch.cat(parts)


class NoiseScaleMonitor(TrainingHook):
    """Measures the gradient noise scale while a model trains, within an overhead budget.

    With :func:`batchsage.engine.train`: ``train(task, B, lr, hooks=[monitor])``. In a plain
    PyTorch loop, replace ``loss_fn(model, batch).backward()`` with
    ``loss = monitor.backward(model, batch, loss_fn)`` (call ``optimizer.zero_grad()`` before as
    usual; ``monitor.end_step()`` after ``optimizer.step()`` makes the timing exact).

    A measured step is split into ``micro_batches`` micro-batches (same samples, same gradient,
    only more passes); the other steps run untouched. Gradients are read before the optimiser
    step, so before any clipping the optimiser would do.

    Args:
        micro_batches: micro-batches of a measured step (≥ 2; 8 or more keeps |G_b|² stable).
        every: measure every this many steps; None picks the period from measured step costs so
            that the overhead stays under ``overhead_budget``.
        overhead_budget: target extra time as a fraction of plain training time (0.03 = 3 %).
        ema: decay per measurement of the running average (None: ``window`` or all).
        window: with ``ema=None``, average over the last ``window`` measurements.
        report_every: measurements per trajectory point.
        variant: "plain", or "adam-preconditioned" (needs ``optimizer``, Adam-like).
        optimizer: the training's optimiser, for the adam-preconditioned variant.
        method: "estimator" (micro-batches), or "exact" (per-example gradients with torch.func;
            only with :meth:`backward`, which sees the batch).
        dataset_size: training samples N, for the finite-population correction of |G|² (see
            :func:`finite_population`); None estimates the data distribution's |G|².
        seed: bootstrap seed.
    """

    def __init__(self, micro_batches: int = 8, every: int | None = None, overhead_budget: float = 0.03,
                 ema: float | None = 0.95, *, window: int | None = None, report_every: int = 8,
                 variant: Variant = "plain", optimizer: torch.optim.Optimizer | None = None,
                 method: Method = "estimator", dataset_size: int | None = None, seed: int = 0) -> None:
        if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 2:
            raise ConfigError(f"micro_batches must be an integer ≥ 2, got {micro_batches!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(f"every must be a positive integer or None, got {every!r}")
        if not isinstance(overhead_budget, int | float) or not overhead_budget > 0.0:
            raise ConfigError(f"overhead_budget must be a positive fraction, got {overhead_budget!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if dataset_size is not None and (not isinstance(dataset_size, int) or dataset_size < 2):
            raise ConfigError(f"dataset_size must be an integer ≥ 2 or None, got {dataset_size!r}")
        self.dataset_size = dataset_size
        self.micro_batches_per_step = micro_batches
        self.variant: Variant = variant
        self.optimizer = optimizer
        self.method: Method = method
        self.enabled = True
        self.statistics = NoiseStatistics(ema=ema, window=window, report_every=report_every, seed=seed)
        self._schedule = _Schedule(every, float(overhead_budget))
        self._measuring = False
        self._was_measured = False
        self._started_at: float | None = None
        self._own_seconds = 0.0  # the monitor's bookkeeping within the current step
        self._step_finished = False
        self._reset_step_buffers()

    # ---- what callers read ------------------------------------------------------------------

    def estimate(self) -> NoiseEstimate | None:
        """The current estimate (averaged as configured), or None before the first measurement."""
        estimate = self.statistics.estimate()
        if estimate is None:
            return None
        return NoiseEstimate(**{**asdict(estimate), "variant": self.variant})

    @property
    def trajectory(self) -> list[TrajectoryPoint]:
        return self.statistics.trajectory

    @property
    def measurements(self) -> int:
        return len(self.statistics.measurements)

    @property
    def overhead_fraction(self) -> float:
        """Measured: extra seconds of instrumented steps ÷ seconds of the run without them."""
        return self._schedule.overhead_fraction()

    @property
    def cost_ratio(self) -> float:
        """Median seconds of an instrumented step ÷ a plain one."""
        return self._schedule.cost_ratio()

    @property
    def last_step_instrumented(self) -> bool:
        """Whether the latest step was split into micro-batches (or ran the exact reference)."""
        return self._was_measured

    @property
    def period(self) -> int:
        """Steps between measurements now (derived from the measured costs unless fixed)."""
        return self._schedule.period()

    def flush(self) -> None:
        """Close the trajectory's open window (at the end of a run) if it is at least half full."""
        self.statistics.flush(minimum=(self.statistics.report_every + 1) // 2)

    # ---- TrainingHook -----------------------------------------------------------------------

    def micro_batches(self, state: TrainState, accumulation_steps: int) -> int:
        self._begin_step()
        if self.method == "exact":
            return accumulation_steps  # the per-example pass replaces the step's backward
        return max(accumulation_steps, self.micro_batches_per_step) if self._measuring else accumulation_steps

    def replace_backward(self, model: nn.Module, batch: Any, loss_fn: LossFn) -> float | None:
        """The exact method's per-example pass does a measured step's forward and backward."""
        if self.method != "exact" or not self._measuring:
            return None
        return float(self._exact_backward(model, batch, loss_fn))

    def on_micro_backward(self, model: nn.Module, index: int, parts: int, batch_size: int) -> None:
        if not self._measuring:
            return
        if index == 0:
            self._start_measured_step(model)
            if not self._measuring:
                return
        flat = _flat_grad(self._params)
        difference = flat - self._previous if self._previous is not None else flat
        if self._preconditioner is not None:
            difference = difference * self._preconditioner
        self._micro_norms_sq.append(torch.dot(difference, difference))
        self._micro_sizes.append(batch_size)
        self._previous = flat

    def on_gradients(self, model: nn.Module, state: TrainState, loss: float) -> None:
        if self._step_finished:  # the exact method's pass already recorded this step
            return
        entered = time.perf_counter()
        self._finish_gradients(loss)
        self._own_seconds += time.perf_counter() - entered

    def on_step_end(self, state: TrainState) -> None:
        self.end_step()
        return None

    # ---- plain-loop API ---------------------------------------------------------------------

    def backward(self, model: nn.Module, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        """Backpropagate ``loss_fn(model, batch)`` (the batch's mean loss), measuring when due.

        The accumulated ``.grad`` is exactly what ``loss_fn(model, batch).backward()`` would give.
        Returns the mean loss, detached.
        """
        self._begin_step()
        if not self._measuring:
            loss = loss_fn(model, batch)
            loss.backward()
            value = float(loss.detach())
            entered = time.perf_counter()
            self._finish_gradients(value)
            self._own_seconds += time.perf_counter() - entered
            return loss.detach()
        if self.method == "exact":
            return self._exact_backward(model, batch, loss_fn)
        params = [p for p in model.parameters() if p.requires_grad]
        self._baseline = _flat_grad(params) if any(p.grad is not None for p in params) else None
        self._previous = self._baseline
        parts = min(self.micro_batches_per_step, _batch_len(batch))

        def callback(index: int, parts: int, size: int) -> None:
            self.on_micro_backward(model, index, parts, size)

        value = accumulate_gradients(model, batch, loss_fn, parts, callback)
        self._finish_gradients(value)
        return torch.tensor(value)

    def end_step(self) -> None:
        """Close the step's timing (optional in a plain loop: the next backward() does it)."""
        if self._started_at is None:
            return
        entered = time.perf_counter()
        seconds = entered - self._started_at
        self._started_at = None
        if self.enabled:
            self._schedule.record_seconds(self._was_measured, seconds)
            if not self._was_measured:
                # The monitor's own bookkeeping on a plain step is overhead too.
                self._schedule.charge(self._own_seconds + time.perf_counter() - entered)

    # ---- internals --------------------------------------------------------------------------

    def _reset_step_buffers(self) -> None:
        self._params: list[nn.Parameter] = []
        self._previous: torch.Tensor | None = None
        self._baseline: torch.Tensor | None = None
        self._preconditioner: torch.Tensor | None = None
        self._micro_norms_sq: list[torch.Tensor] = []
        self._micro_sizes: list[int] = []

    def _begin_step(self) -> None:
        self.end_step()  # a plain loop that never calls end_step: time start to start
        self._step_finished = False
        entered = time.perf_counter()
        if self._was_measured:
            self._reset_step_buffers()
        self._measuring = self.enabled and self._schedule.decide()
        self._was_measured = self._measuring
        self._started_at = time.perf_counter()
        self._own_seconds = self._started_at - entered

    def _start_measured_step(self, model: nn.Module) -> None:
        self._params = [p for p in model.parameters() if p.requires_grad]
        if self.variant == "adam-preconditioned":
            if self.optimizer is None:
                raise NoiseError("the adam-preconditioned variant needs the optimiser: "
                                 "NoiseScaleMonitor(..., optimizer=opt)")
            self._preconditioner = adam_preconditioner(self.optimizer, self._params)
            if self._preconditioner is None:
                self._measuring = False  # Adam has no second moment before its first step

    def _finish_gradients(self, loss: float) -> None:
        self._step_finished = True
        step = self._schedule.steps
        if self.enabled:
            self.statistics.add_loss(step, loss)
            if self._measuring and math.isfinite(loss) and len(self._micro_sizes) >= 2:
                self._record_estimator(step)
            self._schedule.advance(self._was_measured)
        self._measuring = False

    def _record_estimator(self, step: int) -> None:
        assert self._previous is not None
        full = self._previous if self._baseline is None else self._previous - self._baseline
        if self._preconditioner is not None:
            full = full * self._preconditioner
        norms = torch.stack([*self._micro_norms_sq, torch.dot(full, full)]).double().cpu().tolist()
        if not all(math.isfinite(value) for value in norms):
            return
        total = sum(self._micro_sizes)
        # A micro gradient is its share of the accumulated .grad, rescaled: g_i = Δ_i · B / b_i.
        micro = [n * (total / size) ** 2 for n, size in zip(norms[:-1], self._micro_sizes, strict=True)]
        gsq, trace, small = step_estimates(micro, self._micro_sizes, norms[-1], self.dataset_size)
        self.statistics.add(Measurement(step, gsq, trace, total, small))
        self._reset_step_buffers()

    def _exact_backward(self, model: nn.Module, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        preconditioner = None
        if self.variant == "adam-preconditioned":
            self._start_measured_step(model)
            preconditioner = self._preconditioner
        estimate = None
        if self._measuring:
            estimate = exact_noise_scale(loss_fn, model, batch, preconditioner=preconditioner,
                                         dataset_size=self.dataset_size)
        else:
            self._was_measured = False  # nothing computed: a plain step in cost too
        loss = loss_fn(model, batch)
        loss.backward()
        value = float(loss.detach())
        step = self._schedule.steps
        if estimate is not None and math.isfinite(value):
            self.statistics.add(Measurement(step, estimate.grad_norm_sq, estimate.trace_sigma,
                                            estimate.batch_size, 1.0))
        self._measuring = False
        self._finish_gradients(value)
        return loss.detach()


def _batch_len(batch: Any) -> int:
    try:
        return batch_len(batch)
    except TypeError as exc:
        raise NoiseError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# Exact reference: per-example gradients with torch.func
# --------------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """Wraps (model, loss_fn) so that functional_call swaps the model's parameters inside loss_fn."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _reject_batch_norm(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise NoiseError(
                f"exact per-example gradients are undefined for a model with BatchNorm in training "
                f"mode ({name or 'model'}: {type(module).__name__} mixes the examples of a batch); "
                "use method='estimator'"
            )


def exact_noise_scale(task: Task | LossFn, model: nn.Module, batch: Any, *,
                      chunk_size: int | None = None, preconditioner: torch.Tensor | None = None,
                      dataset_size: int | None = None) -> NoiseEstimate:
    """tr Σ and |G|² of one batch from its per-example gradients (torch.func vmap + grad).

    With n examples, per-example gradients g_i and their mean ḡ:
    ``tr Σ = Σ|g_i − ḡ|²/(n − 1)`` (unbiased) and ``|G|² = |ḡ|² − tr Σ/n`` (unbiased).

    Args:
        task: the task (its ``loss_fn`` is used) or a ``loss_fn(model, batch)`` itself.
        model: evaluated at its current parameters and mode (dropout draws differ per example).
        batch: a collated batch; each example is presented to ``loss_fn`` as a batch of one.
        chunk_size: examples per vmap call (default: what fits in 64 MiB of gradients).
        preconditioner: optional flat per-coordinate scale (adam-preconditioned variant).
        dataset_size: training samples N, for the finite-population correction of |G|².

    Models that ``vmap`` cannot batch (e.g. ``nn.GRU``) fall back to one backward pass per
    example: same numbers, slower. Raises NoiseError for BatchNorm models in training mode
    (per-example gradients are undefined there) and when neither way works.
    """
    loss_fn = task.loss_fn if isinstance(task, Task) else task
    _reject_batch_norm(model)
    n = _batch_len(batch)
    if n < 2:
        raise NoiseError(f"the exact noise scale needs at least 2 examples, got {n}")
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    total_params = sum(p.numel() for _, p in trainable)
    chunk = chunk_size or max(1, min(n, EXACT_CHUNK_BYTES // (4 * max(total_params, 1))))
    per_example = _per_example_function(model, loss_fn)
    scales = _split_like(preconditioner, trainable)
    # Per parameter, in float32 within a chunk; the sums across chunks are kept in float64.
    grad_sums = {name: torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for name, p in trainable}
    sq_sum = 0.0
    for start in range(0, n, chunk):
        grads = per_example(_slice_batch(batch, start, start + chunk))
        for name, _ in trainable:
            rows = grads[name].reshape(grads[name].shape[0], -1).float()
            if scales is not None:
                rows = rows * scales[name]
            grad_sums[name] += rows.sum(dim=0).double()  # float64 arithmetic is ~10x slower on CPU
            sq_sum += float(torch.linalg.vector_norm(rows)) ** 2
        del grads
    grad_sum = torch.cat(list(grad_sums.values()))
    mean_sq = float(torch.dot(grad_sum, grad_sum)) / n**2
    trace_sigma = (float(sq_sum) - n * mean_sq) / (n - 1)
    grad_norm_sq = finite_population(mean_sq - trace_sigma / n, trace_sigma, dataset_size)
    variant = "plain" if preconditioner is None else "adam-preconditioned"
    return NoiseEstimate(_ratio(trace_sigma, grad_norm_sq), trace_sigma, grad_norm_sq, None, 1, n, 1.0,
                         variant)


def _split_like(flat: torch.Tensor | None,
                named: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor] | None:
    """A flat per-coordinate vector (parameters in model order) cut into one piece per parameter."""
    if flat is None:
        return None
    pieces = torch.split(flat, [p.numel() for _, p in named])
    return {name: piece for (name, _), piece in zip(named, pieces, strict=True)}


def _slice_batch(batch: Any, start: int, stop: int) -> Any:
    return tree_map(lambda t: t[start:stop] if isinstance(t, torch.Tensor) else t, batch)


def _per_example_function(model: nn.Module, loss_fn: LossFn) -> Callable[[Any], dict[str, torch.Tensor]]:
    """batch chunk -> {parameter name: [examples, *shape] per-example gradients}."""
    from torch.func import functional_call, grad, vmap

    wrapper = _LossModule(model, loss_fn)
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {f"model.{name}": p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = {f"model.{name}": b for name, b in model.named_buffers()}

    def example_loss(trainable: dict[str, torch.Tensor], example: Any) -> torch.Tensor:
        single = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, example)
        state = {f"model.{name}": value for name, value in trainable.items()} | frozen | buffers
        return functional_call(wrapper, state, (single,))

    per_example = vmap(grad(example_loss), in_dims=(None, 0), randomness="different")
    vmap_failed: list[BaseException] = []

    def run(chunk: Any) -> dict[str, torch.Tensor]:
        if not vmap_failed:
            try:
                return per_example(params, chunk)
            except Exception as exc:  # some layers (e.g. nn.GRU) have no batching rule
                vmap_failed.append(exc)
        return _loop_over_examples(model, loss_fn, chunk, vmap_failed[0])

    return run


def _loop_over_examples(model: nn.Module, loss_fn: LossFn, chunk: Any,
                        reason: BaseException) -> dict[str, torch.Tensor]:
    """Per-example gradients one backward pass at a time: the fallback where vmap cannot go."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    rows: dict[str, list[torch.Tensor]] = {name: [] for name, _ in named}
    for index in range(_batch_len(chunk)):
        single = _slice_batch(chunk, index, index + 1)
        try:
            loss = loss_fn(model, single)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        except Exception as exc:
            raise NoiseError(
                "per-example gradients failed for this model (vmap: "
                f"{type(reason).__name__}: {_first_line(reason)}; one example at a time: "
                f"{type(exc).__name__}: {_first_line(exc)}); use method='estimator'"
            ) from exc
        for (name, p), g in zip(named, grads, strict=True):
            rows[name].append(torch.zeros_like(p) if g is None else g.detach())
    return {name: torch.stack(values) for name, values in rows.items()}


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------------------------
# measure_noise: the `batchsage noise` command's engine
# --------------------------------------------------------------------------------------------


@dataclass
class NoiseReport:
    """What ``batchsage noise`` measured. ``b_simple`` etc. are the estimate at the end of the run."""

    task: str
    method: str
    variant: str
    batch_size: int
    micro_batch_size: float
    steps: int
    lr: float
    at_initial_point: bool
    b_simple: float
    trace_sigma: float
    grad_norm_sq: float
    ci95: tuple[float, float] | None
    measurements: int
    overhead_fraction: float
    measure_every: int
    seconds: float
    interrupted: bool = False
    trajectory: list[TrajectoryPoint] = field(default_factory=list)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 is not None else [math.nan, math.nan]
        data["trajectory"] = [asdict(point) for point in self.trajectory]
        return data


def measure_noise(task: Task | str, batch_size: int | None = None, steps: int = 200,
                  method: Method = "estimator", *, micro_batches: int = 8, every: int | None = 2,
                  overhead_budget: float = 0.03, variant: Variant = "plain", lr: float | None = None,
                  at_initial_point: bool = False, ema: float | None = 0.95,
                  report_every: int | None = None, device: str | None = "auto", seed: int | None = None,
                  progress: bool = True) -> NoiseReport:
    """Train ``steps`` steps at ``batch_size`` from the task's initial point, measuring the noise scale.

    Args:
        batch_size: B (default: the task's base batch size).
        steps: optimiser steps (with ``at_initial_point``: batches measured at the initial weights).
        method: "estimator" (micro-batches of each measured step) or "exact" (per-example).
        micro_batches: micro-batches of a measured step (estimator).
        every: measure every this many steps; the default 2 leaves plain steps in between to time
            the overhead; None picks the period from ``overhead_budget``.
        variant: "plain" or "adam-preconditioned" (Adam-like optimisers only).
        lr: learning rate (default: the task's base_lr).
        at_initial_point: never step the optimiser: every batch is measured at the initial
            weights (all measurements averaged equally).
        ema: running average of a training run (ignored with ``at_initial_point``).
        report_every: measurements per trajectory point (default: about 16 points).

    Ctrl-C stops early and returns what was measured, with ``interrupted=True``.
    """
    task = load_task(task) if isinstance(task, str) else task
    batch_size = task.base_batch_size if batch_size is None else batch_size
    lr = task.base_lr if lr is None else lr
    _validate_measure_args(task, batch_size, lr, steps, method, micro_batches, variant, at_initial_point)
    run_seed = task.seed if seed is None else seed
    run = Run(task, batch_size, lr, seed=run_seed, device=device)
    run.hold_weights = at_initial_point
    monitor = NoiseScaleMonitor(
        micro_batches, every, overhead_budget, None if at_initial_point else ema,
        report_every=report_every or _default_report_every(steps, every),
        variant=variant, optimizer=run.optimizer, method=method,
        dataset_size=task.num_train_samples, seed=run_seed,
    )
    run.hooks.append(monitor)
    start = time.perf_counter()
    done, interrupted = _run_steps(run, steps, progress)
    seconds = time.perf_counter() - start
    monitor.flush()
    estimate = monitor.estimate()
    if estimate is None:
        raise NoiseError("no step was measured: run more steps")
    return NoiseReport(
        task=task.name, device=str(run.device), method=method, variant=variant, batch_size=batch_size,
        micro_batch_size=estimate.micro_batch_size, steps=done, lr=lr,
        at_initial_point=at_initial_point, b_simple=estimate.b_simple,
        trace_sigma=estimate.trace_sigma, grad_norm_sq=estimate.grad_norm_sq, ci95=estimate.ci95,
        measurements=monitor.measurements,
        overhead_fraction=monitor.overhead_fraction, measure_every=monitor.period, seconds=seconds,
        interrupted=interrupted, trajectory=list(monitor.trajectory),
    )


def _default_report_every(steps: int, every: int | None) -> int:
    """About 16 trajectory points; the adaptive schedule's count is unknown up front: 4 each."""
    if every is None:
        return 4
    return max(1, min(steps // every // 16, 64))


def _validate_measure_args(task: Task, batch_size: int, lr: float, steps: int, method: str,
                           micro_batches: int, variant: str, at_initial_point: bool) -> None:
    validate_run_args(task, batch_size, lr, 1, 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "estimator" and batch_size < micro_batches:
        raise ConfigError(
            f"batch size {batch_size} is smaller than micro_batches {micro_batches}: "
            "the estimator needs at least one sample per micro-batch"
        )
    if batch_size < 2:
        raise ConfigError("the noise scale needs a batch of at least 2 samples")
    if variant == "adam-preconditioned" and at_initial_point:
        raise ConfigError("the adam-preconditioned variant needs Adam's second moment, which exists only "
                          "after optimiser steps: drop at_initial_point")


def _run_steps(run: Run, steps: int, progress: bool) -> tuple[int, bool]:
    """Step the run ``steps`` times (or until it diverges); returns (steps done, interrupted)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not progress) as bar:
        bar_id = bar.add_task(f"noise scale of {run.task.name} at B={run.batch_size}", total=steps)
        try:
            with run.activated():
                for _ in range(steps):
                    run.step()
                    bar.update(bar_id, advance=1)
                    if run.diverged:
                        break
        except KeyboardInterrupt:
            return run.state.step, True
    return run.state.step, False
