"""Built-in tasks, one module each. They exist for tests, examples and benchmarks and are not
special to the engine: each is an ordinary :class:`batchsage.Task` factory.
"""

from __future__ import annotations

from collections.abc import Callable

from batchsage.task import Task, TaskError


def _registry() -> dict[str, Callable[[], Task]]:
    from batchsage.tasks import charlm, digits, fashion, linreg

    return {
        "linreg": linreg.make_task,
        "digits-mlp": digits.make_task,
        "fashion-mlp": fashion.make_mlp_task,
        "fashion-cnn": fashion.make_cnn_task,
        "charlm": charlm.make_task,
    }


BUILTIN_NAMES = ("linreg", "digits-mlp", "fashion-mlp", "fashion-cnn", "charlm")


def build_builtin(name: str) -> Task:
    """Build the built-in task called ``name``."""
    registry = _registry()
    if name not in registry:
        raise TaskError(
            f"unknown task {name!r}: built-in tasks are {', '.join(BUILTIN_NAMES)}, "
            "or give path/to/file.py:ATTR"
        )
    return registry[name]()
