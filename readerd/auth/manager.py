"""JPKI proof of possession on the control channel: ``auth.begin``, ``auth.pin`` and MyKey enrolment.

Reading a certificate proves nothing (anyone can copy one); a signature over a fresh challenge, made by
the card after the citizen's PIN, does. This module owns the flow and its fail-closed rules
(docs/design.md D4); the card commands and the PIN policy are ``protocols.jpki.JpkiSession``'s, the challenge
format ``readerd.auth.challenges``', the certificate checks ``readerd.auth.certvalidation``'s.

The flow, as a kiosk UI drives it::

    auth.begin {reader}                      -> {auth_id, tries_left, last_try, expires_in}
    auth.pin   {auth_id, pin, allow_last_try} -> {verified: true, member_id?/pseudonym, assurance, ...}
    mykey.enroll {auth_id}                   -> {member_id, created}      (optional, after a success)

Rules, each tested on the card's own APDU record:

* An ``auth_id`` is bound to the ROUTER identity that asked for it and to the card insertion it was
  made for (``PresentCard.insertion``), lives ``session_ttl`` seconds and is spent by its first
  ``auth.pin``, whatever the outcome. Another caller, an unknown, expired or spent id, or a card that left
  the reader get ``auth_session_invalid`` and nothing is sent to the card.
* Inside the one card operation (one PC/SC transaction, reset at the end) the certificate is read again
  and its pseudonym compared with the bound card's before the tries query: a card swapped between two
  polls of the reader is caught there, before any VERIFY.
* ``auth.begin`` validates the certificate it reads (the same validator and reasons as ``auth.pin``)
  before the tries query: a revoked, expired or foreign card is refused (``certificate_rejected`` with
  ``validation``) without any VERIFY, so no try is spent on a card that could never pass.
* The tries are read before every VERIFY; blocked and (without ``allow_last_try: true``) last-try cards
  are refused without a VERIFY; exactly one VERIFY per ``auth.pin``, never repeated; a link failure
  during VERIFY is ``pin_result_unknown``. PINs are 4 digits (full-width digits NFKC-normalised).
* The PIN is held as a ``bytearray`` that is zeroed once the VERIFY has been built and sent. The JSON
  string it arrived in is immutable and is dropped with the request: Python cannot scrub it, so it is
  never logged, stored, put in an exception or an event.
* Success needs all of: VERIFY 9000, a signature over the challenge's DigestInfo that verifies with the
  certificate's key, and the validator's ``valid`` for the certificate. Then ``card.authenticated`` is
  published (identity, assurance, an ``expires_within_days`` bucket; no certificate field).
* A card on a simulated reader (a backend whose ``simulated`` is true) is checked by the simulated
  validator (the simulator's CA unless anchors are configured), a card on a real reader only by the
  configured anchors: the simulator's CA never vouches for a real card. Both events of a simulated
  card's authentication say ``"simulated": true``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from pathlib import Path

import structlog

from protocols.errors import PinBlockedError, ReaderdError
from protocols.jpki import JpkiSession, UserAuthCertificate, normalize_pin
from protocols.transport import Transport
from readerd import events as ev
from readerd.auth.audit import AuditLog
from readerd.auth.certvalidation import (
    CertificateValidator,
    LocalValidator,
    StaleCrlPolicy,
    ValidationOutcome,
    ValidationResult,
)
from readerd.auth.challenges import ChallengeStore, verify_signature
from readerd.bus.control import ArgDoc, CommandDoc, ControlRequest, JsonObject
from readerd.bus.server import Bus
from readerd.config import AuthConfig
from readerd.errors import (
    AuthNotConfiguredError,
    AuthSessionInvalidError,
    CardAbsentError,
    CertificateRejectedError,
    Refusal,
    StoreBusyError,
    StoreUnavailableError,
    UnknownReaderError,
)
from readerd.reading.backends import Backend
from readerd.reading.identity import Identity, IdentityResolver
from readerd.reading.sessions import CardSessions, PresentCard

log = structlog.get_logger("readerd.auth")

#: What ``card.authenticated`` says was proven: the PIN and a signature by the card's user-auth key.
ASSURANCE = "jpki_pin_signature"


class _State(Enum):
    PENDING = "pending"  # auth.begin answered; auth.pin may come
    AUTHENTICATED = "authenticated"  # auth.pin succeeded; one mykey.* command may come


@dataclass
class _AuthSession:
    auth_id: str
    peer: bytes
    reader: str
    insertion: int
    pseudonym: str
    expires_at: float
    state: _State = _State.PENDING
    identity: Identity | None = field(default=None)
    simulated: bool = False  # the card is on a simulated reader


def build_validator(
    config: AuthConfig, *, simulated_trust: tuple[Path, Path] | None
) -> CertificateValidator | None:
    """The local validator from the configuration; for the sim backend's readers without configured
    anchors, the simulator's test CA and CRL (``simulated_trust``; never pass them for a real reader's
    validator). ``None``: nothing configured, auth refused."""
    anchors: Sequence[Path | str] = config.trust_anchors
    crls: Sequence[Path | str] = config.crl_files
    if not anchors and simulated_trust is not None:
        anchors, crls = [simulated_trust[0]], [simulated_trust[1]]
    if not anchors:
        return None
    max_age = timedelta(hours=config.crl_max_age_hours) if config.crl_max_age_hours else None
    return LocalValidator(anchors, crls, stale_policy=StaleCrlPolicy(config.stale_crl), crl_max_age=max_age)


class AuthManager:
    """The ``auth.*`` and ``mykey.*`` control commands of one daemon."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        kiosk: str,
        sessions: CardSessions,
        backends: Sequence[Backend],
        resolver: IdentityResolver,
        validator: CertificateValidator | None,
        publish: Callable[[ev.Event], object],
        audit: AuditLog,
        clock: Callable[[], float] = time.monotonic,
        simulated_validator: CertificateValidator | None = None,
    ) -> None:
        """``validator`` checks the certificates of cards on real readers; ``simulated_validator`` those
        on a simulated backend's readers (None: their authentications are refused)."""
        self.config = config
        self.sessions = sessions
        self.backends = backends
        self.resolver = resolver
        self.validator = validator
        self.simulated_validator = simulated_validator
        self.publish = publish
        self.audit = audit
        self.clock = clock
        self.challenges = ChallengeStore(kiosk, ttl=timedelta(seconds=config.session_ttl))
        self._lock = threading.Lock()
        self._sessions: dict[str, _AuthSession] = {}

    def register(self, bus: Bus) -> None:
        auth_id = {"auth_id": ArgDoc("string", True, "from auth.pin, in the same session")}
        bus.register_command(
            "auth.begin",
            self.begin,
            spec=CommandDoc(
                "start a PIN authentication of the My Number Card on a reader: its tries left",
                {"reader": ArgDoc("string", True, "the reader the card is on")},
            ),
        )
        bus.register_command(
            "auth.pin",
            self.pin,
            spec=CommandDoc(
                "send the PIN (the card signs a fresh challenge); readerctl auth asks for it unseen",
                {
                    "auth_id": ArgDoc("string", True, "from auth.begin, in the same session"),
                    "pin": ArgDoc("string", True, "the 4-digit user-auth PIN"),
                    "allow_last_try": ArgDoc("boolean", False, "send it even on the last try"),
                },
            ),
        )
        bus.register_command(
            "mykey.enroll",
            self.enroll,
            spec=CommandDoc("enrol the authenticated card: its member ID", auth_id),
        )
        bus.register_command(
            "mykey.unenroll",
            self.unenroll,
            spec=CommandDoc("remove the authenticated card's enrolment (the citizen withdraws)", auth_id),
        )
        bus.register_command(  # staff confirm the person
            "mykey.relink",
            self.relink,
            role="operator",
            spec=CommandDoc(
                "move a member ID to the authenticated card's renewed certificate (audited)",
                {
                    **auth_id,
                    "member_id": ArgDoc("string", True, "the member ID to move"),
                    "reason": ArgDoc("string", True, "why, 1..200 characters (audited)"),
                },
            ),
        )

    # -- helpers --------------------------------------------------------------------------------------
    def _backend(self, reader: str) -> Backend:
        found = [backend for backend in self.backends if backend.has_reader(reader)]
        if len(found) > 1:  # a real reader named as a simulated one: which card is which is unknown
            raise UnknownReaderError(f"reader {reader!r} is on more than one backend")
        if not found:
            raise UnknownReaderError(f"no reader {reader!r}")
        return found[0]

    def _validator(self, simulated: bool) -> CertificateValidator | None:
        return self.simulated_validator if simulated else self.validator

    def _pseudonym(self, certificate: UserAuthCertificate) -> str:
        return self.resolver.jpki(certificate).pseudonym

    def _read_bound_card(self, session: JpkiSession, bound: str) -> UserAuthCertificate:
        """The certificate of the card now in the reader if it is the bound one; else nothing more is sent."""
        certificate = session.identify().certificate
        if self._pseudonym(certificate) != bound:
            raise AuthSessionInvalidError("another card is in the reader", reason="card_changed")
        return certificate

    def _take(self, args: JsonObject, peer: bytes, state: _State) -> _AuthSession:
        """The caller's session in ``state``, removed from the table (single use)."""
        auth_id = args.get("auth_id")
        if not isinstance(auth_id, str) or not auth_id:
            raise Refusal("bad_request", "auth_id is required")
        with self._lock:
            now = self.clock()
            for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[key]
            session = self._sessions.get(auth_id)
            if session is None or session.state is not state:
                raise AuthSessionInvalidError(
                    "no such authentication (unknown, expired or spent)", reason="unknown"
                )
            if not secrets.compare_digest(session.peer, peer):
                log.warning("auth_id used by another caller", reader=session.reader)
                self.audit.append("auth_foreign_caller", reader=session.reader)
                raise AuthSessionInvalidError(
                    "this authentication belongs to another caller", reason="other_caller"
                )
            del self._sessions[auth_id]
        return session

    def spend_proof(self, auth_id: object, peer: bytes, reader: object) -> Identity:
        """Spend a PIN and signature proof on a command that moves value: the caller's own ``auth.pin``
        result, made on ``reader`` during the card's present insertion, usable once (as a ``mykey.*``
        command would use it). Raises :class:`AuthSessionInvalidError` (reason ``other_reader`` when
        the proof was made on another reader)."""
        auth = self._take({"auth_id": auth_id}, peer, _State.AUTHENTICATED)
        if auth.identity is None:  # set together with the AUTHENTICATED state
            raise AuthSessionInvalidError("not authenticated", reason="unknown")
        if reader != auth.reader:
            raise AuthSessionInvalidError(
                f"this proof was made on {auth.reader}, not on {reader}", reason="other_reader"
            )
        self._still_present(auth)
        return auth.identity

    def _still_present(self, session: _AuthSession) -> PresentCard:
        present = self.sessions.present(session.reader)
        if present is None or present.insertion != session.insertion:
            raise AuthSessionInvalidError("the card left the reader since auth.begin", reason="card_changed")
        return present

    def _failed(self, reader: str, error: BaseException, *, simulated: bool) -> None:
        code = error.code if isinstance(error, ReaderdError) else "internal_error"
        facts = error.details() if isinstance(error, ReaderdError) else {}
        marks = {"simulated": True} if simulated else {}
        self.publish(ev.card_auth_failed(reader, code, **facts, **marks))
        log.info("authentication failed", reader=reader, reason=code, **facts, **marks)

    # -- auth.begin -----------------------------------------------------------------------------------
    def begin(self, request: ControlRequest) -> Future[JsonObject]:
        reader = request.args.get("reader")
        if not isinstance(reader, str) or not reader:
            raise Refusal("bad_request", "reader is required")
        backend = self._backend(reader)
        simulated = _simulated(backend)
        validator = self._validator(simulated)
        if validator is None:
            raise AuthNotConfiguredError("no trust anchors or CRL configured ([auth] in the configuration)")
        present = self.sessions.present(reader)
        if present is None:
            raise CardAbsentError(f"no identified My Number Card on {reader}")
        bound = present.identity.pseudonym

        def operation(transport: Transport) -> JsonObject:
            session = JpkiSession(transport)
            certificate = self._read_bound_card(session, bound)
            _refuse_unless_valid(validator.validate(certificate))  # before the tries query: no VERIFY at all
            status = session.pin_status()
            return {"tries_left": status.tries_left, "blocked": status.blocked}

        result: Future[JsonObject] = Future()

        def done(card: Future[JsonObject]) -> None:
            try:
                status = card.result()
                if status["blocked"]:
                    raise PinBlockedError(
                        0x6984, message="the PIN is blocked: the citizen must visit the office"
                    )
                auth = _AuthSession(
                    auth_id=secrets.token_urlsafe(16),
                    peer=request.peer,
                    reader=reader,
                    insertion=present.insertion,
                    pseudonym=bound,
                    expires_at=self.clock() + self.config.session_ttl,
                    simulated=simulated,
                )
                self._still_present(auth)
                with self._lock:
                    self._sessions[auth.auth_id] = auth
                tries = int(status["tries_left"])
                log.info("authentication begun", reader=reader, tries_left=tries)
                result.set_result(
                    {
                        "auth_id": auth.auth_id,
                        "reader": reader,
                        "tries_left": tries,
                        "last_try": tries == 1,
                        "expires_in": self.config.session_ttl,
                    }
                )
            except BaseException as e:  # handed to the caller with the reply
                self._failed(reader, e, simulated=simulated)
                result.set_exception(e)

        backend.on_card(reader, operation).add_done_callback(done)
        return result

    # -- auth.pin -------------------------------------------------------------------------------------
    def pin(self, request: ControlRequest) -> Future[JsonObject]:
        args = request.args
        allow_last_try = args.get("allow_last_try", False)
        if not isinstance(allow_last_try, bool):
            raise Refusal("bad_request", "allow_last_try must be true or false")
        raw_pin = args.get("pin")
        if not isinstance(raw_pin, str):
            raise Refusal("bad_request", "pin is required (a string of 4 digits)")
        auth = self._take(args, request.peer, _State.PENDING)
        pin = normalize_pin(raw_pin)  # PinFormatError (no PIN in it) before the card is touched
        try:
            self._still_present(auth)
            backend = self._backend(auth.reader)
            challenge = self.challenges.issue(auth.reader)
        except BaseException:
            pin[:] = bytes(len(pin))
            raise

        def operation(transport: Transport) -> JsonObject:
            try:
                session = JpkiSession(transport)
                certificate = self._read_bound_card(session, auth.pseudonym)
                session.verify(pin, allow_last_try=allow_last_try)
            finally:
                pin[:] = bytes(len(pin))
            signature = session.sign(challenge.digest_info())
            session.logout()
            return {"certificate": certificate, "signature": signature}

        result: Future[JsonObject] = Future()

        def done(card: Future[JsonObject]) -> None:
            pin[:] = bytes(len(pin))  # also when the operation never ran (card gone, reader unknown)
            try:
                result.set_result(self._conclude(auth, card.result(), challenge.id, allow_last_try))
            except BaseException as e:  # handed to the caller with the reply
                self._failed(auth.reader, e, simulated=auth.simulated)
                result.set_exception(e)

        if allow_last_try:
            self.audit.append("pin_allow_last_try", reader=auth.reader, pseudonym=auth.pseudonym)
        backend.on_card(auth.reader, operation).add_done_callback(done)
        return result

    def _conclude(
        self, auth: _AuthSession, card: JsonObject, challenge_id: str, last_try: bool
    ) -> JsonObject:
        certificate: UserAuthCertificate = card["certificate"]
        challenge = self.challenges.redeem(challenge_id, reader=auth.reader)
        verify_signature(certificate, challenge, card["signature"])
        validator = self._validator(auth.simulated)
        if validator is None:  # auth.begin refuses without one; a reload may not take it away
            raise AuthNotConfiguredError("no certificate validator")
        validation = validator.validate(certificate)
        if not validation.valid:
            raise CertificateRejectedError(validation.outcome.value)
        identity = self.resolver.jpki(certificate)
        auth.identity = identity
        auth.state = _State.AUTHENTICATED
        auth.expires_at = self.clock() + self.config.session_ttl
        with self._lock:
            self._sessions[auth.auth_id] = auth
        public = identity.public_fields()
        fields = validation.event_fields()
        marks = {"simulated": True} if auth.simulated else {}
        self.publish(ev.card_authenticated(auth.reader, public, ASSURANCE, {**fields, **marks}))
        log.info("card authenticated", reader=auth.reader, pseudonym=identity.pseudonym, last_try=last_try)
        return {"verified": True, "auth_id": auth.auth_id, **public, "assurance": ASSURANCE, **fields}

    # -- MyKey enrolment ------------------------------------------------------------------------------
    def _authenticated(self, request: ControlRequest) -> tuple[_AuthSession, Identity]:
        auth = self._take(request.args, request.peer, _State.AUTHENTICATED)
        if auth.identity is None:  # set together with the AUTHENTICATED state
            raise AuthSessionInvalidError("not authenticated", reason="unknown")
        return auth, auth.identity

    @contextmanager
    def _directory_work(self, auth: _AuthSession) -> Iterator[None]:
        """Enrolment, withdrawal and relink change the member directory, which in a ward is the shared
        store's: when it cannot be reached, the citizen's proof is given back (the same ``auth_id`` works
        again within its lifetime, no second PIN) and the caller is told what to do."""
        try:
            yield
        except (StoreUnavailableError, StoreBusyError) as e:
            with self._lock:
                self._sessions[auth.auth_id] = auth
            log.warning("member directory unavailable", reader=auth.reader, error=str(e))
            raise Refusal(
                "directory_unavailable",
                "the member directory cannot be reached, so nothing was changed: try again in a moment "
                "with the same authentication; if it persists, staff check the kiosk's link to the "
                "ward's shared store (readerctl doctor)",
            ) from e

    def enroll(self, request: ControlRequest) -> JsonObject:
        """Issue (or give back: idempotent) the member ID of the authenticated card."""
        auth, identity = self._authenticated(request)
        with self._directory_work(auth):
            known = self.resolver.directory.lookup(identity.pseudonym)
            entry = known or self.resolver.directory.enroll(identity.pseudonym)
        if known is None:
            self.audit.append(
                "enroll", reader=auth.reader, pseudonym=entry.pseudonym, member_id=entry.member_id
            )
        self.publish(
            ev.member_enrolled(
                auth.reader, entry.member_id, entry.pseudonym, entry.mykey_id, created=known is None
            )
        )
        return _entry_reply(entry.member_id, entry.mykey_id, created=known is None)

    def unenroll(self, request: ControlRequest) -> JsonObject:
        """Remove the authenticated card's enrolment (the citizen withdraws)."""
        auth, identity = self._authenticated(request)
        with self._directory_work(auth):
            entry = self.resolver.directory.unenroll(identity.pseudonym)
        if entry is not None:
            self.audit.append(
                "unenroll", reader=auth.reader, pseudonym=entry.pseudonym, member_id=entry.member_id
            )
            self.publish(ev.member_withdrawn(auth.reader, entry.member_id, entry.pseudonym, entry.mykey_id))
        return {"unenrolled": entry is not None}

    def relink(self, request: ControlRequest) -> JsonObject:
        """Move a member ID to the authenticated card's new certificate (renewal after 5 years).

        The renewed certificate has a new serial, hence a new pseudonym, and the old one is revoked, so it
        cannot prove anything any more: staff confirm the person and give a ``reason``, which the audit
        log keeps with both pseudonyms (docs/design.md D11).
        """
        member_id = request.args.get("member_id")
        reason = request.args.get("reason")
        if not isinstance(member_id, str) or not member_id:
            raise Refusal("bad_request", "member_id is required")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise Refusal("bad_request", "a reason of 1..200 characters is required (it is audited)")
        auth, identity = self._authenticated(request)
        try:
            with self._directory_work(auth):
                before = self.resolver.directory.by_member_id(member_id)
                entry = self.resolver.directory.relink(member_id, identity.pseudonym)
        except KeyError:
            raise Refusal("unknown_member", "no such member_id") from None
        except ValueError as e:
            raise Refusal("already_enrolled", str(e)) from None
        self.audit.append(
            "relink",
            reader=auth.reader,
            member_id=member_id,
            old_pseudonym=before.pseudonym if before else None,
            pseudonym=entry.pseudonym,
            reason=reason.strip(),
        )
        self.publish(
            ev.member_enrolled(auth.reader, entry.member_id, entry.pseudonym, entry.mykey_id, created=False)
        )
        return _entry_reply(entry.member_id, entry.mykey_id, created=False)


#: What the citizen or staff do next when ``auth.begin`` refuses a certificate (other outcomes: foreign).
_NEXT_STEP: dict[ValidationOutcome, str] = {
    ValidationOutcome.REVOKED: "the card's certificate is revoked: renew it at the ward office",
    ValidationOutcome.EXPIRED: "the card's certificate has expired: renew it at the ward office",
    ValidationOutcome.NOT_YET_VALID: "the card's certificate is not valid yet: staff check the kiosk's clock",
    ValidationOutcome.CRL_STALE: "the revocation list is out of date: staff update it, then try again",
    ValidationOutcome.CRL_UNAVAILABLE: "no usable revocation list: staff install it, then try again",
    ValidationOutcome.CRL_BAD_SIGNATURE: "the revocation list is not genuine: staff replace it",
    ValidationOutcome.VALIDATOR_UNAVAILABLE: "the certificate verifier cannot be reached: try again later",
}


def _refuse_unless_valid(validation: ValidationResult) -> None:
    """Refuse a certificate ``auth.pin`` would reject, with the validator's reason and what to do next;
    no PIN is asked for (and no try spent) on a card that could never pass."""
    if validation.valid:
        return
    outcome = validation.outcome
    step = _NEXT_STEP.get(outcome, "this card is not one this kiosk accepts: ask staff")
    raise Refusal(
        "certificate_rejected",
        f"certificate not accepted ({outcome.value}): {step}",
        validation=outcome.value,
    )


def _simulated(backend: Backend) -> bool:
    """The backend's cards are the simulator's (``SimBackend.simulated``); real backends lack the flag."""
    return getattr(backend, "simulated", False) is True


def _entry_reply(member_id: str, mykey_id: str | None, *, created: bool) -> JsonObject:
    reply: JsonObject = {"member_id": member_id, "created": created}
    if mykey_id is not None:
        reply["mykey_id"] = mykey_id
    return reply
