"""The virtual FeliCa card at frame level, and behind a simulated PC/SC part-3 reader.

Every command and expected answer is spelled out byte by byte here, not built with the card's or
readerd's codecs, so a mistake in either shows up as a mismatch.
"""

from __future__ import annotations

import pytest

from protocols.errors import CardRemovedError
from simulators.felica import (
    ATR_FELICA_PCSC,
    FelicaCardProfile,
    FelicaKind,
    FelicaPcscCard,
    VirtualFelicaCard,
    bathhouse_card,
    checkin_card,
    idm_for,
    transport_card,
)
from simulators.inprocess import InProcessReader

IDM = bytes.fromhex("0123456789ABCDEF")
OTHER_IDM = bytes.fromhex("0123456789ABCDEE")
LITE_S_PMM = bytes.fromhex("00F1000000014300")


def frame(*parts: bytes | int) -> bytes:
    """LEN byte + the parts (ints are single bytes)."""
    body = b"".join(bytes([p]) if isinstance(p, int) else p for p in parts)
    return bytes([len(body) + 1]) + body


@pytest.fixture
def bath() -> VirtualFelicaCard:
    return VirtualFelicaCard(bathhouse_card("00012345", 1950, 101, 2, idm=IDM))


# --- profiles ----------------------------------------------------------------------------------------
def test_bathhouse_blocks_follow_the_documented_layout():
    profile = bathhouse_card("00012345", 1950, 0x0165, 2, idm=IDM)
    block0, block1 = profile.services[0x000B]
    head = b"OTS1" + b"\x02" + b"\x01\x65" + b"\x07\x9e" + b"\x00" * 6
    member = b"00012345" + b"\x00" * 8
    check = (0x100 - (sum(head) + sum(member)) % 0x100) % 0x100
    assert block0 == head + bytes([check])
    assert block1 == member
    assert (sum(block0) + sum(block1)) % 256 == 0
    assert profile.kind is FelicaKind.BATHHOUSE
    assert profile.system_code == 0x88B4
    assert profile.pmm[1] == 0xF1


def test_checkin_card_holds_only_the_unique_number():
    profile = checkin_card("70123456789")
    assert profile.services == {0x000B: (b"70123456789\x00\x00\x00\x00\x00",)}
    assert profile.kind is FelicaKind.CHECKIN
    assert profile.pmm == LITE_S_PMM


def test_transport_card_is_a_standard_felica_on_system_0003():
    profile = transport_card("suica-1")
    assert profile.system_code == 0x0003
    assert profile.pmm[1] == 0x0B
    assert set(profile.services) == {0x008B, 0x090F}
    assert len(profile.services[0x090F]) == 2


def test_idm_is_repeatable_by_name_and_random_without():
    assert idm_for("alice") == idm_for("alice")
    assert idm_for("alice") != idm_for("bob")
    assert len(idm_for(None)) == 8
    assert idm_for(None) != idm_for(None)
    assert bathhouse_card("1", 1950, 1, 1).idm == bathhouse_card("1", 1960, 2, 3).idm
    assert bathhouse_card("1", 1950, 1, 1).idm != bathhouse_card("2", 1950, 1, 1).idm


@pytest.mark.parametrize(
    "build",
    [
        lambda: bathhouse_card("0001234567890123X", 1950, 1, 1),  # 17 characters
        lambda: bathhouse_card("abc", 1950, 1, 1),  # lower case
        lambda: bathhouse_card("1", 1950, 0x10000, 1),
        lambda: bathhouse_card("1", 1950, 1, 256),
        lambda: checkin_card(""),
        lambda: FelicaCardProfile(FelicaKind.CHECKIN, IDM, LITE_S_PMM, 0x88B4, {0x000B: (b"short",)}),
        lambda: FelicaCardProfile(FelicaKind.CHECKIN, IDM[:7], LITE_S_PMM, 0x88B4),
    ],
)
def test_profiles_refuse_what_does_not_fit(build):
    with pytest.raises(ValueError, match=r"."):
        build()


# --- Polling -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("system", [b"\xff\xff", b"\x88\xb4", b"\x88\xff", b"\xff\xb4"])
def test_polling_matches_the_system_code_byte_wise(bath, system):
    answer = bath.process_frame(b"\x06\x00" + system + b"\x01\x00")
    assert answer == b"\x14\x01" + IDM + LITE_S_PMM + b"\x88\xb4"


@pytest.mark.parametrize("system", [b"\x00\x03", b"\x12\xfc", b"\xfe\x00", b"\x88\xb5", b"\xff\x03"])
def test_polling_for_another_system_gets_no_answer(bath, system):
    assert bath.process_frame(b"\x06\x00" + system + b"\x01\x00") is None


def test_polling_request_codes(bath):
    assert bath.process_frame(bytes.fromhex("0600FFFF0000")) == b"\x12\x01" + IDM + LITE_S_PMM
    assert bath.process_frame(bytes.fromhex("0600FFFF0200")) == b"\x14\x01" + IDM + LITE_S_PMM + b"\x00\x01"
    assert bath.process_frame(bytes.fromhex("0600FFFF0300")) is None
    assert bath.process_frame(bytes.fromhex("0600FFFF010F")) is not None  # 16 time slots, one card


def test_transport_card_answers_polling_for_0003():
    card = VirtualFelicaCard(transport_card(idm=IDM))
    answer = card.process_frame(bytes.fromhex("060000030100"))
    assert answer is not None
    assert answer[0] == 0x14
    assert answer[2:10] == IDM
    assert answer[-2:] == b"\x00\x03"
    assert card.process_frame(bytes.fromhex("060088B40100")) is None


@pytest.mark.parametrize("raw", ["0700FFFF0100", "0500FFFF01", "0600FFFF01", "", "01", "0700FFFF010000"])
def test_frames_with_a_wrong_length_byte_are_ignored(bath, raw):
    assert bath.process_frame(bytes.fromhex(raw)) is None


# --- Read Without Encryption ---------------------------------------------------------------------------
def test_read_one_block_with_a_two_byte_element(bath):
    _block0, block1 = bath.profile.services[0x000B]
    command = frame(0x06, IDM, 1, b"\x0b\x00", 1, b"\x80\x01")
    assert command == bytes.fromhex("10 06 0123456789ABCDEF 01 0B00 01 8001")
    assert bath.process_frame(command) == frame(0x07, IDM, b"\x00\x00", 1, block1)


def test_read_two_blocks_with_two_and_three_byte_elements(bath):
    block0, block1 = bath.profile.services[0x000B]
    command = frame(0x06, IDM, 1, b"\x0b\x00", 2, b"\x00\x00\x00", b"\x80\x01")
    answer = bath.process_frame(command)
    assert answer == frame(0x07, IDM, b"\x00\x00", 2, block0, block1)
    assert answer is not None
    assert answer[0] == 0x2D  # 1 + 1 + 8 + 2 + 1 + 32


def test_read_from_two_services():
    card = VirtualFelicaCard(transport_card(idm=IDM))
    balance = card.profile.services[0x008B][0]
    history = card.profile.services[0x090F]
    command = frame(0x06, IDM, 2, b"\x8b\x00", b"\x0f\x09", 3, b"\x80\x00", b"\x81\x01", b"\x81\x00")
    assert card.process_frame(command) == frame(0x07, IDM, b"\x00\x00", 3, balance, history[1], history[0])


def test_read_with_another_idm_gets_no_answer(bath):
    assert bath.process_frame(frame(0x06, OTHER_IDM, 1, b"\x0b\x00", 1, b"\x80\x00")) is None


def test_unknown_service_answers_ff_a1(bath):
    assert bath.process_frame(frame(0x06, IDM, 1, b"\x09\x00", 1, b"\x80\x00")) == frame(
        0x07, IDM, b"\xff\xa1"
    )


def test_sixteen_blocks_answer_ff_a2(bath):
    command = frame(0x06, IDM, 1, b"\x0b\x00", 16, b"\x80\x00" * 16)
    assert bath.process_frame(command) == frame(0x07, IDM, b"\xff\xa2")


def test_a_missing_block_flags_its_position(bath):
    command = frame(0x06, IDM, 1, b"\x0b\x00", 3, b"\x80\x00", b"\x80\x01", b"\x80\x02")
    assert bath.process_frame(command) == frame(0x07, IDM, b"\x04\xa2")


def test_a_block_naming_a_missing_service_index_answers_a3(bath):
    command = frame(0x06, IDM, 1, b"\x0b\x00", 2, b"\x80\x00", b"\x81\x00")
    assert bath.process_frame(command) == frame(0x07, IDM, b"\x02\xa3")


@pytest.mark.parametrize(
    "body",
    [
        b"\x01\x0b",  # service code cut short
        b"\x01\x0b\x00",  # no block count
        b"\x01\x0b\x00\x02\x80\x00",  # one of two elements
        b"\x01\x0b\x00\x01\x00\x00",  # three-byte element cut short
        b"\x01\x0b\x00\x01\x80\x00\x99",  # trailing byte
    ],
)
def test_truncated_or_padded_reads_get_no_answer(bath, body):
    assert bath.process_frame(frame(0x06, IDM, body)) is None


# --- Request Service, Request System Code, the rest ----------------------------------------------------
def test_request_service_gives_key_versions(bath):
    command = frame(0x02, IDM, 3, b"\x0b\x00", b"\x09\x00", b"\x8b\x00")
    assert bath.process_frame(command) == frame(0x03, IDM, 3, b"\x00\x00", b"\xff\xff", b"\xff\xff")


def test_request_system_code(bath):
    assert bath.process_frame(frame(0x0C, IDM)) == frame(0x0D, IDM, 1, b"\x88\xb4")
    transit = VirtualFelicaCard(transport_card(idm=IDM))
    assert transit.process_frame(frame(0x0C, IDM)) == frame(0x0D, IDM, 1, b"\x00\x03")


@pytest.mark.parametrize("code", [0x04, 0x08, 0x0A, 0x10, 0xA4])
def test_other_commands_get_no_answer(bath, code):
    assert bath.process_frame(frame(code, IDM, b"\x00\x00")) is None


def test_every_frame_is_recorded(bath):
    frames = [bytes.fromhex("0600FFFF0100"), frame(0x0C, IDM), b"\x02\x04", frame(0x06, OTHER_IDM)]
    for f in frames:
        bath.process_frame(f)
    assert bath.received == frames


# --- behind a PC/SC part-3 reader --------------------------------------------------------------------
def sw(response: bytes) -> int:
    return int.from_bytes(response[-2:], "big")


def objects(data: bytes) -> dict[int, bytes]:
    """The test's own walk over one-byte-tag data objects (short and 81-form lengths)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length == 0x81:
            length = data[pos]
            pos += 1
        out[tag] = data[pos : pos + length]
        pos += length
    assert pos == len(data)
    return out


@pytest.fixture
def pcsc() -> tuple[InProcessReader, FelicaPcscCard]:
    card = FelicaPcscCard(bathhouse_card("00012345", 1950, 101, 2, idm=IDM))
    reader = InProcessReader("SONY FeliCa RC-S300/P (simulated) 00 00")
    assert reader.insert(card) == bytes.fromhex("3B 8F 80 01 80 4F 0C A0 00 00 03 06 11 00 3B 00 00 00 00 42")
    return reader, card


START = bytes.fromhex("FF C2 00 00 02 81 00")
SWITCH = bytes.fromhex("FF C2 00 02 04 8F 02 03 00")
END = bytes.fromhex("FF C2 00 00 02 82 00")


def transceive(felica_frame: bytes, timer: bool = False) -> bytes:
    data = (bytes.fromhex("5F 46 04 40 42 0F 00") if timer else b"") + b"\x95" + bytes([len(felica_frame)])
    data += felica_frame
    return bytes.fromhex("FF C2 00 01") + bytes([len(data)]) + data + b"\x00"


def test_atr_is_the_part3_felica_atr():
    assert ATR_FELICA_PCSC.hex().upper() == "3B8F8001804F0CA0000003061100" + "3B0000000042"


def test_get_data_gives_idm_and_pmm(pcsc):
    reader, _card = pcsc
    assert reader.transmit(bytes.fromhex("FF CA 00 00 00")) == IDM + b"\x90\x00"
    assert reader.transmit(bytes.fromhex("FF CA 01 00 00")) == LITE_S_PMM + b"\x90\x00"
    assert reader.transmit(bytes.fromhex("FF CA 00 00")) == IDM + b"\x90\x00"
    assert reader.transmit(bytes.fromhex("FF CA 00 00 04")) == b"\x6c\x08"
    assert sw(reader.transmit(bytes.fromhex("FF CA 02 00 00"))) == 0x6A81


def test_unknown_instructions_and_classes(pcsc):
    reader, _card = pcsc
    assert reader.transmit(bytes.fromhex("FF B0 00 00 10")) == b"\x6d\x00"
    assert reader.transmit(bytes.fromhex("00 A4 04 0C 02 3F 00")) == b"\x6e\x00"
    assert reader.transmit(bytes.fromhex("FF C2 00 07 02 81 00")) == b"\x6a\x81"
    assert reader.transmit(bytes.fromhex("FF C2 00 00 05 81 00")) == b"\x67\x00"  # Lc too long


def test_transparent_session_reads_blocks(pcsc):
    reader, card = pcsc
    block0, block1 = card.profile.services[0x000B]
    assert reader.transmit(START) == bytes.fromhex("C0 03 00 90 00 90 00")
    assert reader.transmit(SWITCH) == bytes.fromhex("C0 03 00 90 00 90 00")
    read = frame(0x06, IDM, 1, b"\x0b\x00", 2, b"\x80\x00", b"\x80\x01")
    response = reader.transmit(transceive(read, timer=True))
    assert sw(response) == 0x9000
    found = objects(response[:-2])
    assert found[0xC0] == b"\x00\x90\x00"
    assert found[0x97] == frame(0x07, IDM, b"\x00\x00", 2, block0, block1)
    assert reader.transmit(END) == bytes.fromhex("C0 03 00 90 00 90 00")
    assert card.card.received == [read]


def test_a_long_answer_uses_the_81_length_form(pcsc):
    reader, card = pcsc
    reader.transmit(START)
    read = frame(0x06, IDM, 1, b"\x0b\x00", 15, b"\x80\x00" * 15)
    response = reader.transmit(transceive(read))
    answer = objects(response[:-2])[0x97]
    assert len(answer) == 253
    assert response[response.index(b"\x97\x81") + 2] == 253
    assert answer[13:] == card.profile.services[0x000B][0] * 15


def test_an_unanswered_frame_is_a_timeout_status(pcsc):
    reader, _card = pcsc
    reader.transmit(START)
    response = reader.transmit(transceive(frame(0x06, OTHER_IDM, 1, b"\x0b\x00", 1, b"\x80\x00")))
    assert response == bytes.fromhex("C0 03 01 64 01 90 00")


def test_exchange_outside_a_session_is_refused(pcsc):
    reader, card = pcsc
    assert reader.transmit(transceive(bytes.fromhex("0600FFFF0100"))) == b"\x69\x85"
    reader.transmit(START)
    reader.transmit(END)
    assert reader.transmit(transceive(bytes.fromhex("0600FFFF0100"))) == b"\x69\x85"
    assert card.card.received == []


def test_power_cycle_ends_the_session(pcsc):
    reader, card = pcsc
    reader.transmit(START)
    reader.remove()
    with pytest.raises(CardRemovedError):
        reader.transmit(bytes.fromhex("FF CA 00 00 00"))
    reader.insert(card)
    assert reader.transmit(transceive(bytes.fromhex("0600FFFF0100"))) == b"\x69\x85"


def test_transparent_polling_through_pcsc(pcsc):
    reader, _card = pcsc
    reader.transmit(START)
    response = reader.transmit(transceive(bytes.fromhex("0600FFFF0100")))
    assert objects(response[:-2])[0x97] == b"\x14\x01" + IDM + LITE_S_PMM + b"\x88\xb4"
