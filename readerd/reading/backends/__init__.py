"""Reader backends: each owns its readers and threads and turns hardware into events.

Only ``pcsc.py`` imports pyscard and only ``nfc.py`` imports nfcpy; ``sim.py`` drives the in-process
simulator. Every backend hands cards to :class:`readerd.reading.sessions.CardSessions`, so the events are the
same whichever hardware produced them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from protocols.transport import Transport
from readerd.bus.control import CommandHandler, JsonObject
from readerd.errors import ReaderdError

#: Work on the card in a reader (a PIN check, a signature), run on that reader's own thread inside one
#: exclusive transaction; the card is reset (logged out) afterwards where the reader can do so.
CardOperation = Callable[[Transport], JsonObject]


def failed(error: ReaderdError) -> Future[JsonObject]:
    """A card operation refused before it started (no such reader, no card)."""
    future: Future[JsonObject] = Future()
    future.set_exception(error)
    return future


class Backend(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    def alive(self) -> bool:
        """False when a backend thread died or a step of its loop is wedged (readerd/ops/liveness.py): the
        watchdog stops pinging and systemd restarts us."""
        ...

    def readers(self) -> list[JsonObject]: ...

    def commands(self) -> dict[str, CommandHandler]:
        """Control commands this backend adds (the sim backend's ``tap``/``remove``; others none)."""
        ...

    def has_reader(self, reader: str) -> bool: ...

    def on_card(self, reader: str, operation: CardOperation) -> Future[JsonObject]:
        """Run ``operation`` on the card now in ``reader``; the Future fails with ``CardAbsentError``
        when there is none, and with the session's errors (``SessionTimeoutError`` ...) otherwise."""
        ...
