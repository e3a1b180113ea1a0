"""MLflow: one run per command, a nested run per pilot, fork or trial (needs ``mlflow-skinny``).

The tracking URI is the spec's (``mlflow:sqlite:///mlflow.db``, ``mlflow:http://host:5000``) or
MLflow's default (``MLFLOW_TRACKING_URI``). The experiment is ``MLFLOW_EXPERIMENT_NAME`` or
``batchsage``; on a SQLite store a new experiment keeps its artifacts beside the database file
(``mlartifacts/<experiment>``) rather than under the current directory. Called from Python while
an MLflow run is active on the same tracking URI, batchsage's run is nested under it.

Parameters are run parameters, summary numbers metrics at step 0, series metric histories (the
step is the x: optimiser step, or batch size for the memory and throughput series), text and the
report files artifacts. MLflow's telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``) unless
the environment says otherwise, so logging to a local store stays offline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # after the telemetry switch above
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities import Param as MlflowParam

from batchsage.trackers._base import Artifact, Param, RunRecord, Series, Tracker

#: MLflow's limits per log_batch call.
MAX_PARAMS, MAX_METRICS = 100, 1000
MAX_PARAM_CHARS = 6000


def _sqlite_artifacts(uri: str, experiment: str) -> str | None:
    """``file:`` URI of ``mlartifacts/<experiment>`` beside a SQLite database, else None."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    if uri.startswith("sqlite:////"):
        path = "/" + path.lstrip("/")
    elif uri.startswith("sqlite:///"):
        path = path[1:]
    if not path or path == ":memory:":
        return None
    return (Path(path).resolve().parent / "mlartifacts" / experiment).as_uri()


def open_run(uri: str | None, record: RunRecord) -> MlflowRun:
    """A new run for ``record`` (nested under the caller's active run on the same store)."""
    tracking_uri = uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri)
    active = mlflow.active_run()
    tags = {"batchsage.role": record.role}
    if active is not None and mlflow.get_tracking_uri() == tracking_uri:
        experiment_id = active.info.experiment_id
        tags["mlflow.parentRunId"] = active.info.run_id
    else:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "batchsage"
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = _sqlite_artifacts(tracking_uri, name)
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
    run = client.create_run(experiment_id, run_name=record.name, tags=tags)
    return MlflowRun(client, run.info.run_id, experiment_id, tracking_uri)


class MlflowRun(Tracker):
    """One MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, tracking_uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    @property
    def location(self) -> str:
        return f"{self.tracking_uri} (experiment {self.experiment_id}, run {self.run_id})"

    def log_params(self, params: Mapping[str, Param]) -> None:
        items = [MlflowParam(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS])

    def _metrics(self, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS])

    def log_summary(self, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self._metrics([Metric(key, value, now, 0) for key, value in values.items()])

    def log_series(self, series: Series) -> None:
        now = int(time.time() * 1000)
        self._metrics([Metric(series.key, y, now, x) for x, y in series.points])

    def log_text(self, key: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{key}.txt")

    def log_artifacts(self, artifacts: Sequence[Artifact]) -> None:
        for artifact in artifacts:
            folder = str(Path(artifact.name).parent)
            self.client.log_artifact(self.run_id, str(artifact.path), None if folder == "." else folder)

    def child(self, record: RunRecord) -> MlflowRun:
        run = self.client.create_run(self.experiment_id, run_name=record.name, tags={
            "mlflow.parentRunId": self.run_id, "batchsage.role": record.role})
        return MlflowRun(self.client, run.info.run_id, self.experiment_id, self.tracking_uri)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
