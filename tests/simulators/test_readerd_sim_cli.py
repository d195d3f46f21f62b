"""``readerd-sim`` as users start it: a separate process, driven through stdin, read by real readers.

``readerd-sim mynumber --vpcd`` is read through the private pcscd with bare pyscard; ``readerd-sim felica``
is read by nfcpy's own reader side on ``udp:``. Both are checked, from the kernel's socket tables, to hold
no socket outside loopback. The simulator logs JSON lines on stderr (it is a pipe here): the tests wait
for its events instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nfc
import nfc.tag.tt3
import pytest
from cryptography.hazmat.primitives import serialization
from smartcard import scard  # noqa: TID251 - the test reads the card as pyscard sees it

from simulators.felica import (
    ATR_FELICA_PCSC,
    PMM_LITE_S,
    FelicaCardProfile,
    bathhouse_card,
    checkin_card,
    transport_card,
)
from simulators.pki import CaKind, PkiStore
from tests.simulators.netsockets import inet_sockets
from tests.simulators.wire import SELECT_JPKI, SW_OK, connected, pcsc_context, select_ef, verify, wait_state
from tests.support.pcscd import PrivatePcscd

pytestmark = pytest.mark.timeout(60)

READERD_SIM = Path(sys.executable).with_name("readerd-sim")
EVENT_TIMEOUT = 10.0
IDM = bytes.fromhex("012E4CD29A15F601")


class SimProcess:
    """One ``readerd-sim`` process: its JSON log events as they come, commands on its stdin."""

    def __init__(self, *args: str) -> None:
        assert READERD_SIM.exists(), f"{READERD_SIM} is not installed (pip install -e .)"
        self.process = subprocess.Popen(
            [str(READERD_SIM), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self._events.put(event)

    def wait_event(self, name: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The next logged event called ``name`` (earlier ones of other names are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.process.poll() is not None and self._events.empty()):
                pytest.fail(f"readerd-sim never logged {name!r}:\n{''.join(self.lines)}")
            try:
                event = self._events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if event.get("event") == name:
                return event

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def quit(self, timeout: float = EVENT_TIMEOUT) -> int:
        self.command("quit")
        return self.wait(timeout)

    def wait(self, timeout: float = EVENT_TIMEOUT) -> int:
        returncode = self.process.wait(timeout)
        self._reader.join(timeout)
        return returncode

    def stop(self) -> None:
        """Teardown: kill this process (by its own handle) if a failed test left it running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def readerd_sim(*args: str) -> Iterator[SimProcess]:
    sim = SimProcess(*args)
    try:
        yield sim
    finally:
        sim.stop()


def run_to_end(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [str(READERD_SIM), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stderr


def assert_loopback_only(pid: int) -> None:
    sockets = inet_sockets(pid)
    assert sockets, "the simulator holds no internet socket at all"
    assert [s for s in sockets if not s.loopback] == [], sockets


# --- readerd-sim mynumber -------------------------------------------------------------------------------
@pytest.mark.pcscd
def test_readerd_sim_mynumber_is_read_through_pcscd(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    cache, reader = tmp_path / "pki", private_pcscd.readers[0]
    vpcd = f"127.0.0.1:{private_pcscd.ports[0]}"
    with readerd_sim("mynumber", "--vpcd", vpcd, "--profile", "erin", "--cache", str(cache)) as sim:
        sim.wait_event("virtual My Number Card ready")
        with pcsc_context() as ctx:
            wait_state(ctx, reader, scard.SCARD_STATE_PRESENT)
            with connected(ctx, reader) as card:
                assert card.send(SELECT_JPKI) == SW_OK
                assert card.send(select_ef(0x000A)) == SW_OK
                cert = card.read_binary_extended()
                assert card.send(select_ef(0x000B)) == SW_OK
                ca = card.read_binary_extended()
            # A dialled connection to vpcd, on loopback, and nothing listening.
            sockets = inet_sockets(sim.pid)
            assert [(s.table, str(s.address)) for s in sockets] == [("tcp", "127.0.0.1")]
            assert not any(s.listening for s in sockets)

            sim.command("remove")
            wait_state(ctx, reader, scard.SCARD_STATE_EMPTY)
            sim.command("insert")
            wait_state(ctx, reader, scard.SCARD_STATE_PRESENT)
            with connected(ctx, reader) as card:
                assert card.send(SELECT_JPKI) == SW_OK
                assert card.send(select_ef(0x0006)) == SW_OK
                assert card.read_binary_extended().rstrip(b" ") == b"JPKIAPICCTOKEN2"
            assert_loopback_only(sim.pid)
            assert sim.quit() == 0
            wait_state(ctx, reader, scard.SCARD_STATE_EMPTY)

    store = PkiStore(cache)  # the cache the simulator process filled
    assert cert == store.user_auth_certificate("erin").public_bytes(serialization.Encoding.DER)
    assert ca == store.ca(CaKind.USER_AUTH).der


@pytest.mark.pcscd
def test_readerd_sim_mynumber_with_profile_options_and_a_fault_script(
    private_pcscd: PrivatePcscd, tmp_path: Path
) -> None:
    faults = tmp_path / "faults.toml"
    faults.write_text('[[faults]]\naction = "status"\nsw = "6F00"\nmatch = "00B0"\n')
    vpcd = f"127.0.0.1:{private_pcscd.ports[1]}"  # the second reader of the pair
    args = ["--vpcd", vpcd, "--profile", "frank", "--tries", "1", "--no-extended", "--contact"]
    with readerd_sim("mynumber", *args, "--faults", str(faults), "--cache", str(tmp_path / "pki")) as sim:
        sim.wait_event("virtual My Number Card ready")
        reader = private_pcscd.readers[1]
        with pcsc_context() as ctx:
            wait_state(ctx, reader, scard.SCARD_STATE_PRESENT)
            with connected(ctx, reader) as card:
                assert card.status()[2] == bytes.fromhex("3BE000FF8131FE4514")  # --contact
                assert card.send(SELECT_JPKI) == SW_OK
                assert card.send(select_ef(0x000A)) == SW_OK
                assert card.send(bytes.fromhex("00B0000000")) == b"\x6f\x00"  # the scripted fault
                assert card.send(bytes.fromhex("00B00000000000")) == b"\x67\x00"  # --no-extended
                assert card.read_binary_short()[:2] == b"\x30\x82"
                assert card.send(select_ef(0x0018)) == SW_OK
                assert card.send(verify(None)) == b"\x63\xc1"  # --tries 1
        assert sim.quit() == 0


def test_readerd_sim_mynumber_on_nfcpy_udp(tmp_path: Path) -> None:
    """``--udp``: the RC-S380 path, a Type B ISO-DEP card read by nfcpy's own reader with plain APDUs."""
    cache = tmp_path / "pki"
    with readerd_sim("mynumber", "--udp", "127.0.0.1:0", "--profile", "gina", "--cache", str(cache)) as sim:
        path = sim.wait_event("virtual My Number Card ready")["path"]
        port = int(path.rsplit(":", 1)[1])
        assert [(s.table, str(s.address), s.port) for s in inet_sockets(sim.pid)] == [
            ("udp", "127.0.0.1", port)
        ]
        clf = nfc.ContactlessFrontend(path)
        try:
            deadline = time.monotonic() + EVENT_TIMEOUT
            tag = clf.connect(
                rdwr={
                    "targets": ["106B"],
                    "on-connect": lambda tag: False,
                    "iterations": 1,
                    "interval": 0.05,
                },
                terminate=lambda: time.monotonic() > deadline,
            )
            assert type(tag).__name__ == "Type4BTag"

            def send(apdu: bytes) -> bytes:
                return bytes(tag.transceive(bytearray(apdu)))

            assert send(SELECT_JPKI) == SW_OK
            assert send(select_ef(0x000A)) == SW_OK
            cert = b""
            while True:  # short READ BINARYs of 256 bytes by offset
                answer = send(bytes([0x00, 0xB0, len(cert) >> 8, len(cert) & 0xFF, 0x00]))
                assert answer[-2:] == SW_OK
                cert += answer[:-2]
                if len(answer) - 2 < 256:
                    break
        finally:
            clf.close()
        assert sim.quit() == 0
    assert cert == PkiStore(cache).user_auth_certificate("gina").public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("args", "returncode", "message"),
    [
        (["--vpcd", "192.0.2.1:35963"], 2, "loopback only, not '192.0.2.1'"),
        (["--vpcd", "0.0.0.0:35963"], 2, "loopback only"),
        (["--vpcd", "127.0.0.1:http"], 2, "bad port"),
        (["--faults", "{faults}"], 78, "must be one of"),
        (["--udp", "0.0.0.0:0"], 2, "loopback only"),
        (["--udp", "127.0.0.1:0", "--vpcd", "127.0.0.1:35963"], 2, "not allowed with argument"),
    ],
    ids=["remote", "wildcard", "port", "bad-faults", "udp-wildcard", "udp-and-vpcd"],
)
def test_readerd_sim_mynumber_refuses_clearly(
    tmp_path: Path, args: list[str], returncode: int, message: str
) -> None:
    faults = tmp_path / "bad.json"
    faults.write_text('[{"action": "explode"}]')
    args = [a.format(faults=faults) for a in args]
    code, stderr = run_to_end("mynumber", *args, "--cache", str(tmp_path / "pki"))
    assert code == returncode
    assert message in stderr
    assert "Traceback" not in stderr


# --- readerd-sim felica ---------------------------------------------------------------------------------
FELICA_CASES = {
    "bathhouse": (
        ["--kind", "bathhouse", "--member", "00012345", "--birth-year", "1949", "--ward", "0x0165"],
        bathhouse_card("00012345", 1949, 0x0165, 1, idm=IDM),
        0x000B,
    ),
    "checkin": (
        ["--kind", "checkin", "--member", "70123456789"],
        checkin_card("70123456789", idm=IDM),
        0x000B,
    ),
    "transport": (["--kind", "transport"], transport_card(idm=IDM), 0x090F),
}


def _connect(clf: Any, seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    return clf.connect(
        rdwr={"targets": ["212F"], "on-connect": lambda tag: False, "iterations": 1, "interval": 0.05},
        terminate=lambda: time.monotonic() > deadline,
    )


def _read(tag: Any, service: int, count: int, attempts: int = 3) -> bytes:
    """Read Without Encryption as nfcpy does it, given ``attempts`` before a timeout counts.

    nfcpy waits only as long as the PMm says (12 ms for the transit card's 2 blocks, 3 tries): a card in
    another process on a loaded 2-core CI machine can miss that. The content is still checked exactly.
    """
    code = nfc.tag.tt3.ServiceCode(service >> 6, service & 0x3F)
    blocks = [nfc.tag.tt3.BlockCode(n) for n in range(count)]
    for attempt in range(attempts):
        try:
            return bytes(tag.read_without_encryption([code], blocks))
        except nfc.tag.tt3.Type3TagCommandError as e:
            if e.errno != nfc.tag.TIMEOUT_ERROR or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", sorted(FELICA_CASES))
def test_readerd_sim_felica_answers_nfcpy(kind: str) -> None:
    args, profile, service = FELICA_CASES[kind]
    expected: FelicaCardProfile = profile
    with readerd_sim("felica", "--udp", "127.0.0.1:0", "--idm", IDM.hex(), *args) as sim:
        path = sim.wait_event("felica card ready")["path"]
        sockets = inet_sockets(sim.pid)
        port = int(path.rsplit(":", 1)[1])
        assert [(s.table, str(s.address), s.port) for s in sockets] == [("udp", "127.0.0.1", port)]

        clf = nfc.ContactlessFrontend(path)
        try:
            tag = _connect(clf)
            assert tag is not None
            assert bytes(tag.idm) == IDM
            assert tag.sys == expected.system_code
            blocks = expected.services[service]
            assert _read(tag, service, len(blocks)) == b"".join(blocks)
        finally:
            clf.close()

        sim.command("remove")
        sim.wait_event("removed")
        clf = nfc.ContactlessFrontend(path)
        try:
            assert _connect(clf, seconds=0.6) is None
        finally:
            clf.close()
        sim.command("insert")
        sim.wait_event("inserted")
        clf = nfc.ContactlessFrontend(path)
        try:
            tag = _connect(clf)
            assert tag is not None
            assert bytes(tag.idm) == IDM
        finally:
            clf.close()
        assert_loopback_only(sim.pid)
        assert sim.quit() == 0


def test_felica_udp_peer_gone_and_back() -> None:
    """The card's process ends mid-session: the reader sees silence (a timeout, as for a card taken
    away), not an error of its own, and finds the card again when a new one serves the same port."""
    args = ["--kind", "checkin", "--member", "42", "--idm", IDM.hex()]
    with readerd_sim("felica", "--udp", "127.0.0.1:0", *args) as first:
        path = first.wait_event("felica card ready")["path"]
        clf = nfc.ContactlessFrontend(path)
        try:
            tag = _connect(clf)
            assert _read(tag, 0x000B, 1)[:2] == b"42"
            assert first.quit() == 0
            # Up to two answers to earlier tries may still wait in the reader's socket on a loaded
            # machine (see test_felica_udp.py); after them, the silence.
            errors = []
            for _ in range(3):
                try:
                    _read(tag, 0x000B, 1, attempts=1)
                except nfc.tag.tt3.Type3TagCommandError as e:
                    errors.append(e.errno)
                    break
            assert errors == [nfc.tag.TIMEOUT_ERROR]
            assert not tag.is_present
            with readerd_sim("felica", "--udp", path.removeprefix("udp:"), *args) as second:
                second.wait_event("felica card ready")
                again = _connect(clf)  # the same reader, still open
                assert again is not None
                assert bytes(again.idm) == IDM
                assert second.quit() == 0
        finally:
            clf.close()


@pytest.mark.pcscd
def test_readerd_sim_felica_behind_pcscd_like_an_rc_s300(private_pcscd: PrivatePcscd) -> None:
    reader = private_pcscd.readers[0]
    vpcd = f"127.0.0.1:{private_pcscd.ports[0]}"
    with readerd_sim(
        "felica", "--vpcd", vpcd, "--kind", "checkin", "--member", "42", "--idm", IDM.hex()
    ) as sim:
        sim.wait_event("virtual FeliCa card (PC/SC) ready")
        with pcsc_context() as ctx:
            wait_state(ctx, reader, scard.SCARD_STATE_PRESENT)
            with connected(ctx, reader) as card:
                assert card.status()[2] == ATR_FELICA_PCSC  # PC/SC part 3, FeliCa 212K
                assert card.send(bytes.fromhex("FFCA000000")) == IDM + SW_OK  # GET DATA: the IDm
                assert card.send(bytes.fromhex("FFCA010000")) == PMM_LITE_S + SW_OK  # ... and the PMm
                assert card.send(SELECT_JPKI) == b"\x6e\x00"  # not an ISO 7816-4 card
            assert_loopback_only(sim.pid)
            assert sim.quit() == 0
            wait_state(ctx, reader, scard.SCARD_STATE_EMPTY)


@pytest.mark.parametrize(
    ("option", "endpoint", "message"),
    [
        ("--udp", "0.0.0.0:54321", "loopback only, not '0.0.0.0'"),
        ("--udp", "192.168.1.10:54321", "loopback only"),
        ("--udp", "[::]:54321", "loopback only"),
        ("--udp", "[::1]:54321", "IPv4 only"),
        ("--vpcd", "192.0.2.1:35963", "loopback only, not '192.0.2.1'"),
    ],
)
def test_readerd_sim_felica_refuses_non_loopback(option: str, endpoint: str, message: str) -> None:
    code, stderr = run_to_end("felica", option, endpoint)
    assert code == 2
    assert message in stderr


def test_readerd_sim_lists_its_commands() -> None:
    done = subprocess.run(
        [str(READERD_SIM), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    for command in ("demo", "mynumber", "felica"):
        assert command in done.stdout
