from __future__ import annotations

import socket


def free_tcp_port() -> int:
    """A port free on loopback right now (bind to 0 and release; the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
