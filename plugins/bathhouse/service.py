"""The senior bath-house card (おたっしゃカード): who may bathe at the ward's subsidy, and how often.

A member (member number, birth date, ward) holds one active FeliCa card at a time; a reissue revokes the
old card, links the new one and records the fee. Once linked, the member's enrolled My Number Card works
instead of the FeliCa card. At a bath house the tap is accepted, or refused with a reason:
``unknown_card``, ``revoked_card``, ``not_eligible`` (younger than ``min_age`` on the JST business date,
ages in law: docs/design.md D17), ``monthly_cap_reached`` (visits in the JST calendar month, at any bath
house), ``already_visited_today`` (a second tap the same day at the same bath house is not a visit).

The visit is counted in one transaction that locks the member's row, so two bath houses cannot both
admit the last visit of a month. Visits need the shared store: a bath house whose link is down refuses
with ``store_unavailable`` rather than let the cap be crossed unseen (the ward pays per visit).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.common import (
    create_requests_table,
    idempotent,
    iso,
    parse_date,
    requests_table,
    text_arg,
    upsert,
)
from readerd.plugin import JsonObject, MigrationContext, PluginDatabase, PluginStore, Refusal, business_time

T = TypeVar("T")
MEMBER = re.compile(r"[0-9A-Z]{1,16}")
MONTH = re.compile(r"(\d{4})-(\d{2})")


def _member() -> list[sa.Column[object]]:
    return [
        sa.Column("member_number", sa.String(16), primary_key=True),
        sa.Column("birth_date", sa.String(10), nullable=False),
        sa.Column("ward", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.String(20), nullable=False),
    ]


def _card() -> list[sa.Column[object]]:
    return [
        sa.Column("card", sa.String(64), primary_key=True),  # the FeliCa card's keyed pseudonym
        sa.Column("member_number", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),  # active, revoked
        sa.Column("issued_at", sa.String(20), nullable=False),
        sa.Column("revoked_at", sa.String(20), nullable=True),
    ]


def _link() -> list[sa.Column[object]]:
    return [
        sa.Column("person", sa.String(64), primary_key=True),  # member:<id> / mykey:<id> of a My Number Card
        sa.Column("member_number", sa.String(16), nullable=False),
        sa.Column("linked_at", sa.String(20), nullable=False),
    ]


def _visit() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("member_number", sa.String(16), nullable=False),
        sa.Column("bath_house", sa.String(64), nullable=False),
        sa.Column("business_date", sa.String(10), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("visited_at", sa.String(20), nullable=False),
    ]


def _fee() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("member_number", sa.String(16), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.String(20), nullable=False),
    ]


def shared_v1(m: MigrationContext) -> None:
    m.create_table("members", *_member())
    m.create_table("cards", *_card())
    m.create_index("by_member", "cards", "member_number")
    m.create_table("links", *_link())
    m.create_table("visits", *_visit())
    m.create_index("by_month", "visits", "member_number", "month")
    m.create_index("by_house", "visits", "bath_house", "month")
    m.create_table("fees", *_fee())
    create_requests_table(m)


class Tables:
    def __init__(self, db: PluginDatabase) -> None:
        self.members = db.table("members", *_member())
        self.cards = db.table("cards", *_card())
        self.links = db.table("links", *_link())
        self.visits = db.table("visits", *_visit())
        self.fees = db.table("fees", *_fee())


@dataclass(frozen=True)
class Rules:
    min_age: int = 65
    monthly_cap: int = 4
    reissue_fee: int = 0


class BathhouseService:
    def __init__(self, store: PluginStore, rules: Rules) -> None:
        self.store = store
        self.db = store.shared
        self.rules = rules
        self.t = Tables(self.db)
        self.requests = requests_table(self.db)
        self._migrated = False

    def _tx(self, fn: Callable[[Connection], T], *, readonly: bool = False) -> T:
        if not self._migrated:
            self.db.migrate([shared_v1])
            self._migrated = True
        return self.db.transaction(fn, readonly=readonly)

    def _once(self, command: str, args: JsonObject, apply: Callable[[Connection], JsonObject]) -> JsonObject:
        now = self.store.now()
        return self._tx(lambda conn: idempotent(conn, self.requests, command, args, now, apply))

    def today(self) -> date:
        return business_time.business_date(self.store.now())

    # -- the registry ---------------------------------------------------------------------------------
    def register(self, card: str, args: JsonObject) -> JsonObject:
        """A new member and their first card (at the ward office's counter)."""
        number = member_arg(args)
        birth = parse_date(args.get("birth_date"), "birth_date")
        ward = args.get("ward")
        if isinstance(ward, bool) or not isinstance(ward, int) or not 1 <= ward <= 99999:
            raise Refusal("bad_request", "ward: the ward's code, e.g. 13101")
        if birth > self.today():
            raise Refusal("bad_request", "birth_date is in the future")
        now = iso(self.store.now())

        def apply(conn: Connection) -> JsonObject:
            m = self.t.members
            if conn.execute(sa.select(m.c.member_number).where(m.c.member_number == number)).first():
                raise Refusal(
                    "already_registered", f"member {number} exists: use bathhouse.reissue for a new card"
                )
            self._card_free(conn, card)
            conn.execute(
                m.insert().values(
                    member_number=number, birth_date=birth.isoformat(), ward=ward, registered_at=now
                )
            )
            conn.execute(
                self.t.cards.insert().values(
                    card=card, member_number=number, version=1, status="active", issued_at=now
                )
            )
            return {"member_number": number, "card_version": 1}

        return self._once("bathhouse.register", {**args, "card": card}, apply)

    def _card_free(self, conn: Connection, card: str) -> None:
        if conn.execute(sa.select(self.t.cards.c.card).where(self.t.cards.c.card == card)).first():
            raise Refusal("card_in_use", "this card is registered already")

    def reissue(self, card: str, args: JsonObject) -> JsonObject:
        """A new card for a member (lost, broken): the old ones are revoked at once, the fee recorded."""
        number = member_arg(args)
        reason = text_arg(args, "reason", max_length=200)
        fee = args.get("fee", self.rules.reissue_fee)
        if isinstance(fee, bool) or not isinstance(fee, int) or not 0 <= fee <= 100_000:
            raise Refusal("bad_amount", "fee: yen, 0..100000")
        now = iso(self.store.now())

        def apply(conn: Connection) -> JsonObject:
            self._member(conn, number, lock=True)
            self._card_free(conn, card)
            cards = self.t.cards
            version = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(cards.c.version), 0)).where(
                    cards.c.member_number == number
                )
            ).scalar_one()
            revoked = conn.execute(
                cards.update()
                .where(cards.c.member_number == number, cards.c.status == "active")
                .values(status="revoked", revoked_at=now)
            ).rowcount
            conn.execute(
                cards.insert().values(
                    card=card, member_number=number, version=int(version) + 1, status="active", issued_at=now
                )
            )
            if fee:
                conn.execute(
                    self.t.fees.insert().values(
                        id=str(uuid.uuid4()), member_number=number, amount=fee, reason=reason, recorded_at=now
                    )
                )
            return {
                "member_number": number,
                "card_version": int(version) + 1,
                "revoked_cards": revoked,
                "fee": fee,
            }

        return self._once("bathhouse.reissue", {**args, "card": card}, apply)

    def link(self, person: str, args: JsonObject) -> JsonObject:
        """Let the member's enrolled My Number Card stand for the bath-house card."""
        number = member_arg(args)

        def apply(conn: Connection) -> JsonObject:
            self._member(conn, number, lock=False)
            upsert(
                conn,
                self.t.links,
                "person",
                {"person": person, "member_number": number, "linked_at": iso(self.store.now())},
            )
            return {"member_number": number, "linked": True}

        return self._once("bathhouse.link_mynumber", {**args, "person": person}, apply)

    def _member(self, conn: Connection, number: str, *, lock: bool) -> Any:  # noqa: ANN401 - a result row
        m = self.t.members
        query = sa.select(m).where(m.c.member_number == number)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise Refusal("unknown_member", f"no member {number}")
        return row

    # -- a visit --------------------------------------------------------------------------------------
    def visit(
        self, bath_house: str, *, card: str | None = None, person: str | None = None, via: str
    ) -> JsonObject:
        """Decide a tap at ``bath_house`` (by a FeliCa ``card`` or a linked My Number ``person``)."""
        today = self.today()
        month = today.strftime("%Y-%m")
        base: JsonObject = {"bath_house": bath_house, "monthly_cap": self.rules.monthly_cap}

        def decide(conn: Connection) -> JsonObject:
            number = self._holder(conn, card, person)
            if number is None or number.startswith("!"):
                return {**base, "status": "revoked_card" if number == "!revoked" else "unknown_card"}
            member = self._member(conn, number, lock=True)  # one decision per member at a time
            if business_time.age_on(date.fromisoformat(member.birth_date), today) < self.rules.min_age:
                return {**base, "status": "not_eligible"}
            v = self.t.visits.c
            visits = conn.execute(
                sa.select(v.bath_house, v.business_date).where(v.member_number == number, v.month == month)
            ).all()
            if any(house == bath_house and day == today.isoformat() for house, day in visits):
                return {**base, "status": "already_visited_today", "visits_this_month": len(visits)}
            if len(visits) >= self.rules.monthly_cap:
                return {**base, "status": "monthly_cap_reached", "visits_this_month": len(visits)}
            conn.execute(
                self.t.visits.insert().values(
                    id=str(uuid.uuid4()),
                    member_number=number,
                    bath_house=bath_house,
                    business_date=today.isoformat(),
                    month=month,
                    via=via,
                    visited_at=iso(self.store.now()),
                )
            )
            return {**base, "status": "accepted", "visits_this_month": len(visits) + 1}

        return self._tx(decide)

    def _holder(self, conn: Connection, card: str | None, person: str | None) -> str | None:
        """The member number for a card or linked person; ``"!revoked"`` for a revoked card."""
        if card is not None:
            c = self.t.cards.c
            row = conn.execute(sa.select(c.member_number, c.status).where(c.card == card)).first()
            if row is None:
                return None
            return str(row.member_number) if row.status == "active" else "!revoked"
        link = self.t.links.c
        row = conn.execute(sa.select(link.member_number).where(link.person == person)).first()
        return None if row is None else str(row.member_number)

    # -- the month's report ---------------------------------------------------------------------------
    def report(self, month: str, bath_house: str | None = None) -> JsonObject:
        """Visits per bath house in a JST month, for the subsidy settlement: counts, never names."""
        if not MONTH.fullmatch(month) or not 1 <= int(month[5:]) <= 12:
            raise Refusal("bad_request", "month: YYYY-MM")
        v = self.t.visits.c

        def read(conn: Connection) -> JsonObject:
            query = (
                sa.select(v.bath_house, sa.func.count(), sa.func.count(sa.distinct(v.member_number)))
                .where(v.month == month)
                .group_by(v.bath_house)
                .order_by(v.bath_house)
            )
            if bath_house:
                query = query.where(v.bath_house == bath_house)
            rows = [
                {"bath_house": house, "visits": int(visits), "members": int(members)}
                for house, visits, members in conn.execute(query)
            ]
            return {"month": month, "bath_houses": rows, "total_visits": sum(r["visits"] for r in rows)}

        return self._tx(read, readonly=True)


def member_arg(args: JsonObject) -> str:
    value = args.get("member_number")
    if not isinstance(value, str) or not MEMBER.fullmatch(value):
        raise Refusal("bad_request", "member_number: 1..16 characters of 0-9 and A-Z")
    return value
