"""``linreg``: synthetic linear regression with known noise.

y = x·w* + σ·ε with x ~ N(0, I_d), ε ~ N(0, 1). The loss is ½·mean((x·w − y)²), so the gradient
statistics have a closed form (see :func:`gradient_statistics`) that tests use to check the
noise-scale estimator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from batchsage.task import Task

DIM = 64
NOISE_STD = 0.5
TRAIN_SAMPLES = 16_384
VAL_SAMPLES = 4_096
DATA_SEED = 1234


def make_data(num: int, generator: torch.Generator, w_star: torch.Tensor) -> TensorDataset:
    x = torch.randn(num, DIM, generator=generator)
    y = x @ w_star + NOISE_STD * torch.randn(num, generator=generator)
    return TensorDataset(x, y)


def half_mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return 0.5 * ((model(x).squeeze(-1) - y) ** 2).mean()


def val_loss(model: nn.Module, data: Dataset) -> float:
    x, y = data.tensors  # type: ignore[attr-defined]
    return float(0.5 * ((model(x).squeeze(-1) - y) ** 2).mean())


def gradient_statistics(w: torch.Tensor, w_star: torch.Tensor) -> tuple[float, float]:
    """Population (tr Σ, |G|²) of the per-example gradient at weights ``w``.

    Per-example gradient g = x·(xᵀΔ − σε) with Δ = w − w*. G = E[g] = Δ, and for Gaussian x
    E|g|² = (d+2)|Δ|² + dσ², so tr Σ = E|g|² − |G|² = (d+1)|Δ|² + dσ².
    """
    delta_sq = float(((w - w_star) ** 2).sum())
    return (DIM + 1) * delta_sq + DIM * NOISE_STD**2, delta_sq


def make_task() -> Task:
    generator = torch.Generator().manual_seed(DATA_SEED)
    w_star = torch.randn(DIM, generator=generator)
    train = make_data(TRAIN_SAMPLES, generator, w_star)
    val = make_data(VAL_SAMPLES, generator, w_star)
    floor = 0.5 * NOISE_STD**2
    return Task(
        name="linreg",
        make_model=lambda: nn.Linear(DIM, 1, bias=False),
        train_data=train,
        val_data=val,
        loss_fn=half_mse,
        make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        metric_fn=val_loss,
        # Within 10 % of the noise floor ½σ²: the last stretch is where the batch size matters.
        target=floor * 1.10,
        higher_is_better=False,
        base_batch_size=32,
        base_lr=0.05,
        max_samples=2_000_000,
        metric_name="val_loss",
        eval_every_samples=2_048,
        description=f"synthetic linear regression, d={DIM}, noise σ={NOISE_STD}, SGD",
        extras={"w_star": w_star, "noise_std": NOISE_STD},
    )
