"""The bus's two lanes against a real bus, event log and subscriber: an ordinary event is dropped and
counted when the queue is full; a card event takes a reserved place, then waits for the bus thread, and
only a card event that still finds none is lost, which makes the bus unhealthy until a
``card.events_lost`` for its reader has gone out after everything queued before it.

Cost: about 1 s together. Waits are for conditions, never fixed sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from readerd import events as ev
from readerd.bus.client import BusClient
from readerd.bus.control import ControlRequest
from readerd.bus.control_client import request
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus
from readerd.config import BusConfig


def _config(queue_size: int) -> BusConfig:
    return BusConfig(
        publish="tcp://127.0.0.1:0",
        control="tcp://127.0.0.1:0",
        heartbeat_interval=0.05,
        queue_size=queue_size,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Until ``condition`` holds (a bound against a hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    event_log = EventLog(tmp_path / "events.db")
    yield event_log
    event_log.close()


def test_card_lane_set() -> None:
    for kind in (
        "card.identified",
        "card.events_lost",
        "member.enrolled",
        "plugin.points.earned",
        "plugin.handled",
    ):
        assert ev.card_lane(kind), kind
    for kind in ("heartbeat", "reader.added", "reader.error", "plugin.error"):
        assert not ev.card_lane(kind), kind


def test_a_full_queue_drops_ordinary_events_and_announces_a_lost_card_event(log: EventLog) -> None:
    """The bus thread is not running yet, so nothing drains: the queue fills for real."""
    bus = Bus(_config(queue_size=3), kiosk="k", event_log=log, card_reserve=2, card_wait=0.05)
    try:
        for i in range(3):
            assert bus.publish(ev.Event("reader.added", "R", {"i": i}))
        assert not bus.publish(ev.Event("reader.added", "R", {"i": 3}))  # ordinary: dropped at once
        assert bus.publish(ev.Event("card.presented", "R", {"i": 4}))  # card lane: a reserved place
        assert bus.publish(ev.Event("plugin.points.earned", "R", {"i": 5}))
        assert not bus.publish(ev.Event("card.identified", "R", {"i": 6}))  # waited, lost
        assert bus.stats.dropped == {"reader.added": 1, "card.identified": 1}
        assert bus.stats.lost == 1
        assert bus.status()["card_lane"] == {"waits": 1, "lost": 1, "announced": 0}

        bus.start()
        with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0) as client:
            got = [client.next(timeout=10) for _ in range(6)]
        wait_for(lambda: bus.healthy, "the bus is healthy once the notice went out")
        assert bus.status()["card_lane"] == {"waits": 1, "lost": 1, "announced": 1}
    finally:
        bus.stop()
    # Everything queued before the loss goes out first, then the notice for the reader concerned.
    assert [e["data"].get("i") for e in got[:5]] == [0, 1, 2, 4, 5]
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5, 6]
    assert got[5]["type"] == "card.events_lost"
    assert got[5]["reader"] == "R"
    assert got[5]["data"] == {"lost": 1}


def test_a_loss_of_no_reader_is_announced_for_every_screen(log: EventLog) -> None:
    """A lost card event without a reader gets a notice without one (``readerd web`` shows it on every
    kiosk page)."""
    bus = Bus(_config(queue_size=1), kiosk="k", event_log=log, card_reserve=0, card_wait=0.01)
    assert bus.publish(ev.Event("card.presented", None, {}))
    assert not bus.publish(ev.Event("card.removed", None, {}))
    bus.start()
    try:
        assert bus.alive
        wait_for(lambda: bus.healthy, "announced")
        answer = log.since(0)
    finally:
        bus.stop()
    assert [e["type"] for e in answer.events] == ["card.presented", "card.events_lost"]
    assert answer.events[1]["reader"] is None  # a loss of no particular reader: every screen asks


def test_card_events_wait_for_room_instead_of_being_dropped(log: EventLog) -> None:
    """A producer far faster than the bus thread, a queue of one place: every card event goes out, in
    order, none lost; the producer was held back (it had to be: 1,000 events, 2 places)."""
    bus = Bus(_config(queue_size=1), kiosk="k", event_log=log, card_reserve=1)
    bus.start()
    accepted: list[bool] = []
    try:
        with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0) as client:
            producer = threading.Thread(
                target=lambda: accepted.extend(
                    bus.publish(ev.Event("card.presented", "R", {"i": i})) for i in range(1000)
                )
            )
            producer.start()
            got = [client.next(timeout=10) for _ in range(1000)]
            producer.join()
        assert bus.flushed()
    finally:
        bus.stop()
    assert accepted == [True] * 1000
    assert bus.stats.card_waits > 0  # the producer really was held back
    assert bus.stats.lost == 0
    assert not bus.stats.dropped
    assert [e["data"]["i"] for e in got] == list(range(1000))
    assert [e["seq"] for e in got] == list(range(1, 1001))


def test_a_command_on_the_bus_thread_never_waits_for_itself(log: EventLog) -> None:
    """A control command runs on the bus thread; if it publishes card events into a full queue, waiting
    for the bus thread to drain would only wait for itself: they go in beyond the reserve instead."""
    bus = Bus(
        _config(queue_size=1),
        kiosk="k",
        event_log=log,
        card_reserve=0,
        card_wait=30,
        anonymous_role="control",
    )
    accepted: list[bool] = []

    def enrol(_request: ControlRequest) -> dict[str, object]:
        accepted.extend(bus.publish(ev.Event("member.enrolled", "R", {"i": i})) for i in range(3))
        return {}

    bus.register_command("enrol", enrol)
    bus.start()
    try:
        reply = request(bus.control_endpoint, "enrol", {})
        assert bus.flushed()
        answer = log.since(0)
    finally:
        bus.stop()
    assert reply["ok"], reply
    assert accepted == [True, True, True]
    assert (bus.stats.card_waits, bus.stats.lost) == (0, 0)
    assert [e["data"]["i"] for e in answer.events] == [0, 1, 2]
