"""Just enough BER/DER to learn how long a structure is from its first bytes.

The card does not tell how long the certificate in an EF is; its DER header does. Reading the header
must be strict: a card (or a fuzzer) that answers with an indefinite length or a 2 GiB length must not
make the daemon plan thousands of READ BINARYs.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import MalformedTlvError, TruncatedDataError

TAG_SEQUENCE = 0x30

#: Largest certificate readerd will read. Real JPKI end-entity certificates are 1-2 KiB and the J-LIS
#: CA certificates about 1.3 KiB (docs/card-facts.md §2); 16 KiB leaves room without allowing absurd plans.
MAX_CERTIFICATE_LENGTH = 16 * 1024

#: Bytes that always hold a DER header readerd accepts: 1 tag byte + 1 length byte + 4 length octets.
MAX_HEADER_LENGTH = 6


@dataclass(frozen=True)
class DerHeader:
    """The identifier and length octets of one DER element."""

    tag: int
    header_length: int
    content_length: int

    @property
    def total_length(self) -> int:
        return self.header_length + self.content_length


def read_der_header(prefix: bytes) -> DerHeader:
    """Parse the tag and length at the start of ``prefix`` (single-byte tags only, as X.509 uses).

    Raises :class:`TruncatedDataError` when ``prefix`` ends inside the header, and
    :class:`MalformedTlvError` for high-tag-number forms, indefinite or non-minimal lengths.
    """
    prefix = bytes(prefix)
    if len(prefix) < 2:
        raise TruncatedDataError(f"DER header needs at least 2 bytes, got {len(prefix)}")
    tag = prefix[0]
    if tag & 0x1F == 0x1F:
        raise MalformedTlvError(f"high-tag-number form (tag byte {tag:02X}) is not expected here")
    first = prefix[1]
    if first < 0x80:
        return DerHeader(tag, 2, first)
    n = first & 0x7F
    if n == 0:
        raise MalformedTlvError("indefinite length is not DER")
    if n > 4:
        raise MalformedTlvError(f"length of {n} octets is absurd")
    if len(prefix) < 2 + n:
        raise TruncatedDataError(f"DER length needs {2 + n} bytes, got {len(prefix)}")
    length = int.from_bytes(prefix[2 : 2 + n], "big")
    if prefix[2] == 0 or length < 0x80:
        raise MalformedTlvError("non-minimal DER length encoding")
    return DerHeader(tag, 2 + n, length)


def certificate_length(prefix: bytes, limit: int = MAX_CERTIFICATE_LENGTH) -> int:
    """Total length in bytes of the DER certificate (a SEQUENCE) whose first bytes are ``prefix``."""
    header = read_der_header(prefix)
    if header.tag != TAG_SEQUENCE:
        raise MalformedTlvError(f"a certificate starts with SEQUENCE (30), not {header.tag:02X}")
    if header.total_length > limit:
        raise MalformedTlvError(f"certificate of {header.total_length} bytes exceeds the {limit}-byte limit")
    return header.total_length
