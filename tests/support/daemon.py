"""Run a real daemon (sim backend) on ephemeral loopback ports inside the test process, and subscribe to
it with a plain pyzmq SUB socket, as any LAN client would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq

from readerd.config import BusConfig, Config, IdentityConfig, SessionConfig, SimConfig
from readerd.ctl import request
from readerd.daemon import Daemon
from readerd.keys import create_pseudonym_key
from readerd.sdnotify import Notifier

Envelope = dict[str, Any]


def hardware_config(state_dir: Path, backends: tuple[str, ...], **overrides: Any) -> Config:
    """A production-like configuration (no simulator backend): the pseudonym key is made in state_dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = state_dir / "pseudonym.key"
    if not key.exists():
        create_pseudonym_key(key)
    config = replace(sim_config(state_dir), backends=backends, identity=IdentityConfig(str(key)))
    return replace(config, **overrides)


def sim_config(state_dir: Path, **overrides: Any) -> Config:
    config = Config(
        kiosk="test-kiosk",
        state_dir=str(state_dir),
        backends=("sim",),
        bus=BusConfig(publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", heartbeat_interval=0.05),
        sessions=SessionConfig(deadline=3.0, repeat_window=10.0),
        sim=SimConfig(readers=("Sim 00", "Sim 01")),
    )
    return replace(config, **overrides)


@dataclass
class Subscriber:
    sock: zmq.Socket[bytes]
    received: list[Envelope] = field(default_factory=list)

    def next(self, timeout: float = 5.0, *, heartbeats: bool = False) -> Envelope:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000), zmq.POLLIN):
                raise TimeoutError(f"no event within {timeout} s; got {[e['type'] for e in self.received]}")
            topic, body = self.sock.recv_multipart()
            env: Envelope = json.loads(body)
            assert env["type"] == topic.decode()
            if env["type"] == "heartbeat" and not heartbeats:
                continue
            self.received.append(env)
            return env

    def until(self, predicate: Callable[[Envelope], bool], timeout: float = 5.0) -> list[Envelope]:
        """Events up to and including the first that matches."""
        out: list[Envelope] = []
        deadline = time.monotonic() + timeout
        while True:
            env = self.next(max(0.01, deadline - time.monotonic()))
            out.append(env)
            if predicate(env):
                return out

    def types(self, n: int, timeout: float = 5.0) -> list[str]:
        return [self.next(timeout)["type"] for _ in range(n)]

    def sync(self, timeout: float = 5.0) -> None:
        """Wait for a heartbeat: after it, the subscription is live (ZeroMQ's slow joiner)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.next(max(0.01, deadline - time.monotonic()), heartbeats=True)["type"] == "heartbeat":
                self.received.clear()
                return


@dataclass
class RunningDaemon:
    daemon: Daemon
    thread: threading.Thread
    publish: str
    control: str
    result: dict[str, int]

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return request(self.control, cmd, args)

    def tap(self, card: str = "alice", **args: Any) -> dict[str, Any]:
        reply = self.request("tap", {"card": card, **args})
        assert reply["ok"], reply
        return reply

    def remove(self, reader: str | None = None) -> None:
        reply = self.request("remove", {"reader": reader} if reader else {})
        assert reply["ok"], reply

    @contextmanager
    def subscriber(
        self, *prefixes: str, rcvhwm: int | None = None, sync: bool = True
    ) -> Iterator[Subscriber]:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.connect(self.publish)
        for prefix in prefixes or ("",):
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        if prefixes and "heartbeat" not in prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        sub = Subscriber(sock)
        try:
            if sync:
                sub.sync()
            yield sub
        finally:
            sock.close()


@contextmanager
def private_feed(*prefixes: str) -> Iterator[Subscriber]:
    """The plugin host's private feed of an in-process daemon (``private`` fields included)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("inproc://readerd-private")
    for prefix in (*prefixes, "heartbeat"):
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sub = Subscriber(sock)
    try:
        sub.next(heartbeats=True)  # a heartbeat: the subscription is live
        yield sub
    finally:
        sock.close()


@contextmanager
def running_daemon(
    config: Config, notifier: Notifier | None = None, *, plugins: dict[str, object] | None = None
) -> Iterator[RunningDaemon]:
    daemon = Daemon(config, notifier or Notifier(address=""), plugins=plugins)
    result: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("rc", daemon.run()), name="daemon", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not daemon.started.is_set() or daemon.bus is None:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the daemon did not start (rc={result.get('rc')})")
        time.sleep(0.005)
    bus = daemon.bus
    try:
        yield RunningDaemon(daemon, thread, bus.publish_endpoint, bus.control_endpoint, result)
    finally:
        daemon.stop_event.set()
        thread.join(10)
        assert not thread.is_alive(), "the daemon did not stop"
