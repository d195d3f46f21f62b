"""The virtual My Number Card as an ISO/IEC 14443 Type B / ISO-DEP card on nfcpy's ``udp`` driver.

A reader reaches it exactly as it would reach a card on a Sony RC-S380::

    clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
    tag = clf.connect(rdwr={"targets": ["106B"], "on-connect": lambda tag: False})
    tag.transceive(apdu)  # an nfc.tag.tt4.Type4BTag

What nfcpy 1.0.4 does on the reader side, and therefore what this card has to answer:

* ``udp.Device.sense_ttb`` (nfc/clf/udp.py:165-184) sends SENSB_REQ ``05 00 10`` and accepts any answer of
  at least 12 bytes starting with ``50``. ``listen_ttb`` (udp.py:301-332) answers it for us with the
  SENSB_RES we configure and returns the *next* frame as ``tt4_cmd``: normally the ATTRIB.
* ``Type4BTag.__init__`` (nfc/tag/tt4.py:539-572) sends ATTRIB ``1D PUPI 00 08 01 00`` (FSDI 8 = 256
  bytes, 106 kbit/s, protocol type 1, CID 0) with a **30 ms** timeout, and only logs the answer. It
  takes FSCI and FWI from SENSB_RES bytes 10 and 11 and never uses CID or NAD afterwards.
* ``IsoDepInitiator.exchange`` (tt4.py:78-177) sends I-blocks ``02``/``03`` (``12``/``13`` when it
  chains a command longer than FSC-3), expects R(ACK) ``A2|pni`` for each chained part, echoes S(WTX)
  (tt4.py:121-123) and collects a chained answer by sending R(ACK) ``A2|pni`` (tt4.py:143-175). Its
  presence check is R(NAK) ``B2|pni`` (tt4.py:82-86).
* nfcpy has no Type 4 tag *emulation* (``nfc.tag.emulate``, nfc/tag/__init__.py:473-480, knows Type 3
  only), so ``connect(card=...)`` cannot serve this card: :class:`IsoDepCardLayer` is the card's
  ISO 14443-4 half, driven through ``clf.listen()`` and ``clf.exchange()``.

SENSB_RES (ATQB) of the simulated card, derived from the contactless PC/SC ATR the card model carries
(docs/card-facts.md §5, "JPKI (06)"): ``3B 88 80 01 | 00 00 05 E0 | B3 81 A1 | 00 | 7F``. T0 = 88 announces 8
historical bytes, which PC/SC part 3 builds for Type B as Application Data (4) + Protocol Info (3) +
one byte whose high nibble is the MBLI from the ATTRIB answer. Hence::

    SENSB_RES = 50 | PUPI (4, random per activation) | 00 00 05 E0 | B3 81 A1

Protocol Info ``B3``: 212 and 424 kbit/s both ways, same rate required; ``81``: FSCI 8 (256-byte frames),
ISO 14443-4 compliant; ``A1``: FWI 10 (FWT 302 us * 2^10 = 309 ms), ADC 0, CID supported, NAD not. The
ATTRIB answer is ``MBLI<<4 | CID`` = ``00``, matching the ATR's ``00`` byte.

nfcpy's udp listener binds ``0.0.0.0`` and closes its socket before every ``listen`` (udp.py:68-77,
528-540); :class:`LoopbackListenerDevice` binds the loopback address once and keeps the socket, so the
card is reachable from this host only and never misses a frame between two listens.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from typing import Any

import nfc.clf
import nfc.clf.udp
import structlog

from simulators.inprocess import CardModel, CardPulled, ReaderVanished
from simulators.mynumber import audit_model_apdu

log = structlog.get_logger("readerd.sim.nfc")

#: Application Data and Protocol Info of the ATQB, from the contactless ATR (see the module docstring).
APPLICATION_DATA = bytes.fromhex("000005E0")
PROTOCOL_INFO = bytes.fromhex("B381A1")
#: Maximum buffer length index the card reports in its ATTRIB answer (0: not given).
MBLI = 0
#: FWT from FWI 10 in PROTOCOL_INFO: 4096/fc * 2^10.
FRAME_WAITING_TIME = 4096 / 13.56e6 * 2**10

#: FSDI -> FSD (ISO/IEC 14443-4 table; values beyond 8 are treated as 256, the pre-2016 rule).
FSD_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)

ATTRIB = 0x1D
SENSB_REQ = 0x05
PCB_I = 0x02
PCB_R_ACK = 0xA2
PCB_S_DESELECT = 0xC2
PCB_S_WTX = 0xF2
PCB_CHAINING = 0x10
PCB_CID = 0x08
PCB_NAD = 0x04

#: WTXM the card asks for while the card model is still working (nfcpy then waits WTXM * FWT).
WTX_MULTIPLIER = 4


def sensb_res(pupi: bytes) -> bytes:
    """The ATQB: ``50`` + PUPI + Application Data + Protocol Info (12 bytes)."""
    if len(pupi) != 4:
        raise ValueError("a PUPI is 4 bytes")
    return b"\x50" + pupi + APPLICATION_DATA + PROTOCOL_INFO


def random_pupi() -> bytes:
    """A fresh PUPI per activation, as the real card does (docs/card-facts.md §5)."""
    return os.urandom(4)


class Kind(Enum):
    SEND = "send"  # answer with ``frame``
    APDU = "apdu"  # a complete command APDU for the card model; answer with first_block()
    DESELECT = "deselect"  # answer with ``frame``, then leave the protocol state
    IGNORE = "ignore"  # stay silent (not for us, or not understood)


@dataclass(frozen=True)
class Action:
    kind: Kind
    frame: bytes = b""
    apdu: bytes = b""


class IsoDepCardLayer:
    """The card (PICC) side of ISO/IEC 14443-4 after Type B activation: no I/O, one activation.

    Block numbering follows ISO 14443-4 rules D/E: the card's block number starts at 1 and takes the number
    of every I-block it receives; an R(ACK) with another number asks for the next part of a chained
    answer, one with the same number (or an R(NAK) with it) for a repeat of the last block.
    """

    def __init__(self, pupi: bytes) -> None:
        self.pupi = pupi
        self.cid = 0
        self.fsd = 256
        self.block = 1
        self._last = b""
        self._rx = bytearray()
        self._tx = b""
        self._with_cid = False

    # -- activation ---------------------------------------------------------------------------------
    def attrib(self, frame: bytes) -> bytes | None:
        """The answer to ATTRIB ``1D PUPI P1 P2 P3 P4 [higher layer]``, or None if it is not for us."""
        if len(frame) < 9 or frame[0] != ATTRIB or frame[1:5] != self.pupi:
            return None
        fsdi = frame[6] & 0x0F
        self.fsd = FSD_TABLE[min(fsdi, len(FSD_TABLE) - 1)]
        self.cid = frame[8] & 0x0F
        return bytes([MBLI << 4 | self.cid])

    @property
    def max_inf(self) -> int:
        """INF bytes per card frame: FSD less PCB, optional CID and the 2-byte CRC."""
        return self.fsd - 3 - (1 if self._with_cid else 0)

    # -- framing ------------------------------------------------------------------------------------
    def _frame(self, pcb: int, inf: bytes = b"") -> bytes:
        if self._with_cid:
            return bytes([pcb | PCB_CID, self.cid]) + inf
        return bytes([pcb]) + inf

    def _send(self, frame: bytes) -> Action:
        self._last = frame
        return Action(Kind.SEND, frame)

    def _next_block(self) -> bytes:
        part, self._tx = self._tx[: self.max_inf], self._tx[self.max_inf :]
        frame = self._frame(PCB_I | (PCB_CHAINING if self._tx else 0) | self.block, part)
        self._last = frame
        return frame

    def first_block(self, response: bytes) -> bytes:
        """The first (maybe chained) I-block carrying the card model's response APDU."""
        self._tx = response
        return self._next_block()

    def wtx_request(self, multiplier: int = WTX_MULTIPLIER) -> bytes:
        return self._frame(PCB_S_WTX, bytes([multiplier & 0x3F]))

    @staticmethod
    def is_wtx_response(frame: bytes) -> bool:
        return bool(frame) and frame[0] & ~PCB_CID & 0xFF == PCB_S_WTX

    # -- receiving ----------------------------------------------------------------------------------
    def receive(self, frame: bytes) -> Action:
        """What to do with one frame from the reader."""
        if not frame:
            return Action(Kind.IGNORE)
        pcb, rest = frame[0], frame[1:]
        if pcb & PCB_CID:
            if not rest or rest[0] & 0x0F != self.cid:
                return Action(Kind.IGNORE)
            rest = rest[1:]
        elif self.cid != 0:
            return Action(Kind.IGNORE)  # a card with CID != 0 answers only blocks that carry it
        self._with_cid = bool(pcb & PCB_CID)

        if pcb & 0xE2 == PCB_I:
            return self._receive_i(pcb, rest)
        if pcb & 0xE6 == PCB_R_ACK:
            return self._receive_r(pcb)
        if pcb & 0xF7 == PCB_S_DESELECT:
            return Action(Kind.DESELECT, self._frame(PCB_S_DESELECT))
        return Action(Kind.IGNORE)

    def _receive_i(self, pcb: int, inf: bytes) -> Action:
        if pcb & PCB_NAD:
            inf = inf[1:]
        self.block = pcb & 1
        self._tx = b""
        self._rx += inf
        if pcb & PCB_CHAINING:
            return self._send(self._frame(PCB_R_ACK | self.block))
        apdu, self._rx = bytes(self._rx), bytearray()
        return Action(Kind.APDU, apdu=apdu)

    def _receive_r(self, pcb: int) -> Action:
        number = pcb & 1
        if pcb & PCB_CHAINING:  # R(NAK)
            if number == self.block and self._last:
                return Action(Kind.SEND, self._last)
            return self._send(self._frame(PCB_R_ACK | self.block))
        if number != self.block and self._tx:
            self.block = number
            return Action(Kind.SEND, self._next_block())
        if self._last:
            return Action(Kind.SEND, self._last)
        return Action(Kind.IGNORE)


class LoopbackListenerDevice(nfc.clf.udp.Device):  # type: ignore[misc]  # nfcpy is untyped
    """nfcpy's udp device, listening on a loopback address only, on one socket for its whole life.

    ``port`` 0 picks a free port; :attr:`port` tells which.
    """

    socket: socket.socket | None
    addr: tuple[str, int]

    def __init__(self, host: str, port: int) -> None:
        address = ipaddress.ip_address(host)
        if not address.is_loopback:
            raise ValueError(f"the simulated card listens on loopback only, not {host}")
        if address.version != 4:  # nfcpy resolves with gethostbyname: IPv4 only
            raise ValueError("nfcpy's udp driver speaks IPv4 only: use 127.0.0.1")
        super().__init__(host, port)  # resolves the address and creates the (unbound) socket
        sock = self.socket
        if sock is None:
            raise RuntimeError("nfcpy's udp device made no socket")
        try:
            sock.bind(self.addr)
        except OSError:
            self.close()
            raise
        bound_host, bound_port = sock.getsockname()[:2]
        self.addr = (str(bound_host), int(bound_port))
        self._path = "{}:{}".format(*self.addr)
        self._vendor_name = "readerd"
        self._device_name = "My Number Card simulator"
        self._chipset_name = "UDP"

    @property
    def port(self) -> int:
        return int(self.addr[1])

    def mute(self) -> None:
        """Keep the socket: the card stays bound (udp.Device.mute closes it before every listen)."""

    def _bind_socket(self, time_to_return: float) -> bool:
        return self.socket is not None

    def drain(self) -> None:
        """Forget frames that arrived while the card was out of the field."""
        sock = self.socket
        if sock is None:
            return
        sock.setblocking(False)
        try:
            while True:
                sock.recvfrom(1024)
        except OSError:
            pass
        finally:
            sock.setblocking(True)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class _LinkLost(Exception):
    """The reader did not answer a waiting time extension: the activation is over."""


class MyNumberUdpCard:
    """Serves a card model as a Type B ISO-DEP card on ``udp:<host>:<port>`` in a thread.

    The card is in the field from :meth:`start` on; :meth:`remove` takes it out (readers see the link
    break), :meth:`insert` puts it back. A card model raising :class:`CardPulled` takes the card out of
    the field; :class:`ReaderVanished` takes it out for the given seconds.
    """

    #: Seconds one listen or receive waits before the thread looks at the stop flag again.
    POLL = 0.25

    def __init__(
        self,
        card: CardModel,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pupi: Callable[[], bytes] = random_pupi,
        wtx_after: float = FRAME_WAITING_TIME / 3,
    ) -> None:
        self.card = card
        self._device = LoopbackListenerDevice(host, port)
        self._clf: Any = nfc.clf.ContactlessFrontend()
        self._clf.device = self._device
        self._pupi = pupi
        self._wtx_after = wtx_after
        self._stop = threading.Event()
        self._in_field = threading.Event()
        self._in_field.set()
        self._thread: threading.Thread | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mynumber-nfc-card")
        self.activations = 0
        self.pupis: list[bytes] = []
        self.wtx_requests = 0
        self.error: BaseException | None = None

    @property
    def host(self) -> str:
        return str(self._device.addr[0])

    @property
    def port(self) -> int:
        return self._device.port

    @property
    def path(self) -> str:
        """The nfcpy device path a reader opens."""
        return f"udp:{self.host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> MyNumberUdpCard:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name=f"mynumber-nfc-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        interrupt = getattr(self.card, "interrupt", None)
        if callable(interrupt):
            interrupt()  # a stalled FaultyCard
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("nfc card thread did not stop", port=self.port)
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._device.close()

    def __enter__(self) -> MyNumberUdpCard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove(self) -> None:
        self._in_field.clear()

    def insert(self) -> None:
        self._in_field.set()

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._in_field.is_set():
                    self._stop.wait(0.02)
                    if self._in_field.is_set():
                        self._device.drain()
                    continue
                self._one_activation()
        except BaseException as e:  # the test or simulator owner reads .error
            self.error = e
            log.exception("nfc card crashed", port=self.port)

    def _one_activation(self) -> None:
        pupi = self._pupi()
        target = nfc.clf.LocalTarget("106B")
        target.sensb_res = bytearray(sensb_res(pupi))
        try:
            activated = self._clf.listen(target, self.POLL)
        except nfc.clf.CommunicationError:
            return  # RFOFF or silence after our SENSB_RES
        if activated is None or activated.tt4_cmd is None:
            return
        layer = IsoDepCardLayer(pupi)
        answer = layer.attrib(bytes(activated.tt4_cmd))
        if answer is None:
            return  # not an ATTRIB for this PUPI (a reader that started over): listen again
        self.activations += 1
        self.pupis.append(pupi)
        self.card.power_on()
        try:
            self._serve(layer, answer)
        finally:
            self.card.power_off()

    def _serve(self, layer: IsoDepCardLayer, first: bytes) -> None:
        reply: bytes | None = first
        while not self._stop.is_set() and self._in_field.is_set():
            try:
                frame = self._clf.exchange(reply, self.POLL)
            except nfc.clf.TimeoutError:
                reply = None
                continue
            except nfc.clf.CommunicationError:
                return  # RFOFF: the reader closed or turned its field off
            reply = None
            if frame is None:
                return
            frame = bytes(frame)
            if len(frame) == 3 and frame[0] == SENSB_REQ:
                return  # a new activation started without RFOFF; answer it from a fresh listen
            action = layer.receive(frame)
            if action.kind is Kind.SEND:
                reply = action.frame
            elif action.kind is Kind.APDU:
                try:
                    reply = self._process(layer, action.apdu)
                except _LinkLost:
                    return
            elif action.kind is Kind.DESELECT:
                self._clf.exchange(action.frame, 0)
                return

    def _process(self, layer: IsoDepCardLayer, apdu: bytes) -> bytes | None:
        """Runs the card model; asks for waiting time extensions while it works.

        None: the card stays silent (it left the field). Raises :class:`_LinkLost` if the reader went away
        during a waiting time extension.
        """
        audit_model_apdu(self.card, apdu, "nfc")
        future: Future[bytes] = self._worker.submit(self.card.process, apdu)
        while True:
            try:
                response = future.result(timeout=self._wtx_after)
            except FutureTimeout:
                if self._stop.is_set():
                    return None
                if not self._extend_waiting_time(layer):
                    raise _LinkLost from None
                continue
            except CardPulled:
                self._in_field.clear()
                return None
            except ReaderVanished as e:
                self._in_field.clear()
                threading.Thread(target=self._come_back, args=(e.seconds,), daemon=True).start()
                return None
            return layer.first_block(response)

    def _extend_waiting_time(self, layer: IsoDepCardLayer) -> bool:
        self.wtx_requests += 1
        try:
            frame = self._clf.exchange(layer.wtx_request(), FRAME_WAITING_TIME * WTX_MULTIPLIER)
        except nfc.clf.CommunicationError:
            return False
        return frame is not None and IsoDepCardLayer.is_wtx_response(bytes(frame))

    def _come_back(self, seconds: float) -> None:
        if not self._stop.wait(seconds):
            self._in_field.set()
