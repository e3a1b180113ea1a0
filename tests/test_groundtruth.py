"""The ground-truth benchmark: regret arithmetic, the peer strategies' searches, the summary, and a
tiny end-to-end run (2 batch sizes × 2 learning rates × 2 seeds on a test-local task)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import groundtruth  # noqa: E402
import gt_regret  # noqa: E402
import gt_strategies  # noqa: E402
import summarize  # noqa: E402
from gt_regret import Trial  # noqa: E402


def trial(batch: int, lr: float, seed: int, steps: int | None, step_seconds: float, **kw) -> Trial:
    return Trial(batch_size=batch, lr=lr, seed=seed, reached_target=steps is not None,
                 steps_to_target=steps, measured_seconds_to_target=None,
                 trial_step_seconds=step_seconds, **kw)


# -- arithmetic -------------------------------------------------------------------------------------


def test_accumulation_is_charged_per_micro_batch_step() -> None:
    accumulated = trial(64, 0.1, 0, 10, 0.5, accumulation_steps=4)
    assert gt_regret.time_to_target(accumulated, {16: 0.01, 64: 0.03}) == pytest.approx(10 * 4 * 0.01)
    assert gt_regret.time_to_target(accumulated, {64: 0.03}) == pytest.approx(10 * 0.5)


def test_time_to_target_uses_pooled_median_step_time_not_the_trials_own_clock() -> None:
    trials = [trial(32, 0.1, 0, 100, 0.010), trial(32, 0.2, 0, 50, 0.030), trial(32, 0.1, 1, 80, 0.011)]
    pooled = gt_regret.step_seconds_by_batch(trials)
    assert pooled == {32: pytest.approx(0.011)}
    # The slow-clock trial is charged the pooled step time, not its own 30 ms.
    assert gt_regret.time_to_target(trials[1], pooled) == pytest.approx(50 * 0.011)


def test_unreached_trial_is_infinitely_slow_and_poisons_a_two_seed_median() -> None:
    pooled = {64: 0.02}
    assert math.isinf(gt_regret.time_to_target(trial(64, 0.1, 0, None, 0.02), pooled))
    assert math.isinf(gt_regret.median_time([1.0, math.inf]))
    assert gt_regret.median_time([1.0, 3.0, math.inf]) == 3.0
    assert gt_regret.median_time([2.0, 4.0]) == 3.0


def test_best_config_is_the_smallest_median_over_seeds() -> None:
    trials = [
        # B=32: seed times 1.0 and 5.0 -> median 3.0
        trial(32, 0.1, 0, 100, 0.01), trial(32, 0.1, 1, 500, 0.01),
        # B=64: 2.4 and 2.6 -> median 2.5 (best, although B=32 has the single fastest run)
        trial(64, 0.2, 0, 120, 0.02), trial(64, 0.2, 1, 130, 0.02),
        # B=128: one seed never reached -> inf
        trial(128, 0.4, 0, 10, 0.04), trial(128, 0.4, 1, None, 0.04),
    ]
    pooled = gt_regret.step_seconds_by_batch(trials)
    summaries = gt_regret.summarise_configs(trials, pooled)
    best = gt_regret.best_config(summaries)
    assert best is not None and (best.batch_size, best.lr) == (64, 0.2)
    assert best.seconds_to_target == pytest.approx(2.5)
    assert math.isinf(next(s for s in summaries if s.batch_size == 128).seconds_to_target)


def test_regret_and_decision_cost_are_ratios_to_the_best_time() -> None:
    assert gt_regret.regret(5.5, 5.0) == pytest.approx(1.1)
    assert gt_regret.decision_cost(0.5, 5.0) == pytest.approx(0.1)
    assert math.isinf(gt_regret.regret(math.inf, 5.0))
    with pytest.raises(ValueError):
        gt_regret.regret(1.0, 0.0)


def test_censored_runs_give_a_lower_bound_but_diverged_ones_do_not() -> None:
    pooled = {32: 0.01}
    cut = [trial(32, 0.1, 0, None, 0.01, censored=True, steps_run=900),
           trial(32, 0.1, 1, None, 0.01, censored=True, steps_run=1100)]
    assert gt_regret.censored_lower_bound(cut, pooled, 2.0) == pytest.approx(5.0)
    diverged = [trial(32, 0.1, 0, None, 0.01, diverged=True, train_seconds=1.0)]
    assert gt_regret.censored_lower_bound(diverged, pooled, 2.0) is None


def test_config_key_merges_float_noise_but_not_warmup() -> None:
    assert gt_regret.config_key(32, 0.1 * 3) == gt_regret.config_key(32, 0.3)
    assert gt_regret.config_key(32, 0.3, warmup_steps=5) != gt_regret.config_key(32, 0.3)


def test_trial_round_trips_through_json_with_extras() -> None:
    original = trial(16, 0.05, 2, 40, 0.003, censored=True, train_seconds=1.5, final_metric=0.9,
                     extras={"lr_multiplier": 0.5})
    loaded = Trial.from_dict(json.loads(json.dumps(original.to_dict())))
    assert loaded == original


def test_a_slow_decision_pays_off_from_the_training_length_where_the_lines_cross() -> None:
    ours = gt_regret.strategy_totals("batchsage", 1.2, None, 40.0, 4.0)
    instant = gt_regret.strategy_totals("default32", 2.0, None, 0.0, 0.0)
    crossing = gt_regret.lead(ours, instant)
    assert crossing.low == pytest.approx(50.0) and math.isinf(crossing.high)  # 40 + 1.2 T = 2 T
    better_and_free = gt_regret.strategy_totals("max_throughput", 1.1, None, 1.0, 0.1)
    assert gt_regret.lead(ours, better_and_free).never
    assert gt_regret.lead(ours, None) == gt_regret.Lead()  # the other never reaches the target


def test_a_sweep_decision_grows_with_the_training_and_a_cut_rival_gives_a_bound() -> None:
    ours = gt_regret.strategy_totals("batchsage", 1.2, None, 40.0, 4.0)
    sweep = gt_regret.strategy_totals("doubling", 1.0, None, 300.0, 10.0)
    assert sweep == gt_regret.Totals(0.0, 11.0)  # its 300 s are 10 × this task's best time
    assert gt_regret.lead(ours, sweep).low == pytest.approx(40.0 / 9.8)
    cut = gt_regret.strategy_totals("memory_ceiling", None, 3.2, 5.0, 0.5)
    assert gt_regret.lead(ours, cut).low_is_upper_bound
    cut_but_fast = gt_regret.strategy_totals("memory_ceiling", None, 1.1, 5.0, 0.5)
    assert gt_regret.lead(ours, cut_but_fast).unknown
    assert gt_regret.strategy_totals("memory_ceiling", None, None, 5.0, 0.5) is None


def test_ahead_of_all_is_the_intersection_of_the_leads() -> None:
    faster_decider = gt_regret.lead(gt_regret.Totals(10.0, 1.5), gt_regret.Totals(60.0, 1.0))
    assert faster_decider.low == 0.0 and faster_decider.high == pytest.approx(100.0)
    both = gt_regret.lead_over_all([faster_decider, gt_regret.Lead(low=30.0)])
    assert (both.low, both.high) == (30.0, pytest.approx(100.0))
    assert gt_regret.lead_over_all([faster_decider, gt_regret.Lead(low=300.0)]).never


# -- peer strategies ---------------------------------------------------------------------------------


def test_lightning_search_doubles_then_bisects_between_last_fit_and_first_failure() -> None:
    ran: list[int] = []
    chosen, tried = gt_strategies.lightning_search(10_000, lambda b: b <= 100, ran.append)
    assert chosen == 100
    assert tried[:8] == [2, 4, 8, 16, 32, 64, 128, 96]
    assert all(b <= 100 for b in ran) and 128 not in ran  # a batch that does not fit is never run


def test_lightning_search_stops_at_the_training_set_size() -> None:
    chosen, tried = gt_strategies.lightning_search(1000, lambda b: True, lambda b: None)
    assert chosen == 1000 and tried[-2:] == [512, 1000]


def test_ludwig_search_keeps_the_fastest_and_stops_at_the_first_drop() -> None:
    rates = {2: 10.0, 4: 30.0, 8: 50.0, 16: 45.0, 32: 90.0}
    chosen, points = gt_strategies.ludwig_search(10_000, lambda b: True, rates.__getitem__)
    assert chosen == 8
    assert [p["batch_size"] for p in points] == [2, 4, 8, 16]  # 32 is never timed


def test_ludwig_search_stays_below_a_fifth_of_the_data_and_the_ceiling() -> None:
    chosen, points = gt_strategies.ludwig_search(1000, lambda b: b <= 4096, float)
    assert chosen == 128 and max(p["batch_size"] for p in points) == 128
    chosen, _ = gt_strategies.ludwig_search(10**6, lambda b: b <= 64, float)
    assert chosen == 64


def test_memory_ceiling_and_throughput_strategies_run_real_steps(tiny_task) -> None:
    ceiling = gt_strategies.choose_memory_ceiling(tiny_task, lambda b: b <= 200)
    assert ceiling.batch_size == 200 and ceiling.decision_seconds > 0
    assert ceiling.lr == pytest.approx(tiny_task.base_lr * 200 / tiny_task.base_batch_size)
    fastest = gt_strategies.choose_max_throughput(tiny_task, lambda b: b <= 64)
    assert fastest.batch_size in {2, 4, 8, 16, 32, 64}
    assert fastest.lr == pytest.approx(tiny_task.base_lr * fastest.batch_size / tiny_task.base_batch_size)
    assert fastest.details["points"][0]["batch_size"] == 2


# -- grid construction --------------------------------------------------------------------------------


def test_grid_configs_scale_lr_by_rule_and_add_strategy_points_once(tiny_task) -> None:
    sizes = groundtruth.grid_batch_sizes(tiny_task, ceiling=100, min_batch_size=16)
    assert sizes == [16, 32, 64]
    configs = groundtruth.grid_configs(tiny_task, sizes, (0.5, 1.0), [(32, 0.2), (100, 0.7)])
    assert (32, pytest.approx(0.2), 1.0) in configs  # base lr 0.1 at B=16, linear rule → 0.2 at 32
    assert [c for c in configs if c[2] is None] == [(100, 0.7, None)]
    assert len(configs) == 3 * 2 + 1


# -- summary -----------------------------------------------------------------------------------------


def _document(task: str = "toy") -> dict:
    grid = []
    for batch, step in ((16, 0.01), (32, 0.012)):
        for multiplier, steps in ((0.5, 400), (1.0, 200)):
            for seed in (0, 1):
                grid.append({"batch_size": batch, "lr": 0.1 * multiplier * batch / 16, "seed": seed,
                             "reached_target": True, "steps_to_target": steps // (batch // 16),
                             "seconds_to_target": steps // (batch // 16) * step, "step_seconds": step,
                             "lr_multiplier": multiplier})
    strategy = {"batch_size": 32, "lr": 0.2, "seconds_to_target": 1.2, "regret": 1.0,
                "regret_at_least": None, "decision_seconds": 0.3, "decision_cost": 0.25}
    slow = dict(strategy, batch_size=16, lr=0.1, seconds_to_target=2.0, regret=2.0 / 1.2,
                decision_seconds=0.0, decision_cost=0.0)
    cut = dict(strategy, batch_size=1000, seconds_to_target=None, regret=None, regret_at_least=3.4)
    return {"task": task, "status": "complete", "date": "2025-01-02T03:04:05+00:00", "decisions": {},
            "machine": {"cpu_count": 2, "torch": "2.13.0"}, "grid": grid,
            "best": {"batch_size": 32, "lr": 0.2, "seconds_to_target": 1.2},
            "strategies": {"batchsage": strategy, "default32": slow, "memory_ceiling": cut},
            "goal": {"regret_ok": True, "decision_cost_ok": False, "beats_every_strategy": True}}


def test_summary_table_has_one_row_per_task_and_the_numbers(tmp_path: Path) -> None:
    for name in ("b-task", "a-task"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_document(name)))
    repeated = dict(_document("c-task"), best_heldout={"ratio_to_grid_best": 1.13},
                    batchsage_decisions={"decisions": [
                        {"batch_size": 32, "lr": 0.2, "regret": 1.0},
                        {"batch_size": 64, "lr": 0.4, "regret": None}],
                        "median_regret": None, "worst_regret": None, "median_decision_seconds": 0.3})
    # A top-up run of a grid point (more seeds, no lr multiplier of its own) joins its median.
    repeated["grid"] = [*repeated["grid"], dict(repeated["grid"][0], seed=2, lr_multiplier=None)]
    (tmp_path / "c-task.json").write_text(json.dumps(repeated))
    (tmp_path / "notes.json").write_text("[]")  # not a result: ignored
    assert summarize.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| a-task") and rows[2].startswith("| b-task")
    assert "1.00 / 0.25 (B=32)" in rows[1]
    assert "1.67 / 0.00 (B=16)" in rows[1]
    assert "≥ 3.4" in rows[1]
    assert "no: cost ≤ 0.10" in rows[1] and "2025-01-02" in rows[1]
    assert "| 1.13× |" in rows[3] and "| – |" in rows[1]  # the best on fresh seeds, where measured
    # batchsage (1.0, 0.3 s) against default32 (1.67, 0 s): ahead once T ≥ 0.3 / 0.67 s.
    payoff = [row for row in rows if row.startswith("| a-task | 1.00, 0 s")]
    assert payoff and "from 0.45 s (0.4×)" in payoff[0] and "| always |" in payoff[0]
    spread = [row for row in rows if row.startswith("| c-task | 2 |")]
    assert spread and "B=64 lr=0.4: not reached" in spread[0] and "| not reached | not reached |" in spread[0]
    assert (tmp_path / "a-task.png").stat().st_size > 1000


# -- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_groundtruth_smoke_run_on_a_tiny_task_2x2_grid(tiny_task, tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    settings = groundtruth.Settings(
        seeds=2, min_batch_size=16, max_batch_size=32, lr_multipliers=(0.5, 1.0),
        recommend_budget_seconds=2.0, strategies=("default32", "max_throughput"), progress=False,
        storage_dir=tmp_path,
    )
    document = groundtruth.run_groundtruth(tiny_task, out, settings)
    saved = json.loads(out.read_text())
    assert saved["status"] == "complete" and saved["task"] == "tiny"
    assert {(r["batch_size"], r["lr_multiplier"]) for r in saved["grid"]} >= {
        (16, 0.5), (16, 1.0), (32, 0.5), (32, 1.0)}
    assert {r["seed"] for r in saved["grid"]} == {0, 1}
    best = document["best"]
    grid_medians = [c["seconds_to_target"] for c in saved["configs"] if c["seconds_to_target"]]
    assert best["seconds_to_target"] == pytest.approx(min(grid_medians))
    for name in ("default32", "max_throughput"):
        result = saved["strategies"][name]
        if result["seconds_to_target"] is not None:
            assert result["regret"] == pytest.approx(result["seconds_to_target"] / best["seconds_to_target"])
            assert result["regret"] >= 1.0 - 1e-9 or not result["reused_grid_trials"]
        assert result["decision_cost"] == pytest.approx(
            result["decision_seconds"] / best["seconds_to_target"])
    assert saved["strategies"]["default32"]["decision_seconds"] == 0.0
    # The best is re-trained on seeds the grid never used, and its ratio to the grid time kept.
    heldout = saved["best_heldout"]
    assert heldout["seeds"] == [2, 3] and (heldout["batch_size"], heldout["lr"]) == (best["batch_size"],
                                                                                      best["lr"])
    if heldout["seconds_to_target"] is not None:
        assert heldout["ratio_to_grid_best"] == pytest.approx(
            heldout["seconds_to_target"] / best["seconds_to_target"])
    # Resuming a finished run starts over only when asked; the rows keep their fields.
    assert set(saved["grid"][0]) >= {"batch_size", "lr", "seed", "reached_target", "seconds_to_target",
                                     "steps_to_target", "step_seconds"}


def test_diagnosis_compares_predicted_step_time_steps_and_lr_with_the_grid() -> None:
    trials = [trial(16, 0.1, s, 200, 0.01) for s in (0, 1)] + [
        trial(16, 0.2, s, 100, 0.01) for s in (0, 1)] + [
        trial(32, 0.2, s, 100, 0.02) for s in (0, 1)] + [trial(32, 0.4, s, None, 0.02) for s in (0, 1)]
    pooled = gt_regret.step_seconds_by_batch(trials)
    recommendation = {"candidates": [
        # Right step time, steps predicted 2× too many, lr half the best one.
        {"batch_size": 16, "accumulation_steps": 1, "step_seconds": 0.01, "predicted_steps": 200,
         "lr": 0.1, "predicted_seconds": 2.0},
        # Step time predicted 2× too slow, steps and lr right.
        {"batch_size": 32, "accumulation_steps": 1, "step_seconds": 0.04, "predicted_steps": 100,
         "lr": 0.2, "predicted_seconds": 4.0},
        {"batch_size": 64, "accumulation_steps": 1, "step_seconds": 0.05, "predicted_steps": 90,
         "lr": 0.4, "predicted_seconds": 4.5},  # not in the grid: skipped
    ]}
    report = groundtruth.diagnose(recommendation, trials, pooled)
    rows = {row["batch_size"]: row for row in report["per_batch"]}
    assert set(rows) == {16, 32}
    assert rows[16]["best_lr"] == pytest.approx(0.2) and rows[16]["measured_steps_at_best_lr"] == 100
    summary = report["summary"]
    assert summary["step_seconds_log2_error"] == pytest.approx(0.5)  # median of |log2| 0 and 1
    assert summary["steps_log2_error"] == pytest.approx(0.5)
    # Relative to the measured best (B=16): predicted S(32)/S(16) = 0.5, measured 1.0 -> off by 2x.
    assert summary["steps_shape_log2_error"] == pytest.approx(1.0)
    assert summary["lr_log2_error"] == pytest.approx(0.5)
    assert summary["predicted_best_batch_size"] == 16 and summary["measured_best_batch_size"] == 16


def test_command_line_errors_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.json"
    assert groundtruth.main(["--task", "no-such-task", "--out", str(out)]) == 2
    assert groundtruth.main(["--task", "linreg", "--strategies", "oracle", "--out", str(out)]) == 2
    assert "unknown strategies" in capsys.readouterr().out
    assert not out.exists()


def test_a_trial_cut_by_the_clock_but_not_by_its_steps_is_rerun(tiny_task, tmp_path: Path) -> None:
    from rich.console import Console

    settings = groundtruth.Settings(censor_factor=3.0, progress=False)
    state = groundtruth.State.load(tmp_path / "r.json")
    early = trial(16, 0.1, 0, None, 0.01, censored=True, steps_run=2)     # 2 × 0.01 s ≪ 3 × 1 s
    hopeless = trial(16, 0.05, 0, None, 0.01, censored=True, steps_run=900)  # 9 s > 3 × 1 s
    checked = groundtruth.recheck_censored(tiny_task, [early, hopeless], {16: 0.01}, 1.0, settings,
                                           state, Console(quiet=True))
    assert checked[1] is hopeless
    assert checked[0].source == "recheck" and checked[0].reached_target
    assert [r.key for r in state.rechecks()] == [early.key]
    again = groundtruth.recheck_censored(tiny_task, [early], {16: 0.01}, 1.0, settings, state,
                                         Console(quiet=True))
    assert len(state.rechecks()) == 1 and again[0].steps_to_target == checked[0].steps_to_target
    # 150 steps × 0.01 s = 1.5 s: cannot beat the best (1 s), so only re-run if a strategy chose it.
    slow = trial(16, 0.2, 0, None, 0.01, censored=True, steps_run=150)
    kept = groundtruth.recheck_censored(tiny_task, [slow], {16: 0.01}, 1.0, settings, state,
                                        Console(quiet=True))
    assert kept[0] is slow
    chosen = groundtruth.recheck_censored(tiny_task, [slow], {16: 0.01}, 1.0, settings, state,
                                          Console(quiet=True), {slow.key})
    assert chosen[0].source == "recheck"


def test_lr_range_is_widened_only_where_a_near_best_batch_peaks_at_its_edge(tiny_task) -> None:
    sizes = [16, 32, 64]
    configs = groundtruth.grid_configs(tiny_task, sizes, (0.5, 1.0, 2.0), [])
    steps = {(16, 0.5): 300, (16, 1.0): 200, (16, 2.0): 100,   # fastest at the top edge
             (32, 0.5): 150, (32, 1.0): 60, (32, 2.0): 90,     # bracketed
             (64, 0.5): 900, (64, 1.0): 950, (64, 2.0): 990}   # at the low edge but far slower
    trials = [trial(b, lr, seed, steps[(b, m)], 0.01) for b, lr, m in configs for seed in (0, 1)]
    extra = groundtruth.lr_bracket_extension(tiny_task, trials, configs)
    assert extra == [(16, pytest.approx(0.4), 4.0)]


def test_redecide_discards_only_the_named_saved_decision(tmp_path: Path) -> None:
    from rich.console import Console

    _, settings = groundtruth.parse_args(["--task", "linreg", "--out", str(tmp_path / "r.json"),
                                          "--redecide", "default32"])
    assert settings.redecide == ("default32",)
    state = groundtruth.State(tmp_path / "r.json")
    saved = {"batch_size": 64, "lr": 0.5, "accumulation_steps": 1, "warmup_steps": 0,
             "decision_seconds": 1.0, "details": {}}
    state.decisions.update({"ceiling": {"max_batch_size": 1024},
                            "choices": {"default32": dict(saved), "doubling": dict(saved)}})
    settings.strategies = ("default32",)
    choices = groundtruth.make_decisions(groundtruth.load_task("linreg"), settings, state,
                                         Console(file=None, quiet=True))
    assert choices["default32"].batch_size == 32  # decided again: the constant default
    assert state.decisions["choices"]["doubling"]["batch_size"] == 64  # kept


def test_redecide_rejects_an_unknown_strategy(tmp_path: Path) -> None:
    with pytest.raises(groundtruth.ConfigError, match="unknown strategies"):
        groundtruth.parse_args(["--task", "linreg", "--out", str(tmp_path / "r.json"), "--redecide", "x"])


def test_repeated_decisions_are_saved_resumed_and_summarised(tiny_task, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    made: list[int] = []

    def decide(task: object, **kwargs: object) -> tuple[gt_strategies.Choice, None]:
        made.append(1)
        return gt_strategies.Choice("batchsage", 16, 0.05 * len(made), decision_seconds=2.0), None

    monkeypatch.setattr(gt_strategies, "choose_batchsage", decide)
    monkeypatch.setattr(groundtruth, "strategy_trials", lambda choice, *args: (
        [trial(choice.batch_size, choice.lr, seed, round(100 / choice.lr), 0.01) for seed in (0, 1)], False))
    path = tmp_path / "r.json"
    state = groundtruth.State(path, {"decisions": {}})
    settings = groundtruth.Settings(repeat_decisions=2, strategies=("batchsage",), progress=False)
    quiet = Console(file=None, quiet=True)
    step_seconds = {16: 0.01}
    repeats = groundtruth.repeated_decisions(tiny_task, [], state, [0, 1], settings, step_seconds, 10.0,
                                             quiet)
    assert len(made) == 2 and [r["lr"] for r in repeats] == pytest.approx([0.05, 0.1])
    again = groundtruth.repeated_decisions(tiny_task, [], groundtruth.State.load(path), [0, 1], settings,
                                           step_seconds, 10.0, quiet)
    assert len(made) == 2 and again == repeats  # resumed from the saved decisions, none re-made
    first = dict(repeats[1], regret=None)  # a first decision that never reached the target
    spread = groundtruth.decision_spread(first, repeats)
    assert spread is not None and len(spread["decisions"]) == 3
    assert spread["worst_regret"] is None  # never reached
    assert spread["median_regret"] == pytest.approx(max(r["regret"] for r in repeats))
    assert groundtruth.decision_spread(first, []) is None


def test_step_times_are_fixed_once_a_run_completed() -> None:
    pooled = {32: 0.035, 64: 0.048, 128: 0.1}
    assert groundtruth.frozen_step_seconds({}, pooled) == pooled  # first completion: pooled
    completed = {"step_seconds_by_batch": {"32": 0.032, "64": 0.048}}
    assert groundtruth.frozen_step_seconds(completed, pooled) == {32: 0.032, 64: 0.048, 128: 0.1}


@pytest.mark.slow
def test_top_up_trains_the_near_best_and_the_picks_on_more_seeds(tiny_task, tmp_path: Path) -> None:
    settings = groundtruth.Settings(
        seeds=2, min_batch_size=16, max_batch_size=32, lr_multipliers=(0.5, 1.0),
        strategies=("default32",), progress=False, storage_dir=tmp_path, top_up_seeds=1,
        top_up_within=1.3, heldout_seeds=1,
    )
    saved = groundtruth.run_groundtruth(tiny_task, tmp_path / "tiny.json", settings)
    best = saved["best"]
    # The best is near itself: topped up on seed 2, as is every topped-up configuration.
    best_config = next(c for c in saved["configs"]
                       if c["batch_size"] == best["batch_size"] and c["lr"] == pytest.approx(best["lr"]))
    assert best_config["seeds"] == 3
    topped = {(r["batch_size"], r["lr"]) for r in saved["grid"] if r["source"] == "top-up"}
    assert all(c["seeds"] == 3 for c in saved["configs"] if (c["batch_size"], c["lr"]) in topped)
    assert {r["seed"] for r in saved["grid"] if r["source"] == "top-up"} == {2}
    assert saved["strategies"]["default32"]["runs"] == 3  # the pick on the same three seeds
    assert saved["best_heldout"]["seeds"] == [3]  # fresh: after the top-up seed
    assert saved["protocol"]["top_up_seeds"] == [2]


def test_summary_orders_and_reports_the_task_groups_apart() -> None:
    def document(task: str, regret: float) -> dict:
        return {"task": task, "strategies": {"batchsage": {"regret": regret}}}

    documents = [document("charlm", 1.2), document("linreg", 1.0), document("doclm", 1.5)]
    line = summarize._regret_line(documents)
    assert line == ("batchsage on the development tasks: median regret 1.10, worst 1.20 over 2 task(s); "
                    "on the evaluation tasks (never tuned on): median regret 1.50, worst 1.50 "
                    "over 1 task(s).")
    single = summarize._regret_line(documents[:2])
    assert single == "batchsage: median regret 1.10, worst 1.20 over 2 task(s)."
    assert summarize.group_of("my-task") == "other"
