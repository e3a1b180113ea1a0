"""Shared test setup: wide, uncoloured console output, the tiny tasks in tests/fixtures, and a
throwaway PostgreSQL server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


# -- a throwaway PostgreSQL server (tests/pg.py) ---------------------------------------------------

sys.path.insert(0, str(Path(__file__).parent))
import pg  # noqa: E402  (needs the path above)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """One server for the whole session, started on first use, stopped and deleted at the end.

    Where PostgreSQL is not installed the tests that need it skip, except under ``make test``
    (``BATCHSAGE_REQUIRE_POSTGRES=1``), where a missing server is a failure: a skip must not hide
    a broken install.
    """
    try:
        server = pg.PostgresServer.start()
    except pg.PostgresUnavailable as exc:
        if os.environ.get(pg.REQUIRE_ENV) == "1":
            pytest.fail(f"{exc}; {pg.REQUIRE_ENV}=1 (make test) requires the PostgreSQL tests to run "
                        "(make test REQUIRE_POSTGRES=0 skips them)", pytrace=False)
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: pg.PostgresServer) -> str:
    """A fresh, empty database on the session's server, as an Optuna storage URL."""
    return postgres_server.create_database()
