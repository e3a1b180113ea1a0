"""Pieces the built-in tasks share: losses, accuracy, a chunked validation loss, a seeded split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


def next_token_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of a language model's logits (batch, sequence, vocabulary) against the next tokens."""
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def mean_loss(loss_fn: Callable[[nn.Module, Any], torch.Tensor], model: nn.Module, data: Dataset,
              chunk: int) -> float:
    """``loss_fn`` over all of ``data`` (a TensorDataset of inputs, targets), ``chunk`` samples at a
    time, weighted by the samples in each chunk."""
    inputs, targets = data.tensors  # type: ignore[attr-defined]
    total = 0.0
    for start in range(0, len(inputs), chunk):
        batch = (inputs[start : start + chunk], targets[start : start + chunk])
        total += float(loss_fn(model, batch)) * len(batch[0])
    return total / len(inputs)


def accuracy(model: nn.Module, data: Dataset, chunk: int = 4096) -> float:
    """Fraction of correctly classified validation samples (TensorDataset of inputs, labels)."""
    inputs, labels = data.tensors  # type: ignore[attr-defined]
    correct = 0
    for start in range(0, len(labels), chunk):
        logits = model(inputs[start : start + chunk])
        correct += int((logits.argmax(dim=1) == labels[start : start + chunk]).sum())
    return correct / len(labels)


def split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """A seeded shuffle split into train and validation TensorDatasets."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (
        TensorDataset(torch.as_tensor(x[train]), torch.as_tensor(y[train])),
        TensorDataset(torch.as_tensor(x[val]), torch.as_tensor(y[val])),
    )
