"""The check-in plugin's tables. Migrations are append-only: add a function, never edit a released one.

shared (PostgreSQL for a ward, or the kiosk's SQLite): ``events``, ``checkins`` (one row per person and
event: the unique constraint is the rule "one check-in per person per event", enforced by the database
for every kiosk at once), ``cards`` (registered FeliCa check-in cards), ``requests`` (idempotency keys).

local (always the kiosk's SQLite): ``outbox`` (every check-in this kiosk accepted, with the id it will
have in ``checkins``; ``synced`` = 0 until the shared store has it), ``event_cache`` and ``card_cache``
(what the kiosk needs to decide offline), ``withdrawals`` (a member's withdrawal whose shared records are
still to be anonymised: the person key and the ``withdrawn:<random>`` key it becomes, kept only until the
shared store has done it).

A withdrawal (``member.withdrawn``) re-keys the member's rows in ``checkins`` and ``outbox`` to
``withdrawn:<random>`` (they keep counting towards capacity and attendance) and deletes their rows in
``cards`` and ``card_cache`` (docs/privacy.md, "Withdrawal and retention, per built-in").
"""

from __future__ import annotations

import sqlalchemy as sa

from plugins.common import create_requests_table
from readerd.plugin import MigrationContext, PluginDatabase

ID = 36  # a UUID: the check-in's nonce, the same in outbox and checkins (pretix-style dedupe)
NAME = 64


def _event_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("event_id", sa.String(NAME), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("place", sa.String(200), nullable=False),
        sa.Column("starts_at", sa.String(20), nullable=False),
        sa.Column("ends_at", sa.String(20), nullable=False),
        sa.Column("capacity", sa.Integer, nullable=True),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.String(20), nullable=False),
    ]


def _checkin_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("event_id", sa.String(NAME), nullable=False),
        sa.Column("person", sa.String(NAME), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("kiosk", sa.String(NAME), nullable=False),
        sa.Column("reader", sa.String(128), nullable=False),
        sa.Column("checked_in_at", sa.String(20), nullable=False),
    ]


def _card_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("card", sa.String(NAME), primary_key=True),
        sa.Column("person", sa.String(NAME), nullable=False),
        sa.Column("registered_at", sa.String(20), nullable=False),
    ]


def shared_v1(m: MigrationContext) -> None:
    m.create_table("events", *_event_columns())
    m.create_table("checkins", *_checkin_columns(), sa.UniqueConstraint("event_id", "person"))
    m.create_index("by_event", "checkins", "event_id", "checked_in_at")
    m.create_table("cards", *_card_columns())
    create_requests_table(m)


def local_v1(m: MigrationContext) -> None:
    m.create_table(
        "outbox",
        *_checkin_columns(),
        sa.Column("synced", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.UniqueConstraint("event_id", "person"),
    )
    m.create_table("event_cache", *_event_columns())
    m.create_table("card_cache", *_card_columns())


def _withdrawal_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("person", sa.String(NAME), primary_key=True),
        sa.Column("anon", sa.String(NAME), nullable=False),
        sa.Column("queued_at", sa.String(20), nullable=False),
    ]


def local_v2(m: MigrationContext) -> None:
    """Withdrawals whose shared records wait for the shared store (the kiosk was offline)."""
    m.create_table("withdrawals", *_withdrawal_columns())


SHARED = [shared_v1]
LOCAL = [local_v1, local_v2]


class Tables:
    """The tables for queries, declared as the migrations made them."""

    def __init__(self, shared: PluginDatabase, local: PluginDatabase) -> None:
        self.events = shared.table("events", *_event_columns())
        self.checkins = shared.table("checkins", *_checkin_columns())
        self.cards = shared.table("cards", *_card_columns())
        self.outbox = local.table(
            "outbox",
            *_checkin_columns(),
            sa.Column("synced", sa.Integer),
            sa.Column("outcome", sa.String(16)),
        )
        self.event_cache = local.table("event_cache", *_event_columns())
        self.card_cache = local.table("card_cache", *_card_columns())
        self.withdrawals = local.table("withdrawals", *_withdrawal_columns())
