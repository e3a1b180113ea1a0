"""The planner's arithmetic: S(B), lr rules, memory split, and the choice of B."""

from __future__ import annotations

import math

import pytest

from batchsage import plan


def test_steps_to_target_formula() -> None:
    assert plan.steps_to_target(100, s_min=500, b_noise=100) == pytest.approx(1000)
    assert plan.steps_to_target(1e12, s_min=500, b_noise=100) == pytest.approx(500)
    # Below B_noise, halving the batch nearly doubles the steps (perfect scaling regime).
    assert plan.steps_to_target(2, 500, 1000) / plan.steps_to_target(4, 500, 1000) == pytest.approx(
        501 / 251
    )


def test_samples_to_target_is_e_min_times_one_plus_b_over_b_noise() -> None:
    s_min, b_noise = 300.0, 64.0
    e_min = s_min * b_noise
    for batch_size in (1, 8, 64, 512, 4096):
        assert plan.samples_to_target(batch_size, s_min, b_noise) == pytest.approx(
            e_min * (1 + batch_size / b_noise)
        )


def test_lr_ratio_without_noise_scale_is_linear() -> None:
    assert plan.lr_ratio(256, 32, None) == pytest.approx(8.0)
    assert plan.lr_ratio(16, 32, math.nan) == pytest.approx(0.5)


def test_lr_ratio_is_linear_below_and_saturates_above_b_noise() -> None:
    base, b_noise = 32, 10_000.0
    assert plan.lr_ratio(base, base, b_noise) == pytest.approx(1.0)
    assert plan.lr_ratio(64, base, b_noise) == pytest.approx(2.0, rel=0.01)  # B ≪ B_noise
    ceiling = 1 + b_noise / base
    ratios = [plan.lr_ratio(b, base, b_noise) for b in (32, 64, 1e3, 1e4, 1e5, 1e7)]
    assert ratios == sorted(ratios)
    assert ratios[-1] == pytest.approx(ceiling, rel=1e-3)
    assert all(r < ceiling for r in ratios)
    # At B = B_noise the lr is half its maximum.
    assert plan.lr_ratio(b_noise, base, b_noise) == pytest.approx(ceiling / 2)


def test_scaled_lr_linear_and_sqrt() -> None:
    assert plan.scaled_lr(128, 32, 0.1, "linear") == pytest.approx(0.4)
    assert plan.scaled_lr(128, 32, 1e-3, "sqrt") == pytest.approx(2e-3)
    linear = plan.scaled_lr(4096, 32, 1.0, "linear", b_noise=200)
    root = plan.scaled_lr(4096, 32, 1.0, "sqrt", b_noise=200)
    assert root == pytest.approx(math.sqrt(linear))
    assert linear < 4096 / 32  # saturated above B_noise
    with pytest.raises(ValueError, match="scaling must be 'linear' or 'sqrt'"):
        plan.scaled_lr(64, 32, 0.1, "cubic")  # type: ignore[arg-type]


def test_warmup_only_when_the_lr_grows() -> None:
    assert plan.warmup_steps_for(0.1, 0.1, 1000) == 0
    assert plan.warmup_steps_for(0.05, 0.1, 1000) == 0
    assert plan.warmup_steps_for(0.4, 0.1, math.inf) == 0
    mild, strong, huge = (plan.warmup_steps_for(r * 0.1, 0.1, 1000) for r in (2, 16, 1024))
    assert 0 < mild < strong
    assert strong == huge == math.ceil(0.05 * 1000)  # capped at the fraction of predicted steps


@pytest.mark.parametrize("ceiling", [1, 3, 7, 32, 100, 1000])
@pytest.mark.parametrize("batch_size", [1, 2, 17, 64, 96, 97, 1000, 4096])
def test_split_for_memory_fits_and_multiplies_back(batch_size: int, ceiling: int) -> None:
    micro, accumulation = plan.split_for_memory(batch_size, ceiling)
    assert micro <= ceiling
    assert micro * accumulation == batch_size
    if batch_size <= ceiling:
        assert (micro, accumulation) == (batch_size, 1)
    else:
        # As few accumulation steps as an exact split allows.
        assert all(batch_size % a or batch_size // a > ceiling for a in range(1, accumulation))


def test_split_for_memory_refuses_a_non_positive_ceiling() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be positive"):
        plan.split_for_memory(64, 0)


def _candidate(batch_size: int, seconds: float) -> plan.Candidate:
    return plan.Candidate(batch_size, batch_size, 1, 0.1, 0, 100.0, seconds / 100, seconds, True)


def test_choose_picks_the_smallest_within_tolerance() -> None:
    candidates = [_candidate(16, 10.5), _candidate(64, 10.2), _candidate(256, 10.0), _candidate(1024, 12.0)]
    assert plan.choose(candidates, tolerance=0.03).batch_size == 64
    assert plan.choose(candidates, tolerance=0.06).batch_size == 16
    assert plan.choose(candidates, tolerance=0.0).batch_size == 256
    assert plan.choose(list(reversed(candidates)), tolerance=0.03).batch_size == 64


def test_choose_refuses_no_candidates() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        plan.choose([])


def test_plan_candidates_accumulates_beyond_the_ceiling() -> None:
    candidates = plan.plan_candidates(
        [256, 32, 64, 32], s_min=100, b_noise=50, step_seconds=lambda b: 0.001 * b,
        max_batch_size=64, base_batch_size=32, base_lr=0.1, scaling="linear",
    )
    assert [c.batch_size for c in candidates] == [32, 64, 256]  # sorted, deduplicated
    big = candidates[-1]
    assert (big.micro_batch_size, big.accumulation_steps, big.fits_memory) == (64, 4, False)
    assert big.step_seconds == pytest.approx(4 * 0.001 * 64)
    assert big.predicted_steps == pytest.approx(100 * (1 + 50 / 256))
    assert big.predicted_seconds == pytest.approx(big.predicted_steps * big.step_seconds)
    assert candidates[0].lr == pytest.approx(0.1)
    assert candidates[0].warmup_steps == 0 and big.warmup_steps > 0


def test_synthetic_optimum_matches_brute_force() -> None:
    """T(B) = S_min(1 + B_noise/B)·(a + c·B) has its minimum at B* = sqrt(B_noise·a/c)."""
    s_min, b_noise = 2_000.0, 400.0
    overhead_seconds, per_sample_seconds = 0.004, 0.00001  # B* = sqrt(400 · 400) = 400

    def step_seconds(batch_size: int) -> float:
        return overhead_seconds + per_sample_seconds * batch_size

    grid = list(range(1, 8193))
    candidates = plan.plan_candidates(
        grid, s_min=s_min, b_noise=b_noise, step_seconds=step_seconds, max_batch_size=10**6,
        base_batch_size=32, base_lr=0.1, scaling="linear",
    )
    times = {b: s_min * (1 + b_noise / b) * step_seconds(b) for b in grid}
    fastest = min(grid, key=times.__getitem__)
    assert fastest == 400
    assert plan.choose(candidates, tolerance=0.0).batch_size == fastest
    tolerant = plan.choose(candidates, tolerance=0.03)
    smallest_near = min(b for b in grid if times[b] <= times[fastest] * 1.03)
    assert tolerant.batch_size == smallest_near
    assert smallest_near < fastest


def test_power_of_two_grid() -> None:
    assert plan.power_of_two_grid(16, 256) == [16, 32, 64, 128, 256]
    assert plan.power_of_two_grid(10, 100) == [16, 32, 64, 100]
    assert plan.power_of_two_grid(1, 1) == [1]
    with pytest.raises(ValueError):
        plan.power_of_two_grid(0, 8)


def test_lr_calibration_grows_geometrically_from_the_base_to_the_race_batch() -> None:
    calibration = plan.LrCalibration(base_batch_size=32, batch_size=512, factor=4.0)
    assert calibration(16) == 1.0 and calibration(32) == 1.0
    assert calibration(128) == pytest.approx(2.0)  # halfway in log B: √4
    assert calibration(512) == 4.0 and calibration(4096) == 4.0


def test_lr_calibration_keeps_the_lr_below_one_that_diverged() -> None:
    calibration = plan.LrCalibration(32, 256, factor=2.0, diverged_lr=3.2)
    assert calibration.apply(256, 0.5) == pytest.approx(1.0)
    assert calibration.apply(1024, 4.0) == pytest.approx(1.6)  # 8.0 would exceed 3.2 / 2
    candidates = plan.plan_candidates(
        [32, 256, 1024], s_min=100, b_noise=1e6, step_seconds=lambda b: 0.01, max_batch_size=4096,
        base_batch_size=32, base_lr=0.2, scaling="linear", lr_calibration=calibration,
    )
    assert [c.lr for c in candidates] == pytest.approx([0.2, 1.6, 1.6])


def test_lr_noise_shift_lowers_the_lr_as_the_noise_scale_grows() -> None:
    assert plan.lr_noise_shift(32, 100, 100) == 1.0
    assert plan.lr_noise_shift(32, 32, 288) == pytest.approx(0.2)  # (1 + 1) / (1 + 9)
    assert plan.lr_noise_shift(32, 288, 32) == pytest.approx(5.0)  # and back up
    # Far above the noise scale the batch is noise-free: the noise barely moves the best lr.
    assert plan.lr_noise_shift(1e6, 32, 288) == pytest.approx(1.0, rel=1e-3)


def test_lr_noise_shift_is_not_square_rooted_for_adam_like_optimisers() -> None:
    # Across batch sizes Adam's lr scales with the square root of the SGD ratio; along one run
    # its second-moment average is nearly fixed, so the shift is the SGD ratio for both.
    shift = plan.lr_noise_shift(32, 32, 288)
    across_batches = plan.scaled_lr(288, 32, 1.0, "sqrt") / plan.scaled_lr(288, 32, 1.0, "linear")
    assert shift == pytest.approx(0.2) and across_batches == pytest.approx(1 / 3)


def test_a_warmup_never_outgrows_the_training_budget() -> None:
    candidates = plan.plan_candidates([64], s_min=1e9, b_noise=10.0, step_seconds=lambda b: 0.01,
                                      max_batch_size=64, base_batch_size=32, base_lr=0.1, scaling="linear",
                                      sample_budget=64_000)
    assert candidates[0].predicted_steps > 1e9  # the plan says "far beyond the budget" ...
    assert 0 < candidates[0].warmup_steps <= 0.05 * 64_000 / 64  # ... the warmup stays within it
