"""The store tests run every test function on SQLite and on PostgreSQL (a private cluster, marked
``postgres``): the ``backend`` fixture is parametrized over both."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from readerd.config import StoreConfig
from readerd.plugin.store import Store
from tests.support.postgres import PrivatePostgres

# Small waits so lock tests finish in milliseconds; many retries so contention tests never run out.
FAST = StoreConfig(busy_timeout=0.05, retries=100, retry_backoff=0.001, retry_backoff_max=0.01, pool_size=4)


@dataclass
class Backend:
    """One way of running the store: ``sqlite`` (shared = the local file) or ``postgresql``."""

    name: str
    state_dir: Path
    config: StoreConfig
    cluster: PrivatePostgres | None = None
    stores: list[Store] = field(default_factory=list)

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def open(self, **overrides: Any) -> Store:
        """Another kiosk (or a restart) on the same databases; closed when the test ends."""
        store = Store.open(replace(self.config, **overrides), self.state_dir)
        self.stores.append(store)
        return store

    @contextmanager
    def write_lock(self, table: str) -> Iterator[None]:
        """Another connection holding a lock that stops writes to ``table`` of the shared database
        until the block ends: ``BEGIN IMMEDIATE`` on SQLite, ``LOCK TABLE`` on PostgreSQL."""
        if self.cluster is not None:
            database = self.config.shared_url.rsplit("/", 1)[1]
            with self.cluster.connect(database) as conn, conn.transaction():
                conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
                yield
            return
        holder = sqlite3.connect(self.state_dir / "store.db", isolation_level=None, check_same_thread=False)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
            holder.execute("COMMIT")
        finally:
            holder.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    config = FAST
    cluster = None
    if request.param == "postgresql":
        config = replace(FAST, shared_url=request.getfixturevalue("postgres_url"), pool_size=20)
        cluster = request.getfixturevalue("postgres_cluster")
    backend = Backend(request.param, tmp_path, config, cluster)
    yield backend
    for store in backend.stores:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def run_threads(n: int, target: Callable[[int], object], timeout: float = 60) -> list[object]:
    """Run ``target(i)`` on ``n`` threads; their results in order (an exception is re-raised here)."""
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), name=f"store-test-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results
