"""Running a card session for a backend: recognise, identify, and turn the outcome into events.

Backends own hardware and threads; this module owns what happens once a card is in the field, so that
PC/SC, nfcpy and the simulator produce exactly the same events for the same card. Events go to a sink as
they happen (``card.presented`` before the certificate read, so a kiosk screen can say "reading...").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from protocols.errors import (
    ApduError,
    AuthRequiredError,
    BadResponseError,
    CardRemovedError,
    DeniedCommandError,
    NotJpkiCardError,
    ReaderdError,
    TransportError,
)
from protocols.jpki import JpkiSession, ReadPath
from protocols.transport import Transport
from readerd import events as ev
from readerd.events import AbortReason, CardKind, Event
from readerd.identity import Identity, IdentityResolver

log = structlog.get_logger("readerd.sessions")

EventSink = Callable[[Event], object]
_T = TypeVar("_T")


class SessionTimeoutError(TransportError):
    """The card did not finish within the session deadline (a stalled card cannot be cancelled)."""

    code = "timeout"


def run_with_deadline(fn: Callable[[], _T], deadline: float, name: str = "card-session") -> _T:
    """Run ``fn`` on a worker thread and wait at most ``deadline`` seconds.

    pyscard cannot time out a stalled ``SCardTransmit`` (DESIGN decision 9), so on timeout the worker is
    abandoned (a daemon thread) and its late result discarded; the caller reports the reader wedged.
    """
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise SessionTimeoutError(f"no answer within {deadline} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc] # a BaseException stored above
    return box["result"]  # type: ignore[return-value] # set by fn's return


def abort_reason(error: BaseException) -> AbortReason:
    if not isinstance(error, ReaderdError):
        return AbortReason.INTERNAL
    if isinstance(error, SessionTimeoutError):
        return AbortReason.TIMEOUT
    if isinstance(error, CardRemovedError):
        return AbortReason.REMOVED
    if isinstance(error, TransportError):
        return AbortReason.TRANSPORT
    if isinstance(error, AuthRequiredError):
        return AbortReason.AUTH_REQUIRED
    if isinstance(error, BadResponseError):
        return AbortReason.MALFORMED
    if isinstance(error, DeniedCommandError):
        return AbortReason.DENIED
    if isinstance(error, ApduError):
        return AbortReason.CARD_ERROR
    return AbortReason.MALFORMED


@dataclass
class _LastTap:
    pseudonym: str
    removed_at: float | None = None


@dataclass
class TapTracker:
    """Flags a re-tap of the same card on the same reader within ``window`` seconds as ``repeat``."""

    window: float
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, _LastTap] = field(default_factory=dict)

    def identified(self, reader: str, pseudonym: str) -> bool:
        last = self._last.get(reader)
        now = self.clock()
        repeat = (
            last is not None
            and last.pseudonym == pseudonym
            and (last.removed_at is None or now - last.removed_at <= self.window)
        )
        self._last[reader] = _LastTap(pseudonym)
        return repeat

    def removed(self, reader: str) -> None:
        last = self._last.get(reader)
        if last is not None and last.removed_at is None:
            last.removed_at = self.clock()


@dataclass(frozen=True)
class ReadResult:
    """What a read found: the kind of card (also when the read aborted) and the identity, if any."""

    kind: CardKind
    identity: Identity | None = None
    #: The card stopped answering: its session thread was abandoned and may still hold the transport.
    timed_out: bool = False


class CardSessions:
    """What the daemon does with a card in the field, for every backend."""

    def __init__(
        self,
        resolver: IdentityResolver,
        sink: EventSink,
        *,
        deadline: float,
        repeat_window: float,
        simulated: bool = False,
    ) -> None:
        self.resolver = resolver
        self.sink = sink
        self.deadline = deadline
        self.simulated = simulated
        self.taps = TapTracker(repeat_window)
        self._read_paths: dict[tuple[str, bytes], ReadPath] = {}
        self._lock = threading.Lock()

    def read_contact_card(self, reader: str, transport: Transport, atr: bytes) -> ReadResult:
        """Recognise by SELECT of the JPKI AP, then identify. Emits the events; returns the identity."""
        progress: dict[str, object] = {"kind": CardKind.UNKNOWN}
        abandoned = threading.Event()

        def emit(event: Event) -> None:
            # A worker abandoned after the deadline may still finish: its events are discarded.
            if not abandoned.is_set():
                self.sink(event)

        def session_work() -> ReadResult:
            with self._lock:
                path = self._read_paths.get((reader, atr))
            try:
                session = JpkiSession(transport, read_path=path)
            except NotJpkiCardError:
                emit(ev.card_presented(reader, CardKind.UNKNOWN, simulated=self.simulated))
                return ReadResult(CardKind.UNKNOWN)
            progress["kind"] = CardKind.JPKI
            progress["session"] = session
            emit(ev.card_presented(reader, CardKind.JPKI, simulated=self.simulated))
            identity_read = session.identify()
            with self._lock:
                self._read_paths[(reader, atr)] = session.read_path
            cert = identity_read.certificate
            identity = self.resolver.jpki(cert)
            repeat = self.taps.identified(reader, identity.pseudonym)
            data: dict[str, object] = {
                "kind": str(CardKind.JPKI),
                **identity.public_fields(),
                "repeat": repeat,
                "apdus": identity_read.apdus,
                "read_path": identity_read.read_path.value,
            }
            if self.simulated:
                data["simulated"] = True
            private = {
                "serial": format(cert.serial_number, "X"),
                "issuer_der": cert.issuer_der.hex(),
                "subject_cn": cert.subject_cn,
                "not_before": cert.not_before.isoformat(),
                "not_after": cert.not_after.isoformat(),
            }
            emit(Event(ev.EventType.CARD_IDENTIFIED, reader, data, private))
            return ReadResult(CardKind.JPKI, identity)

        try:
            return run_with_deadline(session_work, self.deadline, name=f"session:{reader}")
        except Exception as error:  # every failure becomes an event; the backend thread goes on
            abandoned.set()
            if not isinstance(error, ReaderdError):
                log.exception("card session failed unexpectedly", reader=reader)
            session = progress.get("session")
            apdus = session.apdu_count if isinstance(session, JpkiSession) else 0
            reason = abort_reason(error)
            kind = progress["kind"]
            assert isinstance(kind, CardKind)  # noqa: S101 - set above
            log.warning("card read aborted", reader=reader, reason=str(reason), error=str(error), apdus=apdus)
            code = error.code if isinstance(error, ReaderdError) else "internal_error"
            self.sink(
                ev.card_read_aborted(reader, kind, reason, apdus=apdus, error=code, simulated=self.simulated)
            )
            if reason is AbortReason.TIMEOUT:
                self.sink(ev.reader_error(reader, "session", "wedged", "the card stopped answering"))
            return ReadResult(kind, timed_out=reason is AbortReason.TIMEOUT)

    def card_removed(self, reader: str, kind: CardKind) -> None:
        self.taps.removed(reader)
        self.sink(ev.card_removed(reader, kind, simulated=self.simulated))
