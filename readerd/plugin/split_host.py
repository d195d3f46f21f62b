"""``readerd plugins``: the plugin host as a process of its own, fed by the daemon's private feed.

The host subscribes to the private feed with :class:`readerd.bus.client.BusClient`, so it gets every event
once, in order, catching up through ``events.since`` (with the private fields, on the private socket
only) after a gap, a daemon restart or its own restart: it resumes after the seq in
``<state_dir>/plugins.cursor`` (at-least-once delivery, exactly-once effects by event id, docs/design.md
D2). :class:`readerd.plugin.host.PluginHost` is the same class as in the daemon: here it is fed by
``dispatch`` from the client loop instead of its own feed thread. The daemon's end of the link is
:mod:`readerd.plugin.link`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path

import structlog
import zmq

from readerd.bus import control
from readerd.bus.client import BusClient
from readerd.bus.control import JsonObject
from readerd.config import Config
from readerd.errors import BusSilentError, GapUnrecoverableError, Refusal
from readerd.events import Envelope, Event
from readerd.exitcodes import ExitCode
from readerd.plugin.host import BATCH_MAX, HANDLED, PluginHost
from readerd.plugin.link import CURSOR_FILE, endpoints
from readerd.plugin.store import Store
from readerd.plugin.worker import ABANDONED_LIMIT

log = structlog.get_logger("readerd.plugin_link")

#: Seconds the loop waits for the first event of a batch (then it serves the daemon's requests).
FIRST_WAIT = 0.02
#: Seconds it waits for one more event before the batch ends and the cursors are written.
DRAIN_WAIT = 0.002


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
        return control.result_of(reply)


class SplitHost:
    """``readerd plugins``: a :class:`PluginHost` fed by a gap-free client of the daemon's private feed."""

    def __init__(
        self,
        config: Config,
        *,
        plugins: dict[str, object] | None = None,
        register_timeout: float = 10.0,
        abandoned_limit: int = ABANDONED_LIMIT,
    ) -> None:
        """``abandoned_limit``: abandoned plugin workers still running at which the host exits to be
        restarted (:data:`~readerd.plugin.worker.ABANDONED_LIMIT`; tests pass a small one)."""
        self.config = config
        self.abandoned_limit = abandoned_limit
        self.register_timeout = register_timeout
        self.extra_plugins = plugins
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # registered with the daemon, feed subscribed
        self.cursor_path = Path(config.state_dir) / CURSOR_FILE
        self.dispatched = 0
        self._restarts = 0  # the client's count of daemon restarts last seen (re-register after one)

    def _read_cursor(self) -> int | None:
        try:
            return int(self.cursor_path.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return None

    def _write_cursor(self, seq: int) -> None:
        # Not fsynced: a cursor that lags after a crash only means a few events are given again, and
        # plugins key their writes by event id (docs/design.md D2).
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(str(seq), encoding="ascii")
        os.replace(tmp, self.cursor_path)

    def run(self) -> int:
        config = self.config
        feed, control = endpoints(config)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        uplink = Uplink(context, control)

        def publish(result: Event) -> None:
            if str(result.type) == HANDLED:  # the host's own: the tap and what the plugins made of it
                uplink.send(HANDLED, {"cause": result.cause, "reader": result.reader, "data": result.data})
                return
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
            abandoned_limit=self.abandoned_limit,
        )
        try:
            host.load()
            try:
                registered = uplink.request("plugins.register", _registration(host), self.register_timeout)
            except BusSilentError:
                # systemd restarts us (Restart=on-failure); a daemon still starting answers next time.
                log.error("the daemon does not answer on its plugin socket", endpoint=control)
                return ExitCode.UNAVAILABLE
            # Resume after the lowest of the plugins' own cursors (the store) and ours: a plugin
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
                self._loop(host, client, uplink, int(registered["last_seq"]))
            finally:
                client.close()
        finally:
            host.stop(1.0)
            uplink.send("plugins.unregister", {})
            uplink.flush()
            uplink.sock.close()
            store.close()
        if host.restart_reason is not None:
            # Hung plugin calls hold threads only a new process frees: systemd restarts us
            # (Restart=on-failure), and the plugins resume from their cursors.
            log.error("plugin host exits to be restarted", reason=host.restart_reason)
            return ExitCode.SOFTWARE
        return ExitCode.OK

    def _loop(self, host: PluginHost, client: BusClient, uplink: Uplink, backlog_end: int) -> None:
        """``backlog_end``: the daemon's last seq when we connected; what the client catches up to it was
        logged while no host was there, so the plugins get it marked replayed. Ends at stop, or when the
        host asks to be restarted (too many abandoned plugin workers)."""
        self._restarts = client.stats.restarts
        while not self.stop_event.is_set() and host.restart_reason is None:
            with host.batch():  # the plugins' cursors: written once for the batch
                last = self._batch(host, client, uplink, backlog_end)
            if last is not None:
                self._write_cursor(last)  # ours too
            elif host.cursors.pending:
                host.flush_cursors()  # the feed is quiet (readerd.plugin.replay.CURSOR_IDLE)
            self._serve(host, uplink)
            uplink.flush()

    def _batch(self, host: PluginHost, client: BusClient, uplink: Uplink, backlog_end: int) -> int | None:
        """The events that come one right after another (within :data:`DRAIN_WAIT` of the last, at most
        :data:`~readerd.plugin.host.BATCH_MAX`), each handed to the plugins as it comes and its results
        sent at once; the seq of the last one, or None when none came."""
        last = None
        timeout = FIRST_WAIT
        for _ in range(BATCH_MAX):
            env = self._next(host, client, uplink, timeout)
            if env is None:
                break
            envelope = Envelope.from_dict(env)
            host.dispatch(envelope, replayed=envelope.seq <= backlog_end)
            self.dispatched += 1
            last = envelope.seq
            uplink.flush()
            if self.stop_event.is_set() or host.restart_reason is not None:
                break
            timeout = DRAIN_WAIT
        return last

    def _next(self, host: PluginHost, client: BusClient, uplink: Uplink, timeout: float) -> JsonObject | None:
        """The client's next event, or None (none within ``timeout``, a silent daemon, a lost range)."""
        try:
            env: JsonObject | None = client.next(timeout=timeout)
        except TimeoutError:
            env = None
        except BusSilentError:
            log.warning("no heartbeat from the daemon; waiting for it")
            env = None
        except GapUnrecoverableError as e:
            log.error("events lost for the plugins (older than the event log)", oldest_seq=e.oldest_seq)
            env = None
        if client.stats.restarts != self._restarts:  # a new daemon knows nothing of our commands
            self._restarts = client.stats.restarts
            uplink.send("plugins.register", _registration(host))
        return env

    def _serve(self, host: PluginHost, uplink: Uplink) -> None:
        """Requests the daemon forwards (plugin commands, ``plugins``); replies to our own sends."""
        while uplink.sock.poll(0):
            body = json.loads(uplink.sock.recv_multipart()[-1])
            if not isinstance(body, dict) or "cmd" not in body:
                if isinstance(body, dict) and not body.get("ok"):
                    log.error("the daemon refused a request of the plugin host", error=body.get("error"))
                continue
            request_id, cmd, args = body.get("id"), str(body["cmd"]), body.get("args") or {}
            if cmd == "plugins":
                uplink.reply(control.ok_reply(request_id, host.status()))
                continue
            try:
                if cmd == "plugins.reinstate":
                    future: Future[JsonObject] = host.reinstate_command(args)
                else:
                    future = host.run_command(cmd, args)
            except Refusal as e:
                uplink.reply(control.error_reply(request_id, e.code, str(e)))
                continue
            except (KeyError, ValueError) as e:
                uplink.reply(control.error_reply(request_id, "bad_request", str(e)))
                continue
            control.reply_when_done(request_id, future).add_done_callback(
                lambda done: uplink.reply(done.result())
            )


def _roles(host: PluginHost) -> dict[str, str]:
    """The host's commands and the role each needs, as ``plugins.register`` announces them."""
    return {name: spec.role for name, (_owner, spec) in sorted(host.commands.items())}


def _registration(host: PluginHost) -> JsonObject:
    """What ``plugins.register`` announces: each command's role, which move value (the daemon checks a
    PIN proof before it forwards those) and each one's ``CommandSpec.schema()`` (its help and typed
    arguments, for ``commands``: ``readerctl help`` and ``call`` as with the embedded host)."""
    possession = sorted(name for name, (_owner, spec) in host.commands.items() if spec.possession)
    specs = {name: spec.schema() for name, (_owner, spec) in sorted(host.commands.items())}
    return {"commands": _roles(host), "possession": possession, "specs": specs}
