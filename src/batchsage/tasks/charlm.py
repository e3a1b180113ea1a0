"""``charlm``: a character-level GRU language model on Python's own standard-library sources.

The text is the concatenation of the standard library's ``.py`` files in sorted order (local on
every Python install; override with ``BATCHSAGE_CHARLM_TEXT=path``), mapped to bytes below 128.
Sequences of 64 characters predict the next character; the metric is validation loss in nats per
character.
"""

from __future__ import annotations

import os
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from batchsage.task import Task, TaskError
from batchsage.tasks.common import mean_loss, next_token_loss

SEQ_LEN = 64
VOCAB = 128
TRAIN_CHARS = 1_500_000
#: 512 validation sequences: a validation pass costs about as much as a few training steps, so
#: validating every 1,024 samples (steps-to-target resolved to a few %) stays affordable.
VAL_CHARS = 512 * SEQ_LEN + 1


#: Validation loss (nats per character) that counts as trained. 1.45 is the stretch where the
#: curve flattens: the ground truth's best (B=32, lr 0.008) needs 10.9 s on one CPU thread (median
#: of four seeds), B=32 at the base lr 24 s (docs/tasks.md has every batch size; at the old target
#: 1.6 the best took 6 s).
TARGET_VAL_LOSS = 1.45


def _stdlib_text(limit: int) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= limit:
            break
    if total < limit // 4:
        raise TaskError(f"too little text under {root} for the charlm task ({total} characters)")
    return "".join(parts)[:limit]


@lru_cache(maxsize=1)
def load() -> tuple[TensorDataset, TensorDataset]:
    override = os.environ.get("BATCHSAGE_CHARLM_TEXT")
    total = TRAIN_CHARS + VAL_CHARS
    if override:
        path = Path(override)
        if not path.is_file():
            raise TaskError(f"BATCHSAGE_CHARLM_TEXT points to {path}, which does not exist")
        text = path.read_text(encoding="utf-8", errors="replace")[:total]
    else:
        text = _stdlib_text(total)
    codes = torch.tensor([min(ord(c), VOCAB - 1) for c in text], dtype=torch.long)
    split_at = int(len(codes) * TRAIN_CHARS / total)
    return _windows(codes[:split_at]), _windows(codes[split_at:])


def _windows(codes: torch.Tensor) -> TensorDataset:
    count = (len(codes) - 1) // SEQ_LEN
    inputs = codes[: count * SEQ_LEN].view(count, SEQ_LEN)
    targets = codes[1 : count * SEQ_LEN + 1].view(count, SEQ_LEN)
    return TensorDataset(inputs, targets)


class CharGRU(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.gru = nn.GRU(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embed(inputs))
        return self.head(states)


lm_loss = next_token_loss


def val_loss(model: nn.Module, data: Dataset, chunk: int = 512) -> float:
    return mean_loss(lm_loss, model, data, chunk)


def make_task() -> Task:
    train, val = load()
    return Task(
        name="charlm",
        make_model=CharGRU,
        train_data=train,
        val_data=val,
        loss_fn=lm_loss,
        make_optimizer=lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
        metric_fn=val_loss,
        target=TARGET_VAL_LOSS,
        higher_is_better=False,
        base_batch_size=32,
        base_lr=2e-3,
        max_samples=1_000_000,
        metric_name="val_loss",
        eval_every_samples=1_024,
        description="Python stdlib sources, char-level GRU (128 hidden), seq 64, AdamW",
    )
