from __future__ import annotations

import pytest

from protocols.errors import MalformedTlvError, TruncatedDataError
from protocols.tlv import MAX_CERTIFICATE_LENGTH, DerHeader, certificate_length, read_der_header
from tests.support.transcript import HEX


@pytest.mark.parametrize(
    ("prefix", "header"),
    [
        ("30 05", DerHeader(0x30, 2, 5)),
        ("30 81 80", DerHeader(0x30, 3, 128)),
        ("30 82 05 2D", DerHeader(0x30, 4, 0x52D)),  # a real J-LIS CA certificate: 1325 + 4 bytes
        ("04 83 01 00 00", DerHeader(0x04, 5, 0x10000)),
    ],
)
def test_header_vectors(prefix: str, header: DerHeader) -> None:
    assert read_der_header(HEX(prefix)) == header


def test_certificate_length_is_header_plus_content() -> None:
    assert certificate_length(HEX("30 82 03 51 30 82")) == 0x351 + 4


@pytest.mark.parametrize(
    ("prefix", "error", "match"),
    [
        ("30", TruncatedDataError, "at least 2"),
        ("30 82 03", TruncatedDataError, "needs 4"),
        ("30 80", MalformedTlvError, "indefinite"),
        ("30 85 01 02 03 04 05", MalformedTlvError, "absurd"),
        ("30 81 05", MalformedTlvError, "non-minimal"),
        ("30 82 00 FF", MalformedTlvError, "non-minimal"),
        ("1F 01 00", MalformedTlvError, "high-tag"),
        ("31 82 03 51", MalformedTlvError, "SEQUENCE"),
        ("30 84 7F FF FF FF", MalformedTlvError, "limit"),
    ],
)
def test_bad_headers_are_named(prefix: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        certificate_length(HEX(prefix))


def test_limit_is_inclusive() -> None:
    content = MAX_CERTIFICATE_LENGTH - 4
    assert certificate_length(b"\x30\x82" + content.to_bytes(2, "big")) == MAX_CERTIFICATE_LENGTH
    with pytest.raises(MalformedTlvError):
        certificate_length(b"\x30\x82" + (content + 1).to_bytes(2, "big"))
