"""Shared test setup: wide, uncoloured console output and the tiny tasks in tests/fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Rich reads these when a Console is created (on import of the CLI): no wrapping, no colour codes,
# so tests can count lines and match text.
os.environ["COLUMNS"] = "200"
os.environ.setdefault("NO_COLOR", "1")
os.environ.pop("FORCE_COLOR", None)

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import tiny_tasks  # noqa: E402  (needs the path above)

from batchsage import Task  # noqa: E402


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def tiny_task() -> Task:
    """A fresh two-blob classifier that reaches its target in well under a second."""
    return tiny_tasks.make_task()


@pytest.fixture
def tiny_task_spec() -> str:
    """``path/to/tiny_tasks.py:TASK`` for loading through the CLI."""
    return f"{FIXTURES / 'tiny_tasks.py'}:TASK"
