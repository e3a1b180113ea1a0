"""The ``batchsage`` command line: a thin layer over the Python API.

Each command lives in its own module and registers itself on the shared Typer ``app``; bad input
(a :class:`~batchsage.errors.BatchsageError`) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from batchsage.cli._app import app


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # raised outside a command (e.g. during import)
        sys.exit(130)


# Command modules: importing one registers its commands on ``app``.
from batchsage.cli import train as _train  # noqa: E402,F401
from batchsage.cli import recommend as _recommend  # noqa: E402,F401
from batchsage.cli import fit as _fit  # noqa: E402,F401
from batchsage.cli import sweep as _sweep  # noqa: E402,F401
from batchsage.cli import noise as _noise  # noqa: E402,F401
from batchsage.cli import probe as _probe  # noqa: E402,F401
from batchsage.cli import workers as _workers  # noqa: E402,F401
