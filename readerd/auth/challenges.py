"""Proof of possession: a fresh challenge the card signs with its user-authentication key.

Reading the certificate proves nothing (anyone can copy it); a signature over a challenge the daemon
just made, checked with the certificate's public key, proves the card (and its PIN) were there. A
:class:`ChallengeStore` issues challenges bound to this kiosk, one reader and the issue time; each is
good for one redemption within its time to live, whatever the result, so a signature can never be
replayed.

Signed message (``challenge_message``), version 1; all integers unsigned big-endian:

=========  ====================  =====================================================================
offset     length                field
=========  ====================  =====================================================================
0          20                    ASCII ``readerd-challenge-v1`` (domain separation and version)
20         32                    nonce: 32 random bytes from :mod:`secrets`
52         2                     *k* = length of the kiosk id in UTF-8 bytes
54         *k*                   kiosk id, UTF-8
54+k       2                     *r* = length of the reader name in UTF-8 bytes
56+k       *r*                   reader name, UTF-8 (as the backend names it)
56+k+r     8                     issue time: milliseconds since 1970-01-01T00:00:00Z
=========  ====================  =====================================================================

The card does not hash: the host computes ``SHA-256(message)`` and sends the DER DigestInfo
(``protocols.jpki.digest_info``: ``3031300d060960864801650304020105000420 || digest``, 51 bytes) in
COMPUTE DIGITAL SIGNATURE; the card pads it as PKCS#1 v1.5 type 1 (``00 01 FF…FF 00 || DigestInfo``)
and applies its raw RSA key. :func:`verify_signature` undoes exactly that with the certificate's public
key and compares the recovered DigestInfo with the expected one, byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from protocols.jpki import UserAuthCertificate, digest_info
from readerd.errors import (
    ChallengeError,
    ChallengeExpiredError,
    ChallengeMismatchError,
    ChallengeUnknownError,
    ChallengeUsedError,
    ConfigError,
    SignatureInvalidError,
)

Clock = Callable[[], datetime]

CHALLENGE_DOMAIN = b"readerd-challenge-v1"
NONCE_LENGTH = 32
DIGEST_ALGORITHM = "sha256"
DEFAULT_TTL = timedelta(seconds=60)
DEFAULT_CAPACITY = 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_FIELD = 0xFFFF


def utc_now() -> datetime:
    return datetime.now(UTC)


def _millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ChallengeError("a challenge time must be timezone-aware")
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    if not 0 <= millis < 1 << 64:
        raise ChallengeError("a challenge time must lie after 1970")
    return millis


def _field(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if not raw or len(raw) > _MAX_FIELD:
        raise ChallengeError(f"the {what} must be 1..{_MAX_FIELD} UTF-8 bytes")
    return len(raw).to_bytes(2, "big") + raw


def challenge_message(nonce: bytes, kiosk: str, reader: str, issued_at: datetime) -> bytes:
    """The bytes whose SHA-256 the card signs (layout in the module docstring)."""
    if len(nonce) != NONCE_LENGTH:
        raise ChallengeError(f"a challenge nonce has {NONCE_LENGTH} bytes")
    return (
        CHALLENGE_DOMAIN
        + bytes(nonce)
        + _field(kiosk, "kiosk id")
        + _field(reader, "reader name")
        + _millis(issued_at).to_bytes(8, "big")
    )


@dataclass(frozen=True)
class Challenge:
    """One challenge. ``id`` names it on the control channel; ``nonce`` is what makes it unpredictable."""

    id: str
    nonce: bytes
    kiosk: str
    reader: str
    issued_at: datetime
    expires_at: datetime

    def message(self) -> bytes:
        return challenge_message(self.nonce, self.kiosk, self.reader, self.issued_at)

    def digest(self) -> bytes:
        return hashlib.sha256(self.message()).digest()

    def digest_info(self) -> bytes:
        """What the card is asked to sign (COMPUTE DIGITAL SIGNATURE data)."""
        return digest_info(self.digest(), DIGEST_ALGORITHM)


class ChallengeStore:
    """Outstanding challenges of one kiosk: single use, expiring, bounded, thread-safe.

    At ``capacity`` outstanding challenges the oldest is evicted (redeeming it then fails with
    :class:`ChallengeUnknownError`); :attr:`evicted` counts them. Redeemed ids are remembered (as many as
    ``capacity``) so a second redemption fails with :class:`ChallengeUsedError`. Issue times are
    truncated to milliseconds, the resolution of the signed message. ``clock`` returns aware datetimes.
    """

    def __init__(
        self,
        kiosk: str,
        *,
        ttl: timedelta = DEFAULT_TTL,
        capacity: int = DEFAULT_CAPACITY,
        clock: Clock = utc_now,
    ) -> None:
        if ttl <= timedelta(0):
            raise ConfigError("the challenge time to live must be positive")
        if capacity < 1:
            raise ConfigError("the challenge store needs room for at least one challenge")
        _field(kiosk, "kiosk id")
        self.kiosk = kiosk
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._outstanding: OrderedDict[str, Challenge] = OrderedDict()
        self._spent: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        """Challenges issued and not yet redeemed or evicted (expired ones included)."""
        with self._lock:
            return len(self._outstanding)

    def issue(self, reader: str) -> Challenge:
        now = self._clock()
        issued_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        challenge = Challenge(
            id=secrets.token_urlsafe(16),
            nonce=secrets.token_bytes(NONCE_LENGTH),
            kiosk=self.kiosk,
            reader=reader,
            issued_at=issued_at,
            expires_at=issued_at + self.ttl,
        )
        challenge.message()  # a reader name that cannot be encoded fails here, before it is stored
        with self._lock:
            while len(self._outstanding) >= self.capacity:
                self._outstanding.popitem(last=False)
                self.evicted += 1
            self._outstanding[challenge.id] = challenge
        return challenge

    def redeem(self, challenge_id: str, *, reader: str) -> Challenge:
        """Take the challenge out of the store, once. Any attempt spends it, even a failing one.

        Raises :class:`ChallengeUsedError` (redeemed before), :class:`ChallengeUnknownError` (never issued
        or evicted), :class:`ChallengeExpiredError` (older than the TTL), :class:`ChallengeMismatchError`
        (issued for another reader).
        """
        with self._lock:
            challenge = self._outstanding.pop(challenge_id, None)
            if challenge is None:
                if challenge_id in self._spent:
                    raise ChallengeUsedError("this challenge was already redeemed")
                raise ChallengeUnknownError("no such challenge (never issued here, or evicted)")
            self._spent[challenge_id] = None
            while len(self._spent) > self.capacity:
                self._spent.popitem(last=False)
        if self._clock() >= challenge.expires_at:
            raise ChallengeExpiredError(f"the challenge expired after {self.ttl.total_seconds():g} s")
        if challenge.reader != reader:
            raise ChallengeMismatchError("the challenge was issued for another reader")
        return challenge


def verify_signature(
    certificate: UserAuthCertificate | x509.Certificate, challenge: Challenge, signature: bytes
) -> None:
    """Check the card's signature over ``challenge`` with the certificate's public key.

    RSA PKCS#1 v1.5 type 1 over ``challenge.digest_info()``, as the card computes it (module docstring).
    Raises :class:`SignatureInvalidError`; returns ``None`` when the signature is good. Checks only the
    key: whether the certificate itself is acceptable is the validator's question
    (:mod:`readerd.auth.certvalidation`).
    """
    cert = certificate.to_x509() if isinstance(certificate, UserAuthCertificate) else certificate
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureInvalidError("the certificate's key is not RSA")
    if len(signature) != (public_key.key_size + 7) // 8:
        raise SignatureInvalidError("the signature length does not match the key")
    try:
        recovered = public_key.recover_data_from_signature(bytes(signature), padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        raise SignatureInvalidError("the signature does not verify with the certificate's key") from None
    if not hmac.compare_digest(recovered, challenge.digest_info()):
        raise SignatureInvalidError("the signature does not verify with the certificate's key")
