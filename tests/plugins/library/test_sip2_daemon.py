"""The library plugin in a running daemon (sim backend) against pysip2's ACS with checksums required:
register, the patron screen, checkout with the ACS's due date, renew, return; the new
``[plugins.library]`` SIP2 keys are accepted by the configuration; no title, name, card or item number
on the bus.

Cost: about 1.5 s (a daemon start and stop).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pysip2
import pytest

from readerd.bus.control_client import ControlSession
from readerd.config import PluginsConfig
from simulators.sip2_acs import Item, Library
from tests.support.auth import READER, error, ok, tap
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config
from tests.support.sip2_pysip2 import PysipAcs

pytestmark = pytest.mark.timeout(60)
TITLES = {"B1": "ポケット版 日本の野鳥", "B2": "こころ"}


def _library() -> Library:
    return Library(
        institution="chuo",
        patrons={"L7001": True},
        items={barcode: Item(title) for barcode, title in TITLES.items()},
        today=date.today(),
    )


@pytest.fixture
def acs() -> Iterator[PysipAcs]:
    # The library system demands a 93 Login as the first message, and checksums.
    with PysipAcs(_library(), login=("kiosk", "secret"), error_detection="required") as server:
        yield server


@contextlib.contextmanager
def _kiosk(tmp_path: Path, port: int) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession]]:
    section = {
        "library_id": "chuo",
        "ils": "sip2",
        "sip2_host": "127.0.0.1",
        "sip2_port": port,
        "sip2_user": "kiosk",
        "sip2_password": "secret",
        "sip2_location": "chuo-1f",
        "sip2_keepalive": 30,
        "sip2_error_detection": True,
        "sip2_encoding": "utf-8",
        "auth_window": 60,
    }
    plugins = PluginsConfig(autoload=False, builtins=("library",), sections={"library": section})
    with (
        running_daemon(sim_config(tmp_path, plugins=plugins)) as d,
        d.subscriber("") as sub,
        d.session() as ui,
    ):
        yield d, sub, ui


@pytest.fixture
def kiosk(tmp_path: Path, acs: PysipAcs) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession]]:
    with _kiosk(tmp_path, acs.port) as running:
        yield running


def authenticate(ui: ControlSession) -> str:
    begun = ok(ui.request("auth.begin", {"reader": READER}))
    auth_id: str = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    return auth_id


def data(sub: Subscriber, kind: str) -> dict[str, Any]:
    result: dict[str, Any] = sub.until(lambda e: e["type"] == kind)[-1]["data"]
    return result


def test_lending_through_the_daemon_against_pysip2(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession], acs: PysipAcs
) -> None:
    d, sub, ui = kiosk
    tap(d, sub, "hana")
    ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))
    d.remove()
    tap(d, sub, "hana")  # enrolled now: the plugin knows the person on the reader
    data(sub, "plugin.library.patron")
    authenticate(ui)  # the proof of possession register wants
    registered = ok(
        ui.request("library.register", {"reader": READER, "library_card": "L7001", "idempotency_key": "r"})
    )
    d.remove()
    tap(d, sub, "hana")
    patron = data(sub, "plugin.library.patron")
    out = ok(ui.request("library.checkout", {"reader": READER, "item": "B1", "idempotency_key": "c"}))
    renewed = ok(ui.request("library.renew", {"reader": READER, "item": "B1", "idempotency_key": "n"}))
    returned = ok(ui.request("library.return", {"item": "B1", "idempotency_key": "t"}))
    sub.until(lambda e: e["type"] == "plugin.library.return")

    assert registered["registered"] is True
    assert (patron["status"], patron["loans"]) == ("ok", 0)
    assert out["due"] == (date.today() + timedelta(days=14)).isoformat()  # the ACS's due date
    assert renewed["due"] == (date.today() + timedelta(days=28)).isoformat()
    assert returned == {"item": "B1", "due": None}
    kinds = [type(r).__name__ for r in acs.requests]
    assert kinds[0] in ("LoginRequest", "SCStatusRequest")  # the session opens before any question
    assert {"PatronInformationRequest", "CheckoutRequest", "RenewRequest", "CheckinRequest"} <= set(kinds)
    checkin = next(r for r in acs.requests if isinstance(r, pysip2.CheckinRequest))
    assert checkin.terminal_password == ""
    events = json.dumps(
        [e for e in sub.received if e["type"].startswith("plugin.library.")], ensure_ascii=False
    )
    assert not any(title in events for title in TITLES.values())
    assert "図書 太郎" not in events  # the patron's name from the ACS
    assert "B1" not in events  # item and card numbers stay off the bus
    assert "L7001" not in events


def test_a_refused_login_shows_ils_unavailable_and_the_reason(tmp_path: Path) -> None:
    """The ward changed the kiosk's SIP2 password and the kiosk was not told: once the library system
    closed the idle session (its idle timeout, 1 s here), the next Login is refused; the citizen's tap
    says the library system refused this kiosk's login (staff know what to fix), and a counter command
    says so too. Cost: about 3 s."""
    with (
        PysipAcs(_library(), login=("kiosk", "secret"), idle_timeout=1.0) as acs,
        _kiosk(tmp_path, acs.port) as (d, sub, ui),
    ):
        tap(d, sub, "hana")
        ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))
        authenticate(ui)
        register = {"reader": READER, "library_card": "L7001", "idempotency_key": "r"}
        ok(ui.request("library.register", register))
        acs.login = ("kiosk", "changed")  # the ward's new password; the open session still works
        time.sleep(1.5)  # the library system closes the idle session
        d.remove()
        tap(d, sub, "hana")
        patron = data(sub, "plugin.library.patron")
        item = {"reader": READER, "item": "B1", "idempotency_key": "c"}
        refused = error(ui.request("library.checkout", item))
    assert (patron["status"], patron["reason"]) == ("ils_unavailable", "login_refused")
    assert patron["login_refused"] is True
    assert "ログインを拒否" in patron["screen"]["ja"]
    assert refused["code"] == "ils_unavailable"
    assert "refused the login" in refused["message"]
