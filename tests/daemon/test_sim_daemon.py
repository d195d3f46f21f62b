"""The daemon end to end on the sim backend: real ZeroMQ sockets, a plain SUB subscriber, exact events."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path

import pytest
import zmq

from readerd.config import SessionConfig
from readerd.ops.keys import load_pseudonym_key
from readerd.ops.sdnotify import Notifier
from readerd.reading.identity import SqliteDirectory
from tests.support.daemon import running_daemon, sim_config

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PRIVATE_WORDS = ("serial", "subject_cn", "not_after", "not_before", "issuer", "certificate", "idm")


def test_tap_identify_remove(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        d.tap("alice")
        presented, identified = sub.next(), sub.next()
        d.remove()
        removed = sub.next()
    assert [presented["type"], identified["type"], removed["type"]] == [
        "card.presented",
        "card.identified",
        "card.removed",
    ]
    assert presented["data"] == {"kind": "jpki", "repeat": False, "simulated": True}
    data = identified["data"]
    assert data["kind"] == "jpki"
    assert data["enrolled"] is False
    assert data["repeat"] is False
    assert data["apdus"] == 2
    assert data["read_path"] == "extended_sfi"
    assert re.fullmatch(r"[A-Z2-7]{26}", data["pseudonym"])
    assert removed["data"] == {"kind": "jpki", "simulated": True}
    for env in (presented, identified, removed):
        assert env["v"] == 1
        assert env["kiosk"] == "test-kiosk"
        assert env["reader"] == "Sim 00"
        assert TS.match(env["ts"])
        uuid.UUID(env["id"])
        assert env["run_id"] == presented["run_id"]
    # consecutive, but for the plugin host's plugin.handled for the tap (not subscribed to here)
    assert identified["seq"] == presented["seq"] + 1
    assert removed["seq"] - identified["seq"] in (1, 2)


def test_public_events_carry_no_certificate_fields(tmp_path: Path) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber() as sub:
        private = context.socket(zmq.SUB)
        private.setsockopt(zmq.LINGER, 0)
        private.connect("inproc://readerd-private")
        private.setsockopt(zmq.SUBSCRIBE, b"card.identified")
        private.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        assert private.poll(5000)  # a heartbeat: the private subscription is live
        private.recv_multipart()
        private.setsockopt(zmq.UNSUBSCRIBE, b"heartbeat")
        d.tap("alice")
        public = sub.until(lambda e: e["type"] == "card.identified")[-1]
        while True:
            assert private.poll(5000)
            topic, body = private.recv_multipart()
            if topic == b"card.identified":
                break
        full = json.loads(body)
        private.close()
    text = json.dumps(public)
    for word in PRIVATE_WORDS:
        assert word not in text
    assert full["private"]["serial"]
    assert full["private"]["not_after"]
    assert full["seq"] == public["seq"]


def test_fast_retap_is_flagged_repeat_and_another_card_is_not(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.identified") as sub:
        d.tap("alice", hold=False)
        first = sub.next()
        d.tap("alice", hold=False)
        second = sub.next()
        d.tap("bob", hold=False)
        third = sub.next()
    assert (first["data"]["repeat"], second["data"]["repeat"], third["data"]["repeat"]) == (
        False,
        True,
        False,
    )
    assert first["data"]["pseudonym"] == second["data"]["pseudonym"] != third["data"]["pseudonym"]


def test_retap_after_the_window_is_not_a_repeat(tmp_path: Path) -> None:
    config = sim_config(tmp_path, sessions=SessionConfig(deadline=3.0, repeat_window=0.0))
    with running_daemon(config) as d, d.subscriber("card.identified") as sub:
        d.tap("alice", hold=False)
        sub.next()
        d.tap("alice", hold=False)
        assert sub.next()["data"]["repeat"] is False


def test_two_readers_at_once(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.identified") as sub:
        d.tap("alice", reader="Sim 00")
        d.tap("bob", reader="Sim 01")
        events = [sub.next(), sub.next()]
        deadline = time.monotonic() + 5  # `readers` reflects a read once the backend thread finished it
        while True:
            readers = {r["name"]: r["card"] for r in d.request("readers")["result"]["readers"]}
            if readers == {"Sim 00": "jpki", "Sim 01": "jpki"} or time.monotonic() > deadline:
                break
    assert {e["reader"] for e in events} == {"Sim 00", "Sim 01"}
    assert len({e["data"]["pseudonym"] for e in events}) == 2
    assert readers == {"Sim 00": "jpki", "Sim 01": "jpki"}


def test_a_card_on_an_occupied_reader_removes_the_old_one_first(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        d.tap("alice")
        d.tap("bob")
        types = sub.types(5)
    assert types == ["card.presented", "card.identified", "card.removed", "card.presented", "card.identified"]


@pytest.mark.parametrize(
    ("faults", "reason", "error"),
    [
        ([{"action": "remove", "after_apdus": 1}], "removed", "card_removed"),
        ([{"action": "garbage", "match": "00B0", "data": "3084FFFFFFFF9000"}], "malformed", "malformed_tlv"),
        ([{"action": "truncate", "match": "00B0", "keep": 300}], None, None),
        ([{"action": "status", "match": "00B0", "sw": "6F00"}], "card_error", "apdu_error"),
    ],
)
def test_bad_reads_are_aborted_with_a_reason(
    tmp_path: Path, faults: list[dict[str, object]], reason: str | None, error: str | None
) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        d.tap("alice", faults=faults)
        events = sub.until(lambda e: e["type"] in ("card.read_aborted", "card.identified"))
    assert [e["type"] for e in events] == ["card.presented", "card.read_aborted"]
    aborted = events[-1]["data"]
    assert aborted["kind"] == "jpki"
    assert "pseudonym" not in aborted  # no partial identity
    if reason is not None:
        assert (aborted["reason"], aborted["error"]) == (reason, error)
    else:
        assert aborted["reason"] in ("malformed", "card_error")


def test_a_card_pulled_mid_read_is_also_removed(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        d.tap("alice", faults=[{"action": "remove", "after_apdus": 1}])
        assert sub.types(3) == ["card.presented", "card.read_aborted", "card.removed"]
        assert d.request("readers")["result"]["readers"][0]["card"] is None


def test_a_stalled_card_times_out_and_the_reader_is_reported_wedged(tmp_path: Path) -> None:
    config = sim_config(tmp_path, sessions=SessionConfig(deadline=0.3, repeat_window=10.0))
    with running_daemon(config) as d, d.subscriber("card.", "reader.") as sub:
        d.tap("alice", faults=[{"action": "stall", "after_apdus": 1, "seconds": 30}])
        events = sub.until(lambda e: e["type"] == "reader.error")
        d.tap("bob", reader="Sim 01")  # the other reader goes on
        other = sub.until(lambda e: e["type"] == "card.identified")[-1]
    assert [e["type"] for e in events] == ["card.presented", "card.read_aborted", "reader.error"]
    assert events[1]["data"]["reason"] == "timeout"
    assert events[2]["data"]["reason"] == "wedged"
    assert other["reader"] == "Sim 01"


def test_an_unknown_card_is_presented_as_unknown(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        d.tap("blank", blank=True)
        presented = sub.next()
        d.remove()
        removed = sub.next()
    assert presented["data"]["kind"] == "unknown"
    assert removed["data"]["kind"] == "unknown"


def test_enrolled_cards_carry_their_member_id(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.identified") as sub:
        d.tap("alice", hold=False)
        pseudonym = sub.next()["data"]["pseudonym"]
        directory = SqliteDirectory(tmp_path / "members.db")
        entry = directory.enroll(pseudonym)
        directory.close()
        d.tap("alice", hold=False)
        data = sub.next()["data"]
    assert data["enrolled"] is True
    assert data["member_id"] == entry.member_id
    assert data["pseudonym"] == pseudonym


def test_pseudonyms_are_stable_across_restarts_and_keyed(tmp_path: Path) -> None:
    pseudonyms = []
    for _ in range(2):
        with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.identified") as sub:
            d.tap("alice")
            pseudonyms.append(sub.next()["data"]["pseudonym"])
    assert pseudonyms[0] == pseudonyms[1]
    assert len(load_pseudonym_key(tmp_path / "pseudonym.key")) == 32
    other = tmp_path / "other"
    with running_daemon(sim_config(other)) as d, d.subscriber("card.identified") as sub:
        d.tap("alice")
        assert sub.next()["data"]["pseudonym"] != pseudonyms[0]


def test_control_errors_have_fixed_codes(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d:
        assert d.request("explode")["error"]["code"] == "unknown_command"
        assert d.daemon.bus is not None
        d.daemon.bus.commands_complete.clear()  # as in the start-up window, before the plugins register
        starting = d.request("explode")["error"]
        assert d.request("status")["ok"] is True  # what is registered already answers
        d.daemon.bus.commands_complete.set()
        assert starting["code"] == "not_ready"
        assert d.request("tap", {"reader": "nope"})["error"]["code"] == "unknown_reader"
        assert d.request("tap", {"card": ""})["error"]["code"] == "bad_request"
        assert d.request("tap", {"faults": [{"action": "explode"}]})["error"]["code"] == "bad_request"
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        req = context.socket(zmq.REQ)  # a REQ client (no delimiter handling on our side) also works
        req.setsockopt(zmq.LINGER, 0)
        req.connect(d.control)
        req.send(b"not json")
        assert req.poll(5000)
        assert json.loads(req.recv())["error"]["code"] == "bad_request"
        req.send(json.dumps({"id": "7", "cmd": "status"}).encode())
        assert req.poll(5000)
        reply = json.loads(req.recv())
        req.close()
    assert reply["id"] == "7"
    assert reply["ok"] is True
    assert reply["result"]["kiosk"] == "test-kiosk"
    assert [r["name"] for r in reply["result"]["readers"]] == ["Sim 00", "Sim 01"]


def test_a_subscriber_that_stops_reading_does_not_stall_the_others(tmp_path: Path) -> None:
    with (
        running_daemon(sim_config(tmp_path)) as d,
        d.subscriber(rcvhwm=1) as _stuck,
        d.subscriber("card.", "plugin.handled") as sub,  # every event a tap makes: seqs without a gap
    ):
        for i in range(60):
            d.tap("alice" if i % 2 else "bob", hold=False)
        events = [sub.next() for _ in range(60 * 4)]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert sum(e["type"] == "card.identified" for e in events) == 60


def test_systemd_notifications(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(5)
    notifier = Notifier(address=str(path))
    notifier.watchdog_interval = 0.05
    messages: list[str] = []
    with running_daemon(sim_config(tmp_path / "state"), notifier) as d:
        while "WATCHDOG=1" not in messages:
            messages.append(listener.recv(4096).decode())
        assert d.daemon.healthy()
    while "STOPPING=1" not in messages:
        messages.append(listener.recv(4096).decode())
    listener.close()
    assert messages[0].startswith("READY=1")


def test_a_simulated_reader_unplugged_and_plugged_again(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("reader.", "card.") as sub:
        d.tap("alice", reader="Sim 01")
        sub.until(lambda e: e["type"] == "card.identified")
        assert d.request("unplug", {"reader": "Sim 01"})["ok"]
        gone = sub.until(lambda e: e["type"] == "reader.removed")
        listed = [r["name"] for r in d.request("readers")["result"]["readers"]]
        refused = d.request("tap", {"card": "bob", "reader": "Sim 01"})
        assert d.request("plug", {"reader": "Sim 01"})["ok"]
        back = sub.until(lambda e: e["type"] == "reader.added")[-1]
    assert [e["type"] for e in gone] == ["card.removed", "reader.removed"]
    assert listed == ["Sim 00"]
    assert refused["error"]["code"] == "unknown_reader"
    assert back["reader"] == "Sim 01"
