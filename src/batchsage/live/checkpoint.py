"""Checkpoints of a ``fit`` run: the live run's whole state plus the controller's, in one file.

Written atomically (a temporary file, then a rename), so a SIGKILL while writing leaves the
previous checkpoint intact; read back with ``--resume``. The model's weights alone are also saved
as a plain ``state_dict`` (``model.pt``) that loads with plain PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from batchsage.errors import ConfigError
from batchsage.task import Task

#: Version of the checkpoint layout; another version is refused on resume.
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


def task_identity(task: Task) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this task (a resume with another target or data
    would mix incomparable runs)."""
    return {"name": task.name, "target": task.target, "higher_is_better": task.higher_is_better,
            "train_samples": task.num_train_samples, "val_samples": task.num_val_samples}


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, task: Task, run_state: dict[str, Any], controller: dict[str, Any]) -> None:
    save_atomic({"version": CHECKPOINT_VERSION, "task": task_identity(task), "run": run_state,
                 "controller": controller}, path)


def load_checkpoint(path: Path, task: Task) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run state, controller state) of the checkpoint at ``path``, checked against ``task``."""
    if not path.is_file():
        raise ConfigError(f"no checkpoint to resume at {path} (run without --resume to start)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path} is not a batchsage fit checkpoint of version {CHECKPOINT_VERSION}")
    if data.get("task") != task_identity(task):
        raise ConfigError(f"checkpoint {path} belongs to task {data.get('task')}, "
                          f"not {task_identity(task)}")
    return data["run"], data["controller"]
