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

import structlog

from protocols.errors import (
    ApduError,
    AuthRequiredError,
    BadResponseError,
    CardRemovedError,
    DeniedCommandError,
    FelicaStatusError,
    NotJpkiCardError,
    ReaderdError,
    TransportError,
)
from protocols.felica import BlockElement, FelicaSession, PcscFelica, PollingResponse, ServiceCode
from protocols.jpki import JpkiSession, ReadPath
from protocols.transport import FelicaTransport, Transport
from readerd import events as ev
from readerd.config import FelicaRead
from readerd.events import AbortReason, CardKind, Event
from readerd.ops.deadline import SessionTimeoutError
from readerd.reading.identity import Identity, IdentityResolver
from readerd.reading.worker import SessionWorker

log = structlog.get_logger("readerd.sessions")

EventSink = Callable[[Event], object]

#: Seconds into a read after which a lazily published ``card.presented`` is sent all the same: a screen
#: says "reading..." for a slow card (a contactless read, the short-APDU path), while a quick read sends it
#: with ``card.identified``, without the bus thread and the plugin host handling it during the read.
PRESENTED_AFTER = 0.02


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
class PresentCard:
    """An identified My Number Card in a reader; ``insertion`` tells this tap from any later one."""

    reader: str
    insertion: int
    identity: Identity


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
        felica_reads: tuple[FelicaRead, ...] = (),
        progress: EventSink | None = None,
        nudge: Callable[[], object] | None = None,
    ) -> None:
        """``progress``: where ``card.presented`` goes, if not to ``sink``: the daemon publishes it lazily
        (:meth:`readerd.bus.server.Bus.publish`), so the bus thread does not compete with the read it
        announces; ``nudge`` then sends it (a read that takes :data:`PRESENTED_AFTER`, a read's end)."""
        self.resolver = resolver
        self.sink = sink
        self.progress = progress
        self.nudge = nudge
        self.deadline = deadline
        self.simulated = simulated  # every card is simulated (the sim backend alone)
        self.felica_reads = felica_reads
        self.taps = TapTracker(repeat_window)
        self._read_paths: dict[tuple[str, bytes], ReadPath] = {}
        self._present: dict[str, PresentCard] = {}
        self._insertions = 0
        self._lock = threading.Lock()
        self._workers: dict[str, SessionWorker] = {}  # per reader: its session thread, kept between taps

    def _run(self, thread_name: str, work: Callable[[], ReadResult]) -> ReadResult:
        """``work`` under the session deadline on the reader's session thread (readerd.reading.worker).
        The ``card.presented`` it published lazily goes out once the read takes :data:`PRESENTED_AFTER`,
        or when it ends (``nudge``), whichever comes first."""
        with self._lock:
            worker = self._workers.get(thread_name)
            if worker is None:
                worker = self._workers[thread_name] = SessionWorker(thread_name)
        if self.nudge is None:
            return worker.run(work, self.deadline)
        try:
            return worker.run(work, self.deadline, (PRESENTED_AFTER, self.nudge))
        finally:
            self.nudge()

    def _presented(self, event: Event) -> None:
        (self.progress or self.sink)(event)

    def read_contact_card(
        self, reader: str, transport: Transport, atr: bytes, *, simulated: bool = False
    ) -> ReadResult:
        """Recognise by SELECT of the JPKI AP, then identify. Emits the events; returns the identity.

        ``simulated``: the card is the simulator's (its events say so, also beside real readers)."""
        simulated = simulated or self.simulated
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
                if not abandoned.is_set():
                    self._presented(ev.card_presented(reader, CardKind.UNKNOWN, simulated=simulated))
                return ReadResult(CardKind.UNKNOWN)
            progress["kind"] = CardKind.JPKI
            progress["session"] = session
            if not abandoned.is_set():
                self._presented(ev.card_presented(reader, CardKind.JPKI, simulated=simulated))
            identity_read = session.identify()
            with self._lock:
                self._read_paths[(reader, atr)] = session.read_path
            cert = identity_read.certificate
            identity = self.resolver.jpki(cert)
            repeat = self.taps.identified(reader, identity.pseudonym)
            read = {"apdus": identity_read.apdus, "read_path": identity_read.read_path.value}
            private = {
                "serial": format(cert.serial_number, "X"),
                "issuer_der": cert.issuer_der.hex(),
                "subject_cn": cert.subject_cn,
                "not_before": cert.not_before.isoformat(),
                "not_after": cert.not_after.isoformat(),
            }
            with self._lock:  # before the event: a UI that reacts to it with auth.begin finds the card
                self._insertions += 1
                self._present[reader] = PresentCard(reader, self._insertions, identity)
            identified = ev.card_identified(
                reader,
                CardKind.JPKI,
                identity.public_fields(),
                repeat=repeat,
                read=read,
                private=private,
                simulated=simulated,
            )
            emit(identified)
            return ReadResult(CardKind.JPKI, identity)

        try:
            return self._run(f"session:{reader}", session_work)
        except Exception as error:  # every failure becomes an event; the backend thread goes on
            abandoned.set()
            session = progress.get("session")
            apdus = session.apdu_count if isinstance(session, JpkiSession) else 0
            kind = progress["kind"]
            assert isinstance(kind, CardKind)  # noqa: S101 - set above
            return self.aborted(reader, kind, error, apdus, simulated=simulated)

    def read_felica_card(
        self,
        reader: str,
        transport: FelicaTransport | None,
        polling: PollingResponse,
        *,
        simulated: bool = False,
    ) -> ReadResult:
        """Identify a polled FeliCa card by its IDm and read the configured services.

        ``transport`` is None where the reader gives the IDm only (PC/SC without a transparent session):
        the card is still identified, and every configured service is reported ``unreadable``. A service
        the card lacks (non-zero status flags) is ``absent``, not an error: kiosks see all kinds of cards.
        A card that stops answering aborts the read (no identity), as on the contact path.
        """
        return self._felica(reader, lambda: (transport, polling), lambda: 0, simulated=simulated)

    def read_pcsc_felica_card(self, reader: str, transport: Transport, *, transparent: bool) -> ReadResult:
        """A FeliCa card on a PC/SC reader: IDm (and PMm) by GET DATA; with ``transparent``, Polling and
        block reads through the reader's part-3 transparent session (docs/design.md D13)."""
        pcsc = PcscFelica(transport)

        def prepare() -> tuple[FelicaTransport | None, PollingResponse]:
            if transparent:
                pcsc.open()
                polling = pcsc.poll()
                if polling.idm != pcsc.idm():
                    raise BadResponseError("Polling answered with another IDm than GET DATA")
                return pcsc, polling
            idm = pcsc.idm()
            # Without the PMm (a reader that does not give it) no read timeouts can be derived; no reads
            # are sent on this path anyway, so zeros stand in and are never published as the PMm.
            return None, PollingResponse(idm, pcsc.pmm() or bytes(8))

        result = self._felica(reader, prepare, lambda: pcsc.apdu_count)
        if not result.timed_out:  # else the abandoned session thread may still be on the transport
            pcsc.close()
        return result

    def _felica(
        self,
        reader: str,
        prepare: Callable[[], tuple[FelicaTransport | None, PollingResponse]],
        commands: Callable[[], int],
        *,
        simulated: bool = False,
    ) -> ReadResult:
        simulated = simulated or self.simulated
        abandoned = threading.Event()
        state: dict[str, FelicaSession] = {}
        self._presented(ev.card_presented(reader, CardKind.FELICA, simulated=simulated))

        def session_work() -> ReadResult:
            transport, polling = prepare()
            session = FelicaSession(transport, polling) if transport is not None else None
            if session is not None:
                state["session"] = session
            services: dict[str, str] = {}
            blocks: dict[str, list[str]] = {}
            for read in self.felica_reads:
                if read.system is not None and read.system != polling.system_code:
                    continue
                if session is None:
                    services[read.name] = "unreadable"
                    continue
                elements = [BlockElement(0, number) for number in read.blocks]
                try:
                    found = session.read_blocks([ServiceCode.from_int(read.service)], elements)
                except FelicaStatusError:
                    services[read.name] = "absent"
                    continue
                services[read.name] = "read"
                blocks[read.name] = [block.hex().upper() for block in found]
            identity = self.resolver.felica(polling.idm)
            repeat = self.taps.identified(reader, identity.pseudonym)
            how = {
                "system_code": None if polling.system_code is None else f"{polling.system_code:04X}",
                "services": services,
                "frames": session.frames_sent if session is not None else 0,
            }
            private = {"idm": polling.idm.hex().upper(), "pmm": polling.pmm.hex().upper(), "blocks": blocks}
            identified = ev.card_identified(
                reader,
                CardKind.FELICA,
                identity.public_fields(),
                repeat=repeat,
                read=how,
                private=private,
                simulated=simulated,
            )
            if not abandoned.is_set():
                self.sink(identified)
            return ReadResult(CardKind.FELICA, identity)

        try:
            return self._run(f"felica:{reader}", session_work)
        except Exception as error:  # every failure becomes an event; the backend thread goes on
            abandoned.set()
            session = state.get("session")
            frames = session.frames_sent if session is not None else 0
            return self.aborted(reader, CardKind.FELICA, error, commands() or frames, simulated=simulated)

    def aborted(
        self, reader: str, kind: CardKind, error: Exception, commands: int, *, simulated: bool = False
    ) -> ReadResult:
        """``card.read_aborted`` (and ``reader.error`` for a stalled card) for a failed read."""
        simulated = simulated or self.simulated
        if not isinstance(error, ReaderdError):
            log.exception("card session failed unexpectedly", reader=reader)
        reason = abort_reason(error)
        log.warning("card read aborted", reader=reader, reason=str(reason), error=str(error), apdus=commands)
        code = error.code if isinstance(error, ReaderdError) else "internal_error"
        self.sink(ev.card_read_aborted(reader, kind, reason, apdus=commands, error=code, simulated=simulated))
        if reason is AbortReason.TIMEOUT:
            self.sink(ev.reader_error(reader, "session", "wedged", "the card stopped answering"))
        return ReadResult(kind, timed_out=reason is AbortReason.TIMEOUT)

    def card_removed(self, reader: str, kind: CardKind, *, simulated: bool = False) -> None:
        with self._lock:
            self._present.pop(reader, None)
        self.taps.removed(reader)
        self.sink(ev.card_removed(reader, kind, simulated=simulated or self.simulated))

    def present(self, reader: str) -> PresentCard | None:
        """The identified My Number Card on ``reader`` now, if any (what ``auth.begin`` binds to)."""
        with self._lock:
            return self._present.get(reader)
