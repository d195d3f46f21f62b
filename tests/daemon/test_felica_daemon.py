"""FeliCa cards through the daemon: the sim backend and nfcpy's real udp driver, with configured reads.

What the city's plugins need (bath-house member number, check-in number) lives in service blocks; what a
LAN subscriber may see is the pseudonym and which services were read, never the IDm or the blocks.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from protocols.mykey import felica_pseudonym
from readerd.config import FelicaConfig, FelicaRead, NfcConfig
from readerd.ops.keys import load_pseudonym_key
from simulators.felica import VirtualFelicaCard, bathhouse_card, checkin_card, transport_card
from simulators.felica_udp import FelicaUdpCard
from tests.support.daemon import hardware_config, private_feed, running_daemon, sim_config

pytestmark = pytest.mark.timeout(90)

BATHHOUSE = FelicaRead(name="bathhouse", service_code="000B", blocks=(0, 1), system_code="88B4")
TRANSIT_BALANCE = FelicaRead(name="balance", service_code="008B", blocks=(0,))
READS = FelicaConfig(reads=(BATHHOUSE,))


def _no_secrets(envelope: dict[str, object], idm: bytes, blocks: list[bytes]) -> None:
    text = json.dumps(envelope).upper()
    assert idm.hex().upper() not in text
    for block in blocks:
        assert block.hex().upper() not in text
    assert "IDM" not in text
    assert "PMM" not in text


def test_sim_bathhouse_card_is_identified_with_its_blocks_on_the_private_feed_only(tmp_path: Path) -> None:
    profile = bathhouse_card("B0001", birth_year=1950, ward_code=13101)
    with (
        running_daemon(sim_config(tmp_path, felica=READS)) as d,
        d.subscriber("card.") as sub,
        private_feed("card.identified") as feed,
    ):
        d.tap("B0001", felica="bathhouse")
        events = sub.until(lambda e: e["type"] == "card.identified")
        full = feed.until(lambda e: e["type"] == "card.identified")[-1]
        d.remove()
        removed = sub.next()
    assert [e["type"] for e in events] == ["card.presented", "card.identified"]
    assert events[0]["data"] == {"kind": "felica", "repeat": False, "simulated": True}
    data = events[-1]["data"]
    key = load_pseudonym_key(tmp_path / "pseudonym.key")
    assert data["pseudonym"] == felica_pseudonym(key, profile.idm)
    assert data["system_code"] == "88B4"
    assert data["services"] == {"bathhouse": "read"}
    assert data["frames"] == 1
    blocks = list(profile.services[0x000B])
    _no_secrets(events[-1], profile.idm, blocks)
    assert full["seq"] == events[-1]["seq"]
    assert full["private"]["idm"] == profile.idm.hex().upper()
    assert full["private"]["blocks"] == {"bathhouse": [b.hex().upper() for b in blocks]}
    assert removed["type"] == "card.removed"
    assert removed["data"]["kind"] == "felica"


def test_sim_reads_only_services_of_the_polled_system_and_reports_absent_ones(tmp_path: Path) -> None:
    reads = FelicaConfig(reads=(BATHHOUSE, TRANSIT_BALANCE))
    with running_daemon(sim_config(tmp_path, felica=reads)) as d, d.subscriber("card.identified") as sub:
        d.tap("B0002", felica="bathhouse", hold=False)
        bath = sub.next()["data"]
        d.tap("commuter", felica="transport", hold=False)
        transit = sub.next()["data"]
        d.tap("C0003", felica="checkin", hold=False)
        checkin = sub.next()["data"]
    # The bath-house card has no 008B: asked (no system limit) and answered with error flags.
    assert bath["services"] == {"bathhouse": "read", "balance": "absent"}
    assert bath["frames"] == 2
    # The transit card is on system 0003: the bath-house read (system 88B4) is not even sent.
    assert transit["services"] == {"balance": "read"}
    assert transit["frames"] == 1
    assert transit["system_code"] == "0003"
    # A check-in card is Lite-S too: its 000B has one block, so asking for two is refused by the card.
    assert checkin["services"] == {"bathhouse": "absent", "balance": "absent"}
    assert len({bath["pseudonym"], transit["pseudonym"], checkin["pseudonym"]}) == 3


def test_sim_felica_retap_is_flagged_repeat(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.identified") as sub:
        d.tap("C0001", felica="checkin", hold=False)
        first = sub.next()["data"]
        d.tap("C0001", felica="checkin", hold=False)
        second = sub.next()["data"]
    assert (first["repeat"], second["repeat"]) == (False, True)
    assert first["services"] == {}  # nothing configured: the IDm alone identifies
    assert first["frames"] == 0


def test_sim_rejects_a_bad_felica_tap(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d:
        bad_kind = d.request("tap", {"card": "x", "felica": "suica"})
        bad_number = d.request("tap", {"card": "lower case", "felica": "bathhouse"})
    assert bad_kind["ok"] is False
    assert bad_kind["error"]["code"] == "bad_request"
    assert "bathhouse" in bad_kind["error"]["message"]
    assert bad_number["ok"] is False
    assert "member number" in bad_number["error"]["message"]


def _nfc_config(tmp_path: Path, card: FelicaUdpCard, reads: FelicaConfig = READS) -> object:
    config = hardware_config(tmp_path / "state", ("nfc",), nfc=NfcConfig(devices=(card.path,)))
    return replace(config, felica=reads)


def test_nfc_bathhouse_card_read_through_nfcpy_udp(tmp_path: Path) -> None:
    profile = bathhouse_card("B0042", birth_year=1948, ward_code=13104)
    card = VirtualFelicaCard(profile)
    with FelicaUdpCard(card) as emulated:
        emulated.remove()
        config = _nfc_config(tmp_path, emulated)
        with (
            running_daemon(config) as d,  # type: ignore[arg-type]
            d.subscriber("card.") as sub,
            private_feed("card.identified") as feed,
        ):
            emulated.insert()
            events = sub.until(lambda e: e["type"] == "card.identified", timeout=20)
            full = feed.until(lambda e: e["type"] == "card.identified", timeout=5)[-1]
            emulated.remove()
            removed = sub.until(lambda e: e["type"] == "card.removed", timeout=20)[-1]
    assert [e["type"] for e in events] == ["card.presented", "card.identified"]
    data = events[-1]["data"]
    key = load_pseudonym_key(tmp_path / "state" / "pseudonym.key")
    assert data["pseudonym"] == felica_pseudonym(key, profile.idm)
    assert data["services"] == {"bathhouse": "read"}
    assert data["system_code"] == "88B4"
    blocks = list(profile.services[0x000B])
    assert full["private"]["blocks"] == {"bathhouse": [b.hex().upper() for b in blocks]}
    _no_secrets(events[-1], profile.idm, blocks)
    assert removed["data"]["kind"] == "felica"
    # On the card's own record: Polling, then exactly one Read Without Encryption (06) with its IDm.
    reads = [f for f in card.received if f[1] == 0x06]
    assert len(reads) == 1
    assert reads[0][2:10] == profile.idm


def test_nfc_transport_card_is_identified_without_reading_foreign_services(tmp_path: Path) -> None:
    profile = transport_card("commuter")
    card = VirtualFelicaCard(profile)
    with FelicaUdpCard(card) as emulated:
        emulated.remove()
        with running_daemon(_nfc_config(tmp_path, emulated)) as d, d.subscriber("card.") as sub:  # type: ignore[arg-type]
            emulated.insert()
            identified = sub.until(lambda e: e["type"] == "card.identified", timeout=20)[-1]
    assert identified["data"]["services"] == {}
    assert identified["data"]["system_code"] == "0003"
    # Polling, and nfcpy's presence checks (Request Response, 04) while the card is held: no read at all.
    assert {f[1] for f in card.received} <= {0x00, 0x04}
    assert any(f[1] == 0x00 for f in card.received)


def test_nfc_checkin_card_pulled_during_the_read_is_aborted(tmp_path: Path) -> None:
    """The card leaves the field as the read arrives: no identity, reason removed."""
    profile = checkin_card("C0042")

    class LeavesOnRead(VirtualFelicaCard):
        emulated: FelicaUdpCard | None = None

        def process_frame(self, frame: bytes) -> bytes | None:
            if len(frame) > 1 and frame[1] == 0x06 and self.emulated is not None:
                self.emulated.remove()
                return None
            return super().process_frame(frame)

    card = LeavesOnRead(profile)
    reads = FelicaConfig(reads=(FelicaRead(name="checkin", service_code="000B", blocks=(0,)),))
    with FelicaUdpCard(card) as emulated:
        card.emulated = emulated
        emulated.remove()
        with running_daemon(_nfc_config(tmp_path, emulated, reads)) as d, d.subscriber("card.") as sub:  # type: ignore[arg-type]
            emulated.insert()
            events = sub.until(lambda e: e["type"] in ("card.identified", "card.read_aborted"), timeout=20)
            after = sub.until(lambda e: e["type"] == "card.removed", timeout=20)
    assert [e["type"] for e in events] == ["card.presented", "card.read_aborted"]
    aborted = events[-1]["data"]
    assert aborted["kind"] == "felica"
    assert aborted["reason"] == "removed"
    assert aborted["apdus"] == 1
    assert "pseudonym" not in aborted
    assert [e["type"] for e in after] == ["card.removed"]
