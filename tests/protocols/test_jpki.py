from __future__ import annotations

import hashlib
import logging

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocols.apdu import Response
from protocols.errors import (
    AuthRequiredError,
    BadResponseError,
    CertificateParseError,
    DeniedCommandError,
    ExtendedLengthUnsupportedError,
    InvalidPinError,
    LastTryRefusedError,
    MalformedTlvError,
    NotJpkiCardError,
    PinBlockedError,
    PinFormatError,
    PinResultUnknownError,
    PinStatusUnknownError,
    TransportError,
)
from protocols.guard import TRACE
from protocols.jpki import (
    JpkiSession,
    PinStatus,
    ReadPath,
    ReadStep,
    UserAuthCertificate,
    digest_info,
    expected_identification_apdus,
    normalize_pin,
    parse_pin_status,
    parse_token,
    plan_short_reads,
    read_binary,
    read_binary_sfi,
    select_ef,
    select_jpki_ap,
)
from protocols.jpki_constants import JpkiEf, TokenKind
from protocols.transport import ReaderCapabilities
from tests.support.transcript import HEX, ScriptedTransport

SELECT_AP = "00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01"
SELECT_CERT = "00 A4 02 0C 02 00 0A"
SELECT_PIN = "00 A4 02 0C 02 00 18"
SELECT_KEY = "00 A4 02 0C 02 00 17"
TRIES = "00 20 00 80"
OK = "90 00"
SHORT_ONLY = ReaderCapabilities(0)


def test_builders_match_the_card_facts() -> None:
    assert select_jpki_ap().encode() == HEX(SELECT_AP)
    assert select_ef(JpkiEf.AUTH_CERT).encode() == HEX(SELECT_CERT)
    assert read_binary_sfi(JpkiEf.AUTH_CERT).encode() == HEX("00 B0 8A 00 00 00 00")
    assert read_binary(0x0100, 256).encode() == HEX("00 B0 01 00 00")
    assert read_binary(0, 4).encode() == HEX("00 B0 00 00 04")


def test_digest_info_sha256() -> None:
    digest = hashlib.sha256(b"challenge").digest()
    assert digest_info(digest) == HEX("30 31 30 0D 06 09 60 86 48 01 65 03 04 02 01 05 00 04 20") + digest


@pytest.mark.parametrize(
    ("total", "already", "steps"),
    [
        (853, 0, [ReadStep(0, 256), ReadStep(256, 256), ReadStep(512, 256), ReadStep(768, 85)]),
        (853, 256, [ReadStep(256, 256), ReadStep(512, 256), ReadStep(768, 85)]),
        (512, 0, [ReadStep(0, 256), ReadStep(256, 256)]),
        (100, 256, []),
    ],
)
def test_short_read_plan_uses_exact_lengths(total: int, already: int, steps: list[ReadStep]) -> None:
    assert plan_short_reads(total, already) == steps


def test_identification_apdu_counts() -> None:
    assert expected_identification_apdus(ReadPath.EXTENDED_SFI, 1500) == 2
    assert expected_identification_apdus(ReadPath.SHORT, 1500) == 2 + 6


@pytest.mark.parametrize(
    ("sw", "status"),
    [
        ("63 C3", PinStatus(3, False)),
        ("63 C1", PinStatus(1, False)),
        ("63 C0", PinStatus(0, True)),
        ("69 84", PinStatus(0, True)),
        ("69 83", PinStatus(0, True)),
    ],
)
def test_pin_status(sw: str, status: PinStatus) -> None:
    assert parse_pin_status(Response.parse(HEX(sw))) == status


@pytest.mark.parametrize("sw", ["90 00", "6A 82", "69 82", "01 63 C3"])
def test_pin_status_fails_closed(sw: str) -> None:
    with pytest.raises(PinStatusUnknownError):
        parse_pin_status(Response.parse(HEX(sw)))


def test_token_kinds() -> None:
    assert parse_token(b"JPKIAPICCTOKEN2" + b" " * 17).kind is TokenKind.MY_NUMBER_CARD
    assert parse_token(b"JPKIAPGPSETOKEN\x00\x00").kind is TokenKind.SMARTPHONE
    assert parse_token(b"SOMETHING").kind is TokenKind.UNKNOWN
    with pytest.raises(BadResponseError):
        parse_token(b"\xff\xfe")


@pytest.mark.parametrize(("pin", "expected"), [("1234", b"1234"), ("１２３４", b"1234"), (b"0000", b"0000")])
def test_pin_normalisation(pin: str | bytes, expected: bytes) -> None:
    assert normalize_pin(pin) == bytearray(expected)


@pytest.mark.parametrize("pin", ["123", "12345", "12a4", "", "١٢٣٤", b"12\xff4", "12 4"])
def test_bad_pins_are_refused(pin: str | bytes) -> None:
    with pytest.raises(PinFormatError) as info:
        normalize_pin(pin)
    assert "12" not in str(info.value)  # the message never echoes the PIN


# --- certificates ------------------------------------------------------------------------------------


def test_certificate_fields(user_cert_der: bytes) -> None:
    cert = UserAuthCertificate.from_der(user_cert_der)
    assert cert.serial_number == 0x1234_5678_9ABC
    assert cert.subject_cn == "ABCDEFGHIJKLMNOPQRSTUVW"
    assert b"JPKI for user authentication" in cert.issuer_der
    assert cert.not_after > cert.not_before


def test_garbage_certificate_is_named() -> None:
    with pytest.raises(CertificateParseError):
        UserAuthCertificate.from_der(HEX("30 03 02 01 01"))


# --- the session: identification ---------------------------------------------------------------------


def _chunks(der: bytes) -> list[tuple[str, bytes]]:
    out = []
    for step in plan_short_reads(len(der)):
        out.append(
            (
                read_binary(step.offset, step.length).encode().hex(),
                der[step.offset : step.offset + step.length],
            )
        )
    return out


def test_identify_in_two_apdus_with_extended_length(user_cert_der: bytes) -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK).expect("00 B0 8A 00 00 00 00", user_cert_der + HEX(OK))
    identity = JpkiSession(t).identify()
    t.close()
    assert identity.apdus == 2
    assert identity.read_path is ReadPath.EXTENDED_SFI
    assert identity.certificate.der == user_cert_der


def test_extended_read_accepts_6282_and_trims_padding(user_cert_der: bytes) -> None:
    t = (
        ScriptedTransport()
        .expect(SELECT_AP, OK)
        .expect("00 B0 8A 00 00 00 00", user_cert_der + bytes(40) + HEX("62 82"))
    )
    assert JpkiSession(t).identify().certificate.der == user_cert_der
    t.close()


def test_identify_with_short_reads_on_a_short_only_reader(user_cert_der: bytes) -> None:
    t = ScriptedTransport(capabilities=SHORT_ONLY).expect(SELECT_AP, OK).expect(SELECT_CERT, OK)
    # The first read asks a full 256 bytes: the header arrives with the first chunk, not in an extra APDU.
    for command, data in _chunks(user_cert_der):
        t.expect(command, data + HEX(OK))
    identity = JpkiSession(t).identify()
    t.close()
    assert identity.certificate.der == user_cert_der
    assert identity.read_path is ReadPath.SHORT
    assert identity.apdus == expected_identification_apdus(ReadPath.SHORT, len(user_cert_der))


@pytest.mark.parametrize("sw", ["67 00", "6A 86", "69 81", "6D 00", "6B 00"])
def test_extended_refusal_falls_back_and_is_learned(user_cert_der: bytes, sw: str) -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK).expect("00 B0 8A 00 00 00 00", sw).expect(SELECT_CERT, OK)
    for command, data in _chunks(user_cert_der):
        t.expect(command, data + HEX(OK))
    session = JpkiSession(t)
    assert session.identify().certificate.der == user_cert_der
    assert session.read_path is ReadPath.SHORT
    t.close()


def test_6cxx_on_the_extended_read_is_honoured_then_continued(user_cert_der: bytes) -> None:
    # The card names the length it wants (256, short form): take that chunk, then offset reads.
    t = ScriptedTransport().expect(SELECT_AP, OK).expect("00 B0 8A 00 00 00 00", "6C 00")
    t.expect("00 B0 8A 00 00", user_cert_der[:256] + HEX(OK))
    for step in plan_short_reads(len(user_cert_der), already=256):
        chunk = user_cert_der[step.offset : step.offset + step.length]
        t.expect(read_binary(step.offset, step.length).encode(), chunk + HEX(OK))
    assert JpkiSession(t).identify().certificate.der == user_cert_der
    t.close()


def test_reader_refusing_extended_falls_back(user_cert_der: bytes) -> None:
    def refuse() -> bytes:
        raise ExtendedLengthUnsupportedError("reader says no")

    t = (
        ScriptedTransport()
        .expect(SELECT_AP, OK)
        .expect("00 B0 8A 00 00 00 00", refuse)
        .expect(SELECT_CERT, OK)
    )
    for command, data in _chunks(user_cert_der):
        t.expect(command, data + HEX(OK))
    session = JpkiSession(t)
    assert session.identify().certificate.der == user_cert_der
    assert session.read_path is ReadPath.SHORT
    t.close()


def test_partial_extended_answer_continues_with_offset_reads(user_cert_der: bytes) -> None:
    t = (
        ScriptedTransport()
        .expect(SELECT_AP, OK)
        .expect("00 B0 8A 00 00 00 00", user_cert_der[:600] + HEX(OK))
    )
    for step in plan_short_reads(len(user_cert_der), already=600):
        t.expect(
            read_binary(step.offset, step.length).encode(),
            user_cert_der[step.offset : step.offset + step.length] + HEX(OK),
        )
    session = JpkiSession(t)
    assert session.identify().certificate.der == user_cert_der
    assert session.read_path is ReadPath.EXTENDED_SFI
    t.close()


def test_smartphone_token_wants_the_pin_first() -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK).expect("00 B0 8A 00 00 00 00", "69 82")
    with pytest.raises(AuthRequiredError):
        JpkiSession(t).identify()
    t.close()


def test_a_card_without_jpki_is_not_a_my_number_card() -> None:
    t = ScriptedTransport().expect(SELECT_AP, "6A 82")
    with pytest.raises(NotJpkiCardError):
        JpkiSession(t)
    t.close()


def test_garbage_file_raises_a_named_error() -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK).expect("00 B0 8A 00 00 00 00", "30 84 7F FF FF FF 90 00")
    with pytest.raises(MalformedTlvError):
        JpkiSession(t).identify()
    t.close()


def test_card_pulled_mid_read_surfaces_as_transport_error(user_cert_der: bytes) -> None:
    def pulled() -> bytes:
        raise TransportError("card removed")

    t = ScriptedTransport(capabilities=SHORT_ONLY).expect(SELECT_AP, OK).expect(SELECT_CERT, OK)
    t.expect("00 B0 00 00 00", user_cert_der[:256] + HEX(OK)).expect("00 B0 01 00 00", pulled)
    with pytest.raises(TransportError):
        JpkiSession(t).identify()
    t.close()


# --- the session: PIN safety -------------------------------------------------------------------------


def _pin_session(tries_answer: str) -> ScriptedTransport:
    return ScriptedTransport().expect(SELECT_AP, OK).expect(SELECT_PIN, OK).expect(TRIES, tries_answer)


def test_verify_reads_tries_then_sends_once() -> None:
    t = _pin_session("63 C3").expect("00 20 00 80 04 31 32 33 34", OK)
    JpkiSession(t).verify("1234")
    t.close()


def test_wrong_pin_reports_tries_and_is_not_retried() -> None:
    t = _pin_session("63 C3").expect("00 20 00 80 04 31 31 31 31", "63 C2")
    with pytest.raises(InvalidPinError) as info:
        JpkiSession(t).verify("1111")
    assert info.value.tries_left == 2
    t.close()  # nothing more was sent


def test_last_try_is_refused_without_asking_the_card() -> None:
    t = _pin_session("63 C1")
    with pytest.raises(LastTryRefusedError):
        JpkiSession(t).verify("1234")
    t.close()


def test_last_try_allowed_explicitly() -> None:
    t = _pin_session("63 C1").expect("00 20 00 80 04 31 32 33 34", "63 C0")
    with pytest.raises(PinBlockedError):
        JpkiSession(t).verify("1234", allow_last_try=True)
    t.close()


@pytest.mark.parametrize("answer", ["63 C0", "69 84", "69 83"])
def test_blocked_pin_is_never_sent(answer: str) -> None:
    t = _pin_session(answer)
    with pytest.raises(PinBlockedError):
        JpkiSession(t).verify("1234", allow_last_try=True)
    t.close()


def test_unknown_tries_answer_fails_closed() -> None:
    t = _pin_session("90 00")
    with pytest.raises(PinStatusUnknownError):
        JpkiSession(t).verify("1234")
    t.close()


def test_malformed_pin_never_reaches_the_card() -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK)
    session = JpkiSession(t)
    with pytest.raises(PinFormatError):
        session.verify("12345")
    t.close()
    assert len(t.sent) == 1


def test_link_failure_during_verify_is_unknown_not_retried() -> None:
    def lost() -> bytes:
        raise TransportError("reader gone")

    t = _pin_session("63 C3").expect("00 20 00 80 04 31 32 33 34", lost)
    with pytest.raises(PinResultUnknownError):
        JpkiSession(t).verify("1234")
    t.close()


def test_pin_never_appears_in_the_apdu_trace(caplog: pytest.LogCaptureFixture) -> None:
    t = _pin_session("63 C3").expect("00 20 00 80 04 37 33 39 31", OK)
    with caplog.at_level(TRACE, logger="protocols"):
        JpkiSession(t).verify("7391")
    text = caplog.text
    assert "<PIN redacted>" in text
    assert "7391" not in text
    assert "37333931" not in text.replace(" ", "")


def test_certificate_body_is_not_traced(caplog: pytest.LogCaptureFixture, user_cert_der: bytes) -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK).expect("00 B0 8A 00 00 00 00", user_cert_der + HEX(OK))
    with caplog.at_level(TRACE, logger="protocols"):
        JpkiSession(t).identify()
    assert f"<{len(user_cert_der)} bytes>" in caplog.text
    assert user_cert_der[40:60].hex().upper() not in caplog.text


# --- the session: signing ----------------------------------------------------------------------------


def test_sign_without_verify_is_denied_before_the_card() -> None:
    t = ScriptedTransport().expect(SELECT_AP, OK).expect(SELECT_KEY, OK)
    with pytest.raises(DeniedCommandError, match="after a successful VERIFY"):
        JpkiSession(t).sign(digest_info(bytes(32)))
    t.close()


def test_sign_after_verify_returns_a_verifiable_signature(card_key: rsa.RSAPrivateKey) -> None:
    message = b"kiosk-7|2026-11-22T10:00:00Z|" + bytes(32)
    di = digest_info(hashlib.sha256(message).digest())
    signature = card_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    t = _pin_session("63 C3").expect("00 20 00 80 04 31 32 33 34", OK).expect(SELECT_KEY, OK)
    t.expect("80 2A 00 80 33" + di.hex() + "00", signature + HEX(OK))
    session = JpkiSession(t)
    session.verify("1234")
    got = session.sign(di)
    t.close()
    card_key.public_key().verify(got, message, padding.PKCS1v15(), hashes.SHA256())


def test_logout_by_reselect_drops_the_verified_state() -> None:
    t = (
        _pin_session("63 C3")
        .expect("00 20 00 80 04 31 32 33 34", OK)
        .expect(SELECT_AP, OK)
        .expect(SELECT_KEY, OK)
    )
    session = JpkiSession(t)
    session.verify("1234")
    session.logout()
    with pytest.raises(DeniedCommandError):
        session.sign(digest_info(bytes(32)))
    t.close()


def test_no_logging_handler_is_installed_by_protocols() -> None:
    assert logging.getLogger("protocols").handlers == []
