"""The Hugging Face integration, with the real transformers Trainer, offline, on CPU: a two-layer BERT
built from a config (no hub download) classifying synthetic token sequences of varying length,
padded by the user's own collator. Every test checks what lands in the user's objects."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers", reason="needs the hf extra")
pytest.importorskip("accelerate", reason="needs the hf extra")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from batchsage.integrations._common import IntegrationError  # noqa: E402
from batchsage.integrations.hf import NoiseScaleCallback, hf_task, recommend_training_args  # noqa: E402

BUDGET = 3.0


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One torch thread: tiny models on shared cores run many times slower with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tokens(Dataset):
    """Sequences of 4-11 tokens; the label is whether the first token is below 20. Items carry an
    extra column the model does not take, which the Trainer's column filter must drop."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(size):
            length = int(torch.randint(4, 12, (1,), generator=generator))
            ids = torch.randint(3, 50, (length,), generator=generator)
            self.items.append({"input_ids": ids.tolist(), "label": int(ids[0] < 20), "source": "synthetic"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


class PadCollator:
    """Pads a list of items to the longest; counts its calls and the columns it was given."""

    def __init__(self) -> None:
        self.calls = 0
        self.columns: set[str] = set()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.columns.update(*(f.keys() for f in features))
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, feature in enumerate(features):
            ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
            mask[row, : len(feature["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([f["label"] for f in features])}


class MetricCounter:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, prediction: Any) -> dict[str, float]:
        self.sizes.append(len(prediction.label_ids))
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def arguments(tmp_path: Any, **overrides: Any) -> TrainingArguments:
    fields: dict[str, Any] = {"output_dir": str(tmp_path), "per_device_train_batch_size": 8,
                              "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "weight_decay": 0.01,
                              "num_train_epochs": 3, "use_cpu": True, "report_to": "none", "logging_steps": 5,
                              "save_strategy": "no", "disable_tqdm": True}
    return TrainingArguments(**{**fields, **overrides})


def test_recommended_arguments_are_measured_through_the_trainers_pieces(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = arguments(tmp_path)
    collator, metrics = PadCollator(), MetricCounter()
    train, val = Tokens(512, 0), Tokens(128, 1)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    chosen = recommend_training_args(model, args, train, val, data_collator=collator, compute_metrics=metrics,
                                     metric="accuracy", target=0.9, budget_seconds=BUDGET)

    rec = chosen.recommendation
    assert rec.metric_name == "eval_accuracy" and rec.higher_is_better
    assert chosen.to_dict() == {"per_device_train_batch_size": rec.micro_batch_size,
                                "gradient_accumulation_steps": rec.accumulation_steps,
                                "learning_rate": rec.lr, "warmup_steps": rec.warmup_steps}
    updated = chosen.apply(args)
    assert isinstance(updated, TrainingArguments)
    assert (updated.per_device_train_batch_size, updated.gradient_accumulation_steps, updated.learning_rate,
            updated.warmup_steps) == (rec.micro_batch_size, rec.accumulation_steps, rec.lr, rec.warmup_steps)
    assert (args.per_device_train_batch_size, args.learning_rate) == (8, 1e-3)  # the user's args unchanged
    assert updated.weight_decay == args.weight_decay and updated.output_dir == args.output_dir
    # Measured through the user's collator (after the Trainer's column filter) and compute_metrics.
    assert collator.calls > 0 and "source" not in collator.columns
    assert metrics.sizes and set(metrics.sizes) == {len(val)}  # every validation: the whole eval set
    # Nothing of the user's was trained or reseeded.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_the_task_uses_the_trainers_optimizer_and_base_settings(tmp_path: Any) -> None:
    args = arguments(tmp_path)
    task = hf_task(tiny_bert(), args, Tokens(64, 0), Tokens(32, 1), data_collator=PadCollator(), target=0.5)
    assert task.metric_name == "eval_loss" and not task.higher_is_better  # the default metric
    assert task.base_batch_size == 16 and task.base_lr == 1e-3 and task.max_samples == 3 * 64
    assert task.resolved_lr_scaling() == "sqrt"  # AdamW
    model = task.make_model()
    optimizer = task.make_optimizer(model.parameters(), 2e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert decayed["lr"] == plain["lr"] == 2e-3
    assert not any("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in decayed["params"])
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in plain["params"])
    assert (decayed["betas"], decayed["eps"]) == ((args.adam_beta1, args.adam_beta2), args.adam_epsilon)


class GradNorms(TrainerCallback):
    """After the noise callback: the unclipped gradient norm it measured, per optimiser step."""

    def __init__(self, noise: NoiseScaleCallback) -> None:
        self.noise = noise
        self.by_step: dict[int, float] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.noise.last_step is not None
        self.by_step[state.global_step + 1] = self.noise.last_step["grad_norm"]


def test_the_noise_callback_logs_b_simple_through_the_trainer(tmp_path: Any) -> None:
    torch.manual_seed(0)
    args = arguments(tmp_path, max_steps=20, max_grad_norm=0.01)  # clipping on every step
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(256, 0), data_collator=PadCollator())
    bound, unbound = NoiseScaleCallback(trainer), NoiseScaleCallback()
    norms = GradNorms(bound)
    for callback in (bound, norms, unbound):
        trainer.add_callback(callback)
    trainer.train()

    history = trainer.state.log_history
    noise_logs = [h for h in history if "b_simple" in h and "loss" not in h]  # trainer.log's own records
    assert [h["step"] for h in noise_logs] == [5, 10, 15, 20]
    estimate = bound.estimate()
    assert estimate is not None and estimate.measurements == 20
    assert (estimate.batch_size, estimate.micro_batch_size) == (16, 8.0)
    assert noise_logs[-1]["b_simple"] == estimate.b_simple and noise_logs[-1]["noise_batch_size"] == 16
    assert "b_simple_ci95_low" in noise_logs[-1]
    # The Trainer's own records still come at every logging step; the unbound callback's values are
    # added to them.
    train_logs = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_logs] == [5, 10, 15, 20]
    assert all("b_simple" in h for h in train_logs)
    assert train_logs[-1]["b_simple"] == pytest.approx(estimate.b_simple)
    # Measured before clipping: the full-step gradient equals the norm the Trainer logs (pre-clip).
    for record in train_logs:
        assert norms.by_step[record["step"]] == pytest.approx(record["grad_norm"], rel=1e-4)
        assert record["grad_norm"] > 0.01


def test_the_noise_callback_needs_accumulated_micro_steps(tmp_path: Any) -> None:
    args = arguments(tmp_path, gradient_accumulation_steps=1, max_steps=2)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(32, 0), data_collator=PadCollator(),
                      callbacks=[NoiseScaleCallback()])
    with pytest.raises(IntegrationError, match="gradient_accumulation_steps >= 2"):
        trainer.train()


def test_model_init_builds_each_run_its_own_model(tmp_path: Any) -> None:
    built: list[BertForSequenceClassification] = []

    def model_init() -> BertForSequenceClassification:
        built.append(tiny_bert())
        return built[-1]

    task = hf_task(None, arguments(tmp_path), Tokens(64, 0), Tokens(32, 1), model_init=model_init,
                   data_collator=PadCollator(), target=0.5)
    count = len(built)
    first, second = task.make_model(), task.make_model()
    assert len(built) == count + 2 and first is built[-2] and second is built[-1]


def test_bad_inputs_are_named(tmp_path: Any) -> None:
    args = arguments(tmp_path)
    with pytest.raises(IntegrationError, match="needs compute_metrics="):
        hf_task(tiny_bert(), args, Tokens(8, 0), Tokens(8, 1), data_collator=PadCollator(), metric="accuracy",
                target=0.9)
    with pytest.raises(IntegrationError, match="model= or model_init="):
        hf_task(None, args, Tokens(8, 0), Tokens(8, 1), target=0.9)
