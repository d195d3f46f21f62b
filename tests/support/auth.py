"""What the authentication tests share: reading a virtual card's APDU record, and control replies."""

from __future__ import annotations

from typing import Any

from simulators.mynumber import VirtualMyNumberCard
from tests.support.daemon import RunningDaemon, Subscriber

READER = "Sim 00"


def pin_verifies(card: VirtualMyNumberCard) -> int:
    """VERIFY commands that carried a PIN (``00 20 00 80 04 …``), not the bare tries query."""
    return sum(1 for r in card.log if r.raw[1] == 0x20 and len(r.raw) > 5)


def tries_queries(card: VirtualMyNumberCard) -> int:
    return sum(1 for r in card.log if r.raw[1] == 0x20 and len(r.raw) == 4)


def tap(d: RunningDaemon, sub: Subscriber, card: str = "alice", **args: object) -> dict[str, Any]:
    d.tap(card, **args)
    return sub.until(lambda e: e["type"] in ("card.identified", "card.read_aborted"))[-1]


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


def error(reply: dict[str, Any]) -> dict[str, Any]:
    assert not reply["ok"], reply
    err: dict[str, Any] = reply["error"]
    return err
