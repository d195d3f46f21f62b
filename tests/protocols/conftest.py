from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from simulators.pki import SimulatedCa, new_rsa_key


@pytest.fixture(scope="session")
def test_ca() -> SimulatedCa:
    return SimulatedCa()


@pytest.fixture(scope="session")
def card_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def user_cert_der(test_ca: SimulatedCa, card_key: rsa.RSAPrivateKey) -> bytes:
    cert = test_ca.issue_user_auth(card_key, serial=0x1234_5678_9ABC, common_name="ABCDEFGHIJKLMNOPQRSTUVW")
    return cert.public_bytes(serialization.Encoding.DER)
