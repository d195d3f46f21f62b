"""FeliCa behind a PC/SC reader (protocols.felica.PcscFelica) against the simulated RC-S300-class reader."""

from __future__ import annotations

import pytest

from protocols.errors import CardRemovedError, DeniedCommandError
from protocols.felica import (
    BlockElement,
    FelicaSession,
    PcscFelica,
    ServiceCode,
    is_felica_atr,
)
from simulators.felica import ATR_FELICA_PCSC, FelicaPcscCard, bathhouse_card, transport_card
from simulators.inprocess import InProcessReader
from simulators.mynumber import ATR_CONTACTLESS


def _reader(card: FelicaPcscCard) -> InProcessReader:
    reader = InProcessReader(extended_length=False)
    reader.insert(card)
    return reader


def test_felica_atr_is_recognised_and_a_my_number_atr_is_not() -> None:
    assert is_felica_atr(ATR_FELICA_PCSC)
    assert not is_felica_atr(ATR_CONTACTLESS)
    assert not is_felica_atr(b"")
    # SS 03 (ISO 14443 B part 3) under the same RID is not FeliCa; a truncated ATR is not either.
    assert not is_felica_atr(ATR_FELICA_PCSC.replace(bytes.fromhex("0611"), bytes.fromhex("0603")))
    assert not is_felica_atr(ATR_FELICA_PCSC[:12])


def test_idm_and_pmm_by_get_data() -> None:
    profile = bathhouse_card("B0001", birth_year=1950, ward_code=13101)
    card = FelicaPcscCard(profile)
    pcsc = PcscFelica(_reader(card))
    assert pcsc.idm() == profile.idm
    assert pcsc.pmm() == profile.pmm
    assert pcsc.apdu_count == 2
    assert [a[:4] for a in card.apdus] == [bytes.fromhex("FFCA0000"), bytes.fromhex("FFCA0100")]


def test_blocks_through_the_transparent_session_match_the_profile() -> None:
    profile = bathhouse_card("B0002", birth_year=1944, ward_code=13104)
    card = FelicaPcscCard(profile)
    pcsc = PcscFelica(_reader(card))
    pcsc.open()
    polling = pcsc.poll()
    assert (polling.idm, polling.pmm, polling.system_code) == (profile.idm, profile.pmm, 0x88B4)
    session = FelicaSession(pcsc, polling, max_blocks_per_read=14)
    blocks = session.read_blocks([ServiceCode.from_int(0x000B)], [BlockElement(0, 0), BlockElement(0, 1)])
    assert blocks == list(profile.services[0x000B])
    pcsc.close()
    assert not card.session
    assert card.card.received[-1][1] == 0x06  # the read reached the card itself, with its IDm
    assert card.card.received[-1][2:10] == profile.idm


def test_a_card_that_left_the_field_is_removed_not_malformed() -> None:
    card = FelicaPcscCard(transport_card("commuter"))
    pcsc = PcscFelica(_reader(card))
    pcsc.open()
    polling = pcsc.poll()
    card.rf_on = False  # the reader's field no longer reaches the card
    with pytest.raises(CardRemovedError):
        FelicaSession(pcsc, polling).read_blocks([ServiceCode.from_int(0x008B)], [BlockElement(0, 0)])


def test_only_felica_pseudo_apdus_pass_the_guard() -> None:
    card = FelicaPcscCard(transport_card("commuter"))
    pcsc = PcscFelica(_reader(card))
    with pytest.raises(DeniedCommandError):
        pcsc._transport.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))
    assert card.apdus == []
