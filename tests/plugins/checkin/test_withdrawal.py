"""A member's withdrawal in the check-in plugin, on a real store (no daemon), the kiosk's SQLite alone and
with the ward's PostgreSQL as the shared store: their check-ins keep counting under ``withdrawn:<random>``,
their FeliCa check-in cards are gone, their offline rows are re-keyed before they sync, a withdrawal the
shared store missed is finished later, and a second withdrawal changes nothing.

Cost: about 3 s (most of it making the PostgreSQL databases)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from plugins.checkin import CheckinPlugin
from plugins.checkin.service import CheckinService
from plugins.common import persons_of_withdrawn
from readerd.config import StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.store import Store

NOW = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)  # 18:00 JST
WITHDRAWN = {"member_id": "M1", "mykey_id": "K1", "pseudonym": "p-1"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """The kiosk's SQLite alone, or with the ward's PostgreSQL as the shared store."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    with Store.open(StoreConfig(shared_url=url), tmp_path, clock=lambda: NOW) as s:
        yield s


@pytest.fixture
def service(store: Store) -> CheckinService:
    service = CheckinService(store.for_plugin("checkin"), "kiosk-1")
    service.define_event(
        {
            "event_id": "bon-odori",
            "name": "盆踊り大会",
            "place": "中央公園",
            "starts_at": "2026-08-15T17:00:00+09:00",
            "ends_at": "2026-08-15T21:00:00+09:00",
            "capacity": 3,
            "idempotency_key": "e1",
        }
    )
    return service


def rows(service: CheckinService, table: sa.Table, *, local: bool = False) -> list[dict[str, Any]]:
    db = service.store.local if local else service.store.shared
    return db.transaction(
        lambda conn: [dict(r._mapping) for r in conn.execute(sa.select(table))], readonly=True
    )


def persons(service: CheckinService) -> tuple[list[str], list[str]]:
    shared = sorted(r["person"] for r in rows(service, service.t.checkins))
    local = sorted(r["person"] for r in rows(service, service.t.outbox, local=True))
    return shared, local


def test_the_person_key_helper() -> None:
    assert persons_of_withdrawn(WITHDRAWN) == ["member:M1", "mykey:K1"]
    assert persons_of_withdrawn({"member_id": "M1", "pseudonym": "p"}) == ["member:M1"]
    assert persons_of_withdrawn({"pseudonym": "p"}) == []


def test_check_ins_stay_counted_without_the_person(service: CheckinService) -> None:
    assert service.check_in("bon-odori", "mykey:K1", "jpki", "R", tap="t1")["status"] == "accepted"
    assert service.check_in("bon-odori", "member:OTHER", "jpki", "R", tap="t2")["status"] == "accepted"
    service.register_card("felica-1", "member:M1", {"member_id": "M1", "idempotency_key": "c1"})
    service.register_card("felica-2", "member:OTHER", {"member_id": "OTHER", "idempotency_key": "c2"})
    before = service.status("bon-odori")

    first = service.withdraw(persons_of_withdrawn(WITHDRAWN))
    shared, local = persons(service)
    after = service.status("bon-odori")
    second = service.withdraw(persons_of_withdrawn(WITHDRAWN))

    assert first == {"outbox": 1, "card_cache": 1, "checkins": 1, "cards": 1, "shared_pending": False}
    assert second == {"outbox": 0, "card_cache": 0, "checkins": 0, "cards": 0, "shared_pending": False}
    assert after["checked_in"] == before["checked_in"] == 2  # the capacity and attendance still right
    gone = shared[1]
    assert shared == ["member:OTHER", gone]
    assert gone.startswith("withdrawn:")
    assert local == shared  # the kiosk's record re-keyed the same way
    assert service.person_for_card("felica-1") is None  # the card leads nowhere
    assert service.person_for_card("felica-2") == "member:OTHER"
    assert [r["person"] for r in rows(service, service.t.card_cache, local=True)] == ["member:OTHER"]
    requests = " ".join(r["result"] for r in rows(service, service.requests))
    assert "M1" not in requests
    assert "K1" not in requests
    assert service.withdrawals_pending() == 0
    # one check-in per person per event still holds; the freed person key starts afresh
    assert service.check_in("bon-odori", "mykey:K1", "jpki", "R", tap="t3")["status"] == "accepted"


def test_offline_rows_are_rekeyed_before_they_sync(service: CheckinService) -> None:
    service._down_until = float("inf")  # the shared store taken for down: a tap admits offline
    offline = service.check_in("bon-odori", "member:M1", "jpki", "R", tap="t1")
    service._down_until = 0.0
    assert offline == {**offline, "status": "accepted", "offline": True}

    done = service.withdraw(["member:M1"])
    synced = service.sync()
    shared, local = persons(service)

    assert done["outbox"] == 1
    assert done["checkins"] == 0
    assert synced["synced"] == 1
    assert len(shared) == 1
    assert shared == local
    assert shared[0].startswith("withdrawn:")


def test_a_withdrawal_waits_for_the_shared_store(
    service: CheckinService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.check_in("bon-odori", "member:M1", "jpki", "R", tap="t1")
    real = service._shared_tx

    def down(*_args: object, **_kwargs: object) -> object:
        raise StoreUnavailableError("down")

    monkeypatch.setattr(service, "_shared_tx", down)
    waiting = service.withdraw(["member:M1"])
    replayed = service.withdraw(["member:M1"])  # a replay while it waits: the same random key
    queued = service.withdrawals_pending()
    monkeypatch.setattr(service, "_shared_tx", real)
    retried = service.retry_withdrawals()
    shared, local = persons(service)

    assert waiting["shared_pending"]
    assert replayed["shared_pending"]
    assert (waiting["outbox"], replayed["outbox"], queued) == (1, 0, 1)
    assert retried == 1
    assert service.withdrawals_pending() == 0
    assert shared == local
    assert shared[0].startswith("withdrawn:")


def test_the_hook_logs_counts_and_publishes_nothing(store: Store) -> None:
    published: list[object] = []
    context = PluginContext(
        name="checkin",
        config={"event": "bon-odori", "sync_interval": 3600},
        kiosk="kiosk-1",
        store=store.for_plugin("checkin"),
        log=structlog.get_logger("test"),
        _publish=lambda *args: published.append(args),
    )
    plugin = CheckinPlugin()
    plugin.readerd_startup(context)
    try:
        event = PluginEvent("member.withdrawn", 9, "id", "ts", "kiosk-1", "R", dict(WITHDRAWN))
        with structlog.testing.capture_logs() as logs:
            plugin.readerd_member_withdrawn(event, context)
            plugin.readerd_member_withdrawn(event, context)  # replayed: harmless
    finally:
        plugin.readerd_shutdown()
    said = [entry for entry in logs if entry["event"] == "member withdrawn: records anonymised"]
    assert published == []
    assert len(said) == 2
    assert said[0]["checkins"] == 0
    assert "M1" not in str(said)
