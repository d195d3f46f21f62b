"""The SIP2 codec: what readerd sends is what a SIP2 server parses, checksums catch corruption, and no
input makes the parser raise anything but readerd's own errors. The session messages, the required
fields and cp932 on the wire: tests/plugins/library/test_sip2_session.py and test_sip2_pysip2.py."""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import sip2
from protocols.errors import BadResponseError, CommandEncodingError, ReaderdError


def checkout(sequence: int | None = 3) -> sip2.Message:
    fixed = {
        "sc_renewal_policy": "N",
        "no_block": "N",
        "transaction_date": sip2.sip_date(datetime(2026, 11, 23, 9, 30, 5)),
        "nb_due_date": sip2.sip_date(None),
    }
    return sip2.Message(
        sip2.Code.CHECKOUT, fixed, {"AO": ["chuo"], "AA": ["L0001"], "AB": ["B123"]}, sequence
    )


def test_the_wire_form() -> None:
    raw = checkout().encode()
    assert raw.startswith(b"11NN20261123    093005" + b" " * 18 + b"AOchuo|AAL0001|ABB123|")
    assert raw.endswith(b"\r")
    assert b"|AY3AZ" in raw
    body, check = raw[:-5], raw[-5:-1]
    assert (sum(body) + int(check, 16)) & 0xFFFF == 0  # the checksum's definition


def test_round_trip() -> None:
    message = checkout()
    parsed = sip2.parse(message.encode())
    assert parsed == dataclasses.replace(message, checked=True)  # it came with AZ
    assert parsed.get("AB") == "B123"
    assert sip2.parse_sip_date(parsed.fixed["transaction_date"]) == datetime(2026, 11, 23, 9, 30, 5)
    assert sip2.parse_sip_date(parsed.fixed["nb_due_date"]) is None


def test_japanese_text_and_repeated_fields() -> None:
    fixed = {
        "patron_status": " " * 14,
        "language": "000",
        "transaction_date": sip2.sip_date(datetime(2026, 1, 1)),
        "hold_items_count": "0000",
        "overdue_items_count": "0001",
        "charged_items_count": "0002",
        "fine_items_count": "0000",
        "recall_items_count": "0000",
        "unavailable_holds_count": "0000",
    }
    message = sip2.Message(
        sip2.Code.PATRON_INFO_RESPONSE, fixed, {"AE": ["図書 太郎"], "AU": ["坊っちゃん", "こころ"]}, 1
    )
    parsed = sip2.parse(message.encode())
    assert parsed.fields["AU"] == ["坊っちゃん", "こころ"]
    assert parsed.get("AE") == "図書 太郎"


def test_a_corrupted_message_is_refused() -> None:
    raw = bytearray(checkout().encode())
    raw[10] ^= 0x01
    with pytest.raises(BadResponseError, match="checksum"):
        sip2.parse(bytes(raw))


@pytest.mark.parametrize(
    ("raw", "why"),
    [(b"88AAx|", "code"), (b"12", "truncated"), (b"1", "short"), (b"12\xff\xfe", "not utf-8")],
)
def test_malformed_messages(raw: bytes, why: str) -> None:
    with pytest.raises(BadResponseError, match=why):
        sip2.parse(raw)


def test_building_refuses_what_would_break_the_framing() -> None:
    with pytest.raises(CommandEncodingError):
        sip2.Message(sip2.Code.CHECKIN, {"no_block": "N"}, {}).encode()
    message = checkout()
    with pytest.raises(CommandEncodingError, match="separator"):
        sip2.Message(message.code, message.fixed, {"AB": ["a|b"]}).encode()


def test_session_messages_and_required_fields() -> None:
    login = sip2.Message(sip2.Code.LOGIN, {"uid_algorithm": "0", "pwd_algorithm": "0"}, {"CN": ["kiosk"]}, 0)
    assert login.encode().startswith(b"9300CNkiosk|AY0AZ")
    assert login.missing() == ["CO"]
    assert checkout().missing() == ["AC"]  # required in 11, even when empty
    assert sip2.parse(b"940").flag("ok") is False
    status = sip2.parse(b"9900802.00")
    assert (status.code, status.fixed["max_print_width"]) == (sip2.Code.SC_STATUS, "080")
    assert not status.checked  # no AZ: sent without error detection


def test_a_resend_request_has_no_sequence_number() -> None:
    raw = sip2.resend_request(sip2.Code.REQUEST_ACS_RESEND, error_detection=True).encode()
    assert raw == b"97AZ" + sip2.checksum(b"97AZ").encode() + b"\r"
    parsed = sip2.parse(raw)
    assert (parsed.code, parsed.sequence, parsed.checked) == (sip2.Code.REQUEST_ACS_RESEND, None, True)
    assert sip2.resend_request(sip2.Code.REQUEST_SC_RESEND, error_detection=False).encode() == b"96\r"


def test_a_checksum_mismatch_is_its_own_error() -> None:
    raw = bytearray(checkout().encode())
    raw[-2] = ord("0") if raw[-2] != ord("0") else ord("1")
    with pytest.raises(sip2.ChecksumError):
        sip2.parse(bytes(raw))


@pytest.mark.parametrize(
    ("name", "canonical"), [("UTF-8", "utf-8"), ("Shift_JIS", "shift_jis"), ("CP932", "cp932")]
)
def test_wire_encodings_keep_ascii(name: str, canonical: str) -> None:
    assert sip2.wire_encoding(name) == canonical


@pytest.mark.parametrize("name", ["utf-16", "cp037", "no-such-codec"])
def test_wire_encodings_that_would_break_the_framing_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        sip2.wire_encoding(name)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["utf-8", "cp932"]))
def test_any_bytes_parse_or_raise_readerds_error(raw: bytes, encoding: str) -> None:
    with contextlib.suppress(ReaderdError):
        sip2.parse(raw, encoding)
