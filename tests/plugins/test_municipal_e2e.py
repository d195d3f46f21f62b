"""Check-in and points end to end on the sim backend: tap -> plugin result on the bus -> store, and the
two plugins meeting only on the bus (participation points for an accepted check-in)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control_client import ControlSession
from readerd.config import PluginsConfig
from tests.support.auth import READER, error, ok, tap
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


def _window() -> tuple[str, str]:
    now = datetime.now(UTC)
    return (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=2)).isoformat()


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession]]:
    sections: dict[str, dict[str, object]] = {
        "checkin": {"event": "fest", "sync_interval": 0.2},
        "points": {"earn_programme": "ward"},
    }
    config = sim_config(
        tmp_path, plugins=PluginsConfig(autoload=False, builtins=("checkin", "points"), sections=sections)
    )
    with running_daemon(config) as d, d.subscriber("") as sub, d.session() as ui:
        starts, ends = _window()
        ok(
            ui.request(
                "checkin.define_event",
                {
                    "event_id": "fest",
                    "name": "区民まつり",
                    "place": "区役所前広場",
                    "starts_at": starts,
                    "ends_at": ends,
                    "capacity": 100,
                    "points": 50,
                    "idempotency_key": "e1",
                },
            )
        )
        ok(
            ui.request(
                "points.define_programme",
                {
                    "programme_id": "ward",
                    "name": "区民ポイント",
                    "last_earning_day": "2099-12-31",
                    "last_ticket_day": "2099-12-31",
                    "last_use_day": "2099-12-31",
                    "idempotency_key": "p1",
                },
            )
        )
        ok(
            ui.request(
                "points.define_shop",
                {"shop_id": "tofu-ya", "name": "豆腐店", "area": "north", "idempotency_key": "s1"},
            )
        )
        yield d, sub, ui


def on_reader(ui: ControlSession, timeout: float = 5.0) -> None:
    """Wait until the points plugin has seen the card on the reader: plugins get each event in turn, so
    the check-in result can arrive before the points plugin's own card.identified hook has run."""
    deadline = time.monotonic() + timeout
    while (reply := ui.request("points.balance", {"reader": READER}))["ok"] is False:
        assert reply["error"]["code"] == "no_card", reply
        assert time.monotonic() < deadline, "the points plugin never saw the card"
        time.sleep(0.02)


def prove(ui: ControlSession) -> str:
    """A PIN and signature proof on the reader: the auth_id a spending command takes."""
    begun = ok(ui.request("auth.begin", {"reader": READER}))
    auth_id: str = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    return auth_id


def enrol(ui: ControlSession) -> str:
    begun = ok(ui.request("auth.begin", {"reader": READER}))
    auth_id = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    member: str = ok(ui.request("mykey.enroll", {"auth_id": auth_id}))["member_id"]
    return member


def result_of(sub: Subscriber, kind: str) -> dict[str, Any]:
    envelope = sub.until(lambda e: e["type"] == kind)[-1]
    data: dict[str, Any] = envelope["data"]
    # the plugin's fields; its words (data.screen, from <plugin>/texts.py) are tested apart
    return {key: value for key, value in data.items() if key != "screen"}


def test_check_in_earns_points_once_and_points_are_spent(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession],
) -> None:
    d, sub, ui = kiosk
    tap(d, sub, "alice")
    anonymous = result_of(sub, "plugin.checkin.result")
    member = enrol(ui)
    d.remove()
    tap(d, sub, "alice")
    accepted = result_of(sub, "plugin.checkin.result")
    earned = result_of(sub, "plugin.points.earned")
    d.remove()
    tap(d, sub, "alice")
    again = result_of(sub, "plugin.checkin.result")
    on_reader(ui)
    redeemed = ok(
        ui.request(
            "points.redeem",
            {
                "programme_id": "ward",
                "reader": READER,
                "auth_id": prove(ui),
                "shop_id": "tofu-ya",
                "amount": 30,
                "idempotency_key": "r1",
            },
        )
    )
    on_bus = result_of(sub, "plugin.points.redeemed")
    short = error(
        ui.request(
            "points.redeem",
            {
                "programme_id": "ward",
                "reader": READER,
                "auth_id": prove(ui),
                "shop_id": "tofu-ya",
                "amount": 30,
                "idempotency_key": "r2",
            },
        )
    )
    balance = ok(ui.request("points.balance", {"member_id": member}))
    attendance = ok(ui.request("checkin.attendance", {"event_id": "fest"}))
    later = [e["type"] for e in sub.received if e["type"] == "plugin.points.earned"]

    assert anonymous == {"event_id": "fest", "status": "not_enrolled"}
    assert accepted["status"] == "accepted"
    assert accepted["member_id"] == member
    assert accepted["points"] == 50
    assert earned["balance"] == 50
    assert again["status"] == "already_checked_in"
    assert later == ["plugin.points.earned"]  # the re-tap earned nothing
    assert redeemed["balance"] == 20
    assert on_bus == {"redeemed": 30, "balance": 20, "shop_id": "tofu-ya"}
    assert short["code"] == "insufficient_points"
    assert short["details"] == {"balance": 20}
    assert balance == {"balances": {"ward": 20}}
    assert attendance["count"] == 1
    assert attendance["rows"][0]["person"] == f"member:{member}"


def test_felica_check_in_card_is_registered_then_admitted(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession],
) -> None:
    d, sub, ui = kiosk
    d.tap("00042", felica="checkin")
    unknown = result_of(sub, "plugin.checkin.result")
    registered = ok(
        ui.request(
            "checkin.register_card", {"reader": READER, "member_id": "M0000042", "idempotency_key": "c1"}
        )
    )
    d.remove()
    sub.until(lambda e: e["type"] == "card.removed")
    d.tap("00042", felica="checkin")
    admitted = result_of(sub, "plugin.checkin.result")
    no_card = error(
        ui.request("checkin.register_card", {"reader": "Sim 01", "member_id": "X", "idempotency_key": "c2"})
    )
    assert unknown == {"event_id": "fest", "status": "unknown_card"}
    assert registered == {"registered": True, "person": "member:M0000042"}
    assert admitted["status"] == "accepted"
    assert admitted["member_id"] == "M0000042"
    assert no_card["code"] == "no_card"


def test_bad_commands_get_clear_errors(kiosk: tuple[RunningDaemon, Subscriber, ControlSession]) -> None:
    _, _, ui = kiosk
    base = {"programme_id": "ward", "member_id": "NOBODY", "shop_id": "tofu-ya", "idempotency_key": "b"}
    codes = {
        "malformed amount": error(ui.request("points.redeem", {**base, "amount": "ten"}))["code"],
        "zero amount": error(ui.request("points.redeem", {**base, "amount": 0}))["code"],
        "unknown shop": error(ui.request("points.redeem", {**base, "shop_id": "nowhere", "amount": 1}))[
            "code"
        ],
        "unknown programme": error(
            ui.request("points.redeem", {**base, "programme_id": "other", "amount": 1})
        )["code"],
        "insufficient": error(ui.request("points.redeem", {**base, "amount": 1}))["code"],
        "no key": error(
            ui.request(
                "points.redeem", {k: v for k, v in base.items() if k != "idempotency_key"} | {"amount": 1}
            )
        )["code"],
        "unknown event": error(ui.request("checkin.status", {"event_id": "nope"}))["code"],
    }
    assert codes == {
        "malformed amount": "bad_request",
        "zero amount": "bad_amount",
        "unknown shop": "unknown_shop",
        "unknown programme": "unknown_programme",
        "insufficient": "insufficient_points",
        "no key": "bad_request",
        "unknown event": "unknown_event",
    }
