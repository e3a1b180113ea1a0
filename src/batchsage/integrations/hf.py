"""batchsage with Hugging Face Transformers' ``Trainer``.

- :func:`recommend_training_args` takes what a user passes to ``Trainer`` (``model`` or
  ``model_init``, ``args``, the datasets, ``data_collator``, ``compute_metrics``) plus the metric
  that counts and its target, and returns the ``TrainingArguments`` fields batchsage chooses:
  ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``learning_rate`` and
  ``warmup_steps``. It measures through the Trainer's own pieces: the loss is ``Trainer.compute_loss``
  on batches made by the (column-filtering) data collator, the optimiser is the one ``args.optim``
  names with ``args.weight_decay`` on the parameters the Trainer decays, and the metric is
  ``compute_metrics`` (or the eval loss) over ``Trainer.prediction_step``'s outputs.
- :class:`NoiseScaleCallback` measures the gradient noise scale B_simple during an ordinary
  ``trainer.train()``, from the micro-steps of each accumulated batch (their gradients read as
  autograd computes them, so before gradient clipping), and logs it through the Trainer's own
  logging, next to the batch size per step it can be compared with.

The user's model is never trained (batchsage trains copies, or models from ``model_init``), and
Python's, NumPy's and torch's random state are put back after a decision.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

try:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_pt_utils import nested_concat, nested_numpify
    from transformers.trainer_utils import EvalPrediction
except ImportError as exc:  # pragma: no cover - the extra is installed wherever this module is tested
    raise ImportError("batchsage.integrations.hf needs transformers 5 with accelerate: "
                      "pip install 'batchsage[hf]'") from exc

from batchsage.decide import Recommendation, recommend
from batchsage.integrations._common import (
    IntegrationError,
    check_adapted_task,
    collated,
    index_dataset,
    preserved_random_state,
)
from batchsage.noise import Measurement, NoiseEstimate, NoiseStatistics, step_estimates
from batchsage.task import Task, TaskError

__all__ = ["NoiseScaleCallback", "RecommendedArguments", "hf_task", "recommend_training_args"]


@dataclass
class RecommendedArguments:
    """The ``TrainingArguments`` fields batchsage chose, and the recommendation behind them."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    warmup_steps: int
    recommendation: Recommendation

    def to_dict(self) -> dict[str, Any]:
        """The four fields, as ``TrainingArguments(**...)`` keywords."""
        return {"per_device_train_batch_size": self.per_device_train_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}

    def apply(self, args: TrainingArguments) -> TrainingArguments:
        """A copy of ``args`` with the four fields set (``args`` itself is not changed)."""
        return dataclasses.replace(args, **self.to_dict())


# ---- the adapter: Trainer inputs as a batchsage Task ------------------------------------------------


def _helper_trainer(model: nn.Module, args: TrainingArguments, **pieces: Any) -> Trainer:
    """A Trainer over a copy of the model, used for its loss, prediction step, collator and optimiser
    choice; it never trains, evaluates or logs, and reports to no integration."""
    quiet = dataclasses.replace(args, report_to="none")
    with preserved_random_state():  # Trainer.__init__ seeds every generator with args.seed
        return Trainer(model=model, args=quiet, **pieces)


def _metric_key(metric: str) -> str:
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def _optimizer_factory(args: TrainingArguments, helper: Trainer, template: nn.Module
                       ) -> Callable[..., torch.optim.Optimizer]:
    """``make_optimizer(params, lr)``: the optimiser ``args.optim`` names, with ``args.weight_decay``
    on the parameters the Trainer decays and none on the others (biases, norms), as
    ``Trainer.create_optimizer`` builds it."""
    try:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, template)
    except (ValueError, ImportError) as exc:
        raise IntegrationError(f"args.optim={args.optim!r}: {exc}") from exc
    decay = set(helper.get_decay_parameter_names(template))
    named = list(template.named_parameters())
    decayed = [i for i, (name, p) in enumerate(named) if name in decay and p.requires_grad]
    plain = [i for i, (name, p) in enumerate(named) if name not in decay and p.requires_grad]
    count = len(named)

    def make_optimizer(params: Any, lr: float) -> torch.optim.Optimizer:
        params = list(params)
        kwargs = {**optimizer_kwargs, "lr": lr}
        if len(params) != count:  # not a copy of the model (batchsage's own probes)
            return optimizer_cls([{"params": params, "weight_decay": args.weight_decay}], **kwargs)
        groups = [{"params": [params[i] for i in decayed], "weight_decay": args.weight_decay},
                  {"params": [params[i] for i in plain], "weight_decay": 0.0}]
        return optimizer_cls([g for g in groups if g["params"]], **kwargs)

    return make_optimizer


def hf_task(
    model: nn.Module | None = None,
    args: TrainingArguments | None = None,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    *,
    target: float,
    metric: str | None = None,
    greater_is_better: bool | None = None,
    model_init: Callable[[], nn.Module] | None = None,
    data_collator: Callable[[list[Any]], Any] | None = None,
    processing_class: Any = None,
    compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
    compute_loss_func: Callable[..., torch.Tensor] | None = None,
    preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_samples: int | None = None,
) -> Task:
    """The :class:`batchsage.Task` that ``Trainer(...)``'s inputs stand for (see
    :func:`recommend_training_args` for the arguments)."""
    if args is None:
        raise IntegrationError("args (the TrainingArguments) is required")
    if model is None and model_init is None:
        raise IntegrationError("pass model= or model_init=, as to Trainer")
    if train_dataset is None or eval_dataset is None:
        raise IntegrationError("train_dataset and eval_dataset are required: batchsage trains on one and "
                               "measures the target metric on the other")
    if args.world_size > 1 or args.n_gpu > 1:
        raise IntegrationError("recommend_training_args runs in one process on one device for now: batchsage "
                               "times a step in one process, not a data-parallel step")
    if not isinstance(target, int | float) or not math.isfinite(target):
        raise IntegrationError(f"target must be a finite number, got {target!r}")
    key = _metric_key(metric or args.metric_for_best_model or "loss")
    if greater_is_better is None:
        greater_is_better = (args.greater_is_better if metric is None and args.greater_is_better is not None
                             else not key.endswith("loss"))
    if key != "eval_loss" and compute_metrics is None:
        raise IntegrationError(f"metric {key!r} needs compute_metrics= (without it, only eval_loss exists)")
    with preserved_random_state():
        template = model_init() if model_init is not None else copy.deepcopy(model)
    assert template is not None
    helper = _helper_trainer(template, args, data_collator=data_collator, processing_class=processing_class,
                             compute_metrics=compute_metrics, compute_loss_func=compute_loss_func,
                             preprocess_logits_for_metrics=preprocess_logits_for_metrics)
    train_collate = helper._get_collator_with_removed_columns(helper.data_collator, description="training")
    eval_collate = helper._get_collator_with_removed_columns(helper.data_collator, description="evaluation")
    indices = index_dataset(train_dataset, "train_dataset")
    index_dataset(eval_dataset, "eval_dataset")
    eval_batch = int(args.per_device_eval_batch_size)

    def make_model() -> nn.Module:
        return model_init() if model_init is not None else copy.deepcopy(template)

    def loss_fn(net: nn.Module, batch: Any) -> torch.Tensor:
        inputs = helper._prepare_inputs(collated(train_dataset, batch, train_collate))
        with helper.compute_loss_context_manager():
            loss = helper.compute_loss(net, inputs)
        return loss.float() if loss.dim() == 0 else loss.float().mean()

    predicts = key != "eval_loss"  # the eval loss alone needs no predictions

    def metric_fn(net: nn.Module, data: Dataset) -> float:
        metrics = _evaluate(helper, net, data, eval_collate, eval_batch,
                            compute_metrics if predicts else None,
                            preprocess_logits_for_metrics if predicts else None)
        if key not in metrics:
            raise TaskError(f"metric {key!r} is not among the eval metrics ({', '.join(sorted(metrics))})")
        return metrics[key]

    size = len(train_dataset)  # type: ignore[arg-type]
    base_batch = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)
    if max_samples is None:
        max_samples = (args.max_steps * base_batch if args.max_steps and args.max_steps > 0
                       else math.ceil(float(args.num_train_epochs) * size))
    task = Task(
        name=type(template).__name__,
        make_model=make_model,
        train_data=indices,
        val_data=eval_dataset,
        loss_fn=loss_fn,
        make_optimizer=_optimizer_factory(args, helper, template),
        metric_fn=metric_fn,
        target=float(target),
        higher_is_better=bool(greater_is_better),
        base_batch_size=min(base_batch, size),
        base_lr=float(args.learning_rate),
        max_samples=max(int(max_samples), 1),
        seed=int(args.seed),
        metric_name=key,
        description=f"transformers {type(template).__name__}",
    ).validate()
    check_adapted_task(task)
    return task


def _evaluate(helper: Trainer, net: nn.Module, data: Dataset, collate: Callable[[list[Any]], Any],
              batch_size: int, compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None,
              preprocess: Callable[[Any, Any], Any] | None) -> dict[str, float]:
    """``Trainer.evaluate``'s metrics for ``net`` on ``data``: the mean eval loss and ``compute_metrics``
    over the predictions and labels of ``Trainer.prediction_step``, keys prefixed with "eval_"."""
    loss_sum, seen = 0.0, 0
    predictions: Any = None
    labels: Any = None
    size = len(data)  # type: ignore[arg-type]
    for start in range(0, size, batch_size):
        inputs = collate([data[i] for i in range(start, min(start + batch_size, size))])
        count = min(start + batch_size, size) - start
        loss, logits, label = helper.prediction_step(net, inputs,
                                                     prediction_loss_only=compute_metrics is None)
        if loss is not None:
            loss_sum += float(loss) * count
            seen += count
        if compute_metrics is None:
            continue
        if preprocess is not None and logits is not None:
            logits = preprocess(logits, label)
        if logits is not None:
            logits = _to_cpu(logits)
            predictions = (logits if predictions is None
                           else nested_concat(predictions, logits, padding_index=-100))
        if label is not None:
            label = _to_cpu(label)
            labels = label if labels is None else nested_concat(labels, label, padding_index=-100)
    metrics: dict[str, float] = {}
    if compute_metrics is not None:
        if predictions is None:
            raise TaskError("the model returned no predictions on eval_dataset for compute_metrics")
        label_ids = nested_numpify(labels) if labels is not None else None
        prediction = EvalPrediction(predictions=nested_numpify(predictions), label_ids=label_ids)
        computed = compute_metrics(prediction)
        metrics = {(k if k.startswith("eval_") else f"eval_{k}"): float(v) for k, v in computed.items()
                   if isinstance(v, int | float | np.floating | np.integer)}
    if seen:
        metrics["eval_loss"] = loss_sum / seen
    return metrics


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def recommend_training_args(
    model: nn.Module | None = None,
    args: TrainingArguments | None = None,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    *,
    target: float,
    metric: str | None = None,
    greater_is_better: bool | None = None,
    model_init: Callable[[], nn.Module] | None = None,
    data_collator: Callable[[list[Any]], Any] | None = None,
    processing_class: Any = None,
    compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
    compute_loss_func: Callable[..., torch.Tensor] | None = None,
    preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_samples: int | None = None,
    budget_seconds: float = 20.0,
    progress: bool = False,
) -> RecommendedArguments:
    """The ``TrainingArguments`` fields that reach ``metric`` = ``target`` soonest.

    transformers' ``auto_find_batch_size`` only shrinks the batch when it runs out of memory and
    leaves the lr and accumulation as they were; this measures how fast the model learns at which
    batch (:func:`batchsage.recommend`) and returns the batch, accumulation, lr and warmup together.

    Args:
        model, args, train_dataset, eval_dataset, model_init, data_collator, processing_class,
            compute_metrics, compute_loss_func, preprocess_logits_for_metrics: what you pass to
            ``Trainer`` (one of ``model``/``model_init``; ``model`` is copied, never trained).
            ``args``' per_device_train_batch_size × gradient_accumulation_steps and learning_rate
            are the starting point; its optim, weight_decay and Adam settings build the optimiser;
            its max_steps or num_train_epochs bound the training; its device is where batchsage
            measures.
        target: the value of ``metric`` that counts as trained.
        metric: an eval metric name, with or without "eval_" (default: ``args.metric_for_best_model``,
            else "loss"): a key of ``compute_metrics``' result, or "loss".
        greater_is_better: default ``args.greater_is_better``, else False only for names ending
            in "loss" (the ``TrainingArguments`` rule).
        max_samples: training budget in samples (default from ``args``).
        budget_seconds, progress: as in :func:`batchsage.recommend`.

    The prediction assumes a constant lr after the warmup (what batchsage measured); the default
    linear decay of ``lr_scheduler_type`` lowers it towards the end. ``max_grad_norm`` clipping and
    fp16 loss scaling are not part of the measurement.
    """
    task = hf_task(model, args, train_dataset, eval_dataset, target=target, metric=metric,
                   greater_is_better=greater_is_better, model_init=model_init, data_collator=data_collator,
                   processing_class=processing_class, compute_metrics=compute_metrics,
                   compute_loss_func=compute_loss_func,
                   preprocess_logits_for_metrics=preprocess_logits_for_metrics, max_samples=max_samples)
    assert args is not None
    with preserved_random_state():
        rec = recommend(task, device=args.device.type, budget_seconds=budget_seconds, progress=progress)
    return RecommendedArguments(per_device_train_batch_size=rec.micro_batch_size,
                                gradient_accumulation_steps=rec.accumulation_steps, learning_rate=rec.lr,
                                warmup_steps=rec.warmup_steps, recommendation=rec)


# ---- the noise scale during trainer.train() ------------------------------------------------------------


def _samples_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The batch dimension of a forward call's first tensor input."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


class NoiseScaleCallback(TrainerCallback):
    """Logs the gradient noise scale B_simple while ``trainer.train()`` runs.

    Each measured optimiser step gives one unbiased estimate from its accumulation micro-steps
    (McCandlish et al. 2018; :func:`batchsage.noise.step_estimates`): the micro-batch gradients are
    read as autograd computes them (a multi-gradient hook on the trainable parameters), so before
    gradient clipping and independently of the optimiser; their sum is the whole step's gradient.
    The estimates are averaged as batchsage's monitor averages them (numerator and denominator
    separately, exponential moving average) and logged at the Trainer's logging steps as
    ``b_simple`` with its 95 % interval (``b_simple_ci95_low``/``_high``) and
    ``noise_batch_size``, the samples per optimiser step. A batch well below B_simple wastes steps;
    well above it, samples.

    Needs ``gradient_accumulation_steps`` ≥ 2 (two micro-batch sizes per step are what the
    estimator compares): halve ``per_device_train_batch_size`` and double the accumulation for the
    same batch. Micro-steps are taken as equal shares of the step's gradient, as the Trainer's
    division by the accumulation steps makes them (with a loss normalised by token counts, as
    causal language models do, shares follow the tokens instead).

    Args:
        trainer: the Trainer, to log through ``trainer.log`` (every ``report_to`` integration then
            sees the values). Without it, the values are added to the Trainer's own log record of
            the step (``trainer.state.log_history``) and to what callbacks after this one receive
            in ``on_log``.
        every: measure every this many optimiser steps (each measurement copies the gradient once
            per micro-step).
        ema: decay of the moving average per measurement.
    """

    def __init__(self, trainer: Trainer | None = None, *, every: int = 1, ema: float = 0.95) -> None:
        if not isinstance(every, int) or every < 1:
            raise IntegrationError(f"every must be a positive integer, got {every!r}")
        self.trainer = trainer
        self.every = every
        self.statistics = NoiseStatistics(ema=ema)
        #: The last measured step: {"step", "micro_batches", "batch_size", "grad_norm"} (grad_norm:
        #: the step's gradient norm before clipping, as the Trainer logs it).
        self.last_step: dict[str, float] | None = None
        self._handles: list[Any] = []
        self._params: list[torch.Tensor] = []
        self._dataset_size: int | None = None
        self._measuring = False
        self._norms: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._sum: torch.Tensor | None = None
        self._samples: int | None = None
        self._unlogged: dict[str, float] | None = None

    def estimate(self) -> NoiseEstimate | None:
        """The current estimate (None before the first measured step)."""
        return self.statistics.estimate()

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any,
                       model: nn.Module | None = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if args.gradient_accumulation_steps < 2:
            raise IntegrationError(
                "NoiseScaleCallback measures from the micro-steps of accumulated batches: set "
                "gradient_accumulation_steps >= 2 (e.g. halve per_device_train_batch_size and double "
                "gradient_accumulation_steps: the same batch per step)")
        if model is None:
            raise IntegrationError("NoiseScaleCallback got no model from the Trainer")
        self.remove()
        self._params = params = [p for p in model.parameters() if p.requires_grad]
        self._handles = [torch.autograd.graph.register_multi_grad_hook(params, self._on_gradients,
                                                                        mode="all"),
                         model.register_forward_pre_hook(self._on_forward, with_kwargs=True)]
        dataset = getattr(train_dataloader, "dataset", None)
        try:
            size = len(dataset) if dataset is not None else None  # type: ignore[arg-type]
        except TypeError:
            size = None
        self._dataset_size = size if size is not None and size >= 2 else None

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            self._samples = _samples_in(args, kwargs)

    def on_step_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self._measuring = state.global_step % self.every == 0
        self._norms, self._sizes, self._sum = [], [], None

    def _on_gradients(self, grads: Any) -> None:
        if not self._measuring:
            return
        parts = [g.detach().reshape(-1).float() for g in grads if g is not None]
        if not parts:
            return
        if len(parts) < len(grads):  # a parameter got no gradient in this micro-step: zeros
            parts = [g.detach().reshape(-1).float() if g is not None
                     else torch.zeros(p.numel(), device=p.device)
                     for g, p in zip(grads, self._params, strict=True)]
        flat = torch.cat(parts)
        self._norms.append(torch.dot(flat, flat))
        self._sizes.append(self._samples or 1)
        self._sum = flat.clone() if self._sum is None else self._sum.add_(flat)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        measured = self._measuring and len(self._norms) >= 2 and self._sum is not None
        self._measuring = False
        if not measured:
            return
        assert self._sum is not None
        full = float(torch.dot(self._sum, self._sum))
        norms = torch.stack(self._norms).double().cpu().tolist()
        if not all(math.isfinite(n) for n in [*norms, full]):
            return
        total = sum(self._sizes)
        # The loss of each micro-step is its share of the step's mean: g_i = Δ_i · B / b_i.
        micro = [n * (total / size) ** 2 for n, size in zip(norms, self._sizes, strict=True)]
        grad_norm_sq, trace_sigma, small = step_estimates(micro, self._sizes, full, self._dataset_size)
        self.statistics.add(Measurement(state.global_step, grad_norm_sq, trace_sigma, total, small))
        self.last_step = {"step": state.global_step, "micro_batches": len(self._sizes), "batch_size": total,
                          "grad_norm": math.sqrt(full)}
        self._norms, self._sum = [], None

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if not control.should_log:
            return
        values = self.log_values()
        if values is None:
            return
        if self.trainer is not None:
            self.trainer.log(values)
            control.should_log = True  # trainer.log's on_log cleared it; the Trainer's own log is still due
        else:
            self._unlogged = values

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if self._unlogged is None or logs is None or "loss" not in logs:
            return
        logs.update(self._unlogged)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._unlogged)
        self._unlogged = None

    def log_values(self) -> dict[str, float] | None:
        """What is logged: b_simple, its interval and the samples per optimiser step."""
        estimate = self.estimate()
        if estimate is None:
            return None
        values = {"b_simple": estimate.b_simple, "noise_batch_size": float(estimate.batch_size)}
        if estimate.ci95 is not None:
            values["b_simple_ci95_low"], values["b_simple_ci95_high"] = map(float, estimate.ci95)
        return values

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Detach the hooks from the model (done at the end of training)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
