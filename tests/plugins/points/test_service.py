"""The points ledger's rules on a real SQLite store with the ward's clock fixed (no daemon)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from plugins.points.service import PointsService
from readerd.config import StoreConfig
from readerd.plugin import Refusal
from readerd.plugin.store import Store


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 6, 1, 3, 0, tzinfo=UTC))  # 12:00 JST, 1 June 2026


@pytest.fixture
def points(tmp_path: Path, clock: Clock) -> Iterator[PointsService]:
    with Store.open(StoreConfig(), tmp_path, clock=clock) as store:
        service = PointsService(store.for_plugin("points"))
        service.define_programme(
            {
                "programme_id": "ward-2026",
                "name": "区民ポイント2026",
                "last_earning_day": "2026-12-31",
                "last_ticket_day": "2027-01-31",
                "last_use_day": "2027-03-31",
                "ticket_valid_days": 30,
                "idempotency_key": "p1",
            }
        )
        for shop, area in (("tofu-ya", "north"), ("sakana-ya", "north"), ("pan-ya", "south")):
            service.define_shop({"shop_id": shop, "name": shop, "area": area, "idempotency_key": f"s-{shop}"})
        yield service


def redeem(
    points: PointsService, key: str, amount: int = 7, member: str = "AAAA", shop: str = "tofu-ya"
) -> dict[str, Any]:
    args = {
        "programme_id": "ward-2026",
        "member_id": member,
        "shop_id": shop,
        "amount": amount,
        "idempotency_key": key,
    }
    return points.redeem(args)


def test_redeem_never_overdraws_and_is_applied_once(points: PointsService) -> None:
    points.import_points(
        {
            "programme_id": "ward-2026",
            "member_id": "AAAA",
            "amount": 10,
            "source_ref": "old-card-1",
            "idempotency_key": "i1",
        }
    )
    first = redeem(points, "r1")
    again = redeem(points, "r1")
    with pytest.raises(Refusal) as short:
        redeem(points, "r2")
    assert first["balance"] == 3
    assert again["replayed"] is True
    assert again["entry_id"] == first["entry_id"]
    assert short.value.code == "insufficient_points"
    assert short.value.details() == {"balance": 3}
    assert points.balance("member:AAAA") == {"balances": {"ward-2026": 3}}
    assert points.ledger_check() == {"negative_accounts": 0, "outstanding_points": 3}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"amount": 0}, "bad_amount"),
        ({"amount": 1.5}, "bad_amount"),
        ({"amount": True}, "bad_amount"),
        ({"shop_id": "no-such-shop"}, "unknown_shop"),
        ({"programme_id": "other"}, "unknown_programme"),
        ({"member_id": ""}, "unknown_account"),
    ],
)
def test_malformed_redemptions(points: PointsService, change: dict[str, Any], code: str) -> None:
    args = {
        "programme_id": "ward-2026",
        "member_id": "AAAA",
        "shop_id": "tofu-ya",
        "amount": 1,
        "idempotency_key": "x",
    }
    with pytest.raises(Refusal) as refused:
        points.redeem({**args, **change})
    assert refused.value.code == code


def test_programme_dates_in_jst(points: PointsService, clock: Clock) -> None:
    points.earn("member:AAAA", "ward-2026", 5, "checkin-1")
    clock.now = datetime(2026, 12, 31, 14, 59, tzinfo=UTC)  # 23:59 JST on the last earning day
    assert points.earn("member:AAAA", "ward-2026", 5, "checkin-2")["balance"] == 10
    clock.now = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)  # 00:00 JST, 1 January 2027
    with pytest.raises(Refusal) as late:
        points.earn("member:AAAA", "ward-2026", 5, "checkin-3")
    assert late.value.code == "programme_expired"
    assert redeem(points, "r1", amount=4)["balance"] == 6  # still usable until 31 March
    clock.now = datetime(2027, 3, 31, 15, 0, tzinfo=UTC)  # 1 April 2027 JST: the new fiscal year
    with pytest.raises(Refusal) as used_up:
        redeem(points, "r2", amount=1)
    expired = points.expire({"programme_id": "ward-2026", "idempotency_key": "e1"})
    assert used_up.value.code == "programme_expired"
    assert expired == {"accounts": 1, "points": 6}
    assert points.balance("member:AAAA") == {"balances": {"ward-2026": 0}}


def test_earning_is_once_per_check_in(points: PointsService) -> None:
    points.earn("member:AAAA", "ward-2026", 50, "checkin-x")
    again = points.earn("member:AAAA", "ward-2026", 50, "checkin-x")
    assert again["replayed"] is True
    assert points.balance("member:AAAA")["balances"]["ward-2026"] == 50


def test_tickets_are_single_use_and_expire(points: PointsService, clock: Clock) -> None:
    points.grant(
        {
            "programme_id": "ward-2026",
            "campaign": "長寿祝い",
            "amount": 100,
            "members": ["AAAA", "BBBB"],
            "idempotency_key": "g1",
        }
    )
    ticket = points.issue_ticket(
        {"programme_id": "ward-2026", "member_id": "AAAA", "amount": 30, "idempotency_key": "t1"}
    )
    used = points.use_ticket(
        {"ticket": ticket["ticket"].lower(), "shop_id": "pan-ya", "idempotency_key": "u1"}
    )
    with pytest.raises(Refusal) as twice:
        points.use_ticket({"ticket": ticket["ticket"], "shop_id": "tofu-ya", "idempotency_key": "u2"})
    late = points.issue_ticket(
        {"programme_id": "ward-2026", "member_id": "BBBB", "amount": 10, "idempotency_key": "t2"}
    )
    clock.now = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 30 days later: valid 1..30 June
    with pytest.raises(Refusal) as expired:
        points.use_ticket({"ticket": late["ticket"], "shop_id": "pan-ya", "idempotency_key": "u3"})
    assert ticket["balance"] == 70
    assert ticket["expires_on"] == "2026-06-30"
    assert used["amount"] == 30
    assert twice.value.code == "ticket_used"
    assert expired.value.code == "ticket_expired"
    assert len(ticket["ticket"]) == 10


def test_grant_refuses_duplicates_and_bad_lists(points: PointsService) -> None:
    base = {"programme_id": "ward-2026", "campaign": "c", "amount": 1, "idempotency_key": "g"}
    for members in ([], ["A", "A"], "A"):
        with pytest.raises(Refusal):
            points.grant({**base, "members": members})


def test_settlement_per_shop_and_area(points: PointsService, clock: Clock) -> None:
    points.grant(
        {
            "programme_id": "ward-2026",
            "campaign": "c",
            "amount": 100,
            "members": ["AAAA"],
            "idempotency_key": "g",
        }
    )
    redeem(points, "r1", amount=10, shop="tofu-ya")
    redeem(points, "r2", amount=5, shop="sakana-ya")
    ticket = points.issue_ticket(
        {"programme_id": "ward-2026", "member_id": "AAAA", "amount": 20, "idempotency_key": "t"}
    )
    points.use_ticket({"ticket": ticket["ticket"], "shop_id": "pan-ya", "idempotency_key": "u"})
    clock.now = datetime(2026, 6, 1, 15, 30, tzinfo=UTC)  # 00:30 JST on 2 June: the next business day
    redeem(points, "r3", amount=1, shop="tofu-ya")
    june_1 = points.settlement(date(2026, 6, 1), date(2026, 6, 1))
    both = points.settlement(date(2026, 6, 1), date(2026, 6, 2))
    assert [(r["shop_id"], r["total_points"]) for r in june_1["shops"]] == [
        ("sakana-ya", 5),
        ("tofu-ya", 10),
        ("pan-ya", 20),
    ]
    assert june_1["areas"] == {"north": 15, "south": 20}
    assert both["areas"]["north"] == 16
    assert both["total_points"] == 36
    with pytest.raises(Refusal):
        points.settlement(date(2026, 6, 2), date(2026, 6, 1))


def test_earnings_deferred_within_one_second_wait_in_the_order_they_came(points: PointsService) -> None:
    """``queued_at`` has whole seconds: three earnings deferred in the same second are retried in the
    order they were deferred, not by their references (here in reverse alphabetical order)."""
    for checkin in ("c-zz", "c-mm", "c-aa"):
        points.defer_earn("member:AAAA", "ward-2026", 10, checkin, event_id=f"ev-{checkin}", reader="Sim 00")
    assert [row["event_id"] for row in points.deferred()] == ["ev-c-zz", "ev-c-mm", "ev-c-aa"]
