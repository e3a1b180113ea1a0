"""``fashion-bncnn``: a convolutional net with BatchNorm on Fashion-MNIST, SGD with momentum.

The data are those of ``fashion-cnn`` (:mod:`batchsage.tasks.fashion`: 60,000 training images,
the first 5,000 test images for validation). The model: two 3×3 convolutions (16 and 32
channels), each followed by BatchNorm, ReLU and 2×2 max pooling, then a fully connected layer of
64 with BatchNorm and ReLU, and the linear classifier; the layers before a BatchNorm have no bias
(its shift is one). The fully connected layer's BatchNorm normalises over the examples alone, so
a training micro-batch must hold at least two (PyTorch refuses one).
SGD with Nesterov momentum 0.9 and weight decay 5e-4, as BatchNorm nets are usually trained.

BatchNorm normalises each training step by the statistics of the batch itself, so the batch size
changes what the model computes, not only how noisy its gradient is: a small batch normalises by
noisy statistics (a regulariser), and gradient accumulation normalises each micro-batch on its
own. Validation runs in eval mode, on the running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from batchsage.task import Task
from batchsage.tasks.common import accuracy, cross_entropy_loss
from batchsage.tasks.fashion import load

CHANNELS = (16, 32)
HIDDEN = 64

#: Validation accuracy that counts as trained. Calibration (2026-12-04, one torch thread on 2 shared
#: cores): B=32 at lr 0.02 is at 0.85 after 2 s, 0.875 at 4–8 s, 0.89 at 13–20 s, first ≥ 0.90 at
#: 24 s, then 0.905 ± 0.004 from 35 s to 60 s; B=128 at lr 0.08 first reaches 0.90 at 30 s and 0.91
#: at 51 s. 0.90 is where the curve has flattened: the next 30 s add half a point. (A head of global
#: average pooling instead of the fully connected layer learnt slower, 0.87 after 60 s, and its
#: eval-mode accuracy swung by ±4 points with the running statistics; with this head it stays within
#: half a point of what statistics re-estimated on 2,048 training images give.) The ground truth is
#: in docs/tasks.md.
TARGET_ACCURACY = 0.90


def _conv_bn(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]


def make_model(channels: tuple[int, int] = CHANNELS, hidden: int = HIDDEN) -> nn.Module:
    first, second = channels
    return nn.Sequential(
        *_conv_bn(1, first), nn.MaxPool2d(2),
        *_conv_bn(first, second), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(second * 7 * 7, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def make_optimizer(params: object, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)  # type: ignore[arg-type]


def make_task(channels: tuple[int, int] = CHANNELS, hidden: int = HIDDEN) -> Task:
    """The built-in task; ``channels`` and ``hidden`` narrow the net for tests that need its data,
    not its cost."""
    train, val = load()
    return Task(
        name="fashion-bncnn",
        make_model=lambda: make_model(channels, hidden),
        train_data=train,
        val_data=val,
        loss_fn=cross_entropy_loss,
        make_optimizer=make_optimizer,
        metric_fn=accuracy,
        target=TARGET_ACCURACY,
        higher_is_better=True,
        base_batch_size=32,
        base_lr=0.01,
        max_samples=1_000_000,
        metric_name="accuracy",
        eval_every_samples=4_096,
        description=(
            f"Fashion-MNIST (60k train / 5k val), CNN 2×(conv + BatchNorm) {channels[0]}-{channels[1]} "
            f"+ fc {hidden} + BatchNorm, SGD Nesterov 0.9"
        ),
    )
