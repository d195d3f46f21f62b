"""The PIN never appears anywhere on the production path: the pcsc backend through a private pcscd and
vpcd, ``readerd web`` in front of it, and the kiosk page in chromium where the citizen types the PIN on
the on-screen keypad.

``readerd run`` (pcsc backend, TRACE, ``--trace-plugins``, the check-in plugin) and ``readerd web``
(TRACE, talking to the daemon's control socket as a kiosk screen does) run as subprocesses with their
logs in files. A simulated My Number Card sits in vpcd; in chromium the kiosk page starts the
authentication, a wrong PIN is typed, then the right one, and the page shows the result. Then the
daemon's log, the web server's log, every row of the event log, every message seen on the public feed,
the audit log, every table of every SQLite file under the state directory (the member directory, the
store) and every file there byte for byte are searched for both PINs in every encoding ``leaks`` knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zmq

from readerd.bus.control_client import request
from readerd.ops.keys import create_pseudonym_key
from readerd.web.launch import kiosk_url, read_secret, write_launch_page
from simulators.mynumber import CardProfile, build_card
from simulators.pki import CaKind, PkiStore, write_pem
from simulators.vicc import ViccBridge
from tests.auth.test_pin_never_appears import leaks
from tests.support.auth import pin_verifies
from tests.support.chromium import chromium
from tests.support.pcscd import PrivatePcscd
from tests.support.ports import free_tcp_port

pytestmark = [pytest.mark.pcscd, pytest.mark.web, pytest.mark.timeout(60)]

BIN = Path(sys.executable).parent
CARD_PIN = "8027"  # unusual digits, so that a hit is the PIN and not a port or a date
WRONG_PIN = "6159"
EVENT = "pin-proof"
WAIT_MS = 10_000


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def sockets_dir() -> Iterator[Path]:
    """The daemon's role sockets in a short directory (a socket path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="readerd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _toml(value: object) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of strings: JSON is TOML here


class Kiosk:
    """``readerd run`` on the private pcscd and ``readerd web`` in front of it, both subprocesses."""

    def __init__(self, tmp_path: Path, sockets: Path, anchor: Path, crl: Path) -> None:
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        key = self.state_dir / "pseudonym.key"
        create_pseudonym_key(key)
        self.publish = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.operator = f"ipc://{sockets / 'operator.sock'}"
        self.control = f"ipc://{sockets / 'control.sock'}"
        self.secret_file = tmp_path / "run" / "readerd-web" / "kiosk-secret"
        web_port = free_tcp_port()
        self.url = f"http://127.0.0.1:{web_port}"
        config = tmp_path / "readerd.toml"
        config.write_text(
            f"kiosk = 'pin-proof-kiosk'\nstate_dir = {_toml(str(self.state_dir))}\nbackends = ['pcsc']\n"
            f"[bus]\npublish = {_toml(self.publish)}\n"
            f"control = {_toml(f'tcp://127.0.0.1:{free_tcp_port()}')}\n"
            f"heartbeat_interval = 0.1\nsockets_dir = {_toml(str(sockets))}\n"
            f"[identity]\npseudonym_key_file = {_toml(str(key))}\n"
            "[pcsc]\nallow_virtual_readers = true\n"
            f"[auth]\ntrust_anchors = [{_toml(str(anchor))}]\ncrl_files = [{_toml(str(crl))}]\n"
            "[plugins]\nbuiltins = ['checkin']\n"
            f"[plugins.checkin]\nevent = '{EVENT}'\nallow_unenrolled = true\n"
            f"[web]\nlisten = '127.0.0.1:{web_port}'\nkiosk_secret_file = {_toml(str(self.secret_file))}\n",
            encoding="utf-8",
        )
        self.daemon_log = tmp_path / "daemon.log"
        self.web_log = tmp_path / "web.log"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.feed: list[bytes] = []
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.publish)
        self.config = config

    def start(self, pcscd: PrivatePcscd) -> None:
        common = ["--config", str(self.config), "--log-level", "TRACE", "--log-format", "json"]
        self._spawn(["run", *common, "--trace-plugins"], self.daemon_log, pcscd.env())
        deadline = time.monotonic() + 20
        while not self.sub.poll(100):  # the first heartbeat: the daemon is up and the feed is live
            self._alive()
            assert time.monotonic() < deadline, "readerd never published a heartbeat"
        # readerd web as on a kiosk: the control role (auth.begin/auth.pin), not the operator's.
        self._spawn(["web", *common, "--control", self.control], self.web_log, dict(os.environ))
        while True:
            self._alive()
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/kiosk", timeout=1):  # noqa: S310
                break  # answered (loopback)
            assert time.monotonic() < deadline, "readerd web never answered"
            time.sleep(0.05)

    def _spawn(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        with log.open("wb") as out:
            self.processes.append(
                subprocess.Popen([str(BIN / "readerd"), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
            )

    def _alive(self) -> None:
        for process, log in zip(self.processes, (self.daemon_log, self.web_log), strict=False):
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]

    def until(self, wanted: str, timeout: float = 10) -> dict[str, Any]:
        """Record every message on the feed up to the first event of type ``wanted``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                frames = self.sub.recv_multipart()
                self.feed.extend(frames)
                envelope: dict[str, Any] = json.loads(frames[-1])
                if envelope["type"] == wanted:
                    return envelope
        raise AssertionError(f"no {wanted} within {timeout} s")

    def stop(self) -> None:
        """Stop both (web first), draining the feed; each must exit cleanly (uvicorn re-raises the
        SIGTERM it handled once it has shut down, so readerd web ends by that signal)."""
        while self.sub.poll(0):
            self.feed.extend(self.sub.recv_multipart())
        self.sub.close()
        daemon, web = self.processes
        web.terminate()
        assert web.wait(15) in (0, -signal.SIGTERM)
        daemon.terminate()
        assert daemon.wait(15) == 0

    def kill(self) -> None:
        self.sub.close()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def sqlite_dump(path: Path) -> bytes:
    """Every row of every table of a SQLite file, as SQL text."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return "\n".join(db.iterdump()).encode()


def press(page: Any, digits: str) -> None:
    for digit in digits:
        page.click(f"#key-{digit}")


def test_pin_typed_in_chromium_through_pcscd_appears_nowhere(
    private_pcscd: PrivatePcscd, browser: Any, sockets_dir: Path, tmp_path: Path
) -> None:
    """Cost: a private pcscd, two subprocesses (daemon and web), chromium, a test CA and a card: about 6 s."""
    pki = PkiStore(tmp_path / "pki")
    card = build_card(CardProfile(name="alice", auth_pin=CARD_PIN), pki)
    anchor = write_pem(tmp_path / "anchors.pem", pki.ca(CaKind.USER_AUTH).certificate)
    crl = write_pem(tmp_path / "auth.crl", pki.ca(CaKind.USER_AUTH).crl([]))
    reader = private_pcscd.readers[0]
    kiosk = Kiosk(tmp_path, sockets_dir, anchor, crl)
    bridge = ViccBridge(card, port=private_pcscd.ports[0])
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="ja-JP")
    try:
        kiosk.start(private_pcscd)
        now = datetime.now(UTC)
        defined = request(
            kiosk.operator,
            "checkin.define_event",
            {
                "event_id": EVENT,
                "name": "区民まつり",
                "place": "区役所前広場",
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
                "capacity": 100,
                "idempotency_key": "pin-proof-e1",
            },
        )
        assert defined["ok"], defined

        page = context.new_page()
        secret = read_secret([kiosk.secret_file], wait=5)
        url = kiosk_url(kiosk.url, reader, secret, lang="ja", hold="30")
        page.goto(write_launch_page(url, tmp_path / "run" / "readerd-kiosk", reader).as_uri())
        page.wait_for_selector("body[data-connected=yes]", timeout=WAIT_MS)

        bridge.insert()
        identified = kiosk.until("card.identified")
        page.click("#pin-start", timeout=WAIT_MS)
        page.wait_for_selector("body[data-state=pin] #pin-tries:text('残り 3 回')", timeout=WAIT_MS)
        press(page, WRONG_PIN)
        page.click("#key-ok")
        page.wait_for_selector("#title:text('暗証番号が違います（残り 2 回）')", timeout=WAIT_MS)
        failed = kiosk.until("card.auth_failed")
        press(page, CARD_PIN)
        page.click("#key-ok")
        page.wait_for_selector(
            "body[data-state=authenticated] #title:text('本人確認ができました')", timeout=WAIT_MS
        )
        authenticated = kiosk.until("card.authenticated")
        bridge.remove()
        kiosk.until("card.removed")
        context.close()
        kiosk.stop()
    finally:
        bridge.remove()
        with contextlib.suppress(Exception):
            context.close()
        kiosk.kill()

    # The flow really happened, on this card, through pcscd: two PINs went to the card by VERIFY.
    assert identified["data"]["kind"] == "jpki"
    assert failed["data"]["reason"] == "wrong_pin"
    assert authenticated["data"]["assurance"] == "jpki_pin_signature"
    assert pin_verifies(card) == 2

    pins = (CARD_PIN, WRONG_PIN)
    daemon_log = kiosk.daemon_log.read_bytes()
    web_log = kiosk.web_log.read_bytes()
    assert b"<PIN redacted>" in daemon_log  # the APDU trace ran, and redacted the VERIFY
    assert b"hook call" in daemon_log  # plugin tracing ran
    assert web_log.count(b"'path': '/api/kiosk/auth.pin'") == 2  # both PINs went through readerd web
    found = {"daemon log": leaks(daemon_log, pins), "web log": leaks(web_log, pins)}
    found["feed"] = leaks(b"\n".join(kiosk.feed), pins)
    files = sorted(p for p in kiosk.state_dir.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert {"events.db", "members.db", "store.db", "audit.log"} <= names, names
    for path in files:
        where = str(path.relative_to(kiosk.state_dir))
        found[where] = leaks(path.read_bytes(), pins)
        if path.read_bytes()[:16] == b"SQLite format 3\x00":
            dump = sqlite_dump(path)
            found[f"{where} rows"] = leaks(dump, pins)
    events = sqlite_dump(kiosk.state_dir / "events.db")
    assert b"card.authenticated" in events  # the event log holds this flow
    assert b"operator_command" in (kiosk.state_dir / "audit.log").read_bytes()
    assert {where: hits for where, hits in found.items() if hits} == {}
