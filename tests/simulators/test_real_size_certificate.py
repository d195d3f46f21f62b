"""The simulated user-authentication certificate is as big as a real card's and shaped like it, and both
read paths carry it whole through the real stack (pyscard -> private pcscd -> vpcd -> the virtual card).

A real card's certificate is 1,571 bytes (docs/card-facts.md §2); the test PKI's profile is §6.2.
Cost: one private pcscd per pcscd test (~0.3 s) and the PKI's session store (keys made once); about 2 s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID
from smartcard import scard  # noqa: TID251 - the test reads the card as pyscard sees it

from simulators.mynumber import CardBehavior, CardProfile, VirtualMyNumberCard, build_card
from simulators.pki import OID_JPKI_USER_AUTH_POLICY, CaKind, PkiStore
from simulators.vicc import ViccBridge
from tests.simulators.wire import SELECT_JPKI, SW_OK, Card, connected, pcsc_context, select_ef, wait_state
from tests.support.pcscd import PrivatePcscd

REAL_SIZE = range(1500, 1701)
EF_AUTH_CERT = 0x000A
READ_EXTENDED_SFI = bytes.fromhex("00B08A00000000")


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_the_certificate_is_as_big_as_a_real_cards(pki_store: PkiStore) -> None:
    der = der_of(pki_store.user_auth_certificate("alice"))
    assert len(der) in REAL_SIZE
    # The long form a real card's starts with (30 82 06 1F there): the length is in the header.
    assert der[:2] == b"\x30\x82"
    assert int.from_bytes(der[2:4], "big") + 4 == len(der)


def test_the_certificate_has_a_real_cards_extensions(pki_store: PkiStore) -> None:
    cert = pki_store.user_auth_certificate("alice")
    ca = pki_store.ca(CaKind.USER_AUTH)
    extensions = {e.oid: e for e in cert.extensions}
    assert set(extensions) == {
        ExtensionOID.KEY_USAGE,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
    assert [e.oid for e in cert.extensions if e.critical] == [ExtensionOID.KEY_USAGE]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.content_commitment
    assert not usage.key_cert_sign
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key)
    )
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    (policy,) = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert policy.policy_identifier == OID_JPKI_USER_AUTH_POLICY
    assert policy.policy_qualifiers is not None
    assert [q for q in policy.policy_qualifiers if isinstance(q, str) and q.startswith("http://")]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_method for d in aia] == [AuthorityInformationAccessOID.OCSP]
    # No personal data: no SAN, and the subject is C and an opaque CN, as on the real card.
    assert ExtensionOID.SUBJECT_ALTERNATIVE_NAME not in extensions
    assert [a.oid for a in cert.subject] == [NameOID.COUNTRY_NAME, NameOID.COMMON_NAME]
    cert.verify_directly_issued_by(ca.certificate)


def test_no_name_in_the_certificate_points_at_a_real_service(pki_store: PkiStore) -> None:
    cert = pki_store.user_auth_certificate("alice")
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    (policy,) = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    uris = [
        *(name.value for point in points for name in point.full_name or [] if _is_uri(name)),
        *(description.access_location.value for description in access),
        *(q for q in policy.policy_qualifiers or [] if isinstance(q, str)),
    ]
    assert len(uris) == 3
    assert all(".invalid/" in uri or uri.endswith(".invalid") for uri in uris), uris
    # The other CRL distribution point is a directory name, as the J-LIS CAs' is (docs/card-facts.md §6.1).
    names = [
        name for point in points for name in point.full_name or [] if isinstance(name, x509.DirectoryName)
    ]
    assert len(names) == 1


def _is_uri(name: x509.GeneralName) -> bool:
    return isinstance(name, x509.UniformResourceIdentifier)


def test_making_a_card_makes_no_more_keys_than_before(tmp_path: Path) -> None:
    """Two RSA keys per card (auth, signature) and one per CA: the bigger certificate costs no key."""
    store = PkiStore(tmp_path)
    build_card(CardProfile(name="alice"), store)
    build_card(CardProfile(name="bob"), store)
    keys = sorted(p.name for p in tmp_path.glob("*.key.pem"))
    assert keys == [
        "ca-auth.key.pem",
        "ca-sign.key.pem",
        "card-alice-auth.key.pem",
        "card-alice-sign.key.pem",
        "card-bob-auth.key.pem",
        "card-bob-sign.key.pem",
    ]


def test_a_cache_of_the_old_profile_is_not_reused(tmp_path: Path) -> None:
    """A developer's cache made before this profile holds the 880-byte certificate under the old name:
    the card gets a real-size one (same key, so its pseudonym's inputs other than the serial stay)."""
    store = PkiStore(tmp_path)
    key = store.card_key("alice", "auth")
    old = store.ca(CaKind.USER_AUTH).issue_user_auth(key, serial=7)
    (tmp_path / "card-alice-auth-std.crt.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    cert = PkiStore(tmp_path).user_auth_certificate("alice")
    assert len(der_of(cert)) in REAL_SIZE
    assert cert.serial_number != 7
    assert cert.public_key() == key.public_key()


# --- through the real stack --------------------------------------------------------------------------


@contextmanager
def on_reader(pcscd: PrivatePcscd, card: VirtualMyNumberCard) -> Iterator[Card]:
    bridge = ViccBridge(card, port=pcscd.ports[0])
    bridge.insert()
    try:
        with pcsc_context() as ctx:
            wait_state(ctx, pcscd.readers[0], scard.SCARD_STATE_PRESENT)
            with connected(ctx, pcscd.readers[0]) as handle:
                yield handle
    finally:
        bridge.remove()
    assert bridge.errors == []


@pytest.mark.pcscd
@pytest.mark.timeout(60)
def test_extended_length_reads_it_in_two_apdus(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    card = build_card(CardProfile(name="alice"), pki_store)
    issued = der_of(pki_store.user_auth_certificate("alice"))
    with on_reader(private_pcscd, card) as reader:
        assert reader.send(SELECT_JPKI) == SW_OK
        answer = reader.send(READ_EXTENDED_SFI)
    assert answer[-2:] == SW_OK
    assert answer[:-2] == issued
    assert len(issued) in REAL_SIZE
    assert [r.raw for r in card.log] == [SELECT_JPKI, READ_EXTENDED_SFI]


@pytest.mark.pcscd
@pytest.mark.timeout(60)
def test_short_apdus_read_it_as_opensc_does(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    """OpenSC's way (docs/card-facts.md §3.2): SELECT AP, SELECT EF, the 4-byte header, then the file in
    reads of at most 256 bytes: 3 + ceil(len / 256) APDUs, on a card that refuses extended length."""
    card = build_card(CardProfile(name="alice", behavior=CardBehavior(extended_length=False)), pki_store)
    issued = der_of(pki_store.user_auth_certificate("alice"))
    with on_reader(private_pcscd, card) as reader:
        assert reader.send(SELECT_JPKI) == SW_OK
        assert reader.send(select_ef(EF_AUTH_CERT)) == SW_OK
        header = reader.send(bytes.fromhex("00B0000004"))
        assert header[-2:] == SW_OK
        total = int.from_bytes(header[2:4], "big") + 4
        data = b""
        while len(data) < total:
            want = min(256, total - len(data))
            answer = reader.send(bytes([0x00, 0xB0, len(data) >> 8, len(data) & 0xFF, want % 256]))
            assert answer[-2:] == SW_OK
            assert len(answer) - 2 == want  # the exact length asked for: no 6282, no short answer
            data += answer[:-2]
    assert data == issued
    assert total in REAL_SIZE
    assert len(card.log) == 3 + math.ceil(total / 256) == 10
    assert all(len(r.raw) <= 5 for r in card.log[2:])  # short APDUs only
