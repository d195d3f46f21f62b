"""What the bath-house tests share: the ward's clock, kiosks on one ward database, a real outage of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from plugins.bathhouse.service import BathhouseService, Rules
from readerd.config import StoreConfig
from readerd.ops.database import sqlite_database
from readerd.plugin.business_time import TOKYO
from readerd.plugin.store import PluginStore, Store

FAST = StoreConfig(busy_timeout=0.1, retries=3, retry_backoff=0.001, retry_backoff_max=0.01, pool_size=2)
RULES = Rules(min_age=65, monthly_cap=4)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def jst(y: int, m: int, d: int, hour: int = 10) -> datetime:
    """``hour`` o'clock JST on that day."""
    return datetime(y, m, d, hour, tzinfo=TOKYO)


def register(bath: BathhouseService, number: str, birth: str, card: str) -> None:
    bath.register(
        card,
        {"member_number": number, "birth_date": birth, "ward": 13101, "idempotency_key": f"reg-{number}"},
    )


def statuses(results: list[dict[str, object]]) -> list[object]:
    return [r["status"] for r in results]


def shared_visits(bath: BathhouseService) -> list[tuple[str, str, str]]:
    """Every visit row in the ward's store: ``(id, bath_house, business_date)``, sorted."""
    v = bath.t.visits.c
    return sorted(
        bath.db.transaction(
            lambda c: [tuple(r) for r in c.execute(sa.select(v.id, v.bath_house, v.business_date))],
            readonly=True,
        )
    )


class Ward:
    """Kiosks on SQLite: each its own local file, all one ``ward.db`` as the shared store (as PostgreSQL
    would be). :meth:`outage` makes ``ward.db`` impossible to open, for real: the file is moved away and
    a directory takes its name, so every kiosk's next connection fails (``SQLITE_CANTOPEN``)."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.path = root / "ward.db"
        self.stores: list[Store] = []

    def store(self, name: str) -> PluginStore:
        """Kiosk ``name``'s store for the plugin (its own local file, the ward's shared one)."""
        (self.root / name).mkdir()
        local = sqlite_database(self.root / name / "store.db", "local", FAST)
        shared = sqlite_database(self.path, "shared", FAST)
        store = Store(local, shared, clock=self.clock)
        self.stores.append(store)
        return store.for_plugin("bathhouse")

    def kiosk(self, name: str, rules: Rules = RULES) -> BathhouseService:
        return BathhouseService(self.store(name), rules, retry_after=0.0)

    @contextmanager
    def outage(self) -> Iterator[None]:
        for store in self.stores:
            store.shared.engine.dispose()  # no pooled connection keeps the file open
        aside = self.root / "ward-away"
        aside.mkdir()
        for suffix in ("", "-wal", "-shm"):
            if (self.root / f"ward.db{suffix}").exists():
                (self.root / f"ward.db{suffix}").rename(aside / f"ward.db{suffix}")
        self.path.mkdir()
        try:
            yield
        finally:
            self.path.rmdir()
            for moved in aside.iterdir():
                moved.rename(self.root / moved.name)
            shutil.rmtree(aside)

    def close(self) -> None:
        for store in self.stores:
            store.close()
