"""Plugins cooperate through the bus: one plugin's results reach another that declared them, never the
plugin itself; a plugin given as a class gets an instance of its own per host."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from readerd.plugin.api import EventInterest, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from tests.support.daemon import running_daemon, sim_config


class Producer:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified", "plugin.producer.made"}))

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        context.publish("made", {"n": 1}, reader=event.reader)

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"made": frozenset({"n"})}

    @hookimpl
    def readerd_plugin_result(self, event: PluginEvent) -> None:
        self.seen.append(event.type)  # must stay empty: its own result


class Consumer:
    instances: ClassVar[list[Consumer]] = []

    def __init__(self) -> None:
        Consumer.instances.append(self)
        self.results: list[tuple[str, object]] = []

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"plugin.producer.made"}))

    @hookimpl
    def readerd_plugin_result(self, event: PluginEvent, context: PluginContext) -> None:
        self.results.append((event.type, event.data["n"]))
        context.publish("consumed", {"from": event.type}, reader=event.reader)

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"consumed": frozenset({"from"})}


def test_results_reach_the_plugins_that_declared_them(tmp_path: Path) -> None:
    producer = Producer()
    Consumer.instances.clear()
    plugins: dict[str, object] = {"producer": producer, "consumer": Consumer}
    with running_daemon(sim_config(tmp_path), plugins=plugins) as d, d.subscriber("plugin.") as sub:
        d.tap("alice")
        consumed = sub.until(lambda e: e["type"] == "plugin.consumer.consumed")[-1]
        gaps = d.request("plugins")["result"]["feed_gaps"]
    assert consumed["data"] == {"from": "plugin.producer.made"}
    assert len(Consumer.instances) == 1
    assert Consumer.instances[0].results == [("plugin.producer.made", 1)]
    assert producer.seen == []
    assert gaps == []  # plugin results are part of the feed's seq: no false gap
