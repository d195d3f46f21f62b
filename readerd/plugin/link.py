"""The plugin host as its own process (``readerd plugins``) and the daemon's end of the link to it.

DESIGN decisions 1 and 15: production may run the plugins apart from the card reader, so that a plugin
that hangs, leaks or crashes costs only its own process. The daemon stays the single publisher:

- it binds the private feed (``ipc://<runtime_dir>/private.sock``, full fields) and a private control
  socket (``ipc://<runtime_dir>/plugins.sock``), both 0600, when it runs without the embedded host;
- the split host subscribes to that feed with :class:`readerd.bus.client.BusClient`, so it gets every event
  once, in order, catching up through ``events.since`` (with the private fields, on the private socket
  only) after a gap, a daemon restart or its own restart (it resumes after the seq in
  ``<state_dir>/plugins.cursor``: at-least-once delivery, exactly-once effects by event id);
- plugin results and errors go back as ``plugin.publish`` / ``plugin.error`` requests, which the daemon
  publishes with their own seq;
- the host announces its commands with ``plugins.register``; the daemon registers them on its public
  control socket and forwards each request to the host (and ``plugins`` for ``readerctl plugins``).

:class:`readerd.plugin.host.PluginHost` is the same class in both modes: here it is fed by ``dispatch``
from the client loop instead of its own feed thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import zmq

from readerd import events as ev
from readerd.bus.client import BusClient
from readerd.bus.curve import ROLES
from readerd.bus.server import Bus, CommandError, ControlRequest, JsonObject
from readerd.config import Config
from readerd.errors import BusSilentError, GapUnrecoverableError, ReaderdError
from readerd.events import Event
from readerd.exitcodes import ExitCode

if TYPE_CHECKING:
    from readerd.plugin.host import PluginHost

log = structlog.get_logger("readerd.plugin_link")

FEED_SOCKET = "private.sock"
CONTROL_SOCKET = "plugins.sock"
CURSOR_FILE = "plugins.cursor"
#: How long the daemon waits for the split host to answer a forwarded command.
FORWARD_TIMEOUT = 10.0


def runtime_dir(config: Config) -> Path:
    return Path(config.plugins.runtime_dir) if config.plugins.runtime_dir else Path(config.state_dir) / "run"


def endpoints(config: Config) -> tuple[str, str]:
    """The private feed and the private control socket of a daemon without the embedded host."""
    directory = runtime_dir(config)
    return f"ipc://{directory / FEED_SOCKET}", f"ipc://{directory / CONTROL_SOCKET}"


def prepare_runtime_dir(config: Config) -> None:
    directory = runtime_dir(config)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in (FEED_SOCKET, CONTROL_SOCKET):  # a socket file left by a killed daemon
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


# -- the daemon's end -----------------------------------------------------------------------------------
class SplitHostLink:
    """Registered on the daemon's bus: results in, commands out to whichever host registered last."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.peer: bytes | None = None
        self.commands: list[str] = []
        bus.register_private_command("plugins.register", self._register)
        bus.register_private_command("plugins.unregister", self._unregister)
        bus.register_private_command("plugin.publish", self._publish)
        bus.register_private_command("plugin.error", self._error)
        bus.register_command("plugins", self._forward)
        bus.add_status(lambda: {"plugin_host": "split" if self.peer is not None else "split, not connected"})

    def _register(self, request: ControlRequest) -> JsonObject:
        commands = request.args.get("commands", {})
        if isinstance(commands, list):  # names only: each needs the control role
            commands = dict.fromkeys(commands, "control")
        if not isinstance(commands, dict) or not all(
            isinstance(n, str) and "." in n and r in ROLES for n, r in commands.items()
        ):
            raise CommandError("bad_request", "commands: {<plugin>.<verb>: role}")
        self.peer = request.peer
        for name, role in commands.items():
            self.bus.register_command(name, self._forward, role=role)
        names = sorted(commands)
        self.commands = names
        log.info("split plugin host connected", commands=names)
        return {"run_id": self.bus.run_id, "last_seq": self.bus.last_seq}

    def _unregister(self, request: ControlRequest) -> JsonObject:
        if request.peer == self.peer:
            self.peer = None
            log.info("split plugin host stopped")
        return {}

    def _publish(self, request: ControlRequest) -> JsonObject:
        a = request.args
        if not all(isinstance(a.get(k), str) for k in ("plugin", "event")) or not isinstance(
            a.get("data"), dict
        ):
            raise CommandError("bad_request", "plugin.publish {plugin, event, data, reader?}")
        reader = a.get("reader") if isinstance(a.get("reader"), str) else None
        cause = a.get("cause") if isinstance(a.get("cause"), str) else None
        result = ev.plugin_result(
            a["plugin"], a["event"], a["data"], reader, cause=cause, replayed=a.get("replayed") is True
        )
        self.bus.publish(result)
        return {}

    def _error(self, request: ControlRequest) -> JsonObject:
        a = request.args
        self.bus.publish(
            ev.plugin_error(
                str(a.get("plugin")),
                str(a.get("hook")),
                str(a.get("error")),
                str(a.get("message")),
                quarantined=bool(a.get("quarantined")),
            )
        )
        return {}

    def _forward(self, request: ControlRequest) -> Future[JsonObject]:
        if self.peer is None:
            raise CommandError("plugin_host_unavailable", "no plugin host is connected (readerd plugins)")
        return self.bus.forward(self.peer, request.cmd, request.args, FORWARD_TIMEOUT)


# -- the split host's process ---------------------------------------------------------------------------
class Uplink:
    """The host's DEALER to the daemon's private control socket. Hook threads call :meth:`send` (a
    queue: ZeroMQ sockets are not thread-safe); the host's loop thread owns the socket."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)  # results queued at stop still reach the daemon
        self.sock.connect(endpoint)
        self._out: queue.SimpleQueue[JsonObject] = queue.SimpleQueue()

    def send(self, cmd: str, args: JsonObject) -> None:
        self._out.put({"id": str(uuid.uuid4()), "cmd": cmd, "args": args})

    def reply(self, body: JsonObject) -> None:
        self._out.put(body)

    def flush(self) -> None:
        while True:
            try:
                body = self._out.get_nowait()
            except queue.Empty:
                return
            self.sock.send_multipart([b"", json.dumps(body, ensure_ascii=False).encode()])

    def request(self, cmd: str, args: JsonObject, timeout: float) -> JsonObject:
        """A request answered before anything else goes on (registration, at start)."""
        request_id = str(uuid.uuid4())
        self.sock.send_multipart([b"", json.dumps({"id": request_id, "cmd": cmd, "args": args}).encode()])
        if not self.sock.poll(int(timeout * 1000)):
            raise BusSilentError(f"the daemon did not answer {cmd}")
        reply: JsonObject = json.loads(self.sock.recv_multipart()[-1])
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error", {}).get("code")), str(reply.get("error")))
        return reply


class SplitHost:
    """``readerd plugins``: a :class:`PluginHost` fed by a gap-free client of the daemon's private feed."""

    def __init__(
        self, config: Config, *, plugins: dict[str, object] | None = None, register_timeout: float = 10.0
    ) -> None:
        self.config = config
        self.register_timeout = register_timeout
        self.extra_plugins = plugins
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # registered with the daemon, feed subscribed
        self.cursor_path = Path(config.state_dir) / CURSOR_FILE
        self.dispatched = 0

    def _read_cursor(self) -> int | None:
        try:
            return int(self.cursor_path.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return None

    def _write_cursor(self, seq: int) -> None:
        # Not fsynced: a cursor that lags after a crash only means a few events are given again, and
        # plugins key their writes by event id (DESIGN decision 2).
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(str(seq), encoding="ascii")
        os.replace(tmp, self.cursor_path)

    def run(self) -> int:
        from readerd.plugin.host import PluginHost  # noqa: PLC0415 - pluggy and the plugins load here
        from readerd.plugin.store import Store  # noqa: PLC0415

        config = self.config
        feed, control = endpoints(config)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        uplink = Uplink(context, control)

        def publish(result: Event) -> None:
            _, plugin, event = str(result.type).split(".", 2)  # plugin.<name>.<event>
            args = {"plugin": plugin, "event": event, "data": result.data, "reader": result.reader}
            uplink.send("plugin.publish", {**args, "cause": result.cause, "replayed": result.replayed})

        def report(plugin: str, hook: str, error: str, message: str, quarantined: bool) -> None:
            args = {"plugin": plugin, "hook": hook, "error": error, "message": message}
            uplink.send("plugin.error", {**args, "quarantined": quarantined})

        store = Store.open(config.store, Path(config.state_dir))
        host = PluginHost(
            config.plugins,
            kiosk=config.kiosk,
            publish=publish,
            report=report,
            store=store,
            plugins=self.extra_plugins,
        )
        try:
            host.load()
            try:
                registered = uplink.request(
                    "plugins.register", {"commands": _roles(host)}, self.register_timeout
                )
            except BusSilentError:
                # systemd restarts us (Restart=on-failure); a daemon still starting answers next time.
                log.error("the daemon does not answer on its plugin socket", endpoint=control)
                return ExitCode.UNAVAILABLE
            # Resume after the lowest of the plugins' own cursors (the store, issue 5) and ours: a plugin
            # ahead of it gets a few events again, which its writes keyed by event id absorb.
            cursors = [p.cursor for p in host.plugins.values() if p.cursor is not None]
            mine = self._read_cursor()
            since = min([*cursors, *([mine] if mine is not None else [])], default=None)
            client = BusClient(
                feed, control, since=since, heartbeat_timeout=max(15.0, 3 * config.bus.heartbeat_interval)
            )
            log.info("plugin host running", feed=feed, since=since, plugins=sorted(host.plugins))
            self.ready.set()
            try:
                self._loop(host, client, uplink, int(registered["result"]["last_seq"]))
            finally:
                client.close()
        finally:
            host.stop(1.0)
            uplink.send("plugins.unregister", {})
            uplink.flush()
            uplink.sock.close()
            store.close()
        return ExitCode.OK

    def _loop(self, host: Any, client: BusClient, uplink: Uplink, backlog_end: int) -> None:  # noqa: ANN401
        """``backlog_end``: the daemon's last seq when we connected; what the client catches up to it was
        logged while no host was there, so the plugins get it marked replayed."""
        restarts = client.stats.restarts
        while not self.stop_event.is_set():
            try:
                env = client.next(timeout=0.02)
            except TimeoutError:
                env = None
            except BusSilentError:
                log.warning("no heartbeat from the daemon; waiting for it")
                env = None
            except GapUnrecoverableError as e:
                log.error("events lost for the plugins (older than the event log)", oldest_seq=e.oldest_seq)
                env = None
            if client.stats.restarts != restarts:  # a new daemon knows nothing of our commands
                restarts = client.stats.restarts
                uplink.send("plugins.register", {"commands": _roles(host)})
            if env is not None:
                host.dispatch(env, replayed=int(env["seq"]) <= backlog_end)
                self.dispatched += 1
                self._write_cursor(int(env["seq"]))
            self._serve(host, uplink)
            uplink.flush()

    def _serve(self, host: Any, uplink: Uplink) -> None:  # noqa: ANN401 - PluginHost
        """Requests the daemon forwards (plugin commands, ``plugins``); replies to our own sends."""
        while uplink.sock.poll(0):
            body = json.loads(uplink.sock.recv_multipart()[-1])
            if not isinstance(body, dict) or "cmd" not in body:
                if isinstance(body, dict) and not body.get("ok"):
                    log.error("the daemon refused a request of the plugin host", error=body.get("error"))
                continue
            request_id, cmd, args = body.get("id"), str(body["cmd"]), body.get("args") or {}
            if cmd == "plugins":
                uplink.reply({"id": request_id, "ok": True, "result": host.status()})
                continue
            try:
                future: Future[JsonObject] = host.run_command(cmd, args)
            except (KeyError, ValueError) as e:
                uplink.reply(_refusal(request_id, "bad_request", str(e)))
                continue
            future.add_done_callback(_answer_with(uplink, request_id))


def _refusal(request_id: object, code: str, message: str, details: JsonObject | None = None) -> JsonObject:
    error: JsonObject = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"id": request_id, "ok": False, "error": error}


def _answer_with(uplink: Uplink, request_id: object) -> Callable[[Future[JsonObject]], None]:
    def answer(done: Future[JsonObject]) -> None:
        error = done.exception()
        if error is None:
            uplink.reply({"id": request_id, "ok": True, "result": done.result()})
        elif isinstance(error, ReaderdError):
            uplink.reply(_refusal(request_id, error.code, str(error), error.details()))
        else:
            uplink.reply(_refusal(request_id, "internal_error", type(error).__name__))

    return answer


def _roles(host: PluginHost) -> dict[str, str]:
    """The host's commands and the role each needs, as ``plugins.register`` announces them."""
    return {name: spec.role for name, (_owner, spec) in sorted(host.commands.items())}
