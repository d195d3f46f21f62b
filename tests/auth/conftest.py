"""A test PKI for certificate validation and proof of possession: the J-LIS-shaped CA the simulated cards
chain to, an impostor with the same name and another key, CAs with other names, and a fixed clock."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from protocols.jpki import UserAuthCertificate
from readerd.auth.certvalidation import LocalValidator
from simulators.mynumber import VirtualMyNumberCard, observe_cards
from simulators.pki import CaKind, PkiStore, SimulatedCa, foreign_ca_name, new_rsa_key, write_pem

#: "Now" for every validation unless a test moves the clock: inside the default leaf validity
#: (2025-10-27 .. 2030-10-28) and the CA's (2023-07-15 .. 2033-07-14).
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def as_card_certificate(cert: x509.Certificate) -> UserAuthCertificate:
    return UserAuthCertificate.from_der(cert.public_bytes(serialization.Encoding.DER))


@dataclass
class AuthPki:
    """The CAs, a clock and a directory, with helpers that write what an operator would install."""

    ca: SimulatedCa
    impostor_ca: SimulatedCa
    foreign_ca: SimulatedCa
    second_ca: SimulatedCa
    leaf_key: rsa.RSAPrivateKey
    directory: Path
    clock: FakeClock = field(default_factory=FakeClock)
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def issue(self, issuer: SimulatedCa | None = None, /, **options: Any) -> UserAuthCertificate:
        """A user-auth certificate (``issue_user_auth`` options) as the card would hand it over."""
        return as_card_certificate((issuer or self.ca).issue_user_auth(self.leaf_key, **options))

    def anchors(self, *cas: SimulatedCa) -> Path:
        """One PEM file holding those CA certificates (default: ``ca``)."""
        path = self.directory / f"anchors-{next(self._names)}.pem"
        return write_pem(path, *(c.certificate for c in cas or (self.ca,)))

    def fresh_crl(
        self, revoked: list[int] | None = None, issuer: SimulatedCa | None = None, **kw: Any
    ) -> x509.CertificateRevocationList:
        kw.setdefault("this_update", NOW - timedelta(hours=1))
        return (issuer or self.ca).crl(revoked or [], **kw)

    def crl_file(self, content: x509.CertificateRevocationList | bytes, name: str = "auth.crl") -> Path:
        """Write (or atomically replace, as a download job would) a CRL file."""
        path = self.directory / name
        if isinstance(content, bytes):
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
            return path
        return write_pem(path, content)

    def validator(
        self, anchors: list[Path] | None = None, crls: list[Path] | None = None, **kw: Any
    ) -> LocalValidator:
        """Default: ``ca`` as the only anchor and ``auth.crl`` (a fresh empty CRL unless written before)."""
        if crls is None:
            default = self.directory / "auth.crl"
            crls = [default if default.exists() else self.crl_file(self.fresh_crl())]
        kw.setdefault("clock", self.clock)
        return LocalValidator(anchors or [self.anchors()], crls, **kw)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiStore:
    return PkiStore(tmp_path_factory.mktemp("auth-pki"))


@pytest.fixture(scope="session")
def cas(pki: PkiStore) -> tuple[SimulatedCa, SimulatedCa, SimulatedCa, SimulatedCa, rsa.RSAPrivateKey]:
    """The cards' CA, an impostor (same name, other key), a foreign CA and a second trusted CA, and a leaf
    key: generated once per session (RSA-2048 key generation is the slow part)."""
    return (
        pki.ca(CaKind.USER_AUTH),
        SimulatedCa(),
        SimulatedCa(subject=foreign_ca_name()),
        SimulatedCa(subject=foreign_ca_name("JPKI TEST GENERATION 2")),
        new_rsa_key(),
    )


@pytest.fixture
def auth(
    cas: tuple[SimulatedCa, SimulatedCa, SimulatedCa, SimulatedCa, rsa.RSAPrivateKey], tmp_path: Path
) -> AuthPki:
    ca, impostor, foreign, second, key = cas
    return AuthPki(ca, impostor, foreign, second, key, tmp_path)


@pytest.fixture
def cards() -> Iterator[list[VirtualMyNumberCard]]:
    made: list[VirtualMyNumberCard] = []
    stop = observe_cards(made.append)
    yield made
    stop()
