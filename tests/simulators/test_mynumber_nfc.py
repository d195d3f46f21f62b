"""The virtual My Number Card over nfcpy's ``udp`` driver as a Type B ISO-DEP card (the RC-S380 path).

The reader side is nfcpy's own: ``ContactlessFrontend('udp:127.0.0.1:PORT').connect(rdwr=...)`` with
target ``106B`` yields a ``Type4BTag``, and ``JpkiSession`` drives it through ``tag.transceive``. Every wait
is bounded: ``connect`` has a ``terminate`` deadline, nfcpy's frames time out after the card's FWT, and
the card thread stops within a second.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nfc
import nfc.tag.tt4
import pytest
from cryptography.hazmat.primitives import serialization

from protocols.errors import CardRemovedError
from protocols.jpki import JpkiSession
from protocols.jpki_constants import JPKI_AID
from readerd.reading.backends.nfc import NfcpyIsoDepTransport
from simulators.faults import FaultScript, FaultyCard
from simulators.inprocess import CardModel
from simulators.mynumber import CardProfile, VirtualMyNumberCard, build_card
from simulators.mynumber_nfc import (
    APPLICATION_DATA,
    PROTOCOL_INFO,
    IsoDepCardLayer,
    Kind,
    LoopbackListenerDevice,
    MyNumberUdpCard,
    sensb_res,
)
from simulators.pki import PkiStore
from tests.support.transcript import HEX

pytestmark = pytest.mark.timeout(60)

#: Longest a test waits for nfcpy to find and activate the card.
CONNECT_SECONDS = 10.0


@contextlib.contextmanager
def emulated(card: CardModel) -> Iterator[MyNumberUdpCard]:
    sim = MyNumberUdpCard(card).start()
    try:
        yield sim
    finally:
        sim.stop()
    assert sim.error is None


@contextlib.contextmanager
def nfc_tag(sim: MyNumberUdpCard, seconds: float = CONNECT_SECONDS) -> Iterator[Any]:
    """A reader on ``udp:127.0.0.1:PORT`` that found the card as ``106B``; the field goes off on exit."""
    clf = nfc.ContactlessFrontend(sim.path)
    try:
        deadline = time.monotonic() + seconds
        tag = clf.connect(
            rdwr={
                "targets": ["106B"],
                "on-connect": lambda tag: False,  # hand the tag back instead of waiting for removal
                "iterations": 1,
                "interval": 0.05,
                "beep-on-connect": False,
            },
            terminate=lambda: time.monotonic() > deadline,
        )
        assert isinstance(tag, nfc.tag.tt4.Type4Tag), f"no Type 4 tag within {seconds} s: {tag!r}"
        yield tag
    finally:
        clf.close()


def _der(store: PkiStore, name: str) -> bytes:
    return store.user_auth_certificate(name).public_bytes(serialization.Encoding.DER)


# --- over a real nfcpy udp pair ------------------------------------------------------------------------
def test_jpki_identify_over_nfcpy_type_b(tmp_path: Path) -> None:
    store = PkiStore(tmp_path)
    card = build_card(CardProfile(name="alice"), store)
    with emulated(card) as sim, nfc_tag(sim) as tag:
        assert type(tag).__name__ == "Type4BTag"
        assert bytes(tag.identifier) == sim.pupis[-1]
        transport = NfcpyIsoDepTransport(tag)
        assert not transport.capabilities.extended_length
        identity = JpkiSession(transport).identify()
    assert identity.certificate.der == _der(store, "alice")
    assert len(identity.certificate.der) > 253  # more than one ISO-DEP frame: response chaining worked
    assert sim.activations == 1
    assert card.selected_aids == [JPKI_AID]
    assert not card.touched_card_info()


def test_extended_length_reads_travel_as_chained_frames(pki_store: PkiStore) -> None:
    """nfcpy's ISO-DEP layer carries any APDU length; only ``send_apdu`` refuses extended APDUs."""
    card = build_card(CardProfile(name="alice"), pki_store)
    with emulated(card) as sim, nfc_tag(sim) as tag:
        identity = JpkiSession(NfcpyIsoDepTransport(tag, extended_length=True)).identify()
    assert identity.certificate.der == _der(pki_store, "alice")
    reads = [r.raw for r in card.log if r.raw[1] == 0xB0]
    assert len(reads) == 1  # one extended READ BINARY for the whole certificate
    assert reads[0][4] == 0


def test_long_command_is_chained_by_nfcpy_and_acknowledged_by_the_card(pki_store: PkiStore) -> None:
    card = build_card(CardProfile(name="alice"), pki_store)
    apdu = HEX("00A4040C 00012C") + bytes(300)  # extended Lc: 307 bytes > MIU 253
    with emulated(card) as sim, nfc_tag(sim) as tag:
        answer = NfcpyIsoDepTransport(tag).transmit(apdu)
    assert answer == HEX("6A82")
    assert card.log[-1].raw == apdu


def test_pupi_is_fresh_for_every_activation(pki_store: PkiStore) -> None:
    card = build_card(CardProfile(name="alice"), pki_store)
    with emulated(card) as sim:
        seen = []
        for _ in range(2):
            with nfc_tag(sim) as tag:
                seen.append(bytes(tag.identifier))
                assert NfcpyIsoDepTransport(tag).transmit(HEX("00A4040C 0A") + JPKI_AID) == HEX("9000")
        deadline = time.monotonic() + 5
        while sim.activations < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == sim.pupis
    assert seen[0] != seen[1]


def test_slow_card_asks_for_waiting_time_extensions(pki_store: PkiStore) -> None:
    """A STALL longer than nfcpy's patience (FWT 309 ms, then 3 R(NAK) retries) needs S(WTX)."""
    stalled = FaultyCard(
        build_card(CardProfile(name="alice"), pki_store),
        FaultScript.from_data([{"action": "stall", "match": "00B0", "seconds": 2.0}]),
    )
    with emulated(stalled) as sim, nfc_tag(sim) as tag:
        started = time.monotonic()
        identity = JpkiSession(NfcpyIsoDepTransport(tag)).identify()
        took = time.monotonic() - started
    assert identity.certificate.der == _der(pki_store, "alice")
    assert took >= 2.0
    assert sim.wtx_requests >= 5


def test_card_pulled_mid_command_is_card_removed(pki_store: PkiStore) -> None:
    pulled = FaultyCard(
        build_card(CardProfile(name="alice"), pki_store),
        FaultScript.from_data([{"action": "remove", "match": "00B0"}]),
    )
    with emulated(pulled) as sim, nfc_tag(sim) as tag:
        started = time.monotonic()
        with pytest.raises(CardRemovedError):
            JpkiSession(NfcpyIsoDepTransport(tag)).identify()
        assert time.monotonic() - started < 5  # nfcpy gives up after its R(NAK) retries
        assert not tag.is_present


SELECT_CERT = [HEX("00A4040C0A") + JPKI_AID, HEX("00A4020C02000A")]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"action": "garbage", "match": "00B0", "data": "DEADBEEF"}, lambda cert: HEX("DEADBEEF")),
        ({"action": "status", "match": "00B0", "sw": "6F00"}, lambda cert: HEX("6F00")),
        ({"action": "truncate", "match": "00B0", "keep": 10}, lambda cert: cert[:10]),
    ],
    ids=["garbage", "status", "truncate"],
)
def test_answer_faults_reach_nfcpy_byte_for_byte(
    pki_store: PkiStore, fault: dict[str, object], expected: Any
) -> None:
    """What nfcpy's reader gets from ``tag.transceive``: the scripted bytes, carried as they are."""
    card = FaultyCard(build_card(CardProfile(name="alice"), pki_store), FaultScript.from_data([fault]))
    with emulated(card) as sim, nfc_tag(sim) as tag:
        for apdu in SELECT_CERT:
            assert bytes(tag.transceive(bytearray(apdu))) == HEX("9000")
        assert bytes(tag.transceive(bytearray(HEX("00B0000000")))) == expected(_der(pki_store, "alice"))
        assert bytes(tag.transceive(bytearray(HEX("00B0000000"))))[-2:] == HEX("9000")  # fired once


def test_set_pin_tries_over_nfcpy(pki_store: PkiStore) -> None:
    fault = {"action": "set_pin_tries", "match": "00200080", "tries_left": 1}
    card = FaultyCard(build_card(CardProfile(name="alice"), pki_store), FaultScript.from_data([fault]))
    with emulated(card) as sim, nfc_tag(sim) as tag:
        assert bytes(tag.transceive(bytearray(SELECT_CERT[0]))) == HEX("9000")
        assert bytes(tag.transceive(bytearray(HEX("00A4020C020018")))) == HEX("9000")
        assert bytes(tag.transceive(bytearray(HEX("00200080")))) == HEX("63C1")


def test_vanish_takes_the_card_away_and_it_comes_back_with_a_new_pupi(pki_store: PkiStore) -> None:
    fault = {"action": "vanish", "match": "00B0", "seconds": 1}
    card = FaultyCard(build_card(CardProfile(name="alice"), pki_store), FaultScript.from_data([fault]))
    with emulated(card) as sim:
        with nfc_tag(sim) as tag, pytest.raises(CardRemovedError):
            JpkiSession(NfcpyIsoDepTransport(tag)).identify()
        # The reader polls again and finds the card once it is back: a new activation, a new PUPI.
        with nfc_tag(sim) as tag:
            identity = JpkiSession(NfcpyIsoDepTransport(tag)).identify()
            assert bytes(tag.identifier) == sim.pupis[-1]
    assert identity.certificate.der == _der(pki_store, "alice")
    assert sim.activations == 2
    assert sim.pupis[0] != sim.pupis[1]


def test_the_card_listens_on_loopback_only() -> None:
    device = LoopbackListenerDevice("127.0.0.1", 0)
    try:
        sock = device.socket
        assert sock is not None
        assert sock.getsockname()[0] == "127.0.0.1"
        assert device.port != 0
    finally:
        device.close()
    with pytest.raises(ValueError, match="loopback"):
        LoopbackListenerDevice("0.0.0.0", 0)  # noqa: S104 - the address being refused


def test_a_port_in_use_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(OSError, match="in use"):
            LoopbackListenerDevice("127.0.0.1", taken.getsockname()[1])


# --- the card's ISO 14443-4 layer without sockets ------------------------------------------------------
PUPI = HEX("11223344")


def test_sensb_res_carries_the_atr_historical_bytes() -> None:
    atr = VirtualMyNumberCard([]).atr  # 3B 88 80 01 | AppData | ProtInfo | MBLI | TCK
    assert sensb_res(PUPI) == HEX("50 11223344") + atr[4:8] + atr[8:11]
    assert atr[4:11] == APPLICATION_DATA + PROTOCOL_INFO
    assert atr[11] == 0x00  # MBLI 0 and CID 0: the ATTRIB answer


def _layer(attrib: str = "1D 11223344 00 08 01 00") -> IsoDepCardLayer:
    layer = IsoDepCardLayer(PUPI)
    assert layer.attrib(HEX(attrib)) is not None
    return layer


def test_attrib_answer_and_refusals() -> None:
    assert IsoDepCardLayer(PUPI).attrib(HEX("1D 11223344 00 08 01 00")) == HEX("00")
    assert IsoDepCardLayer(PUPI).attrib(HEX("1D 11223344 00 08 01 05")) == HEX("05")
    assert IsoDepCardLayer(PUPI).attrib(HEX("1D 99999999 00 08 01 00")) is None  # another card's PUPI
    assert IsoDepCardLayer(PUPI).attrib(HEX("050010")) is None


def test_response_chaining_follows_the_readers_acks() -> None:
    layer = _layer("1D 11223344 00 05 01 00")  # FSDI 5: 64-byte frames, 61 INF bytes
    action = layer.receive(HEX("02 00B00000 00"))
    assert action.kind is Kind.APDU
    assert action.apdu == HEX("00B0000000")
    response = bytes(range(100)) + HEX("9000")
    assert layer.first_block(response) == HEX("12") + response[:61]
    assert layer.receive(HEX("A3")).frame == HEX("03") + response[61:]
    assert layer.receive(HEX("A3")).frame == HEX("03") + response[61:]  # same number: repeat
    assert layer.receive(HEX("B3")).frame == HEX("03") + response[61:]  # R(NAK) same number: repeat
    assert layer.receive(HEX("B2")).frame == HEX("A3")  # R(NAK) other number (presence check): R(ACK)


def test_command_chaining_is_acknowledged() -> None:
    layer = _layer()
    assert layer.receive(HEX("12 00A4040C")).frame == HEX("A2")
    action = layer.receive(HEX("03 0A") + JPKI_AID)
    assert action.kind is Kind.APDU
    assert action.apdu == HEX("00A4040C 0A") + JPKI_AID


def test_cid_and_nad_and_deselect() -> None:
    layer = _layer("1D 11223344 00 08 01 03")  # CID 3
    assert layer.receive(HEX("02 00A4")).kind is Kind.IGNORE  # no CID: not for a card with CID 3
    assert layer.receive(HEX("0A 05 00A4")).kind is Kind.IGNORE  # CID 5
    action = layer.receive(HEX("0E 03 00 00A4040C"))  # CID 3 and a NAD byte
    assert action.kind is Kind.APDU
    assert action.apdu == HEX("00A4040C")
    assert layer.first_block(HEX("9000")) == HEX("0A 03 9000")
    assert layer.wtx_request(2) == HEX("FA 03 02")
    assert IsoDepCardLayer.is_wtx_response(HEX("FA 03 02"))
    deselect = layer.receive(HEX("CA 03"))
    assert deselect.kind is Kind.DESELECT
    assert deselect.frame == HEX("CA 03")
