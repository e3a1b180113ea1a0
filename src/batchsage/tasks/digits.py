"""``digits-mlp``: scikit-learn's bundled 8×8 digits, a two-hidden-layer MLP, SGD with momentum."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from batchsage.task import Task
from batchsage.tasks.common import accuracy, cross_entropy_loss, split


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def make_task() -> Task:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    y = digits.target.astype(np.int64)
    train, val = split(x, y, val_fraction=0.2, seed=0)
    return Task(
        name="digits-mlp",
        make_model=make_model,
        train_data=train,
        val_data=val,
        loss_fn=cross_entropy_loss,
        make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
        metric_fn=accuracy,
        target=0.975,
        higher_is_better=True,
        base_batch_size=32,
        base_lr=0.01,
        max_samples=400_000,
        metric_name="accuracy",
        eval_every_samples=1_024,
        description="sklearn digits (1437 train / 360 val), MLP 64-256-256-10, SGD momentum 0.9",
    )
