"""A readerd plugin that greets every identified card and counts its visits (docs/plugins.md)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from readerd.plugin import (
    Arg,
    ArgType,
    CommandSpec,
    MigrationContext,
    PluginContext,
    PluginEvent,
    PluginStore,
    hookimpl,
)

__version__ = "1.1.0"


# The schema, one function per version, applied in order and never edited once released.
def create_visits(ctx: MigrationContext) -> None:
    ctx.create_table(
        "visits",  # hello__visits in the database
        sa.Column("event_id", sa.String(36), primary_key=True),  # one row per tap, however often delivered
        sa.Column("pseudonym", sa.String(64), nullable=False),
    )


def add_day(ctx: MigrationContext) -> None:
    ctx.add_column("visits", sa.Column("day", sa.String(10), nullable=True))  # JST date, for daily counts
    ctx.create_index("by_card", "visits", "pseudonym")


MIGRATIONS = [create_visits, add_day]


def store_of(context: PluginContext) -> PluginStore:
    if context.store is None:
        raise RuntimeError("the hello plugin needs readerd's store")
    return context.store


@hookimpl
def readerd_startup(context: PluginContext) -> None:
    store_of(context).shared.migrate(MIGRATIONS)
    context.log.info("hello plugin ready", greeting=context.config.get("greeting", "ようこそ"))


def visits_of(conn: sa.Connection, visits: sa.Table, pseudonym: str) -> int:
    query = sa.select(sa.func.count()).select_from(visits).where(visits.c.pseudonym == pseudonym)
    return int(conn.execute(query).scalar_one())


@hookimpl
def readerd_result_fields() -> dict[str, frozenset[str]]:
    # What plugin.hello.greeting carries: readerd publishes no other field of it.
    return {"greeting": frozenset({"message", "visits"})}


@hookimpl
def readerd_card_identified(event: PluginEvent, context: PluginContext) -> None:
    if event.data.get("repeat"):
        return  # the same card held again: not a new visit
    store = store_of(context)
    visits = store.shared.table("visits")
    pseudonym = event.data["pseudonym"]
    day = store.now().date().isoformat()

    def record(conn: sa.Connection) -> int:  # may run more than once: no side effects outside conn
        insert = store.shared.insert_or_ignore(visits)
        conn.execute(insert.values(event_id=event.id, pseudonym=pseudonym, day=day))
        return visits_of(conn, visits, pseudonym)

    count = store.shared.transaction(record)
    greeting = context.config.get("greeting", "ようこそ")
    context.publish("greeting", {"message": greeting, "visits": count}, reader=event.reader)


@hookimpl
def readerd_commands(context: PluginContext) -> list[CommandSpec]:
    store = store_of(context)

    def count(args: dict[str, Any]) -> dict[str, Any]:
        visits = store.shared.table("visits")
        pseudonym = args["pseudonym"]
        return {"visits": store.shared.transaction(lambda c: visits_of(c, visits, pseudonym), readonly=True)}

    return [
        CommandSpec(
            "hello.visits",
            count,
            {"pseudonym": Arg(ArgType.STRING, help="the card's pseudonym")},
            help="how often a card was greeted",
        )
    ]
