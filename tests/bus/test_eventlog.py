"""The durable event log: seq continues across restarts, retention by age and count, events.since."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from readerd import events as ev
from readerd.bus.eventlog import DAY, EventLog
from readerd.errors import GapUnrecoverableError
from readerd.events import Envelope, stamp


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def envelopes(first: int, n: int) -> list[Envelope]:
    out = []
    for seq in range(first, first + n):
        event = ev.Event(
            "card.identified", "R", {"pseudonym": f"P{seq}"}, {"idm": f"{seq:016X}", "serial": seq}
        )
        out.append(stamp(event, seq=seq, run_id="run", kiosk="k"))
    return out


def test_seq_continues_after_reopen_and_survives_pruning(tmp_path: Path) -> None:
    clock = Clock()
    log = EventLog(tmp_path / "events.db", clock=clock)
    assert log.last_seq == 0
    log.append(envelopes(1, 5))
    log.close()
    clock.now += 8 * DAY  # everything is now past the 7-day retention
    reopened = EventLog(tmp_path / "events.db", clock=clock)
    assert reopened.last_seq == 5  # next = last logged + 1, even with nothing left in the table
    assert reopened.oldest_seq() == 6
    assert reopened.since(5).events == []
    with pytest.raises(GapUnrecoverableError) as e:
        reopened.since(2)
    assert e.value.details() == {"oldest_seq": 6}


def test_wal_and_synchronous_normal_file_mode(tmp_path: Path) -> None:
    EventLog(tmp_path / "events.db").close()
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert (tmp_path / "events.db").stat().st_mode & 0o777 == 0o600


def test_since_in_order_with_limit_and_private_only_on_request(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db")
    log.append(envelopes(1, 10))
    first = log.since(3, limit=4)
    assert [e["seq"] for e in first.events] == [4, 5, 6, 7]
    assert first.more is True
    assert first.last_seq == 10
    assert all("private" not in e for e in first.events)
    rest = log.since(7, limit=100, private=True)
    assert [e["seq"] for e in rest.events] == [8, 9, 10]
    assert rest.more is False
    assert rest.events[0]["private"] == {"idm": "0000000000000008"}  # the serial is never stored
    assert rest.events[0]["data"] == {"pseudonym": "P8"}
    assert log.since(10).events == []
    assert log.since(0).events[0]["seq"] == 1


def test_retention_by_count(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", max_events=100)
    for start in range(1, 1001, 50):
        log.append(envelopes(start, 50))
    log.prune()
    assert log.oldest_seq() == 901
    assert [e["seq"] for e in log.since(900, limit=1000).events] == list(range(901, 1001))
    with pytest.raises(GapUnrecoverableError) as e:
        log.since(899)
    assert e.value.oldest_seq == 901


def test_retention_by_age(tmp_path: Path) -> None:
    clock = Clock()
    log = EventLog(tmp_path / "events.db", max_age_s=DAY, clock=clock)
    log.append(envelopes(1, 3))
    clock.now += DAY / 2
    log.append(envelopes(4, 3))
    clock.now += DAY * 0.75  # the first three are now older than a day, the others are not
    assert log.prune() == 3
    assert log.oldest_seq() == 4
