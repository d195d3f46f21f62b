"""Plugin schemas: migrations applied once, in order, all or none; names prefixed and checked.

Every test runs on SQLite and on a private PostgreSQL (the ``backend`` fixture)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
import structlog

from readerd.errors import StoreSchemaError
from readerd.plugin.store import MIGRATIONS_TABLE, MigrationContext, PluginDatabase, Store, contract
from tests.store.conftest import Backend, run_threads


def accounts_v1(ctx: MigrationContext) -> None:
    ctx.create_table(
        "accounts",
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("balance", sa.Integer, nullable=False),
    )


def accounts_v2(ctx: MigrationContext) -> None:
    ctx.add_column("accounts", sa.Column("holder", sa.String(40), nullable=True))
    ctx.create_index("by_holder", "accounts", "holder", unique=True)


def tables(database: PluginDatabase) -> set[str]:
    return set(sa.inspect(database.database.engine).get_table_names())


def recorded(database: PluginDatabase) -> list[tuple[str, str, int, str]]:
    with database.database.engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT plugin, role, version, name FROM {MIGRATIONS_TABLE} ORDER BY role, version")  # noqa: S608
        ).all()
    return [(row.plugin, row.role, row.version, row.name) for row in rows]


def test_migrate_creates_prefixed_tables_and_records_each_version(store: Store) -> None:
    points = store.for_plugin("points")
    assert points.shared.version() == 0
    assert points.shared.migrate([accounts_v1, accounts_v2]) == 2
    assert points.local.migrate([accounts_v1]) == 1

    assert {"points__accounts", "points__local__accounts"} <= tables(points.local) | tables(points.shared)
    assert "points__accounts" in tables(points.shared)
    assert "points__local__accounts" in tables(points.local)
    assert points.shared.version() == 2
    assert points.local.version() == 1
    local_rows = [row for row in recorded(points.local) if row[1] == "local"]
    shared_rows = [row for row in recorded(points.shared) if row[1] == "shared"]
    assert local_rows == [("points", "local", 1, "accounts_v1")]
    assert shared_rows == [("points", "shared", 1, "accounts_v1"), ("points", "shared", 2, "accounts_v2")]

    # The helpers made what they say: the new column exists and the index is unique.
    accounts = points.shared.table("accounts")
    assert {"id", "balance", "holder"} == set(accounts.c.keys())
    points.shared.transaction(lambda c: c.execute(accounts.insert().values(id="a", balance=1, holder="x")))
    with pytest.raises(sa.exc.IntegrityError):
        points.shared.transaction(
            lambda c: c.execute(accounts.insert().values(id="b", balance=1, holder="x"))
        )


def test_rerun_is_a_no_op_and_a_restart_applies_only_the_new_version(backend: Backend) -> None:
    calls: list[str] = []

    def v1(ctx: MigrationContext) -> None:
        calls.append("v1")
        accounts_v1(ctx)

    def v2(ctx: MigrationContext) -> None:
        calls.append("v2")
        accounts_v2(ctx)

    first = backend.open().for_plugin("points")
    assert first.shared.migrate([v1]) == 1
    assert first.shared.migrate([v1]) == 1
    assert calls == ["v1"]

    restarted = backend.open().for_plugin("points")  # the next start of the daemon, with a newer plugin
    assert restarted.shared.migrate([v1, v2]) == 2
    assert restarted.shared.migrate([v1, v2]) == 2
    assert calls == ["v1", "v2"]


def test_a_database_migrated_by_newer_code_is_refused_once_it_contracted(backend: Backend) -> None:
    """Ahead by expand migrations is fine (tests/store/test_rolling_upgrade.py); a contract one is not."""

    @contract
    def drop_holder_index(ctx: MigrationContext) -> None:
        ctx.execute(f"DROP INDEX {ctx.table_name('accounts')}__by_holder")

    newer = Store.open(backend.config, backend.state_dir, contract=True)
    backend.stores.append(newer)
    newer.for_plugin("points").shared.migrate([accounts_v1, accounts_v2, drop_holder_index])

    older = backend.open().for_plugin("points")
    with pytest.raises(StoreSchemaError, match=r"schema version 3, this code knows 1, and version 3"):
        older.shared.migrate([accounts_v1])
    assert older.shared.version() == 3  # nothing was undone


def test_a_failed_migration_rolls_back_every_version_of_the_run(backend: Backend) -> None:
    points = backend.open().for_plugin("points")

    def v2_broken(ctx: MigrationContext) -> None:
        ctx.create_table("ledger", sa.Column("id", sa.Integer, primary_key=True))
        raise RuntimeError("typo in migration 2")

    with pytest.raises(StoreSchemaError, match="typo in migration 2") as raised:
        points.shared.migrate([accounts_v1, v2_broken])
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert points.shared.version() == 0
    assert not {"points__accounts", "points__ledger"} & tables(points.shared)

    # The fixed plugin migrates cleanly from scratch.
    assert points.shared.migrate([accounts_v1, accounts_v2]) == 2

    def v3_broken(ctx: MigrationContext) -> None:
        ctx.create_table("ledger", sa.Column("id", sa.Integer, primary_key=True))
        ctx.execute(f"INSERT INTO {ctx.table_name('nosuchtable')} VALUES (1)")  # noqa: S608

    with pytest.raises(StoreSchemaError, match="migration failed"):
        points.shared.migrate([accounts_v1, accounts_v2, v3_broken])
    assert points.shared.version() == 2
    assert "points__ledger" not in tables(points.shared)


def test_migrations_of_two_kiosks_starting_together_run_once(backend: Backend) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def v1(ctx: MigrationContext) -> None:
        with lock:
            calls.append(threading.current_thread().name)
        accounts_v1(ctx)

    kiosks = [backend.open().for_plugin("points") for _ in range(4)]
    versions = run_threads(4, lambda i: kiosks[i].shared.migrate([v1]))
    assert versions == [1, 1, 1, 1]
    assert len(calls) == 1


def test_changed_history_is_logged(backend: Backend) -> None:
    points = backend.open().for_plugin("points")
    points.shared.migrate([accounts_v1])

    def renamed(ctx: MigrationContext) -> None:
        raise AssertionError("an applied version must not run again")

    with structlog.testing.capture_logs() as logs:
        assert points.shared.migrate([renamed]) == 1
    warnings = [entry for entry in logs if entry["event"] == "applied migration differs from the code's"]
    assert warnings == [
        {
            "event": "applied migration differs from the code's",
            "log_level": "warning",
            "plugin": "points",
            "role": "shared",
            "version": 1,
            "recorded": "accounts_v1",
            "code": "test_changed_history_is_logged.<locals>.renamed",
        }
    ]


# --- names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "Points", "1points", "po-ints", "po__ints", "points_", "_points", "pö"])
def test_bad_plugin_names_are_refused(store: Store, name: str) -> None:
    with pytest.raises(StoreSchemaError, match="plugin name"):
        store.for_plugin(name)


@pytest.mark.parametrize("name", ["", "Accounts", "acc__ounts", "acc ounts", 'x"; DROP TABLE y; --'])
def test_bad_table_names_are_refused(store: Store, name: str) -> None:
    points = store.for_plugin("points")
    with pytest.raises(StoreSchemaError, match="table name"):
        points.shared.table_name(name)

    def create(ctx: MigrationContext) -> None:
        ctx.create_table(name, sa.Column("id", sa.Integer, primary_key=True))

    with pytest.raises(StoreSchemaError):
        points.shared.migrate([create])
    assert points.shared.version() == 0


def test_names_beyond_postgresqls_identifier_limit_are_refused(store: Store) -> None:
    plugin = store.for_plugin("p" * 20)
    assert plugin.shared.table_name("t" * 41) == "p" * 20 + "__" + "t" * 41  # 63 bytes: fits
    with pytest.raises(StoreSchemaError, match="63 bytes"):
        plugin.shared.table_name("t" * 42)
    with pytest.raises(StoreSchemaError, match="63 bytes"):
        plugin.local.table_name("t" * 35)  # "__local__" is longer: 20 + 9 + 35 = 64
    with pytest.raises(StoreSchemaError, match="plugin name"):
        store.for_plugin("p" * 33)  # readerd_migrations.plugin holds 32


def test_two_plugins_and_two_roles_never_share_a_table(store: Store) -> None:
    """Same table name for two plugins and both roles: four tables, even when local and shared are one
    SQLite file."""
    databases = [
        getattr(store.for_plugin(plugin), role)
        for plugin in ("points", "library")
        for role in ("local", "shared")
    ]
    for i, database in enumerate(databases):
        database.migrate([accounts_v1])
        accounts = database.table("accounts")
        database.transaction(lambda c, a=accounts, n=i: c.execute(a.insert().values(id="same", balance=n)))

    def balances_of(database: PluginDatabase) -> list[int]:
        table = database.table("accounts")
        return list(
            database.transaction(
                lambda c: c.execute(sa.select(table.c.balance)).scalars().all(), readonly=True
            )
        )

    balances = [balances_of(database) for database in databases]
    assert balances == [[0], [1], [2], [3]]
    names = [database.table_name("accounts") for database in databases]
    assert names == [
        "points__local__accounts",
        "points__accounts",
        "library__local__accounts",
        "library__accounts",
    ]
