"""A bath house whose link to the ward's store is down decides from what it saw online: the last known count
for the member plus its own offline visits stays below the cap; cards it never saw are refused; the outbox
reaches the ward's store exactly once when the link is back. Kiosks on SQLite files, the ward's file made
impossible to open for real (support.Ward.outage); the ward's clock fixed, JST.

Cost: about 2 s (12 tests, SQLite only; each write is fsynced).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.bathhouse.service import BathhouseService
from readerd.errors import StoreBusyError, StoreUnavailableError
from readerd.plugin import JsonObject
from tests.plugins.bathhouse.support import Clock, Ward, jst, register, shared_visits, statuses


@pytest.fixture
def clock() -> Clock:
    return Clock(jst(2026, 6, 1))


@pytest.fixture
def ward(tmp_path: Path, clock: Clock) -> Iterator[Ward]:
    ward = Ward(tmp_path, clock)
    yield ward
    ward.close()


@pytest.fixture
def matsu(ward: Ward) -> BathhouseService:
    """The kiosk at matsu-no-yu (it also registers the members: one ward database)."""
    return ward.kiosk("matsu")


def tap(
    bath: BathhouseService,
    clock: Clock,
    day: int,
    *,
    house: str = "matsu",
    card: str = "CARD1",
    hour: int = 10,
) -> JsonObject:
    """A tap at ``house`` at ``hour`` o'clock JST on ``day`` June 2026."""
    clock.now = jst(2026, 6, day, hour)
    return bath.visit(house, card=card, via="felica")


def test_offline_admits_within_the_cap_then_refuses_at_it(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    """One house offline, the member's month known to it: the cap holds exactly, the ward's count too."""
    register(matsu, "M1", "1950-01-01", "CARD1")
    online = [tap(matsu, clock, 1), tap(matsu, clock, 2)]
    with ward.outage():
        offline = [tap(matsu, clock, 3), tap(matsu, clock, 3), tap(matsu, clock, 4), tap(matsu, clock, 5)]
        with pytest.raises(StoreUnavailableError):
            matsu.sync()
        pending = matsu.pending()
    take = ward.kiosk("take")
    matsu.sync()
    elsewhere = tap(take, clock, 6, house="take")
    assert statuses(online) == ["accepted", "accepted"]
    assert statuses(offline) == ["accepted", "already_visited_today", "accepted", "monthly_cap_reached"]
    assert [r.get("offline") for r in offline] == [True] * 4
    assert [r["visits_this_month"] for r in offline] == [3, 3, 4, 4]
    assert pending == 2
    assert elsewhere["status"] == "monthly_cap_reached"
    assert elsewhere["visits_this_month"] == 4
    assert "offline" not in elsewhere
    assert matsu.report("2026-06")["total_visits"] == 4
    assert matsu.report("2026-06")["total_over_cap"] == 0


def test_offline_refusal_uses_the_count_read_at_a_refusal(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    """A refusal read online also refreshes the kiosk's count: without it, matsu would know 1 visit and
    admit three more offline."""
    take = ward.kiosk("take")
    register(matsu, "M1", "1950-01-01", "CARD1")
    first = tap(matsu, clock, 1)
    elsewhere = [tap(take, clock, d, house="take") for d in (2, 3, 4)]
    refused_online = tap(matsu, clock, 5)
    with ward.outage():
        refused_offline = tap(matsu, clock, 6)
    assert first["status"] == "accepted"
    assert statuses(elsewhere) == ["accepted"] * 3
    assert refused_online["status"] == "monthly_cap_reached"
    assert refused_offline == {
        "bath_house": "matsu",
        "monthly_cap": 4,
        "status": "monthly_cap_reached",
        "visits_this_month": 4,
        "offline": True,
    }
    assert matsu.pending() == 0


def test_last_known_count_includes_other_houses(ward: Ward, matsu: BathhouseService, clock: Clock) -> None:
    take = ward.kiosk("take")
    register(matsu, "M1", "1950-01-01", "CARD1")
    before = [tap(take, clock, 1, house="take"), tap(take, clock, 2, house="take"), tap(matsu, clock, 3)]
    with ward.outage():
        offline = [tap(matsu, clock, 4), tap(matsu, clock, 5)]
    assert statuses(before) == ["accepted"] * 3
    assert statuses(offline) == ["accepted", "monthly_cap_reached"]
    assert offline[1]["visits_this_month"] == 4


def test_cards_never_seen_online_are_not_admitted_offline(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    """Unknown here is refused as ``store_unavailable`` (the kiosk cannot check), never admitted; what the
    kiosk did see keeps its answer: revoked, not eligible, a linked My Number Card."""
    counter = ward.kiosk("counter")
    register(counter, "M1", "1950-01-01", "OLD")
    register(counter, "M2", "1950-01-01", "NEVER")  # registered, but never tapped at matsu
    register(counter, "M3", "1970-01-01", "YOUNG")
    counter.link("member:ABCD", {"member_number": "M1", "idempotency_key": "l1"})
    seen = [tap(matsu, clock, 1, card="OLD"), tap(matsu, clock, 1, card="YOUNG")]
    seen.append(matsu.visit("matsu", person="member:ABCD", via="jpki"))
    counter.reissue("NEW", {"member_number": "M1", "reason": "紛失", "idempotency_key": "r1"})
    seen.append(tap(matsu, clock, 2, card="NEW"))  # online: matsu learns OLD is revoked
    with ward.outage():
        offline = {
            card: tap(matsu, clock, 3, card=card) for card in ("NEVER", "NOBODY", "OLD", "YOUNG", "NEW")
        }
        clock.now = jst(2026, 6, 4)
        by_link = matsu.visit("matsu", person="member:ABCD", via="jpki")
        unlinked = matsu.visit("matsu", person="member:ZZZZ", via="jpki")
    assert statuses(seen) == ["accepted", "not_eligible", "already_visited_today", "accepted"]
    assert {card: r["status"] for card, r in offline.items()} == {
        "NEVER": "store_unavailable",
        "NOBODY": "store_unavailable",
        "OLD": "revoked_card",
        "YOUNG": "not_eligible",
        "NEW": "accepted",
    }
    assert all(r["offline"] is True for r in offline.values())
    assert "cannot check the member now" in str(offline["NEVER"]["message"])
    assert (by_link["status"], by_link["visits_this_month"], by_link["offline"]) == ("accepted", 4, True)
    assert unlinked["status"] == "store_unavailable"
    assert matsu.pending() == 2


def test_sync_after_reconnect_exactly_once(ward: Ward, matsu: BathhouseService, clock: Clock) -> None:
    register(matsu, "M1", "1950-01-01", "CARD1")
    register(matsu, "M2", "1950-01-01", "CARD2")
    tap(matsu, clock, 1)
    tap(matsu, clock, 1, card="CARD2")
    with ward.outage():
        admitted = [tap(matsu, clock, 2), tap(matsu, clock, 2, card="CARD2"), tap(matsu, clock, 3)]
    first = matsu.sync()
    second = matsu.sync()
    rows = shared_visits(matsu)
    # A push that committed but whose local mark was lost (a crash between the two): pushed again, ignored.
    o = matsu.book.outbox.c
    matsu.store.local.transaction(lambda c: c.execute(matsu.book.outbox.update().values(synced=0)))
    lost_mark = matsu.sync()
    assert statuses(admitted) == ["accepted"] * 3
    assert first == {"synced": 3, "already_there": 0, "pending": 0}
    assert second == {"synced": 0, "already_there": 0, "pending": 0}
    assert len(rows) == 5
    assert len({row[0] for row in rows}) == 5
    assert lost_mark == {"synced": 0, "already_there": 3, "pending": 0}
    assert shared_visits(matsu) == rows
    assert matsu.pending() == 0
    assert (
        matsu.store.local.transaction(
            lambda c: c.execute(sa.select(sa.func.count()).where(o.synced == 1)).scalar_one(), readonly=True
        )
        == 3
    )


def test_the_next_tap_syncs_first_and_counts_the_offline_visits(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    register(matsu, "M1", "1950-01-01", "CARD1")
    tap(matsu, clock, 1)
    tap(matsu, clock, 2)
    with ward.outage():
        tap(matsu, clock, 3)
        tap(matsu, clock, 4)
    after = tap(matsu, clock, 5)
    assert matsu.pending() == 0
    assert after["status"] == "monthly_cap_reached"
    assert after["visits_this_month"] == 4
    assert "offline" not in after
    assert len(shared_visits(matsu)) == 4


def test_an_offline_visit_counts_once_across_two_outages(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    """Once an online read has seen a synced offline visit in the ward's count, it is no longer added as
    an offline visit of its own: the member gets the fourth visit in the second outage, not a refusal."""
    register(matsu, "M1", "1950-01-01", "CARD1")
    taps = [tap(matsu, clock, 1)]
    with ward.outage():
        taps.append(tap(matsu, clock, 2))
    taps.append(tap(matsu, clock, 3))  # syncs day 2, then counts it
    with ward.outage():
        taps += [tap(matsu, clock, 4), tap(matsu, clock, 5)]
    assert statuses(taps) == ["accepted", "accepted", "accepted", "accepted", "monthly_cap_reached"]
    assert [r["visits_this_month"] for r in taps] == [1, 2, 3, 4, 4]
    assert [bool(r.get("offline")) for r in taps] == [False, True, False, True, True]


def test_an_online_decision_counts_visits_not_pushed_yet(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    """While the timer holds the outbox (pushing), a tap does not wait for it: the decision counts the
    kiosk's unsynced visits itself, so the cap still holds."""
    register(matsu, "M1", "1950-01-01", "CARD1")
    tap(matsu, clock, 1)
    tap(matsu, clock, 2)
    with ward.outage():
        tap(matsu, clock, 3)
        tap(matsu, clock, 4)
    with matsu._sync_lock:  # the timer's push under way
        online = [tap(matsu, clock, 4), tap(matsu, clock, 5)]
        pending = matsu.pending()
    assert statuses(online) == ["already_visited_today", "monthly_cap_reached"]
    assert [r["visits_this_month"] for r in online] == [4, 4]
    assert pending == 2
    assert len(shared_visits(matsu)) == 2


def test_month_boundary_is_jst(ward: Ward, matsu: BathhouseService, clock: Clock) -> None:
    """The last known count belongs to its JST month: at 23:00 JST on 30 June it still refuses; at 00:00
    JST on 1 July (15:00 UTC on 30 June) the member's July starts at 0, and the visit is July's."""
    register(matsu, "M1", "1950-01-01", "CARD1")
    june = [tap(matsu, clock, d) for d in (1, 2, 3, 4)]
    with ward.outage():
        clock.now = jst(2026, 6, 30, 23)
        last_hour_of_june = matsu.visit("matsu", card="CARD1", via="felica")
        clock.now = jst(2026, 7, 1, 0)
        first_minute_of_july = matsu.visit("matsu", card="CARD1", via="felica")
    matsu.sync()
    assert statuses(june) == ["accepted"] * 4
    assert last_hour_of_june["status"] == "monthly_cap_reached"
    assert last_hour_of_june["offline"] is True
    assert first_minute_of_july["status"] == "accepted"
    assert first_minute_of_july["visits_this_month"] == 1
    assert matsu.report("2026-06")["total_visits"] == 4
    assert matsu.report("2026-07")["bath_houses"] == [
        {"bath_house": "matsu", "visits": 1, "members": 1, "over_cap": 0}
    ]


def test_several_houses_offline_each_admit_at_most_cap_minus_known(
    ward: Ward, matsu: BathhouseService, clock: Clock
) -> None:
    """The documented bound: matsu knew 3 visits, take knew 2; offline, matsu admits 1 and take 2, so the
    month ends at 3 + 1 + 2 = 6 visits, 2 over the cap of 4, and the report says which house's were."""
    take = ward.kiosk("take")
    register(matsu, "M1", "1950-01-01", "CARD1")
    online = [tap(matsu, clock, 1), tap(take, clock, 2, house="take"), tap(matsu, clock, 2)]
    with ward.outage():
        at_matsu = [tap(matsu, clock, d) for d in (3, 4, 5)]
        at_take = [tap(take, clock, d, house="take", hour=11) for d in (3, 4, 5)]
    synced = matsu.sync(), take.sync()
    again = matsu.sync(), take.sync()
    after = tap(take, clock, 6, house="take")
    report = matsu.report("2026-06")
    assert statuses(online) == ["accepted"] * 3
    assert statuses(at_matsu) == ["accepted", "monthly_cap_reached", "monthly_cap_reached"]
    assert statuses(at_take) == ["accepted", "accepted", "monthly_cap_reached"]
    assert [s["synced"] for s in synced] == [1, 2]
    assert [s["synced"] for s in again] == [0, 0]
    assert (after["status"], after["visits_this_month"]) == ("monthly_cap_reached", 6)
    assert report["total_visits"] == 6
    assert report["total_over_cap"] == 2
    assert report["bath_houses"] == [
        {"bath_house": "matsu", "visits": 3, "members": 1, "over_cap": 0},
        {"bath_house": "take", "visits": 3, "members": 1, "over_cap": 2},
    ]
    assert matsu.report("2026-06", "take")["bath_houses"][0]["over_cap"] == 2  # ranked across houses


def test_a_busy_store_is_not_offline(ward: Ward, matsu: BathhouseService, clock: Clock) -> None:
    """Only an unreachable store is decided offline: a busy one (another writer holds the ward's file past
    the retries) fails the tap as before (plugin.error store_busy), and nothing goes to the outbox."""
    register(matsu, "M1", "1950-01-01", "CARD1")
    tap(matsu, clock, 1)
    holder = sqlite3.connect(ward.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusyError):
            tap(matsu, clock, 2)
        holder.execute("COMMIT")
    finally:
        holder.close()
    assert matsu.pending() == 0
    assert tap(matsu, clock, 2)["status"] == "accepted"


def test_the_kiosk_keeps_no_birth_date_or_name(ward: Ward, matsu: BathhouseService, clock: Clock) -> None:
    register(matsu, "M1", "1950-01-01", "CARD1")
    tap(matsu, clock, 1)
    local = matsu.store.local

    def read(c: Connection) -> tuple[dict[str, list[str]], list[tuple[object, ...]]]:
        names = [t for t in sa.inspect(c).get_table_names() if t.startswith("bathhouse__local__")]
        reflected = [sa.Table(t, sa.MetaData(), autoload_with=c) for t in names]
        columns = {t.name: [col.name for col in t.columns] for t in reflected}
        return columns, [tuple(r) for t in reflected for r in c.execute(sa.select(t))]

    tables, values = local.transaction(read, readonly=True)
    assert tables == {
        "bathhouse__local__holders": ["kind", "holder", "member_number", "status", "seen_at"],
        "bathhouse__local__members": [
            "member_number", "eligible", "month", "known_visits", "last_here", "seen_at",
        ],
        "bathhouse__local__outbox": [
            "id", "member_number", "bath_house", "business_date", "month", "via", "visited_at", "synced",
            "counted",
        ],
        # a withdrawal's person keys, only until the ward's store has deleted the link
        "bathhouse__local__withdrawals": ["person", "anon", "queued_at"],
    }  # fmt: skip
    assert "1950-01-01" not in repr(values)
    assert ("card", "CARD1", "M1", "active") in [v[:4] for v in values]
    assert local.version() == 2
