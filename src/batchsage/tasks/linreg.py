"""``linreg``: synthetic, ill-conditioned linear regression with known noise.

y = x·w* + σ·ε with x ~ N(0, Λ), Λ = diag(λ_1 … λ_d), ε ~ N(0, 1). The eigenvalues λ_i are
log-spaced from 1 down to 1/CONDITION_NUMBER, and w*_i = SIGNAL_SCALE·z_i/√λ_i (z ~ N(0, 1)), so
every direction carries the same share of the initial loss: the slow directions (small λ) must
be learned too, which takes SGD about CONDITION_NUMBER/(lr·λ_1) steps. The learning rate is
capped by stability (lr < 2/λ_1) at large batches and by gradient noise at small ones, so the
batch/lr trade-off is real, and the target, 10 % above the noise floor, is close enough to it
that the noise matters.

The loss is ½·mean((x·w − y)²); its gradient statistics have a closed form
(:func:`gradient_statistics`) that tests use to check the noise-scale estimator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from batchsage.task import Task

DIM = 128
CONDITION_NUMBER = 30_000.0
NOISE_STD = 0.5
SIGNAL_SCALE = 0.5
TRAIN_SAMPLES = 16_384
VAL_SAMPLES = 8_192
DATA_SEED = 1234
#: Target: validation loss within this fraction above the validation set's own noise floor.
TARGET_MARGIN = 0.10

#: Input covariance eigenvalues λ_i (Λ is diagonal: SGD is rotation-invariant, so nothing is lost).
EIGENVALUES = torch.logspace(0.0, -torch.log10(torch.tensor(CONDITION_NUMBER)).item(), DIM)


def make_w_star(generator: torch.Generator) -> torch.Tensor:
    """The true weights: equal initial loss ½·SIGNAL_SCALE² per direction on average."""
    return SIGNAL_SCALE * torch.randn(DIM, generator=generator) / EIGENVALUES.sqrt()


def make_data(num: int, generator: torch.Generator, w_star: torch.Tensor) -> TensorDataset:
    x = torch.randn(num, DIM, generator=generator) * EIGENVALUES.sqrt()
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

    Per-example gradient g = x·r with r = xᵀΔ − σε and Δ = w − w*. With x ~ N(0, Λ):

    - G = E[g] = E[x xᵀ]Δ = ΛΔ, so |G|² = |ΛΔ|².
    - ε is independent of x with mean 0, so E|g|² = E[|x|²(xᵀΔ)²] + σ²·E|x|².
      Isserlis' theorem, E[x_a x_a x_b x_c] = Λ_aa Λ_bc + 2 Λ_ab Λ_ac, gives
      E[|x|²(xᵀΔ)²] = tr Λ · ΔᵀΛΔ + 2|ΛΔ|², and E|x|² = tr Λ.
    - tr Σ = E|g|² − |G|² = tr Λ · (ΔᵀΛΔ + σ²) + |ΛΔ|².

    (With Λ = I this is the familiar (d+1)|Δ|² + dσ².) These are population values; a finite
    training set's empirical statistics scatter around them.
    """
    delta = (w - w_star).reshape(-1).to(EIGENVALUES.dtype)
    scaled = EIGENVALUES * delta
    g_sq = float((scaled**2).sum())
    quad = float((delta * scaled).sum())
    trace = float(EIGENVALUES.sum())
    return trace * (quad + NOISE_STD**2) + g_sq, g_sq


def make_task() -> Task:
    generator = torch.Generator().manual_seed(DATA_SEED)
    w_star = make_w_star(generator)
    train = make_data(TRAIN_SAMPLES, generator, w_star)
    val = make_data(VAL_SAMPLES, generator, w_star)
    # The floor is measured on the validation set itself (its noise draws are known), so the
    # target is exactly TARGET_MARGIN above the best loss any weights can expect there.
    x_val, y_val = val.tensors
    floor = float(0.5 * ((x_val @ w_star - y_val) ** 2).mean())
    return Task(
        name="linreg",
        make_model=lambda: nn.Linear(DIM, 1, bias=False),
        train_data=train,
        val_data=val,
        loss_fn=half_mse,
        make_optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        metric_fn=val_loss,
        target=floor * (1.0 + TARGET_MARGIN),
        higher_is_better=False,
        base_batch_size=32,
        base_lr=0.2,
        max_samples=40_000_000,
        metric_name="val_loss",
        eval_every_samples=8_192,
        description=(
            f"synthetic linear regression, d={DIM}, input condition number {CONDITION_NUMBER:.0f}, "
            f"noise σ={NOISE_STD}, SGD"
        ),
        extras={
            "w_star": w_star,
            "noise_std": NOISE_STD,
            "eigenvalues": EIGENVALUES,
            "val_noise_floor": floor,
        },
    )
