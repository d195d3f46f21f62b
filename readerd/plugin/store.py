"""The store plugins get (docs/design.md D16): SQLAlchemy Core on SQLite or PostgreSQL.

The databases themselves (SQLite or PostgreSQL, retries, errors): :mod:`readerd.ops.database`.

Schemas: a small equivalent of Alembic
--------------------------------------
Each plugin owns its tables in each database, named ``<plugin>__<table>`` (shared) and
``<plugin>__local__<table>`` (local), so two plugins never collide and a plugin's local and shared tables
stay apart even when both roles are the same SQLite file. A plugin declares its schema as an ordered list
of migration functions; version N is the N-th function. :meth:`PluginDatabase.migrate` records applied
versions per (plugin, role) in ``readerd_migrations``, applies the missing ones in one transaction (all
or none), and refuses (:class:`~readerd.errors.StoreSchemaError`) when the database is at a version the
code does not know, i.e. a newer readerd or plugin already migrated it. Concurrent starts (two kiosks on
one PostgreSQL) are serialised by a transaction-scoped advisory lock, on SQLite by ``BEGIN IMMEDIATE``.

Why not Alembic: its value is autogeneration and branching for one application's schema, driven by a
command line and an ``alembic.ini``/``env.py`` per project. Here each of many third-party plugins owns a
few tables, migrations run inside the daemon at plugin start on two backends and two roles, and their
history must be recorded per plugin, with table prefixing, in a database the plugin does not own. That is
about 150 lines on top of SQLAlchemy Core (the same DDL constructs Alembic's ``op`` emits), with no
second dependency and no per-plugin migration environment. Migrations are append-only: never edit or
reorder a released one (the recorded function names are compared and a mismatch is logged).

Rolling upgrades: expand first, contract later
----------------------------------------------
A ward upgrades its kiosks one by one, so for a while kiosks of the previous and of the new version share
one PostgreSQL. Each migration is therefore of one of two kinds, recorded in ``readerd_migrations.kind``:

- **expand** (the default): additive and backward compatible (a new table, a nullable column or one with a
  default, an index). Older code keeps working on the expanded schema.
- **contract** (marked with :func:`contract`): removes or tightens what older code relies on (a dropped
  column or table, NOT NULL on an old column, a rename).

An ordinary start (:meth:`PluginDatabase.migrate` in ``readerd run``) applies pending expand migrations
only, in order, and stops before the first contract one: the contract one, and every migration listed
after it, waits for the operator's ``readerd migrate --contract`` (a :class:`Store` opened with
``contract=True``), run once every kiosk runs the new code. Keeping one linear list (no reordering of
later expand steps around a pending contract step) keeps versions a plain count. Code that knows fewer
versions than the database has runs when every version beyond its own is an expand migration, and is
refused (:class:`~readerd.errors.StoreSchemaError`) once a contract migration beyond its knowledge was
applied. The same rule holds for the local SQLite and for ``shared`` without ``shared_url``: no other
kiosk shares those, but holding contract steps back there too keeps rolling a kiosk back to the previous
version possible until the operator decides otherwise. Rows recorded before the ``kind`` column existed
count as expand (the column is added in place, with that default, by the first migration run).

Names are checked: a plugin name or table name of lower-case words joined by single underscores, so the
double underscore of the prefix is unambiguous; a full name fits PostgreSQL's 63-byte identifiers.
Prefixing prevents accidents, not malice: plugins run in readerd's process and share its connections.

Business time: :meth:`Store.now` gives the ward's clock (``readerd.plugin.business_time``, Asia/Tokyo) through
an injectable clock, so plugin tests can fix the instant.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn

from readerd.config import StoreConfig
from readerd.errors import StoreBusyError, StoreSchemaError, StoreUnavailableError
from readerd.ops.database import (
    LOCAL_FILE,
    PG_MAX_IDENTIFIER,
    Database,
    Role,
    T,
    pin_deployment_key,
    postgres_database,
    sqlite_database,
)
from readerd.plugin import business_time
from readerd.plugin.cursor_table import CursorTable

log = structlog.get_logger("readerd.store")

MIGRATIONS_TABLE: Final = "readerd_migrations"
PLUGIN_NAME_MAX: Final = 32
#: A schema name's longest (``migrate(..., schema=)``): lower-case words, like a table name.
SCHEMA_NAME_MAX: Final = 32
# pg_advisory_xact_lock key for migrations: b"readerd\0" as a big-endian signed 64-bit number.
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"readerd\0", "big")
#: How many migrate calls a Store remembers for ``readerd migrate``'s report.
MIGRATION_RUNS_KEPT: Final = 1000

_NAME: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")

_metadata = sa.MetaData()
_migrations = sa.Table(
    MIGRATIONS_TABLE,
    _metadata,
    sa.Column("plugin", sa.String(PLUGIN_NAME_MAX), primary_key=True),
    sa.Column("role", sa.String(8), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.String(32), nullable=False),
    # Added in place to existing tables (_upgrade_bookkeeping): NOT NULL with a default works on both.
    sa.Column("kind", sa.String(8), nullable=False, server_default="expand"),
    # Which of the plugin's migration lists in this role ("": the default one); added in place, and made
    # part of the primary key, by _upgrade_bookkeeping (rows recorded before it are the default schema).
    sa.Column("schema_name", sa.String(SCHEMA_NAME_MAX), primary_key=True, server_default=""),
)

MigrationKind = Literal["expand", "contract"]
#: The attribute :func:`contract` sets on a migration function; the migrator reads it.
KIND_ATTRIBUTE: Final = "readerd_migration_kind"


def check_name(kind: str, name: str, *, max_length: int = PG_MAX_IDENTIFIER) -> str:
    """``name`` if it is lower-case words joined by single underscores and at most ``max_length`` long,
    else :class:`StoreSchemaError` (the prefix's double underscore must stay unambiguous)."""
    if not _NAME.fullmatch(name) or len(name) > max_length:
        raise StoreSchemaError(
            f"{kind} name {name!r}: lower-case letters and digits in words joined by single underscores, "
            f"at most {max_length} characters"
        )
    return name


class MigrationContext:
    """What a migration function gets: the open transaction and the plugin's naming.

    Write DDL through these helpers (or :attr:`connection` for data migrations): they add the plugin's
    prefix, so ``create_table("accounts", …)`` makes ``points__accounts``. Everything runs in the one
    migration transaction (PostgreSQL and SQLite both have transactional DDL; avoid statements that cannot
    run in a transaction, such as ``CREATE INDEX CONCURRENTLY``).
    """

    def __init__(self, connection: Connection, target: PluginDatabase) -> None:
        self.connection = connection
        self.dialect: str = connection.dialect.name
        self._target = target
        self.metadata = sa.MetaData()  # tables made in this run, so ForeignKey(accounts.c.id) works

    def table_name(self, name: str) -> str:
        return self._target.table_name(name)

    def create_table(self, name: str, *items: sa.schema.SchemaItem) -> sa.Table:
        table = sa.Table(self.table_name(name), self.metadata, *items)
        table.create(self.connection)
        return table

    def drop_table(self, name: str) -> None:
        sa.Table(self.table_name(name), sa.MetaData()).drop(self.connection)

    def add_column(self, table: str, column: sa.Column[Any]) -> None:
        """``ALTER TABLE … ADD COLUMN`` (SQLite: no primary key or unique column, a constant default)."""
        sa.Table(self.table_name(table), sa.MetaData(), column)  # binds the column for compilation
        preparer = self.connection.dialect.identifier_preparer
        ddl = CreateColumn(column).compile(dialect=self.connection.dialect)
        self.connection.exec_driver_sql(
            f"ALTER TABLE {preparer.quote(self.table_name(table))} ADD COLUMN {ddl}"
        )

    def create_index(self, name: str, table: str, *columns: str, unique: bool = False) -> None:
        """An index named ``<full table name>__<name>`` (index names share one namespace per database)."""
        full = self.table_name(table)
        index_name = f"{full}__{check_name('index', name)}"
        _check_length(index_name)
        bound = sa.Table(full, sa.MetaData(), *(sa.Column(c) for c in columns))
        sa.Index(index_name, *(bound.c[c] for c in columns), unique=unique).create(self.connection)

    def execute(self, statement: str | sa.Executable, parameters: dict[str, object] | None = None) -> None:
        """Run SQL text (use :meth:`table_name` for names) or a SQLAlchemy statement."""
        if isinstance(statement, str):
            self.connection.execute(sa.text(statement), parameters or {})
        else:
            self.connection.execute(statement, parameters or {})


Migration = Callable[[MigrationContext], None]
"""One schema version: a function that changes the plugin's tables through a MigrationContext."""

M = TypeVar("M", bound=Migration)


def contract(step: M) -> M:
    """Mark a migration as **contract**: it removes or tightens what older code relies on (drop a column
    or table, NOT NULL on an old column, a rename). A kiosk's start never applies it (nor anything listed
    after it); the operator does, with ``readerd migrate --contract``, once every kiosk runs the code
    that no longer needs what it removes. Unmarked migrations are expand migrations.

    Use it as a decorator on the function (it sets :data:`KIND_ATTRIBUTE`, so the function must accept
    attributes: a plain function or a ``functools.partial``)."""
    setattr(step, KIND_ATTRIBUTE, "contract")
    return step


def migration_kind(step: Migration) -> MigrationKind:
    """``contract`` for a migration marked with :func:`contract`, else ``expand``."""
    return "contract" if getattr(step, KIND_ATTRIBUTE, "expand") == "contract" else "expand"


@dataclass(frozen=True)
class Schema:
    """One of a plugin's migration lists, as ``readerd_schemas`` declares it: the ``role`` it migrates
    (``local`` or ``shared``), the list it passes to ``migrate`` and the schema ``name`` it passes there
    (``""``: the default schema). ``readerctl doctor`` compares it with what ``readerd_migrations``
    records."""

    role: Role
    migrations: Sequence[Migration]
    name: str = ""

    def names(self) -> list[str]:
        """The names ``migrate`` records for each version, in order."""
        return [_migration_name(step) for step in self.migrations]

    def kinds(self) -> list[MigrationKind]:
        return [migration_kind(step) for step in self.migrations]


@dataclass(frozen=True)
class MigrationRun:
    """What one :meth:`PluginDatabase.migrate` call found and did (``readerd migrate`` reports these).

    ``before``/``after``: the database's version; ``known``: the code's; ``applied``: the versions this
    call applied; ``held_back``: the code's versions left for ``readerd migrate --contract`` (the first
    pending contract migration and everything after it); ``ahead``: versions the database has beyond the
    code's, all expand (a newer kiosk migrated: fine during a rolling upgrade)."""

    plugin: str
    role: Role
    database: str
    before: int
    after: int
    known: int
    applied: tuple[int, ...]
    held_back: tuple[tuple[int, str, MigrationKind], ...]
    ahead: int
    schema: str = ""  # the schema name ("": the default schema)

    def as_json(self) -> dict[str, object]:
        return {
            "plugin": self.plugin,
            "role": self.role,
            **({"schema": self.schema} if self.schema else {}),
            "database": self.database,
            "before": self.before,
            "after": self.after,
            "known": self.known,
            "applied": list(self.applied),
            "held_back": [{"version": v, "name": n, "kind": k} for v, n, k in self.held_back],
            "ahead": self.ahead,
        }


@dataclass(frozen=True)
class RecordedSchema:
    """One (plugin, role) as ``readerd_migrations`` records it: its version and its contract versions."""

    plugin: str
    role: Role
    database: str
    version: int
    contract_versions: tuple[int, ...]
    schema: str = ""  # the schema name ("": the default schema)

    def as_json(self) -> dict[str, object]:
        return {
            "plugin": self.plugin,
            "role": self.role,
            **({"schema": self.schema} if self.schema else {}),
            "database": self.database,
            "version": self.version,
            "contract_versions": list(self.contract_versions),
        }


def _columns(conn: Connection) -> set[str]:
    return {str(column["name"]) for column in sa.inspect(conn).get_columns(MIGRATIONS_TABLE)}


def _has_kind_column(conn: Connection) -> bool:
    return "kind" in _columns(conn)


@dataclass(frozen=True)
class RecordedMigration:
    """One row of ``readerd_migrations`` (``schema`` ``""`` for rows recorded before schema names)."""

    plugin: str
    role: str
    schema: str
    version: int
    name: str
    kind: str


def recorded_migrations(conn: Connection) -> list[RecordedMigration]:
    """Every row ``readerd_migrations`` holds in ``conn``'s database, whatever release made the table
    (no ``kind``: expand; no ``schema_name``: the default schema); none when there is no table. Reads only:
    ``readerctl doctor`` calls it on a read-only connection."""
    if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
        return []
    columns = _columns(conn)
    kind = _migrations.c.kind if "kind" in columns else sa.literal("expand")
    schema = _migrations.c.schema_name if "schema_name" in columns else sa.literal("")
    rows = conn.execute(
        sa.select(
            _migrations.c.plugin,
            _migrations.c.role,
            schema.label("schema_name"),
            _migrations.c.version,
            _migrations.c.name,
            kind.label("kind"),
        ).order_by(_migrations.c.plugin, _migrations.c.role, "schema_name", _migrations.c.version)
    ).all()
    return [
        RecordedMigration(
            str(r.plugin), str(r.role), str(r.schema_name), int(r.version), str(r.name), str(r.kind)
        )
        for r in rows
    ]


def _recorded(conn: Connection, *, role: Role, where: str) -> list[RecordedSchema]:
    """The (plugin, ``role``, schema) schemas ``readerd_migrations`` records in ``conn``'s database."""
    versions: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for row in recorded_migrations(conn):
        if row.role == role:
            versions.setdefault((row.plugin, row.schema), []).append((row.version, row.kind))
    return [
        RecordedSchema(
            plugin=plugin,
            role=role,
            database=where,
            version=max(v for v, _ in applied),
            contract_versions=tuple(v for v, k in applied if k == "contract"),
            schema=schema,
        )
        for (plugin, schema), applied in sorted(versions.items())
    ]


def _upgrade_bookkeeping(conn: Connection) -> None:
    """Add ``kind`` to a ``readerd_migrations`` made before it existed (idempotent; SQLite and PostgreSQL
    both take ``ADD COLUMN … DEFAULT 'expand' NOT NULL``). Called under the migration lock, in the
    migration transaction, so two kiosks never both add it; code of the previous release keeps working
    on the table, its rows getting the default."""
    columns = _columns(conn)
    table = conn.dialect.identifier_preparer.quote(MIGRATIONS_TABLE)
    if "kind" not in columns:
        ddl = CreateColumn(_migrations.c.kind).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")
        log.info("migrations table upgraded", table=MIGRATIONS_TABLE, column="kind")
    if "schema_name" not in columns:
        _add_schema_name(conn, table)
        log.info("migrations table upgraded", table=MIGRATIONS_TABLE, column="schema_name")


def _add_schema_name(conn: Connection, table: str) -> None:
    """``schema_name`` into ``readerd_migrations`` and its primary key, rows kept (the default schema).

    PostgreSQL: ``ADD COLUMN … DEFAULT '' NOT NULL``, then the primary key dropped and made again over
    (plugin, role, schema_name, version). SQLite cannot change a primary key in place: the table is made
    again under its name and the rows copied, in the migration transaction (SQLite's DDL is transactional).
    Code of the previous release keeps inserting (its rows get ``""``) and reading (it filters by plugin
    and role, so it sees a plugin's named schemas too: docs/plugins.md, "Schema names")."""
    quote = conn.dialect.identifier_preparer.quote
    kept = "plugin, role, version, name, applied_at, kind"
    if conn.dialect.name == "postgresql":
        ddl = CreateColumn(_migrations.c.schema_name).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")
        primary = sa.inspect(conn).get_pk_constraint(MIGRATIONS_TABLE).get("name")
        if primary:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {quote(primary)}")
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD PRIMARY KEY (plugin, role, schema_name, version)")
        return
    old = quote(f"{MIGRATIONS_TABLE}_before_schema_name")
    conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {old}")
    _migrations.create(conn)
    conn.exec_driver_sql(f"INSERT INTO {table} ({kept}, schema_name) SELECT {kept}, '' FROM {old}")  # noqa: S608
    conn.exec_driver_sql(f"DROP TABLE {old}")


def _check_length(name: str) -> None:
    if len(name.encode()) > PG_MAX_IDENTIFIER:
        raise StoreSchemaError(f"{name!r} is longer than {PG_MAX_IDENTIFIER} bytes (PostgreSQL's limit)")


def _migration_name(step: Migration) -> str:
    return str(getattr(step, "__qualname__", None) or getattr(step, "__name__", None) or repr(step))[:200]


class PluginDatabase:
    """A plugin's view of one database: its prefixed tables, its migrations, and transactions that are
    refused once the plugin is revoked (quarantined, docs/design.md D15)."""

    def __init__(self, database: Database, plugin: str, role: Role, owner: PluginStore) -> None:
        self.database = database
        self.plugin = plugin
        self.role: Role = role  # the slot, not the engine: `shared` may be the local SQLite file
        self.prefix = f"{plugin}__" if self.role == "shared" else f"{plugin}__local__"
        self.metadata = sa.MetaData()
        self._owner = owner
        self._tables_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.database.dialect

    def __repr__(self) -> str:
        return f"<PluginDatabase {self.plugin} {self.role} {self.database.where}>"

    # -- names and tables ---------------------------------------------------------------------------
    def table_name(self, name: str) -> str:
        """The table's name in the database: ``<plugin>__<name>`` or ``<plugin>__local__<name>``."""
        full = self.prefix + check_name("table", name)
        _check_length(full)
        return full

    def table(self, name: str, *items: sa.schema.SchemaItem) -> sa.Table:
        """The plugin's table ``name`` for queries. With columns: declared here (it must match what the
        migrations made); without: the one declared before, or else reflected from the database."""
        full = self.table_name(name)
        # Hooks run on several threads: without the lock, one could see a table another is still
        # reflecting (registered in the MetaData before its columns are).
        with self._tables_lock:
            if full in self.metadata.tables:
                return self.metadata.tables[full]  # a hook may call this on every event: declared once
            if items:
                return sa.Table(full, self.metadata, *items)
            return self._call(lambda conn: sa.Table(full, self.metadata, autoload_with=conn), readonly=True)

    # -- migrations ---------------------------------------------------------------------------------
    def version(self, *, schema: str = "") -> int:
        """The version recorded for this plugin, role and schema name (0: never migrated)."""

        def read(conn: Connection) -> int:
            rows = recorded_migrations(conn)
            return sum(r.plugin == self.plugin and r.role == self.role and r.schema == schema for r in rows)

        return self._call(read, readonly=True)

    def migrate(self, migrations: Sequence[Migration], *, schema: str = "") -> int:
        """Bring the plugin's tables towards version ``len(migrations)``; returns the database's version.

        ``schema`` names the list when the plugin has more than one in this role (the library's local ILS
        beside its patron tables): each name counts its own versions in ``readerd_migrations``; ``""`` is
        the default schema (every row recorded before schema names existed). Lower-case words joined by
        single underscores, at most 32 characters. A plugin with several lists declares them all with
        ``readerd_schemas`` so that ``readerctl doctor`` can compare them with the database.

        Already applied versions are skipped (a re-run is a no-op); the missing ones run in order in one
        transaction, each recorded in ``readerd_migrations`` with its kind. An ordinary start applies
        expand migrations only and stops before the first contract one (module docstring, "Rolling
        upgrades"); a :class:`Store` opened with ``contract=True`` (``readerd migrate --contract``)
        applies them all. A database ahead of the code by expand migrations only is accepted (the result
        is then above ``len(migrations)``): a newer kiosk of the ward migrated it.

        Raises :class:`StoreSchemaError` when the database records a contract migration beyond the list
        (newer code removed what this code relies on) or a migration fails, and
        :class:`StoreUnavailableError` / :class:`StoreBusyError` as transactions do.
        """
        if schema:
            check_name("schema", schema, max_length=SCHEMA_NAME_MAX)
        known = len(migrations)
        names = [_migration_name(step) for step in migrations]
        kinds = [migration_kind(step) for step in migrations]
        contract_allowed = self._owner.contract_migrations
        pg = self.dialect == "postgresql"

        def run(conn: Connection) -> MigrationRun:
            if pg:  # kiosks starting together: one migrates, the others wait and then find it done
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            _migrations.create(conn, checkfirst=True)
            _upgrade_bookkeeping(conn)
            rows = conn.execute(
                sa.select(_migrations.c.version, _migrations.c.name, _migrations.c.kind)
                .where(
                    _migrations.c.plugin == self.plugin,
                    _migrations.c.role == self.role,
                    _migrations.c.schema_name == schema,
                )
                .order_by(_migrations.c.version)
            ).all()
            applied = [int(row.version) for row in rows]
            if applied != list(range(1, len(applied) + 1)):
                raise StoreSchemaError(f"{self} schema {schema!r}: recorded versions {applied} have gaps")
            current = len(applied)
            beyond = [row for row in rows if row.version > known]
            contracts = [row for row in beyond if row.kind == "contract"]
            if contracts:
                first = contracts[0]
                raise StoreSchemaError(
                    f"plugin {self.plugin!r} ({self.role} store, {self.database.where}): the database is at "
                    f"schema version {current}, this code knows {known}, and version {first.version} "
                    f"({first.name}) beyond it is a contract migration this code cannot run on; run the "
                    "plugin version the ward was upgraded to, or restore the database from before "
                    "`readerd migrate --contract`"
                )
            for row in rows[:known]:
                if row.name != names[row.version - 1]:
                    log.warning(
                        "applied migration differs from the code's",
                        plugin=self.plugin,
                        role=self.role,
                        **({"schema": schema} if schema else {}),
                        version=row.version,
                        recorded=row.name,
                        code=names[row.version - 1],
                    )
            target = known
            if not contract_allowed:  # stop before the first pending contract migration
                target = next(
                    (v - 1 for v in range(current + 1, known + 1) if kinds[v - 1] == "contract"), known
                )
            context = MigrationContext(conn, self)
            now = business_time.utc_now().isoformat(timespec="seconds")
            for version in range(current + 1, target + 1):
                migrations[version - 1](context)
                conn.execute(
                    _migrations.insert().values(
                        plugin=self.plugin,
                        role=self.role,
                        version=version,
                        name=names[version - 1],
                        applied_at=now,
                        kind=kinds[version - 1],
                        schema_name=schema,
                    )
                )
            return MigrationRun(
                plugin=self.plugin,
                role=self.role,
                database=self.database.where,
                before=current,
                after=max(current, target),
                known=known,
                applied=tuple(range(current + 1, target + 1)),
                held_back=tuple(
                    (v, names[v - 1], kinds[v - 1]) for v in range(max(current, target) + 1, known + 1)
                ),
                ahead=max(0, current - known),
                schema=schema,
            )

        try:
            # READ COMMITTED on PostgreSQL: after waiting for the advisory lock, the next statement must
            # see what the kiosk that held it committed (a SERIALIZABLE snapshot would predate it).
            outcome = self._call(run, readonly=False, isolation="READ COMMITTED" if pg else None)
        except (StoreUnavailableError, StoreBusyError, StoreSchemaError):
            raise
        except Exception as e:
            raise StoreSchemaError(
                f"plugin {self.plugin!r} ({self.role} store): migration failed: {e}"
            ) from e
        self._owner.note_migration(outcome)
        if outcome.applied:
            with self._tables_lock:
                self.metadata.clear()  # tables reflected or declared before the migration may have changed
            log.info(
                "plugin schema migrated",
                plugin=self.plugin,
                role=self.role,
                old=outcome.before,
                new=outcome.after,
            )
        if outcome.ahead:
            log.info(
                "database ahead of this code by expand migrations: fine during a rolling upgrade",
                plugin=self.plugin,
                role=self.role,
                database_version=outcome.before,
                code_version=known,
            )
        if outcome.held_back:
            first_version, first_name, _kind = outcome.held_back[0]
            log.info(
                "contract migration pending: `readerd migrate --contract` once every kiosk runs this code",
                plugin=self.plugin,
                role=self.role,
                version=first_version,
                name=first_name,
                held_back=len(outcome.held_back),
            )
        return outcome.after

    # -- transactions -------------------------------------------------------------------------------
    def transaction(
        self, fn: Callable[[Connection], T], *, readonly: bool = False, row_locked: bool = False
    ) -> T:
        """:meth:`Database.transaction` (fn may run more than once); refused once the plugin is revoked,
        and a transaction running when it is revoked is rolled back instead of committed.

        ``row_locked``: the function itself serialises what matters with ``SELECT … FOR UPDATE`` (an
        account's row before summing its ledger): on PostgreSQL it then runs at READ COMMITTED, where a
        statement after the lock sees what the previous holder committed, instead of SERIALIZABLE, whose
        predicate locks abort unrelated transactions under load (measured: 4,157 retries for 1,920
        redemptions from 16 kiosks). SQLite always serialises writers (``BEGIN IMMEDIATE``).
        """
        isolation = "READ COMMITTED" if row_locked and self.dialect == "postgresql" else None
        return self._call(fn, readonly=readonly, isolation=isolation)

    @contextmanager
    def begin(self, *, readonly: bool = False) -> Iterator[Connection]:
        """:meth:`Database.begin` (one attempt, no retry), with the revocation check before commit."""
        self._owner.check()
        with self.database.begin(readonly=readonly) as conn:
            yield conn
            self._owner.check()

    def insert_or_ignore(self, table: sa.Table) -> sa.Insert:
        return self.database.insert_or_ignore(table)

    def _call(self, fn: Callable[[Connection], T], *, readonly: bool, isolation: str | None = None) -> T:
        self._owner.check()

        def guarded(conn: Connection) -> T:
            result = fn(conn)
            self._owner.check()  # raising here rolls back: a revoked plugin's late write never lands
            return result

        return self.database._transaction(guarded, readonly=readonly, isolation=isolation)


class PluginStore:
    """What one plugin gets as ``context.store``: its ``local`` and ``shared`` databases and the clock."""

    def __init__(self, store: Store, plugin: str) -> None:
        self.plugin = check_name("plugin", plugin, max_length=PLUGIN_NAME_MAX)  # readerd_migrations.plugin
        self._store = store
        self._revoked: str | None = None
        self.local = PluginDatabase(store.local, plugin, "local", self)
        self.shared = PluginDatabase(store.shared, plugin, "shared", self)

    def now(self) -> datetime:
        """The current instant on the ward's clock (JST, aware)."""
        return self._store.now()

    @property
    def contract_migrations(self) -> bool:
        """Whether :meth:`PluginDatabase.migrate` applies contract migrations (the store's flag)."""
        return self._store.contract_migrations

    def note_migration(self, run: MigrationRun) -> None:
        self._store.note_migration(run)

    def revoke(self, reason: str = "revoked") -> None:
        """Refuse every further transaction of this plugin (quarantine, reload): a thread abandoned in a
        hook can no longer commit."""
        self._revoked = reason
        log.info("plugin store revoked", plugin=self.plugin, reason=reason)

    @property
    def revoked(self) -> bool:
        return self._revoked is not None

    def check(self) -> None:
        if self._revoked is not None:
            raise StoreUnavailableError(f"plugin {self.plugin!r}: store access revoked ({self._revoked})")


class Store:
    """The two databases and the clock; :meth:`for_plugin` gives each plugin its own view."""

    def __init__(
        self,
        local: Database,
        shared: Database | None = None,
        *,
        clock: business_time.Clock | None = None,
        contract: bool = False,
    ) -> None:
        """``contract``: the plugins' :meth:`PluginDatabase.migrate` calls also apply contract migrations
        (``readerd migrate --contract`` only; a kiosk's start never does, module docstring)."""
        self.local = local
        self.shared = shared if shared is not None else local
        self.clock: business_time.Clock = clock or business_time.utc_now
        self.contract_migrations = contract
        #: The migrate calls of this store's plugins, in order (what ``readerd migrate`` reports); bounded,
        #: since a daemon runs for months and a plugin may call ``migrate`` more often than at its start.
        self.migration_runs: deque[MigrationRun] = deque(maxlen=MIGRATION_RUNS_KEPT)
        self._runs_lock = threading.Lock()
        self._cursor_table = CursorTable(self.local)

    @classmethod
    def open(
        cls,
        config: StoreConfig,
        state_dir: Path | str,
        *,
        clock: business_time.Clock | None = None,
        contract: bool = False,
    ) -> Store:
        """Open the store of a configuration (``ConfigError`` if it is invalid); ``contract`` as in the
        constructor.

        The local SQLite file is opened and checked at once (:class:`StoreUnavailableError` if it cannot
        be used: the daemon exits 69). PostgreSQL is not contacted here: a kiosk must start offline, and
        ``shared`` reports :class:`StoreUnavailableError` per transaction until the server answers.
        """
        config.validate()
        path = Path(config.local_path) if config.local_path else Path(state_dir) / LOCAL_FILE
        local = sqlite_database(path, "local", config)
        try:
            local.ping()
        except StoreUnavailableError:
            local.close()
            raise
        # Without a URL, shared is the same SQLite file under its own name, so that errors and
        # counters say which role the plugin used.
        shared = (
            postgres_database(config.shared_url, config)
            if config.shared_url
            else Database(local.engine, "shared", config)
        )
        store = cls(local, shared, clock=clock, contract=contract)
        log.info("store opened", local=local.where, shared=store.shared.where)
        return store

    def pin_deployment_key(self, fingerprint: str) -> str:
        """Record the deployment key's fingerprint in the shared store the first time a kiosk uses it, and
        give back the one recorded: a kiosk whose key differs must not write into the ward's data (its
        pseudonyms would be another deployment's). Raises :class:`StoreUnavailableError` when the
        shared store cannot be asked (a kiosk starts offline; the caller decides). The daemon does the
        same on its directory's connection: one function, :func:`readerd.ops.database.pin_deployment_key`."""
        return pin_deployment_key(self.shared, fingerprint)

    def note_migration(self, run: MigrationRun) -> None:
        with self._runs_lock:
            self.migration_runs.append(run)

    def recorded_schemas(self) -> list[RecordedSchema]:
        """Every (plugin, role) ``readerd_migrations`` records, local first: the version and which
        versions were contract migrations. For ``readerd migrate``'s report, including the plugins whose
        startup did not migrate (they migrate on first use). Raises :class:`StoreUnavailableError` as a
        transaction does."""
        found: list[RecordedSchema] = []
        roles: tuple[tuple[Role, Database], ...] = (("local", self.local), ("shared", self.shared))
        for role, database in roles:
            found.extend(
                database.transaction(
                    functools.partial(_recorded, role=role, where=database.where), readonly=True
                )
            )
        return found

    def for_plugin(self, name: str) -> PluginStore:
        """The handle for plugin ``name`` (tables prefixed with its name, revocable on its own)."""
        return PluginStore(self, name)

    def now(self) -> datetime:
        """The current instant on the ward's clock (JST, aware); see ``readerd.plugin.business_time``."""
        return business_time.to_business(self.clock())

    # -- the plugin host's cursors (kept in the local database: readerd.plugin.cursor_table) ----------
    def read_cursors(self) -> dict[str, int]:
        """The last feed ``seq`` recorded per plugin (empty before the first record)."""
        return self._cursor_table.read()

    def write_cursors(self, cursors: dict[str, int], run_id: str) -> None:
        """Record ``plugin -> seq`` for the plugins named, in one transaction of the local database."""
        self._cursor_table.write(cursors, run_id)

    def status(self) -> dict[str, object]:
        """For ``readerctl status``: each database and its counters."""
        return {
            role: {"database": db.where, "dialect": db.dialect, **vars(db.stats)}
            for role, db in (("local", self.local), ("shared", self.shared))
        }

    def close(self) -> None:
        self.local.close()
        if self.shared.engine is not self.local.engine:
            self.shared.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
