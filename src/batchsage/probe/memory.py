"""The memory ceiling: how much memory a training step needs as a function of the batch size.

Peak memory of one training step grows about linearly in the batch size B (DESIGN.md):
``mem(B) = fixed + per_sample·B``. :func:`probe_memory` measures a few real steps, fits that line
near the budget and returns the largest B whose measured step fits, found like this:

1. probe a small batch (``FIRST_BATCH_SIZE``), then one ``GROWTH`` times larger;
2. the secant from the largest measured point back to one far enough below it (beyond the
   measurement noise) predicts where the line crosses the budget; with three such points, a
   curve ``a + c·B^p`` through them does (memory per sample often falls as B grows). A prediction
   more than ``MAX_EXTRAPOLATION`` times the largest measured batch is first checked by a probe at
   the geometric midpoint;
3. one real step at ``AIM`` of the prediction *verifies* it. If it fits and the curve through it
   predicts no more than ``tolerance`` (5 %) beyond it, that is the ceiling; otherwise the
   prediction is corrected with the new point (regula falsi once the budget is bracketed by a
   fitting and an over-budget step) and verified again, up to ``max_measurements`` in all.

The batch size never exceeds the training set. When the line says the whole data set fits, a
step over all of it could cost more than everything else, so it is skipped when even an upper
bound of the line (slope raised by the measurement noise) stays within ``cap_margin`` (80 %) of
the budget; the result says ``verified: False`` then. Every other batch size reported as fitting
was measured by real steps. A step that runs out of memory is a data point, never a crash.

How a step is measured depends on the device (one small class each, same interface):

* CPU — :class:`ForkedPeakRSSMeter`: the budget is the **peak resident memory (RSS) of a training
  process** — Python, torch, the data set, model, optimiser state, gradients and activations.
  Each step runs in a child forked from this process (after torch is imported, so no child pays
  the import) whose data segment is limited by ``setrlimit(RLIMIT_DATA)`` to about twice the
  budget's headroom: a step that would need far more fails inside the child and the parent
  survives. The
  child reads its own high-water mark ``VmHWM`` from ``/proc/self/status`` (reset at fork to the
  child's resident size, so it counts what the step touches on top of the inherited pages).
  The child runs with one intra-op thread: GNU OpenMP's thread pool does not survive ``fork``.
* CUDA/MPS — :class:`AllocatorPeakMeter`: in this process, the allocator's peak statistic
  (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, via the Device layer);
  out-of-memory errors are caught and the cache is emptied. Written against PyTorch's documented
  API but not run on a GPU by this project yet.

The caller's model, optimiser and random-number state are never touched: every step builds a
fresh model from ``task.make_model()`` (in a child on CPU; a copy under a forked RNG elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import psutil
import torch
from torch import nn

from batchsage.device import Device, is_out_of_memory, resolve_device
from batchsage.engine import Run
from batchsage.errors import BatchsageError, ConfigError
from batchsage.task import Task
from batchsage.units import format_bytes

#: The first probe's batch size: small enough to be cheap, large enough that per-batch effects of
#: B=1 (kernels chosen for tiny shapes, workspace buffers) do not dominate the slope.
FIRST_BATCH_SIZE = 8
#: The second probe is this many times the first: far enough apart for a measurable slope.
GROWTH = 16
#: Exponents allowed for the curved extrapolation ``mem(B) = a + c·B^p`` (see _power_law_crossing).
POWER_MIN = 0.5
POWER_MAX = 1.5
#: A prediction more than this many times the largest measured batch is first checked by a probe
#: at the geometric midpoint.
MAX_EXTRAPOLATION = 8
#: Predictions aim this fraction of the predicted crossing, so the verifying step usually fits.
AIM = 0.98
#: The default budget keeps this fraction of the available memory free (allocator fragmentation,
#: other processes, measurement error).
DEFAULT_MARGIN_FRACTION = 0.10
#: A CPU child's data segment may grow to this many times its headroom (budget − its starting
#: size), and at least ``GUARD_MIN_BYTES``, before allocations fail. The limit is on virtual data
#: size, which runs ahead of resident memory, so it only stops steps far over budget; a step
#: somewhat over budget completes and gives a measured point for the fit.
GUARD_FACTOR = 2.0
GUARD_MIN_BYTES = 256 * 1024**2
#: A CPU child never grows beyond this fraction of the memory the machine has available now.
MACHINE_FRACTION = 0.8
#: Run-to-run differences of a measured peak: up to about the largest allocation glibc serves
#: from its heap (its mmap threshold rises to at most 32 MiB on 64-bit), whose freed space stays
#: resident. Slopes are taken between points further apart in memory than this.
SLOPE_NOISE_BYTES = 32 * 1024**2
#: Training steps per measured batch size: at least the first, more while the peak still grows.
MIN_STEPS_PER_PROBE = 3
MAX_STEPS_PER_PROBE = 4
PLATEAU_FRACTION = 0.01
#: By default the ceiling keeps this fraction of the budget free: run-to-run differences of a peak
#: (a few allocator pages, measured ±15 MiB here), another library's buffers. Settable
#: (``margin=``, ``--memory-margin``), as Lightning's batch-size finder's ``margin`` is.
DEFAULT_SAFETY_MARGIN = 0.05
#: Fresh-process checks (and corrections) of a ceiling that memory sets.
MAX_FRESH_CHECKS = 3
#: A measuring child that has not answered after this long is killed and the probe fails.
CHILD_TIMEOUT_SECONDS = 900.0

Outcome = Literal["fits", "over budget", "out of memory", "killed", "error"]
Role = Literal["probe", "verify"]


class MemoryBudgetError(ConfigError):
    """The memory budget is too small for even one training sample."""


class ProbeError(BatchsageError):
    """A probe step failed for a reason other than memory (the task's code raised)."""


@dataclass
class MemoryProbe:
    """One real training step at ``batch_size`` and its peak memory.

    Attributes:
        batch_size: samples in the measured step.
        peak_bytes: peak memory of the step (see the module docstring for what is counted);
            None when the step ran out of memory before it finished.
        fits: the step finished and its peak is within the budget.
        outcome: "fits", "over budget" (finished above the budget), "out of memory", "killed",
            or "error" (another exception, after smaller batches ran: counted as not fitting).
        role: "probe" (to fit the line) or "verify" (a predicted ceiling checked by a real step).
        baseline_bytes: memory held before the step (process resident size on CPU, allocated
            bytes elsewhere).
        seconds: wall-clock time of the measurement.
        steps: training steps run at this batch size (until the peak stopped growing); for a step
            that ran out of memory, 1 (the count before the failure is not known).
        detail: the error a failed step raised.
    """

    batch_size: int
    peak_bytes: int | None
    fits: bool
    outcome: Outcome = "fits"
    role: Role = "probe"
    baseline_bytes: int | None = None
    seconds: float = 0.0
    steps: int = 1
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "peak_bytes": self.peak_bytes,
            "fits": self.fits,
            "outcome": self.outcome,
            "role": self.role,
            "steps": self.steps,
            "seconds": self.seconds,
        }


@dataclass
class MemoryProfile:
    """The fitted memory model and the ceiling under a budget.

    Attributes:
        budget_bytes: the memory a training step may use.
        fixed_bytes, per_sample_bytes: ``mem(B) = fixed + per_sample·B``, the line through the
            measured points nearest the ceiling (it describes memory near the ceiling best).
        max_batch_size: the largest batch size measured to fit (capped at the data set size), or
            the cap itself when ``verified`` is False.
        verified: a real step at ``max_batch_size`` was measured to fit. False only when the data
            set size (or the limit) was accepted because an upper bound of the line put it well
            within the budget (a step over the whole data set can cost more than the rest).
        limited_by: "memory", "dataset" (every training sample fits in one step) or "limit"
            (the caller's ``max_batch_size_limit``).
        probes: every measured step, in order.
        measurements: batch sizes measured (probes and verifications).
        steps_used: real training steps run for them (a few per measurement, see
            :func:`run_training_steps`).
        seconds: wall-clock time of the whole probe.
        budget_source: "given" or how the default was derived.
    """

    budget_bytes: int
    fixed_bytes: int
    per_sample_bytes: float
    max_batch_size: int
    limited_by: Literal["memory", "dataset", "limit"]
    verified: bool
    probes: list[MemoryProbe]
    measurements: int
    steps_used: int
    seconds: float
    dataset_size: int
    device: str = "cpu"
    budget_source: str = "given"
    meter: str = ""
    notes: list[str] = field(default_factory=list)
    #: Fraction of the budget the ceiling keeps free, and the budget steps were held to.
    margin: float = 0.0
    effective_budget_bytes: int | None = None
    #: Where the ceiling was checked: "fresh process" (a new process trained at it, as the user's
    #: will), "forked child" (this process's state, where a notebook user trains), "allocator".
    checked_in: str = "forked child"
    #: Each fresh-process check: {"batch_size", "peak_bytes", "predicted_bytes", "fits"}.
    fresh_checks: list[dict[str, Any]] = field(default_factory=list)

    def predict_bytes(self, batch_size: int) -> int:
        """Predicted peak bytes of a step at ``batch_size`` (the fitted line)."""
        return round(self.fixed_bytes + self.per_sample_bytes * batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "fixed_bytes": self.fixed_bytes,
            "per_sample_bytes": self.per_sample_bytes,
            "max_batch_size": self.max_batch_size,
            "limited_by": self.limited_by,
            "verified": self.verified,
            "dataset_size": self.dataset_size,
            "measurements": self.measurements,
            "steps_used": self.steps_used,
            "seconds": self.seconds,
            "budget_source": self.budget_source,
            "meter": self.meter,
            "notes": list(self.notes),
            "margin": self.margin,
            "effective_budget_bytes": self.effective_budget_bytes,
            "checked_in": self.checked_in,
            "fresh_checks": list(self.fresh_checks),
            "probes": [probe.to_dict() for probe in self.probes],
        }


# --------------------------------------------------------------------------------------------
# Measuring one step
# --------------------------------------------------------------------------------------------


class StepMemoryMeter(Protocol):
    """Measures the peak memory of one training step at a batch size, against a budget."""

    name: str

    def measure(self, batch_size: int, budget_bytes: int) -> MemoryProbe: ...

    def default_budget_bytes(self) -> tuple[int, str]: ...


def run_training_steps(task: Task, batch_size: int, device: Device, read_peak: Callable[[], int],
                       validate: bool = False) -> tuple[int, int]:
    """Engine steps of a fresh run at ``batch_size`` until the peak stops growing; (peak bytes, steps).

    One step is not enough. During the first, the optimiser state does not exist yet (the first
    ``optimizer.step()`` creates it); in the second, glibc has raised its mmap threshold after
    the first step's frees, so activations of up to 32 MiB now land in the heap, whose freed
    space stays resident; the third is the first steady step. So ``MIN_STEPS_PER_PROBE`` steps
    run, and one more (up to ``MAX_STEPS_PER_PROBE``) while the last still raised the peak by
    more than ``PLATEAU_FRACTION`` of the step's own memory. ``validate``: then one validation
    pass, as a training run makes (its peak counts too).
    """
    baseline = read_peak()
    run = Run(task, batch_size, task.base_lr, device=device)
    peaks: list[int] = []
    while len(peaks) < MAX_STEPS_PER_PROBE:
        run.step()
        peaks.append(read_peak())
        if len(peaks) >= MIN_STEPS_PER_PROBE and (
            peaks[-1] - peaks[-2] <= PLATEAU_FRACTION * max(peaks[-1] - baseline, 1)
        ):
            break
    if validate:
        run.validate()
        peaks.append(max(peaks[-1], read_peak()))
    return peaks[-1], len(peaks) - (1 if validate else 0)


class ForkedPeakRSSMeter:
    """CPU: peak resident memory of a forked child that runs the step (see the module docstring)."""

    name = "peak RSS of a forked child (VmHWM), one intra-op thread"

    def __init__(self, task: Task) -> None:
        if not hasattr(os, "fork"):
            raise ConfigError("measuring CPU memory needs os.fork (Linux or macOS)")
        self.task = task
        self._warm_imports()

    def _warm_imports(self) -> None:
        # The first optimiser built in a process imports torch's optimiser machinery (seconds);
        # doing it once here means no child pays it.
        with preserved_rng():
            self.task.make_optimizer(nn.Linear(1, 1).parameters(), self.task.base_lr)

    def default_budget_bytes(self) -> tuple[int, str]:
        available = psutil.virtual_memory().available
        resident = psutil.Process().memory_info().rss
        budget = resident + int(available * (1 - DEFAULT_MARGIN_FRACTION))
        return budget, (
            f"this process's resident memory ({format_bytes(resident)}) + available RAM "
            f"({format_bytes(available)}) − {DEFAULT_MARGIN_FRACTION:.0%} margin"
        )

    def measure(self, batch_size: int, budget_bytes: int) -> MemoryProbe:
        start = time.perf_counter()
        # Growth the child may have beyond its starting size: the budget plus some overshoot
        # (so a step slightly over budget still gives a point), never most of the free RAM.
        machine_bytes = int(psutil.virtual_memory().available * MACHINE_FRACTION)
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()"
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reports through the pipe
            os.close(read_fd)
            _child_main(self.task, batch_size, budget_bytes, machine_bytes, write_fd)
        os.close(write_fd)
        report, status = _collect_child(pid, read_fd, batch_size)
        return _probe_from_report(report, status, batch_size, budget_bytes, time.perf_counter() - start)


def _child_main(task: Task, batch_size: int, budget_bytes: int, machine_bytes: int,
                write_fd: int) -> None:  # pragma: no cover - runs in the child
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once
    report: dict[str, Any] = {}
    try:
        torch.set_num_threads(1)  # libgomp's pool does not survive fork: more threads would hang
        status = _proc_status()
        report["baseline"] = status["VmRSS"]
        headroom = max(budget_bytes - status["VmRSS"], 0)
        growth = min(max(int(headroom * GUARD_FACTOR), headroom + GUARD_MIN_BYTES), machine_bytes)
        limit = status["VmData"] + growth
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        peak, steps = run_training_steps(task, batch_size, Device(torch.device("cpu")),
                                         lambda: _proc_status()["VmHWM"])
        report.update(peak=peak, steps=steps, outcome="finished")
    except BaseException as exc:  # the child must always answer
        report["outcome"] = "out of memory" if is_out_of_memory(exc) else "error"
        report["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    # Leaving the except block freed the failed step's tensors; the report needs little memory.
    try:
        report["hwm"] = _proc_status().get("VmHWM")
        os.write(write_fd, json.dumps(report).encode())
    finally:
        os._exit(0)


def _proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, VmData of this process in bytes (Linux); ru_maxrss where /proc is missing."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmData"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    if "VmHWM" not in values:  # macOS: ru_maxrss in bytes there (kilobytes on Linux)
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        rss = psutil.Process().memory_info()
        values = {"VmRSS": rss.rss, "VmHWM": usage * scale, "VmData": rss.vms}
    return values


def _collect_child(pid: int, read_fd: int, batch_size: int) -> tuple[dict[str, Any], int]:
    """Read the child's JSON report; kill it on timeout or Ctrl-C. Returns (report, wait status)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeError(
                    f"memory probe at batch size {batch_size} did not finish in "
                    f"{CHILD_TIMEOUT_SECONDS:.0f} s"
                )
            ready, _, _ = select.select([read_fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:
        _kill_child(pid)
        raise
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode() or "{}"
    try:
        return json.loads(text), status
    except json.JSONDecodeError:
        return {}, status


def _kill_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _probe_from_report(report: dict[str, Any], status: int, batch_size: int, budget_bytes: int,
                       seconds: float) -> MemoryProbe:
    outcome = report.get("outcome")
    baseline = report.get("baseline")
    if outcome == "finished":
        peak = int(report["peak"])
        fits = peak <= budget_bytes
        return MemoryProbe(batch_size, peak, fits, "fits" if fits else "over budget",
                           baseline_bytes=baseline, seconds=seconds, steps=int(report["steps"]))
    if outcome == "out of memory":
        return MemoryProbe(batch_size, None, False, "out of memory", baseline_bytes=baseline,
                           seconds=seconds, detail=str(report.get("error", "")))
    if outcome == "error":
        # Not recognisably out of memory. Some libraries report a failed allocation under the
        # child's limit in their own words (oneDNN: "could not create a primitive"), so the search
        # decides: an error after smaller batches ran counts as not fitting, one on the first
        # probe is the task's own failure.
        return MemoryProbe(batch_size, None, False, "error", baseline_bytes=baseline, seconds=seconds,
                           detail=str(report.get("error", "")))
    # No report: the child died, most likely killed by the kernel for want of memory.
    how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGKILL, signal.SIGABRT):
        return MemoryProbe(batch_size, None, False, "killed", baseline_bytes=baseline, seconds=seconds)
    raise ProbeError(f"the memory probe at batch size {batch_size} died ({how}) without a report")


class AllocatorPeakMeter:
    """CUDA/MPS: the allocator's peak bytes of a step run in this process; OOM is caught.

    Not run on a GPU by this project yet (no GPU here); follows PyTorch's documented API.
    """

    name = "allocator peak (max_memory_allocated)"

    def __init__(self, task: Task, device: Device) -> None:
        self.task = task
        self.device = device

    def default_budget_bytes(self) -> tuple[int, str]:
        self.device.empty_cache()
        self.device.reset_peak_memory()
        allocated = self.device.peak_memory_bytes() or 0
        free = self.device.available_memory_bytes()
        budget = allocated + int(free * (1 - DEFAULT_MARGIN_FRACTION))
        return budget, (
            f"allocated now ({format_bytes(allocated)}) + free device memory ({format_bytes(free)}) "
            f"− {DEFAULT_MARGIN_FRACTION:.0%} margin"
        )

    def measure(self, batch_size: int, budget_bytes: int) -> MemoryProbe:
        start = time.perf_counter()
        dev = self.device
        dev.reset_peak_memory()  # the previous measurement emptied the cache on its way out
        baseline = dev.peak_memory_bytes()
        out_of_memory = False
        steps = 1
        try:
            _peak, steps = run_training_steps(self.task, batch_size, dev,
                                              lambda: dev.peak_memory_bytes() or 0)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise ProbeError(
                    f"a training step at batch size {batch_size} failed: {type(exc).__name__}: {exc}"
                ) from exc
            out_of_memory = True  # handled below, once the traceback's tensors are gone
        peak = None if out_of_memory else dev.peak_memory_bytes()
        dev.empty_cache()
        seconds = time.perf_counter() - start
        if peak is None:
            return MemoryProbe(batch_size, None, False, "out of memory", baseline_bytes=baseline,
                               seconds=seconds, steps=steps)
        fits = peak <= budget_bytes
        return MemoryProbe(batch_size, peak, fits, "fits" if fits else "over budget",
                           baseline_bytes=baseline, seconds=seconds, steps=steps)


def make_meter(task: Task, device: Device) -> StepMemoryMeter:
    """The meter for ``device``: a forked child on CPU, the allocator's statistics elsewhere."""
    if device.type == "cpu":
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ConfigError("the CPU memory probe forks a child per measurement, which is unsafe once a "
                              "torch.distributed process group exists: probe memory in one process before "
                              "launching the workers (batchsage recommend or probe)")
        return ForkedPeakRSSMeter(task)
    return AllocatorPeakMeter(task, device)


@contextmanager
def preserved_rng(device: Device | None = None) -> Iterator[None]:
    """Restore torch's (and the device's), Python's and NumPy's global RNG state afterwards."""
    devices = [device.torch_device] if device is not None and device.type == "cuda" else []
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# --------------------------------------------------------------------------------------------
# Finding the ceiling
# --------------------------------------------------------------------------------------------


@dataclass
class CeilingSearch:
    """What :func:`search_ceiling` measured and concluded.

    ``ceiling`` is the largest fitting measured batch size, or the cap when the cap was accepted
    without a step there (``verified`` False: an upper bound of the line put the cap well within
    the budget, see ``cap_margin``).
    """

    probes: list[MemoryProbe]
    ceiling: int
    verified: bool


def search_ceiling(
    measure: Callable[[int], MemoryProbe],
    budget_bytes: int,
    cap: int,
    *,
    tolerance: float = 0.05,
    max_measurements: int = 8,
    cap_margin: float = 0.8,
    first_batch_size: int = FIRST_BATCH_SIZE,
    on_probe: Callable[[MemoryProbe], None] | None = None,
) -> CeilingSearch:
    """Measure steps until the largest fitting batch size ≤ ``cap`` is known within ``tolerance``.

    ``measure(B)`` measures the peak memory of training steps at B. Device-independent, so that it
    can be tested against synthetic memory curves.

    When the line says even ``cap`` (the data set size) fits, a step there can cost more than all
    the rest (a step over the whole data set). If an upper bound of the line at the cap — its slope
    raised by ``SLOPE_NOISE_BYTES`` over the measured spread — is within ``cap_margin`` of the
    budget, the cap is accepted without that step; otherwise a probe at a batch size chosen to
    settle the bound (if that costs at most a quarter of a step at the cap) tightens the slope
    first, and the cap is verified only if that does not settle it.
    ``cap_margin=0`` always verifies.

    Raises MemoryBudgetError when even one sample does not fit.
    """
    probes: list[MemoryProbe] = []

    def run(batch_size: int, role: Role) -> MemoryProbe:
        probe = measure(batch_size)
        probe.role = role
        if probe.outcome == "error" and not any(p.fits for p in probes):
            raise ProbeError(f"a training step at batch size {batch_size} failed: {probe.detail}")
        probes.append(probe)
        if on_probe is not None:
            on_probe(probe)
        return probe

    if not run(min(cap, first_batch_size), "probe").fits and probes[0].batch_size > 1:
        run(1, "probe")
    if not any(p.fits for p in probes):
        raise MemoryBudgetError(_too_small_message(probes[-1], budget_bytes))
    while len(probes) < max_measurements:
        low, high = _bracket(probes)
        if low.batch_size >= cap or (high is not None and high.batch_size <= low.batch_size + 1):
            break
        crossing = estimate_crossing(probes, budget_bytes)
        if crossing is not None and crossing <= low.batch_size * (1 + tolerance):
            break
        if crossing is not None and crossing >= cap and high is None:
            bound = upper_bound_bytes(probes, low, cap)
            if bound is not None and bound <= cap_margin * budget_bytes:
                return CeilingSearch(probes, cap, verified=False)
            tighter = _tightening_batch_size(probes, low, cap, cap_margin * budget_bytes)
            if tighter is not None:
                run(tighter, "probe")
                continue
        if (crossing is not None and high is None
                and min(crossing, cap) > low.batch_size * MAX_EXTRAPOLATION):
            # Far from every measured point: memory per sample at small B is often not what it is
            # near the ceiling. A probe at the geometric midpoint costs a fraction of a step at
            # the ceiling and makes the verifying prediction a short extrapolation.
            run(round(math.sqrt(low.batch_size * min(crossing, cap))), "probe")
            continue
        next_size, role = _next_batch_size(low, high, crossing, cap)
        run(next_size, role)
    low, _high = _bracket(probes)
    return CeilingSearch(probes, low.batch_size, verified=True)


def _tightening_batch_size(probes: list[MemoryProbe], low: MemoryProbe, cap: int,
                           allowed_bytes: float) -> int | None:
    """A batch size whose measurement would likely bring the cap's upper bound under
    ``allowed_bytes``, if it costs at most a quarter of a step at the cap; else None.

    With the current slope s, a point at B raises the bound at the cap by the noise spread over
    the distance from ``low``: ``central(cap) + SLOPE_NOISE_BYTES·(cap − B)/(B − low)``. Solving
    for B gives the smallest that would do; twice that allows for the slope changing.
    """
    base = _base_point(probes, low)
    if base is None or base.peak_bytes is None or low.peak_bytes is None:
        return None
    slope = max((low.peak_bytes - base.peak_bytes) / (low.batch_size - base.batch_size), 0.0)
    room = allowed_bytes - (low.peak_bytes + slope * (cap - low.batch_size))
    if room <= 0:
        return None
    needed = (SLOPE_NOISE_BYTES * cap + room * low.batch_size) / (room + SLOPE_NOISE_BYTES)
    target = max(2 * math.ceil(needed), 2 * low.batch_size)
    return target if target <= cap // 4 else None


def upper_bound_bytes(probes: list[MemoryProbe], low: MemoryProbe, batch_size: int) -> float | None:
    """Peak at ``batch_size`` by the line from ``low``, its slope raised by the measurement noise."""
    base = _base_point(probes, low)
    if base is None or base.peak_bytes is None or low.peak_bytes is None:
        return None
    slope = (low.peak_bytes - base.peak_bytes + SLOPE_NOISE_BYTES) / (low.batch_size - base.batch_size)
    return low.peak_bytes + slope * (batch_size - low.batch_size)


def _too_small_message(probe: MemoryProbe, budget_bytes: int) -> str:
    head = f"memory budget {format_bytes(budget_bytes)} is too small for one training sample:"
    held = (
        f" the process already holds {format_bytes(probe.baseline_bytes)} before the step"
        if probe.baseline_bytes is not None
        else ""
    )
    if probe.peak_bytes is not None:
        return f"{head} a step at batch size {probe.batch_size} peaks at {format_bytes(probe.peak_bytes)}" + (
            f" ({held.strip()})" if held else ""
        )
    return f"{head} a step at batch size {probe.batch_size} ran out of memory" + (f";{held}" if held else "")


def _bracket(probes: list[MemoryProbe]) -> tuple[MemoryProbe, MemoryProbe | None]:
    """The largest fitting probe, and the smallest non-fitting one above it (if any)."""
    low = max((p for p in probes if p.fits), key=lambda p: p.batch_size)
    above = [p for p in probes if not p.fits and p.batch_size > low.batch_size]
    return low, min(above, key=lambda p: p.batch_size) if above else None


def estimate_crossing(probes: list[MemoryProbe], budget_bytes: int) -> float | None:
    """Batch size where the memory line crosses the budget, from the points nearest it.

    Regula falsi between the largest fitting and the smallest over-budget measured step when the
    budget is bracketed by two measured peaks; otherwise the secant from the largest fitting step
    back to a base point (:func:`_base_point`), extrapolated. ``inf`` when memory did not grow
    between them; None when there is only one measured point, or when a step the line says fits
    ran out of memory.
    """
    low, high = _bracket(probes)
    if high is not None and high.peak_bytes is not None and high.peak_bytes > low.peak_bytes:
        slope = (high.peak_bytes - low.peak_bytes) / (high.batch_size - low.batch_size)
        return low.batch_size + (budget_bytes - low.peak_bytes) / slope
    previous = _base_point(probes, low)
    if previous is None or low.peak_bytes is None or previous.peak_bytes is None:
        return None
    slope = (low.peak_bytes - previous.peak_bytes) / (low.batch_size - previous.batch_size)
    crossing = math.inf if slope <= 0 else low.batch_size + (budget_bytes - low.peak_bytes) / slope
    curved = _power_law_crossing(probes, low, previous, budget_bytes)
    if curved is not None:
        crossing = curved
    if high is not None and crossing >= high.batch_size:
        # A step the line says fits ran out of memory: the line is wrong up there. No estimate;
        # the search bisects (in log space) between the two.
        return None
    return crossing


def _power_law_crossing(probes: list[MemoryProbe], low: MemoryProbe, middle: MemoryProbe,
                        budget_bytes: int) -> float | None:
    """Crossing of ``mem(B) = a + c·B^p`` through three measured points, or None.

    Memory per sample often keeps falling as B grows over a wide range (allocator regimes,
    kernels chosen per shape), so a straight line through points far below the ceiling
    undershoots it, and each correction gains only part of the distance. With three points
    whose peaks each differ by more than twice the measurement noise, the exponent p is solved
    from the ratio of the two increments (clamped to [``POWER_MIN``, ``POWER_MAX``]; p = 1 is
    the straight line) and the curve extrapolated.
    """
    first = _base_point(probes, middle)
    if first is None or first is middle:
        return None
    points = [(p.batch_size, p.peak_bytes) for p in (first, middle, low)]
    if any(peak is None for _, peak in points):
        return None
    (b0, m0), (b1, m1), (b2, m2) = points  # type: ignore[misc]
    if min(m1 - m0, m2 - m1) < 2 * SLOPE_NOISE_BYTES or not b0 < b1 < b2:
        return None
    ratio = (m2 - m1) / (m1 - m0)

    def increments_ratio(power: float) -> float:
        return (b2**power - b1**power) / (b1**power - b0**power)

    low_power, high_power = POWER_MIN, POWER_MAX  # increments_ratio grows with the power
    for _ in range(60):
        power = (low_power + high_power) / 2
        if increments_ratio(power) < ratio:
            low_power = power
        else:
            high_power = power
    power = (low_power + high_power) / 2
    scale = (m2 - m1) / (b2**power - b1**power)
    return (b2**power + (budget_bytes - m2) / scale) ** (1 / power)


def _base_point(probes: list[MemoryProbe], low: MemoryProbe) -> MemoryProbe | None:
    """The fitting step the slope at ``low`` is measured from: the nearest one below it whose
    peak is at least ``SLOPE_NOISE_BYTES`` lower, or failing that the smallest.

    Peaks vary from run to run by up to about one heap-sized allocation (allocator effects), so
    between two close batch sizes the slope can be anything, even negative; the nearest point
    that differs by more than that noise keeps the slope local (memory per sample often shrinks
    as B grows) and its error small.
    """
    assert low.peak_bytes is not None
    below = sorted((p for p in probes if p.fits and p.batch_size < low.batch_size),
                   key=lambda p: p.batch_size, reverse=True)
    for probe in below:
        if probe.peak_bytes is not None and low.peak_bytes - probe.peak_bytes >= SLOPE_NOISE_BYTES:
            return probe
    return below[-1] if below else None


def _next_batch_size(low: MemoryProbe, high: MemoryProbe | None, crossing: float | None,
                     cap: int) -> tuple[int, Role]:
    upper = cap if high is None else high.batch_size - 1
    if crossing is None:  # no slope yet: grow geometrically, or halve the bracket in log space
        guess = low.batch_size * GROWTH if high is None else math.sqrt(low.batch_size * high.batch_size)
        return max(low.batch_size + 1, min(upper, int(guess))), "probe"
    if math.isinf(crossing):
        target = upper if high is None else math.sqrt(low.batch_size * high.batch_size)
    else:
        target = crossing * AIM
    return max(low.batch_size + 1, min(upper, int(target))), "verify"


def fit_line(probes: list[MemoryProbe]) -> tuple[int, float]:
    """(fixed_bytes, per_sample_bytes) of the line through the measured points nearest the ceiling."""
    low, high = _bracket(probes)
    assert low.peak_bytes is not None
    if high is not None and high.peak_bytes is not None and high.peak_bytes > low.peak_bytes:
        other = high
    else:
        base = _base_point(probes, low)
        if base is None:
            return low.peak_bytes, 0.0
        other = base
    assert other.peak_bytes is not None
    slope = max((low.peak_bytes - other.peak_bytes) / (low.batch_size - other.batch_size), 0.0)
    return round(low.peak_bytes - slope * low.batch_size), slope


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------


def probe_memory(
    task: Task,
    device: str | Device | None = "auto",
    budget_bytes: int | None = None,
    max_batch_size_limit: int | None = None,
    *,
    tolerance: float = 0.05,
    max_measurements: int = 8,
    cap_margin: float = 0.8,
    on_probe: Callable[[MemoryProbe], None] | None = None,
    meter: StepMemoryMeter | None = None,
    margin: float = DEFAULT_SAFETY_MARGIN,
    fresh_check: bool = True,
) -> MemoryProfile:
    """Fit ``mem(B) = fixed + per_sample·B`` and find the largest batch size within the budget.

    Args:
        task: the training problem (its model, optimiser and data are used; nothing is kept).
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps" or a Device.
        budget_bytes: memory a training step may use (on CPU: peak resident memory of the
            training process). Default: what this process holds now plus the available memory,
            less ``DEFAULT_MARGIN_FRACTION`` of the available memory.
        max_batch_size_limit: never probe beyond this batch size.
        tolerance: stop once the ceiling is known within this fraction.
        max_measurements: at most this many batch sizes measured (probes and verifications).
        cap_margin: accept the data set size (or the limit) without a step there when an upper
            bound of the fitted line puts it below this fraction of the budget; 0 always verifies.
        on_probe: called after each measured step (progress display).
        meter: how a step is measured (default: chosen by the device).
        margin: the ceiling keeps this fraction of the budget free.
        fresh_check: on CPU, where memory sets the ceiling and the task has a ``source``, check it
            in a fresh process that trains at it (:mod:`batchsage.probe.fresh`), lowering it by
            what that process needs beyond the forked children's measurements.

    The batch size never exceeds the number of training samples; when every sample fits in one
    step, ``limited_by`` says "dataset".
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    dataset_size = task.num_train_samples
    cap = dataset_size
    if max_batch_size_limit is not None:
        if isinstance(max_batch_size_limit, bool) or not isinstance(max_batch_size_limit, int) or (
            max_batch_size_limit <= 0
        ):
            raise ConfigError(
                f"max_batch_size_limit must be a positive integer, got {max_batch_size_limit!r}"
            )
        cap = min(cap, max_batch_size_limit)
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance must be between 0 and 1, got {tolerance!r}")
    if not 0 <= cap_margin < 1:
        raise ConfigError(f"cap_margin must be in [0, 1), got {cap_margin!r}")
    if not 0 <= margin < 1:
        raise ConfigError(f"the memory margin must be a fraction in [0, 1), got {margin!r}")
    if max_measurements < 3:
        raise ConfigError(
            f"max_measurements must be at least 3 (two probes and a verification), got {max_measurements}"
        )
    meter = meter or make_meter(task, dev)
    if budget_bytes is None:
        budget, source = meter.default_budget_bytes()
    else:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
            raise ConfigError(f"memory budget must be a positive number of bytes, got {budget_bytes!r}")
        budget, source = budget_bytes, "given"
    effective = int(budget * (1.0 - margin))
    try:
        search = search_ceiling(
            lambda size: meter.measure(size, effective), effective, cap, tolerance=tolerance,
            max_measurements=max_measurements, cap_margin=cap_margin, on_probe=on_probe,
        )
    except MemoryBudgetError as exc:
        if not margin:
            raise
        raise MemoryBudgetError(f"{exc} ({format_bytes(budget)} less its {margin:.0%} safety margin; "
                                "--memory-margin sets it)") from None
    probes = search.probes
    fixed, per_sample = fit_line(probes)
    checked_in = "allocator" if dev.type != "cpu" else "forked child"
    fresh_checks: list[dict[str, Any]] = []
    if (dev.type == "cpu" and fresh_check and task.source is not None
            and _needs_fresh_check(search.ceiling, cap, fixed, per_sample, effective)):
        search.ceiling, fresh_checks = check_in_fresh_process(task.source, search.ceiling, fixed, per_sample,
                                                              effective, cap=cap, tolerance=tolerance)
        checked_in = "fresh process"
    if search.ceiling < cap:
        limited_by: Literal["memory", "dataset", "limit"] = "memory"
    else:
        limited_by = "dataset" if cap == dataset_size else "limit"
    notes = _notes(search, budget, cap, limited_by, tolerance)
    if fresh_checks:  # the fresh process, not the forked children's line, set the ceiling
        notes = [note for note in notes if not note.startswith("measurement limit reached")]
        notes.append("checked in a fresh training process: " + "; ".join(
            f"B={c['batch_size']} peaked at "
            + (format_bytes(c["peak_bytes"]) if c["peak_bytes"] else "out of memory")
            + (" (fits)" if c["fits"] else " (over)") for c in fresh_checks))
    return MemoryProfile(
        budget_bytes=budget,
        fixed_bytes=fixed,
        per_sample_bytes=per_sample,
        max_batch_size=search.ceiling,
        limited_by=limited_by,
        verified=search.verified,
        probes=probes,
        measurements=len(probes),
        steps_used=sum(p.steps for p in probes),
        seconds=time.perf_counter() - start,
        dataset_size=dataset_size,
        device=str(dev),
        budget_source=source,
        meter=meter.name,
        notes=notes,
        margin=margin,
        effective_budget_bytes=effective,
        checked_in=checked_in,
        fresh_checks=fresh_checks,
    )


def _fresh_solution(checks: list[dict[str, Any]], fixed: int, per_sample: float, budget: int) -> int:
    """The batch size the fresh checks so far predict at the budget.

    With two measured fresh peaks further apart than their run-to-run noise, the line through
    them (a fresh process's own slope can differ from the forked children's); otherwise the
    forked line moved by what the last fresh process needed beyond it (or less); after an out-of-memory,
    a quarter of the step more.
    """
    measured = [c for c in checks if c["peak_bytes"] is not None]
    if len(measured) >= 2 and (
            abs(measured[-1]["peak_bytes"] - measured[-2]["peak_bytes"]) > SLOPE_NOISE_BYTES):
        (b0, p0), (b1, p1) = ((c["batch_size"], c["peak_bytes"]) for c in measured[-2:])
        slope = (p1 - p0) / (b1 - b0)
        if slope > 0:
            return math.floor(b1 + (budget - p1) / slope)
    last = checks[-1]
    extra = (last["peak_bytes"] - last["predicted_bytes"] if last["peak_bytes"] is not None
             else per_sample * last["batch_size"] / 4)
    return math.floor((budget - fixed - extra) / per_sample) if per_sample > 0 else 0


def _needs_fresh_check(ceiling: int, cap: int, fixed: int, per_sample: float, budget: int) -> bool:
    """Whether a fresh process must confirm the ceiling.

    Always where memory sets it. Where the data set does, a fresh process can still need more than
    the forked children (it imports and builds everything itself): on linreg at a tight budget the
    children said the whole data set fits and a fresh process fitted a quarter to a half of it, because
    there the per-sample bytes are tiny and the fixed bytes decide. So the data set's ceiling is
    checked too unless the forked line puts it under half the budget, far below any difference
    measured between the two kinds of process.
    """
    if ceiling < cap:
        return True
    return fixed + per_sample * cap > budget / 2


def check_in_fresh_process(source: str, ceiling: int, fixed: int, per_sample: float, budget: int,
                           cap: int | None = None,
                           tolerance: float = 0.05) -> tuple[int, list[dict[str, Any]]]:
    """The ceiling a fresh training process holds to ``budget``, and each check made.

    A fresh process trains at the ceiling. Where its peak is over the budget, the difference from
    the forked children's line (what a fresh process needs beyond them) lowers the line; where it
    is under by more than ``tolerance``, the difference raises it (a fresh process can need less
    than the children: charlm's fit at 42 % of the largest batch that fitted). The ceiling is
    solved again and checked again, up to MAX_FRESH_CHECKS processes; the answer is the largest
    batch a fresh process held to the budget, never more than ``cap``.
    """
    from batchsage.probe.fresh import fresh_peak_bytes

    available = int(psutil.virtual_memory().available * MACHINE_FRACTION)
    limit = min(max(3 * budget, budget + (1 << 30)), available)
    checks: list[dict[str, Any]] = []
    batch, best, over = ceiling, 0, math.inf
    while len(checks) < MAX_FRESH_CHECKS:
        peak, report = fresh_peak_bytes(source, batch, limit)
        predicted = round(fixed + per_sample * batch)
        steps_peak = report.get("steps_peak")
        fits = peak is not None and peak <= budget
        checks.append({"batch_size": batch, "peak_bytes": peak, "steps_peak_bytes": steps_peak,
                       "predicted_bytes": predicted, "fits": fits})
        if fits:
            best = max(best, batch)
            if peak >= budget * (1 - tolerance):
                return best, checks
        else:
            over = min(over, batch)
            if not best and peak is not None and steps_peak is not None and steps_peak <= budget:
                raise MemoryBudgetError(
                    f"training steps at B={batch} fit {format_bytes(budget)} in a fresh process "
                    f"({format_bytes(steps_peak)}), but its validation pass (the task's metric over all "
                    f"validation samples at once) peaks at {format_bytes(peak)}: validate in "
                    "batches in metric_fn, or give a larger --memory-budget")
        following = _next_fresh_batch(checks, fixed, per_sample, budget, best, over, cap)
        if following is None:
            break
        batch = following
    if best:
        return best, checks
    tried = ", ".join(f"B={c['batch_size']}: "
                      + (format_bytes(c["peak_bytes"]) if c["peak_bytes"] else "out of memory")
                      for c in checks)
    raise MemoryBudgetError(f"no batch size fits {format_bytes(budget)} in a fresh training process "
                            f"(checked {tried})")


def _next_fresh_batch(checks: list[dict[str, Any]], fixed: int, per_sample: float, budget: int,
                      best: int, over: float, cap: int | None) -> int | None:
    """The batch the next fresh check tries, strictly between the largest that fitted (``best``)
    and the smallest that did not (``over``); None when no such batch is worth a process."""
    last = checks[-1]
    if not last["fits"] and last["batch_size"] == 1:
        return None
    solution = _fresh_solution(checks, fixed, per_sample, budget)
    if last["fits"]:  # room left: aim a little below the solution, so the check usually fits
        solution = math.floor(AIM * solution)
        if cap is not None:
            solution = min(solution, cap)
        return solution if solution > best and solution < over else None
    if solution < 1:
        # The fresh process's excess alone is over the budget by the line, yet the line cannot
        # tell where its fixed bytes end (a task whose samples cost a few hundred bytes): halve.
        solution = last["batch_size"] // 2
    solution = min(solution, last["batch_size"] - 1)
    return solution if solution > best else None


def _notes(search: CeilingSearch, budget: int, cap: int, limited_by: str, tolerance: float) -> list[str]:
    notes: list[str] = []
    probes, ceiling = search.probes, search.ceiling
    what = "the data set" if limited_by == "dataset" else "the requested limit"
    if limited_by != "memory" and search.verified:
        notes.append(f"B={cap} ({what}) fits: {what}, not memory, sets the ceiling")
    elif limited_by != "memory":
        low, _ = _bracket(probes)
        bound = upper_bound_bytes(probes, low, cap)
        notes.append(
            f"B={cap} ({what}) is predicted to fit, not run: even an upper bound of the line "
            f"({format_bytes(bound or 0)}) is well within the budget; {what}, not memory, sets the ceiling"
        )
    else:
        crossing = estimate_crossing(probes, budget)
        if crossing is not None and math.isfinite(crossing) and crossing > ceiling * (1 + tolerance):
            notes.append(
                f"measurement limit reached: the line predicts up to B≈{crossing:.0f}, "
                f"measured up to {ceiling}"
            )
    if any(p.outcome in ("out of memory", "killed") for p in probes):
        notes.append("a probe ran out of memory in its child process; it counts as not fitting")
    for probe in probes:
        if probe.outcome == "error":
            notes.append(f"B={probe.batch_size} failed ({probe.detail}); it counts as not fitting")
    return notes
