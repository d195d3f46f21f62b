"""Bounded control work: ``events.since`` is paced per client, an oversize request costs its sender the
connection, and a client that must catch up on much still gets every event. Cost: about 2 s."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from readerd.bus.client import BusClient
from readerd.bus.control_client import request
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus
from readerd.bus.since import RateLimiter
from readerd.config import BusConfig
from readerd.events import Event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_allows_a_burst_then_paces() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take(b"a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(b"a") == pytest.approx(0.5)  # one token comes back every half second
    assert limiter.take(b"b") == 0.0, "another client has its own budget"
    clock.now += 0.5
    assert limiter.take(b"a") == 0.0
    assert limiter.take(b"a") > 0


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    config = BusConfig(
        publish="tcp://127.0.0.1:0",
        control="tcp://127.0.0.1:0",
        heartbeat_interval=0.05,
        since_rate=5.0,
        since_burst=3,
        max_request_bytes=4096,
    )
    log = EventLog(tmp_path / "events.db")
    bus = Bus(config, kiosk="k", event_log=log)
    bus.start()
    yield bus
    bus.stop()
    log.close()


def _since_replies(endpoint: str, count: int) -> list[dict[str, object]]:
    """``count`` events.since requests pipelined on one connection; their replies in request order
    (a refusal is answered at once, an answer once the log is read)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        for i in range(count):
            body = {"id": str(i), "cmd": "events.since", "args": {"seq": 0}}
            dealer.send_multipart([b"", json.dumps(body).encode()])
        replies = []
        for _ in range(count):
            assert dealer.poll(5000), "an events.since request got no answer"
            replies.append(json.loads(dealer.recv_multipart()[-1]))
    return sorted(replies, key=lambda reply: int(str(reply["id"])))


def test_a_client_over_its_budget_is_told_when_to_ask_again(bus: Bus) -> None:
    replies = _since_replies(bus.control_endpoint, 6)
    codes = [r["error"]["code"] if not r["ok"] else "ok" for r in replies]  # type: ignore[index]
    assert codes[:3] == ["ok", "ok", "ok"]
    assert "rate_limited" in codes[3:]
    limited = next(r for r in replies if not r["ok"])
    assert limited["error"]["details"]["retry_after_s"] > 0  # type: ignore[index]
    assert "wait" in limited["error"]["message"]  # type: ignore[index]
    assert request(bus.control_endpoint, "status")["result"]["event_log"]["since_refused"] >= 1


def test_an_oversize_request_costs_its_sender_the_connection_not_the_daemon(bus: Bus) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(bus.control_endpoint)
        body = {"id": "big", "cmd": "status", "args": {"pad": "x" * 100_000}}
        dealer.send_multipart([b"", json.dumps(body).encode()])
        assert not dealer.poll(500), "an oversize request is never answered"
    assert request(bus.control_endpoint, "status")["ok"], "the daemon answers everyone else"


def test_a_paced_client_still_catches_up_on_everything(bus: Bus) -> None:
    for i in range(4500):  # five answers of 1,000: more than the burst of 3
        bus.publish(Event("card.removed", "r", {"n": i}))
    assert bus.flushed(10)
    started = time.monotonic()
    with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0) as client:
        seen = [client.next(timeout=10)["data"]["n"] for _ in range(4500)]
    assert seen == list(range(4500))
    assert time.monotonic() - started < 10
