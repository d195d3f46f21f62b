from __future__ import annotations

import pytest

from protocols.errors import IdentifierFormatError
from protocols.mykey import (
    CROCKFORD_ALPHABET,
    felica_pseudonym,
    is_mykey_id,
    jpki_pseudonym,
    key_fingerprint,
    new_member_id,
    normalize_member_id,
    normalize_mykey_id,
    serial_bytes,
)
from tests.support.transcript import HEX

# The published test vector (docs/identifiers.md): any implementation in any language must match it.
VECTOR_KEY = bytes(range(32))
VECTOR_ISSUER_DER = HEX(
    "308182310b3009060355040613024a50310d300b060355040a0c044a504b4931253023060355040b0c1c4a504b4920666f72"
    "20757365722061757468656e7469636174696f6e313d303b060355040b0c344a6170616e204167656e637920666f72204c6f"
    "63616c20417574686f7269747920496e666f726d6174696f6e2053797374656d73"
)


def test_jpki_pseudonym_vector() -> None:
    assert jpki_pseudonym(VECTOR_KEY, VECTOR_ISSUER_DER, 0x0123456789) == "BDADWUXVQRWMAC5ABEIAG5IQDX"


def test_felica_pseudonym_vector() -> None:
    assert felica_pseudonym(VECTOR_KEY, HEX("012E4CD8A30D2B1F")) == "PAH5MQHER3Q3F5VO7HGF2PCPMB"


def test_fingerprint_vector() -> None:
    assert key_fingerprint(VECTOR_KEY) == "22281f5f10adba97"


def test_pseudonyms_depend_on_key_issuer_serial_and_domain() -> None:
    base = jpki_pseudonym(VECTOR_KEY, VECTOR_ISSUER_DER, 1)
    assert jpki_pseudonym(bytes(32), VECTOR_ISSUER_DER, 1) != base
    assert jpki_pseudonym(VECTOR_KEY, VECTOR_ISSUER_DER + b"\x00", 1) != base
    assert jpki_pseudonym(VECTOR_KEY, VECTOR_ISSUER_DER, 2) != base
    # The same 8 bytes as an IDm and as issuer||serial do not collide: the domains differ.
    assert felica_pseudonym(VECTOR_KEY, bytes(8)) != jpki_pseudonym(VECTOR_KEY, bytes(7), 0)


def test_pseudonym_shape() -> None:
    p = jpki_pseudonym(VECTOR_KEY, VECTOR_ISSUER_DER, 42)
    assert len(p) == 26
    assert set(p) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_wrong_key_length_is_refused(key: bytes) -> None:
    with pytest.raises(IdentifierFormatError):
        jpki_pseudonym(key, VECTOR_ISSUER_DER, 1)


def test_serial_encoding_is_minimal() -> None:
    assert serial_bytes(0) == b"\x00"
    assert serial_bytes(0x80) == b"\x80"
    assert serial_bytes(0x0100) == b"\x01\x00"
    with pytest.raises(IdentifierFormatError):
        serial_bytes(-1)


def test_felica_idm_must_be_8_bytes() -> None:
    with pytest.raises(IdentifierFormatError):
        felica_pseudonym(VECTOR_KEY, bytes(7))


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("ab12cd34", "AB12CD34"), ("ＡＢ１２ＣＤ３４", "AB12CD34"), (" AB12-CD34 ", "AB12CD34")],
)
def test_mykey_id_normalisation(text: str, canonical: str) -> None:
    assert normalize_mykey_id(text) == canonical
    assert is_mykey_id(text)


@pytest.mark.parametrize("text", ["AB12CD3", "AB12CD345", "AB12CD3!", "AB12CDé4", "", "ＡＢ１２ＣＤ３"])
def test_bad_mykey_ids(text: str) -> None:
    assert not is_mykey_id(text)
    with pytest.raises(IdentifierFormatError):
        normalize_mykey_id(text)


def test_member_ids_are_crockford() -> None:
    ids = {new_member_id() for _ in range(200)}
    assert len(ids) == 200
    for member_id in ids:
        assert len(member_id) == 8
        assert set(member_id) <= set(CROCKFORD_ALPHABET)
        assert normalize_member_id(member_id.lower()) == member_id


def test_member_id_aliases_and_refusals() -> None:
    assert normalize_member_id("oi1l-2345") == "0111" + "2345"
    with pytest.raises(IdentifierFormatError):
        normalize_member_id("U1234567")  # U is not in the Crockford alphabet
