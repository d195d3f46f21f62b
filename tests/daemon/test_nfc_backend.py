"""The daemon's nfcpy backend against simulated cards over nfcpy's real ``udp`` driver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from protocols.mykey import jpki_pseudonym
from readerd.config import NfcConfig
from readerd.ops.keys import load_pseudonym_key
from simulators.mynumber import CardProfile, build_card
from simulators.mynumber_nfc import MyNumberUdpCard
from simulators.pki import PkiStore
from tests.support.daemon import RunningDaemon, hardware_config, running_daemon

pytestmark = pytest.mark.timeout(90)


def _readers_once_listed(d: RunningDaemon, timeout: float = 10) -> list[dict[str, object]]:
    """The device thread opens its nfcpy device after the daemon is up: poll ``readers`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        readers: list[dict[str, object]] = d.request("readers")["result"]["readers"]
        if readers or time.monotonic() > deadline:
            return readers
        time.sleep(0.02)


def test_my_number_card_over_nfc_is_identified_and_removed(tmp_path: Path) -> None:
    store = PkiStore(tmp_path / "pki")
    card = build_card(CardProfile(name="alice"), store)
    with MyNumberUdpCard(card) as emulated:
        emulated.remove()  # start with an empty field
        config = hardware_config(tmp_path / "state", ("nfc",), nfc=NfcConfig(devices=(emulated.path,)))
        with running_daemon(config) as d, d.subscriber("card.", "reader.") as sub:
            reader = f"nfc {emulated.path}"
            readers = _readers_once_listed(d)
            emulated.insert()
            seen = sub.until(lambda e: e["type"] == "card.identified", timeout=20)
            events = [e for e in seen if e["type"].startswith("card.")]
            emulated.remove()
            removed = sub.until(lambda e: e["type"] == "card.removed", timeout=20)[-1]
    assert readers == [{"name": reader, "backend": "nfc", "card": None}]
    assert [e["type"] for e in events] == ["card.presented", "card.identified"]
    identified = events[-1]
    assert identified["reader"] == reader
    cert = store.user_auth_certificate("alice")
    key = load_pseudonym_key(tmp_path / "state" / "pseudonym.key")
    issuer = cert.issuer.public_bytes(serialization.Encoding.DER)
    assert identified["data"]["pseudonym"] == jpki_pseudonym(key, issuer, cert.serial_number)
    assert identified["data"]["read_path"] == "short"  # nfcpy's ISO-DEP transport reports short only
    assert removed["data"]["kind"] == "jpki"
    assert not card.touched_card_info()


def test_an_unreachable_nfc_device_is_not_a_reader(tmp_path: Path) -> None:
    config = hardware_config(tmp_path, ("nfc",), nfc=NfcConfig(devices=("usb:0999:0999",)))
    with running_daemon(config) as d:
        assert d.request("readers")["result"]["readers"] == []
        assert d.request("status")["result"]["healthy"] is True
