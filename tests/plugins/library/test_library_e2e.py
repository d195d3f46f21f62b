"""Library lending through the daemon on the sim backend and the fake SIP2 library system:
JPKI-proven registration, the self-checkout flow (tap -> patron -> checkouts -> receipt), renewals,
returns, idempotency, and no title or name in any event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control_client import ControlSession
from readerd.config import PluginsConfig
from simulators.sip2_acs import FakeAcs, Item, Library
from tests.support.auth import READER, error, ok, tap
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)
TITLES = ["吾輩は猫である", "坊っちゃん", "こころ"]


@pytest.fixture
def library() -> Iterator[tuple[Library, FakeAcs]]:
    lib = Library(
        institution="chuo",
        patrons={"L7001": True},
        items={f"B{n}": Item(title) for n, title in enumerate(TITLES, 1)},
        limit=2,
        today=date.today(),
    )
    with FakeAcs(lib) as acs:
        yield lib, acs


@pytest.fixture
def kiosk(
    tmp_path: Path, library: tuple[Library, FakeAcs]
) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession]]:
    _, acs = library
    section = {
        "library_id": "chuo",
        "ils": "sip2",
        "sip2_host": "127.0.0.1",
        "sip2_port": acs.port,
        "auth_window": 60,
    }
    plugins = PluginsConfig(autoload=False, builtins=("library",), sections={"library": section})
    with (
        running_daemon(sim_config(tmp_path, plugins=plugins)) as d,
        d.subscriber("") as sub,
        d.session() as ui,
    ):
        yield d, sub, ui


def authenticate(ui: ControlSession) -> str:
    begun = ok(ui.request("auth.begin", {"reader": READER}))
    auth_id: str = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    return auth_id


def data(sub: Subscriber, kind: str) -> dict[str, Any]:
    published: dict[str, Any] = sub.until(lambda e: e["type"] == kind)[-1]["data"]
    # the plugin's fields; its words (data.screen, from library/texts.py) are tested apart
    return {key: value for key, value in published.items() if key != "screen"}


def test_register_then_self_checkout(kiosk: tuple[RunningDaemon, Subscriber, ControlSession]) -> None:
    d, sub, ui = kiosk
    tap(d, sub, "hana")
    ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))
    d.remove()
    tap(d, sub, "hana")  # enrolled now: the plugin knows the person on the reader
    not_registered = data(sub, "plugin.library.patron")
    unproven = error(
        ui.request("library.register", {"reader": READER, "library_card": "L7001", "idempotency_key": "r0"})
    )
    authenticate(ui)  # the citizen proves possession at the counter
    registered = ok(
        ui.request("library.register", {"reader": READER, "library_card": "L7001", "idempotency_key": "r1"})
    )
    d.remove()
    tap(d, sub, "hana")
    patron = data(sub, "plugin.library.patron")
    first = ok(ui.request("library.checkout", {"reader": READER, "item": "B1", "idempotency_key": "c1"}))
    replay = ok(ui.request("library.checkout", {"reader": READER, "item": "B1", "idempotency_key": "c1"}))
    second = ok(ui.request("library.checkout", {"reader": READER, "item": "B2", "idempotency_key": "c2"}))
    over = error(ui.request("library.checkout", {"reader": READER, "item": "B3", "idempotency_key": "c3"}))
    unknown = error(
        ui.request("library.checkout", {"reader": READER, "item": "B99", "idempotency_key": "c4"})
    )
    receipt = ok(ui.request("library.receipt", {"reader": READER}))
    receipt_event = data(sub, "plugin.library.receipt")
    renewed = ok(ui.request("library.renew", {"reader": READER, "item": "B1", "idempotency_key": "n1"}))
    returned = ok(ui.request("library.return", {"item": "B2", "idempotency_key": "t1"}))
    sub.until(lambda e: e["type"] == "plugin.library.return")

    assert not_registered == {"status": "not_registered"}
    assert unproven["code"] == "authentication_required"
    assert registered["registered"] is True
    assert patron["status"] == "ok"
    assert patron["loans"] == 0
    assert first["item"] == "B1"
    assert replay["replayed"] is True
    assert replay["due"] == first["due"]
    assert second["due"] == first["due"]
    assert over["code"] == "limit_reached"
    assert unknown["code"] == "unknown_item"
    assert receipt["count"] == 2
    assert receipt_event == {"status": "ok", "count": 2, "due_dates": [first["due"]]}
    assert renewed["due"] > first["due"]
    assert returned == {"item": "B2", "due": None}
    events = json.dumps(
        [e for e in sub.received if e["type"].startswith("plugin.library.")], ensure_ascii=False
    )
    assert not any(title in events for title in TITLES)
    assert "図書 太郎" not in events  # the patron's name from the ACS
    assert "B1" not in events  # which items a person borrowed is confidential too


def test_registration_needs_a_fresh_proof_on_the_same_reader(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession],
) -> None:
    d, sub, ui = kiosk
    tap(d, sub, "yuki")
    ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))
    d.remove()
    tap(d, sub, "yuki")  # a new tap: the proof made before the card left does not count
    data(sub, "plugin.library.patron")  # the plugin has seen the card
    stale = error(
        ui.request("library.register", {"reader": READER, "library_card": "L7002", "idempotency_key": "a"})
    )
    no_card = error(
        ui.request("library.register", {"reader": "Sim 01", "library_card": "L7002", "idempotency_key": "b"})
    )
    assert stale["code"] == "authentication_required"
    assert no_card["code"] == "no_card"
