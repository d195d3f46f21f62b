"""The copied-certificate attack: a card carrying another citizen's certificate with its own key.

Reading the certificate identifies the card as that citizen; ``auth.pin`` refuses it because the card's
signature over the challenge does not verify with the certificate's key, even with the clone's right PIN.
On the sim backend (``readerctl tap --cloned-from``) and through pcscd + vpcd (a ``readerd-sim`` card).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from protocols.jpki_constants import JPKI_AID
from readerd.cli.ctl import main as readerctl
from readerd.config import AuthConfig, PcscConfig
from simulators.cli import _card_from_args, build_parser
from simulators.mynumber import BinaryEf, CardProfile, KeyEf, VirtualMyNumberCard, build_card
from simulators.pki import CaKind, PkiStore, write_pem
from simulators.vicc import ViccBridge
from tests.support.auth import READER, error, ok, pin_verifies, tap
from tests.support.daemon import Subscriber, hardware_config, running_daemon, sim_config
from tests.support.pcscd import PrivatePcscd

pytestmark = pytest.mark.timeout(60)


def _ef(card: VirtualMyNumberCard, fid: int) -> bytes:
    """A JPKI EF's bytes; a key EF as its public key (DER)."""
    ef = card.applications[JPKI_AID].efs[fid]
    if isinstance(ef, KeyEf):
        return ef.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    assert isinstance(ef, BinaryEf)
    return ef.data


def _refused_without_authentication(sub: Subscriber, err: dict[str, Any]) -> dict[str, Any]:
    """Refused as ``signature_invalid``, published as ``card.auth_failed``, never ``card.authenticated``."""
    assert err["code"] == "signature_invalid"
    seen = sub.until(lambda e: e["type"] == "card.auth_failed", timeout=10)
    assert not [e for e in seen if e["type"] == "card.authenticated"]
    return seen[-1]


def test_clone_card_carries_the_certificate_but_not_the_key(tmp_path: Path) -> None:
    """Cost: ~0.6 s (three cards' RSA keys, generated once)."""
    pki = PkiStore(tmp_path / "pki")
    alice = build_card(CardProfile(name="alice"), pki)
    mallory = build_card(CardProfile(name="mallory"), pki)
    clone = build_card(CardProfile(name="mallory", cloned_from="alice"), pki)
    parsed = build_parser().parse_args(
        ["mynumber", "--profile", "mallory", "--cloned-from", "alice", "--cache", str(tmp_path / "pki")]
    )
    from_cli = _card_from_args(parsed)
    assert isinstance(from_cli, VirtualMyNumberCard)
    for card in (clone, from_cli):
        assert _ef(card, 0x000A) == _ef(alice, 0x000A)  # alice's certificate, byte for byte
        assert _ef(card, 0x0017) != _ef(alice, 0x0017)  # another key
        assert _ef(card, 0x0017) == _ef(mallory, 0x0017)  # the clone's own
    with pytest.raises(ValueError, match="cloned_from"):
        build_card(CardProfile(name="alice", cloned_from="alice"), pki)


def test_clone_is_identified_as_the_owner_and_fails_auth_pin(
    tmp_path: Path, cards: list[VirtualMyNumberCard], capsys: pytest.CaptureFixture[str]
) -> None:
    """Cost: ~0.8 s (a sim daemon, two taps, one refused authentication)."""
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub, d.session() as ui:
        owner = tap(d, sub, "alice")
        d.remove()
        sub.until(lambda e: e["type"] == "card.removed")
        assert (
            readerctl(["--control", d.control, "tap", "mallory", "--cloned-from", "alice", "--pin", "2468"])
            == 0
        )
        cloned = sub.until(lambda e: e["type"] in ("card.identified", "card.read_aborted"))[-1]
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "2468"}))
        failed = _refused_without_authentication(sub, err)
        refused_taps = [
            d.request("tap", {"card": "alice", "cloned_from": value})["ok"]
            for value in ("alice", "", 7, "x" * 65)
        ]
        refused_taps.append(d.request("tap", {"card": "bob", "cloned_from": "alice", "expired": True})["ok"])
    assert cloned["type"] == "card.identified"
    assert cloned["data"]["pseudonym"] == owner["data"]["pseudonym"]
    assert cloned["data"].get("mykey_id") == owner["data"].get("mykey_id")
    assert cloned["data"].get("member_id") == owner["data"].get("member_id")
    assert failed["data"]["reason"] == "signature_invalid"
    assert pin_verifies(cards[-1]) == 1  # the clone's PIN was right: only the signature gave it away
    assert refused_taps == [False] * 5


@pytest.mark.pcscd
def test_clone_fails_auth_pin_through_pcscd(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    """Cost: ~2 s (a daemon on the private pcscd, two cards through vpcd)."""
    pki = PkiStore(tmp_path / "pki")
    alice = build_card(CardProfile(name="alice"), pki)
    parsed = build_parser().parse_args(
        ["mynumber", "--profile", "mallory", "--cloned-from", "alice", "--cache", str(tmp_path / "pki")]
    )
    clone = _card_from_args(parsed)
    assert isinstance(clone, VirtualMyNumberCard)
    ca = pki.ca(CaKind.USER_AUTH)
    config = hardware_config(
        tmp_path / "state",
        ("pcsc",),
        pcsc=PcscConfig(allow_virtual_readers=True),
        auth=AuthConfig(
            trust_anchors=(str(write_pem(tmp_path / "anchors.pem", ca.certificate)),),
            crl_files=(str(write_pem(tmp_path / "auth.crl", ca.crl([]))),),
        ),
    )
    reader = private_pcscd.readers[0]
    with running_daemon(config) as d, d.subscriber("card.") as sub, d.session() as ui:
        identified = []
        for card in (alice, clone):
            bridge = ViccBridge(card, port=private_pcscd.ports[0])
            bridge.insert()
            try:
                identified.append(sub.until(lambda e: e["type"] == "card.identified", timeout=10)[-1])
                if card is clone:
                    begun = ok(ui.request("auth.begin", {"reader": reader}, timeout_ms=20000))
                    args = {"auth_id": begun["auth_id"], "pin": "1234"}
                    err = error(ui.request("auth.pin", args, timeout_ms=20000))
                    failed = _refused_without_authentication(sub, err)
            finally:
                bridge.remove()
            sub.until(lambda e: e["type"] == "card.removed", timeout=10)
    owner, cloned = identified
    assert cloned["data"]["pseudonym"] == owner["data"]["pseudonym"]
    assert failed["data"]["reason"] == "signature_invalid"
    assert pin_verifies(clone) == 1
