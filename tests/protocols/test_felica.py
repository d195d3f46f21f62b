"""FeliCa frames, PC/SC pseudo-APDUs and the FeliCa session (docs/card-facts.md §8, §9; docs/design.md D13).

Vectors are written out byte by byte here, not produced by the code under test. Property tests run
``READERD_HYPOTHESIS_EXAMPLES`` examples (300 by default) so CI can raise it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import felica
from protocols.apdu import CommandApdu
from protocols.errors import (
    BadResponseError,
    CommandEncodingError,
    FelicaError,
    FelicaFrameError,
    FelicaStatusError,
    ReaderdError,
    TransportError,
)
from protocols.felica import (
    BLOCK_SIZE,
    KEY_VERSION_ABSENT,
    MAX_BLOCKS_PER_READ,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    PCSC_MAX_BLOCKS_PER_READ,
    SYSTEM_CODE_COMMON_AREA,
    SYSTEM_CODE_LITE_S,
    SYSTEM_CODE_NDEF,
    SYSTEM_CODE_TRANSIT,
    SYSTEM_CODE_WILDCARD,
    T_BASE,
    BlockElement,
    FelicaCommand,
    FelicaSession,
    IcFamily,
    PollingResponse,
    RequestCode,
    ServiceCode,
    TransparentSessionError,
    build_polling,
    build_read_without_encryption,
    build_request_service,
    build_request_system_code,
    classify_ic_type,
    command_timeout,
    end_session_apdu,
    get_pmm_apdu,
    get_uid_apdu,
    parse_polling_response,
    parse_read_without_encryption_response,
    parse_request_service_response,
    parse_request_system_code_response,
    parse_transparent_response,
    response_time,
    start_session_apdu,
    switch_to_felica_apdu,
    transceive_apdu,
)
from protocols.guard import GuardedTransport, SessionKind
from protocols.transport import FelicaTransport, ReaderCapabilities
from tests.support.transcript import HEX

EXAMPLES = int(os.environ.get("READERD_HYPOTHESIS_EXAMPLES", "300"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None)

IDM = HEX("01 02 03 04 05 06 07 08")
OTHER_IDM = HEX("01 02 03 04 05 06 07 09")
#: A Lite-S PMm: IC type F1, read byte (PMm[5]) 01.
PMM_LITE_S = HEX("00 F1 00 00 00 01 43 00")


def block(i: int) -> bytes:
    """16 recognisable bytes for block ``i``."""
    return bytes((i & 0xFF,)) * 8 + bytes(range(8))


def read_response(idm: bytes, blocks: list[bytes], sf1: int = 0, sf2: int = 0) -> bytes:
    """A Read Without Encryption response written out from the frame layout, not from the module."""
    body = bytes((0x07,)) + idm + bytes((sf1, sf2))
    if sf1 == 0 and sf2 == 0:
        body += bytes((len(blocks),)) + b"".join(blocks)
    return bytes((len(body) + 1,)) + body


def decode_read_command(frame: bytes) -> tuple[bytes, list[int], list[tuple[int, int, int]]]:
    """Test-side decoder of a Read Without Encryption command: (IDm, service codes, (index, block, mode))."""
    assert frame[0] == len(frame)
    assert frame[1] == 0x06
    idm = frame[2:10]
    n_svc = frame[10]
    services = [int.from_bytes(frame[11 + 2 * i : 13 + 2 * i], "little") for i in range(n_svc)]
    pos = 11 + 2 * n_svc
    n_blk = frame[pos]
    pos += 1
    blocks = []
    for _ in range(n_blk):
        head = frame[pos]
        if head & 0x80:
            blocks.append((head & 0x0F, frame[pos + 1], (head >> 4) & 0x07))
            pos += 2
        else:
            blocks.append((head & 0x0F, int.from_bytes(frame[pos + 1 : pos + 3], "little"), (head >> 4) & 7))
            pos += 3
    assert pos == len(frame), "trailing bytes after the block list"
    return idm, services, blocks


# --- command codes and constants ---------------------------------------------------------------------
def test_command_and_response_codes_follow_card_facts() -> None:
    pairs = {
        FelicaCommand.POLLING: (0x00, 0x01),
        FelicaCommand.REQUEST_SERVICE: (0x02, 0x03),
        FelicaCommand.REQUEST_RESPONSE: (0x04, 0x05),
        FelicaCommand.READ_WITHOUT_ENCRYPTION: (0x06, 0x07),
        FelicaCommand.WRITE_WITHOUT_ENCRYPTION: (0x08, 0x09),
        FelicaCommand.SEARCH_SERVICE_CODE: (0x0A, 0x0B),
        FelicaCommand.REQUEST_SYSTEM_CODE: (0x0C, 0x0D),
    }
    assert set(pairs) == set(FelicaCommand)
    for command, (code, response) in pairs.items():
        assert (int(command), command.response_code) == (code, response)


def test_well_known_system_codes() -> None:
    assert (SYSTEM_CODE_WILDCARD, SYSTEM_CODE_TRANSIT, SYSTEM_CODE_COMMON_AREA) == (0xFFFF, 0x0003, 0xFE00)
    assert (SYSTEM_CODE_LITE_S, SYSTEM_CODE_NDEF) == (0x88B4, 0x12FC)
    assert (felica.IDM_LEN, felica.PMM_LEN, BLOCK_SIZE, MAX_BLOCKS_PER_READ) == (8, 8, 16, 15)


# --- Polling -----------------------------------------------------------------------------------------
def test_default_polling_is_nfcpys_sensf_req() -> None:
    assert build_polling() == HEX("06 00 FF FF 01 00")


@pytest.mark.parametrize(
    ("args", "frame"),
    [
        ((SYSTEM_CODE_TRANSIT, RequestCode.NONE, 15), "06 00 00 03 00 0F"),
        ((SYSTEM_CODE_LITE_S, RequestCode.COMM_PERFORMANCE, 3), "06 00 88 B4 02 03"),
        ((0x12FC, 1, 7), "06 00 12 FC 01 07"),
    ],
)
def test_polling_frames(args: tuple[int, int, int], frame: str) -> None:
    assert build_polling(*args) == HEX(frame)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_slots": 2},
        {"time_slots": 16},
        {"request_code": 3},
        {"request_code": -1},
        {"system_code": 0x10000},
        {"system_code": -1},
    ],
)
def test_polling_refuses_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(CommandEncodingError):
        build_polling(**kwargs)


def test_polling_response_with_system_code() -> None:
    frame = HEX("14 0101 02 03 04 05 06 07 0800 F1 00 00 00 01 43 0088 B4")
    response = parse_polling_response(frame)
    assert response == PollingResponse(IDM, PMM_LITE_S, system_code=0x88B4)
    assert response.ic_type == 0xF1
    assert response.ic_family is IcFamily.LITE_S


def test_polling_response_without_extra_and_with_comm_performance() -> None:
    plain = HEX("12 01 0102030405060708 00F1000000014300")
    assert parse_polling_response(plain, RequestCode.NONE) == PollingResponse(IDM, PMM_LITE_S)
    perf = parse_polling_response(
        HEX("14 01 0102030405060708 00F1000000014300 00 83"), RequestCode.COMM_PERFORMANCE
    )
    assert perf.comm_performance == HEX("00 83")
    assert perf.system_code is None


@pytest.mark.parametrize(
    ("frame", "rc", "match"),
    [
        ("15 01 0102030405060708 00F1000000014300 88B4", 1, "LEN byte"),  # LEN says 21, frame is 20
        ("14 03 0102030405060708 00F1000000014300 88B4", 1, "code 03"),
        ("12 01 0102030405060708 00F1000000014300", 1, "expected 20"),  # RC 1 asked, no system code
        ("14 01 0102030405060708 00F1000000014300 88B4", 0, "expected 18"),
        ("01", 1, "no LEN"),
        ("", 1, "no LEN"),
    ],
)
def test_polling_response_errors(frame: str, rc: int, match: str) -> None:
    with pytest.raises(FelicaFrameError, match=match):
        parse_polling_response(HEX(frame), rc)


def test_polling_response_refuses_a_bad_request_code_argument() -> None:
    with pytest.raises(CommandEncodingError):
        parse_polling_response(HEX("12 01 0102030405060708 00F1000000014300"), 5)


def test_polling_response_values_are_normalised_and_checked() -> None:
    # nfcpy's tag.idm and tag.pmm are bytearrays; a backend may pass them straight in.
    nfcpy_idm: Any = bytearray(IDM)
    nfcpy_pmm: Any = bytearray(PMM_LITE_S)
    response = PollingResponse(nfcpy_idm, nfcpy_pmm, system_code=SYSTEM_CODE_LITE_S)
    assert type(response.idm) is bytes
    assert type(response.pmm) is bytes
    assert hash(response) == hash(PollingResponse(IDM, PMM_LITE_S, system_code=SYSTEM_CODE_LITE_S))
    with pytest.raises(FelicaFrameError):
        PollingResponse(IDM[:7], PMM_LITE_S)
    with pytest.raises(FelicaFrameError):
        PollingResponse(IDM, PMM_LITE_S + b"\x00")
    with pytest.raises(FelicaFrameError):
        PollingResponse(IDM, PMM_LITE_S, system_code=0x10000)
    with pytest.raises(FelicaFrameError):
        PollingResponse(IDM, PMM_LITE_S, comm_performance=b"\x00")


@pytest.mark.parametrize(
    ("ic", "family"),
    [
        (0xF0, IcFamily.LITE),
        (0xF1, IcFamily.LITE_S),
        (0xF2, IcFamily.LITE_S),
        (0xE0, IcFamily.PLUG),
        (0xE1, IcFamily.PLUG),
        (0x0B, IcFamily.STANDARD),  # "new Suica"
        (0x00, IcFamily.STANDARD),
        (0x20, IcFamily.STANDARD),
        (0x35, IcFamily.STANDARD),
        (0x06, IcFamily.MOBILE),
        (0x10, IcFamily.MOBILE),
        (0x1F, IcFamily.MOBILE),
        (0x03, IcFamily.UNKNOWN),
        (0xFF, IcFamily.UNKNOWN),
    ],
)
def test_ic_type_classification(ic: int, family: IcFamily) -> None:
    assert classify_ic_type(ic) is family


# --- service codes and block elements ----------------------------------------------------------------
def test_transit_history_service_code() -> None:
    service = ServiceCode.from_int(0x090F)
    assert (service.number, service.attribute) == (36, 0x0F)
    assert service.pack() == HEX("0F 09")
    assert str(service) == "090F"
    assert ServiceCode.unpack(HEX("0F 09")) == service


def test_lite_s_read_only_service_code() -> None:
    assert ServiceCode(0, 0x0B).pack() == HEX("0B 00")
    assert ServiceCode(1023, 63).pack() == HEX("FF FF")


@pytest.mark.parametrize(
    "build",
    [
        lambda: ServiceCode(1024, 0),
        lambda: ServiceCode(-1, 0),
        lambda: ServiceCode(0, 64),
        lambda: ServiceCode(0, -1),
        lambda: ServiceCode.from_int(0x10000),
        lambda: ServiceCode.from_int(-1),
    ],
)
def test_service_code_ranges(build: Callable[[], object]) -> None:
    with pytest.raises(CommandEncodingError):
        build()


@pytest.mark.parametrize("raw", ["", "0F", "0F 09 00"])
def test_service_code_unpack_needs_two_bytes(raw: str) -> None:
    with pytest.raises(FelicaFrameError):
        ServiceCode.unpack(HEX(raw))


@pytest.mark.parametrize(
    ("element", "packed"),
    [
        (BlockElement(0, 0), "80 00"),
        (BlockElement(0, 255), "80 FF"),
        (BlockElement(0, 256), "00 00 01"),  # the 3-byte form, block number little-endian
        (BlockElement(2, 0x1234), "02 34 12"),
        (BlockElement(15, 65535), "0F FF FF"),
        (BlockElement(1, 5, access_mode=1), "91 05"),
    ],
)
def test_block_elements(element: BlockElement, packed: str) -> None:
    assert element.pack() == HEX(packed)


@pytest.mark.parametrize("args", [(16, 0), (-1, 0), (0, 65536), (0, -1), (0, 0, 8), (0, 0, -1)])
def test_block_element_ranges(args: tuple[int, ...]) -> None:
    with pytest.raises(CommandEncodingError):
        BlockElement(*args)


# --- Read Without Encryption -------------------------------------------------------------------------
LITE_S_RO = ServiceCode.from_int(0x000B)
READ_3_BLOCKS = (
    "14"  # LEN: 1 + 1 + 8 + 1 + 2 + 1 + 3 x 2 = 20
    "06"  # Read Without Encryption
    "01 02 03 04 05 06 07 08"  # IDm
    "01"  # one service
    "0B 00"  # service 000B, little-endian
    "03"  # three blocks
    "80 00"  # 2-byte element: service index 0, block 0
    "80 01"
    "80 02"
)


def test_read_frame_vector() -> None:
    blocks = [BlockElement(0, i) for i in range(3)]
    assert build_read_without_encryption(IDM, [LITE_S_RO], blocks) == HEX(READ_3_BLOCKS)


def test_read_frame_with_two_services_and_a_3_byte_element() -> None:
    frame = build_read_without_encryption(
        IDM, [LITE_S_RO, ServiceCode.from_int(0x090F)], [BlockElement(1, 300), BlockElement(0, 0x82)]
    )
    assert frame == HEX("15 06 0102030405060708 02 0B00 0F09 02 01 2C 01 80 82")  # LEN 21


def test_the_largest_read_frame_fits_the_len_byte() -> None:
    services = [ServiceCode(i, 0x0B) for i in range(16)]
    blocks = [BlockElement(15, 1000 + i) for i in range(15)]
    frame = build_read_without_encryption(IDM, services, blocks)
    assert len(frame) == frame[0] == 11 + 32 + 1 + 45


def test_frames_longer_than_the_len_byte_are_refused() -> None:
    # No public builder can reach 256 bytes with its own limits; the shared framing still refuses it.
    assert felica._command_frame(FelicaCommand.READ_WITHOUT_ENCRYPTION, bytes(253))[0] == 255
    with pytest.raises(CommandEncodingError, match="LEN"):
        felica._command_frame(FelicaCommand.READ_WITHOUT_ENCRYPTION, bytes(254))


@pytest.mark.parametrize(
    ("idm", "services", "blocks", "match"),
    [
        (IDM[:7], [LITE_S_RO], [BlockElement(0, 0)], "IDm"),
        (IDM + b"\x00", [LITE_S_RO], [BlockElement(0, 0)], "IDm"),
        (IDM, [], [BlockElement(0, 0)], "0 services"),
        (IDM, [LITE_S_RO] * 17, [BlockElement(0, 0)], "17 services"),
        (IDM, [LITE_S_RO], [], "0 blocks"),
        (IDM, [LITE_S_RO], [BlockElement(0, i) for i in range(16)], "16 blocks"),
        (IDM, [LITE_S_RO], [BlockElement(1, 0)], "service index 1"),
        (IDM, [0x000B], [BlockElement(0, 0)], "not a ServiceCode"),
        (IDM, [LITE_S_RO], [(0, 0)], "not a BlockElement"),
    ],
)
def test_read_frame_refuses_bad_arguments(idm: bytes, services: Any, blocks: Any, match: str) -> None:
    with pytest.raises(CommandEncodingError, match=match):
        build_read_without_encryption(idm, services, blocks)


def test_read_response_vector() -> None:
    frame = HEX("3D 07 0102030405060708 00 00 03") + block(0) + block(1) + block(2)
    assert len(frame) == 0x3D
    assert parse_read_without_encryption_response(frame, IDM, 3) == [block(0), block(1), block(2)]


def test_status_flags_raise_with_both_flags() -> None:
    frame = HEX("0C 07 0102030405060708 FF A1")
    with pytest.raises(FelicaStatusError) as caught:
        parse_read_without_encryption_response(frame, IDM, 1)
    assert (caught.value.sf1, caught.value.sf2) == (0xFF, 0xA1)
    assert "FF A1" in str(caught.value)


def test_a_non_zero_sf2_alone_is_an_error() -> None:
    with pytest.raises(FelicaStatusError) as caught:
        parse_read_without_encryption_response(HEX("0C 07 0102030405060708 00 A2"), IDM, 1)
    assert (caught.value.sf1, caught.value.sf2) == (0x00, 0xA2)


@pytest.mark.parametrize(
    ("frame", "n_blocks", "match"),
    [
        ("0D 07 0102030405060708 FF A1 00", 1, "followed by 1"),  # error status with data after it
        ("1E 07 0102030405060708 00 00 01" + "00" * 16, 1, "LEN byte"),  # LEN 30 on a 29-byte frame
        ("1D 09 0102030405060708 00 00 01" + "00" * 16, 1, "code 09"),
        ("1D 07 0102030405060709 00 00 01" + "00" * 16, 1, "another IDm"),
        ("1D 07 0102030405060708 00 00 01" + "00" * 16, 2, "2 were asked"),
        ("1D 07 0102030405060708 00 00 02" + "00" * 16, 2, "need 32"),
        ("0C 07 0102030405060708 00 00", 1, "no block count"),
        ("0B 07 0102030405060708 00", 1, "shorter than 12"),
        ("02 07", 1, "shorter than 12"),
    ],
)
def test_read_response_errors(frame: str, n_blocks: int, match: str) -> None:
    with pytest.raises(FelicaFrameError, match=match):
        parse_read_without_encryption_response(HEX(frame), IDM, n_blocks)


def test_frame_errors_are_bad_responses_and_never_echo_the_idm() -> None:
    with pytest.raises(BadResponseError) as caught:
        parse_read_without_encryption_response(read_response(OTHER_IDM, [block(0)]), IDM, 1)
    assert OTHER_IDM.hex() not in str(caught.value).lower()
    assert IDM.hex() not in str(caught.value).lower()


# --- Request System Code / Request Service -----------------------------------------------------------
def test_request_system_code_frames() -> None:
    assert build_request_system_code(IDM) == HEX("0A 0C 0102030405060708")
    answer = HEX("0F 0D 0102030405060708 02 00 03 FE 00")
    assert parse_request_system_code_response(answer, IDM) == [SYSTEM_CODE_TRANSIT, SYSTEM_CODE_COMMON_AREA]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ("0B 0D 0102030405060708 00", "no system"),
        ("0D 0D 0102030405060708 02 00 03", "need 15"),
        ("0D 0D 0102030405060709 01 88 B4", "another IDm"),
        ("0D 0C 0102030405060708 01 88 B4", "code 0C"),
        ("0A 0D 0102030405060708", "shorter than 11"),
    ],
)
def test_request_system_code_errors(frame: str, match: str) -> None:
    with pytest.raises(FelicaFrameError, match=match):
        parse_request_system_code_response(HEX(frame), IDM)


def test_request_service_frames() -> None:
    services = [ServiceCode.from_int(0x090F), ServiceCode.from_int(0x008B)]
    assert build_request_service(IDM, services) == HEX("0F 02 0102030405060708 02 0F 09 8B 00")
    answer = HEX("0F 03 0102030405060708 02 01 02 FF FF")
    assert parse_request_service_response(answer, IDM, 2) == [0x0201, KEY_VERSION_ABSENT]


def test_request_service_limits() -> None:
    with pytest.raises(CommandEncodingError):
        build_request_service(IDM, [])
    with pytest.raises(CommandEncodingError):
        build_request_service(IDM, [LITE_S_RO] * 33)
    assert build_request_service(IDM, [LITE_S_RO] * 32)[0] == 11 + 64
    with pytest.raises(CommandEncodingError):
        build_request_system_code(IDM[:4])


@pytest.mark.parametrize(
    ("frame", "n", "match"),
    [
        ("0F 03 0102030405060708 02 01 02 FF FF", 1, "1 were asked"),
        ("0D 03 0102030405060708 02 01 02", 2, "need 15"),
        ("0D 03 0807060504030201 01 01 02", 1, "another IDm"),
    ],
)
def test_request_service_errors(frame: str, n: int, match: str) -> None:
    with pytest.raises(FelicaFrameError, match=match):
        parse_request_service_response(HEX(frame), IDM, n)


# --- timeouts ----------------------------------------------------------------------------------------
def nfcpy_read_timeout(pmm_byte: int, n: int) -> float:
    """nfcpy tt3.py's own formula, written independently: 302.1 us x ((B+1) n + A + 1) x 4^E."""
    a, b, e = pmm_byte & 7, pmm_byte >> 3 & 7, pmm_byte >> 6
    return 302.1e-6 * ((b + 1) * n + a + 1) * 4.0**e


@pytest.mark.parametrize(("pmm_byte", "n"), [(0x00, 1), (0x01, 2), (0x4B, 4), (0x8A, 15), (0xFF, 15)])
def test_response_time_matches_nfcpy(pmm_byte: int, n: int) -> None:
    assert response_time(pmm_byte, n) == pytest.approx(nfcpy_read_timeout(pmm_byte, n), rel=1e-3)


def test_response_time_examples() -> None:
    assert response_time(0x00, 0) == pytest.approx(T_BASE)
    # 10 001 010: E=2, B=1, A=2 -> (2 x 15 + 3) x 16 units
    assert response_time(0b10_001_010, 15) == pytest.approx(T_BASE * 33 * 16)
    assert pytest.approx(0.302e-3, rel=1e-3) == T_BASE


def test_command_timeout_is_clamped() -> None:
    assert command_timeout(0x01, 2) == MIN_TIMEOUT  # Lite-S, 2 blocks: ~1.2 ms of card time
    assert command_timeout(0xFF, 15) == MAX_TIMEOUT  # ~2.5 s of card time
    assert command_timeout(0b10_001_010, 15) == pytest.approx(T_BASE * 33 * 16)
    assert command_timeout(0xFF, 15, maximum=0.5) == 0.5
    with pytest.raises(CommandEncodingError):
        response_time(0x100, 1)
    with pytest.raises(CommandEncodingError):
        response_time(0x00, -1)


# --- PC/SC pseudo-APDUs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("apdu", "encoded"),
    [
        (get_uid_apdu(), "FF CA 00 00 00"),
        (get_pmm_apdu(), "FF CA 01 00 00"),
        (start_session_apdu(), "FF C2 00 00 02 81 00"),
        (switch_to_felica_apdu(), "FF C2 00 02 04 8F 02 03 00"),
        (end_session_apdu(), "FF C2 00 00 02 82 00"),
        (start_session_apdu(ne=256), "FF C2 00 00 02 81 00 00"),
        (transceive_apdu(HEX("06 00 FF FF 01 00")), "FF C2 00 01 08 95 06 06 00 FF FF 01 00 00"),
        (transceive_apdu(HEX(READ_3_BLOCKS)), "FF C2 00 01 16 95 14" + READ_3_BLOCKS + "00"),
        (
            transceive_apdu(HEX("06 00 FF FF 01 00"), timeout_us=50_000),
            "FF C2 00 01 0F 5F 46 04 50 C3 00 00 95 06 06 00 FF FF 01 00 00",
        ),
    ],
)
def test_pseudo_apdus_exact_bytes(apdu: CommandApdu, encoded: str) -> None:
    assert apdu.encode() == HEX(encoded)


def test_transceive_uses_the_long_length_form_from_128_bytes() -> None:
    frame_127 = bytes((127,)) + bytes(126)
    frame_128 = bytes((128,)) + bytes(127)
    assert transceive_apdu(frame_127).encode()[:7] == HEX("FF C2 00 01 81 95 7F")
    assert transceive_apdu(frame_128).encode()[:8] == HEX("FF C2 00 01 83 95 81 80")
    frame_252 = bytes((252,)) + bytes(251)
    assert transceive_apdu(frame_252).encode()[:8] == HEX("FF C2 00 01 FF 95 81 FC")
    # 253 bytes of frame + 3 of header no longer fit a short Lc: extended form, Le 01 00 for 256.
    frame_253 = bytes((253,)) + bytes(252)
    encoded = transceive_apdu(frame_253).encode()
    assert encoded[:10] == HEX("FF C2 00 01 00 01 00 95 81 FD")
    assert encoded[-2:] == HEX("01 00")
    assert len(encoded) == 7 + 256 + 2


@pytest.mark.parametrize(
    ("frame", "kwargs"),
    [
        (b"", {}),
        (HEX("07 00 FF FF 01 00"), {}),  # LEN disagrees with the frame
        (HEX("06 00 FF FF 01 00"), {"timeout_us": 1 << 32}),
        (HEX("06 00 FF FF 01 00"), {"timeout_us": -1}),
    ],
)
def test_transceive_refuses_bad_frames(frame: bytes, kwargs: dict[str, int]) -> None:
    with pytest.raises(CommandEncodingError):
        transceive_apdu(frame, **kwargs)


@dataclass
class NeverCalled:
    capabilities: ReaderCapabilities = field(default_factory=ReaderCapabilities)

    def transmit(self, apdu: bytes) -> bytes:
        raise AssertionError("the guard check must not transmit")


def test_the_felica_guard_admits_every_pseudo_apdu_built_here() -> None:
    guard = GuardedTransport(NeverCalled(), SessionKind.FELICA)
    for apdu in (
        get_uid_apdu(),
        get_pmm_apdu(),
        start_session_apdu(),
        switch_to_felica_apdu(),
        transceive_apdu(build_polling()),
        end_session_apdu(),
    ):
        guard.check(apdu)


def test_transparent_response_returns_the_97_object() -> None:
    frame = HEX("0D 0D 0102030405060708 01 88 B4")  # a Request System Code answer
    data = HEX("C0 03 00 90 00 92 01 00 96 02 00 00 97 0D") + frame
    assert parse_transparent_response(data) == frame


def test_transparent_response_long_form_and_two_byte_tags() -> None:
    frame = bytes((200,)) + bytes(199)
    data = HEX("5F 46 04 50 C3 00 00 C0 03 00 90 00 97 81 C8") + frame
    assert parse_transparent_response(data) == frame
    data = HEX("97 82 00 C8") + frame
    assert parse_transparent_response(data) == frame


@pytest.mark.parametrize(
    ("data", "status", "sw"),
    [
        ("C0 03 01 64 01 97 00", 0x01, 0x6401),
        ("C0 03 01 90 00 97 01 01", 0x01, 0x9000),  # the first byte decides, whatever the SW says
        ("97 01 01 C0 03 FF 6A 81", 0xFF, 0x6A81),  # an error after the data still wins
    ],
)
def test_transparent_error_status_raises_with_status_and_sw(data: str, status: int, sw: int) -> None:
    with pytest.raises(TransparentSessionError) as caught:
        parse_transparent_response(HEX(data))
    assert (caught.value.status, caught.value.sw) == (status, sw)
    assert isinstance(caught.value, FelicaError)
    assert caught.value.code == "felica_transparent_error"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("C0 03 00 90 00", "0 response data"),
        ("", "0 response data"),
        ("97 01 01 97 01 01", "2 response data"),
        ("C0 02 00 90 97 01 01", "3"),
        ("97 05 01 02", "needs 5"),
        ("97", "no length"),
        ("97 83 00 00 01 00", "length byte 83"),
        ("97 81", "inside its length"),
        ("5F", "inside a tag"),
        ("5F 86 01 00", "longer than 2"),
    ],
)
def test_transparent_response_errors(data: str, match: str) -> None:
    with pytest.raises(FelicaFrameError, match=match):
        parse_transparent_response(HEX(data))


# --- the session, against a scripted card ------------------------------------------------------------
@dataclass
class ScriptedFelica:
    """Answers each expected frame with its scripted reply, in order; anything else fails the test."""

    script: list[tuple[bytes, bytes | Exception]] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)

    def expect(self, frame: bytes, answer: bytes | Exception) -> ScriptedFelica:
        self.script.append((frame, answer))
        return self

    def exchange(self, frame: bytes, timeout: float) -> bytes:
        assert self.script, f"unexpected frame {frame.hex(' ')}: the script is finished"
        expected, answer = self.script.pop(0)
        assert frame == expected, f"sent {frame.hex(' ')}, expected {expected.hex(' ')}"
        self.timeouts.append(timeout)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def done(self) -> None:
        assert not self.script, f"{len(self.script)} scripted frames were never sent"


def lite_s_polling(pmm: bytes = PMM_LITE_S) -> PollingResponse:
    return PollingResponse(IDM, pmm, system_code=SYSTEM_CODE_LITE_S)


def test_scripted_card_is_a_felica_transport() -> None:
    assert isinstance(ScriptedFelica(), FelicaTransport)


def test_session_reads_three_blocks_in_one_frame() -> None:
    card = ScriptedFelica().expect(HEX(READ_3_BLOCKS), read_response(IDM, [block(0), block(1), block(2)]))
    session = FelicaSession(card, lite_s_polling())
    assert session.read_blocks([LITE_S_RO], [BlockElement(0, i) for i in range(3)]) == [
        block(0),
        block(1),
        block(2),
    ]
    card.done()
    assert card.timeouts == [MIN_TIMEOUT]  # the Lite-S budget (~1.5 ms) is below the floor
    assert session.frames_sent == 1


def test_session_splits_more_than_15_blocks() -> None:
    card = ScriptedFelica()
    first = [BlockElement(0, i) for i in range(15)]
    second = [BlockElement(0, i) for i in range(15, 20)]
    card.expect(
        HEX("2C 06 0102030405060708 01 0B00 0F") + b"".join(bytes((0x80, i)) for i in range(15)),
        read_response(IDM, [block(i) for i in range(15)]),
    )
    card.expect(
        HEX("18 06 0102030405060708 01 0B00 05") + b"".join(bytes((0x80, i)) for i in range(15, 20)),
        read_response(IDM, [block(i) for i in range(15, 20)]),
    )
    session = FelicaSession(card, lite_s_polling())
    assert session.read_blocks([LITE_S_RO], first + second) == [block(i) for i in range(20)]
    card.done()
    assert session.frames_sent == 2


def test_each_chunk_names_only_the_services_it_reads() -> None:
    history = ServiceCode.from_int(0x090F)
    balance = ServiceCode.from_int(0x008B)
    blocks = [BlockElement(0, 0)] + [BlockElement(1, i) for i in range(14)] + [BlockElement(1, 14)]
    card = ScriptedFelica()
    # Chunk 1: balance block 0 and history 0..13, both services, indices unchanged.
    card.expect(
        # LEN 46 = 1 + 1 + 8 + 1 + 2 x 2 + 1 + 15 x 2
        HEX("2E 06 0102030405060708 02 8B00 0F09 0F 80 00") + b"".join(bytes((0x81, i)) for i in range(14)),
        read_response(IDM, [block(100)] + [block(i) for i in range(14)]),
    )
    # Chunk 2: history block 14 only; history is now service 0 of a 1-service list.
    card.expect(HEX("10 06 0102030405060708 01 0F09 01 80 0E"), read_response(IDM, [block(14)]))
    session = FelicaSession(card, lite_s_polling())
    assert session.read_blocks([balance, history], blocks) == [block(100)] + [block(i) for i in range(15)]
    card.done()


def test_a_smaller_block_limit_for_pcsc_readers() -> None:
    card = ScriptedFelica()
    for start in (0, 14, 28):
        chunk = list(range(start, min(start + 14, 30)))
        frame = build_read_without_encryption(IDM, [LITE_S_RO], [BlockElement(0, i) for i in chunk])
        card.expect(frame, read_response(IDM, [block(i) for i in chunk]))
    session = FelicaSession(card, lite_s_polling(), max_blocks_per_read=PCSC_MAX_BLOCKS_PER_READ)
    assert session.read_blocks([LITE_S_RO], [BlockElement(0, i) for i in range(30)]) == [
        block(i) for i in range(30)
    ]
    card.done()


def test_session_timeouts_come_from_pmm_or_the_caller() -> None:
    pmm = HEX("00 01 00 00 00 8A 00 00")  # read byte 10 001 010
    card = ScriptedFelica()
    card.expect(HEX(READ_3_BLOCKS), read_response(IDM, [block(0), block(1), block(2)]))
    card.expect(HEX(READ_3_BLOCKS), read_response(IDM, [block(0), block(1), block(2)]))
    session = FelicaSession(card, PollingResponse(IDM, pmm))
    blocks = [BlockElement(0, i) for i in range(3)]
    session.read_blocks([LITE_S_RO], blocks)
    session.read_blocks([LITE_S_RO], blocks, timeout=0.25)
    card.done()
    assert card.timeouts[0] == pytest.approx(T_BASE * (2 * 3 + 3) * 16)
    assert card.timeouts[1] == 0.25


def test_session_timeout_ceiling_is_configurable() -> None:
    pmm = HEX("00 01 FF FF 00 FF 00 00")
    card = ScriptedFelica().expect(HEX("0A 0C 0102030405060708"), HEX("0D 0D 0102030405060708 01 00 03"))
    card.expect(HEX(READ_3_BLOCKS), read_response(IDM, [block(0), block(1), block(2)]))
    session = FelicaSession(card, PollingResponse(IDM, pmm), max_timeout=0.3)
    session.request_system_codes()
    session.read_blocks([LITE_S_RO], [BlockElement(0, i) for i in range(3)])
    card.done()
    # Fixed response byte FF: A=7, E=3 -> 8 x 64 units = 155 ms; read byte FF with 3 blocks -> 0.3 s cap.
    assert card.timeouts == [pytest.approx(T_BASE * 8 * 64), 0.3]


def test_session_passes_status_errors_and_foreign_idms_through() -> None:
    blocks = [BlockElement(0, i) for i in range(3)]
    card = ScriptedFelica()
    card.expect(HEX(READ_3_BLOCKS), HEX("0C 07 0102030405060708 FF A1"))
    card.expect(HEX(READ_3_BLOCKS), read_response(OTHER_IDM, [block(0), block(1), block(2)]))
    session = FelicaSession(card, lite_s_polling())
    with pytest.raises(FelicaStatusError):
        session.read_blocks([LITE_S_RO], blocks)
    with pytest.raises(FelicaFrameError, match="another IDm"):
        session.read_blocks([LITE_S_RO], blocks)
    card.done()


def test_session_stops_at_the_first_failing_chunk() -> None:
    card = ScriptedFelica()
    card.expect(
        build_read_without_encryption(IDM, [LITE_S_RO], [BlockElement(0, i) for i in range(15)]),
        HEX("0C 07 0102030405060708 01 A2"),
    )
    session = FelicaSession(card, lite_s_polling())
    with pytest.raises(FelicaStatusError):
        session.read_blocks([LITE_S_RO], [BlockElement(0, i) for i in range(20)])
    card.done()  # the second chunk was never sent
    assert session.frames_sent == 1


def test_session_request_system_codes_and_service() -> None:
    card = ScriptedFelica()
    card.expect(HEX("0A 0C 0102030405060708"), HEX("0F 0D 0102030405060708 02 00 03 FE 00"))
    card.expect(HEX("0D 02 0102030405060708 01 0F 09"), HEX("0D 03 0102030405060708 01 00 01"))
    session = FelicaSession(card, lite_s_polling())
    assert session.request_system_codes() == [0x0003, 0xFE00]
    assert session.request_service([ServiceCode.from_int(0x090F)]) == [0x0100]
    card.done()


def test_an_unanswered_request_stays_a_transport_error() -> None:
    # nfcpy's emulation answers no Request System Code: the caller reads this as "unsupported".
    card = ScriptedFelica().expect(HEX("0A 0C 0102030405060708"), TransportError("no answer"))
    with pytest.raises(TransportError, match="no answer"):
        FelicaSession(card, lite_s_polling()).request_system_codes()
    card.done()


@pytest.mark.parametrize(
    ("services", "blocks", "kwargs"),
    [
        ([], [BlockElement(0, 0)], {}),
        ([LITE_S_RO] * 17, [BlockElement(0, 0)], {}),
        ([LITE_S_RO], [], {}),
        ([LITE_S_RO], [BlockElement(1, 0)], {}),
        ([LITE_S_RO], [(0, 0)], {}),
    ],
)
def test_session_refuses_bad_reads_before_sending(services: Any, blocks: Any, kwargs: dict[str, Any]) -> None:
    card = ScriptedFelica()
    session = FelicaSession(card, lite_s_polling())
    with pytest.raises(CommandEncodingError):
        session.read_blocks(services, blocks, **kwargs)
    assert session.frames_sent == 0


@pytest.mark.parametrize(
    "kwargs", [{"max_blocks_per_read": 0}, {"max_blocks_per_read": 16}, {"max_timeout": 0}]
)
def test_session_refuses_bad_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(CommandEncodingError):
        FelicaSession(ScriptedFelica(), lite_s_polling(), **kwargs)


# --- properties: parsers never leak ------------------------------------------------------------------
idms = st.binary(min_size=8, max_size=8)


def framed(code: int, idm: bytes, tail: bytes) -> bytes:
    """A frame with a correct LEN byte, the given response code and IDm, and an arbitrary tail."""
    body = bytes((code,)) + idm + tail
    return bytes((len(body) + 1,)) + body


def frames_for(code: int) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, plus well-framed responses to ``IDM`` so the parser gets past its header checks."""
    return st.one_of(
        st.binary(max_size=300),
        st.builds(framed, st.just(code), st.just(IDM), st.binary(max_size=244)),
        st.builds(framed, st.integers(0, 255), idms, st.binary(max_size=20)),
    )


PARSERS: dict[
    str, tuple[Callable[[bytes, Any], object], st.SearchStrategy[bytes], st.SearchStrategy[Any]]
] = {
    "parse_polling_response": (
        parse_polling_response,
        st.one_of(st.binary(max_size=300), st.builds(framed, st.just(0x01), idms, st.binary(max_size=12))),
        st.integers(-1, 4),
    ),
    "parse_read_without_encryption_response": (
        lambda raw, n: parse_read_without_encryption_response(raw, IDM, n),
        frames_for(0x07),
        st.integers(0, 16),
    ),
    "parse_request_system_code_response": (
        lambda raw, _: parse_request_system_code_response(raw, IDM),
        frames_for(0x0D),
        st.none(),
    ),
    "parse_request_service_response": (
        lambda raw, n: parse_request_service_response(raw, IDM, n),
        frames_for(0x03),
        st.integers(0, 33),
    ),
    "parse_transparent_response": (
        lambda raw, _: parse_transparent_response(raw),
        st.one_of(
            st.binary(max_size=300),
            st.lists(
                st.tuples(st.sampled_from([0x97, 0xC0, 0x5F, 0x92, 0x96]), st.binary(max_size=140)).map(
                    lambda tv: bytes((tv[0], len(tv[1]))) + tv[1]
                ),
                max_size=4,
            ).map(b"".join),
        ),
        st.none(),
    ),
    "ServiceCode.unpack": (lambda raw, _: ServiceCode.unpack(raw), st.binary(max_size=300), st.none()),
}
PARSERS["parse_generic_status"] = (
    lambda raw, _: felica.parse_generic_status(raw),
    PARSERS["parse_transparent_response"][1],
    st.none(),
)


def test_every_felica_parser_has_a_property_harness() -> None:
    parsers = {name for name, obj in vars(felica).items() if name.startswith("parse_") and callable(obj)}
    assert parsers <= set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_return_or_raise_readerd_errors_only(name: str) -> None:
    parser, frames, extra = PARSERS[name]

    @PROPERTY
    @given(frames, extra)
    def run(raw: bytes, arg: Any) -> None:
        with contextlib.suppress(ReaderdError):
            parser(raw, arg)

    run()


# --- properties: round trips -------------------------------------------------------------------------
service_codes = st.builds(ServiceCode, st.integers(0, 1023), st.integers(0, 63))


@PROPERTY
@given(idms, st.binary(min_size=8, max_size=8), st.integers(0, 0xFFFF), st.sampled_from(list(RequestCode)))
def test_polling_round_trip(idm: bytes, pmm: bytes, system_code: int, rc: RequestCode) -> None:
    command = build_polling(system_code, rc, 0)
    assert command == bytes((6, 0)) + system_code.to_bytes(2, "big") + bytes((rc, 0))
    extra = {RequestCode.NONE: b"", RequestCode.SYSTEM_CODE: system_code.to_bytes(2, "big")}.get(
        rc, b"\x00\x83"
    )
    response = parse_polling_response(framed(0x01, idm, pmm + extra), rc)
    assert (response.idm, response.pmm) == (idm, pmm)
    assert response.system_code == (system_code if rc is RequestCode.SYSTEM_CODE else None)
    assert response.comm_performance == (b"\x00\x83" if rc is RequestCode.COMM_PERFORMANCE else None)
    assert response.ic_family is classify_ic_type(pmm[1])


@PROPERTY
@given(st.integers(0, 0xFFFF))
def test_service_code_round_trip(code: int) -> None:
    service = ServiceCode.from_int(code)
    assert service.code == code
    assert service.pack() == code.to_bytes(2, "little")
    assert ServiceCode.unpack(service.pack()) == service


@PROPERTY
@given(st.integers(0, 15), st.integers(0, 0xFFFF), st.integers(0, 7))
def test_block_element_encoding(index: int, number: int, mode: int) -> None:
    packed = BlockElement(index, number, mode).pack()
    assert len(packed) == (2 if number < 256 else 3)
    assert packed[0] & 0x0F == index
    assert (packed[0] >> 4) & 0x07 == mode
    assert bool(packed[0] & 0x80) == (number < 256)
    assert int.from_bytes(packed[1:], "little") == number


@st.composite
def read_requests(draw: st.DrawFn) -> tuple[bytes, list[ServiceCode], list[BlockElement]]:
    idm = draw(idms)
    services = draw(st.lists(service_codes, min_size=1, max_size=16))
    blocks = draw(
        st.lists(
            st.builds(
                BlockElement, st.integers(0, len(services) - 1), st.integers(0, 0xFFFF), st.integers(0, 7)
            ),
            min_size=1,
            max_size=15,
        )
    )
    return idm, services, blocks


@PROPERTY
@given(read_requests(), st.data())
def test_read_round_trip(
    request: tuple[bytes, list[ServiceCode], list[BlockElement]], data: st.DataObject
) -> None:
    idm, services, blocks = request
    frame = build_read_without_encryption(idm, services, blocks)
    assert decode_read_command(frame) == (
        idm,
        [s.code for s in services],
        [(b.service_index, b.block_number, b.access_mode) for b in blocks],
    )
    contents = [data.draw(st.binary(min_size=16, max_size=16)) for _ in blocks]
    assert parse_read_without_encryption_response(read_response(idm, contents), idm, len(blocks)) == contents


@PROPERTY
@given(idms, st.integers(1, 0xFF), st.integers(1, 0xFF))
def test_status_flags_round_trip(idm: bytes, sf1: int, sf2: int) -> None:
    with pytest.raises(FelicaStatusError) as caught:
        parse_read_without_encryption_response(read_response(idm, [], sf1, sf2), idm, 1)
    assert (caught.value.sf1, caught.value.sf2) == (sf1, sf2)


@PROPERTY
@given(idms, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=100))
def test_request_system_code_round_trip(idm: bytes, codes: list[int]) -> None:
    assert build_request_system_code(idm) == bytes((10, 0x0C)) + idm
    tail = bytes((len(codes),)) + b"".join(c.to_bytes(2, "big") for c in codes)
    assert parse_request_system_code_response(framed(0x0D, idm, tail), idm) == codes


@PROPERTY
@given(idms, st.lists(service_codes, min_size=1, max_size=32), st.data())
def test_request_service_round_trip(idm: bytes, services: list[ServiceCode], data: st.DataObject) -> None:
    frame = build_request_service(idm, services)
    assert frame == framed(
        0x02, idm, bytes((len(services),)) + b"".join(s.code.to_bytes(2, "little") for s in services)
    )
    versions = [data.draw(st.integers(0, 0xFFFF)) for _ in services]
    tail = bytes((len(versions),)) + b"".join(v.to_bytes(2, "little") for v in versions)
    assert parse_request_service_response(framed(0x03, idm, tail), idm, len(services)) == versions


@PROPERTY
@given(st.binary(min_size=1, max_size=254), st.sampled_from([b"", b"\x92\x01\x00", b"\x96\x02\x00\x00"]))
def test_transparent_round_trip(payload: bytes, extra: bytes) -> None:
    frame = bytes((len(payload) + 1,)) + payload
    command = CommandApdu.decode(transceive_apdu(frame).encode())
    length = bytes((len(frame),)) if len(frame) < 128 else bytes((0x81, len(frame)))
    assert (command.cla, command.ins, command.p1, command.p2) == (0xFF, 0xC2, 0x00, 0x01)
    assert command.data == b"\x95" + length + frame
    assert command.ne == 256
    answer = HEX("C0 03 00 90 00") + extra + b"\x97" + length + frame
    assert parse_transparent_response(answer) == frame


@PROPERTY
@given(
    st.lists(service_codes, min_size=1, max_size=16, unique=True),
    st.integers(1, MAX_BLOCKS_PER_READ),
    st.data(),
)
def test_session_chunking(services: list[ServiceCode], limit: int, data: st.DataObject) -> None:
    blocks = data.draw(
        st.lists(
            st.builds(BlockElement, st.integers(0, len(services) - 1), st.integers(0, 0xFFFF)),
            min_size=1,
            max_size=60,
        )
    )

    @dataclass
    class EchoCard:
        """Answers any well-formed read with blocks derived from (service code, block number)."""

        frames: list[tuple[list[int], list[tuple[int, int, int]]]] = field(default_factory=list)

        def exchange(self, frame: bytes, timeout: float) -> bytes:
            idm, codes, elements = decode_read_command(frame)
            assert idm == IDM
            assert 0 < timeout <= MAX_TIMEOUT
            self.frames.append((codes, elements))
            contents = [content(codes[i], number) for i, number, _ in elements]
            return read_response(IDM, contents)

    def content(code: int, number: int) -> bytes:
        return (code.to_bytes(2, "big") + number.to_bytes(2, "big")) * 4

    card = EchoCard()
    session = FelicaSession(card, lite_s_polling(), max_blocks_per_read=limit)
    result = session.read_blocks(services, blocks)
    assert result == [content(services[b.service_index].code, b.block_number) for b in blocks]
    assert len(card.frames) == math.ceil(len(blocks) / limit)
    for codes, elements in card.frames:
        assert 1 <= len(elements) <= limit
        # Each frame names exactly the services its blocks use, each once.
        assert sorted({i for i, _, _ in elements}) == list(range(len(codes)))
