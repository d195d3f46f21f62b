"""The web app without a browser: what a kiosk screen may see of an event, the console's token, the
commands a kiosk page may send."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from readerd.cli import main as cli
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode
from readerd.web import WebServer, WebSettings, create_app
from readerd.web.app import Hub, Stats, kiosk_view, reader_health
from readerd.web.guard import token_bits

TOKEN = "Zk3q-9vT_x1LmB7pQ2wR8sYcD4"  # noqa: S105 - a test token (156 bits by the app's estimate)
SETTINGS = WebSettings(
    publish="tcp://127.0.0.1:1", control="tcp://127.0.0.1:1", console_token=TOKEN, request_timeout_ms=200
)


def call(
    url: str, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON reply of a GET (or, with ``body``, a JSON POST), error statuses included:
    what curl would get."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - http://127.0.0.1
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:  # noqa: S310 - http://127.0.0.1 of the test
            text = reply.read()
            status, got = reply.status, {k.lower(): v for k, v in reply.headers.items()}
    except urllib.error.HTTPError as e:
        with e:
            text, status, got = e.read(), e.code, {k.lower(): v for k, v in e.headers.items()}
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    return status, got, parsed if isinstance(parsed, dict) else {}


def http(url: str, body: object = None, headers: dict[str, str] | None = None) -> int:
    """The status of a GET (or, with ``body``, a JSON POST) to the app, error statuses included."""
    return call(url, body, headers)[0]


def kiosk_cookie(url: str, secret: str) -> dict[str, str]:
    """A kiosk session opened with the secret, as the page opens it: the Cookie header to send."""
    status, headers, _reply = call(f"{url}/api/kiosk/session", {"secret": secret})
    assert status == 200
    return {"Cookie": headers["set-cookie"].split(";")[0]}


@pytest.fixture
def server() -> Iterator[WebServer]:
    with WebServer(SETTINGS) as web:  # no daemon behind it: these requests never reach one
        yield web


@pytest.fixture
def app(server: WebServer) -> str:
    return server.url


def test_a_kiosk_screen_sees_no_identity_of_a_card() -> None:
    identified = {
        "type": "card.identified",
        "reader": "R",
        "seq": 3,
        "data": {"kind": "jpki", "pseudonym": "ABC", "member_id": "M1", "enrolled": True, "repeat": False},
    }
    result = {"type": "plugin.checkin.result", "reader": "R", "seq": 4, "data": {"status": "accepted"}}
    assert kiosk_view(identified) == {
        "type": "card.identified",
        "reader": "R",
        "seq": 3,
        "data": {"kind": "jpki", "repeat": False},
    }
    assert kiosk_view(result) == {**result}
    assert kiosk_view({"type": "heartbeat", "data": {}}) is None
    assert kiosk_view({**result, "replayed": True}) is None
    assert kiosk_view({"type": "plugin.error", "data": {"plugin": "x"}}) is None


def test_the_console_wants_the_token(app: str) -> None:
    assert http(f"{app}/api/console/state") == 401
    assert http(f"{app}/api/console/state", headers={"Authorization": "Bearer nope"}) == 401
    assert http(f"{app}/api/console/login", {"token": TOKEN[:-1]}) == 401
    assert http(f"{app}/api/console/login", {"token": ""}) == 401
    assert http(f"{app}/api/console/login", {"token": TOKEN}) == 200
    # the token opens the state; the daemon behind it is unreachable, which the state says
    assert http(f"{app}/api/console/state", headers={"Authorization": f"Bearer {TOKEN}"}) == 200
    assert http(f"{app}/api/console/state", headers={"Cookie": f"readerd_console={TOKEN}"}) == 401


def test_posts_take_json_only(server: WebServer) -> None:
    """A form of another site (no preflight for its content types) cannot log in or start a PIN entry."""
    app, form = server.url, {"Content-Type": "application/x-www-form-urlencoded"}
    assert http(f"{app}/api/console/login", {"token": TOKEN}, headers=form) == 401
    assert http(f"{app}/api/kiosk/session", {"secret": server.kiosk_secret}, headers=form) == 403
    cookie = kiosk_cookie(app, server.kiosk_secret)
    assert http(f"{app}/api/kiosk/auth.begin", {"reader": "R"}, headers={**form, **cookie}) == 400
    assert http(f"{app}/api/kiosk/auth.begin", ["not", "an", "object"], headers=cookie) == 400


def test_no_token_configured_means_a_closed_console() -> None:
    settings = WebSettings(publish=SETTINGS.publish, control=SETTINGS.control, console_token="")
    with WebServer(settings) as web:
        assert http(f"{web.url}/api/console/login", {"token": ""}) == 401
        assert http(f"{web.url}/api/console/state", headers={"Authorization": "Bearer "}) == 401


def test_a_kiosk_page_sends_only_the_pin_commands(server: WebServer) -> None:
    app, cookie = server.url, kiosk_cookie(server.url, server.kiosk_secret)
    assert http(f"{app}/api/kiosk/tap", {"card": "alice"}, headers=cookie) == 404
    assert http(f"{app}/api/kiosk/points.redeem", {}, headers=cookie) == 404
    assert http(f"{app}/api/kiosk/auth.pin?pin=1234", headers=cookie) == 405  # the PIN never travels in a URL


def test_latency_and_taps_per_hour_come_from_the_daemons_timestamps() -> None:
    stats = Stats()
    stats.add({"type": "card.presented", "reader": "R", "ts": "2026-11-23T01:02:03.000Z"})
    stats.add({"type": "card.identified", "reader": "R", "ts": "2026-11-23T01:02:03.250Z"})
    stats.add({"type": "card.presented", "reader": "R", "ts": "2026-11-23T02:00:00.000Z"})
    assert stats.as_json() == {
        "taps_per_hour": [{"hour": "2026-11-23T01", "taps": 1}, {"hour": "2026-11-23T02", "taps": 1}],
        "latency_ms": [250.0],
    }


def test_the_console_keeps_a_reader_that_went_away() -> None:
    now: list[dict[str, Any]] = [
        {"name": "R0", "backend": "pcsc", "card": None},
        {"name": "R1", "backend": "pcsc", "card": "jpki"},
    ]
    events = {
        "R1": {"type": "reader.error", "reader": "R1", "ts": "t1", "data": {"reason": "wedged"}},
        "R2": {"type": "reader.removed", "reader": "R2", "ts": "t2", "data": {"backend": "pcsc"}},
        "R3": {"type": "reader.added", "reader": "R3", "ts": "t3", "data": {"backend": "pcsc"}},
    }
    assert reader_health(now, events) == [
        {"name": "R0", "backend": "pcsc", "card": None, "state": "ok", "since": None},
        {"name": "R1", "backend": "pcsc", "card": "jpki", "state": "error: wedged", "since": "t1"},
        {"name": "R2", "backend": "pcsc", "card": None, "state": "removed", "since": "t2"},
    ]


def test_a_card_read_clears_a_reader_error() -> None:
    hub = Hub(SETTINGS)
    hub.publish({"type": "reader.error", "reader": "R", "ts": "t1", "data": {"reason": "wedged"}})
    assert reader_health([{"name": "R"}], hub.reader_events)[0]["state"] == "error: wedged"
    hub.publish({"type": "card.identified", "reader": "R", "ts": "t2", "data": {"kind": "jpki"}})
    assert reader_health([{"name": "R"}], hub.reader_events)[0]["state"] == "ok"


def test_readerd_web_refuses_a_lan_address_without_allow_non_loopback() -> None:
    assert cli.main(["web", "--listen", "0.0.0.0:8470"]) == ExitCode.CONFIG
    assert cli.main(["web", "--listen", "nonsense"]) == ExitCode.CONFIG


def test_readerd_web_refuses_a_console_token_under_128_bits(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Exit 78 before anything listens, saying how to make a good one. Cost: under 0.1 s."""
    config = tmp_path / "readerd.toml"
    for weak in ("t0ken", "0123456789abcdef0123456789abcde", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"):
        config.write_text(f'[web]\nlisten = "127.0.0.1:0"\nconsole_token = "{weak}"\n')
        assert cli.main(["web", "--config", str(config)]) == ExitCode.CONFIG
        assert "token_urlsafe" in capfd.readouterr().err
    for strong in (TOKEN, secrets.token_hex(16), secrets.token_urlsafe(16)):
        assert token_bits(strong) >= 128
    with pytest.raises(ConfigError, match="console_token"):
        create_app(
            WebSettings(publish="tcp://127.0.0.1:1", control="tcp://127.0.0.1:1", console_token="short")  # noqa: S106 - weak on purpose
        )
