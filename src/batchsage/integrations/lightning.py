"""batchsage in PyTorch Lightning: the fastest batch size, with its lr, accumulation and warmup.

Three entry points, all measuring through the user's own ``LightningModule`` (``training_step``,
``validation_step`` and what it logs, ``configure_optimizers``) and data loaders (the datamodule's
or the module's: their datasets and collate functions):

- :class:`BatchsageFinder`: a callback added to the ``Trainer`` the way ``BatchSizeFinder`` is. At
  the start of ``trainer.fit`` it runs :func:`batchsage.recommend` on a copy of the module, then
  sets the batch size (on the module, its ``hparams`` and the datamodule, as Lightning's finder
  does), the lr (on the optimiser, its schedulers and the module's lr attribute),
  ``trainer.accumulate_grad_batches`` and a linear warmup.
- :func:`recommend_batch_size`: the same decision before ``fit`` (like ``Tuner.scale_batch_size``),
  returning the :class:`~batchsage.Recommendation`; pass it to ``BatchsageFinder(recommendation=...)``
  to apply it without measuring again.
- :func:`fit_live`: trains with :func:`batchsage.fit` (batch and lr decided while training,
  forks of the live run racing) and loads the trained weights into the user's module.

The user's module is never trained: every run batchsage makes starts from a deep copy of it
(taken without its ``Trainer``), and its logging calls go nowhere (the copy has no trainer), so no
probe reaches the user's loggers. The caller's random state is put back after a decision.

What batchsage does not see (its measurements run its own plain loop on the copy): learning-rate
schedulers, gradient clipping, mixed precision, the ``DataLoader``'s sampler and worker processes.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - the extra is installed wherever this module is tested
    raise ImportError("batchsage.integrations.lightning needs Lightning 2.x: "
                      "pip install 'batchsage[lightning]'") from exc

from batchsage.data import batch_len
from batchsage.decide import Recommendation, recommend
from batchsage.integrations._common import (
    IntegrationError,
    LinearWarmup,
    cap_micro_batch,
    check_adapted_task,
    collated,
    index_dataset,
    preserved_random_state,
)
from batchsage.live import FitOptions, FitResult
from batchsage.live import fit as live_fit
from batchsage.task import Task, TaskError

Mode = Literal["min", "max"]
#: Lightning's own default when a Trainer sets neither max_epochs nor max_steps.
DEFAULT_MAX_EPOCHS = 1000
#: Where the lr finder looks when no attribute name is given (Lightning's LearningRateFinder order).
LR_ATTR_NAMES = ("lr", "learning_rate")

__all__ = ["BatchsageFinder", "fit_live", "lightning_task", "recommend_batch_size"]


# ---- attributes on the module, its hparams and the datamodule (Lightning's lookup rules) ----------


def _holders(model: pl.LightningModule, datamodule: Any, name: str) -> list[Any]:
    """Objects or dicts holding ``name``: module, module.hparams, datamodule, datamodule.hparams.

    The order and the rules of ``lightning.pytorch.utilities.parsing.lightning_setattr``, with the
    datamodule given explicitly (before ``fit`` it is not attached to a trainer yet).
    """
    holders: list[Any] = []
    for owner in (model, datamodule):
        if owner is None:
            continue
        if hasattr(owner, name):
            holders.append(owner)
        hparams = getattr(owner, "hparams", None)
        if hparams is not None and name in hparams:
            holders.append(hparams)
    return holders


def _read(holders: Sequence[Any], name: str) -> Any:
    holder = holders[-1]  # Lightning reads the last holder
    return holder[name] if isinstance(holder, dict) else getattr(holder, name)


def _write(holders: Sequence[Any], name: str, value: Any) -> None:
    for holder in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)


def _lr_holders(model: pl.LightningModule, datamodule: Any,
                lr_attr_name: str) -> tuple[str | None, list[Any]]:
    """The lr attribute's name and holders: ``lr_attr_name`` (must exist), else "lr" or
    "learning_rate" where found, else none (the lr lives only in ``configure_optimizers``)."""
    if lr_attr_name:
        holders = _holders(model, datamodule, lr_attr_name)
        if not holders:
            raise IntegrationError(f"lr_attr_name {lr_attr_name!r} not found in the model, the datamodule, "
                                   "nor their hparams")
        return lr_attr_name, holders
    for name in LR_ATTR_NAMES:
        holders = _holders(model, datamodule, name)
        if holders:
            return name, holders
    return None, []


# ---- the adapter: a LightningModule and its loaders as a batchsage Task ---------------------------


def _detached_copy(model: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of the module without its Trainer (and whatever hangs off it)."""
    trainer = getattr(model, "_trainer", None)
    memo: dict[int, Any] = {} if trainer is None else {id(trainer): None}
    try:
        twin = copy.deepcopy(model, memo)
    except Exception as exc:
        raise IntegrationError(f"cannot copy {type(model).__name__} (batchsage trains copies, never the "
                               f"module itself): {type(exc).__name__}: {exc}") from exc
    twin._trainer = None
    return twin


def _one_optimizer(config: Any) -> torch.optim.Optimizer:
    """The optimiser of ``configure_optimizers()``'s return value, in any of its documented forms."""
    found: list[torch.optim.Optimizer] = []

    def visit(item: Any) -> None:
        if isinstance(item, torch.optim.Optimizer):
            found.append(item)
        elif isinstance(item, Mapping):
            visit(item.get("optimizer"))
        elif isinstance(item, list | tuple):
            for element in item:
                visit(element)

    visit(config)
    if len(found) != 1:
        raise IntegrationError(f"configure_optimizers() returned {len(found)} optimisers; batchsage adapts a "
                               "module with exactly one (Lightning's automatic optimisation)")
    return found[0]


def _group_lr(group: Mapping[str, Any]) -> float:
    """A param group's lr before any scheduler touched it (schedulers keep it as initial_lr)."""
    return float(group.get("initial_lr", group["lr"]))


def _optimizer_factory(optimizer: torch.optim.Optimizer, template: nn.Module
                       ) -> tuple[Callable[..., torch.optim.Optimizer], float]:
    """``make_optimizer(params, lr)`` rebuilding the module's optimiser (class, defaults, param groups
    with their lr ratios) over another copy's parameters, and the module's lr (the largest group's)."""
    cls = type(optimizer)
    defaults = dict(optimizer.defaults)
    position = {id(p): i for i, p in enumerate(template.parameters())}
    top = max(_group_lr(group) for group in optimizer.param_groups)
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in position]
        if missing:
            raise IntegrationError("configure_optimizers() optimises tensors that are not the module's "
                                   "parameters; batchsage cannot rebuild that optimiser for a copy")
        options = {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
        groups.append(([position[id(p)] for p in group["params"]], _group_lr(group) / top, options))
    count = len(position)

    def make_optimizer(params: Any, lr: float) -> torch.optim.Optimizer:
        params = list(params)
        if len(params) != count:  # not a copy of the module (batchsage's own probes): one group
            return cls(params, **{**defaults, "lr": lr})
        return cls([{**options, "params": [params[i] for i in indices], "lr": ratio * lr}
                    for indices, ratio, options in groups], **{**defaults, "lr": lr})

    return make_optimizer, top


def _loader(owner: Any, method: str) -> DataLoader:
    loader = getattr(owner, method)()
    if not isinstance(loader, DataLoader):
        raise IntegrationError(f"{type(owner).__name__}.{method}() returned {type(loader).__name__}; "
                               "batchsage needs one torch DataLoader over a map-style dataset")
    if loader.batch_size is None:
        raise IntegrationError(f"{type(owner).__name__}.{method}() uses a batch_sampler; batchsage sets the "
                               "batch size and needs a DataLoader built with batch_size=")
    return loader


def _accepts_batch_idx(method: Callable[..., Any]) -> bool:
    parameters = [p for p in inspect.signature(method).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return len(parameters) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


@contextmanager
def _no_trainer_warnings() -> Iterator[None]:
    """``self.log`` on a module without a trainer warns once per call site; the copy has none by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)`")
        yield


def _to_device(model: pl.LightningModule, batch: Any) -> Any:
    """The module's own transfer hooks, as the Trainer calls them."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = model.on_before_batch_transfer(batch, 0)
    batch = model.transfer_batch_to_device(batch, device, 0)
    return model.on_after_batch_transfer(batch, 0)


class _LogRecorder:
    """Stands in for ``LightningModule.log``/``log_dict`` during a validation pass: reduces each name
    over the epoch as Lightning does (mean weighted by batch size; sum, max, min; torchmetrics
    objects computed at the end)."""

    def __init__(self) -> None:
        self.batch: Any = None
        self.totals: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.reduce: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}

    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool | None = None,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
            enable_graph: bool = False, sync_dist: bool = False, sync_dist_group: Any = None,
            add_dataloader_idx: bool = True, batch_size: int | None = None,
            metric_attribute: str | None = None, rank_zero_only: bool = False) -> None:
        if callable(getattr(value, "compute", None)) and callable(getattr(value, "reset", None)):
            self.metrics[name] = value  # a torchmetrics Metric: computed over the epoch at the end
            return
        number = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
        reduce = reduce_fx if isinstance(reduce_fx, str) else getattr(reduce_fx, "__name__", "mean")
        reduce = {"avg": "mean", "amax": "max", "amin": "min"}.get(reduce, reduce)
        if reduce not in ("mean", "sum", "max", "min"):
            raise TaskError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): batchsage reduces with mean, sum, "
                            "max or min")
        self.reduce[name] = reduce
        if reduce == "mean":
            weight = float(batch_size) if batch_size is not None else float(self._batch_size())
            self.totals[name] = self.totals.get(name, 0.0) + number * weight
            self.weights[name] = self.weights.get(name, 0.0) + weight
        elif reduce == "sum":
            self.totals[name] = self.totals.get(name, 0.0) + number
        else:
            pick = max if reduce == "max" else min
            self.totals[name] = pick(self.totals.get(name, number), number)

    def log_dict(self, dictionary: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, *args, **kwargs)

    def _batch_size(self) -> int:
        try:
            return batch_len(self.batch) if self.batch is not None else 1
        except TypeError:
            return 1

    def logged(self) -> list[str]:
        return sorted({*self.totals, *self.metrics})

    def value(self, name: str) -> float:
        """The epoch's value of ``name``."""
        if name in self.metrics:
            return float(self.metrics[name].compute())
        if name not in self.totals:
            raise TaskError(f"monitor {name!r} was not logged by validation_step or on_validation_epoch_end "
                            f"(logged: {', '.join(self.logged()) or 'nothing'})")
        if self.reduce[name] == "mean":
            return self.totals[name] / self.weights[name] if self.weights[name] else math.nan
        return self.totals[name]

    def reset(self) -> None:
        """Reset the torchmetrics objects logged (their state belongs to the next epoch)."""
        for metric in self.metrics.values():
            metric.reset()


@dataclass
class _Adapter:
    """The user's module, datamodule and settings, and the batchsage Task made of them."""

    model: pl.LightningModule
    datamodule: Any
    task: Task
    batch_arg_name: str
    batch_holders: list[Any]
    lr_attr_name: str | None
    lr_holders: list[Any]
    base_lr: float


def _adapt(model: pl.LightningModule, datamodule: Any, *, monitor: str, target: float, mode: Mode,
           batch_arg_name: str, lr_attr_name: str, accumulate_grad_batches: int, max_epochs: int | None,
           max_steps: int | None, max_samples: int | None) -> _Adapter:
    if not isinstance(model, pl.LightningModule):
        raise IntegrationError(f"model must be a lightning.pytorch.LightningModule, "
                               f"got {type(model).__name__}")
    if not model.automatic_optimization:
        raise IntegrationError(f"{type(model).__name__} uses manual optimisation; batchsage adapts modules "
                               "whose training_step returns the loss (automatic optimisation)")
    if mode not in ("min", "max"):
        raise IntegrationError(f"mode must be 'min' or 'max', got {mode!r}")
    if not isinstance(monitor, str) or not monitor:
        raise IntegrationError("monitor must name the validation metric the module logs, e.g. 'val_acc'")
    if not isinstance(target, int | float) or not math.isfinite(target):
        raise IntegrationError(f"target must be a finite number (the {monitor} that counts as trained), "
                               f"got {target!r}")
    batch_holders = _holders(model, datamodule, batch_arg_name)
    if not batch_holders:
        raise IntegrationError(f"Field {batch_arg_name} not found in `model`, `datamodule`, nor their "
                               "`hparams` attributes.")
    lr_name, lr_holders = _lr_holders(model, datamodule, lr_attr_name)
    source = datamodule if datamodule is not None else model
    train_loader = _loader(source, "train_dataloader")
    val_loader = _loader(source, "val_dataloader")
    train_set: Dataset = train_loader.dataset
    train_collate = train_loader.collate_fn
    val_collate, val_batch = val_loader.collate_fn, int(val_loader.batch_size or 1)
    indices = index_dataset(train_set, f"{type(source).__name__}.train_dataloader()'s dataset")
    index_dataset(val_loader.dataset, f"{type(source).__name__}.val_dataloader()'s dataset")

    template = _detached_copy(model)
    with _no_trainer_warnings():
        configured = _one_optimizer(template.configure_optimizers())
    make_optimizer, base_lr = _optimizer_factory(configured, template)
    takes_batch_idx = _accepts_batch_idx(template.training_step)
    val_takes_batch_idx = _accepts_batch_idx(template.validation_step)

    def make_model() -> nn.Module:
        return copy.deepcopy(template)

    def loss_fn(net: nn.Module, batch: Any) -> torch.Tensor:
        inputs = _to_device(net, collated(train_set, batch, train_collate))  # type: ignore[arg-type]
        with _no_trainer_warnings():
            output = net.training_step(inputs, 0) if takes_batch_idx else net.training_step(inputs)
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, torch.Tensor):
            raise TaskError(f"{type(model).__name__}.training_step returned {type(output).__name__}; "
                            "batchsage needs the loss (a tensor, or a dict with 'loss')")
        return loss

    def metric_fn(net: nn.Module, data: Dataset) -> float:
        recorder = _LogRecorder()
        net.__dict__["log"], net.__dict__["log_dict"] = recorder.log, recorder.log_dict
        try:
            with _no_trainer_warnings():
                net.on_validation_epoch_start()
                loader = DataLoader(data, batch_size=val_batch, collate_fn=val_collate, shuffle=False)
                for index, raw in enumerate(loader):
                    recorder.batch = batch = _to_device(net, raw)  # type: ignore[arg-type]
                    if val_takes_batch_idx:
                        net.validation_step(batch, index)
                    else:
                        net.validation_step(batch)
                recorder.batch = None
                net.on_validation_epoch_end()
            return recorder.value(monitor)
        finally:
            recorder.reset()
            net.__dict__.pop("log", None)
            net.__dict__.pop("log_dict", None)

    base_micro = int(_read(batch_holders, batch_arg_name))
    base_batch = base_micro * max(1, int(accumulate_grad_batches))
    size = len(train_set)  # type: ignore[arg-type]
    if max_samples is None:
        if max_steps is not None and max_steps > 0:
            max_samples = max_steps * base_batch
        else:
            epochs = max_epochs if max_epochs is not None and max_epochs > 0 else DEFAULT_MAX_EPOCHS
            max_samples = epochs * size
    task = Task(
        name=type(model).__name__,
        make_model=make_model,
        train_data=indices,
        val_data=val_loader.dataset,
        loss_fn=loss_fn,
        make_optimizer=make_optimizer,
        metric_fn=metric_fn,
        target=float(target),
        higher_is_better=mode == "max",
        base_batch_size=min(base_batch, size),
        base_lr=base_lr,
        max_samples=int(max_samples),
        metric_name=monitor,
        description=f"LightningModule {type(model).__name__}",
    ).validate()
    check_adapted_task(task)
    return _Adapter(model, datamodule, task, batch_arg_name, batch_holders, lr_name, lr_holders, base_lr)


def lightning_task(model: pl.LightningModule, datamodule: pl.LightningDataModule | None = None, *,
                   monitor: str, target: float, mode: Mode = "max", batch_arg_name: str = "batch_size",
                   accumulate_grad_batches: int = 1, max_epochs: int | None = None,
                   max_steps: int | None = None, max_samples: int | None = None) -> Task:
    """The :class:`batchsage.Task` a LightningModule (and datamodule) stands for.

    For batchsage's other tools (``batchsage.probe_throughput``, ``batchsage.measure_noise``,
    ``batchsage.train`` ...). A batch of the task is a tensor of sample indices that its loss turns
    into the loaders' batch; ``make_model`` returns copies of ``model``; the metric is ``monitor``
    as ``validation_step`` logs it. See :func:`recommend_batch_size` for the arguments.
    """
    return _adapt(model, datamodule, monitor=monitor, target=target, mode=mode, batch_arg_name=batch_arg_name,
                  lr_attr_name="", accumulate_grad_batches=accumulate_grad_batches, max_epochs=max_epochs,
                  max_steps=max_steps, max_samples=max_samples).task


def _prepare(datamodule: Any) -> None:
    """What ``trainer.fit`` does to a datamodule before it asks for loaders."""
    if datamodule is not None:
        datamodule.prepare_data()
        datamodule.setup("fit")


def _trainer_limits(trainer: pl.Trainer | None, max_epochs: int | None, max_steps: int | None,
                    accumulate_grad_batches: int | None) -> tuple[int | None, int | None, int]:
    if trainer is not None:
        max_epochs = trainer.max_epochs if max_epochs is None else max_epochs
        max_steps = trainer.max_steps if max_steps is None else max_steps
        accumulate_grad_batches = (trainer.accumulate_grad_batches if accumulate_grad_batches is None
                                   else accumulate_grad_batches)
    return max_epochs, max_steps, int(accumulate_grad_batches or 1)


def _device_of(trainer: pl.Trainer | None, device: str | None) -> str | None:
    if device not in (None, "auto") or trainer is None:
        return device
    return trainer.strategy.root_device.type


def recommend_batch_size(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    *,
    monitor: str,
    target: float,
    mode: Mode = "max",
    trainer: pl.Trainer | None = None,
    batch_arg_name: str = "batch_size",
    lr_attr_name: str = "",
    max_val: int = 8192,
    update_attr: bool = True,
    budget_seconds: float = 20.0,
    device: str | None = "auto",
    max_epochs: int | None = None,
    max_steps: int | None = None,
    max_samples: int | None = None,
    accumulate_grad_batches: int | None = None,
    progress: bool = False,
) -> Recommendation:
    """Recommend batch size, lr, accumulation and warmup for a LightningModule, before ``trainer.fit``.

    Lightning's ``Tuner.scale_batch_size`` answers "the largest batch that fits"; this answers "the
    batch that reaches ``monitor`` = ``target`` soonest", with its lr, accumulation and warmup.

    Args:
        model: the LightningModule (never trained here: batchsage trains copies).
        datamodule: its LightningDataModule (``prepare_data`` and ``setup("fit")`` are called), or
            None when the module defines ``train_dataloader``/``val_dataloader`` itself.
        monitor, target, mode: the validation metric the module logs (``self.log(monitor, ...)`` in
            ``validation_step`` or ``on_validation_epoch_end``), the value that counts as trained,
            and whether lower ("min") or higher ("max") is better, as in ``EarlyStopping``.
        trainer: a Trainer whose max_epochs/max_steps, accumulate_grad_batches and device apply
            (it is not run).
        batch_arg_name: the batch-size attribute on the module, its hparams or the datamodule (as
            in ``BatchSizeFinder``); its value × accumulate_grad_batches is the base batch.
        lr_attr_name: the lr attribute ("" looks for "lr", then "learning_rate", as Lightning's
            ``LearningRateFinder`` does with ``attr_name``); none is needed: the base lr is read
            from ``configure_optimizers()``'s optimiser.
        max_val: the largest batch size set on ``batch_arg_name`` (batches above it run as
            accumulated micro-batches).
        update_attr: set the batch size and lr attributes to the recommendation's (as
            ``LearningRateFinder(update_attr=True)``); accumulation and warmup are Trainer
            settings: pass the result to ``BatchsageFinder(recommendation=...)`` for those.
        budget_seconds, device, progress: as in :func:`batchsage.recommend`.
        max_epochs, max_steps, max_samples: the training budget (default: the trainer's, else
            Lightning's 1000 epochs).
        accumulate_grad_batches: default the trainer's, else 1.
    """
    max_epochs, max_steps, accumulation = _trainer_limits(trainer, max_epochs, max_steps,
                                                          accumulate_grad_batches)
    with preserved_random_state():
        _prepare(datamodule)
    adapter = _adapt(model, datamodule, monitor=monitor, target=target, mode=mode,
                     batch_arg_name=batch_arg_name, lr_attr_name=lr_attr_name,
                     accumulate_grad_batches=accumulation, max_epochs=max_epochs, max_steps=max_steps,
                     max_samples=max_samples)
    with preserved_random_state():
        rec = recommend(adapter.task, device=_device_of(trainer, device), budget_seconds=budget_seconds,
                        progress=progress)
    rec = cap_micro_batch(rec, max_val)
    if update_attr:
        _write(adapter.batch_holders, batch_arg_name, rec.micro_batch_size)
        _scale_lr_attr(adapter, rec.lr / adapter.base_lr)
    return rec


def _scale_lr_attr(adapter: _Adapter, factor: float) -> None:
    if adapter.lr_attr_name is not None:
        current = _read(adapter.lr_holders, adapter.lr_attr_name)
        if isinstance(current, int | float) and not isinstance(current, bool):
            _write(adapter.lr_holders, adapter.lr_attr_name, float(current) * factor)


def _set_trainer_lr(trainer: pl.Trainer, lr: float) -> float:
    """Scale every param group (and the schedulers' base lrs) so the largest group's lr is ``lr``;
    returns the factor."""
    optimizers = trainer.optimizers
    top = max(_group_lr(group) for optimizer in optimizers for group in optimizer.param_groups)
    factor = lr / top
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * factor
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [base * factor for base in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return factor


class BatchsageFinder(Callback):
    """Sets the fastest batch size, its lr, accumulation and warmup at the start of ``trainer.fit``.

    Added to a Trainer like Lightning's ``BatchSizeFinder`` (the same ``batch_arg_name`` and
    ``max_val``), plus what batchsage needs: the validation metric the module logs (``monitor``),
    its ``target`` and ``mode`` (as in ``EarlyStopping``), and optionally the lr attribute.

    At ``on_fit_start`` it measures through a copy of the module and the loaders
    (:func:`batchsage.recommend`), then

    - sets ``batch_arg_name`` (the per-pass batch, what the loaders use) on the module, its hparams
      and the datamodule, wherever it is found, and Lightning reloads the loaders with it;
    - scales the optimiser's lr (every param group, keeping their ratios, and the schedulers' base
      lrs) to the recommended one, and the module's lr attribute with it;
    - sets ``trainer.accumulate_grad_batches``;
    - warms the lr up linearly over the recommended warmup steps (through the optimiser's step
      hooks, so it composes with the module's own scheduler).

    The module's weights, the Trainer's loggers and the random state are as they were: batchsage
    trains copies, with no trainer attached. ``self.recommendation`` holds what was decided.

    Args:
        monitor, target, mode: see :func:`recommend_batch_size`.
        batch_arg_name, lr_attr_name, max_val, budget_seconds, progress: ditto.
        update_attr: also set the lr attribute (the batch-size attribute is always set: that is how
            the loaders get the batch).
        recommendation: apply this recommendation (from :func:`recommend_batch_size`, or
            ``Recommendation.load(path)``) instead of measuring.

    Distributed strategies are refused for now: batchsage times a step in one process, so under
    DDP it would time the wrong step (no gradient all-reduce, a whole global batch per process).
    """

    def __init__(self, monitor: str | None = None, target: float | None = None, mode: Mode = "max", *,
                 batch_arg_name: str = "batch_size", lr_attr_name: str = "", max_val: int = 8192,
                 budget_seconds: float = 20.0, update_attr: bool = True,
                 recommendation: Recommendation | None = None, progress: bool = False) -> None:
        if recommendation is None and (monitor is None or target is None):
            raise IntegrationError("BatchsageFinder needs monitor= and target= (the validation metric the "
                                   "module logs and its value when trained), or recommendation=")
        self.monitor = monitor
        self.target = target
        self.mode: Mode = mode
        self.batch_arg_name = batch_arg_name
        self.lr_attr_name = lr_attr_name
        self.max_val = max_val
        self.budget_seconds = budget_seconds
        self.update_attr = update_attr
        self.recommendation = recommendation
        self.progress = progress
        self.decision_seconds: float | None = None
        self._warmup: LinearWarmup | None = None

    @property
    def warmup(self) -> LinearWarmup | None:
        """The warmup in force (None before fit or without warmup)."""
        return self._warmup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str | None = None) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise IntegrationError(
                "BatchsageFinder does not support distributed strategies yet: batchsage times a training "
                "step in one process, which under DDP is not the step that runs (no gradient all-reduce, "
                "a whole global batch per process). Decide in a single process with recommend_batch_size "
                "and set batch_size = recommendation.micro_batch_size // world_size yourself")
        source = getattr(getattr(trainer.fit_loop, "_data_source", None), "is_module", None)
        if callable(source) and not source():
            raise IntegrationError("BatchsageFinder cannot set the batch size of dataloaders passed directly "
                                   "to `.fit()`: define them in the LightningModule or a LightningDataModule")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path:
            warnings.warn("BatchsageFinder skipped: fit resumes from a checkpoint, whose optimiser state "
                          "and loop position set the batch size and lr", stacklevel=1)
            return
        datamodule = trainer.datamodule
        rec = self.recommendation
        if rec is None:
            assert self.monitor is not None and self.target is not None
            adapter = _adapt(pl_module, datamodule, monitor=self.monitor, target=self.target, mode=self.mode,
                             batch_arg_name=self.batch_arg_name, lr_attr_name=self.lr_attr_name,
                             accumulate_grad_batches=trainer.accumulate_grad_batches,
                             max_epochs=trainer.max_epochs, max_steps=trainer.max_steps, max_samples=None)
            with preserved_random_state():
                rec = recommend(adapter.task, device=trainer.strategy.root_device.type,
                                budget_seconds=self.budget_seconds, progress=self.progress)
            rec = cap_micro_batch(rec, self.max_val)
            self.recommendation = rec
            self.decision_seconds = rec.decision_seconds
        self._apply(trainer, pl_module, datamodule, rec)

    def _apply(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any,
               rec: Recommendation) -> None:
        holders = _holders(module, datamodule, self.batch_arg_name)
        if not holders:
            raise IntegrationError(f"Field {self.batch_arg_name} not found in `model`, `datamodule`, nor "
                                   "their `hparams` attributes.")
        _write(holders, self.batch_arg_name, rec.micro_batch_size)
        trainer.accumulate_grad_batches = rec.accumulation_steps
        factor = _set_trainer_lr(trainer, rec.lr)
        if self.update_attr:
            name, lr_holders = _lr_holders(module, datamodule, self.lr_attr_name)
            if name is not None:
                current = _read(lr_holders, name)
                if isinstance(current, int | float) and not isinstance(current, bool):
                    _write(lr_holders, name, float(current) * factor)
        if self._warmup is not None:
            self._warmup.remove()
        self._warmup = LinearWarmup(list(trainer.optimizers), rec.warmup_steps) if rec.warmup_steps else None
        # The loaders are built by the fit loop after this hook, with the new batch size; any built
        # earlier (a sanity check's) are dropped so that they are built again.
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader", None) is not None:
            fit_loop._combined_loader = None
        val_loop = fit_loop.epoch_loop.val_loop
        if getattr(val_loop, "_combined_loader", None) is not None:
            val_loop._combined_loader = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._warmup is not None:
            self._warmup.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"recommendation": self.recommendation.to_dict() if self.recommendation else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        document = state_dict.get("recommendation")
        if document is not None:
            self.recommendation = Recommendation.from_dict(document)


def fit_live(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    *,
    monitor: str,
    target: float,
    mode: Mode = "max",
    batch_arg_name: str = "batch_size",
    lr_attr_name: str = "",
    max_epochs: int | None = None,
    max_steps: int | None = None,
    max_samples: int | None = None,
    accumulate_grad_batches: int = 1,
    max_seconds: float | None = None,
    device: str | None = "auto",
    options: FitOptions | None = None,
    out: str | None = None,
    progress: bool = False,
) -> FitResult:
    """Train the module to ``target`` with :func:`batchsage.fit`, deciding batch and lr as it goes.

    batchsage's own loop trains a copy of the module through its ``training_step`` (forks of the
    live run race lr and batch changes, judged on validation; see ``batchsage.live``), then the
    trained weights are loaded into ``model`` and its batch-size and lr attributes are set to where
    the run ended. Returns the :class:`~batchsage.live.FitResult` (schedule, races, time breakdown).
    Lightning's ``Trainer`` does not run: callbacks, loggers, schedulers, clipping and precision
    settings do not apply. Arguments as in :func:`recommend_batch_size`; ``max_seconds``,
    ``options`` and ``out`` as in :func:`batchsage.fit`.
    """
    with preserved_random_state():
        _prepare(datamodule)
    adapter = _adapt(model, datamodule, monitor=monitor, target=target, mode=mode,
                     batch_arg_name=batch_arg_name, lr_attr_name=lr_attr_name,
                     accumulate_grad_batches=accumulate_grad_batches,
                     max_epochs=max_epochs, max_steps=max_steps, max_samples=max_samples)
    with preserved_random_state():
        result = live_fit(adapter.task, device=device, out=out, max_seconds=max_seconds, options=options,
                          progress=progress)
    if result.model is not None:
        model.load_state_dict(result.model.state_dict())  # copied into the module's own tensors
    accumulation = int(result.schedule[-1]["accumulation_steps"]) if result.schedule else 1
    _write(adapter.batch_holders, batch_arg_name, result.batch_size // max(accumulation, 1))
    _scale_lr_attr(adapter, result.lr / adapter.base_lr)
    return result
