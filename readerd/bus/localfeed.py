"""In-process subscribers of the bus: the embedded plugin host takes the stamped envelopes themselves.

The plugin host embedded in ``readerd run`` lives in the daemon's process. Over the private PUB socket it
would get every event as JSON and parse it back, CPU spent per event on bytes nobody needs (the objects
were right there). A :class:`LocalFeed` is a queue instead: the bus thread puts each batch on it after the
event log took the batch, as the list of :class:`~readerd.events.Envelope` it sent, heartbeats included
(one each), so the reader sees what a private-feed subscriber would, in the same order, without the JSON.

Like the private PUB socket with no high-water mark, it keeps every event for its reader: one that stops
reading must :meth:`LocalFeed.close` it (the bus then forgets it), or the queue grows.
"""

from __future__ import annotations

import queue

from readerd.events import Envelope


class LocalFeed:
    """One in-process subscriber's queue of batches (made by :meth:`readerd.bus.server.Bus.local_feed`)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Envelope]] = queue.SimpleQueue()
        self.closed = False

    def put(self, batch: list[Envelope]) -> None:
        """Bus thread: a batch, logged and sent, in seq order (every local feed gets the same list: read
        it, never change it)."""
        self._queue.put(batch)

    def get(self, timeout: float) -> list[Envelope] | None:
        """The next batch, waiting up to ``timeout`` s for one; None if none came."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self) -> list[Envelope] | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """The reader is gone: the bus stops putting batches here."""
        self.closed = True
