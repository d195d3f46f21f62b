"""The virtual My Number Card, driven raw and through readerd's own JpkiSession (in-process tier)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocols.apdu import CommandApdu, transceive
from protocols.errors import InvalidPinError, LastTryRefusedError, PinBlockedError
from protocols.jpki import JpkiSession, ReadPath, digest_info
from protocols.jpki_constants import JpkiEf, TokenKind
from simulators.inprocess import InProcessReader
from simulators.mynumber import (
    ATR_CONTACTLESS,
    CARD_INFO_AIDS,
    FAKE_MY_NUMBER,
    KENHOJO_AID,
    CardBehavior,
    CardProfile,
    LeBeyondEof,
    VirtualMyNumberCard,
    build_card,
    crl_for,
)
from simulators.pki import CaKind, PkiStore
from tests.support.transcript import HEX

SELECT_JPKI = "00 A4 04 0C 0A D392F000260100000001"


def _card(store: PkiStore, **kwargs: object) -> VirtualMyNumberCard:
    card = build_card(CardProfile(**kwargs), store)  # type: ignore[arg-type]
    card.power_on()
    return card


def sw(response: bytes) -> str:
    return response[-2:].hex().upper()


def test_atr_is_a_real_my_number_atr(pki_store: PkiStore) -> None:
    assert _card(pki_store).atr == ATR_CONTACTLESS == HEX("3B 88 80 01 00 00 05 E0 B3 81 A1 00 7F")


def test_identify_reads_the_issued_certificate_in_two_apdus(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    card = build_card(CardProfile(name="alice"), pki_store)
    reader.insert(card)
    identity = JpkiSession(reader).identify()
    issued = pki_store.user_auth_certificate("alice").public_bytes(serialization.Encoding.DER)
    assert identity.certificate.der == issued
    assert identity.apdus == 2
    assert len(card.log) == 2
    assert not card.touched_card_info()


def test_identify_on_a_card_without_extended_length(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    card = build_card(CardProfile(name="alice", behavior=CardBehavior(extended_length=False)), pki_store)
    reader.insert(card)
    session = JpkiSession(reader)  # the reader says yes, the card says 6700: learn SHORT
    identity = session.identify()
    assert session.read_path is ReadPath.SHORT
    assert identity.certificate.der == pki_store.user_auth_certificate("alice").public_bytes(
        serialization.Encoding.DER
    )
    assert sw(card.process(HEX("00 B0 8A 00 00 00 00"))) == "6700"


def test_short_reads_with_61xx_and_6cxx_cards(pki_store: PkiStore) -> None:
    for behavior in (
        CardBehavior(extended_length=False, get_response_chunk=64),
        CardBehavior(extended_length=False, le_beyond_eof=LeBeyondEof.EXACT_6CXX),
    ):
        reader = InProcessReader(extended_length=False)
        reader.insert(build_card(CardProfile(name="bob", behavior=behavior), pki_store))
        der = JpkiSession(reader).identify().certificate.der
        assert der == pki_store.user_auth_certificate("bob").public_bytes(serialization.Encoding.DER)


def test_token(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    reader.insert(build_card(CardProfile(), pki_store))
    assert JpkiSession(reader).read_token().kind is TokenKind.MY_NUMBER_CARD


# --- PIN counters as on the real card ----------------------------------------------------------------


def _verify_raw(card: VirtualMyNumberCard, pin: str | None) -> str:
    card.process(HEX(SELECT_JPKI))
    card.process(HEX("00 A4 02 0C 02 0018"))
    data = b"" if pin is None else bytes((len(pin),)) + pin.encode()
    return sw(card.process(HEX("00 20 00 80") + data))


def test_three_wrong_pins_block_and_blocked_stays_blocked(pki_store: PkiStore) -> None:
    card = _card(pki_store)
    assert _verify_raw(card, None) == "63C3"
    assert _verify_raw(card, "0000") == "63C2"
    assert _verify_raw(card, "0000") == "63C1"
    assert _verify_raw(card, "0000") == "63C0"  # the attempt that used the last try
    assert _verify_raw(card, "1234") == "6984"  # even the right PIN, later
    assert _verify_raw(card, "0000") == "6984"
    assert _verify_raw(card, None) == "63C0"  # the bare query (profile option)
    card.power_off()
    card.power_on()
    assert _verify_raw(card, "1234") == "6984"  # a power cycle does not unblock


def test_correct_pin_resets_the_counter(pki_store: PkiStore) -> None:
    card = _card(pki_store)
    assert _verify_raw(card, "9999") == "63C2"
    assert _verify_raw(card, "1234") == "9000"
    assert _verify_raw(card, None) == "63C3"  # the query answers 63Cx even while verified


def test_session_refuses_the_last_try_and_reports_tries(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    card = build_card(CardProfile(auth_tries_left=2), pki_store)
    reader.insert(card)
    with pytest.raises(InvalidPinError) as info:
        JpkiSession(reader).verify("0000")
    assert info.value.tries_left == 1
    with pytest.raises(LastTryRefusedError):
        JpkiSession(reader).verify("1234")
    with pytest.raises(PinBlockedError):
        JpkiSession(reader).verify("0000", allow_last_try=True)
    assert card.pin(HEX("D392F000260100000001"), 0x0018).blocked


def test_blocked_query_status_word_is_a_profile_option(pki_store: PkiStore) -> None:
    card = _card(pki_store, auth_tries_left=0, behavior=CardBehavior(blocked_query_sw=0x6984))
    assert _verify_raw(card, None) == "6984"


# --- signing -----------------------------------------------------------------------------------------


def test_signature_verifies_with_the_certificate_key(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    reader.insert(build_card(CardProfile(name="alice"), pki_store))
    session = JpkiSession(reader)
    cert = session.identify().certificate.to_x509()
    session.verify("1234")
    challenge = b"kiosk-1|" + bytes(range(32))
    signature = session.sign(digest_info(hashlib.sha256(challenge).digest()))
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())


def test_security_status_resets_on_reselect_and_power_off(pki_store: PkiStore) -> None:
    card = _card(pki_store)
    assert _verify_raw(card, "1234") == "9000"
    sign = CommandApdu(0x80, 0x2A, 0x00, 0x80, digest_info(bytes(32)), ne=256).encode()
    card.process(HEX("00 A4 02 0C 02 0017"))
    assert len(card.process(sign)) == 258
    card.process(HEX(SELECT_JPKI))
    card.process(HEX("00 A4 02 0C 02 0017"))
    assert sw(card.process(sign)) == "6982"
    assert _verify_raw(card, "1234") == "9000"
    card.power_off()
    card.power_on()
    card.process(HEX(SELECT_JPKI))
    card.process(HEX("00 A4 02 0C 02 0017"))
    assert sw(card.process(sign)) == "6982"


# --- error paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("apdus", "expected"),
    [
        (["00 A4 04 0C 0A D392F000260100000002"], "6A82"),  # unknown AP
        ([SELECT_JPKI, "00 A4 02 0C 02 00FF"], "6A82"),  # unknown EF
        ([SELECT_JPKI, "00 A4 08 0C 04 3F00000A"], "6A86"),  # SELECT by path: not on this card
        ([SELECT_JPKI, "00 A4 02 0C 03 00000A"], "6700"),
        ([SELECT_JPKI, "00 B0 00 00 04"], "6986"),  # no EF selected
        ([SELECT_JPKI, "00 A4 02 0C 02 000A", "00 B0 7F 00 04"], "6B00"),  # beyond EOF
        ([SELECT_JPKI, "00 B0 81 00 04"], "6982"),  # signature certificate without its PIN
        ([SELECT_JPKI, "00 A4 02 0C 02 0017", "00 B0 00 00 04"], "6981"),  # a key is not readable
        ([SELECT_JPKI, "00 B0 E1 00 04"], "6A86"),  # reserved bits in the SFI form
        ([SELECT_JPKI, "00 A4 02 0C 02 0018", "00 20 01 80"], "6A86"),
        ([SELECT_JPKI, "00 A4 02 0C 02 0017", "80 2A 00 80 01 00 00"], "6982"),  # sign without VERIFY
        ([SELECT_JPKI, "00 C0 00 00 00"], "6985"),  # GET RESPONSE with nothing pending
        (["01 A4 04 0C 0A D392F000260100000001"], "6881"),  # logical channel 1
        (["10 A4 04 0C 0A D392F000260100000001"], "6E00"),
        (["00 84 00 00 08"], "6D00"),  # GET CHALLENGE: not used on this card
        (["00 A4 04"], "6700"),
    ],
)
def test_error_status_words(pki_store: PkiStore, apdus: list[str], expected: str) -> None:
    card = _card(pki_store)
    for apdu in apdus[:-1]:
        assert sw(card.process(HEX(apdu))) == "9000"
    assert sw(card.process(HEX(apdus[-1]))) == expected


def test_partial_read_at_end_of_file(pki_store: PkiStore) -> None:
    card = _card(pki_store)
    card.process(HEX(SELECT_JPKI))
    card.process(HEX("00 A4 02 0C 02 0006"))
    response = card.process(HEX("00 B0 00 1E 10"))  # 16 asked, 2 left in the 32-byte token EF
    assert response == b"  " + HEX("62 82")


# --- the card-info APs exist, so the tests that prove readerd avoids them mean something -------------


@pytest.mark.touches_card_info
def test_card_info_aps_hold_a_fake_my_number_behind_a_pin(pki_store: PkiStore) -> None:
    card = _card(pki_store)
    assert sw(card.process(HEX("00 A4 04 0C 0A") + KENHOJO_AID)) == "9000"
    card.process(HEX("00 A4 02 0C 02 0001"))
    assert sw(card.process(HEX("00 B0 00 00 00"))) == "6982"
    card.process(HEX("00 A4 02 0C 02 0011"))
    assert sw(card.process(HEX("00 20 00 80 04") + b"1234")) == "9000"
    card.process(HEX("00 A4 02 0C 02 0001"))
    assert FAKE_MY_NUMBER.encode() in card.process(HEX("00 B0 00 00 00"))
    assert card.touched_card_info()
    assert set(card.selected_aids) <= CARD_INFO_AIDS


def test_a_full_readerd_session_never_touches_card_info(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    card = build_card(CardProfile(), pki_store)
    reader.insert(card)
    session = JpkiSession(reader)
    session.read_token()
    session.identify()
    ca_der = session.read_certificate(JpkiEf.AUTH_CA_CERT)
    session.verify("1234")
    session.sign(digest_info(bytes(32)))
    assert ca_der == pki_store.ca(CaKind.USER_AUTH).der
    assert not card.touched_card_info()
    assert set(card.selected_aids) == {HEX("D392F000260100000001")}


def test_crl_revokes_the_marked_profile(pki_store: PkiStore) -> None:
    profiles = [CardProfile(name="alice"), CardProfile(name="mallory", revoked=True)]
    crl = crl_for(profiles, pki_store)
    mallory = pki_store.user_auth_certificate("mallory").serial_number
    alice = pki_store.user_auth_certificate("alice").serial_number
    assert crl.get_revoked_certificate_by_serial_number(mallory) is not None
    assert crl.get_revoked_certificate_by_serial_number(alice) is None
    ca_key = pki_store.ca(CaKind.USER_AUTH).certificate.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey)
    assert crl.is_signature_valid(ca_key)


def test_expired_profile_has_an_expired_certificate(pki_store: PkiStore) -> None:
    reader = InProcessReader()
    reader.insert(build_card(CardProfile(name="old", expired=True), pki_store))
    cert = JpkiSession(reader).identify().certificate
    assert cert.not_after < datetime.now(UTC)


def test_cache_makes_cards_repeatable(pki_store: PkiStore) -> None:
    again = PkiStore(pki_store.root)
    assert again.user_auth_certificate("alice") == pki_store.user_auth_certificate("alice")


def test_transceive_through_61xx(pki_store: PkiStore) -> None:
    card = _card(pki_store, behavior=CardBehavior(get_response_chunk=100))
    reader = InProcessReader()
    reader.insert(card)
    card.power_on()
    transceive(reader, CommandApdu.decode(HEX(SELECT_JPKI)))
    response = transceive(reader, CommandApdu.decode(HEX("00 B0 8A 00 00 00 00")))
    assert response.sw == 0x9000
    assert response.data == pki_store.user_auth_certificate("alice").public_bytes(serialization.Encoding.DER)
