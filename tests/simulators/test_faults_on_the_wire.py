"""Every fault action, and what a PC/SC program sees through the real stack (pyscard -> pcscd -> vpcd).

tests/simulators/test_faults.py shows the same faults in-process through readerd's session; this file is
for integrators: the bare ``SCardTransmit`` results and reader states each fault produces with pcscd
1.9.9 and vsmartcard-vpcd in between. docs/simulator.md has the table; these tests are its evidence.

Each test reads the user-auth certificate the plain way (SELECT AP, SELECT EF 000A, one extended READ
BINARY): APDU 0, 1 and 2. Waits are bounded and nothing asserts on elapsed time; stalls are short and
ended early by the card's ``interrupt``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from smartcard import scard  # noqa: TID251 - the test reads the card as pyscard sees it

from simulators.faults import FaultScript, FaultScriptError, FaultyCard
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from simulators.vicc import EmptyAnswerError, ViccBridge
from tests.simulators.wire import (
    SELECT_JPKI,
    SW_OK,
    Card,
    connected,
    event_count,
    pcsc_context,
    reader_state,
    select_ef,
    verify,
    wait_state,
    wait_until,
)
from tests.support.pcscd import PrivatePcscd

pytestmark = [pytest.mark.pcscd, pytest.mark.timeout(60)]

READ_EXTENDED = bytes.fromhex("00B00000000000")
EF_AUTH_CERT, EF_AUTH_PIN = 0x000A, 0x0018
#: What pcscd answers once it knows the card is gone, and while it does not know yet.
GONE = (scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NOT_TRANSACTED)


@dataclass
class Wire:
    ctx: int
    reader_name: str
    card: Card
    bridge: ViccBridge
    faulty: FaultyCard


@contextmanager
def faulty_card_on_pcscd(pcscd: PrivatePcscd, store: PkiStore, *faults: dict[str, object]) -> Iterator[Wire]:
    """alice with ``faults``, inserted on reader 0 and connected through pyscard."""
    faulty = FaultyCard(build_card(CardProfile(name="alice"), store), FaultScript.from_data(list(faults)))
    bridge = ViccBridge(faulty, port=pcscd.ports[0])
    bridge.insert()
    try:
        with pcsc_context() as ctx:
            wait_state(ctx, pcscd.readers[0], scard.SCARD_STATE_PRESENT)
            with connected(ctx, pcscd.readers[0]) as card:
                yield Wire(ctx, pcscd.readers[0], card, bridge, faulty)
    finally:
        faulty.interrupt()
        bridge.remove()


def certificate(store: PkiStore) -> bytes:
    return store.user_auth_certificate("alice").public_bytes(serialization.Encoding.DER)


def select_certificate(card: Card) -> None:
    assert card.send(SELECT_JPKI) == SW_OK
    assert card.send(select_ef(EF_AUTH_CERT)) == SW_OK


# --- the card leaves ---------------------------------------------------------------------------------
def test_remove_mid_read(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    with faulty_card_on_pcscd(private_pcscd, pki_store, {"action": "remove", "after_apdus": 2}) as w:
        select_certificate(w.card)
        # The command in flight: vpcd reads the closed link as an empty answer and pcscd passes it on
        # as success with no bytes at all, not even a status word.
        assert w.card.transmit(READ_EXTENDED) == (scard.SCARD_S_SUCCESS, b"")
        # vpcd dropped the link: the next command fails at once (NOT_TRANSACTED until pcscd's presence
        # poll, at most 0.4 s later, marks the card removed; REMOVED_CARD after).
        hresult, response = w.card.transmit(SELECT_JPKI)
        assert hresult in GONE
        assert response == b""
        wait_state(w.ctx, w.reader_name, scard.SCARD_STATE_EMPTY)
        assert w.card.transmit(SELECT_JPKI)[0] == scard.SCARD_W_REMOVED_CARD
        assert w.card.status()[0] == scard.SCARD_W_REMOVED_CARD
        assert not w.bridge.inserted
        # The reader stays (vpcd readers are static): only the card is gone.
        hresult, readers = scard.SCardListReaders(w.ctx, [])
        assert hresult == scard.SCARD_S_SUCCESS
        assert w.reader_name in readers
    assert w.bridge.errors == []


def test_removed_between_commands(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    """Not a fault script: the card taken away while idle (``readerd-sim``'s ``remove``, ``bridge.remove()``).

    The next command fails at once with SCARD_E_NOT_TRANSACTED, and until pcscd's presence poll SCardStatus
    still calls the card present (measured, 5 of 5): a client that reads NOT_TRANSACTED on an extended APDU
    with the card "present" as "extended length unsupported" (docs/design.md D12) is misled by vpcd here.
    A real reader knows at once. Only the first part is asserted: the poll may come first.
    """
    with faulty_card_on_pcscd(private_pcscd, pki_store) as w:
        select_certificate(w.card)
        w.bridge.remove()
        hresult, response = w.card.transmit(READ_EXTENDED)
        assert hresult in GONE
        assert response == b""
        wait_state(w.ctx, w.reader_name, scard.SCARD_STATE_EMPTY)
        assert w.card.transmit(READ_EXTENDED)[0] == scard.SCARD_W_REMOVED_CARD
    assert w.bridge.errors == []


def test_vanish_drops_the_link_and_the_card_comes_back(
    private_pcscd: PrivatePcscd, pki_store: PkiStore
) -> None:
    # 1 s: well over pcscd's 0.4 s presence poll, so pcscd sees the card leave and come back (a poll
    # delayed past the reconnect, on a loaded machine, would see the card still there).
    with faulty_card_on_pcscd(
        private_pcscd, pki_store, {"action": "vanish", "after_apdus": 2, "seconds": 1}
    ) as w:
        before = event_count(reader_state(w.ctx, w.reader_name)[0])
        select_certificate(w.card)
        assert w.card.transmit(READ_EXTENDED) == (scard.SCARD_S_SUCCESS, b"")
        assert w.card.transmit(SELECT_JPKI)[0] in GONE
        wait_state(w.ctx, w.reader_name, scard.SCARD_STATE_EMPTY)
        state = wait_state(w.ctx, w.reader_name, scard.SCARD_STATE_PRESENT)
        assert event_count(state) >= before + 2  # one removal, one insertion
        # The old handle belongs to the card that left; reconnecting reaches the card that came back,
        # powered up afresh.
        assert w.card.transmit(SELECT_JPKI)[0] == scard.SCARD_W_REMOVED_CARD
        assert w.card.reconnect() == scard.SCARD_S_SUCCESS
        select_certificate(w.card)
        assert w.card.read_binary_extended() == certificate(pki_store)
        assert w.bridge.stats.connects == 2
    assert w.bridge.errors == []


# --- the card answers, wrongly ------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["DEADBEEF", "90", "3084FFFFFFFF9000"])
def test_garbage_arrives_byte_for_byte(private_pcscd: PrivatePcscd, pki_store: PkiStore, data: str) -> None:
    with faulty_card_on_pcscd(
        private_pcscd, pki_store, {"action": "garbage", "after_apdus": 2, "data": data}
    ) as w:
        select_certificate(w.card)
        # pcscd checks nothing: the bytes come through as the answer, the last two read as the status
        # word (BEEF here), and a single byte comes through alone, with no status word.
        assert w.card.send(READ_EXTENDED) == bytes.fromhex(data)
        # Each fault fires once: the next read is the real one.
        assert w.card.read_binary_extended() == certificate(pki_store)
    assert w.bridge.errors == []


def test_truncate_cuts_the_answer(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    with faulty_card_on_pcscd(
        private_pcscd, pki_store, {"action": "truncate", "match": "00B0", "keep": 10}
    ) as w:
        select_certificate(w.card)
        answer = w.card.send(READ_EXTENDED)
        # Ten bytes of the certificate and no status word: a reader that takes the last two bytes as
        # SW sees "SW" = certificate bytes 8-9 and 8 bytes of data.
        assert answer == certificate(pki_store)[:10]
    assert w.bridge.errors == []


def test_status_answers_the_status_word_alone(private_pcscd: PrivatePcscd, pki_store: PkiStore) -> None:
    with faulty_card_on_pcscd(
        private_pcscd, pki_store, {"action": "status", "match": "00B0", "sw": "6F00"}
    ) as w:
        select_certificate(w.card)
        assert w.card.send(READ_EXTENDED) == b"\x6f\x00"
        assert w.card.read_binary_extended() == certificate(pki_store)
    assert w.bridge.errors == []


def test_stall_holds_the_transmit_until_the_card_answers(
    private_pcscd: PrivatePcscd, pki_store: PkiStore
) -> None:
    # Never more than 2 s, and ended early: SCardTransmit cannot be timed out or cancelled through
    # pyscard (docs/design.md D9), so the caller's thread is held for as long as the card stalls.
    with faulty_card_on_pcscd(
        private_pcscd, pki_store, {"action": "stall", "after_apdus": 2, "seconds": 2}
    ) as w:
        select_certificate(w.card)
        result: list[tuple[int, bytes]] = []
        reading = threading.Thread(target=lambda: result.append(w.card.transmit(READ_EXTENDED)))
        reading.start()
        wait_until(lambda: w.faulty.apdus == 3, what="the READ BINARY reached the card")
        assert result == [], "the stalled card answered before it was let go"
        w.faulty.interrupt()
        reading.join(5)
        assert not reading.is_alive()
        # The late answer is the real one, whole.
        assert result == [(scard.SCARD_S_SUCCESS, certificate(pki_store) + SW_OK)]
        assert reader_state(w.ctx, w.reader_name)[0] & scard.SCARD_STATE_PRESENT
    assert w.bridge.errors == []


# --- the card's state changes behind the reader's back -------------------------------------------------
@pytest.mark.parametrize(("tries_left", "query"), [(1, b"\x63\xc1"), (0, b"\x63\xc0")])
def test_set_pin_tries_changes_what_the_card_reports(
    private_pcscd: PrivatePcscd, pki_store: PkiStore, tries_left: int, query: bytes
) -> None:
    fault = {"action": "set_pin_tries", "match": "00200080", "tries_left": tries_left}
    with faulty_card_on_pcscd(private_pcscd, pki_store, fault) as w:
        assert w.card.send(SELECT_JPKI) == SW_OK
        assert w.card.send(select_ef(EF_AUTH_PIN)) == SW_OK
        # The first tries query already sees the counter another terminal left behind.
        assert w.card.send(verify(None)) == query
        if tries_left:
            assert w.card.send(verify("0000")) == b"\x63\xc0"
        assert w.card.send(verify("1234")) == b"\x69\x84", "blocked: even the right PIN is refused"
    assert w.bridge.errors == []


# --- empty answers cannot travel through vpcd ------------------------------------------------------------
@pytest.mark.parametrize("entry", [{"action": "truncate", "keep": 0}, {"action": "garbage", "data": ""}])
def test_fault_scripts_refuse_an_empty_answer(entry: dict[str, object]) -> None:
    with pytest.raises(FaultScriptError, match="stall or remove"):
        FaultScript.from_data([entry])


def test_an_empty_answer_from_a_card_model_disconnects_instead_of_wedging_pcscd(
    private_pcscd: PrivatePcscd, pki_store: PkiStore
) -> None:
    """vpcd waits for at least one byte after a zero length (MSG_WAITALL of 0 bytes blocks): measured,
    the slot hung until the card disconnected. The bridge refuses to send one and lets go instead."""

    class Silent:
        atr = build_card(CardProfile(name="alice"), pki_store).atr

        def power_on(self) -> bytes:
            return self.atr

        def power_off(self) -> None:
            pass

        def process(self, raw: bytes) -> bytes:
            return b""

    bridge = ViccBridge(Silent(), port=private_pcscd.ports[0])
    bridge.insert()
    try:
        with pcsc_context() as ctx:
            wait_state(ctx, private_pcscd.readers[0], scard.SCARD_STATE_PRESENT)
            with connected(ctx, private_pcscd.readers[0]) as card:
                assert card.transmit(SELECT_JPKI) == (scard.SCARD_S_SUCCESS, b"")
            wait_state(ctx, private_pcscd.readers[0], scard.SCARD_STATE_EMPTY)
    finally:
        bridge.remove()
    assert len(bridge.errors) == 1
    assert isinstance(bridge.errors[0], EmptyAnswerError)
