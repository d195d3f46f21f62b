"""The plugin host's cursors (DESIGN decision 2): the last feed seq each plugin was given is kept in the
store, and at the next start events a plugin was never given are detected, reported once, and shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from readerd.config import Config, PluginsConfig
from readerd.errors import StoreUnavailableError
from readerd.hookspecs import hookimpl
from readerd.plugin_api import PluginContext, PluginEvent
from readerd.plugin_host import BUILTIN, PluginHost
from readerd.store import Store
from tests.store.conftest import FAST
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        self.seqs.append(event.seq)
        context.publish("seen", {"pseudonym": event.data["pseudonym"]}, reader=event.reader)


class Raiser:
    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        raise RuntimeError("plugin bug")


def config(state_dir: Path, *, disabled: tuple[str, ...] = ()) -> Config:
    """Only the test's plugin: the built-in ones would report their own misses."""
    return sim_config(state_dir, plugins=PluginsConfig(autoload=False, disabled=(*BUILTIN, *disabled)))


def run_and_tap(state_dir: Path, card: str | None, *, disabled: tuple[str, ...] = ()) -> dict[str, Any]:
    """One daemon run (a recorder plugin unless disabled), one tap; what the run saw and reported."""
    recorder = Recorder()
    with running_daemon(config(state_dir, disabled=disabled), plugins={"recorder": recorder}) as d:
        identified = None
        if card is not None:
            with d.subscriber("card.identified", "plugin.recorder.") as sub:
                d.tap(card, hold=False)
                identified = sub.until(lambda e: e["type"] == "card.identified")[-1]
                if "recorder" not in disabled:
                    sub.until(lambda e: e["type"] == "plugin.recorder.seen")
        plugins_status = d.request("plugins")["result"]
        since = d.request("events.since", {"seq": 0})["result"]["events"]
        run_id = d.request("status")["result"]["run_id"]
    info = next((p for p in plugins_status["plugins"] if p["name"] == "recorder"), None)
    return {
        "identified": identified,
        "recorder": recorder,
        "info": info,
        "feed_gaps": plugins_status["feed_gaps"],
        "missed_errors": [
            e["data"]
            for e in since
            if e["type"] == "plugin.error" and e["data"]["error"] == "events_missed" and e["run_id"] == run_id
        ],
    }


def test_gap_detection_after_a_host_restart(tmp_path: Path) -> None:
    first = run_and_tap(tmp_path, "alice")
    assert first["identified"] is not None
    assert first["recorder"].seqs == [first["identified"]["seq"]]
    assert first["info"]["missed"] == []

    # A clean restart: nothing the recorder wanted was missed (its own in-flight result does not count).
    clean = run_and_tap(tmp_path, None)
    assert clean["info"]["missed"] == []
    assert clean["feed_gaps"] == []
    assert clean["missed_errors"] == []

    # A run without the plugin: bob's tap never reaches it.
    without = run_and_tap(tmp_path, "bob", disabled=("recorder",))
    assert without["info"] is None
    bob_seq = without["identified"]["seq"]
    assert bob_seq > first["identified"]["seq"]  # seq continues across restarts (the event log)

    back = run_and_tap(tmp_path, "carol")
    assert back["info"]["missed"] == [[bob_seq, bob_seq]]  # only what it would have been given
    assert back["feed_gaps"] == [[bob_seq, bob_seq]]
    assert [(e["plugin"], e["hook"], e["quarantined"]) for e in back["missed_errors"]] == [
        ("recorder", "feed", False)
    ]
    assert f"seq {bob_seq}..{bob_seq}" in back["missed_errors"][0]["message"]
    assert back["recorder"].seqs == [back["identified"]["seq"]]  # not replayed (docs/architecture.md)

    again = run_and_tap(tmp_path, None)  # reported once, not at every start
    assert again["info"]["missed"] == []
    assert again["missed_errors"] == []

    with Store.open(FAST, tmp_path) as store:
        assert store.read_cursors()["recorder"] >= back["identified"]["seq"]


# --- the host alone: cursors without the event log ----------------------------------------------------
def envelope(seq: int, event_type: str = "card.identified", run_id: str = "run-1") -> dict[str, Any]:
    return {
        "v": 1,
        "seq": seq,
        "run_id": run_id,
        "id": f"event-{seq}",
        "ts": "2026-01-01T00:00:00Z",
        "kiosk": "k",
        "reader": "R",
        "type": event_type,
        "data": {"pseudonym": f"p{seq}"} if event_type == "card.identified" else {},
    }


def host_on(
    store: Store,
    reports: list[tuple[Any, ...]],
    history: Callable[[int, int], list[tuple[int, str]] | None] | None = None,
    **plugins: object,
) -> PluginHost:
    host = PluginHost(
        PluginsConfig(autoload=False, quarantine_after=1, disabled=tuple(BUILTIN)),
        kiosk="k",
        publish=lambda *_a: None,
        report=lambda *a: reports.append(a),
        store=store,
        plugins=plugins,
        history=history,
    )
    host.load()
    return host


def test_cursors_without_history_count_the_whole_range(tmp_path: Path) -> None:
    """No event log (a host in its own process, for now): every seq after the cursor counts; a
    quarantined plugin's cursor stops where it failed."""
    reports: list[tuple[Any, ...]] = []
    with Store.open(FAST, tmp_path) as store:
        host = host_on(store, reports, raiser=Raiser(), recorder=Recorder())
        for seq in (1, 2, 3):
            host.dispatch(envelope(seq))
        host.dispatch(envelope(4, "card.removed"))  # handled by no hook: moves the cursor, written later
        assert store.read_cursors() == {"raiser": 0, "recorder": 3}
        host.flush_cursors()  # what the feed thread does when idle and at stop
        assert store.read_cursors() == {"raiser": 0, "recorder": 4}
        assert host.plugins["raiser"].quarantined

        reports.clear()
        restarted = host_on(store, reports, raiser=Raiser(), recorder=Recorder())
        assert {n: p.cursor for n, p in restarted.plugins.items()} == {"raiser": 0, "recorder": 4}
        restarted.dispatch(envelope(9, "heartbeat", run_id="run-2"))  # seqs 5..9 went by unseen
        assert restarted.plugins["raiser"].missed == [(1, 9)]
        assert restarted.plugins["recorder"].missed == [(5, 9)]
        assert restarted.gaps == [(1, 9)]
        assert [(r[0], r[1], r[2], r[4]) for r in reports] == [
            ("raiser", "feed", "events_missed", False),
            ("recorder", "feed", "events_missed", False),
        ]
        assert store.read_cursors() == {"raiser": 9, "recorder": 9}


def test_a_feed_behind_the_cursor_is_not_a_gap(tmp_path: Path) -> None:
    """The event log was removed: seq starts again at 1. Warned, cursors reset, nothing reported."""
    reports: list[tuple[Any, ...]] = []
    with Store.open(FAST, tmp_path) as store:
        store.write_cursors({"recorder": 50}, "old-run")
        host = host_on(store, reports, recorder=Recorder())
        with structlog.testing.capture_logs() as logs:
            host.dispatch(envelope(1))
        assert host.plugins["recorder"].missed == []
        assert reports == []
        assert any(e["event"] == "the feed is behind a plugin's cursor (event log removed?)" for e in logs)
        assert store.read_cursors() == {"recorder": 1}


def test_a_new_plugin_has_nothing_to_catch_up(tmp_path: Path) -> None:
    reports: list[tuple[Any, ...]] = []
    with Store.open(FAST, tmp_path) as store:
        host = host_on(store, reports, recorder=Recorder())
        host.dispatch(envelope(120, "heartbeat"))
        assert host.plugins["recorder"].missed == []
        assert reports == []
        assert store.read_cursors() == {"recorder": 120}


def test_a_failing_check_does_not_keep_events_from_the_plugins(tmp_path: Path) -> None:
    def broken(after: int, upto: int) -> list[tuple[int, str]] | None:
        raise StoreUnavailableError("event log unreadable")

    recorder = Recorder()
    with Store.open(FAST, tmp_path) as store:
        store.write_cursors({"recorder": 1}, "old-run")
        host = host_on(store, [], broken, recorder=recorder)
        with structlog.testing.capture_logs() as logs:
            host.dispatch(envelope(5))
            host.dispatch(envelope(6))
        assert recorder.seqs == [5, 6]
        assert [e["event"] for e in logs].count("plugin cursor check failed") == 1
