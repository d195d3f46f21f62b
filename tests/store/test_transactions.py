"""Transactions: commit or roll back as a whole, retried on locks and serialization failures only, and a
balance two kiosks redeem from at once never goes negative.

Every test runs on SQLite and on a private PostgreSQL (the ``backend`` fixture); the serialization
failure test exists only for PostgreSQL (SQLite writers never overlap: ``BEGIN IMMEDIATE``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from readerd.errors import ReaderdError, StoreBusyError
from readerd.plugin.store import MigrationContext, PluginDatabase, PluginStore, Store
from tests.store.conftest import FAST, Backend, run_threads


def accounts(ctx: MigrationContext) -> None:
    ctx.create_table(
        "accounts",
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("balance", sa.Integer, nullable=False),
    )
    ctx.create_table(
        "ledger",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("account", sa.String(20), nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
    )


def points_of(store: Store, balance: int = 100) -> PluginStore:
    points = store.for_plugin("points")
    points.shared.migrate([accounts])
    table = points.shared.table("accounts")
    points.shared.transaction(lambda c: c.execute(table.insert().values(id="a", balance=balance)))
    return points


def balance(db: PluginDatabase) -> int:
    table = db.table("accounts")
    return int(db.transaction(lambda c: c.execute(sa.select(table.c.balance)).scalar_one(), readonly=True))


def ledger_count(db: PluginDatabase) -> int:
    table = db.table("ledger")
    return int(
        db.transaction(lambda c: c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    )


def redeem(db: PluginDatabase, amount: int, event_id: str, pause: float = 0.0) -> bool:
    """Read the balance, then write balance - amount computed here (not in SQL), plus a ledger row: the
    read-then-write shape that loses updates or overspends without the store's isolation."""
    table, ledger = db.table("accounts"), db.table("ledger")

    def attempt(conn: Connection) -> bool:
        current = conn.execute(sa.select(table.c.balance).where(table.c.id == "a")).scalar_one()
        if current < amount:
            return False
        time.sleep(pause)  # widen the window between read and write (no assertion depends on it)
        conn.execute(table.update().where(table.c.id == "a").values(balance=current - amount))
        conn.execute(ledger.insert().values(event_id=event_id, account="a", points=-amount))
        return True

    return db.transaction(attempt)


@pytest.fixture
def points(store: Store) -> PluginStore:
    return points_of(store)


def test_commit_and_the_plugins_own_exception(points: PluginStore) -> None:
    ledger = points.shared.table("ledger")
    calls = []

    class Refused(Exception):
        pass

    error = Refused("insufficient points")

    def fn(conn: Connection) -> None:
        calls.append(1)
        conn.execute(ledger.insert().values(event_id="e1", account="a", points=-5))
        raise error

    with pytest.raises(Refused) as raised:
        points.shared.transaction(fn)
    assert raised.value is error  # unchanged, not wrapped
    assert calls == [1]  # not retried
    assert ledger_count(points.shared) == 0  # rolled back
    assert points.shared.database.stats.retries == 0

    assert redeem(points.shared, 5, "e2") is True
    assert balance(points.shared) == 95
    assert ledger_count(points.shared) == 1


def test_sql_errors_are_the_plugins_and_not_retried(points: PluginStore) -> None:
    ledger = points.shared.table("ledger")
    calls = []

    def duplicate(conn: Connection) -> None:
        calls.append(1)
        conn.execute(ledger.insert().values(event_id="e1", account="a", points=1))
        conn.execute(ledger.insert().values(event_id="e1", account="a", points=1))

    with pytest.raises(sa.exc.IntegrityError):
        points.shared.transaction(duplicate)
    assert calls == [1]
    assert ledger_count(points.shared) == 0


def test_insert_or_ignore_writes_an_event_once(points: PluginStore) -> None:
    ledger = points.shared.table("ledger")
    insert = points.shared.insert_or_ignore(ledger)
    for _ in range(3):
        points.shared.transaction(lambda c: c.execute(insert.values(event_id="e1", account="a", points=7)))
    assert ledger_count(points.shared) == 1


def test_a_read_only_transaction_cannot_write(points: PluginStore) -> None:
    ledger = points.shared.table("ledger")
    with pytest.raises(sa.exc.DBAPIError) as raised:
        points.shared.transaction(
            lambda c: c.execute(ledger.insert().values(event_id="e1", account="a", points=1)), readonly=True
        )
    assert not isinstance(raised.value, ReaderdError)
    assert ledger_count(points.shared) == 0
    # and the pooled connection is writable again afterwards
    assert redeem(points.shared, 1, "e2") is True


def hold_lock(backend: Backend, stack: ExitStack, table: str) -> None:
    stack.enter_context(backend.write_lock(table))


def test_a_lock_is_waited_out_by_retrying(backend: Backend, points: PluginStore) -> None:
    """Another connection holds the write lock; the first attempt times out, the lock is released
    during the backoff, and the retry commits."""
    db = points.shared.database
    holder = ExitStack()
    hold_lock(backend, holder, "points__accounts")
    sleeps: list[float] = []

    def backoff(delay: float) -> None:
        sleeps.append(delay)
        holder.close()  # the other transaction commits while we wait

    db._sleep = backoff
    try:
        assert redeem(points.shared, 10, "e1") is True
    finally:
        holder.close()
    assert len(sleeps) == 1
    assert db.stats.retries == 1
    assert balance(points.shared) == 90


def test_retries_run_out_as_store_busy(backend: Backend) -> None:
    store = backend.open(retries=2)
    points = points_of(store)
    db = points.shared.database
    sleeps: list[float] = []
    db._sleep = sleeps.append
    with ExitStack() as holder:
        hold_lock(backend, holder, "points__accounts")
        with pytest.raises(StoreBusyError, match=r"shared store busy: gave up after 3 attempt\(s\)"):
            redeem(points.shared, 10, "e1")
        assert len(sleeps) == 2
        assert all(0 <= delay <= FAST.retry_backoff_max for delay in sleeps)
        assert (db.stats.retries, db.stats.busy) == (2, 1)

        # begin() is one attempt: busy at once, no backoff
        table = points.shared.table("accounts")
        with pytest.raises(StoreBusyError), points.shared.begin() as conn:
            conn.execute(table.update().values(balance=0))
        assert len(sleeps) == 2
    assert balance(points.shared) == 100
    assert ledger_count(points.shared) == 0


def test_backoff_grows_and_stays_bounded(store: Store) -> None:
    db = store.shared
    db.config = replace(db.config, retry_backoff=0.01, retry_backoff_max=0.05)
    ceilings = [0.01, 0.02, 0.04, 0.05, 0.05]
    for attempt, ceiling in enumerate(ceilings, start=1):
        delays = [db._backoff(attempt) for _ in range(50)]
        assert all(0 <= delay <= ceiling for delay in delays)


def test_concurrent_redemptions_never_overspend(backend: Backend) -> None:
    """Two kiosks (two stores, several connections each) redeem 10 points at a time from one balance of
    100 until it is refused: exactly 10 succeed, the balance ends at 0 and the ledger has 10 rows."""
    kiosks = [points_of(backend.open()), backend.open().for_plugin("points")]
    kiosks[1].shared.migrate([accounts])
    threads = 6
    per_thread = 5  # 30 attempts for 10 redemptions

    def kiosk_thread(i: int) -> int:
        db = kiosks[i % 2].shared
        return sum(redeem(db, 10, f"e{i}-{n}", pause=0.002) for n in range(per_thread))

    successes = run_threads(threads, kiosk_thread)
    assert sum(successes) == 10  # type: ignore[arg-type]
    assert balance(kiosks[0].shared) == 0
    assert ledger_count(kiosks[1].shared) == 10


@pytest.fixture
def pg_points(postgres_url: str, tmp_path: object) -> Iterator[PluginStore]:
    store = Store.open(replace(FAST, shared_url=postgres_url, pool_size=4), str(tmp_path))
    try:
        yield points_of(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_serialization_failure_is_retried_on_postgresql(pg_points: PluginStore) -> None:
    """Two SERIALIZABLE transactions both read the balance before either writes: PostgreSQL fails one
    (40001) or makes it wait past lock_timeout (55P03); the store runs it again and both land."""
    barrier = threading.Barrier(2, timeout=30)
    first_attempts: set[int] = set()
    table = pg_points.shared.table("accounts")

    def add_one(i: int) -> None:
        def fn(conn: Connection) -> None:
            current = conn.execute(sa.select(table.c.balance)).scalar_one()
            if i not in first_attempts:  # only the first attempt waits for the other reader
                first_attempts.add(i)
                barrier.wait()
            conn.execute(table.update().values(balance=current + 1))

        pg_points.shared.transaction(fn)

    run_threads(2, add_one)
    assert balance(pg_points.shared) == 102  # no lost update
    assert pg_points.shared.database.stats.retries >= 1
