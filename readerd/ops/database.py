"""The databases under the plugin store: SQLAlchemy Core on SQLite or PostgreSQL, with retries.

Two databases, one set of rules
-------------------------------
``store.local`` is always a SQLite file in the state directory: it works with the network down (check-in
outboxes, caches). ``store.shared`` is PostgreSQL when ``[store] shared_url`` is set, so that the kiosks of
a ward share one points ledger or loan list, and otherwise the very same SQLite file (one kiosk on its
own). Plugin code is the same either way: it names the role, never the engine.

Every transaction goes through :meth:`Database.transaction` (or, for one attempt, :meth:`Database.begin`):

* **SQLite**: WAL, ``busy_timeout``, ``synchronous=FULL`` (a points ledger must survive a power cut),
  foreign keys on. Write transactions start with ``BEGIN IMMEDIATE``, so a writer takes the write lock
  before it reads and two writers can never both read a balance and then both spend it; a writer that
  cannot get the lock within ``busy_timeout`` gets "database is locked", which is retried. pysqlite
  starts transactions itself (a deferred ``BEGIN`` before the first write); SQLAlchemy's documented
  recipe (``isolation_level = None`` on connect, our own ``BEGIN`` in the ``begin`` event) takes that
  over. Read-only transactions use a deferred ``BEGIN`` and never block a writer (WAL).
* **PostgreSQL**: ``SERIALIZABLE`` for every transaction, ``lock_timeout`` = ``busy_timeout``,
  ``pool_pre_ping`` (a restarted server costs no failed request). Serialization failures (SQLSTATE
  40001), deadlocks (40P01) and lock timeouts (55P03) are retried. ``statement_timeout``,
  ``tcp_user_timeout`` and keepalives bound a slow server or a dead link (:func:`postgres_connect_args`):
  a cancelled statement (57014) or a dropped connection is unavailable, like a server that is down.
* Retries are bounded (``retries``) with exponential backoff and full jitter; when they run out:
  :class:`~readerd.errors.StoreBusyError`. **The function passed to** :meth:`Database.transaction`
  **may therefore run more than once**: it must have no effect outside its connection (no publishing,
  no counters, no card I/O) and must not swallow database errors. Exceptions of its own are not retried:
  they roll back and propagate unchanged.
* A database that cannot be reached, opened or written (server down, connection lost, unwritable or
  corrupt file, disk full) is :class:`~readerd.errors.StoreUnavailableError` with the role and the
  database named (passwords redacted); no driver exception escapes. Such failures are *not* retried: a
  connection lost during COMMIT leaves the outcome unknown, and only the plugin's idempotency keys can
  tell. Constraint violations and SQL errors are the plugin's own: SQLAlchemy's ``IntegrityError`` etc.
"""

from __future__ import annotations

import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine, make_url

from readerd.config import StoreConfig
from readerd.errors import StoreBusyError, StoreUnavailableError
from readerd.ops.stall import watch_dialect

log = structlog.get_logger("readerd.store")

T = TypeVar("T")
Role = Literal["local", "shared"]

LOCAL_FILE: Final = "store.db"
PG_MAX_IDENTIFIER: Final = 63

_READONLY: Final = "readerd_readonly"  # execution option read by the SQLite "begin" listener
# PostgreSQL: serialization_failure, deadlock_detected, lock_not_available (lock_timeout).
_PG_RETRY: Final = frozenset({"40001", "40P01", "55P03"})
# ... connection exception, insufficient resources, operator intervention (shutdown, cancel), system error.
_PG_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53", "57", "58"})
# SQLite primary result codes: BUSY, LOCKED (retried) and what makes a file unusable.
_SQLITE_RETRY: Final = frozenset({5, 6})
_SQLITE_UNAVAILABLE: Final = frozenset({3, 8, 10, 11, 13, 14, 15, 22, 23, 26})

_RETRY: Final = "retry"
_UNAVAILABLE: Final = "unavailable"
_BUSY: Final = "busy"


def _classify(error: BaseException, *, readonly: bool = False) -> str | None:
    """``_RETRY``, ``_UNAVAILABLE``, ``_BUSY``, or None for an error that is not the store's business.

    ``readonly``: SQLITE_READONLY in a read-only transaction is the caller writing (``query_only``), not
    an unwritable file."""
    if isinstance(error, sa_exc.TimeoutError):  # no free connection in the pool within pool_timeout
        return _BUSY
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _PG_RETRY:
            return _RETRY
        if sqlstate[:2] in _PG_UNAVAILABLE_CLASSES:
            return _UNAVAILABLE
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(orig, sqlite3.Error) and isinstance(code, int):
        if code & 0xFF in _SQLITE_RETRY:
            return _RETRY
        if readonly and code & 0xFF == sqlite3.SQLITE_READONLY:
            return None
        if code & 0xFF in _SQLITE_UNAVAILABLE:
            return _UNAVAILABLE
        return None
    if error.connection_invalidated:
        return _UNAVAILABLE
    if sqlstate is None and isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return _UNAVAILABLE  # no server answer at all: refused, unreachable, closed mid-way
    return None


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class StoreStats:
    """Counters for ``readerctl status`` and tests (monotonic since the database was opened)."""

    transactions: int = 0  # committed
    retries: int = 0  # attempts repeated after a retryable failure
    busy: int = 0  # transactions given up as StoreBusyError
    unavailable: int = 0  # transactions failed with StoreUnavailableError


class Database:
    """One database with readerd's transaction rules (see the module docstring).

    Plugins use it through :class:`PluginDatabase`; the daemon's own code may use it directly.
    """

    def __init__(self, engine: Engine, role: Role, config: StoreConfig) -> None:
        self.engine = engine
        self.role: Role = role
        self.config = config
        self.dialect: str = engine.dialect.name
        self.stats = StoreStats()
        self._stats_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep  # tests replace it to act during a backoff

    @property
    def where(self) -> str:
        """The database for messages: a SQLite path, or the PostgreSQL URL without its password."""
        url = self.engine.url
        if self.dialect == "sqlite":
            return str(url.database)
        return url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"<Database {self.role} {self.where}>"

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    # -- transactions -------------------------------------------------------------------------------
    @contextmanager
    def _connection(self, *, readonly: bool, isolation: str | None = None) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            options: dict[str, object] = {_READONLY: readonly}
            if self.dialect == "postgresql" and readonly:
                options["postgresql_readonly"] = True
            if isolation is not None:
                options["isolation_level"] = isolation
            conn.execution_options(**options)
            yield conn

    def transaction(
        self, fn: Callable[[Connection], T], *, readonly: bool = False, isolation: str | None = None
    ) -> T:
        """Run ``fn(conn)`` in one transaction and commit; retried on serialization failures, deadlocks
        and lock timeouts, so **fn may run more than once** (module docstring). Returns fn's result.

        ``readonly``: no writes (SQLite: a deferred BEGIN that never waits for the writer, and
        ``query_only``; PostgreSQL: ``READ ONLY``); a write in it raises SQLAlchemy's error.

        Raises :class:`StoreBusyError` when the retries run out, :class:`StoreUnavailableError` when
        the database cannot be used; fn's own exceptions roll back and propagate unchanged.

        ``isolation``: another level for this transaction; ``READ COMMITTED`` where fn creates a table
        after an advisory lock, so that it sees the table the lock's previous holder committed (a
        SERIALIZABLE snapshot taken at the lock would not).
        """
        return self._transaction(fn, readonly=readonly, isolation=isolation)

    def _transaction(self, fn: Callable[[Connection], T], *, readonly: bool, isolation: str | None) -> T:
        attempt = 1
        while True:
            try:
                with self._connection(readonly=readonly, isolation=isolation) as conn, conn.begin():
                    result = fn(conn)
            except Exception as e:
                kind = _classify(e, readonly=readonly)
                if kind is None:
                    raise
                if kind == _RETRY and attempt <= self.config.retries:
                    delay = self._backoff(attempt)
                    self._count("retries")
                    log.info(
                        "store transaction retried",
                        role=self.role,
                        attempt=attempt,
                        delay=round(delay, 4),
                        reason=_first_line(e),
                    )
                    self._sleep(delay)
                    attempt += 1
                    continue
                raise self._error(kind, e, attempt) from e
            self._count("transactions")
            return result

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.retry_backoff_max, self.config.retry_backoff * 2.0 ** (attempt - 1))
        return ceiling * random.random()  # noqa: S311 - jitter, not a secret

    def _error(
        self, kind: str, error: BaseException, attempts: int
    ) -> StoreBusyError | StoreUnavailableError:
        reason = _first_line(error)
        if kind == _UNAVAILABLE:
            self._count("unavailable")
            log.warning("store unavailable", role=self.role, database=self.where, error=reason)
            return StoreUnavailableError(f"{self.role} store ({self.where}) unavailable: {reason}")
        self._count("busy")
        log.warning("store busy", role=self.role, attempts=attempts, error=reason)
        return StoreBusyError(f"{self.role} store busy: gave up after {attempts} attempt(s): {reason}")

    @contextmanager
    def begin(self, *, readonly: bool = False) -> Iterator[Connection]:
        """``with db.begin() as conn:`` one transaction, committed when the block ends, **never retried**
        (a ``with`` block cannot run twice): a serialization failure or lock timeout is
        :class:`StoreBusyError` at once. Prefer :meth:`transaction` for anything that writes under
        contention."""
        try:
            with self._connection(readonly=readonly) as conn, conn.begin():
                yield conn
        except Exception as e:
            kind = _classify(e, readonly=readonly)
            if kind is None:
                raise
            raise self._error(_BUSY if kind == _RETRY else kind, e, 1) from e
        self._count("transactions")

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` unless the database answers (``readerctl doctor``)."""
        self.transaction(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one(), readonly=True)

    def insert_or_ignore(self, table: sa.Table) -> sa.Insert:
        """``INSERT … ON CONFLICT DO NOTHING`` for this dialect: the idempotent write of docs/design.md D2
        (a row keyed by an event id or idempotency key is written once however often it arrives)."""
        if self.dialect == "postgresql":
            return pg_dialect.insert(table).on_conflict_do_nothing()
        return sqlite_dialect.insert(table).on_conflict_do_nothing()

    def close(self) -> None:
        self.engine.dispose()


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # SQLAlchemy's pysqlite recipe: no transaction handling by the driver, our own BEGIN below.
    dbapi_connection.isolation_level = None
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        dbapi_connection.execute(f"PRAGMA {pragma}").close()


def _on_sqlite_begin(conn: Connection) -> None:
    # Read-only: a deferred BEGIN (no write lock; WAL readers never wait) and query_only, so a write in a
    # read-only transaction fails on SQLite as it does on PostgreSQL instead of passing unnoticed.
    readonly = bool(conn.get_execution_options().get(_READONLY, False))
    conn.exec_driver_sql(f"PRAGMA query_only = {'ON' if readonly else 'OFF'}")
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def sqlite_database(path: Path, role: Role, config: StoreConfig) -> Database:
    """A SQLite database at ``path`` (created, mode 0600, if missing; its directory must exist)."""
    path = Path(path)
    try:
        if not path.exists():
            path.touch(mode=0o600)
    except OSError as e:
        raise StoreUnavailableError(f"{role} store ({path}) unavailable: {e}") from e
    engine = sa.create_engine(
        URL.create("sqlite+pysqlite", database=str(path)),
        connect_args={"timeout": config.busy_timeout},
        pool_size=config.pool_size,
        max_overflow=config.pool_size,
    )
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return Database(engine, role, config)


def postgres_database(url: str, config: StoreConfig) -> Database:
    """The shared PostgreSQL database (no connection is made until the first transaction)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(
        parsed,
        isolation_level="SERIALIZABLE",
        pool_pre_ping=True,
        pool_size=config.pool_size,
        max_overflow=config.pool_size,
        connect_args=postgres_connect_args(config),
    )
    watch_dialect(engine.dialect, config.statement_timeout)  # a server that never answers: cut (stall.py)
    return Database(engine, "shared", config)


def postgres_connect_args(config: StoreConfig) -> dict[str, object]:
    """libpq parameters that bound every PostgreSQL fault by ``statement_timeout`` (which the config
    keeps below ``[plugins] hook_timeout``), so that a hook gets :class:`StoreUnavailableError` instead
    of outliving its timeout and quarantining its plugin:

    * ``statement_timeout``: a statement the server runs longer is cancelled (SQLSTATE 57014);
    * ``lock_timeout`` = ``busy_timeout``, but at most half of ``statement_timeout``, so a lock wait is
      retried (55P03) rather than cancelled with its statement;
    * ``tcp_user_timeout`` (ms): data sent and not acknowledged for that long (a link that silently drops
      packets) closes the connection; keepalives (whole seconds, at least 1) do the same for a connection
      waiting for an answer that never comes.
    """
    statement_ms = max(1, round(config.statement_timeout * 1000))
    lock_ms = max(1, min(round(config.busy_timeout * 1000), statement_ms // 2))
    probe = max(1, math.floor(config.statement_timeout / 3))
    return {
        # libpq: whole seconds, and 2 is its minimum
        "connect_timeout": max(2, math.ceil(config.connect_timeout)),
        "application_name": "readerd",
        "options": f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}",
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 2,
        "tcp_user_timeout": statement_ms,
    }


#: The isolation of a transaction that creates a table under an advisory lock (see ``transaction``).
_SCHEMA_ISOLATION: Final = {"postgresql": "READ COMMITTED"}
#: pg_advisory_xact_lock key while the deployment table is made: b"deploy\0\0" as an int64.
_DEPLOYMENT_LOCK_KEY: Final = int.from_bytes(b"deploy\0\0", "big")
#: Facts of the deployment every kiosk of a ward must agree on (the pseudonym key's fingerprint).
deployment_table = sa.Table(
    "readerd_deployment",
    sa.MetaData(),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
)


def pin_deployment_key(database: Database, fingerprint: str) -> str:
    """Record the deployment key's fingerprint in the shared store the first time a kiosk uses it, and
    give back the one recorded: a kiosk whose key differs must not write into the ward's data (its
    pseudonyms would be another deployment's). Raises :class:`StoreUnavailableError` when the shared
    store cannot be asked (a kiosk starts offline; the caller decides)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")

    def pin(conn: Connection) -> str:
        if database.dialect == "postgresql":  # kiosks starting together: one creates the table
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_DEPLOYMENT_LOCK_KEY)))
        deployment_table.create(conn, checkfirst=True)
        conn.execute(
            database.insert_or_ignore(deployment_table).values(
                name="pseudonym_key_fingerprint", value=fingerprint, recorded_at=now
            )
        )
        row = conn.execute(
            sa.select(deployment_table.c.value).where(deployment_table.c.name == "pseudonym_key_fingerprint")
        ).one()
        return str(row.value)

    return database.transaction(pin, isolation=_SCHEMA_ISOLATION.get(database.dialect))
