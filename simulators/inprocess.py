"""The card models behind a :class:`protocols.transport.Transport`, with no sockets: the fast tier.

It behaves like a reader would: a card must be inserted (powered) to answer, and a pulled card raises
:class:`CardRemovedError` instead of answering.
"""

from __future__ import annotations

from typing import Protocol

from protocols.errors import CardRemovedError, ReaderUnavailableError
from protocols.transport import ReaderCapabilities
from simulators.mynumber import audit_model_apdu

#: What vpcd advertises (docs/card-facts.md §10): 64 KiB APDUs.
EXTENDED_CAPABILITIES = ReaderCapabilities(max_apdu_data=0x10000)
SHORT_CAPABILITIES = ReaderCapabilities(max_apdu_data=0)


class CardPulled(Exception):
    """Raised by a card model: the card left the field mid-command, so the reader gets no answer."""


class ReaderVanished(Exception):
    """Raised by a card model: the reader link drops for ``seconds`` (vicc disconnect, then reconnect)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"reader gone for {seconds} s")
        self.seconds = seconds


class CardModel(Protocol):
    """What a reader needs of a simulated contact/ISO-DEP card."""

    @property
    def atr(self) -> bytes: ...

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def process(self, raw: bytes) -> bytes: ...


class InProcessReader:
    """A simulated reader slot: insert a card, transmit APDUs to it, remove it."""

    def __init__(self, name: str = "Simulated Reader 00", *, extended_length: bool = True) -> None:
        self.name = name
        self._capabilities = EXTENDED_CAPABILITIES if extended_length else SHORT_CAPABILITIES
        self.card: CardModel | None = None

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self._capabilities

    def insert(self, card: CardModel) -> bytes:
        """Put a card on the reader; returns its ATR."""
        self.card = card
        return card.power_on()

    def remove(self) -> None:
        if self.card is not None:
            self.card.power_off()
        self.card = None

    def reset(self) -> bytes:
        """A warm reset, as ``SCARD_RESET_CARD`` does: the card forgets its security state."""
        if self.card is None:
            raise CardRemovedError(f"no card on {self.name}")
        self.card.power_off()
        return self.card.power_on()

    def transmit(self, apdu: bytes) -> bytes:
        if self.card is None:
            raise CardRemovedError(f"no card on {self.name}")
        audit_model_apdu(self.card, bytes(apdu), "inprocess")
        try:
            return self.card.process(bytes(apdu))
        except CardPulled:
            self.remove()
            raise CardRemovedError(f"the card left {self.name} during the command") from None
        except ReaderVanished:
            self.remove()
            raise ReaderUnavailableError(f"{self.name} went away") from None


class FelicaFrameModel(Protocol):
    """What a field needs of a simulated FeliCa card (:class:`simulators.felica.VirtualFelicaCard`)."""

    def process_frame(self, frame: bytes) -> bytes | None: ...


class InProcessFelicaField:
    """A simulated NFC-F field: a :class:`protocols.transport.FelicaTransport` with no radio.

    A card that does not answer a frame is indistinguishable, for a reader, from one that left: both
    raise :class:`CardRemovedError` after no wait at all (there is no time to spend in-process).
    """

    def __init__(self, name: str = "Simulated Reader 00") -> None:
        self.name = name
        self.card: FelicaFrameModel | None = None

    def insert(self, card: FelicaFrameModel) -> None:
        self.card = card

    def remove(self) -> None:
        self.card = None

    def exchange(self, frame: bytes, timeout: float) -> bytes:
        if self.card is None:
            raise CardRemovedError(f"no card in the field of {self.name}")
        try:
            answer = self.card.process_frame(bytes(frame))
        except CardPulled:
            self.remove()
            raise CardRemovedError(f"the card left {self.name} during the command") from None
        if answer is None:
            raise CardRemovedError(f"the card in {self.name} did not answer")
        return answer
