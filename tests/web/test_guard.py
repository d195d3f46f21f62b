"""Who may use ``readerd web``: the kiosk API needs the per-boot secret, a foreign ``Host`` is refused, a
PIN cannot be locked by curl, the console throttles logins and ends its sessions.

The real app on a thread (:class:`readerd.web.WebServer`) against a real daemon on the sim backend
(``daemon`` in conftest), asked as curl would ask it (urllib, no browser). Console time is an injectable
clock: nothing sleeps."""

from __future__ import annotations

import grp
import os
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from readerd.config import WebConfig
from readerd.testing import RunningDaemon
from readerd.web import WebServer, WebSettings, with_web_config
from readerd.web.guard import ConsoleSessions, LoginThrottle, ensure_kiosk_secret
from readerd.web.launch import main as launch
from readerd.web.launch import read_secret
from tests.web.conftest import TOKEN
from tests.web.test_app import call, http, kiosk_cookie

READER = "Sim 00"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def card_off(daemon: RunningDaemon) -> Iterator[None]:
    yield
    daemon.request("remove", {"reader": READER})


def tries_left(daemon: RunningDaemon) -> int:
    """The card's PIN tries, as the daemon reads them (a VERIFY without data: no try spent)."""
    reply = daemon.request("auth.begin", {"reader": READER})
    assert reply["ok"], reply
    left: int = reply["result"]["tries_left"]
    return left


def test_the_kiosk_api_refuses_without_the_secret(web: WebServer) -> None:
    """Every /api/kiosk/* call without a session opened with the secret is 403, saying what to do; the
    secret file is 0600 (no kiosk group configured). Cost: about 0.1 s."""
    secret_file = Path(web.settings.kiosk_secret_file)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = read_secret([secret_file])
    assert len(secret) >= 22  # at least 128 bits of base64url
    for path, body in (
        ("auth.begin", {"reader": READER}),
        ("auth.pin", {"auth_id": "x", "pin": "1234", "allow_last_try": True}),
        ("events", None),
    ):
        status, _headers, reply = call(f"{web.url}/api/kiosk/{path}", body)
        assert status == 403, path
        assert reply["error"]["code"] == "kiosk_secret_required"
        assert "launcher" in reply["error"]["message"]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    bodies: list[dict[str, object]] = [{"secret": wrong}, {"secret": ""}, {}, {"secret": [secret]}]
    for body in bodies:
        assert http(f"{web.url}/api/kiosk/session", body) == 403
    cookie = kiosk_cookie(web.url, secret)
    status, _headers, reply = call(f"{web.url}/api/kiosk/auth.begin", {"reader": READER}, cookie)
    assert status == 200
    assert reply["error"]["code"] == "no_card"  # the daemon answered: the session works


def test_a_foreign_host_is_refused(web: WebServer, daemon: RunningDaemon) -> None:
    """A page of another site that points its name at 127.0.0.1 (DNS rebinding) gets 421 on every path;
    127.0.0.1, localhost and names of web.hosts with the listening port pass. Cost: about 0.3 s."""
    port = urllib.parse.urlsplit(web.url).port
    assert port is not None
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", f"127.0.0.1:{port + 1}"):
        for path, body in (
            ("/kiosk", None),
            ("/static/kiosk.js", None),
            ("/api/kiosk/session", {"secret": web.kiosk_secret}),
            ("/api/console/login", {"token": TOKEN}),
        ):
            status, _headers, reply = call(f"{web.url}{path}", body, {"Host": host})
            assert (status, reply["error"]["code"]) == (421, "host_not_allowed"), (host, path)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert http(f"{web.url}/kiosk", headers={"Host": host}) == 200
    settings = WebSettings(publish=daemon.publish, control=daemon.control, hosts=("kiosk-7.example",))
    with WebServer(settings) as named:
        named_port = urllib.parse.urlsplit(named.url).port
        assert http(f"{named.url}/kiosk", headers={"Host": f"kiosk-7.example:{named_port}"}) == 200
        assert http(f"{named.url}/kiosk", headers={"Host": f"kiosk-8.example:{named_port}"}) == 421


def test_curl_cannot_lock_a_pin(web: WebServer, daemon: RunningDaemon, card_off: None) -> None:
    """The attack any local account could make: POSTs of auth.begin and auth.pin with wrong PINs and
    ``allow_last_try``. Without the secret nothing reaches the daemon. With a session but without the
    confirmation the app gave with ``last_try`` (another session's, a reused one, none), the last try
    is refused before the card sees a PIN. The card keeps its last try, as the daemon reads it.
    Cost: about 1.5 s."""
    with daemon.subscriber("card.identified") as events:
        daemon.tap("victim", reader=READER, pin="4321")
        events.until(lambda env: env.get("reader") == READER)
    assert tries_left(daemon) == 3
    api = f"{web.url}/api/kiosk"
    for _ in range(3):  # any local account, as curl
        assert http(f"{api}/auth.begin", {"reader": READER}) == 403
        assert http(f"{api}/auth.pin", {"auth_id": "x", "pin": "0000", "allow_last_try": True}) == 403
    assert tries_left(daemon) == 3

    mine = kiosk_cookie(web.url, web.kiosk_secret)
    for left in (2, 1):  # two wrong PINs spend two tries, as on the keypad
        begun = call(f"{api}/auth.begin", {"reader": READER}, mine)[2]["result"]
        assert "last_try_confirmation" not in begun
        wrong = {"auth_id": begun["auth_id"], "pin": "0000"}
        reply = call(f"{api}/auth.pin", wrong, mine)[2]
        assert reply["error"]["code"] == "wrong_pin"
        assert reply["error"]["details"]["tries_left"] == left

    begun = call(f"{api}/auth.begin", {"reader": READER}, mine)[2]["result"]
    assert begun["last_try"] is True
    confirmation, auth_id = begun["last_try_confirmation"], begun["auth_id"]
    last = {"auth_id": auth_id, "pin": "0000", "allow_last_try": True}
    theirs = kiosk_cookie(web.url, web.kiosk_secret)  # another session (another page, another client)
    status, _headers, reply = call(f"{api}/auth.pin", {**last, "confirmation": confirmation}, theirs)
    assert (status, reply["error"]["code"]) == (409, "last_try_confirmation_required")
    status, _headers, reply = call(f"{api}/auth.pin", last, mine)  # no confirmation: and it is spent
    assert (status, reply["error"]["code"]) == (409, "last_try_confirmation_required")
    status, _headers, reply = call(f"{api}/auth.pin", {**last, "confirmation": confirmation}, mine)
    assert status == 409  # one use: the refusal above spent it
    assert call(f"{api}/auth.pin", {**last, "allow_last_try": "yes"}, mine)[0] == 400
    assert tries_left(daemon) == 1


def console(daemon: RunningDaemon, clock: Clock) -> WebServer:
    settings = WebSettings(publish=daemon.publish, control=daemon.control, console_token=TOKEN, clock=clock)
    return WebServer(settings)


def test_console_logins_are_throttled(daemon: RunningDaemon) -> None:
    """Five wrong tokens in a minute lock the address out for 60 s (429 with Retry-After), the right
    token and the Bearer header included; the next lockout doubles; a success forgets. Cost: 0.3 s."""
    clock = Clock()
    with console(daemon, clock) as web:
        login, state = f"{web.url}/api/console/login", f"{web.url}/api/console/state"
        for _ in range(5):
            assert http(login, {"token": "wrong"}) == 401
        status, headers, reply = call(login, {"token": TOKEN})
        assert (status, headers["retry-after"], reply["error"]["code"]) == (429, "60", "too_many_attempts")
        assert call(state, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 429
        clock.now += 61
        for _ in range(4):
            assert http(state, headers={"Authorization": "Bearer wrong"}) == 401
        assert http(login, {"token": "wrong"}) == 401
        assert call(login, {"token": TOKEN})[1]["retry-after"] == "120"
        clock.now += 121
        assert http(login, {"token": TOKEN}) == 200
        for _ in range(4):
            assert http(login, {"token": "wrong"}) == 401
        assert http(login, {"token": TOKEN}) == 200  # four, then the right one: no lockout


def test_console_sessions_expire_and_log_out(daemon: RunningDaemon) -> None:
    """A session ends 30 min unused, 8 h after its login however used, and at logout; its cookie is
    HttpOnly, SameSite=Strict, with a Max-Age (not Secure: this is loopback). Cost: about 0.5 s."""
    clock = Clock()
    with console(daemon, clock) as web:
        login, state = f"{web.url}/api/console/login", f"{web.url}/api/console/state"

        def log_in() -> dict[str, str]:
            status, headers, _reply = call(login, {"token": TOKEN})
            assert status == 200
            attributes = {a.strip().split("=")[0].lower() for a in headers["set-cookie"].split(";")}
            assert {"httponly", "samesite", "max-age", "path"} <= attributes
            assert "secure" not in attributes
            assert "samesite=strict" in headers["set-cookie"].lower()
            return {"Cookie": headers["set-cookie"].split(";")[0]}

        cookie = log_in()
        assert http(state, headers=cookie) == 200
        clock.now += 29 * 60
        assert http(state, headers=cookie) == 200
        clock.now += 31 * 60
        status, _headers, reply = call(state, headers=cookie)
        assert (status, reply["error"]["code"]) == (401, "session_expired")

        cookie = log_in()
        for _ in range(19):  # in use every 25 minutes: 7 h 55 min
            clock.now += 25 * 60
            assert http(state, headers=cookie) == 200
        clock.now += 10 * 60
        assert call(state, headers=cookie)[2]["error"]["code"] == "session_expired"

        cookie = log_in()
        assert http(f"{web.url}/api/console/logout", {}, cookie) == 200
        assert call(state, headers=cookie)[2]["error"]["code"] == "no_session"


def test_throttle_and_sessions_keep_to_their_bounds() -> None:
    """Addresses are counted apart; the tables stay bounded under a flood. Cost: under 0.1 s."""
    clock = Clock()
    throttle = LoginThrottle(clock, attempts=2, max_addresses=3)
    assert throttle.failed("10.0.0.1") == 0
    assert throttle.failed("10.0.0.1") == 60
    assert throttle.wait("10.0.0.1") == 60
    assert throttle.wait("10.0.0.2") == 0
    for i in range(10):
        throttle.failed(f"10.0.1.{i}")
    assert len(throttle._by_address) == 3
    sessions = ConsoleSessions(clock, idle=10, max_age=100, max_sessions=2)
    first, *_others = [sessions.open() for _ in range(3)]
    assert sessions.check(first) == "no_session"


def test_the_secret_file_is_the_kiosk_groups_and_lasts_the_boot(tmp_path: Path) -> None:
    """0600, or 0640 to the configured group; the same secret after a restart; a file with other rights
    or a symlink in its place is replaced, never followed. Cost: under 0.1 s."""
    path = tmp_path / "run" / "kiosk-secret"
    secret = ensure_kiosk_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_kiosk_secret(path) == secret  # readerd web restarted: the open page keeps working
    group = grp.getgrgid(os.getgid()).gr_name
    grouped = ensure_kiosk_secret(path, group)
    assert grouped != secret
    assert (stat.S_IMODE(path.stat().st_mode), path.stat().st_gid) == (0o640, os.getgid())
    path.chmod(0o644)
    assert ensure_kiosk_secret(path, group) != grouped
    bait = tmp_path / "bait"
    bait.write_text("A" * 43)
    path.unlink()
    path.symlink_to(bait)
    assert ensure_kiosk_secret(path) != "A" * 43
    assert not path.is_symlink()
    assert bait.read_text() == "A" * 43


def test_the_launcher_keeps_the_secret_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launch page (0600 in a 0700 directory) carries the secret in the URL's fragment; what the
    browser's command line gets is that file's path. Cost: under 0.1 s."""
    secret_file = tmp_path / "kiosk-secret"
    secret = ensure_kiosk_secret(secret_file)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
    (tmp_path / "user").mkdir()
    argv = ["--reader", "SONY FeliCa RC-S300/P 00 00", "--secret-file", str(secret_file), "--no-exec"]
    assert launch(argv) == 0
    page = Path(capsys.readouterr().out.strip())
    assert secret not in str(page)
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
    assert f"kiosk?reader=SONY%20FeliCa%20RC-S300%2FP%2000%2000#secret={secret}" in page.read_text()
    missing = ["--reader", "R", "--secret-file", str(tmp_path / "none"), "--wait", "0", "--no-exec"]
    assert launch(missing) == 69


def test_the_web_keys_reach_the_app() -> None:
    """[web] keys on who may use the app, and their checks (exit 78). Cost: under 0.1 s."""
    base = WebSettings(publish="tcp://127.0.0.1:1", control="tcp://127.0.0.1:1")
    web = WebConfig(
        console_token=TOKEN,
        kiosk_secret_file="/run/x/kiosk-secret",  # noqa: S106 - a path
        kiosk_secret_group="kiosk",  # noqa: S106 - a group
        hosts=("kiosk-7.example",),
        console_idle=60,
        console_max_age=600,
        console_login_attempts=3,
    )
    settings = with_web_config(base, web)
    assert (settings.kiosk_secret_file, settings.kiosk_secret_group) == ("/run/x/kiosk-secret", "kiosk")
    assert (settings.hosts, settings.console_idle, settings.console_max_age) == (
        ("kiosk-7.example",),
        60,
        600,
    )
    assert settings.console_login_attempts == 3
    with pytest.raises(Exception, match="console_token"):
        with_web_config(base, WebConfig(console_token="short"))  # noqa: S106 - weak on purpose
    with pytest.raises(Exception, match="positive"):
        with_web_config(base, WebConfig(console_idle=0))
