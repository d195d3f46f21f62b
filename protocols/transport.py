"""The abstract transports card sessions drive.

A backend (pcscd, nfcpy, the in-process simulator, a test transcript) implements one method and is then
usable by every session in ``protocols``. Backends convert their library's errors into
:class:`protocols.errors.TransportError` subclasses at this edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ReaderCapabilities:
    """What the reader (not the card) can carry; learned from PC/SC ``GET_TLV_PROPERTIES`` or the driver.

    ``max_apdu_data`` is ``dwMaxAPDUDataSize``: 0 (or up to 256) means short APDUs only, ``None`` that the
    reader does not say (vpcd 3.3 answers no feature request). Unknown is not "no": sessions try the
    extended path once and learn from the answer.
    """

    max_apdu_data: int | None = None

    @property
    def extended_length(self) -> bool | None:
        if self.max_apdu_data is None:
            return None
        return self.max_apdu_data > 256


@runtime_checkable
class Transport(Protocol):
    """An ISO 7816 APDU transport: bytes of a command APDU in, bytes of the response APDU out.

    The response includes the two status-word bytes. Implementations raise
    :class:`~protocols.errors.TransportError` (or a subclass) on link failure and never retry on their own.
    """

    @property
    def capabilities(self) -> ReaderCapabilities: ...

    def transmit(self, apdu: bytes) -> bytes: ...


@runtime_checkable
class FelicaTransport(Protocol):
    """A FeliCa command transport: a frame (with its LEN byte) in, the response frame out.

    ``timeout`` is in seconds. An unanswered command raises :class:`~protocols.errors.TransportError`.
    """

    def exchange(self, frame: bytes, timeout: float) -> bytes: ...
