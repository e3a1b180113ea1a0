"""Empirical sweeps: train (batch size × learning rate × seed) to target, cheaply and resumably.

The objective is training seconds to target. A trial stops as soon as it can no longer beat the
best time found so far, trials likely to be fast run first, and all state lives in an Optuna
storage, so a rerun resumes and several processes share one sweep::

    from batchsage.sweep import run_sweep
    result = run_sweep("digits-mlp", batch_sizes=[32, 128, 512], storage="sqlite:///sweep.db")
    result.best            # {"batch_size": ..., "lr": ..., "seconds_to_target": ...}

``procedure="doubling"`` reproduces the seeds' practice (start at 32, double while it improves)
as a baseline. Modules: ``_grid`` (which trials, in which order), ``_cut`` (stopping trials that
cannot win), ``_store`` (the Optuna storage protocol: exactly once), ``_result`` and ``_run``.
"""

from batchsage.sweep._cut import CutHook, estimate_full_steps, projected_seconds_to_target
from batchsage.sweep._grid import TrialKey, default_batch_sizes, grid_trials, nearest_first, rule_lr
from batchsage.sweep._result import SweepResult, SweepTrial, best_config, saved_compute
from batchsage.sweep._run import SweepError, batch_score, doubling_procedure, run_sweep
from batchsage.sweep._store import StorageError, SweepStore

__all__ = [
    "CutHook",
    "StorageError",
    "SweepError",
    "SweepResult",
    "SweepStore",
    "SweepTrial",
    "TrialKey",
    "batch_score",
    "best_config",
    "default_batch_sizes",
    "doubling_procedure",
    "estimate_full_steps",
    "grid_trials",
    "nearest_first",
    "projected_seconds_to_target",
    "rule_lr",
    "run_sweep",
    "saved_compute",
]
