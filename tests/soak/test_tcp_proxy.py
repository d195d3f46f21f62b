"""The fleet test's TCP proxy (tests/support/tcp_proxy.py) against an echo server: it forwards, refuses
and silently drops, and comes back. Cost: about 1 s."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import TcpProxy


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """Echoes every connection's bytes back; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=2)


def cut_off(port: int | None = None, sock: socket.socket | None = None) -> bool:
    """True when the proxy closes the connection (a reset, a broken pipe, or the end of the stream) on a
    fresh connection to ``port`` or on ``sock``, rather than answering or staying silent for 2 s."""
    try:
        with contextlib.ExitStack() as stack:
            if sock is None:
                assert port is not None
                sock = stack.enter_context(connect(port))  # the reset may come before connect() returns
            sock.settimeout(2)
            return roundtrip(sock, b"?") == b""
    except (ConnectionError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_pass_forwards_both_ways_and_large_payloads():
    with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy, connect(proxy.port) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 8192  # 2 MiB: past the proxy's buffer limit, so back-pressure works
        assert roundtrip(sock, big) == big
        assert proxy.forwarded >= 2 * (len(big) + 5)


def test_refuse_resets_open_and_new_connections_and_pass_comes_back():
    with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        sock = connect(proxy.port)
        assert roundtrip(sock, b"x") == b"x"
        proxy.mode = "refuse"
        assert cut_off(sock=sock)
        sock.close()
        assert cut_off(proxy.port)
        proxy.mode = "pass"
        with connect(proxy.port) as again:
            assert roundtrip(again, b"back") == b"back"
        assert proxy.reset >= 2


def test_drop_accepts_but_moves_nothing_and_the_stream_resumes_intact():
    with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        sock = connect(proxy.port)
        assert roundtrip(sock, b"a") == b"a"
        proxy.mode = "drop"
        sock.settimeout(0.3)
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        fresh = connect(proxy.port)  # accepted (no refusal), but not connected upstream
        fresh.settimeout(0.3)
        fresh.sendall(b"new")
        with pytest.raises(TimeoutError):
            fresh.recv(10)
        assert proxy.connections == 2
        proxy.mode = "pass"  # the cable is back: nothing was lost
        sock.settimeout(2)
        fresh.settimeout(2)
        assert sock.recv(10) == b"held"
        assert fresh.recv(10) == b"new"
        sock.close()
        fresh.close()


def test_an_unreachable_upstream_resets_the_client():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with TcpProxy("127.0.0.1", dead_port) as proxy:
        assert cut_off(proxy.port)


def test_an_unknown_mode_is_refused():
    with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy, pytest.raises(ValueError, match="mode"):
        proxy.mode = "cut"  # type: ignore[assignment]
