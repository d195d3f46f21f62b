"""Virtual FeliCa cards: the card side of NFC-F, for the nfcpy ``udp`` path and a PC/SC (RC-S300) path.

readerd identifies FeliCa cards by IDm and, for the city's own cards, by a few 16-byte blocks read with
Read Without Encryption (docs/design.md D13). The card model here answers FeliCa frames with its own
small decoder, never with readerd's reader-side codecs in ``protocols/felica.py``: a shared parser would
agree with itself and hide a bug on both sides. Only plain constants would be fair to share, and none
is needed.

Frame handling follows docs/card-facts.md §8 and what nfcpy's reader side sends (``nfc/tag/tt3.py``):

* Polling ``LEN 00 SC_hi SC_lo RC TSN``: answered when the system code matches byte-wise (``FF`` is a
  wildcard per byte); RC 0 -> IDm PMm, RC 1 -> + system code, RC 2 -> + 2 bytes of communication
  performance. Other request codes get no answer (reserved values; the real card's behaviour is not
  known to us).
* Read Without Encryption ``LEN 06 IDm n_svc svc_LE... n_blk elements...``: status flags follow nfcpy's
  ``Type3TagEmulation`` (the card every nfcpy udp reader has met so far): ``FF A1`` unknown service
  (or a service count outside 1..16), ``FF A2`` block count outside 1..15, ``(1<<i) A3`` a block element
  naming a service index not in the list, ``(1<<i) A2`` a block the service does not have. For that last
  case docs/card-facts.md §8 gives ``FF A2`` in general, and nfcpy's code sets the bit of the failing
  element; so do we.
  A real FeliCa uses other SF2 codes for some of these (e.g. ``A8`` for a block number): readerd only
  distinguishes zero from non-zero.
* Request Service ``02``: key version ``FFFF`` for a missing service, ``0000`` for a present one.
* Request System Code ``0C``: the one system of the card.
* Anything else, a frame whose LEN byte is wrong, or a command carrying another IDm: no answer, as a real
  card stays silent (and as nfcpy's emulation does for 02/0A, which is why readerd treats an unanswered
  02/0A/0C as "unsupported", not "removed").

おたっしゃカード (senior bath-house card) layout, service ``000B`` (Lite-S read-only), two blocks. The
layout is readerd's own (the city writes the cards; nothing here is a published format):

=====  ======  ======  ==============================================================
Block  Offset  Length  Field
=====  ======  ======  ==============================================================
0      0       4       magic ``OTS1`` (ASCII)
0      4       1       card version (0..255)
0      5       2       issuing ward code, big-endian (0..65535)
0      7       2       birth year (western calendar), big-endian
0      9       6       reserved, ``00``
0      15      1       check byte: the 32 bytes of blocks 0 and 1 sum to 0 modulo 256
1      0       16      member number, ASCII ``[0-9A-Z]``, 1..16 characters, right-padded with ``00``
=====  ======  ======  ==============================================================

Check-in card (like ななまるカード): service ``000B`` block 0 holds the unique number, ASCII digits and
capital letters, 1..16 characters, right-padded with ``00``. Nothing else is on it.

Transit card (system ``0003``): ``008B`` balance (1 block) and ``090F`` history (2 blocks) of dummy
bytes; readerd uses the IDm only.

PMm values. Lite-S: ``00 F1 00 00 00 01 43 00`` (IC type F1; the value the FeliCa Lite-S user's manual
gives, from memory: medium confidence). Transit: ``01 0B 10 0B 42 47 46 00`` is an invented but
well-formed FeliCa Standard PMm (IC type ``0B``, "new Suica" in nfcpy's table); its bytes 5 and 6 give
nfcpy's reader read/write timeouts of a few milliseconds. Not copied from a real card.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

BLOCK_SIZE = 16
IDM_LEN = 8

SYSTEM_LITE_S = 0x88B4
SYSTEM_TRANSIT = 0x0003

SERVICE_LITE_S_READ_ONLY = 0x000B
SERVICE_TRANSIT_BALANCE = 0x008B
SERVICE_TRANSIT_HISTORY = 0x090F

PMM_LITE_S = bytes.fromhex("00F1000000014300")
PMM_TRANSIT = bytes.fromhex("010B100B42474600")

BATHHOUSE_MAGIC = b"OTS1"

# Command and response codes (docs/card-facts.md §8), as the card knows them.
CMD_POLLING = 0x00
CMD_REQUEST_SERVICE = 0x02
CMD_READ_WITHOUT_ENCRYPTION = 0x06
CMD_REQUEST_SYSTEM_CODE = 0x0C

MAX_SERVICES_PER_READ = 16
MAX_BLOCKS_PER_READ = 15
MAX_SERVICES_PER_REQUEST = 32

KEY_VERSION_ABSENT = b"\xff\xff"
KEY_VERSION_PRESENT = b"\x00\x00"

_IDENTIFIER = re.compile(r"[0-9A-Z]{1,16}")


class FelicaKind(Enum):
    BATHHOUSE = "bathhouse"
    CHECKIN = "checkin"
    TRANSPORT = "transport"


@dataclass(frozen=True)
class FelicaCardProfile:
    """What one simulated FeliCa card holds; ``services`` maps a service code to its blocks in order."""

    kind: FelicaKind
    idm: bytes
    pmm: bytes
    system_code: int
    services: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.idm) != IDM_LEN or len(self.pmm) != IDM_LEN:
            raise ValueError("IDm and PMm are 8 bytes each")
        if not 0 <= self.system_code <= 0xFFFF:
            raise ValueError(f"system code {self.system_code:#x} is not 2 bytes")
        for code, blocks in self.services.items():
            if not 0 <= code <= 0xFFFF:
                raise ValueError(f"service code {code:#x} is not 2 bytes")
            if any(len(b) != BLOCK_SIZE for b in blocks):
                raise ValueError(f"service {code:04X} has a block that is not {BLOCK_SIZE} bytes")

    @property
    def sensf_res(self) -> bytes:
        """``01 || IDm || PMm || SYS``: nfcpy's udp listener's answer to Polling (docs/card-facts.md §9)."""
        return b"\x01" + self.idm + self.pmm + self.system_code.to_bytes(2, "big")

    @property
    def is_lite_s(self) -> bool:
        return self.pmm[1] in (0xF1, 0xF2)


def idm_for(name: str | None) -> bytes:
    """An IDm: derived from ``name`` so a named card is the same card on every run, random without one."""
    if name is None:
        return os.urandom(IDM_LEN)
    return hashlib.sha256(b"readerd-sim-felica-idm:" + name.encode()).digest()[:IDM_LEN]


def _ascii_block(value: str, what: str) -> bytes:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} must be 1..16 characters of 0-9 and A-Z, got {value!r}")
    return value.encode("ascii").ljust(BLOCK_SIZE, b"\x00")


def bathhouse_blocks(
    member_number: str, birth_year: int, ward_code: int, card_version: int
) -> tuple[bytes, ...]:
    """The two blocks of an おたっしゃカード (layout in the module docstring)."""
    if not 0 <= card_version <= 0xFF:
        raise ValueError("card version is one byte")
    if not 0 <= ward_code <= 0xFFFF:
        raise ValueError("ward code is two bytes")
    if not 1900 <= birth_year <= 2100:
        raise ValueError(f"birth year {birth_year} is not plausible")
    member = _ascii_block(member_number, "member number")
    head = (
        BATHHOUSE_MAGIC
        + bytes([card_version])
        + ward_code.to_bytes(2, "big")
        + birth_year.to_bytes(2, "big")
        + bytes(6)
    )
    check = (-(sum(head) + sum(member))) % 256
    return (head + bytes([check]), member)


def bathhouse_card(
    member_number: str,
    birth_year: int,
    ward_code: int,
    card_version: int = 1,
    idm: bytes | None = None,
) -> FelicaCardProfile:
    """A senior bath-house card on FeliCa Lite-S; without ``idm``, the IDm follows from the member number."""
    return FelicaCardProfile(
        kind=FelicaKind.BATHHOUSE,
        idm=idm if idm is not None else idm_for(f"bathhouse:{member_number}"),
        pmm=PMM_LITE_S,
        system_code=SYSTEM_LITE_S,
        services={
            SERVICE_LITE_S_READ_ONLY: bathhouse_blocks(member_number, birth_year, ward_code, card_version)
        },
    )


def checkin_card(unique_number: str, idm: bytes | None = None) -> FelicaCardProfile:
    """A check-in card (unique number only) on FeliCa Lite-S."""
    return FelicaCardProfile(
        kind=FelicaKind.CHECKIN,
        idm=idm if idm is not None else idm_for(f"checkin:{unique_number}"),
        pmm=PMM_LITE_S,
        system_code=SYSTEM_LITE_S,
        services={SERVICE_LITE_S_READ_ONLY: (_ascii_block(unique_number, "unique number"),)},
    )


def transport_card(name: str | None = None, idm: bytes | None = None) -> FelicaCardProfile:
    """A transit IC card (system 0003); only its IDm matters to readerd, the blocks are filler."""
    balance = bytes(11) + (1234).to_bytes(2, "little") + bytes(3)
    history = (
        bytes.fromhex("160100022B3CE7100000D20400000001"),
        bytes.fromhex("C74600002B3B00000000E80300000002"),
    )
    return FelicaCardProfile(
        kind=FelicaKind.TRANSPORT,
        idm=idm if idm is not None else idm_for(None if name is None else f"transport:{name}"),
        pmm=PMM_TRANSIT,
        system_code=SYSTEM_TRANSIT,
        services={SERVICE_TRANSIT_BALANCE: (balance,), SERVICE_TRANSIT_HISTORY: history},
    )


# --- the card OS ---------------------------------------------------------------------------------------
class _Malformed(Exception):
    """The frame does not parse: the card stays silent."""


class _Status(Exception):
    """Answer a Read Without Encryption with these status flags and no blocks."""

    def __init__(self, sf1: int, sf2: int) -> None:
        super().__init__(f"{sf1:02X} {sf2:02X}")
        self.sf1 = sf1
        self.sf2 = sf2


class _Reader:
    """Cursor over a command body; running off the end is a malformed frame."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise _Malformed
        part = self._data[self._pos : self._pos + n]
        self._pos += n
        return part

    def byte(self) -> int:
        return self.take(1)[0]

    @property
    def done(self) -> bool:
        return self._pos == len(self._data)


@dataclass
class VirtualFelicaCard:
    """One FeliCa card in the field: frames in, frames out, and a log of every frame received."""

    profile: FelicaCardProfile
    received: list[bytes] = field(default_factory=list)

    def process_frame(self, frame: bytes) -> bytes | None:
        """The card's response frame (with its LEN byte), or None when the card does not answer."""
        raw = bytes(frame)
        self.received.append(raw)
        if len(raw) < 2 or raw[0] != len(raw):
            return None
        try:
            if raw[1] == CMD_POLLING:
                return self._polling(raw[2:])
            if len(raw) < 10 or raw[2:10] != self.profile.idm:
                return None
            body = _Reader(raw[10:])
            if raw[1] == CMD_READ_WITHOUT_ENCRYPTION:
                return self._respond(raw[1], self._read_without_encryption(body))
            if raw[1] == CMD_REQUEST_SERVICE:
                return self._respond(raw[1], self._request_service(body))
            if raw[1] == CMD_REQUEST_SYSTEM_CODE:
                if not body.done:
                    return None
                return self._respond(raw[1], b"\x01" + self.profile.system_code.to_bytes(2, "big"))
        except _Malformed:
            return None
        return None

    def _respond(self, command: int, payload: bytes) -> bytes:
        body = bytes([command + 1]) + self.profile.idm + payload
        return bytes([len(body) + 1]) + body

    def _polling(self, body: bytes) -> bytes | None:
        if len(body) != 4:
            return None
        wanted, request_code = body[0:2], body[2]
        own = self.profile.system_code.to_bytes(2, "big")
        if any(w not in (0xFF, o) for w, o in zip(wanted, own, strict=True)):
            return None
        payload = self.profile.idm + self.profile.pmm
        if request_code == 1:
            payload += own
        elif request_code == 2:
            # Communication performance: 212 kbit/s only for Lite-S; 212 + 424 and auto-detect otherwise.
            payload += b"\x00\x01" if self.profile.is_lite_s else b"\x00\x83"
        elif request_code != 0:
            return None
        return bytes([len(payload) + 2, CMD_POLLING + 1]) + payload

    def _read_without_encryption(self, body: _Reader) -> bytes:
        try:
            return self._read_blocks(body)
        except _Status as status:
            return bytes([status.sf1, status.sf2])

    def _read_blocks(self, body: _Reader) -> bytes:
        n_services = body.byte()
        if not 1 <= n_services <= MAX_SERVICES_PER_READ:
            body.take(2 * n_services)
            raise _Status(0xFF, 0xA1)
        codes = [int.from_bytes(body.take(2), "little") for _ in range(n_services)]
        n_blocks = body.byte()
        elements: list[tuple[int, int]] = []
        for _ in range(n_blocks):
            first = body.byte()
            if first & 0x80:
                elements.append((first & 0x0F, body.byte()))
            else:
                elements.append((first & 0x0F, int.from_bytes(body.take(2), "little")))
        if not body.done:
            raise _Malformed
        if any(code not in self.profile.services for code in codes):
            raise _Status(0xFF, 0xA1)
        if not 1 <= n_blocks <= MAX_BLOCKS_PER_READ:
            raise _Status(0xFF, 0xA2)
        data = b""
        for i, (index, number) in enumerate(elements):
            if index >= n_services:
                raise _Status(1 << (i % 8), 0xA3)
            blocks = self.profile.services[codes[index]]
            if number >= len(blocks):
                raise _Status(1 << (i % 8), 0xA2)
            data += blocks[number]
        return b"\x00\x00" + bytes([n_blocks]) + data

    def _request_service(self, body: _Reader) -> bytes:
        count = body.byte()
        if not 1 <= count <= MAX_SERVICES_PER_REQUEST:
            raise _Malformed
        codes = [int.from_bytes(body.take(2), "little") for _ in range(count)]
        if not body.done:
            raise _Malformed
        versions = b"".join(
            KEY_VERSION_PRESENT if code in self.profile.services else KEY_VERSION_ABSENT for code in codes
        )
        return bytes([count]) + versions


# --- the same card behind a PC/SC part-3 reader (RC-S300 class) ---------------------------------------
#: PC/SC part-3 ATR of a FeliCa card (RID A000000306, SS 11, NN 003B; docs/card-facts.md §8).
ATR_FELICA_PCSC = bytes.fromhex("3B8F8001804F0CA00000030611003B0000000042")

SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = 0x6700
SW_CONDITIONS = 0x6985
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00

TAG_START_SESSION = 0x81
TAG_END_SESSION = 0x82
TAG_RF_OFF = 0x83
TAG_RF_ON = 0x84
TAG_SWITCH_PROTOCOL = 0x8F
TAG_TIMER = 0x5F46
TAG_TRANSCEIVE = 0x95
TAG_VALID_BITS = 0x92
TAG_RESPONSE_STATUS = 0x96
TAG_RESPONSE_DATA = 0x97
TAG_GENERIC_ERROR = 0xC0

#: ``C0 03 00 90 00``: no error.
STATUS_OK = bytes.fromhex("C003009000")
#: ``C0 03 01 64 01``: error, no response from the card (timeout).
STATUS_NO_RESPONSE = bytes.fromhex("C003016401")
#: Switch Protocol value for FeliCa, layer 0.
PROTOCOL_FELICA = b"\x03\x00"


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _objects(data: bytes) -> list[tuple[int, bytes]]:
    """Split the data field of an ``FF C2`` command into (tag, value) pairs; raises _Malformed."""
    out: list[tuple[int, bytes]] = []
    cursor = _Reader(data)
    while not cursor.done:
        tag = cursor.byte()
        if tag & 0x1F == 0x1F:
            tag = tag << 8 | cursor.byte()
        first = cursor.byte()
        if first < 0x80:
            length = first
        elif first in (0x81, 0x82):
            length = int.from_bytes(cursor.take(first & 0x7F), "big")
        else:
            raise _Malformed
        out.append((tag, cursor.take(length)))
    return out


def _object(tag: int, value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n <= 0xFF else b"\x82" + n.to_bytes(2, "big")
    return bytes([tag]) + length + value


class FelicaPcscCard:
    """A FeliCa card on an RC-S300-class PC/SC reader, as a :class:`simulators.inprocess.CardModel`.

    The reader firmware, not the card, answers the pseudo-APDUs, so this class plays both: ``FF CA``
    (GET DATA: IDm with P1 00, PMm with P1 01) and the PC/SC part-3 transparent session ``FF C2`` whose
    exchange passes one FeliCa frame to :class:`VirtualFelicaCard`.

    Response layout of a transparent exchange: ``C0 03 00 90 00`` ``92 01 00`` ``96 02 00 00``
    ``97 L <frame>`` then ``90 00``. Sources and confidence: the object tags (C0 generic error status,
    92 number of valid bits in the last byte, 96 response status, 97 ICC response) are PC/SC part 3
    v2.02 §3.2.2.1 as far as a search of stored copies and reader manuals shows (the stored text was
    not readable in full); the order and the exact 92/96 values follow RC-S300 logs reported in
    docs/card-facts.md §8 [weak]. ``C0 03 01 64 01`` for "no answer from the card" is the part-3 error
    form with SW 6401 (execution error, no response) and is the least certain part: a real reader may
    answer with an outer status word instead. readerd's reader side keys on C0's first byte and on 97, so
    these details do not change what it sees. Session and switch-protocol answers carry
    ``C0 03 00 90 00``. An exchange outside a session gets 6985.
    """

    def __init__(self, card: VirtualFelicaCard | FelicaCardProfile) -> None:
        self.card = card if isinstance(card, VirtualFelicaCard) else VirtualFelicaCard(card)
        self.apdus: list[bytes] = []
        self.powered = False
        self.session = False
        self.protocol: bytes | None = None
        self.rf_on = True

    @property
    def profile(self) -> FelicaCardProfile:
        return self.card.profile

    @property
    def atr(self) -> bytes:
        return ATR_FELICA_PCSC

    def power_on(self) -> bytes:
        self.powered = True
        self.session = False
        self.protocol = None
        self.rf_on = True
        return self.atr

    def power_off(self) -> None:
        self.powered = False
        self.session = False

    def process(self, raw: bytes) -> bytes:
        apdu = bytes(raw)
        self.apdus.append(apdu)
        if len(apdu) < 4:
            return _sw(SW_WRONG_LENGTH)
        cla, ins, p1, p2 = apdu[:4]
        if cla != 0xFF:
            return _sw(SW_CLA_NOT_SUPPORTED)
        data, le = self._body(apdu[4:])
        if data is None:
            return _sw(SW_WRONG_LENGTH)
        if ins == 0xCA:
            return self._get_data(p1, p2, data, le)
        if ins == 0xC2:
            if p1 != 0x00:
                return _sw(SW_FUNCTION_NOT_SUPPORTED)
            try:
                objects = _objects(data)
            except _Malformed:
                return _sw(SW_WRONG_LENGTH)
            if p2 == 0x00:
                return self._manage_session(objects)
            if p2 == 0x01:
                return self._transparent_exchange(objects)
            if p2 == 0x02:
                return self._switch_protocol(objects)
            return _sw(SW_FUNCTION_NOT_SUPPORTED)
        return _sw(SW_INS_NOT_SUPPORTED)

    @staticmethod
    def _body(rest: bytes) -> tuple[bytes | None, int | None]:
        """Short APDU cases 1-4: (data, Le); data None when Lc disagrees with the length."""
        if not rest:
            return b"", None
        if len(rest) == 1:
            return b"", rest[0] or 256
        lc = rest[0]
        if lc == 0:
            return None, None  # extended APDUs are not something this reader takes
        if len(rest) == 1 + lc:
            return rest[1:], None
        if len(rest) == 2 + lc:
            return rest[1 : 1 + lc], rest[-1] or 256
        return None, None

    def _get_data(self, p1: int, p2: int, data: bytes, le: int | None) -> bytes:
        if p2 != 0x00 or data:
            return _sw(SW_FUNCTION_NOT_SUPPORTED)
        if p1 == 0x00:
            value = self.profile.idm
        elif p1 == 0x01:
            value = self.profile.pmm
        else:
            return _sw(SW_FUNCTION_NOT_SUPPORTED)
        if le is not None and le < len(value):
            return _sw(0x6C00 | len(value))
        return value + SW_OK

    def _manage_session(self, objects: Sequence[tuple[int, bytes]]) -> bytes:
        for tag, _value in objects:
            if tag == TAG_START_SESSION:
                self.session = True
            elif tag == TAG_END_SESSION:
                self.session = False
                self.protocol = None
            elif tag == TAG_RF_OFF:
                self.rf_on = False
            elif tag == TAG_RF_ON:
                self.rf_on = True
            elif tag != TAG_TIMER:
                return _sw(SW_FUNCTION_NOT_SUPPORTED)
        return STATUS_OK + SW_OK

    def _switch_protocol(self, objects: Sequence[tuple[int, bytes]]) -> bytes:
        if not self.session:
            return _sw(SW_CONDITIONS)
        for tag, value in objects:
            if tag != TAG_SWITCH_PROTOCOL or value != PROTOCOL_FELICA:
                return _sw(SW_FUNCTION_NOT_SUPPORTED)
            self.protocol = value
        return STATUS_OK + SW_OK

    def _transparent_exchange(self, objects: Sequence[tuple[int, bytes]]) -> bytes:
        if not self.session:
            return _sw(SW_CONDITIONS)
        frames = [value for tag, value in objects if tag == TAG_TRANSCEIVE]
        if len(frames) != 1 or any(tag not in (TAG_TRANSCEIVE, TAG_TIMER) for tag, _ in objects):
            return _sw(SW_FUNCTION_NOT_SUPPORTED)
        response = self.card.process_frame(frames[0]) if self.rf_on else None
        if response is None:
            return STATUS_NO_RESPONSE + SW_OK
        return (
            STATUS_OK
            + _object(TAG_VALID_BITS, b"\x00")
            + _object(TAG_RESPONSE_STATUS, b"\x00\x00")
            + _object(TAG_RESPONSE_DATA, response)
            + SW_OK
        )
