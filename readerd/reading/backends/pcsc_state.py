"""The PC/SC reader-state logic, without pyscard: what a ``SCardGetStatusChange`` answer means.

pcsc-lite keeps a per-reader event counter in the high 16 bits of ``dwEventState`` and increments it on
every insertion and every removal. Comparing counters catches what the PRESENT flag alone would hide: a
card removed and another tapped between two polls shows PRESENT both times, but the counter moved by 2.
Kept apart from the backend so a scripted fake of ``SCardGetStatusChange`` can test it without pcscd.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# dwEventState bits (pcsclite.h); pyscard exposes the same values, but this module must not import it.
STATE_UNAWARE = 0x0000
STATE_IGNORE = 0x0001
STATE_CHANGED = 0x0002
STATE_UNKNOWN = 0x0004
STATE_UNAVAILABLE = 0x0008
STATE_EMPTY = 0x0010
STATE_PRESENT = 0x0020
STATE_MUTE = 0x0200

#: SCardStatus pdwState bit (pcsclite.h SCARD_PRESENT); pyscard does not export it.
STATUS_PRESENT = 0x0004

PNP_READER = "\\\\?PnP?\\Notification"


def event_counter(state: int) -> int:
    return (state >> 16) & 0xFFFF


class Change(Enum):
    INSERTED = "inserted"
    REMOVED = "removed"
    MUTE = "mute"  # a card is there but does not answer the reset (no ATR)


@dataclass
class _Seen:
    present: bool
    counter: int
    atr: bytes


@dataclass(frozen=True)
class CardChange:
    reader: str
    change: Change
    atr: bytes = b""


class ReaderStates:
    """Turns successive reader states into card insertions and removals, never missing a fast re-tap."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def forget(self, reader: str) -> list[CardChange]:
        """The reader went away: a card on it is gone too."""
        seen = self._seen.pop(reader, None)
        return [CardChange(reader, Change.REMOVED)] if seen is not None and seen.present else []

    def present(self, reader: str) -> bool:
        seen = self._seen.get(reader)
        return seen is not None and seen.present

    def update(self, reader: str, state: int, atr: bytes) -> list[CardChange]:
        present = bool(state & STATE_PRESENT) and not state & STATE_MUTE
        mute = bool(state & STATE_PRESENT) and bool(state & STATE_MUTE)
        counter = event_counter(state)
        before = self._seen.get(reader)
        self._seen[reader] = _Seen(present, counter, bytes(atr))
        if before is None:
            if present:
                return [CardChange(reader, Change.INSERTED, bytes(atr))]
            return [CardChange(reader, Change.MUTE)] if mute else []
        moved = (counter - before.counter) % 0x10000
        changes: list[CardChange] = []
        if before.present and (not present or moved >= 2 or bytes(atr) != before.atr):
            changes.append(CardChange(reader, Change.REMOVED))
        if present and (not before.present or moved >= 2 or bytes(atr) != before.atr):
            changes.append(CardChange(reader, Change.INSERTED, bytes(atr)))
        if mute and not before.present and moved:
            changes.append(CardChange(reader, Change.MUTE))
        return changes


# --- what an ATR suggests (a hint for logs, never an identification) --------------------------------------
#: ATRs real My Number Cards were seen with (docs/card-facts.md §5: OpenSC, pcsc-tools). The card is
#: identified by a SELECT of the JPKI AP alone; an ATR only says what the card *looks like* in the logs.
MY_NUMBER_ATRS: frozenset[bytes] = frozenset(
    bytes.fromhex(atr)
    for atr in (
        "3BE000FF8131FE4514",
        "3BDA13FF8131FB468012392F31C173C601C03B",
        "3BC5FF8131FB458073C6010000",
        "3BF59100FF918171FE400042000100D1D6",
        "3BF59100FF918171FE4000420001B3A115",
        "3B888001000005E0B381A1007F",
        "3B888001000041E0B381A1003B",
        "3B888001004B51FF0081D100BC",
        "3B888001004B51FFB381D1000F",
    )
)
#: PC/SC part-3 ATR of an ISO 14443 Type B card: ``3B 88 80 01``, then 4 bytes of the ATQB's application
#: data (or, from some readers, the random PUPI), 3 bytes of protocol info, MBLI and TCK.
_TYPE_B_PREFIX = bytes.fromhex("3B888001")
_TYPE_B_LENGTH = 13
#: Protocol info of the My Number ATRs above: a Type B ATR with one of these and any 4 bytes before them is
#: the card's from a reader that puts the PUPI into the ATR.
MY_NUMBER_PROTOCOL_INFO: frozenset[bytes] = frozenset(
    bytes.fromhex(info) for info in ("B381A1", "B381D1", "0081D1")
)
LOOKS_LIKE_MY_NUMBER = "my_number_card"


def _type_b(atr: bytes) -> bool:
    return len(atr) == _TYPE_B_LENGTH and atr.startswith(_TYPE_B_PREFIX)


def atr_hint(atr: bytes) -> str | None:
    """``"my_number_card"`` when the ATR is one a My Number Card shows, else None. A hint for logs only:
    the ATR depends on the reader, other cards may share it, so only a SELECT of the JPKI AP decides."""
    atr = bytes(atr)
    if atr in MY_NUMBER_ATRS:
        return LOOKS_LIKE_MY_NUMBER
    if _type_b(atr) and atr[8:11] in MY_NUMBER_PROTOCOL_INFO:
        return LOOKS_LIKE_MY_NUMBER
    return None


def read_path_key(atr: bytes) -> bytes:
    """The ATR as a key for remembering a reader's read path: a Type B part-3 ATR without its 4 bytes of
    application data, which some readers fill with the PUPI, random at every tap (docs/card-facts.md §5).
    Keyed by the whole ATR, every tap on such a reader would be new to the memory, and grow it."""
    atr = bytes(atr)
    if _type_b(atr):
        return atr[:4] + bytes(4) + atr[8:12]
    return atr


# --- PC/SC part 10 reader features (pure parsing; the backend does the SCardControl calls) ------------
FEATURE_GET_TLV_PROPERTIES = 0x12
PROPERTY_MAX_APDU_DATA_SIZE = 0x0A


def parse_features(data: bytes) -> dict[int, int]:
    """``CM_IOCTL_GET_FEATURE_REQUEST`` answer: tag, length 4, control code big-endian."""
    features: dict[int, int] = {}
    i = 0
    while i + 6 <= len(data):
        tag, length = data[i], data[i + 1]
        if length != 4:
            break
        features[tag] = int.from_bytes(data[i + 2 : i + 6], "big")
        i += 6
    return features


def parse_tlv_properties(data: bytes) -> dict[int, int]:
    """``FEATURE_GET_TLV_PROPERTIES`` answer: tag, length, little-endian value."""
    properties: dict[int, int] = {}
    i = 0
    while i + 2 <= len(data):
        tag, length = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            break
        properties[tag] = int.from_bytes(value, "little")
        i += 2 + length
    return properties
