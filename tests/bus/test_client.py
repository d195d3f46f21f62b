"""readerd.bus.client against real sockets on loopback: late joiners, paused subscribers past their HWM,
lost history, daemon restarts and a dead daemon. Waits are for messages, never sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from readerd import events as ev
from readerd.bus.client import AsyncBusClient, BusClient, Stream, Verdict
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus
from readerd.config import BusConfig
from readerd.errors import BusSilentError, GapUnrecoverableError
from tests.support.daemon import running_daemon, sim_config
from tests.support.ports import free_tcp_port

PAD = "x" * 1024  # makes a paused subscriber's kernel buffers and HWM overflow quickly


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    config = BusConfig(
        publish="tcp://127.0.0.1:0",
        control="tcp://127.0.0.1:0",
        heartbeat_interval=0.05,
        send_hwm=10,
        queue_size=100_000,
    )
    bus = Bus(config, kiosk="k", event_log=EventLog(tmp_path / "events.db"))
    bus.start()
    yield bus
    bus.stop()
    assert bus.event_log is not None
    bus.event_log.close()


def publish(bus: Bus, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        assert bus.publish(ev.Event("card.presented", "R", {"i": i, "pad": PAD}))


def collect(client: BusClient, n: int) -> list[dict[str, object]]:
    return [client.next(timeout=30) for _ in range(n)]


def wait_live(client: BusClient, bus: Bus) -> None:
    """Returns once the client has read an event from the live feed (a client started with ``since=0``
    gets the marker either way, live or replayed; only a live one proves the subscription)."""
    while True:
        bus.publish(ev.Event("reader.added", "R", {"backend": "test"}))
        replayed = client.stats.replayed
        while client.next(timeout=10)["type"] != "reader.added":
            pass
        if client.stats.replayed == replayed:
            return


def test_paused_subscriber_past_its_hwm_recovers_everything_through_catch_up(bus: Bus) -> None:
    with BusClient(
        bus.publish_endpoint, bus.control_endpoint, since=0, rcvhwm=10, heartbeat_timeout=30
    ) as client:
        wait_live(client, bus)
        publish(bus, 20_000)  # the client reads nothing meanwhile: its pipe fills, PUB drops for it
        got = collect(client, 20_000)
    assert [e["data"]["i"] for e in got] == list(range(20_000))  # type: ignore[index]
    seqs = [int(str(e["seq"])) for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + 20_000))
    assert client.stats.catch_ups > 0
    assert client.stats.replayed > 0  # some came from events.since: the live feed really dropped


def test_late_subscriber_gets_history_then_live_without_gap_or_duplicate(bus: Bus) -> None:
    publish(bus, 50)
    with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0, topics=["card."]) as client:
        history = collect(client, 50)
        publish(bus, 50, start=50)
        live = collect(client, 50)
    assert [e["data"]["i"] for e in history + live] == list(range(100))  # type: ignore[index]
    assert [e["seq"] for e in history + live] == list(range(1, 101))


def test_lost_history_raises_once_and_the_stream_goes_on(tmp_path: Path) -> None:
    config = BusConfig(publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", heartbeat_interval=0.05)
    log = EventLog(tmp_path / "events.db", max_events=100)
    bus = Bus(config, kiosk="k", event_log=log)
    bus.start()
    try:
        publish(bus, 1000)
        deadline = time.monotonic() + 10
        while log.last_seq < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for the bus thread to log them (a condition, not a timed sleep)
        log.prune()  # down to the last 100
        with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0) as client:
            with pytest.raises(GapUnrecoverableError) as lost:
                client.next(timeout=10)
            rest = [client.next(timeout=10) for _ in range(1000 - lost.value.oldest_seq + 1)]
    finally:
        bus.stop()
        log.close()
    assert lost.value.oldest_seq == 901
    assert client.stats.unrecoverable == [(1, lost.value.oldest_seq - 1)]
    assert [e["seq"] for e in rest] == list(range(lost.value.oldest_seq, 1001))


def test_restart_is_detected_by_run_id_and_a_dead_daemon_by_heartbeat_timeout(tmp_path: Path) -> None:
    bus_config = BusConfig(
        publish=f"tcp://127.0.0.1:{free_tcp_port()}",
        control=f"tcp://127.0.0.1:{free_tcp_port()}",
        heartbeat_interval=0.05,
    )
    config = sim_config(tmp_path, bus=bus_config)
    first: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        with running_daemon(config) as d:
            client = stack.enter_context(BusClient(d.publish, d.control, heartbeat_timeout=1.0))
            d.tap("alice", hold=False)
            # The sim readers' reader.added may come after the client's first heartbeat: then it rightly
            # catches them up, so the first run's stream is those (if any) and then the tap.
            # The tap ends with card.removed and the plugin host's plugin.handled, in either order.
            while not {"card.removed", "plugin.handled"} <= {str(e["type"]) for e in first}:
                first.append(client.next(timeout=10))
        started = time.monotonic()
        with pytest.raises(BusSilentError):
            client.next(timeout=30)  # the daemon is gone: no heartbeat
        assert time.monotonic() - started < 30
        with running_daemon(config) as d:
            d.tap("bob")
            after = [client.next(timeout=10) for _ in range(4)]
    types = [str(e["type"]) for e in first]
    assert types[-4:-2] == ["card.presented", "card.identified"]
    assert sorted(types[-2:]) == ["card.removed", "plugin.handled"]
    assert set(types[:-4]) <= {"reader.added"}
    assert [e["type"] for e in after] == ["reader.added", "reader.added", "card.presented", "card.identified"]
    seqs = [int(str(e["seq"])) for e in first + after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert client.stats.restarts == 1
    assert client.stream.run_id == after[0]["run_id"] != first[0]["run_id"]


def test_async_client_catches_up_like_the_sync_one(bus: Bus) -> None:
    publish(bus, 30)
    # A cursor is always a seq the daemon had sent (seq is persistent): wait until it has, or the first
    # heartbeat could show the daemon behind since=10 and the client would rightly take that for a reset.
    deadline = time.monotonic() + 10
    while bus.last_seq < 30:
        assert time.monotonic() < deadline, "the bus never sent the 30 events"
        time.sleep(0.01)

    async def main() -> list[int]:
        async with AsyncBusClient(bus.publish_endpoint, bus.control_endpoint, since=10) as client:
            out = [int((await client.next(timeout=10))["seq"]) for _ in range(20)]
            publish(bus, 5, start=30)
            out += [int((await client.next(timeout=10))["seq"]) for _ in range(5)]
            return out

    assert asyncio.run(main()) == list(range(11, 36))


def envelope(seq: int, run: str = "r1", kind: str = "card.removed") -> dict[str, object]:
    return {"seq": seq, "run_id": run, "type": kind}


def test_stream_bookkeeping() -> None:
    stream = Stream(None, ("card.",))
    assert stream.live(envelope(5, kind="heartbeat")) is Verdict.DROP  # starts at the current seq
    assert stream.live(envelope(6)) is Verdict.DELIVER
    assert stream.take(envelope(6)) is True
    assert stream.live(envelope(6)) is Verdict.DROP  # a duplicate
    assert stream.live(envelope(8)) is Verdict.CATCH_UP  # 7 is missing
    assert stream.live(envelope(9, kind="heartbeat")) is Verdict.CATCH_UP  # loss without a next event
    assert stream.replay({"events": [envelope(6), envelope(7, kind="reader.added"), envelope(8)]}) == [
        envelope(8)
    ]
    assert stream.last_seq == 8  # 7 was passed over by topic, 6 was a duplicate
    assert stream.live(envelope(8, run="r2", kind="heartbeat")) is Verdict.DROP  # restart, nothing new
    assert stream.stats.restarts == 1
    assert stream.live(envelope(3, run="r3")) is Verdict.DELIVER  # seq went back: the log was reset
    assert stream.stats.resets == 1


def test_a_cursor_ahead_of_the_daemon_means_its_log_was_reset() -> None:
    stale = Stream(500, ())  # a cursor saved from a daemon whose state directory was since wiped
    assert stale.live(envelope(7, kind="heartbeat")) is Verdict.DROP
    assert stale.stats.resets == 1
    assert stale.live(envelope(8)) is Verdict.DELIVER  # and not dropped as a "duplicate" forever
    fresh = Stream(5, ())
    assert fresh.live(envelope(9, kind="heartbeat")) is Verdict.CATCH_UP  # an ordinary late start
    assert fresh.stats.resets == 0
