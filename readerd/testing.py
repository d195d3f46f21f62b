"""Test helpers for readerd and for plugin authors: a real daemon on the simulator, in the test process.

This module is also a pytest plugin (entry point ``pytest11``), so a plugin package's tests get the
``readerd`` fixture just by having readerd installed::

    def test_greets(readerd):
        readerd.tap("alice")
        result = readerd.wait_for("plugin.hello.greeting")
        assert result["data"]["visits"] == 1

The daemon runs the sim backend on ephemeral loopback ports with every installed plugin (entry-point group
``readerd``) loaded, as ``readerd run --simulate`` would with each of them named in ``[plugins] load``
(the fixture names them when the configuration names none and ``autoload`` is off; name some in ``load``
to run only those). A plugin still sees only the private fields ``[plugins.<name>] grants`` lists, and
publishes only the result fields it declares (``readerd_result_fields``), as on a kiosk. Events are
read from its PUB socket like any LAN client does, and commands go to its operator socket (in a short
temporary directory), so a test may send every command. Plugins get a real store: a SQLite file in the
test's temporary state directory (``ReaderdHarness.store(name)`` reads it back); point
``store.shared_url`` of ``readerd_config`` at a PostgreSQL database to test the shared role on the real
thing. Override the ``readerd_config`` fixture to change the configuration (plugin sections and their
``grants``, FeliCa reads, the store).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from readerd.bus.control import result_of
from readerd.bus.control_client import ControlSession, request
from readerd.bus.curve import OPERATOR
from readerd.config import BusConfig, Config, IdentityConfig, SessionConfig, SimConfig
from readerd.daemon import Daemon
from readerd.ops.keys import create_pseudonym_key
from readerd.ops.sdnotify import Notifier
from readerd.plugin.store import PluginStore

Envelope = dict[str, Any]

#: The role-socket directories :func:`sim_config` made: each is removed when a daemon that used it stops
#: (:func:`running_daemon`; a restart makes it again), and all that are left when the process exits.
_SOCKET_DIRS: set[str] = set()


def _sockets_dir() -> str:
    """A short temporary directory for the role sockets (a socket path holds at most 107 bytes, and a
    test's temporary directory can be longer), removed again (:data:`_SOCKET_DIRS`): one is made per
    configuration, and a test session makes hundreds."""
    if not _SOCKET_DIRS:
        atexit.register(_remove_socket_dirs)
    path = tempfile.mkdtemp(prefix="readerd-")
    _SOCKET_DIRS.add(path)
    return path


def _remove_socket_dir(path: str) -> None:
    """Kept in :data:`_SOCKET_DIRS`: a daemon started again with the same configuration makes it again."""
    if path in _SOCKET_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def _remove_socket_dirs() -> None:
    for path in list(_SOCKET_DIRS):
        _remove_socket_dir(path)


def sim_config(state_dir: Path, **overrides: Any) -> Config:  # noqa: ANN401 - Config fields of all types
    config = Config(
        kiosk="test-kiosk",
        state_dir=str(state_dir),
        backends=("sim",),
        # The role sockets in a short directory of their own: the harness talks to the operator socket.
        bus=BusConfig(
            publish="tcp://127.0.0.1:0",
            control="tcp://127.0.0.1:0",
            heartbeat_interval=0.05,
            sockets_dir=_sockets_dir(),
        ),
        sessions=SessionConfig(deadline=3.0, repeat_window=10.0),
        sim=SimConfig(readers=("Sim 00", "Sim 01")),
    )
    config = replace(config, **overrides)
    if config.store.shared_url and config.identity == IdentityConfig():
        # A kiosk of a ward needs the ward's key file (it never makes its own): one in the state dir.
        key = Path(state_dir) / "ward-pseudonym.key"
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            create_pseudonym_key(key)
        config = replace(config, identity=IdentityConfig(str(key)))
    return config


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
            if env["type"] != topic.decode():
                raise ValueError(f"topic {topic!r} does not match the envelope's type {env['type']!r}")
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

    def session(self) -> ControlSession:
        """A control session of its own (one caller identity: what ``auth.begin``/``auth.pin`` need)."""
        return ControlSession(self.control)

    def tap(self, card: str = "alice", **args: object) -> dict[str, Any]:
        reply = self.request("tap", {"card": card, **args})
        result_of(reply)
        return reply

    def remove(self, reader: str | None = None) -> None:
        reply = self.request("remove", {"reader": reader} if reader else {})
        result_of(reply)

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
        assert bus.role_sockets is not None  # noqa: S101 - the daemon always binds them
        operator = f"ipc://{bus.role_sockets.path(OPERATOR)}"
        yield RunningDaemon(daemon, thread, bus.publish_endpoint, operator, result)
    finally:
        daemon.stop_event.set()
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("the daemon did not stop within 10 s")
        _remove_socket_dir(config.bus.sockets_dir)


class ReaderdHarness:
    """What the ``readerd`` fixture gives: a running daemon, its events, and the simulator's hands."""

    def __init__(self, running: RunningDaemon, events: Subscriber) -> None:
        self.running = running
        self.events = events

    @property
    def control(self) -> str:
        return self.running.control

    @property
    def publish(self) -> str:
        return self.running.publish

    def tap(self, card: str = "alice", *, reader: str | None = None, **options: object) -> Envelope:
        """Put a simulated card on a reader and return its ``card.identified`` (or ``card.read_aborted``)
        event. ``options``: ``felica="bathhouse"|"checkin"|"transport"``, ``tries=``, ``expired=True``,
        ``blank=True``, ``hold=False``, ``cloned_from="alice"`` (see ``docs/events.md``, control ``tap``)."""
        args = {**options, **({"reader": reader} if reader else {})}
        self.running.tap(card, **args)
        return self.wait_for(lambda e: e["type"] in ("card.identified", "card.read_aborted"))

    def remove(self, reader: str | None = None) -> Envelope:
        self.running.remove(reader)
        return self.wait_for("card.removed")

    def command(self, name: str, **args: object) -> dict[str, Any]:
        """Send a control command; its result, or :class:`readerd.errors.Refusal` with the error code."""
        return result_of(self.running.request(name, args))

    def wait_for(self, what: str | Callable[[Envelope], bool], timeout: float = 5.0) -> Envelope:
        """The next event whose type starts with ``what`` (or for which ``what`` is true)."""
        match = what if callable(what) else (lambda e: str(e["type"]).startswith(what))
        return self.events.until(match, timeout)[-1]

    def store(self, plugin: str) -> PluginStore:
        """The store of plugin ``plugin`` in the daemon's (temporary) state directory, to look at what
        the plugin wrote: the same databases the plugin's ``context.store`` uses."""
        store = self.running.daemon.store
        if store is None:
            raise RuntimeError("the daemon runs without plugins, so without a store")
        return store.for_plugin(plugin)


@pytest.fixture
def readerd_config(tmp_path: Path) -> Config:
    """The daemon's configuration for the ``readerd`` fixture: override it in your conftest.py."""
    return sim_config(tmp_path / "readerd")


def with_installed_plugins(config: Config) -> Config:
    """``config`` with every installed plugin (entry-point group ``readerd``) named in ``[plugins] load``,
    unless it names some already or has ``autoload`` on."""
    plugins = config.plugins
    if plugins.load or plugins.autoload:
        return config
    installed = tuple(sorted({entry.name for entry in importlib.metadata.entry_points(group="readerd")}))
    return replace(config, plugins=replace(plugins, load=installed))


@pytest.fixture
def readerd(readerd_config: Config) -> Iterator[ReaderdHarness]:
    """A daemon on the simulator with the installed plugins loaded (:func:`with_installed_plugins`); see
    :class:`ReaderdHarness`."""
    with running_daemon(with_installed_plugins(readerd_config)) as running, running.subscriber() as events:
        yield ReaderdHarness(running, events)
