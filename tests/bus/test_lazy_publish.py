"""A lazy publish (``card.presented``) does not wake a sleeping bus thread: it goes out at a nudge or with
the next event that wakes it, in seq order. The session's worker nudges once a read takes long.
Cost: about 0.5 s together. The one fixed wait shows that nothing woke the bus thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from readerd import events as ev
from readerd.bus.server import Bus
from readerd.ops.worker import DeadlineWorker
from readerd.reading.identity import IdentityResolver, SqliteDirectory
from readerd.reading.sessions import CardSessions
from simulators.inprocess import InProcessReader
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from tests.bus.test_card_lane import wait_for
from tests.support.bus import logged_bus

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    with logged_bus(tmp_path, heartbeat_interval=30.0) as running:
        yield running


def asleep(bus: Bus) -> bool:
    return bus._idle and not bus._queue


def test_a_lazy_event_waits_for_a_nudge_and_goes_out_first(bus: Bus) -> None:
    assert bus.event_log is not None
    wait_for(lambda: asleep(bus), "the bus thread asleep in poll()")
    start = bus.last_seq
    assert bus.publish(ev.card_presented("R", ev.CardKind.JPKI), lazy=True)
    time.sleep(0.2)  # nothing wakes it: a heartbeat is 30 s away and no one connects
    assert bus.last_seq == start
    assert len(bus._queue) == 1
    bus.nudge()
    wait_for(lambda: bus.last_seq == start + 1, "the nudged event stamped and logged")
    wait_for(lambda: asleep(bus), "the bus thread asleep again")
    assert bus.publish(ev.card_presented("R", ev.CardKind.JPKI), lazy=True)
    assert bus.publish(ev.card_removed("R", ev.CardKind.JPKI))  # an ordinary event wakes it: both go
    wait_for(lambda: bus.last_seq == start + 3, "both events out")
    logged = [e["type"] for e in bus.event_log.since(start).events]
    assert logged == ["card.presented", "card.presented", "card.removed"]
    bus.nudge()  # nothing lazy is waiting: no wake-up, no event
    assert bus.last_seq == start + 3


def test_the_worker_nudges_once_when_a_call_runs_long_and_never_when_it_is_quick() -> None:
    worker = DeadlineWorker("session:R")
    nudged: list[float] = []
    release = threading.Event()
    try:
        assert worker.call(lambda: 1, 5.0, (0.01, lambda: nudged.append(1))) == 1
        assert nudged == []
        assert worker.call(lambda: release.wait(0.15), 5.0, (0.01, lambda: nudged.append(2))) is False
        assert nudged == [2]  # once, while the call ran
    finally:
        worker.stop()


def test_a_session_sends_card_presented_through_progress_and_nudges_at_its_end(tmp_path: Path) -> None:
    """The daemon's wiring in miniature: ``card.presented`` to ``progress`` (the lazy publish), the rest to
    the sink, and a nudge once the read is over (a quick read: only that one)."""
    directory = SqliteDirectory(tmp_path / "members.db")
    sunk: list[str] = []
    shown: list[str] = []
    nudges: list[str] = []
    sessions = CardSessions(
        IdentityResolver(b"\x42" * 32, directory),
        lambda event: sunk.append(str(event.type)),
        deadline=5.0,
        repeat_window=0.0,
        progress=lambda event: shown.append(str(event.type)),
        nudge=lambda: nudges.append(sunk[-1] if sunk else "-"),
    )
    reader = InProcessReader()
    atr = reader.insert(build_card(CardProfile(name="alice"), PkiStore(tmp_path / "pki")))
    try:
        sessions.read_contact_card("R", reader, atr)
    finally:
        directory.close()
    assert shown == ["card.presented"]
    assert sunk == ["card.identified"]
    assert nudges[-1] == "card.identified"  # the last nudge comes after the read's own event
