"""Schema names: a plugin may own more than one migration list in one role (``migrate(..., schema=)``),
each counting its own versions in ``readerd_migrations``; a bookkeeping table of the previous release
(no ``schema_name``, its primary key without it) is upgraded in place, its rows the default schema.

Every test runs on SQLite and on the private PostgreSQL (the ``backend`` fixture). Cost: about 2 s
(PostgreSQL's private cluster, started once per session, aside).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import structlog

from readerd.errors import StoreSchemaError
from readerd.plugin import MigrationContext
from readerd.plugin.store import MIGRATIONS_TABLE, recorded_migrations
from tests.store.conftest import Backend, run_threads

DIFFERS = "applied migration differs from the code's"


def patrons_v1(m: MigrationContext) -> None:
    m.create_table("patrons", sa.Column("card", sa.String(16), primary_key=True))


def loans_v1(m: MigrationContext) -> None:
    m.create_table("loans", sa.Column("item", sa.String(16), primary_key=True))


def loans_v2(m: MigrationContext) -> None:
    m.add_column("loans", sa.Column("due", sa.String(10), nullable=True))


def _rows(backend: Backend) -> list[tuple[str, str, str, int, str]]:
    store = backend.open()
    with store.shared.engine.connect() as conn:
        return [(r.plugin, r.role, r.schema, r.version, r.name) for r in recorded_migrations(conn)]


def test_two_lists_in_one_role_each_count_their_own_versions(backend: Backend) -> None:
    shared = backend.open().for_plugin("library").shared
    with structlog.testing.capture_logs() as logs:
        assert shared.migrate([patrons_v1]) == 1
        assert shared.migrate([loans_v1], schema="loans") == 1  # not "version 1 already applied"
        assert shared.migrate([loans_v1, loans_v2], schema="loans") == 2
        assert shared.migrate([patrons_v1]) == 1  # a re-run is a no-op
    assert [e for e in logs if e["event"] == DIFFERS] == []
    assert shared.version() == 1
    assert shared.version(schema="loans") == 2
    with shared.begin() as conn:
        conn.execute(sa.text("INSERT INTO library__loans (item, due) VALUES ('B1', '2026-12-24')"))
        conn.execute(sa.text("INSERT INTO library__patrons (card) VALUES ('L1')"))
    assert ("library", "shared", "loans", 2, "loans_v2") in _rows(backend)
    recorded = {
        (s.plugin, s.schema): s.version for s in backend.open().recorded_schemas() if s.role == "shared"
    }
    assert recorded == {("library", ""): 1, ("library", "loans"): 2}


def test_a_bad_schema_name_is_refused(backend: Backend) -> None:
    shared = backend.open().for_plugin("library").shared
    for bad in ("Loans", "loans__x", "x" * 33):
        with pytest.raises(StoreSchemaError, match="schema name"):
            shared.migrate([loans_v1], schema=bad)


def test_the_previous_releases_table_is_upgraded_in_place(backend: Backend) -> None:
    store = backend.open()
    with store.shared.engine.begin() as conn:  # readerd_migrations as the previous release made it
        conn.execute(
            sa.text(
                f"CREATE TABLE {MIGRATIONS_TABLE} (plugin VARCHAR(32) NOT NULL, role VARCHAR(8) NOT NULL, "
                "version INTEGER NOT NULL, name VARCHAR(200) NOT NULL, applied_at VARCHAR(32) NOT NULL, "
                "kind VARCHAR(8) DEFAULT 'expand' NOT NULL, PRIMARY KEY (plugin, role, version))"
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {MIGRATIONS_TABLE} VALUES ('library', 'shared', 1, 'patrons_v1', '2026-01-01', "  # noqa: S608
                "'expand')"
            )
        )
        conn.execute(sa.text("CREATE TABLE library__patrons (card VARCHAR(16) PRIMARY KEY)"))
    # What a reader of the old shape sees: the row, in the default schema.
    assert _rows(backend) == [("library", "shared", "", 1, "patrons_v1")]

    # Kiosks starting together: one upgrades the table, the others find it upgraded.
    kiosks = [backend.open().for_plugin("library").shared for _ in range(4)]
    assert run_threads(4, lambda i: kiosks[i].migrate([loans_v1], schema="loans")) == [1, 1, 1, 1]
    assert kiosks[0].migrate([patrons_v1]) == 1  # the old row counts as the default schema: not re-run
    assert _rows(backend) == [
        ("library", "shared", "", 1, "patrons_v1"),
        ("library", "shared", "loans", 1, "loans_v1"),
    ]
    with store.shared.engine.connect() as conn:
        primary = sa.inspect(conn).get_pk_constraint(MIGRATIONS_TABLE)["constrained_columns"]
        kinds = conn.execute(sa.text(f"SELECT kind FROM {MIGRATIONS_TABLE}")).scalars().all()  # noqa: S608
    assert sorted(primary) == ["plugin", "role", "schema_name", "version"]
    assert kinds == ["expand", "expand"]  # the kind column kept
