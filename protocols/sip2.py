"""SIP2 (3M Standard Interchange Protocol 2.00): the messages a self-check station exchanges with a
library's system (the ACS), for the four readerd uses: 63/64 patron information, 11/12 checkout,
09/10 checkin, 29/30 renew. Pure: bytes in, objects out; the socket is the library plugin's.

A message is a two-digit code, fixed-length fields, then variable fields ``XXvalue|`` (a two-letter id,
the value, a pipe), then with error detection ``AY<seq>AZ<checksum>`` and a carriage return. The checksum
is the 16-bit two's complement of the sum of every byte from the code through ``AZ``, as four upper-case
hex digits. Dates are ``YYYYMMDDZZZZHHMMSS`` (``ZZZZ``: four spaces for local time, or ``   Z`` for UTC).
Text is sent as UTF-8 here (Japanese titles); fields never contain ``|`` (it is refused when building).
"""

from __future__ import annotations

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
}


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


@dataclass(frozen=True)
class Message:
    """One SIP2 message: its code, the fixed fields by name, the variable fields (repeatable) by id."""

    code: Code
    fixed: dict[str, str]
    fields: dict[str, list[str]] = field(default_factory=dict)
    sequence: int | None = None  # AY, with error detection

    def get(self, field_id: str, default: str = "") -> str:
        values = self.fields.get(field_id)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """A fixed Y/N or 1/0 field as a boolean."""
        return self.fixed.get(name, "") in ("Y", "1")

    def encode(self) -> bytes:
        parts = [str(self.code)]
        for name, length in FIXED[self.code]:
            value = self.fixed.get(name, "")
            if len(value) != length:
                raise CommandEncodingError(f"SIP2 {self.code} {name}: {length} characters, got {len(value)}")
            parts.append(value)
        for field_id, values in self.fields.items():
            if len(field_id) != 2 or not field_id.isalpha() or not field_id.isupper():
                raise CommandEncodingError(f"SIP2 field id {field_id!r}")
            for value in values:
                if "|" in value or "\r" in value:
                    raise CommandEncodingError(f"SIP2 field {field_id} contains a separator")
                parts.append(f"{field_id}{value}|")
        body = "".join(parts).encode("utf-8")
        if self.sequence is not None:
            body += f"AY{self.sequence % 10}AZ".encode("ascii")
            body += checksum(body).encode("ascii")
        return body + TERMINATOR


def parse(raw: bytes) -> Message:
    """One message (with or without its CR). A wrong checksum or an unknown code is refused."""
    data = raw.rstrip(b"\r\n")
    if len(data) < 2:
        raise BadResponseError("SIP2 message too short")
    sequence: int | None = None
    marker = data.rfind(b"AZ")
    if marker >= 3 and len(data) - marker == 6 and data[marker - 3 : marker - 1] == b"AY":
        expected = checksum(data[: marker + 2])
        if data[marker + 2 :].decode("ascii", "replace").upper() != expected:
            raise BadResponseError("SIP2 checksum mismatch")
        if not 0x30 <= data[marker - 1] <= 0x39:
            raise BadResponseError("SIP2 sequence number is not a digit")
        sequence = data[marker - 1] - 0x30
        data = data[: marker - 3]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadResponseError("SIP2 message is not UTF-8") from None
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
    return Message(code, fixed, fields, sequence)
