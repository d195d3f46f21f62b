"""LocalValidator: every outcome, CRL handling (reload, stale policy, corrupt, forged), anchors, privacy."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
import structlog.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from protocols.jpki import JpkiSession, UserAuthCertificate
from protocols.jpki_constants import JpkiEf
from readerd.auth.certvalidation import (
    CertificateValidator,
    CrlFile,
    ExpiryBucket,
    LocalValidator,
    StaleCrlPolicy,
    ValidationOutcome,
    ValidationResult,
    ValidationWarning,
    fingerprint,
    load_trust_anchors,
)
from readerd.errors import (
    CertificateRejectedError,
    ConfigError,
    CrlUnavailableError,
    ReaderdError,
    TrustAnchorError,
)
from simulators.inprocess import InProcessReader
from simulators.mynumber import CardProfile, VirtualMyNumberCard, build_card, crl_for
from simulators.pki import key_usage, write_pem
from tests.auth.conftest import NOW, AuthPki, FakeClock, as_card_certificate

Outcome = ValidationOutcome

#: Checked by mypy, not at run time: the local validator fits the seam an online verifier plugs into.
_SEAM: type[CertificateValidator] = LocalValidator

FAR_FUTURE = datetime(2035, 1, 1, tzinfo=UTC)


def _valid(auth: AuthPki, bucket: ExpiryBucket = ExpiryBucket.MORE, warnings=()) -> ValidationResult:
    return ValidationResult(Outcome.VALID, bucket, tuple(warnings), None, fingerprint(auth.ca.certificate))


# --- outcomes ----------------------------------------------------------------------------------------
def test_a_good_certificate_is_valid(auth: AuthPki) -> None:
    result = auth.validator().validate(auth.issue())
    assert result == _valid(auth)
    assert result.valid
    assert result.check() is result
    assert result.event_fields() == {"validation": "valid", "expires_within_days": "more"}


def test_revoked_certificate(auth: AuthPki) -> None:
    auth.crl_file(auth.fresh_crl([0x5EED_0001, 77]))
    validator = auth.validator()
    assert validator.validate(auth.issue(serial=0x5EED_0001)).outcome is Outcome.REVOKED
    assert validator.validate(auth.issue(serial=0x5EED_0002)).outcome is Outcome.VALID
    with pytest.raises(CertificateRejectedError) as caught:
        validator.validate(auth.issue(serial=0x5EED_0001)).check()
    assert caught.value.outcome == "revoked"
    assert caught.value.code == "certificate_rejected"


def test_validity_period_boundaries(auth: AuthPki) -> None:
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    auth.crl_file(auth.fresh_crl(next_update=FAR_FUTURE))
    validator, cert = auth.validator(), auth.issue(not_before=start, not_after=end)
    expected = {
        start - timedelta(seconds=1): Outcome.NOT_YET_VALID,
        start: Outcome.VALID,
        end: Outcome.VALID,
        end + timedelta(seconds=1): Outcome.EXPIRED,
    }
    for moment, outcome in expected.items():
        auth.clock.now = moment
        assert validator.validate(cert).outcome is outcome, moment


def test_expired_and_not_yet_valid_at_the_default_clock(auth: AuthPki) -> None:
    validator = auth.validator()
    expired = auth.issue(not_before=NOW - timedelta(days=1900), not_after=NOW - timedelta(days=30))
    future = auth.issue(not_before=NOW + timedelta(days=1), not_after=NOW + timedelta(days=1900))
    assert validator.validate(expired).outcome is Outcome.EXPIRED
    assert validator.validate(future).outcome is Outcome.NOT_YET_VALID
    # No expiry bucket outside the validity period: nothing about the dates leaves.
    assert validator.validate(expired).expires_within_days is None
    assert validator.validate(future).expires_within_days is None


@pytest.mark.parametrize(
    ("remaining", "bucket"),
    [
        (timedelta(days=1), ExpiryBucket.WITHIN_30_DAYS),
        (timedelta(days=30), ExpiryBucket.WITHIN_30_DAYS),
        (timedelta(days=30, seconds=1), ExpiryBucket.WITHIN_90_DAYS),
        (timedelta(days=90), ExpiryBucket.WITHIN_90_DAYS),
        (timedelta(days=200), ExpiryBucket.WITHIN_365_DAYS),
        (timedelta(days=365), ExpiryBucket.WITHIN_365_DAYS),
        (timedelta(days=366), ExpiryBucket.MORE),
    ],
)
def test_expiry_bucket(auth: AuthPki, remaining: timedelta, bucket: ExpiryBucket) -> None:
    end = datetime(2030, 1, 1, tzinfo=UTC)
    auth.crl_file(auth.fresh_crl(next_update=FAR_FUTURE))
    cert = auth.issue(not_before=datetime(2025, 1, 1, tzinfo=UTC), not_after=end)
    auth.clock.now = end - remaining
    assert ExpiryBucket.for_remaining(remaining) is bucket
    assert auth.validator().validate(cert) == _valid(auth, bucket)


def test_foreign_ca_is_unknown_issuer(auth: AuthPki) -> None:
    result = auth.validator().validate(auth.issue(auth.foreign_ca))
    assert result == ValidationResult(Outcome.UNKNOWN_ISSUER)


def test_the_ca_read_from_the_card_is_never_trusted(auth: AuthPki) -> None:
    """The card hands over its CA certificate (EF 000B); a forged card would hand over its forger's."""
    validator = auth.validator()
    with structlog.testing.capture_logs() as logs:
        foreign = validator.validate(auth.issue(auth.foreign_ca), card_ca_der=auth.foreign_ca.der)
        impostor = validator.validate(auth.issue(auth.impostor_ca), card_ca_der=auth.impostor_ca.der)
    assert foreign.outcome is Outcome.UNKNOWN_ISSUER
    assert impostor.outcome is Outcome.BAD_SIGNATURE
    validated = [entry for entry in logs if entry["event"] == "certificate validated"]
    assert [entry["card_ca_is_anchor"] for entry in validated] == [False, False]


def test_same_name_other_key_is_bad_signature(auth: AuthPki) -> None:
    result = auth.validator().validate(auth.issue(auth.impostor_ca))
    assert result == ValidationResult(Outcome.BAD_SIGNATURE)


def test_tampered_certificate_signature_is_bad_signature(auth: AuthPki) -> None:
    der = bytearray(auth.issue().der)
    der[-1] ^= 0x01  # the last byte of the signature BIT STRING
    tampered = UserAuthCertificate.from_der(bytes(der))
    assert auth.validator().validate(tampered).outcome is Outcome.BAD_SIGNATURE


@pytest.mark.parametrize(
    "options",
    [
        {"rsa_padding": padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)},
        {"hash_algorithm": hashes.SHA224()},
    ],
    ids=["pss", "sha224"],
)
def test_other_signature_algorithms_are_refused(auth: AuthPki, options: dict[str, object]) -> None:
    result = auth.validator().validate(auth.issue(**options))
    assert result.outcome is Outcome.UNSUPPORTED_ALGORITHM
    assert result.detail == "signature_algorithm"


@pytest.mark.parametrize("hash_algorithm", [hashes.SHA384(), hashes.SHA512()], ids=["sha384", "sha512"])
def test_other_sha2_pkcs1_signatures_are_accepted(
    auth: AuthPki, hash_algorithm: hashes.HashAlgorithm
) -> None:
    assert auth.validator().validate(auth.issue(hash_algorithm=hash_algorithm)) == _valid(auth)


@pytest.mark.parametrize(
    "options",
    [
        {"usage": key_usage(non_repudiation=True)},  # a signature certificate's usage, no digitalSignature
        {"usage": key_usage(key_encipherment=True)},
        {"omit_key_usage": True},
    ],
    ids=["non_repudiation_only", "key_encipherment_only", "no_key_usage"],
)
def test_key_usage_must_include_digital_signature(auth: AuthPki, options: dict[str, object]) -> None:
    result = auth.validator().validate(auth.issue(**options))
    assert result == ValidationResult(Outcome.BAD_KEY_USAGE, anchor=fingerprint(auth.ca.certificate))


def test_a_ca_certificate_presented_as_a_user_certificate_is_refused(auth: AuthPki) -> None:
    result = auth.validator().validate(as_card_certificate(auth.ca.certificate))
    assert result.outcome is Outcome.BAD_KEY_USAGE


# --- CRL: staleness ----------------------------------------------------------------------------------
def _stale(auth: AuthPki, revoked: list[int] | None = None) -> x509.CertificateRevocationList:
    return auth.fresh_crl(revoked, this_update=NOW - timedelta(days=3), next_update=NOW - timedelta(days=1))


def test_stale_crl_refused_by_default(auth: AuthPki) -> None:
    auth.crl_file(_stale(auth))
    validator = auth.validator()
    assert validator.stale_policy is StaleCrlPolicy.REFUSE
    with structlog.testing.capture_logs() as logs:
        result = validator.validate(auth.issue())
    assert result.outcome is Outcome.CRL_STALE
    assert result.warnings == ()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["stale CRL: certificate refused"]
    assert warnings[0]["policy"] == "refuse"


def test_stale_crl_allowed_with_a_warning(auth: AuthPki) -> None:
    path = auth.crl_file(_stale(auth))
    validator = auth.validator(stale_policy=StaleCrlPolicy.ALLOW_WITH_WARNING)
    with structlog.testing.capture_logs() as logs:
        result = validator.validate(auth.issue())
    assert result == _valid(auth, warnings=[ValidationWarning.CRL_STALE])
    assert result.event_fields()["validation_warnings"] == ["crl_stale"]
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["stale CRL in use"]
    assert warnings[0]["policy"] == "allow_with_warning"
    assert warnings[0]["crl"] == str(path)


@pytest.mark.parametrize("policy", list(StaleCrlPolicy))
def test_a_stale_crl_still_proves_revocation(auth: AuthPki, policy: StaleCrlPolicy) -> None:
    auth.crl_file(_stale(auth, [4242]))
    result = auth.validator(stale_policy=policy).validate(auth.issue(serial=4242))
    assert result.outcome is Outcome.REVOKED


def test_stale_when_the_clock_passes_next_update(auth: AuthPki) -> None:
    auth.crl_file(auth.fresh_crl(next_update=NOW + timedelta(hours=5)))
    validator, cert = auth.validator(), auth.issue()
    auth.clock.advance(timedelta(hours=5))
    assert validator.validate(cert).outcome is Outcome.VALID  # exactly at nextUpdate: still fresh
    auth.clock.advance(timedelta(seconds=1))
    assert validator.validate(cert).outcome is Outcome.CRL_STALE


def test_crl_max_age(auth: AuthPki) -> None:
    """A CRL may promise a far nextUpdate; the operator can still insist on a recent one."""
    auth.crl_file(auth.fresh_crl(this_update=NOW - timedelta(days=10), next_update=NOW + timedelta(days=20)))
    cert = auth.issue()
    assert auth.validator(crl_max_age=timedelta(days=7)).validate(cert).outcome is Outcome.CRL_STALE
    assert auth.validator(crl_max_age=timedelta(days=11)).validate(cert).outcome is Outcome.VALID
    assert auth.validator().validate(cert).outcome is Outcome.VALID


# --- CRL: unavailable, corrupt, forged ---------------------------------------------------------------
def test_missing_crl_file_is_crl_unavailable(auth: AuthPki) -> None:
    validator = auth.validator(crls=[auth.directory / "nowhere.crl"])
    result = validator.validate(auth.issue())
    assert result.outcome is Outcome.CRL_UNAVAILABLE
    assert result.detail == "missing"
    assert result.anchor == fingerprint(auth.ca.certificate)
    assert result.event_fields()["validation_detail"] == "missing"
    with pytest.raises(CrlUnavailableError) as caught:
        validator.reload()
    assert caught.value.reason == "missing"
    assert caught.value.code == "crl_unavailable"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"<html>proxy error</html>",
        b"-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n",
        b"\x30\x82\x01\x00" + bytes(16),
    ],
    ids=["empty", "html", "truncated_pem", "truncated_der"],
)
def test_corrupt_crl_file_is_crl_unavailable(auth: AuthPki, content: bytes) -> None:
    auth.crl_file(content)
    result = auth.validator().validate(auth.issue())
    assert result.outcome is Outcome.CRL_UNAVAILABLE
    assert result.detail == "corrupt"


def test_unreadable_crl_file(auth: AuthPki) -> None:
    directory = auth.directory / "a-directory.crl"
    directory.mkdir()  # reading a directory fails with an OSError other than "not found", even as root
    result = auth.validator(crls=[directory]).validate(auth.issue())
    assert result.outcome is Outcome.CRL_UNAVAILABLE
    assert result.detail == "unreadable"


def test_der_crl_files_are_read_too(auth: AuthPki) -> None:
    path = auth.crl_file(auth.fresh_crl([31337]).public_bytes(serialization.Encoding.DER), "auth.der")
    validator = auth.validator(crls=[path])
    assert validator.validate(auth.issue(serial=31337)).outcome is Outcome.REVOKED
    assert validator.validate(auth.issue(serial=31338)).outcome is Outcome.VALID


def test_crl_signed_by_another_key(auth: AuthPki) -> None:
    """A CRL naming our CA but signed by someone else cannot vouch for anything."""
    auth.crl_file(auth.fresh_crl(signing_key=auth.impostor_ca.key))
    result = auth.validator().validate(auth.issue())
    assert result.outcome is Outcome.CRL_BAD_SIGNATURE


def test_a_forged_newer_crl_cannot_unrevoke(auth: AuthPki) -> None:
    genuine = auth.crl_file(auth.fresh_crl([9001], this_update=NOW - timedelta(hours=2)), "genuine.crl")
    forged = auth.crl_file(auth.fresh_crl(this_update=NOW, signing_key=auth.impostor_ca.key), "forged.crl")
    result = auth.validator(crls=[forged, genuine]).validate(auth.issue(serial=9001))
    assert result.outcome is Outcome.REVOKED


def test_the_newest_genuine_crl_is_used(auth: AuthPki) -> None:
    older = auth.crl_file(auth.fresh_crl(this_update=NOW - timedelta(hours=5)), "older.crl")
    newer = auth.crl_file(auth.fresh_crl([9002], this_update=NOW - timedelta(hours=1)), "newer.crl")
    cert = auth.issue(serial=9002)
    assert auth.validator(crls=[older, newer]).validate(cert).outcome is Outcome.REVOKED
    assert auth.validator(crls=[newer, older]).validate(cert).outcome is Outcome.REVOKED


def test_a_crl_of_another_issuer_does_not_count(auth: AuthPki) -> None:
    other = auth.crl_file(auth.fresh_crl(issuer=auth.foreign_ca), "other.crl")
    result = auth.validator(crls=[other]).validate(auth.issue())
    assert result.outcome is Outcome.CRL_UNAVAILABLE
    assert result.detail == "no_crl_for_issuer"


# --- CRL: reloading ----------------------------------------------------------------------------------
def test_crl_is_reloaded_when_the_file_changes(auth: AuthPki) -> None:
    validator, cert = auth.validator(), auth.issue(serial=0xABCDEF)
    assert validator.validate(cert).outcome is Outcome.VALID
    auth.crl_file(auth.fresh_crl([0xABCDEF], this_update=NOW - timedelta(minutes=5)))
    assert validator.validate(cert).outcome is Outcome.REVOKED  # no reload() call: the change was seen
    auth.crl_file(auth.fresh_crl(this_update=NOW - timedelta(minutes=1)))  # e.g. a lifted hold
    assert validator.validate(cert).outcome is Outcome.VALID


def test_crl_is_read_once_while_unchanged_and_again_when_touched(auth: AuthPki) -> None:
    validator, cert = auth.validator(), auth.issue()
    path = auth.directory / "auth.crl"
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            assert validator.validate(cert).valid
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same bytes, newer mtime
        assert validator.validate(cert).valid
    assert [entry["event"] for entry in logs].count("CRL loaded") == 2


def test_explicit_reload(auth: AuthPki) -> None:
    validator, cert = auth.validator(), auth.issue(serial=515)
    assert validator.validate(cert).valid
    auth.crl_file(auth.fresh_crl([515], this_update=NOW))
    validator.reload()  # returns quietly for a good file
    assert validator.validate(cert).outcome is Outcome.REVOKED
    auth.crl_file(b"garbage")
    with pytest.raises(CrlUnavailableError) as caught:
        validator.reload()
    assert caught.value.reason == "corrupt"
    assert validator.validate(cert).outcome is Outcome.REVOKED  # the last good CRL is still in force


def test_a_broken_replacement_keeps_the_last_good_crl(auth: AuthPki) -> None:
    auth.crl_file(auth.fresh_crl([616], this_update=NOW))
    validator, revoked, good = auth.validator(), auth.issue(serial=616), auth.issue(serial=617)
    assert validator.validate(revoked).outcome is Outcome.REVOKED

    with structlog.testing.capture_logs() as logs:
        path = auth.crl_file(b"<html>504 Gateway Timeout</html>")
        after_garbage = [validator.validate(revoked), validator.validate(good)]
    assert [r.outcome for r in after_garbage] == [Outcome.REVOKED, Outcome.VALID]
    assert all(r.warnings == (ValidationWarning.CRL_RELOAD_FAILED,) for r in after_garbage)
    failures = [entry for entry in logs if entry["event"] == "CRL not loaded"]
    assert len(failures) == 1  # one attempt per change of the file, not one per validation
    assert failures[0]["reason"] == "corrupt"
    assert failures[0]["keeping_previous"] is True

    path.unlink()
    assert validator.validate(revoked).outcome is Outcome.REVOKED
    auth.crl_file(auth.fresh_crl(this_update=NOW + timedelta(seconds=1)))
    assert validator.validate(revoked) == _valid(auth)  # the warning is gone with a good file


def test_crl_file_keeps_the_previous_snapshot_on_failure(auth: AuthPki) -> None:
    path = auth.crl_file(auth.fresh_crl([1]))
    crl_file = CrlFile(path)
    first = crl_file.snapshot()
    assert first.crl is not None
    assert first.error is None
    path.write_bytes(b"nope")
    with pytest.raises(CrlUnavailableError):
        crl_file.reload()
    kept = crl_file.snapshot()
    assert kept.crl is first.crl
    assert kept.error is not None
    assert kept.error.reason == "corrupt"


def test_concurrent_validations_while_the_crl_changes(auth: AuthPki) -> None:
    """Reader threads validate while the CRL is swapped under them: every answer is one of the two."""
    validator, cert = auth.validator(), auth.issue(serial=777)
    crls = [auth.fresh_crl([777], this_update=NOW), auth.fresh_crl(this_update=NOW)]
    stop = threading.Event()
    seen: list[Outcome] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                seen.append(validator.validate(cert).outcome)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for i in range(60):
        auth.crl_file(crls[i % 2])
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(seen) <= {Outcome.VALID, Outcome.REVOKED}
    assert seen
    auth.crl_file(crls[0])
    assert validator.validate(cert).outcome is Outcome.REVOKED


# --- trust anchors -----------------------------------------------------------------------------------
def test_anchor_directory_with_several_cas(auth: AuthPki) -> None:
    anchors = auth.directory / "anchors"
    anchors.mkdir()
    write_pem(anchors / "jlis-auth.pem", auth.ca.certificate)
    write_pem(anchors / "generation2.crt", auth.second_ca.certificate)
    (anchors / "README.txt").write_text("not a certificate: ignored by suffix\n")
    crls = [
        auth.crl_file(auth.fresh_crl([1001]), "jlis.crl"),
        auth.crl_file(auth.fresh_crl([2002], issuer=auth.second_ca), "gen2.crl"),
    ]
    validator = auth.validator(anchors=[anchors], crls=crls)
    first_fp, second_fp = fingerprint(auth.ca.certificate), fingerprint(auth.second_ca.certificate)
    assert {a.fingerprint for a in validator.anchors} == {first_fp, second_fp}
    first = validator.validate(auth.issue(serial=1000))
    second = validator.validate(auth.issue(auth.second_ca, serial=2000))
    assert (first.outcome, first.anchor) == (Outcome.VALID, first_fp)
    assert (second.outcome, second.anchor) == (Outcome.VALID, second_fp)
    assert validator.validate(auth.issue(serial=1001)).outcome is Outcome.REVOKED
    assert validator.validate(auth.issue(auth.second_ca, serial=2002)).outcome is Outcome.REVOKED
    # Each CA's revocations come from its own CRL only.
    assert validator.validate(auth.issue(auth.second_ca, serial=1001)).outcome is Outcome.VALID
    assert validator.validate(auth.issue(serial=2002)).outcome is Outcome.VALID
    assert validator.validate(auth.issue(auth.foreign_ca)).outcome is Outcome.UNKNOWN_ISSUER


def test_every_anchor_needs_its_own_crl(auth: AuthPki) -> None:
    validator = auth.validator(anchors=[auth.anchors(auth.ca, auth.second_ca)])  # one PEM bundle, two CAs
    assert validator.validate(auth.issue()).outcome is Outcome.VALID
    result = validator.validate(auth.issue(auth.second_ca))
    assert result.outcome is Outcome.CRL_UNAVAILABLE
    assert result.detail == "no_crl_for_issuer"


def test_two_anchors_with_one_name_key_rollover(auth: AuthPki) -> None:
    """Both keys configured (an old and a new generation under one name): each leaf finds its own key,
    and each key's CRL is told apart by its signature, not by the issuer name they share."""
    old_ca, new_ca = auth.ca, auth.impostor_ca
    crls = [
        auth.crl_file(auth.fresh_crl([11]), "old.crl"),
        auth.crl_file(auth.fresh_crl([22], issuer=new_ca), "new.crl"),
    ]
    validator = auth.validator(anchors=[auth.anchors(old_ca, new_ca)], crls=crls)
    old, new = validator.validate(auth.issue(old_ca)), validator.validate(auth.issue(new_ca))
    assert (old.outcome, old.anchor) == (Outcome.VALID, fingerprint(old_ca.certificate))
    assert (new.outcome, new.anchor) == (Outcome.VALID, fingerprint(new_ca.certificate))
    assert validator.validate(auth.issue(old_ca, serial=11)).outcome is Outcome.REVOKED
    assert validator.validate(auth.issue(old_ca, serial=22)).outcome is Outcome.VALID
    assert validator.validate(auth.issue(new_ca, serial=22)).outcome is Outcome.REVOKED
    assert validator.validate(auth.issue(new_ca, serial=11)).outcome is Outcome.VALID


def test_anchor_errors_are_configuration_errors(auth: AuthPki) -> None:
    crl = auth.crl_file(auth.fresh_crl())
    leaf_pem = auth.directory / "leaf.pem"
    leaf_pem.write_bytes(auth.issue().to_x509().public_bytes(serialization.Encoding.PEM))
    garbage = auth.directory / "garbage.pem"
    garbage.write_text("hello\n")
    empty_dir = auth.directory / "empty"
    empty_dir.mkdir()
    for source in (auth.directory / "missing.pem", leaf_pem, garbage, empty_dir):
        with pytest.raises(TrustAnchorError) as caught:
            LocalValidator([source], [crl])
        assert isinstance(caught.value, ConfigError)
        assert caught.value.code == "bad_trust_anchors"
    with pytest.raises(TrustAnchorError):
        load_trust_anchors([])


def test_the_local_validator_needs_a_crl(auth: AuthPki) -> None:
    with pytest.raises(ConfigError, match="CRL"):
        LocalValidator([auth.anchors()], [])
    with pytest.raises(ConfigError, match="crl_max_age"):
        LocalValidator([auth.anchors()], ["x.crl"], crl_max_age=timedelta(0))


def test_duplicate_anchors_are_loaded_once(auth: AuthPki) -> None:
    assert len(load_trust_anchors([auth.anchors(), auth.anchors(auth.ca, auth.ca)])) == 1


def test_the_clock_must_be_timezone_aware(auth: AuthPki) -> None:
    validator = auth.validator(clock=lambda: datetime(2026, 3, 1))  # naive on purpose
    with pytest.raises(TypeError):
        validator.validate(auth.issue())


# --- privacy -----------------------------------------------------------------------------------------
def _forbidden_strings(cert: UserAuthCertificate) -> list[str]:
    serial = cert.serial_number
    forbidden = [str(serial), f"{serial:x}", f"{serial:X}", cert.subject_cn]
    for moment in (cert.not_before, cert.not_after):
        forbidden += [moment.isoformat(), moment.strftime("%Y%m%d"), moment.strftime("%Y-%m-%d"), str(moment)]
    return forbidden


def test_results_and_logs_never_carry_certificate_details(auth: AuthPki) -> None:
    serial, cn = 0x1234_5678_9ABC_DEF, "QWERTYUIOPASDFGHJKLZXCV"
    not_before = datetime(2025, 4, 2, 3, 4, 5, tzinfo=UTC)
    not_after = datetime(2030, 4, 2, 3, 4, 5, tzinfo=UTC)
    common = {"serial": serial, "common_name": cn, "not_before": not_before, "not_after": not_after}
    certs = [
        auth.issue(**common),
        auth.issue(auth.impostor_ca, **common),
        auth.issue(omit_key_usage=True, **common),
    ]
    auth.crl_file(_stale(auth, [serial]))
    validator = auth.validator(stale_policy=StaleCrlPolicy.ALLOW_WITH_WARNING)
    with structlog.testing.capture_logs() as logs:
        results = [validator.validate(cert, card_ca_der=auth.ca.der) for cert in certs]
        results.append(validator.validate(auth.issue(**{**common, "serial": serial + 1})))  # valid, stale
        auth.clock.now = not_after + timedelta(days=1)
        results.append(validator.validate(certs[0]))
        auth.clock.now = not_before - timedelta(days=1)
        results.append(validator.validate(certs[0]))
    assert [r.outcome for r in results] == [
        Outcome.REVOKED,
        Outcome.BAD_SIGNATURE,
        Outcome.BAD_KEY_USAGE,
        Outcome.VALID,
        Outcome.EXPIRED,
        Outcome.NOT_YET_VALID,
    ]
    published = " ".join([*(repr(r) for r in results), *(json.dumps(r.event_fields()) for r in results)])
    logged = " ".join(repr(entry) for entry in logs)
    assert len(logs) >= len(results)
    for text in _forbidden_strings(certs[0]):
        assert text not in published, text
        assert text not in logged, text


# --- the whole path with the simulated card ----------------------------------------------------------
def _read_card(card: VirtualMyNumberCard) -> tuple[UserAuthCertificate, bytes]:
    reader = InProcessReader()
    reader.insert(card)
    session = JpkiSession(reader)
    return session.identify().certificate, session.read_certificate(JpkiEf.AUTH_CA_CERT)


def test_simulated_cards_through_jpki_session(auth: AuthPki, pki) -> None:
    alice, mallory = CardProfile(name="alice"), CardProfile(name="mallory", revoked=True)
    crl = auth.crl_file(crl_for([alice, mallory], pki, now=NOW))
    validator = auth.validator(crls=[crl])
    alice_cert, alice_ca = _read_card(build_card(alice, pki))
    mallory_cert, _ = _read_card(build_card(mallory, pki))
    assert alice_ca == auth.ca.der  # what the card says its CA is: used for nothing but a log field
    with structlog.testing.capture_logs() as logs:
        assert validator.validate(alice_cert, card_ca_der=alice_ca) == _valid(auth)
    assert [e["card_ca_is_anchor"] for e in logs if e["event"] == "certificate validated"] == [True]
    assert validator.validate(mallory_cert).outcome is Outcome.REVOKED


def test_simulated_expired_card(auth: AuthPki, pki) -> None:
    real_now = datetime.now(UTC)
    cert, _ = _read_card(build_card(CardProfile(name="olivia", expired=True), pki, now=real_now))
    crl = auth.crl_file(auth.fresh_crl(this_update=real_now))
    validator = auth.validator(crls=[crl], clock=FakeClock(real_now))
    assert validator.validate(cert).outcome is Outcome.EXPIRED


def test_error_classes_belong_to_the_one_tree() -> None:
    assert issubclass(TrustAnchorError, ConfigError)
    for cls in (TrustAnchorError, CrlUnavailableError, CertificateRejectedError):
        assert issubclass(cls, ReaderdError)
    codes = [TrustAnchorError.code, CrlUnavailableError.code, CertificateRejectedError.code, ConfigError.code]
    assert len(set(codes)) == len(codes)
