"""The virtual My Number Card behind the real stack: pyscard -> libpcsclite -> private pcscd -> vpcd -> vicc.

Only bare pyscard APDUs (tests/simulators/wire.py), no readerd session code: what another program written
against real cards would send. The certificates must arrive byte-identical to what the test PKI issued,
and the PIN counter must behave as the real card's (docs/card-facts.md §3.4) with pcscd in between.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from smartcard import scard  # noqa: TID251 - the test reads the card as pyscard sees it

from protocols.jpki_constants import JPKI_AID
from simulators.inprocess import CardModel
from simulators.mynumber import ATR_CONTACT, ATR_CONTACTLESS, CardBehavior, CardProfile, build_card
from simulators.pki import CaKind, PkiStore
from simulators.vicc import ViccBridge
from tests.simulators.wire import (
    SELECT_JPKI,
    SW_OK,
    Card,
    connected,
    pcsc_context,
    reader_state,
    select_ef,
    verify,
    wait_state,
)
from tests.support.pcscd import PrivatePcscd

pytestmark = [pytest.mark.pcscd, pytest.mark.timeout(60)]

EF_AUTH_CERT, EF_AUTH_CA, EF_AUTH_PIN, EF_AUTH_KEY = 0x000A, 0x000B, 0x0018, 0x0017


@contextmanager
def on_reader(pcscd: PrivatePcscd, card: CardModel, slot: int = 0) -> Iterator[tuple[int, Card]]:
    """The card inserted on ``slot``, seen present by pcscd, and connected: ``(context, card)``."""
    bridge = ViccBridge(card, port=pcscd.ports[slot])
    bridge.insert()
    try:
        with pcsc_context() as ctx:
            wait_state(ctx, pcscd.readers[slot], scard.SCARD_STATE_PRESENT)
            with connected(ctx, pcscd.readers[slot]) as handle:
                yield ctx, handle
    finally:
        bridge.remove()
    assert bridge.errors == []


def issued_der(root: Path, name: str) -> tuple[bytes, bytes]:
    """What the PKI issued, from its cache files through a store of its own (not the card's objects)."""
    store = PkiStore(root)
    cert = store.user_auth_certificate(name).public_bytes(serialization.Encoding.DER)
    return cert, store.ca(CaKind.USER_AUTH).der


@pytest.mark.parametrize(
    ("extended", "contactless"),
    [(True, True), (False, True), (False, False)],
    ids=["extended-contactless", "short-contactless", "short-contact"],
)
def test_certificates_read_through_pcscd_are_the_ones_the_pki_issued(
    private_pcscd: PrivatePcscd, tmp_path: Path, extended: bool, contactless: bool
) -> None:
    root = tmp_path / "pki"
    profile = CardProfile(
        name="alice", contactless=contactless, behavior=CardBehavior(extended_length=extended)
    )
    card = build_card(profile, PkiStore(root))
    with on_reader(private_pcscd, card) as (ctx, reader):
        atr = ATR_CONTACTLESS if contactless else ATR_CONTACT
        assert reader_state(ctx, private_pcscd.readers[0])[1] == atr
        assert reader.status()[2] == atr
        assert reader.send(SELECT_JPKI) == SW_OK
        read = reader.read_binary_extended if extended else reader.read_binary_short
        assert reader.send(select_ef(EF_AUTH_CERT)) == SW_OK
        cert = read()
        assert reader.send(select_ef(EF_AUTH_CA)) == SW_OK
        ca = read()
        if not extended:  # the card refuses extended APDUs as its profile says, through pcscd too
            assert reader.send(bytes.fromhex("00B00000000000")) == b"\x67\x00"

    issued_cert, issued_ca = issued_der(root, "alice")
    assert cert == issued_cert
    assert ca == issued_ca
    x509.load_der_x509_certificate(cert).verify_directly_issued_by(x509.load_der_x509_certificate(ca))
    # pcscd and vpcd passed the APDUs through unchanged: the card received exactly what was sent.
    sent = [bytes(r.raw) for r in card.log]
    assert sent[:2] == [SELECT_JPKI, select_ef(EF_AUTH_CERT)]
    assert all(apdu[:2] in (b"\x00\xa4", b"\x00\xb0") for apdu in sent)


def test_three_wrong_pins_block_through_pcscd_and_blocked_stays_blocked(
    private_pcscd: PrivatePcscd, pki_store: PkiStore
) -> None:
    card = build_card(CardProfile(name="carol", auth_pin="4321"), pki_store)
    with on_reader(private_pcscd, card) as (_ctx, reader):
        assert reader.send(SELECT_JPKI) == SW_OK
        assert reader.send(select_ef(EF_AUTH_PIN)) == SW_OK
        assert reader.send(verify(None)) == b"\x63\xc3"
        answers = [reader.send(verify("0000")) for _ in range(4)]
        assert answers == [b"\x63\xc2", b"\x63\xc1", b"\x63\xc0", b"\x69\x84"]
        assert reader.send(verify("4321")) == b"\x69\x84", "the right PIN does not unblock"
        assert reader.send(verify(None)) == b"\x63\xc0"  # the bare query once blocked (profile option)

        # A warm reset (SCARD_RESET_CARD) is a power cycle for the card: the counter is in its EEPROM.
        assert reader.reconnect(scard.SCARD_RESET_CARD) == scard.SCARD_S_SUCCESS
        assert reader.send(SELECT_JPKI) == SW_OK
        assert reader.send(select_ef(EF_AUTH_PIN)) == SW_OK
        assert reader.send(verify("4321")) == b"\x69\x84"
        assert reader.send(verify(None)) == b"\x63\xc0"


def test_the_right_pin_resets_the_counter_through_pcscd_and_a_reset_logs_out(
    private_pcscd: PrivatePcscd, pki_store: PkiStore
) -> None:
    card = build_card(CardProfile(name="dave", auth_pin="2468"), pki_store)
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(range(32))
    with on_reader(private_pcscd, card) as (_ctx, reader):
        assert reader.send(SELECT_JPKI) == SW_OK
        assert reader.send(select_ef(EF_AUTH_PIN)) == SW_OK
        assert reader.send(verify("1111")) == b"\x63\xc2"
        assert reader.send(verify("1111")) == b"\x63\xc1"
        assert reader.send(verify("2468")) == SW_OK
        assert reader.send(verify(None)) == b"\x63\xc3", "a correct PIN resets the counter to its maximum"

        sign = bytes([0x80, 0x2A, 0x00, 0x80, len(digest_info)]) + digest_info + b"\x00"
        assert reader.send(select_ef(EF_AUTH_KEY)) == SW_OK
        signature = reader.send(sign)
        assert signature[-2:] == SW_OK
        assert len(signature) == 256 + 2

        assert reader.reconnect(scard.SCARD_RESET_CARD) == scard.SCARD_S_SUCCESS
        assert reader.send(SELECT_JPKI) == SW_OK
        assert reader.send(select_ef(EF_AUTH_KEY)) == SW_OK
        assert reader.send(sign) == b"\x69\x82", "the reset dropped the verified state"

    public_key = pki_store.user_auth_certificate("dave").public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(signature[:-2], bytes(range(32)), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    assert JPKI_AID in card.log[0].raw


def test_pcsc_scan_shows_the_card_and_its_atr(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    """pcsc-tools' pcsc_scan, a PC/SC client that is not ours, sees the virtual card on the private pcscd."""
    if shutil.which("pcsc_scan") is None:
        pytest.skip("pcsc_scan (pcsc-tools) is not installed")
    card = build_card(CardProfile(name="alice"), pki_store)
    with on_reader(private_pcscd, card):
        scan = subprocess.run(
            ["pcsc_scan", "-c", "-n"],  # list the cards once, no ATR lookup
            env=private_pcscd.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    lines = [line.strip() for line in scan.stdout.splitlines()]
    reader0 = lines.index(f"Reader 0: {private_pcscd.readers[0]}")
    assert any(line.startswith("Card state: Card inserted,") for line in lines[reader0 : reader0 + 4])
    assert f"ATR: {ATR_CONTACTLESS.hex(' ').upper()}" in lines[reader0 : reader0 + 4]
    reader1 = lines.index(f"Reader 1: {private_pcscd.readers[1]}")
    assert any(line.startswith("Card state: Card removed,") for line in lines[reader1 : reader1 + 4])
