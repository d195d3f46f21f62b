"""``plugin.handled``, screen texts and ``[plugins.routing]`` in the plugin host itself: no daemon, no
bus. :class:`Feed` plays the bus as the host sees it (what the host publishes gets the next seq and
comes back on its feed in order), so each step of a tap's cascade can be looked at. One test runs the
split host (``readerd plugins``) against a real daemon for the same event over its link.

Cost: about 2 s (the split-host test: a daemon on the sim backend, about 1.5 s; the rest well under a
second)."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from readerd.config import PluginsConfig
from readerd.errors import ConfigError
from readerd.events import Envelope, Event, stamp
from readerd.plugin import Level, ResultSpec, ScreenText
from readerd.plugin.api import EventInterest, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import HANDLED, SETTLE_TIMEOUT, PluginHost
from readerd.plugin.split_host import SplitHost
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)

ADMIT = ResultSpec(
    frozenset({"status", "count", "capacity"}),
    {
        "accepted": (
            ScreenText(Level.SUCCESS, "受付しました {count}/{capacity}", "Checked in {count}/{capacity}"),
            ScreenText(Level.SUCCESS, "受付しました", "Checked in"),
        ),
        "not_enrolled": ScreenText(
            Level.REFUSAL, "カードの登録が必要です", "This card needs to be registered"
        ),
    },
)


class Door:
    """Admits enrolled cards (``count`` of ``capacity``), refuses the others: a check-in."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def readerd_result_fields(self) -> dict[str, ResultSpec]:
        return {"result": ADMIT}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        self.seen.append(event.reader or "")
        if event.data.get("enrolled"):
            result = {"status": "accepted", "count": len(self.seen), "capacity": 100}
        else:
            result = {"status": "not_enrolled"}
        context.publish("result", result, reader=event.reader)


class Purse:
    """Credits points for an accepted ``plugin.door.result``: a result led to by another's result."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified", "plugin.door.result"}))

    @hookimpl
    def readerd_result_fields(self) -> dict[str, object]:
        text = ScreenText(
            Level.SUCCESS, "ポイント +{earned}（残高 {balance}）", "Points +{earned} (balance {balance})"
        )
        return {"earned": ResultSpec(frozenset({"earned", "balance"}), {"*": text})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        self.seen.append(f"card@{event.reader}")

    @hookimpl
    def readerd_plugin_result(self, event: PluginEvent, context: PluginContext) -> None:
        self.seen.append(f"{event.type}@{event.reader}")
        if event.data.get("status") == "accepted":
            context.publish("earned", {"earned": 10, "balance": 60}, reader=event.reader)


class Plain:
    """The old declaration: a dict of field sets, no texts."""

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"hello": frozenset({"n"})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        context.publish("hello", {"n": 1}, reader=event.reader)


class Feed:
    """The bus as the host sees it: every event the host publishes gets the next seq and comes back on
    the feed, in order; ``drop`` loses the next result of that type (a bus that dropped it)."""

    def __init__(self) -> None:
        self.seq = 0
        self.queue: deque[Envelope] = deque()
        self.published: list[Envelope] = []
        self.drop: set[str] = set()

    def publish(self, event: Event) -> None:
        envelope = self.stamp(event)
        self.published.append(envelope)
        if envelope.topic in self.drop:
            self.drop.discard(envelope.topic)
            return
        self.queue.append(envelope)

    def stamp(self, event: Event) -> Envelope:
        self.seq += 1
        return stamp(event, seq=self.seq, run_id="run", kiosk="test")

    def tap(self, host: PluginHost, reader: str = "R1", *, enrolled: bool = True) -> Envelope:
        data = {"kind": "jpki", "pseudonym": "P", "enrolled": enrolled, "repeat": False}
        tap = self.stamp(Event("card.identified", reader, data))
        host.dispatch(tap)
        return tap

    def step(self, host: PluginHost) -> Envelope:
        envelope = self.queue.popleft()
        host.dispatch(envelope)
        return envelope

    def settle(self, host: PluginHost) -> None:
        while self.queue:
            self.step(host)

    def handled(self) -> list[Envelope]:
        return [e for e in self.published if e.topic == HANDLED]

    def results(self, prefix: str = "plugin.") -> list[Envelope]:
        return [e for e in self.published if e.topic.startswith(prefix) and e.topic != HANDLED]


def make_host(
    feed: Feed, plugins: dict[str, object], config: PluginsConfig | None = None, **kw: Any
) -> PluginHost:
    host = PluginHost(
        config or PluginsConfig(autoload=False), kiosk="test", publish=feed.publish, plugins=plugins, **kw
    )
    host.load()
    return host


def test_handled_waits_for_the_results_a_result_leads_to() -> None:
    feed = Feed()
    host = make_host(feed, {"door": Door(), "purse": Purse(), "plain": Plain()})
    tap = feed.tap(host)
    assert feed.handled() == []  # door's and plain's results are on their way
    door_result = feed.step(host)
    assert door_result.topic == "plugin.door.result"
    feed.step(host)  # plain's
    assert feed.handled() == []  # purse published for door's result: still on its way
    earned = feed.step(host)
    assert earned.topic == "plugin.purse.earned"
    assert earned.event.cause == door_result.id  # its cause is the result it answered, not the tap
    handled = feed.handled()
    assert len(handled) == 1
    assert handled[0].event.cause == tap.id
    assert handled[0].event.reader == "R1"
    assert handled[0].seq > earned.seq  # after every result of the cascade
    data = handled[0].event.data
    assert data["settled"] is True
    assert data["plugins"] == ["door", "purse", "plain"]
    listed = [(r["type"], r.get("status"), r.get("level")) for r in data["results"]]
    assert listed == [
        ("plugin.door.result", "accepted", "success"),
        ("plugin.plain.hello", None, None),
        ("plugin.purse.earned", None, "success"),
    ]
    assert [r["id"] for r in data["results"]] == [door_result.id, feed.results()[1].id, earned.id]
    feed.settle(host)
    assert len(feed.handled()) == 1  # once


def test_results_carry_their_words_with_their_numbers() -> None:
    feed = Feed()
    host = make_host(feed, {"door": Door(), "purse": Purse(), "plain": Plain()})
    feed.tap(host)
    feed.settle(host)
    door, plain, purse = feed.results()
    assert door.event.data["screen"] == {
        "level": "success",
        "ja": "受付しました 1/100",
        "en": "Checked in 1/100",
    }
    assert purse.event.data["screen"] == {
        "level": "success",
        "ja": "ポイント +10（残高 60）",
        "en": "Points +10 (balance 60)",
    }
    assert plain.event.data == {"n": 1}  # the old declaration still works: its fields, no words
    feed.tap(host, enrolled=False)
    feed.settle(host)
    refused = feed.results("plugin.door.")[-1]
    assert refused.event.data["screen"]["ja"] == "カードの登録が必要です"
    assert refused.event.data["screen"]["level"] == "refusal"
    assert host.status()["quarantined"] == []
    door_info = next(p for p in host.status()["plugins"] if p["name"] == "door")
    assert door_info["screen_texts"] == {"result": ["accepted", "not_enrolled"]}  # readerctl plugins


def test_a_missing_number_falls_back_to_the_next_text() -> None:
    assert ADMIT.render({"status": "accepted", "count": 3})["ja"] == "受付しました"  # type: ignore[index]
    assert ADMIT.render({"status": "closed"}) is None  # a status without words shows nothing
    offline = ScreenText(
        Level.SUCCESS, "受付しました（オフライン）", "Checked in (offline)", frozenset({"offline"})
    )
    spec = ResultSpec(
        frozenset({"status", "offline"}), {"*": (offline, ScreenText(Level.INFO, "済", "done"))}
    )
    assert spec.problems() == []
    assert spec.render({"status": "x", "offline": True}) == {
        "level": "success",
        "ja": "受付しました（オフライン）",
        "en": "Checked in (offline)",
    }
    assert spec.render({"status": "x", "offline": False})["en"] == "done"  # type: ignore[index]


class BadTemplate:
    def __init__(self, texts: dict[str, object]) -> None:
        self.texts = texts
        self.started = False

    @hookimpl
    def readerd_result_fields(self) -> dict[str, object]:
        return {"result": ResultSpec(frozenset({"status"}), self.texts)}  # type: ignore[arg-type]

    @hookimpl
    def readerd_startup(self) -> None:
        self.started = True


@pytest.mark.parametrize(
    ("texts", "why"),
    [
        ({"ok": ScreenText(Level.SUCCESS, "{count} 人", "{count}")}, "count not among the fields"),
        ({"ok": ScreenText(Level.SUCCESS, "{status!r}", "x")}, "only {field}"),
        ({"ok": ScreenText(Level.SUCCESS, "{status", "x")}, "status"),
        ({"ok": ScreenText("loud", "a", "b")}, "not a ScreenText with a Level"),  # type: ignore[arg-type]
        ({"ok": "受付しました"}, "not a ScreenText"),
    ],
)
def test_a_bad_template_quarantines_at_load(texts: dict[str, object], why: str) -> None:
    feed = Feed()
    plugin = BadTemplate(texts)
    host = make_host(feed, {"bad": plugin})
    info = host.status()
    assert info["quarantined"] == ["bad"]
    assert "bad_result" in info["plugins"][0]["quarantined"]
    assert why in info["plugins"][0]["quarantined"]
    assert not plugin.started  # checked before its start, like a malformed declaration


def test_routing_keeps_a_plugin_off_a_reader_and_its_screen() -> None:
    feed = Feed()
    door, purse = Door(), Purse()
    config = PluginsConfig(autoload=False, routing={"R1": ["door"]})
    host = make_host(feed, {"door": door, "purse": purse}, config)
    tap = feed.tap(host, "R1")
    feed.settle(host)
    assert purse.seen == []  # neither R1's card events nor R1's results
    handled = feed.handled()[-1]
    assert handled.event.cause == tap.id
    assert handled.event.data["plugins"] == ["door"]
    assert [r["type"] for r in handled.event.data["results"]] == ["plugin.door.result"]
    feed.tap(host, "R2")  # a reader routing does not list: every plugin
    feed.settle(host)
    assert purse.seen == ["card@R2", "plugin.door.result@R2"]
    assert feed.handled()[-1].event.data["plugins"] == ["door", "purse"]


def test_routing_naming_no_loaded_plugin_stops_the_start() -> None:
    config = PluginsConfig(autoload=False, routing={"R1": ["door", "dorr", "ghost"]})
    with pytest.raises(ConfigError, match="dorr, ghost"):
        make_host(Feed(), {"door": Door()}, config)
    with pytest.raises(ConfigError, match="expected a list"):
        PluginsConfig(routing={"R1": "door"}).validate()  # type: ignore[dict-item]


def test_no_plugin_may_be_named_routing() -> None:
    host = make_host(Feed(), {"routing": Door()})
    assert "routing" in host.rejected
    assert "reserved" in host.rejected["routing"]


def test_a_tap_nobody_handles_is_handled_at_once_and_a_replay_never() -> None:
    feed = Feed()
    host = make_host(feed, {})
    tap = feed.tap(host)
    assert [h.event.cause for h in feed.handled()] == [tap.id]
    assert feed.handled()[0].event.data == {"plugins": [], "results": [], "settled": True}
    feed2 = Feed()
    host2 = make_host(feed2, {"door": Door()})
    host2.dispatch(feed2.stamp(Event("card.identified", "R1", {"enrolled": True})), replayed=True)
    feed2.settle(host2)
    assert [e.topic for e in feed2.published] == ["plugin.door.result"]  # acted on, no plugin.handled
    assert feed2.published[0].event.replayed


def test_a_result_the_bus_lost_is_settled_after_the_timeout() -> None:
    now = [100.0]
    feed = Feed()
    feed.drop.add("plugin.door.result")
    host = make_host(feed, {"door": Door()}, clock=lambda: now[0])
    tap = feed.tap(host)
    feed.settle(host)
    assert feed.handled() == []  # still waiting for door's result
    now[0] += SETTLE_TIMEOUT + 0.1
    host.dispatch(feed.stamp(Event("heartbeat", None, {})))
    handled = feed.handled()
    assert [h.event.cause for h in handled] == [tap.id]
    assert handled[0].event.data["settled"] is False
    assert handled[0].event.data["plugins"] == ["door"]


def test_the_split_host_says_handled_through_the_daemon(tmp_path: Path) -> None:
    config = sim_config(tmp_path, plugins=PluginsConfig(enabled=False, autoload=False))
    with running_daemon(config) as d, d.subscriber() as sub:
        host = SplitHost(config, plugins={"door": Door()})
        thread = threading.Thread(target=host.run, daemon=True)
        thread.start()
        try:
            assert host.ready.wait(10), "the split host did not start"
            d.tap("alice", hold=False)
            tap = sub.until(lambda e: e["type"] == "card.identified")[-1]
            events = sub.until(lambda e: e["type"] == HANDLED)
        finally:
            host.stop_event.set()
            thread.join(10)
    result = next(e for e in events if e["type"] == "plugin.door.result")
    handled = events[-1]
    assert result["cause"] == tap["id"]
    assert result["data"]["screen"]["level"] in ("success", "refusal")
    assert handled["cause"] == tap["id"]
    assert handled["seq"] > result["seq"]
    assert handled["data"]["plugins"] == ["door"]
    assert [r["id"] for r in handled["data"]["results"]] == [result["id"]]
