"""Weights & Biases: one run per command; pilots, forks and trials under a key prefix in it.

The project is the spec's (``wandb:PROJECT``), else that of the caller's active run, else
``batchsage``. Where W&B logs to follows W&B's own settings: ``WANDB_MODE=offline`` writes the
run under ``WANDB_DIR`` (default ``./wandb``) without an account or the network, for a later
``wandb sync``. batchsage's run never replaces a run the caller has open (``reinit="create_new"``,
W&B ≥ 0.19.10); it joins that run's group. The console is not captured and no system metrics
are sampled.

Parameters go to the run's config, summary numbers and text to its summary, each series to the
history against its own x (``<section>/step`` or ``<section>/batch_size``, declared with
``define_metric``), and the JSON document and report files to an artifact of type
``batchsage-report``. A child's keys start with its name (``pilot_1_B=16_lr=0.1/val/accuracy``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import wandb

from batchsage.trackers._base import Artifact, Param, RunRecord, Series, Tracker


def key_part(name: str) -> str:
    """A key segment from a run name (no ``/``, no spaces)."""
    return re.sub(r"[\s/]+", "_", name.strip()) or "run"


def open_run(project: str | None, record: RunRecord) -> WandbRun:
    """A new W&B run for ``record`` (offline with ``WANDB_MODE=offline``)."""
    active = wandb.run
    group = (active.group or active.name) if active is not None else None
    run = wandb.init(
        project=project or (active.project if active is not None else None) or "batchsage",
        name=record.name, job_type=f"batchsage-{record.role}", group=group, tags=["batchsage"],
        reinit="create_new",
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True, save_code=False),
    )
    return WandbRun(run, record, prefix="", owner=True)


class WandbRun(Tracker):
    """A W&B run, or a key prefix inside one (a child)."""

    def __init__(self, run: Any, record: RunRecord, prefix: str, owner: bool) -> None:
        self.run = run
        self.record = record
        self.prefix = prefix
        self.owner = owner
        self._defined: set[str] = set()

    @property
    def location(self) -> str:
        if self.run.offline:  # the run directory, for `wandb sync`
            return str(self.run.dir).removesuffix("/files")
        return str(self.run.url)

    def log_params(self, params: Mapping[str, Param]) -> None:
        self.run.config.update({self.prefix + key: value for key, value in params.items()},
                               allow_val_change=True)

    def log_summary(self, values: Mapping[str, float]) -> None:
        self.run.summary.update({self.prefix + key: value for key, value in values.items()})

    def log_series(self, series: Series) -> None:
        key = self.prefix + series.key
        section = key.rsplit("/", 1)[0] if "/" in series.key else self.prefix.rstrip("/")
        x_key = f"{section}/{series.x_name}" if section else series.x_name
        if x_key not in self._defined:
            self.run.define_metric(x_key, hidden=True)
            self._defined.add(x_key)
        # Every row carries its x: no step_sync (W&B would fill in an x of its own).
        self.run.define_metric(key, step_metric=x_key, step_sync=False)
        for x, y in series.points:
            self.run.log({x_key: x, key: y})

    def log_text(self, key: str, text: str) -> None:
        self.run.summary[self.prefix + key] = text

    def log_artifacts(self, artifacts: Sequence[Artifact]) -> None:
        name = key_part(f"{self.record.name}").replace(" ", "-")
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]+", "-", name), type="batchsage-report")
        for item in artifacts:
            artifact.add_file(str(item.path), name=item.name)
        self.run.log_artifact(artifact)

    def child(self, record: RunRecord) -> WandbRun:
        return WandbRun(self.run, record, prefix=f"{self.prefix}{key_part(record.name)}/", owner=False)

    def close(self) -> None:
        if self.owner:
            self.run.finish()
