"""Reader backends: each owns its readers and threads and turns hardware into events.

Only ``pcsc.py`` imports pyscard and only ``nfc.py`` imports nfcpy; ``sim.py`` drives the in-process
simulator. Every backend hands cards to :class:`readerd.sessions.CardSessions`, so the events are the
same whichever hardware produced them.
"""

from __future__ import annotations

from typing import Protocol

from readerd.bus import CommandHandler, JsonObject


class Backend(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...

    def alive(self) -> bool:
        """False when a backend thread died: the watchdog stops pinging and systemd restarts us."""
        ...

    def readers(self) -> list[JsonObject]: ...

    def commands(self) -> dict[str, CommandHandler]:
        """Control commands this backend adds (the sim backend's ``tap``/``remove``; others none)."""
        ...
