"""Experiment trackers, for real and offline: what batchsage logged, read back through each tracker's
own reader (TensorBoard's EventAccumulator, MlflowClient, the W&B offline run read by
``wandb leet inspect``), equals the JSON documents of a real recommend, fit and sweep run.

TensorBoard stores scalars as float32, so its values are compared with the document's rounded to
float32; MLflow and W&B keep float64 and are compared exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_tasks
import torch
from typer.testing import CliRunner

import batchsage
from batchsage.cli import app
from batchsage.live import FitOptions, fit
from batchsage.report import write_fit_report, write_report
from batchsage.sweep import run_sweep
from batchsage.trackers import (
    LogSpec,
    TrackerError,
    log,
    log_document,
    parse_log_spec,
    record_of,
)
from batchsage.trackers._documents import redact

REQUIRE_ENV = "BATCHSAGE_REQUIRE_EXTRAS"
# MLflow 3.18's SQL store on SQLAlchemy 2.1.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _need(module: str) -> Any:
    """Import a tracker package; where it is missing, skip, except under ``make test``, which
    installs every extra and sets BATCHSAGE_REQUIRE_EXTRAS=1, so a broken install fails."""
    if os.environ.get(REQUIRE_ENV) == "1":
        return __import__(module)
    return pytest.importorskip(module)


# ---- the documents: one real run of each command ------------------------------------------------


@dataclass
class Documents:
    json: dict[str, dict[str, Any]]  # as written to disk (NaN/inf as null)
    results: dict[str, Any]
    report_dirs: dict[str, Path]


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Documents:
    out = tmp_path_factory.mktemp("commands")
    torch.set_num_threads(1)  # steady timings on a shared machine, as in test_fit
    rec = batchsage.recommend(tiny_tasks.make_task(), device="cpu", budget_seconds=2, progress=False)
    rec.save(out / "recommend" / "recommendation.json")
    write_report(rec.to_dict(), out / "recommend")
    # A large monitor budget measures the noise scale often enough for a trajectory in a short run.
    fitted = fit(tiny_tasks.noisy_task(), device="cpu", out=out / "fit", progress=False,
                 options=FitOptions(monitor_overhead=4.0))
    write_fit_report(fitted.to_dict(), out / "fit")
    swept = run_sweep(tiny_tasks.make_task(), batch_sizes=[16, 32], lr_multipliers=[0.5, 1.0], device="cpu",
                      out_dir=out / "sweep")
    files = {"recommend": "recommendation.json", "fit": "fit.json", "sweep": "sweep.json"}
    return Documents(
        json={kind: json.loads((out / kind / name).read_text()) for kind, name in files.items()},
        results={"recommend": rec, "fit": fitted, "sweep": swept},
        report_dirs={kind: out / kind for kind in files},
    )


def test_the_documents_have_something_to_log(documents: Documents) -> None:
    rec, fitted, swept = (documents.json[k] for k in ("recommend", "fit", "sweep"))
    assert rec["memory"]["probes"] and rec["throughput"] and rec["pilots"]
    assert rec["noise_scale"]["trajectory"]
    assert fitted["schedule"] and fitted["history"] and fitted["noise"] and fitted["races"]
    assert len(swept["trials"]) == 4


# ---- what a tracker holds, read back through its own reader -------------------------------------


@dataclass
class Logged:
    """One run as read back: params, single numbers, series (x, y), text, artifact bytes, children."""

    params: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    children: list[Logged] = field(default_factory=list)


def read_tensorboard(path: Path, child_names: list[str]) -> Logged:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from batchsage.trackers.tensorboard import slug

    events = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    logged = Logged()
    for tag in events.Tags()["scalars"]:
        points = [(event.step, event.value) for event in events.Scalars(tag)]
        logged.series[tag] = points
        if len(points) == 1 and points[0][0] == 0:
            logged.values[tag] = points[0][1]
    for tag in events.Tags()["tensors"]:
        if tag.endswith("/text_summary"):
            value = events.Tensors(tag)[0].tensor_proto.string_val[0]
            logged.text[tag.removesuffix("/text_summary")] = value.decode()
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                text = value.HasField("string_value")
                logged.params[key] = value.string_value if text else value.number_value
    for file in (path / "artifacts").rglob("*"):
        if file.is_file():
            logged.artifacts[file.relative_to(path / "artifacts").as_posix()] = file.read_bytes()
    logged.children = [read_tensorboard(path / slug(name), []) for name in child_names]
    return logged


def read_mlflow(uri: str, run_id: str, child_names: list[str], scratch: Path) -> Logged:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    logged = Logged(params=dict(run.data.params), values=dict(run.data.metrics))
    for key in run.data.metrics:
        logged.series[key] = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
    folder = scratch / run_id
    client.download_artifacts(run_id, "", str(folder))
    for file in folder.rglob("*"):
        if file.is_file():
            name = file.relative_to(folder).as_posix()
            if name.endswith(".txt"):
                logged.text[name.removesuffix(".txt")] = file.read_text()
            else:
                logged.artifacts[name] = file.read_bytes()
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  max_results=1000)
    by_name = {child.info.run_name: child.info.run_id for child in children}
    assert sorted(by_name) == sorted(child_names)
    logged.children = [read_mlflow(uri, by_name[name], [], scratch) for name in child_names]
    return logged


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The offline run's transaction log, decoded by W&B's own inspector."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                          capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def read_wandb(run_dir: Path, child_names: list[str]) -> Logged:
    from batchsage.trackers.wandb import key_part

    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    step_metric: dict[str, str] = {}
    artifacts: dict[str, bytes] = {}
    for record in wandb_records(run_dir):
        kind = record["type"]
        body = record.get(kind) or {}
        if kind == "run":
            config.update((body.get("config") or {}).get("update") or {})
        elif kind == "config":
            config.update(body.get("update") or {})
        elif kind == "summary":
            summary.update(body.get("update") or {})
        elif kind == "history":
            history.append(body["item"])
        elif kind == "metric" and body.get("name") and body.get("step_metric"):
            step_metric[body["name"]] = body["step_metric"]
        elif kind == "artifact":
            for entry in body["manifest"]["contents"]:
                artifacts[entry["path"]] = Path(entry["local_path"]).read_bytes()

    def view(prefix: str) -> Logged:
        logged = Logged()
        children = tuple(key_part(name) + "/" for name in child_names)
        for key, value in config.items():
            if key.startswith(prefix) and (prefix or not key.startswith(children)):
                logged.params[key.removeprefix(prefix)] = value
        for key, value in summary.items():
            if key.startswith(prefix) and not key.startswith("_"):
                (logged.text if isinstance(value, str) else logged.values)[key.removeprefix(prefix)] = value
        for key, x_key in step_metric.items():
            if key.startswith(prefix):
                points = [(row[x_key], row[key]) for row in history if key in row]
                logged.series[key.removeprefix(prefix)] = points
        return logged

    logged = view("")
    logged.artifacts = artifacts
    logged.children = [view(key_part(name) + "/") for name in child_names]
    return logged


# ---- logging every document to every tracker ----------------------------------------------------


@dataclass
class Reading:
    tracker: str
    logged: dict[str, Logged]  # by document kind

    def same(self, logged_value: float, document_value: float) -> bool:
        """Equal as stored: TensorBoard keeps float32."""
        if self.tracker == "tensorboard":
            return logged_value == float(np.float32(document_value))
        return logged_value == document_value


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating its tables takes MLflow several seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module", params=["tensorboard", "mlflow", "wandb"])
def reading(request: pytest.FixtureRequest, documents: Documents, mlflow_uri: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reading]:
    tracker = request.param
    _need(tracker)
    root = tmp_path_factory.mktemp(tracker)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
            patch.setenv(name, str(root / name.lower()))
            (root / name.lower()).mkdir()
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        spec = {"tensorboard": f"tensorboard:{root / 'tb'}", "mlflow": f"mlflow:{mlflow_uri}",
                "wandb": "wandb:batchsage-tests"}[tracker]
        logged = {}
        for kind, document in documents.json.items():
            where = log_document(kind, documents.results[kind].to_dict(), spec, documents.report_dirs[kind])
            names = [child.name for child in record_of(kind, document).children]
            if tracker == "tensorboard":
                logged[kind] = read_tensorboard(Path(where), names)
            elif tracker == "mlflow":
                run_id = where.rsplit("run ", 1)[1].rstrip(")")
                logged[kind] = read_mlflow(mlflow_uri, run_id, names, root / "download")
            else:
                logged[kind] = read_wandb(Path(where), names)
        yield Reading(tracker, logged)


def _points(rows: list[dict[str, Any]], x: str, y: str) -> list[tuple[int, float]]:
    return sorted((row[x], row[y]) for row in rows if row.get(y) is not None)


def _assert_series(reading: Reading, logged: Logged, key: str, expected: list[tuple[int, float]]) -> None:
    assert expected, f"nothing to compare for {key}"
    got = sorted(logged.series[key])
    assert [x for x, _ in got] == [x for x, _ in expected], key
    assert all(reading.same(g, e) for (_, g), (_, e) in zip(got, expected, strict=True)), (key, got, expected)


def _assert_artifact_json(logged: Logged, name: str, document: dict[str, Any]) -> None:
    assert json.loads(logged.artifacts[name]) == document


def test_recommendation_logged_equals_its_json(reading: Reading, documents: Documents) -> None:
    document, logged = documents.json["recommend"], reading.logged["recommend"]
    answer = document["recommended"]
    for key in ("batch_size", "micro_batch_size", "accumulation_steps", "lr", "warmup_steps",
                "predicted_steps", "predicted_seconds"):
        assert reading.same(logged.values[f"recommended/{key}"], answer[key]), key
    assert reading.same(logged.values["b_simple"], document["noise_scale"]["b_simple"])
    assert reading.same(logged.values["memory/max_batch_size"], document["memory"]["max_batch_size"])
    assert logged.params["task"] == "tiny" and logged.params["device"] == "cpu"
    assert float(logged.params["budget_seconds"]) == document["budget_seconds"]
    _assert_series(reading, logged, "memory/peak_bytes",
                   _points(document["memory"]["probes"], "batch_size", "peak_bytes"))
    _assert_series(reading, logged, "throughput/step_seconds",
                   _points(document["throughput"], "batch_size", "step_seconds_median"))
    _assert_series(reading, logged, "noise_scale/b_simple",
                   _points(document["noise_scale"]["trajectory"], "step", "b_simple"))
    _assert_series(reading, logged, "candidates/predicted_seconds",
                   _points(document["candidates"], "batch_size", "predicted_seconds"))
    assert logged.text["why"].split("\n") == document["why"] or reading.tracker == "tensorboard"
    assert len(logged.children) == len(document["pilots"])
    for pilot, child in zip(document["pilots"], logged.children, strict=True):
        assert float(child.params["batch_size"]) == pilot["batch_size"]
        assert float(child.params["lr"]) == pilot["lr"]
        _assert_series(reading, child, "val/accuracy", _points(pilot["history"], "step", "metric"))
        _assert_series(reading, child, "train_loss", _points(pilot["history"], "step", "train_loss"))
    _assert_artifact_json(logged, "recommendation.json", document)
    assert b"<html" in logged.artifacts["report.html"]
    assert {"plots/throughput.png", "plots/pilots.png"} <= set(logged.artifacts)


def test_fit_schedule_and_races_logged_equal_the_json(reading: Reading, documents: Documents) -> None:
    document, logged = documents.json["fit"], reading.logged["fit"]
    for key in ("final_metric", "steps", "batch_size", "lr"):
        assert reading.same(logged.values[key], document[key]), key
    assert logged.values["reached_target"] == float(document["reached_target"])
    assert reading.same(logged.values["times/end_to_end_seconds"], document["times"]["end_to_end_seconds"])
    _assert_series(reading, logged, "schedule/batch_size",
                   _points(document["schedule"], "step", "batch_size"))
    _assert_series(reading, logged, "schedule/lr", _points(document["schedule"], "step", "lr"))
    _assert_series(reading, logged, "val/accuracy", _points(document["history"], "step", "metric"))
    _assert_series(reading, logged, "noise_scale/b_simple", _points(document["noise"], "step", "b_simple"))
    outcomes = [outcome for race in document["races"] for outcome in race["outcomes"]]
    assert len(logged.children) == len(outcomes)
    for outcome, child in zip(outcomes, logged.children, strict=True):
        assert float(child.params["batch_size"]) == outcome["batch_size"]
        assert child.params["fork_role"] == outcome["role"]
        assert child.values["won"] == float(outcome["won"])
        if outcome["cooled_loss"] is not None:
            assert reading.same(child.values["cooled_loss"], outcome["cooled_loss"])
    _assert_artifact_json(logged, "fit.json", document)
    assert "report.html" in logged.artifacts


def test_sweep_trials_logged_equal_the_json(reading: Reading, documents: Documents) -> None:
    document, logged = documents.json["sweep"], reading.logged["sweep"]
    best = document["best"]
    assert reading.same(logged.values["best/batch_size"], best["batch_size"])
    assert reading.same(logged.values["best/seconds_to_target"], best["seconds_to_target"])
    assert reading.same(logged.values["saved_fraction"], document["saved_fraction"])
    _assert_series(reading, logged, "best_per_batch_size/seconds_to_target",
                   _points(document["best_per_batch_size"], "batch_size", "seconds_to_target"))
    assert len(logged.children) == len(document["trials"])
    for trial, child in zip(document["trials"], logged.children, strict=True):
        assert float(child.params["lr"]) == trial["lr"]
        assert child.params["state"] == trial["state"]
        if trial["seconds_to_target"] is not None:
            assert reading.same(child.values["seconds_to_target"], trial["seconds_to_target"])
    _assert_artifact_json(logged, "sweep.json", document)
    assert "pareto.png" in logged.artifacts


# ---- specs, errors, and the documents as runs ---------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("tensorboard:runs", LogSpec("tensorboard", "runs")),
    ("mlflow:sqlite:///mlflow.db", LogSpec("mlflow", "sqlite:///mlflow.db")),
    ("mlflow", LogSpec("mlflow", None)),
    ("wandb", LogSpec("wandb", None)),
    ("wandb:my-project", LogSpec("wandb", "my-project")),
])
def test_log_specs_parse(text: str, expected: LogSpec) -> None:
    assert parse_log_spec(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(("text", "needle"), [
    ("tensorboard", "tensorboard needs a directory"),
    ("comet:x", "unknown tracker 'comet'"),
    ("wandb:", "nothing after ':'"),
    ("", "empty --log spec"),
])
def test_bad_log_specs_are_one_line_errors(text: str, needle: str) -> None:
    with pytest.raises(TrackerError, match=needle) as caught:
        parse_log_spec(text)
    assert "\n" not in str(caught.value)


def test_a_missing_tracker_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "wandb" else real(name, *rest))
    with pytest.raises(TrackerError, match=r"needs the wandb package: pip install 'batchsage\[wandb\]'"):
        log_document("sweep", {}, "wandb")


def test_a_tracker_failure_is_one_line(tmp_path: Path, documents: Documents) -> None:
    _need("tensorboard")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the log directory should be")
    with pytest.raises(TrackerError, match=r"logging to tensorboard:.* failed: ") as caught:
        log_document("sweep", documents.json["sweep"], f"tensorboard:{blocker}")
    assert "\n" not in str(caught.value)


def test_not_a_document_is_one_line(documents: Documents) -> None:
    with pytest.raises(TrackerError, match="not a batchsage fit document: KeyError"):
        record_of("fit", documents.json["sweep"])
    with pytest.raises(TrackerError, match="cannot log a dict"):
        log({"a": 1}, "tensorboard:x")


def test_non_finite_values_are_left_out() -> None:
    document = {"task": "t", "procedure": "grid", "trials": [], "best": None, "saved_fraction": float("nan"),
                "spent_train_seconds": 1.5, "wall_seconds": None, "storage": "in-memory",
                "best_per_batch_size": [{"batch_size": 8, "seconds_to_target": float("inf"), "lr": 0.1}],
                "metric": {"name": "accuracy", "target": 0.9, "higher_is_better": True}}
    record = record_of("sweep", document)
    assert record.summary == {"spent_train_seconds": 1.5}
    assert next(s for s in record.series if s.key.endswith("seconds_to_target")).points == []


def test_storage_passwords_are_not_logged() -> None:
    assert redact("postgresql+psycopg://alice:s3cret@db.example/sweeps") == \
        "postgresql+psycopg://alice:***@db.example/sweeps"
    assert redact("sqlite:///sweep.db") == "sqlite:///sweep.db"


def test_python_log_takes_the_result_objects(documents: Documents, tmp_path: Path) -> None:
    _need("tensorboard")
    where = log(documents.results["sweep"], f"tensorboard:{tmp_path}",
                report_dir=documents.report_dirs["sweep"])
    assert len(where) == 1 and Path(where[0]).parent == tmp_path
    assert (Path(where[0]) / "artifacts" / "pareto.png").is_file()


# ---- the CLI's --log -----------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_recommend_logs_to_every_tracker(tiny_task_spec: str, tmp_path: Path, mlflow_uri: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("tensorboard", "mlflow", "wandb"):
        _need(module)
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "--threads", "1", "recommend", "--task", tiny_task_spec, "--device", "cpu", "--budget-seconds", "1",
        "--out", str(out), "--log", f"tensorboard:{tmp_path / 'tb'}",
        "--log", f"mlflow:{mlflow_uri}", "--log", "wandb:cli-test"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("logged to ")]
    assert [line.split(":")[0] for line in lines] == [
        "logged to tensorboard", "logged to mlflow", "logged to wandb"]
    document = json.loads((out / "recommendation.json").read_text())
    [tb_run] = (tmp_path / "tb").iterdir()
    logged = read_tensorboard(tb_run, [])
    assert logged.values["recommended/batch_size"] == document["recommended"]["batch_size"]
    _assert_artifact_json(logged, "recommendation.json", document)
    from mlflow import MlflowClient

    run_id = lines[1].rsplit("run ", 1)[1].rstrip(")")
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.tags["batchsage.role"] == "recommend"
    assert run.data.metrics["recommended/lr"] == document["recommended"]["lr"]
    wandb_run = Path(lines[2].split(": ", 1)[1])
    assert wandb_run.is_dir() and wandb_run.name.startswith("offline-run-")  # W&B's dir is fixed per process
    assert read_wandb(wandb_run, []).values["recommended/lr"] == document["recommended"]["lr"]


def test_cli_fit_and_sweep_log(tmp_path: Path, fixtures_dir: Path) -> None:
    _need("tensorboard")
    spec = f"{fixtures_dir / 'tiny_tasks.py'}:TASK"
    commands = (["fit", "--max-seconds", "20"], ["sweep", "--batch-sizes", "16", "--lr-multipliers", "1"])
    for command in commands:
        out = tmp_path / command[0]
        result = runner.invoke(app, ["--threads", "1", command[0], "--task", spec, "--device", "cpu",
                                     "--out", str(out), *command[1:],
                                     "--log", f"tensorboard:{tmp_path / 'tb'}"])
        assert result.exit_code == 0, result.output
        assert f"logged to tensorboard:{tmp_path / 'tb'}" in result.stdout
    runs = sorted(path.name.split("-")[1] for path in (tmp_path / "tb").iterdir())
    assert runs == ["fit", "sweep"]


def test_cli_bad_log_spec_fails_before_any_work(tiny_task_spec: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["recommend", "--task", tiny_task_spec, "--out", str(tmp_path / "out"),
                                 "--log", "tensorboard"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --log tensorboard needs a directory: tensorboard:DIR"]
    assert not (tmp_path / "out").exists()


def test_cli_tracker_failure_keeps_the_output(tiny_task_spec: str, tmp_path: Path) -> None:
    _need("tensorboard")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    out = tmp_path / "out"
    result = runner.invoke(app, ["--threads", "1", "sweep", "--task", tiny_task_spec, "--device", "cpu",
                                 "--batch-sizes", "16", "--lr-multipliers", "1", "--out", str(out),
                                 "--log", f"tensorboard:{blocker}"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: logging to tensorboard:{blocker} failed")
    assert (out / "sweep.json").is_file()
