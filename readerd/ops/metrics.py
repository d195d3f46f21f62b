"""Prometheus metrics on loopback: what the ward office's monitoring needs to see that a kiosk works.

The metrics come from the daemon's own event stream: a thread subscribes to the private feed (as the
plugin host does) and counts what it sees, so nothing is added to the card-reading path and a scrape can
never delay a tap. What the stream does not carry (events dropped before they got a ``seq``, the bus's
publish counter and queue depth, the daemon's health) is read from the daemon at scrape time.

Exposed (prefix ``readerd_``): taps, identifications, aborted reads by reason, the tap-to-event latency
(from ``card.presented`` to the ``card.identified`` / ``card.read_aborted`` of the same reader, by the
envelopes' timestamps), readers up/down, plugin errors, authentications, published and dropped events,
queue depth, health, the connections to the public event endpoint (the bus counts them with a socket
monitor: a PUB socket itself does not know its peers), and the ``events.since`` answers per caller: a
subscriber that lost live events past its high-water mark catches up there, which is the only place the
daemon can see such a loss (PUB drops without a word).

Labels never carry personal data: readers, kinds, reasons, plugin names only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
import zmq
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("readerd.metrics")

#: Seconds from a card being seen to its identity (or abort) going out. A JPKI read is 2 APDUs on an
#: extended-length reader (~0.1-0.3 s), 8+ on a short one, FeliCa ~50 ms; the session deadline is 5 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
START_TIMEOUT = 5.0  # seconds start() waits for the first message of the private feed
POLL_MS = 200


def _ts(envelope: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(envelope["ts"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class DaemonView:
    """What the scrape reads from the daemon itself (callables, so tests need no daemon)."""

    published: Callable[[], int]
    dropped: Callable[[], dict[str, int]]
    queue_depth: Callable[[], int]
    healthy: Callable[[], bool]
    subscribers: Callable[[], int] = lambda: 0
    #: ``events.since`` answers and their events by caller (at most 33 callers: readerd.bus.since).
    since_by_peer: Callable[[], dict[str, dict[str, int]]] = dict


class _DaemonCollector(Collector):
    def __init__(self, view: DaemonView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        published = CounterMetricFamily("readerd_events_published", "Events the bus sent out (with a seq).")
        published.add_metric([], self.view.published())
        yield published
        dropped = CounterMetricFamily(
            "readerd_events_dropped",
            "Events dropped before publication (the bus queue was full), by type; a card event here "
            "was lost and made the daemon unhealthy.",
            labels=["type"],
        )
        for event_type, count in sorted(self.view.dropped().items()):
            dropped.add_metric([event_type], count)
        yield dropped
        depth = GaugeMetricFamily("readerd_bus_queue_depth", "Events waiting for the bus thread.")
        depth.add_metric([], self.view.queue_depth())
        yield depth
        healthy = GaugeMetricFamily(
            "readerd_healthy", "1 while every backend and the bus advance (watchdog)."
        )
        healthy.add_metric([], 1 if self.view.healthy() else 0)
        yield healthy
        subscribers = GaugeMetricFamily(
            "readerd_bus_subscribers", "Connections to the public event endpoint (any subscription)."
        )
        subscribers.add_metric([], self.view.subscribers())
        yield subscribers
        answers = CounterMetricFamily(
            "readerd_events_since_answers",
            "events.since answers by caller (key:<name>, uid:<n>, tcp, plugin-host): catch-ups.",
            labels=["peer"],
        )
        replayed = CounterMetricFamily(
            "readerd_events_since_events",
            "Events sent in events.since answers, by caller: what subscribers missed or started from.",
            labels=["peer"],
        )
        for peer, counts in sorted(self.view.since_by_peer().items()):
            answers.add_metric([peer], counts.get("answers", 0))
            replayed.add_metric([peer], counts.get("events", 0))
        yield answers
        yield replayed


class Metrics:
    """The registry and the counters; :meth:`observe` takes one envelope of the private feed."""

    def __init__(self, view: DaemonView | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.taps = Counter("readerd_taps", "Cards presented to a reader.", ["reader", "kind"], registry=r)
        self.identified = Counter("readerd_identifications", "Cards identified.", ["kind"], registry=r)
        self.aborted = Counter(
            "readerd_reads_aborted", "Reads that ended without an identity.", ["reason"], registry=r
        )
        self.latency = Histogram(
            "readerd_tap_to_event_seconds",
            "From card.presented to card.identified or card.read_aborted on the same reader.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reader_up = Gauge(
            "readerd_reader_up", "1 while the reader is present.", ["reader", "backend"], registry=r
        )
        self.reader_errors = Counter(
            "readerd_reader_errors", "reader.error events.", ["backend", "reason"], registry=r
        )
        self.plugin_errors = Counter(
            "readerd_plugin_errors", "Plugin hooks that raised or timed out.", ["plugin", "error"], registry=r
        )
        self.authentications = Counter(
            "readerd_authentications", "JPKI authentications by result.", ["result"], registry=r
        )
        if view is not None:
            self.registry.register(_DaemonCollector(view))
        self._presented: dict[str, datetime] = {}
        self._backends: dict[str, str] = {}

    def observe(self, envelope: dict[str, Any]) -> None:
        kind = str(envelope.get("type", ""))
        reader = envelope.get("reader")
        data = envelope.get("data") or {}
        if kind == "card.presented" and reader:
            self.taps.labels(reader, str(data.get("kind", "unknown"))).inc()
            stamp = _ts(envelope)
            if stamp is not None:
                self._presented[reader] = stamp
        elif kind in ("card.identified", "card.read_aborted"):
            if kind == "card.identified":
                self.identified.labels(str(data.get("kind", "unknown"))).inc()
            else:
                self.aborted.labels(str(data.get("reason", "unknown"))).inc()
            start, end = self._presented.pop(reader, None) if reader else None, _ts(envelope)
            if start is not None and end is not None:
                outcome = "identified" if kind == "card.identified" else "aborted"
                self.latency.labels(outcome).observe(max(0.0, (end - start).total_seconds()))
        elif kind == "reader.added" and reader:
            self._backends[reader] = str(data.get("backend", ""))
            self.reader_up.labels(reader, self._backends[reader]).set(1)
        elif kind == "reader.removed" and reader:
            self.reader_up.labels(reader, self._backends.get(reader, str(data.get("backend", "")))).set(0)
        elif kind == "reader.error":
            self.reader_errors.labels(str(data.get("backend", "")), str(data.get("reason", ""))).inc()
        elif kind == "plugin.error":
            self.plugin_errors.labels(str(data.get("plugin", "")), str(data.get("error", ""))).inc()
        elif kind == "card.authenticated":
            self.authentications.labels("ok").inc()
        elif kind == "card.auth_failed":
            self.authentications.labels(str(data.get("reason", "unknown"))).inc()


class MetricsServer:
    """The feed subscriber thread and the HTTP endpoint (prometheus_client's, on its own thread)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._http_thread: threading.Thread | None = None
        self.events_seen = 0  # envelopes counted (tests wait on it)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(
        self, endpoint: str, context: zmq.Context[zmq.Socket[bytes]], heartbeat_now: Callable[[], None]
    ) -> None:
        """Subscribe first and wait for the first message (so reader.added at start is not missed), then
        listen. OSError (port in use) propagates: the daemon exits 69."""
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sock, ready), name="metrics", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.05):
            heartbeat_now()
            if not self._thread.is_alive() or time.monotonic() > deadline:
                # Never hold the daemon's start for metrics: the first reader.added may go uncounted.
                log.warning("metrics: the private feed stayed silent; starting without waiting")
                break
        self._server, self._http_thread = start_http_server(
            self.port, self.host, registry=self.metrics.registry
        )
        self.port = int(self._server.server_port)
        log.info("metrics listening", address=self.address)

    def _run(self, sock: zmq.Socket[bytes], ready: threading.Event) -> None:
        try:
            for envelope in self._envelopes(sock, ready):
                try:
                    self.metrics.observe(envelope)
                except Exception:  # a metrics bug must never end the subscriber
                    log.exception("metrics: event not counted", type=envelope.get("type"))
                self.events_seen += 1
        finally:
            sock.close()

    def _envelopes(self, sock: zmq.Socket[bytes], ready: threading.Event) -> Iterator[dict[str, Any]]:
        while not self._stop.is_set():
            if not sock.poll(POLL_MS, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            ready.set()
            try:
                envelope = json.loads(frames[-1])
            except ValueError:
                continue
            if isinstance(envelope, dict):
                yield envelope

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
