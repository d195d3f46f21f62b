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
    return DerHeader(*_tag_and_length(bytes(prefix), 0))


def _tag_and_length(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, header length, content length) of the element at ``at``: :func:`read_der_header`'s rules,
    as plain numbers (the certificate walk below reads a dozen headers per tap)."""
    got = len(data) - at
    if got < 2:
        raise TruncatedDataError(f"DER header needs at least 2 bytes, got {max(got, 0)}")
    tag, first = data[at], data[at + 1]
    if tag & 0x1F == 0x1F:
        raise MalformedTlvError(f"high-tag-number form (tag byte {tag:02X}) is not expected here")
    if first < 0x80:
        return tag, 2, first
    n = first & 0x7F
    if n == 0:
        raise MalformedTlvError("indefinite length is not DER")
    if n > 4:
        raise MalformedTlvError(f"length of {n} octets is absurd")
    if got < 2 + n:
        raise TruncatedDataError(f"DER length needs {2 + n} bytes, got {got}")
    length = int.from_bytes(data[at + 2 : at + 2 + n], "big")
    if data[at + 2] == 0 or length < 0x80:
        raise MalformedTlvError("non-minimal DER length encoding")
    return tag, 2 + n, length


def certificate_length(prefix: bytes, limit: int = MAX_CERTIFICATE_LENGTH) -> int:
    """Total length in bytes of the DER certificate (a SEQUENCE) whose first bytes are ``prefix``."""
    header = read_der_header(prefix)
    if header.tag != TAG_SEQUENCE:
        raise MalformedTlvError(f"a certificate starts with SEQUENCE (30), not {header.tag:02X}")
    if header.total_length > limit:
        raise MalformedTlvError(f"certificate of {header.total_length} bytes exceeds the {limit}-byte limit")
    return header.total_length


# -- the names of a certificate -----------------------------------------------------------------------
TAG_SET = 0x31
TAG_OID = 0x06
TAG_INTEGER = 0x02
TAG_VERSION = 0xA0  # [0] EXPLICIT, in front of the serial number of a v2/v3 certificate

#: The DER of the attribute type id-at-commonName (2.5.4.3).
OID_COMMON_NAME = bytes.fromhex("550403")


def _element(der: bytes, at: int, end: int) -> tuple[int, int, int]:
    """(tag, start of the content, end of the element) of the element at ``at``, which must end by
    ``end`` (its container's end)."""
    tag, header, length = _tag_and_length(der, at)
    content = at + header
    stop = content + length
    if stop > end:
        raise TruncatedDataError(f"DER element at {at} runs past its container")
    return tag, content, stop


def certificate_names(der: bytes) -> tuple[bytes, bytes]:
    """The issuer's and the subject's Name of an X.509 certificate, each the DER element as the
    certificate holds it: found by walking the TBSCertificate's first fields, without building the
    names (the card session needs the issuer's bytes and one attribute of the subject, per tap).

    Raises :class:`MalformedTlvError` or :class:`TruncatedDataError` where the structure is not a
    certificate's; the caller has parsed the certificate already and falls back to its parser."""
    der = bytes(der)
    tag, content, end = _element(der, 0, len(der))
    if tag != TAG_SEQUENCE:
        raise MalformedTlvError("a certificate is a SEQUENCE")
    tag, content, end = _element(der, content, end)
    if tag != TAG_SEQUENCE:
        raise MalformedTlvError("a TBSCertificate is a SEQUENCE")
    at = content
    tag, _, stop = _element(der, at, end)
    if tag == TAG_VERSION:
        at = stop
    # serialNumber, signature, issuer, validity, subject
    fields = []
    for want in (TAG_INTEGER, TAG_SEQUENCE, TAG_SEQUENCE, TAG_SEQUENCE, TAG_SEQUENCE):
        tag, _, stop = _element(der, at, end)
        if tag != want:
            raise MalformedTlvError("not the fields of a TBSCertificate")
        fields.append((at, stop))
        at = stop
    (issuer_at, issuer_end), (subject_at, subject_end) = fields[2], fields[4]
    return der[issuer_at:issuer_end], der[subject_at:subject_end]


def common_name(name: bytes) -> str | None:
    """The first common name in a Name's DER (:func:`certificate_names`), "" when it has none; None
    when the walk cannot vouch for the whole name as ``cryptography`` would read it: then the caller
    asks ``cryptography``, which knows every string type and refuses a damaged name.

    The walk reads every attribute, not only up to the common name: one RDN per attribute, a
    well-formed OID, and a value that is a UTF8String, a PrintableString of its alphabet or an
    IA5String. Anything else (a multi-valued RDN, a BMPString, a damaged value) is None."""
    first: str | None = None
    try:
        tag, at, end = _element(name, 0, len(name))
        if tag != TAG_SEQUENCE:
            return None
        while at < end:  # RelativeDistinguishedName: SET OF AttributeTypeAndValue, here of one
            tag, attr, rdn_end = _element(name, at, end)
            if tag != TAG_SET:
                return None
            tag, oid, attr_end = _element(name, attr, rdn_end)  # SEQUENCE {type, value}
            if tag != TAG_SEQUENCE or attr_end != rdn_end:
                return None
            tag, oid_content, value_at = _element(name, oid, attr_end)
            if tag != TAG_OID or not _well_formed_oid(name[oid_content:value_at]):
                return None
            tag, value, value_end = _element(name, value_at, attr_end)
            text = _plain_string(tag, name[value:value_end])
            if text is None or value_end != attr_end:
                return None
            if first is None and name[oid_content:value_at] == OID_COMMON_NAME:
                first = text
            at = rdn_end
    except (MalformedTlvError, TruncatedDataError):
        return None
    return "" if first is None else first


#: PrintableString's alphabet (X.680 41.4).
_PRINTABLE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")


def _plain_string(tag: int, value: bytes) -> str | None:
    """The text of a UTF8String, PrintableString or IA5String value; None for another type or bytes
    its type does not allow."""
    try:
        if tag == 0x0C:
            return value.decode("utf-8")
        if tag == 0x13:
            return value.decode("ascii") if _PRINTABLE.issuperset(value) else None
        if tag == 0x16:
            return value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return None


def _well_formed_oid(content: bytes) -> bool:
    """Base-128 arcs, each minimal and the last one complete."""
    if not content or content[-1] & 0x80:
        return False
    starts = True
    for byte in content:
        if starts and byte == 0x80:  # a leading zero group: not minimal
            return False
        starts = not byte & 0x80
    return True
