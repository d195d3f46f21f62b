"""Plain pyscard for the simulator's wire tests: what any PC/SC program would send, not readerd's session.

The point of these tests is that software written against real cards by other people reads the virtual
card as a real one, so they speak bare ``smartcard.scard`` (status codes, byte lists) and build every APDU
by hand from docs/card-facts.md, never through ``protocols/``. Every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from smartcard import scard  # noqa: TID251 - these tests are about the card as pyscard sees it

from protocols.jpki_constants import JPKI_AID

SELECT_JPKI = bytes.fromhex("00A4040C0A") + JPKI_AID
SW_OK = b"\x90\x00"
DETECT_TIMEOUT = 5.0
ANY_PROTOCOL = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1


def select_ef(fid: int) -> bytes:
    return bytes.fromhex("00A4020C02") + fid.to_bytes(2, "big")


def verify(pin: str | None) -> bytes:
    """VERIFY of the current PIN EF; ``None`` is the bare tries query (no data)."""
    if pin is None:
        return bytes.fromhex("00200080")
    return bytes.fromhex("0020008004") + pin.encode("ascii")


def message(hresult: int) -> str:
    return f"{hresult:#010x} ({scard.SCardGetErrorMessage(hresult)})"


@contextmanager
def pcsc_context() -> Iterator[int]:
    hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hresult == scard.SCARD_S_SUCCESS, message(hresult)
    try:
        yield ctx
    finally:
        scard.SCardReleaseContext(ctx)


def reader_state(ctx: int, reader: str) -> tuple[int, bytes]:
    """``(event state, ATR)`` right now: the high 16 bits of the state are pcscd's event counter."""
    hresult, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
    assert hresult == scard.SCARD_S_SUCCESS, message(hresult)
    _, event, atr = states[0]
    return int(event), bytes(atr)


def event_count(state: int) -> int:
    return (state >> 16) & 0xFFFF


def wait_state(ctx: int, reader: str, flag: int, timeout: float = DETECT_TIMEOUT) -> int:
    """Block in SCardGetStatusChange until ``reader`` shows ``flag`` (bounded); returns the state."""
    deadline = time.monotonic() + timeout
    known = scard.SCARD_STATE_UNAWARE
    while True:
        remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        hresult, states = scard.SCardGetStatusChange(ctx, remaining_ms, [(reader, known)])
        if hresult == scard.SCARD_S_SUCCESS:
            event = int(states[0][1])
            if event & flag:
                return event
            known = event & ~scard.SCARD_STATE_CHANGED
        elif hresult != scard.SCARD_E_TIMEOUT:
            pytest.fail(f"SCardGetStatusChange: {message(hresult)}")
        if time.monotonic() >= deadline:
            pytest.fail(f"{reader} did not reach state {flag:#x} within {timeout} s")


@dataclass
class Card:
    """A connected card handle and the protocol pcscd chose."""

    handle: int
    protocol: int

    def transmit(self, apdu: bytes) -> tuple[int, bytes]:
        """``(hresult, response)`` exactly as SCardTransmit gives them."""
        hresult, response = scard.SCardTransmit(self.handle, self.protocol, list(apdu))
        return int(hresult), bytes(response)

    def send(self, apdu: bytes) -> bytes:
        """The response (data and status word); the transmit itself must succeed."""
        hresult, response = self.transmit(apdu)
        assert hresult == scard.SCARD_S_SUCCESS, f"{apdu.hex()}: {message(hresult)}"
        return response

    def status(self) -> tuple[int, int, bytes]:
        """``(hresult, state, ATR)`` from SCardStatus."""
        hresult, _reader, state, _protocol, atr = scard.SCardStatus(self.handle)
        return int(hresult), int(state), bytes(atr)

    def reconnect(self, disposition: int = scard.SCARD_LEAVE_CARD) -> int:
        hresult, protocol = scard.SCardReconnect(
            self.handle, scard.SCARD_SHARE_SHARED, ANY_PROTOCOL, disposition
        )
        if hresult == scard.SCARD_S_SUCCESS:
            self.protocol = int(protocol)
        return int(hresult)

    def read_binary_extended(self) -> bytes:
        """The current EF whole, in one extended READ BINARY (Le = 0000: as much as there is)."""
        response = self.send(bytes.fromhex("00B00000000000"))
        assert response[-2:] == SW_OK, response[-2:].hex()
        return response[:-2]

    def read_binary_short(self) -> bytes:
        """The current EF in short READ BINARYs of Le = 00 (256 bytes) by offset, as a T=0 reader would."""
        data = b""
        while True:
            offset = len(data)
            response = self.send(bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, 0x00]))
            sw = response[-2:]
            if sw == b"\x6b\x00" and offset:  # offset at the end of the file: nothing more
                return data
            assert sw in (SW_OK, b"\x62\x82"), f"offset {offset}: {sw.hex()}"
            data += response[:-2]
            if len(response) - 2 < 256 or sw != SW_OK:
                return data


@contextmanager
def connected(ctx: int, reader: str) -> Iterator[Card]:
    """SCardConnect (shared, T=0 or T=1); SCardDisconnect leaving the card as it is."""
    hresult, handle, protocol = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED, ANY_PROTOCOL)
    assert hresult == scard.SCARD_S_SUCCESS, message(hresult)
    try:
        yield Card(int(handle), int(protocol))
    finally:
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)


def wait_until(
    condition: Callable[[], bool], timeout: float = DETECT_TIMEOUT, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true (bounded, short sleeps): for state on the simulator's side."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout} s")
        time.sleep(0.01)
