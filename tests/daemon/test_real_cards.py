"""The daemon against the real counterparts of its cards and readers (the issue "real counterparts"):
certificates as big as a citizen's, the ATRs real cards show, and readers that go away and come back.

Everything goes through a private pcscd with vpcd readers and the virtual My Number Card.
Cost: each test starts a private pcscd and an in-process daemon (~1 s); the reader-return test restarts
pcscd three times (~5 s); the module takes about 15 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from cryptography.hazmat.primitives import serialization

from readerd.config import PcscConfig, SessionConfig
from readerd.reading.backends.pcsc_state import LOOKS_LIKE_MY_NUMBER
from simulators.inprocess import CardModel
from simulators.mynumber import (
    ATR_OTHER_CARD,
    NAMED_ATRS,
    CardBehavior,
    CardProfile,
    VirtualMyNumberCard,
    build_card,
)
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge
from tests.support.daemon import RunningDaemon, hardware_config, running_daemon
from tests.support.pcscd import PrivatePcscd

pytestmark = [pytest.mark.pcscd, pytest.mark.timeout(120)]

READER0 = "Virtual PCD 00 00"
SECOND_ENTRY = ["Virtual PCD 1 00 00", "Virtual PCD 1 00 01"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiStore:
    return PkiStore(tmp_path_factory.mktemp("pki"))


@contextmanager
def pcsc_daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    config = hardware_config(
        tmp_path,
        ("pcsc",),
        pcsc=PcscConfig(allow_virtual_readers=True),
        sessions=SessionConfig(deadline=5.0, repeat_window=10.0),
    )
    with running_daemon(config) as d:
        yield d


@contextmanager
def card_on(pcscd: PrivatePcscd, slot: int, card: CardModel) -> Iterator[ViccBridge]:
    bridge = ViccBridge(card, port=pcscd.ports[slot])
    bridge.insert()
    try:
        yield bridge
    finally:
        bridge.remove()
        assert bridge.errors == []


def cert_length(pki: PkiStore, name: str) -> int:
    return len(pki.user_auth_certificate(name).public_bytes(serialization.Encoding.DER))


def tap_until_removed(d: RunningDaemon, pcscd: PrivatePcscd, card: CardModel) -> list[dict[str, Any]]:
    """One tap on reader 0: the card events from insertion to removal."""
    with d.subscriber("card.") as sub:
        with card_on(pcscd, 0, card):
            events = sub.until(lambda e: e["type"] in ("card.identified", "card.read_aborted"), timeout=15)
        events += sub.until(lambda e: e["type"] == "card.removed", timeout=15)
    return events


def reader_names(d: RunningDaemon) -> list[str]:
    return [str(r["name"]) for r in d.request("readers")["result"]["readers"]]


def wait_for_readers(d: RunningDaemon, want: list[str], timeout: float = 10) -> list[str]:
    """The daemon's readers once they are ``want`` (bounded poll of the ``readers`` request)."""
    deadline = time.monotonic() + timeout
    while (names := reader_names(d)) != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return names


# --- 1. certificates as big as a citizen's -----------------------------------------------------------


def test_a_real_size_certificate_in_two_apdus(
    private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path
) -> None:
    card = build_card(CardProfile(name="alice"), pki)
    with pcsc_daemon(tmp_path) as d:
        events = tap_until_removed(d, private_pcscd, card)
    identified = next(e for e in events if e["type"] == "card.identified")
    assert 1500 <= cert_length(pki, "alice") <= 1700
    assert identified["data"]["apdus"] == 2
    assert identified["data"]["read_path"] == "extended_sfi"
    assert len(card.log) == 2  # what the card itself received


def test_a_real_size_certificate_in_short_apdus(
    private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path
) -> None:
    """A card that refuses extended length: the first tap costs the refused extended read, SELECT EF and
    the short reads (3 + ceil(len/256)); the reader then remembers, and the next tap saves the refusal."""
    length = cert_length(pki, "bob")
    profile = CardProfile(name="bob", behavior=CardBehavior(extended_length=False))
    with pcsc_daemon(tmp_path) as d:
        first_card = build_card(profile, pki)
        first = tap_until_removed(d, private_pcscd, first_card)
        second_card = build_card(profile, pki)
        second = tap_until_removed(d, private_pcscd, second_card)
    one = next(e for e in first if e["type"] == "card.identified")
    two = next(e for e in second if e["type"] == "card.identified")
    assert 1500 <= length <= 1700
    assert one["data"]["read_path"] == two["data"]["read_path"] == "short"
    assert one["data"]["apdus"] == len(first_card.log) == 3 + math.ceil(length / 256)
    assert two["data"]["apdus"] == len(second_card.log) == 2 + math.ceil(length / 256)
    assert one["data"]["pseudonym"] == two["data"]["pseudonym"]
    # Every read the card got was short (at most 256 bytes asked for).
    reads = [r.raw for r in second_card.log if r.raw[1] == 0xB0]
    assert len(reads) == math.ceil(length / 256)
    assert all(len(raw) == 5 for raw in reads)


# --- 2. the ATRs real cards show: a hint in the log, never the identification -------------------------


def _inserted_logs(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry.get("event") == "card inserted"]


def test_a_my_number_atr_without_the_jpki_ap_is_not_a_my_number_card(
    private_pcscd: PrivatePcscd, tmp_path: Path
) -> None:
    impostor = VirtualMyNumberCard([], atr=NAMED_ATRS["contact"])  # every SELECT answers 6A82
    with structlog.testing.capture_logs() as logs, pcsc_daemon(tmp_path) as d, d.subscriber("card.") as sub:
        with card_on(private_pcscd, 0, impostor):
            presented = sub.until(lambda e: e["type"] == "card.presented", timeout=10)[-1]
        rest = sub.until(lambda e: e["type"] == "card.removed", timeout=10)
    assert presented["data"]["kind"] == "unknown"
    assert [e["type"] for e in rest] == ["card.removed"]  # no card.identified, no read at all
    assert [r.raw[:4].hex().upper() for r in impostor.log] == ["00A4040C"]  # the SELECT alone decided
    (inserted,) = _inserted_logs(logs)
    assert inserted["looks_like"] == LOOKS_LIKE_MY_NUMBER
    assert inserted["atr"] == NAMED_ATRS["contact"].hex().upper()


def test_a_jpki_card_with_an_unknown_atr_is_identified(
    private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path
) -> None:
    card = build_card(CardProfile(name="alice", atr=ATR_OTHER_CARD), pki)  # a MIFARE Classic's ATR
    with structlog.testing.capture_logs() as logs, pcsc_daemon(tmp_path) as d:
        events = tap_until_removed(d, private_pcscd, card)
    assert [e["type"] for e in events] == ["card.presented", "card.identified", "card.removed"]
    assert events[0]["data"]["kind"] == "jpki"
    (inserted,) = _inserted_logs(logs)
    assert inserted["looks_like"] is None
    assert inserted["atr"] == ATR_OTHER_CARD.hex().upper()


def test_a_reader_that_puts_the_pupi_in_the_atr_still_remembers_its_read_path(
    private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path
) -> None:
    """Two taps of the same card show two ATRs (a new random PUPI each): the second tap still uses the
    read path learned on the first, and both taps look like a My Number Card in the log."""
    profile = CardProfile(name="carol", atr="contactless-pupi", behavior=CardBehavior(extended_length=False))
    cards = [build_card(profile, pki), build_card(profile, pki)]
    if cards[0].atr == cards[1].atr:  # one chance in 2**32: draw again
        cards[1] = build_card(profile, pki)
    length = cert_length(pki, "carol")
    with structlog.testing.capture_logs() as logs, pcsc_daemon(tmp_path) as d:
        taps = [tap_until_removed(d, private_pcscd, card) for card in cards]
    identified = [next(e for e in tap if e["type"] == "card.identified") for tap in taps]
    assert cards[0].atr != cards[1].atr
    assert [e["data"]["apdus"] for e in identified] == [
        3 + math.ceil(length / 256),
        2 + math.ceil(length / 256),
    ]
    assert [entry["looks_like"] for entry in _inserted_logs(logs)] == [LOOKS_LIKE_MY_NUMBER] * 2


# --- 3. readers that go away and come back ------------------------------------------------------------


def test_readers_come_back_after_a_usb_reset(
    private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path
) -> None:
    """pcscd restarted with fewer reader entries (a reader lost in a suspend or a USB reset), then with
    the original ones: the daemon reports the lost readers removed, then added, and reads a card on one."""
    private_pcscd.restart(entries=2)
    four = [READER0, "Virtual PCD 00 01", *SECOND_ENTRY]
    with pcsc_daemon(tmp_path) as d, d.subscriber("reader.", "card.") as sub:
        assert wait_for_readers(d, four) == four  # announced before the subscriber connected: ask
        private_pcscd.restart(entries=1)
        gone = sub.until(
            lambda e: e["type"] == "reader.added" and e["reader"] == "Virtual PCD 00 01", timeout=20
        )
        private_pcscd.restart(entries=2)
        back = sub.until(lambda e: e["type"] == "reader.added" and e["reader"] == SECOND_ENTRY[1], timeout=20)
        with card_on(private_pcscd, 2, build_card(CardProfile(name="alice"), pki)):
            identified = sub.until(lambda e: e["type"] == "card.identified", timeout=15)[-1]
        readers = reader_names(d)
    removed = {e["reader"] for e in gone if e["type"] == "reader.removed"}
    assert set(SECOND_ENTRY) <= removed
    assert {e["reader"] for e in gone if e["type"] == "reader.added"} == {READER0, "Virtual PCD 00 01"}
    assert set(SECOND_ENTRY) <= {e["reader"] for e in back if e["type"] == "reader.added"}
    assert identified["reader"] == SECOND_ENTRY[0]
    assert readers == four
