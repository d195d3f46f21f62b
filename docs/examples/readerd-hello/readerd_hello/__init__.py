"""A readerd plugin that greets every identified card and counts its visits (docs/plugins.md)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from readerd.hookspecs import hookimpl
from readerd.plugin_api import Arg, ArgType, CommandSpec, PluginContext, PluginEvent

__version__ = "1.0.0"

visits: Counter[str] = Counter()


@hookimpl
def readerd_startup(context: PluginContext) -> None:
    visits.clear()
    context.log.info("hello plugin ready", greeting=context.config.get("greeting", "ようこそ"))


@hookimpl
def readerd_card_identified(event: PluginEvent, context: PluginContext) -> None:
    if event.data.get("repeat"):
        return  # the same card held again: not a new visit
    pseudonym = event.data["pseudonym"]
    visits[pseudonym] += 1
    greeting = context.config.get("greeting", "ようこそ")
    context.publish("greeting", {"message": greeting, "visits": visits[pseudonym]}, reader=event.reader)


def count(args: dict[str, Any]) -> dict[str, Any]:
    return {"visits": visits[args["pseudonym"]]}


@hookimpl
def readerd_commands(context: PluginContext) -> list[CommandSpec]:
    return [
        CommandSpec(
            "hello.visits",
            count,
            {"pseudonym": Arg(ArgType.STRING, help="the card's pseudonym")},
            help="how often a card was greeted",
        )
    ]
