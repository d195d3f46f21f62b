"""SIP2 (3M Standard Interchange Protocol 2.00): the messages a self-check station (the SC) exchanges with
a library's system (the ACS). The four circulation messages readerd uses, 63/64 patron information, 11/12
checkout, 09/10 checkin, 29/30 renew; and the session around them, 93/94 Login, 99/98 SC Status (at
connect and as a keep-alive), 96/97 resend requests under error detection. Pure: bytes in, objects out;
the socket is the library plugin's (:class:`plugins.library.ils.Sip2Ils`) and the fake ACS's
(``simulators/sip2_acs.py``). The facts it relies on: docs/sip2.md.

A message is a two-digit code, fixed-length fields, then variable fields ``XXvalue|`` (a two-letter id,
the value, a pipe), then with error detection ``AY<seq>AZ<checksum>`` (``AZ<checksum>`` alone for 96/97)
and a carriage return. The checksum is the 16-bit two's complement of the sum of every byte from the code
through ``AZ``, as four upper-case hex digits. Dates are ``YYYYMMDDZZZZHHMMSS`` (``ZZZZ``: four spaces for
local time, or ``   Z`` for UTC). :data:`REQUIRED` names the variable fields the specification requires
in each message (sent even when empty). Fields never contain ``|`` (it is refused when building).

Text is in the encoding the caller names: UTF-8 by default, or any encoding that keeps ASCII as ASCII
(:func:`wire_encoding`), such as ``cp932`` (Shift_JIS) for older Japanese systems. Checksums are computed
over the bytes on the wire (after encoding). Variable fields are split on ``|`` after decoding: in cp932
the byte 0x7C is also the second byte of some characters (``ポ`` is 0x83 0x7C).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from protocols.errors import BadResponseError, CommandEncodingError

TERMINATOR = b"\r"
DATE_LENGTH = 18


class Code(StrEnum):
    PATRON_INFO = "63"
    PATRON_INFO_RESPONSE = "64"
    CHECKOUT = "11"
    CHECKOUT_RESPONSE = "12"
    CHECKIN = "09"
    CHECKIN_RESPONSE = "10"
    RENEW = "29"
    RENEW_RESPONSE = "30"
    LOGIN = "93"
    LOGIN_RESPONSE = "94"
    SC_STATUS = "99"
    ACS_STATUS = "98"
    REQUEST_SC_RESEND = "96"  # the ACS asks the SC to send its last message again
    REQUEST_ACS_RESEND = "97"  # the SC asks the ACS to send its last answer again


#: The fixed-length part of each message: (name, length), in order.
FIXED: dict[Code, tuple[tuple[str, int], ...]] = {
    Code.PATRON_INFO: (("language", 3), ("transaction_date", DATE_LENGTH), ("summary", 10)),
    Code.PATRON_INFO_RESPONSE: (
        ("patron_status", 14),
        ("language", 3),
        ("transaction_date", DATE_LENGTH),
        ("hold_items_count", 4),
        ("overdue_items_count", 4),
        ("charged_items_count", 4),
        ("fine_items_count", 4),
        ("recall_items_count", 4),
        ("unavailable_holds_count", 4),
    ),
    Code.CHECKOUT: (
        ("sc_renewal_policy", 1),
        ("no_block", 1),
        ("transaction_date", DATE_LENGTH),
        ("nb_due_date", DATE_LENGTH),
    ),
    Code.CHECKOUT_RESPONSE: (
        ("ok", 1),
        ("renewal_ok", 1),
        ("magnetic_media", 1),
        ("desensitize", 1),
        ("transaction_date", DATE_LENGTH),
    ),
    Code.CHECKIN: (("no_block", 1), ("transaction_date", DATE_LENGTH), ("return_date", DATE_LENGTH)),
    Code.CHECKIN_RESPONSE: (
        ("ok", 1),
        ("resensitize", 1),
        ("magnetic_media", 1),
        ("alert", 1),
        ("transaction_date", DATE_LENGTH),
    ),
    Code.RENEW: (
        ("third_party_allowed", 1),
        ("no_block", 1),
        ("transaction_date", DATE_LENGTH),
        ("nb_due_date", DATE_LENGTH),
    ),
    Code.RENEW_RESPONSE: (
        ("ok", 1),
        ("renewal_ok", 1),
        ("magnetic_media", 1),
        ("desensitize", 1),
        ("transaction_date", DATE_LENGTH),
    ),
    Code.LOGIN: (("uid_algorithm", 1), ("pwd_algorithm", 1)),
    Code.LOGIN_RESPONSE: (("ok", 1),),
    Code.SC_STATUS: (("status_code", 1), ("max_print_width", 3), ("protocol_version", 4)),
    Code.ACS_STATUS: (
        ("online_status", 1),
        ("checkin_ok", 1),
        ("checkout_ok", 1),
        ("acs_renewal_policy", 1),
        ("status_update_ok", 1),
        ("offline_ok", 1),
        ("timeout_period", 3),
        ("retries_allowed", 3),
        ("date_time_sync", DATE_LENGTH),
        ("protocol_version", 4),
    ),
    Code.REQUEST_SC_RESEND: (),
    Code.REQUEST_ACS_RESEND: (),
}

#: The variable fields the SIP2 2.00 specification marks required in each message (docs/sip2.md). A
#: required field is sent even when it has no value (``AC|``); an ACS that checks the format refuses a
#: message without one.
REQUIRED: dict[Code, tuple[str, ...]] = {
    Code.PATRON_INFO: ("AO", "AA"),
    Code.PATRON_INFO_RESPONSE: ("AO", "AA", "AE"),
    Code.CHECKOUT: ("AO", "AA", "AB", "AC"),
    Code.CHECKOUT_RESPONSE: ("AO", "AA", "AB", "AJ", "AH"),
    Code.CHECKIN: ("AP", "AO", "AB", "AC"),
    Code.CHECKIN_RESPONSE: ("AO", "AB", "AQ"),
    Code.RENEW: ("AO", "AA"),
    Code.RENEW_RESPONSE: ("AO", "AA", "AB", "AJ", "AH"),
    Code.LOGIN: ("CN", "CO"),
    Code.LOGIN_RESPONSE: (),
    Code.SC_STATUS: (),
    Code.ACS_STATUS: ("AO", "BX"),
    Code.REQUEST_SC_RESEND: (),
    Code.REQUEST_ACS_RESEND: (),
}

#: Messages that carry no sequence number under error detection: only ``AZ`` and the checksum.
NO_SEQUENCE = frozenset({Code.REQUEST_SC_RESEND, Code.REQUEST_ACS_RESEND})


class ChecksumError(BadResponseError):
    """A message whose checksum does not match its bytes (the receiver asks for it again)."""


def sip_date(moment: datetime | None) -> str:
    """``YYYYMMDDZZZZHHMMSS`` in local time (four spaces for the zone); blank for no date."""
    if moment is None:
        return " " * DATE_LENGTH
    return moment.strftime("%Y%m%d") + "    " + moment.strftime("%H%M%S")


def parse_sip_date(text: str) -> datetime | None:
    """A SIP2 date as naive local time; None for a blank one."""
    if not text.strip():
        return None
    if len(text) != DATE_LENGTH:
        raise BadResponseError(f"SIP2 date {text!r} is not {DATE_LENGTH} characters")
    try:
        return datetime.strptime(text[:8] + text[12:], "%Y%m%d%H%M%S")
    except ValueError:
        raise BadResponseError(f"SIP2 date {text!r} is not YYYYMMDDZZZZHHMMSS") from None


def checksum(body: bytes) -> str:
    """Four hex digits that make the sum of ``body`` and themselves' value wrap to zero (16 bits)."""
    return format(-sum(body) & 0xFFFF, "04X")


def wire_encoding(name: str) -> str:
    """The codec's canonical name, if it is one SIP2 can use: ASCII bytes stay themselves (the codes,
    field ids, ``|``, ``AY``/``AZ`` and CR are ASCII on the wire). ``utf-8`` and ``cp932`` are."""
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        raise ValueError(f"unknown text encoding {name!r}") from None
    probe = "09AZ|AY0 \r"
    try:
        same = probe.encode(canonical) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        same = False
    if not same:
        raise ValueError(f"encoding {name!r} does not keep ASCII as ASCII; SIP2 needs that")
    return canonical


@dataclass(frozen=True)
class Message:
    """One SIP2 message: its code, the fixed fields by name, the variable fields (repeatable) by id."""

    code: Code
    fixed: dict[str, str] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)
    sequence: int | None = None  # AY, with error detection
    checked: bool = False  # it came with AZ (or is to be sent with it)

    def get(self, field_id: str, default: str = "") -> str:
        values = self.fields.get(field_id)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """A fixed Y/N or 1/0 field as a boolean."""
        return self.fixed.get(name, "") in ("Y", "1")

    def missing(self) -> list[str]:
        """The required variable fields this message lacks (an empty value counts as present)."""
        return [f for f in REQUIRED[self.code] if f not in self.fields]

    def encode(self, encoding: str = "utf-8", *, error_detection: bool | None = None) -> bytes:
        """The bytes on the wire. With error detection (the default when a sequence number is set) the
        message ends in ``AY<n>AZ<checksum>`` (``AZ<checksum>`` for 96/97), summed over the encoded bytes."""
        parts = [str(self.code)]
        for name, length in FIXED[self.code]:
            value = self.fixed.get(name, "")
            if len(value) != length or not value.isascii():
                raise CommandEncodingError(f"SIP2 {self.code} {name}: {length} ASCII characters")
            parts.append(value)
        for field_id, values in self.fields.items():
            if (
                len(field_id) != 2
                or not field_id.isascii()
                or not field_id.isalpha()
                or not field_id.isupper()
            ):
                raise CommandEncodingError(f"SIP2 field id {field_id!r}")
            for value in values:
                if "|" in value or "\r" in value or "\x00" in value:
                    raise CommandEncodingError(f"SIP2 field {field_id} contains a separator")
                parts.append(f"{field_id}{value}|")
        try:
            body = "".join(parts).encode(encoding)
        except UnicodeEncodeError:
            raise CommandEncodingError(
                f"SIP2 {self.code}: a field is not representable in {encoding}"
            ) from None
        checked = (self.sequence is not None or self.checked) if error_detection is None else error_detection
        if checked:
            if self.code in NO_SEQUENCE:
                body += b"AZ"
            else:
                body += f"AY{(self.sequence or 0) % 10}AZ".encode("ascii")
            body += checksum(body).encode("ascii")
        return body + TERMINATOR


def parse(raw: bytes, encoding: str = "utf-8") -> Message:
    """One message (with or without its CR). A wrong checksum is :class:`ChecksumError`; an unknown code, a
    truncated fixed part or text not in ``encoding`` is :class:`BadResponseError`. Required fields are not
    enforced here (:meth:`Message.missing` says which are absent)."""
    data = raw.rstrip(b"\r\n")
    if len(data) < 2:
        raise BadResponseError("SIP2 message too short")
    sequence: int | None = None
    checked = False
    if len(data) >= 6 and data[-6:-4] == b"AZ":
        digits = data[-4:].decode("ascii", "replace").upper()
        if checksum(data[:-4]) != digits:
            raise ChecksumError("SIP2 checksum mismatch")
        checked = True
        data = data[:-6]
        if len(data) >= 3 and data[-3:-1] == b"AY":
            if not 0x30 <= data[-1] <= 0x39:
                raise BadResponseError("SIP2 sequence number is not a digit")
            sequence = data[-1] - 0x30
            data = data[:-3]
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise BadResponseError(f"SIP2 message is not {encoding} (check sip2_encoding)") from None
    try:
        code = Code(text[:2])
    except ValueError:
        raise BadResponseError(f"SIP2 message code {text[:2]!r} is not one readerd uses") from None
    position = 2
    fixed: dict[str, str] = {}
    for name, length in FIXED[code]:
        value = text[position : position + length]
        if len(value) != length:
            raise BadResponseError(f"SIP2 {code}: truncated in {name}")
        fixed[name] = value
        position += length
    fields: dict[str, list[str]] = {}
    for chunk in text[position:].split("|"):
        if not chunk:
            continue
        if len(chunk) < 2:
            raise BadResponseError(f"SIP2 {code}: a field without an id")
        fields.setdefault(chunk[:2], []).append(chunk[2:])
    return Message(code, fixed, fields, sequence, checked)


def resend_request(code: Code, *, error_detection: bool) -> Message:
    """A ``96`` (ACS to SC) or ``97`` (SC to ACS): send your last message again."""
    return Message(code, {}, {}, None, error_detection)
