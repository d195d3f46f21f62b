"""The daemon's private control socket: the split plugin host's link to the bus.

Without the embedded plugin host, ``readerd plugins`` runs the plugins in a process of its own and talks
to the daemon over a second ROUTER (``ipc://``, 0600, the daemon's user only). On it the host sends its
requests (``plugins.register``, ``plugin.publish``, ``events.since`` with the private fields) and the
daemon sends the host the plugin commands callers send on the public socket (:meth:`PrivateLink.forward`),
matching each answer to its request by id. The bus thread owns the socket; other threads only queue.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import structlog
import zmq

from readerd.bus import control
from readerd.bus.control import CommandHandler, JsonObject
from readerd.errors import Refusal

log = structlog.get_logger("readerd.bus")


class PrivateLink:
    """The private ROUTER's commands, the requests forwarded to the split host, and their answers."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self.commands: dict[str, CommandHandler] = {}
        self._forwards: dict[str, tuple[float, Future[JsonObject]]] = {}
        self._forward_out: queue.SimpleQueue[tuple[bytes, JsonObject]] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[tuple[list[bytes], JsonObject]] = queue.SimpleQueue()

    def forward(self, peer: bytes, cmd: str, args: JsonObject, timeout: float) -> Future[JsonObject]:
        """Send a request to ``peer`` (any thread); the Future gets its ``result``, or raises
        :class:`Refusal` with the peer's error code, or ``plugin_host_unavailable`` after ``timeout``
        seconds without an answer."""
        forward_id = str(uuid.uuid4())
        done: Future[JsonObject] = Future()
        self._forwards[forward_id] = (time.monotonic() + timeout, done)
        self._forward_out.put((peer, {"id": forward_id, "cmd": cmd, "args": args}))
        self._wake()
        return done

    def serve(self, router: zmq.Socket[bytes], ready: dict[Any, int]) -> None:
        """One round of the bus thread: the host's requests, its answers to forwarded ones, deferred
        replies, then what is to be forwarded."""
        while router in ready:
            try:
                frames = router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                body = json.loads(frames[-1])
            except ValueError:
                body = None  # answer() says bad_request
            if isinstance(body, dict) and "ok" in body and str(body.get("id")) in self._forwards:
                _deadline, done = self._forwards.pop(str(body.get("id")))
                try:
                    done.set_result(control.result_of(body))
                except Refusal as e:
                    done.set_exception(e)
                continue
            reply = control.answer(frames[0], frames[-1], self.commands)
            if isinstance(reply, Future):
                reply.add_done_callback(functools.partial(self._deferred, frames[:-1]))
                continue
            _send_to_peer(router, [*frames[:-1], control.encode_reply(reply)])
        while True:
            try:
                envelope, answer = self._replies.get_nowait()
            except queue.Empty:
                break
            _send_to_peer(router, [*envelope, control.encode_reply(answer)])
        self._send_forwards(router)

    def _send_forwards(self, router: zmq.Socket[bytes]) -> None:
        while True:
            try:
                peer, request = self._forward_out.get_nowait()
            except queue.Empty:
                break
            if not _send_to_peer(router, [peer, b"", json.dumps(request, ensure_ascii=False).encode()]):
                entry = self._forwards.pop(str(request["id"]), None)
                if entry is not None:
                    entry[1].set_exception(
                        Refusal("plugin_host_unavailable", "the plugin host is not connected")
                    )
        now = time.monotonic()
        for forward_id, (deadline, done) in list(self._forwards.items()):
            if now > deadline:
                del self._forwards[forward_id]
                done.set_exception(Refusal("plugin_host_unavailable", "the plugin host did not answer"))

    def _deferred(self, envelope: list[bytes], done: Future[JsonObject]) -> None:
        self._replies.put((envelope, done.result()))
        self._wake()


def _send_to_peer(router: zmq.Socket[bytes], frames: list[bytes]) -> bool:
    """Send on the private ROUTER (``ROUTER_MANDATORY``); False if that peer has gone."""
    try:
        router.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.ZMQError as e:
        log.info("private control peer gone", error=str(e))
        return False
    return True


def owner_only(endpoint: str) -> None:
    """An ``ipc://`` socket file readable and writable by the daemon's user only (the private feed)."""
    if endpoint.startswith("ipc://"):
        os.chmod(endpoint.removeprefix("ipc://"), 0o600)
