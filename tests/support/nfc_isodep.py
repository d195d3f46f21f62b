"""A :class:`protocols.transport.Transport` over an nfcpy ISO-DEP tag (``nfc.tag.tt4.Type4Tag``).

It belongs in ``readerd/backends/nfc.py`` once that exists; it lives here so the nfc simulator test can
drive ``JpkiSession`` through nfcpy's real reader path.

APDUs go through ``tag.transceive`` (nfc/tag/tt4.py:425-439), which hands raw bytes to nfcpy's ISO-DEP
layer: that layer chains commands and responses of any length. ``tag.send_apdu`` (tt4.py:441-496) is not
used: it rebuilds the APDU from parts and refuses extended length, because ``Type4Tag`` sets
``_extended_length_support = False`` for every tag (tt4.py:536, 572). The transport therefore reports
short APDUs only unless told otherwise; the *card* decides whether extended length works.
"""

from __future__ import annotations

from typing import Any

import nfc.clf
import nfc.tag

from protocols.errors import CardRemovedError, TransportError
from protocols.transport import ReaderCapabilities

#: What a reader says about extended APDUs when asked to allow them (ISO-DEP has no APDU size limit).
EXTENDED_APDU_DATA = 0x10000


class NfcpyIsoDepTransport:
    """``transmit(apdu) -> response`` through an activated nfcpy Type 4 tag."""

    def __init__(self, tag: Any, *, extended_length: bool = False, timeout: float | None = None) -> None:
        self._tag = tag
        self._capabilities = ReaderCapabilities(EXTENDED_APDU_DATA if extended_length else 0)
        self._timeout = timeout  # per frame; None: nfcpy uses FWT from the tag's SENSB_RES/ATS

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self._capabilities

    def transmit(self, apdu: bytes) -> bytes:
        try:
            data = self._tag.transceive(bytearray(apdu), self._timeout)
        except nfc.tag.TagCommandError as e:
            if e.errno == nfc.tag.TIMEOUT_ERROR:
                raise CardRemovedError(f"the card stopped answering: {e}") from e
            raise TransportError(f"ISO-DEP failure: {e}") from e
        except nfc.clf.BrokenLinkError as e:
            raise CardRemovedError(f"the RF link broke: {e}") from e
        except nfc.clf.CommunicationError as e:
            raise TransportError(f"nfc communication error: {e!r}") from e
        if data is None or len(data) < 2:
            raise TransportError("the card answered without a status word")
        return bytes(data)
