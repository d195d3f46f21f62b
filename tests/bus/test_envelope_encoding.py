"""The envelope's JSON, written out member by member for speed, is byte for byte what encoding
``public_dict()`` / ``private_dict()`` gives, for every shape an event takes; the batch ids are real
version 4 UUIDs. No sockets: pure functions (well under 0.1 s)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from readerd import events as ev


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


EVENTS = [
    ev.heartbeat(uptime_s=1.5, readers=2),
    ev.Event(ev.EventType.CARD_IDENTIFIED, "ACS ACR1252 00", {"kind": "jpki", "name": "山田"}, {"serial": 7}),
    ev.Event("plugin.points.done", None, {"nested": {"a": [1, 2.5, None, True]}}, cause="abc", replayed=True),
    ev.Event("card.removed", 'quote " and \\ and \u2028 and \x01', {}),
    ev.plugin_result("checkin", "ok", {"n": 1}, "Sim 00", cause='c"1'),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: str(e.type))
def test_the_envelope_json_is_the_dict_encoded(event: ev.Event) -> None:
    envelope = ev.stamp(event, seq=42, run_id="run-\u00e9", kiosk='lib "1"')
    assert envelope.public_json() == _dumps(envelope.public_dict())
    assert envelope.private_json() == _dumps(envelope.private_dict())
    assert ev.Envelope.from_json(envelope.private_json()) == envelope


def test_batch_ids_are_distinct_version_4_uuids() -> None:
    ids = ev.new_ids(300)
    assert len(set(ids)) == 300
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_a_given_ts_and_id_are_used_as_they_are() -> None:
    envelope = ev.stamp(EVENTS[0], seq=1, run_id="r", kiosk="k", ts="2026-01-02T03:04:05.678Z", id="x-1")
    assert (envelope.ts, envelope.id) == ("2026-01-02T03:04:05.678Z", "x-1")
    assert ev.utc_ts().endswith("Z")
