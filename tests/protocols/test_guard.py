"""The allow-list guard, tested on the wire: what reaches the card is recorded and checked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import DeniedApplicationError, DeniedCommandError
from protocols.guard import DENIED_APPLICATIONS, GuardedTransport, SessionKind
from protocols.transport import ReaderCapabilities
from tests.support.transcript import HEX

EXAMPLES = int(os.environ.get("READERD_HYPOTHESIS_EXAMPLES", "300"))
JPKI_AID = HEX("D392F000260100000001")


@dataclass
class RecordingCard:
    """Answers every command with a fixed status word and records what reached it."""

    sw: bytes = HEX("90 00")
    received: list[bytes] = field(default_factory=list)
    capabilities: ReaderCapabilities = field(default_factory=ReaderCapabilities)

    def transmit(self, apdu: bytes) -> bytes:
        self.received.append(bytes(apdu))
        return self.sw


def _selected_guard(card: RecordingCard) -> GuardedTransport:
    guard = GuardedTransport(card)
    guard.transmit(HEX("00 A4 04 0C 0A") + JPKI_AID)
    return guard


@pytest.mark.parametrize("aid", list(DENIED_APPLICATIONS))
def test_card_info_applications_are_never_selected(aid: bytes) -> None:
    card = RecordingCard()
    guard = _selected_guard(card)
    with pytest.raises(DeniedApplicationError):
        guard.transmit(HEX("00 A4 04 0C") + bytes((len(aid),)) + aid)
    assert card.received == [HEX("00 A4 04 0C 0A") + JPKI_AID]


@pytest.mark.parametrize(
    ("apdu", "why"),
    [
        ("00 A4 04 0C 09 D392F0002601000000", "application"),  # truncated JPKI AID
        ("00 A4 04 0C 07 D3921000310001", "application"),  # truncated card-info AID (partial match)
        ("00 A4 04 00 0A D392F000260100000001", "P2=0C"),  # FCI requested
        ("00 A4 08 0C 04 3F00 000A", "SELECT by DF name"),  # SELECT by path
        ("00 A4 09 0C 02 000A", "SELECT by DF name"),
        ("00 A4 02 0C 02 0001", "signature certificate"),
        ("00 A4 02 0C 02 001A", "signature private key"),
        ("00 A4 02 0C 02 001B", "signature PIN"),
        ("00 A4 02 0C 02 0011", "not allow-listed"),  # the kenhojo PIN IEF
        ("01 A4 04 0C 0A D392F000260100000001", "allow-list"),  # logical channel 1
        ("00 B2 01 0C 00", "allow-list"),  # READ RECORD (manufacture number)
        ("00 20 00 91 04 31323334", "allow-list"),  # VERIFY of IEF 0011 by short id
        ("00 20 00 80 04 31323334", "EF 0018"),  # VERIFY with no PIN EF selected
        ("00 B0 81 00 00", "short EF identifier 01"),  # SFI 01: the signature certificate
        ("00 B0 00 00 00", "readable file"),  # no EF selected
        ("00 24 01 80 04 31323334", "allow-list"),  # CHANGE REFERENCE DATA
        ("80 2A 00 80 01 00 00", "EF 0017"),
        ("FF CA 00 00 00", "allow-list"),  # pseudo-APDU in a JPKI session
        ("00 C0 00 00 00", "61xx"),  # GET RESPONSE out of the blue
        ("00 A4", "malformed"),
    ],
)
def test_commands_off_the_list_never_reach_the_card(apdu: str, why: str) -> None:
    card = RecordingCard()
    guard = _selected_guard(card)
    with pytest.raises(DeniedCommandError, match=why):
        guard.transmit(HEX(apdu))
    assert len(card.received) == 1


def test_nothing_but_select_jpki_before_the_ap_is_selected() -> None:
    card = RecordingCard()
    guard = GuardedTransport(card)
    with pytest.raises(DeniedCommandError, match="not selected"):
        guard.transmit(HEX("00 A4 02 0C 02 000A"))
    assert card.received == []


def test_failed_select_leaves_the_guard_closed() -> None:
    card = RecordingCard(sw=HEX("6A 82"))
    guard = _selected_guard(card)
    assert not guard.ap_selected
    with pytest.raises(DeniedCommandError):
        guard.transmit(HEX("00 B0 8A 00 00 00 00"))


def test_verify_with_non_digits_is_refused() -> None:
    card = RecordingCard()
    guard = _selected_guard(card)
    guard.transmit(HEX("00 A4 02 0C 02 0018"))
    with pytest.raises(DeniedCommandError, match="4 ASCII digits"):
        guard.transmit(HEX("00 20 00 80 04 31 32 33 41"))
    with pytest.raises(DeniedCommandError, match="4 ASCII digits"):
        guard.transmit(HEX("00 20 00 80 05 31 32 33 34 35"))


def test_felica_session_admits_only_pseudo_apdus() -> None:
    card = RecordingCard()
    guard = GuardedTransport(card, SessionKind.FELICA)
    guard.transmit(HEX("FF CA 00 00 00"))
    guard.transmit(HEX("FF C2 00 00 02 81 00"))
    with pytest.raises(DeniedCommandError):
        guard.transmit(HEX("00 A4 04 0C 0A") + JPKI_AID)
    with pytest.raises(DeniedCommandError):
        guard.transmit(HEX("FF 82 00 00 06 FFFFFFFFFFFF"))  # LOAD KEYS: not readerd's business
    assert len(card.received) == 2


# --- property: random APDUs, judged by an independent statement of the allow-list --------------------

ALLOWED_EFS = {0x0006, 0x000A, 0x000B, 0x0017, 0x0018}


def _independently_allowed(apdu: bytes) -> bool:
    """docs/design.md D3 restated from the text (not from the guard's code)."""
    if apdu == HEX("00 A4 04 0C 0A") + JPKI_AID:
        return True
    if len(apdu) == 7 and apdu[:5] == HEX("00 A4 02 0C 02"):
        return int.from_bytes(apdu[5:], "big") in ALLOWED_EFS
    if apdu[:2] == HEX("00 B0"):
        return True  # which EF is read is checked against the state below
    if apdu[:4] == HEX("00 20 00 80"):
        return len(apdu) == 4 or (len(apdu) == 9 and apdu[4] == 4 and apdu[5:].isdigit())
    if apdu[:4] == HEX("80 2A 00 80"):
        return True
    return apdu[:4] == HEX("00 C0 00 00")


command_bytes = st.one_of(
    st.binary(min_size=0, max_size=24),
    st.tuples(
        st.sampled_from([0x00, 0x01, 0x80, 0x0C, 0xFF]),
        st.sampled_from([0xA4, 0xB0, 0x20, 0x2A, 0xC0, 0xB2, 0x24, 0x84]),
        st.integers(0, 255),
        st.integers(0, 255),
        st.one_of(
            st.just(b""),
            st.sampled_from([JPKI_AID, *DENIED_APPLICATIONS]).map(lambda a: bytes((len(a),)) + a),
            st.binary(min_size=1, max_size=12).map(lambda d: bytes((len(d),)) + d),
        ),
        st.sampled_from([b"", b"\x00", b"\x04"]),
    ).map(lambda t: bytes(t[:4]) + t[4] + t[5]),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command_bytes, max_size=12), st.sampled_from(["9000", "6A82", "6110", "63C2"]))
def test_random_apdus_through_the_guard(commands: list[bytes], sw: str) -> None:
    card = RecordingCard(sw=HEX(sw))
    guard = GuardedTransport(card)
    for raw in commands:
        try:
            guard.transmit(raw)
        except DeniedCommandError:
            continue
    verified = False
    current_ef = None
    for raw in card.received:
        assert _independently_allowed(raw), raw.hex()
        if raw[:4] == HEX("00 A4 04 0C"):
            verified, current_ef = False, None
        elif raw[:4] == HEX("00 A4 02 0C"):
            current_ef = int.from_bytes(raw[5:], "big") if sw == "9000" else None
        elif raw[:4] == HEX("00 20 00 80") and len(raw) > 4:
            verified = sw == "9000"
        elif raw[:4] == HEX("80 2A 00 80"):
            assert verified, "a signature request reached the card without a successful VERIFY"
            assert current_ef == 0x0017
        assert not any(aid in raw for aid in DENIED_APPLICATIONS), raw.hex()
        if raw[:2] == HEX("00 B0") and raw[2] & 0x80:
            assert raw[2] & 0x1F in {0x06, 0x0A, 0x0B}
