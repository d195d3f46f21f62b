"""The control client: requests to the daemon's control socket (ROUTER) over a DEALER socket.

readerctl, ``readerd web``, the doctor and the pytest fixture all talk to the daemon through this one
class, so a request looks the same from each of them: ``{"id", "cmd", "args"}`` after an empty delimiter
frame, answered by ``{"id", "ok", "result" | "error"}`` (docs/events.md).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import zmq

from readerd.bus.client import CurveKeys

REQUEST_TIMEOUT_MS = 3000


class Unreachable(Exception):
    """The daemon did not answer: reported as exit 69."""


class ControlSession:
    """A conversation with the daemon over one DEALER socket (an empty delimiter frame, then JSON).

    The daemon knows a caller by its ROUTER identity, i.e. by this socket: an ``auth_id`` from
    ``auth.begin`` is good only for ``auth.pin`` sent through the same session.
    """

    def __init__(
        self, endpoint: str, timeout_ms: int = REQUEST_TIMEOUT_MS, curve: CurveKeys | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)

    def request(
        self, cmd: str, args: dict[str, Any] | None = None, timeout_ms: int | None = None
    ) -> dict[str, Any]:
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        request_id = str(uuid.uuid4())
        body = {"id": request_id, "cmd": cmd, "args": args or {}}
        self._sock.send_multipart([b"", json.dumps(body).encode()])
        deadline = time.monotonic() + timeout_ms / 1000
        while True:  # skip late answers to earlier requests that timed out on this socket
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0 or not self._sock.poll(remaining, zmq.POLLIN):
                raise Unreachable(f"no answer from readerd at {self.endpoint} within {timeout_ms / 1000:g} s")
            reply = json.loads(self._sock.recv_multipart()[-1])
            if not isinstance(reply, dict):
                raise Unreachable("the daemon answered something that is not a JSON object")
            if reply.get("id") == request_id:
                return reply

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def request(
    endpoint: str,
    cmd: str,
    args: dict[str, Any] | None = None,
    timeout_ms: int = REQUEST_TIMEOUT_MS,
    curve: CurveKeys | None = None,
) -> dict[str, Any]:
    """One request/response on the daemon's ROUTER, on a socket of its own."""
    with ControlSession(endpoint, timeout_ms, curve) as session:
        return session.request(cmd, args)
