"""The PIN never appears anywhere: not in logs at TRACE (APDU traces, plugin hook tracing), not on the bus,
not in any file the daemon writes.

``readerd run --simulate`` runs as a subprocess at TRACE with ``--trace-plugins`` (the installed example
plugin is loaded, so hook tracing has work to do). Three paths: success, a wrong PIN, and the card
pulled during VERIFY. Then stdout, stderr, every event on the public feed and every file under the state
directory are searched for each PIN as ASCII, hex (spaced and unspaced, either case) and base64.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from readerd.bus.control_client import ControlSession, request
from tests.support.ports import free_tcp_port

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent
CARD_PIN = "8027"  # unusual digits, so that a hit is the PIN and not a port or a date
WRONG_PIN = "6159"
READER = "Simulated Reader 00"


def encodings(pin: str) -> dict[str, re.Pattern[bytes]]:
    raw = pin.encode("ascii")
    forms = {
        # A bare 4-digit number may occur inside a UUID or a port; as a token of its own it is the PIN.
        "ascii": rb"(?<![0-9A-Za-z])" + re.escape(raw) + rb"(?![0-9A-Za-z])",
        "hex": re.escape(raw.hex().encode()),
        "hex spaced": re.escape(" ".join(f"{b:02x}" for b in raw).encode()),
        "base64": re.escape(base64.b64encode(raw).rstrip(b"=")),
        "full width": re.escape("".join(chr(0xFF10 + int(c)) for c in pin).encode()),
    }
    return {name: re.compile(pattern, re.IGNORECASE) for name, pattern in forms.items()}


def leaks(blob: bytes, pins: tuple[str, ...]) -> list[str]:
    return [f"{pin} as {name}" for pin in pins for name, rx in encodings(pin).items() if rx.search(blob)]


def test_the_search_finds_what_it_looks_for() -> None:
    """The detector itself: each encoding of the PIN is found, an unrelated number is not."""
    assert leaks(b'{"pin": "8027"}', (CARD_PIN,)) == ["8027 as ascii"]
    assert leaks(b"> 00 20 00 80 04 38 30 32 37", (CARD_PIN,)) == ["8027 as hex spaced"]
    assert leaks(b"0020008004 38303237".replace(b" ", b""), (CARD_PIN,)) == ["8027 as hex"]
    assert leaks(b"data=ODAyNw==", (CARD_PIN,)) == ["8027 as base64"]
    assert leaks("８０２７".encode(), (CARD_PIN,)) == ["8027 as full width"]
    assert leaks(b"port 38027, id 1f8027ab", (CARD_PIN,)) == []


class Daemon:
    def __init__(self, tmp_path: Path) -> None:
        self.publish = f"tcp://127.0.0.1:{free_tcp_port()}"
        tcp_control = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.state_dir = tmp_path / ".readerd"
        self.control = f"ipc://{self.state_dir / 'run' / 'operator.sock'}"  # the local operator socket
        self.stdout = tmp_path / "stdout.log"
        self.stderr = tmp_path / "stderr.log"
        self.events: list[bytes] = []
        config = tmp_path / "readerd.toml"  # the installed example plugin, named so that it loads
        config.write_text('[plugins]\nload = ["hello"]\n', encoding="utf-8")
        args = ["run", "--simulate", "--config", str(config), "--log-level", "TRACE", "--trace-plugins"]
        args += ["--heartbeat", "0.1"]
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [str(BIN / "readerd"), *args, "--publish", self.publish, "--control", tcp_control],
                cwd=tmp_path,
                stdout=out,
                stderr=err,
            )
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.publish)
        deadline = time.monotonic() + 30
        while not self.sub.poll(100):  # the first heartbeat: the daemon is up and the feed is live
            assert self.process.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, "readerd never published a heartbeat"

    def next_event(self, wanted: str, timeout: float = 10) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                frames = self.sub.recv_multipart()
                self.events.append(frames[-1])
                envelope: dict[str, object] = json.loads(frames[-1])
                if envelope["type"] == wanted:
                    return envelope
        raise AssertionError(f"no {wanted} within {timeout} s")

    def tap(self, **args: object) -> None:
        assert request(self.control, "tap", {"reader": READER, "pin": CARD_PIN, **args})["ok"]

    def stop(self) -> None:
        while self.sub.poll(0):
            self.events.append(self.sub.recv_multipart()[-1])
        self.sub.close()
        self.process.terminate()
        assert self.process.wait(15) == 0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        if d.process.poll() is None:
            d.process.kill()
            d.process.wait()


def authenticate(d: Daemon, ui: ControlSession, pin: str) -> dict[str, object]:
    begun = ui.request("auth.begin", {"reader": READER})
    assert begun["ok"], begun
    reply: dict[str, object] = ui.request("auth.pin", {"auth_id": begun["result"]["auth_id"], "pin": pin})
    return reply


def test_pin_never_appears_in_output_events_or_state(daemon: Daemon) -> None:
    with ControlSession(daemon.control) as ui:
        daemon.tap(card="alice")
        daemon.next_event("card.identified")
        success = authenticate(daemon, ui, CARD_PIN)
        daemon.next_event("card.authenticated")
        wrong = authenticate(daemon, ui, WRONG_PIN)
        daemon.next_event("card.auth_failed")
        # The card leaves the field on the VERIFY that carries the PIN.
        daemon.tap(card="bob", faults=[{"action": "remove", "match": "0020008004"}])
        daemon.next_event("card.identified")
        pulled = authenticate(daemon, ui, CARD_PIN)
        daemon.next_event("card.auth_failed")
    daemon.stop()

    assert success["ok"], success
    assert not wrong["ok"]
    assert wrong["error"]["code"] == "wrong_pin"  # type: ignore[index]
    assert not pulled["ok"]
    assert pulled["error"]["code"] == "pin_result_unknown"  # type: ignore[index]

    pins = (CARD_PIN, WRONG_PIN)
    stderr = daemon.stderr.read_bytes()
    assert b"<PIN redacted>" in stderr  # the APDU trace ran, and redacted the VERIFY
    assert b'"hook call"' in stderr or b"hook call" in stderr  # plugin tracing ran
    found = {"stdout": leaks(daemon.stdout.read_bytes(), pins), "stderr": leaks(stderr, pins)}
    found["events"] = leaks(b"\n".join(daemon.events), pins)
    files = [p for p in daemon.state_dir.rglob("*") if p.is_file()]
    assert any(p.name == "members.db" for p in files)
    for path in files:
        found[str(path.relative_to(daemon.state_dir))] = leaks(path.read_bytes(), pins)
    assert {where: hits for where, hits in found.items() if hits} == {}
