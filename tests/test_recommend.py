"""End-to-end: ``recommend`` on a small task, through the API and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_tasks
import torch
from sklearn.datasets import make_classification
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from batchsage import Task, plan
from batchsage.cli import app
from batchsage.decide import SCHEMA_VERSION, PilotRun, Recommendation, recommend
from batchsage.decide.calibrate import NOISE_FROM_GROWTH
from batchsage.decide.explain import explain, pilot_coverage, unresolved_base_race
from batchsage.errors import ConfigError


def noisy_classification_task(**overrides: Any) -> Task:
    """Overlapping classes: the target needs a few thousand samples, so the batch size matters."""
    x, y = make_classification(
        n_samples=6000, n_features=20, n_informative=10, n_classes=4, class_sep=1.0, flip_y=0.05,
        random_state=0,
    )
    x = x.astype(np.float32)
    train = TensorDataset(torch.from_numpy(x[:5000]), torch.from_numpy(y[:5000]))
    val = TensorDataset(torch.from_numpy(x[5000:]), torch.from_numpy(y[5000:]))
    fields: dict[str, Any] = {
        "name": "noisy-clf",
        "make_model": lambda: nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4)),
        "train_data": train,
        "val_data": val,
        "loss_fn": tiny_tasks.cross_entropy,
        "make_optimizer": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
        "metric_fn": tiny_tasks.accuracy,
        "target": 0.80,
        "higher_is_better": True,
        "base_batch_size": 32,
        "base_lr": 0.01,
        "max_samples": 300_000,
        "metric_name": "accuracy",
        "eval_every_samples": 1024,
    }
    fields.update(overrides)
    return Task(**fields)


@pytest.fixture(scope="module")
def recommendation() -> Recommendation:
    return recommend(noisy_classification_task(), budget_seconds=8.0, progress=False)


def test_recommendation_is_a_candidate_with_consistent_numbers(recommendation: Recommendation) -> None:
    rec = recommendation.recommended
    chosen = recommendation.candidate(rec["batch_size"])
    assert chosen is not None
    assert rec["micro_batch_size"] * rec["accumulation_steps"] == rec["batch_size"]
    assert rec["lr"] > 0 and rec["warmup_steps"] >= 0
    best = min(c.predicted_seconds for c in recommendation.candidates)
    assert chosen.predicted_seconds <= best * 1.03 + 1e-12
    for candidate in recommendation.candidates:
        predicted = candidate.predicted_steps * candidate.step_seconds
        assert candidate.predicted_seconds == pytest.approx(predicted)
        assert candidate.fits_memory == (candidate.batch_size <= recommendation.memory["max_batch_size"])
    assert math.isfinite(recommendation.b_noise) and recommendation.b_noise >= 0
    assert recommendation.decision_seconds > 0
    assert recommendation.explanation.startswith(f"Recommended batch size {rec['batch_size']}")


def test_document_has_the_issue_keys(recommendation: Recommendation) -> None:
    document = json.loads(json.dumps(recommendation.to_dict()))
    required = {"task", "device", "recommended", "candidates", "noise_scale", "memory", "decision_seconds"}
    assert required <= set(document)
    assert {"batch_size", "micro_batch_size", "accumulation_steps", "lr", "warmup_steps"} <= set(
        document["recommended"]
    )
    assert {"batch_size", "lr", "predicted_steps", "step_seconds", "predicted_seconds", "fits_memory"} <= set(
        document["candidates"][0]
    )
    assert document["budget_seconds"] == 8.0  # what the decision was sized with


def test_the_answer_is_typed_attributes_and_at_most_five_reasons(recommendation: Recommendation) -> None:
    rec = recommendation
    assert isinstance(rec.batch_size, int) and isinstance(rec.accumulation_steps, int)
    assert rec.micro_batch_size * rec.accumulation_steps == rec.batch_size
    assert rec.lr == rec.recommended["lr"] and rec.warmup_steps == rec.recommended["warmup_steps"]
    assert rec.model_seconds == rec.candidate(rec.batch_size).predicted_seconds  # type: ignore[union-attr]
    # The printed prediction is the model's calibrated on the ground truth, inside its interval.
    assert rec.predicted_interval is not None and rec.interval_basis
    assert rec.predicted_interval[0] <= rec.predicted_seconds <= rec.predicted_interval[1]
    assert 1 <= len(rec.why) <= 5 and all(len(line) < 160 for line in rec.why)
    assert rec.device == "cpu"  # "auto" resolved, and recorded


def test_save_and_load_round_trip(recommendation: Recommendation, tmp_path: Path) -> None:
    path = recommendation.save(tmp_path / "rec.json")
    loaded = Recommendation.load(path)
    assert json.loads(loaded.save(tmp_path / "again.json").read_text()) == json.loads(path.read_text())
    assert (loaded.batch_size, loaded.lr, loaded.warmup_steps) == (
        recommendation.batch_size, recommendation.lr, recommendation.warmup_steps)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    recommendation.save(tmp_path / "recommendation.json")
    assert Recommendation.load(tmp_path).batch_size == recommendation.batch_size  # an --out directory


def test_load_reads_version_1_documents_and_refuses_newer_or_broken_ones(
        recommendation: Recommendation, tmp_path: Path) -> None:
    old = recommendation.to_dict()
    for key in ("schema_version", "why", "steps_at_pilot"):
        old.pop(key)
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert Recommendation.load(tmp_path / "v1.json").batch_size == recommendation.batch_size
    newer = {**recommendation.to_dict(), "schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "v9.json").write_text(json.dumps(newer))
    with pytest.raises(ConfigError, match="newer"):
        Recommendation.load(tmp_path / "v9.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        Recommendation.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        Recommendation.load(tmp_path / "missing.json")


def test_pilot_coverage_is_the_share_of_the_way_to_the_target(recommendation: Recommendation) -> None:
    def with_pilot(metrics: list[float], higher_is_better: bool, target: float) -> Recommendation:
        history = [{"step": 4 * (i + 1), "metric": m} for i, m in enumerate(metrics)]
        pilot = PilotRun(32, 0.1, 4 * len(metrics), 1.0, 1.0, False, history)
        return dataclasses.replace(recommendation, pilots=[pilot], higher_is_better=higher_is_better,
                                   target=target)

    # a loss from 3.0 down to 2.0 (best 1.9 on the way) toward 1.0: 55 %
    assert pilot_coverage(with_pilot([3.0, 1.9, 2.0], False, 1.0)) == pytest.approx(0.55)
    # an accuracy from 0.5 to 0.8 toward 0.9: 75 %; past the target: all of it
    assert pilot_coverage(with_pilot([0.5, 0.8], True, 0.9)) == pytest.approx(0.75)
    assert pilot_coverage(with_pilot([0.5, 0.95], True, 0.9)) == 1.0
    assert pilot_coverage(with_pilot([0.5], True, 0.9)) is None


def test_the_extrapolation_names_the_noise_growth_only_when_the_plan_used_it(
        recommendation: Recommendation) -> None:
    def sentence(method: str) -> str:
        noise = dataclasses.replace(recommendation.noise_scale, method=method)
        rec = dataclasses.replace(recommendation, extrapolated=True, noise_scale=noise)
        return explain(rec, 1024, 32)

    assert "noise scale's growth" in sentence(NOISE_FROM_GROWTH)
    without = sentence("critical batch from two pilots, no noise-scale growth measured")
    assert "of the way" in without and "noise scale's growth" not in without


def test_the_explanation_says_when_the_base_lr_race_could_not_tell(recommendation: Recommendation) -> None:
    def record(lr: float, steps_to_level: float | None, steps_run: int, won: bool = False,
               diverged: bool = False, batch_size: int = 32) -> dict[str, Any]:
        return {"batch_size": batch_size, "lr": lr, "steps_to_level": steps_to_level,
                "steps_run": steps_run, "won": won, "diverged": diverged}

    def explained(race: list[dict[str, Any]], anchor_lr: float = 0.001) -> tuple[Recommendation, str]:
        anchor = {**recommendation.anchor, "batch_size": 32, "lr": anchor_lr, "task_base_lr": 0.001}
        rec = dataclasses.replace(recommendation, lr_race=race, anchor=anchor)
        return rec, explain(rec, 1024, 32)

    pilot = record(0.001, 512.0, 659, won=True)
    larger = record(0.0113, 90.0, 92, won=True, batch_size=256)  # another batch's race: not counted
    # fashion-cnn's race (2026-11-24): both challengers cut at half the pilot's steps, unreached.
    rec, text = explained([pilot, record(0.002, None, 256), record(0.0005, None, 256), larger])
    assert unresolved_base_race(rec) == ([0.002, 0.0005], 256, 512.0)
    assert "could not tell" in text and "cut at 256 steps" in text and "less than 2× faster" in text
    # A challenger that reached the level (and lost), or diverged, is a judgement ...
    for judged in (record(0.002, 300.0, 300), record(0.002, None, 40, diverged=True)):
        rec, text = explained([pilot, judged, record(0.0005, None, 256)])
        assert unresolved_base_race(rec) is None and "could not tell" not in text
    # ... and so is one that ran as long as the pilot without reaching its level.
    rec, _ = explained([pilot, record(0.002, None, 512)])
    assert unresolved_base_race(rec) is None
    # A race that moved the anchor says so instead.
    rec, text = explained([record(0.001, 512.0, 659), record(0.002, 200.0, 256, won=True)], anchor_lr=0.002)
    assert "could not tell" not in text and "reached the first pilot's level in fewer steps" in text


def test_pilots_measured_and_second_pilot_is_larger(recommendation: Recommendation) -> None:
    # Pilot A, then one or more larger pilots (escalating while scaling looks perfect).
    assert len(recommendation.pilots) >= 2
    sizes = [pilot.batch_size for pilot in recommendation.pilots]
    assert sizes == sorted(set(sizes))
    assert all(pilot.history for pilot in recommendation.pilots)


def test_unreached_target_is_extrapolated_from_the_trend() -> None:
    # 0.88 is above what the pilots reach in a few seconds (they level off near 0.86).
    task = noisy_classification_task(target=0.88)
    rec = recommend(task, budget_seconds=4.0, progress=False)
    assert rec.extrapolated
    assert "extrapolated" in rec.explanation
    coverage = pilot_coverage(rec)
    assert coverage is not None and 0.0 <= coverage < 1.0  # the pilot stopped short of the target
    assert f"got {coverage:.0%} of the way" in rec.explanation
    assert rec.batch_size in [c.batch_size for c in rec.candidates]


def test_cli_writes_json_and_report(tmp_path: Path, fixtures_dir: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["recommend", "--task", f"{Path(__file__).resolve()}:noisy_classification_task",
         "--budget-seconds", "4", "--out", str(out), "--json", str(tmp_path / "copy.json")],
    )
    assert result.exit_code == 0, result.output
    document = json.loads((out / "recommendation.json").read_text())
    assert document == json.loads((tmp_path / "copy.json").read_text())
    assert (out / "report.html").stat().st_size > 1000
    assert str(document["recommended"]["batch_size"]) in result.output


def test_cli_rejects_bad_budget(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["recommend", "--task", "linreg", "--memory-budget", "0MiB", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2


def _fake_race(monkeypatch: pytest.MonkeyPatch, steps_at: Callable[[float], float | None]) -> list[float]:
    """Replace each racer's training by ``steps_at(lr)`` (None: diverged); returns the lrs tried."""
    from batchsage.decide import races as module

    tried: list[float] = []

    def level_run(runner: Any, batch_size: int, lr: float, level: float, seconds: float,
                  max_steps: int | None = None) -> module.PilotRun:
        tried.append(lr)
        steps = steps_at(lr)
        reached = steps is not None and (max_steps is None or steps <= max_steps)
        ran = int(steps) if reached else (max_steps or 10)
        history = [{"step": float(ran), "samples": 0.0, "train_seconds": 0.0,
                    "metric": 0.9 if reached else 0.1, "train_loss": 0.0}]
        return module.PilotRun(batch_size, lr, ran, 0.0, 0.0, False, history, diverged=steps is None)

    monkeypatch.setattr(module, "level_run", level_run)
    return tried


def _race(steps_at: Callable[[float], float | None],
          monkeypatch: pytest.MonkeyPatch, clear_up: bool = False) -> tuple[float, list[float]]:
    from types import SimpleNamespace

    from batchsage.decide import races as module

    tried = _fake_race(monkeypatch, steps_at)
    runner = SimpleNamespace(task=noisy_classification_task(), schedule=None)
    winner, records = module.race_lr(runner, 256, 1.0, 0.9, seconds=1e9, max_steps=1000,  # type: ignore[arg-type]
                                     clear_up=clear_up)
    assert [r["lr"] for r in records] == tried
    return winner.lr, tried


def test_lr_race_goes_up_while_larger_lrs_are_faster_and_stops_at_divergence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lr, tried = _race(lambda lr: {1.0: 100, 2.0: 99}.get(lr), monkeypatch)  # 4× diverges
    assert lr == 2.0 and tried == [1.0, 2.0, 4.0]


def test_lr_race_keeps_the_lr_when_a_larger_one_is_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    lr, tried = _race(lambda lr: {1.0: 100, 2.0: 101, 0.5: 95}.get(lr), monkeypatch)
    assert lr == 1.0 and tried == [1.0, 2.0, 0.5]  # ½ is faster, but not clearly


def test_base_batch_race_goes_up_only_when_clearly_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    # A flat race (steps within 10 % over 1-4×) keeps the starting lr at the base batch ...
    flat = {1.0: 100, 2.0: 95, 4.0: 93, 0.5: 120}
    lr, tried = _race(flat.get, monkeypatch, clear_up=True)
    assert lr == 1.0 and tried == [1.0, 2.0, 0.5]
    # ... and still climbs a steep one.
    lr, _ = _race({1.0: 100, 2.0: 60, 4.0: 40, 8.0: 38}.get, monkeypatch, clear_up=True)
    assert lr == 4.0


def test_clearly_faster_means_beyond_what_the_validations_resolve() -> None:
    from batchsage.decide.pilots import PilotSchedule as _PilotSchedule
    from batchsage.decide.races import LR_RACE_MARGIN
    from batchsage.decide.races import clear_margin as _clear_margin

    def schedule(eval_seconds: float) -> _PilotSchedule:
        return _PilotSchedule(seconds=10.0, step_seconds=lambda b: 0.001, eval_seconds=eval_seconds)

    sparse, dense = schedule(1.0), schedule(1e-4)  # 2-3 validations vs hundreds
    assert sparse.eval_growth(32) > dense.eval_growth(32)
    assert _clear_margin(sparse, 32) == pytest.approx(1.0 / sparse.eval_growth(32))
    assert _clear_margin(sparse, 32) < _clear_margin(dense, 32) <= LR_RACE_MARGIN


def test_lr_race_goes_down_only_when_clearly_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    lr, tried = _race(lambda lr: {1.0: 100, 2.0: 300, 0.5: 60, 0.25: 58}.get(lr), monkeypatch)
    assert lr == 0.5 and tried == [1.0, 2.0, 0.5, 0.25]


def test_recommendation_uses_the_lr_race_winner(recommendation: Recommendation) -> None:
    race = recommendation.lr_race
    calibration = recommendation.lr_calibration
    assert race and calibration is not None
    winner = recommendation.pilots[1]
    assert winner.lr in [r["lr"] for r in race] and winner.batch_size == calibration["batch_size"]
    at_race_batch = recommendation.candidate(calibration["batch_size"])
    if at_race_batch is not None and calibration["diverged_lr"] is None:
        # The winner's lr, moved from the noise scale it raced at to the run's.
        at_race = recommendation.anchor["b_noise_at_race"]
        shift = 1.0 if at_race is None else plan.lr_noise_shift(
            calibration["batch_size"], at_race, recommendation.b_noise)
        assert at_race_batch.lr == pytest.approx(winner.lr * shift)


def test_lr_race_keeps_halving_below_a_diverging_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # Linear scaling from the anchor can land past the stability limit: 1 and 2 diverge, so do ½;
    # the race halves until an lr trains, then goes on down while that is clearly faster.
    lr, tried = _race(lambda lr: {0.25: 300}.get(lr), monkeypatch)
    assert lr == 0.25 and tried == [1.0, 2.0, 0.5, 0.25, 0.125]


def _run(batch_size: int, lr: float, steps: list[float], metrics: list[float]) -> Any:
    from batchsage.decide import PilotRun

    history = [{"step": s, "samples": s * batch_size, "train_seconds": 0.0, "metric": m, "train_loss": 0.0}
               for s, m in zip(steps, metrics, strict=True)]
    return PilotRun(batch_size, lr, int(steps[-1]), 0.0, 0.0, False, history)


def test_a_faster_base_racer_scales_the_steps_to_target_and_measures_the_critical_batch() -> None:
    from batchsage.decide import NoiseSummary
    from batchsage.decide.calibrate import fit_plan_parameters

    task = noisy_classification_task(target=0.95)
    pilot_a = _run(32, 0.01, [25, 50, 100], [0.5, 0.7, 0.9])   # level 0.9 at step 100
    racer = _run(32, 0.04, [12.5, 25, 50], [0.5, 0.7, 0.9])    # the same level in half the steps
    pilot_b = _run(256, 0.3, [10, 20, 40], [0.5, 0.7, 0.9])

    def noise() -> NoiseSummary:
        return NoiseSummary(None, None, None, None, None, None, math.nan, "")

    plain = fit_plan_parameters(task, pilot_a, pilot_b, noise())
    raced = fit_plan_parameters(task, pilot_a, pilot_b, noise(), racer)
    assert raced.steps_at_pilot == pytest.approx(0.5 * plain.steps_at_pilot)
    # Against the racer, pilot B saves less (50 → 40 steps, not 100 → 40): a smaller critical batch.
    assert raced.noise.b_crit_pilot < plain.noise.b_crit_pilot


def test_with_measured_noise_growth_the_races_noise_level_is_kept_below_the_runs_average() -> None:
    from batchsage.decide import NoiseSummary
    from batchsage.decide.calibrate import fit_plan_parameters

    task = noisy_classification_task(target=0.95)  # far beyond the pilots' 0.6: a long run
    pilot_a = _run(32, 0.01, [25, 50, 100], [0.4, 0.5, 0.6])
    pilot_b = _run(256, 0.08, [10, 20, 40], [0.4, 0.5, 0.6])

    def noise(exponent: float | None) -> NoiseSummary:
        scale = None if exponent is None else 10.0
        return NoiseSummary(50.0, None, scale, exponent, None, None, math.nan, "")

    growing = fit_plan_parameters(task, pilot_a, pilot_b, noise(0.5))
    # The races ran to pilot A's last level: the noise scale there is the pilots' critical batch,
    # and the run (extrapolated to a target beyond it) averages a larger one.
    assert growing.b_noise_at_race == pytest.approx(growing.noise.b_crit_pilot)
    assert growing.b_noise > growing.b_noise_at_race
    assert fit_plan_parameters(task, pilot_a, pilot_b, noise(None)).b_noise_at_race is None


def test_explanation_names_the_flat_range_around_the_optimum(recommendation: Recommendation) -> None:
    from batchsage.decide.explain import NEAR_OPTIMAL, _near_optimal_range

    fastest = min(c.predicted_seconds for c in recommendation.candidates)
    near = [c.batch_size for c in recommendation.candidates
            if c.predicted_seconds <= fastest * (1 + NEAR_OPTIMAL)]
    flat = _near_optimal_range(recommendation)
    if len(near) > 1:
        assert flat == (min(near), max(near))
        assert f"Batch sizes {flat[0]}–{flat[1]} are all predicted within" in recommendation.explanation
    else:
        assert flat is None and "are all predicted within" not in recommendation.explanation
    sharp = [plan.Candidate(b, b, 1, 0.1, 0, 100.0, 0.01, seconds, True)
             for b, seconds in ((32, 4.0), (64, 2.0), (128, 2.1), (256, 3.0))]
    assert _near_optimal_range(dataclasses.replace(recommendation, candidates=sharp)) == (64, 128)
    alone = [dataclasses.replace(c, predicted_seconds=9.0) if c.batch_size != 64 else c for c in sharp]
    assert _near_optimal_range(dataclasses.replace(recommendation, candidates=alone)) is None


def test_pilots_validate_on_a_fixed_subset_only_when_full_passes_do_not_fit() -> None:
    from batchsage.decide.pilots import MIN_PILOT_VALIDATION_SAMPLES, pilot_validation_subset
    from batchsage.decide.pilots import PilotSchedule as _PilotSchedule

    index = torch.arange(10_000)
    x = torch.zeros(10_000, 20)
    x[:, 0] = index.float()  # the first feature names the row, to see which rows were kept
    task = dataclasses.replace(noisy_classification_task(), val_data=TensorDataset(x, index % 4))

    def schedule(eval_seconds: float) -> _PilotSchedule:
        return _PilotSchedule(seconds=7.0, step_seconds=lambda b: 0.01, eval_seconds=eval_seconds)

    cheap = schedule(0.01)
    assert pilot_validation_subset(task, "cpu", cheap) == (task, cheap, None)
    subset, slower, info = pilot_validation_subset(task, "cpu", schedule(5.0))
    assert info is not None and info["samples"] == MIN_PILOT_VALIDATION_SAMPLES and info["of"] == 10_000
    kept = subset.val_data.tensors[0][:, 0]
    assert len(kept) == MIN_PILOT_VALIDATION_SAMPLES and len(set(kept.tolist())) == len(kept)
    assert kept.max() > 9_000 and kept.min() < 1_000  # a random subset, not the first rows
    assert slower.eval_seconds == info["subset_pass_seconds"] and task.num_val_samples == 10_000
    again, _, _ = pilot_validation_subset(task, "cpu", schedule(5.0))
    assert torch.equal(again.val_data.tensors[0], subset.val_data.tensors[0])  # fixed by the task's seed
    plain = dataclasses.replace(task, val_data=torch.utils.data.Subset(task.val_data, range(10_000)))
    assert pilot_validation_subset(plain, "cpu", schedule(5.0))[2] is None  # no tensors: left whole


def test_a_pilot_subset_keeps_the_datasets_type_and_falls_back_when_it_cannot() -> None:
    from batchsage.decide.pilots import PilotSchedule as _PilotSchedule
    from batchsage.decide.pilots import pilot_validation_subset

    class Labelled(TensorDataset):
        classes = ("a", "b", "c", "d")

    seen: list[type] = []

    def metric(model: nn.Module, data: Labelled) -> float:
        seen.append(type(data))
        assert data.classes == Labelled.classes  # what a metric_fn may rely on
        return 0.5

    x, y = torch.zeros(10_000, 20), torch.arange(10_000) % 4
    task = dataclasses.replace(noisy_classification_task(), val_data=Labelled(x, y), metric_fn=metric)
    slow = _PilotSchedule(seconds=7.0, step_seconds=lambda b: 0.01, eval_seconds=5.0)
    subset, _, info = pilot_validation_subset(task, "cpu", slow)
    assert info is not None and isinstance(subset.val_data, Labelled) and seen[-1] is Labelled

    def breaks_on_subsets(model: nn.Module, data: Labelled) -> float:
        if len(data) < 10_000:
            raise RuntimeError("this metric needs every sample")
        return 0.5

    fussy = dataclasses.replace(task, metric_fn=breaks_on_subsets)
    assert pilot_validation_subset(fussy, "cpu", slow) == (fussy, slow, None)


@pytest.mark.parametrize(("spec", "cause"), [("nan_task", "diverged"), ("flat_metric_task", "never changed")])
def test_no_recommendation_from_measurements_that_cannot_support_one(
        spec: str, cause: str, tmp_path: Path, fixtures_dir: Path) -> None:
    result = CliRunner().invoke(app, ["recommend", "--task", f"{fixtures_dir / 'tiny_tasks.py'}:{spec}",
                                      "--budget-seconds", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "no recommendation" in result.output and cause in result.output
    assert "Recommended" not in result.output and "Traceback" not in result.output
    document = json.loads((tmp_path / "recommendation.json").read_text())
    assert document["status"] == "no recommendation" and document["pilots"]  # what was measured is kept
