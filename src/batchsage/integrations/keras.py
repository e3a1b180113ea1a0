"""Keras 3 on the PyTorch backend: a batchsage task from a Keras model, the answer back as Keras settings.

With ``KERAS_BACKEND=torch`` a ``keras.Model`` is a ``torch.nn.Module`` whose weights are torch
parameters, so batchsage measures and trains it with its own engine; no TensorFlow is needed.
Importing this module selects the torch backend when Keras has not been imported yet, and refuses
another backend in one line.

- :func:`task_from_keras`: a :class:`~batchsage.Task` from what a Keras user has: a function
  returning a (compiled or uncompiled) ``keras.Model``, training arrays or a dataset, validation
  data, a metric and its target. The loss is the model's compiled loss (Keras losses take
  ``(y_true, y_pred)``; ``model.compute_loss`` also adds the regularisation losses), the metric a
  Keras metric, and batchsage trains with the PyTorch twin of the Keras optimiser (same update
  rule and hyper-parameters, see :func:`torch_optimizer_for`).
- :func:`fit_arguments`, :func:`recommended_optimizer`, :func:`apply_recommendation`: a
  :class:`~batchsage.Recommendation` as ``model.fit`` keyword arguments and a Keras optimiser
  (learning rate, ``gradient_accumulation_steps``, warmup as :class:`WarmupSchedule`).
- :class:`NoiseScaleCallback`: the gradient noise scale measured during an ordinary
  ``model.fit``, by batchsage's :class:`~batchsage.NoiseScaleMonitor`.
- ``BatchsageHyperModel`` (needs ``keras-tuner``): a Keras Tuner ``HyperModel`` whose ``fit``
  uses the recommended batch size and whose optimiser the recommended lr, so a search spends no
  trials on either.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from batchsage.data import batch_len, move_to
from batchsage.engine import TrainState, accumulate_gradients
from batchsage.errors import ConfigError
from batchsage.noise import NoiseEstimate, NoiseScaleMonitor, TrajectoryPoint
from batchsage.task import Task, TaskError, check_task_runs

INSTALL_HINT = "pip install 'batchsage[keras]'"

if "keras" not in __import__("sys").modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"batchsage.integrations.keras needs Keras 3: {INSTALL_HINT}") from _exc
if not keras.__version__.startswith("3.") or keras.backend.backend() != "torch":  # pragma: no cover
    raise ImportError(
        f"batchsage.integrations.keras needs Keras 3 on the torch backend (found Keras {keras.__version__} "
        f"on {keras.backend.backend()!r}): set KERAS_BACKEND=torch before Keras is first imported"
    )

__all__ = [
    "KerasModule",
    "NoiseScaleCallback",
    "WarmupSchedule",
    "apply_recommendation",
    "fit_arguments",
    "keras_model",
    "recommended_optimizer",
    "task_from_keras",
    "torch_optimizer_for",
]

#: Metric names (or parts of them) for which a smaller value is better, and a larger one.
LOWER_IS_BETTER = ("loss", "error", "crossentropy", "hinge", "divergence", "mse", "mae", "mape", "msle",
                   "logcosh", "poisson", "huber")
HIGHER_IS_BETTER = ("accuracy", "auc", "precision", "recall", "f1", "fbeta", "r2", "iou", "cosine")


# --------------------------------------------------------------------------------------------
# The model as batchsage trains it
# --------------------------------------------------------------------------------------------


@contextmanager
def _python_seed(seed: int) -> Iterator[None]:
    """Keras draws every default seed (initialisers, dropout) from Python's ``random``: seed it for
    the body and give the caller's state back afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class KerasModule(nn.Module):
    """A ``keras.Model`` as a batchsage model: its weights under stable positional names.

    Keras names a model's torch parameters after its layers (``dense_3/kernel``), so two models
    from the same function have different ``state_dict`` keys, and ``copy.deepcopy`` of a Keras
    model goes through Keras serialisation. batchsage copies models (forks, checkpoints), so the
    wrapper registers the Keras weights (``model.weights``, trainable and not) as ``weights.0``,
    ``weights.1``, ... and copies by building a fresh model with ``build`` and assigning the values.

    ``forward(*inputs, training=None)`` calls the Keras model (``training`` defaults to the
    module's train/eval mode). :attr:`keras_model` is the Keras model itself.
    """

    def __init__(self, model: keras.Model, build: Callable[[], keras.Model]) -> None:
        super().__init__()
        self.__dict__["keras_model"] = model  # not a submodule: its own names would enter state_dict
        self.__dict__["_build"] = build
        self.weights = nn.ParameterList([variable.value for variable in model.weights])

    def forward(self, *inputs: Any, training: bool | None = None) -> Any:
        x = inputs[0] if len(inputs) == 1 else list(inputs)
        return self.keras_model(x, training=self.training if training is None else training)

    def __deepcopy__(self, memo: dict[int, Any]) -> KerasModule:
        with torch.random.fork_rng(devices=[]), _python_seed(0):
            model = self._build()
        for target, source in zip(model.weights, self.keras_model.weights, strict=True):
            target.assign(source.value.detach())
        twin = KerasModule(model, self._build)
        twin.train(self.training)
        first = next(iter(self.parameters()), None)
        return twin.to(first.device) if first is not None else twin


def keras_model(model: nn.Module | keras.Model) -> keras.Model:
    """The Keras model inside a batchsage model (e.g. ``batchsage.live.fit(...).model``)."""
    if isinstance(model, KerasModule):
        return model.keras_model
    if isinstance(model, keras.Model):
        return model
    raise ConfigError(f"not a Keras model: {type(model).__name__}")


# --------------------------------------------------------------------------------------------
# Optimiser twins
# --------------------------------------------------------------------------------------------


def torch_optimizer_for(optimizer: keras.optimizers.Optimizer | str) -> Callable[..., torch.optim.Optimizer]:
    """``make_optimizer(params, lr)`` building the PyTorch twin of a Keras optimiser.

    Same update rule and hyper-parameters: SGD (momentum, nesterov), Adam / AdamW (betas,
    epsilon, amsgrad; Keras applies ``weight_decay`` decoupled, as torch's AdamW does), RMSprop
    (rho, momentum, centered), Adagrad, Adamax, Nadam. Two small differences remain: Keras adds
    epsilon to the uncorrected second moment (Adam) or inside the square root (RMSprop), and a
    ``weight_decay`` on SGD or RMSprop becomes torch's coupled L2 term (the same update without
    momentum). Gradient clipping and EMA of the Keras optimiser are not reproduced in batchsage's
    measurement runs. Other optimisers: pass ``torch_optimizer=`` to :func:`task_from_keras`.
    """
    opt = keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
    if not isinstance(opt, keras.optimizers.Optimizer):
        raise TaskError(f"optimizer must be a Keras optimizer or its name, got {type(optimizer).__name__}")
    config = opt.get_config()
    decay = float(config.get("weight_decay") or 0.0)
    betas = (float(config.get("beta_1", 0.9)), float(config.get("beta_2", 0.999)))
    eps = float(config.get("epsilon") or 1e-7)
    optim = torch.optim
    if isinstance(opt, keras.optimizers.SGD):
        momentum, nesterov = float(config["momentum"]), bool(config["nesterov"])
        return lambda params, lr: optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                                            weight_decay=decay)
    if isinstance(opt, keras.optimizers.Adam | keras.optimizers.AdamW):
        amsgrad = bool(config.get("amsgrad", False))
        return lambda params, lr: optim.AdamW(params, lr=lr, betas=betas, eps=eps, amsgrad=amsgrad,
                                              weight_decay=decay)
    if isinstance(opt, keras.optimizers.RMSprop):
        alpha, momentum, centered = float(config["rho"]), float(config["momentum"]), bool(config["centered"])
        return lambda params, lr: optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                                                centered=centered, weight_decay=decay)
    if isinstance(opt, keras.optimizers.Adagrad):
        initial = float(config["initial_accumulator_value"])
        return lambda params, lr: optim.Adagrad(params, lr=lr, eps=eps, initial_accumulator_value=initial,
                                                weight_decay=decay)
    if isinstance(opt, keras.optimizers.Adamax):
        return lambda params, lr: optim.Adamax(params, lr=lr, betas=betas, eps=eps, weight_decay=decay)
    if isinstance(opt, keras.optimizers.Nadam):
        return lambda params, lr: optim.NAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=decay)
    raise TaskError(f"no PyTorch twin of the Keras optimizer {type(opt).__name__}: pass torch_optimizer="
                    "lambda params, lr: torch.optim....(params, lr=lr) to task_from_keras")


def _constant_lr(opt: keras.optimizers.Optimizer) -> float | None:
    """The optimiser's constant learning rate as typed (Keras keeps it in float32: 7 digits)."""
    rate = opt.get_config().get("learning_rate")
    return float(f"{float(rate):.7g}") if isinstance(rate, int | float) else None


# --------------------------------------------------------------------------------------------
# Data, loss and metric
# --------------------------------------------------------------------------------------------


def _tensor(values: Any, what: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{what} must be an array (NumPy or torch): {exc}") from None
    if tensor.dim() == 0:
        raise TaskError(f"{what} must have a sample dimension, got a scalar")
    return tensor.float() if tensor.is_floating_point() else tensor  # Keras's floatx


def _dataset(x: Any, y: Any, what: str) -> Dataset:
    """Arrays (or a tuple of input arrays) and targets as a TensorDataset; a map-style Dataset as is."""
    if y is None:
        if isinstance(x, keras.utils.PyDataset):
            raise TaskError(f"{what}: a keras.utils.PyDataset yields whole batches; pass arrays or a "
                            "map-style torch Dataset of (inputs, target) samples")
        if isinstance(x, Dataset) and hasattr(x, "__len__"):
            return x
        raise TaskError(f"{what}: pass inputs and targets (arrays), or a map-style torch Dataset")
    if isinstance(x, dict):
        raise TaskError(f"{what}: dict inputs are not supported; pass a tuple of arrays in the model's order")
    inputs = list(x) if isinstance(x, list | tuple) else [x]
    tensors = [_tensor(part, f"{what} inputs") for part in inputs] + [_tensor(y, f"{what} targets")]
    sizes = {len(t) for t in tensors}
    if len(sizes) != 1:
        raise TaskError(f"{what}: inputs and targets have different numbers of samples ({sorted(sizes)})")
    return TensorDataset(*tensors)


def _split(batch: Any) -> tuple[Any, Any]:
    """(model input, target) of a default-collated (inputs..., target) batch."""
    *inputs, target = batch
    return (inputs[0] if len(inputs) == 1 else list(inputs)), target


def _batches(data: Dataset, size: int, device: torch.device) -> Iterator[Any]:
    tensors = getattr(data, "tensors", None)
    if tensors is not None:
        for start in range(0, len(tensors[0]), size):
            yield move_to([t[start : start + size] for t in tensors], device)
        return
    for batch in DataLoader(data, batch_size=size):
        yield move_to(batch, device)


def _keras_loss(model: keras.Model, x: Any, y: Any, sample_weight: Any = None, *,
                training: bool) -> torch.Tensor:
    y_pred = model(x, training=training)
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)


def task_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """A task's ``loss_fn``: the Keras model's compiled loss (plus regularisation) on the batch."""
    x, y = _split(batch)
    return _keras_loss(keras_model(model), x, y, training=True)


class _Metric:
    """``metric_fn(model, val_data)``: a Keras metric (fresh each evaluation) or the mean loss."""

    def __init__(self, metric: Any, eval_batch_size: int) -> None:
        self.spec = metric
        self.eval_batch_size = eval_batch_size
        self.is_loss = isinstance(metric, str) and metric.removeprefix("val_") == "loss"
        self._factory: Callable[[], keras.metrics.Metric] | None = None
        self.name = "val_loss" if self.is_loss else self._probe_name()
        self._known: Any = None
        if isinstance(metric, str) and not self.is_loss and self.name != "accuracy":
            try:
                self._known = keras.metrics.get(self.name)
            except ValueError:
                raise TaskError(f"unknown Keras metric {metric!r}") from None

    def _probe_name(self) -> str:
        spec = self.spec
        if isinstance(spec, str):
            name = spec.removeprefix("val_")
            return "accuracy" if name == "acc" else name
        if isinstance(spec, keras.metrics.Metric):
            return str(spec.name)
        if callable(spec):
            return str(getattr(spec, "__name__", "metric"))
        raise TaskError(f"metric must be 'loss', a Keras metric name, a keras.metrics.Metric or a function "
                        f"(y_true, y_pred), got {type(spec).__name__}")

    def _resolve(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> Callable[[], keras.metrics.Metric]:
        spec = self.spec
        if isinstance(spec, str) and self.name == "accuracy":
            # As Keras's compile() resolves "accuracy": by the shapes of targets and predictions.
            if y_pred.dim() == 1 or y_pred.shape[-1] == 1:
                return lambda: keras.metrics.BinaryAccuracy(name="accuracy")
            if y_true.dim() == y_pred.dim() and y_true.shape[-1] == y_pred.shape[-1]:
                return lambda: keras.metrics.CategoricalAccuracy(name="accuracy")
            return lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if isinstance(spec, str):
            spec = self._known
        if isinstance(spec, keras.metrics.Metric):
            template = spec
            return lambda: type(template).from_config(template.get_config())
        function = spec
        return lambda: keras.metrics.MeanMetricWrapper(function, name=self.name)

    def __call__(self, model: nn.Module, data: Dataset) -> float:
        with torch.no_grad():
            return self._evaluate(model, data)

    def _evaluate(self, model: nn.Module, data: Dataset) -> float:
        keras_net = keras_model(model)
        device = next(iter(model.parameters())).device
        if self.is_loss:
            total, count = 0.0, 0
            for batch in _batches(data, self.eval_batch_size, device):
                x, y = _split(batch)
                size = len(y)
                total += float(_keras_loss(keras_net, x, y, training=False)) * size
                count += size
            return total / count
        metric: keras.metrics.Metric | None = None
        for batch in _batches(data, self.eval_batch_size, device):
            x, y = _split(batch)
            y_pred = keras_net(x, training=False)
            if metric is None:
                if self._factory is None:
                    self._factory = self._resolve(y, y_pred)
                metric = self._factory()
            metric.update_state(y, y_pred)
        assert metric is not None
        return float(metric.result())


def _infer_higher_is_better(name: str) -> bool | None:
    lowered = name.lower()
    lower = any(part in lowered for part in LOWER_IS_BETTER)
    higher = any(part in lowered for part in HIGHER_IS_BETTER)
    return None if lower == higher else higher


def task_from_keras(
    build_model: Callable[[], keras.Model],
    x: Any,
    y: Any = None,
    *,
    validation_data: Any,
    target: float,
    metric: Any = "loss",
    higher_is_better: bool | None = None,
    loss: Any = None,
    optimizer: keras.optimizers.Optimizer | str | None = None,
    batch_size: int = 32,
    learning_rate: float | None = None,
    max_epochs: int = 100,
    eval_every_samples: int | None = None,
    eval_batch_size: int = 1024,
    torch_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    name: str = "keras",
    seed: int = 0,
    description: str = "",
) -> Task:
    """A batchsage task from a Keras model, its data, a metric and the value that counts as trained.

    Args:
        build_model: returns a new ``keras.Model`` (compiled or not) each call; batchsage builds
            several (pilots, forks) and seeds each.
        x, y: training inputs and targets (arrays; ``x`` may be a tuple of arrays for several
            inputs), or ``x`` a map-style torch Dataset of ``(inputs..., target)`` samples.
        validation_data: ``(x_val, y_val)`` or such a Dataset.
        target: the metric value that counts as trained (e.g. 0.95 accuracy).
        metric: ``"loss"`` (the validation loss), a Keras metric name (``"accuracy"``, ``"mae"``,
            ``"val_"`` prefix allowed), a ``keras.metrics.Metric`` or a function ``(y_true, y_pred)``.
        higher_is_better: derived from the metric's name where it is clear (accuracy, auc: higher;
            loss, error, mse: lower); required otherwise.
        loss: a Keras loss; default: the loss the model was compiled with.
        optimizer: the Keras optimiser batchsage mirrors; default: the compiled one, else SGD.
        batch_size: a batch size known to train (Keras's default is 32).
        learning_rate: the lr known to train at ``batch_size``; default: the optimiser's.
        max_epochs: training budget; a run that has not reached the target by then stops.
        eval_every_samples: validate every this many training samples (default: 1/100 of the budget).
        eval_batch_size: batch size of the validation passes.
        torch_optimizer: ``make_optimizer(params, lr)``, for a Keras optimiser without a twin.
        name, seed, description: as in :class:`~batchsage.Task`.
    """
    if not callable(build_model):
        raise TaskError("build_model must be a function returning a keras.Model")
    for label, value in (("batch_size", batch_size), ("max_epochs", max_epochs),
                         ("eval_batch_size", eval_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TaskError(f"{label} must be a positive integer, got {value!r}")
    train = _dataset(x, y, "training data")
    if isinstance(validation_data, list | tuple):
        if len(validation_data) != 2:
            raise TaskError("validation_data must be (x_val, y_val) (sample weights are not supported)")
        val = _dataset(validation_data[0], validation_data[1], "validation_data")
    else:
        val = _dataset(validation_data, None, "validation_data")

    def build() -> keras.Model:
        try:
            model = build_model()
        except Exception as exc:
            raise TaskError(f"build_model() failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, keras.Model):
            raise TaskError(f"build_model() must return a keras.Model, got {type(model).__name__}")
        if loss is not None or not model.compiled:
            if loss is None:
                raise TaskError("the model is not compiled: compile it with a loss, or pass loss=")
            model.compile(optimizer=model.optimizer if model.compiled else None, loss=loss)
        if not model.built:
            raise TaskError("build_model() must return a built model (give it a keras.Input)")
        return model

    def make_model() -> KerasModule:
        # batchsage seeds torch before building a model; Keras seeds from Python's random.
        seed_from_torch = int(torch.randint(0, 2**31 - 1, (1,)))
        with _python_seed(seed_from_torch):
            return KerasModule(build(), build)

    with torch.random.fork_rng(devices=[]), _python_seed(seed):
        first = build()
    chosen = optimizer if optimizer is not None else first.optimizer
    chosen = chosen if chosen is not None else "sgd"
    chosen_opt = keras.optimizers.get(chosen) if isinstance(chosen, str) else chosen
    make_optimizer = torch_optimizer or torch_optimizer_for(chosen_opt)
    base_lr = learning_rate if learning_rate is not None else _constant_lr(chosen_opt)
    if base_lr is None:
        raise TaskError("the optimizer's learning rate is a schedule: pass learning_rate= (the peak lr)")
    evaluator = _Metric(metric, eval_batch_size)
    if higher_is_better is None:
        higher_is_better = _infer_higher_is_better(evaluator.name)
        if higher_is_better is None:
            raise TaskError(f"cannot tell whether a higher {evaluator.name!r} is better: "
                            "pass higher_is_better=")
    task = Task(
        name=name, make_model=make_model, train_data=train, val_data=val, loss_fn=task_loss,
        make_optimizer=make_optimizer, metric_fn=evaluator, target=float(target),
        higher_is_better=higher_is_better, base_batch_size=batch_size, base_lr=float(base_lr),
        max_samples=max_epochs * len(train), seed=seed, metric_name=evaluator.name,
        eval_every_samples=eval_every_samples,
        description=description or f"Keras model {first.name!r}, {type(chosen_opt).__name__}",
        extras={"keras_optimizer": chosen_opt.get_config()},
    )
    task.validate()
    check_task_runs(task)
    return task


# --------------------------------------------------------------------------------------------
# The answer as Keras settings
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="batchsage")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """batchsage's warmup as a Keras schedule: ``lr·(k+1)/warmup_steps`` for update k < warmup_steps,
    then ``lr``.

    Keras calls a schedule with the optimiser's iteration count, which counts every batch, also
    the ones that only accumulate: with ``accumulation_steps`` > 1 the update index is
    ``iteration // accumulation_steps``, so the warmup spans ``warmup_steps`` optimiser updates,
    as in batchsage's own runs.
    """

    def __init__(self, lr: float, warmup_steps: int, accumulation_steps: int = 1) -> None:
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.accumulation_steps = int(accumulation_steps)

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        if self.warmup_steps <= 0:
            return ops.convert_to_tensor(self.lr, dtype="float32")
        update = ops.floor_divide(ops.cast(step, "int32"), self.accumulation_steps)
        ramp = ops.cast(update + 1, "float32") / float(self.warmup_steps)
        return self.lr * ops.minimum(ramp, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "warmup_steps": self.warmup_steps,
                "accumulation_steps": self.accumulation_steps}


def _answer(recommendation: Any) -> tuple[int, int, float, int]:
    """(micro batch, accumulation, lr, warmup) of a Recommendation or its JSON document."""
    if isinstance(recommendation, dict):
        answer = recommendation.get("recommended", recommendation)
        try:
            return (int(answer["micro_batch_size"]), int(answer["accumulation_steps"]), float(answer["lr"]),
                    int(answer["warmup_steps"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a batchsage recommendation: {type(exc).__name__}: {exc}") from None
    try:
        return (int(recommendation.micro_batch_size), int(recommendation.accumulation_steps),
                float(recommendation.lr), int(recommendation.warmup_steps))
    except AttributeError as exc:
        raise ConfigError(f"not a batchsage recommendation: {exc}") from None


def fit_arguments(recommendation: Any) -> dict[str, Any]:
    """``model.fit`` keyword arguments: ``batch_size`` is the micro-batch (one forward pass); with
    accumulation the optimiser from :func:`recommended_optimizer` averages that many micro-batches
    per update."""
    micro, _, _, _ = _answer(recommendation)
    return {"batch_size": micro}


def recommended_optimizer(recommendation: Any,
                          optimizer: keras.optimizers.Optimizer | str = "sgd") -> keras.optimizers.Optimizer:
    """A new Keras optimiser like ``optimizer`` (its class and other settings) with the recommended
    learning rate, ``gradient_accumulation_steps`` where the batch needs accumulation, and the
    warmup as a :class:`WarmupSchedule`."""
    _, accumulation, lr, warmup = _answer(recommendation)
    base = keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
    if not isinstance(base, keras.optimizers.Optimizer):
        raise ConfigError(f"optimizer must be a Keras optimizer or its name, got {type(optimizer).__name__}")
    config = base.get_config()
    config["learning_rate"] = WarmupSchedule(lr, warmup, accumulation) if warmup > 0 else lr
    config["gradient_accumulation_steps"] = accumulation if accumulation > 1 else None
    return type(base).from_config(config)


def apply_recommendation(model: keras.Model, recommendation: Any) -> dict[str, Any]:
    """Recompile ``model`` (same loss, metrics and optimiser class) with the recommended optimiser
    settings; returns the ``model.fit`` keyword arguments.

    Example: ``model.fit(x, y, epochs=5, **apply_recommendation(model, rec))``.
    """
    if not model.compiled:
        raise ConfigError("compile the model (loss, metrics, optimizer) before apply_recommendation")
    config = model.get_compile_config()
    config["optimizer"] = keras.optimizers.serialize(recommended_optimizer(recommendation, model.optimizer))
    model.compile_from_config(config)
    return fit_arguments(recommendation)


# --------------------------------------------------------------------------------------------
# Noise scale during model.fit
# --------------------------------------------------------------------------------------------


class NoiseScaleCallback(keras.callbacks.Callback):
    """Measures the gradient noise scale B_simple during ``model.fit`` (PyTorch backend).

    A Keras callback sees neither the batch nor the gradient before the optimiser step, so for
    the length of ``fit`` the callback puts a thin wrapper on the model's ``train_step`` (the
    method Keras documents for customising ``fit``): on a step the monitor chooses, it first
    backpropagates the same batch in ``micro_batches`` micro-batches through the model's own
    ``compute_loss`` and reads the micro-batch gradients off the torch parameters' ``.grad``
    (batchsage's two-batch-size estimator, :mod:`batchsage.noise`), restores non-trainable
    weights (BatchNorm statistics) and then runs Keras's ``train_step`` unchanged. Other steps run
    untouched. The monitor picks how often to measure from measured step times so that the extra
    time stays under ``overhead_budget``; a measured step costs about two plain ones.

    After each epoch ``logs["noise_scale"]`` holds the current estimate (so callbacks after this
    one, e.g. ``keras.callbacks.TensorBoard`` or ``CSVLogger``, record it); :attr:`monitor`
    keeps the estimate, its 95 % interval and the trajectory.

    Args:
        monitor: a configured :class:`~batchsage.NoiseScaleMonitor`; default: one built from
            ``monitor_options`` (``micro_batches``, ``every``, ``overhead_budget``, ``ema``,
            ``dataset_size``...).
    """

    def __init__(self, monitor: NoiseScaleMonitor | None = None, **monitor_options: Any) -> None:
        super().__init__()
        if monitor is not None and monitor_options:
            raise ConfigError("pass either a NoiseScaleMonitor or its options, not both")
        self.monitor = monitor if monitor is not None else NoiseScaleMonitor(**monitor_options)
        if self.monitor.method != "estimator" or self.monitor.variant != "plain":
            raise ConfigError("NoiseScaleCallback measures the plain variant with the estimator method")
        self.state = TrainState()
        self._installed = False
        self._previous: Any = None

    # ---- what callers read ------------------------------------------------------------------

    def estimate(self) -> NoiseEstimate | None:
        return self.monitor.estimate()

    @property
    def trajectory(self) -> list[TrajectoryPoint]:
        return self.monitor.trajectory

    # ---- Keras events -----------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if model.jit_compile:
            raise ConfigError("NoiseScaleCallback needs an eager train step: compile(jit_compile=False)")
        original = model.train_step
        self._previous = model.__dict__.get("train_step")  # another wrapper's, if any

        def train_step(data: Any) -> Any:
            self._measure(data)
            return original(data)

        model.train_step = train_step  # looked up per call by Keras's train function
        self._installed = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.monitor.on_step_end(self.state)
        self.state.step += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        estimate = self.monitor.estimate()
        if logs is not None and estimate is not None and math.isfinite(estimate.b_simple):
            logs["noise_scale"] = estimate.b_simple

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._installed:
            if self._previous is not None:
                self.model.train_step = self._previous
            else:
                self.model.__dict__.pop("train_step", None)
            self._installed = False
        self.monitor.flush()

    # ---- the measured step --------------------------------------------------------------------

    def _measure(self, data: Any) -> None:
        model, monitor = self.model, self.monitor
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        batch: Sequence[Any] = (x, y) if sample_weight is None else (x, y, sample_weight)
        parts = min(monitor.micro_batches(self.state, 1), batch_len(batch))
        if parts <= 1:
            monitor.on_gradients(model, self.state, math.nan)  # a plain step: Keras does the rest
            return

        def loss_fn(net: Any, micro: Sequence[Any]) -> torch.Tensor:
            return _keras_loss(net, *micro, training=True)

        kept = [variable.value.detach().clone() for variable in model.non_trainable_weights]
        model.zero_grad()

        def on_micro(index: int, count: int, size: int) -> None:
            monitor.on_micro_backward(model, index, count, size)

        loss = accumulate_gradients(model, batch, loss_fn, parts, on_micro)
        monitor.on_gradients(model, self.state, loss)
        with torch.no_grad():
            for variable, value in zip(model.non_trainable_weights, kept, strict=True):
                variable.value.copy_(value)
        model.zero_grad()


# --------------------------------------------------------------------------------------------
# Keras Tuner
# --------------------------------------------------------------------------------------------


def _hypermodel_class() -> type:
    try:
        import keras_tuner
    except ImportError as exc:
        raise ImportError("BatchsageHyperModel needs Keras Tuner: "
                          "pip install 'batchsage[keras-tuner]'") from exc

    class BatchsageHyperModel(keras_tuner.HyperModel):  # type: ignore[misc, name-defined]
        """A Keras Tuner ``HyperModel`` that trains every trial at batchsage's batch size and lr.

        ``build(hp)`` calls the user's ``build(hp)`` (a compiled model) and recompiles it with the
        recommended optimiser settings (:func:`apply_recommendation`); ``fit`` passes the
        recommended ``batch_size``. The search then spends its trials on the other
        hyper-parameters. The recommendation is for the architecture it was measured on: tune
        around it, and do not tune ``batch_size`` or the learning rate in ``build``.
        """

        def __init__(self, build: Callable[[Any], keras.Model], recommendation: Any,
                     name: str | None = None, tunable: bool = True) -> None:
            super().__init__(name=name, tunable=tunable)
            self._user_build = build
            self.recommendation = recommendation
            _answer(recommendation)  # fail now on something that is not a recommendation

        def build(self, hp: Any) -> keras.Model:
            model = self._user_build(hp)
            apply_recommendation(model, self.recommendation)
            return model

        def fit(self, hp: Any, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
            kwargs.update(fit_arguments(self.recommendation))
            return model.fit(*args, **kwargs)

    BatchsageHyperModel.__module__ = __name__
    return BatchsageHyperModel


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "BatchsageHyperModel":
        if name not in _LAZY:
            _LAZY[name] = _hypermodel_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
