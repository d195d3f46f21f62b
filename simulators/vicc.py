"""A virtual ICC for vsmartcard's vpcd driver: puts a simulated card behind the real pcscd.

vpcd (inside pcscd) listens on a TCP port per reader slot; a virtual card connects to it. Each message in
both directions is a 2-byte big-endian length and a payload. From vpcd, a 1-byte payload is a control
code (00 power off, 01 power on, 02 reset, 04 get ATR) and anything longer is a command APDU; the card
answers only GET ATR and APDUs (docs/card-facts.md §10). Connecting is inserting the card, disconnecting is
removing it.

Latency: vpcd writes the length and the payload separately; with Nagle and delayed ACKs every APDU would
cost ~40 ms of TCP timers. ``TCP_NODELAY`` on the socket and ``TCP_QUICKACK`` before every ``recv`` (Linux
clears it) bring a round trip through pyscard -> pcscd -> vpcd -> here to ~0.1 ms.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from simulators.inprocess import CardModel, CardPulled, ReaderVanished
from simulators.mynumber import audit_model_apdu

log = structlog.get_logger("readerd.sim.vicc")

VPCD_POWER_OFF = 0x00
VPCD_POWER_ON = 0x01
VPCD_RESET = 0x02
VPCD_GET_ATR = 0x04
MAX_ATR = 33  # pcsc-lite MAX_ATR_SIZE
DEFAULT_VPCD_PORT = 35963
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``); ValueError otherwise.

    vpcd itself listens on every interface (docs/card-facts.md §10), but the virtual card only ever dials a
    loopback address: its APDUs carry certificates and PINs and must not cross a network.
    """
    if host == "localhost":
        return host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator talks to loopback only, not {host!r}")
    return host


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (or just ``port``, or ``[::1]:port``); the simulator refuses anything but loopback."""
    host, _, port = text.rpartition(":")
    host = check_loopback(host.strip("[]") or "127.0.0.1")
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"bad port {port!r}") from None


class EmptyAnswerError(RuntimeError):
    """The card model answered an APDU with no bytes, which vpcd cannot carry (see ``ViccBridge._handle``)."""


@dataclass
class ViccStats:
    apdus: int = 0
    connects: int = 0
    disconnects: int = 0


class ViccBridge:
    """One simulated card slot on one vpcd port. ``insert()`` connects, ``remove()`` disconnects.

    Fault events from the card model act on the link: :class:`CardPulled` disconnects (the reader sees the
    card gone mid-command), :class:`ReaderVanished` disconnects and reconnects after its delay.
    """

    def __init__(
        self,
        card: CardModel,
        host: str = "127.0.0.1",
        port: int = DEFAULT_VPCD_PORT,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        check_loopback(host)
        if len(card.atr) > MAX_ATR:
            raise ValueError(f"ATR of {len(card.atr)} bytes exceeds pcsc-lite's {MAX_ATR}")
        self.card = card
        self.host = host
        self.port = port
        self.stats = ViccStats()
        self.errors: list[BaseException] = []
        self._on_event = on_event or (lambda _event: None)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # -- control --------------------------------------------------------------------------------------
    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def insert(self, timeout: float = 5.0) -> None:
        """Connect to vpcd (retrying until ``timeout``: pcscd may still be starting)."""
        if self.inserted:
            return
        sock = self._connect(timeout)
        with self._lock:
            self._sock = sock
            self._closing.clear()
        self.stats.connects += 1
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"vicc-{self.port}", daemon=True
        )
        self._thread.start()
        self._on_event("inserted")

    def remove(self, timeout: float = 5.0) -> None:
        """Disconnect: pcscd reports the card removed at its next presence poll."""
        self._closing.set()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _connect(self, timeout: float) -> socket.socket:
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while True:
                try:
                    sock = socket.create_connection((self.host, self.port), timeout=1.0)
                except OSError:
                    if deadline.wait(0.05):
                        raise
                    continue
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
        finally:
            timer.cancel()

    # -- the link -------------------------------------------------------------------------------------
    def _recv_exact(self, sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _send(sock: socket.socket, payload: bytes) -> None:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                header = self._recv_exact(sock, 2)
                if header is None:
                    break
                payload = self._recv_exact(sock, int.from_bytes(header, "big"))
                if payload is None:
                    break
                answer = self._handle(payload)
                if answer is not None:
                    self._send(sock, answer)
        except CardPulled:
            self._on_event("pulled")
            self._drop(sock)
        except ReaderVanished as gone:
            self._on_event("vanished")
            self._drop(sock)
            if not self._closing.wait(gone.seconds):
                self._thread = None
                self.insert()
        except EmptyAnswerError as e:
            self.errors.append(e)
            log.error("virtual card gave an empty answer; disconnected", port=self.port, error=str(e))
            self._drop(sock)
        except OSError as e:
            if not self._closing.is_set():
                self.errors.append(e)
                log.warning("vpcd link failed", port=self.port, error=str(e))
        except Exception as e:  # a bug in a card model must not vanish silently with its thread
            self.errors.append(e)
            log.exception("virtual card crashed", port=self.port)
        finally:
            self.stats.disconnects += 1

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _handle(self, payload: bytes) -> bytes | None:
        if len(payload) == 1:
            code = payload[0]
            if code == VPCD_GET_ATR:
                return self.card.atr
            if code == VPCD_POWER_OFF:
                self.card.power_off()
            elif code in (VPCD_POWER_ON, VPCD_RESET):
                self.card.power_on()
            return None
        self.stats.apdus += 1
        audit_model_apdu(self.card, payload, "vicc")
        answer = self.card.process(payload)
        if not answer:
            # vpcd reads an empty message as "wait for more" and would hang pcscd's slot until we
            # disconnect: a card model that answers nothing is a bug, so fail loudly and let go.
            raise EmptyAnswerError(f"the card answered {payload[:4].hex()} with no bytes")
        return answer
