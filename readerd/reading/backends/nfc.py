"""The nfcpy backend: USB NFC readers nfcpy drives (Sony RC-S380 and others) and ``udp:`` pseudo-devices.

One thread per configured device polls for FeliCa (212F/424F) and ISO-DEP Type B (the My Number Card's
contactless interface). A Type B card goes through the same JPKI session as on PC/SC; a FeliCa card is
identified by a keyed pseudonym of its IDm and asked for the configured services (``[[felica.reads]]``)
with Read Without Encryption through :class:`NfcpyFelicaTransport`. When the device vanishes (USB
unplugged) nfcpy's ``connect`` returns False: the thread reports the reader removed
and reopens it with backoff.

Only this module and :mod:`readerd.reading.backends.usb` (which reads nfcpy's table of supported readers)
import nfcpy (docs/design.md, "Transport").
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import nfc
import nfc.clf
import nfc.tag
import nfc.tag.tt3
import nfc.tag.tt4  # nfcpy imports the tag modules lazily, on the first tag of that type
import structlog

from protocols.errors import CardRemovedError, TransportError
from protocols.felica import PollingResponse
from protocols.transport import ReaderCapabilities
from readerd import events as ev
from readerd.bus.control import CommandHandler, JsonObject
from readerd.config import NfcConfig
from readerd.errors import CardAbsentError, UnknownReaderError
from readerd.events import CardKind
from readerd.ops.deadline import run_with_deadline
from readerd.reading.backends import CardOperation, failed
from readerd.reading.backends.usb import HOTPLUG, supported_readers
from readerd.reading.sessions import CardSessions

log = structlog.get_logger("readerd.backends.nfc")

TARGETS = ("212F", "424F", "106B")
HOLD_POLL = 0.1  # seconds between presence checks of a held My Number Card (nfcpy's own interval)
HOTPLUG_INTERVAL = 1.0  # seconds between USB enumerations when nfc.devices has "usb"
BACKOFF_START, BACKOFF_MAX = 0.2, 5.0
#: What a reader says about extended APDUs when asked to allow them (ISO-DEP has no APDU size limit).
EXTENDED_APDU_DATA = 0x10000


class NfcpyIsoDepTransport:
    """``transmit(apdu) -> response`` through an activated nfcpy Type 4 tag.

    APDUs go through ``tag.transceive``, which hands raw bytes to nfcpy's ISO-DEP layer (it chains
    commands and responses of any length). ``tag.send_apdu`` is not used: it refuses extended length for
    every tag (nfcpy 1.0.4, tt4.py ``_extended_length_support = False``). The transport reports short APDUs
    only unless told otherwise; the card decides whether extended length works.
    """

    def __init__(self, tag: Any, *, extended_length: bool = False, timeout: float | None = None) -> None:  # noqa: ANN401 - nfcpy is untyped
        self._tag = tag
        self._capabilities = ReaderCapabilities(EXTENDED_APDU_DATA if extended_length else 0)
        self._timeout = timeout  # per frame; None: nfcpy uses the FWT from the card's SENSB_RES/ATS

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self._capabilities

    def transmit(self, apdu: bytes) -> bytes:
        try:
            data = self._tag.transceive(bytearray(apdu), self._timeout)
        except nfc.tag.TagCommandError as e:
            if e.errno == nfc.tag.TIMEOUT_ERROR:
                raise CardRemovedError(f"the card stopped answering: {e}") from e
            raise TransportError(f"ISO-DEP failure: {e}") from e
        except nfc.clf.BrokenLinkError as e:
            raise CardRemovedError(f"the RF link broke: {e}") from e
        except nfc.clf.CommunicationError as e:
            raise TransportError(f"nfc communication error: {e!r}") from e
        if data is None or len(data) < 2:
            raise TransportError("the card answered without a status word")
        return bytes(data)


class NfcpyFelicaTransport:
    """``exchange(frame, timeout) -> frame`` through the activated nfcpy Type 3 tag's frontend.

    A FeliCa card that answered Polling and then stays silent past the command's PMm budget (readerd only
    sends Read Without Encryption here) has almost always left the field: that is reported as removed.
    """

    def __init__(self, tag: Any) -> None:  # noqa: ANN401 - nfcpy is untyped
        self._clf = tag.clf

    def exchange(self, frame: bytes, timeout: float) -> bytes:
        try:
            data = self._clf.exchange(bytearray(frame), timeout)
        except nfc.clf.TimeoutError as e:
            raise CardRemovedError("the FeliCa card did not answer") from e
        except nfc.clf.BrokenLinkError as e:
            raise CardRemovedError(f"the RF link broke: {e}") from e
        except nfc.clf.CommunicationError as e:
            raise TransportError(f"nfc communication error: {e!r}") from e
        if data is None:
            raise CardRemovedError("the FeliCa card did not answer")
        return bytes(data)


@dataclass
class _Operation:
    operation: CardOperation
    future: Future[JsonObject]


class NfcDevice:
    """One nfcpy device, polled on its own thread.

    A configured device (``udp:…``, ``usb:054c:06c3``) is reopened with backoff when it fails: it is
    expected back. A hotplugged one (``hotplugged``) ends with its device: the USB watcher starts a new
    NfcDevice when a reader is plugged in again, at its new bus address.
    """

    def __init__(
        self, path: str, sessions: CardSessions, stop: threading.Event, *, hotplugged: bool = False
    ) -> None:
        self.path = path
        self.reader = f"nfc {path}"
        self.sessions = sessions
        self.card: CardKind | None = None
        self.present = False
        self.hotplugged = hotplugged
        self._operations: queue.Queue[_Operation] = queue.Queue()
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=f"nfc:{path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = BACKOFF_START
        while not self._stop.is_set():
            try:
                clf = nfc.ContactlessFrontend(self.path)
            except (OSError, ValueError) as e:
                if self.present or backoff == BACKOFF_START:
                    log.warning("nfc device not available", device=self.path, error=str(e), backoff_s=backoff)
                self._set_present(False, str(e))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_START
            self._set_present(True)
            try:
                self._poll(clf)
            finally:
                clf.close()
            if self.hotplugged:
                self._set_present(False, "unplugged")
                return

    def _set_present(self, present: bool, why: str = "") -> None:
        if present == self.present:
            return
        self.present = present
        if present:
            self.sessions.sink(ev.reader_added(self.reader, "nfc"))
            log.info("nfc reader added", reader=self.reader)
        else:
            self.sessions.sink(ev.reader_removed(self.reader, "nfc"))
            log.warning("nfc reader removed", reader=self.reader, error=why)

    def _poll(self, clf: Any) -> None:  # noqa: ANN401 - nfcpy is untyped
        options = {
            "targets": list(TARGETS),
            "on-connect": self._on_connect,
            "on-release": lambda _tag: True,
            "interval": 0.1,
            "beep-on-connect": False,
        }
        while not self._stop.is_set():
            result = clf.connect(rdwr=options, terminate=self._stop.is_set)
            if result is None:  # terminated
                return
            if result is False:  # nfcpy swallowed an IOError: the device is gone or broken
                self._card_gone()
                self._set_present(False, "the device stopped answering")
                return
            self._card_gone()  # on-release: the tag left the field

    def _card_gone(self) -> None:
        if self.card is not None:
            kind, self.card = self.card, None
            self.sessions.card_removed(self.reader, kind)
        while True:  # operations that came too late for this card
            try:
                late = self._operations.get_nowait()
            except queue.Empty:
                return
            late.future.set_exception(CardAbsentError(f"the card left {self.reader}"))

    def submit(self, operation: CardOperation) -> Future[JsonObject]:
        if self.card is not CardKind.JPKI:
            return failed(CardAbsentError(f"no My Number Card on {self.reader}"))
        future: Future[JsonObject] = Future()
        self._operations.put(_Operation(operation, future))
        return future

    def _hold(self, tag: Any, transport: NfcpyIsoDepTransport) -> None:  # noqa: ANN401 - nfcpy is untyped
        """While the My Number Card stays in the field, run the operations asked of it (auth.pin)."""
        while not self._stop.is_set():
            try:
                item = self._operations.get(timeout=HOLD_POLL)
            except queue.Empty:
                if not tag.is_present:
                    return
                continue
            try:
                item.future.set_result(
                    run_with_deadline(functools.partial(item.operation, transport), self.sessions.deadline)
                )
            except Exception as e:  # handed to the caller with the Future
                item.future.set_exception(e)

    def _on_connect(self, tag: Any) -> bool:  # noqa: ANN401 - nfcpy is untyped
        try:
            if isinstance(tag, nfc.tag.tt4.Type4Tag):
                atr = bytes(getattr(tag.target, "sensb_res", b"") or b"")[5:12]
                self.card = CardKind.UNKNOWN
                transport = NfcpyIsoDepTransport(tag)
                result = self.sessions.read_contact_card(self.reader, transport, atr)
                self.card = result.kind
                if result.kind is CardKind.JPKI and not result.timed_out:
                    self._hold(tag, transport)
                    return False  # held here already: nfcpy need not wait for the card to leave
            elif isinstance(tag, nfc.tag.tt3.Type3Tag):
                self.card = CardKind.FELICA
                self._felica(tag)
            else:
                self.card = CardKind.UNKNOWN
                self.sessions.sink(ev.card_presented(self.reader, CardKind.UNKNOWN))
        except Exception as error:  # a bug must not end the device thread; the screen still hears of it
            self.sessions.aborted(self.reader, self.card or CardKind.UNKNOWN, error, 0)
        return True  # hold until the tag leaves, then on-release

    def _felica(self, tag: Any) -> None:  # noqa: ANN401 - nfcpy is untyped
        # nfcpy polled with the wildcard system code and request code 1: tag.sys is the card's answer.
        system_code = getattr(tag, "sys", None)
        polling = PollingResponse(bytes(tag.idm), bytes(tag.pmm), system_code=system_code)
        self.sessions.read_felica_card(self.reader, NfcpyFelicaTransport(tag), polling)


class NfcBackend:
    """Configured nfcpy devices, plus every supported USB reader as it is plugged in (``"usb"``)."""

    name = "nfc"

    def __init__(
        self,
        config: NfcConfig,
        sessions: CardSessions,
        *,
        discover: Callable[[], list[str]] | None = None,
        hotplug_interval: float = HOTPLUG_INTERVAL,
    ) -> None:
        self._stop = threading.Event()
        self._sessions = sessions
        self._lock = threading.Lock()
        self.devices = [NfcDevice(path, sessions, self._stop) for path in config.devices if path != HOTPLUG]
        self._hotplugged: dict[str, tuple[NfcDevice, threading.Event]] = {}
        self._hotplug = HOTPLUG in config.devices
        self._discover = discover or (lambda: [reader.path for reader in supported_readers()])
        self._interval = hotplug_interval
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        for device in self.devices:
            device.start()
        if self._hotplug:
            self._watcher = threading.Thread(target=self._watch, name="nfc-usb-hotplug", daemon=True)
            self._watcher.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            hotplugged = [device for device, stop in self._hotplugged.values()]
            for _device, stop in self._hotplugged.values():
                stop.set()
        everything = self.devices + hotplugged
        for device in everything:
            device.join(timeout / max(1, len(everything)))
        if self._watcher is not None:
            self._watcher.join(timeout)

    def alive(self) -> bool:
        watching = self._watcher is None or self._watcher.is_alive()
        return watching and all(device.alive() for device in self.devices)

    def _all_devices(self) -> list[NfcDevice]:
        with self._lock:
            return self.devices + [device for device, _stop in self._hotplugged.values()]

    def readers(self) -> list[JsonObject]:
        return [
            {"name": d.reader, "backend": self.name, "card": str(d.card) if d.card else None}
            for d in self._all_devices()
            if d.present
        ]

    def _watch(self) -> None:
        """Every ``hotplug_interval`` s: start a device thread for each new reader, stop unplugged ones."""
        while not self._stop.is_set():
            try:
                paths = set(self._discover())
            except Exception:  # a failed enumeration must not end hotplug
                log.exception("usb enumeration failed")
                paths = set()
            with self._lock:
                for path in sorted(paths - set(self._hotplugged)):
                    stop = threading.Event()
                    device = NfcDevice(path, self._sessions, stop, hotplugged=True)
                    self._hotplugged[path] = (device, stop)
                    log.info("usb nfc reader plugged in", device=path)
                    device.start()
                for path in sorted(set(self._hotplugged) - paths):
                    device, stop = self._hotplugged.pop(path)
                    stop.set()  # the thread reports the reader removed as it ends
                    log.info("usb nfc reader unplugged", device=path)
                for path, (device, _stop) in list(self._hotplugged.items()):
                    if not device.alive() and path in paths:
                        # the device thread ended (device failed) but the bus still lists it: retry
                        self._hotplugged.pop(path)
            self._stop.wait(self._interval)

    def commands(self) -> dict[str, CommandHandler]:
        return {}

    def has_reader(self, reader: str) -> bool:
        return any(device.reader == reader for device in self._all_devices())

    def on_card(self, reader: str, operation: CardOperation) -> Future[JsonObject]:
        for device in self._all_devices():
            if device.reader == reader and device.present:
                return device.submit(operation)
        return failed(UnknownReaderError(f"no nfc reader {reader!r}"))
