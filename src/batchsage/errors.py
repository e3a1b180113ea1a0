"""Errors batchsage raises for bad input; the CLI turns each into one line and exit code 2."""


class BatchsageError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""


class ConfigError(BatchsageError):
    """An argument is out of range or malformed (batch size 0, lr <= 0, bad size string...)."""
