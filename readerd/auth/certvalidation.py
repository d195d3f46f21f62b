"""Is the card's user-authentication certificate one we accept?

:class:`CertificateValidator` is the seam: the daemon asks it about a :class:`UserAuthCertificate` and
gets a :class:`ValidationResult` with one :class:`ValidationOutcome`, a distinct reason it can put in an
event. :class:`LocalValidator` answers from local files; an online verifier (OCSP, or the MyKey
platform's verification service) implements the same one method.

**Who may verify.** Verifying JPKI signatures and certificates as a business needs approval from the
competent minister under the JPKI Act (公的個人認証法: 主務大臣認定 as a 署名検証者 or 利用者証明検証者),
and J-LIS hands its revocation lists only to approved verifiers. :class:`LocalValidator` is for an
operator that holds that approval (and for tests with the simulator's PKI); a deployment without it
delegates through the protocol to an approved platform.

What :class:`LocalValidator` checks, in this order (the first failure is the outcome):

1. the issuer is one of the configured trust anchors (PEM files or directories given by the caller);
   the CA certificate read from the card (EF 000B) is **never** trusted, whatever it says;
2. the signature algorithm is RSA PKCS#1 v1.5 with SHA-256/384/512 (JPKI's; SHA-1 and PSS are refused)
   and the anchor's key verifies the certificate's signature (anchors with the issuer's name are tried,
   the one whose subject key identifier matches the authority key identifier first: key rollover);
3. the leaf has an RSA key and a KeyUsage extension with digitalSignature, and is not a CA;
4. the validity period contains the injected clock's "now";
5. revocation: the newest configured CRL that names the anchor as issuer *and* whose signature that
   anchor's key verifies; the certificate on it is ``revoked``; a CRL past its nextUpdate (or older
   than ``crl_max_age``) is stale: ``crl_stale``, or a warning with :attr:`StaleCrlPolicy.ALLOW_WITH_WARNING`.

CRL files are re-read when their stat identity (inode, size, mtime, ctime) changes, or on
:meth:`LocalValidator.reload`. A missing or corrupt file is ``crl_unavailable``, never a crash; if a
CRL loaded before becomes unreadable, the last good one stays in use (it still goes stale on its own
nextUpdate) and results carry the ``crl_reload_failed`` warning.

The JPKI hierarchy has one level (the J-LIS CA issues the card's certificate), so the "chain" is the
leaf and the anchor that signed it; intermediate CAs are not walked (configure the issuing CA itself).
``cryptography``'s ``PolicyBuilder`` verifier is not used: it reports failures as strings, not reasons.

**Privacy.** Results and log lines never carry the certificate's serial, subject CN or dates: notAfter
is the fifth birthday after issuance. Only a coarse :class:`ExpiryBucket` leaves this module.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, unique
from pathlib import Path
from typing import Protocol

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from protocols.jpki import UserAuthCertificate
from readerd.errors import CertificateRejectedError, ConfigError, CrlUnavailableError, TrustAnchorError

log = structlog.get_logger("readerd.certvalidation")

Clock = Callable[[], datetime]

#: Signature algorithms accepted on certificates and CRLs: RSA PKCS#1 v1.5 with SHA-2 (JPKI's family).
ACCEPTED_SIGNATURE_ALGORITHMS: dict[x509.ObjectIdentifier, hashes.HashAlgorithm] = {
    SignatureAlgorithmOID.RSA_WITH_SHA256: hashes.SHA256(),
    SignatureAlgorithmOID.RSA_WITH_SHA384: hashes.SHA384(),
    SignatureAlgorithmOID.RSA_WITH_SHA512: hashes.SHA512(),
}

#: Suffixes of the files read from a trust-anchor directory (other files there are ignored).
ANCHOR_SUFFIXES = (".pem", ".crt")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise TypeError("the validator's clock must return a timezone-aware datetime")
    return now.astimezone(UTC)


@unique
class ValidationOutcome(Enum):
    """Why a certificate was (not) accepted; the value is what events and control replies carry."""

    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    #: No configured trust anchor has the issuer's name (a foreign CA, or a J-LIS CA not configured).
    UNKNOWN_ISSUER = "unknown_issuer"
    #: An anchor has the issuer's name but its key does not verify the certificate (a forgery).
    BAD_SIGNATURE = "bad_signature"
    #: Signed with something other than RSA PKCS#1 v1.5 + SHA-2, or the leaf key is not RSA.
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    #: No KeyUsage, no digitalSignature in it, or a CA certificate presented as a user's.
    BAD_KEY_USAGE = "bad_key_usage"
    #: The certificate's extensions cannot be parsed.
    BAD_CERTIFICATE = "bad_certificate"
    #: The CRL is past its nextUpdate or older than the configured maximum age (policy: refuse).
    CRL_STALE = "crl_stale"
    #: No usable CRL for the issuer: file missing, unreadable or corrupt, or none names this issuer.
    CRL_UNAVAILABLE = "crl_unavailable"
    #: A CRL names the issuer but the anchor's key does not verify it (a forged or misplaced CRL).
    CRL_BAD_SIGNATURE = "crl_bad_signature"
    #: For delegating validators: the remote verifier could not be asked (LocalValidator never says it).
    VALIDATOR_UNAVAILABLE = "validator_unavailable"


@unique
class ValidationWarning(Enum):
    """Accepted, but something an operator should know about."""

    #: The CRL is stale and the policy allowed it.
    CRL_STALE = "crl_stale"
    #: The CRL file changed and could not be read: the last good CRL was used.
    CRL_RELOAD_FAILED = "crl_reload_failed"


@unique
class StaleCrlPolicy(Enum):
    REFUSE = "refuse"
    ALLOW_WITH_WARNING = "allow_with_warning"


@unique
class ExpiryBucket(Enum):
    """How soon a valid certificate expires, coarsely: the exact date would reveal the birthday."""

    WITHIN_30_DAYS = "30"
    WITHIN_90_DAYS = "90"
    WITHIN_365_DAYS = "365"
    MORE = "more"

    @classmethod
    def for_remaining(cls, remaining: timedelta) -> ExpiryBucket:
        for days, bucket in ((30, cls.WITHIN_30_DAYS), (90, cls.WITHIN_90_DAYS), (365, cls.WITHIN_365_DAYS)):
            if remaining <= timedelta(days=days):
                return bucket
        return cls.MORE


@dataclass(frozen=True)
class ValidationResult:
    """What a validator concluded. Holds no certificate data (serial, CN, dates): safe to publish."""

    outcome: ValidationOutcome
    #: Set when the certificate is inside its validity period (whatever the final outcome).
    expires_within_days: ExpiryBucket | None = None
    warnings: tuple[ValidationWarning, ...] = ()
    #: A fixed code refining the outcome, e.g. ``missing`` or ``corrupt`` for ``crl_unavailable``.
    detail: str | None = None
    #: Fingerprint of the trust anchor that issued the certificate (a CA, not a person), once known.
    anchor: str | None = None

    @property
    def valid(self) -> bool:
        return self.outcome is ValidationOutcome.VALID

    def check(self) -> ValidationResult:
        """``self`` if valid, else :class:`CertificateRejectedError` carrying the outcome."""
        if not self.valid:
            raise CertificateRejectedError(self.outcome.value)
        return self

    def event_fields(self) -> dict[str, object]:
        """The fields an event may carry."""
        fields: dict[str, object] = {"validation": self.outcome.value}
        if self.expires_within_days is not None:
            fields["expires_within_days"] = self.expires_within_days.value
        if self.warnings:
            fields["validation_warnings"] = [w.value for w in self.warnings]
        if self.detail is not None:
            fields["validation_detail"] = self.detail
        return fields


class CertificateValidator(Protocol):
    """Decides whether a card's user-authentication certificate is acceptable right now.

    ``card_ca_der`` is the CA certificate read from the card, passed for diagnostics or for a remote
    verifier that wants it; it must never be used as a trust anchor. Implementations return a result
    for every certificate problem and raise only for their own programming errors.
    """

    def validate(
        self, certificate: UserAuthCertificate, *, card_ca_der: bytes | None = None
    ) -> ValidationResult: ...


# --- trust anchors -----------------------------------------------------------------------------------
def fingerprint(certificate: x509.Certificate) -> str:
    """First 16 hex digits of the SHA-256 of the DER: names a CA in logs and results."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]


@dataclass(frozen=True)
class TrustAnchor:
    """A CA certificate the operator configured; its key is RSA (checked at load)."""

    certificate: x509.Certificate
    public_key: rsa.RSAPublicKey
    source: str
    fingerprint: str

    @property
    def subject(self) -> x509.Name:
        return self.certificate.subject

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def key_identifier(self) -> bytes | None:
        try:
            return self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return None


def _anchor_files(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(
            p
            for p in source.iterdir()
            if p.suffix.lower() in ANCHOR_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    if source.is_file():
        return [source]
    raise TrustAnchorError(f"trust anchor {source}: no such file or directory")


def _anchor(certificate: x509.Certificate, source: Path) -> TrustAnchor:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise TrustAnchorError(f"trust anchor {source}: a certificate without BasicConstraints") from None
    except (ValueError, x509.DuplicateExtension) as e:
        raise TrustAnchorError(f"trust anchor {source}: unparsable extensions: {e}") from e
    if not constraints.ca:
        raise TrustAnchorError(f"trust anchor {source}: a certificate that is not a CA")
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TrustAnchorError(f"trust anchor {source}: not an RSA key (JPKI CAs are RSA)")
    return TrustAnchor(certificate, public_key, str(source), fingerprint(certificate))


def load_trust_anchors(sources: Iterable[Path | str]) -> tuple[TrustAnchor, ...]:
    """CA certificates from PEM files (several per file allowed) and directories (``*.pem``, ``*.crt``).

    Any unreadable or non-CA entry is a :class:`TrustAnchorError` (a configuration error), and so is
    ending up with no anchor at all. Duplicates are dropped.
    """
    anchors: dict[str, TrustAnchor] = {}
    for source in sources:
        for path in _anchor_files(Path(source)):
            try:
                data = path.read_bytes()
            except OSError as e:
                raise TrustAnchorError(f"trust anchor {path}: {e.strerror or e}") from e
            try:
                certificates = x509.load_pem_x509_certificates(data)
            except ValueError as e:
                raise TrustAnchorError(f"trust anchor {path}: not PEM certificates") from e
            for certificate in certificates:
                anchor = _anchor(certificate, path)
                anchors.setdefault(anchor.fingerprint, anchor)
    if not anchors:
        raise TrustAnchorError("no trust anchors configured (no PEM certificate found)")
    return tuple(anchors.values())


# --- CRL files ---------------------------------------------------------------------------------------
@unique
class CrlProblem(Enum):
    MISSING = "missing"
    UNREADABLE = "unreadable"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class CrlSnapshot:
    """One CRL file as last seen: the last good CRL (if any) and the error of the last attempt (if any)."""

    path: Path
    crl: x509.CertificateRevocationList | None
    error: CrlUnavailableError | None
    _signed_by: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def signed_by(self, anchor: TrustAnchor) -> bool:
        """The anchor's key verifies this CRL (with an accepted algorithm); cached per anchor."""
        if self.crl is None:
            return False
        known = self._signed_by.get(anchor.fingerprint)
        if known is None:
            known = (
                self.crl.signature_algorithm_oid in ACCEPTED_SIGNATURE_ALGORITHMS
                and self.crl.is_signature_valid(anchor.public_key)
            )
            self._signed_by[anchor.fingerprint] = known
        return known


_StatKey = tuple[int, int, int, int, int]


class CrlFile:
    """A CRL file (PEM or DER), re-read when it changes. Thread-safe."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: _StatKey | None = None
        self._attempted = False
        self._snapshot = CrlSnapshot(self.path, None, None)

    def _stat(self) -> _StatKey | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def snapshot(self) -> CrlSnapshot:
        """The current CRL, re-reading the file first if it changed since the last look."""
        with self._lock:
            key = self._stat()
            if not self._attempted or key != self._seen:
                self._load(key)
            return self._snapshot

    def reload(self) -> CrlSnapshot:
        """Re-read now; raises :class:`CrlUnavailableError` if the file cannot be used (the last good
        CRL, if any, stays in use)."""
        with self._lock:
            self._load(self._stat())
            snapshot = self._snapshot
        if snapshot.error is not None:
            raise snapshot.error
        return snapshot

    def _read(self) -> x509.CertificateRevocationList:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise CrlUnavailableError(
                f"CRL {self.path}: no such file", reason=CrlProblem.MISSING.value
            ) from None
        except OSError as e:
            raise CrlUnavailableError(
                f"CRL {self.path}: {e.strerror or e}", reason=CrlProblem.UNREADABLE.value
            ) from e
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                crl = x509.load_pem_x509_crl(data)
            else:
                crl = x509.load_der_x509_crl(data)
            len(crl)  # touch the entries: a damaged list fails here, not on the first lookup
        except ValueError as e:
            raise CrlUnavailableError(f"CRL {self.path}: not a CRL", reason=CrlProblem.CORRUPT.value) from e
        return crl

    def _load(self, key: _StatKey | None) -> None:
        self._attempted = True
        self._seen = key
        previous = self._snapshot.crl
        try:
            crl = self._read()
        except CrlUnavailableError as e:
            self._snapshot = CrlSnapshot(self.path, previous, e)
            log.warning(
                "CRL not loaded",
                crl=str(self.path),
                reason=e.reason,
                keeping_previous=previous is not None,
            )
            return
        self._snapshot = CrlSnapshot(self.path, crl, None)
        log.info("CRL loaded", crl=str(self.path), entries=len(crl))


# --- the local validator -----------------------------------------------------------------------------
class LocalValidator:
    """Validates against configured trust anchors and CRL files (see the module docstring).

    ``trust_anchors``: PEM files and/or directories; ``crl_files``: one or more CRL files (PEM or DER),
    each matched to the anchor that issued and signed it. ``crl_max_age``: a CRL whose thisUpdate is
    older than this is stale even before its nextUpdate. ``clock`` returns an aware datetime.
    Thread-safe: validations may run on several reader threads at once.
    """

    def __init__(
        self,
        trust_anchors: Iterable[Path | str],
        crl_files: Iterable[Path | str],
        *,
        stale_policy: StaleCrlPolicy = StaleCrlPolicy.REFUSE,
        crl_max_age: timedelta | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.anchors = load_trust_anchors(trust_anchors)
        self._crls = tuple(CrlFile(path) for path in crl_files)
        if not self._crls:
            raise ConfigError("the local certificate validator needs at least one CRL file")
        if crl_max_age is not None and crl_max_age <= timedelta(0):
            raise ConfigError("crl_max_age must be positive")
        self.stale_policy = stale_policy
        self.crl_max_age = crl_max_age
        self._clock = clock

    def reload(self) -> None:
        """Re-read every CRL file now; raises the first :class:`CrlUnavailableError` after trying all."""
        errors: list[CrlUnavailableError] = []
        for crl_file in self._crls:
            try:
                crl_file.reload()
            except CrlUnavailableError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def validate(
        self, certificate: UserAuthCertificate, *, card_ca_der: bytes | None = None
    ) -> ValidationResult:
        now = _aware(self._clock())
        result = self._validate(certificate, now)
        extra: dict[str, object] = {}
        if card_ca_der is not None:  # diagnostics only: the card's CA is never a trust anchor
            extra["card_ca_is_anchor"] = any(anchor.der == bytes(card_ca_der) for anchor in self.anchors)
        log.info("certificate validated", anchor=result.anchor, **result.event_fields(), **extra)
        return result

    def _validate(self, certificate: UserAuthCertificate, now: datetime) -> ValidationResult:
        outcome = ValidationOutcome
        try:
            cert = certificate.to_x509()
            candidates = [anchor for anchor in self.anchors if anchor.subject == cert.issuer]
            if not candidates:
                return ValidationResult(outcome.UNKNOWN_ISSUER)
            hash_algorithm = ACCEPTED_SIGNATURE_ALGORITHMS.get(cert.signature_algorithm_oid)
            if hash_algorithm is None:
                return ValidationResult(outcome.UNSUPPORTED_ALGORITHM, detail="signature_algorithm")
            anchor = next(
                (a for a in _by_key_identifier(candidates, cert) if _signed_by(cert, a, hash_algorithm)), None
            )
            if anchor is None:
                return ValidationResult(outcome.BAD_SIGNATURE)
            if not isinstance(cert.public_key(), rsa.RSAPublicKey):
                return ValidationResult(
                    outcome.UNSUPPORTED_ALGORITHM, detail="key", anchor=anchor.fingerprint
                )
            if not _usable_for_user_auth(cert):
                return ValidationResult(outcome.BAD_KEY_USAGE, anchor=anchor.fingerprint)
        except (ValueError, x509.DuplicateExtension):
            return ValidationResult(outcome.BAD_CERTIFICATE)
        if now < cert.not_valid_before_utc:
            return ValidationResult(outcome.NOT_YET_VALID, anchor=anchor.fingerprint)
        if now > cert.not_valid_after_utc:
            return ValidationResult(outcome.EXPIRED, anchor=anchor.fingerprint)
        bucket = ExpiryBucket.for_remaining(cert.not_valid_after_utc - now)
        return self._revocation(cert, anchor, now, bucket)

    def _revocation(
        self, cert: x509.Certificate, anchor: TrustAnchor, now: datetime, bucket: ExpiryBucket
    ) -> ValidationResult:
        def result(
            outcome: ValidationOutcome,
            warnings: tuple[ValidationWarning, ...] = (),
            detail: str | None = None,
        ) -> ValidationResult:
            return ValidationResult(outcome, bucket, warnings, detail, anchor.fingerprint)

        usable: list[tuple[CrlSnapshot, x509.CertificateRevocationList]] = []
        forged = False
        problems: list[str] = []
        for crl_file in self._crls:
            snapshot = crl_file.snapshot()
            if snapshot.error is not None:
                problems.append(snapshot.error.reason)
            if snapshot.crl is None or snapshot.crl.issuer != anchor.subject:
                continue
            if snapshot.signed_by(anchor):
                usable.append((snapshot, snapshot.crl))
            else:
                forged = True
        if not usable:
            if forged:
                return result(ValidationOutcome.CRL_BAD_SIGNATURE)
            return result(
                ValidationOutcome.CRL_UNAVAILABLE, detail=problems[0] if problems else "no_crl_for_issuer"
            )
        chosen, crl = max(usable, key=lambda pair: pair[1].last_update_utc)
        warnings: list[ValidationWarning] = []
        if chosen.error is not None:
            warnings.append(ValidationWarning.CRL_RELOAD_FAILED)
        try:
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        except ValueError:
            return result(ValidationOutcome.CRL_UNAVAILABLE, detail=CrlProblem.CORRUPT.value)
        if revoked:  # a stale CRL still proves a revocation
            return result(ValidationOutcome.REVOKED, tuple(warnings))
        if self._stale(crl, now):
            if self.stale_policy is StaleCrlPolicy.REFUSE:
                log.warning(
                    "stale CRL: certificate refused", crl=str(chosen.path), policy=self.stale_policy.value
                )
                return result(ValidationOutcome.CRL_STALE, tuple(warnings))
            log.warning("stale CRL in use", crl=str(chosen.path), policy=self.stale_policy.value)
            warnings.append(ValidationWarning.CRL_STALE)
        return result(ValidationOutcome.VALID, tuple(warnings))

    def _stale(self, crl: x509.CertificateRevocationList, now: datetime) -> bool:
        next_update = crl.next_update_utc
        if next_update is None or now > next_update:
            return True
        return self.crl_max_age is not None and now - crl.last_update_utc > self.crl_max_age


def _by_key_identifier(candidates: Sequence[TrustAnchor], cert: x509.Certificate) -> list[TrustAnchor]:
    """Anchors whose subject key identifier matches the certificate's authority key identifier first."""
    try:
        wanted = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return list(candidates)
    return sorted(candidates, key=lambda a: wanted is None or a.key_identifier() != wanted)


def _signed_by(cert: x509.Certificate, anchor: TrustAnchor, hash_algorithm: hashes.HashAlgorithm) -> bool:
    try:
        anchor.public_key.verify(
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hash_algorithm
        )
    except InvalidSignature:
        return False
    return True


def _usable_for_user_auth(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return usage.digital_signature and not is_ca
