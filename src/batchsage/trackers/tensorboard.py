"""TensorBoard: event files under ``DIR/<run>/`` (PyTorch's ``SummaryWriter``; needs ``tensorboard``).

Each command writes a run directory ``DIR/batchsage-<command>-<task>-<time>``: parameters in the
HParams dashboard (with the summary numbers as its metrics) and as a text table, summary numbers
as scalars at step 0, series as scalars against their step (batch-size series against the batch
size), text under Text. Pilots, forks and trials are runs of their own in sub-directories, so
TensorBoard overlays their curves. TensorBoard has no artifact store: the JSON document and the
report files are copied into ``<run>/artifacts/``.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from batchsage.trackers._base import Artifact, Param, RunRecord, Series, Tracker


def slug(name: str) -> str:
    """A directory name from a run name (letters, digits and ``.=+-`` kept, the rest ``_``)."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", name).strip("_") or "run"


def open_run(directory: str | None, record: RunRecord) -> TensorBoardRun:
    """A new run directory under ``directory`` for ``record``."""
    root = Path(directory or "runs")
    stem = f"{slug(record.name.replace(' ', '-'))}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, suffix = root / stem, 1
    while path.exists():
        suffix += 1
        path = root / f"{stem}-{suffix}"
    return TensorBoardRun(path)


class TensorBoardRun(Tracker):
    """One TensorBoard run: an event-file directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = SummaryWriter(log_dir=str(path))
        self._params: dict[str, Param] = {}
        self._summary: dict[str, float] = {}

    @property
    def location(self) -> str:
        return str(self.path)

    def log_params(self, params: Mapping[str, Param]) -> None:
        self._params.update(params)
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("params", f"| parameter | value |\n|---|---|\n{rows}", 0)

    def log_summary(self, values: Mapping[str, float]) -> None:
        self._summary.update(values)
        for key, value in values.items():
            self.writer.add_scalar(key, value, 0)

    def log_series(self, series: Series) -> None:
        for x, y in series.points:
            self.writer.add_scalar(series.key, y, x)

    def log_text(self, key: str, text: str) -> None:
        self.writer.add_text(key, text.replace("\n", "  \n"), 0)  # markdown line breaks

    def log_artifacts(self, artifacts: Sequence[Artifact]) -> None:
        for artifact in artifacts:
            target = self.path / "artifacts" / artifact.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact.path, target)

    def child(self, record: RunRecord) -> TensorBoardRun:
        return TensorBoardRun(self.path / slug(record.name))

    def close(self) -> None:
        if self._params:
            # The HParams dashboard: the parameters, with the summary scalars as its metrics.
            for summary in hparams(self._params, dict(self._summary)):
                self.writer.file_writer.add_summary(summary)
        self.writer.flush()
        self.writer.close()
