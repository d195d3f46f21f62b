"""Check-in keeps working while the ward's PostgreSQL is down, and syncs without duplicates when it is back.

Two kiosks share one database (the private cluster); the server is stopped, both admit people on their own
(one person at both), the server comes back, each kiosk syncs: every person is in ``checkins`` once, the
second kiosk's row for the person seen twice is marked ``duplicate``, and a sync run again changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plugins.checkin.service import CheckinService
from readerd.config import StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.plugin.store import Store
from tests.support.postgres import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

NOW = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)  # 18:00 JST
CONFIG = StoreConfig(connect_timeout=2, retries=2, retry_backoff=0.001, retry_backoff_max=0.01)


@pytest.fixture
def kiosks(tmp_path: Path, postgres_url: str) -> Iterator[tuple[CheckinService, CheckinService]]:
    stores = []
    services = []
    for name in ("kiosk-a", "kiosk-b"):
        (tmp_path / name).mkdir()
        store = Store.open(replace(CONFIG, shared_url=postgres_url), tmp_path / name, clock=lambda: NOW)
        stores.append(store)
        services.append(CheckinService(store.for_plugin("checkin"), name, retry_after=0.0))
    yield services[0], services[1]
    for store in stores:
        store.close()


def test_offline_check_ins_sync_once(
    kiosks: tuple[CheckinService, CheckinService], postgres_cluster: PrivatePostgres
) -> None:
    a, b = kiosks
    a.define_event(
        {
            "event_id": "fest",
            "name": "まつり",
            "place": "公園",
            "starts_at": "2026-08-15T17:00:00+09:00",
            "ends_at": "2026-08-15T21:00:00+09:00",
            "idempotency_key": "e",
        }
    )
    b.event("fest")  # kiosk b has seen the event while online (its cache)
    assert a.check_in("fest", "member:ONLINE", "jpki", "R")["status"] == "accepted"

    postgres_cluster.stop()
    try:
        offline = [
            a.check_in("fest", "member:AAAA", "jpki", "R"),
            a.check_in("fest", "member:AAAA", "jpki", "R"),  # the same person again at the same kiosk
            b.check_in("fest", "member:AAAA", "felica", "R"),  # ... and at the other kiosk
            b.check_in("fest", "member:BBBB", "jpki", "R"),
            a.check_in("fest", "member:ONLINE", "jpki", "R"),  # checked in before the outage
        ]
        with pytest.raises(StoreUnavailableError):
            a.sync()
        pending = (a.pending(), b.pending())
    finally:
        postgres_cluster.start()

    first, second = a.sync(), b.sync()
    again = a.sync(), b.sync()
    attendance = a.attendance("fest")
    assert [r["status"] for r in offline] == [
        "accepted",
        "already_checked_in",
        "accepted",
        "accepted",
        "already_checked_in",
    ]
    assert all(r.get("offline") for r in offline[:1] + offline[2:4])
    assert pending == (1, 2)
    assert first == {"synced": 1, "duplicates": 0, "pending": 0}
    assert second == {"synced": 1, "duplicates": 1, "pending": 0}
    assert again == ({"synced": 0, "duplicates": 0, "pending": 0},) * 2
    assert sorted(r["person"] for r in attendance["rows"]) == ["member:AAAA", "member:BBBB", "member:ONLINE"]
