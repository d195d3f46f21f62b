"""A virtual FeliCa card on nfcpy's ``udp`` driver: the RC-S380 path without hardware.

A reader finds it exactly as it would a card on an RC-S380::

    clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
    tag = clf.connect(rdwr={"targets": ["212F"], "on-connect": lambda tag: False})
    tag.read_without_encryption([ServiceCode(0, 0x0B)], [BlockCode(0)])

How the card side is driven. Every datagram goes to
:meth:`simulators.felica.VirtualFelicaCard.process_frame` and its answer goes back to the sender in nfcpy's
wire format (the udp ``Device``'s own ``_recv_data``/``_send_data``), so one card model serves the
in-process, PC/SC and udp paths and logs every frame the reader sent, Polling included. Not used, and why:

* ``connect(card=...)`` with ``Type3TagEmulation`` has its own parser and answers neither 02 nor 0A.
* ``clf.listen()`` + ``clf.exchange()``: ``listen_ttf`` answers Polling itself and keeps the "polled" state
  only for one listen window. A reader that polls at the end of one window and sends its first command in
  the next is ignored, and its command times out. That was seen here (a re-inserted card failed its
  first read); a real card has no such window, since FeliCa accepts any command carrying its IDm.

Loopback only: nfcpy's listener binds ``0.0.0.0:<port>`` (``udp.Device._bind_socket``, docs/card-facts.md §9).
:class:`FelicaListenerDevice` (nfcpy's udp ``Device`` via ``simulators.mynumber_nfc.LoopbackListenerDevice``)
refuses any host that is not a loopback address, binds that address once in its constructor and replaces
``_bind_socket`` so nfcpy never binds the wildcard address.

The card is in the field from :meth:`FelicaUdpCard.start`; :meth:`~FelicaUdpCard.remove` takes it out
(it stops answering and forgets frames sent meanwhile), :meth:`~FelicaUdpCard.insert` puts it back.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import nfc.clf
import structlog

from simulators.felica import (
    FelicaCardProfile,
    FelicaKind,
    VirtualFelicaCard,
    bathhouse_card,
    checkin_card,
    transport_card,
)
from simulators.mynumber_nfc import LoopbackListenerDevice

log = structlog.get_logger("readerd.sim.felica")

#: Called with an event name ("listening", "activated", "released", "removed", "inserted") and details.
EventHook = Callable[[str, Mapping[str, object]], None]

#: The FeliCa bit rates the card answers on (nfcpy readers poll 212F first).
BITRATES = ("212F", "424F")


class FelicaListenerDevice(LoopbackListenerDevice):
    """nfcpy's udp device bound to one loopback address for its whole life (see the module docstring).

    It also gates the transmitter on :attr:`in_field`, so a card removed while a frame is being answered
    sends nothing more.
    """

    def __init__(self, host: str, port: int, in_field: threading.Event) -> None:
        super().__init__(host, port)
        self._device_name = "FeliCa card simulator"
        self.in_field = in_field

    def _send_data(self, brty: str, data: bytes | bytearray, addr: tuple[str, int]) -> None:
        if self.in_field.is_set():
            super()._send_data(brty, data, addr)


class FelicaUdpCard:
    """Serves one :class:`VirtualFelicaCard` as a Type 3 (FeliCa) target on ``udp:<host>:<port>``."""

    #: Seconds one listen or receive waits before the loop looks at the stop and field flags again.
    POLL = 0.2

    def __init__(
        self,
        card: VirtualFelicaCard | FelicaCardProfile,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_event: EventHook | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.card = card if isinstance(card, VirtualFelicaCard) else VirtualFelicaCard(card)
        self._in_field = threading.Event()
        self._in_field.set()
        self._device = FelicaListenerDevice(host, port, self._in_field)
        self._on_event = on_event
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._thread: threading.Thread | None = None
        self._peer: tuple[str, int] | None = None
        self.activations = 0
        self.error: BaseException | None = None

    @property
    def profile(self) -> FelicaCardProfile:
        return self.card.profile

    @property
    def host(self) -> str:
        return str(self._device.addr[0])

    @property
    def port(self) -> int:
        return int(self._device.port)

    @property
    def path(self) -> str:
        """The nfcpy device path a reader opens."""
        return f"udp:{self.host}:{self.port}"

    def bound_address(self) -> tuple[str, int] | None:
        """The socket's own address (None once closed): what the loopback test checks."""
        sock = self._device.socket
        if sock is None:
            return None
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> FelicaUdpCard:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self.run, name=f"felica-udp-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("felica card thread did not stop", port=self.port)
        self._device.close()

    def __enter__(self) -> FelicaUdpCard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove(self) -> None:
        self._in_field.clear()
        self._emit("removed")

    def insert(self) -> None:
        self._in_field.set()
        self._emit("inserted")

    @property
    def in_field(self) -> bool:
        return self._in_field.is_set()

    def _emit(self, name: str, **details: object) -> None:
        if self._on_event is not None:
            self._on_event(name, {"port": self.port, **details})

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until the stop event is set (the thread body; :func:`run_felica_udp` calls it directly)."""
        self._emit("listening", host=self.host, idm=self.profile.idm.hex())
        try:
            while not self._stop.is_set():
                self._one_frame()
        except BaseException as e:  # the owner reads .error; a dead card must not pass silently
            self.error = e
            log.exception("felica card crashed", port=self.port)

    def _one_frame(self) -> None:
        try:
            brty, data, addr = self._device._recv_data(self.POLL, *BITRATES)
        except nfc.clf.TimeoutError:
            return
        except nfc.clf.BrokenLinkError:  # RFOFF: the reader closed or switched its field off
            if self._peer is not None:
                self._peer = None
                self._emit("released")
            return
        except (nfc.clf.CommunicationError, ValueError):
            return  # a datagram that is not "<brty> <hex>": a stray packet must not kill the card
        if not self._in_field.is_set():
            return  # out of the field: the card hears nothing
        reply = self.card.process_frame(bytes(data))
        if reply is None:
            return
        if bytes(data[1:2]) == b"\x00" and addr != self._peer:
            self._peer = addr
            self.activations += 1
            self._emit("activated", idm=self.profile.idm.hex())
        self._device._send_data(brty, bytearray(reply), addr)


def run_felica_udp(
    profile: FelicaCardProfile | VirtualFelicaCard,
    host: str,
    port: int,
    stop_event: threading.Event,
    on_event: EventHook | None = None,
) -> None:
    """Serve the card in the calling thread until ``stop_event`` is set; re-raises a crash of the loop."""
    card = FelicaUdpCard(profile, host, port, on_event=on_event, stop_event=stop_event)
    try:
        card.run()
    finally:
        card.stop()
    if card.error is not None:
        raise card.error


# --- command line (readerd-sim felica, wired in simulators/cli.py) -----------------------------------------
def parse_loopback_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` or ``port``; only a loopback IP literal (or ``localhost``) is accepted."""
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise argparse.ArgumentTypeError(f"the simulator listens on loopback only, not {host!r}")
    if address.version != 4:
        raise argparse.ArgumentTypeError("nfcpy's udp driver speaks IPv4 only: use 127.0.0.1")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port {port_text!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port {port} out of range")
    return host, port


def _idm(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"IDm {text!r} is not hex") from None
    if len(value) != 8:
        raise argparse.ArgumentTypeError("an IDm is 8 bytes (16 hex digits)")
    return value


def add_felica_parser(subparsers: Any) -> argparse.ArgumentParser:  # noqa: ANN401 - argparse's private type
    """Add ``felica`` to ``readerd-sim``'s sub-commands; returns the new parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "felica",
        help="a virtual FeliCa card on nfcpy's udp driver (loopback only)",
        description="Serves a virtual FeliCa card to readers that open nfcpy's 'udp:HOST:PORT' device. Reads "
        "commands from stdin, one per line: 'insert', 'remove', 'quit' (end of input also quits).",
    )
    parser.add_argument(
        "--udp", type=parse_loopback_endpoint, default=("127.0.0.1", 54321), help="loopback host:port"
    )
    parser.add_argument("--kind", choices=[k.value for k in FelicaKind], default=FelicaKind.BATHHOUSE.value)
    parser.add_argument("--member", default="00012345", help="bathhouse: member number / checkin: number")
    parser.add_argument("--birth-year", type=int, default=1950, help="bathhouse: birth year")
    parser.add_argument("--ward", type=lambda s: int(s, 0), default=101, help="bathhouse: issuing ward code")
    parser.add_argument("--card-version", type=int, default=1, help="bathhouse: card version")
    parser.add_argument("--idm", type=_idm, default=None, help="IDm as 16 hex digits (default: derived)")
    parser.add_argument("--removed", action="store_true", help="start with the card out of the field")
    return parser


def profile_from_args(args: argparse.Namespace) -> FelicaCardProfile:
    kind = FelicaKind(args.kind)
    if kind is FelicaKind.BATHHOUSE:
        return bathhouse_card(args.member, args.birth_year, args.ward, args.card_version, idm=args.idm)
    if kind is FelicaKind.CHECKIN:
        return checkin_card(args.member, idm=args.idm)
    return transport_card(name=args.member, idm=args.idm)


def run_felica_command(args: argparse.Namespace) -> int:
    """``readerd-sim felica``: 0 on a clean quit, 78 on a bad profile or a refused bind."""
    try:
        profile = profile_from_args(args)
        host, port = args.udp
        card = FelicaUdpCard(profile, host, port, on_event=lambda name, d: log.info(name, **d))
    except (ValueError, OSError) as e:
        log.error("cannot start the FeliCa card", error=str(e))
        return 78
    if args.removed:
        card.remove()
    card.start()
    log.info("felica card ready", path=card.path, kind=profile.kind.value, commands="insert|remove|quit")
    try:
        for line in sys.stdin:
            command = line.strip().lower()
            if command == "insert":
                card.insert()
            elif command == "remove":
                card.remove()
            elif command in ("quit", "exit"):
                break
            elif command:
                log.warning("unknown command", command=command, known="insert|remove|quit")
    except KeyboardInterrupt:
        pass
    finally:
        card.stop()
    return 1 if card.error is not None else 0
