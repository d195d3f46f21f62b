"""A test PKI shaped like J-LIS's: user-authentication and signature CAs, card certificates, and a CRL.

Names, key sizes and extensions follow docs/card-facts.md §6 (issuer ``C=JP, O=JPKI, OU=JPKI for user
authentication, OU=Japan Agency for Local Authority Information Systems``, subject ``C=JP, CN=<opaque>``,
RSA-2048, sha256WithRSA, no SAN on the auth certificate; the signature certificate carries the four
attributes in its SubjectAltName). The CAs' O is ``JPKI TEST`` so a simulated certificate can never be
mistaken for a real one, and production trust anchors never include them.

The user-authentication certificate carries the extensions of a real card's (docs/card-facts.md §6.2):
keyUsage digitalSignature (critical), subject and authority key identifiers, certificate policies (the
J-LIS user-authentication policy OID with a CPS URI), an issuerAltName, a CRL distribution point and an
OCSP responder in authorityInfoAccess. Its URIs are under ``.invalid`` (RFC 2606) so nothing ever reaches
a real J-LIS service. It comes to about 1.5 KB of DER, the size of a real card's (1,571 bytes).

Cost: RSA-2048 key generation costs ~100 ms per key and a certificate a few milliseconds to sign; the
extensions add no key and no signature, so a card costs what it did. Keys and certificates are cached as
files under a directory (:class:`PkiStore`) so that a test run, or a developer's simulator, reuses the
same cards.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

TEST_CA_ORGANIZATION = "JPKI TEST"
JLIS_OU = "Japan Agency for Local Authority Information Systems"
RSA_BITS = 2048
_CN_ALPHABET = string.ascii_uppercase + string.digits

#: The four attributes in the signature certificate's SAN (docs/card-facts.md §6, myna's jpki_ap.go).
OID_NAME = ObjectIdentifier("1.2.392.200149.8.5.5.1")
OID_SEX = ObjectIdentifier("1.2.392.200149.8.5.5.3")
OID_BIRTH_DATE = ObjectIdentifier("1.2.392.200149.8.5.5.4")
OID_ADDRESS = ObjectIdentifier("1.2.392.200149.8.5.5.5")

#: J-LIS's certificate policy for user-authentication certificates ("jpki-cp-auth-class30" in public OID
#: tables; docs/card-facts.md §6.2). The signature certificates' is ``...8.5.1.1.20``.
OID_JPKI_USER_AUTH_POLICY = ObjectIdentifier("1.2.392.200149.8.5.1.3.30")
#: Where the test PKI says its CPS, OCSP responder and CRLs are: ``.invalid`` never resolves (RFC 2606).
TEST_CPS_URI = "http://www.jpki-test.invalid/cps.html"
TEST_OCSP_URI = "http://ocspauth.jpki-test.invalid"
#: CRLs are published over HTTP or LDAP v3 (docs/card-facts.md §6.2): the test PKI names an LDAP entry.
TEST_CRL_URI = (
    "ldap://ldap.jpki-test.invalid/cn=CRL%20Distribution%20Point%200001,ou=CRL%20Distribution%20Points,"
    "ou=JPKI%20for%20user%20authentication,o=JPKI%20TEST,c=JP?certificateRevocationList"
)
#: The issuerAltName organisation of real JPKI certificates is 公的個人認証サービス; the test PKI's says 試験.
TEST_ISSUER_ALT_ORGANIZATION = "公的個人認証サービス（試験）"
#: Bumped whenever the user-auth certificate's profile changes, so a cache of older cards is not reused.
USER_AUTH_PROFILE_VERSION = 2


class CaKind(Enum):
    USER_AUTH = "JPKI for user authentication"
    SIGNATURE = "JPKI for digital signature"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _key_usage(
    *, digital_signature: bool = False, non_repudiation: bool = False, ca: bool = False
) -> x509.KeyUsage:
    return key_usage(digital_signature=digital_signature, non_repudiation=non_repudiation, ca=ca)


def key_usage(
    *,
    digital_signature: bool = False,
    non_repudiation: bool = False,
    key_encipherment: bool = False,
    ca: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage extension for tests that need a leaf with the wrong usage (see ``issue_user_auth``)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=non_repudiation,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def ca_name(kind: CaKind) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_CA_ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind.value),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, JLIS_OU),
        ]
    )


@dataclass(frozen=True)
class Attributes:
    """The 基本4情報 of a fake citizen: only ever on the signature certificate and the card-info APs."""

    name: str = "試験 太郎"
    address: str = "東京都千代田区試験町一丁目1番1号"
    birth_date: str = "19600401"  # YYYYMMDD, as the SAN carries it
    sex: str = "1"


def foreign_ca_name(organization: str = "FOREIGN TEST CA") -> x509.Name:
    """A CA name that is not J-LIS's: for a CA no deployment configures as a trust anchor."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CaKind.USER_AUTH.value),
        ]
    )


class SimulatedCa:
    """A self-signed root, like the real 2015/2023 J-LIS roots.

    ``subject`` (default: the J-LIS-shaped :func:`ca_name`) gives a CA another name, e.g. a foreign CA
    (:func:`foreign_ca_name`); a second ``SimulatedCa()`` with the default name is an impostor of the
    first: same name, another key.
    """

    def __init__(
        self,
        kind: CaKind = CaKind.USER_AUTH,
        key: rsa.RSAPrivateKey | None = None,
        certificate: x509.Certificate | None = None,
        not_before: datetime = datetime(2023, 7, 15, tzinfo=UTC),
        *,
        subject: x509.Name | None = None,
    ) -> None:
        self.kind = kind
        self.key = key or new_rsa_key()
        self._subject = subject or ca_name(kind)
        self.certificate = certificate or self._self_sign(not_before)

    def _self_sign(self, not_before: datetime) -> x509.Certificate:
        public = self.key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(self._subject)
            .issuer_name(self._subject)
            .public_key(public)
            .serial_number(1)
            .not_valid_before(not_before)
            .not_valid_after(not_before + timedelta(days=3653))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_user_auth(
        self,
        key: rsa.RSAPrivateKey,
        *,
        serial: int | None = None,
        common_name: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        usage: x509.KeyUsage | None = None,
        omit_key_usage: bool = False,
        hash_algorithm: hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
        rsa_padding: padding.PSS | None = None,
    ) -> x509.Certificate:
        """A user-authentication certificate: subject ``C=JP, CN=<opaque>``, no SAN, ~5 years, with the
        extensions of a real card's (:meth:`user_auth_extensions`), about 1.5 KB of DER.

        For certificates a verifier must refuse: ``usage`` replaces the KeyUsage (digitalSignature),
        ``omit_key_usage`` leaves the extension out, ``hash_algorithm`` (default SHA-256) and
        ``rsa_padding`` (default PKCS#1 v1.5; a PSS padding) change how the CA signs.
        """
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME,
                    common_name or "".join(secrets.choice(_CN_ALPHABET) for _ in range(23)),
                ),
            ]
        )
        return self._issue(
            key,
            subject,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            usage=None if omit_key_usage else usage or _key_usage(digital_signature=True),
            san=None,
            hash_algorithm=hash_algorithm,
            rsa_padding=rsa_padding,
            extra=self.user_auth_extensions(key),
        )

    def user_auth_extensions(self, key: rsa.RSAPrivateKey) -> list[x509.ExtensionType]:
        """The non-critical extensions of a real user-authentication certificate (docs/card-facts.md §6.2)
        besides keyUsage and the authority key identifier: no network name in them is real."""
        crl_name = x509.Name(
            [
                *self.certificate.subject,
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "CRL Distribution Points"),
                x509.NameAttribute(NameOID.COMMON_NAME, "CRL Distribution Point 0001"),
            ]
        )
        issuer_alt = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ISSUER_ALT_ORGANIZATION),
            ]
        )
        return [
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            x509.CertificatePolicies([x509.PolicyInformation(OID_JPKI_USER_AUTH_POLICY, [TEST_CPS_URI])]),
            x509.IssuerAlternativeName([x509.DirectoryName(issuer_alt)]),
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint([x509.DirectoryName(crl_name)], None, None, None),
                    x509.DistributionPoint([x509.UniformResourceIdentifier(TEST_CRL_URI)], None, None, None),
                ]
            ),
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(TEST_OCSP_URI)
                    ),
                ]
            ),
        ]

    def issue_signature(
        self,
        key: rsa.RSAPrivateKey,
        attributes: Attributes,
        *,
        serial: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """A signature certificate: locality in the subject, the four attributes in the SAN."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Tokyo-to"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Chiyoda-ku"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, "".join(secrets.choice(_CN_ALPHABET) for _ in range(23))
                ),
            ]
        )
        san = x509.SubjectAlternativeName(
            [
                x509.OtherName(OID_NAME, _utf8_der(attributes.name)),
                x509.OtherName(OID_SEX, _utf8_der(attributes.sex)),
                x509.OtherName(OID_BIRTH_DATE, _utf8_der(attributes.birth_date)),
                x509.OtherName(OID_ADDRESS, _utf8_der(attributes.address)),
            ]
        )
        usage = _key_usage(digital_signature=True, non_repudiation=True)
        return self._issue(
            key, subject, serial=serial, not_before=not_before, not_after=not_after, usage=usage, san=san
        )

    def _issue(
        self,
        key: rsa.RSAPrivateKey,
        subject: x509.Name,
        *,
        serial: int | None,
        not_before: datetime | None,
        not_after: datetime | None,
        usage: x509.KeyUsage | None,
        san: x509.SubjectAlternativeName | None,
        hash_algorithm: hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
        rsa_padding: padding.PSS | None = None,
        extra: list[x509.ExtensionType] | None = None,
    ) -> x509.Certificate:
        start = not_before or datetime(2025, 10, 27, tzinfo=UTC)
        end = not_after or start + timedelta(days=5 * 365 + 1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial if serial is not None else secrets.randbits(62) + 1)
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if usage is not None:
            builder = builder.add_extension(usage, critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        for extension in extra or ():
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(self.key, hash_algorithm or hashes.SHA256(), rsa_padding=rsa_padding)

    def crl(
        self,
        revoked_serials: list[int],
        *,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL revoking ``revoked_serials`` (what an approved verifier would receive from J-LIS).

        A stale CRL: ``this_update`` and ``next_update`` in the past. A forged one: ``signing_key``
        other than the CA's (the CRL still names this CA as its issuer).
        """
        now = this_update or datetime.now(UTC).replace(microsecond=0)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(next_update or now + timedelta(days=1))
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        return builder.sign(signing_key or self.key, hashes.SHA256())


def pem(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """PEM of a certificate or CRL, as an operator would install it."""
    return item.public_bytes(serialization.Encoding.PEM)


def write_pem(path: Path, *items: x509.Certificate | x509.CertificateRevocationList) -> Path:
    """Write ``items`` as one PEM file, atomically (a reader never sees half a file); returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"".join(pem(item) for item in items))
    tmp.replace(path)
    return path


def _utf8_der(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= 128:
        raise ValueError("attribute too long for this test PKI")
    return b"\x0c" + bytes((len(raw),)) + raw


# --- the cache ---------------------------------------------------------------------------------------
#: Keys loaded from PkiStore files, by (path, mtime, size): a rewritten file is loaded again.
_LOADED_KEYS: dict[tuple[str, int, int], rsa.RSAPrivateKey] = {}


class PkiStore:
    """Keys and certificates as PEM files under ``root``, created on first use and reused after.

    A card's key, serial and common name depend only on its name, so the same profile yields the same
    certificate across runs (repeatable tests, stable pseudonyms in a developer's demo).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cas: dict[CaKind, SimulatedCa] = {}

    def _key(self, name: str) -> rsa.RSAPrivateKey:
        path = self.root / f"{name}.key.pem"
        if path.exists():
            stat = path.stat()
            cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
            cached = _LOADED_KEYS.get(cache_key)
            if cached is not None:
                return cached
            # Our own keys, written by this class: skipping OpenSSL's RSA consistency check makes a load
            # take microseconds instead of ~100 ms, which every simulated tap paid four times.
            key = serialization.load_pem_private_key(
                path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
            )
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TypeError(f"{path} is not an RSA key")
            _LOADED_KEYS[cache_key] = key
            return key
        key = new_rsa_key()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        tmp.chmod(0o600)
        tmp.replace(path)  # atomic: parallel test workers never read half a key
        return key

    def _cert(self, name: str, make: Callable[[], x509.Certificate]) -> x509.Certificate:
        path = self.root / f"{name}.crt.pem"
        if path.exists():
            return x509.load_pem_x509_certificate(path.read_bytes())
        cert = make()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tmp.replace(path)
        return cert

    def ca(self, kind: CaKind) -> SimulatedCa:
        if kind not in self._cas:
            label = "ca-auth" if kind is CaKind.USER_AUTH else "ca-sign"
            key = self._key(label)
            probe = SimulatedCa(kind, key=key)  # only signs if the certificate is not cached yet
            cert = self._cert(label, lambda: probe.certificate)
            self._cas[kind] = SimulatedCa(kind, key=key, certificate=cert)
        return self._cas[kind]

    def card_key(self, card: str, purpose: str) -> rsa.RSAPrivateKey:
        return self._key(f"card-{card}-{purpose}")

    def user_auth_certificate(
        self, card: str, *, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> x509.Certificate:
        key = self.card_key(card, "auth")
        seed = hashlib.sha256(b"readerd-sim-serial" + card.encode()).digest()
        serial = int.from_bytes(seed[:7], "big") | 1
        cn = "".join(_CN_ALPHABET[b % len(_CN_ALPHABET)] for b in seed[8:31])
        suffix = "" if not_before is None and not_after is None else f"-{not_before}-{not_after}"
        tag = hashlib.sha256(suffix.encode()).hexdigest()[:8] if suffix else "std"
        return self._cert(
            f"card-{card}-auth-v{USER_AUTH_PROFILE_VERSION}-{tag}",
            lambda: self.ca(CaKind.USER_AUTH).issue_user_auth(
                key, serial=serial, common_name=cn, not_before=not_before, not_after=not_after
            ),
        )

    def signature_certificate(self, card: str, attributes: Attributes) -> x509.Certificate:
        key = self.card_key(card, "sign")
        serial = int.from_bytes(hashlib.sha256(b"readerd-sim-sign" + card.encode()).digest()[:7], "big") | 1
        return self._cert(
            f"card-{card}-sign",
            lambda: self.ca(CaKind.SIGNATURE).issue_signature(key, attributes, serial=serial),
        )


def default_store_root() -> Path:
    """``$READERD_SIM_CACHE`` or ``~/.cache/readerd-sim``."""
    env = os.environ.get("READERD_SIM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "readerd-sim"
