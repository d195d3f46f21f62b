"""What the device tests do with a card outside the daemon: the PIN tries query, and nothing more.

The query is ``VERIFY`` with no data (``00 20 00 80``): the card answers ``63Cn`` with the tries left and
spends none. :class:`NoPinTransport` records every APDU and refuses any ``VERIFY`` that carries data (a
PIN) before it reaches the card, so these tests cannot spend a try whatever they do.
"""

from __future__ import annotations

import time
from typing import Any

from protocols.jpki import JpkiSession, PinStatus
from protocols.transport import ReaderCapabilities, Transport

VERIFY_INS = 0x20
SELECT_INS = 0xA4
GET_RESPONSE_INS = 0xC0


class PinSentError(AssertionError):
    """A test tried to send a VERIFY with data: refused before the card saw it."""


class NoPinTransport:
    """A transport that lets everything through but a VERIFY with a PIN, and records what it sent."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self.inner.capabilities

    def transmit(self, apdu: bytes) -> bytes:
        if len(apdu) > 4 and apdu[1] == VERIFY_INS:  # a body: Lc and a PIN
            raise PinSentError(f"a VERIFY with data was about to be sent: {apdu[:4].hex()}")
        self.sent.append(bytes(apdu))
        return self.inner.transmit(apdu)


def tries_over(transport: Transport) -> tuple[PinStatus, list[bytes]]:
    """SELECT of the JPKI AP, then the tries query; the status and the APDUs sent."""
    guarded = NoPinTransport(transport)
    status = JpkiSession(guarded).pin_status()
    return status, guarded.sent


def tries_over_pcsc(prefix: str, timeout: float) -> tuple[PinStatus, list[bytes]]:
    """The tries query on the first PC/SC reader whose name starts with ``prefix``, once a card is on it."""
    from smartcard import scard  # noqa: PLC0415, TID251 - the device tests reach the reader directly

    from readerd.reading.backends.pcsc import PcscTransport  # noqa: PLC0415 - loads pyscard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    try:
        hr, readers = scard.SCardListReaders(ctx, [])
        names = [r for r in readers if r.startswith(prefix)]
        assert names, f"no PC/SC reader starts with {prefix!r}: {readers}"
        deadline = time.monotonic() + timeout
        while True:
            hr, hcard, protocol = scard.SCardConnect(
                ctx, names[0], scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            )
            if hr == scard.SCARD_S_SUCCESS:
                break
            assert time.monotonic() < deadline, f"no card on {names[0]} within {timeout:g} s"
            time.sleep(0.2)
        try:
            return tries_over(PcscTransport(hcard, protocol, ReaderCapabilities()))
        finally:
            scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
    finally:
        scard.SCardReleaseContext(ctx)


def tries_over_nfc(path: str, timeout: float) -> tuple[PinStatus, list[bytes]]:
    """The tries query through nfcpy (a Type B activation), once a card is on the reader at ``path``."""
    import nfc  # noqa: PLC0415 - nfcpy and libusb only on a kiosk's run

    from readerd.reading.backends.nfc import NfcpyIsoDepTransport  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    clf: Any = nfc.ContactlessFrontend(path)
    try:
        tag = clf.connect(
            rdwr={"targets": ["106B"], "on-connect": lambda _tag: False},
            terminate=lambda: time.monotonic() > deadline,
        )
        assert tag, f"no Type B card on {path} within {timeout:g} s"
        return tries_over(NfcpyIsoDepTransport(tag))
    finally:
        clf.close()
