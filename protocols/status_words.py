"""ISO 7816-4 status words as the My Number Card uses them (docs/card-facts.md §3.4).

Where the card's behaviour is uncertain (the blocked-PIN word, what lies past the end of a file), the
value is a named constant here so a real card can correct it in one place.
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class SW(IntEnum):
    """Exact status words with a fixed meaning."""

    OK = 0x9000
    END_OF_FILE_WARNING = 0x6282  # fewer bytes than Le before the end of the file
    WRONG_LENGTH = 0x6700
    CHANNEL_NOT_SUPPORTED = 0x6881
    COMMAND_INCOMPATIBLE = 0x6981  # command incompatible with file structure
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983  # ISO's "blocked"; no My Number source reports it, accepted anyway
    REFERENCE_DATA_UNUSABLE = 0x6984  # the card's answer to VERIFY once the PIN is blocked [weak]
    CONDITIONS_NOT_SATISFIED = 0x6985
    NO_CURRENT_EF = 0x6986
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    WRONG_P1P2 = 0x6A86
    LC_INCONSISTENT_WITH_P1P2 = 0x6A87
    WRONG_P1P2_OFFSET = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


_MEANINGS: dict[int, str] = {
    SW.OK: "success",
    SW.END_OF_FILE_WARNING: "end of file reached before Le bytes",
    SW.WRONG_LENGTH: "wrong length",
    SW.CHANNEL_NOT_SUPPORTED: "logical channel not supported",
    SW.COMMAND_INCOMPATIBLE: "command incompatible with file structure",
    SW.SECURITY_STATUS_NOT_SATISFIED: "security status not satisfied",
    SW.AUTH_METHOD_BLOCKED: "authentication method blocked",
    SW.REFERENCE_DATA_UNUSABLE: "reference data not usable (PIN blocked)",
    SW.CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    SW.NO_CURRENT_EF: "no current EF",
    SW.WRONG_DATA: "incorrect data field",
    SW.FUNCTION_NOT_SUPPORTED: "function not supported",
    SW.FILE_NOT_FOUND: "file or application not found",
    SW.WRONG_P1P2: "incorrect P1-P2",
    SW.LC_INCONSISTENT_WITH_P1P2: "Lc inconsistent with P1-P2",
    SW.WRONG_P1P2_OFFSET: "wrong parameters (offset outside the file)",
    SW.INS_NOT_SUPPORTED: "instruction not supported",
    SW.CLA_NOT_SUPPORTED: "class not supported",
    SW.NO_PRECISE_DIAGNOSIS: "no precise diagnosis",
}

#: Status words after which VERIFY reports the PIN as blocked (docs/card-facts.md §3.4 and U2).
PIN_BLOCKED_SWS: frozenset[int] = frozenset({SW.REFERENCE_DATA_UNUSABLE, SW.AUTH_METHOD_BLOCKED})

#: Success words for READ BINARY: 6282 means "short read at the end of the file" (docs/design.md D12).
READ_SUCCESS_SWS: frozenset[int] = frozenset({SW.OK, SW.END_OF_FILE_WARNING})


def is_more_data(sw: int) -> bool:
    """61xx: the card has xx more bytes for GET RESPONSE (00 meaning 256)."""
    return sw >> 8 == 0x61


def is_wrong_le(sw: int) -> bool:
    """6Cxx: wrong Le, the exact length is xx (00 meaning 256)."""
    return sw >> 8 == 0x6C


def is_counter(sw: int) -> bool:
    """63Cx: a retry counter answer (x = tries left)."""
    return sw & 0xFFF0 == 0x63C0


def counter_value(sw: int) -> int:
    """The x of 63Cx."""
    return sw & 0x0F


def describe_sw(sw: int) -> str:
    """A human meaning for any status word, including the parametrised families."""
    if sw in _MEANINGS:
        return _MEANINGS[sw]
    if is_more_data(sw):
        return f"{(sw & 0xFF) or 256} more bytes available"
    if is_wrong_le(sw):
        return f"wrong Le, exact length is {(sw & 0xFF) or 256}"
    if is_counter(sw):
        return f"verification failed or queried, {counter_value(sw)} tries left"
    return "unknown status word"
