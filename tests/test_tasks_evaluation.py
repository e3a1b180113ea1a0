"""The evaluation group of built-in tasks: doclm, fashion-bncnn, waves-mlp.

Each loads and validates, has the data shapes its docstring promises, is deterministic, and
trains for a few steps through the real loop. Models are narrowed where a test needs the data, not
the cost (the ``width``/``channels``/``hidden`` parameters).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from batchsage import load_task
from batchsage.engine import train
from batchsage.task import TaskError
from batchsage.tasks import BUILTIN_NAMES, GROUPS, group_of
from batchsage.tasks.fashion import data_dir

EVALUATION = ("doclm", "fashion-bncnn", "waves-mlp")

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
needs_fashion = pytest.mark.skipif(
    not any((data_dir() / name).is_file() for name in FASHION_FILES),
    reason="Fashion-MNIST is not installed (make install does)",
)


# --- groups -----------------------------------------------------------------------------------


def test_groups_split_every_builtin_task_once() -> None:
    assert set(GROUPS) == {"development", "evaluation"}
    assert GROUPS["evaluation"] == EVALUATION
    listed = [name for names in GROUPS.values() for name in names]
    assert sorted(listed) == sorted(BUILTIN_NAMES)
    assert len(listed) == len(set(listed))
    assert group_of("charlm") == "development"
    assert group_of("doclm") == "evaluation"
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        group_of("nope")


# --- doclm ------------------------------------------------------------------------------------


def test_byte_pair_merges_are_the_most_frequent_pairs_and_deterministic() -> None:
    from batchsage.tasks.doclm import Tokenizer, learn_merges

    words = Counter({" the": 10, " then": 4, " other": 3, "x": 1})
    merges = learn_merges(words, 3)
    assert merges == learn_merges(Counter(dict(reversed(list(words.items())))), 3)
    # ' t', 'th', 'he' all occur 17 times among ' the', ' then', ' other' ('th' and 'he' 17,
    # ' t' 14): ties go to the larger pair of ids, so ('t','h') = (116, 104) comes first.
    assert merges[0] == (ord("t"), ord("h"))
    tokenizer = Tokenizer(merges)
    text = " the other then x"
    tokens = tokenizer.encode(text)
    assert len(tokens) < len(text.encode())
    assert tokenizer.decode(tokens) == text
    assert max(tokens) < 256 + len(merges)


def test_doclm_data_are_next_token_windows() -> None:
    from batchsage.tasks import doclm

    task = load_task(doclm.make_task(width=16))
    inputs, targets = task.train_data.tensors  # type: ignore[attr-defined]
    assert inputs.shape[1] == doclm.SEQ_LEN and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(targets[:-1, -1], inputs[1:, 0])  # windows tile the token stream
    assert int(inputs.max()) < doclm.VOCAB and int(inputs.min()) >= 0
    assert task.num_val_samples == doclm.VAL_SEQUENCES
    assert task.num_train_samples > 10_000  # about a million training tokens
    assert task.resolved_lr_scaling() == "sqrt"
    _, _, tokenizer = doclm.load(None)
    # The vocabulary compresses prose: at least 1.5 characters per token.
    sample = "Return the number of items in a container."
    assert len(sample) / len(tokenizer.encode(sample)) >= 1.5
    assert tokenizer.decode(tokenizer.encode(sample)) == sample


def test_doclm_trains_a_few_steps_and_its_loss_falls() -> None:
    from batchsage.tasks import doclm

    task = load_task(doclm.make_task(width=16))
    result = train(task, 16, 3e-3, max_samples=16 * 120, eval_every_samples=16 * 120, stop_at_target=False)
    assert result.steps == 120 and not result.diverged
    assert result.final_metric < math.log(doclm.VOCAB) - 0.5  # well below a uniform guess


def test_doclm_text_override_splits_paragraphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchsage.tasks import doclm

    paragraphs = [f"Paragraph {i} says that the value {i * 7} is returned when given." for i in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    monkeypatch.setenv("BATCHSAGE_DOCLM_TEXT", str(path))
    task = doclm.make_task(width=16)
    assert 0 < task.num_val_samples < task.num_train_samples
    monkeypatch.setenv("BATCHSAGE_DOCLM_TEXT", str(tmp_path / "missing.txt"))
    with pytest.raises(TaskError, match=r"BATCHSAGE_DOCLM_TEXT points to .*missing\.txt"):
        doclm.make_task(width=16)


def test_warmup_adamw_warms_up_under_the_lr_the_caller_sets() -> None:
    from batchsage.tasks.doclm import WarmupAdamW

    def first_update(lr: float, steps_before: int, warmup: int) -> float:
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = WarmupAdamW([weight], lr=lr, warmup_steps=warmup, weight_decay=0.0)
        for _ in range(steps_before + 1):
            before = float(weight.detach())
            weight.grad = torch.ones(1)
            optimizer.step()
        assert optimizer.param_groups[0]["lr"] == lr  # the caller's lr is left as it was set
        return before - float(weight.detach())

    # Adam's first step moves by the lr: the warmup scales it by step / warmup_steps.
    assert first_update(0.1, 0, 10) == pytest.approx(0.01, rel=1e-4)
    assert first_update(0.1, 4, 10) == pytest.approx(0.05, rel=1e-3)
    assert first_update(0.1, 20, 10) == pytest.approx(0.1, rel=1e-3)
    assert first_update(0.1, 0, 0) == pytest.approx(0.1, rel=1e-4)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = WarmupAdamW([weight], lr=0.1, warmup_steps=10)
    weight.grad = torch.ones(1)
    optimizer.step()
    assert optimizer.state_dict()["param_groups"][0]["warmup_step"] == 1
    assert isinstance(optimizer, torch.optim.AdamW)


# --- fashion-bncnn ----------------------------------------------------------------------------


@needs_fashion
def test_fashion_bncnn_depends_on_the_batch_in_training_only() -> None:
    from batchsage.tasks import fashion_bn

    task = load_task(fashion_bn.make_task(channels=(4, 8), hidden=16))
    inputs, labels = task.train_data.tensors  # type: ignore[attr-defined]
    assert inputs.shape == (60_000, 1, 28, 28) and labels.shape == (60_000,)
    assert task.num_val_samples == 5_000
    assert task.resolved_lr_scaling() == "linear"
    torch.manual_seed(0)
    model = task.make_model()
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    first, others = inputs[:1], inputs[1:64]
    model.train()
    alone = model(torch.cat([first, others[:7]]))[0]
    with_more = model(torch.cat([first, others]))[0]
    assert not torch.allclose(alone, with_more, atol=1e-4)  # batch statistics change the output
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(torch.cat([first, others[:7]]))[0], model(torch.cat([first, others]))[0],
                              atol=1e-5)


@needs_fashion
def test_fashion_bncnn_trains_a_few_steps() -> None:
    from batchsage.tasks import fashion_bn

    task = load_task(fashion_bn.make_task(channels=(4, 8), hidden=16))
    result = train(task, 64, 0.05, max_samples=64 * 60, eval_every_samples=64 * 60, stop_at_target=False)
    assert result.steps == 60 and not result.diverged
    assert result.final_metric > 0.4  # ten classes: 0.1 is chance


# --- waves-mlp --------------------------------------------------------------------------------


def test_waves_data_are_deterministic_standardised_and_nearly_noiseless() -> None:
    from batchsage.tasks import waves

    train_data, val_data = waves.load()
    x, y = train_data.tensors
    assert x.shape == (waves.TRAIN_SAMPLES, waves.FEATURES) and y.shape == (waves.TRAIN_SAMPLES,)
    assert len(val_data) == waves.VAL_SAMPLES
    assert abs(float(y.mean())) < 0.01 and float(y.std()) == pytest.approx(1.0, abs=0.01)
    waves.load.cache_clear()
    again, _ = waves.load()
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    # The labels are the teacher function plus noise of NOISE_STD: the residual of the exact
    # function is the noise alone, far below the target.
    frequencies, phases, amplitudes = waves.teacher(torch.Generator().manual_seed(waves.DATA_SEED))
    clean = torch.sin(x @ frequencies.T + phases) @ amplitudes
    clean = (clean - clean.mean()) / clean.std()
    residual = y - clean
    assert float(residual.std()) == pytest.approx(waves.NOISE_STD, rel=0.05)
    assert float((residual**2).mean()) < waves.TARGET_VAL_MSE / 10


def test_waves_trains_a_few_steps_and_its_error_falls() -> None:
    from batchsage.tasks import waves

    task = load_task(waves.make_task(hidden=32))
    assert task.resolved_lr_scaling() == "sqrt"
    result = train(task, 256, 3e-3, max_samples=256 * 200, eval_every_samples=256 * 200, stop_at_target=False)
    assert result.steps == 200 and not result.diverged
    assert result.final_metric < 0.5  # predicting the mean scores 1.0


@pytest.mark.parametrize("name", EVALUATION)
def test_evaluation_tasks_load_by_name(name: str) -> None:
    if name == "fashion-bncnn" and needs_fashion.args[0]:
        pytest.skip("Fashion-MNIST is not installed")
    task = load_task(name)
    assert task.name == name and group_of(name) == "evaluation"
    assert task.num_train_samples > task.base_batch_size
    assert math.isfinite(task.target) and task.description
