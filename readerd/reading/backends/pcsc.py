"""The PC/SC backend (pyscard): every reader pcscd knows, hotplug, and recovery when pcscd restarts.

Threads (docs/design.md D9): one monitor with its own context waits in ``SCardGetStatusChange`` on every
reader plus the PnP pseudo-reader; one worker per reader, with its own context, reads the cards the
monitor reports. A stalled card cannot be cancelled through pyscard: when a read passes its deadline the
worker is abandoned (its late result discarded) and a fresh one takes the reader, so other readers and
the next tap go on. When pcscd goes away the monitor reports the readers gone, re-establishes its context
with backoff, and announces the readers again when pcscd is back.

This is the only module that imports pyscard; it converts ``list[int]`` to ``bytes`` and pyscard's return
codes to :mod:`protocols.errors` here, at the edge.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import structlog
from smartcard import scard

from protocols.errors import (
    CardRemovedError,
    ExtendedLengthUnsupportedError,
    ReaderUnavailableError,
    TransportError,
)
from protocols.felica import is_felica_atr
from protocols.transport import ReaderCapabilities
from readerd import events as ev
from readerd.bus.control import CommandHandler, JsonObject
from readerd.config import PcscConfig
from readerd.errors import CardAbsentError, UnknownReaderError
from readerd.events import AbortReason, CardKind
from readerd.ops.deadline import SessionTimeoutError, run_with_deadline
from readerd.ops.liveness import StepWatch
from readerd.reading.backends import CardOperation, failed
from readerd.reading.backends.pcsc_state import (
    FEATURE_GET_TLV_PROPERTIES,
    PNP_READER,
    PROPERTY_MAX_APDU_DATA_SIZE,
    STATE_CHANGED,
    STATE_UNAWARE,
    STATUS_PRESENT,
    Change,
    ReaderStates,
    atr_hint,
    parse_features,
    parse_tlv_properties,
    read_path_key,
)
from readerd.reading.sessions import CardSessions

log = structlog.get_logger("readerd.backends.pcsc")

SERVICE_GONE = frozenset(
    {scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED, scard.SCARD_E_INVALID_HANDLE}
)
CARD_GONE = frozenset({scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_RESET_CARD})
READER_GONE = frozenset({scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_UNKNOWN_READER})
VIRTUAL_READER_PREFIX = "Virtual PCD"
CM_IOCTL_GET_FEATURE_REQUEST = scard.SCARD_CTL_CODE(3400)
POLL_TIMEOUT_MS = 1000
#: Longest a monitor step may take before the backend reports itself wedged (the watchdog then stops):
#: one status poll, or re-listing readers, which stops up to 16 workers at 0.5 s each.
MONITOR_STEP_BUDGET = POLL_TIMEOUT_MS / 1000 + 16 * 0.5 + 5.0
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
ANY_PROTOCOL = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1


def _message(hresult: int) -> str:
    return f"{scard.SCardGetErrorMessage(hresult)} (0x{hresult & 0xFFFFFFFF:08X})"


def list_pcscd_readers() -> list[str]:
    """Every reader pcscd knows now, virtual ones included (``readerctl doctor``; fresh context each
    time, since a context made before a pcscd restart keeps failing). ReaderUnavailableError names why
    pcscd cannot be reached."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise ReaderUnavailableError(f"pcscd: {_message(hresult)}")
    try:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hresult != scard.SCARD_S_SUCCESS:
            raise ReaderUnavailableError(f"pcscd: {_message(hresult)}")
        return sorted(names)
    finally:
        scard.SCardReleaseContext(context)


def _error_for(hresult: int, what: str) -> TransportError:
    if hresult in CARD_GONE:
        return CardRemovedError(f"{what}: {_message(hresult)}")
    if hresult in SERVICE_GONE or hresult in READER_GONE:
        return ReaderUnavailableError(f"{what}: {_message(hresult)}")
    return TransportError(f"{what}: {_message(hresult)}")


class PcscTransport:
    """One connected card, as a :class:`protocols.transport.Transport`."""

    def __init__(self, hcard: int, protocol: int, capabilities: ReaderCapabilities) -> None:
        self._hcard = hcard
        self._pci = scard.SCARD_PCI_T1 if protocol == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
        self._capabilities = capabilities

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self._capabilities

    def transmit(self, apdu: bytes) -> bytes:
        hresult, response = scard.SCardTransmit(self._hcard, self._pci, list(apdu))
        if hresult == scard.SCARD_S_SUCCESS:
            if len(response) < 2:
                # vpcd answers an APDU whose card vanished mid-command with success and no bytes; pcscd
                # may not have noticed the removal yet, so "present" only says the reader misbehaved.
                if not self._card_present():
                    raise CardRemovedError("the card left during the command")
                raise TransportError("the reader returned no status word")
            return bytes(response)
        if (
            hresult == scard.SCARD_E_NOT_TRANSACTED
            and len(apdu) > 5
            and apdu[4] == 0
            and self._card_present()
        ):
            # docs/design.md D12: only "unsupported" if the card is still there.
            raise ExtendedLengthUnsupportedError(f"the reader refused an extended APDU: {_message(hresult)}")
        raise _error_for(hresult, "SCardTransmit")

    def _card_present(self) -> bool:
        hresult, _reader, state, _protocol, _atr = scard.SCardStatus(self._hcard)
        return hresult == scard.SCARD_S_SUCCESS and bool(state & STATUS_PRESENT)


def _max_apdu_data(hcard: int) -> int | None:
    """``dwMaxAPDUDataSize`` from the reader's TLV properties; ``None`` when the reader does not say."""
    hresult, response = scard.SCardControl(hcard, CM_IOCTL_GET_FEATURE_REQUEST, [])
    if hresult != scard.SCARD_S_SUCCESS:
        return None
    code = parse_features(bytes(response)).get(FEATURE_GET_TLV_PROPERTIES)
    if code is None:
        return None
    hresult, response = scard.SCardControl(hcard, code, [])
    if hresult != scard.SCARD_S_SUCCESS:
        return None
    return parse_tlv_properties(bytes(response)).get(PROPERTY_MAX_APDU_DATA_SIZE)


@dataclass
class _Task:
    change: Change
    atr: bytes = b""


@dataclass
class _Operation:
    operation: CardOperation
    future: Future[JsonObject]


class ReaderWorker:
    """Reads the cards of one reader on its own thread and PC/SC context."""

    def __init__(
        self,
        name: str,
        sessions: CardSessions,
        on_wedged: Callable[[ReaderWorker], None],
        *,
        felica_transparent: bool = False,
    ) -> None:
        self.name = name
        self.felica_transparent = felica_transparent
        self.sessions = sessions
        self.card: CardKind | None = None
        self.abandoned = False
        self._on_wedged = on_wedged
        self._tasks: queue.Queue[_Task | _Operation | None] = queue.Queue()
        self._context: int | None = None
        self._capabilities: ReaderCapabilities | None = None
        self._thread = threading.Thread(target=self._run, name=f"pcsc:{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: _Task | _Operation) -> None:
        self._tasks.put(task)

    def stop(self, timeout: float = 1.0) -> None:
        self._tasks.put(None)
        if not self.abandoned:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self.abandoned or self._thread.is_alive()

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None or self.abandoned:
                break
            if isinstance(task, _Operation):
                self._operate(task)
                continue
            try:
                if task.change is Change.INSERTED:
                    self._read(task.atr)
                elif task.change is Change.REMOVED:
                    self._removed()
                else:
                    self.sessions.sink(
                        ev.card_read_aborted(
                            self.name, CardKind.UNKNOWN, AbortReason.CARD_ERROR, apdus=0, error="mute_card"
                        )
                    )
            except Exception:  # a bug must not end the reader's thread
                log.exception("reader worker failed", reader=self.name)
        self._release()

    def _ensure_context(self) -> int:
        if self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult != scard.SCARD_S_SUCCESS:
                raise _error_for(hresult, "SCardEstablishContext")
            self._context = context
        return self._context

    def _release(self) -> None:
        if self._context is not None:
            scard.SCardReleaseContext(self._context)
            self._context = None

    def _read(self, atr: bytes) -> None:
        if self.card is not None:
            self._removed()
        self.card = CardKind.UNKNOWN
        # What the ATR suggests is a hint for whoever reads the logs; the SELECT below decides
        # (docs/card-facts.md §5). A PUPI some readers put into it is random per tap, no identifier.
        log.info("card inserted", reader=self.name, atr=atr.hex().upper(), looks_like=atr_hint(atr))
        try:
            context = self._ensure_context()
            hresult, hcard, protocol = scard.SCardConnect(
                context,
                self.name,
                scard.SCARD_SHARE_SHARED,
                ANY_PROTOCOL,
            )
            if hresult != scard.SCARD_S_SUCCESS:
                if hresult in SERVICE_GONE:
                    self._release()
                raise _error_for(hresult, "SCardConnect")
        except TransportError as e:
            reason = AbortReason.REMOVED if isinstance(e, CardRemovedError) else AbortReason.TRANSPORT
            self.sessions.sink(
                ev.card_read_aborted(self.name, CardKind.UNKNOWN, reason, apdus=0, error=e.code)
            )
            return
        if self._capabilities is None:
            self._capabilities = ReaderCapabilities(_max_apdu_data(hcard))
        transaction = scard.SCardBeginTransaction(hcard) == scard.SCARD_S_SUCCESS
        transport = PcscTransport(hcard, protocol, self._capabilities)
        if is_felica_atr(atr):
            # A contactless reader's synthesised ATR for FeliCa: no applet to select, the IDm identifies.
            result = self.sessions.read_pcsc_felica_card(
                self.name, transport, transparent=self.felica_transparent
            )
        else:
            # The read path is remembered per reader and ATR, less a PUPI the reader put into it.
            result = self.sessions.read_contact_card(self.name, transport, read_path_key(atr))
        self.card = result.kind
        if result.timed_out:
            # The session thread may still be inside SCardTransmit on this handle: touch nothing more.
            self.abandoned = True
            self._on_wedged(self)
            return
        if transaction:
            scard.SCardEndTransaction(hcard, scard.SCARD_LEAVE_CARD)
        scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)

    def _operate(self, task: _Operation) -> None:
        """One exclusive transaction on the present card, ended with a reset (docs/design.md D4)."""
        if self.card is not CardKind.JPKI:
            task.future.set_exception(CardAbsentError(f"no My Number Card on {self.name}"))
            return
        try:
            context = self._ensure_context()
            hresult, hcard, protocol = scard.SCardConnect(
                context,
                self.name,
                scard.SCARD_SHARE_SHARED,
                ANY_PROTOCOL,
            )
            if hresult != scard.SCARD_S_SUCCESS:
                raise _error_for(hresult, "SCardConnect")
            hresult = scard.SCardBeginTransaction(hcard)
            if hresult != scard.SCARD_S_SUCCESS:
                scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
                raise _error_for(hresult, "SCardBeginTransaction")
        except TransportError as e:
            task.future.set_exception(e)
            return
        transport = PcscTransport(hcard, protocol, self._capabilities or ReaderCapabilities(None))
        try:
            result = run_with_deadline(lambda: task.operation(transport), self.sessions.deadline)
        except SessionTimeoutError as e:
            task.future.set_exception(e)
            self.sessions.sink(ev.reader_error(self.name, "session", "wedged", "the card stopped answering"))
            self.abandoned = True  # the operation's thread may still be inside SCardTransmit
            self._on_wedged(self)
            return
        except Exception as e:  # handed to the caller with the Future
            task.future.set_exception(e)
        else:
            task.future.set_result(result)
        scard.SCardEndTransaction(hcard, scard.SCARD_RESET_CARD)
        scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)

    def _removed(self) -> None:
        if self.card is None:
            return
        kind, self.card = self.card, None
        self.sessions.card_removed(self.name, kind)


class PcscBackend:
    name = "pcsc"

    def __init__(self, config: PcscConfig, sessions: CardSessions) -> None:
        self.config = config
        self.sessions = sessions
        self.states = ReaderStates()
        self.workers: dict[str, ReaderWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._context: int | None = None
        self._thread = threading.Thread(target=self._run, name="pcsc-monitor", daemon=True)
        self._watch = StepWatch(MONITOR_STEP_BUDGET)
        self.service_up = False

    # -- Backend --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        context = self._context
        if context is not None:
            scard.SCardCancel(context)  # wakes SCardGetStatusChange
        self._thread.join(timeout)
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop(timeout / 2)

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._watch.wedged()

    def readers(self) -> list[JsonObject]:
        with self._lock:
            return [
                {"name": name, "backend": self.name, "card": str(w.card) if w.card else None}
                for name, w in sorted(self.workers.items())
            ]

    def commands(self) -> dict[str, CommandHandler]:
        return {}

    def has_reader(self, reader: str) -> bool:
        with self._lock:
            return reader in self.workers

    def on_card(self, reader: str, operation: CardOperation) -> Future[JsonObject]:
        with self._lock:
            worker = self.workers.get(reader)
        if worker is None:
            return failed(UnknownReaderError(f"no PC/SC reader {reader!r}"))
        future: Future[JsonObject] = Future()
        worker.submit(_Operation(operation, future))
        return future

    # -- reader list ----------------------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        if name.startswith(VIRTUAL_READER_PREFIX) and not self.config.allow_virtual_readers:
            return False
        return not self.config.readers or any(name.startswith(p) for p in self.config.readers)

    def _list_readers(self, context: int) -> list[str] | None:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hresult != scard.SCARD_S_SUCCESS:
            return None
        return sorted(n for n in names if self._wanted(n))

    def _sync_readers(self, names: list[str]) -> None:
        with self._lock:
            known = set(self.workers)
        for name in sorted(known - set(names)):
            self._drop_reader(name, reason="removed")
        for name in names:
            if name not in known:
                self._add_reader(name)

    def _worker(self, name: str) -> ReaderWorker:
        return ReaderWorker(
            name, self.sessions, self._replace_wedged, felica_transparent=self.config.felica_transparent
        )

    def _add_reader(self, name: str) -> None:
        worker = self._worker(name)
        with self._lock:
            self.workers[name] = worker
        worker.start()
        self.sessions.sink(ev.reader_added(name, self.name))
        log.info("reader added", reader=name)

    def _drop_reader(self, name: str, reason: str) -> None:
        for change in self.states.forget(name):
            self._dispatch(change.reader, _Task(change.change))
        with self._lock:
            worker = self.workers.pop(name, None)
        if worker is not None:
            worker.stop(0.5)
        self.sessions.sink(ev.reader_removed(name, self.name))
        log.info("reader removed", reader=name, reason=reason)

    def _replace_wedged(self, worker: ReaderWorker) -> None:
        fresh = self._worker(worker.name)
        with self._lock:
            if self.workers.get(worker.name) is worker:
                self.workers[worker.name] = fresh
        fresh.start()
        log.warning("reader worker abandoned after a stalled card", reader=worker.name)

    def _dispatch(self, reader: str, task: _Task) -> None:
        with self._lock:
            worker = self.workers.get(reader)
        if worker is not None:
            worker.submit(task)

    # -- the monitor thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF_START
        while not self._stop.is_set():
            if self._context is None:
                with self._watch.step():
                    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
                if hresult != scard.SCARD_S_SUCCESS:
                    if self.service_up or backoff == BACKOFF_START:
                        log.warning(
                            "pcscd not reachable, retrying", error=_message(hresult), backoff_s=backoff
                        )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                self._context = context
            try:
                self._monitor(self._context)
                backoff = BACKOFF_START
            except _ServiceLost as lost:
                self._service_lost(str(lost))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        if self._context is not None:
            scard.SCardReleaseContext(self._context)
            self._context = None

    def _service_lost(self, message: str) -> None:
        if self._context is not None:
            scard.SCardReleaseContext(self._context)
            self._context = None
        if self.service_up:
            self.sessions.sink(ev.reader_error(None, self.name, "pcscd_unavailable", message))
            log.error("pcscd went away", error=message)
        self.service_up = False
        with self._lock:
            names = list(self.workers)
        for name in names:
            self._drop_reader(name, reason="pcscd_unavailable")

    def _monitor(self, context: int) -> None:
        with self._watch.step():
            names = self._list_readers(context)
            if names is None:
                raise _ServiceLost("SCardListReaders failed")
            if not self.service_up:
                log.info("pcscd connected", readers=names)
            self.service_up = True
            self._sync_readers(names)
        states: list[tuple[str, int, list[int]]] = [(PNP_READER, STATE_UNAWARE, [])]
        states += [(name, STATE_UNAWARE, []) for name in names]
        while not self._stop.is_set():
            with self._watch.step():
                hresult, new_states = scard.SCardGetStatusChange(context, POLL_TIMEOUT_MS, states)
            if hresult == scard.SCARD_E_TIMEOUT:
                continue
            if hresult == scard.SCARD_E_CANCELLED:
                return
            if hresult in SERVICE_GONE:
                raise _ServiceLost(_message(hresult))
            if hresult in READER_GONE:
                return  # a reader vanished between calls: re-list
            if hresult != scard.SCARD_S_SUCCESS:
                raise _ServiceLost(_message(hresult))
            relist = False
            states = []
            for name, event_state, atr in new_states:
                states.append((name, event_state & ~STATE_CHANGED, atr))
                if name == PNP_READER:
                    relist = relist or bool(event_state & STATE_CHANGED)
                    continue
                for change in self.states.update(name, event_state, bytes(atr)):
                    self._dispatch(name, _Task(change.change, change.atr))
            if relist:
                return  # the outer loop lists the readers again and rebuilds the state list


class _ServiceLost(Exception):
    pass
