"""What an ATR suggests to readerd (``pcsc_state.atr_hint``) and how it keys the read-path memory.

Pure functions, no pcscd: the daemon-level proof that the SELECT decides is tests/daemon/test_real_cards.py.
Cost: microseconds.
"""

from __future__ import annotations

import secrets

import pytest

from readerd.reading.backends.pcsc_state import (
    LOOKS_LIKE_MY_NUMBER,
    MY_NUMBER_ATRS,
    atr_hint,
    read_path_key,
)
from simulators.felica import ATR_FELICA_PCSC
from simulators.mynumber import ATR_NAMES, ATR_OTHER_CARD, NAMED_ATRS, atr_named, pupi_atr

#: The 住基カード's contactless ATR (pcsc-tools): another card of the same family, not a My Number Card.
JUKI_CARD_CONTACTLESS = bytes.fromhex("3B888001000014E0B38191005E")


def _tck_ok(atr: bytes) -> bool:
    check = 0
    for byte in atr[1:]:
        check ^= byte
    return check == 0


@pytest.mark.parametrize("atr", sorted(MY_NUMBER_ATRS), ids=lambda atr: atr.hex().upper())
def test_every_known_atr_is_well_formed_and_looks_like_a_my_number_card(atr: bytes) -> None:
    assert atr[0] == 0x3B
    assert _tck_ok(atr), "the check byte (TCK) must make the XOR of T0..TCK zero"
    assert atr_hint(atr) == LOOKS_LIKE_MY_NUMBER


@pytest.mark.parametrize("name", ATR_NAMES)
def test_every_atr_the_simulator_can_present_looks_like_a_my_number_card(name: str) -> None:
    atr = atr_named(name)
    assert _tck_ok(atr)
    assert atr_hint(atr) == LOOKS_LIKE_MY_NUMBER


def test_the_simulators_named_atrs_are_the_known_ones() -> None:
    assert set(NAMED_ATRS.values()) <= MY_NUMBER_ATRS


def test_an_atr_with_a_random_pupi_looks_like_a_my_number_card() -> None:
    for _ in range(50):
        assert atr_hint(pupi_atr(secrets.token_bytes(4))) == LOOKS_LIKE_MY_NUMBER
    assert atr_hint(pupi_atr(bytes(4), bytes.fromhex("B381D1"))) == LOOKS_LIKE_MY_NUMBER


@pytest.mark.parametrize(
    "atr",
    [ATR_OTHER_CARD, ATR_FELICA_PCSC, JUKI_CARD_CONTACTLESS, bytes.fromhex("3B8F8001"), b""],
    ids=["mifare", "felica", "juki-contactless", "short", "empty"],
)
def test_other_atrs_suggest_nothing(atr: bytes) -> None:
    assert atr_hint(atr) is None


def test_the_read_path_key_drops_a_pupi_and_keeps_the_rest() -> None:
    one, two = pupi_atr(bytes.fromhex("01020304")), pupi_atr(bytes.fromhex("A0B0C0D0"))
    assert one != two
    assert read_path_key(one) == read_path_key(two)
    # Another protocol info (another reader or card) is another key; non-Type-B ATRs are their own key.
    assert read_path_key(pupi_atr(bytes(4), bytes.fromhex("B381D1"))) != read_path_key(one)
    assert read_path_key(NAMED_ATRS["contact"]) == NAMED_ATRS["contact"]
    assert read_path_key(ATR_OTHER_CARD) == ATR_OTHER_CARD
