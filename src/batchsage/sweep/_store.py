"""The sweep's state in an Optuna storage: which trials exist, who runs them, what they gave.

Every (B, lr, seed) is one Optuna trial. The protocol that makes "every trial exactly once" hold
across resumes, crashes and several processes:

- **Enqueue.** A key with no live trial (WAITING, RUNNING, COMPLETE or PRUNED) gets a WAITING
  trial when its turn comes. Killed, interrupted and failed trials are FAIL, so their keys are
  simply enqueued again; finished ones (COMPLETE/PRUNED) are never touched again.
- **Claim.** Of a key's live trials only the lowest-numbered one (its *canonical* trial) may run;
  a WAITING duplicate (two processes enqueuing the same key at once) is closed as FAIL. The
  WAITING → RUNNING transition is Optuna's ``set_trial_state_values``, which refuses a trial that
  is no longer WAITING. On PostgreSQL/MySQL that check holds a row lock; SQLite ignores
  ``SELECT … FOR UPDATE``, so on SQLite every state change is also serialised by an OS file lock
  next to the database file (one machine shares one SQLite file, so that lock is enough).
- **Stale trials.** A running trial records Optuna heartbeats; a RUNNING trial whose heartbeat
  is older than the grace period is failed (Optuna's ``fail_stale_trials``) and its key rerun. A
  trial whose process is known dead (same machine, pid gone) is failed at once, without waiting;
  one that never recorded its process (killed while claiming) once the grace period has passed.
  "Same machine" is the host name *and* the boot and pid namespace: two containers or cloned
  machines sharing a host name cannot see each other's processes, so they wait for the heartbeat.
- **Finish.** The result is written, then the state; if the trial was meanwhile declared stale
  (the process was only paused), the write is refused and the rerun's result is the one kept.
- **Server databases.** Optuna creates its tables on a database's first use without guarding
  against a second process doing the same at the same moment; on PostgreSQL that creation is
  serialised by an advisory lock (on SQLite by the file lock). A storage error during the sweep
  (server down, connection lost) ends it with one :class:`StorageError` line; the trial it was
  running is failed by its missing heartbeat and rerun by whichever worker looks next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import psutil
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import DuplicatedStudyError, StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage, fail_stale_trials
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from batchsage.errors import BatchsageError, ConfigError
from batchsage.sweep._grid import TrialKey

try:  # POSIX only; elsewhere SQLite claims rely on Optuna's own check (see the module docstring)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LIVE_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: Parameter ranges wide enough for any trial; the params are fixed values, the ranges only let
#: Optuna's dashboard and plots show them.
DISTRIBUTIONS = {
    "batch_size": IntDistribution(1, 2**40, log=True),
    "lr": FloatDistribution(1e-30, 1e30, log=True),
    "seed": IntDistribution(-(2**62), 2**62),
}
#: Identity of the task a study belongs to: resuming with another task or target would mix
#: incomparable times.
IDENTITY_KEYS = ("task", "target", "higher_is_better", "max_samples", "metric")
#: Seconds a worker waits for a PostgreSQL server to answer a new connection, unless the URL says
#: otherwise (``?connect_timeout=N``): a host that drops packets fails in this time, not minutes.
CONNECT_TIMEOUT_SECONDS = 10
#: The PostgreSQL advisory lock (a bigint, "batchsag") held while Optuna creates its tables.
_SCHEMA_LOCK_KEY = int.from_bytes(b"batchsag", "big")


class StorageError(BatchsageError):
    """The sweep storage cannot be opened or does not belong to this sweep."""


@dataclass(frozen=True)
class Worker:
    """The process running a trial, so a rerun on the same machine can tell it is dead."""

    host: str
    pid: int
    started: float
    #: Boot id and pid namespace ("" when unknown, as in trials stored before it was recorded).
    machine: str = ""

    @classmethod
    def current(cls) -> Worker:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), machine_id())

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started": self.started, "machine": self.machine}

    def is_dead(self) -> bool:
        """True only when this machine can see the process is gone (another machine: unknown)."""
        if self.host != socket.gethostname() or (self.machine and self.machine != machine_id()):
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) > 1e-3
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False


def machine_id() -> str:
    """What tells this machine's processes from those of another with the same host name (cloned
    machines, containers): the boot id and the pid namespace, where the system has them (Linux)."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return " ".join(parts)


@dataclass(frozen=True)
class Claim:
    trial_id: int
    number: int
    key: TrialKey


class ClaimOutcome(NamedTuple):
    """A claimed trial (None: nothing runnable now), and the state of the other keys."""

    claim: Claim | None
    running_elsewhere: int
    finished: int


def key_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get("key")


def result_of(trial: FrozenTrial) -> dict[str, Any] | None:
    return trial.user_attrs.get("result")


class SweepStore:
    """One study in an Optuna storage (``None``: in memory), with the claim protocol above."""

    def __init__(self, url: str | None, study_name: str, *, heartbeat_seconds: int = 5,
                 grace_seconds: int | None = None) -> None:
        self.url = url
        self.study_name = study_name
        self.worker = Worker.current()
        #: Tells this sweep call's trials from those of earlier calls (even in the same process).
        self.run_id = uuid.uuid4().hex
        self.grace_seconds = grace_seconds or 4 * heartbeat_seconds
        self.storage = open_storage(url, heartbeat_seconds, self.grace_seconds)
        try:
            with _quiet_optuna():
                self.study_id = self.storage.create_new_study([StudyDirection.MINIMIZE], study_name)
        except DuplicatedStudyError:
            self.study_id = self.storage.get_study_id_from_name(study_name)
        except Exception as exc:  # a database that opened but cannot be written, etc.
            raise StorageError(f"cannot use storage {display_url(url)}: {_one_line(exc)}") from exc
        self.study = optuna.Study(study_name=study_name, storage=self.storage)
        self._thread_lock = threading.Lock()
        self._lock_path = _sqlite_lock_path(url)

    # -- identity -------------------------------------------------------------------------------
    def check_identity(self, identity: dict[str, Any]) -> None:
        """Tag a new study with the task; refuse to resume a study made for another task."""
        attrs = self.storage.get_study_user_attrs(self.study_id)
        stored = attrs.get("batchsage")
        if stored is None:
            self.storage.set_study_user_attr(self.study_id, "batchsage", identity)
            return
        for key in IDENTITY_KEYS:
            if stored.get(key) != identity.get(key):
                raise ConfigError(
                    f"study {self.study_name!r} was made for {key}={stored.get(key)!r}, not "
                    f"{identity.get(key)!r}: use another --study name or storage"
                )

    # -- reading --------------------------------------------------------------------------------
    def trials(self) -> list[FrozenTrial]:
        # Through the Study: on an RDB it caches finished trials (they never change again) and
        # re-reads only unfinished and new ones, so a sweep's many reads stay cheap.
        return self.study.get_trials(deepcopy=False)

    def canonical(self, trials: Sequence[FrozenTrial] | None = None) -> dict[str, FrozenTrial]:
        """Each key's canonical trial: the lowest-numbered live one."""
        chosen: dict[str, FrozenTrial] = {}
        for trial in sorted(trials if trials is not None else self.trials(), key=lambda t: t.number):
            key = key_of(trial)
            if key is not None and trial.state in LIVE_STATES and key not in chosen:
                chosen[key] = trial
        return chosen

    def best_by_seed(self) -> dict[int, tuple[float, TrialKey]]:
        """Per seed, the best time-to-target any finished trial has reached so far, and its key."""
        best: dict[int, tuple[float, TrialKey]] = {}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            result = result_of(trial)
            if not result or not result.get("reached_target"):
                continue
            seed, seconds = int(result["seed"]), float(result["seconds_to_target"])
            if seed not in best or seconds < best[seed][0]:
                best[seed] = (seconds, TrialKey(int(result["batch_size"]), float(result["lr"]), seed))
        return best

    def best_seconds(self, seed: int) -> float | None:
        """The best time-to-target any finished trial of ``seed`` has reached so far."""
        entry = self.best_by_seed().get(seed)
        return None if entry is None else entry[0]

    # -- claiming -------------------------------------------------------------------------------
    def claim(self, keys: Sequence[TrialKey]) -> ClaimOutcome:
        """Claim the first runnable key of ``keys`` (in their order).

        A key without a live trial is enqueued just before it is claimed, not all at once: the
        storage holds no backlog of WAITING trials, and reads stay cheap because finished trials
        are cached. Also counts how many of ``keys`` are finished and how many run elsewhere.
        """
        with self._locked():
            trials = self.trials()
            if self._fail_stale(trials):
                trials = self.trials()
            canonical = self.canonical(trials)
            self._close_duplicates(trials, canonical)
            states = [canonical[key.id].state for key in keys if key.id in canonical]
            running = sum(state == TrialState.RUNNING for state in states)
            finished = sum(state in FINISHED_STATES for state in states)
            for key in keys:
                trial = canonical.get(key.id)
                if trial is None:
                    self._enqueue(key)
                    # Re-read: on a server database another process may have enqueued it too,
                    # and only the lowest-numbered of the two may run.
                    trial = self.canonical().get(key.id)
                if trial is not None and trial.state == TrialState.WAITING and self._start(trial):
                    return ClaimOutcome(Claim(trial._trial_id, trial.number, key), running, finished)
            return ClaimOutcome(None, running, finished)

    def _enqueue(self, key: TrialKey) -> None:
        template = create_trial(
            state=TrialState.WAITING,
            params={"batch_size": key.batch_size, "lr": key.lr, "seed": key.seed},
            distributions=DISTRIBUTIONS,
            user_attrs={"key": key.id},
        )
        self.storage.create_new_trial(self.study_id, template_trial=template)

    def _close_duplicates(self, trials: Sequence[FrozenTrial], canonical: dict[str, FrozenTrial]) -> None:
        for trial in trials:
            key = key_of(trial)
            if trial.state != TrialState.WAITING or key is None:
                continue
            first = canonical.get(key)
            if first is not None and first.number != trial.number:
                with contextlib.suppress(UpdateFinishedTrialError):
                    self.storage.set_trial_user_attr(trial._trial_id, "duplicate_of", first.number)
                    self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def _start(self, trial: FrozenTrial) -> bool:
        """WAITING → RUNNING, then a first heartbeat and the worker's identity.

        A process killed between those writes leaves a RUNNING trial that no later check could
        call stale (Optuna ignores trials that never beat): ``_fail_stale`` fails a RUNNING trial
        without a worker once the grace period has passed since it started.
        """
        if not self.storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
            return False
        try:
            if isinstance(self.storage, RDBStorage) and self.storage.get_heartbeat_interval():
                self.storage.record_heartbeat(trial._trial_id)
            self.storage.set_trial_user_attr(trial._trial_id, "worker", self.worker.as_dict())
        except BaseException:  # Ctrl-C in between: give the trial back at once
            with contextlib.suppress(Exception):
                self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            raise
        return True

    def _fail_stale(self, trials: Sequence[FrozenTrial]) -> bool:
        """Fail trials left RUNNING by a dead process: heartbeats, or a pid gone on this host.

        Returns whether there were RUNNING trials to look at (the caller then re-reads)."""
        running = [trial for trial in trials if trial.state == TrialState.RUNNING]
        if not running:
            return False
        with _quiet_optuna():
            fail_stale_trials(self.study)
        now = datetime.now()
        for trial in running:
            worker = trial.user_attrs.get("worker")
            if worker is not None:
                dead = Worker(**worker).is_dead()
            else:  # killed while claiming (see _start)
                started = trial.datetime_start or now
                dead = (now - started).total_seconds() > self.grace_seconds
            if dead:
                with contextlib.suppress(UpdateFinishedTrialError):
                    self.storage.set_trial_user_attr(trial._trial_id, "fail_reason", "process died")
                    self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return True

    # -- finishing ------------------------------------------------------------------------------
    def finish(self, claim: Claim, result: dict[str, Any], state: TrialState, value: float | None) -> bool:
        """Store a trial's result; False when the trial had meanwhile been failed as stale."""
        with self._locked():
            try:
                self.storage.set_trial_user_attr(claim.trial_id, "result", result)
                values = [value] if state == TrialState.COMPLETE else None
                self.storage.set_trial_state_values(claim.trial_id, state, values)
            except UpdateFinishedTrialError:
                return False
        return True

    def abandon(self, claim: Claim, reason: str) -> None:
        """Mark a trial FAIL (interrupted or crashed) so that a rerun runs its key again."""
        with self._locked(), contextlib.suppress(UpdateFinishedTrialError):
            self.storage.set_trial_user_attr(claim.trial_id, "fail_reason", reason[:500])
            self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)

    @contextlib.contextmanager
    def heartbeat(self, claim: Claim) -> Iterator[None]:
        """Record Optuna heartbeats for ``claim`` while the block runs (RDB storages only)."""
        interval = self.storage.get_heartbeat_interval() if isinstance(self.storage, RDBStorage) else None
        if not interval:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(claim.trial_id, interval, stop), daemon=True,
                                  name=f"batchsage-heartbeat-{claim.number}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _beat(self, trial_id: int, interval: float, stop: threading.Event) -> None:
        assert isinstance(self.storage, RDBStorage)
        while True:
            # A busy database must not kill the thread: the next beat retries.
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, _file_lock(self._lock_path):
            yield


def open_storage(url: str | None, heartbeat_seconds: int, grace_seconds: int) -> BaseStorage:
    """An Optuna storage for ``url`` (in memory for None); any failure is one StorageError line."""
    if url is None:
        return InMemoryStorage()
    if not isinstance(url, str) or "://" not in url:
        raise StorageError(f"cannot open storage {url!r}: expected a URL such as sqlite:///sweep.db "
                           "or postgresql+psycopg://user:password@host/database")
    shown = display_url(url)
    try:
        from sqlalchemy.engine import make_url

        backend = make_url(url).get_backend_name()
    except Exception as exc:
        raise StorageError(f"cannot open storage {shown}: not a database URL "
                           f"({_one_line(exc, url)})") from None
    engine_kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        # Several processes write one file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
        path = _sqlite_path(url)
        if path is not None and not path.parent.is_dir():
            raise StorageError(f"cannot open storage {url}: directory {path.parent} does not exist")
    elif backend == "postgresql":
        if "connect_timeout" not in make_url(url).query:
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        # Connections sit idle while a trial trains; check each before use (a restarted server,
        # a firewall dropping idle connections) instead of failing the sweep on a dead one.
        engine_kwargs["pool_pre_ping"] = True
    try:
        # Creating the tables of a new database is not safe against a second process doing the
        # same at the same moment ("table studies already exists", a duplicate key in pg_type).
        with _schema_lock(url, backend, engine_kwargs), _quiet_optuna():
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                                 grace_period=grace_seconds)
            if _sqlite_path(url) is not None:
                _use_write_ahead_log(storage)
    except ImportError as exc:  # the dialect's driver (Optuna's message does not name it)
        cause = exc.__cause__ or exc
        hint = ""
        if backend == "postgresql":
            hint = (" (pip install 'batchsage[postgres]')" if make_url(url).get_driver_name() == "psycopg"
                    else " (batchsage[postgres] installs psycopg 3: use postgresql+psycopg://…)")
        raise StorageError(f"cannot open storage {shown}: no database driver: "
                           f"{_one_line(cause, url)}{hint}") from exc
    except Exception as exc:  # unknown dialect, unreachable server, bad password, not a database
        raise StorageError(f"cannot open storage {shown}: {_one_line(exc, url)}") from exc
    return storage


@contextlib.contextmanager
def storage_failures(url: str | None) -> Iterator[None]:
    """Turn a database error in the middle of a sweep (server down, connection lost) into one
    :class:`StorageError` line."""
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as exc:
        raise StorageError(f"storage {display_url(url)} failed during the sweep: "
                           f"{_one_line(exc, url)}") from exc


@contextlib.contextmanager
def _schema_lock(url: str, backend: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Hold a lock that serialises Optuna's table creation: the file lock next to a SQLite
    database, a session advisory lock on PostgreSQL (released when its connection closes, so a
    worker killed while holding it does not block the others)."""
    if backend != "postgresql":
        with _file_lock(_sqlite_lock_path(url)):
            yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                      connect_args=engine_kwargs.get("connect_args", {}))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                       {"key": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _use_write_ahead_log(storage: RDBStorage) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``: one fsync per checkpoint instead of per
    commit (a sweep commits a dozen times per trial; at ~15 ms per fsync on a busy disk that was
    most of a short trial's overhead), and readers no longer block the writer. A commit survives
    the process being killed; only a power cut may lose the last ones.
    """
    import sqlalchemy

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # pooled connections from Optuna's setup reconnect with the pragmas


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive OS lock on ``path`` (no-op without a path or on systems without flock)."""
    if path is None or fcntl is None:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's info logs ("A new study created…") and experimental-API warnings here only."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        logger.setLevel(level)


def display_url(url: str | None) -> str:
    """The URL without its password, for messages and reports."""
    if url is None:
        return "in-memory"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parsable: mask whatever stands between "user:" and the last "@"
        return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def _sqlite_path(url: str | None) -> Path | None:
    if url is None or not url.startswith("sqlite"):
        return None
    try:
        from sqlalchemy.engine import make_url

        database = make_url(url).database
    except Exception:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_lock_path(url: str | None) -> Path | None:
    path = _sqlite_path(url)
    return None if path is None else path.with_name(path.name + ".lock")


def _one_line(exc: BaseException, url: str | None = None) -> str:
    """The first line of an exception's message (SQLAlchemy's run over several), without the
    URL's password should the message quote the URL."""
    cause: BaseException = exc
    # Optuna and SQLAlchemy wrap the driver's error; its message names the real problem (Optuna's
    # StorageInternalError says "…typically happens due to invalid data", whatever happened).
    while True:
        if getattr(cause, "orig", None) is not None:
            cause = cause.orig  # type: ignore[attr-defined]
        elif isinstance(cause, StorageInternalError) and cause.__cause__ is not None:
            cause = cause.__cause__
        else:
            break
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if url:
        text = text.replace(url, display_url(url))
        password = _password(url)
        if password:
            text = text.replace(f":{password}@", ":***@")
    return text[:300]


def _password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password  # type: ignore[return-value]
    except Exception:
        match = re.search(r"://[^:/@]*:([^/]*)@", url)
        return match.group(1) if match else None
