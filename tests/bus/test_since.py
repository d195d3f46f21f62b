"""events.since on the control channel of a real daemon, and seq across daemon restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from readerd.cli.ctl import main as readerctl
from readerd.config import BusConfig
from tests.support.daemon import Envelope, running_daemon, sim_config


def _tap_done() -> Callable[[Envelope], bool]:
    """True once a tap's card is off the reader and the plugin host said it handled the tap (in either
    order): the last events the tap makes."""
    seen: set[str] = set()

    def done(event: Envelope) -> bool:
        seen.add(str(event["type"]))
        return {"card.removed", "plugin.handled"} <= seen

    return done


def test_seq_is_persistent_across_restarts_and_run_id_changes(tmp_path: Path) -> None:
    config = sim_config(tmp_path)
    with running_daemon(config) as d, d.subscriber() as sub:
        d.tap("alice", hold=False)
        first = sub.until(_tap_done())
        beat = sub.next(heartbeats=True)
        while beat["type"] != "heartbeat":
            beat = sub.next(heartbeats=True)
    assert beat["seq"] == first[-1]["seq"]  # a heartbeat carries the current seq ...
    assert beat["run_id"] == first[-1]["run_id"]  # ... and the run
    with running_daemon(config) as d, d.subscriber() as sub:
        d.tap("bob")
        again = sub.next()
        replay = d.request("events.since", {"seq": first[-1]["seq"]})["result"]["events"]
    # The restarted daemon announced its readers first: they took the next seqs after the last logged.
    assert [e["seq"] for e in replay] == list(range(first[-1]["seq"] + 1, first[-1]["seq"] + 1 + len(replay)))
    assert again in replay
    assert [e["type"] for e in replay[:2]] == ["reader.added", "reader.added"]
    assert again["run_id"] != first[-1]["run_id"]
    assert {e["run_id"] for e in replay} == {again["run_id"]}


def test_events_since_replays_public_fields_in_order(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber() as sub:
        d.tap("alice", hold=False)
        d.tap("bob", hold=False)
        live = sub.until(lambda e: e["type"] == "card.removed" and e["seq"] > 4)
        start = live[0]["seq"] - 1
        reply = d.request("events.since", {"seq": start})
        limited = d.request("events.since", {"seq": start, "limit": 2})
        bad = d.request("events.since", {"seq": "x"})
    assert reply["ok"] is True
    result = reply["result"]
    assert result["events"][: len(live)] == live  # byte-for-byte the envelopes that went out live
    assert [e["seq"] for e in result["events"]] == list(range(start + 1, result["last_seq"] + 1))
    assert all("private" not in e for e in result["events"])
    assert result["more"] is False
    assert limited["result"]["more"] is True
    assert len(limited["result"]["events"]) == 2
    assert bad["error"]["code"] == "bad_request"


def test_events_older_than_retention_are_a_gap_unrecoverable(tmp_path: Path) -> None:
    bus = replace(sim_config(tmp_path).bus, log_max_events=3)
    config = sim_config(tmp_path, bus=bus)
    assert isinstance(config.bus, BusConfig)
    with running_daemon(config) as d, d.subscriber() as sub:
        d.tap("alice", hold=False)
        first = sub.until(_tap_done())
    # Pruning runs at open (and every few hundred appends): the restarted daemon holds the last 3.
    with running_daemon(config) as d:
        reply = d.request("events.since", {"seq": 0})
        last = d.request("status")["result"]["last_seq"]
    assert reply["ok"] is False
    assert reply["error"]["code"] == "gap_unrecoverable"
    # Pruned at open to the last 3 of the first run, then the second run's reader.added were appended.
    assert reply["error"]["details"] == {"oldest_seq": first[-1]["seq"] - 2}
    assert last == first[-1]["seq"] + 2


def test_readerctl_tail_since_replays_then_follows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber() as sub:
        d.tap("alice", hold=False)
        sub.until(lambda e: e["type"] == "card.removed")
        ctl = ["--control", d.control, "--publish", d.publish, "--json"]
        assert readerctl([*ctl, "tail", "--since", "0", "--count", "5"]) == 0
        assert (
            readerctl([*ctl, "tail", "--since", "2", "--count", "2", "card.identified", "card.removed"]) == 0
        )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["seq"] for e in lines[:5]] == [1, 2, 3, 4, 5]
    # the plugin host's plugin.handled for the tap may come before or after its card.removed
    assert [e["type"] for e in lines[:4]] == [
        "reader.added",
        "reader.added",
        "card.presented",
        "card.identified",
    ]
    assert lines[4]["type"] in ("card.removed", "plugin.handled")
    assert [e["type"] for e in lines[5:]] == ["card.identified", "card.removed"]
