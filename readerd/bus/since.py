"""``events.since`` answered off the bus thread, at a bounded rate per caller.

Catch-up reads the event log (SQLite, up to 1,000 events decoded per answer): on the bus thread a
subscriber asking in a loop would delay every card event and heartbeat behind its reads, and a thousand
such requests made the daemon look dead to its watchdog. Here the bus thread only checks the arguments
and the caller's budget and hands the read to a small pool of workers; the answer goes back through the
bus thread's reply queue like any deferred answer. A caller over its budget gets ``rate_limited`` with
``retry_after_s``; when every worker is busy and the backlog is full, ``busy``: either way the bus
thread never waits.

Answered off the bus thread, an answer may include events just appended and not yet sent live; a client
drops what it already has by ``seq`` (docs/clients.md), so nothing is seen twice.

Answers are counted per caller (``key:<name>``, ``uid:<n>``, ``tcp``, ``plugin-host`` for the private
socket): ZeroMQ's PUB cannot tell the daemon which subscriber lost live events, but a subscriber that
lost some catches up here, so these counts (``status``, the metrics) show who is losing events and how
many. At most ``MAX_PEERS`` callers are told apart; later ones are counted as ``other``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from readerd.bus.control import ControlRequest, JsonObject, RawJson
from readerd.bus.eventlog import EventLog
from readerd.errors import Refusal

#: The most events one answer carries; a client asks again while ``more`` is true.
SINCE_LIMIT = 1000
#: Reads waiting for a worker beyond which a request is refused ``busy``.
MAX_PENDING = 32
#: The rate of all callers together is that of this many callers.
OVERALL_CLIENTS = 2
#: Callers whose answers are counted apart (a bound on status's size and the metric's label values).
MAX_PEERS = 32
OTHER_PEERS = "other"


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[bytes | str, _Bucket] = {}

    def take(self, caller: bytes | str) -> float:
        """0 if the caller may go on now, else the seconds until it may (nothing is taken then)."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) > 10_000:  # callers come and go: forget the idle ones
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < 60}
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


class SinceService:
    """The ``events.since`` handler of one bus: checks on the bus thread, reads on a worker."""

    def __init__(
        self,
        event_log: EventLog | None,
        run_id: str,
        *,
        rate: float,
        burst: int,
        workers: int = 1,
    ) -> None:
        self.event_log = event_log
        self.run_id = run_id
        self.limiter = RateLimiter(rate, burst)
        # All callers together: a flood from many clients costs the daemon no more than a few of them.
        self.overall = RateLimiter(rate * OVERALL_CLIENTS, burst * OVERALL_CLIENTS)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="events-since")
        self._pending = 0
        self._lock = threading.Lock()
        self.refused = 0  # requests refused rate_limited or busy (status)
        self._by_peer: dict[str, list[int]] = {}  # caller -> [answers, events] (under _lock)

    def handle(self, request: ControlRequest, *, private: bool = False) -> Future[JsonObject]:
        seq = request.args.get("seq")
        limit = request.args.get("limit", SINCE_LIMIT)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise Refusal("bad_request", "seq: a non-negative integer")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= SINCE_LIMIT:
            raise Refusal("bad_request", f"limit: 1..{SINCE_LIMIT}")
        if self.event_log is None:
            raise Refusal("unavailable", "this bus keeps no event log")
        if not private:  # the split plugin host's own socket is not rate limited
            wait = self.limiter.take(request.user or request.peer) or self.overall.take(b"")
            if wait > 0:
                self.refused += 1
                raise Refusal(
                    "rate_limited",
                    "too many events.since requests from this client: wait, then ask again",
                    retry_after_s=round(wait, 3),
                )
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.refused += 1
                raise Refusal(
                    "busy", "the event log is answering other clients: ask again shortly", retry_after_s=0.1
                )
            self._pending += 1
        peer = "plugin-host" if private else (request.caller or "tcp")
        return self._pool.submit(self._read, self.event_log, seq, limit, private, peer)

    def by_peer(self) -> dict[str, dict[str, int]]:
        """Answers given and events in them, by caller (a copy)."""
        with self._lock:
            return {peer: {"answers": n[0], "events": n[1]} for peer, n in self._by_peer.items()}

    def _read(self, event_log: EventLog, seq: int, limit: int, private: bool, peer: str) -> JsonObject:
        """The answer, its events spliced in as stored (no decoding and encoding of 1,000 envelopes)."""
        try:
            answer = event_log.since_json(seq, limit=limit, private=private)
        finally:
            with self._lock:
                self._pending -= 1
        with self._lock:
            counts = self._by_peer.get(peer)
            if counts is None:
                key = peer if len(self._by_peer) < MAX_PEERS else OTHER_PEERS
                counts = self._by_peer.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += len(answer.events)
        head = json.dumps({"run_id": self.run_id, "last_seq": answer.last_seq, "more": answer.more})
        return RawJson(f'{head[:-1]}, "events": [{",".join(answer.events)}]}}')  # type: ignore[return-value]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
