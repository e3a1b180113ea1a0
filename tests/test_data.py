"""BatchStream and the batch helpers: same batches as a DataLoader, no repeats within an epoch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from batchsage.data import BatchStream, gather, move_to, split_batch


def _tensor_dataset(num: int = 50) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(num, 3, 4, generator=generator),
        torch.arange(num),
        torch.randint(0, 5, (num,), generator=generator),
    )


class _DictDataset(Dataset):
    """A plain map-style dataset (no ``tensors``): BatchStream must take the collate path."""

    def __init__(self, num: int = 30) -> None:
        self.num = num

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": torch.full((2,), float(index)), "label": index % 3, "name": f"item{index}"}


def _loader_batch(dataset: Dataset, indices: torch.Tensor) -> Any:
    loader = DataLoader(dataset, batch_size=len(indices), sampler=indices.tolist())
    return next(iter(loader))


def _assert_same_batch(got: Any, want: Any) -> None:
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            _assert_same_batch(got[key], want[key])
    elif isinstance(want, list | tuple):
        assert len(got) == len(want)
        for item_got, item_want in zip(got, want, strict=True):
            _assert_same_batch(item_got, item_want)
    else:
        assert got == want


@pytest.mark.parametrize("batch_size", [1, 7, 16, 50])
def test_tensor_fast_path_equals_dataloader_collation(batch_size: int) -> None:
    dataset = _tensor_dataset()
    stream = BatchStream(dataset, seed=3)
    for _ in range(3):
        indices = stream.next_indices(batch_size).clone()
        _assert_same_batch(gather(dataset, indices), _loader_batch(dataset, indices))


def test_next_batch_equals_dataloader_for_the_same_indices() -> None:
    dataset = _tensor_dataset()
    batch = BatchStream(dataset, seed=9).next_batch(12)
    indices = BatchStream(dataset, seed=9).next_indices(12)
    _assert_same_batch(batch, _loader_batch(dataset, indices))


def test_generic_dataset_collates_like_dataloader() -> None:
    dataset = _DictDataset()
    stream = BatchStream(dataset, seed=1)
    indices = stream.next_indices(8).clone()
    _assert_same_batch(gather(dataset, indices), _loader_batch(dataset, indices))


def test_variable_batch_sizes_never_repeat_a_sample_within_an_epoch() -> None:
    size = 50
    stream = BatchStream(_tensor_dataset(size), seed=5)
    drawn = torch.cat([stream.next_indices(b) for b in [7, 1, 13, 30, 2, 49, 8, 17, 23] * 3])
    epochs = len(drawn) // size
    assert epochs >= 4
    for epoch in range(epochs):
        chunk = drawn[epoch * size : (epoch + 1) * size]
        assert torch.equal(chunk.sort().values, torch.arange(size)), f"epoch {epoch} repeats a sample"


def test_epochs_are_reshuffled_and_seeded() -> None:
    size = 40
    first = BatchStream(_tensor_dataset(size), seed=2).next_indices(2 * size)
    again = BatchStream(_tensor_dataset(size), seed=2).next_indices(2 * size)
    other = BatchStream(_tensor_dataset(size), seed=3).next_indices(2 * size)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first[:size], first[size:])  # a fresh permutation each epoch


def test_unshuffled_stream_walks_in_order() -> None:
    stream = BatchStream(_tensor_dataset(10), shuffle=False)
    assert stream.next_indices(4).tolist() == [0, 1, 2, 3]
    assert stream.next_indices(8).tolist() == [4, 5, 6, 7, 8, 9, 0, 1]


def test_batch_larger_than_the_dataset_spans_epochs() -> None:
    indices = BatchStream(_tensor_dataset(10), seed=0).next_indices(25)
    assert len(indices) == 25
    assert torch.equal(indices[:10].sort().values, torch.arange(10))


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_batch_size_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be positive"):
        BatchStream(_tensor_dataset(), seed=0).next_indices(bad)


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _concat([part[key] for part in parts]) for key in first}
    return type(first)(_concat(list(column)) for column in zip(*parts, strict=True))


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "batch",
    [
        torch.arange(14.0).reshape(7, 2),
        [torch.arange(7), torch.ones(7, 3)],
        (torch.arange(7), torch.zeros(7)),
        {"x": torch.arange(21).reshape(7, 3), "y": [torch.arange(7), torch.arange(7) * 2]},
    ],
    ids=["tensor", "list", "tuple", "nested-dict"],
)
def test_split_batch_round_trips(batch: Any, parts: int) -> None:
    pieces = split_batch(batch, parts)
    assert len(pieces) == parts
    assert all(type(piece) is type(batch) for piece in pieces)
    sizes = [len(piece) if isinstance(piece, torch.Tensor) else None for piece in pieces]
    if isinstance(batch, torch.Tensor):
        assert max(sizes) - min(sizes) <= 1  # as even as possible
    _assert_same_batch(_concat(pieces), batch)


def test_split_batch_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="cannot split a batch of type str"):
        split_batch("not a batch", 2)


def test_move_to_cpu_is_the_identity() -> None:
    batch = [torch.ones(2), {"y": torch.zeros(2)}]
    assert move_to(batch, torch.device("cpu")) is batch
