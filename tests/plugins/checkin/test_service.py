"""The check-in rules on a real SQLite store, with the ward's clock fixed (no daemon)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from plugins.checkin.service import CheckinService
from readerd.config import StoreConfig
from readerd.plugin import Refusal
from readerd.plugin.store import Store

JST_EVENING = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)  # 18:00 JST


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(JST_EVENING)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(StoreConfig(), tmp_path, clock=clock) as s:
        yield s


@pytest.fixture
def service(store: Store) -> CheckinService:
    return CheckinService(store.for_plugin("checkin"), "kiosk-1")


def define(service: CheckinService, key: str = "k1", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "event_id": "bon-odori",
        "name": "盆踊り大会",
        "place": "中央公園",
        "starts_at": "2026-08-15T17:00:00+09:00",
        "ends_at": "2026-08-15T21:00:00+09:00",
        "capacity": 2,
        "points": 50,
        "idempotency_key": key,
        **overrides,
    }
    return service.define_event(args)


def test_one_check_in_per_person_and_the_capacity(service: CheckinService) -> None:
    define(service)
    first = service.check_in("bon-odori", "member:AAAA", "jpki", "R1")
    again = service.check_in("bon-odori", "member:AAAA", "jpki", "R2")
    second = service.check_in("bon-odori", "member:BBBB", "felica", "R1")
    third = service.check_in("bon-odori", "member:CCCC", "jpki", "R1")
    assert first["status"] == "accepted"
    assert first["count"] == 1
    assert first["points"] == 50
    assert again["status"] == "already_checked_in"
    assert second["count"] == 2
    assert third == {"event_id": "bon-odori", "capacity": 2, "status": "full", "count": 2}
    attendance = service.attendance("bon-odori")
    assert attendance["count"] == 2
    assert [r["person"] for r in attendance["rows"]] == ["member:AAAA", "member:BBBB"]


def test_the_same_tap_handed_again_is_the_same_check_in(service: CheckinService, store: Store) -> None:
    """A replay after a crash: the first handling committed, its result never reached the bus. The same
    tap is ``accepted`` again with the same ``checkin_id`` (points are credited once by that id), even
    at capacity and when the crash came between the shared commit and the kiosk's outbox row; another
    tap of the same person is still ``already_checked_in``."""
    define(service, capacity=1)
    first = service.check_in("bon-odori", "member:AAAA", "jpki", "R1", tap="tap-1")
    replayed = service.check_in("bon-odori", "member:AAAA", "jpki", "R1", tap="tap-1")
    store.local.transaction(lambda conn: conn.execute(service.t.outbox.delete()))
    after_lost_outbox = service.check_in("bon-odori", "member:AAAA", "jpki", "R1", tap="tap-1")
    other_tap = service.check_in("bon-odori", "member:AAAA", "jpki", "R1", tap="tap-2")
    assert first["status"] == replayed["status"] == after_lost_outbox["status"] == "accepted"
    assert first["checkin_id"] == replayed["checkin_id"] == after_lost_outbox["checkin_id"]
    assert other_tap["status"] == "already_checked_in"
    assert service.attendance("bon-odori")["count"] == 1


def test_the_time_window_in_jst(service: CheckinService, clock: Clock) -> None:
    define(service)
    clock.now = datetime(2026, 8, 15, 7, 59, 59, tzinfo=UTC)  # 16:59:59 JST
    early = service.check_in("bon-odori", "member:AAAA", "jpki", "R1")
    clock.now = datetime(2026, 8, 15, 8, 0, tzinfo=UTC)  # 17:00 JST: open
    on_time = service.check_in("bon-odori", "member:AAAA", "jpki", "R1")
    clock.now = datetime(2026, 8, 15, 12, 0, tzinfo=UTC)  # 21:00 JST: closed
    late = service.check_in("bon-odori", "member:BBBB", "jpki", "R1")
    assert early["status"] == "not_open"
    assert on_time["status"] == "accepted"
    assert late["status"] == "closed"
    assert service.check_in("no-such-event", "member:AAAA", "jpki", "R1")["status"] == "unknown_event"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"starts_at": "2026-08-15T17:00:00"}, "offset"),
        ({"ends_at": "2026-08-15T16:00:00+09:00"}, "after"),
        ({"capacity": 0}, "capacity"),
        ({"points": -1}, "points"),
        ({"event_id": "Bon Odori"}, "event_id"),
        ({"name": ""}, "name"),
    ],
)
def test_malformed_events_are_refused(
    service: CheckinService, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(Refusal) as refused:
        define(service, **overrides)
    assert refused.value.code == "bad_request"
    assert message in str(refused.value)


def test_define_event_is_idempotent(service: CheckinService) -> None:
    first = define(service, "same")
    again = define(service, "same")
    changed = define(service, "other", capacity=100)
    with pytest.raises(Refusal) as conflict:
        define(service, "same", capacity=5)
    assert first == {"event": again["event"]}
    assert again["replayed"] is True
    assert changed["event"]["capacity"] == 100
    assert conflict.value.code == "idempotency_conflict"


def test_felica_cards_are_registered_once(service: CheckinService) -> None:
    assert service.person_for_card("CARD1") is None
    done = service.register_card("CARD1", "member:AAAA", {"idempotency_key": "r1"})
    again = service.register_card("CARD1", "member:AAAA", {"idempotency_key": "r1"})
    assert done == {"registered": True, "person": "member:AAAA"}
    assert again["replayed"] is True
    assert service.person_for_card("CARD1") == "member:AAAA"


def test_status_reports_the_window_and_the_count(service: CheckinService, clock: Clock) -> None:
    define(service)
    service.check_in("bon-odori", "member:AAAA", "jpki", "R1")
    status = service.status("bon-odori")
    clock.now += timedelta(hours=4)
    closed = service.status("bon-odori")
    assert status["open"] is True
    assert status["checked_in"] == 1
    assert status["pending_sync"] == 0
    assert closed["open"] is False
    with pytest.raises(Refusal):
        service.status("nope")
