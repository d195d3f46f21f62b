"""The bus's in-process feed (readerd/bus/localfeed.py) and its private XPUB, on a real bus with a real
SQLite event log and real ZeroMQ sockets: the local subscriber gets the very events it was given, stamped,
in seq order, heartbeats included, only once the event log took them; the private feed is encoded only
while someone subscribes to it and then carries the private fields as before.
Cost: about 1 s together. Waits are for conditions, never fixed sleeps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from readerd import events as ev
from readerd.bus.eventlog import EventLog
from readerd.bus.localfeed import LocalFeed
from readerd.bus.server import Bus
from readerd.config import BusConfig
from readerd.events import Envelope, EventType
from tests.bus.test_card_lane import wait_for

pytestmark = pytest.mark.timeout(30)

PRIVATE = "inproc://test-local-feed-private"


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    config = BusConfig(publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", heartbeat_interval=0.05)
    log = EventLog(tmp_path / "events.db")
    bus = Bus(config, kiosk="k", event_log=log, private_endpoint=PRIVATE)
    bus.start()
    yield bus
    bus.stop()
    log.close()


def take(feed: LocalFeed, count: int) -> list[Envelope]:
    """The next ``count`` envelopes that are not heartbeats (a bound against a hang, not a timing)."""
    got: list[Envelope] = []
    wait_for(lambda: _more(feed, got, count), f"{count} events on the local feed")
    return got


def _more(feed: LocalFeed, got: list[Envelope], count: int) -> bool:
    batch = feed.get(0.05) or []
    got.extend(e for e in batch if e.event.type != EventType.HEARTBEAT)
    return len(got) >= count


def test_the_local_feed_gets_the_events_themselves_logged_and_in_order(bus: Bus) -> None:
    feed = bus.local_feed()
    wait_for(lambda: feed.get(0.05) is not None, "a heartbeat on the local feed")  # it is registered
    events = [ev.Event("card.identified", "R", {"n": i}, {"idm": f"01{i:02d}"}) for i in range(5)]
    for event in events:
        assert bus.publish(event)
    got = take(feed, 5)
    assert [e.event for e in got] == events
    assert all(a.event is b for a, b in zip(got, events, strict=True))  # objects, not parsed copies
    seqs = [e.seq for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert bus.event_log is not None
    logged = bus.event_log.since(seqs[0] - 1, private=True).events
    assert [e["seq"] for e in logged] == seqs
    assert [e["data"] for e in logged] == [e.event.data for e in got]
    assert len({e.id for e in got}) == 5


def test_nothing_reaches_the_local_feed_before_the_log_took_it(bus: Bus, tmp_path: Path) -> None:
    assert bus.event_log is not None
    feed = bus.local_feed()
    bus.event_log._db.execute("PRAGMA busy_timeout=0")  # a locked database fails the append at once
    holder = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock: appends fail, really
    try:
        before = bus.last_seq
        bus.publish(ev.Event("card.identified", "R", {"n": 1}))
        wait_for(lambda: bus.stats.log_failures >= 2, "a failed append and its retry")
        while (batch := feed.get_nowait()) is not None:  # only heartbeats so far, at the logged seq
            assert [e.event.type for e in batch] == [EventType.HEARTBEAT]
            assert batch[0].seq == before
        assert not bus.healthy
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    got = take(feed, 1)
    assert got[0].seq == before + 1
    assert bus.event_log.last_seq >= before + 1


def test_a_closed_local_feed_is_forgotten(bus: Bus) -> None:
    kept, closed = bus.local_feed(), bus.local_feed()
    closed.close()
    bus.publish(ev.Event("reader.added", "R", {"backend": "sim"}))
    take(kept, 1)
    wait_for(lambda: closed not in bus._local_feeds, "the closed feed dropped")
    assert closed.get_nowait() is None


def test_the_private_feed_is_encoded_only_while_someone_subscribes(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    original = Envelope.private_json

    def counting(self: Envelope) -> bytes:
        encoded.append(self.seq)
        return original(self)

    monkeypatch.setattr(Envelope, "private_json", counting)
    feed = bus.local_feed()
    bus.publish(ev.Event("card.identified", "R", {"n": 1}, {"idm": "0102"}))
    take(feed, 1)
    assert encoded == []  # no subscriber: nothing encoded for the private feed

    sub: zmq.Socket[bytes] = bus.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(PRIVATE)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        wait_for(lambda: _heard(bus, sub), "a heartbeat on the private feed")
        bus.publish(ev.Event("card.identified", "R", {"n": 2}, {"idm": "0304"}))
        wait_for(lambda: bool(sub.poll(50)) and sub.recv_multipart()[0] == b"card.identified", "the event")
    finally:
        sub.close()
    assert encoded, "the subscriber's event was encoded for it"


def _heard(bus: Bus, sub: zmq.Socket[bytes]) -> bool:
    bus.heartbeat_now()
    return bool(sub.poll(50))
