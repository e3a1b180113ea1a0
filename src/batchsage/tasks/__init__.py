"""Built-in tasks, one module each. They exist for tests, examples and benchmarks and are not
special to the engine: each is an ordinary :class:`batchsage.Task` factory.

They come in two groups (:data:`GROUPS`). batchsage's recommender and ``fit`` were developed and
tuned against the *development* tasks; the *evaluation* tasks are kinds the development set lacks
(a transformer with warmup, a BatchNorm net, a regression with Adam) and are only measured on,
never tuned on, so that their ground truths say how batchsage does on problems it has not seen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from batchsage.task import Task, TaskError

#: name -> (module under batchsage.tasks, factory function). Modules are imported only when their
#: task is built: scikit-learn alone costs ~1.5 s to import, and most runs need one task.
_REGISTRY: dict[str, tuple[str, str]] = {
    "linreg": ("linreg", "make_task"),
    "digits-mlp": ("digits", "make_task"),
    "fashion-mlp": ("fashion", "make_mlp_task"),
    "fashion-cnn": ("fashion", "make_cnn_task"),
    "charlm": ("charlm", "make_task"),
    "doclm": ("doclm", "make_task"),
    "fashion-bncnn": ("fashion_bn", "make_task"),
    "waves-mlp": ("waves", "make_task"),
}

#: Which tasks batchsage is developed against and which it is only evaluated on (docs/tasks.md).
GROUPS: dict[str, tuple[str, ...]] = {
    "development": ("linreg", "digits-mlp", "fashion-mlp", "fashion-cnn", "charlm"),
    "evaluation": ("doclm", "fashion-bncnn", "waves-mlp"),
}


def _factory(name: str) -> Callable[[], Task]:
    module_name, function = _REGISTRY[name]
    module = importlib.import_module(f"batchsage.tasks.{module_name}")
    return getattr(module, function)


BUILTIN_NAMES = tuple(_REGISTRY)



def group_of(name: str) -> str:
    """The group (``"development"`` or ``"evaluation"``) of the built-in task ``name``."""
    for group, names in GROUPS.items():
        if name in names:
            return group
    raise TaskError(f"unknown task {name!r}: built-in tasks are {', '.join(BUILTIN_NAMES)}")


def build_builtin(name: str) -> Task:
    """Build the built-in task called ``name``."""
    if name not in _REGISTRY:
        raise TaskError(
            f"unknown task {name!r}: built-in tasks are {', '.join(BUILTIN_NAMES)}, "
            "or give path/to/file.py:ATTR"
        )
    return _factory(name)()
