"""The certificate's names read from its DER (``protocols.tlv.certificate_names``, ``common_name``) give
what ``cryptography`` gives: the same issuer bytes (the pseudonym is made of them) and the same subject
common name, for every shape of name, and a fallback to ``cryptography`` where the walk does not know a
string type. Cost: about 1 s (EC keys; hypothesis over a few hundred mutated certificates)."""

from __future__ import annotations

import datetime as dt
import os
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import jpki
from protocols.errors import CertificateParseError, MalformedTlvError, TruncatedDataError
from protocols.jpki import UserAuthCertificate
from protocols.tlv import certificate_names, common_name

EXAMPLES = int(os.environ.get("READERD_HYPOTHESIS_EXAMPLES", "300"))
KEY = ec.generate_private_key(ec.SECP256R1())
JLIS_LIKE = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JPKI TEST"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "JPKI for user authentication"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Japan Agency for Local Authority Information"),
    ]
)


def certificate(subject: x509.Name, issuer: x509.Name = JLIS_LIKE, serial: int = 0x1234) -> bytes:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(KEY.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .sign(KEY, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def reference(der: bytes) -> tuple[bytes, str]:
    """What ``cryptography`` reads: the issuer's encoding and the first common name."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cert.issuer.public_bytes(), str(cns[0].value) if cns else ""


def cn(value: str, kind: _ASN1Type = _ASN1Type.UTF8String) -> x509.NameAttribute[str]:
    return x509.NameAttribute(NameOID.COMMON_NAME, value, _type=kind)


COUNTRY = x509.NameAttribute(NameOID.COUNTRY_NAME, "JP")
NAMES = {
    "card-like (CN, C)": x509.Name([cn("CEF04LRKZWBVYBBS1S841E9", _ASN1Type.PrintableString), COUNTRY]),
    "utf8 Japanese": x509.Name([COUNTRY, cn("住民 太郎")]),
    "ia5": x509.Name([cn("user@example.jp", _ASN1Type.IA5String)]),
    "no CN": x509.Name([COUNTRY]),
    "empty": x509.Name([]),
    "two CNs: the first": x509.Name([cn("first"), cn("second")]),
    "multi-valued RDN": x509.Name(
        [x509.RelativeDistinguishedName([COUNTRY, cn("in a set")]), x509.RelativeDistinguishedName([cn("x")])]
    ),
    "BMPString: cryptography reads it": x509.Name([cn("ＢＭＰ", _ASN1Type.BMPString)]),
    "UniversalString: cryptography reads it": x509.Name([cn("wide", _ASN1Type.UniversalString)]),
}


@pytest.mark.parametrize("subject", NAMES.values(), ids=NAMES.keys())
def test_the_names_read_from_the_der_are_what_cryptography_reads(subject: x509.Name) -> None:
    der = certificate(subject)
    cert = x509.load_der_x509_certificate(der)
    issuer, subject_der = certificate_names(der)
    assert issuer == cert.issuer.public_bytes()
    assert subject_der == cert.subject.public_bytes()
    parsed = UserAuthCertificate.from_der(der)
    assert (parsed.issuer_der, parsed.subject_cn) == reference(der)
    assert parsed.serial_number == 0x1234


def test_a_string_type_the_walk_does_not_decode_is_left_to_cryptography() -> None:
    _, subject = certificate_names(certificate(NAMES["BMPString: cryptography reads it"]))
    assert common_name(subject) is None
    _, subject = certificate_names(certificate(NAMES["no CN"]))
    assert common_name(subject) == ""


@pytest.mark.parametrize(
    ("der", "error"),
    [
        (b"", TruncatedDataError),
        (b"\x30\x03\x02\x01\x01", MalformedTlvError),  # a SEQUENCE holding an INTEGER, not a TBSCertificate
        (b"\x31\x00", MalformedTlvError),
        (b"\x30\x05\x30\x03\x02\x01", TruncatedDataError),
    ],
)
def test_what_is_not_a_certificate_is_a_named_error(der: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        certificate_names(der)


def test_issuers_are_learnt_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of certificates from made-up issuers does not grow the table; each still parses right."""
    monkeypatch.setattr(jpki, "_ISSUERS", {})
    monkeypatch.setattr(jpki, "MAX_ISSUERS", 2)
    subject = NAMES["card-like (CN, C)"]
    for n in range(4):
        issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"CA {n}")])
        der = certificate(subject, issuer)
        assert UserAuthCertificate.from_der(der).issuer_der == reference(der)[0]
    assert len(jpki._ISSUERS) == 2


CARD = certificate(NAMES["card-like (CN, C)"])


def test_a_damaged_attribute_after_the_common_name_still_refuses_the_certificate() -> None:
    """The walk reads the whole subject: the common name comes first on a card, a damaged country after
    it is refused as ``cryptography`` refuses it."""
    der = bytearray(CARD)
    country = bytes(der).rindex(b"\x13\x02JP")  # the subject's, after its CN
    der[country] = 0x00
    with pytest.raises(CertificateParseError):
        UserAuthCertificate.from_der(bytes(der))


def test_an_invalid_version_is_a_parse_error_not_a_leak() -> None:
    der = bytearray(CARD)
    der[der.index(b"\xa0\x03\x02\x01\x02") + 4] = 0x01  # v2 is not a version cryptography reads
    with pytest.raises(CertificateParseError, match=r"not a usable X\.509 certificate"):
        UserAuthCertificate.from_der(bytes(der))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(CARD) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_damaged_certificate_parses_as_cryptography_reads_it_or_not_at_all(
    changes: list[tuple[int, int]],
) -> None:
    der = bytearray(CARD)
    for at, value in changes:
        der[at] = value
    with warnings.catch_warnings():  # a serial made negative: cryptography warns, from_der refuses
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            expected = reference(bytes(der))
            negative = x509.load_der_x509_certificate(bytes(der)).serial_number < 0
        except (ValueError, TypeError, x509.InvalidVersion):
            expected, negative = None, False
        if expected is None or negative:
            with pytest.raises(CertificateParseError):
                UserAuthCertificate.from_der(bytes(der))
            return
        parsed = UserAuthCertificate.from_der(bytes(der))
    assert (parsed.issuer_der, parsed.subject_cn) == expected
