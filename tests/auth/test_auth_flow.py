"""``auth.begin`` / ``auth.pin`` / ``mykey.*`` on the sim backend, checked on the card's own APDU record.

Each test counts what reached the virtual card: VERIFY with data (a PIN, which costs a try when wrong)
and the bare tries query. The positive controls (a VERIFY was sent) sit beside the negative cases (none
was) so that a broken counter could not make the negative cases pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from protocols.jpki import UserAuthCertificate
from readerd.bus.control_client import ControlSession
from readerd.config import AuthConfig, Config
from simulators.mynumber import VirtualMyNumberCard
from simulators.pki import PkiStore, SimulatedCa, foreign_ca_name, write_pem
from tests.support.auth import READER, error, ok, pin_verifies, tap, tries_queries
from tests.support.daemon import RunningDaemon, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    with running_daemon(sim_config(tmp_path)) as d:
        yield d


def test_correct_pin_sends_one_verify_and_publishes_authenticated(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, pin="4711")
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        assert begun["tries_left"] == 3
        assert begun["last_try"] is False
        assert pin_verifies(cards[-1]) == 0  # auth.begin only reads the tries
        result = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "4711"}))
        event = sub.until(lambda e: e["type"] == "card.authenticated")[-1]
    assert result["verified"] is True
    assert result["assurance"] == "jpki_pin_signature"
    assert result["validation"] == "valid"
    assert pin_verifies(cards[-1]) == 1
    data = event["data"]
    assert data["pseudonym"] == result["pseudonym"]
    assert set(data) <= {
        "pseudonym",
        "enrolled",
        "member_id",
        "mykey_id",
        "assurance",
        "validation",
        "expires_within_days",
        "validation_warnings",
        "simulated",
    }
    assert data["simulated"] is True  # a card of the sim backend
    assert data["expires_within_days"] in ("30", "90", "365", "more")
    raw = json.dumps(event)
    assert "4711" not in raw
    assert "not_after" not in raw
    assert "serial" not in raw


def test_full_width_digits_are_the_same_pin(daemon: RunningDaemon, cards: list[VirtualMyNumberCard]) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, pin="1234")
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        assert ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "１２３４"}))["verified"]
    assert pin_verifies(cards[-1]) == 1


def test_wrong_pin_says_how_many_tries_are_left(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, pin="1234")
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "9999"}))
        failed = sub.until(lambda e: e["type"] == "card.auth_failed")[-1]
        again = ok(ui.request("auth.begin", {"reader": READER}))
    assert err["code"] == "wrong_pin"
    assert err["details"] == {"tries_left": 2}
    assert failed["data"] == {"reason": "wrong_pin", "tries_left": 2, "simulated": True}
    assert again["tries_left"] == 2
    assert pin_verifies(cards[-1]) == 1  # exactly the one the user asked for: never retried


def test_last_try_is_refused_without_allow_last_try(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, pin="1234", tries=1)
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        assert begun["tries_left"] == 1
        assert begun["last_try"] is True
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
        assert err["code"] == "last_try_refused"
        assert err["details"] == {"tries_left": 1}
        assert pin_verifies(cards[-1]) == 0
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        args = {"auth_id": begun["auth_id"], "pin": "1234", "allow_last_try": True}
        assert ok(ui.request("auth.pin", args))["verified"]
    assert pin_verifies(cards[-1]) == 1
    audit = [
        json.loads(line)
        for line in (Path(daemon.daemon.config.state_dir) / "audit.log").read_text().splitlines()
    ]
    assert [r["action"] for r in audit] == ["pin_allow_last_try"]
    assert "1234" not in json.dumps(audit)


def test_allow_last_try_must_be_a_real_boolean(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, tries=1)
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        err = error(
            ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234", "allow_last_try": "yes"})
        )
    assert err["code"] == "bad_request"
    assert pin_verifies(cards[-1]) == 0


def test_blocked_card_is_refused_at_begin(daemon: RunningDaemon, cards: list[VirtualMyNumberCard]) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, tries=0)
        err = error(ui.request("auth.begin", {"reader": READER}))
    assert err["code"] == "pin_blocked"
    assert err["details"] == {"tries_left": 0}
    assert pin_verifies(cards[-1]) == 0
    assert tries_queries(cards[-1]) == 1


def test_three_wrong_pins_block_and_each_was_asked_for(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    codes = []
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, pin="1234")
        for _ in range(3):
            begun = ok(ui.request("auth.begin", {"reader": READER}))
            args = {"auth_id": begun["auth_id"], "pin": "0000", "allow_last_try": begun["last_try"]}
            codes.append(error(ui.request("auth.pin", args))["details"]["tries_left"])
        blocked = error(ui.request("auth.begin", {"reader": READER}))
    assert codes == [2, 1, 0]
    assert blocked["code"] == "pin_blocked"
    assert pin_verifies(cards[-1]) == 3


def test_another_caller_cannot_use_the_auth_id(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui, daemon.session() as intruder:
        tap(daemon, sub)
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        err = error(intruder.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
        assert err["code"] == "auth_session_invalid"
        assert err["details"] == {"reason": "other_caller"}
        assert pin_verifies(cards[-1]) == 0
        # The rightful caller's session survives the attempt.
        assert ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["verified"]
    assert pin_verifies(cards[-1]) == 1


def test_an_auth_id_is_single_use(daemon: RunningDaemon, cards: list[VirtualMyNumberCard]) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub)
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "0000"}))
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
        unknown = error(ui.request("auth.pin", {"auth_id": "made-up", "pin": "1234"}))
    assert err["code"] == unknown["code"] == "auth_session_invalid"
    assert pin_verifies(cards[-1]) == 1


def test_malformed_pin_never_reaches_the_card(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub)
        for pin in ("12a4", "12345", "123", ""):
            begun = ok(ui.request("auth.begin", {"reader": READER}))
            err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": pin}))
            assert err["code"] == "bad_pin_format"
            assert "12a4" not in err["message"]
    assert pin_verifies(cards[-1]) == 0


def test_card_swapped_between_begin_and_pin(daemon: RunningDaemon, cards: list[VirtualMyNumberCard]) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, "alice")
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        tap(daemon, sub, "bob")  # alice leaves, bob arrives on the same reader
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
    assert err["code"] == "auth_session_invalid"
    assert err["details"] == {"reason": "card_changed"}
    assert [pin_verifies(card) for card in cards] == [0, 0]


def test_card_removed_between_begin_and_pin(daemon: RunningDaemon, cards: list[VirtualMyNumberCard]) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub)
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        daemon.remove()
        sub.until(lambda e: e["type"] == "card.removed")
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
        no_card = error(ui.request("auth.begin", {"reader": READER}))
    assert err["code"] == "auth_session_invalid"
    assert no_card["code"] == "no_card"
    assert pin_verifies(cards[-1]) == 0


@pytest.mark.parametrize(("option", "outcome"), [("revoked", "revoked"), ("expired", "expired")])
def test_revoked_or_expired_card_is_refused_at_begin_without_any_verify(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard], option: str, outcome: str
) -> None:
    """Validation comes before the tries query: the citizen is told why and to renew the card, and the
    card's APDU record holds no VERIFY (INS 20) of any kind. Cost: one sim daemon, about 1 s per case."""
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, "carol", **{option: True})
        err = error(ui.request("auth.begin", {"reader": READER}))
        failed = sub.until(lambda e: e["type"] == "card.auth_failed")[-1]
    assert err["code"] == "certificate_rejected"
    assert err["details"] == {"validation": outcome}
    assert "ward office" in err["message"]
    assert failed["data"] == {"reason": "certificate_rejected", "validation": outcome, "simulated": True}
    assert any(r.raw[1] == 0xB0 for r in cards[-1].log)  # positive control: the card was read
    assert not any(r.raw[1] == 0x20 for r in cards[-1].log)


def test_auth_pin_still_validates_a_certificate_revoked_after_begin(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    """The CRL changes between auth.begin and auth.pin (the same certificate is revoked through the
    other reader): auth.pin's own check rejects it after the proof. Cost: one sim daemon, about 1 s."""
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, "carol")
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        daemon.tap("carol", reader="Sim 01", revoked=True)  # writes the simulator's CRL with carol on it
        sub.until(lambda e: e["type"] == "card.identified" and e["reader"] == "Sim 01")
        err = error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
    assert err["code"] == "certificate_rejected"
    assert err["details"] == {"validation": "revoked"}
    assert pin_verifies(cards[0]) == 1  # the proof was made; the certificate is what failed


def test_foreign_ca_is_rejected(tmp_path: Path, cards: list[VirtualMyNumberCard]) -> None:
    """A card whose issuer is not among the trust anchors is refused at auth.begin, before any VERIFY.
    Cost: one sim daemon, about 1 s."""
    foreign = SimulatedCa(subject=foreign_ca_name())
    anchors = write_pem(tmp_path / "foreign.pem", foreign.certificate)
    crl = write_pem(tmp_path / "foreign.crl", foreign.crl([]))
    config: Config = sim_config(
        tmp_path / "state", auth=AuthConfig(trust_anchors=(str(anchors),), crl_files=(str(crl),))
    )
    with running_daemon(config) as d, d.subscriber("card.") as sub, d.session() as ui:
        tap(d, sub)
        err = error(ui.request("auth.begin", {"reader": READER}))
    assert err["code"] == "certificate_rejected"
    assert err["details"] == {"validation": "unknown_issuer"}
    assert not any(r.raw[1] == 0x20 for r in cards[-1].log)


def test_enrolment_is_idempotent_and_needs_authentication(daemon: RunningDaemon) -> None:
    def authenticate(ui: ControlSession) -> str:
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        auth_id: str = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
        return auth_id

    with daemon.subscriber("card.") as sub, daemon.session() as ui, daemon.session() as other:
        identified = tap(daemon, sub)
        assert identified["data"]["enrolled"] is False
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        not_yet = error(ui.request("mykey.enroll", {"auth_id": begun["auth_id"]}))  # begun, not proven
        auth_id = authenticate(ui)
        stolen = error(other.request("mykey.enroll", {"auth_id": auth_id}))
        first = ok(ui.request("mykey.enroll", {"auth_id": auth_id}))
        spent = error(ui.request("mykey.enroll", {"auth_id": auth_id}))
        second = ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))
        daemon.remove()
        again = tap(daemon, sub)
        gone = ok(ui.request("mykey.unenroll", {"auth_id": authenticate(ui)}))
        daemon.remove()
        after = tap(daemon, sub)
    assert not_yet["code"] == stolen["code"] == spent["code"] == "auth_session_invalid"
    assert first["created"] is True
    assert second["created"] is False
    assert first["member_id"] == second["member_id"]
    assert again["data"]["member_id"] == first["member_id"]
    assert gone == {"unenrolled": True}
    assert after["data"]["enrolled"] is False
    audit = (Path(daemon.daemon.config.state_dir) / "audit.log").read_text()
    assert [json.loads(line)["action"] for line in audit.splitlines()] == [
        "auth_foreign_caller",
        "enroll",
        "unenroll",
    ]


def test_relink_moves_the_member_to_a_renewed_certificate(daemon: RunningDaemon) -> None:
    def authenticate(ui: ControlSession) -> str:
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        auth_id: str = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
        return auth_id

    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, "dave")
        member = ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))["member_id"]
        tap(daemon, sub, "dave-renewed")  # the renewed certificate: another serial, another pseudonym
        no_reason = error(ui.request("mykey.relink", {"auth_id": "x", "member_id": member}))
        moved = ok(
            ui.request(
                "mykey.relink",
                {"auth_id": authenticate(ui), "member_id": member, "reason": "renewal, ID checked"},
            )
        )
        daemon.remove()
        renewed = tap(daemon, sub, "dave-renewed")
        old = tap(daemon, sub, "dave")
    assert no_reason["code"] == "bad_request"
    assert moved["member_id"] == member
    assert renewed["data"]["member_id"] == member
    assert old["data"]["enrolled"] is False
    audit = [
        json.loads(line)
        for line in (Path(daemon.daemon.config.state_dir) / "audit.log").read_text().splitlines()
    ]
    relink = next(record for record in reversed(audit) if record["action"] == "relink")
    assert relink["reason"] == "renewal, ID checked"
    assert relink["old_pseudonym"] != relink["pseudonym"]


def test_identification_and_auth_begin_never_move_the_pin_counter(
    daemon: RunningDaemon, cards: list[VirtualMyNumberCard]
) -> None:
    with daemon.subscriber("card.") as sub, daemon.session() as ui:
        tap(daemon, sub, tries=2)
        answers = [ok(ui.request("auth.begin", {"reader": READER}))["tries_left"] for _ in range(5)]
    assert answers == [2, 2, 2, 2, 2]
    assert tries_queries(cards[-1]) == 5
    assert pin_verifies(cards[-1]) == 0


def test_no_certificate_field_in_events_or_stored_records(tmp_path: Path) -> None:
    """Serial, CN and validity dates (notAfter gives the birthday away) stay out of the public events,
    the member directory and the audit log; the simulator's own files (``sim-pki``) are not readerd's."""
    state = tmp_path / "state"
    with running_daemon(sim_config(state)) as d, d.subscriber("") as sub, d.session() as ui:
        tap(d, sub, "grace")
        begun = ok(ui.request("auth.begin", {"reader": READER}))
        auth_id = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
        ok(ui.request("mykey.enroll", {"auth_id": auth_id}))
        events = sub.until(lambda e: e["type"] == "card.authenticated")
    cert = PkiStore(state / "sim-pki").user_auth_certificate("grace")
    card = UserAuthCertificate.from_der(cert.public_bytes(serialization.Encoding.DER))
    secrets_of_the_card = [
        format(card.serial_number, "X"),
        format(card.serial_number, "x"),
        str(card.serial_number),
        card.subject_cn,
        card.not_after.date().isoformat(),
        card.not_after.strftime("%Y%m%d"),
    ]
    blobs = {"events": json.dumps(events).encode()}
    for path in state.rglob("*"):
        if path.is_file() and "sim-pki" not in path.parts:
            blobs[path.name] = path.read_bytes()
    assert {"members.db", "audit.log", "events"} <= set(blobs)
    found = {name: [s for s in secrets_of_the_card if s.encode() in blob] for name, blob in blobs.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}
