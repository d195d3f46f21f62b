"""A TCP proxy on loopback between kiosks and their PostgreSQL, to cut a link while the others go on.

``TcpProxy(host, port)`` listens on ``127.0.0.1:<free port>`` (:attr:`TcpProxy.port`) and forwards every
connection to ``host:port``, in one of three modes, switchable at run time (``proxy.mode = "drop"``; the
assignment returns once the proxy thread has applied the mode):

* ``pass``: forwards both ways.
* ``refuse``: a link that refuses. Every open connection is reset (RST to the client, the upstream side
  closed), and new ones are accepted and reset at once: the client fails immediately.
* ``drop``: a link that silently drops packets, like a cut cable. Connections stay open and new ones are
  accepted (without connecting upstream), but no byte moves in either direction. Nothing is thrown away:
  what the client sends waits in the kernel's buffers, and back in ``pass`` the streams resume where they
  stopped (a new connection then connects upstream), as TCP would after the cable is back. What it cannot
  imitate: the kernel of the proxy still acknowledges the client's segments, so a client's
  ``tcp_user_timeout`` (which counts *unacknowledged* data) and its keepalives never fire; to the client
  the link looks like a server that stopped answering. Only client-side timeouts bound it.

When upstream refuses (PostgreSQL stopped), a new connection is reset, as a direct one would be refused.
One thread does everything (``poll`` over the sockets, rebuilt each round: a proxy has few connections).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Final, Literal

Mode = Literal["pass", "refuse", "drop"]
MODES: Final[tuple[Mode, ...]] = ("pass", "refuse", "drop")
CHUNK: Final = 65536
#: Bytes buffered per direction before the proxy stops reading that side (back-pressure).
BUFFER_LIMIT: Final = 1 << 20
POLL_MS: Final = 500
CONNECT_TIMEOUT: Final = 2.0
APPLY_TIMEOUT: Final = 5.0


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees "connection reset", not an orderly end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Link:
    client: socket.socket
    upstream: socket.socket | None = None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False  # the client half-closed: pass the FIN on once its bytes are sent
    upstream_eof: bool = False

    def close(self, *, reset: bool = False) -> None:
        (_reset if reset else socket.socket.close)(self.client)
        if self.upstream is not None:
            self.upstream.close()


class TcpProxy:
    """See the module docstring. ``close()`` (or the ``with`` block's end) stops it and closes everything."""

    def __init__(self, target_host: str, target_port: int, *, mode: Mode = "pass") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._links: list[_Link] = []
        self._mode: Mode = mode
        self._requested = 0  # mode changes asked for ...
        self._applied = 0  # ... and applied by the proxy thread
        self._changed = threading.Condition()
        self._closing = False
        #: Counters for tests and reports.
        self.accepted = 0
        self.reset = 0  # connections reset (refuse mode, or upstream unreachable)
        self.forwarded = 0  # bytes forwarded, both directions
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy:{self.port}", daemon=True)
        self._thread.start()

    # -- the test's side ------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._changed:
            self._mode = mode
            self._requested += 1
            wanted = self._requested
        self._wake()
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._applied >= wanted or not self._thread.is_alive(), APPLY_TIMEOUT
            ):
                raise TimeoutError(f"the proxy did not apply mode {mode!r} within {APPLY_TIMEOUT} s")

    @property
    def connections(self) -> int:
        """Connections open now (client side)."""
        return len(self._links)

    def close(self) -> None:
        self._closing = True
        self._wake()
        self._thread.join(APPLY_TIMEOUT)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TcpProxy(127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}, {self._mode})"

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- the proxy thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing:
                with self._changed:
                    mode, requested = self._mode, self._requested
                if mode == "refuse":
                    self._drop_all(reset=True)
                elif mode == "pass":
                    self._connect_pending()
                with self._changed:
                    self._applied = requested
                    self._changed.notify_all()
                self._round(mode)
        finally:
            self._drop_all(reset=False)
            self._listener.close()
            with self._changed:
                self._changed.notify_all()

    def _drop_all(self, *, reset: bool) -> None:
        for link in self._links:
            link.close(reset=reset)
            self.reset += reset
        self._links.clear()

    def _connect_pending(self) -> None:
        for link in list(self._links):
            if link.upstream is None:
                self._connect(link)

    def _connect(self, link: _Link) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError:
            self._remove(link, reset=True)  # PostgreSQL is down: as a direct connection, refused
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.setblocking(False)
        link.upstream = upstream

    def _remove(self, link: _Link, *, reset: bool = False) -> None:
        link.close(reset=reset)
        self.reset += reset
        with contextlib.suppress(ValueError):
            self._links.remove(link)

    def _round(self, mode: Mode) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self._listener, select.POLLIN)
        by_fd: dict[int, tuple[_Link, bool]] = {}  # fd -> (link, is the client side)
        if mode == "pass":  # in drop mode no link is polled: nothing moves
            for link in self._links:
                if link.upstream is None:
                    continue
                for sock, inbound, outbound, eof, is_client in (
                    (link.client, link.to_upstream, link.to_client, link.client_eof, True),
                    (link.upstream, link.to_client, link.to_upstream, link.upstream_eof, False),
                ):
                    events = 0
                    if not eof and len(inbound) < BUFFER_LIMIT:
                        events |= select.POLLIN
                    if outbound:
                        events |= select.POLLOUT
                    if events:
                        poller.register(sock, events)
                        by_fd[sock.fileno()] = (link, is_client)
        for fd, events in poller.poll(POLL_MS):
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            elif fd == self._listener.fileno():
                self._accept(mode)
            elif fd in by_fd:
                link, is_client = by_fd[fd]
                if link in self._links:
                    self._pump(link, is_client, events)

    def _accept(self, mode: Mode) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    return
                raise
            self.accepted += 1
            if mode == "refuse":
                _reset(client)
                self.reset += 1
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.setblocking(False)
            link = _Link(client)
            self._links.append(link)
            if mode == "pass":
                self._connect(link)

    def _pump(self, link: _Link, is_client: bool, events: int) -> None:
        """Move bytes for one ready side of a link: read into the other side's buffer, write its own."""
        assert link.upstream is not None
        sock, peer = (link.client, link.upstream) if is_client else (link.upstream, link.client)
        inbound = link.to_upstream if is_client else link.to_client
        outbound = link.to_client if is_client else link.to_upstream
        try:
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                data = sock.recv(CHUNK)
                if data:
                    inbound += data
                elif is_client:
                    link.client_eof = True
                else:
                    link.upstream_eof = True
            if outbound and events & select.POLLOUT:
                sent = sock.send(outbound)
                del outbound[:sent]
                self.forwarded += sent
            # Hand what was read to the peer at once when it can take it (most rounds: one hop less).
            if inbound:
                with contextlib.suppress(BlockingIOError):
                    sent = peer.send(inbound)
                    del inbound[:sent]
                    self.forwarded += sent
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._remove(link, reset=True)
            return
        if (link.client_eof and not link.to_upstream) or (link.upstream_eof and not link.to_client):
            self._remove(link)  # one side ended and all its bytes are delivered: end the other
