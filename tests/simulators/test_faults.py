"""Each fault action, and what the reading side (readerd's JpkiSession) sees (in-process tier)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from protocols.errors import (
    ApduError,
    BadResponseError,
    CardRemovedError,
    LastTryRefusedError,
    ReaderUnavailableError,
    TruncatedDataError,
)
from protocols.jpki import JpkiSession
from simulators.faults import Fault, FaultAction, FaultScript, FaultScriptError, FaultyCard
from simulators.inprocess import InProcessReader
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore


def _reader(store: PkiStore, *faults: dict[str, object]) -> tuple[InProcessReader, FaultyCard]:
    card = FaultyCard(build_card(CardProfile(name="alice"), store), FaultScript.from_data(list(faults)))
    reader = InProcessReader()
    reader.insert(card)
    return reader, card


def test_card_pulled_mid_read(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "remove", "after_apdus": 1})
    session = JpkiSession(reader)  # APDU 0: SELECT works
    with pytest.raises(CardRemovedError):
        session.identify()  # APDU 1: the card is gone
    assert reader.card is None


def test_garbage_answer(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "garbage", "after_apdus": 1, "data": "30 84 FF FF FF FF 90 00"})
    with pytest.raises(BadResponseError):
        JpkiSession(reader).identify()


def test_one_byte_garbage_is_a_truncated_response(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "garbage", "after_apdus": 0, "data": "90"})
    with pytest.raises(TruncatedDataError):
        JpkiSession(reader)


def test_truncated_certificate(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "truncate", "match": "00B08A", "keep": 300})
    # 300 bytes of a longer certificate, and no status word: the last two certificate bytes are read as one.
    with pytest.raises((BadResponseError, ApduError)):
        JpkiSession(reader).identify()


def test_status_6f00(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "status", "sw": "6F00", "match": "00B0"})
    with pytest.raises(ApduError) as info:
        JpkiSession(reader).identify()
    assert info.value.sw == 0x6F00


def test_stall_delays_the_answer_and_can_be_interrupted(pki_store: PkiStore) -> None:
    reader, card = _reader(pki_store, {"action": "stall", "after_apdus": 1, "seconds": 30})
    session = JpkiSession(reader)
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("identity", session.identify()))
    thread.start()
    thread.join(0.3)
    assert thread.is_alive(), "the stalled card answered at once"
    card.interrupt()
    thread.join(5)
    assert not thread.is_alive()
    assert "identity" in result


def test_pin_counter_flipped_by_another_terminal(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "set_pin_tries", "match": "00200080", "tries_left": 1})
    with pytest.raises(LastTryRefusedError):
        JpkiSession(reader).verify("1234")


def test_reader_vanishes(pki_store: PkiStore) -> None:
    reader, _ = _reader(pki_store, {"action": "vanish", "after_apdus": 1, "seconds": 1})
    session = JpkiSession(reader)
    with pytest.raises(ReaderUnavailableError):
        session.identify()


def test_faults_fire_once(pki_store: PkiStore) -> None:
    reader, card = _reader(pki_store, {"action": "status", "sw": "6F00", "after_apdus": 0})
    with pytest.raises(ApduError):
        JpkiSession(reader)
    assert JpkiSession(reader).identify().apdus == 2
    assert card.apdus == 3


def test_scripts_load_from_json_and_toml(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text(
        json.dumps({"faults": [{"action": "stall", "seconds": 2, "match": "00B0"}]})
    )
    (tmp_path / "f.toml").write_text('[[faults]]\naction = "remove"\nafter_apdus = 3\n')
    assert FaultScript.load(tmp_path / "f.json").faults == [
        Fault(FaultAction.STALL, seconds=2.0, match=bytes.fromhex("00B0"))
    ]
    assert FaultScript.load(tmp_path / "f.toml").faults == [Fault(FaultAction.REMOVE, after_apdus=3)]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"action": "explode"}, "must be one of"),
        ({"action": "stall", "seconds": "soon"}, "fault #1"),
        ({"action": "remove", "after": 3}, "unknown fields"),
        ({"action": "status", "sw": "ZZZZ"}, "fault #1"),
        ({"action": "stall", "seconds": -1}, "out-of-range"),
    ],
)
def test_bad_scripts_are_named(entry: dict[str, object], message: str) -> None:
    with pytest.raises(FaultScriptError, match=message):
        FaultScript.from_data([entry])
