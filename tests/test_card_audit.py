"""The cross-process card-info audit (tests/support/card_audit.py, ``READERD_CARD_AUDIT``).

What a simulated card writes for which SELECT, what the transports add, what a private pcscd's APDU log
holds (PINs cut), and the proof that counts: an inner pytest session in which a subprocess, not the test
process, selects a card-info AP fails, while one whose subprocess selects only JPKI (and whose marked
test's subprocess selects a card-info AP on purpose) passes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from protocols.jpki_constants import JPKI_AID
from simulators.inprocess import InProcessReader
from simulators.mynumber import (
    CARD_AUDIT_ENV,
    KENHOJO_AID,
    Application,
    BinaryEf,
    Pin,
    VirtualMyNumberCard,
)
from simulators.vicc import ViccBridge
from tests.support import card_audit
from tests.support.pcscd import PrivatePcscd

ROOT = Path(__file__).resolve().parents[1]
OTHER_AID = bytes.fromhex("D392F000260100000002")  # not on the card, not card-info


def select(aid: bytes) -> bytes:
    return bytes.fromhex("00A4040C") + bytes([len(aid)]) + aid


def small_card() -> VirtualMyNumberCard:
    """A card with a JPKI AP (a public EF, the auth PIN) and one card-info AP: no keys, costs nothing."""
    jpki = Application(JPKI_AID, "JPKI", {0x0006: BinaryEf(b"TOKEN"), 0x0018: Pin(b"8027", 3)})
    return VirtualMyNumberCard([jpki, Application(KENHOJO_AID, "kenhojo")], label="mallory")


def audit_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.touches_card_info
def test_a_card_writes_a_line_per_application_select_other_than_jpki(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv(CARD_AUDIT_ENV, str(audit))
    card = small_card()
    card.power_on()
    card.process(select(JPKI_AID))
    card.process(bytes.fromhex("00A4020C020006"))  # SELECT EF inside JPKI: not an application select
    assert audit_lines(audit) == []
    assert card.process(select(OTHER_AID))[-2:].hex() == "6a82"
    card.process(select(KENHOJO_AID))
    card.process(select(KENHOJO_AID[:4]))  # a partial DF name a card-info AP begins with
    card.process(bytes.fromhex("01A4040C0A") + KENHOJO_AID)  # another channel: refused, still asked
    lines = audit_lines(audit)
    assert [(line["aid"], line["card_info"]) for line in lines] == [
        (OTHER_AID.hex().upper(), False),
        (KENHOJO_AID.hex().upper(), True),
        (KENHOJO_AID[:4].hex().upper(), True),
        (KENHOJO_AID.hex().upper(), True),
    ]
    first = lines[0]
    assert (first["pid"], first["card"], first["via"]) == (os.getpid(), "mallory", "card")
    assert card_audit.node_of(str(first["test"])) == os.environ["PYTEST_CURRENT_TEST"].rsplit(" (", 1)[0]


@pytest.mark.touches_card_info
def test_transports_audit_models_that_do_not_audit_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv(CARD_AUDIT_ENV, str(audit))

    class OtherCard:  # any card model: a FeliCa card on PC/SC, a test double
        atr = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")

        def power_on(self) -> bytes:
            return self.atr

        def power_off(self) -> None:
            pass

        def process(self, raw: bytes) -> bytes:
            return bytes.fromhex("6A82")

    reader = InProcessReader()
    reader.insert(OtherCard())
    reader.transmit(select(KENHOJO_AID))
    reader.insert(small_card())
    reader.transmit(select(KENHOJO_AID))  # the card writes this one itself: one line, not two
    assert [(line["card"], line["via"]) for line in audit_lines(audit)] == [
        ("OtherCard", "inprocess"),
        ("mallory", "card"),
    ]


@pytest.mark.touches_card_info
def test_an_unwritable_audit_file_is_logged_and_the_card_still_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CARD_AUDIT_ENV, str(tmp_path))  # a directory: os.open fails
    card = small_card()
    card.power_on()
    with capture_logs() as logs:
        assert card.process(select(KENHOJO_AID))[-2:].hex() == "9000"
    assert [(e["event"], e["log_level"]) for e in logs] == [("card audit line not written", "error")]


def test_the_session_check_reads_card_lines_and_pcscd_logs(tmp_path: Path) -> None:
    pcscd_log = tmp_path / "pcscd.log"
    kenhojo = " ".join(f"{b:02X}" for b in select(KENHOJO_AID))
    pcscd_log.write_text(
        "=== readerd tests: start 1, readers [], ports [1], test: t.py::test_on_purpose (call) ===\n"
        f"00000082 APDU: {kenhojo} \n"
        "00000087 SW: 90 00 \n"
        "=== readerd tests: start 2, readers [], ports [1], test: t.py::test_bug (setup) ===\n"
        "00000070 APDU: 00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01 \n"
        "00000070 APDU: 00 A4 02 0C 02 00 0A \n"
        f"00000082 APDU: {kenhojo} \n"
    )
    audit = tmp_path / "audit.jsonl"
    lines = [
        {
            "pid": 7,
            "card": "alice",
            "aid": "D392F000260100000002",
            "card_info": False,
            "via": "card",
            "test": None,
        },
        {
            "pid": 8,
            "card": "bob",
            "aid": KENHOJO_AID.hex().upper(),
            "card_info": True,
            "via": "vicc",
            "test": None,
        },
        {
            "pid": 9,
            "card": "eve",
            "aid": KENHOJO_AID.hex().upper(),
            "card_info": True,
            "via": "card",
            "test": "t.py::test_on_purpose (call)",
        },
        {"pid": 9, "pcscd_log": str(pcscd_log)},
    ]
    audit.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"pid": 10, "card_in\n')
    found = card_audit.findings(audit, {"t.py::test_on_purpose"})
    assert [(f.pid, f.card, f.via, card_audit.node_of(f.test)) for f in found] == [
        (8, "bob", "vicc", None),
        (None, "?", "unreadable audit line", None),  # a torn line cannot be proved clean
        (None, "(behind pcscd)", "pcscd", "t.py::test_bug"),
    ]
    assert "pid 8: SELECT of AID D3921000310001010408 on card 'bob' via vicc" in card_audit.report(found)


@pytest.mark.pcscd
@pytest.mark.touches_card_info
def test_private_pcscd_logs_the_apdus_it_forwards_with_pins_cut(private_pcscd: PrivatePcscd) -> None:
    from smartcard import scard  # noqa: PLC0415, TID251 - the log of what pyscard sent through pcscd

    from tests.simulators.wire import connected, pcsc_context, verify, wait_state  # noqa: PLC0415

    bridge = ViccBridge(small_card(), port=private_pcscd.ports[0])
    bridge.insert()
    try:
        with pcsc_context() as ctx:
            wait_state(ctx, private_pcscd.readers[0], scard.SCARD_STATE_PRESENT)
            with connected(ctx, private_pcscd.readers[0]) as card:
                assert card.send(select(KENHOJO_AID))[-2:].hex() == "9000"
                card.send(select(JPKI_AID))
                card.send(bytes.fromhex("00A4020C020018"))
                assert card.send(verify("8027"))[-2:].hex() == "9000"
    finally:
        bridge.remove()
    private_pcscd.stop()  # sed has written pcscd's last lines when stop returns
    assert bridge.errors == []
    text = private_pcscd.log_text(limit=10**6)
    assert "APDU: 00 20 00 80 04 <PIN redacted>" in text
    assert "38 30 32 37" not in text  # the PIN "8027" in the hex pcscd writes
    mine = os.environ["PYTEST_CURRENT_TEST"].rsplit(" (", 1)[0]
    found = [
        f for f in card_audit.pcscd_selects(private_pcscd.log_path) if card_audit.node_of(f.test) == mine
    ]
    assert [f.aid for f in found] == [KENHOJO_AID.hex().upper()]


CHILD = """
import sys
from protocols.jpki_constants import JPKI_AID
from simulators.mynumber import KENHOJO_AID, Application, VirtualMyNumberCard
card = VirtualMyNumberCard([Application(JPKI_AID, "JPKI"), Application(KENHOJO_AID, "k")], label="mallory")
card.power_on()
aid = KENHOJO_AID if sys.argv[1] == "card-info" else JPKI_AID
assert card.process(bytes.fromhex("00A4040C0A") + aid) == bytes.fromhex("9000")
"""

INNER = """
import subprocess, sys
import pytest

def child(what):
    process = subprocess.Popen([sys.executable, "-c", {child!r}, what])
    print(f"CHILD_PID={{process.pid}}")
    assert process.wait(60) == 0

def test_child():
    child({what!r})

@pytest.mark.touches_card_info
def test_child_on_purpose():
    child("card-info")
"""


def _inner_session(directory: Path, what: str) -> subprocess.Popen[str]:
    directory.mkdir()
    command = card_audit.inner_session(directory, INNER.format(child=CHILD, what=what), "-s")
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_card_info_select_from_a_subprocess_fails_the_session(tmp_path: Path) -> None:
    """Two inner sessions side by side; in each, one test's subprocess selects a card-info AP on purpose
    (marked: excused) and the other's selects a card-info AP (must fail) or only JPKI (must pass)."""
    sessions = {what: _inner_session(tmp_path / what, what) for what in ("card-info", "jpki")}
    out = {what: session.communicate(timeout=120)[0] for what, session in sessions.items()}
    bad, good = out["card-info"], out["jpki"]
    assert sessions["jpki"].returncode == 0, good
    assert "2 passed" in good, good
    assert "card-info audit" not in good, good
    assert sessions["card-info"].returncode == 1, bad
    assert "2 passed" in bad, bad  # every test passed: the session-end audit alone fails it
    pids = re.findall(r"CHILD_PID=(\d+)", bad)
    assert len(pids) == 2
    assert "card-info audit: 1 SELECT(s) of a card-info AP that no touches_card_info test explains" in bad, (
        bad
    )
    expected = f"pid {pids[0]}: SELECT of AID {KENHOJO_AID.hex().upper()} on card 'mallory' via card"
    assert f"{expected}, test test_inner.py::test_child (call)" in bad, bad
    assert f"pid {pids[1]}:" not in bad  # the marked test's subprocess is excused
