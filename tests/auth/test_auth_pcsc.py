"""JPKI authentication through the real stack: the daemon's PC/SC backend, a private pcscd, vpcd, and
virtual cards attached as vicc. Counted on each card's own APDU record, as in ``test_auth_flow``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control_client import ControlSession
from readerd.config import AuthConfig, Config, PcscConfig
from simulators.mynumber import CardProfile, VirtualMyNumberCard, build_card, crl_for
from simulators.pki import CaKind, PkiStore, SimulatedCa, foreign_ca_name, write_pem
from simulators.vicc import ViccBridge
from tests.support.auth import error, ok, pin_verifies
from tests.support.daemon import RunningDaemon, Subscriber, hardware_config, running_daemon
from tests.support.pcscd import PrivatePcscd

pytestmark = [pytest.mark.pcscd, pytest.mark.timeout(120)]


def _config(
    tmp_path: Path, pki: PkiStore, *, revoked: tuple[CardProfile, ...] = (), foreign: bool = False
) -> Config:
    if foreign:
        ca = SimulatedCa(subject=foreign_ca_name())
        anchor = write_pem(tmp_path / "anchors.pem", ca.certificate)
        crl = write_pem(tmp_path / "auth.crl", ca.crl([]))
    else:
        anchor = write_pem(tmp_path / "anchors.pem", pki.ca(CaKind.USER_AUTH).certificate)
        crl = write_pem(tmp_path / "auth.crl", crl_for(list(revoked), pki))
    return hardware_config(
        tmp_path / "state",
        ("pcsc",),
        pcsc=PcscConfig(allow_virtual_readers=True),
        auth=AuthConfig(trust_anchors=(str(anchor),), crl_files=(str(crl),)),
    )


class Kiosk:
    """A daemon on the private pcscd, a kiosk UI session, and the vicc slot of reader 0."""

    def __init__(self, d: RunningDaemon, sub: Subscriber, ui: ControlSession, pcscd: PrivatePcscd) -> None:
        self.d, self.sub, self.ui, self.pcscd = d, sub, ui, pcscd
        self.reader = pcscd.readers[0]
        self.bridge: ViccBridge | None = None

    def insert(self, card: VirtualMyNumberCard) -> dict[str, Any]:
        self.remove()
        self.bridge = ViccBridge(card, port=self.pcscd.ports[0])
        self.bridge.insert()
        return self.sub.until(lambda e: e["type"] in ("card.identified", "card.read_aborted"), timeout=10)[-1]

    def remove(self) -> None:
        if self.bridge is not None:
            self.bridge.remove()
            self.bridge = None
            self.sub.until(lambda e: e["type"] == "card.removed", timeout=10)

    def begin(self) -> dict[str, Any]:
        return self.ui.request("auth.begin", {"reader": self.reader}, timeout_ms=20000)

    def pin(self, auth_id: str, pin: str, **args: object) -> dict[str, Any]:
        return self.ui.request("auth.pin", {"auth_id": auth_id, "pin": pin, **args}, timeout_ms=20000)


@contextmanager
def kiosk(config: Config, pcscd: PrivatePcscd) -> Iterator[Kiosk]:
    with running_daemon(config) as d, d.subscriber("card.") as sub, d.session() as ui:
        k = Kiosk(d, sub, ui, pcscd)
        try:
            yield k
        finally:
            if k.bridge is not None:
                k.bridge.remove()


def test_pin_outcomes_through_pcscd(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    pki = PkiStore(tmp_path / "pki")
    alice = build_card(CardProfile(name="alice", auth_pin="2580"), pki)
    last = build_card(CardProfile(name="bob", auth_tries_left=1), pki)
    blocked = build_card(CardProfile(name="carol", auth_tries_left=0), pki)
    with kiosk(_config(tmp_path, pki), private_pcscd) as k:
        assert k.insert(alice)["type"] == "card.identified"
        verified = ok(k.pin(ok(k.begin())["auth_id"], "2580"))
        authenticated = k.sub.until(lambda e: e["type"] == "card.authenticated", timeout=10)[-1]
        after_success = pin_verifies(alice)
        wrong = error(k.pin(ok(k.begin())["auth_id"], "0000"))
        tries_now = ok(k.begin())["tries_left"]

        k.insert(last)
        begun = ok(k.begin())
        refused = error(k.pin(begun["auth_id"], "1234"))
        after_refusal = pin_verifies(last)
        allowed = ok(k.pin(ok(k.begin())["auth_id"], "1234", allow_last_try=True))

        k.insert(blocked)
        blocked_begin = error(k.begin())
    assert verified["verified"] is True
    assert verified["validation"] == "valid"
    assert authenticated["data"]["pseudonym"] == verified["pseudonym"]
    assert after_success == 1
    assert wrong["code"] == "wrong_pin"
    assert wrong["details"] == {"tries_left": 2}
    assert tries_now == 2
    assert pin_verifies(alice) == 2

    assert begun["last_try"] is True
    assert refused["code"] == "last_try_refused"
    assert after_refusal == 0
    assert allowed["verified"] is True
    assert pin_verifies(last) == 1

    assert blocked_begin["code"] == "pin_blocked"
    assert pin_verifies(blocked) == 0


def test_revoked_and_expired_cards_are_refused_at_begin(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    """Through pcscd + vpcd: auth.begin refuses a revoked and an expired card with the validator's
    reason, and neither card's APDU record holds a VERIFY (INS 20), not even the tries query.
    Cost: one private pcscd and one daemon, about 3 s."""
    pki = PkiStore(tmp_path / "pki")
    revoked_profile = CardProfile(name="dave", revoked=True)
    revoked = build_card(revoked_profile, pki)
    expired = build_card(CardProfile(name="erin", expired=True), pki)
    refusals = []
    with kiosk(_config(tmp_path, pki, revoked=(revoked_profile,)), private_pcscd) as k:
        for card in (revoked, expired):
            k.insert(card)
            refusals.append(error(k.begin()))
        failed = k.sub.until(lambda e: e["type"] == "card.auth_failed", timeout=10)[-1]
    assert [(e["code"], e["details"]) for e in refusals] == [
        ("certificate_rejected", {"validation": "revoked"}),
        ("certificate_rejected", {"validation": "expired"}),
    ]
    assert all("ward office" in e["message"] for e in refusals)
    assert failed["data"] == {"reason": "certificate_rejected", "validation": "expired"}
    for card in (revoked, expired):
        assert card.log  # positive control: the card was read through pcscd
        assert not any(r.raw[1] == 0x20 for r in card.log)


def test_foreign_ca_is_refused_at_begin(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    """Through pcscd + vpcd: a card whose issuer is not a trust anchor is refused at auth.begin without
    any VERIFY. Cost: one private pcscd and one daemon, about 2 s."""
    pki = PkiStore(tmp_path / "pki")
    card = build_card(CardProfile(name="frank"), pki)
    with kiosk(_config(tmp_path, pki, foreign=True), private_pcscd) as k:
        k.insert(card)
        rejected = error(k.begin())
    assert rejected["code"] == "certificate_rejected"
    assert rejected["details"] == {"validation": "unknown_issuer"}
    assert card.log
    assert not any(r.raw[1] == 0x20 for r in card.log)


def test_card_swapped_between_begin_and_pin(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    pki = PkiStore(tmp_path / "pki")
    first = build_card(CardProfile(name="alice"), pki)
    second = build_card(CardProfile(name="bob"), pki)
    with kiosk(_config(tmp_path, pki), private_pcscd) as k:
        k.insert(first)
        begun = ok(k.begin())
        k.insert(second)
        swapped = error(k.pin(begun["auth_id"], "1234"))
    assert swapped["code"] == "auth_session_invalid"
    assert swapped["details"] == {"reason": "card_changed"}
    assert pin_verifies(first) == 0
    assert pin_verifies(second) == 0


def test_no_trust_anchors_no_authentication(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    pki = PkiStore(tmp_path / "pki")
    card = build_card(CardProfile(name="alice"), pki)
    config = hardware_config(tmp_path / "state", ("pcsc",), pcsc=PcscConfig(allow_virtual_readers=True))
    with kiosk(config, private_pcscd) as k:
        k.insert(card)
        refused = error(k.begin())
    assert refused["code"] == "auth_not_configured"
    assert not any(r.raw[1] == 0x20 for r in card.log)  # not even the tries were read
