"""Value needs possession: spending with the card on the reader takes its PIN proof, made on that reader
during this insertion and spent once; by bare member ID only an operator may spend. Through a running
daemon on the sim backend, a kiosk screen on the control socket and the office on the operator socket.
Cost: about 3 s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control_client import ControlSession
from readerd.bus.curve import CONTROL
from readerd.config import PluginsConfig
from tests.support.auth import READER, error, ok, tap
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


@dataclass
class Shop:
    daemon: RunningDaemon
    sub: Subscriber
    office: ControlSession  # the operator socket
    screen: ControlSession  # the control socket: what a shop terminal has
    member: str


def _prove(session: ControlSession, reader: str = READER) -> str:
    begun = ok(session.request("auth.begin", {"reader": reader}))
    auth_id: str = ok(session.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    return auth_id


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    config = sim_config(tmp_path, plugins=PluginsConfig(autoload=False, builtins=("points",)))
    with running_daemon(config) as d, d.subscriber("") as sub, d.session() as office:
        assert d.daemon.bus is not None
        assert d.daemon.bus.role_sockets is not None
        with ControlSession(f"ipc://{d.daemon.bus.role_sockets.path(CONTROL)}") as screen:
            programme = {"last_earning_day": "2099-12-31", "last_ticket_day": "2099-12-31"}
            ok(
                office.request(
                    "points.define_programme",
                    {"programme_id": "ward", "name": "区民ポイント", **programme,
                     "last_use_day": "2099-12-31", "idempotency_key": "p1"},
                )
            )  # fmt: skip
            ok(office.request("points.define_shop", {"shop_id": "tofu-ya", "name": "豆腐店", "area": "n",
                                                     "idempotency_key": "s1"}))  # fmt: skip
            tap(d, sub, "alice")
            member: str = ok(office.request("mykey.enroll", {"auth_id": _prove(office)}))["member_id"]
            grant = {"programme_id": "ward", "campaign": "test", "members": [member], "amount": 100}
            ok(office.request("points.grant", {**grant, "idempotency_key": "g1"}))
            yield Shop(d, sub, office, screen, member)


def _redeem(session: ControlSession, key: str, **who: Any) -> dict[str, Any]:
    args = {"programme_id": "ward", "shop_id": "tofu-ya", "amount": 10, "idempotency_key": key, **who}
    return session.request("points.redeem", args)


def test_a_card_on_the_reader_spends_only_with_its_pin_proof_and_once(shop: Shop) -> None:
    no_proof = error(_redeem(shop.screen, "r1", reader=READER))
    auth_id = _prove(shop.screen)
    spent = ok(_redeem(shop.screen, "r2", reader=READER, auth_id=auth_id))
    again = error(_redeem(shop.screen, "r3", reader=READER, auth_id=auth_id))
    assert no_proof["code"] == "authentication_required"
    assert "PIN" in no_proof["message"]
    assert spent["balance"] == 90
    assert again["code"] == "auth_session_invalid", "a proof is spent once"


def test_a_proof_is_the_callers_and_the_readers(shop: Shop) -> None:
    auth_id = _prove(shop.screen)
    foreign = error(_redeem(shop.office, "r1", reader=READER, auth_id=auth_id))
    other_reader = error(_redeem(shop.screen, "r2", reader="Sim 01", auth_id=_prove(shop.screen)))
    assert foreign["details"]["reason"] == "other_caller"
    assert other_reader["details"]["reason"] == "other_reader"


def test_a_proof_does_not_outlive_the_insertion(shop: Shop) -> None:
    auth_id = _prove(shop.screen)
    shop.daemon.remove()
    tap(shop.daemon, shop.sub, "alice")
    gone = error(_redeem(shop.screen, "r1", reader=READER, auth_id=auth_id))
    assert gone["details"]["reason"] == "card_changed"


def test_spending_by_member_id_is_an_operators_act_and_audited(shop: Shop) -> None:
    refused = error(_redeem(shop.screen, "r1", member_id=shop.member))
    corrected = ok(_redeem(shop.office, "r2", member_id=shop.member))
    assert refused["code"] == "forbidden"
    assert "operator" in refused["message"]
    assert corrected["balance"] == 90
    lines = (Path(shop.daemon.daemon.config.state_dir) / "audit.log").read_text().splitlines()
    audited = [json.loads(line) for line in lines if "value_by_member_id" in line]
    assert [(r["cmd"], r["outcome"]) for r in audited] == [("points.redeem", "ok")]
    assert audited[0]["caller"].startswith("uid:")


def test_a_ticket_needs_the_proof_too(shop: Shop) -> None:
    args = {"programme_id": "ward", "amount": 10, "idempotency_key": "t1", "reader": READER}
    assert error(shop.screen.request("points.issue_ticket", args))["code"] == "authentication_required"
    issued = ok(shop.screen.request("points.issue_ticket", {**args, "auth_id": _prove(shop.screen)}))
    assert issued["amount"] == 10 or "ticket" in issued


def test_a_card_with_a_copied_certificate_is_alice_but_cannot_spend(shop: Shop) -> None:
    shop.daemon.remove()
    cloned = tap(shop.daemon, shop.sub, "mallory", cloned_from="alice")
    assert cloned["data"]["member_id"] == shop.member, "identified as alice: her certificate"
    begun = ok(shop.screen.request("auth.begin", {"reader": READER}))
    refused = error(shop.screen.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
    no_proof = error(_redeem(shop.screen, "r1", reader=READER))
    stale = error(_redeem(shop.screen, "r2", reader=READER, auth_id=begun["auth_id"]))
    balance = ok(shop.office.request("points.balance", {"member_id": shop.member}))
    assert refused["code"] == "signature_invalid"
    assert no_proof["code"] == "authentication_required"
    assert stale["code"] == "auth_session_invalid", "a failed proof spends nothing"
    assert balance["balances"]["ward"] == 100
