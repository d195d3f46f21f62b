"""Challenges: the signed byte layout, single use, expiry, eviction, thread safety, and verification
of real signatures made by the simulated card through JpkiSession."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from protocols.jpki import JpkiSession, UserAuthCertificate
from readerd.auth.challenges import (
    NONCE_LENGTH,
    Challenge,
    ChallengeStore,
    challenge_message,
    verify_signature,
)
from readerd.errors import (
    ChallengeError,
    ChallengeExpiredError,
    ChallengeMismatchError,
    ChallengeUnknownError,
    ChallengeUsedError,
    ConfigError,
    ReaderdError,
    SignatureInvalidError,
)
from simulators.inprocess import InProcessReader
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from tests.auth.conftest import NOW, AuthPki, FakeClock, as_card_certificate

READER = "Virtual PCD 00 00"
KIOSK = "kiosk-01"
TTL = timedelta(seconds=60)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> ChallengeStore:
    return ChallengeStore(KIOSK, ttl=TTL, capacity=8, clock=clock)


# --- the signed message ------------------------------------------------------------------------------
VECTOR_TIME = datetime(2026, 3, 1, 9, 0, 0, 123_000, tzinfo=UTC)
VECTOR_MESSAGE = bytes.fromhex(
    "726561646572642d6368616c6c656e67652d7631"  # "readerd-challenge-v1"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # nonce
    "0008" "6b696f736b2d3031"  # "kiosk-01"
    "0011" "5669727475616c205043442030302030"  "30"  # "Virtual PCD 00 00"
    "0000019ca8a03efb"  # 1772355600123 ms
)  # fmt: skip
VECTOR_DIGEST = "01d395eb590fa407f3ef77f20722dcc29785b5925bb6aa5c26e298e8b05ed866"


def test_message_layout_test_vector() -> None:
    message = challenge_message(bytes(range(32)), KIOSK, READER, VECTOR_TIME)
    assert message == VECTOR_MESSAGE
    challenge = Challenge("id", bytes(range(32)), KIOSK, READER, VECTOR_TIME, VECTOR_TIME + TTL)
    assert challenge.message() == VECTOR_MESSAGE
    assert challenge.digest().hex() == VECTOR_DIGEST
    sha256_prefix = bytes.fromhex("3031300d060960864801650304020105000420")
    assert challenge.digest_info() == sha256_prefix + bytes.fromhex(VECTOR_DIGEST)


def test_lengths_are_utf8_bytes_and_fields_cannot_slide() -> None:
    nonce = bytes(32)
    japanese = challenge_message(nonce, "区役所", "読取機", VECTOR_TIME)
    assert japanese[52:54] == (9).to_bytes(2, "big")  # three characters, nine UTF-8 bytes
    assert japanese[54:63] == "区役所".encode()
    # Without the length prefixes these two would sign the same bytes.
    assert challenge_message(nonce, "ab", "c", VECTOR_TIME) != challenge_message(
        nonce, "a", "bc", VECTOR_TIME
    )


@pytest.mark.parametrize(
    ("nonce", "kiosk", "reader", "when"),
    [
        (bytes(31), KIOSK, READER, VECTOR_TIME),
        (bytes(32), "", READER, VECTOR_TIME),
        (bytes(32), KIOSK, "", VECTOR_TIME),
        (bytes(32), KIOSK, "r" * 65536, VECTOR_TIME),
        (bytes(32), KIOSK, READER, datetime(2026, 3, 1)),  # naive on purpose
        (bytes(32), KIOSK, READER, datetime(1969, 12, 31, tzinfo=UTC)),
    ],
    ids=["short_nonce", "no_kiosk", "no_reader", "long_reader", "naive_time", "before_1970"],
)
def test_message_refuses_what_it_cannot_encode(nonce: bytes, kiosk: str, reader: str, when: datetime) -> None:
    with pytest.raises(ChallengeError):
        challenge_message(nonce, kiosk, reader, when)


# --- issuing -----------------------------------------------------------------------------------------
def test_issue_binds_kiosk_reader_and_time(clock: FakeClock) -> None:
    clock.now = datetime(2026, 3, 1, 9, 0, 0, 123_456, tzinfo=UTC)
    store = ChallengeStore(KIOSK, ttl=TTL, clock=clock)
    challenge = store.issue(READER)
    assert (challenge.kiosk, challenge.reader) == (KIOSK, READER)
    assert challenge.issued_at == datetime(2026, 3, 1, 9, 0, 0, 123_000, tzinfo=UTC)  # the signed resolution
    assert challenge.expires_at == challenge.issued_at + TTL
    assert len(challenge.nonce) == NONCE_LENGTH
    assert challenge.message()[-8:] == (1_772_355_600_123).to_bytes(8, "big")


def test_nonces_and_ids_are_fresh(store: ChallengeStore) -> None:
    challenges = [store.issue(READER) for _ in range(200)]
    assert len({c.nonce for c in challenges}) == 200
    assert len({c.id for c in challenges}) == 200
    assert len({c.digest() for c in challenges}) == 200


def test_an_unencodable_reader_name_is_refused_before_it_is_stored(store: ChallengeStore) -> None:
    with pytest.raises(ChallengeError):
        store.issue("")
    assert len(store) == 0


def test_store_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        ChallengeStore(KIOSK, ttl=timedelta(0))
    with pytest.raises(ConfigError):
        ChallengeStore(KIOSK, capacity=0)
    with pytest.raises(ChallengeError):
        ChallengeStore("")


# --- redeeming ---------------------------------------------------------------------------------------
def test_single_use(store: ChallengeStore) -> None:
    challenge = store.issue(READER)
    assert store.redeem(challenge.id, reader=READER) == challenge
    with pytest.raises(ChallengeUsedError) as caught:
        store.redeem(challenge.id, reader=READER)
    assert caught.value.code == "challenge_used"
    assert len(store) == 0


def test_unknown_challenge(store: ChallengeStore) -> None:
    store.issue(READER)
    with pytest.raises(ChallengeUnknownError) as caught:
        store.redeem("never-issued", reader=READER)
    assert caught.value.code == "challenge_unknown"


def test_expiry(store: ChallengeStore, clock: FakeClock) -> None:
    fresh, stale = store.issue(READER), store.issue(READER)
    clock.advance(TTL - timedelta(milliseconds=1))
    assert store.redeem(fresh.id, reader=READER) == fresh
    clock.advance(timedelta(milliseconds=1))
    with pytest.raises(ChallengeExpiredError) as caught:
        store.redeem(stale.id, reader=READER)
    assert caught.value.code == "challenge_expired"
    with pytest.raises(ChallengeUsedError):  # the failed attempt spent it
        store.redeem(stale.id, reader=READER)


def test_ttl_is_configurable(clock: FakeClock) -> None:
    store = ChallengeStore(KIOSK, ttl=timedelta(seconds=5), clock=clock)
    challenge = store.issue(READER)
    clock.advance(timedelta(seconds=5))
    with pytest.raises(ChallengeExpiredError):
        store.redeem(challenge.id, reader=READER)


def test_another_reader_cannot_redeem_and_spends_it(store: ChallengeStore) -> None:
    challenge = store.issue(READER)
    with pytest.raises(ChallengeMismatchError) as caught:
        store.redeem(challenge.id, reader="Virtual PCD 00 01")
    assert caught.value.code == "challenge_mismatch"
    with pytest.raises(ChallengeUsedError):
        store.redeem(challenge.id, reader=READER)


def test_oldest_is_evicted_at_capacity(clock: FakeClock) -> None:
    store = ChallengeStore(KIOSK, capacity=3, clock=clock)
    first, *rest = [store.issue(READER) for _ in range(4)]
    assert len(store) == 3
    assert store.evicted == 1
    with pytest.raises(ChallengeUnknownError):
        store.redeem(first.id, reader=READER)
    assert [store.redeem(c.id, reader=READER) for c in rest] == rest
    assert len(store) == 0


def test_memory_of_redeemed_ids_is_bounded(clock: FakeClock) -> None:
    store = ChallengeStore(KIOSK, capacity=2, clock=clock)
    spent = []
    for _ in range(3):
        challenge = store.issue(READER)
        store.redeem(challenge.id, reader=READER)
        spent.append(challenge)
    with pytest.raises(ChallengeUnknownError):  # forgotten: only the last `capacity` are remembered
        store.redeem(spent[0].id, reader=READER)
    for challenge in spent[1:]:
        with pytest.raises(ChallengeUsedError):
            store.redeem(challenge.id, reader=READER)


def _race_to_redeem(store: ChallengeStore, challenge_id: str, contenders: int) -> list[str]:
    """``contenders`` threads released together by a barrier, each redeeming the same challenge."""
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        try:
            store.redeem(challenge_id, reader=READER)
            result = "ok"
        except ReaderdError as e:
            result = e.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_redemption_has_exactly_one_winner() -> None:
    store = ChallengeStore(KIOSK, capacity=64)
    for _ in range(30):
        outcomes = _race_to_redeem(store, store.issue(READER).id, 16)
        assert sorted(outcomes) == ["challenge_used"] * 15 + ["ok"]


def test_concurrent_issue_respects_the_bound() -> None:
    capacity, threads_count, each = 500, 12, 150
    store = ChallengeStore(KIOSK, capacity=capacity)
    barrier = threading.Barrier(threads_count)
    issued: list[list[Challenge]] = [[] for _ in range(threads_count)]

    def work(index: int) -> None:
        barrier.wait()
        issued[index].extend(store.issue(f"reader {index}") for _ in range(each))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [c for batch in issued for c in batch]
    assert len({c.id for c in everything}) == threads_count * each
    assert len(store) == capacity
    assert store.evicted == threads_count * each - capacity
    redeemed = 0
    for challenge in everything:
        try:
            store.redeem(challenge.id, reader=challenge.reader)
            redeemed += 1
        except ChallengeUnknownError:
            pass
    assert redeemed == capacity
    assert len(store) == 0


# --- signatures: the card's, through JpkiSession -----------------------------------------------------
def _card_session(pki: PkiStore, name: str) -> tuple[JpkiSession, UserAuthCertificate]:
    reader = InProcessReader()
    reader.insert(build_card(CardProfile(name=name), pki))
    session = JpkiSession(reader)
    certificate = session.identify().certificate
    session.verify("1234")
    return session, certificate


def test_the_card_signature_verifies(pki: PkiStore, store: ChallengeStore) -> None:
    session, certificate = _card_session(pki, "alice")
    challenge = store.issue(READER)
    signature = session.sign(challenge.digest_info())
    redeemed = store.redeem(challenge.id, reader=READER)
    verify_signature(certificate, redeemed, signature)
    verify_signature(certificate.to_x509(), redeemed, signature)  # a parsed certificate works alike


def test_the_card_signs_exactly_what_pkcs1_v15_sha256_over_the_message_gives(
    pki: PkiStore, store: ChallengeStore
) -> None:
    """PKCS#1 v1.5 is deterministic: the card's signature equals a library signature of the message with
    the same key, so card, digest_info and verify_signature agree on every byte."""
    session, _ = _card_session(pki, "alice")
    challenge = store.issue(READER)
    expected = pki.card_key("alice", "auth").sign(challenge.message(), padding.PKCS1v15(), hashes.SHA256())
    assert session.sign(challenge.digest_info()) == expected


@pytest.mark.parametrize(
    "change",
    [
        {"reader": "Virtual PCD 00 01"},
        {"kiosk": "kiosk-02"},
        {"nonce": bytes(32)},
        {"issued_at": NOW + timedelta(milliseconds=1)},
    ],
    ids=["reader", "kiosk", "nonce", "time"],
)
def test_a_signature_is_bound_to_every_field(
    pki: PkiStore, clock: FakeClock, change: dict[str, object]
) -> None:
    session, certificate = _card_session(pki, "alice")
    challenge = ChallengeStore(KIOSK, clock=clock).issue(READER)
    signature = session.sign(challenge.digest_info())
    verify_signature(certificate, challenge, signature)
    tampered = dataclasses.replace(challenge, **change)  # type: ignore[arg-type]
    with pytest.raises(SignatureInvalidError) as caught:
        verify_signature(certificate, tampered, signature)
    assert caught.value.code == "signature_invalid"


def test_another_cards_key_does_not_verify(pki: PkiStore, store: ChallengeStore) -> None:
    alice, _ = _card_session(pki, "alice")
    _, bob_certificate = _card_session(pki, "bob")
    challenge = store.issue(READER)
    with pytest.raises(SignatureInvalidError):
        verify_signature(bob_certificate, challenge, alice.sign(challenge.digest_info()))


def _raw_rsa_type1(key: rsa.RSAPrivateKey, payload: bytes) -> bytes:
    """Sign ``payload`` as the card would (type-1 padding, raw RSA), whatever the payload is."""
    numbers = key.private_numbers()
    k = key.key_size // 8
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(payload)) + b"\x00" + payload
    return pow(int.from_bytes(block, "big"), numbers.d, numbers.public_numbers.n).to_bytes(k, "big")


def test_signatures_over_other_encodings_are_refused(auth: AuthPki, store: ChallengeStore) -> None:
    key = auth.leaf_key
    certificate = auth.issue()
    challenge = store.issue(READER)
    verify_signature(certificate, challenge, _raw_rsa_type1(key, challenge.digest_info()))  # the control
    sha384_info = (
        bytes.fromhex("3041300d060960864801650304020205000430") + hashlib.sha384(challenge.message()).digest()
    )
    for payload in (
        challenge.digest(),  # the bare digest, no DigestInfo
        sha384_info,  # another hash of the same message
        challenge.digest_info() + b"\x00",  # trailing garbage
    ):
        with pytest.raises(SignatureInvalidError):
            verify_signature(certificate, challenge, _raw_rsa_type1(key, payload))


@pytest.mark.parametrize(
    "signature",
    [b"", bytes(255), bytes(257), bytes(256), b"\xff" * 256],
    ids=["empty", "short", "long", "zero", "above_modulus"],
)
def test_malformed_signatures_are_refused(auth: AuthPki, store: ChallengeStore, signature: bytes) -> None:
    with pytest.raises(SignatureInvalidError):
        verify_signature(auth.issue(), store.issue(READER), signature)


def test_a_non_rsa_certificate_is_refused(auth: AuthPki, store: ChallengeStore) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(auth.ca.certificate.subject)
        .public_key(ec_key.public_key())
        .serial_number(5)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(auth.ca.key, hashes.SHA256())
    )
    with pytest.raises(SignatureInvalidError, match="not RSA"):
        verify_signature(as_card_certificate(certificate), store.issue(READER), bytes(256))


def test_error_classes_belong_to_the_one_tree() -> None:
    specific = [ChallengeUnknownError, ChallengeUsedError, ChallengeExpiredError, ChallengeMismatchError]
    assert all(issubclass(cls, ChallengeError) for cls in specific)
    assert issubclass(ChallengeError, ReaderdError)
    assert issubclass(SignatureInvalidError, ReaderdError)
    codes = [cls.code for cls in [*specific, ChallengeError, SignatureInvalidError]]
    assert len(set(codes)) == len(codes)
