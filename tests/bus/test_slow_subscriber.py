"""A subscriber that stops reading while the bus publishes far past every buffer between them: the PUB
socket's SNDHWM, the subscriber's RCVHWM and the kernel's socket buffers (3,000 events of 8 KiB, all
sent before it reads again). ``BusClient`` sees its gaps and catches up, ending with every seq exactly
once; the daemon counts its ``events.since`` answers. And the test of that test: a subscriber that does
not catch up, in the same scenario, really misses events, and the check reports them, so the first test
fails when a client's losses go unnoticed.

Cost: about 2 s together. Waits are for messages, never fixed sleeps."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from readerd import events as ev
from readerd.bus.client import BusClient
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus
from readerd.config import BusConfig
from tests.bus.test_client import wait_live

HWM = 100  # the bus's SNDHWM and the subscribers' RCVHWM, in messages
EVENTS = 3000
PAD = "x" * 8192  # 3,000 x 8 KiB = 24 MiB: far more than 2 x 100 messages and the kernel's buffers


@dataclass(frozen=True)
class Losses:
    missing: list[int]
    repeated: list[int]


def losses(seqs: list[int], first: int, last: int) -> Losses:
    """The check: which seqs of ``first..last`` a subscriber never got, and which it got twice."""
    counts = Counter(seqs)
    missing = [seq for seq in range(first, last + 1) if not counts[seq]]
    return Losses(missing, sorted(seq for seq, n in counts.items() if n > 1))


def test_the_check_itself() -> None:
    assert losses([1, 2, 3], 1, 3) == Losses([], [])
    assert losses([1, 2, 2, 4], 1, 4) == Losses([3], [2])


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    config = BusConfig(
        publish="tcp://127.0.0.1:0",
        control="tcp://127.0.0.1:0",
        heartbeat_interval=0.05,
        send_hwm=HWM,
        queue_size=100_000,
    )
    bus = Bus(config, kiosk="k", event_log=EventLog(tmp_path / "events.db"))
    bus.start()
    yield bus
    bus.stop()
    assert bus.event_log is not None
    bus.event_log.close()


def overrun(bus: Bus) -> tuple[int, int]:
    """Publish while the subscribers read nothing, until everything is logged and sent: the seqs."""
    first = bus.last_seq + 1
    for i in range(EVENTS):
        assert bus.publish(ev.Event("card.presented", "R", {"i": i, "pad": PAD}))
    assert bus.flushed(timeout=60)
    return first, first + EVENTS - 1


def test_a_subscriber_past_its_hwm_catches_up_every_seq_exactly_once(bus: Bus) -> None:
    with BusClient(
        bus.publish_endpoint, bus.control_endpoint, since=0, rcvhwm=HWM, heartbeat_timeout=30
    ) as client:
        wait_live(client, bus)  # since=0: a marker published before the subscription is live comes back
        before, gaps_before = client.stats.replayed, client.stats.gaps
        first, last = overrun(bus)
        seqs: list[int] = []
        while not seqs or seqs[-1] < last:
            seqs.append(int(client.next(timeout=10)["seq"]))
    assert losses(seqs, first, last) == Losses([], [])
    assert seqs == list(range(first, last + 1))
    # It really lost live events and healed them: it saw the gap, asked, and got them from the log.
    assert client.stats.gaps > gaps_before
    assert client.stats.missed > 0
    assert client.stats.catch_ups > 0
    assert client.stats.replayed - before > 0
    # The daemon cannot see a subscriber's HWM loss, but counts the catch-up it leads to.
    answered = bus.since_by_peer()["tcp"]
    assert answered["answers"] > 0
    assert answered["events"] >= client.stats.replayed - before


def test_the_check_reports_the_losses_of_a_subscriber_that_does_not_catch_up(bus: Bus) -> None:
    """The same overrun, read by a plain SUB socket that takes the live feed as it comes."""
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, HWM)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(bus.publish_endpoint)
    try:
        assert sub.poll(10_000)  # a heartbeat: the subscription is live
        first, last = overrun(bus)
        seqs: list[int] = []
        while True:  # until a heartbeat says the bus is at `last` (the feed's own end marker)
            assert sub.poll(10_000)
            envelope = json.loads(sub.recv_multipart()[-1])
            if envelope["type"] == "heartbeat":
                if envelope["seq"] >= last:
                    break
            elif envelope["seq"] >= first:
                seqs.append(int(envelope["seq"]))
    finally:
        sub.close()
    found = losses(seqs, first, last)
    assert found.missing  # the overrun really lost live events: the test above could fail
    assert found.repeated == []
