"""The simulator backend: in-process readers and virtual cards, for ``readerd run --simulate``.

It exists only with ``--backend sim`` and loopback endpoints (docs/design.md D6): the control commands
``tap`` and ``remove`` inject cards, which a production daemon must never accept. Events it causes carry
``"simulated": true``.

``tap`` puts a My Number Card (``card`` names its profile) or, with ``felica``, a FeliCa card of that kind
(``bathhouse``, ``checkin``, ``transport``; ``card`` is then its member/unique number or name) on a reader.
``cloned_from`` names another profile whose certificate the My Number Card carries with its own key: the
copied-certificate attack, identified as that citizen, failing any signature check.
A FeliCa card is polled by this backend, as a reader would, and read through the same session as on nfcpy.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import structlog

from protocols.errors import ReaderdError
from protocols.felica import build_polling, parse_polling_response
from readerd import events as ev
from readerd.bus.control import CommandHandler, ControlRequest, JsonObject
from readerd.config import SimConfig
from readerd.errors import CardAbsentError, Refusal, UnknownReaderError
from readerd.events import CardKind
from readerd.ops.deadline import run_with_deadline
from readerd.ops.liveness import STEP_MARGIN, StepWatch
from readerd.ops.statedir import private_tree
from readerd.reading.backends import CardOperation, failed
from readerd.reading.sessions import CardSessions
from simulators.faults import FaultScript, FaultScriptError, FaultyCard
from simulators.felica import (
    FelicaCardProfile,
    VirtualFelicaCard,
    bathhouse_card,
    checkin_card,
    transport_card,
)
from simulators.inprocess import CardModel, InProcessFelicaField, InProcessReader
from simulators.mynumber import CardBehavior, CardProfile, blank_card, build_card
from simulators.pki import CaKind, PkiStore, write_pem

log = structlog.get_logger("readerd.backends.sim")


FELICA_KINDS = ("bathhouse", "checkin", "transport")


@dataclass
class _Operation:
    reader: str
    operation: CardOperation
    future: Future[JsonObject]


@dataclass
class _Removal:
    """A ``remove``: answered once the backend thread has taken the card off (or found none)."""

    reader: str
    future: Future[JsonObject]


@dataclass
class _Slot:
    reader: InProcessReader
    field: InProcessFelicaField
    kind: CardKind | None = None  # what is on it now (None: empty)
    card_name: str | None = None
    plugged: bool = True  # False after `unplug`: the reader is gone, as a USB reader pulled out


def felica_profile(kind: str, name: str, birth_year: int = 1950, ward: int = 13101) -> FelicaCardProfile:
    """The simulated FeliCa card a ``tap`` asks for (ValueError names what is wrong)."""
    if kind == "bathhouse":
        return bathhouse_card(name, birth_year=birth_year, ward_code=ward)
    if kind == "checkin":
        return checkin_card(name)
    if kind == "transport":
        return transport_card(name)
    raise ValueError(f"felica must be one of {', '.join(FELICA_KINDS)}, not {kind!r}")


class SimBackend:
    name = "sim"
    #: Its cards are the simulator's: their events and authentications say ``"simulated": true``, and
    #: only its readers are checked against the simulator's CA (readerd.auth.manager).
    simulated = True

    def __init__(self, config: SimConfig, sessions: CardSessions, pki_dir: Path) -> None:
        self.config = config
        self.sessions = sessions
        self.store = PkiStore(pki_dir)
        self._revoked: set[int] = set()  # serials of cards tapped with revoked=true
        self._built: set[tuple[str, str | None]] = set()  # (card, cloned_from) whose files are private
        self._slots = {
            name: _Slot(
                InProcessReader(name, extended_length=config.extended_length), InProcessFelicaField(name)
            )
            for name in config.readers
        }
        self._commands: queue.Queue[tuple[str, str, JsonObject] | _Operation | _Removal | None] = (
            queue.Queue()
        )
        self._thread: threading.Thread | None = None
        # One command is at most a removal plus a read or operation under the session deadline.
        self._watch = StepWatch(2 * sessions.deadline + STEP_MARGIN)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        for name in self._slots:
            self.sessions.sink(ev.reader_added(name, self.name, simulated=True))
        self._thread = threading.Thread(target=self._run, name="backend-sim", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._commands.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._watch.wedged()

    def readers(self) -> list[JsonObject]:
        return [
            {"name": name, "backend": self.name, "card": str(slot.kind) if slot.kind else None}
            for name, slot in self._slots.items()
            if slot.plugged
        ]

    def commands(self) -> dict[str, CommandHandler]:
        return {"tap": self.tap, "remove": self.remove, "unplug": self.unplug, "plug": self.plug}

    def has_reader(self, reader: str) -> bool:
        return reader in self._slots and self._slots[reader].plugged

    def trust_files(self) -> tuple[Path, Path]:
        """The simulator's user-auth CA (the trust anchor for this backend's readers only, never for a real
        reader's card) and its CRL, which lists the cards tapped with ``revoked: true``; the validator
        re-reads it when it changes."""
        ca = self.store.ca(CaKind.USER_AUTH)
        anchor = write_pem(self.store.root / "trust-anchor.pem", ca.certificate)
        return anchor, self._write_crl()

    def _write_crl(self) -> Path:
        ca = self.store.ca(CaKind.USER_AUTH)
        crl = write_pem(self.store.root / "user-auth.crl", ca.crl(sorted(self._revoked)))
        self._private()
        return crl

    def _private(self) -> None:
        """The simulator's keys and certificates are state files like any other: 0600."""
        _changed, failed = private_tree(self.store.root)
        for path, reason in failed:
            log.warning("cannot make a simulator file private", path=str(path), error=reason)

    def on_card(self, reader: str, operation: CardOperation) -> Future[JsonObject]:
        if reader not in self._slots:
            return failed(UnknownReaderError(f"no simulated reader {reader!r}"))
        future: Future[JsonObject] = Future()
        self._commands.put(_Operation(reader, operation, future))
        return future

    def _operate(self, item: _Operation) -> None:
        slot = self._slots[item.reader]
        if slot.kind is not CardKind.JPKI or slot.reader.card is None:
            item.future.set_exception(CardAbsentError(f"no My Number Card on {item.reader}"))
            return
        try:
            item.future.set_result(
                run_with_deadline(lambda: item.operation(slot.reader), self.sessions.deadline)
            )
        except Exception as e:  # handed to the caller with the Future
            item.future.set_exception(e)
        finally:
            if slot.reader.card is not None:
                slot.reader.reset()  # as SCARD_RESET_CARD: the card's security state is gone

    # -- control commands (called on the bus thread: only validate and enqueue) ------------------------
    def _slot_name(self, args: JsonObject) -> str:
        name = args.get("reader") or next(iter(self._slots))
        if name not in self._slots:
            raise Refusal("unknown_reader", f"no simulated reader {name!r}")
        return str(name)

    def tap(self, request: ControlRequest) -> JsonObject:
        args = request.args
        reader = self._slot_name(args)
        if not self._slots[reader].plugged:
            raise Refusal("unknown_reader", f"{reader} is unplugged (readerctl plug)")
        card = args.get("card", "alice")
        if not isinstance(card, str) or not card or len(card) > 64:
            raise Refusal("bad_request", "card is a profile name of 1..64 characters")
        cloned_from = args.get("cloned_from")
        if cloned_from is not None:
            if not isinstance(cloned_from, str) or not cloned_from or len(cloned_from) > 64:
                raise Refusal("bad_request", "cloned_from is a profile name of 1..64 characters")
            if cloned_from == card or any(args.get(k) for k in ("felica", "blank", "expired")):
                raise Refusal("bad_request", "cloned_from copies another My Number Card's valid certificate")
        pin = args.get("pin", "1234")
        if not isinstance(pin, str) or len(pin) != 4 or not pin.isascii() or not pin.isdigit():
            raise Refusal("bad_request", "pin is the simulated card's 4-digit PIN")
        if "faults" in args:
            try:
                FaultScript.from_data(args["faults"])
            except (FaultScriptError, AttributeError, TypeError) as e:
                raise Refusal("bad_request", f"faults: {e}") from e
        if "felica" in args:
            if "faults" in args:
                raise Refusal("bad_request", "fault scripts are for My Number Cards only")
            try:
                felica_profile(str(args["felica"]), card)
            except ValueError as e:
                raise Refusal("bad_request", str(e)) from e
        self.present(reader, args)
        return {"reader": reader, "card": card, "queued": True}

    def present(self, reader: str, args: JsonObject) -> None:
        """A card arrives on ``reader`` as checked :meth:`tap` arguments, the way a real reader's
        detection reaches its backend: queued for the backend thread, nothing answered. The benches
        tap this way, so that what they count per tap is a reader's tap, not a control request's."""
        self._commands.put(("tap", reader, args))

    def remove(self, request: ControlRequest) -> Future[JsonObject]:
        """Answered after the taps queued before it: ``{reader, had_card, card}``, ``card`` the kind that
        was taken off (``jpki``, ``felica``, ...) or None when the reader was empty."""
        reader = self._slot_name(request.args)
        future: Future[JsonObject] = Future()
        self._commands.put(_Removal(reader, future))
        return future

    def unplug(self, request: ControlRequest) -> JsonObject:
        """The reader goes away (a card on it leaves first): ``reader.removed``, as pcsc/nfc report it."""
        reader = self._slot_name(request.args)
        self._commands.put(("unplug", reader, request.args))
        return {"reader": reader, "queued": True}

    def plug(self, request: ControlRequest) -> JsonObject:
        reader = self._slot_name(request.args)
        self._commands.put(("plug", reader, request.args))
        return {"reader": reader, "queued": True}

    # -- the backend thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            with self._watch.step():
                self._handle(item)

    def _handle(self, item: tuple[str, str, JsonObject] | _Operation | _Removal) -> None:
        if isinstance(item, _Operation):
            self._operate(item)
            return
        if isinstance(item, _Removal):
            self._take_off(item)
            return
        action, reader, args = item
        try:
            slot = self._slots[reader]
            if action == "plug" and not slot.plugged:
                slot.plugged = True
                self.sessions.sink(ev.reader_added(reader, self.name, simulated=True))
            elif not slot.plugged:
                log.info("simulated reader is unplugged", reader=reader, action=action)
            elif action == "tap":
                self._tap(reader, args)
            elif action == "unplug":
                self._remove(reader)
                slot.plugged = False
                self.sessions.sink(ev.reader_removed(reader, self.name))
        except (ReaderdError, OSError, ValueError) as e:
            log.error("simulated tap failed", reader=reader, error=str(e))
            self.sessions.sink(ev.reader_error(reader, self.name, "simulator", str(e)))

    def _build(self, args: JsonObject) -> CardModel:
        if args.get("blank"):
            return blank_card()
        profile = CardProfile(
            name=str(args.get("card", "alice")),
            auth_pin=str(args.get("pin", "1234")),
            auth_tries_left=int(args.get("tries", 3)),
            expired=bool(args.get("expired", False)),
            behavior=CardBehavior(extended_length=not args.get("no_extended", False)),
            cloned_from=str(args["cloned_from"]) if args.get("cloned_from") is not None else None,
        )
        card: CardModel = build_card(profile, self.store)
        built = (profile.name, profile.cloned_from)
        # A first tap of a card name wrote its key and certificates (an expired card: a new certificate
        # each time); making them private walks the whole PKI directory, so not on every tap.
        if profile.expired or built not in self._built:
            self._private()
            self._built.add(built)
        if args.get("revoked"):
            self._revoked.add(self.store.user_auth_certificate(profile.certificate_holder).serial_number)
            self._write_crl()
        if "faults" in args:
            card = FaultyCard(card, FaultScript.from_data(args["faults"]))
        return card

    def _tap(self, reader: str, args: JsonObject) -> None:
        slot = self._slots[reader]
        if slot.kind is not None:
            self._remove(reader)  # a new card on an occupied reader: the old one left first
        if "felica" in args:
            self._tap_felica(slot, args)
            return
        card = self._build(args)
        atr = slot.reader.insert(card)
        slot.kind, slot.card_name = CardKind.UNKNOWN, str(args.get("card", "alice"))
        result = self.sessions.read_contact_card(reader, slot.reader, atr, simulated=True)
        slot.kind = result.kind
        if slot.reader.card is None:  # pulled during the read (fault script)
            slot.kind = None  # before the event: a client answering card.removed sees the reader empty
            self.sessions.card_removed(reader, result.kind, simulated=True)
            return
        if args.get("hold") is False:
            self._remove(reader)

    def _tap_felica(self, slot: _Slot, args: JsonObject) -> None:
        name = str(args.get("card", "alice"))
        slot.field.insert(VirtualFelicaCard(felica_profile(str(args["felica"]), name)))
        slot.kind, slot.card_name = CardKind.FELICA, name
        # Poll as a reader does (wildcard system, request code 1: the card says its system code).
        polling = parse_polling_response(slot.field.exchange(build_polling(), 0.01))
        self.sessions.read_felica_card(slot.reader.name, slot.field, polling, simulated=True)
        if args.get("hold") is False:
            self._remove(slot.reader.name)

    def _take_off(self, item: _Removal) -> None:
        slot = self._slots[item.reader]
        kind = slot.kind if slot.plugged else None
        try:
            if kind is not None:
                self._remove(item.reader)
        except (ReaderdError, OSError, ValueError) as e:
            log.error("simulated removal failed", reader=item.reader, error=str(e))
            item.future.set_exception(e)
            return
        card = str(kind) if kind is not None else None
        item.future.set_result({"reader": item.reader, "had_card": kind is not None, "card": card})

    def _remove(self, reader: str) -> None:
        slot = self._slots[reader]
        if slot.kind is None:
            return
        slot.reader.remove()
        slot.field.remove()
        kind, slot.kind, slot.card_name = slot.kind, None, None
        self.sessions.card_removed(reader, kind, simulated=True)
