"""The embedded plugin host on the bus's in-process feed (readerd/bus/localfeed.py): a real bus with a real
SQLite event log, a real host and a plugin. The plugin gets every event in seq order without the host
parsing any JSON, and a stop that comes while a hook runs still hands over what had arrived.
Cost: under 1 s together. Waits are for conditions, never fixed sleeps."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from readerd import events as ev
from readerd.bus.server import Bus
from readerd.config import PluginsConfig
from readerd.events import Envelope
from readerd.plugin.api import EventInterest, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import PluginHost
from readerd.plugin.loader import BUILTIN
from tests.bus.test_card_lane import wait_for
from tests.support.bus import logged_bus

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """Records the seqs it is given; with ``hold`` set, the second call waits for ``release``."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified"}))

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        if self.hold and len(self.seqs) == 1:
            self.entered.set()
            self.release.wait(5)
        self.seqs.append(event.seq)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    with logged_bus(tmp_path, heartbeat_interval=0.05) as running:
        yield running


def start_host(bus: Bus, plugin: Recorder) -> PluginHost:
    host = PluginHost(
        PluginsConfig(autoload=False, disabled=tuple(BUILTIN)),
        kiosk="k",
        publish=bus.publish,
        plugins={"recorder": plugin},
        flushed=bus.flushed,
    )
    host.load()
    host.start(bus.local_feed(), heartbeat_now=bus.heartbeat_now)
    return host


def tap(bus: Bus, count: int) -> list[int]:
    """``count`` card.identified events, logged and handed on; their seqs (read back from the event log:
    the host's own ``plugin.handled`` events take seqs in between)."""
    first = bus.last_seq
    for i in range(count):
        bus.publish(ev.Event("card.identified", "R", {"kind": "jpki", "pseudonym": f"P{i}", "repeat": False}))
    assert bus.flushed()
    assert bus.event_log is not None
    logged = bus.event_log.since(first, limit=1000).events
    return [e["seq"] for e in logged if e["type"] == "card.identified"][:count]


def test_the_plugin_gets_every_event_in_order_and_nothing_is_parsed(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[bytes] = []
    original = Envelope.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Envelope], body: bytes) -> Envelope:
        parsed.append(body)
        return original(cls, body)  # type: ignore[no-any-return]

    monkeypatch.setattr(Envelope, "from_json", classmethod(counting))
    plugin = Recorder()
    host = start_host(bus, plugin)
    try:
        seqs = tap(bus, 5)
        wait_for(lambda: len(plugin.seqs) >= 5, "five events handed to the plugin")
    finally:
        host.stop()
    assert plugin.seqs == seqs
    assert parsed == []
    assert host.gaps == []
    wait_for(lambda: bus._local_feeds == (), "the stopped host's feed forgotten (at the next heartbeat)")


def test_a_stop_during_a_hook_still_hands_over_what_had_arrived(bus: Bus, tmp_path: Path) -> None:
    plugin = Recorder()
    plugin.hold = True
    host = start_host(bus, plugin)
    # Another writer holds the event log's lock while four events are published: the bus thread waits
    # in its first append, so at least the last three reach the feed as one batch. The hook waits in
    # the second of them: the stop comes with the rest of that batch taken off the feed, not handed.
    holder = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        first = bus.last_seq
        for i in range(4):
            bus.publish(ev.Event("card.identified", "R", {"kind": "jpki", "pseudonym": f"P{i}"}))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    seqs = list(range(first + 1, first + 5))
    assert plugin.entered.wait(5)
    stopping = threading.Thread(target=host.stop, args=(4.0,))
    stopping.start()
    wait_for(host._stop.is_set, "the stop under way")
    plugin.release.set()
    stopping.join(10)
    assert plugin.seqs == seqs
