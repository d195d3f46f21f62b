"""ISO 7816-4 command and response APDUs: encoding, decoding, status-word errors, and the
GET RESPONSE (61xx) / corrected-Le (6Cxx) conveniences that real readers need.

Lengths follow ISO 7816-4 §5.1: ``ne`` is the number of expected response bytes (``None`` = no Le
field). In a short APDU ``ne=256`` is encoded as ``00``; in an extended one ``ne=65536`` as ``00 00``.
Extended form is chosen automatically when data or ``ne`` do not fit the short form, or when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.errors import (
    ApduError,
    AuthRequiredError,
    BadResponseError,
    CommandEncodingError,
    CommandNotSupportedError,
    FileNotFoundApduError,
    InvalidPinError,
    NoCurrentEfError,
    PinBlockedError,
    SecurityStatusError,
    TruncatedDataError,
    WrongLengthError,
    WrongP1P2Error,
)
from protocols.status_words import (
    PIN_BLOCKED_SWS,
    SW,
    counter_value,
    is_counter,
    is_more_data,
    is_wrong_le,
)
from protocols.transport import Transport

SHORT_MAX_DATA = 255
SHORT_MAX_NE = 256
EXTENDED_MAX_DATA = 65535
EXTENDED_MAX_NE = 65536

INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0
INS_VERIFY = 0x20
INS_GET_RESPONSE = 0xC0
INS_PSO = 0x2A  # the JPKI card's COMPUTE DIGITAL SIGNATURE (CLA 80)

#: Bound on GET RESPONSE rounds: 64 x 256 bytes covers any EF on this card many times over; a card
#: that keeps answering 61xx past that is broken, and a daemon must not loop on it forever.
MAX_GET_RESPONSE_ROUNDS = 64


@dataclass(frozen=True)
class CommandApdu:
    """One command APDU. ``ne`` is the expected response length, ``None`` for no Le field."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int | None = None
    force_extended: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise CommandEncodingError(f"{name}={value!r} is not a byte")
        if len(self.data) > EXTENDED_MAX_DATA:
            raise CommandEncodingError(f"{len(self.data)} data bytes exceed an extended APDU")
        if self.ne is not None and not 1 <= self.ne <= EXTENDED_MAX_NE:
            raise CommandEncodingError(f"ne={self.ne} outside 1..65536")

    @property
    def extended(self) -> bool:
        """Whether this command needs (or was asked for) the extended-length encoding."""
        return (
            self.force_extended
            or len(self.data) > SHORT_MAX_DATA
            or (self.ne is not None and self.ne > SHORT_MAX_NE)
        )

    def with_ne(self, ne: int | None) -> CommandApdu:
        """The same command with another expected length (for 6Cxx re-sends)."""
        return CommandApdu(self.cla, self.ins, self.p1, self.p2, self.data, ne, self.force_extended)

    def encode(self) -> bytes:
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        nc = len(self.data)
        if not self.extended:
            body = b""
            if nc:
                body += bytes((nc,)) + self.data
            if self.ne is not None:
                body += bytes((self.ne % 256,))
            return header + body
        # Extended: a single 00 marker, then 2-byte Lc and/or 2-byte Le.
        body = b"\x00"
        if nc:
            body += nc.to_bytes(2, "big") + self.data
        if self.ne is not None:
            body += (self.ne % 65536).to_bytes(2, "big")
        if not nc and self.ne is None:
            return header  # case 1 has no extended form
        return header + body

    @classmethod
    def decode(cls, raw: bytes) -> CommandApdu:
        """Parse an encoded command (the guard and transcripts read commands as bytes)."""
        raw = bytes(raw)
        if len(raw) < 4:
            raise TruncatedDataError(f"command APDU of {len(raw)} bytes is shorter than its header")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        n = len(body)
        if n == 0:
            return cls(cla, ins, p1, p2)
        if n == 1:
            return cls(cla, ins, p1, p2, ne=body[0] or 256)
        if body[0] != 0 or n == 2:
            # Short cases 3 and 4.
            nc = body[0]
            if nc == 0:
                raise BadResponseError("short Lc of 0 is not allowed")
            if n == 1 + nc:
                return cls(cla, ins, p1, p2, body[1:])
            if n == 2 + nc:
                return cls(cla, ins, p1, p2, body[1 : 1 + nc], body[-1] or 256)
            raise BadResponseError(f"short APDU body of {n} bytes does not match Lc={nc}")
        # Extended: body[0] == 0 and n >= 3.
        if n == 3:
            return cls(cla, ins, p1, p2, ne=int.from_bytes(body[1:3], "big") or 65536, force_extended=True)
        nc = int.from_bytes(body[1:3], "big")
        if nc == 0:
            raise BadResponseError("extended Lc of 0 is not allowed")
        if n == 3 + nc:
            return cls(cla, ins, p1, p2, body[3:], force_extended=True)
        if n == 5 + nc:
            ne = int.from_bytes(body[-2:], "big") or 65536
            return cls(cla, ins, p1, p2, body[3 : 3 + nc], ne, force_extended=True)
        raise BadResponseError(f"extended APDU body of {n} bytes does not match Lc={nc}")


@dataclass(frozen=True)
class Response:
    """A response APDU: data and the status word."""

    data: bytes
    sw: int

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        raw = bytes(raw)
        if len(raw) < 2:
            raise TruncatedDataError(f"response of {len(raw)} bytes has no status word")
        return cls(raw[:-2], int.from_bytes(raw[-2:], "big"))

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    def check(self, accept: frozenset[int] = frozenset({SW.OK})) -> bytes:
        """Return the data if the status word is acceptable, else raise the matching :class:`ApduError`."""
        if self.sw in accept:
            return self.data
        raise error_for_sw(self.sw, self.data)


_SW_ERRORS: dict[int, type[ApduError]] = {
    SW.WRONG_LENGTH: WrongLengthError,
    SW.SECURITY_STATUS_NOT_SATISFIED: SecurityStatusError,
    SW.FILE_NOT_FOUND: FileNotFoundApduError,
    SW.WRONG_P1P2: WrongP1P2Error,
    SW.WRONG_P1P2_OFFSET: WrongP1P2Error,
    SW.NO_CURRENT_EF: NoCurrentEfError,
    SW.INS_NOT_SUPPORTED: CommandNotSupportedError,
    SW.CLA_NOT_SUPPORTED: CommandNotSupportedError,
    SW.CHANNEL_NOT_SUPPORTED: CommandNotSupportedError,
    SW.COMMAND_INCOMPATIBLE: CommandNotSupportedError,
}


def error_for_sw(sw: int, data: bytes = b"") -> ApduError:
    """The exception for a status word; unknown words give a plain :class:`ApduError` that keeps the code."""
    if sw in PIN_BLOCKED_SWS:
        return PinBlockedError(sw, data)
    if is_counter(sw):
        tries = counter_value(sw)
        if tries == 0:
            return PinBlockedError(sw, data, "wrong PIN, the PIN is now blocked")
        return InvalidPinError(sw, tries)
    if is_wrong_le(sw):
        return WrongLengthError(sw, data)
    return _SW_ERRORS.get(sw, ApduError)(sw, data)


__all__ = [
    "EXTENDED_MAX_NE",
    "SHORT_MAX_NE",
    "AuthRequiredError",
    "CommandApdu",
    "Response",
    "error_for_sw",
    "transceive",
]


def get_response(ne: int) -> CommandApdu:
    return CommandApdu(0x00, INS_GET_RESPONSE, 0x00, 0x00, ne=ne)


def transceive(transport: Transport, command: CommandApdu) -> Response:
    """Send one command and follow the card's 61xx / 6Cxx hints, with a hard bound on rounds.

    - 6Cxx: re-send the same command once with Le=xx (a second 6Cxx is returned to the caller).
    - 61xx: GET RESPONSE until the card stops saying 61xx, at most ``MAX_GET_RESPONSE_ROUNDS`` times;
      the data of every round is concatenated.
    """
    response = Response.parse(transport.transmit(command.encode()))
    if is_wrong_le(response.sw) and command.ne is not None:
        response = Response.parse(transport.transmit(command.with_ne((response.sw & 0xFF) or 256).encode()))
    data = bytearray(response.data)
    rounds = 0
    while is_more_data(response.sw):
        rounds += 1
        if rounds > MAX_GET_RESPONSE_ROUNDS:
            raise BadResponseError(f"card kept answering 61xx after {MAX_GET_RESPONSE_ROUNDS} GET RESPONSEs")
        response = Response.parse(transport.transmit(get_response((response.sw & 0xFF) or 256).encode()))
        data += response.data
    return Response(bytes(data), response.sw)
