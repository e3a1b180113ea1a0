"""A memory-heavy task: ~390 KiB of activations per sample (64 features through a 32,768-wide tanh
layer), SGD with momentum. Memory, not data, sets its batch-size ceiling on any machine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from batchsage import Task

WIDTH = 256 * 128


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 2))


def accuracy(model: nn.Module, data: Dataset) -> float:
    inputs, labels = data.tensors  # type: ignore[attr-defined]
    return float((model(inputs).argmax(1) == labels).float().mean())


def make_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 64, generator=generator)
    y = (x[:, :8].sum(1) > 0).long()
    return Task(
        name="heavy-activations", make_model=make_model,
        train_data=TensorDataset(x[:18_000], y[:18_000]), val_data=TensorDataset(x[18_000:], y[18_000:]),
        loss_fn=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
        make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
        metric_fn=accuracy, target=0.95, higher_is_better=True, base_batch_size=32, base_lr=0.01,
        max_samples=2_000_000, metric_name="accuracy",
        description="64 features through a 32,768-wide tanh layer (~390 KiB of activations a sample)",
    )
