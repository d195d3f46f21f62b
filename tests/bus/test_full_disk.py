"""The event log on a disk that fills up: a small tmpfs holds it and a filler file takes the rest, so
SQLite's appends really fail with "database or disk is full". Nothing the log did not take is sent,
the bus says it is unhealthy and ``flushed()`` does not pretend; with room again the held-back events go
out by themselves, in order, with the seqs they were given; and a restart after a full disk continues
after the last *logged* seq, so no subscriber ever sees one seq with two contents.

Needs a tmpfs mount (root, as in CI; skipped elsewhere with the reason, never under CI=true).
Cost: about 1 s together. Waits are for conditions, never fixed sleeps."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from readerd import events as ev
from readerd.bus.client import BusClient
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus
from readerd.config import BusConfig
from readerd.errors import StoreUnavailableError
from tests.bus.test_card_lane import wait_for

DISK_BYTES = 2 * 1024 * 1024


@dataclass
class SmallDisk:
    path: Path
    filler: Path

    def fill(self) -> None:
        """Write the filler until the disk has no room left (ENOSPC), and keep it."""
        chunk = b"\0" * 4096
        with open(self.filler, "ab", buffering=0) as f:
            while True:
                try:
                    f.write(chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    return

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = f"cannot mount a small tmpfs (root and CAP_SYS_ADMIN needed): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield SmallDisk(mount, mount / "filler")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _bus(log: EventLog, card_reserve: int = 1000, card_wait: float = 2.0) -> Bus:
    config = BusConfig(
        publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", heartbeat_interval=0.05, queue_size=20
    )
    bus = Bus(config, kiosk="k", event_log=log, card_reserve=card_reserve, card_wait=card_wait)
    bus.start()
    return bus


def card(i: int, reader: str = "R") -> ev.Event:
    return ev.Event("card.presented", reader, {"i": i})


def test_a_full_disk_holds_events_back_until_it_has_room_again(disk: SmallDisk) -> None:
    log = EventLog(disk.path / "events.db")
    bus = _bus(log, card_reserve=3, card_wait=0.05)
    try:
        with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0) as client:
            for i in range(3):
                assert bus.publish(card(i))
            before = [client.next(timeout=10) for _ in range(3)]
            disk.fill()
            assert bus.publish(card(3))
            wait_for(lambda: bus.stats.log_failures > 0, "an append failed")
            assert not bus.healthy
            assert not bus.flushed(timeout=0.2)
            status = bus.status()["event_log"]
            assert status["appending"] is False
            assert status["held_back"] == 1
            assert bus.last_seq == 3  # what subscribers saw; the held-back event is seq 4, unsent
            with pytest.raises(TimeoutError):
                client.next(timeout=0.2)  # heartbeats come (seq 3), nothing else
            # Producers go on: ordinary events until the queue is full, card events into the reserve.
            i = 4
            while bus.publish(ev.Event("reader.added", "R", {"i": i})):
                i += 1
            ordinary = i - 4
            for j in range(3):
                assert bus.publish(card(100 + j))
            assert not bus.publish(card(200))  # the reserve is full too and the bus cannot send: lost
            assert bus.stats.lost == 1
            failures = bus.stats.log_failures

            disk.free()  # no command, no restart: the bus tries again by itself
            wait_for(lambda: bus.healthy, "healthy again")
            after = [client.next(timeout=10) for _ in range(1 + ordinary + 3 + 1)]
            assert bus.flushed()
    finally:
        bus.stop()
        log.close()
    assert failures > 1  # tried again while full ...
    assert [e["seq"] for e in before + after] == list(range(1, len(before) + len(after) + 1))
    assert [e["data"].get("i") for e in after[: 1 + ordinary + 3]] == [
        3,
        *range(4, 4 + ordinary),
        100,
        101,
        102,
    ]
    assert after[-1]["type"] == "card.events_lost"
    assert after[-1]["data"] == {"lost": 1}
    assert bus.stats.dropped == {"reader.added": 1, "card.presented": 1}
    assert ordinary == 20  # the queue's 20 places (the held-back batch is off the queue)


def test_a_restart_after_a_full_disk_never_repeats_a_seq(disk: SmallDisk) -> None:
    """Run 1 gives seqs 1-3 and holds back two events when the disk is full, then stops (they are lost,
    never sent). Run 2 starts on the same full disk, and once there is room its events go out from 4 on:
    the seqs of run 1's held-back events are given again, but no subscriber ever saw those."""
    log = EventLog(disk.path / "events.db")
    bus = _bus(log)
    seen: dict[int, str] = {}
    try:
        with BusClient(bus.publish_endpoint, bus.control_endpoint, since=0) as client:
            for i in range(3):
                bus.publish(card(i))
            seen |= {e["seq"]: e["id"] for e in (client.next(timeout=10) for _ in range(3))}
            disk.fill()
            bus.publish(card(3))
            bus.publish(card(4))
            wait_for(lambda: bus.stats.log_failures > 0, "an append failed")
            with pytest.raises(TimeoutError):
                client.next(timeout=0.2)  # seqs 4 and 5 are given, held back, never sent
    finally:
        bus.stop()
        log.close()

    log = EventLog(disk.path / "events.db")  # opened on the full disk
    assert log.last_seq == 3
    bus = _bus(log)
    try:
        with BusClient(bus.publish_endpoint, bus.control_endpoint, since=max(seen)) as client:
            bus.publish(card(5))
            wait_for(lambda: bus.stats.log_failures > 0, "an append failed")
            disk.free()
            run2 = [client.next(timeout=10) for _ in range(1)]
        logged = log.since(0).events
    finally:
        bus.stop()
        log.close()
    assert seen.keys() == {1, 2, 3}
    assert [(e["seq"], e["data"]["i"]) for e in run2] == [(4, 5)]
    assert {e["seq"]: e["id"] for e in logged} == seen | {4: run2[0]["id"]}  # one content per seq


def test_the_disk_fixture_really_fills(disk: SmallDisk) -> None:
    """The test of the tests above: with the filler in place, SQLite itself refuses an append."""
    log = EventLog(disk.path / "events.db")
    try:
        disk.fill()
        envelope = ev.stamp(card(0), seq=1, run_id="r", kiosk="k")
        with pytest.raises(StoreUnavailableError, match="full"):
            log.append([envelope])
        disk.free()
        log.append([envelope])
        assert log.last_seq == 1
    finally:
        log.close()
