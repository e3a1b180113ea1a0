"""The memory probe: ceiling under a budget, checked by real training steps measured independently.

The headline tests build a task whose activations are large per sample (a 32k-wide hidden layer),
so that a budget 480 MiB above a one-sample step makes memory, not the data set (2048 samples),
bind. The independent check forks a child that runs the real training loop (``batchsage.train``)
and reads its peak resident memory from /proc — no use of the fitted line.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from batchsage import Task
from batchsage.device import Device
from batchsage.engine import train
from batchsage.probe import probe
from batchsage.probe.memory import (
    AllocatorPeakMeter,
    ForkedPeakRSSMeter,
    MemoryBudgetError,
    MemoryProbe,
    MemoryProfile,
    ProbeError,
    estimate_crossing,
    probe_memory,
    search_ceiling,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

HIDDEN = 32_768  # 128 KiB of float32 per sample per activation: memory grows ~0.4 MiB per sample
MiB = 1024**2


def _wide_task(num_samples: int = 2048, hidden: int = HIDDEN) -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(num_samples, 8, generator=generator)
    y = (x[:, 0] > 0).long()

    def make_model() -> nn.Module:
        return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def loss_fn(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        inputs, labels = batch
        return nn.functional.cross_entropy(model(inputs), labels)

    return Task(
        name="wide",
        make_model=make_model,
        train_data=TensorDataset(x, y),
        val_data=TensorDataset(x[:16], y[:16]),
        loss_fn=loss_fn,
        make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
        metric_fn=lambda model, data: 0.0,
        target=1.0,
        higher_is_better=True,
        base_batch_size=16,
        base_lr=0.01,
        max_samples=10_000,
    )


def peak_rss_of_training(task: Task, batch_size: int) -> int | None:
    """Peak resident bytes of a forked child that trains two real steps at ``batch_size``.

    Independent of the probe's code: the child runs ``batchsage.train`` (the training loop) and
    reads VmHWM itself. None if the child could not run the steps (out of memory).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            torch.set_num_threads(1)
            train(task, batch_size, task.base_lr, max_samples=2 * batch_size,
                  eval_every_samples=10**9, stop_at_target=False)
            with open("/proc/self/status") as handle:
                hwm = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))
            os.write(write_fd, str(hwm).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        text = reader.read()
    os.waitpid(pid, 0)
    return int(text) if text else None


@pytest.fixture(scope="module")
def wide_task() -> Task:
    return _wide_task()


@pytest.fixture(scope="module")
def one_sample_peak(wide_task: Task) -> int:
    one = ForkedPeakRSSMeter(wide_task).measure(1, 64 * 1024**3)
    assert one.peak_bytes is not None
    return one.peak_bytes


@pytest.fixture(scope="module")
def tight_budget(one_sample_peak: int) -> int:
    """480 MiB above a one-sample step: the ceiling is ~1200 of the 2048 samples.

    At that size each activation is over 32 MiB, which glibc always maps and unmaps afresh, so
    the peak of a step is reproducible to a few pages. Smaller tensors land in the heap, whose
    freed space stays resident: just below B=256 (activations just under 32 MiB) a step peaks
    ~250 MiB above a one-sample step here, higher than at B=700. The budget stays well above that
    hump on any machine, so the largest fitting batch is where the line crosses the budget, not
    inside the hump (with 220 MiB of headroom a slower machine's hump crossed it).
    """
    return one_sample_peak + 480 * MiB


@pytest.fixture(scope="module")
def tight_profile(wide_task: Task, tight_budget: int) -> MemoryProfile:
    # No safety margin: these tests measure how close the search gets to the budget itself.
    return probe_memory(wide_task, budget_bytes=tight_budget, margin=0.0)


@pytest.mark.slow  # ~20 s with its fixtures: steps at B≈1200 touch ~150 MiB tensors afresh
def test_ceiling_fits_the_budget_and_twenty_percent_more_does_not(
    wide_task: Task, tight_budget: int, tight_profile: MemoryProfile
) -> None:
    profile = tight_profile
    assert profile.limited_by == "memory"
    assert 100 < profile.max_batch_size < wide_task.num_train_samples
    assert profile.measurements <= 6 and profile.steps_used == sum(p.steps for p in profile.probes)
    assert any(p.role == "verify" for p in profile.probes)
    assert profile.per_sample_bytes > 0.2 * MiB  # ~0.4 MiB per sample by construction
    # Measured independently of the fit: the real training loop in a child.
    at_ceiling = peak_rss_of_training(wide_task, profile.max_batch_size)
    assert at_ceiling is not None and at_ceiling <= tight_budget
    beyond = peak_rss_of_training(wide_task, math.ceil(1.2 * profile.max_batch_size))
    assert beyond is None or beyond > tight_budget


def test_ceiling_is_within_five_percent_of_the_largest_fitting_batch(
    wide_task: Task, tight_budget: int, tight_profile: MemoryProfile
) -> None:
    profile = tight_profile
    # Memory grows with B here, so if a batch 1/0.95 times the ceiling does not fit, the largest
    # fitting batch is less than that: the ceiling is within 5 % of it. Measured by a fresh child.
    just_beyond = math.floor(profile.max_batch_size / 0.95) + 1
    assert not ForkedPeakRSSMeter(wide_task).measure(just_beyond, tight_budget).fits


def test_budget_smaller_than_one_sample_is_a_clear_error(wide_task: Task) -> None:
    message = r"memory budget 1\.00 MiB is too small for one training sample"
    with pytest.raises(MemoryBudgetError, match=message):
        probe_memory(wide_task, budget_bytes=MiB, margin=0.0)
    with pytest.raises(MemoryBudgetError, match=r"1\.00 MiB less its 5% safety margin"):
        probe_memory(wide_task, budget_bytes=MiB)


def test_budget_just_below_one_sample_step_is_an_error_naming_the_peak(
    wide_task: Task, one_sample_peak: int
) -> None:
    with pytest.raises(MemoryBudgetError, match="peaks at"):
        probe_memory(wide_task, budget_bytes=one_sample_peak - 4 * MiB)


def test_out_of_memory_in_a_probe_is_survived(wide_task: Task, one_sample_peak: int) -> None:
    heavy = _wide_task(num_samples=4096, hidden=262_144)
    meter = ForkedPeakRSSMeter(heavy)
    # 4096 samples × 1 MiB activations ≈ 4 GiB a tensor: the child's allocation fails under its limit.
    huge = meter.measure(4096, one_sample_peak + 160 * MiB)
    assert huge.outcome == "out of memory" and "allocate" in huge.detail
    assert not huge.fits and huge.peak_bytes is None
    # The parent is alive, and a search goes on past such a failure: with 1 MiB activations per
    # sample, the second probe (B=128, ~0.5 GiB) is far beyond a budget 160 MiB above B=1. (The
    # first, B=8, peaks 15-55 MiB above B=1 from run to run: with a 64 MiB margin it failed about
    # one run in eight under load.)
    heavy = _wide_task(num_samples=256, hidden=262_144)
    one = ForkedPeakRSSMeter(heavy).measure(1, 64 * 1024**3)
    assert one.peak_bytes is not None
    profile = probe_memory(heavy, budget_bytes=one.peak_bytes + 160 * MiB, max_measurements=4)
    # Whether the child's allocation fails or completes above the budget depends on the memory
    # free at that moment; either way it does not fit and the search goes on.
    first, second = profile.probes[:2]
    assert first.outcome == "fits"
    assert second.outcome in ("out of memory", "over budget") and not second.fits
    assert 8 <= profile.max_batch_size < 128
    # A probe fits against the budget less the safety margin, not the whole budget.
    assert profile.effective_budget_bytes is not None
    assert all(p.fits == (p.peak_bytes is not None and p.peak_bytes <= profile.effective_budget_bytes)
               for p in profile.probes)


def test_probing_leaves_the_callers_model_and_rng_state_untouched(tiny_task: Task) -> None:
    shared = tiny_task.make_model()  # a factory that hands out the caller's own instance
    tiny_task.make_model = lambda: shared
    before = {key: value.clone() for key, value in shared.state_dict().items()}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()

    result = probe(tiny_task, memory_budget_bytes=64 * 1024**3, time_budget_seconds=0.5)

    assert result.memory.max_batch_size >= 1 and result.throughput.points
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    after = shared.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert all(p.grad is None for p in shared.parameters())


def test_plentiful_memory_caps_the_ceiling_at_the_data_set(tiny_task: Task) -> None:
    profile = probe_memory(tiny_task)  # default budget: available RAM less the margin
    assert profile.limited_by == "dataset"
    assert profile.max_batch_size == tiny_task.num_train_samples
    assert "available" in profile.budget_source
    # The line's upper bound at 512 samples is far below gigabytes: no step over the data set.
    assert not profile.verified and profile.measurements == 2
    assert any("predicted to fit" in note and "data set" in note for note in profile.notes)
    verified = probe_memory(tiny_task, cap_margin=0.0)
    assert verified.verified and verified.max_batch_size == tiny_task.num_train_samples
    assert verified.probes[-1].fits and verified.probes[-1].batch_size == tiny_task.num_train_samples


def test_a_limit_caps_the_ceiling_and_says_so(tiny_task: Task) -> None:
    profile = probe_memory(tiny_task, budget_bytes=64 * 1024**3, max_batch_size_limit=5)
    assert profile.max_batch_size == 5
    assert profile.limited_by == "limit"
    assert max(p.batch_size for p in profile.probes) == 5


def test_profile_serialises_to_the_documented_keys(tiny_task: Task) -> None:
    profile = probe_memory(tiny_task, budget_bytes=64 * 1024**3)
    document = json.loads(json.dumps(profile.to_dict()))
    assert {"budget_bytes", "fixed_bytes", "per_sample_bytes", "max_batch_size", "probes"} <= set(document)
    assert all(set(p) >= {"batch_size", "peak_bytes", "fits"} for p in document["probes"])
    assert profile.predict_bytes(100) == round(profile.fixed_bytes + 100 * profile.per_sample_bytes)


def test_a_failing_loss_is_reported_not_counted_as_out_of_memory(tiny_task: Task) -> None:
    def broken(model: nn.Module, batch: object) -> torch.Tensor:
        raise ValueError("shape mismatch in the user's loss")

    tiny_task.loss_fn = broken
    with pytest.raises(ProbeError, match="shape mismatch"):
        probe_memory(tiny_task, budget_bytes=64 * 1024**3)


def test_bad_arguments_are_config_errors(tiny_task: Task) -> None:
    from batchsage.errors import ConfigError

    with pytest.raises(ConfigError, match="memory budget"):
        probe_memory(tiny_task, budget_bytes=0)
    with pytest.raises(ConfigError, match="max_batch_size_limit"):
        probe_memory(tiny_task, budget_bytes=MiB * 1024, max_batch_size_limit=0)


# --- the search on synthetic memory curves (no training: milliseconds) --------------------------


def synthetic(curve: Callable[[int], float], budget: int,
              oom_above: float = math.inf) -> Callable[[int], MemoryProbe]:
    def measure(batch_size: int) -> MemoryProbe:
        if batch_size > oom_above:
            return MemoryProbe(batch_size, None, False, "out of memory")
        peak = round(curve(batch_size))
        return MemoryProbe(batch_size, peak, peak <= budget, "fits" if peak <= budget else "over budget")

    return measure


def exact_ceiling(curve: Callable[[int], float], budget: int, cap: int) -> int:
    return max(b for b in range(1, cap + 1) if curve(b) <= budget)


CURVES = {
    "linear": lambda b: 400 * MiB + 0.25 * MiB * b,
    # steeper per sample at small B than near the ceiling, as measured on real CNNs and GRUs here
    "steep-then-flat": lambda b: 400 * MiB + 0.4 * MiB * min(b, 100) + 0.2 * MiB * max(b - 100, 0),
    "superlinear": lambda b: 400 * MiB + 0.2 * MiB * b + 2e-5 * MiB * b**2,
    "staircase": lambda b: 400 * MiB + 0.25 * MiB * b + 8 * MiB * (b // 512),
}


@pytest.mark.parametrize("name", sorted(CURVES))
@pytest.mark.parametrize("budget_mib", [600, 1500, 3000])
def test_search_finds_the_ceiling_within_five_percent_in_few_steps(name: str, budget_mib: int) -> None:
    curve, budget, cap = CURVES[name], budget_mib * MiB, 60_000
    probes = search_ceiling(synthetic(curve, budget), budget, cap).probes
    best = max(p.batch_size for p in probes if p.fits)
    truth = exact_ceiling(curve, budget, cap)
    assert 0.95 * truth <= best <= truth
    # Two probes, a verification, corrections: regula falsi converges one-sidedly on a convex
    # curve, so that one may take the whole allowance.
    assert len(probes) <= (6 if name == "superlinear" else 5)
    assert any(p.role == "verify" for p in probes)


def test_search_survives_out_of_memory_without_a_measured_peak() -> None:
    curve, budget = CURVES["linear"], 1000 * MiB  # crossing at B=2400
    probes = search_ceiling(synthetic(curve, budget, oom_above=1000), budget, 60_000,
                            max_measurements=8).probes
    best = max(p.batch_size for p in probes if p.fits)
    assert best <= 1000 and best >= 0.95 * 1000 * 0.9
    assert any(p.outcome == "out of memory" for p in probes)


def test_search_verifies_the_cap_when_the_margin_is_thin() -> None:
    search = search_ceiling(synthetic(lambda b: 300 * MiB, 400 * MiB), 400 * MiB, 1437)
    # 1437 is over 8× the largest probe: a midpoint first, then the cap itself.
    assert [p.batch_size for p in search.probes] == [8, 128, 429, 1437]
    assert search.probes[-1].fits and search.verified and search.ceiling == 1437


def test_search_accepts_the_cap_unverified_only_under_an_upper_bound() -> None:
    flat = search_ceiling(synthetic(lambda b: 300 * MiB, 4096 * MiB), 4096 * MiB, 1437)
    assert [p.batch_size for p in flat.probes] == [8, 128]
    assert flat.ceiling == 1437 and not flat.verified
    # 0.25 MiB per sample, 60k samples ≈ 15 GiB at the cap, budget 16 GiB: too close to skip, so
    # the cap is verified (no cheap probe could settle it).
    budget = 16 * 1024 * MiB
    linear = search_ceiling(synthetic(CURVES["linear"], budget), budget, 60_000)
    assert linear.probes[-1].batch_size == 60_000
    assert linear.verified and linear.ceiling == 60_000
    # With 24 GiB the line leaves room, and a probe a fraction of the cap's size settles the bound.
    budget = 24 * 1024 * MiB
    roomy = search_ceiling(synthetic(CURVES["linear"], budget), budget, 60_000)
    assert not roomy.verified and roomy.ceiling == 60_000
    assert len(roomy.probes) == 3 and 128 < roomy.probes[-1].batch_size <= 60_000 // 4


def test_search_raises_when_one_sample_does_not_fit() -> None:
    with pytest.raises(MemoryBudgetError, match="batch size 1 peaks at"):
        search_ceiling(synthetic(CURVES["linear"], 100 * MiB), 100 * MiB, 1000)


def test_estimate_crossing_interpolates_between_bracketing_peaks() -> None:
    probes = [MemoryProbe(100, 500, True), MemoryProbe(300, 900, False, "over budget")]
    assert estimate_crossing(probes, 700) == pytest.approx(200)
    assert estimate_crossing(probes[:1], 700) is None


# --- the allocator meter (CUDA/MPS path) on a fake device ---------------------------------------


class FakeAcceleratorDevice(Device):
    """A CPU device whose 'allocator statistics' are a known line, and that runs out above a size."""

    def __init__(self, fixed: int, per_sample: int, oom_above: int) -> None:
        super().__init__(torch.device("cpu"))
        object.__setattr__(self, "state", {"peak": 0, "fixed": fixed, "per": per_sample, "oom": oom_above})

    def reset_peak_memory(self) -> None:
        self.state["peak"] = self.state["fixed"]  # type: ignore[attr-defined]

    def peak_memory_bytes(self) -> int:
        return self.state["peak"]  # type: ignore[attr-defined]

    def available_memory_bytes(self) -> int:
        return 10 * 1024**3

    def record(self, batch_size: int) -> None:
        state = self.state  # type: ignore[attr-defined]
        if batch_size > state["oom"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        state["peak"] = max(state["peak"], state["fixed"] + state["per"] * batch_size)


def test_allocator_meter_catches_out_of_memory_and_finds_the_ceiling(tiny_task: Task) -> None:
    device = FakeAcceleratorDevice(fixed=100 * MiB, per_sample=MiB, oom_above=150)
    inner = tiny_task.loss_fn

    def loss_fn(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        device.record(len(batch[0]))
        return inner(model, batch)

    tiny_task.loss_fn = loss_fn
    meter = AllocatorPeakMeter(tiny_task, device)
    assert meter.measure(200, 10**12).outcome == "out of memory"
    # Budget for 120 samples by the line: the ceiling is 120 (or just below, within 5 %).
    profile = probe_memory(tiny_task, device=device, budget_bytes=220 * MiB, meter=meter, margin=0.0)
    assert 114 <= profile.max_batch_size <= 120
    assert profile.per_sample_bytes == pytest.approx(MiB)
    assert profile.fixed_bytes == pytest.approx(100 * MiB)
    budget, source = meter.default_budget_bytes()
    assert budget == 100 * MiB + int(0.9 * 10 * 1024**3) and "free device memory" in source


# --- the command line ------------------------------------------------------------------------------


def test_cli_probe_prints_tables_and_writes_the_documented_json(tiny_task_spec: str, tmp_path) -> None:
    from typer.testing import CliRunner

    from batchsage.cli import app

    out = tmp_path / "probe.json"
    result = CliRunner().invoke(app, ["probe", "--task", tiny_task_spec, "--memory-budget", "64GiB",
                                      "--time-budget", "0.5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "limited by dataset" in result.output and "samples/s" in result.output
    document = json.loads(out.read_text())
    assert set(document) == {"device", "memory", "throughput", "probe_seconds"}
    assert document["device"] == "cpu"
    memory = document["memory"]
    assert memory["budget_bytes"] == 64 * 1024**3
    assert memory["max_batch_size"] == 512 and memory["limited_by"] == "dataset"
    assert {"budget_bytes", "fixed_bytes", "per_sample_bytes", "max_batch_size", "probes"} <= set(memory)
    assert all({"batch_size", "step_seconds_median", "samples_per_second"} <= set(row)
               for row in document["throughput"])
    assert document["probe_seconds"] > 0


@pytest.mark.parametrize(
    ("budget", "message"),
    [("lots", "memory size must look like"), ("1KiB", "is too small for one training sample")],
)
def test_cli_probe_bad_budgets_are_one_line_errors(tiny_task_spec: str, budget: str, message: str) -> None:
    from typer.testing import CliRunner

    from batchsage.cli import app

    result = CliRunner().invoke(app, ["probe", "--task", tiny_task_spec, "--memory-budget", budget])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_search_goes_straight_to_a_nearby_cap_when_memory_barely_grows() -> None:
    # A slope of a few bytes per sample puts the crossing far beyond the cap: verify the cap at
    # once rather than creeping towards it with midpoints.
    search = search_ceiling(synthetic(lambda b: 300 * MiB + 16 * b, 400 * MiB), 400 * MiB, 512,
                            cap_margin=0.0)
    assert [p.batch_size for p in search.probes] == [8, 128, 512]
    assert search.verified and search.ceiling == 512


def test_the_margin_keeps_its_share_of_the_budget_free(wide_task: Task, tight_budget: int,
                                                       tight_profile: MemoryProfile) -> None:
    with_margin = probe_memory(wide_task, budget_bytes=tight_budget, margin=0.1)
    assert with_margin.margin == 0.1 and with_margin.effective_budget_bytes == int(0.9 * tight_budget)
    assert with_margin.max_batch_size < tight_profile.max_batch_size
    assert all(p.peak_bytes <= with_margin.effective_budget_bytes for p in with_margin.probes if p.fits)
    assert with_margin.checked_in == "forked child"  # a task built in Python: no source to load elsewhere


def test_a_ceiling_memory_sets_is_checked_in_a_fresh_process(tmp_path: Path) -> None:
    from batchsage.probe.fresh import fresh_peak_bytes

    peak, report = fresh_peak_bytes("linreg", 64, 8 << 30)
    assert peak is not None and report["outcome"] == "finished" and report["steps"] >= 3
    assert peak >= report["steps_peak"] > 100 * MiB  # the whole process: interpreter, torch, data, steps


def test_a_task_with_a_source_has_its_ceiling_checked_in_a_fresh_process(fixtures_dir: Path) -> None:
    from batchsage.probe.fresh import fresh_peak_bytes
    from batchsage.task import load_task

    task = load_task(f"{fixtures_dir / 'tiny_tasks.py'}:memory_heavy_task")
    assert task.source is not None and task.source.endswith("tiny_tasks.py:memory_heavy_task")
    # The budget sits 160 MiB above one sample in whichever process holds more before its step:
    # a child forked from this test session, or a fresh process (which imports everything itself
    # and can hold more than a small parent, or far less than a large one).
    one = ForkedPeakRSSMeter(task).measure(1, 64 * 1024**3)
    fresh_one, _report = fresh_peak_bytes(task.source, 1, 8 << 30)
    assert one.peak_bytes is not None and fresh_one is not None
    profile = probe_memory(task, budget_bytes=max(one.peak_bytes, fresh_one) + 160 * MiB)
    assert profile.limited_by == "memory" and profile.checked_in == "fresh process"
    # The ceiling is the largest batch a fresh process held to the budget (the process a user
    # trains in), and every batch a fresh process did not hold is above it. Checks can run out
    # after one that did not fit: a long-lived parent (a notebook, a test session) may hold far
    # more than a fresh process, which then has room to move the ceiling a long way up.
    held = [c for c in profile.fresh_checks if c["fits"]]
    assert held and profile.max_batch_size == max(c["batch_size"] for c in held)
    assert all(c["peak_bytes"] <= profile.effective_budget_bytes for c in held)
    assert all(c["batch_size"] > profile.max_batch_size for c in profile.fresh_checks if not c["fits"])
    assert any(note.startswith("checked in a fresh training process") for note in profile.notes)


def test_a_data_set_ceiling_near_the_budget_is_checked_in_a_fresh_process() -> None:
    from batchsage.probe.memory import _needs_fresh_check

    # memory sets the ceiling: always checked
    assert _needs_fresh_check(ceiling=500, cap=1000, fixed=10 * MiB, per_sample=1.0, budget=1024 * MiB)
    # the data set sets it, and the line puts its step far under the budget: not checked
    assert not _needs_fresh_check(ceiling=1000, cap=1000, fixed=300 * MiB, per_sample=1024.0,
                                  budget=8192 * MiB)
    # the data set sets it, but the fixed bytes alone are most of the budget (linreg at a tight budget)
    assert _needs_fresh_check(ceiling=16384, cap=16384, fixed=300 * MiB, per_sample=512.0, budget=400 * MiB)


def test_a_fresh_excess_the_line_cannot_place_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchsage.probe.fresh as fresh
    from batchsage.probe.memory import check_in_fresh_process

    # Samples of a few hundred bytes: a fresh process is over the budget by more than all the
    # per-sample bytes, and under it only at smaller batches than the line can solve for.
    def peak(source: str, batch_size: int, limit_bytes: int) -> tuple[int, dict[str, int]]:
        value = 390 * MiB + (20 * MiB if batch_size > 5000 else 0) + 256 * batch_size
        return value, {"steps_peak": value}

    monkeypatch.setattr(fresh, "fresh_peak_bytes", peak)
    ceiling, checks = check_in_fresh_process("linreg", 16384, fixed=300 * MiB, per_sample=256.0,
                                             budget=394 * MiB)
    assert [c["batch_size"] for c in checks] == [16384, 8192, 4096]
    assert ceiling == 4096 and checks[-1]["fits"]


def test_a_fresh_process_needing_less_than_the_line_raises_the_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batchsage.probe.fresh as fresh
    from batchsage.probe.memory import check_in_fresh_process

    # The forked children's line is twice as steep as a fresh process's: at its ceiling (B=512)
    # the fresh process has room left, and the checks move up toward the fresh crossing (B=1024).
    def peak(source: str, batch_size: int, limit_bytes: int) -> tuple[int, dict[str, int]]:
        value = 300 * MiB + 100 * 1024 * batch_size
        return value, {"steps_peak": value}

    monkeypatch.setattr(fresh, "fresh_peak_bytes", peak)
    ceiling, checks = check_in_fresh_process("linreg", 512, fixed=300 * MiB, per_sample=200 * 1024.0,
                                             budget=400 * MiB, cap=4096)
    sizes = [c["batch_size"] for c in checks]
    assert sizes[0] == 512 and sizes == sorted(sizes) and all(c["fits"] for c in checks)
    assert 0.8 * 1024 <= ceiling <= 1024 and ceiling == sizes[-1]
    # Never above the data set
    ceiling, _ = check_in_fresh_process("linreg", 512, fixed=300 * MiB, per_sample=200 * 1024.0,
                                        budget=400 * MiB, cap=600)
    assert ceiling == 600
