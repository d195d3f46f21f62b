"""A member's withdrawal in the points plugin, on a real store with the ward's clock fixed (no daemon), the
kiosk's SQLite alone and with the ward's PostgreSQL as the shared store: the ward's books still balance (the
programme's totals by kind, shop and day unchanged), the member's accounts, ledger entries and tickets are
under ``withdrawn:<random>``, their card is gone, their waiting earning is written off with reason
``withdrawn``, and a second withdrawal changes nothing.

Cost: about 3 s (most of it making the PostgreSQL databases)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from plugins.points import PointsPlugin
from plugins.points.service import PointsService
from readerd.config import StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.store import Store

NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)  # 12:00 JST, 1 June 2026
WITHDRAWN = {"member_id": "M1", "mykey_id": "K1", "pseudonym": "p-1"}
PERSONS = ["member:M1", "mykey:K1"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """The kiosk's SQLite alone, or with the ward's PostgreSQL as the shared store."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    with Store.open(StoreConfig(shared_url=url), tmp_path, clock=lambda: NOW) as s:
        yield s


@pytest.fixture
def points(store: Store) -> PointsService:
    service = PointsService(store.for_plugin("points"))
    service.define_programme(
        {
            "programme_id": "ward-2026",
            "name": "区民ポイント2026",
            "last_earning_day": "2026-12-31",
            "last_ticket_day": "2027-01-31",
            "last_use_day": "2027-03-31",
            "idempotency_key": "p1",
        }
    )
    service.define_shop({"shop_id": "tofu-ya", "name": "豆腐屋", "area": "north", "idempotency_key": "s1"})
    return service


def spend_and_earn(points: PointsService) -> None:
    """The member earns under the MyKey ID and was granted under the member ID, spends and keeps a
    ticket; another member does the same; one earning of the member waits (the programme not open)."""
    points.earn("mykey:K1", "ward-2026", 50, "c-1", event_id="bon-odori")
    points.earn("member:OTHER", "ward-2026", 50, "c-2", event_id="bon-odori")
    points.grant(
        {
            "programme_id": "ward-2026",
            "campaign": "gift",
            "amount": 30,
            "members": ["M1"],
            "idempotency_key": "g",
        }
    )
    points.redeem(
        {
            "programme_id": "ward-2026",
            "mykey_id": "K1",
            "shop_id": "tofu-ya",
            "amount": 20,
            "idempotency_key": "r",
        }
    )
    points.issue_ticket({"programme_id": "ward-2026", "mykey_id": "K1", "amount": 10, "idempotency_key": "t"})
    points.register_card("felica-1", {"mykey_id": "K1", "idempotency_key": "c1"})
    points.register_card("felica-2", {"member_id": "OTHER", "idempotency_key": "c2"})
    points.defer_earn(
        "mykey:K1", "ward-2026", 40, "c-3", event_id="health-fair", reader="R", reason="store_unavailable"
    )


def books(points: PointsService) -> list[tuple[Any, ...]]:
    """What the ward's books say: the ledger summed by programme, kind, shop and day, and the tickets."""
    ledger, tickets = points.t.ledger, points.t.tickets

    def read(conn: Any) -> list[tuple[Any, ...]]:
        sums = conn.execute(
            sa.select(
                ledger.c.programme_id,
                ledger.c.kind,
                ledger.c.shop_id,
                ledger.c.business_date,
                sa.func.sum(ledger.c.amount),
            ).group_by(ledger.c.programme_id, ledger.c.kind, ledger.c.shop_id, ledger.c.business_date)
        ).all()
        issued = conn.execute(sa.select(sa.func.count(), sa.func.sum(tickets.c.amount))).all()
        return sorted(tuple(r) for r in sums) + [tuple(r) for r in issued]

    return points._tx(read, readonly=True)


def accounts_in(points: PointsService) -> set[str]:
    tables = (points.t.accounts, points.t.ledger, points.t.tickets, points.t.cards)
    return points._tx(
        lambda conn: {str(r[0]) for t in tables for r in conn.execute(sa.select(t.c.account))}, readonly=True
    )


def test_the_books_balance_and_the_person_is_gone(points: PointsService) -> None:
    spend_and_earn(points)
    before, totals_before = books(points), points.ledger_check()

    first = points.withdraw(PERSONS)
    after, totals_after = books(points), points.ledger_check()
    accounts = accounts_in(points)
    report = points.pending_report()
    second = points.withdraw(PERSONS)

    assert after == before  # every sum by programme, kind, shop and day, and the tickets, unchanged
    assert totals_after == totals_before == {"negative_accounts": 0, "outstanding_points": 100}
    assert first == {
        "pending_written_off": 1,
        "pending_rekeyed": 1,
        "accounts": 2,  # member:M1 (the grant) and mykey:K1
        "entries": 4,  # earn, grant, redeem, ticket
        "tickets": 1,
        "cards": 1,
        "requests": 2,  # the earning's key (earn:<event>:<account>) and the card registration's result
        "shared_pending": False,
    }
    assert second == {**dict.fromkeys(first, 0), "shared_pending": False}
    withdrawn = sorted(a for a in accounts if a.startswith("withdrawn:"))
    assert len(withdrawn) == 2  # one random key per person key: their balances stay apart
    assert accounts - set(withdrawn) == {"member:OTHER"}
    # the balance is frozen: no card and no ID leads to it
    assert points.balance("mykey:K1") == points.balance("member:M1") == {"balances": {}}
    assert points.account_for_card("felica-1") is None
    assert points.account_for_card("felica-2") == "member:OTHER"
    assert sorted(points.balance(a)["balances"]["ward-2026"] for a in withdrawn) == [20, 30]
    # the waiting earning: written off with reason withdrawn, under no name
    assert (report["pending"], report["written_off"], report["written_off_points"]) == (0, 1, 40)
    assert report["reasons"]["written_off"] == {"withdrawn": 1}
    assert report["rows"][0]["member_id"] is None
    assert points.deferred() == []
    requests = points._tx(
        lambda conn: " ".join(f"{r.key} {r.result}" for r in conn.execute(sa.select(points.requests))),
        readonly=True,
    )
    assert "K1" not in requests


def test_a_replayed_earning_of_the_rekeyed_key_is_still_once(points: PointsService) -> None:
    points.earn("mykey:K1", "ward-2026", 50, "c-1", event_id="bon-odori")
    points.withdraw(PERSONS)
    (withdrawn,) = accounts_in(points)
    again = points.earn(withdrawn, "ward-2026", 50, "c-1", event_id="bon-odori")
    assert again["replayed"] is True  # the re-keyed idempotency record still matches its arguments
    assert points.ledger_check()["outstanding_points"] == 50


def test_a_withdrawal_waits_for_the_shared_store(
    points: PointsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    points.earn("mykey:K1", "ward-2026", 50, "c-1", event_id="bon-odori")
    real = points._tx

    def down(*_args: object, **_kwargs: object) -> object:
        raise StoreUnavailableError("down")

    monkeypatch.setattr(points, "_tx", down)
    waiting = points.withdraw(PERSONS)
    replayed = points.withdraw(PERSONS)
    queued = points.withdrawals_pending()
    monkeypatch.setattr(points, "_tx", real)
    done = points.retry_withdrawals()

    assert waiting["shared_pending"]
    assert replayed["shared_pending"]
    assert queued == 2  # both person keys, one random key each, the same at the replay
    assert (done["accounts"], done["entries"]) == (1, 1)
    assert points.withdrawals_pending() == 0
    assert all(a.startswith("withdrawn:") for a in accounts_in(points))


def test_the_hook_logs_counts_and_publishes_nothing(store: Store) -> None:
    published: list[object] = []
    context = PluginContext(
        name="points",
        config={"earn_programme": "ward-2026", "retry_interval": 3600},
        kiosk="k",
        store=store.for_plugin("points"),
        log=structlog.get_logger("test"),
        _publish=lambda *args: published.append(args),
    )
    plugin = PointsPlugin()
    plugin.readerd_startup(context)
    try:
        event = PluginEvent("member.withdrawn", 9, "id", "ts", "k", "R", dict(WITHDRAWN))
        with structlog.testing.capture_logs() as logs:
            plugin.readerd_member_withdrawn(event, context)
            plugin.readerd_member_withdrawn(event, context)  # replayed: harmless
    finally:
        plugin.readerd_shutdown()
    said = [entry for entry in logs if entry["event"] == "member withdrawn: records anonymised"]
    assert published == []
    assert len(said) == 2
    assert said[1]["entries"] == 0
