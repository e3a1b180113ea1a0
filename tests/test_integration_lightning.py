"""The Lightning integration, with the real Lightning, offline, on CPU: every test checks what lands
in the user's module, datamodule and Trainer."""

from __future__ import annotations

import dataclasses
import random
import types
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra")
from lightning.pytorch.loggers.logger import Logger  # noqa: E402

from batchsage import Recommendation  # noqa: E402
from batchsage.integrations._common import IntegrationError, cap_micro_batch  # noqa: E402
from batchsage.integrations.lightning import (  # noqa: E402
    BatchsageFinder,
    _LogRecorder,
    fit_live,
    lightning_task,
    recommend_batch_size,
)
from batchsage.task import TaskError  # noqa: E402

BUDGET = 3.0  # seconds of decision: the models are tiny


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One torch thread: tiny models on shared cores run many times slower with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int, generator: torch.Generator, direction: torch.Tensor) -> TensorDataset:
    labels = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 8, generator=generator) + (2.0 * labels.float() - 1.0)[:, None] * 1.6 * direction
    return TensorDataset(x, labels)


class Blobs(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        direction = F.normalize(torch.randn(8, generator=generator), dim=0)
        self.train_set, self.val_set = _blobs(1024, generator, direction), _blobs(256, generator, direction)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05, scheduler: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        self.batch_sizes_seen: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.batch_sizes_seen.append(len(y))
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1000)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []
        self.hyperparameters: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hyperparameters.append(dict(params))


class Observer(pl.Callback):
    """Runs after the finder: what the module, optimiser and loggers hold when training starts, and
    the lr of every optimiser step."""

    def __init__(self, logger: RecordingLogger) -> None:
        self.logger = logger
        self.step_lrs: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.rng = torch.get_rng_state()
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.metrics_logged = len(self.logger.metrics)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        self.step_lrs.append(optimizer.param_groups[0]["lr"])


def _trainer(finder: BatchsageFinder, **kwargs: Any) -> tuple[pl.Trainer, Observer, RecordingLogger]:
    logger = RecordingLogger()
    observer = Observer(logger)
    trainer = pl.Trainer(accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[finder, observer], **kwargs)
    return trainer, observer, logger


def test_the_finder_sets_batch_lr_and_accumulation_and_leaves_the_weights() -> None:
    torch.manual_seed(0)
    module, data = Classifier(lr=0.05), Blobs(batch_size=16)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    finder = BatchsageFinder(monitor="val_acc", target=0.9, mode="max", budget_seconds=BUDGET)
    trainer, observer, logger = _trainer(finder, max_epochs=1)
    rng_before = torch.get_rng_state()
    trainer.fit(module, data)

    rec = finder.recommendation
    assert isinstance(rec, Recommendation) and rec.task == "Classifier" and rec.metric_name == "val_acc"
    assert rec.decision_seconds > 0
    # Where Lightning's finder puts the batch size: the datamodule (and its hparams).
    assert data.hparams.batch_size == rec.micro_batch_size
    assert trainer.train_dataloader.batch_size == rec.micro_batch_size
    full = [b for b in module.batch_sizes_seen if b == rec.micro_batch_size]
    assert len(full) >= len(module.batch_sizes_seen) - 1  # all but an epoch's last, partial batch
    assert trainer.accumulate_grad_batches == rec.accumulation_steps
    assert observer.lr == pytest.approx(rec.lr)
    assert module.hparams.lr == pytest.approx(rec.lr)  # the lr attribute, scaled with the optimiser
    # What the finder promised to leave alone.
    assert all(torch.equal(before[k], v) for k, v in observer.weights.items())
    assert torch.equal(observer.rng, rng_before)
    assert observer.metrics_logged == 0  # no probe reached the user's logger
    assert logger.metrics  # ... which then logged the real training


def _recommendation(base: Recommendation, batch_size: int, micro: int, lr: float, warmup: int
                    ) -> Recommendation:
    """``base`` with another answer (the evidence stays), for tests that need a given answer."""
    document = base.to_dict()
    document["recommended"].update(batch_size=batch_size, micro_batch_size=micro,
                                   accumulation_steps=batch_size // micro, lr=lr, warmup_steps=warmup)
    return Recommendation.from_dict(document)


@pytest.fixture(scope="module")
def base_recommendation() -> Recommendation:
    torch.manual_seed(0)
    return recommend_batch_size(Classifier(), Blobs(), monitor="val_acc", target=0.9, budget_seconds=BUDGET,
                                update_attr=False)


def test_a_given_recommendation_sets_accumulation_warmup_and_scheduler(base_recommendation: Recommendation
                                                                       ) -> None:
    rec = _recommendation(base_recommendation, batch_size=64, micro=16, lr=0.2, warmup=3)
    module, data = Classifier(lr=0.05, scheduler=True), Blobs(batch_size=32)
    finder = BatchsageFinder(recommendation=rec)
    trainer, observer, _ = _trainer(finder, max_steps=6)
    trainer.fit(module, data)

    assert data.hparams.batch_size == 16 and trainer.accumulate_grad_batches == 4
    assert set(module.batch_sizes_seen) == {16} and len(module.batch_sizes_seen) == 6 * 4
    assert module.hparams.lr == pytest.approx(0.2)
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == pytest.approx([0.2])
    # Linear warmup over three optimiser steps, then the recommended lr.
    assert observer.step_lrs == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.2, 0.2, 0.2])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)  # restored after each step


def test_recommend_before_fit_updates_the_attributes_and_nothing_else() -> None:
    torch.manual_seed(1)
    module, data = Classifier(lr=0.05), Blobs(batch_size=16)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    rec = recommend_batch_size(module, data, monitor="val_acc", target=0.9, budget_seconds=BUDGET)
    assert data.hparams.batch_size == rec.micro_batch_size
    assert module.hparams.lr == pytest.approx(0.05 * rec.lr / 0.05)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    # The task behind it: the module's base batch and lr, the optimiser it configures.
    task = lightning_task(Classifier(lr=0.05), data, monitor="val_acc", target=0.9, accumulate_grad_batches=2)
    assert task.base_lr == 0.05 and task.base_batch_size == 2 * rec.micro_batch_size
    assert task.resolved_lr_scaling() == "linear"  # SGD
    assert isinstance(task.make_optimizer(task.make_model().parameters(), 0.1), torch.optim.SGD)


def test_max_val_caps_the_batch_set_on_the_module(base_recommendation: Recommendation) -> None:
    large = _recommendation(base_recommendation, batch_size=256, micro=256, lr=0.2, warmup=0)
    capped = cap_micro_batch(large, 32)
    assert capped.micro_batch_size <= 32
    assert capped.micro_batch_size * capped.accumulation_steps == capped.batch_size
    assert capped.candidate(capped.batch_size).micro_batch_size == capped.micro_batch_size
    unchanged = _recommendation(base_recommendation, batch_size=16, micro=16, lr=0.2, warmup=0)
    assert cap_micro_batch(unchanged, 32) is unchanged


def test_fit_live_trains_the_users_module_to_the_target() -> None:
    torch.manual_seed(2)
    module, data = Classifier(lr=0.05), Blobs(batch_size=16)
    result = fit_live(module, data, monitor="val_acc", target=0.85, max_seconds=30)
    assert result.reached_target and result.final_metric >= 0.85
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                 result.model.state_dict().values(), strict=True))
    x, y = data.val_set.tensors
    with torch.no_grad():
        assert float((module.net(x).argmax(dim=1) == y).float().mean()) == pytest.approx(result.final_metric)
    assert data.hparams.batch_size == result.batch_size // result.schedule[-1]["accumulation_steps"]
    assert module.hparams.lr == pytest.approx(result.lr)


def test_what_the_integration_refuses_says_why_in_one_line() -> None:
    data = Blobs()
    data.setup()
    with pytest.raises(TaskError, match=r"monitor 'val_loss' was not logged .*logged: val_acc"):
        lightning_task(Classifier(), data, monitor="val_loss", target=0.1, mode="min")
    with pytest.raises(IntegrationError, match="Field bs not found"):
        lightning_task(Classifier(), data, monitor="val_acc", target=0.9, batch_arg_name="bs")
    manual = Classifier()
    manual.automatic_optimization = False
    with pytest.raises(IntegrationError, match="manual optimisation"):
        lightning_task(manual, data, monitor="val_acc", target=0.9)
    with pytest.raises(IntegrationError, match="needs monitor= and target="):
        BatchsageFinder()
    finder = BatchsageFinder(monitor="val_acc", target=0.9)
    trainer, _, _ = _trainer(finder, max_epochs=1)
    with pytest.raises(IntegrationError, match="dataloaders passed directly"):
        trainer.fit(Classifier(), train_dataloaders=data.train_dataloader(),
                    val_dataloaders=data.val_dataloader())
    ddp = types.SimpleNamespace(world_size=2)
    with pytest.raises(IntegrationError, match="distributed strategies yet"):
        BatchsageFinder(monitor="val_acc", target=0.9).setup(ddp, Classifier(), "fit")  # type: ignore[arg-type]


def test_the_validation_metric_is_reduced_as_lightning_reduces_it() -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    recorder = _LogRecorder()
    accuracy = torchmetrics.classification.BinaryAccuracy()
    for predictions, labels in ((torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])),
                                (torch.tensor([1, 1]), torch.tensor([1, 1]))):
        recorder.batch = (predictions, labels)
        accuracy.update(predictions, labels)
        recorder.log("acc", (predictions == labels).float().mean())  # mean weighted by batch size
        recorder.log_dict({"n": float(len(labels))}, reduce_fx="sum")
        recorder.log("metric", accuracy)
    assert recorder.value("acc") == pytest.approx(5 / 6)
    assert recorder.value("n") == 6.0
    assert recorder.value("metric") == pytest.approx(5 / 6)


def test_the_recommendation_round_trips_through_the_callback_state(
        base_recommendation: Recommendation) -> None:
    finder = BatchsageFinder(recommendation=base_recommendation)
    restored = BatchsageFinder(monitor="val_acc", target=0.9)
    restored.load_state_dict(finder.state_dict())
    assert restored.recommendation is not None
    assert dataclasses.asdict(restored.recommendation.candidates[0]) == dataclasses.asdict(
        base_recommendation.candidates[0])
    assert restored.recommendation.batch_size == base_recommendation.batch_size
