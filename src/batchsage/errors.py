"""Errors batchsage raises for bad input; the CLI turns each into one line and exit code 2
(3 where measurements were made but cannot support an answer)."""

from __future__ import annotations

from typing import Any


class BatchsageError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""


class ConfigError(BatchsageError):
    """An argument is out of range or malformed (batch size 0, lr <= 0, bad size string...)."""


class InsufficientEvidence(BatchsageError):
    """The measurements cannot support an answer (every pilot diverged, the metric never moved).

    ``document`` holds what was measured; the CLI writes it and exits with code 3.
    """

    exit_code = 3

    def __init__(self, message: str, document: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.document = document or {}
