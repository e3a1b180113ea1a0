"""The fits from pilot measurements to planner parameters, on synthetic curves with known answers."""

from __future__ import annotations

import math

import pytest

from batchsage import curves, plan


def test_steps_to_level_interpolates_between_validations() -> None:
    steps = [10, 20, 30]
    accuracy = [0.5, 0.7, 0.9]
    assert curves.steps_to_level(steps, accuracy, 0.8, higher_is_better=True) == pytest.approx(25.0)
    assert curves.steps_to_level(steps, accuracy, 0.95, higher_is_better=True) is None


def test_steps_to_level_for_losses() -> None:
    steps = [10, 20, 30]
    loss = [2.0, 1.0, 0.5]
    assert curves.steps_to_level(steps, loss, 0.75, higher_is_better=False) == pytest.approx(25.0)


@pytest.mark.parametrize("b_crit", [16.0, 100.0, 1000.0])
def test_critical_batch_recovers_the_model_it_was_generated_from(b_crit: float) -> None:
    s_min = 500.0
    small, large = 32, 256
    b = curves.critical_batch_from_two_runs(
        small, plan.steps_to_target(small, s_min, b_crit), large, plan.steps_to_target(large, s_min, b_crit)
    )
    assert b == pytest.approx(b_crit, rel=1e-9)


def test_critical_batch_edge_cases() -> None:
    # The larger batch needed as many steps: larger batches buy nothing.
    assert curves.critical_batch_from_two_runs(32, 100, 256, 100) == 0.0
    # Perfect scaling: steps fell by the full batch ratio.
    assert math.isinf(curves.critical_batch_from_two_runs(32, 800, 256, 100))


def test_extrapolation_uses_a_log_steps_trend() -> None:
    steps = [100, 200, 400, 800]
    accuracy = [0.60, 0.65, 0.70, 0.75]  # +0.05 per doubling
    result = curves.extrapolate_steps_to_target(steps, accuracy, 0.85, higher_is_better=True)
    assert result.extrapolated and result.reachable
    assert result.steps == pytest.approx(3200, rel=1e-6)


def test_extrapolation_reports_measured_value_when_reached() -> None:
    result = curves.extrapolate_steps_to_target([100, 200], [0.5, 0.9], 0.7, higher_is_better=True)
    assert not result.extrapolated
    assert result.steps == pytest.approx(150)


def test_extrapolation_flat_curve_is_unreachable() -> None:
    result = curves.extrapolate_steps_to_target([100, 200, 400], [1.0, 1.0, 1.01], 0.5,
                                                higher_is_better=False)
    assert not result.reachable


def test_power_law_growth_and_its_step_average() -> None:
    steps = [10, 20, 40, 80]
    values = [3.0 * s**0.5 for s in steps]
    growth = curves.power_law_growth(steps, values)
    assert growth is not None
    assert growth.exponent == pytest.approx(0.5, rel=1e-6)
    assert growth.scale == pytest.approx(3.0, rel=1e-6)
    # Mean of 3·s^0.5 over [0, 100] = 3·100^0.5 / 1.5 = 20.
    assert curves.effective_noise_scale(growth, 100) == pytest.approx(20.0, rel=1e-6)


def test_power_law_growth_never_extrapolates_a_decline() -> None:
    growth = curves.power_law_growth([10, 20, 40], [100.0, 50.0, 25.0])
    assert growth is not None and growth.exponent == 0.0


def test_non_decreasing_pools_a_noisy_dip() -> None:
    assert plan.non_decreasing([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert plan.non_decreasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]


def test_step_time_model_interpolates_and_extrapolates() -> None:
    model = plan.step_time_model([16, 64, 32], [0.001, 0.004, 0.0005])
    assert model(8) == pytest.approx(model(16))  # flat below the smallest measurement
    assert model(16) <= model(32) <= model(64)  # the dip at 32 is pooled away
    slope = (model(64) - model(32)) / 32
    assert model(128) == pytest.approx(model(64) + 64 * slope)  # linear beyond the largest
    flat_tail = plan.step_time_model([16, 32], [0.002, 0.002])
    assert flat_tail(64) == pytest.approx(0.004)  # no slope measured: constant throughput
