"""The plugin host's cursors (docs/design.md D2): the last feed seq each plugin was given is kept in the
store, and at the next start events a plugin was never given are detected, reported once, and shown."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from readerd.bus.eventlog import EventLog
from readerd.config import Config, PluginsConfig
from readerd.errors import StoreUnavailableError
from readerd.events import Event, stamp
from readerd.plugin.api import EventInterest, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import PluginHost
from readerd.plugin.loader import BUILTIN
from readerd.plugin.replay import Backlog, BacklogSource, log_backlog
from readerd.plugin.store import Store
from tests.store.conftest import FAST
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.replayed: list[int] = []

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        self.seqs.append(event.seq)
        if event.replayed:
            self.replayed.append(event.seq)
        context.publish("seen", {"pseudonym": event.data["pseudonym"]}, reader=event.reader)

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"seen": frozenset({"pseudonym"})}


class Raiser:
    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        raise RuntimeError("plugin bug")


def config(state_dir: Path, *, disabled: tuple[str, ...] = (), replay_window: float = 600.0) -> Config:
    """Only the test's plugin: the built-in ones would report their own misses."""
    plugins = PluginsConfig(autoload=False, disabled=(*BUILTIN, *disabled), replay_window=replay_window)
    return sim_config(state_dir, plugins=plugins)


def run_and_tap(
    state_dir: Path, card: str | None, *, disabled: tuple[str, ...] = (), replay_window: float = 600.0
) -> dict[str, Any]:
    """One daemon run (a recorder plugin unless disabled), one tap; what the run saw and reported."""
    recorder = Recorder()
    run_config = config(state_dir, disabled=disabled, replay_window=replay_window)
    with running_daemon(run_config, plugins={"recorder": recorder}) as d:
        identified = seen = None
        if card is not None:
            with d.subscriber("card.identified", "plugin.recorder.") as sub:
                d.tap(card, hold=False)
                identified = sub.until(lambda e: e["type"] == "card.identified")[-1]
                if "recorder" not in disabled:
                    seen = sub.until(lambda e: e["type"] == "plugin.recorder.seen" and "replayed" not in e)[
                        -1
                    ]
        plugins_status = d.request("plugins")["result"]
        since = d.request("events.since", {"seq": 0})["result"]["events"]
        run_id = d.request("status")["result"]["run_id"]
    info = next((p for p in plugins_status["plugins"] if p["name"] == "recorder"), None)
    return {
        "identified": identified,
        "seen": seen,
        "recorder": recorder,
        "info": info,
        "feed_gaps": plugins_status["feed_gaps"],
        "replayed_results": [
            (e["data"], e["cause"])
            for e in since
            if e["type"] == "plugin.recorder.seen" and e["run_id"] == run_id and e.get("replayed")
        ],
        "missed_errors": [
            e["data"]
            for e in since
            if e["type"] == "plugin.error" and e["data"]["error"] == "events_missed" and e["run_id"] == run_id
        ],
    }


def test_what_a_run_without_the_plugin_logged_is_replayed_at_the_next_start(tmp_path: Path) -> None:
    """docs/design.md D2 (at least once): the event log still holds bob's tap, within the replay window."""
    first = run_and_tap(tmp_path, "alice")
    without = run_and_tap(tmp_path, "bob", disabled=("recorder",))
    bob = without["identified"]
    back = run_and_tap(tmp_path, "carol")
    assert back["recorder"].seqs == [bob["seq"], back["identified"]["seq"]]
    assert back["recorder"].replayed == [bob["seq"]]
    assert back["replayed_results"] == [({"pseudonym": bob["data"]["pseudonym"]}, bob["id"])]
    assert back["seen"]["cause"] == back["identified"]["id"]  # a live result names its tap too
    assert back["info"]["replayed"] == 1
    assert back["info"]["missed"] == []
    assert back["missed_errors"] == []
    assert back["feed_gaps"] == []
    assert first["recorder"].replayed == []
    again = run_and_tap(tmp_path, None)  # replayed once, not at every start
    assert again["recorder"].seqs == []
    assert again["info"]["replayed"] == 0


def test_gap_detection_after_a_host_restart(tmp_path: Path) -> None:
    """With ``replay_window = 0`` (or events older than the window) missed events are reported."""
    first = run_and_tap(tmp_path, "alice", replay_window=0)
    assert first["identified"] is not None
    assert first["recorder"].seqs == [first["identified"]["seq"]]
    assert first["info"]["missed"] == []

    # A clean restart: nothing the recorder wanted was missed (its own in-flight result does not count).
    clean = run_and_tap(tmp_path, None, replay_window=0)
    assert clean["info"]["missed"] == []
    assert clean["feed_gaps"] == []
    assert clean["missed_errors"] == []

    # A run without the plugin: bob's tap never reaches it.
    without = run_and_tap(tmp_path, "bob", disabled=("recorder",), replay_window=0)
    assert without["info"] is None
    bob_seq = without["identified"]["seq"]
    assert bob_seq > first["identified"]["seq"]  # seq continues across restarts (the event log)

    back = run_and_tap(tmp_path, "carol", replay_window=0)
    assert back["info"]["missed"] == [[bob_seq, bob_seq]]  # only what it would have been given
    assert back["feed_gaps"] == [[bob_seq, bob_seq]]
    assert [(e["plugin"], e["hook"], e["quarantined"]) for e in back["missed_errors"]] == [
        ("recorder", "feed", False)
    ]
    assert f"seq {bob_seq}..{bob_seq}" in back["missed_errors"][0]["message"]
    assert back["recorder"].seqs == [back["identified"]["seq"]]  # not replayed: outside the window

    again = run_and_tap(tmp_path, None, replay_window=0)  # reported once, not at every start
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
    backlog: BacklogSource | None = None,
    *,
    replay_window: float = 600.0,
    **plugins: object,
) -> PluginHost:
    host = PluginHost(
        PluginsConfig(
            autoload=False, quarantine_after=1, disabled=tuple(BUILTIN), replay_window=replay_window
        ),
        kiosk="k",
        publish=lambda _result: None,
        report=lambda *a: reports.append(a),
        store=store,
        plugins=plugins,
        backlog=backlog,
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
    def broken(after: int, upto: int, newer_than: float) -> Backlog | None:
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


# --- replay from the event log at a start ---------------------------------------------------------------
class Privy(Recorder):
    """Asks for the FeliCa IDm: a replayed event carries the private fields the log kept."""

    def __init__(self) -> None:
        super().__init__()
        self.idms: list[object] = []

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified"}), private=frozenset({"idm"}))

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        super().readerd_card_identified(event, context)
        self.idms.append(event.private.get("idm"))


def logged(log: EventLog, ages: dict[int, float]) -> None:
    """Card events with these seqs, logged ``ages[seq]`` seconds ago (odd seqs identified, even removed)."""
    now = datetime.now(UTC)
    log.append(
        [
            stamp(
                Event(
                    "card.identified" if seq % 2 else "card.removed",
                    "R",
                    {"pseudonym": f"p{seq}"},
                    {"idm": f"idm{seq}", "serial": "42"} if seq % 2 else {},
                ),
                seq=seq,
                run_id="crashed-run",
                kiosk="k",
                now=now - timedelta(seconds=age),
            )
            for seq, age in ages.items()
        ]
    )


def test_a_start_replays_the_recent_backlog_to_each_plugin_from_its_own_cursor(tmp_path: Path) -> None:
    """A crash left recorder at seq 1 and privy at seq 5: the log holds 1..9, seqs 1..3 older than the
    window. Each gets, in order and marked replayed, only the recent events after its own cursor, with
    the private fields it asked for (never the certificate's, which the log does not keep); the older
    ones are reported missed. Its results while replaying say ``replayed``; live ones do not."""
    log = EventLog(tmp_path / "events.db")
    logged(log, {1: 7200, 2: 7200, 3: 3600, 4: 300, 5: 200, 6: 100, 7: 50, 8: 20, 9: 10})
    reports: list[tuple[Any, ...]] = []
    published: list[Event] = []
    recorder, privy = Recorder(), Privy()
    with Store.open(FAST, tmp_path) as store:
        store.write_cursors({"recorder": 1, "privy": 5}, "crashed-run")
        host = PluginHost(
            PluginsConfig(
                autoload=False,
                disabled=tuple(BUILTIN),
                replay_window=600,
                sections={"privy": {"grants": ["idm"]}},
            ),
            kiosk="k",
            publish=published.append,
            report=lambda *a: reports.append(a),
            store=store,
            plugins={"recorder": recorder, "privy": privy},
            backlog=log_backlog(log),
        )
        host.load()
        host.dispatch(envelope(10, run_id="new-run"))  # the first live event after the restart
        cursors = store.read_cursors()
    assert recorder.seqs == [5, 7, 9, 10]
    assert recorder.replayed == [5, 7, 9]
    assert privy.seqs == [7, 9, 10]
    assert privy.replayed == [7, 9]
    assert privy.idms == ["idm7", "idm9", None]  # the live envelope here has no private fields
    assert host.plugins["recorder"].missed == [(3, 3)]  # older than the window: seq 3 (2 is no hook's)
    assert host.plugins["privy"].missed == []
    assert [(r[0], r[2]) for r in reports] == [("recorder", "events_missed")]
    assert (host.plugins["recorder"].replayed, host.plugins["privy"].replayed) == (3, 2)
    ids = {seq: str(e["id"]) for seq, e in enumerate(logged_envelopes(log), start=1)}
    ids[10] = "event-10"
    seen = [(str(e.type), e.data["pseudonym"], e.cause, e.replayed) for e in published]
    assert seen == [
        ("plugin.recorder.seen", "p5", ids[5], True),
        ("plugin.recorder.seen", "p7", ids[7], True),
        ("plugin.privy.seen", "p7", ids[7], True),
        ("plugin.recorder.seen", "p9", ids[9], True),
        ("plugin.privy.seen", "p9", ids[9], True),
        ("plugin.recorder.seen", "p10", "event-10", False),
        ("plugin.privy.seen", "p10", "event-10", False),
    ]
    assert cursors == {"recorder": 10, "privy": 10}
    log.close()


def logged_envelopes(log: EventLog) -> list[dict[str, Any]]:
    return log.since(0, limit=100).events


def test_no_replay_when_the_window_is_zero_or_the_log_was_pruned(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", max_events=2)
    logged(log, {1: 30, 2: 20, 3: 10})
    log.prune()  # holds 2..3 now: 1 is gone
    for window in (600.0, 0.0):
        recorder, reports = Recorder(), list[tuple[Any, ...]]()
        (tmp_path / str(window)).mkdir()
        with Store.open(FAST, tmp_path / str(window)) as store:
            store.write_cursors({"recorder": 0}, "crashed-run")
            host = host_on(store, reports, log_backlog(log), replay_window=window, recorder=recorder)
            host.dispatch(envelope(4, run_id="new-run"))
        assert recorder.seqs == [4], window
        assert host.plugins["recorder"].missed == [(1, 3)], window  # the whole range: the log lost 1
    log.close()


def test_only_what_the_hook_itself_publishes_names_the_event_as_its_cause(tmp_path: Path) -> None:
    """A command handler of the same plugin publishing while its hook runs (a redemption at the
    counter during a tap) is not that tap's result: no ``cause``, never ``replayed``."""
    inside, outside_done = threading.Event(), threading.Event()
    published: list[Event] = []

    class Slow:
        context: PluginContext | None = None

        @hookimpl
        def readerd_startup(self, context: PluginContext) -> None:
            self.context = context

        @hookimpl
        def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
            inside.set()
            assert outside_done.wait(10)
            context.publish("seen", {})

    slow = Slow()

    def command_thread() -> None:
        assert inside.wait(10)
        assert slow.context is not None
        slow.context.publish("redeemed", {})
        outside_done.set()

    with Store.open(FAST, tmp_path) as store:
        host = PluginHost(
            PluginsConfig(autoload=False, disabled=tuple(BUILTIN)),
            kiosk="k",
            publish=published.append,
            store=store,
            plugins={"slow": slow},
        )
        host.load()
        worker = threading.Thread(target=command_thread)
        worker.start()
        host.dispatch(envelope(1))
        worker.join(10)
    assert [(str(e.type), e.cause, e.replayed) for e in published] == [
        ("plugin.slow.redeemed", None, False),
        ("plugin.slow.seen", "event-1", False),
    ]
