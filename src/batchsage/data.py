"""Batches drawn from a map-style dataset, of any size, in a seeded shuffled order.

A batch is exactly what ``torch.utils.data.DataLoader(dataset, batch_size=b)`` would yield
(default collation). For datasets that hold tensors (``TensorDataset`` or anything with a
``tensors`` attribute) the samples are gathered by one tensor index instead of one Python call
per sample: same batch, without the per-sample overhead that would otherwise dominate the step
time of small models and distort every throughput measurement.

The batch size may change from one call to the next (adaptive batch sizes need that): indices
come from one stream of reshuffled epochs, so no sample is repeated before every other one has
been seen.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate


class BatchStream:
    """An endless stream of shuffled batches whose size is chosen per call."""

    def __init__(self, dataset: Dataset, *, seed: int = 0, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0
        self._tensors: tuple[torch.Tensor, ...] | None = getattr(dataset, "tensors", None)

    def _refill(self) -> None:
        if self.shuffle:
            fresh = torch.randperm(self.size, generator=self.generator)
        else:
            fresh = torch.arange(self.size)
        self._order = torch.cat([self._order[self._position :], fresh])
        self._position = 0

    def next_indices(self, batch_size: int) -> torch.Tensor:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        while len(self._order) - self._position < batch_size:
            self._refill()
        indices = self._order[self._position : self._position + batch_size]
        self._position += batch_size
        return indices

    def next_batch(self, batch_size: int) -> Any:
        return gather(self.dataset, self.next_indices(batch_size), self._tensors)

    def fork(self) -> BatchStream:
        """A stream over the same data (shared, not copied) that continues exactly as this one."""
        twin = copy.copy(self)
        twin.generator = torch.Generator()
        twin.generator.set_state(self.generator.get_state())
        twin._order = self._order.clone()
        return twin

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the shuffling generator, the pending order and the position in it."""
        return {"generator": self.generator.get_state(), "order": self._order[self._position :].clone(),
                "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a stream over the same data set."""
        if int(state["size"]) != self.size:
            raise ValueError(f"stream state is for {state['size']} samples, this data set has {self.size}")
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()
        self._position = 0


def gather(dataset: Dataset, indices: torch.Tensor, tensors: tuple[torch.Tensor, ...] | None = None) -> Any:
    """The default-collated batch of ``dataset`` at ``indices``."""
    if tensors is None:
        tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        # TensorDataset items are tuples; default_collate turns a tuple batch into a list.
        return [t[indices] for t in tensors]
    return default_collate([dataset[int(i)] for i in indices])


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split a collated batch into ``parts`` micro-batches along the first dimension."""
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        return list(torch.tensor_split(batch, parts))
    if isinstance(batch, list | tuple):
        columns = [split_batch(item, parts) for item in batch]
        return [type(batch)(column[i] for column in columns) for i in range(parts)]
    if isinstance(batch, dict):
        columns = {key: split_batch(value, parts) for key, value in batch.items()}
        return [{key: column[i] for key, column in columns.items()} for i in range(parts)]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} into micro-batches")


def batch_len(batch: Any) -> int:
    """Number of samples in a collated batch (the first dimension of its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, list | tuple):
        return batch_len(batch[0])
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    raise TypeError(f"cannot find the batch dimension of a {type(batch).__name__} batch")


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a collated batch to ``device``."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    return batch


def nonfinite_values(dataset: Dataset) -> int | None:
    """How many NaN/inf values a tensor data set holds (None: not a tensor data set)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is None:
        return None
    return sum(int((~torch.isfinite(t)).sum()) for t in tensors if t.is_floating_point())
