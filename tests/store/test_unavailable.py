"""A database that cannot be used is StoreUnavailableError naming the role and the database, with the
password redacted; no driver exception escapes, and a server that comes back is used again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from readerd.config import StoreConfig
from readerd.errors import ConfigError, StoreUnavailableError
from readerd.plugin.store import MigrationContext, Store
from tests.store.conftest import FAST
from tests.support.ports import free_tcp_port
from tests.support.postgres import PrivatePostgres

PASSWORD = "s3cret-Pa55"  # noqa: S105 - a test value that must never show


def counter(ctx: MigrationContext) -> None:
    ctx.create_table("counter", sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.Integer))


def test_local_path_that_is_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "store.db"
    target.mkdir()
    with pytest.raises(StoreUnavailableError, match=r"^local store \(.*store\.db\) unavailable"):
        Store.open(FAST, tmp_path)


def test_local_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_bytes(b"this is not a SQLite database, it is a text file\n" * 100)
    with pytest.raises(StoreUnavailableError, match=r"^local store .* unavailable: file is not a database"):
        Store.open(FAST, tmp_path)


def test_local_path_in_a_missing_directory(tmp_path: Path) -> None:
    config = replace(FAST, local_path=str(tmp_path / "gone" / "plugins.db"))
    with pytest.raises(StoreUnavailableError, match=r"^local store .*gone/plugins\.db"):
        Store.open(config, tmp_path)


def test_a_local_file_corrupted_while_open(tmp_path: Path) -> None:
    """The file is replaced by garbage under a running daemon (a failing disk, a careless restore):
    the next transaction on a fresh connection fails as unavailable, not with a driver error."""
    with Store.open(replace(FAST, pool_size=1), tmp_path) as store:
        points = store.for_plugin("points")
        points.local.migrate([counter])
        store.local.engine.dispose()  # no connection keeps the old file open
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"store.db{suffix}").unlink(missing_ok=True)
        (tmp_path / "store.db").write_bytes(b"\xff" * 8192)
        with pytest.raises(StoreUnavailableError, match=r"^local store"):
            points.local.transaction(lambda c: c.exec_driver_sql("SELECT 1").scalar_one())
        assert store.local.stats.unavailable == 1


def test_postgresql_on_a_closed_port(tmp_path: Path) -> None:
    """A kiosk starts offline (Store.open does not contact PostgreSQL); shared access fails per
    transaction, the password never shows, and local keeps working."""
    port = free_tcp_port()  # nothing listens there
    url = f"postgresql+psycopg://readerd:{PASSWORD}@127.0.0.1:{port}/ledger"
    with (
        structlog.testing.capture_logs() as logs,
        Store.open(replace(FAST, shared_url=url), tmp_path) as store,
    ):
        points = store.for_plugin("points")
        calls = []

        def fn(conn: Connection) -> None:
            calls.append(1)

        with pytest.raises(StoreUnavailableError) as raised:
            points.shared.transaction(fn)
        message = str(raised.value)
        assert message.startswith(f"shared store (postgresql+psycopg://readerd:***@127.0.0.1:{port}/ledger)")
        assert PASSWORD not in message
        assert calls == []
        assert raised.value.code == "store_unavailable"
        assert store.shared.stats.retries == 0  # not retried: unavailable is not busy

        with pytest.raises(StoreUnavailableError, match=r"^shared store"):
            points.shared.migrate([counter])  # not disguised as a schema error

        assert points.local.migrate([counter]) == 1
        assert PASSWORD not in repr(store.status())
    assert logs, "the failure is logged"
    assert PASSWORD not in repr(logs)


@pytest.fixture
def pg_cluster(postgres_cluster: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The session's cluster, started again after a test that stops it."""
    yield postgres_cluster
    if not postgres_cluster.running:
        postgres_cluster.start()


@pytest.mark.postgres
def test_postgresql_stopped_under_a_running_store_and_back(
    pg_cluster: PrivatePostgres, postgres_url: str, tmp_path: Path
) -> None:
    url = postgres_url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://postgres:{PASSWORD}@")
    with Store.open(replace(FAST, shared_url=url), tmp_path) as store:
        points = store.for_plugin("points")
        points.shared.migrate([counter])
        table = points.shared.table("counter")
        points.shared.transaction(lambda c: c.execute(table.insert().values(id=1, n=1)))

        pg_cluster.stop()
        with pytest.raises(StoreUnavailableError) as raised:
            points.shared.transaction(lambda c: c.execute(table.update().values(n=2)))
        assert str(raised.value).startswith("shared store (postgresql+psycopg://postgres:***@127.0.0.1:")
        assert PASSWORD not in str(raised.value)
        assert points.local.migrate([counter]) == 1  # the local role does not depend on the server

        pg_cluster.start()  # same port, same data
        points.shared.transaction(lambda c: c.execute(table.update().values(n=3)))
        assert points.shared.transaction(lambda c: c.execute(sa.select(table.c.n)).scalar_one()) == 3


def test_a_revoked_plugin_cannot_commit(tmp_path: Path) -> None:
    """Quarantine revokes the plugin's store: a hook thread abandoned mid-transaction cannot commit,
    and no later transaction starts; another plugin is unaffected."""
    with Store.open(FAST, tmp_path) as store:
        points, library = store.for_plugin("points"), store.for_plugin("library")
        points.shared.migrate([counter])
        library.shared.migrate([counter])
        table = points.shared.table("counter")

        def late_write(conn: Connection) -> None:
            conn.execute(table.insert().values(id=1, n=1))
            points.revoke("quarantined")  # what the host does while this hook is still running

        with pytest.raises(
            StoreUnavailableError, match=r"plugin 'points': store access revoked \(quarantined\)"
        ):
            points.shared.transaction(late_write)
        with pytest.raises(StoreUnavailableError, match="revoked"):
            points.local.transaction(lambda c: None)
        with pytest.raises(StoreUnavailableError, match="revoked"), points.shared.begin():
            pass
        assert points.revoked
        assert (
            store.for_plugin("points").shared.transaction(
                lambda c: c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one(), readonly=True
            )
            == 0
        )  # the late write never landed
        library.shared.transaction(lambda c: c.execute(library.shared.table("counter").insert().values(id=1)))


def test_store_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shared_url"):
        Store.open(StoreConfig(shared_url="mysql://x@y/z"), tmp_path)
    with pytest.raises(ConfigError, match="retries"):
        Store.open(StoreConfig(retries=-1), tmp_path)
