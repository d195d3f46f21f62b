"""Bath-house rules on a real SQLite store with the ward's clock fixed: eligibility by age in law (JST),
the monthly cap across bath houses, reissue, the My Number Card link, the month's report."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from plugins.bathhouse.service import BathhouseService, Rules
from readerd.config import StoreConfig
from readerd.plugin import Refusal
from readerd.plugin.business_time import TOKYO
from readerd.plugin.store import Store


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def jst(y: int, m: int, d: int, hour: int = 10) -> datetime:
    """``hour`` o'clock JST on that day."""
    return datetime(y, m, d, hour, tzinfo=TOKYO)


@pytest.fixture
def clock() -> Clock:
    return Clock(jst(2026, 5, 20))


@pytest.fixture
def bath(tmp_path: Path, clock: Clock) -> Iterator[BathhouseService]:
    with Store.open(StoreConfig(), tmp_path, clock=clock) as store:
        yield BathhouseService(
            store.for_plugin("bathhouse"), Rules(min_age=65, monthly_cap=3, reissue_fee=300)
        )


def register(bath: BathhouseService, number: str, birth: str, card: str) -> None:
    bath.register(
        card,
        {"member_number": number, "birth_date": birth, "ward": 13101, "idempotency_key": f"reg-{number}"},
    )


def test_eligibility_starts_the_day_before_the_65th_birthday(bath: BathhouseService, clock: Clock) -> None:
    register(bath, "M1", "1961-05-22", "CARD1")  # 65 on 2026-05-22; in law reached on 2026-05-21
    clock.now = jst(2026, 5, 20, 23)
    too_young = bath.visit("matsu", card="CARD1", via="felica")
    clock.now = jst(2026, 5, 21, 0)  # 00:00 JST on the day before the birthday
    eligible = bath.visit("matsu", card="CARD1", via="felica")
    assert too_young["status"] == "not_eligible"
    assert eligible["status"] == "accepted"


def test_born_on_29_february(bath: BathhouseService, clock: Clock) -> None:
    register(bath, "M2", "1960-02-29", "CARD2")  # 65 in law on 2025-02-28 (a common year)
    clock.now = jst(2025, 2, 27)
    before = bath.visit("matsu", card="CARD2", via="felica")
    clock.now = jst(2025, 2, 28)
    on_the_day = bath.visit("matsu", card="CARD2", via="felica")
    assert before["status"] == "not_eligible"
    assert on_the_day["status"] == "accepted"


def test_monthly_cap_across_bath_houses_and_one_visit_a_day(bath: BathhouseService, clock: Clock) -> None:
    register(bath, "M3", "1950-01-01", "CARD3")
    statuses = []
    for day, house in ((1, "matsu"), (1, "matsu"), (1, "take"), (2, "ume"), (3, "matsu")):
        clock.now = jst(2026, 6, day)
        statuses.append(bath.visit(house, card="CARD3", via="felica")["status"])
    clock.now = jst(2026, 6, 30, 23)  # 23:00 JST: still June
    still_june = bath.visit("take", card="CARD3", via="felica")["status"]
    clock.now = jst(2026, 7, 1, 0)  # 00:00 JST, 1 July (15:00 UTC on 30 June): a new month
    july = bath.visit("take", card="CARD3", via="felica")
    assert statuses == ["accepted", "already_visited_today", "accepted", "accepted", "monthly_cap_reached"]
    assert still_june == "monthly_cap_reached"
    assert july["status"] == "accepted"
    assert july["visits_this_month"] == 1
    report = bath.report("2026-06")
    assert report["bath_houses"] == [
        {"bath_house": "matsu", "visits": 1, "members": 1, "over_cap": 0},
        {"bath_house": "take", "visits": 1, "members": 1, "over_cap": 0},
        {"bath_house": "ume", "visits": 1, "members": 1, "over_cap": 0},
    ]
    assert report["total_visits"] == 3


def test_reissue_revokes_the_old_card_and_records_the_fee(bath: BathhouseService) -> None:
    register(bath, "M4", "1950-01-01", "OLD")
    reissued = bath.reissue("NEW", {"member_number": "M4", "reason": "紛失", "idempotency_key": "r1"})
    again = bath.reissue("NEW", {"member_number": "M4", "reason": "紛失", "idempotency_key": "r1"})
    old = bath.visit("matsu", card="OLD", via="felica")
    new = bath.visit("matsu", card="NEW", via="felica")
    unknown = bath.visit("matsu", card="NOBODY", via="felica")
    with pytest.raises(Refusal) as in_use:
        bath.reissue("NEW", {"member_number": "M4", "reason": "x", "idempotency_key": "r2"})
    with pytest.raises(Refusal) as no_member:
        bath.reissue("OTHER", {"member_number": "M9", "reason": "x", "idempotency_key": "r3"})
    assert reissued == {"member_number": "M4", "card_version": 2, "revoked_cards": 1, "fee": 300}
    assert again["replayed"] is True
    assert old["status"] == "revoked_card"
    assert new["status"] == "accepted"
    assert unknown["status"] == "unknown_card"
    assert in_use.value.code == "card_in_use"
    assert no_member.value.code == "unknown_member"


def test_my_number_card_once_linked(bath: BathhouseService) -> None:
    register(bath, "M5", "1950-01-01", "CARD5")
    before = bath.visit("matsu", person="member:ABCD1234", via="jpki")
    bath.link("member:ABCD1234", {"member_number": "M5", "idempotency_key": "l1"})
    after = bath.visit("matsu", person="member:ABCD1234", via="jpki")
    by_card = bath.visit("matsu", card="CARD5", via="felica")  # the same member, the same day, same house
    assert before["status"] == "unknown_card"
    assert after["status"] == "accepted"
    assert by_card["status"] == "already_visited_today"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"member_number": "m-1"}, "bad_request"),
        ({"birth_date": "1950-13-01"}, "bad_request"),
        ({"birth_date": "2099-01-01"}, "bad_request"),
        ({"ward": "13101"}, "bad_request"),
    ],
)
def test_registration_input_is_checked(bath: BathhouseService, args: dict[str, object], code: str) -> None:
    base: dict[str, object] = {
        "member_number": "M6",
        "birth_date": "1950-01-01",
        "ward": 13101,
        "idempotency_key": "x",
    }
    with pytest.raises(Refusal) as refused:
        bath.register("CARD6", {**base, **args})
    assert refused.value.code == code


def test_report_month_is_checked(bath: BathhouseService) -> None:
    with pytest.raises(Refusal):
        bath.report("2026-13")
    assert bath.report("2026-06") == {
        "month": "2026-06",
        "bath_houses": [],
        "total_visits": 0,
        "total_over_cap": 0,
    }
