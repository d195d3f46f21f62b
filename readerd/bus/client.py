"""``readerd.bus.client``: subscribe to a readerd and get every event once, in order, even across loss.

ZeroMQ PUB/SUB drops for a late joiner, a slow subscriber (past its high-water mark) and across
reconnects; the daemon numbers events with a persistent, gap-free ``seq`` and keeps them in its event log
(docs/design.md D2). This client does what the ZeroMQ guide's Clone pattern does with that: subscribe
first, then ask the control socket for what it missed (``events.since``), and drop from the live feed
what it already has. It yields a stream with no gap and no duplicate, or raises
:class:`~readerd.errors.GapUnrecoverableError` once when the daemon no longer holds the missing events.

It always subscribes to everything and filters by topic itself: ``seq`` counts every event, so only a
subscriber that sees them all can tell a gap from a filtered-out event. Heartbeats carry the current seq
and the daemon's ``run_id``: a heartbeat ahead of the stream means loss even when no event follows, a new
``run_id`` a restart, and no message at all within ``heartbeat_timeout`` raises
:class:`~readerd.errors.BusSilentError` (dead daemon, silent network, or a revoked key).

::

    from readerd.bus.client import BusClient

    with BusClient("tcp://127.0.0.1:7410", "tcp://127.0.0.1:7411", since=cursor) as client:
        for event in client:
            handle(event)
            cursor = event["seq"]      # persist it to resume where you left off

``AsyncBusClient`` is the same for asyncio (``async for event in client``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import structlog
import zmq
import zmq.asyncio

from readerd.bus.control import refusal_of
from readerd.errors import BusSilentError, GapUnrecoverableError

log = structlog.get_logger("readerd.client")

Envelope = dict[str, Any]

#: Without a word from the daemon (event or heartbeat) for this long, the client raises BusSilentError:
#: three of the default 5-second heartbeats.
HEARTBEAT_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class CurveKeys:
    """A client's CURVE identity (z85 text keys): its own pair and the daemon's public key."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: Path, client_secret_file: Path) -> CurveKeys:
        """ZeroMQ certificate files: the server's ``.key`` and this client's ``.key_secret``
        (``readerctl keys generate`` and ``readerctl keys list`` make and show them)."""
        import zmq.auth  # noqa: PLC0415 - only CURVE users need it

        server_public, _ = zmq.auth.load_certificate(server_public_file)
        public, secret = zmq.auth.load_certificate(client_secret_file)
        if secret is None:
            raise ValueError(f"{client_secret_file} holds no secret key")
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


class Verdict(Enum):
    DELIVER = "deliver"
    DROP = "drop"  # a duplicate, or a heartbeat with nothing missed
    CATCH_UP = "catch_up"  # something is missing before this message: ask events.since


@dataclass
class ClientStats:
    """What this subscriber saw of its own losses: the daemon's PUB socket drops for a slow subscriber
    without telling anyone, so only the subscriber can count them (``gaps``, ``missed``) and how they
    were healed (``catch_ups``, ``replayed``) or not (``unrecoverable``)."""

    delivered: int = 0
    duplicates: int = 0  # live events dropped because catch-up had already delivered them
    gaps: int = 0  # times the live feed skipped seqs (an event or heartbeat ahead of the stream)
    missed: int = 0  # seqs the live feed skipped, counted when seen missing (catch-up may replay them)
    catch_ups: int = 0  # events.since rounds
    replayed: int = 0  # events delivered from events.since rather than the live feed
    restarts: int = 0  # new run_ids seen
    resets: int = 0  # restarts whose seq went backwards (the daemon lost its log)
    unrecoverable: list[tuple[int, int]] = field(default_factory=list)  # (first, last) seqs lost for good


class Stream:
    """The Clone pattern's bookkeeping, without I/O (both clients drive it): which live message to
    deliver, which to drop, and when to catch up."""

    def __init__(self, since: int | None, topics: tuple[str, ...]) -> None:
        self.last_seq = since  # the last seq delivered (or skipped by topic); None: start with the feed
        self.run_id: str | None = None
        self.topics = topics
        self.stats = ClientStats()

    def live(self, env: Envelope) -> Verdict:
        seq, heartbeat = int(env["seq"]), env["type"] == "heartbeat"
        run_id = str(env["run_id"])
        if self.run_id != run_id:
            if self.run_id is not None:
                self.stats.restarts += 1
                log.info("daemon restarted", run_id=run_id, seq=seq, last_seq=self.last_seq)
            # The first message after connecting, or of a new run, shows where the daemon is now: it
            # cannot be behind a cursor it gave us, since seq is persistent (docs/design.md D2), unless
            # its event log was lost. Then the numbering starts over from here. (Later in one run a
            # heartbeat may well be behind: it waited on the SUB socket while events.since answered.)
            last = self.last_seq
            if last is not None and (seq < last or (not heartbeat and seq == last)):
                self.stats.resets += 1
                log.warning("the daemon is behind this client's cursor: its event log was reset", seq=seq)
                self.last_seq = None
            self.run_id = run_id
        if self.last_seq is None:
            self.last_seq = seq if heartbeat else seq - 1
        if heartbeat:
            if seq > self.last_seq:
                return self._gap(seq - self.last_seq)
            return Verdict.DROP
        if seq == self.last_seq + 1:
            return Verdict.DELIVER
        if seq > self.last_seq + 1:
            return self._gap(seq - self.last_seq - 1)
        self.stats.duplicates += 1
        return Verdict.DROP

    def _gap(self, missing: int) -> Verdict:
        self.stats.gaps += 1
        self.stats.missed += missing
        return Verdict.CATCH_UP

    def take(self, env: Envelope) -> bool:
        """Advance past ``env`` (the next seq); True if the caller wants its topic."""
        self.last_seq = int(env["seq"])
        wanted = not self.topics or str(env["type"]).startswith(self.topics)
        if wanted:
            self.stats.delivered += 1
        return wanted

    def replay(self, result: dict[str, Any]) -> list[Envelope]:
        """The wanted events of an ``events.since`` answer that come next; duplicates skipped."""
        out: list[Envelope] = []
        for env in result.get("events", []):
            if self.last_seq is None or int(env["seq"]) == self.last_seq + 1:
                self.stats.replayed += 1
                if self.take(env):
                    out.append(env)
        return out

    def lost(self, error: dict[str, Any]) -> GapUnrecoverableError:
        """The daemon no longer holds what is missing: skip to what it has, and say so once."""
        oldest = int(error.get("details", {}).get("oldest_seq", 0))
        asked = self.last_seq or 0
        self.stats.unrecoverable.append((asked + 1, oldest - 1))
        log.error("events lost for good: older than the daemon's event log", first=asked + 1, last=oldest - 1)
        self.last_seq = oldest - 1
        return GapUnrecoverableError(oldest_seq=oldest, asked=asked)


def _request_body(seq: int) -> tuple[str, bytes]:
    request_id = str(uuid.uuid4())
    body = {"id": request_id, "cmd": "events.since", "args": {"seq": seq}}
    return request_id, json.dumps(body).encode()


#: The longest pause a paced catch-up waits before it asks again.
MAX_RETRY_AFTER = 2.0


def _retry_after(error: dict[str, Any]) -> float | None:
    """Seconds to wait before asking again when the daemon paced the request, else None."""
    if error.get("code") not in ("rate_limited", "busy"):
        return None
    details = error.get("details") or {}
    pause = details.get("retry_after_s", 0.1) if isinstance(details, dict) else 0.1
    return min(MAX_RETRY_AFTER, max(0.01, float(pause))) if isinstance(pause, (int, float)) else 0.1


def _parse(body: bytes) -> Envelope:
    """A live message as an envelope, or ``ValueError`` as :func:`readerd.events.parse_envelope` says it.
    :class:`Stream` needs an integer ``seq``, a string ``type`` and a ``run_id``: without them a message
    raised ``KeyError``/``TypeError`` from deep in the client (found by the event_envelopes fuzzer)."""
    env = json.loads(body)
    if not isinstance(env, dict):
        raise ValueError("an envelope is a JSON object")
    seq = env.get("seq")
    if (
        isinstance(seq, bool)
        or not isinstance(seq, int)
        or not isinstance(env.get("type"), str)
        or "run_id" not in env
    ):
        log.warning("a live message is not an envelope", size=len(body), fields=sorted(map(str, env))[:12])
        raise ValueError("envelope lacks an integer seq, a string type or a run_id")
    return env


class _Base:
    def __init__(
        self,
        publish: str,
        control: str,
        *,
        since: int | None,
        topics: tuple[str, ...] | list[str],
        heartbeat_timeout: float,
        request_timeout: float,
        rcvhwm: int,
        curve: CurveKeys | None,
    ) -> None:
        self.publish = publish
        self.control = control
        self.stream = Stream(since, tuple(topics))
        self.heartbeat_timeout = heartbeat_timeout
        self.request_timeout = request_timeout
        self.rcvhwm = rcvhwm
        self.curve = curve
        self._pending: deque[Envelope] = deque()
        self._last_heard = time.monotonic()

    @property
    def stats(self) -> ClientStats:
        return self.stream.stats

    @property
    def last_seq(self) -> int | None:
        """The cursor: the seq of the last event delivered (or passed over by topic)."""
        return self.stream.last_seq

    def _setup(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> None:
        for sock in (sub, dealer):
            sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.apply(sock)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sub.connect(self.publish)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        dealer.connect(self.control)

    def _after_catch_up(self, env: Envelope) -> None:
        """The live event that showed the gap is normally in the replay; if the log missed it (an append
        failed), it is still good when it comes next."""
        follows = int(env["seq"]) == (self.stream.last_seq or 0) + 1
        if env["type"] != "heartbeat" and follows and self.stream.take(env):
            self._pending.append(env)

    def _silent(self) -> BusSilentError:
        return BusSilentError(f"nothing from readerd at {self.publish} for {self.heartbeat_timeout:g} s")

    def _absorb(self, reply: dict[str, Any]) -> tuple[bool, float]:
        """One ``events.since`` answer, the same for both clients: its events queued, and whether more
        follow; or, when the daemon paces catch-up (``rate_limited``, ``busy``), the pause before asking
        again. Raises :class:`GapUnrecoverableError` for a pruned range, the refusal for any other error."""
        if not reply.get("ok"):
            error = reply.get("error", {})
            if error.get("code") == "gap_unrecoverable":
                raise self.stream.lost(error)
            pause = _retry_after(error)
            if pause is None:
                raise refusal_of(reply)
            return True, pause
        result = reply["result"]
        self._pending.extend(self.stream.replay(result))
        return bool(result.get("more")), 0.0


class BusClient(_Base):
    """Blocking client: iterate it, or call :meth:`next` with a timeout."""

    def __init__(
        self,
        publish: str,
        control: str,
        *,
        since: int | None = None,
        topics: tuple[str, ...] | list[str] = (),
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        rcvhwm: int = 1000,
        curve: CurveKeys | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """``since``: resume after this seq (a saved cursor; 0 for everything the daemon still holds);
        None starts with the live feed. ``topics``: type prefixes to deliver (all by default)."""
        super().__init__(
            publish,
            control,
            since=since,
            topics=topics,
            heartbeat_timeout=heartbeat_timeout,
            request_timeout=request_timeout,
            rcvhwm=rcvhwm,
            curve=curve,
        )
        context = context or zmq.Context.instance()
        self._sub: zmq.Socket[bytes] = context.socket(zmq.SUB)
        self._dealer: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self._setup(self._sub, self._dealer)

    def __iter__(self) -> Iterator[Envelope]:
        while True:
            yield self.next()

    def next(self, timeout: float | None = None) -> Envelope:
        """The next event. ``TimeoutError`` after ``timeout`` s without one (heartbeats may have come);
        :class:`BusSilentError` after ``heartbeat_timeout`` s without any message at all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pending:
                return self._pending.popleft()
            now = time.monotonic()
            silent_at = self._last_heard + self.heartbeat_timeout
            wait = silent_at - now if deadline is None else min(silent_at, deadline) - now
            if wait <= 0 or not self._sub.poll(int(wait * 1000) + 1, zmq.POLLIN):
                if time.monotonic() >= silent_at:
                    self._last_heard = time.monotonic()  # raise once per silent period
                    raise self._silent()
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no event within {timeout} s")
                continue
            _topic, body = self._sub.recv_multipart()
            self._last_heard = time.monotonic()
            env = _parse(body)
            verdict = self.stream.live(env)
            if verdict is Verdict.DELIVER:
                if self.stream.take(env):
                    return env
            elif verdict is Verdict.CATCH_UP:
                self._catch_up()
                self._after_catch_up(env)

    def _catch_up(self) -> None:
        while True:
            self.stream.stats.catch_ups += 1
            more, pause = self._absorb(self._request(self.stream.last_seq or 0))
            if pause:
                time.sleep(pause)
            elif not more:
                return

    def _request(self, seq: int) -> dict[str, Any]:
        request_id, body = _request_body(seq)
        self._dealer.send_multipart([b"", body])
        deadline = time.monotonic() + self.request_timeout
        while True:  # skip late answers to earlier requests that timed out
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._dealer.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                raise BusSilentError(f"no answer to events.since from {self.control}")
            reply = json.loads(self._dealer.recv_multipart()[-1])
            if isinstance(reply, dict) and reply.get("id") == request_id:
                return reply

    def close(self) -> None:
        self._sub.close()
        self._dealer.close()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncBusClient(_Base):
    """The asyncio client: ``async for event in client``, or ``await client.next(timeout)``."""

    def __init__(
        self,
        publish: str,
        control: str,
        *,
        since: int | None = None,
        topics: tuple[str, ...] | list[str] = (),
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        rcvhwm: int = 1000,
        curve: CurveKeys | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        super().__init__(
            publish,
            control,
            since=since,
            topics=topics,
            heartbeat_timeout=heartbeat_timeout,
            request_timeout=request_timeout,
            rcvhwm=rcvhwm,
            curve=curve,
        )
        context = context or zmq.asyncio.Context.instance()
        self._sub = context.socket(zmq.SUB)
        self._dealer = context.socket(zmq.DEALER)
        self._setup(self._sub, self._dealer)

    async def __aiter__(self) -> AsyncIterator[Envelope]:
        while True:
            yield await self.next()

    async def next(self, timeout: float | None = None) -> Envelope:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pending:
                return self._pending.popleft()
            now = time.monotonic()
            silent_at = self._last_heard + self.heartbeat_timeout
            wait = silent_at - now if deadline is None else min(silent_at, deadline) - now
            if wait <= 0 or not await self._sub.poll(int(wait * 1000) + 1):
                if time.monotonic() >= silent_at:
                    self._last_heard = time.monotonic()
                    raise self._silent()
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no event within {timeout} s")
                continue
            _topic, body = await self._sub.recv_multipart()
            self._last_heard = time.monotonic()
            env = _parse(body)
            verdict = self.stream.live(env)
            if verdict is Verdict.DELIVER:
                if self.stream.take(env):
                    return env
            elif verdict is Verdict.CATCH_UP:
                await self._catch_up()
                self._after_catch_up(env)

    async def _catch_up(self) -> None:
        while True:
            self.stream.stats.catch_ups += 1
            more, pause = self._absorb(await self._request(self.stream.last_seq or 0))
            if pause:
                await asyncio.sleep(pause)
            elif not more:
                return

    async def _request(self, seq: int) -> dict[str, Any]:
        request_id, body = _request_body(seq)
        await self._dealer.send_multipart([b"", body])
        deadline = time.monotonic() + self.request_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BusSilentError(f"no answer to events.since from {self.control}")
            try:
                frames = await asyncio.wait_for(self._dealer.recv_multipart(), remaining)
            except TimeoutError:
                raise BusSilentError(f"no answer to events.since from {self.control}") from None
            reply = json.loads(frames[-1])
            if isinstance(reply, dict) and reply.get("id") == request_id:
                return reply

    def close(self) -> None:
        self._sub.close()
        self._dealer.close()

    async def __aenter__(self) -> AsyncBusClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()
