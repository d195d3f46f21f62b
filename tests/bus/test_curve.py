"""CURVE on the bus, on loopback with real sockets: the allowlist, roles, revocation while connected."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import zmq

from readerd import events as ev
from readerd.bus.client import CurveKeys
from readerd.bus.curve import Allowlist, allowlist_dir
from readerd.errors import BusSilentError
from tests.bus.conftest import CurveBus


def raw_request(endpoint: str, keys: CurveKeys | None, cmd: str, timeout_ms: int) -> dict[str, Any] | None:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    sock.connect(endpoint)
    sock.send_multipart([b"", json.dumps({"id": "1", "cmd": cmd, "args": {}}).encode()])
    try:
        if not sock.poll(timeout_ms):
            return None
        reply: dict[str, Any] = json.loads(sock.recv_multipart()[-1])
        return reply
    finally:
        sock.close()


def raw_sub(endpoint: str, keys: CurveKeys | None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


def test_unknown_and_plain_clients_receive_nothing_and_cannot_command(curve_bus: CurveBus) -> None:
    allowed = curve_bus.keys("screen", "subscribe")
    stranger = curve_bus.keys("stranger", role=None)
    subs = {"allowed": raw_sub(curve_bus.bus.publish_endpoint, allowed)}
    subs["stranger"] = raw_sub(curve_bus.bus.publish_endpoint, stranger)
    subs["plain"] = raw_sub(curve_bus.bus.publish_endpoint, None)
    try:
        # The allowed subscriber hears 20 heartbeats (a second at 0.05 s) while the others hear none.
        for _ in range(20):
            assert subs["allowed"].poll(5000)
            subs["allowed"].recv_multipart()
        assert subs["stranger"].poll(0) == 0
        assert subs["plain"].poll(0) == 0
    finally:
        for sock in subs.values():
            sock.close()
    control = curve_bus.bus.control_endpoint
    assert raw_request(control, stranger, "points.redeem", 500) is None
    assert raw_request(control, None, "status", 500) is None
    assert curve_bus.bus.stats.control_requests == 0  # nothing got through to the bus


def test_staff_commands_need_the_operator_role(curve_bus: CurveBus) -> None:
    """A shop terminal's control key redeems but cannot relink a member to another card (a takeover of
    the member's points); the ward office's operator key can do both."""
    terminal = curve_bus.keys("terminal", "control")
    office = curve_bus.keys("office", "operator")
    control = curve_bus.bus.control_endpoint
    refused = raw_request(control, terminal, "mykey.relink", 5000)
    assert refused is not None
    assert refused["error"]["code"] == "forbidden"
    assert "needs the operator role" in refused["error"]["message"]
    assert raw_request(control, office, "mykey.relink", 5000) == {
        "id": "1",
        "ok": True,
        "result": {"relinked": True},
    }
    redeemed = raw_request(control, office, "points.redeem", 5000)
    assert redeemed is not None
    assert redeemed["ok"] is True


def test_a_subscribe_only_key_can_catch_up_but_not_redeem(curve_bus: CurveBus) -> None:
    screen = curve_bus.keys("screen", "subscribe")
    counter = curve_bus.keys("counter", "control")
    control = curve_bus.bus.control_endpoint
    refused = raw_request(control, screen, "points.redeem", 5000)
    assert refused is not None
    assert refused["error"]["code"] == "forbidden"
    since = raw_request(control, screen, "events.since", 5000)
    assert since is not None
    assert since["error"]["code"] == "bad_request"  # admitted: only the missing seq is wrong
    redeemed = raw_request(control, counter, "points.redeem", 5000)
    assert redeemed == {"id": "1", "ok": True, "result": {"redeemed": True}}
    for i in range(5):
        curve_bus.bus.publish(ev.Event("card.presented", "R", {"i": i}))
    with curve_bus.client(screen, since=0) as client:
        assert [client.next(timeout=10)["data"]["i"] for _ in range(5)] == list(range(5))


def test_revoked_while_connected_stops_receiving_and_the_others_catch_up(curve_bus: CurveBus) -> None:
    doomed_keys = curve_bus.keys("doomed", "subscribe")
    kept_keys = curve_bus.keys("kept", "subscribe")
    doomed = raw_sub(curve_bus.bus.publish_endpoint, doomed_keys)
    kept = curve_bus.client(kept_keys, since=0, heartbeat_timeout=10)
    try:
        assert doomed.poll(5000)  # connected and hearing heartbeats
        for i in range(10):
            curve_bus.bus.publish(ev.Event("card.presented", "R", {"i": i}))
        assert [kept.next(timeout=10)["data"]["i"] for i in range(10)] == list(range(10))
        Allowlist(allowlist_dir(curve_dir := curve_bus.curve_dir)).revoke("doomed")
        revoked_at = time.monotonic()
        for i in range(10, 20):  # published around the re-bind: the kept client gets them by catch-up
            curve_bus.bus.publish(ev.Event("card.presented", "R", {"i": i}))
        # The doomed subscriber stops receiving within 2 s: drain it until it has been silent for 1 s.
        last_heard = revoked_at
        while doomed.poll(1000):
            doomed.recv_multipart()
            last_heard = time.monotonic()
            assert last_heard - revoked_at < 2.0, "still receiving 2 s after the revocation"
        for i in range(20, 30):
            curve_bus.bus.publish(ev.Event("card.presented", "R", {"i": i}))
        got = [kept.next(timeout=10) for _ in range(20)]
    finally:
        doomed.close()
        kept.close()
    assert [e["data"]["i"] for e in got] == list(range(10, 30))  # no gap, no duplicate
    assert curve_bus.bus.stats.rebinds == 1
    assert not (allowlist_dir(curve_dir) / "doomed.key").exists()
    with pytest.raises(BusSilentError), curve_bus.client(doomed_keys, heartbeat_timeout=0.5) as again:
        again.next(timeout=5)


def test_a_key_allowed_while_running_is_admitted_without_restart(curve_bus: CurveBus) -> None:
    late = curve_bus.keys("late", "control")  # written after the bus started
    reply = raw_request(curve_bus.bus.control_endpoint, late, "status", 5000)
    assert reply is not None
    assert reply["result"]["curve"] is True
    assert curve_bus.bus.stats.rebinds == 0  # adding a key needs no re-bind


def test_a_revoked_control_key_is_refused_at_once_and_the_others_keep_their_connection(
    curve_bus: CurveBus,
) -> None:
    doomed_keys = curve_bus.keys("doomed-counter", "control")
    kept_keys = curve_bus.keys("kept-counter", "control")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    socks = {}
    for name, keys in (("doomed", doomed_keys), ("kept", kept_keys)):
        sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        keys.apply(sock)
        sock.connect(curve_bus.bus.control_endpoint)
        socks[name] = sock

    def ask(name: str, cmd: str) -> dict[str, Any]:
        socks[name].send_multipart([b"", json.dumps({"id": cmd, "cmd": cmd, "args": {}}).encode()])
        assert socks[name].poll(5000), f"{name}: no answer to {cmd}"
        reply: dict[str, Any] = json.loads(socks[name].recv_multipart()[-1])
        return reply

    try:
        assert ask("doomed", "points.redeem")["ok"] is True
        assert ask("kept", "points.redeem")["ok"] is True
        Allowlist(allowlist_dir(curve_bus.curve_dir)).revoke("doomed-counter")
        revoked_at = time.monotonic()
        while ask("doomed", "points.redeem")["ok"]:  # refused within the allowlist's poll interval
            assert time.monotonic() - revoked_at < 2.0, "the revoked key still commands after 2 s"
        assert ask("doomed", "points.redeem")["error"]["code"] == "forbidden"
        assert ask("kept", "points.redeem")["ok"] is True  # same connection, never cut
    finally:
        for sock in socks.values():
            sock.close()
