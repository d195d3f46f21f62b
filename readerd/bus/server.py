"""The event bus: one thread owns every ZeroMQ socket (they are not thread-safe).

Producers (reader backends, the daemon) call :meth:`Bus.publish` from any thread; it puts the event on a
bounded queue and wakes the bus thread through a pipe, so a reader thread never blocks on the network.
The bus thread stamps each event with the next ``seq`` and sends it on:

- the public PUB socket: ``[topic, json]`` with the redacted ``data`` only (LAN clients, kiosk screens);
- the private PUB socket (``inproc``/``ipc``: the split plugin host, the metrics): the same plus the
  ``private`` fields, encoded only while someone subscribes to it (an XPUB socket counts them);
- each in-process subscriber (:mod:`readerd.bus.localfeed`: the embedded plugin host): the stamped
  envelopes themselves, one batch at a time, never encoded for it nor parsed back.

The per-event cost is the bus thread's and the daemon's: a batch is stamped with one clock reading and
one read of the random source for its ids, encoded once, logged in one transaction and sent with two
plain ``send`` calls per event; a producer writes to the wake-up pipe only when the bus thread sleeps.

A ROUTER socket answers control requests (``{"id", "cmd", "args"}``) with handlers registered by name;
what a request and its reply look like is :mod:`readerd.bus.control`. With CURVE (:mod:`readerd.bus.curve`)
the bus thread is also the ZAP handler and re-binds the PUB socket when a key is revoked; without the
embedded plugin host, a second, private ROUTER (:mod:`readerd.bus.link`) links the daemon to
``readerd plugins`` (:mod:`readerd.plugin.link`). This module is the thread and its sockets.
PUB drops silently at its high-water mark and cannot count it; a subscriber that stops reading only loses
its own messages, sees the gap in ``seq`` and heals it by catch-up (every event is appended to the durable
event log before it is sent, and ``events.since`` on the control socket replays it), so it is the
subscriber that counts its losses (``BusClient.stats``) and the bus counts the catch-up answers per peer.

What the bus itself may lose it never loses silently (docs/design.md D14). The queue has two lanes: an
ordinary event (heartbeat, reader) is dropped before it gets a seq when the queue is full, and counted; a
card-lane event (:func:`readerd.events.card_lane`: a tap, its plugin results) has reserved places beyond
that and then waits briefly for the bus thread; if it is lost all the same, the bus is unhealthy until a
``card.events_lost`` notice for its reader went out (the kiosk screen asks for another tap). An event-log
append that fails sends nothing: the stamped batch waits, same seqs, and is tried again; the bus is
unhealthy meanwhile, and a restart continues after the last *logged* seq, which no subscriber saw twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq
from zmq.utils.monitor import recv_monitor_message

from readerd.bus import control
from readerd.bus.control import (
    ArgDoc,
    CommandDoc,
    CommandHandler,
    CommandObserver,
    ControlRequest,
    JsonObject,
    undescribed,
)
from readerd.bus.curve import (
    SUBSCRIBE,
    SUBSCRIBE_COMMANDS,
    ZAP_ENDPOINT,
    Allowlist,
    KeyPair,
    authorize,
    make_curve_server,
    role_allows,
    serve_zap,
)
from readerd.bus.eventlog import EventLog
from readerd.bus.link import PrivateLink, owner_only
from readerd.bus.localfeed import LocalFeed
from readerd.bus.roles import ROLE_HINTS, RoleSockets
from readerd.bus.since import SinceService
from readerd.config import BusConfig
from readerd.errors import BusError, ForbiddenError, StoreUnavailableError
from readerd.events import (
    Envelope,
    Event,
    card_events_lost,
    card_lane,
    heartbeat,
    new_ids,
    stamp,
    utc_ts,
)
from readerd.ops.liveness import StepWatch

log = structlog.get_logger("readerd.bus")

#: Events stamped, logged and sent per round of the bus loop (one log transaction each).
DRAIN_BATCH = 500
#: Longest one round of the bus thread may take (a batch of DRAIN_BATCH events logged and sent, the
#: requests answered) before the bus reports itself wedged and the watchdog pings stop.
STEP_BUDGET = 10.0
#: Control requests answered per round of the bus loop, before queued events go out again.
CONTROL_BATCH = 16
#: Places in the queue that only card-lane events may take, beyond ``bus.queue_size``.
CARD_RESERVE = 1000
#: Seconds a card-lane event waits for a place when even the reserve is full, before it counts as lost.
CARD_WAIT = 2.0
#: Seconds between two tries of a failing event-log append (the bus thread polls at least this often).
LOG_RETRY = 0.1
#: Event types whose topic frame the bus keeps encoded (plugin result types included); more are encoded
#: each time.
TOPIC_CACHE = 1024


STATUS_DOC = CommandDoc("the daemon's state: readers, bus counters, uptime, plugins (subscribe role)")
EVENTS_SINCE_DOC = CommandDoc(
    "the public events after a seq, from the event log (catch-up; subscribe role)",
    {
        "seq": ArgDoc("integer", True, "the last seq the caller has; 0 for the oldest kept"),
        "limit": ArgDoc("integer", False, "at most this many events in one answer"),
    },
)
COMMANDS_DOC = CommandDoc("every command this daemon answers: its help, role and arguments")


@dataclass(frozen=True)
class CurveServer:
    """CURVE on the bus's TCP endpoints: the daemon's key pair, the client allowlist (re-read every
    ``poll`` seconds) and so the ZAP handler the bus thread runs."""

    keys: KeyPair
    allowlist: Allowlist
    poll: float = 0.5


@dataclass
class BusStats:
    published: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by type: queue full (card lane: lost)
    lost: int = 0  # card-lane events lost (a wedged bus): each makes the bus unhealthy until announced
    card_waits: int = 0  # card-lane events that found the reserve full and waited (back-pressure)
    control_requests: int = 0
    log_failures: int = 0  # event-log appends that failed (each try of a held-back batch counts)
    rebinds: int = 0  # CURVE endpoints re-bound after a revocation
    subscribers: int = 0  # connections to the public PUB now (a socket monitor; PUB itself cannot tell)


class Bus:
    def __init__(
        self,
        config: BusConfig,
        *,
        kiosk: str,
        private_endpoint: str | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        event_log: EventLog | None = None,
        curve: CurveServer | None = None,
        private_control: str | None = None,
        role_sockets: RoleSockets | None = None,
        anonymous_role: str = SUBSCRIBE,
        card_reserve: int = CARD_RESERVE,
        card_wait: float = CARD_WAIT,
    ) -> None:
        """``event_log``: where events are appended before they go out and ``events.since`` reads; the
        first seq is its last plus one. Without one (unit tests), seqs start at 1 and nothing is replayed.
        ``private_control``: a second ROUTER (``ipc://``, 0600) for the split plugin host only: its
        commands (:meth:`register_private_command`), ``events.since`` with the private fields, and
        requests the daemon sends to the host (:meth:`forward`). ``role_sockets``: the local ``ipc://``
        sockets whose callers get the socket's role (:mod:`readerd.bus.roles`); without them, only CURVE
        keys get more than the subscribe role. ``anonymous_role``: the role of a TCP caller without a CURVE
        key (the subscribe role: any local account reaches loopback; tests of the bus alone lift it).
        ``card_reserve``, ``card_wait``: the card lane's own places and its wait (:meth:`publish`)."""
        self.config = config
        self.anonymous_role = anonymous_role
        self.role_sockets = role_sockets
        self._role_routers: dict[zmq.Socket[bytes], str] = {}  # bound role socket -> its role
        self._observers: list[CommandObserver] = []
        self.event_log = event_log
        self.curve = curve
        self.kiosk = kiosk
        self.private_endpoint = private_endpoint
        self.private_control_endpoint = private_control
        self._link = PrivateLink(self._wake)
        self.run_id = str(uuid.uuid4())
        self._since = SinceService(event_log, self.run_id, rate=config.since_rate, burst=config.since_burst)
        self._link.commands["events.since"] = self._events_since_private
        self._private_router: zmq.Socket[bytes] | None = None
        self.context = context or zmq.Context.instance()
        self.stats = BusStats()
        self._init_flow(config, card_reserve, card_wait)
        self._commands: dict[str, CommandHandler] = {}
        self._roles: dict[str, str] = {}  # the role a command needs, when not control
        self._docs: dict[str, CommandDoc] = {}  # what a command does and takes (``commands``)
        # Set by the daemon once the plugins' commands are registered: until then an unknown command
        # may be one that is about to exist, and is answered not_ready instead of unknown_command.
        self.commands_complete = threading.Event()
        self._replies: queue.SimpleQueue[tuple[zmq.Socket[bytes], list[bytes], JsonObject]] = (
            queue.SimpleQueue()
        )
        self._status_providers: list[Callable[[], JsonObject]] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._closed = False
        # True while the bus thread waits in poll(): only then does a publish write to the wake-up pipe
        # (a write per event was a system call each, for a thread that was awake anyway).
        self._idle = False
        self._lazy = False  # a lazy publish found the bus thread asleep and did not wake it (nudge)
        self._beat_now = False
        self._local_feeds: tuple[LocalFeed, ...] = ()  # in-process subscribers (replaced, never changed)
        self._private_subs = 0  # subscriptions on the private XPUB now (bus thread)
        self._topics: dict[object, bytes] = {}  # event type -> its topic frame (bus thread)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._pub: zmq.Socket[bytes]  # both owned by the bus thread, replaced by a CURVE re-bind
        self._router: zmq.Socket[bytes]
        self._pub_monitor: zmq.Socket[bytes] | None = None  # the public PUB's connection events
        self.step_watch = StepWatch(STEP_BUDGET)
        self._poller: zmq.Poller | None = None
        self._started = time.monotonic()
        self._startup_error: BaseException | None = None
        self.publish_endpoint = config.publish
        self.control_endpoint = config.control
        self.register_command("status", lambda _req: self.status(), spec=STATUS_DOC)
        self.register_command("events.since", self._events_since, spec=EVENTS_SINCE_DOC)
        self.register_command("commands", self._list_commands, spec=COMMANDS_DOC)

    def _init_flow(self, config: BusConfig, card_reserve: int, card_wait: float) -> None:
        """The queue and what goes with it: the lanes, the held-back batch, the losses to announce."""
        # The last seq logged and sent: a heartbeat's, status's, and the next batch's start.
        self.last_seq = self.event_log.last_seq if self.event_log is not None else 0
        # Producers append under _flow, the bus thread pops without it (deque ops are atomic).
        self._queue: deque[Event] = deque()
        self._capacity = config.queue_size
        self.card_reserve = card_reserve
        self.card_wait = card_wait
        # Events queued and events logged-then-sent, counted in queue order (see :meth:`flushed`).
        self._flow = threading.Condition()
        self._queued = 0
        self._sent = 0
        # The batch stamped and not yet logged (bus thread): tried again each round while appends fail.
        self._pending: list[Envelope] = []
        self._pending_queued = 0  # how many of them came off the queue (not notices)
        self._pending_told = 0  # stats.lost covered by the notices in it
        self._log_failing = False
        self._retry_at = 0.0
        # Card-lane losses not yet announced, by reader (under _flow), and when the notice may go: once
        # everything queued before the last loss went out, so no older event overwrites it on a screen.
        self._unannounced: dict[str | None, int] = {}
        self._notice_after = 0
        self._told = 0  # stats.lost whose notice went out

    # -- wiring (before start) ------------------------------------------------------------------------
    def register_command(
        self, name: str, handler: CommandHandler, *, role: str = "control", spec: CommandDoc | None = None
    ) -> None:
        """``role``: what a CURVE key needs to send it (docs/clients.md); ``operator`` for staff commands.
        ``spec``: what it does and takes, as the ``commands`` command tells (``readerctl help``); it
        changes nothing of how the command is answered."""
        self._commands[name] = handler
        self._roles[name] = role
        if spec is not None:
            self._docs[name] = spec
        else:
            self._docs.pop(name, None)

    def describe(self, name: str) -> JsonObject:
        """One command's entry of ``commands``: its spec with the role it needs here."""
        doc = self._docs.get(name)
        role = self.needed_role(name)
        return doc.schema(name, role) if doc is not None else undescribed(name, role)

    def _list_commands(self, _request: ControlRequest) -> JsonObject:
        """``commands``: every command this daemon answers now, its help, role and arguments."""
        return {"commands": [self.describe(name) for name in sorted(self._commands)]}

    def add_status(self, provider: Callable[[], JsonObject]) -> None:
        self._status_providers.append(provider)

    def add_command_observer(self, observer: CommandObserver) -> None:
        """``observer(request, role, outcome)`` after every answered command that needs the operator role
        (outcome ``ok`` or the error code): the daemon writes them to the audit log."""
        self._observers.append(observer)

    def register_private_command(self, name: str, handler: CommandHandler) -> None:
        """A command of the private control socket (the split plugin host's link to the daemon)."""
        self._link.commands[name] = handler

    def forward(self, peer: bytes, cmd: str, args: JsonObject, timeout: float = 10.0) -> Future[JsonObject]:
        """Send a request to ``peer`` on the private control socket (any thread): see
        :meth:`readerd.bus.link.PrivateLink.forward`."""
        return self._link.forward(peer, cmd, args, timeout)

    def local_feed(self) -> LocalFeed:
        """A new in-process subscriber (any thread; :mod:`readerd.bus.localfeed`): every batch logged from
        the next one on, and the heartbeats. Events logged before it are the subscriber's to catch up on
        from the event log, as a late joiner of the private feed does. Closing it unregisters it."""
        feed = LocalFeed()
        with self._flow:
            self._local_feeds = (*self._local_feeds, feed)
        return feed

    # -- any thread -----------------------------------------------------------------------------------
    def publish(self, event: Event, *, lazy: bool = False) -> bool:
        """Queue an event for publication. An ordinary event never waits: False (and counted) when the
        queue holds ``bus.queue_size``. A card-lane event (:func:`readerd.events.card_lane`) has
        ``card_reserve`` more places, then waits up to ``card_wait`` s for the bus thread to make room
        (back-pressure on the reader thread, not a loss); only then is it lost (:meth:`_lost`).

        ``lazy``: do not wake a sleeping bus thread for it; it goes out with the next event that does, or
        at :meth:`nudge`. For ``card.presented``: handled at once, it makes the bus thread and the plugin
        host compete for the GIL with the card session that is waiting for the card's answer; the session
        nudges when the read takes long and when it ends (:class:`readerd.reading.sessions.CardSessions`)."""
        with self._flow:  # the count and the queue in the same order (flushed() relies on it)
            if len(self._queue) >= self._capacity and not self._make_room(event):
                return False
            self._queue.append(event)
            self._queued += 1
        if self._idle:  # else the bus thread looks at the queue before it sleeps again (_run)
            if lazy:
                self._lazy = True
            else:
                self._wake()
        return True

    def nudge(self) -> None:
        """Wake the bus thread if a lazy event waits for it (any thread; cheap when none does)."""
        if self._lazy and self._idle:
            self._lazy = False
            self._wake()

    def _make_room(self, event: Event) -> bool:
        """The queue is full for ordinary events (called under ``_flow``): may ``event`` go in anyway?"""
        kind = str(event.type)
        if not card_lane(kind):
            self.stats.dropped[kind] += 1
            log.error("bus queue full, event dropped", type=kind, reader=event.reader)
            return False
        limit = self._capacity + self.card_reserve
        if len(self._queue) < limit or threading.current_thread() is self._thread:
            # A command handler on the bus thread (a control request that publishes) cannot wait for
            # the thread that would drain: its event goes in beyond the reserve.
            return True
        self.stats.card_waits += 1
        self._wake()  # the bus thread frees places (and notifies _flow) while this producer waits
        if self._flow.wait_for(lambda: len(self._queue) < limit, self.card_wait):
            return True
        self._lost(event)
        return False

    def _lost(self, event: Event) -> None:
        """A card-lane event that found no place (under ``_flow``): counted, and the bus is unhealthy until
        a ``card.events_lost`` for its reader went out (:meth:`_stamp_batch`)."""
        self.stats.dropped[str(event.type)] += 1
        self.stats.lost += 1
        self._unannounced[event.reader] = self._unannounced.get(event.reader, 0) + 1
        self._notice_after = self._queued
        log.critical(
            "card event lost: the bus queue stayed full",
            type=str(event.type),
            reader=event.reader,
            waited_s=self.card_wait,
        )

    def flushed(self, timeout: float = 2.0) -> bool:
        """Wait until every event queued before this call is in the event log and sent; False after
        ``timeout`` (also while event-log appends fail: nothing is sent then). The plugin host records
        that it handed an event to a plugin only then: a crash in between would otherwise lose the
        plugin's result and never replay the event that caused it. A lazy event queued meanwhile is
        sent now (:meth:`nudge`): waiting for it is what this call is for."""
        self.nudge()
        with self._flow:
            target = self._queued
            return self._flow.wait_for(lambda: self._sent >= target, timeout)

    def heartbeat_now(self) -> None:
        """Send a heartbeat at once (any thread): a new subscriber learns that its subscription is live."""
        self._beat_now = True
        self._wake()

    def _wake(self) -> None:
        if self._closed:
            return
        # BlockingIOError: the pipe is full, so a wake-up is already pending.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\x00")

    def status(self) -> JsonObject:
        out: JsonObject = {
            "kiosk": self.kiosk,
            "run_id": self.run_id,
            "last_seq": self.last_seq,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "queue_depth": len(self._queue),
            "published": self.stats.published,
            "dropped": dict(self.stats.dropped),
            "card_lane": {"waits": self.stats.card_waits, "lost": self.stats.lost, "announced": self._told},
            "subscribers": self.stats.subscribers,
            "event_log": self._log_status(),
            "endpoints": {"publish": self.publish_endpoint, "control": self.control_endpoint},
            "curve": self.curve is not None,
        }
        for provider in self._status_providers:
            out.update(provider())
        return out

    def _log_status(self) -> JsonObject | None:
        if self.event_log is None:
            return None
        return {
            "oldest_seq": self.event_log.oldest_seq(),
            "last_seq": self.event_log.last_seq,
            "append_failures": self.stats.log_failures,
            "appending": not self._log_failing,
            "held_back": len(self._pending),
            "since_refused": self._since.refused,
            "since_by_peer": self._since.by_peer(),
        }

    def _events_since_private(self, request: ControlRequest) -> Future[JsonObject]:
        """``events.since`` on the private control socket: with the plugin-only fields (the split plugin
        host catches up with what its plugins may receive)."""
        return self._since.handle(request, private=True)

    def _events_since(self, request: ControlRequest) -> Future[JsonObject]:
        """``events.since {seq, limit?}``: the public envelopes after ``seq``, in order (the Clone
        pattern's snapshot), read off the bus thread (:mod:`readerd.bus.since`)."""
        return self._since.handle(request)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._run, name="bus", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BusError("the bus thread did not start")
        if self._startup_error is not None:
            raise BusError(f"cannot bind the bus: {self._startup_error}") from self._startup_error

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake()
        self._since.close()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._closed = True
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def alive(self) -> bool:
        """The bus thread runs and is not stuck in one round (a command handler or an event-log write
        that never returns): otherwise the watchdog pings stop (readerd/ops/liveness.py)."""
        return self._thread is not None and self._thread.is_alive() and not self.step_watch.wedged()

    @property
    def healthy(self) -> bool:
        """:attr:`alive`, the event log takes appends, and every lost card event was announced: the
        daemon's health (watchdog ping, ``status``). It comes back by itself once the log takes the
        held-back batch and the ``card.events_lost`` notices are logged and sent."""
        return self.alive and not self._log_failing and self._told == self.stats.lost

    def since_by_peer(self) -> dict[str, dict[str, int]]:
        """``events.since`` answers and the events in them, by caller (``status``, the metrics)."""
        return self._since.by_peer()

    # -- the bus thread -------------------------------------------------------------------------------
    def _uses_curve(self, endpoint: str) -> bool:
        return self.curve is not None and endpoint.startswith("tcp://")

    def _bind(self, kind: int, endpoint: str, *, retry_for: float = 0.0) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0 if kind == zmq.REP else 200)
        if kind in (zmq.PUB, zmq.XPUB):
            sock.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        if kind == zmq.XPUB:  # every (un)subscription reaches the bus thread (_count_private)
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        if kind == zmq.ROUTER:  # a larger request disconnects its sender (libzmq), before any parsing
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_request_bytes)
        if self.curve is not None and self._uses_curve(endpoint):
            make_curve_server(sock, self.curve.keys)
        if endpoint.endswith(":0"):
            endpoint = endpoint.rsplit(":", 1)[0] + ":*"  # an ephemeral port, for tests
        deadline = time.monotonic() + retry_for
        while True:
            try:
                sock.bind(endpoint)
                return sock
            except zmq.ZMQError as e:
                # A re-bind: the old listener closes asynchronously in libzmq's reaper.
                if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    sock.close(0)
                    raise
                time.sleep(0.01)

    def _open(self) -> tuple[list[zmq.Socket[bytes]], zmq.Socket[bytes] | None, zmq.Socket[bytes] | None]:
        """Bind every socket (bus thread): all of them, the ZAP handler and the private feed."""
        sockets: list[zmq.Socket[bytes]] = []
        zap: zmq.Socket[bytes] | None = None
        try:
            if self.curve is not None:
                # Bound before any CURVE socket, so no handshake ever finds no handler (which libzmq
                # would treat as "allow").
                zap = self._bind(zmq.REP, ZAP_ENDPOINT, retry_for=2.0)  # a bus stopping just now
                sockets.append(zap)
            self._pub = self._bind(zmq.PUB, self.config.publish)
            sockets.append(self._pub)
            self.publish_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self._router = self._bind(zmq.ROUTER, self.config.control)
            sockets.append(self._router)
            self.control_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            if self.role_sockets is not None:
                for role, endpoint in self.role_sockets.endpoints().items():
                    router = self._bind(zmq.ROUTER, endpoint)
                    sockets.append(router)
                    self.role_sockets.secure(role)
                    self._role_routers[router] = role
            private = None
            if self.private_endpoint:
                private = self._bind(zmq.XPUB, self.private_endpoint)
                sockets.append(private)
                owner_only(self.private_endpoint)
            if self.private_control_endpoint:
                self._private_router = self._bind(zmq.ROUTER, self.private_control_endpoint)
                self._private_router.setsockopt(zmq.ROUTER_MANDATORY, 1)
                sockets.append(self._private_router)
                owner_only(self.private_control_endpoint)
        except zmq.ZMQError:
            for sock in sockets:
                sock.close(0)
            raise
        return sockets, zap, private

    def _run(self) -> None:
        try:
            sockets, zap, private = self._open()
        except zmq.ZMQError as e:
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        poller = self._poller = self._make_poller(zap, private)
        self._watch_pub()
        now = time.monotonic()
        next_heartbeat = now
        next_allowlist = now + (self.curve.poll if self.curve is not None else 0)
        try:
            while not self._stop.is_set():
                with self.step_watch.step():  # everything but the wait in poll() is a step
                    now = time.monotonic()
                    if now >= next_heartbeat or self._beat_now:
                        self._beat_now = False
                        # What is queued goes first: a heartbeat's seq covers every event queued before
                        # it, so a client that starts at a heartbeat never takes those for new ones.
                        self._drain(self._pub, private)
                        beat = heartbeat(uptime_s=now - self._started, readers=self._reader_count())
                        self._send(self._pub, private, beat)
                        next_heartbeat = now + self.config.heartbeat_interval
                    if self.curve is not None and now >= next_allowlist:
                        next_allowlist = now + self.curve.poll
                        self._check_allowlist()
                    wake_at = next_heartbeat
                    if self.curve is not None:
                        wake_at = min(wake_at, next_allowlist)
                    if self._pending:  # a held-back batch: try the log again soon
                        wake_at = min(wake_at, self._retry_at)
                    timeout_ms = max(0, int((wake_at - time.monotonic()) * 1000))
                ready = self._sleep(poller, timeout_ms)
                with self.step_watch.step():
                    self._serve(ready, zap, private)
            self._drain(self._pub, private)  # what was queued before stop still goes out
            if self._pending or self._queue:
                log.error(
                    "stopped with events the event log did not take: they were never sent",
                    held_back=len(self._pending),
                    queued=len(self._queue),
                )
        finally:
            self._close_monitor()
            for sock in (*sockets, self._pub, self._router):
                sock.close()

    def _make_poller(self, zap: zmq.Socket[bytes] | None, private: zmq.Socket[bytes] | None) -> zmq.Poller:
        poller = zmq.Poller()
        for sock in (self._router, *self._role_routers, zap, self._private_router, private):
            if sock is not None:  # private: its subscriptions (_count_private)
                poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        return poller

    def _sleep(self, poller: zmq.Poller, timeout_ms: int) -> dict[Any, int]:
        """Wait in poll() with :attr:`_idle` set, so a publish meanwhile writes a wake-up; one that came
        just before it was set wrote none, and its event is in the queue: then there is no waiting."""
        self._idle = True
        if self._queue:
            timeout_ms = 0
        ready = dict(poller.poll(timeout_ms))
        self._idle = False
        self._lazy = False  # what a lazy publish queued goes out in this round
        return ready

    def _serve(
        self, ready: dict[Any, int], zap: zmq.Socket[bytes] | None, private: zmq.Socket[bytes] | None
    ) -> None:
        """One round after poll(): wake-ups, ZAP and monitor events, queued events out, requests in."""
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        self._serve_side_sockets(ready, zap)
        if private is not None and private in ready:
            self._count_private(private)
        self._drain(self._pub, private)
        if self._router in ready:
            self._serve_control(self._router)
        for router, role in self._role_routers.items():
            if router in ready:
                self._serve_control(router, role)
        self._send_replies()
        if self._private_router is not None:
            self._link.serve(self._private_router, ready)

    def _serve_side_sockets(self, ready: dict[Any, int], zap: zmq.Socket[bytes] | None) -> None:
        """ZAP handshakes and the public PUB's connection events (bus thread)."""
        if zap is not None and zap in ready:
            self._serve_zap(zap)
        if self._pub_monitor is not None and self._pub_monitor in ready:
            self._count_subscribers(self._pub_monitor)

    def _close_monitor(self) -> None:
        """Before the PUB closes: pyzmq names the monitor's inproc endpoint after the socket's fd, so a
        monitor left enabled would collide with the next socket that gets the same fd."""
        if self._pub_monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._pub.disable_monitor()
            if self._poller is not None:
                self._poller.unregister(self._pub_monitor)
            self._pub_monitor.close(0)
            self._pub_monitor = None

    def _watch_pub(self) -> None:
        """Monitor the public PUB's connections (bus thread; again after a re-bind): the subscriber
        count of ``status`` and the metrics. Counted are connections, whatever they subscribed to."""
        self._close_monitor()
        self.stats.subscribers = 0
        self._pub_monitor = self._pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        if self._poller is not None:
            self._poller.register(self._pub_monitor, zmq.POLLIN)

    def _count_private(self, private: zmq.Socket[bytes]) -> None:
        """The private XPUB's subscriptions come and go (bus thread). While there are none, nothing is
        encoded or sent on it: the embedded plugin host takes its events from a :class:`LocalFeed`, and
        the metrics (or the split host) subscribe when they run. A subscriber joining sees the stream
        from the round after its subscription came in: a later start than plain PUB might give it, which
        every subscriber already handles (the first event seen is where its catch-up ends)."""
        while True:
            try:
                message = private.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._private_subs += 1
            elif message[:1] == b"\x00":
                self._private_subs = max(0, self._private_subs - 1)

    def _count_subscribers(self, monitor: zmq.Socket[bytes]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.stats.subscribers += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.stats.subscribers = max(0, self.stats.subscribers - 1)

    def _check_allowlist(self) -> None:
        assert self.curve is not None  # noqa: S101 - only called with CURVE
        allowlist = self.curve.allowlist
        before = len(allowlist.keys)
        cut = allowlist.refresh() | allowlist.pending_cut
        allowlist.pending_cut = set()
        if cut or len(allowlist.keys) != before:
            log.info("allowlist reloaded", keys=len(allowlist.keys), cut=len(cut))
        if cut:
            self._rebind()

    def _serve_zap(self, zap: zmq.Socket[bytes]) -> None:
        assert self.curve is not None  # noqa: S101 - only polled with CURVE
        serve_zap(zap, self.curve.allowlist)

    def _rebind(self) -> None:
        """Close and re-bind the CURVE PUB endpoint: the only way to cut subscriptions whose key was
        revoked, as ZAP is asked only at the handshake (docs/design.md D14) and PUB cannot drop one peer.
        Allowed subscribers reconnect on their own and catch up through ``events.since``. The control
        socket is not re-bound: every request is checked against the current allowlist
        (:meth:`_check_user`), so a revoked key is refused at once and the conversations of the others
        (an ``auth.pin`` in flight) are not cut."""
        if not self._uses_curve(self.publish_endpoint):
            return
        log.warning("allowlist lost keys: re-binding the CURVE publish endpoint to cut their subscriptions")
        self._close_monitor()
        self._pub.close(0)
        self._pub = self._bind(zmq.PUB, self.publish_endpoint, retry_for=2.0)
        self._watch_pub()
        self.stats.rebinds += 1

    def _check_user(self, user: str, cmd: str) -> None:
        """A CURVE caller's request against the allowlist as it is now (:func:`authorize`)."""
        assert self.curve is not None  # noqa: S101 - only CURVE connections carry a user
        authorize(self.curve.allowlist, user, cmd, self.needed_role(cmd))

    def _drain(self, pub: zmq.Socket[bytes], private: zmq.Socket[bytes] | None) -> None:
        """Stamp what is queued, append it to the event log in one transaction, then send it.

        The append comes first (docs/design.md D2): an event a client saw is always there for
        ``events.since``, and the next seq after a restart is the last logged one plus one. A batch the
        log refuses (a full disk) is not sent: it stays stamped, same seqs, and is tried again every
        ``LOG_RETRY`` s, while producers fill the queue (:meth:`publish`). Sending it then, seq order
        holds, and no seq is ever seen with two contents, even across a restart in between.
        """
        while True:
            if not self._pending and not self._stamp_batch():
                return
            batch = self._pending
            if self.event_log is not None and not self._append(batch):
                return
            self._pending = []
            self.last_seq = batch[-1].seq
            self._emit(pub, private, batch)
            self._told = max(self._told, self._pending_told)
            with self._flow:
                self._sent += self._pending_queued
                self._flow.notify_all()

    def _stamp_batch(self) -> bool:
        """The next batch off the queue, stamped, as the pending one; False when there is none. The
        ``card.events_lost`` notices go at its head once everything queued before the loss went out."""
        self._pending_told = 0
        lost: dict[str | None, int] = {}
        if self._unannounced:  # rare: only after a loss
            with self._flow:
                if self._sent >= self._notice_after:
                    lost, self._unannounced = self._unannounced, {}
                    self._pending_told = self.stats.lost
        # Taken off the queue first, then stamped: the ids are read from the random source in one go.
        events: list[Event] = []
        pop = self._queue.popleft
        for _ in range(DRAIN_BATCH - len(lost)):
            try:
                events.append(pop())
            except IndexError:
                break
        if not events and not lost:  # the common round: nothing queued (a request, a heartbeat)
            return False
        ts = utc_ts()  # one reading for the batch: it is stamped within the same millisecond or so
        batch: list[Envelope] = []
        seq = self.last_seq
        for reader, count in lost.items():
            seq += 1
            notice = card_events_lost(reader, count)
            batch.append(stamp(notice, seq=seq, run_id=self.run_id, kiosk=self.kiosk, ts=ts))
        notices = len(batch)
        if events:
            run_id, kiosk = self.run_id, self.kiosk
            for event, event_id in zip(events, new_ids(len(events)), strict=True):
                seq += 1
                batch.append(Envelope(seq, run_id, event_id, ts, kiosk, event))
        self._pending = batch
        self._pending_queued = len(batch) - notices
        return bool(batch)

    def _append(self, batch: list[Envelope]) -> bool:
        """Log a batch; False, and the bus unhealthy, when the log refuses it (one error per streak)."""
        assert self.event_log is not None  # noqa: S101 - only called with a log
        if self._log_failing and time.monotonic() < self._retry_at:
            return False
        try:
            self.event_log.append(batch)
        except StoreUnavailableError as e:
            self.stats.log_failures += 1
            self._retry_at = time.monotonic() + LOG_RETRY
            if not self._log_failing:
                self._log_failing = True
                log.error("event log append failed: events held back until it takes them", error=str(e))
            return False
        if self._log_failing:
            self._log_failing = False
            log.warning("event log takes appends again: held-back events go out", events=len(batch))
        return True

    def _send(self, pub: zmq.Socket[bytes], private: zmq.Socket[bytes] | None, event: Event) -> Envelope:
        """Send a heartbeat: it carries the seq of the last event and takes none of its own (seq counts
        events, and a client that sees a heartbeat ahead of what it received knows it missed some)."""
        envelope = stamp(event, seq=self.last_seq, run_id=self.run_id, kiosk=self.kiosk)
        self._emit(pub, private, [envelope])
        return envelope

    def _emit(self, pub: zmq.Socket[bytes], private: zmq.Socket[bytes] | None, batch: list[Envelope]) -> None:
        """Send a logged batch: the public PUB, the private one while it has subscribers, then the local
        feeds (the whole list, once each). Two plain sends per message, not ``send_multipart``."""
        send, more, last = pub.send, zmq.NOBLOCK | zmq.SNDMORE, zmq.NOBLOCK
        private_send = private.send if private is not None and self._private_subs > 0 else None
        topics = self._topics
        for envelope in batch:
            kind = envelope.event.type
            topic = topics.get(kind)
            if topic is None:
                topic = str(kind).encode()
                if len(topics) < TOPIC_CACHE:
                    topics[kind] = topic
            # PUB never blocks and never says when it drops for a subscriber past its HWM (libzmq): that
            # loss is the subscriber's to see (a seq gap) and to heal (events.since).
            send(topic, more)
            send(envelope.public_json(), last)
            if private_send is not None:
                private_send(topic, more)
                private_send(envelope.private_json(), last)
        self.stats.published += len(batch)
        feeds = self._local_feeds
        if feeds:
            for feed in feeds:
                if not feed.closed:
                    feed.put(batch)
            if any(feed.closed for feed in feeds):
                with self._flow:
                    self._local_feeds = tuple(f for f in self._local_feeds if not f.closed)

    def _reader_count(self) -> int:
        for provider in self._status_providers:
            readers = provider().get("readers")
            if isinstance(readers, list):
                return len(readers)
        return 0

    def _serve_control(self, router: zmq.Socket[bytes], role: str | None = None) -> None:
        """At most CONTROL_BATCH requests a round: a flood of them waits its turn behind the events.

        ``role``: a local role socket's, for every caller on it (the kernel checked the group at
        connect). None: the TCP control endpoint, where a CURVE key's role counts and a caller without
        one has the subscribe role."""
        curve = role is None and self._uses_curve(self.control_endpoint)
        for _ in range(CONTROL_BATCH):
            try:
                parts = router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.stats.control_requests += 1
            # The ZAP handler's User-Id (<role>:<name>) rides on every message of a CURVE connection;
            # on an ipc socket libzmq's Peer-Address is the caller's "<host>:<uid>:<gid>:<pid>".
            user = str(parts[-1].get("User-Id")) if curve else None
            caller = _caller(parts[-1], user, local=role is not None)
            frames = [part.bytes for part in parts]
            # Echo every routing/delimiter frame: REQ and DEALER clients, with or without an empty frame.
            envelope = frames[:-1]
            effective = (
                role if role is not None else (user.partition(":")[0] if user else self.anonymous_role)
            )
            reply = self._answer(frames[0], frames[-1], user, caller, effective)
            if isinstance(reply, Future):
                reply.add_done_callback(functools.partial(self._deferred, router, envelope))
                continue
            router.send_multipart([*envelope, control.encode_reply(reply)])

    def _deferred(self, router: zmq.Socket[bytes], envelope: list[bytes], done: Future[JsonObject]) -> None:
        """A deferred answer is ready (any thread): hand it to the bus thread, which owns the socket."""
        self._replies.put((router, envelope, done.result()))
        self._wake()

    def _send_replies(self) -> None:
        while True:
            try:
                router, envelope, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(zmq.ZMQError):  # a role socket closed at stop
                router.send_multipart([*envelope, control.encode_reply(reply)])

    def _answer(
        self, peer: bytes, body: bytes, user: str | None, caller: str, role: str
    ) -> JsonObject | Future[JsonObject]:
        def authorize(cmd: str) -> None:
            if user is not None:
                self._check_user(user, cmd)
                return
            needed = self.needed_role(cmd)
            if not role_allows(role, needed):
                raise ForbiddenError(
                    f"{cmd} needs the {needed} role; this connection has the {role} role: "
                    + ROLE_HINTS.get(needed, "")
                )

        reply = control.answer(
            peer,
            body,
            self._commands,
            user=user,
            caller=caller,
            role=role,
            authorize=authorize,
            starting=not self.commands_complete.is_set(),
        )
        if self._observers:
            self._observe(body, peer=peer, user=user, caller=caller, role=role, reply=reply)
        return reply

    def needed_role(self, cmd: str) -> str:
        """The role a command needs: subscribe for status and events.since, else as registered."""
        return SUBSCRIBE if cmd in SUBSCRIBE_COMMANDS else self._roles.get(cmd, "control")

    def _observe(
        self,
        body: bytes,
        *,
        peer: bytes,
        user: str | None,
        caller: str,
        role: str,
        reply: JsonObject | Future[JsonObject],
    ) -> None:
        """Tell the observers about an operator command, once its outcome is known."""
        try:
            obj = json.loads(body)
            cmd = obj.get("cmd") if isinstance(obj, dict) else None
        except ValueError:
            return
        if not isinstance(cmd, str) or self._roles.get(cmd) != "operator":
            return
        request = ControlRequest(cmd, {}, peer, None, user, caller, role)

        def tell(answer: JsonObject) -> None:
            outcome = "ok" if answer.get("ok") else str(answer.get("error", {}).get("code"))
            for observer in self._observers:
                try:
                    observer(request, role, outcome)
                except Exception:  # an observer must not break the bus thread
                    log.exception("command observer failed", cmd=cmd)

        if isinstance(reply, Future):
            reply.add_done_callback(lambda done: tell(done.result()))
        else:
            tell(reply)


def _caller(frame: zmq.Frame, user: str | None, *, local: bool) -> str:
    """Who sent a request, for the audit log: ``key:<name>``, ``uid:<n>`` or ``tcp``."""
    if user is not None:
        return "key:" + user.partition(":")[2]
    if local:
        with contextlib.suppress(zmq.ZMQError, ValueError, IndexError):
            return "uid:" + str(int(str(frame.get("Peer-Address")).split(":")[1]))
        return "uid:?"
    return "tcp"
