"""The reader-state logic of the PC/SC backend against scripted SCardGetStatusChange answers."""

from __future__ import annotations

from readerd.reading.backends.pcsc_state import (
    STATE_EMPTY,
    STATE_MUTE,
    STATE_PRESENT,
    CardChange,
    Change,
    ReaderStates,
    parse_features,
    parse_tlv_properties,
)

ATR = bytes.fromhex("3B888001000005E0B381A1007F")
R = "Reader 00"


def state(flags: int, counter: int) -> int:
    return (counter << 16) | flags


def test_first_sight_of_a_card_is_an_insertion() -> None:
    states = ReaderStates()
    assert states.update(R, state(STATE_PRESENT, 1), ATR) == [CardChange(R, Change.INSERTED, ATR)]
    assert states.update(R, state(STATE_PRESENT, 1), ATR) == []


def test_insert_and_remove() -> None:
    states = ReaderStates()
    assert states.update(R, state(STATE_EMPTY, 0), b"") == []
    assert states.update(R, state(STATE_PRESENT, 1), ATR) == [CardChange(R, Change.INSERTED, ATR)]
    assert states.update(R, state(STATE_EMPTY, 2), b"") == [CardChange(R, Change.REMOVED)]


def test_a_fast_retap_between_two_polls_is_not_missed() -> None:
    """PRESENT both times, but the counter moved by 2: a removal and an insertion happened."""
    states = ReaderStates()
    states.update(R, state(STATE_PRESENT, 5), ATR)
    assert states.update(R, state(STATE_PRESENT, 7), ATR) == [
        CardChange(R, Change.REMOVED),
        CardChange(R, Change.INSERTED, ATR),
    ]


def test_counter_wraps_around() -> None:
    states = ReaderStates()
    states.update(R, state(STATE_PRESENT, 0xFFFF), ATR)
    assert [c.change for c in states.update(R, state(STATE_PRESENT, 1), ATR)] == [
        Change.REMOVED,
        Change.INSERTED,
    ]


def test_another_card_with_another_atr() -> None:
    states = ReaderStates()
    states.update(R, state(STATE_PRESENT, 1), ATR)
    other = bytes.fromhex("3BE000FF8131FE4514")
    assert states.update(R, state(STATE_PRESENT, 1), other) == [
        CardChange(R, Change.REMOVED),
        CardChange(R, Change.INSERTED, other),
    ]


def test_a_card_that_came_and_went_between_polls_yields_nothing() -> None:
    states = ReaderStates()
    states.update(R, state(STATE_EMPTY, 2), b"")
    assert states.update(R, state(STATE_EMPTY, 4), b"") == []


def test_mute_card() -> None:
    states = ReaderStates()
    assert states.update(R, state(STATE_PRESENT | STATE_MUTE, 1), b"") == [CardChange(R, Change.MUTE)]


def test_forgetting_a_reader_removes_its_card() -> None:
    states = ReaderStates()
    states.update(R, state(STATE_PRESENT, 1), ATR)
    assert states.forget(R) == [CardChange(R, Change.REMOVED)]
    assert states.forget(R) == []


def test_part10_parsers() -> None:
    features = parse_features(bytes.fromhex("12 04 42 33 00 12 0A 04 42 00 00 01".replace(" ", "")))
    assert features == {0x12: 0x42330012, 0x0A: 0x42000001}
    props = parse_tlv_properties(bytes.fromhex("0A04FFFF0000 0B02E604".replace(" ", "")))
    assert props == {0x0A: 0xFFFF, 0x0B: 0x04E6}
    assert parse_tlv_properties(bytes.fromhex("0A04FFFF")) == {}  # truncated: ignored, not a crash
