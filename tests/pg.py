"""A throwaway PostgreSQL server for the tests: its own data directory, 127.0.0.1 only, a free port.

The server binaries come from the Debian ``postgresql`` package (``make test`` installs it); they
live under ``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so when the
tests run as uid 0 the server runs as the ``postgres`` system user that package creates, through
``runuser``, with the data directory owned by it. Nothing of the machine's own clusters is touched.

    server = PostgresServer.start()
    url = server.create_database()          # postgresql+psycopg://batchsage:…@127.0.0.1:PORT/db1
    server.stop()                           # stops the server and removes its directory
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: ``make test`` sets this: there, PostgreSQL tests that cannot run are failures, not skips.
REQUIRE_ENV = "BATCHSAGE_REQUIRE_POSTGRES"
USER = "batchsage"
#: A password, so the tests also see that messages never show it (host connections use scram).
PASSWORD = "sweep-secret-pw"
SERVER_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries or driver on this machine: the tests that need one skip."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or initdb on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
                        else -1)
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable("PostgreSQL server binaries not found (Debian package `postgresql`, "
                              "installed by `make test`)")


def check_driver() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("the psycopg driver is not installed (pip install -e '.[postgres]')"
                                  ) from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path  # holds data/, the server log and the Unix socket
    port: int
    as_user: str | None  # run the binaries as this user (we are root), else as ourselves
    databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str, *, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    @classmethod
    def start(cls, attempts: int = 3) -> PostgresServer:
        """initdb into a fresh temporary directory and start the server on a free port."""
        check_driver()
        bindir = find_bindir()
        as_user = SERVER_USER if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="batchsage-pg-"))
        server = cls(bindir, root, 0, as_user)
        try:
            server._initdb()
            for attempt in range(attempts):
                server.port = free_port()
                try:
                    server._run("pg_ctl", "start", "--wait", "--timeout=60", "-D", str(server.data),
                                "-l", str(server.log), "-o", server._options())
                    break
                except RuntimeError:
                    # Another process may have taken the port between free_port() and the start.
                    if attempt == attempts - 1:
                        raise
        except BaseException:
            server._remove()
            raise
        return server

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user is not None:
            try:
                entry = pwd.getpwnam(self.as_user)
            except KeyError:
                raise PostgresUnavailable(f"running as root, but there is no {self.as_user!r} user to "
                                          "run the server as") from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        # trust over the local socket only (for nothing but this helper), scram over TCP.
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        pwfile.unlink()

    def _options(self) -> str:
        # A test server: nothing needs to survive a power cut, so no fsync.
        return (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bindir / program), *args]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        process = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120)
        if process.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({process.returncode}): {process.stderr.strip()}\n{log}")
        return process.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the server's Unix socket."""
        return self._run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p",
                         str(self.port), "-U", USER, "-d", database, "-At", "-c", sql)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (default name: db1, db2, ...); its SQLAlchemy URL for Optuna."""
        if name is None:
            self.databases += 1
            name = f"db{self.databases}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "--wait")
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
