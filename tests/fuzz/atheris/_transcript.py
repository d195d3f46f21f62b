"""A card that answers from a transcript, whatever it is asked (the atheris twin of
``tests/fuzz/harness.py``'s ``TranscriptCard``, without the daemon). Import it inside
``_common.instrument()``: it imports ``protocols``."""

from __future__ import annotations

from protocols.errors import CardRemovedError
from protocols.transport import ReaderCapabilities

#: Far above any real read: more commands than this means a session that does not stop.
MAX_COMMANDS = 256


class TranscriptCard:
    """An APDU :class:`~protocols.transport.Transport` and a FeliCa transport at once. When the
    transcript runs out the card is gone (:class:`CardRemovedError`), as a real card pulled away."""

    def __init__(self, answers: list[bytes], capabilities: ReaderCapabilities | None = None) -> None:
        self.answers = list(answers)
        self._capabilities = capabilities or ReaderCapabilities()
        self.sent = 0

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self._capabilities

    def _next(self) -> bytes:
        self.sent += 1
        if self.sent > MAX_COMMANDS:
            raise AssertionError(f"more than {MAX_COMMANDS} commands: the session does not stop")
        if not self.answers:
            raise CardRemovedError("the transcript ran out")
        return self.answers.pop(0)

    def transmit(self, apdu: bytes) -> bytes:
        return self._next()

    def exchange(self, frame: bytes, timeout: float) -> bytes:
        return self._next()
