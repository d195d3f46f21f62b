"""What a bath-house kiosk keeps on its own disk, so that it can decide a tap while the ward's shared store
is unreachable, and the outbox that carries those visits to the shared store afterwards.

The rule (the issue's words): an offline bath house admits a member only while *its last known count* for
the member *plus its own offline visits* stays below the cap. So every online decision (an admission or a
refusal: each one reads the member's month) leaves a record here, and an offline decision reads nothing
else.

Local tables (the kiosk's SQLite, ``bathhouse__local__*``; migrations are append-only):

``holders``
    ``(kind, holder) -> member_number, status``: a FeliCa card (``kind = "card"``, the card's keyed
    pseudonym) or a linked My Number Card (``kind = "person"``, ``member:<id>`` / ``mykey:<id>``) this
    kiosk has seen online, and whether the card was ``active`` or ``revoked`` then. Only holders tapped
    here are kept: a card never seen online by this kiosk is refused offline, never admitted blindly.
``members``
    ``member_number -> eligible, month, known_visits, last_here, seen_at``: ``eligible`` is the yes/no of
    the age rule on the day of the last online read, *not* the birth date (age only grows, so a yes stays
    true; a member who turns eligible while the kiosk is offline is refused ``not_eligible`` until it is
    back, which costs the ward nothing). ``known_visits`` is the member's visit count in the shared store
    for ``month`` (a JST ``YYYY-MM``) at that read, and ``last_here`` the last day of that month with a
    visit at this kiosk's bath house (one visit per house per day).
``outbox``
    every visit this kiosk admitted offline, under the id it will have in the shared ``visits`` table
    (so a visit pushed twice is one visit); ``synced = 0`` until the shared store has it; ``counted = 1``
    once an online read of the member has seen it there, i.e. it is part of ``known_visits``. The offline
    visits of the rule are the rows of the month with ``counted = 0``.

Not kept: names (the ward's store has none either), birth dates, the ward code, card versions and fees,
and where else a member bathed (only how many times). Synced outbox rows of past months are deleted at
the next sync: the shared store has them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.common import upsert
from readerd.plugin import MigrationContext, PluginDatabase

MEMBER = 16
HOLDER = 64
CHUNK = 500  # ids per statement


def _holder_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("kind", sa.String(8), primary_key=True),  # card, person
        sa.Column("holder", sa.String(HOLDER), primary_key=True),
        sa.Column("member_number", sa.String(MEMBER), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),  # active, revoked
        sa.Column("seen_at", sa.String(20), nullable=False),
    ]


def _member_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("member_number", sa.String(MEMBER), primary_key=True),
        sa.Column("eligible", sa.Integer, nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("known_visits", sa.Integer, nullable=False),
        sa.Column("last_here", sa.String(10), nullable=True),
        sa.Column("seen_at", sa.String(20), nullable=False),
    ]


def _outbox_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("member_number", sa.String(MEMBER), nullable=False),
        sa.Column("bath_house", sa.String(64), nullable=False),
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("visited_at", sa.String(20), nullable=False),
        sa.Column("synced", sa.Integer, nullable=False),
        sa.Column("counted", sa.Integer, nullable=False),
    ]


#: The columns a synced outbox row has in the shared ``visits`` table.
VISIT_FIELDS = ("id", "member_number", "bath_house", "business_date", "month", "via", "visited_at")


def local_v1(m: MigrationContext) -> None:
    m.create_table("holders", *_holder_columns())
    m.create_index("by_member", "holders", "member_number")
    m.create_table("members", *_member_columns())
    m.create_table("outbox", *_outbox_columns())
    m.create_index("by_month", "outbox", "member_number", "month")
    m.create_index("unsynced", "outbox", "synced")


def _withdrawal_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("person", sa.String(HOLDER), primary_key=True),
        sa.Column("anon", sa.String(HOLDER), nullable=False),  # unused here: the shape plugins.common fills
        sa.Column("queued_at", sa.String(20), nullable=False),
    ]


def local_v2(m: MigrationContext) -> None:
    """Withdrawals whose shared link is still to be deleted (the kiosk was offline)."""
    m.create_table("withdrawals", *_withdrawal_columns())


LOCAL = [local_v1, local_v2]


@dataclass(frozen=True)
class Seen:
    """What one online decision learned about the tapping card and its member: what the kiosk keeps.

    ``status`` is ``active``, ``revoked`` or ``unknown`` (no such card or link in the shared store: any
    record of it here is dropped). ``visits`` is the member's count in the shared store for ``month``
    after the decision, ``visit_ids`` the ids it counted (outbox rows among them are ``counted``), and
    ``cards`` every card of the member with its status, so a card revoked at the counter is known revoked
    here too once another of the member's cards has been tapped online.
    """

    kind: str
    holder: str
    member_number: str | None
    status: str
    eligible: bool = False
    month: str = ""
    visits: int = 0
    last_here: str | None = None
    visit_ids: frozenset[str] = frozenset()
    cards: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Known:
    """What an offline decision has to go on for one holder (None where the kiosk never saw it online)."""

    member_number: str
    status: str
    eligible: bool
    month: str
    known_visits: int
    last_here: str | None
    offline: list[dict[str, Any]] = field(default_factory=list)  # this month's outbox rows, ``counted = 0``
    today_here: bool = False  # an outbox row of this member, today, at this bath house

    def last_known(self, month: str) -> int:
        """The last known count for ``month``: a record of an earlier month says nothing about this one."""
        return self.known_visits if self.month == month else 0


class LocalBook:
    """The local tables, read and written in local transactions (the caller's)."""

    def __init__(self, db: PluginDatabase) -> None:
        self.db = db
        self.holders = db.table("holders", *_holder_columns())
        self.members = db.table("members", *_member_columns())
        self.outbox = db.table("outbox", *_outbox_columns())
        self.withdrawals = db.table("withdrawals", *_withdrawal_columns())

    # -- online: remember ---------------------------------------------------------------------------
    def remember(self, conn: Connection, seen: Seen, now: str) -> None:
        """Record what an online decision saw (in the local transaction ``conn``)."""
        h = self.holders
        where = (h.c.kind == seen.kind) & (h.c.holder == seen.holder)
        if seen.member_number is None:
            conn.execute(h.delete().where(where))
            return
        row = conn.execute(sa.select(h.c.kind).where(where)).first()
        values = {"member_number": seen.member_number, "status": seen.status, "seen_at": now}
        if row is None:
            conn.execute(h.insert().values(kind=seen.kind, holder=seen.holder, **values))
        else:
            conn.execute(h.update().where(where).values(**values))
        for card, status in seen.cards:  # only cards seen here: an unseen card stays unknown offline
            conn.execute(
                h.update().where(h.c.kind == "card", h.c.holder == card, h.c.holder != seen.holder)
                .values(status=status)
            )  # fmt: skip
        if seen.status != "active" or not seen.month:
            return  # a revoked card: its member's month is not read
        upsert(
            conn,
            self.members,
            "member_number",
            {
                "member_number": seen.member_number,
                "eligible": int(seen.eligible),
                "month": seen.month,
                "known_visits": seen.visits,
                "last_here": seen.last_here,
                "seen_at": now,
            },
        )
        if seen.visit_ids:
            o = self.outbox.c
            conn.execute(
                self.outbox.update()
                .where(
                    o.member_number == seen.member_number,
                    o.month == seen.month,
                    o.id.in_(sorted(seen.visit_ids)),
                )
                .values(counted=1)
            )

    # -- offline: decide ----------------------------------------------------------------------------
    def known(
        self, conn: Connection, kind: str, holder: str, *, month: str, today: str, bath_house: str
    ) -> Known | None:
        """The kiosk's record of ``holder`` and its member's month (None: never seen online here)."""
        h, m, o = self.holders.c, self.members.c, self.outbox.c
        row = conn.execute(
            sa.select(h.member_number, h.status).where(h.kind == kind, h.holder == holder)
        ).first()
        if row is None:
            return None
        number = str(row.member_number)
        if row.status == "revoked":
            return Known(number, "revoked", eligible=False, month="", known_visits=0, last_here=None)
        member = conn.execute(sa.select(self.members).where(m.member_number == number)).first()
        if member is None:
            return None  # an active card whose member's month was never read: as good as unseen
        rows = [
            dict(r._mapping)
            for r in conn.execute(sa.select(self.outbox).where(o.member_number == number, o.month == month))
        ]
        return Known(
            member_number=number,
            status=str(row.status),
            eligible=bool(member.eligible),
            month=str(member.month),
            known_visits=int(member.known_visits),
            last_here=member.last_here,
            offline=[r for r in rows if not r["counted"]],
            today_here=any(r["business_date"] == today and r["bath_house"] == bath_house for r in rows),
        )

    def admit(self, conn: Connection, visit: dict[str, Any]) -> None:
        """Keep a visit admitted offline (``VISIT_FIELDS``) until the shared store takes it."""
        conn.execute(self.outbox.insert().values(**visit, synced=0, counted=0))

    # -- the outbox ---------------------------------------------------------------------------------
    def pending(self, conn: Connection, month: str | None = None) -> list[dict[str, Any]]:
        """Visits not in the shared store yet (of ``month`` only, if given), oldest first."""
        o = self.outbox.c
        query = sa.select(*(o[f] for f in VISIT_FIELDS)).where(o.synced == 0)
        if month is not None:
            query = query.where(o.month == month)
        return [dict(r._mapping) for r in conn.execute(query.order_by(o.visited_at, o.id))]

    def mark_synced(self, conn: Connection, ids: Iterable[str], month: str) -> None:
        """The shared store has ``ids``; synced rows of months before ``month`` are dropped (kept there)."""
        o = self.outbox.c
        ordered = sorted(ids)
        for start in range(0, len(ordered), CHUNK):  # SQLite binds at most 32,766 parameters
            chunk = ordered[start : start + CHUNK]
            conn.execute(self.outbox.update().where(o.id.in_(chunk)).values(synced=1))
        conn.execute(self.outbox.delete().where(o.synced == 1, o.month < month))
