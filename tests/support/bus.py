"""A bus of its own for tests that need the real thread, sockets and event log but no daemon."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus
from readerd.config import BusConfig


@contextmanager
def logged_bus(directory: Path, *, heartbeat_interval: float) -> Iterator[Bus]:
    """A started :class:`Bus` on loopback with an event log in ``directory``; stopped and closed after.
    ``heartbeat_interval``: short for a feed that must show it is live, long for a bus that must sleep."""
    config = BusConfig(
        publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", heartbeat_interval=heartbeat_interval
    )
    log = EventLog(directory / "events.db")
    bus = Bus(config, kiosk="k", event_log=log)
    bus.start()
    try:
        yield bus
    finally:
        bus.stop()
        log.close()
