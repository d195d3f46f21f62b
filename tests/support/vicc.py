"""A minimal virtual ICC for vpcd, to test the pcscd harness (the card simulator lives in ``simulators/``).

vpcd (inside pcscd) listens; the vicc connects to ``127.0.0.1:<port>`` (= card inserted) and disconnects
(= card removed). Every message, both ways, is a 2-byte big-endian length and a payload. From vpcd, a
1-byte payload is a control code: ``00`` power off, ``01`` power on, ``02`` reset (no reply to those),
``04`` get ATR (reply: the ATR); anything else is a C-APDU (reply: the R-APDU). docs/card-facts.md §10.

``TCP_NODELAY`` is set on the socket and ``TCP_QUICKACK`` before every ``recv`` (Linux clears it): without
them each APDU costs ~48 ms of delayed-ACK stall (docs/card-facts.md §10, latency trap).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

POWER_OFF: Final = 0x00
POWER_ON: Final = 0x01
RESET: Final = 0x02
GET_ATR: Final = 0x04
SW_HANDLER_FAILED: Final = b"\x6f\x00"
MAX_ATR: Final = 33

Handler = Callable[[bytes], bytes]


class _Closed(Exception):
    """The peer (or :meth:`Vicc.remove`) closed the connection."""


class Vicc:
    """One virtual card on one vpcd port: ``insert()`` connects, ``remove()`` disconnects.

    ``apdus`` records every C-APDU received, ``controls`` every control code, ``errors`` every exception
    raised in the thread (a test asserts it stays empty). A handler exception answers ``6F 00``.
    """

    def __init__(self, port: int, atr: bytes, handler: Handler, host: str = "127.0.0.1") -> None:
        if not 2 <= len(atr) <= MAX_ATR:
            raise ValueError(f"an ATR has 2..{MAX_ATR} bytes, not {len(atr)}")
        self.port = port
        self.host = host
        self.atr = bytes(atr)
        self.handler = handler
        self.apdus: list[bytes] = []
        self.controls: list[int] = []
        self.errors: list[BaseException] = []
        self.first_message_at: float | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._removing = False

    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def insert(self, timeout: float = 5.0) -> Vicc:
        """Connect to vpcd (retrying while the port is not listening yet, bounded) and serve in a thread."""
        if self._thread is not None:
            raise RuntimeError("already inserted")
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._removing = False
        self.first_message_at = None
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"vicc:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def remove(self, timeout: float = 5.0) -> None:
        """Disconnect (vpcd sees the card removed) and join the thread (bounded)."""
        sock, thread = self._sock, self._thread
        self._sock, self._thread = None, None
        self._removing = True
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self.errors.append(TimeoutError(f"vicc thread on port {self.port} did not stop"))

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                payload = self._receive(sock)
                if self.first_message_at is None:
                    self.first_message_at = time.monotonic()
                reply = self._answer(payload)
                if reply is not None:
                    sock.sendall(struct.pack(">H", len(reply)) + reply)
        except _Closed:
            return
        except OSError as error:
            if not self._removing:
                self.errors.append(error)
        except BaseException as error:  # recorded for the test, never leaked
            self.errors.append(error)

    def _answer(self, payload: bytes) -> bytes | None:
        if len(payload) == 1:
            code = payload[0]
            self.controls.append(code)
            return self.atr if code == GET_ATR else None
        self.apdus.append(payload)
        try:
            reply = self.handler(payload)
        except Exception as error:  # a broken handler must not hang pcscd
            self.errors.append(error)
            return SW_HANDLER_FAILED
        if len(reply) < 2 or len(reply) > 0xFFFF:
            self.errors.append(ValueError(f"handler answered {len(reply)} bytes"))
            return SW_HANDLER_FAILED
        return reply

    def _receive(self, sock: socket.socket) -> bytes:
        (length,) = struct.unpack(">H", self._exactly(sock, 2))
        return self._exactly(sock, length)

    @staticmethod
    def _exactly(sock: socket.socket, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = sock.recv(n - len(chunks))
            if not chunk:
                raise _Closed
            chunks += chunk
        return bytes(chunks)

    def __enter__(self) -> Vicc:
        return self.insert()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
