"""A withdrawal end to end through a real in-process daemon on the sim backend, with the check-in and
points built-ins: a member checks in and earns, withdraws (``mykey.unenroll`` with their PIN), and the
check-in still counts without naming them while their points sit under a withdrawn account.

Cost: about 3 s (one in-process daemon on SQLite)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control_client import ControlSession
from readerd.config import PluginsConfig
from tests.support.auth import READER, ok, tap
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession]]:
    sections: dict[str, dict[str, object]] = {
        "checkin": {"event": "fest", "sync_interval": 0.2},
        "points": {"earn_programme": "ward"},
    }
    config = sim_config(
        tmp_path, plugins=PluginsConfig(autoload=False, builtins=("checkin", "points"), sections=sections)
    )
    now = datetime.now(UTC)
    with running_daemon(config) as d, d.subscriber("") as sub, d.session() as ui:
        event = {
            "event_id": "fest",
            "name": "区民まつり",
            "place": "区役所前広場",
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
            "points": 50,
            "idempotency_key": "e1",
        }
        ok(ui.request("checkin.define_event", event))
        days = dict.fromkeys(("last_earning_day", "last_ticket_day", "last_use_day"), "2099-12-31")
        ok(
            ui.request(
                "points.define_programme",
                {"programme_id": "ward", "name": "区民ポイント", **days, "idempotency_key": "p1"},
            )
        )
        yield d, sub, ui


def authenticate(ui: ControlSession) -> str:
    begun = ok(ui.request("auth.begin", {"reader": READER}))
    auth_id: str = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    return auth_id


def data(sub: Subscriber, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = sub.until(lambda e: e["type"] == kind)[-1]["data"]
    return found


def accounts(store: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        return dict(
            conn.execute("SELECT account, sum(amount) FROM points__ledger GROUP BY account").fetchall()
        )


def test_a_withdrawal_leaves_the_count_and_the_points_but_not_the_person(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession], tmp_path: Path
) -> None:
    d, sub, ui = kiosk
    tap(d, sub, "alice")
    member = ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))["member_id"]
    d.remove()
    tap(d, sub, "alice")  # enrolled: checked in, and earns
    accepted = data(sub, "plugin.checkin.result")
    earned = data(sub, "plugin.points.earned")
    before = ok(ui.request("checkin.attendance", {"event_id": "fest"}))

    gone = ok(ui.request("mykey.unenroll", {"auth_id": authenticate(ui)}))
    withdrawn = data(sub, "member.withdrawn")
    store = next(tmp_path.rglob("store.db"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the hooks run on the host's feed thread, after the reply
        after = ok(ui.request("checkin.attendance", {"event_id": "fest"}))
        if f"member:{member}" not in {*accounts(store), *(r["person"] for r in after["rows"])}:
            break
        time.sleep(0.05)
    ledger = accounts(store)
    balance = ok(ui.request("points.balance", {"member_id": member}))

    assert accepted["status"] == "accepted"
    assert earned["earned"] == 50
    assert gone == {"unenrolled": True}
    assert withdrawn["member_id"] == member
    assert before["rows"][0]["person"] == f"member:{member}"
    assert after["count"] == before["count"] == 1  # the check-in still counts
    assert after["rows"][0]["person"].startswith("withdrawn:")  # and no longer names the person
    assert list(ledger.values()) == [50]  # the points are kept, under a withdrawn account
    assert next(iter(ledger)).startswith("withdrawn:")
    assert balance == {"balances": {}}  # and the member's ID leads to none
    # Nothing published by a plugin. The host's plugin.handled for the PIN proof's card.authenticated may
    # come after member.withdrawn: it is the host's bookkeeping for that tap, not a plugin's result.
    later = [e["type"] for e in quiet(sub) if e["type"].startswith("plugin.")]
    assert [t for t in later if t != "plugin.handled"] == []


def quiet(sub: Subscriber, wait: float = 0.5) -> list[Any]:
    """What the bus still carries until it is quiet for ``wait`` seconds."""
    later = []
    with contextlib.suppress(TimeoutError):
        while True:
            later.append(sub.next(wait))
    return later
