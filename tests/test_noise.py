"""The noise-scale estimator, its exact reference, the monitor and `batchsage noise`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from batchsage.cli import app
from batchsage.engine import train
from batchsage.errors import ConfigError
from batchsage.noise import (
    Measurement,
    NoiseError,
    NoiseScaleMonitor,
    NoiseStatistics,
    adam_preconditioner,
    bootstrap_ci,
    exact_noise_scale,
    finite_population,
    measure_noise,
    ratio_of_means,
    step_estimates,
)
from batchsage.task import Task, load_task
from batchsage.tasks.common import accuracy, cross_entropy_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine run far faster (and steadier) on one thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_task(samples: int = 256, features: int = 6, classes: int = 3, *, batch_norm: bool = False,
              optimizer: str = "sgd") -> Task:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(samples, features, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    data = TensorDataset(x, y.clamp(max=classes - 1))

    def make_model() -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(features, 16)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(16))
        layers += [nn.Tanh(), nn.Linear(16, classes)]
        return nn.Sequential(*layers)

    def make_optimizer(params, lr):  # type: ignore[no-untyped-def]
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr)

    return Task(
        name="tiny", make_model=make_model, train_data=data, val_data=data, loss_fn=cross_entropy_loss,
        make_optimizer=make_optimizer, metric_fn=accuracy, target=0.99, higher_is_better=True,
        base_batch_size=32, base_lr=0.1, max_samples=10_000,
    )


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


# ---- pure estimators ------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[4] * 8, [4, 4, 4, 4, 4, 3, 3, 3]])
def test_step_estimates_recover_expected_norms(sizes: list[int]) -> None:
    # Feed the expectations E|g_b|² = |G|² + trΣ/b and E|G_B|² = |G|² + trΣ/B: exact recovery.
    grad_norm_sq, trace_sigma = 2.5, 40.0
    micro = [grad_norm_sq + trace_sigma / size for size in sizes]
    full = grad_norm_sq + trace_sigma / sum(sizes)
    gsq, trace, small = step_estimates(micro, sizes, full)
    assert gsq == pytest.approx(grad_norm_sq)
    assert trace == pytest.approx(trace_sigma)
    assert small == pytest.approx(len(sizes) / sum(1 / s for s in sizes))


def test_step_estimates_need_two_micro_batches() -> None:
    with pytest.raises(ValueError):
        step_estimates([1.0], [8], 1.0)


def test_finite_population_adds_trace_over_dataset_size() -> None:
    assert finite_population(1.0, 50.0, None) == 1.0
    assert finite_population(1.0, 50.0, 100) == pytest.approx(1.5)


def test_ratio_of_means_divides_only_after_averaging() -> None:
    # Per-step |G|² may be negative; the average is what counts.
    b_simple, tr, gsq = ratio_of_means([10.0, 30.0], [-1.0, 3.0])
    assert (tr, gsq) == (20.0, 1.0)
    assert b_simple == 20.0
    assert ratio_of_means([10.0, 30.0], [-3.0, 1.0])[0] == math.inf


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_data() -> None:
    generator = torch.Generator().manual_seed(0)
    tr = (100 + 20 * torch.randn(400, generator=generator)).tolist()
    gsq = (1 + 0.8 * torch.randn(400, generator=generator)).tolist()
    point = ratio_of_means(tr, gsq)[0]
    wide = bootstrap_ci(tr[:40], gsq[:40])
    narrow = bootstrap_ci(tr, gsq)
    assert wide is not None and narrow is not None
    assert narrow[0] < point < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert bootstrap_ci(tr[:1], gsq[:1]) is None
    # Replicates with a non-positive |G|² mean an unbounded noise scale.
    assert bootstrap_ci([10.0, 10.0, 10.0], [1.0, -1.0, -0.5])[1] == math.inf


def test_ema_weights_recent_measurements_more() -> None:
    stats = NoiseStatistics(ema=0.5)
    window = NoiseStatistics(window=2)
    for index, (tr, gsq) in enumerate([(10.0, 1.0)] * 10 + [(100.0, 1.0)] * 2):
        for target in (stats, window):
            target.add(Measurement(index, gsq, tr, 32, 4.0))
    ema_estimate, window_estimate = stats.estimate(), window.estimate()
    assert ema_estimate is not None and window_estimate is not None
    assert 75.0 < ema_estimate.b_simple < 100.0
    assert window_estimate.b_simple == pytest.approx(100.0)
    assert window_estimate.measurements == 2


def test_statistics_reject_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="ema"):
        NoiseStatistics(ema=1.0)
    with pytest.raises(ConfigError, match="window"):
        NoiseStatistics(window=0)


# ---- the monitor reads micro-batch gradients correctly ---------------------------------------


@pytest.mark.parametrize("batch_size", [32, 30])
def test_monitor_step_matches_directly_computed_micro_gradients(batch_size: int) -> None:
    task = tiny_task()
    torch.manual_seed(0)
    model = task.make_model()
    x, y = task.train_data.tensors  # type: ignore[attr-defined]
    batch = [x[:batch_size], y[:batch_size]]
    # Reference: each micro-batch's gradient from its own backward pass.
    micro_norms, sizes = [], []
    for part_x, part_y in zip(torch.tensor_split(batch[0], 8), torch.tensor_split(batch[1], 8), strict=True):
        model.zero_grad()
        cross_entropy_loss(model, [part_x, part_y]).backward()
        micro_norms.append(float(flat_grad(model).pow(2).sum()))
        sizes.append(len(part_x))
    model.zero_grad()
    cross_entropy_loss(model, batch).backward()
    full_grad = flat_grad(model).clone()
    expected = step_estimates(micro_norms, sizes, float(full_grad.pow(2).sum()))

    monitor = NoiseScaleMonitor(every=1, ema=None)
    model.zero_grad(set_to_none=True)
    loss = monitor.backward(model, batch, cross_entropy_loss)
    # The accumulated gradient is the full batch's, as loss.backward() would leave it.
    assert torch.allclose(flat_grad(model), full_grad, atol=1e-6)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(cross_entropy_loss(model, batch)), rel=1e-5)
    measured = monitor.statistics.measurements[0]
    assert measured.grad_norm_sq == pytest.approx(expected[0], rel=1e-4, abs=1e-7)
    assert measured.trace_sigma == pytest.approx(expected[1], rel=1e-4)
    assert measured.micro_batch_size == pytest.approx(expected[2])


def test_monitor_in_plain_loop_keeps_existing_gradients() -> None:
    # A user who accumulates across backward() calls: the measured step starts from non-zero .grad.
    task = tiny_task()
    torch.manual_seed(0)
    model = task.make_model()
    x, y = task.train_data.tensors  # type: ignore[attr-defined]
    first, second = [x[:32], y[:32]], [x[32:64], y[32:64]]
    only_second = NoiseScaleMonitor(every=1, ema=None)
    only_second.backward(model, second, cross_entropy_loss)
    second_grad = flat_grad(model).clone()
    model.zero_grad(set_to_none=True)
    cross_entropy_loss(model, first).backward()
    first_grad = flat_grad(model).clone()
    monitor = NoiseScaleMonitor(every=1, ema=None)
    monitor.backward(model, second, cross_entropy_loss)
    assert torch.allclose(flat_grad(model), first_grad + second_grad, atol=1e-6)
    assert monitor.statistics.measurements[0].trace_sigma == pytest.approx(
        only_second.statistics.measurements[0].trace_sigma, rel=1e-4
    )
    assert monitor.statistics.measurements[0].grad_norm_sq == pytest.approx(
        only_second.statistics.measurements[0].grad_norm_sq, rel=1e-3, abs=1e-6
    )


def test_monitor_as_training_hook_adapts_its_period_to_the_budget() -> None:
    task = tiny_task(samples=2048)
    monitor = NoiseScaleMonitor(micro_batches=8, overhead_budget=0.05, dataset_size=task.num_train_samples)
    result = train(task, 64, 0.1, hooks=[monitor], max_samples=64 * 300, stop_at_target=False)
    assert result.steps == 300
    assert monitor.statistics.measurements[0].step == 0  # the initial point is measured
    estimate = monitor.estimate()
    assert estimate is not None and estimate.batch_size == 64 and estimate.micro_batch_size == 8
    # The period follows from the measured cost of a split step against a plain one (whatever the
    # load made them; which is dearer is a timing, not a behaviour, and is not asserted).
    assert monitor.period == max(1, math.ceil((monitor.cost_ratio - 1.0) / 0.05))
    assert 2 <= monitor.measurements < 300 / 2
    assert math.isfinite(monitor.overhead_fraction) and monitor.overhead_fraction >= 0


def test_fixed_period_measures_every_kth_step() -> None:
    task = tiny_task()
    monitor = NoiseScaleMonitor(every=5, report_every=2)
    train(task, 32, 0.1, hooks=[monitor], max_samples=32 * 20, stop_at_target=False)
    assert [m.step for m in monitor.statistics.measurements] == [0, 5, 10, 15]
    assert [point.step for point in monitor.trajectory] == [5, 15]
    assert all(math.isfinite(point.train_loss) for point in monitor.trajectory)


def test_disabled_monitor_does_not_split_steps() -> None:
    monitor = NoiseScaleMonitor(every=1)
    monitor.enabled = False
    from batchsage.engine import TrainState

    assert monitor.micro_batches(TrainState(), 1) == 1
    assert monitor.estimate() is None


def test_monitor_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="micro_batches"):
        NoiseScaleMonitor(micro_batches=1)
    with pytest.raises(ConfigError, match="every"):
        NoiseScaleMonitor(every=0)
    with pytest.raises(ConfigError, match="variant"):
        NoiseScaleMonitor(variant="sgd")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="overhead_budget"):
        NoiseScaleMonitor(overhead_budget=0)


def test_exact_method_runs_inside_the_engine_without_changing_the_training() -> None:
    monitor = NoiseScaleMonitor(every=1, method="exact")
    measured = train(tiny_task(), 32, 0.1, hooks=[monitor], max_samples=256, stop_at_target=False)
    plain = train(tiny_task(), 32, 0.1, max_samples=256, stop_at_target=False)
    assert monitor.measurements == measured.steps == 8
    assert monitor.estimate() is not None
    # The per-example pass replaces the step's backward with the same gradient.
    assert [p.metric for p in measured.history] == [p.metric for p in plain.history]


# ---- the exact reference ---------------------------------------------------------------------


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference the exact estimator must match: one backward pass per example, stacked."""
    grads = []
    for index in range(len(x)):
        model.zero_grad()
        cross_entropy_loss(model, [x[index : index + 1], y[index : index + 1]]).backward()
        grads.append(flat_grad(model).double().clone())
    return torch.stack(grads)


def test_exact_matches_a_loop_over_examples() -> None:
    task = tiny_task()
    torch.manual_seed(1)
    model = task.make_model()
    x, y = task.train_data.tensors  # type: ignore[attr-defined]
    batch = [x[:20], y[:20]]
    stacked = per_example_gradients(model, x[:20], y[:20])
    mean = stacked.mean(0)
    trace = float(((stacked - mean) ** 2).sum() / 19)
    estimate = exact_noise_scale(task, model, batch, chunk_size=7)
    assert estimate.trace_sigma == pytest.approx(trace, rel=1e-5)
    assert estimate.grad_norm_sq == pytest.approx(float(mean @ mean) - trace / 20, rel=1e-4, abs=1e-8)
    assert estimate.batch_size == 20 and estimate.micro_batch_size == 1.0


class TinyGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(inputs)
        return self.head(states[:, -1])


def test_exact_falls_back_to_one_example_at_a_time_where_vmap_cannot_batch() -> None:
    torch.manual_seed(0)
    model = TinyGRU()
    x, y = torch.randn(6, 5, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    stacked = per_example_gradients(model, x, y)
    trace = float(((stacked - stacked.mean(0)) ** 2).sum() / 5)
    estimate = exact_noise_scale(cross_entropy_loss, model, [x, y])
    assert estimate.trace_sigma == pytest.approx(trace, rel=1e-5)


def test_exact_rejects_batch_norm_naming_the_reason() -> None:
    task = tiny_task(batch_norm=True)
    model = task.make_model()
    x, y = task.train_data.tensors  # type: ignore[attr-defined]
    with pytest.raises(NoiseError, match="BatchNorm"):
        exact_noise_scale(task, model, [x[:8], y[:8]])


def test_linreg_estimate_matches_the_closed_form_at_the_initial_point() -> None:
    from batchsage.tasks.linreg import gradient_statistics

    task = load_task("linreg")
    # B_noise ≈ 280 here, so |G|² is a small difference of two large numbers: at 64 × 200
    # measurements its estimate strayed 13 %; 128 × 400 keeps it within a few %.
    report = measure_noise(task, 128, 400, every=1, at_initial_point=True, progress=False)
    torch.manual_seed(task.seed)  # the same initial weights measure_noise starts from
    weights = task.make_model().weight.detach().reshape(-1)
    trace_sigma, grad_norm_sq = gradient_statistics(weights, task.extras["w_star"])
    assert report.trace_sigma == pytest.approx(trace_sigma, rel=0.10)
    assert report.grad_norm_sq == pytest.approx(grad_norm_sq, rel=0.10)
    assert report.b_simple == pytest.approx(trace_sigma / grad_norm_sq, rel=0.15)
    assert report.ci95 is not None and report.ci95[0] < report.b_simple < report.ci95[1]
    assert report.measurements == 400


def narrow_digits(hidden: int) -> Task:
    """The digits task's data with a narrower MLP: the built-in width makes every step far dearer."""
    from batchsage.tasks.digits import make_task

    return make_task(hidden=hidden)


def test_digits_estimator_agrees_with_exact_at_the_same_point() -> None:
    task = narrow_digits(256)
    kwargs = dict(every=1, at_initial_point=True, progress=False, seed=3)
    estimator = measure_noise(task, 64, 80, "estimator", **kwargs)  # type: ignore[arg-type]
    exact = measure_noise(task, 64, 80, "exact", **kwargs)  # type: ignore[arg-type]
    assert estimator.b_simple == pytest.approx(exact.b_simple, rel=0.15)
    assert estimator.trace_sigma == pytest.approx(exact.trace_sigma, rel=0.15)
    assert exact.method == "exact" and exact.micro_batch_size == 1.0


def test_noise_scale_grows_as_the_loss_falls_on_digits() -> None:
    report = measure_noise(narrow_digits(1024), 32, 480, every=2, progress=False)
    points = report.trajectory
    assert len(points) >= 8
    quarter = len(points) // 4

    def pooled(window: list) -> float:  # type: ignore[type-arg]
        trace = sum(p.trace_sigma * p.measurements for p in window)
        grad_norm_sq = sum(p.grad_norm_sq * p.measurements for p in window)
        return trace / grad_norm_sq if grad_norm_sq > 0 else math.inf

    early, late = points[:quarter], points[-quarter:]
    assert sum(p.train_loss for p in late) < 0.5 * sum(p.train_loss for p in early)
    # Growth, not its size, is the claim: on the shift-augmented digits task 480 steps see
    # B_simple grow ~1.8× at width 1024 (the old, unshifted task: ~11×).
    assert pooled(late) > 1.4 * pooled(early)


# ---- variants, arguments, interruption, CLI --------------------------------------------------


def test_adam_preconditioner_is_one_over_sqrt_v_hat() -> None:
    task = tiny_task(optimizer="adam")
    torch.manual_seed(0)
    model = task.make_model()
    optimizer = task.make_optimizer(model.parameters(), 0.01)
    params = list(model.parameters())
    assert adam_preconditioner(optimizer, params) is None  # no step yet
    x, y = task.train_data.tensors  # type: ignore[attr-defined]
    for _ in range(3):
        optimizer.zero_grad()
        cross_entropy_loss(model, [x[:32], y[:32]]).backward()
        optimizer.step()
    scale = adam_preconditioner(optimizer, params)
    state = optimizer.state[params[0]]
    v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
    expected = 1 / (v_hat.sqrt() + 1e-8)
    assert scale is not None
    assert torch.allclose(scale[: params[0].numel()], expected.reshape(-1))
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    sgd.state[params[0]]["momentum_buffer"] = torch.zeros_like(params[0])
    with pytest.raises(NoiseError, match="Adam-like"):
        adam_preconditioner(sgd, params)


def test_adam_preconditioned_variant_is_reported_and_estimator_tracks_exact() -> None:
    task = tiny_task(samples=1024, optimizer="adam")
    common = dict(every=1, variant="adam-preconditioned", lr=0.001, progress=False)
    estimator = measure_noise(task, 64, 60, "estimator", **common)  # type: ignore[arg-type]
    exact = measure_noise(task, 64, 60, "exact", **common)  # type: ignore[arg-type]
    assert estimator.variant == exact.variant == "adam-preconditioned"
    assert estimator.measurements == exact.measurements == 59  # no second moment before step 1
    assert estimator.trace_sigma == pytest.approx(exact.trace_sigma, rel=0.25)
    with pytest.raises(ConfigError, match="second moment"):
        measure_noise(task, 64, 5, variant="adam-preconditioned", at_initial_point=True, progress=False)


def test_measure_noise_rejects_bad_arguments() -> None:
    task = tiny_task()
    with pytest.raises(ConfigError, match="micro_batches"):
        measure_noise(task, 4, 10, progress=False)
    with pytest.raises(ConfigError, match="steps"):
        measure_noise(task, 32, 0, progress=False)
    with pytest.raises(ConfigError, match="batch size"):
        measure_noise(task, 10_000, 10, progress=False)


def test_ctrl_c_returns_the_partial_report() -> None:
    task = tiny_task()
    calls = {"count": 0}

    def interrupting_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        calls["count"] += 1
        if calls["count"] > 40:
            raise KeyboardInterrupt
        return cross_entropy_loss(model, batch)

    task.loss_fn = interrupting_loss
    report = measure_noise(task, 32, 100, every=2, progress=False)
    assert report.interrupted
    assert 0 < report.steps < 100 and report.measurements >= 2


def test_cli_writes_the_documented_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "noise.json"
    result = CliRunner().invoke(
        app, ["noise", "--task", "linreg", "--steps", "24", "--at-init", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    for key in ("method", "batch_size", "steps", "b_simple", "trace_sigma", "grad_norm_sq", "ci95",
                "overhead_fraction", "trajectory", "variant"):
        assert key in document
    assert document["method"] == "estimator" and document["steps"] == 24
    low, high = document["ci95"]
    # JSON has no infinity: an unbounded end of the interval is written as null.
    assert low is None or low <= document["b_simple"]
    assert high is None or document["b_simple"] <= high
    assert {"step", "train_loss", "b_simple"} <= set(document["trajectory"][0])
    assert document["overhead_fraction"] > 0


def test_cli_reports_bad_method_in_one_line() -> None:
    result = CliRunner().invoke(app, ["noise", "--task", "linreg", "--method", "guess"])
    assert result.exit_code == 2
    assert "--method" in result.output


def test_adaptive_schedule_spends_the_budget_it_is_given() -> None:
    from batchsage.noise import _Schedule

    schedule = _Schedule(None, budget=0.1)
    measured = []
    for _ in range(2000):
        instrumented = schedule.decide()
        measured.append(instrumented)
        schedule.record_seconds(instrumented, 3.0 if instrumented else 1.0)  # instrumented = 3× plain
        schedule.advance(instrumented)
    assert measured[0]  # the initial point
    assert schedule.cost_ratio() == pytest.approx(3.0)
    assert schedule.period() == 20  # (3 − 1)/0.1
    assert schedule.overhead_fraction() <= 0.1 + 1e-9
    assert sum(measured) == pytest.approx(2000 * 0.1 / 2, abs=2)
