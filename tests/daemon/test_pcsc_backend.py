"""The daemon's PC/SC backend against a private pcscd with vpcd readers and the virtual My Number Card."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from protocols.mykey import felica_pseudonym
from readerd.config import FelicaConfig, FelicaRead, PcscConfig, SessionConfig
from readerd.ops.keys import load_pseudonym_key
from simulators.faults import FaultScript, FaultyCard
from simulators.felica import FelicaPcscCard, bathhouse_card
from simulators.inprocess import CardModel
from simulators.mynumber import CardProfile, VirtualMyNumberCard, blank_card, build_card
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge
from tests.support.daemon import RunningDaemon, hardware_config, private_feed, running_daemon
from tests.support.pcscd import PrivatePcscd

pytestmark = [pytest.mark.pcscd, pytest.mark.timeout(120)]

READER0, READER1 = "Virtual PCD 00 00", "Virtual PCD 00 01"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiStore:
    return PkiStore(tmp_path_factory.mktemp("pki"))


@contextmanager
def pcsc_daemon(
    tmp_path: Path, deadline: float = 3.0, *, felica_transparent: bool = False, **overrides: Any
) -> Iterator[RunningDaemon]:
    config = hardware_config(
        tmp_path,
        ("pcsc",),
        pcsc=PcscConfig(allow_virtual_readers=True, felica_transparent=felica_transparent),
        sessions=SessionConfig(deadline=deadline, repeat_window=10.0),
        **overrides,
    )
    with running_daemon(config) as d:
        yield d


@contextmanager
def card_on(pcscd: PrivatePcscd, slot: int, card: CardModel) -> Iterator[ViccBridge]:
    bridge = ViccBridge(card, port=pcscd.ports[slot])
    bridge.insert()
    try:
        yield bridge
    finally:
        bridge.remove()
        assert bridge.errors == []


def wait_for_readers(d: RunningDaemon, count: int, timeout: float = 10) -> list[str]:
    """The monitor lists readers on its own thread after start: poll ``readers`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        names = [r["name"] for r in d.request("readers")["result"]["readers"]]
        if len(names) == count or time.monotonic() > deadline:
            return names
        time.sleep(0.02)


def _alice(pki: PkiStore, name: str = "alice") -> VirtualMyNumberCard:
    return build_card(CardProfile(name=name), pki)


def test_readers_are_announced(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    with pcsc_daemon(tmp_path) as d:
        names = wait_for_readers(d, 2)
    assert names == [READER0, READER1]


def test_virtual_readers_are_ignored_unless_allowed(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    with running_daemon(hardware_config(tmp_path, ("pcsc",))) as d:
        assert d.request("readers")["result"]["readers"] == []


def test_tap_identify_remove_in_two_apdus(private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path) -> None:
    card = _alice(pki)
    with pcsc_daemon(tmp_path) as d, d.subscriber("card.") as sub:
        with card_on(private_pcscd, 0, card):
            presented, identified = sub.next(10), sub.next(10)
        removed = sub.next(10)
    assert [presented["type"], identified["type"], removed["type"]] == [
        "card.presented",
        "card.identified",
        "card.removed",
    ]
    assert identified["reader"] == READER0
    assert identified["data"]["apdus"] == 2
    assert identified["data"]["read_path"] == "extended_sfi"
    assert "simulated" not in identified["data"]
    assert not card.touched_card_info()


def test_fast_retap_is_seen_twice(private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path) -> None:
    card = _alice(pki)
    with pcsc_daemon(tmp_path) as d, d.subscriber("card.") as sub:
        bridge = ViccBridge(card, port=private_pcscd.ports[0])
        bridge.insert()
        sub.until(lambda e: e["type"] == "card.identified", timeout=10)
        bridge.remove()
        bridge.insert()  # re-tapped at once: pcscd's presence poll may see both or only the counter
        events = sub.until(lambda e: e["type"] == "card.identified", timeout=10)
        bridge.remove()
    assert [e["type"] for e in events] == ["card.removed", "card.presented", "card.identified"]
    assert events[-1]["data"]["repeat"] is True


def test_two_readers_at_once(private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path) -> None:
    with (
        pcsc_daemon(tmp_path) as d,
        d.subscriber("card.identified") as sub,
        card_on(private_pcscd, 0, _alice(pki)),
        card_on(private_pcscd, 1, _alice(pki, "bob")),
    ):
        events = [sub.next(10), sub.next(10)]
    assert {e["reader"] for e in events} == {READER0, READER1}
    assert len({e["data"]["pseudonym"] for e in events}) == 2


def test_card_pulled_mid_read(private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path) -> None:
    card = FaultyCard(_alice(pki), FaultScript.from_data([{"action": "remove", "after_apdus": 1}]))
    with pcsc_daemon(tmp_path) as d, d.subscriber("card.") as sub, card_on(private_pcscd, 0, card):
        events = sub.until(lambda e: e["type"] == "card.removed", timeout=15)
    assert [e["type"] for e in events] == ["card.presented", "card.read_aborted", "card.removed"]
    assert events[1]["data"]["reason"] in ("removed", "transport")
    assert "pseudonym" not in events[1]["data"]


def test_garbage_certificate_is_malformed(private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path) -> None:
    faults = FaultScript.from_data([{"action": "garbage", "match": "00B0", "data": "3084FFFFFFFF9000"}])
    with (
        pcsc_daemon(tmp_path) as d,
        d.subscriber("card.") as sub,
        card_on(private_pcscd, 0, FaultyCard(_alice(pki), faults)),
    ):
        events = sub.until(lambda e: e["type"] == "card.read_aborted", timeout=10)
    assert events[-1]["data"]["reason"] == "malformed"


def test_stalled_card_times_out_and_the_reader_recovers(
    private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path
) -> None:
    stalled = FaultyCard(
        _alice(pki), FaultScript.from_data([{"action": "stall", "after_apdus": 1, "seconds": 60}])
    )
    with pcsc_daemon(tmp_path, deadline=1.0) as d, d.subscriber("card.", "reader.") as sub:
        bridge = ViccBridge(stalled, port=private_pcscd.ports[0])
        bridge.insert()
        events = sub.until(lambda e: e["type"] == "reader.error", timeout=15)
        with card_on(private_pcscd, 1, _alice(pki, "bob")):
            other = sub.until(lambda e: e["type"] == "card.identified", timeout=10)[-1]
        stalled.interrupt()
        bridge.remove()
        with card_on(private_pcscd, 0, _alice(pki)):
            again = sub.until(lambda e: e["type"] == "card.identified" and e["reader"] == READER0, timeout=15)
    assert [e["type"] for e in events] == ["card.presented", "card.read_aborted", "reader.error"]
    assert events[1]["data"]["reason"] == "timeout"
    assert events[2]["data"]["reason"] == "wedged"
    assert other["reader"] == READER1
    assert again[-1]["reader"] == READER0


def test_unknown_card(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    with pcsc_daemon(tmp_path) as d, d.subscriber("card.") as sub, card_on(private_pcscd, 0, blank_card()):
        presented = sub.next(10)
    assert presented["data"]["kind"] == "unknown"


BATHHOUSE_READ = FelicaConfig(reads=(FelicaRead(name="bathhouse", service_code="000B", blocks=(0, 1)),))


def test_felica_on_pcsc_is_identified_by_idm(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    profile = bathhouse_card("B0007", birth_year=1950, ward_code=13101)
    card = FelicaPcscCard(profile)
    with (
        pcsc_daemon(tmp_path, felica=BATHHOUSE_READ) as d,
        d.subscriber("card.") as sub,
        card_on(private_pcscd, 0, card),
    ):
        events = sub.until(lambda e: e["type"] == "card.identified", timeout=10)
    assert [e["type"] for e in events] == ["card.presented", "card.identified"]
    data = events[-1]["data"]
    key = load_pseudonym_key(tmp_path / "pseudonym.key")
    assert data["pseudonym"] == felica_pseudonym(key, profile.idm)
    assert data["services"] == {"bathhouse": "unreadable"}  # no transparent session configured
    assert data["system_code"] is None
    assert profile.idm.hex().upper() not in json.dumps(events)
    # GET DATA for the IDm and the PMm, nothing else: no SELECT reached the reader.
    assert [a[:4].hex().upper() for a in card.apdus] == ["FFCA0000", "FFCA0100"]


def test_felica_blocks_through_the_transparent_session(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    profile = bathhouse_card("B0008", birth_year=1950, ward_code=13101)
    card = FelicaPcscCard(profile)
    with (
        pcsc_daemon(tmp_path, felica=BATHHOUSE_READ, felica_transparent=True) as d,
        d.subscriber("card.") as sub,
        private_feed("card.identified") as feed,
        card_on(private_pcscd, 0, card),
    ):
        identified = sub.until(lambda e: e["type"] == "card.identified", timeout=10)[-1]
        full = feed.until(lambda e: e["type"] == "card.identified", timeout=5)[-1]
        # The session is ended right after the event is out: wait for it (bounded).
        deadline = time.monotonic() + 5
        while card.session and time.monotonic() < deadline:
            time.sleep(0.01)
    assert identified["data"]["services"] == {"bathhouse": "read"}
    assert identified["data"]["system_code"] == "88B4"
    assert full["private"]["blocks"]["bathhouse"] == [b.hex().upper() for b in profile.services[0x000B]]
    assert not card.session  # the transparent session was ended after the read


def test_pcscd_restart_is_survived(private_pcscd: PrivatePcscd, pki: PkiStore, tmp_path: Path) -> None:
    with pcsc_daemon(tmp_path) as d, d.subscriber("reader.", "card.") as sub:
        private_pcscd.stop()
        gone = sub.until(lambda e: e["type"] == "reader.removed" and e["reader"] == READER1, timeout=20)
        private_pcscd.start()
        back = sub.until(lambda e: e["type"] == "reader.added" and e["reader"] == READER1, timeout=30)
        with card_on(private_pcscd, 0, _alice(pki)):
            identified = sub.until(lambda e: e["type"] == "card.identified", timeout=15)[-1]
    assert gone[0]["type"] == "reader.error"
    assert gone[0]["data"]["reason"] == "pcscd_unavailable"
    assert {e["reader"] for e in gone if e["type"] == "reader.removed"} == {READER0, READER1}
    assert {e["reader"] for e in back if e["type"] == "reader.added"} == {READER0, READER1}
    assert identified["reader"] == READER0


def test_a_vanishing_reader_is_removed(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    """vpcd readers are static: a reader vanishes when pcscd restarts without it (docs/design.md D8)."""
    with pcsc_daemon(tmp_path) as d, d.subscriber("reader.") as sub:
        private_pcscd.restart(entries=0)
        events = sub.until(lambda e: e["type"] == "reader.removed" and e["reader"] == READER1, timeout=20)
        private_pcscd.restart(entries=1)
        added = sub.until(lambda e: e["type"] == "reader.added" and e["reader"] == READER1, timeout=30)
    assert {e["reader"] for e in events if e["type"] == "reader.removed"} == {READER0, READER1}
    assert {e["reader"] for e in added if e["type"] == "reader.added"} == {READER0, READER1}
