"""Deciding while training: the live run, forks of it that race, checkpoints (see :func:`fit`)."""

from batchsage.live.controller import FitError, FitOptions, FitResult, TimeBreakdown, fit

__all__ = ["FitError", "FitOptions", "FitResult", "TimeBreakdown", "fit"]
