from __future__ import annotations

import pytest

from protocols.apdu import MAX_GET_RESPONSE_ROUNDS, CommandApdu, Response, error_for_sw, transceive
from protocols.errors import (
    ApduError,
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
from protocols.status_words import describe_sw
from tests.support.transcript import HEX, ScriptedTransport

# --- encoding: the four ISO cases, short and extended ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "encoded"),
    [
        (CommandApdu(0x00, 0x20, 0x00, 0x80), "00 20 00 80"),  # case 1: the PIN tries query
        (CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=4), "00 B0 00 00 04"),  # case 2S
        (CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=256), "00 B0 00 00 00"),  # Le=00 means 256
        (CommandApdu(0x00, 0xB0, 0x8A, 0x00, ne=65536), "00 B0 8A 00 00 00 00"),  # case 2E, Le=65536
        (CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=257), "00 B0 00 00 00 01 01"),
        (
            CommandApdu(0x00, 0xA4, 0x04, 0x0C, HEX("D392F000260100000001")),
            "00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01",
        ),  # case 3S: SELECT JPKI AP
        (CommandApdu(0x80, 0x2A, 0x00, 0x80, b"\x01\x02", ne=256), "80 2A 00 80 02 01 02 00"),  # case 4S
        (CommandApdu(0x00, 0xB0, 0x00, 0x00, ne=4, force_extended=True), "00 B0 00 00 00 00 04"),
    ],
)
def test_encode_decode_vectors(command: CommandApdu, encoded: str) -> None:
    assert command.encode() == HEX(encoded)
    assert CommandApdu.decode(HEX(encoded)) == command


def test_extended_data_uses_three_byte_lc_and_two_byte_le() -> None:
    data = bytes(range(256)) + b"\xaa"
    raw = CommandApdu(0x00, 0xD6, 0x00, 0x00, data, ne=65536).encode()
    assert raw[:7] == HEX("00 D6 00 00 00 01 01")
    assert raw[7:-2] == data
    assert raw[-2:] == HEX("00 00")
    assert CommandApdu.decode(raw).ne == 65536


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cla": 0x100, "ins": 0, "p1": 0, "p2": 0},
        {"cla": 0, "ins": -1, "p1": 0, "p2": 0},
        {"cla": 0, "ins": 0, "p1": 0, "p2": 0, "ne": 0},
        {"cla": 0, "ins": 0, "p1": 0, "p2": 0, "ne": 65537},
        {"cla": 0, "ins": 0, "p1": 0, "p2": 0, "data": bytes(65536)},
    ],
)
def test_unencodable_commands_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(CommandEncodingError):
        CommandApdu(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw", ["00 A4 04", "00 A4 04 0C 05 01 02", "00 A4 04 0C 00 00 05 01", "00 A4 04 0C 00 02"]
)
def test_decode_rejects_inconsistent_lengths(raw: str) -> None:
    with pytest.raises(BadResponseError):
        CommandApdu.decode(HEX(raw))


# --- responses and status words ----------------------------------------------------------------------


def test_response_split_and_check() -> None:
    response = Response.parse(HEX("01 02 90 00"))
    assert response == Response(b"\x01\x02", 0x9000)
    assert response.ok
    assert response.check() == b"\x01\x02"
    with pytest.raises(TruncatedDataError):
        Response.parse(b"\x90")


@pytest.mark.parametrize(
    ("sw", "error", "text"),
    [
        (0x6700, WrongLengthError, "wrong length"),
        (0x6C20, WrongLengthError, "exact length is 32"),
        (0x6982, SecurityStatusError, "security status not satisfied"),
        (0x6984, PinBlockedError, "PIN blocked"),
        (0x6983, PinBlockedError, "blocked"),
        (0x63C0, PinBlockedError, "now blocked"),
        (0x6A82, FileNotFoundApduError, "not found"),
        (0x6A86, WrongP1P2Error, "P1-P2"),
        (0x6B00, WrongP1P2Error, "offset"),
        (0x6986, NoCurrentEfError, "no current EF"),
        (0x6D00, CommandNotSupportedError, "instruction not supported"),
        (0x6E00, CommandNotSupportedError, "class not supported"),
        (0x6881, CommandNotSupportedError, "logical channel"),
        (0x6F00, ApduError, "no precise diagnosis"),
        (0x9999, ApduError, "unknown status word"),
    ],
)
def test_errors_keyed_by_status_word(sw: int, error: type[ApduError], text: str) -> None:
    exc = error_for_sw(sw)
    assert type(exc) is error
    assert exc.sw == sw
    assert str(exc).startswith(f"SW={sw:04X} (")
    assert text in str(exc)


def test_wrong_pin_carries_tries_left() -> None:
    exc = error_for_sw(0x63C2)
    assert isinstance(exc, InvalidPinError)
    assert exc.tries_left == 2
    assert str(exc) == "SW=63C2 (wrong PIN, 2 tries left)"


def test_describe_parametrised_families() -> None:
    assert describe_sw(0x6100) == "256 more bytes available"
    assert describe_sw(0x6110) == "16 more bytes available"
    assert describe_sw(0x63C3) == "verification failed or queried, 3 tries left"


# --- transceive: 61xx and 6Cxx -----------------------------------------------------------------------


def test_get_response_loop_concatenates() -> None:
    t = (
        ScriptedTransport()
        .expect("80 2A 00 80 01 AA 00", "01 02 61 03")
        .expect("00 C0 00 00 03", "03 04 05 61 00")
        .expect("00 C0 00 00 00", "06 90 00")
    )
    response = transceive(t, CommandApdu(0x80, 0x2A, 0x00, 0x80, b"\xaa", ne=256))
    assert response == Response(HEX("01 02 03 04 05 06"), 0x9000)
    t.close()


def test_wrong_le_is_resent_once_with_the_exact_length() -> None:
    t = (
        ScriptedTransport()
        .expect("00 B0 00 00 00", "6C 20")
        .expect("00 B0 00 00 20", bytes(32) + HEX("9000"))
    )
    assert transceive(t, CommandApdu(0, 0xB0, 0, 0, ne=256)).data == bytes(32)
    t.close()


def test_repeated_wrong_le_is_returned_not_looped() -> None:
    t = ScriptedTransport().expect("00 B0 00 00 00", "6C 20").expect("00 B0 00 00 20", "6C 10")
    assert transceive(t, CommandApdu(0, 0xB0, 0, 0, ne=256)).sw == 0x6C10
    t.close()


def test_endless_61xx_is_bounded() -> None:
    t = ScriptedTransport().expect("00 B0 00 00 01", "AA 61 01")
    for _ in range(MAX_GET_RESPONSE_ROUNDS):
        t.expect("00 C0 00 00 01", "AA 61 01")
    with pytest.raises(BadResponseError, match="kept answering 61xx"):
        transceive(t, CommandApdu(0, 0xB0, 0, 0, ne=1))
    t.close()
