"""The senior bath-house card (おたっしゃカード): who may bathe at the ward's subsidy, and how often.

A member (member number, birth date, ward) holds one active FeliCa card at a time; a reissue revokes the
old card, links the new one and records the fee. Once linked, the member's enrolled My Number Card works
instead of the FeliCa card. At a bath house the tap is accepted, or refused with a reason:
``unknown_card``, ``revoked_card``, ``not_eligible`` (younger than ``min_age`` on the JST business date,
ages in law: docs/design.md D17), ``monthly_cap_reached`` (visits in the JST calendar month, at any bath
house), ``already_visited_today`` (a second tap the same day at the same bath house is not a visit), or,
offline, ``store_unavailable`` (a card this kiosk has never seen online: it cannot check it now).

Online, the visit is counted in one transaction that locks the member's row, so two bath houses cannot
both admit the last visit of a month. Every online decision also leaves the kiosk a local record of the
card and the member's month (:mod:`plugins.bathhouse.offline`: no names, no birth date).

Offline (the shared store unreachable: :class:`StoreUnavailableError`; a *busy* store is not offline and
fails the tap as before) the kiosk decides from that record alone and says so (``offline: true``): it
admits only while ``last known count + its own offline visits this month < monthly_cap`` and the member
has not bathed here today, and keeps the visit in its outbox. :meth:`BathhouseService.sync` pushes the
outbox when the store answers again (before the next tap, and every ``sync_interval`` seconds), each
visit under its own id with insert-or-ignore: a visit pushed twice is one visit, and none is dropped.

What that guarantees, per member and JST month (c_i: offline kiosk i's last known count):

* each offline kiosk admits at most ``monthly_cap - c_i`` visits until an online read refreshes c_i;
* decisions taken online never take the month past the cap by themselves (they count the shared store
  plus the deciding kiosk's own unsynced visits), so the month's total is at most
  ``monthly_cap + sum(monthly_cap - c_i)``; when nobody admits the member online during the outage it is
  at most ``s + sum(monthly_cap - c_i)``, s the shared count when it began, and so never more than the
  cap when one kiosk is offline and knows the member's month (c = s), the usual case of a senior who
  bathes at the house round the corner.

Visits beyond the cap (several houses offline at once) are still recorded: the citizen was admitted. The
report counts them per bath house as ``over_cap``: in each member's month the visits after the
``monthly_cap``-th, in the order they were admitted, so the ward can settle them as it decides.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from plugins.bathhouse.offline import LOCAL, VISIT_FIELDS, LocalBook, Seen
from plugins.common import (
    create_requests_table,
    idempotent,
    iso,
    parse_date,
    queue_withdrawal,
    queued_withdrawals,
    requests_table,
    text_arg,
    upsert,
)
from readerd.plugin import (
    JsonObject,
    MigrationContext,
    PluginDatabase,
    PluginStore,
    Refusal,
    StoreBusyError,
    StoreUnavailableError,
    business_time,
)

log = structlog.get_logger("plugins.bathhouse")

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
    """The rules on the plugin store. ``retry_after``: seconds a failed shared store is left alone at taps
    (a tap must not wait out a connection timeout twice); the sync loop and counter commands try anyway."""

    def __init__(self, store: PluginStore, rules: Rules, *, retry_after: float = 30.0) -> None:
        self.store = store
        self.db = store.shared
        self.rules = rules
        self.retry_after = retry_after
        self.t = Tables(self.db)
        self.requests = requests_table(self.db)
        self._migrated = False
        self._down_until = 0.0
        self._sync_lock = threading.Lock()  # the timer and a tap never push the outbox at once
        store.local.migrate(LOCAL)  # the local file is always there: offline decisions need no server
        self.book = LocalBook(store.local)

    def _tx(self, fn: Callable[[Connection], T], *, readonly: bool = False, probe: bool = True) -> T:
        """A shared-store transaction; the schema is migrated on first contact (a kiosk starts offline).

        A :class:`StoreUnavailableError` marks the store down for ``retry_after`` seconds, during which a
        call with ``probe=False`` (a tap) fails at once instead of waiting for a connection timeout.
        """
        if not probe and time.monotonic() < self._down_until:
            raise StoreUnavailableError("shared store down (retrying in the background)")
        try:
            if not self._migrated:
                self.db.migrate([shared_v1])
                self._migrated = True
            result = self.db.transaction(fn, readonly=readonly)
        except StoreUnavailableError:
            self._down_until = time.monotonic() + self.retry_after
            raise
        self._down_until = 0.0
        return result

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
        """Decide a tap at ``bath_house`` (by a FeliCa ``card`` or a linked My Number ``person``): online
        when the shared store answers, else from this kiosk's own record (module docstring)."""
        kind, holder = ("card", card) if card is not None else ("person", person)
        if holder is None:
            raise ValueError("visit: a card or a person")
        today = self.today()
        month = today.strftime("%Y-%m")
        base: JsonObject = {"bath_house": bath_house, "monthly_cap": self.rules.monthly_cap}
        try:
            self._sync_before_tap()
            pending = self.store.local.transaction(lambda c: self.book.pending(c, month), readonly=True)
            result, seen = self._tx(
                lambda conn: self._decide(
                    conn, base, kind=kind, holder=holder, today=today, pending=pending, via=via
                ),
                probe=False,
            )
        except StoreUnavailableError:  # the local file failing too fails the offline decision as well
            return self._decide_offline(base, kind, holder, today, via)
        try:
            now = iso(self.store.now())
            self.store.local.transaction(lambda c: self.book.remember(c, seen, now))
        except (StoreUnavailableError, StoreBusyError):  # the decision stands; the record is a cache
            log.warning("could not keep the offline record of a tap", status=result["status"])
        return result

    def _decide(
        self,
        conn: Connection,
        base: JsonObject,
        *,
        kind: str,
        holder: str,
        today: date,
        pending: list[dict[str, Any]],
        via: str,
    ) -> tuple[JsonObject, Seen]:
        """The online decision (may run more than once: it only touches ``conn``)."""
        bath_house, month, day = str(base["bath_house"]), today.strftime("%Y-%m"), today.isoformat()
        number, status = self._holder(conn, kind, holder)
        if number is None:
            return {**base, "status": "unknown_card"}, Seen(kind, holder, None, "unknown")
        if status != "active":
            return {**base, "status": "revoked_card"}, Seen(kind, holder, number, "revoked")
        member = self._member(conn, number, lock=True)  # one decision per member at a time
        c, v = self.t.cards.c, self.t.visits.c
        cards = tuple(
            (str(r.card), str(r.status))
            for r in conn.execute(sa.select(c.card, c.status).where(c.member_number == number))
        )
        visits = conn.execute(
            sa.select(v.id, v.bath_house, v.business_date).where(v.member_number == number, v.month == month)
        ).all()
        ids = {str(r.id) for r in visits}
        # This kiosk's offline visits the shared store does not have yet count too (a sync that failed).
        mine = [r for r in pending if r["member_number"] == number and r["id"] not in ids]
        days = [(r.bath_house, r.business_date) for r in visits] + [
            (r["bath_house"], r["business_date"]) for r in mine
        ]
        here = [d for house, d in days if house == bath_house]
        eligible = business_time.age_on(date.fromisoformat(member.birth_date), today) >= self.rules.min_age

        def seen(count: int, last_here: str | None, counted: set[str]) -> Seen:
            return Seen(
                kind, holder, number, "active", eligible, month, count, last_here, frozenset(counted), cards
            )

        last_here = max(here, default=None)
        if not eligible:
            return {**base, "status": "not_eligible"}, seen(len(visits), last_here, ids)
        count = len(visits) + len(mine)
        if day in here:
            return {**base, "status": "already_visited_today", "visits_this_month": count}, seen(
                len(visits), last_here, ids
            )
        if count >= self.rules.monthly_cap:
            return {**base, "status": "monthly_cap_reached", "visits_this_month": count}, seen(
                len(visits), last_here, ids
            )
        visit_id = str(uuid.uuid4())
        conn.execute(
            self.t.visits.insert().values(
                id=visit_id,
                member_number=number,
                bath_house=bath_house,
                business_date=day,
                month=month,
                via=via,
                visited_at=iso(self.store.now()),
            )
        )
        return {**base, "status": "accepted", "visits_this_month": count + 1}, seen(
            len(visits) + 1, day, ids | {visit_id}
        )

    def _decide_offline(self, base: JsonObject, kind: str, holder: str, today: date, via: str) -> JsonObject:
        """The decision from the kiosk's record alone (module docstring), in one local write transaction:
        SQLite's write lock makes two taps on this kiosk decide one after the other."""
        bath_house, month, day = str(base["bath_house"]), today.strftime("%Y-%m"), today.isoformat()
        offline: JsonObject = {**base, "offline": True}
        cap = self.rules.monthly_cap

        def decide(conn: Connection) -> JsonObject:
            known = self.book.known(conn, kind, holder, month=month, today=day, bath_house=bath_house)
            if known is None:
                return {
                    **offline,
                    "status": "store_unavailable",
                    "message": "the ward's network is down and this kiosk has not seen this card before: "
                    "it cannot check the member now",
                }
            if known.status == "revoked":
                return {**offline, "status": "revoked_card"}
            if not known.eligible:
                return {**offline, "status": "not_eligible"}
            count = known.last_known(month) + len(known.offline)
            if known.today_here or (known.month == month and known.last_here == day):
                return {**offline, "status": "already_visited_today", "visits_this_month": count}
            if count >= cap:
                return {**offline, "status": "monthly_cap_reached", "visits_this_month": count}
            self.book.admit(
                conn,
                {
                    "id": str(uuid.uuid4()),
                    "member_number": known.member_number,
                    "bath_house": bath_house,
                    "business_date": day,
                    "month": month,
                    "via": via,
                    "visited_at": iso(self.store.now()),
                },
            )
            return {**offline, "status": "accepted", "visits_this_month": count + 1}

        result = self.store.local.transaction(decide)
        log.info("bath-house tap decided offline", status=result["status"])
        return result

    def _holder(self, conn: Connection, kind: str, holder: str) -> tuple[str | None, str]:
        """The member number for a card or linked person, and the card's status (a link is active)."""
        if kind == "card":
            c = self.t.cards.c
            row = conn.execute(sa.select(c.member_number, c.status).where(c.card == holder)).first()
            return (None, "unknown") if row is None else (str(row.member_number), str(row.status))
        link = self.t.links.c
        row = conn.execute(sa.select(link.member_number).where(link.person == holder)).first()
        return (None, "unknown") if row is None else (str(row.member_number), "active")

    # -- the outbox -----------------------------------------------------------------------------------
    def _sync_before_tap(self) -> None:
        """Push offline visits before an online decision, so that it counts them. Skipped while the
        store is taken for down or the timer is pushing (the decision then counts the outbox itself)."""
        if time.monotonic() < self._down_until or not self.pending():
            return
        if self._sync_lock.acquire(blocking=False):
            try:
                self._push(probe=False)
            finally:
                self._sync_lock.release()

    def sync(self) -> JsonObject:
        """Push every visit admitted offline to the shared store, each exactly once (insert-or-ignore on
        the visit's id), then mark it synced locally. Tried even while the store is taken for down.

        A push that commits but whose local mark is lost is pushed again next time and ignored: the
        result's ``already_there`` counts those. Raises :class:`StoreUnavailableError` while offline.
        """
        with self._sync_lock:
            return self._push(probe=True)

    def _push(self, *, probe: bool) -> JsonObject:
        pending = self.store.local.transaction(self.book.pending, readonly=True)
        if not pending:
            return {"synced": 0, "already_there": 0, "pending": 0}
        visits = self.t.visits

        def push(conn: Connection) -> int:
            inserted = 0
            for row in pending:  # RETURNING: rowcount is no count here (psycopg gave -1)
                statement = self.db.insert_or_ignore(visits).values(**{f: row[f] for f in VISIT_FIELDS})
                inserted += conn.execute(statement.returning(visits.c.id)).first() is not None
            return inserted

        inserted = self._tx(push, probe=probe)
        month = self.today().strftime("%Y-%m")
        self.store.local.transaction(lambda c: self.book.mark_synced(c, (r["id"] for r in pending), month))
        # pending: visits admitted offline while this push ran (the next push takes them)
        result = {"synced": inserted, "already_there": len(pending) - inserted, "pending": self.pending()}
        log.info("offline bath-house visits synced", **result)
        return result

    def pending(self) -> int:
        """How many offline visits wait for the shared store."""
        return len(self.store.local.transaction(self.book.pending, readonly=True))

    # -- a member's withdrawal ----------------------------------------------------------------------
    def withdraw(self, persons: list[str]) -> JsonObject:
        """Forget a withdrawn member's My Number Card link (each person key they may be linked under).

        The bath-house membership is the senior programme's own (its card, member number and visits stay
        for the subsidy settlement); what names the citizen's My Number Card is the ``links`` row and this
        kiosk's remembered ``person`` holder: both deleted. Local first, with the withdrawal queued; then
        the shared link, and the queue entry dropped. If the shared store is down the withdrawal stays
        queued and :meth:`retry_withdrawals` (the sync loop) finishes it. Idempotent."""
        if not persons:
            return {"links": 0, "holders": 0, "shared_pending": False}
        h, queue = self.book.holders, self.book.withdrawals
        now = self.store.now()

        def local(conn: Connection) -> int:
            queue_withdrawal(conn, queue, persons, now)
            return int(conn.execute(h.delete().where(h.c.kind == "person", h.c.holder.in_(persons))).rowcount)

        holders = self.store.local.transaction(local)
        try:
            links = self._withdraw_shared(persons)
        except StoreUnavailableError:
            return {"links": 0, "holders": holders, "shared_pending": True}
        return {"links": links, "holders": holders, "shared_pending": False}

    def _withdraw_shared(self, persons: list[str]) -> int:
        links, queue = self.t.links, self.book.withdrawals
        deleted = self._tx(
            lambda conn: int(conn.execute(links.delete().where(links.c.person.in_(persons))).rowcount)
        )
        self.store.local.transaction(
            lambda conn: conn.execute(queue.delete().where(queue.c.person.in_(persons)))
        )
        return deleted

    def withdrawals_pending(self) -> int:
        queue = self.book.withdrawals
        return len(self.store.local.transaction(lambda conn: queued_withdrawals(conn, queue), readonly=True))

    def retry_withdrawals(self) -> int:
        """Delete the shared links of withdrawals that waited; how many person keys were done. Raises
        :class:`StoreUnavailableError` while the store is still down."""
        queue = self.book.withdrawals
        persons = list(
            self.store.local.transaction(lambda conn: queued_withdrawals(conn, queue), readonly=True)
        )
        if persons:
            self._withdraw_shared(persons)
        return len(persons)

    # -- the month's report ---------------------------------------------------------------------------
    def report(self, month: str, bath_house: str | None = None) -> JsonObject:
        """Visits per bath house in a JST month, for the subsidy settlement: counts, never names.

        ``over_cap``: of those visits, how many came after the member's ``monthly_cap``-th of the month
        (ordered by when they were admitted, at any bath house): admissions by bath houses that were
        offline at the same time (module docstring). Counted here rather than flagged at sync, so the
        answer does not depend on which kiosk happened to sync first.
        """
        if not MONTH.fullmatch(month) or not 1 <= int(month[5:]) <= 12:
            raise Refusal("bad_request", "month: YYYY-MM")
        v = self.t.visits.c
        nth = sa.func.row_number().over(partition_by=v.member_number, order_by=(v.visited_at, v.id))
        ranked = sa.select(v.bath_house, v.member_number, nth.label("nth")).where(v.month == month).subquery()
        r = ranked.c
        over = sa.func.coalesce(sa.func.sum(sa.case((r.nth > self.rules.monthly_cap, 1), else_=0)), 0)

        def read(conn: Connection) -> JsonObject:
            query = (
                sa.select(r.bath_house, sa.func.count(), sa.func.count(sa.distinct(r.member_number)), over)
                .group_by(r.bath_house)
                .order_by(r.bath_house)
            )
            if bath_house:  # after the ranking: the cap is counted across every bath house
                query = query.where(r.bath_house == bath_house)
            rows = [
                {"bath_house": house, "visits": int(visits), "members": int(members), "over_cap": int(extra)}
                for house, visits, members, extra in conn.execute(query)
            ]
            return {
                "month": month,
                "bath_houses": rows,
                "total_visits": sum(row["visits"] for row in rows),
                "total_over_cap": sum(row["over_cap"] for row in rows),
            }

        return self._tx(read, readonly=True)


def member_arg(args: JsonObject) -> str:
    value = args.get("member_number")
    if not isinstance(value, str) or not MEMBER.fullmatch(value):
        raise Refusal("bad_request", "member_number: 1..16 characters of 0-9 and A-Z")
    return value
