"""FeliCa (NFC-F, JIS X 6319-4) frames for readerd: the commands it sends and the answers it trusts.

readerd reads FeliCa cards for one purpose: an IDm (or a few blocks of an unencrypted service) that a
pseudonym is derived from. So this module covers Polling, Read Without Encryption, Request Service and
Request System Code, the PC/SC pseudo-APDUs that carry them through a PC/SC reader, and a small
:class:`FelicaSession` that drives a :class:`~protocols.transport.FelicaTransport`. Nothing here writes
to a card or authenticates to one (docs/design.md D13).

A frame is always ``LEN code ...`` where ``LEN`` counts itself. Responses are checked for their length
byte, response code and (after Polling) the IDm of the card the session is talking to: a reply from
another card in the field, or a stale frame, must never be taken for this card's data. Every parser
raises a :class:`~protocols.errors.ReaderdError` subclass on bad input and nothing else; every builder
raises :class:`~protocols.errors.CommandEncodingError` on arguments that cannot be put on the wire.

Facts and their sources: docs/card-facts.md §8 and §9 (nfcpy 1.0.4 ``tt3.py`` / ``tt3_sony.py`` for the frame
layouts, status flags and IC types; an RC-S300 investigation log for the PC/SC transparent session).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum, unique

from protocols.apdu import CommandApdu, error_for_sw, transceive
from protocols.errors import (
    CardRemovedError,
    CommandEncodingError,
    FelicaError,
    FelicaFrameError,
    FelicaStatusError,
    ReaderdError,
)
from protocols.guard import GuardedTransport, SessionKind
from protocols.status_words import SW
from protocols.transport import FelicaTransport, Transport

# --- sizes and well-known codes ----------------------------------------------------------------------
IDM_LEN = 8
PMM_LEN = 8
BLOCK_SIZE = 16
#: The LEN byte counts the whole frame, itself included, so no frame is longer than this.
MAX_FRAME_LEN = 255

#: Polling for ``FFFF`` wakes a card whatever its systems; each ``FF`` byte is a wildcard on its own,
#: so ``12FF`` matches ``12FC`` too (nfcpy's emulation compares byte by byte, docs/card-facts.md §9).
SYSTEM_CODE_WILDCARD = 0xFFFF
#: CJRC/サイバネ transit cards (Suica, PASMO, ICOCA, ...).
SYSTEM_CODE_TRANSIT = 0x0003
#: The FeliCa common area; Edy, nanaco and WAON live under it.
SYSTEM_CODE_COMMON_AREA = 0xFE00
#: FeliCa Lite and Lite-S.
SYSTEM_CODE_LITE_S = 0x88B4
#: NFC Forum Type 3 Tag (NDEF).
SYSTEM_CODE_NDEF = 0x12FC

#: Lite-S user blocks: ``000B`` is the read-only view and ``0009`` the read/write one (docs/card-facts.md §8).
SERVICE_CODE_LITE_S_READ_ONLY = 0x000B
SERVICE_CODE_LITE_S_READ_WRITE = 0x0009
#: Transit (system 0003) services readable without a key (docs/card-facts.md §8, from TRETJapanNFCReader).
SERVICE_CODE_TRANSIT_BALANCE = 0x008B
SERVICE_CODE_TRANSIT_HISTORY = 0x090F

#: Request Service answers this key version for a service or area the card does not have.
KEY_VERSION_ABSENT = 0xFFFF

#: The service list of one Read Without Encryption frame: the block element's service index has 4 bits.
MAX_SERVICES_PER_READ = 16
#: Blocks per Read Without Encryption frame. The FeliCa format allows more, but nfcpy's Type 3 Tag
#: emulation (our simulator) answers ``FF A2`` above 15 and Lite-S-class tags accept no more, so 15 is
#: the practical ceiling. Some ICs take fewer (nfcpy's IC table lists per-IC read limits down to 1);
#: :class:`FelicaSession` takes a smaller limit when the backend knows one.
MAX_BLOCKS_PER_READ = 15
#: A PC/SC short APDU carries at most 256 response bytes. A 14-block answer is 13 + 224 = 237 bytes,
#: wrapped as ``97 81 ED`` + frame (240) plus ``C0 03 ..`` (5) and the optional ``92 01 ..`` and
#: ``96 02 .. ..`` objects (7): 252. Fifteen blocks (253 + 15) would not fit, so a PC/SC wrapper reads
#: at most this many blocks per frame [inf].
PCSC_MAX_BLOCKS_PER_READ = 14
#: Request Service asks about 1..32 services or areas per frame (nfcpy ``FelicaStandard``).
MAX_SERVICES_PER_REQUEST = 32

_SERVICE_NUMBER_MAX = 0x3FF
_SERVICE_ATTRIBUTE_MAX = 0x3F
_SERVICE_INDEX_MAX = 0x0F
_ACCESS_MODE_MAX = 0x07
_BLOCK_NUMBER_MAX = 0xFFFF
_TWO_BYTE_BLOCK_MAX = 0xFF
_TWO_BYTE_BLOCK_FLAG = 0x80

_VALID_TIME_SLOTS = frozenset({0, 1, 3, 7, 15})


@unique
class FelicaCommand(IntEnum):
    """FeliCa command codes; the response code is always the command code plus one."""

    POLLING = 0x00
    REQUEST_SERVICE = 0x02
    REQUEST_RESPONSE = 0x04
    READ_WITHOUT_ENCRYPTION = 0x06
    WRITE_WITHOUT_ENCRYPTION = 0x08
    SEARCH_SERVICE_CODE = 0x0A
    REQUEST_SYSTEM_CODE = 0x0C

    @property
    def response_code(self) -> int:
        return self.value + 1


@unique
class RequestCode(IntEnum):
    """What a Polling response appends after IDm and PMm."""

    NONE = 0
    SYSTEM_CODE = 1
    COMM_PERFORMANCE = 2


class IcFamily(Enum):
    """Product family by PMm[1] (the IC type), as nfcpy's ``tt3_sony.activate`` classifies it.

    The family decides what a card can be asked: only Standard and Mobile FeliCa know Request Service
    and Search Service Code; Lite and Lite-S have a fixed block map.
    """

    LITE = "lite"
    LITE_S = "lite_s"
    PLUG = "plug"
    STANDARD = "standard"
    MOBILE = "mobile"
    UNKNOWN = "unknown"


# nfcpy 1.0.4 tt3_sony IC_CODE_MAPs (docs/card-facts.md §8). Standard is not all of 00-0D: the code lists
# only these, and 06/07 are Mobile FeliCa 1.0.
_IC_FAMILIES: dict[int, IcFamily] = {
    0xF0: IcFamily.LITE,  # FeliCa Lite (RC-S965)
    0xF1: IcFamily.LITE_S,  # FeliCa Lite-S (RC-S966)
    0xF2: IcFamily.LITE_S,  # FeliCa Link (RC-S730) in Lite-S mode
    0xE0: IcFamily.PLUG,  # FeliCa Plug (RC-S926)
    0xE1: IcFamily.PLUG,  # FeliCa Link (RC-S730) in Plug mode
    **dict.fromkeys((0x00, 0x01, 0x02, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x20, 0x32, 0x35), IcFamily.STANDARD),
    **dict.fromkeys((0x06, 0x07, *range(0x10, 0x20)), IcFamily.MOBILE),
}


def classify_ic_type(ic_type: int) -> IcFamily:
    """The product family of PMm[1]; unknown codes stay :attr:`IcFamily.UNKNOWN`, not an error."""
    return _IC_FAMILIES.get(ic_type, IcFamily.UNKNOWN)


# --- response timeouts from PMm ----------------------------------------------------------------------
#: The FeliCa time unit: 256 x 16 / fc with fc = 13.56 MHz, about 0.3021 ms (the spec rounds it to
#: 0.302 ms; nfcpy uses 302.1 us for reads and 302 us elsewhere).
T_BASE = 256 * 16 / 13.56e6

#: PMm byte positions of the maximum-response-time parameters (nfcpy ``tt3.py``/``tt3_sony.py``).
PMM_BYTE_IC_TYPE = 1
PMM_BYTE_REQUEST_SERVICE = 2
PMM_BYTE_FIXED_RESPONSE = 3  # Request Response, Search Service Code, Request System Code
PMM_BYTE_READ = 5
PMM_BYTE_WRITE = 6

#: Ceiling of any computed timeout: PMm ``FF`` with 15 blocks would allow 2.5 s, and a card that slow is
#: better treated as gone than left to stall a kiosk.
MAX_TIMEOUT = 1.0
#: Floor of any computed timeout [inf]. The PMm budget counts the card's processing only; nfcpy's udp
#: driver (the simulator) and PC/SC wrappers time on the host's wall clock, where a 1.2 ms budget (a
#: Lite-S reading two blocks) is lost to scheduling. Waiting a few ms longer for a missing card is harmless.
MIN_TIMEOUT = 0.020


def response_time(pmm_byte: int, units: int) -> float:
    """The card's maximum response time in seconds for ``units`` blocks (or services), per the FeliCa spec.

    A PMm timing byte is ``EE BBB AAA``: ``T = T_BASE * ((B + 1) * units + (A + 1)) * 4**E``. Commands with
    a fixed time (Request System Code) pass ``units=0``, which leaves ``T_BASE * (A + 1) * 4**E`` as nfcpy
    computes it. No clamping here; :func:`command_timeout` applies the floor and ceiling.
    """
    if not 0 <= pmm_byte <= 0xFF:
        raise CommandEncodingError(f"PMm byte {pmm_byte!r} is not a byte")
    if units < 0:
        raise CommandEncodingError(f"negative unit count {units}")
    a, b, e = pmm_byte & 0x07, (pmm_byte >> 3) & 0x07, pmm_byte >> 6
    return T_BASE * ((b + 1) * units + (a + 1)) * (1 << (2 * e))  # 4**e


def command_timeout(pmm_byte: int, units: int, *, maximum: float = MAX_TIMEOUT) -> float:
    """:func:`response_time` held between :data:`MIN_TIMEOUT` and ``maximum``."""
    return min(max(response_time(pmm_byte, units), MIN_TIMEOUT), maximum)


# --- small checks shared by builders and parsers -----------------------------------------------------
def _checked_idm(idm: bytes) -> bytes:
    if not isinstance(idm, bytes | bytearray | memoryview) or len(idm) != IDM_LEN:
        raise CommandEncodingError(f"an IDm is {IDM_LEN} bytes")
    return bytes(idm)


def _command_frame(command: FelicaCommand, body: bytes) -> bytes:
    length = 2 + len(body)
    if length > MAX_FRAME_LEN:
        raise CommandEncodingError(f"a FeliCa frame of {length} bytes exceeds the 1-byte LEN field")
    return bytes((length, command)) + body


def _checked_response(frame: bytes, command: FelicaCommand, idm: bytes | None, minimum: int) -> bytes:
    """Check LEN, the response code and (when given) the IDm; return the frame as ``bytes``."""
    raw = bytes(frame)
    name = command.name.replace("_", " ").title()
    if len(raw) < 2:
        raise FelicaFrameError(f"{name} response of {len(raw)} bytes has no LEN and code")
    if raw[0] != len(raw):
        raise FelicaFrameError(f"{name} response LEN byte {raw[0]} but the frame has {len(raw)} bytes")
    if raw[1] != command.response_code:
        raise FelicaFrameError(f"{name} response code {raw[1]:02X}, expected {command.response_code:02X}")
    if len(raw) < minimum:
        raise FelicaFrameError(f"{name} response of {len(raw)} bytes is shorter than {minimum}")
    if idm is not None and raw[2 : 2 + IDM_LEN] != idm:
        # The IDm is an identifier: name the mismatch, never the bytes (they end up in logs).
        raise FelicaFrameError(f"{name} response comes from another IDm than the session's card")
    return raw


# --- Polling -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PollingResponse:
    """A card's answer to Polling: what the backend learned before any session starts."""

    idm: bytes
    pmm: bytes
    system_code: int | None = None
    comm_performance: bytes | None = None

    def __post_init__(self) -> None:
        # Backends build this from their library's values (nfcpy hands out bytearrays); keep it hashable
        # and refuse a shape no card sends.
        for name, size in (("idm", IDM_LEN), ("pmm", PMM_LEN)):
            value = getattr(self, name)
            if not isinstance(value, bytes | bytearray | memoryview) or len(value) != size:
                raise FelicaFrameError(f"{name} must be {size} bytes")
            object.__setattr__(self, name, bytes(value))
        if self.system_code is not None and not 0 <= self.system_code <= 0xFFFF:
            raise FelicaFrameError(f"system code {self.system_code!r} is not 16 bits")
        if self.comm_performance is not None:
            if len(self.comm_performance) != 2:
                raise FelicaFrameError("communication performance is 2 bytes")
            object.__setattr__(self, "comm_performance", bytes(self.comm_performance))

    @property
    def ic_type(self) -> int:
        return self.pmm[PMM_BYTE_IC_TYPE]

    @property
    def ic_family(self) -> IcFamily:
        return classify_ic_type(self.ic_type)

    def read_timeout(self, n_blocks: int, *, maximum: float = MAX_TIMEOUT) -> float:
        return command_timeout(self.pmm[PMM_BYTE_READ], n_blocks, maximum=maximum)

    def request_service_timeout(self, n_services: int, *, maximum: float = MAX_TIMEOUT) -> float:
        return command_timeout(self.pmm[PMM_BYTE_REQUEST_SERVICE], n_services, maximum=maximum)

    def fixed_response_timeout(self, *, maximum: float = MAX_TIMEOUT) -> float:
        return command_timeout(self.pmm[PMM_BYTE_FIXED_RESPONSE], 0, maximum=maximum)


def _checked_request_code(request_code: int) -> RequestCode:
    try:
        return RequestCode(request_code)
    except ValueError:
        raise CommandEncodingError(f"Polling request code {request_code!r} is not 0, 1 or 2") from None


def build_polling(
    system_code: int = SYSTEM_CODE_WILDCARD,
    request_code: int = RequestCode.SYSTEM_CODE,
    time_slots: int = 0,
) -> bytes:
    """``06 00 SC_hi SC_lo RC TSN``; the defaults give nfcpy's SENSF_REQ ``06 00 FF FF 01 00``."""
    if not isinstance(system_code, int) or not 0 <= system_code <= 0xFFFF:
        raise CommandEncodingError(f"system code {system_code!r} is not 16 bits")
    rc = _checked_request_code(request_code)
    if time_slots not in _VALID_TIME_SLOTS:
        raise CommandEncodingError(f"time slots {time_slots!r} not in 0, 1, 3, 7, 15")
    return _command_frame(FelicaCommand.POLLING, system_code.to_bytes(2, "big") + bytes((rc, time_slots)))


def parse_polling_response(frame: bytes, request_code: int = RequestCode.SYSTEM_CODE) -> PollingResponse:
    """``LEN 01 IDm PMm [SC | comm performance]``: 18 bytes for request code 0, 20 otherwise.

    ``request_code`` must be the one the Polling command carried: the trailing two bytes mean a system
    code (RC 1, big-endian like the Polling field) or communication performance (RC 2).
    """
    rc = _checked_request_code(request_code)
    expected = 2 + IDM_LEN + PMM_LEN + (0 if rc is RequestCode.NONE else 2)
    raw = _checked_response(frame, FelicaCommand.POLLING, None, 2)
    if len(raw) != expected:
        raise FelicaFrameError(f"Polling response (RC {int(rc)}) of {len(raw)} bytes, expected {expected}")
    idm, pmm, extra = raw[2:10], raw[10:18], raw[18:]
    if rc is RequestCode.SYSTEM_CODE:
        return PollingResponse(idm, pmm, system_code=int.from_bytes(extra, "big"))
    if rc is RequestCode.COMM_PERFORMANCE:
        return PollingResponse(idm, pmm, comm_performance=extra)
    return PollingResponse(idm, pmm)


# --- service codes and block elements ----------------------------------------------------------------
@dataclass(frozen=True)
class ServiceCode:
    """A 10-bit service number and 6-bit attribute; on the wire ``(number << 6) | attribute``, little-endian.

    Attribute bit 0 set means "no key needed", the only services Read Without Encryption can read.
    """

    number: int
    attribute: int

    def __post_init__(self) -> None:
        if not isinstance(self.number, int) or not 0 <= self.number <= _SERVICE_NUMBER_MAX:
            raise CommandEncodingError(f"service number {self.number!r} not in 0..1023")
        if not isinstance(self.attribute, int) or not 0 <= self.attribute <= _SERVICE_ATTRIBUTE_MAX:
            raise CommandEncodingError(f"service attribute {self.attribute!r} not in 0..63")

    @property
    def code(self) -> int:
        return (self.number << 6) | self.attribute

    def pack(self) -> bytes:
        return self.code.to_bytes(2, "little")

    @classmethod
    def from_int(cls, code: int) -> ServiceCode:
        """From the 16-bit form people write (``0x090F`` is number 36, attribute 0x0F)."""
        if not isinstance(code, int) or not 0 <= code <= 0xFFFF:
            raise CommandEncodingError(f"service code {code!r} is not 16 bits")
        return cls(code >> 6, code & _SERVICE_ATTRIBUTE_MAX)

    @classmethod
    def unpack(cls, data: bytes) -> ServiceCode:
        """From the 2 little-endian bytes a card sends; anything else is a bad frame."""
        raw = bytes(data)
        if len(raw) != 2:
            raise FelicaFrameError(f"a service code is 2 bytes, got {len(raw)}")
        return cls.from_int(int.from_bytes(raw, "little"))

    def __str__(self) -> str:
        return f"{self.code:04X}"


@dataclass(frozen=True)
class BlockElement:
    """One entry of a block list: which block of which service (by index into the frame's service list).

    The 2-byte form (``1 AAA IIII``, block) is used whenever the block number fits a byte, the 3-byte
    form (``0 AAA IIII``, block little-endian) otherwise, as nfcpy's ``BlockCode.pack`` does.
    """

    service_index: int
    block_number: int
    access_mode: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.service_index, int) or not 0 <= self.service_index <= _SERVICE_INDEX_MAX:
            raise CommandEncodingError(f"service index {self.service_index!r} not in 0..15")
        if not isinstance(self.block_number, int) or not 0 <= self.block_number <= _BLOCK_NUMBER_MAX:
            raise CommandEncodingError(f"block number {self.block_number!r} not in 0..65535")
        if not isinstance(self.access_mode, int) or not 0 <= self.access_mode <= _ACCESS_MODE_MAX:
            raise CommandEncodingError(f"access mode {self.access_mode!r} not in 0..7")

    def pack(self) -> bytes:
        head = (self.access_mode << 4) | self.service_index
        if self.block_number <= _TWO_BYTE_BLOCK_MAX:
            return bytes((_TWO_BYTE_BLOCK_FLAG | head, self.block_number))
        return bytes((head,)) + self.block_number.to_bytes(2, "little")


# --- Read Without Encryption -------------------------------------------------------------------------
def build_read_without_encryption(
    idm: bytes, services: Sequence[ServiceCode], blocks: Sequence[BlockElement]
) -> bytes:
    """``LEN 06 IDm n_svc svc_LE... n_blk block...``."""
    card = _checked_idm(idm)
    if not 1 <= len(services) <= MAX_SERVICES_PER_READ:
        raise CommandEncodingError(f"{len(services)} services; a read names 1..{MAX_SERVICES_PER_READ}")
    if not 1 <= len(blocks) <= MAX_BLOCKS_PER_READ:
        raise CommandEncodingError(f"{len(blocks)} blocks; a read asks for 1..{MAX_BLOCKS_PER_READ}")
    for service in services:
        if not isinstance(service, ServiceCode):
            raise CommandEncodingError(f"{service!r} is not a ServiceCode")
    for block in blocks:
        if not isinstance(block, BlockElement):
            raise CommandEncodingError(f"{block!r} is not a BlockElement")
        if block.service_index >= len(services):
            raise CommandEncodingError(
                f"block {block.block_number} refers to service index {block.service_index} "
                f"of a {len(services)}-service list"
            )
    body = (
        card
        + bytes((len(services),))
        + b"".join(s.pack() for s in services)
        + bytes((len(blocks),))
        + b"".join(b.pack() for b in blocks)
    )
    return _command_frame(FelicaCommand.READ_WITHOUT_ENCRYPTION, body)


def _raise_status(raw: bytes, name: str) -> None:
    """Raise for non-zero status flags; such a frame is exactly ``LEN code IDm SF1 SF2``."""
    sf1, sf2 = raw[10], raw[11]
    if sf1 == 0 and sf2 == 0:
        return
    if len(raw) != 12:
        raise FelicaFrameError(f"{name} error status {sf1:02X} {sf2:02X} followed by {len(raw) - 12} bytes")
    raise FelicaStatusError(sf1, sf2)


def parse_read_without_encryption_response(frame: bytes, idm: bytes, n_blocks: int) -> list[bytes]:
    """``LEN 07 IDm SF1 SF2 n_blk data(16 x n_blk)``: the blocks, in the order they were asked for.

    Non-zero status flags raise :class:`FelicaStatusError` (nfcpy's emulation: ``FF A1`` unknown
    service, ``FF A2`` bad block count or unreadable block, ``xx A3`` bad service index). A card that
    answers a different number of blocks than asked is not trusted with any of them.
    """
    card = _checked_idm(idm)
    raw = _checked_response(frame, FelicaCommand.READ_WITHOUT_ENCRYPTION, card, 12)
    _raise_status(raw, "Read Without Encryption")
    if len(raw) < 13:
        raise FelicaFrameError("Read Without Encryption response has status flags but no block count")
    count = raw[12]
    if count != n_blocks:
        raise FelicaFrameError(f"card returned {count} blocks, {n_blocks} were asked for")
    data = raw[13:]
    if len(data) != BLOCK_SIZE * count:
        raise FelicaFrameError(f"{count} blocks need {BLOCK_SIZE * count} data bytes, got {len(data)}")
    return [data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)]


# --- Request System Code -----------------------------------------------------------------------------
def build_request_system_code(idm: bytes) -> bytes:
    """``0A 0C IDm``."""
    return _command_frame(FelicaCommand.REQUEST_SYSTEM_CODE, _checked_idm(idm))


def parse_request_system_code_response(frame: bytes, idm: bytes) -> list[int]:
    """``LEN 0D IDm n SC(2, big-endian) x n``: the card's systems, in the card's order.

    Big-endian as in Polling (nfcpy unpacks ``>H``; its emulation echoes the SENSF_RES system bytes).
    A card has at least one system, so a count of 0 is a bad frame.
    """
    card = _checked_idm(idm)
    raw = _checked_response(frame, FelicaCommand.REQUEST_SYSTEM_CODE, card, 11)
    count = raw[10]
    if count == 0:
        raise FelicaFrameError("Request System Code response lists no system")
    if len(raw) != 11 + 2 * count:
        raise FelicaFrameError(f"{count} system codes need {11 + 2 * count} bytes, got {len(raw)}")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(11, len(raw), 2)]


# --- Request Service ---------------------------------------------------------------------------------
def build_request_service(idm: bytes, services: Sequence[ServiceCode]) -> bytes:
    """``LEN 02 IDm n node_LE...``: a node is a service or area code, both in the 2-byte form."""
    card = _checked_idm(idm)
    if not 1 <= len(services) <= MAX_SERVICES_PER_REQUEST:
        raise CommandEncodingError(
            f"{len(services)} services; Request Service asks about 1..{MAX_SERVICES_PER_REQUEST}"
        )
    for service in services:
        if not isinstance(service, ServiceCode):
            raise CommandEncodingError(f"{service!r} is not a ServiceCode")
    body = card + bytes((len(services),)) + b"".join(s.pack() for s in services)
    return _command_frame(FelicaCommand.REQUEST_SERVICE, body)


def parse_request_service_response(frame: bytes, idm: bytes, n_services: int) -> list[int]:
    """``LEN 03 IDm n kv_LE...``: one key version per node asked, :data:`KEY_VERSION_ABSENT` if missing.

    The response has no status flags (nfcpy reads it with ``check_status=False``).
    """
    card = _checked_idm(idm)
    raw = _checked_response(frame, FelicaCommand.REQUEST_SERVICE, card, 11)
    count = raw[10]
    if count != n_services:
        raise FelicaFrameError(f"card answered for {count} services, {n_services} were asked about")
    if len(raw) != 11 + 2 * count:
        raise FelicaFrameError(f"{count} key versions need {11 + 2 * count} bytes, got {len(raw)}")
    return [int.from_bytes(raw[i : i + 2], "little") for i in range(11, len(raw), 2)]


# --- PC/SC pseudo-APDUs ------------------------------------------------------------------------------
_CLA_PSEUDO = 0xFF
_INS_GET_DATA = 0xCA
_INS_ENVELOPE = 0xC2  # PC/SC part 3 "Manage Session" / "Transparent Exchange" / "Switch Protocol"
_P2_MANAGE_SESSION = 0x00
_P2_TRANSPARENT_EXCHANGE = 0x01
_P2_SWITCH_PROTOCOL = 0x02

_TAG_START_SESSION = 0x81
_TAG_END_SESSION = 0x82
_TAG_SWITCH_PROTOCOL = 0x8F
_TAG_TIMER = 0x5F46
_TAG_TRANSCEIVE = 0x95
_TAG_RESPONSE_DATA = 0x97
_TAG_GENERIC_ERROR = 0xC0

#: Switch Protocol value for FeliCa: protocol 03 (FeliCa), layer 00 (docs/card-facts.md §8) [weak].
_SWITCH_TO_FELICA = bytes((0x03, 0x00))


class TransparentSessionError(FelicaError):
    """A PC/SC part-3 reader reported an error in its generic error status object (``C0``).

    ``status`` is the object's first byte and ``sw`` its reader-side status word; a PC/SC FeliCa
    wrapper maps "no answer from the card" to a :class:`~protocols.errors.TransportError` from these.
    """

    code = "felica_transparent_error"

    def __init__(self, status: int, sw: int) -> None:
        self.status = status
        self.sw = sw
        super().__init__(f"transparent session error status {status:02X}, SW={sw:04X}")


def get_uid_apdu() -> CommandApdu:
    """``FF CA 00 00 00``: GET DATA of the UID, which is the IDm for a FeliCa card."""
    return CommandApdu(_CLA_PSEUDO, _INS_GET_DATA, 0x00, 0x00, ne=256)


def get_pmm_apdu() -> CommandApdu:
    """``FF CA 01 00 00``: the PMm on an RC-S300 (one report, docs/card-facts.md §8) [weak]."""
    return CommandApdu(_CLA_PSEUDO, _INS_GET_DATA, 0x01, 0x00, ne=256)


def _ber_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    return b"\x82" + n.to_bytes(2, "big")


def _tlv(tag: int, value: bytes) -> bytes:
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    return tag_bytes + _ber_length(len(value)) + value


def start_session_apdu(ne: int | None = None) -> CommandApdu:
    """``FF C2 00 00 02 81 00``: Manage Session, start a transparent session.

    The session commands go without Le, as the RC-S300 log shows them; ``ne`` adds one for a reader
    that wants it.
    """
    return CommandApdu(
        _CLA_PSEUDO, _INS_ENVELOPE, 0x00, _P2_MANAGE_SESSION, _tlv(_TAG_START_SESSION, b""), ne
    )


def switch_to_felica_apdu(ne: int | None = None) -> CommandApdu:
    """``FF C2 00 02 04 8F 02 03 00``: Switch Protocol to FeliCa, layer 0."""
    data = _tlv(_TAG_SWITCH_PROTOCOL, _SWITCH_TO_FELICA)
    return CommandApdu(_CLA_PSEUDO, _INS_ENVELOPE, 0x00, _P2_SWITCH_PROTOCOL, data, ne)


def end_session_apdu(ne: int | None = None) -> CommandApdu:
    """``FF C2 00 00 02 82 00``: Manage Session, end the transparent session."""
    return CommandApdu(_CLA_PSEUDO, _INS_ENVELOPE, 0x00, _P2_MANAGE_SESSION, _tlv(_TAG_END_SESSION, b""), ne)


def transceive_apdu(frame: bytes, *, timeout_us: int | None = None, ne: int | None = 256) -> CommandApdu:
    """``FF C2 00 01 Lc [5F 46 04 timer] 95 L <frame> 00``: Transparent Exchange of one FeliCa frame.

    The answer comes back as data objects, so the command expects data: ``ne=256`` encodes as a
    trailing ``00``. ``L`` takes the long form ``81 xx`` from 128 bytes on. ``timeout_us`` adds the
    part-3 timer object (microseconds, little-endian) for readers that honour it. A frame longer than
    252 bytes no longer fits a short APDU and goes out extended, which not every reader accepts.
    """
    raw = bytes(frame)
    if not 1 <= len(raw) <= MAX_FRAME_LEN or raw[0] != len(raw):
        raise CommandEncodingError("a FeliCa frame is 1..255 bytes and starts with its own length")
    data = b""
    if timeout_us is not None:
        if not 0 <= timeout_us <= 0xFFFFFFFF:
            raise CommandEncodingError(f"timer {timeout_us!r} us does not fit 4 bytes")
        data += _tlv(_TAG_TIMER, timeout_us.to_bytes(4, "little"))
    data += _tlv(_TAG_TRANSCEIVE, raw)
    return CommandApdu(_CLA_PSEUDO, _INS_ENVELOPE, 0x00, _P2_TRANSPARENT_EXCHANGE, data, ne)


def _simple_tlv_objects(data: bytes) -> list[tuple[int, bytes]]:
    """Walk the data objects of a part-3 response: 1- or 2-byte tags, lengths up to ``82 xx xx``."""
    objects: list[tuple[int, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:  # a 2-byte tag such as 5F46
            if pos >= end:
                raise FelicaFrameError("transparent response ends inside a tag")
            if data[pos] & 0x80:
                raise FelicaFrameError("transparent response uses a tag longer than 2 bytes")
            tag = (tag << 8) | data[pos]
            pos += 1
        if pos >= end:
            raise FelicaFrameError(f"transparent response object {tag:02X} has no length")
        first = data[pos]
        pos += 1
        if first < 0x80:
            length = first
        elif first in (0x81, 0x82):
            size = first & 0x7F
            if pos + size > end:
                raise FelicaFrameError(f"transparent response object {tag:02X} ends inside its length")
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            raise FelicaFrameError(f"transparent response object {tag:02X} has length byte {first:02X}")
        if pos + length > end:
            raise FelicaFrameError(f"transparent response object {tag:02X} needs {length} bytes")
        objects.append((tag, data[pos : pos + length]))
        pos += length
    return objects


def parse_transparent_response(data: bytes) -> bytes:
    """The FeliCa frame inside a Transparent Exchange answer (the R-APDU data, status word removed).

    ``C0 03 <status> <SW1 SW2>`` is the generic error status of PC/SC part 3 (§3.2.2.1.x): a first
    byte other than 00 is taken as an error and raises :class:`TransparentSessionError`. That reading
    rests on reader sources and one RC-S300 log, not on the specification text [weak]. The response
    status object (``96``) and the valid-bits object (``92``) are not interpreted. The frame is the value
    of ``97``; an answer without exactly one ``97`` is a bad frame.
    """
    objects = _simple_tlv_objects(bytes(data))
    for tag, value in objects:
        if tag != _TAG_GENERIC_ERROR:
            continue
        if len(value) != 3:
            raise FelicaFrameError(f"generic error status object of {len(value)} bytes, expected 3")
        if value[0] != 0:
            raise TransparentSessionError(value[0], int.from_bytes(value[1:3], "big"))
    frames = [value for tag, value in objects if tag == _TAG_RESPONSE_DATA]
    if len(frames) != 1:
        raise FelicaFrameError(f"transparent response has {len(frames)} response data objects (97)")
    return frames[0]


# --- a FeliCa card behind a PC/SC reader ---------------------------------------------------------------
#: The part-3 ATR's historical bytes carry ``4F 0C`` + RID ``A0 00 00 03 06`` + SS + NN
#: (docs/card-facts.md §8).
_PART3_AID_PREFIX = bytes.fromhex("4F0CA000000306")
#: SS (standard) bytes of FeliCa in the PC/SC part-3 supplemental document: 212 and 424 kbit/s.
_SS_FELICA = frozenset({0x11, 0x12})
#: "No answer from the card" in a transparent exchange (``C0 03 01 64 01``): status 01, SW 6401.
_NO_CARD_ANSWER_SW = 0x6401


def is_felica_atr(atr: bytes) -> bool:
    """Whether a PC/SC ATR is a contactless reader's synthesised ATR for a FeliCa card (SS 11 or 12)."""
    at = bytes(atr).find(_PART3_AID_PREFIX)
    end = at + len(_PART3_AID_PREFIX)
    return at >= 0 and end < len(atr) and atr[end] in _SS_FELICA


class PcscFelica:
    """A FeliCa card through a PC/SC reader's pseudo-APDUs, under the FeliCa allow-list of the guard.

    The IDm comes from GET DATA (every PC/SC contactless reader answers ``FF CA``); frames go through
    a part-3 transparent session, which only some readers offer (docs/design.md D13), so the caller
    opens it only when configured to. As a :class:`~protocols.transport.FelicaTransport`, a frame the
    card does not answer raises :class:`~protocols.errors.CardRemovedError`, as on nfcpy.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = GuardedTransport(transport, SessionKind.FELICA)
        self.in_session = False

    @property
    def apdu_count(self) -> int:
        return self._transport.apdu_count

    def _ok(self, command: CommandApdu) -> bytes:
        response = transceive(self._transport, command)
        if response.sw != SW.OK:
            raise error_for_sw(response.sw)
        return response.data

    def idm(self) -> bytes:
        data = self._ok(get_uid_apdu())
        if len(data) != IDM_LEN:
            raise FelicaFrameError(f"the reader gave a {len(data)}-byte UID for a FeliCa card")
        return data

    def pmm(self) -> bytes | None:
        """The PMm where the reader gives it (``FF CA 01``, RC-S300), else None."""
        response = transceive(self._transport, get_pmm_apdu())
        return response.data if response.sw == SW.OK and len(response.data) == PMM_LEN else None

    def open(self) -> None:
        """Start the transparent session and switch it to FeliCa."""
        for command in (start_session_apdu(), switch_to_felica_apdu()):
            parse_generic_status(self._ok(command))
            self.in_session = True

    def close(self) -> None:
        """End the transparent session (best effort: the card may be gone)."""
        if self.in_session:
            self.in_session = False
            with contextlib.suppress(ReaderdError):
                self._transport.transmit(end_session_apdu().encode())

    def exchange(self, frame: bytes, timeout: float) -> bytes:
        command = transceive_apdu(frame, timeout_us=int(timeout * 1_000_000))
        try:
            return parse_transparent_response(self._ok(command))
        except TransparentSessionError as e:
            if e.sw == _NO_CARD_ANSWER_SW:
                raise CardRemovedError("the FeliCa card did not answer") from e
            raise

    def poll(self, timeout: float = 0.05) -> PollingResponse:
        """Polling (wildcard system, request code 1) through the session: IDm, PMm and system code."""
        return parse_polling_response(self.exchange(build_polling(), timeout))


def parse_generic_status(data: bytes) -> None:
    """Raise :class:`TransparentSessionError` when a part-3 answer's ``C0`` object reports an error."""
    for tag, value in _simple_tlv_objects(bytes(data)):
        if tag == _TAG_GENERIC_ERROR and len(value) == 3 and value[0] != 0:
            raise TransparentSessionError(value[0], int.from_bytes(value[1:3], "big"))


# --- the session -------------------------------------------------------------------------------------
def _chunks(blocks: Sequence[BlockElement], size: int) -> list[Sequence[BlockElement]]:
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


class FelicaSession:
    """Read-only commands to one card the backend has already polled.

    Polling stays with the backend (docs/design.md D13): it knows the reader's field and how it
    found the card. The session checks every answer against the IDm from that Polling. A command the card
    does not answer surfaces as the transport's :class:`~protocols.errors.TransportError`; for
    Request Service and Request System Code the caller reads that as "unsupported" (nfcpy's emulation
    answers neither), not as "removed".
    """

    def __init__(
        self,
        transport: FelicaTransport,
        polling: PollingResponse,
        *,
        max_blocks_per_read: int = MAX_BLOCKS_PER_READ,
        max_timeout: float = MAX_TIMEOUT,
    ) -> None:
        if not 1 <= max_blocks_per_read <= MAX_BLOCKS_PER_READ:
            raise CommandEncodingError(f"max_blocks_per_read {max_blocks_per_read} not in 1..15")
        if not max_timeout > 0:
            raise CommandEncodingError(f"max_timeout {max_timeout!r} must be positive")
        self._transport = transport
        self.polling = polling
        self.max_blocks_per_read = max_blocks_per_read
        self.max_timeout = max_timeout
        self.frames_sent = 0

    @property
    def idm(self) -> bytes:
        return self.polling.idm

    def _exchange(self, frame: bytes, timeout: float) -> bytes:
        self.frames_sent += 1
        return self._transport.exchange(frame, timeout)

    def read_blocks(
        self,
        services: Sequence[ServiceCode],
        blocks: Sequence[BlockElement],
        timeout: float | None = None,
    ) -> list[bytes]:
        """Read ``blocks`` (16 bytes each, in order), one frame per :attr:`max_blocks_per_read` blocks.

        Each frame names only the services its own blocks use, re-indexed, so a chunk never depends on
        how a card treats services listed but not read. ``timeout`` (seconds, per frame) defaults to the
        card's PMm read budget for that frame's block count.
        """
        if not 1 <= len(services) <= MAX_SERVICES_PER_READ:
            raise CommandEncodingError(f"{len(services)} services; a read names 1..{MAX_SERVICES_PER_READ}")
        if not blocks:
            raise CommandEncodingError("no blocks to read")
        for block in blocks:
            if not isinstance(block, BlockElement):
                raise CommandEncodingError(f"{block!r} is not a BlockElement")
            if block.service_index >= len(services):
                raise CommandEncodingError(
                    f"block {block.block_number} refers to service index {block.service_index} "
                    f"of a {len(services)}-service list"
                )
        result: list[bytes] = []
        for chunk in _chunks(blocks, self.max_blocks_per_read):
            used = sorted({b.service_index for b in chunk})
            index = {old: new for new, old in enumerate(used)}
            chunk_services = [services[i] for i in used]
            chunk_blocks = [dataclasses.replace(b, service_index=index[b.service_index]) for b in chunk]
            frame = build_read_without_encryption(self.idm, chunk_services, chunk_blocks)
            wait = (
                timeout
                if timeout is not None
                else self.polling.read_timeout(len(chunk), maximum=self.max_timeout)
            )
            answer = self._exchange(frame, wait)
            result.extend(parse_read_without_encryption_response(answer, self.idm, len(chunk)))
        return result

    def request_system_codes(self, timeout: float | None = None) -> list[int]:
        """The card's system codes (Request System Code); Standard and Mobile FeliCa answer it."""
        wait = (
            timeout if timeout is not None else self.polling.fixed_response_timeout(maximum=self.max_timeout)
        )
        answer = self._exchange(build_request_system_code(self.idm), wait)
        return parse_request_system_code_response(answer, self.idm)

    def request_service(self, services: Sequence[ServiceCode], timeout: float | None = None) -> list[int]:
        """Key versions of ``services`` (:data:`KEY_VERSION_ABSENT` for one the card lacks)."""
        frame = build_request_service(self.idm, services)
        wait = (
            timeout
            if timeout is not None
            else self.polling.request_service_timeout(len(services), maximum=self.max_timeout)
        )
        answer = self._exchange(frame, wait)
        return parse_request_service_response(answer, self.idm, len(services))


__all__ = [
    "BLOCK_SIZE",
    "IDM_LEN",
    "KEY_VERSION_ABSENT",
    "MAX_BLOCKS_PER_READ",
    "PCSC_MAX_BLOCKS_PER_READ",
    "PMM_LEN",
    "SYSTEM_CODE_COMMON_AREA",
    "SYSTEM_CODE_LITE_S",
    "SYSTEM_CODE_NDEF",
    "SYSTEM_CODE_TRANSIT",
    "SYSTEM_CODE_WILDCARD",
    "BlockElement",
    "FelicaCommand",
    "FelicaSession",
    "IcFamily",
    "PcscFelica",
    "PollingResponse",
    "RequestCode",
    "ServiceCode",
    "TransparentSessionError",
    "build_polling",
    "build_read_without_encryption",
    "build_request_service",
    "build_request_system_code",
    "classify_ic_type",
    "command_timeout",
    "end_session_apdu",
    "get_pmm_apdu",
    "get_uid_apdu",
    "is_felica_atr",
    "parse_generic_status",
    "parse_polling_response",
    "parse_read_without_encryption_response",
    "parse_request_service_response",
    "parse_request_system_code_response",
    "parse_transparent_response",
    "response_time",
    "start_session_apdu",
    "switch_to_felica_apdu",
    "transceive_apdu",
]
